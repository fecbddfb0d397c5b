"""The incident state machine: which action moves an incident from which state to which.

```
new --confirm--> confirmed --dispatch--> dispatched --accept--> accepted --on_scene--> on_scene
 |                  |                        ^  |                  |                     |
 |                  |                        |  +----(re)dispatch  +------resolve--------+
 +-- dismiss -------+--> dismissed           |                                |
                                             |                           resolved --close--> closed
escalate (any open state) --> escalated -----+ (the upper level dispatches)   |
reopen: resolved / closed / dismissed --> reopened (then confirm, dispatch, dismiss...)
```

Self-actions leave the state as it is and only add to the timeline: comment (any
state), feedback and en_route (by the assignee, while it works on the case), severity
(an operator's change with a reason), challenge (a lower level asks the upper level about
an escalated case), export (a reviewer takes a signed evidence bundle: who and why go
into the timeline, in any state), evidence_unlock (a reviewer releases the recordings
locked as evidence, with a reason, in any state).
"""

from __future__ import annotations

from hub.models import State

STATES: tuple[State, ...] = ("new", "confirmed", "dispatched", "accepted", "on_scene",
                             "resolved", "closed", "dismissed", "escalated", "reopened")
OPEN: frozenset[State] = frozenset(
    {"new", "confirmed", "dispatched", "accepted", "on_scene", "reopened", "escalated"}
)
DONE: frozenset[State] = frozenset({"resolved", "closed", "dismissed"})
WORKING: frozenset[State] = frozenset({"dispatched", "accepted", "on_scene"})
SAME = None  # marks an action that leaves the state unchanged

# action -> (states it may start from, state it leads to; None = unchanged)
TRANSITIONS: dict[str, tuple[frozenset[State], State | None]] = {
    "confirm": (frozenset({"new", "reopened"}), "confirmed"),
    "dispatch": (frozenset({"new", "confirmed", "reopened", "escalated", "dispatched"}),
                 "dispatched"),
    "accept": (frozenset({"dispatched"}), "accepted"),
    "en_route": (frozenset({"accepted"}), SAME),
    "on_scene": (frozenset({"dispatched", "accepted"}), "on_scene"),
    "feedback": (WORKING, SAME),
    "resolve": (frozenset({"accepted", "on_scene"}), "resolved"),
    "close": (frozenset({"resolved"}), "closed"),
    "dismiss": (frozenset({"new", "confirmed", "reopened"}), "dismissed"),
    "reopen": (DONE, "reopened"),
    "escalate": (OPEN, "escalated"),
    "challenge": (frozenset({"escalated"}), SAME),
    "severity": (OPEN, SAME),
    "comment": (frozenset(STATES), SAME),
    "export": (frozenset(STATES), SAME),
    "evidence_unlock": (frozenset(STATES), SAME),
}
ACTIONS: tuple[str, ...] = tuple(TRANSITIONS)


def next_state(action: str, state: str) -> State | None:
    """The state ``action`` leads to from ``state``, or None when it is not allowed."""
    rule = TRANSITIONS.get(action)
    if rule is None or state not in rule[0]:
        return None
    to = rule[1]
    return to if to is not None else state


def allowed_from(state: str) -> set[str]:
    """Actions allowed in ``state``."""
    return {a for a, (src, _) in TRANSITIONS.items() if state in src}
