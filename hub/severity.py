"""Severity (blue < yellow < orange < red, 蓝/黄/橙/红) from the rules in ``rules.yaml``.

The base level of the type, raised by the type's conditions (detector confidence, how
long the condition has lasted, water coverage, people involved, zone importance) and by
a detector's hint (a stranded person lying or standing in water). Automatic changes only
raise a level; once an operator has set the level with a reason, rules leave it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.config import SEVERITIES, Severity, SeverityRaise, Site

IMPORTANCE = ("normal", "high", "critical")


@dataclass(frozen=True)
class Facts:
    """What is known about an incident that severity rules look at."""

    confidence: float = 0.0
    duration_s: float = 0.0
    coverage: float | None = None
    people: int = 0
    zone_importance: str = "normal"
    hint: str | None = None


def higher(a: Severity, b: Severity) -> Severity:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


def _holds(r: SeverityRaise, f: Facts) -> bool:
    checks = [
        r.confidence is None or f.confidence >= r.confidence,
        r.duration_s is None or f.duration_s >= r.duration_s,
        r.coverage is None or (f.coverage is not None and f.coverage >= r.coverage),
        r.people is None or f.people >= r.people,
        r.zone_importance is None
        or IMPORTANCE.index(f.zone_importance) >= IMPORTANCE.index(r.zone_importance),
    ]
    return all(checks)


def severity_for(site: Site, type_: str, facts: Facts) -> Severity:
    """The severity the rules give an incident of ``type_`` with these facts."""
    sev: Severity = "yellow"
    for rule in site.rules.severity:
        if rule.type == type_:
            sev = rule.severity
            if rule.raise_to and facts.confidence >= rule.raise_above_confidence:
                sev = higher(sev, rule.raise_to)
            for r in rule.raise_when:
                if _holds(r, facts):
                    sev = higher(sev, r.to)
            break
    if facts.hint in SEVERITIES:
        sev = higher(sev, facts.hint)
    return sev
