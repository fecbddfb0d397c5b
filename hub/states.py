"""The incident state machine: which action moves an incident from which state to which.

    new -> confirmed -> dispatched -> accepted -> on_scene -> resolved -> closed
    any open state -> dismissed (false alarm); closed/dismissed -> reopened;
    open states -> escalated (up the grid)

Only the actions wired in the API are reachable today; the table is the whole design.
"""

from __future__ import annotations

from hub.models import State

OPEN: frozenset[State] = frozenset(
    {"new", "confirmed", "dispatched", "accepted", "on_scene", "reopened", "escalated"}
)

# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[State], State]] = {
    "confirm": (frozenset({"new", "reopened"}), "confirmed"),
    "dispatch": (frozenset({"new", "confirmed", "reopened", "escalated", "dispatched"}),
                 "dispatched"),
    "accept": (frozenset({"dispatched"}), "accepted"),
    "on_scene": (frozenset({"accepted"}), "on_scene"),
    "resolve": (frozenset({"accepted", "on_scene"}), "resolved"),
    "close": (frozenset({"resolved"}), "closed"),
    "dismiss": (frozenset({"new", "confirmed", "reopened"}), "dismissed"),
    "reopen": (frozenset({"resolved", "closed", "dismissed"}), "reopened"),
    "escalate": (frozenset({"new", "confirmed", "dispatched", "accepted", "reopened"}),
                 "escalated"),
}


def next_state(action: str, state: str) -> State | None:
    """The state ``action`` leads to from ``state``, or None when it is not allowed."""
    rule = TRANSITIONS.get(action)
    if rule is None or state not in rule[0]:
        return None
    return rule[1]


def allowed_from(state: str) -> set[str]:
    """Actions allowed in ``state``."""
    return {a for a, (src, _) in TRANSITIONS.items() if state in src}
