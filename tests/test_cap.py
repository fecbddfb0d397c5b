"""CAP 1.2 export: the XML parses, is in the CAP namespace, keeps the schema's element order,
and maps GridHub's severity, state, type and grid onto CAP's values.

No CAP 1.2 XSD (nor an XSD validator) is on this machine, so the schema's structure is
checked explicitly: element order, required elements, and the enumerations."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest

from hub.cap import CAP_NS, CapError, cap_polygons, cap_time, incident_to_cap
from hub.config import Site, load_config
from hub.models import Incident
from tests.conftest import DEMO

NS = {"cap": CAP_NS}
# The CAP 1.2 schema's sequences (``?`` optional, ``*`` repeated, ``+`` one or more).
ALERT = ["identifier", "sender", "sent", "status", "msgType", "source?", "scope", "restriction?",
         "addresses?", "code*", "note?", "references?", "incidents?", "info*"]
INFO = ["language?", "category+", "event", "responseType*", "urgency", "severity", "certainty",
        "audience?", "eventCode*", "effective?", "onset?", "expires?", "senderName?",
        "headline?", "description?", "instruction?", "web?", "contact?", "parameter*",
        "resource*", "area*"]
AREA = ["areaDesc", "polygon*", "circle*", "geocode*", "altitude?", "ceiling?"]
ENUMS = {
    "status": {"Actual", "Exercise", "System", "Test", "Draft"},
    "msgType": {"Alert", "Update", "Cancel", "Ack", "Error"},
    "scope": {"Public", "Restricted", "Private"},
    "category": {"Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env",
                 "Transport", "Infra", "CBRNE", "Other"},
    "urgency": {"Immediate", "Expected", "Future", "Past", "Unknown"},
    "severity": {"Extreme", "Severe", "Moderate", "Minor", "Unknown"},
    "certainty": {"Observed", "Likely", "Possible", "Unlikely", "Unknown"},
}
SENT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
T0 = datetime(2026, 11, 23, 0, 0, 0, 654321, tzinfo=UTC)  # 08:00 in Asia/Shanghai


@pytest.fixture(scope="module")
def site() -> Site:
    """The demo site (its grids carry GeoJSON polygons)."""
    return load_config(DEMO)


def incident(**kw: Any) -> Incident:
    base: dict[str, Any] = dict(
        id="inc_1", type="person_down", state="confirmed", severity="red", created_at=T0,
        updated_at=T0, started_at=T0, last_seen_at=T0, grid_id="zz-jinshui-jingba-c1-g01",
        grid_name="黄河路社区 第一网格", position=(34.7672, 113.6671), camera_name="经八路口")
    return Incident(**{**base, **kw})


def parse(xml: bytes) -> ET.Element:
    return ET.fromstring(xml)


def local(el: ET.Element) -> str:
    return el.tag.split("}", 1)[1]


def check_sequence(el: ET.Element, spec: list[str]) -> None:
    """``el``'s children follow ``spec`` in order, with the required ones present and
    only repeatable ones repeated."""
    names = [local(c) for c in el]
    pos = 0
    for item in spec:
        name, mark = item.rstrip("?*+"), item[-1] if item[-1] in "?*+" else ""
        n = 0
        while pos < len(names) and names[pos] == name:
            pos, n = pos + 1, n + 1
        assert n >= (1 if mark in ("", "+") else 0), f"<{local(el)}> lacks <{name}>: {names}"
        assert n <= (1 if mark in ("", "?") else n), f"<{local(el)}> repeats <{name}>: {names}"
    assert pos == len(names), f"<{local(el)}> has {names[pos:]} out of schema order: {names}"


def text(el: ET.Element, path: str) -> str:
    found = el.find(path, NS)
    assert found is not None and found.text is not None, path
    return found.text


def test_alert_parses_with_namespace_and_schema_order(site: Site) -> None:
    """The alert, each info and each area follow the CAP 1.2 sequences; values are in the
    enumerations; zh-CN comes first, then en-US."""
    root = parse(incident_to_cap(incident(), site, sender="gridhub@jingba.example"))
    assert root.tag == f"{{{CAP_NS}}}alert"
    assert all(el.tag.startswith(f"{{{CAP_NS}}}") for el in root.iter())
    check_sequence(root, ALERT)
    infos = root.findall("cap:info", NS)
    assert [text(i, "cap:language") for i in infos] == ["zh-CN", "en-US"]
    for info in infos:
        check_sequence(info, INFO)
        for area in info.findall("cap:area", NS):
            check_sequence(area, AREA)
    for el in root.iter():
        if local(el) in ENUMS:
            assert el.text in ENUMS[local(el)], (local(el), el.text)
    assert text(root, "cap:scope") == "Public" and text(root, "cap:msgType") == "Alert"
    assert text(root, "cap:identifier") == "gridhub-inc_1-v1"
    assert root.find("cap:references", NS) is None
    assert [text(i, "cap:event") for i in infos] == ["人员倒地", "Person down"]


def test_sent_has_offset_and_no_fraction(site: Site) -> None:
    """sent is the site's local time in whole seconds with its offset; UTC is -00:00."""
    root = parse(incident_to_cap(incident(), site, sender="gridhub"))
    assert text(root, "cap:sent") == "2026-11-23T08:00:00+08:00"
    assert SENT.match(text(root, "cap:sent"))
    assert cap_time(T0) == "2026-11-23T00:00:00-00:00"
    assert cap_time(T0.replace(tzinfo=None), "Asia/Shanghai") == "2026-11-23T08:00:00+08:00"


