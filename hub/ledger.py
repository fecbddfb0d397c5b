"""The daily ledger of open cases (日清台账) and closure statistics (办结率).

Ledger: every open case the user may see, with its queue level, departments, age,
deadlines and the reason it is still open, grouped per grid level and per department.

Statistics for a period (in the site's time zone), over the cases the user may see,
optionally narrowed to a grid subtree, a department and a type:

- received: cases created in the period (dismissed false alarms are counted apart);
- dispatched / escalated: cases dispatched / escalated in the period (timeline);
- resolved / closed: cases resolved / closed in the period;
- closure_rate (办结率): of the cases received in the period (false alarms left out),
  the share resolved or closed by now;
- on_time_rate: of the cases resolved in the period, the share resolved by their
  resolve deadline;
- a daily series (received, resolved per day) for the console's charts.

Both can be had as CSV (UTF-8 with a byte-order mark, so spreadsheet programs read the
Chinese names).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from hub import schema as t
from hub.config import Site
from hub.incidents import can_see, in_subtree
from hub.models import Incident, User
from hub.states import OPEN
from hub.store import Store

PERIOD = re.compile(r"^(today|\d+d|\d{4}-\d{2}|\d{4}-\d{2}-\d{2}/\d{4}-\d{2}-\d{2})$")


class PeriodError(ValueError):
    pass


def parse_period(text: str, now: datetime, tz: str) -> tuple[datetime, datetime, str]:
    """``today``, ``7d`` (the last 7 days, today included), ``2026-11`` (a month) or
    ``2026-11-01/2026-11-15`` (inclusive) -> (start, end) as aware datetimes."""
    zone = ZoneInfo(tz)
    if not PERIOD.match(text):
        raise PeriodError(f"period {text!r}: use today, 7d, 30d, YYYY-MM or "
                          "YYYY-MM-DD/YYYY-MM-DD")
    today = now.astimezone(zone).date()

    def at(d: date) -> datetime:
        return datetime.combine(d, time(0), zone)

    if text == "today":
        return at(today), at(today + timedelta(days=1)), text
    if text.endswith("d"):
        n = int(text[:-1])
        if not 1 <= n <= 3660:
            raise PeriodError(f"period {text!r}: between 1d and 3660d")
        return at(today - timedelta(days=n - 1)), at(today + timedelta(days=1)), text
    try:
        if "/" in text:
            a, b = (date.fromisoformat(x) for x in text.split("/"))
            if b < a:
                raise PeriodError(f"period {text!r}: the end is before the start")
            return at(a), at(b + timedelta(days=1)), text
        first = date.fromisoformat(text + "-01")
    except ValueError as err:
        raise PeriodError(f"period {text!r}: {err}") from err
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return at(first), at(nxt), text


def open_reason(inc: Incident, site: Site) -> str:
    """Why a case is still open, in a few words (Chinese first, as the ledger is read)."""
    deps = ", ".join(inc.departments) or "-"
    due = f" (期限 {inc.ack_due:%m-%d %H:%M})" if inc.ack_due else ""
    return {
        "new": "待确认 awaiting confirmation",
        "confirmed": "待派遣 awaiting dispatch",
        "reopened": "已重开, 待处理 reopened",
        "dispatched": f"待 {deps} 签收{due} awaiting acceptance",
        "accepted": f"{deps} 处置中 being handled",
        "on_scene": f"{deps} 已到场 on scene",
        "escalated": f"已上报至 {inc.queue_grid_name or inc.queue_grid}, 待其派遣 escalated",
    }.get(inc.state, inc.state) + (f"; {inc.last_note}" if inc.last_note else "")


def _scope_where(site: Site, grid: str | None, department: str | None,
                 type_: str | None) -> list[Any]:
    c = t.incidents.c
    where: list[Any] = []
    if grid is not None:
        cells = [g.id for g in site.grids if in_subtree(site, g.id, grid)]
        where.append(sa.or_(c.grid_id.in_(cells), c.queue_grid.in_(cells)))
    if department is not None:
        a = t.assignments.c
        where.append(c.id.in_(sa.select(a.incident_id).where(a.assignee == department)))
    if type_ is not None:
        where.append(c.type == type_)
    return where


async def ledger(store: Store, site: Site, user: User, now: datetime, *,
                 grid: str | None = None, department: str | None = None,
                 type_: str | None = None) -> dict[str, Any]:
    """Every open case the user may see, oldest first, with counts per level and
    department."""
    cases = await store.query(state=OPEN, limit=None, oldest_first=True,
                              where=_scope_where(site, grid, department, type_))
    items = []
    per_grid: Counter[str] = Counter()
    per_dep: Counter[str] = Counter()
    for inc in cases:
        if not can_see(site, user, inc):
            continue
        overdue = [k for k, due in (("acknowledge", inc.ack_due), ("resolve", inc.resolve_due))
                   if due is not None and now > due]
        items.append({
            "id": inc.id, "type": inc.type, "severity": inc.severity, "state": inc.state,
            "grid": inc.grid_id, "grid_name": inc.grid_name, "queue_grid": inc.queue_grid,
            "queue_grid_name": inc.queue_grid_name, "departments": inc.departments,
            "lead_department": inc.lead_department, "units": inc.units,
            "created_at": inc.created_at, "age_s": round((now - inc.created_at).total_seconds()),
            "ack_due": inc.ack_due, "resolve_due": inc.resolve_due, "overdue": overdue,
            "escalations": len(inc.escalations), "open_challenges": inc.open_challenges,
            "reason": open_reason(inc, site),
        })
        per_grid[inc.queue_grid or "-"] += 1
        for d in inc.departments or ["-"]:
            per_dep[d] += 1
    return {"generated_at": now, "total": len(items), "by_grid": dict(per_grid),
            "by_department": dict(per_dep), "items": items}


async def stats(store: Store, site: Site, user: User, now: datetime, *, period: str,
                grid: str | None = None, department: str | None = None,
                type_: str | None = None) -> dict[str, Any]:
    """Counts and rates for a period (module docstring)."""
    start, end, label = parse_period(period, now, site.site.timezone)
    s, e = start.astimezone(UTC).isoformat(), end.astimezone(UTC).isoformat()
    c = t.incidents.c
    where = _scope_where(site, grid, department, type_)
    touched = sa.or_(c.created_at.between(s, e), c.resolved_at.between(s, e),
                     c.closed_at.between(s, e),
                     c.id.in_(sa.select(t.timeline.c.incident_id).where(
                         t.timeline.c.at.between(s, e),
                         t.timeline.c.action.in_(["dispatch", "escalate"]))))
    cases = [i for i in await store.query(limit=None, where=[*where, touched])
             if can_see(site, user, i)]
    ids = [i.id for i in cases]
    tl = t.timeline.c
    acts: dict[str, set[str]] = {"dispatch": set(), "escalate": set()}
    if ids:
        rows = await store.read(lambda conn: conn.execute(
            sa.select(tl.incident_id, tl.action).where(
                tl.incident_id.in_(ids), tl.at >= s, tl.at < e,
                tl.action.in_(["dispatch", "escalate"]))).all())
        for iid, action in rows:
            acts[action].add(iid)

    def within(v: datetime | None) -> bool:
        return v is not None and start <= v < end

    received = [i for i in cases if within(i.created_at)]
    real = [i for i in received if i.state != "dismissed"]
    done = [i for i in real if i.state in ("resolved", "closed")]
    resolved = [i for i in cases if within(i.resolved_at)]
    on_time = [i for i in resolved
               if i.resolve_due is None or (i.resolved_at is not None
                                             and i.resolved_at <= i.resolve_due)]
    zone = ZoneInfo(site.site.timezone)
    days: dict[str, dict[str, int]] = {}
    d = start.astimezone(zone).date()
    while datetime.combine(d, time(0), zone) < end and len(days) < 400:
        days[d.isoformat()] = {"received": 0, "resolved": 0}
        d += timedelta(days=1)
    for i in received:
        days.setdefault(i.created_at.astimezone(zone).date().isoformat(),
                        {"received": 0, "resolved": 0})["received"] += 1
    for i in resolved:
        assert i.resolved_at is not None
        days.setdefault(i.resolved_at.astimezone(zone).date().isoformat(),
                        {"received": 0, "resolved": 0})["resolved"] += 1
    by_type = Counter(i.type for i in real)
    return {
        "period": label, "start": start, "end": end,
        "filters": {"grid": grid, "department": department, "type": type_},
        "received": len(real), "false_alarms": len(received) - len(real),
        "dispatched": len(acts["dispatch"]), "escalated": len(acts["escalate"]),
        "resolved": len(resolved), "closed": sum(1 for i in cases if within(i.closed_at)),
        "closure_rate": round(len(done) / len(real), 4) if real else None,
        "on_time_rate": round(len(on_time) / len(resolved), 4) if resolved else None,
        "by_type": dict(by_type),
        "series": [{"day": k, **v} for k, v in sorted(days.items())],
    }


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    """Rows as CSV, UTF-8 with a byte-order mark; lists joined with '|'."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(columns)
    for r in rows:
        w.writerow(["|".join(map(str, v)) if isinstance(v, list)
                    else v.isoformat() if isinstance(v, datetime)
                    else "" if v is None else v for v in (r.get(k) for k in columns)])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


LEDGER_COLUMNS = ["id", "type", "severity", "state", "grid", "grid_name", "queue_grid",
                  "queue_grid_name", "departments", "lead_department", "units", "created_at",
                  "age_s", "ack_due", "resolve_due", "overdue", "escalations",
                  "open_challenges", "reason"]
STATS_COLUMNS = ["period", "start", "end", "received", "false_alarms", "dispatched",
                 "escalated", "resolved", "closed", "closure_rate", "on_time_rate"]
