"""Incidents as CAP 1.2 alerts (OASIS Common Alerting Protocol), for public warning systems.

:func:`incident_to_cap` builds one ``<alert>`` (namespace
``urn:oasis:names:tc:emergency:cap:1.2``) with a ``zh-CN`` and an ``en-US`` ``<info>``,
elements in the order the CAP 1.2 schema requires. Choices made:

* ``identifier`` is ``gridhub-<incident id>-v<version>`` (one per stored version); an
  Update or Cancel ``references`` the first alert, ``<sender>,gridhub-<id>-v1,<created_at>``,
  unless the caller names the messages it really sent.
* ``sent`` is the incident's ``updated_at`` in the site's time zone, whole seconds, with
  an offset (``2026-11-23T08:00:00+08:00``; UTC as ``-00:00``, as CAP asks).
* A dismissed incident (false alarm) is always ``msgType`` Cancel.
* ``category`` by type: person_down -> Health, Rescue (a person needs medical help);
  stranded_person -> Rescue, Safety; flooding -> Met (CAP's "meteorological, inc. flood");
  any other type -> Other (or the caller's ``categories``).
* ``severity`` / ``urgency`` by GridHub severity: red -> Extreme / Immediate, orange ->
  Severe / Expected, yellow -> Moderate / Expected, blue -> Minor / Future; a resolved or
  closed incident has urgency Past. ``certainty`` by state: new -> Likely, dismissed ->
  Unlikely, confirmed and every later state -> Observed.
* ``area``: ``areaDesc`` is the grid name; one ``polygon`` per outer ring of the grid's
  GeoJSON (``lat,lon`` pairs, closed; holes cannot be expressed in CAP and are dropped);
  a ``circle`` ``lat,lon 0.1`` (km) around the incident's position when it has one.

Exceptions::

    CapError (ValueError)   a value CAP cannot carry (a sender with spaces or commas...)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from hub.config import Site
    from hub.models import Incident

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
MsgType = Literal["Alert", "Update", "Cancel"]
Status = Literal["Actual", "Exercise", "System", "Test", "Draft"]

CATEGORIES: dict[str, tuple[str, ...]] = {
    "person_down": ("Health", "Rescue"),
    "stranded_person": ("Rescue", "Safety"),
    "flooding": ("Met",),
}
CAP_CATEGORIES = frozenset({"Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health",
                            "Env", "Transport", "Infra", "CBRNE", "Other"})
SEVERITY = {"red": "Extreme", "orange": "Severe", "yellow": "Moderate", "blue": "Minor"}
URGENCY = {"red": "Immediate", "orange": "Expected", "yellow": "Expected", "blue": "Future"}
SEV_NAMES = {"red": ("红色", "Red"), "orange": ("橙色", "Orange"), "yellow": ("黄色", "Yellow"),
             "blue": ("蓝色", "Blue")}
STATE_NAMES = {
    "new": ("待确认", "new"), "confirmed": ("已确认", "confirmed"),
    "dispatched": ("已派遣", "dispatched"), "accepted": ("已接单", "accepted"),
    "on_scene": ("已到场", "on scene"), "resolved": ("已处置", "resolved"),
    "closed": ("已结案", "closed"), "dismissed": ("已撤销（误报）", "dismissed (false alarm)"),
    "escalated": ("已上报", "escalated"), "reopened": ("已重新打开", "reopened"),
}
FORBIDDEN = (" ", ",", "<", "&")  # CAP: not in identifier and sender
CIRCLE_KM = 0.1


class CapError(ValueError):
    """A value CAP cannot carry."""


def cap_time(t: datetime, tz: str = "UTC") -> str:
    """CAP dateTime: whole seconds with an offset; UTC is written ``-00:00``."""
    aware = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    text = aware.astimezone(ZoneInfo(tz)).replace(microsecond=0).isoformat()
    return text[:-6] + "-00:00" if text.endswith("+00:00") else text


def _num(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".")


def cap_polygons(geojson: Mapping[str, Any]) -> list[str]:
    """CAP polygons (``lat,lon`` pairs, first = last) for the outer rings of a GeoJSON
    Polygon or MultiPolygon (whose positions are ``[lon, lat]``)."""
    kind, coords = geojson.get("type"), geojson.get("coordinates") or []
    polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
    out: list[str] = []
    for poly in polys:
        if not poly:
            continue
        ring = [(float(p[1]), float(p[0])) for p in poly[0]]
        if ring and ring[0] != ring[-1]:
            ring.append(ring[0])
        if len(ring) >= 4:
            out.append(" ".join(f"{_num(lat)},{_num(lon)}" for lat, lon in ring))
    return out


def _check(name: str, value: str) -> str:
    if not value or any(c in value for c in FORBIDDEN):
        raise CapError(f"CAP {name} must be non-empty, without spaces, commas, < or &: "
                       f"{value!r}")
    return value


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        el.text = text
    return el


def _pair(parent: ET.Element, tag: str, name: str, value: str) -> None:
    el = _sub(parent, tag)
    _sub(el, "valueName", name)
    _sub(el, "value", value)


def incident_to_cap(incident: Incident, site: Site, *, sender: str, status: Status = "Actual",
                    msg_type: MsgType = "Alert", web: str | None = None,
                    references: Sequence[str] | None = None,
                    categories: Mapping[str, Sequence[str]] | None = None) -> bytes:
    """The incident as a CAP 1.2 alert (UTF-8 XML with a declaration).

    ``sender`` identifies this hub (e.g. ``gridhub@jingba.zz.example``); ``web`` is a link
    to the incident (the console); ``references`` the earlier messages (each
    ``sender,identifier,sent``) an Update or Cancel refers to; ``categories`` overrides the
    CAP categories by incident type."""
    _check("sender", sender)
    iid = _check("incident id", incident.id)
    tz = site.site.timezone
    if incident.state == "dismissed":
        msg_type = "Cancel"
    cats = list((categories or {}).get(incident.type) or CATEGORIES.get(incident.type, ("Other",)))
    if bad := [c for c in cats if c not in CAP_CATEGORIES]:
        raise CapError(f"not CAP categories: {bad} (known: {sorted(CAP_CATEGORIES)})")

    alert = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(alert, "identifier", f"gridhub-{iid}-v{incident.version}")
    _sub(alert, "sender", sender)
    _sub(alert, "sent", cap_time(incident.updated_at, tz))
    _sub(alert, "status", status)
    _sub(alert, "msgType", msg_type)
    _sub(alert, "source", "GridHub")
    _sub(alert, "scope", "Public")
    if msg_type != "Alert":
        refs = references if references is not None else [
            f"{sender},gridhub-{iid}-v1,{cap_time(incident.created_at, tz)}"]
        if refs:
            _sub(alert, "references", " ".join(refs))
    _sub(alert, "incidents", iid)

    names = {t.id: (t.name, t.name_en) for t in site.site.incident_types}
    type_zh, type_en = names.get(incident.type, (incident.type, incident.type))
    grid = site.grid(incident.grid_id) if incident.grid_id else None
    place = incident.grid_name or (grid.name if grid else None) or incident.grid_id or ""
    state_zh, state_en = STATE_NAMES.get(incident.state, (incident.state, incident.state))
    sev_zh, sev_en = SEV_NAMES[incident.severity]
    when = cap_time(incident.started_at, tz).replace("T", " ")[:16]
    cam = incident.camera_name
    texts = {
        "zh-CN": (type_zh, f"{'解除：' if msg_type == 'Cancel' else ''}{sev_zh}预警：{type_zh}"
                  f"{f'（{place}）' if place else ''}",
                  incident.description or f"{when}{f' {place}' if place else ''}"
                  f"{f'（{cam}）' if cam else ''}发现{type_zh}。状态：{state_zh}。"),
        "en-US": (type_en, f"{'Cancelled: ' if msg_type == 'Cancel' else ''}{sev_en} alert: "
                  f"{type_en}{f' ({place})' if place else ''}",
                  incident.description or f"{type_en} seen at {when}"
                  f"{f' in {place}' if place else ''}{f' by camera {cam}' if cam else ''}. "
                  f"State: {state_en}."),
    }
    urgency = "Past" if incident.state in ("resolved", "closed") else URGENCY[incident.severity]
    certainty = {"new": "Likely", "dismissed": "Unlikely"}.get(incident.state, "Observed")
    for lang, (event, headline, description) in texts.items():
        info = _sub(alert, "info")
        _sub(info, "language", lang)
        for c in cats:
            _sub(info, "category", c)
        _sub(info, "event", event)
        _sub(info, "urgency", urgency)
        _sub(info, "severity", SEVERITY[incident.severity])
        _sub(info, "certainty", certainty)
        _pair(info, "eventCode", "GridHub", incident.type)
        _sub(info, "onset", cap_time(incident.started_at, tz))
        _sub(info, "senderName", site.site.name)
        _sub(info, "headline", headline)
        _sub(info, "description", description)
        if web:
            _sub(info, "web", web)
        if grid is not None and grid.contact:
            _sub(info, "contact", grid.contact)
        _pair(info, "parameter", "GridHubSeverity", incident.severity)
        _pair(info, "parameter", "GridHubState", incident.state)
        area = _sub(info, "area")
        _sub(area, "areaDesc", place or cam or "-")
        for poly in cap_polygons(grid.polygon) if grid is not None else []:
            _sub(area, "polygon", poly)
        if incident.position is not None:
            lat, lon = incident.position
            _sub(area, "circle", f"{_num(lat)},{_num(lon)} {CIRCLE_KM}")
    xml: bytes = ET.tostring(alert, encoding="utf-8", xml_declaration=True,
                             default_namespace=CAP_NS)
    return xml