@pytest.mark.parametrize(("severity", "cap_severity", "urgency"), [
    ("red", "Extreme", "Immediate"),
    ("orange", "Severe", "Expected"),
    ("yellow", "Moderate", "Expected"),
    ("blue", "Minor", "Future"),
])
def test_severity_and_urgency(site: Site, severity: str, cap_severity: str, urgency: str) -> None:
    """GridHub severity maps onto CAP severity and urgency in both infos."""
    root = parse(incident_to_cap(incident(severity=severity), site, sender="gridhub"))
    for info in root.findall("cap:info", NS):
        assert (text(info, "cap:severity"), text(info, "cap:urgency")) == (cap_severity, urgency)


@pytest.mark.parametrize(("state", "certainty", "urgency"), [
    ("new", "Likely", "Immediate"),
    ("confirmed", "Observed", "Immediate"),
    ("dispatched", "Observed", "Immediate"),
    ("escalated", "Observed", "Immediate"),
    ("resolved", "Observed", "Past"),
    ("closed", "Observed", "Past"),
    ("dismissed", "Unlikely", "Immediate"),
])
def test_certainty_by_state(site: Site, state: str, certainty: str, urgency: str) -> None:
    """new is Likely, dismissed Unlikely, confirmed and later Observed; resolved is Past."""
    root = parse(incident_to_cap(incident(state=state), site, sender="gridhub"))
    info = root.find("cap:info", NS)
    assert info is not None
    assert (text(info, "cap:certainty"), text(info, "cap:urgency")) == (certainty, urgency)


@pytest.mark.parametrize(("itype", "categories"), [
    ("person_down", ["Health", "Rescue"]),
    ("stranded_person", ["Rescue", "Safety"]),
    ("flooding", ["Met"]),
    ("graffiti", ["Other"]),
])
def test_categories_by_type(site: Site, itype: str, categories: list[str]) -> None:
    """Incident types map onto CAP categories; an unknown type is Other."""
    root = parse(incident_to_cap(incident(type=itype), site, sender="gridhub"))
    for info in root.findall("cap:info", NS):
        assert [c.text for c in info.findall("cap:category", NS)] == categories


