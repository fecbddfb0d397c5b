"""Deadlines in clock time and in working days.

A duration is written ``90s``, ``30m``, ``4h``, ``2d`` (clock time: an emergency does not
wait for Monday) or ``5wd`` (working days: the office timescale of the grid reports, e.g.
"an upper level that has not answered within 7 working days may be challenged").

Adding N working days moves forward one calendar day at a time, counting only working
days, and keeps the time of day: escalated on Friday 10:00, ``2wd`` later is Tuesday
10:00. A working day is a weekday not listed as a holiday, or a listed make-up working
day (调休: a weekend day worked in exchange for a holiday). Dates are taken in the site's
time zone.

Exceptions::

    ValueError   a malformed duration (raised by :func:`parse_duration`)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|wd)\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Duration:
    """A clock duration (``seconds``) or a number of working days (``workdays``)."""

    seconds: float = 0.0
    workdays: int = 0

    def __str__(self) -> str:
        return f"{self.workdays}wd" if self.workdays else f"{self.seconds:g}s"


def parse_duration(text: str) -> Duration:
    """``"30m"`` -> 1800 s; ``"7wd"`` -> 7 working days. Raises ValueError naming the text."""
    m = _DURATION.match(str(text))
    if m is None:
        raise ValueError(f"{text!r} is not a duration: use a number with s, m, h, d or wd "
                         "(e.g. 30m, 4h, 2d, 7wd)")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "wd":
        if value != int(value) or value < 1:
            raise ValueError(f"{text!r}: working days must be a whole number, at least 1")
        return Duration(workdays=int(value))
    if value <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return Duration(seconds=value * _UNIT_S[unit])


class WorkCalendar:
    """Which days are working days at the site."""

    def __init__(self, tz: str = "Asia/Shanghai", weekend: tuple[str, ...] = ("sat", "sun"),
                 holidays: tuple[date, ...] = (), workdays: tuple[date, ...] = ()) -> None:
        self.tz = ZoneInfo(tz)
        self.weekend = frozenset(WEEKDAYS.index(d) for d in weekend)
        self.holidays = frozenset(holidays)
        self.extra = frozenset(workdays)

    def is_workday(self, day: date) -> bool:
        if day in self.extra:
            return True
        return day.weekday() not in self.weekend and day not in self.holidays

    def add(self, start: datetime, d: Duration) -> datetime:
        """``start`` plus ``d`` (aware datetimes in, the same zone out)."""
        if not d.workdays:
            return start + timedelta(seconds=d.seconds)
        local = start.astimezone(self.tz)
        day, left = local.date(), d.workdays
        while left:
            day += timedelta(days=1)
            if self.is_workday(day):
                left -= 1
        moved = datetime.combine(day, local.timetz()).replace(tzinfo=self.tz)
        return moved.astimezone(start.tzinfo)

    def workdays_between(self, start: datetime, end: datetime) -> int:
        """Whole working days from ``start`` to ``end`` (0 if end is not later)."""
        n, cur = 0, start
        while True:
            nxt = self.add(cur, Duration(workdays=1))
            if nxt > end:
                return n
            n, cur = n + 1, nxt
