"""Feed events for the write-side tests: one valid example per SPEC §2 type, and builders.

Not a test module (no `test_` prefix): imported by the test files next to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# One valid example of every event type, using (most of) its optional fields too.
VALID: dict[str, dict[str, Any]] = {
    "entered": {"visa": "visitor", "visa_code": "fs", "stay_until": "2024-05-30"},
    "visa_changed": {"to": "resident"},
    "registered": {"semester": "113-1"},
    "arc_applied": {"application": "initial", "basis": "admission_notice", "by_agent": True},
    "arc_issued": {"valid_until": "2025-03-31", "arc_number": "A800000001"},
    "address_changed": {"address": "No. 1, Sec. 4, Roosevelt Rd, Taipei"},
    "workplace_changed": {"workplace": "Lab 3, Dept. of Physics, NTU"},
    "contact_updated": {"email": "student@example.org", "language": "en"},
    "details_updated": {"fields": ["address", "passport"]},
    "arc_lost": {},
    "passport_lost": {},
    "passport_replaced": {"passport_number": "X1234567"},
    "departed": {},
    "studies_ceased": {"reason": "withdrawn"},
    "arc_revoked": {"leave_by": "2024-04-10"},
    "fine_imposed": {"fine": "late_arc_application", "amount_ntd": 2000},
    "fine_paid": {"amount_ntd": 2000, "fine": "late_arc_application"},
    "retracted": {"retracts": "e0", "reason": "sent by mistake"},
}

# The type-specific fields each type requires (SPEC §2).
REQUIRED: dict[str, tuple[str, ...]] = {
    "entered": ("visa",),
    "visa_changed": ("to",),
    "registered": ("semester",),
    "arc_applied": ("application",),
    "arc_issued": ("valid_until",),
    "address_changed": ("address",),
    "workplace_changed": (),
    "contact_updated": (),
    "details_updated": ("fields",),
    "arc_lost": (),
    "passport_lost": (),
    "passport_replaced": (),
    "departed": (),
    "studies_ceased": ("reason",),
    "arc_revoked": (),
    "fine_imposed": ("fine", "amount_ntd"),
    "fine_paid": ("amount_ntd",),
    "retracted": ("retracts", "reason"),
}

ENVELOPE_REQUIRED = ("event_id", "student_id", "occurred_on")


def ev(student: str, name: str, type_: str, on: str, **fields: Any) -> dict[str, Any]:
    """A raw event of `student` keyed `<student>-<name>` (for scenario tests)."""
    return {
        "event_id": f"{student}-{name}",
        "student_id": student,
        "type": type_,
        "occurred_on": on,
        **fields,
    }


def example(type_: str, **overrides: Any) -> dict[str, Any]:
    """A valid raw event of `type_` (student S1, 2024-03-01), with `overrides` applied."""
    raw: dict[str, Any] = {
        "event_id": f"ex-{type_}",
        "student_id": "S1",
        "type": type_,
        "occurred_on": "2024-03-01",
        **VALID[type_],
    }
    raw.update(overrides)
    return raw


def entered(event_id: str, student: str = "S1", day: str = "2024-03-16", **extra: Any) -> dict:
    """An `entered` on a resident visa."""
    return {
        "event_id": event_id,
        "student_id": student,
        "type": "entered",
        "occurred_on": day,
        "visa": "resident",
        **extra,
    }


def registered(event_id: str, student: str = "S1", day: str = "2024-03-20", **extra: Any) -> dict:
    """A `registered` for semester 112-2."""
    return {
        "event_id": event_id,
        "student_id": student,
        "type": "registered",
        "occurred_on": day,
        "semester": "112-2",
        **extra,
    }


def retraction(
    event_id: str, retracts: str, student: str = "S1", day: str = "2024-04-01", **extra: Any
) -> dict:
    """A `retracted` of `retracts`."""
    return {
        "event_id": event_id,
        "student_id": student,
        "type": "retracted",
        "occurred_on": day,
        "retracts": retracts,
        "reason": "wrong student",
        **extra,
    }


def jsonl(*events: Any) -> str:
    """JSON Lines text; a `None` item becomes a blank line, a `str` item is written as is."""
    lines = []
    for event in events:
        if event is None:
            lines.append("")
        elif isinstance(event, str):
            lines.append(event)
        else:
            lines.append(json.dumps(event, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> Path:
    """Write UTF-8 text and return the path."""
    path.write_text(text, encoding="utf-8")
    return path