def test_area_polygon_closed_in_lat_lon_and_circle(site: Site) -> None:
    """The grid's GeoJSON ring becomes a closed CAP polygon in lat,lon order; the position
    a 0.1 km circle."""
    root = parse(incident_to_cap(incident(), site, sender="gridhub"))
    area = root.find("cap:info/cap:area", NS)
    assert area is not None
    assert text(area, "cap:areaDesc") == "黄河路社区 第一网格"
    pairs = text(area, "cap:polygon").split(" ")
    assert len(pairs) >= 4 and pairs[0] == pairs[-1]
    grid = site.grid("zz-jinshui-jingba-c1-g01")
    assert grid is not None
    ring = grid.polygon["coordinates"][0]
    assert [tuple(map(float, p.split(","))) for p in pairs] == [(lat, lon) for lon, lat in ring]
    assert text(area, "cap:circle") == "34.7672,113.6671 0.1"


def test_polygons_from_multipolygon_and_open_rings() -> None:
    """Each outer ring of a MultiPolygon is one polygon; an open ring is closed; holes and
    degenerate rings are dropped."""
    geo = {"type": "MultiPolygon", "coordinates": [
        [[[113.0, 34.0], [113.1, 34.0], [113.1, 34.1]],  # open
         [[113.02, 34.02], [113.03, 34.02], [113.03, 34.03], [113.02, 34.02]]],  # hole
        [[[114.0, 35.0], [114.0, 35.0]]],  # degenerate
    ]}
    assert cap_polygons(geo) == ["34,113 34,113.1 34.1,113.1 34,113"]
    assert cap_polygons({"type": "Point", "coordinates": [1, 2]}) == []


def test_dismissed_is_cancel_with_references(site: Site) -> None:
    """A dismissed incident is a Cancel that references the first alert."""
    later = datetime(2026, 11, 23, 1, 30, tzinfo=UTC)
    inc = incident(state="dismissed", version=3, updated_at=later)
    root = parse(incident_to_cap(inc, site, sender="gridhub@jingba.example", msg_type="Alert"))
    assert text(root, "cap:msgType") == "Cancel"
    assert text(root, "cap:identifier") == "gridhub-inc_1-v3"
    assert text(root, "cap:sent") == "2026-11-23T09:30:00+08:00"
    assert text(root, "cap:references") == \
        "gridhub@jingba.example,gridhub-inc_1-v1,2026-11-23T08:00:00+08:00"
    assert text(root, "cap:info/cap:headline").startswith("解除")
    check_sequence(root, ALERT)


def test_update_with_given_references_and_web(site: Site) -> None:
    """An Update carries the references the caller names, and the web link in each info."""
    root = parse(incident_to_cap(incident(version=2), site, sender="gridhub", msg_type="Update",
                                 references=["gridhub,gridhub-inc_1-v2,2026-11-23T08:05:00+08:00"],
                                 web="https://hub.example/incidents/inc_1"))
    assert text(root, "cap:references") == "gridhub,gridhub-inc_1-v2,2026-11-23T08:05:00+08:00"
    assert [w.text for w in root.findall("cap:info/cap:web", NS)] == [
        "https://hub.example/incidents/inc_1"] * 2


def test_no_grid_no_position(site: Site) -> None:
    """Without grid and position the area has only its description, still in order."""
    root = parse(incident_to_cap(incident(grid_id=None, grid_name=None, position=None), site,
                                 sender="gridhub"))
    area = root.find("cap:info/cap:area", NS)
    assert area is not None and [local(c) for c in area] == ["areaDesc"]
    assert text(area, "cap:areaDesc") == "经八路口"


@pytest.mark.parametrize("sender", ["grid hub", "a,b", "a<b", "a&b", ""])
def test_bad_sender_refused(site: Site, sender: str) -> None:
    """A sender CAP forbids (spaces, commas, < or &) is refused."""
    with pytest.raises(CapError):
        incident_to_cap(incident(), site, sender=sender)
