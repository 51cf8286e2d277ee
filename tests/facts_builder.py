"""Build `Fact` lists for projection tests without a store: `Timeline().add(...)`."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from timeline.contract import parse_event
from timeline.facts import Fact


class Timeline:
    """Facts of one student, each validated by the real feed contract."""

    def __init__(self, student_id: str = "S1") -> None:
        self.student_id = student_id
        self.facts: list[Fact] = []
        self.recorded = datetime(2024, 1, 1, tzinfo=UTC)

    def add(
        self,
        type_: str,
        on: str,
        event_id: str | None = None,
        recorded_at: datetime | None = None,
        source: str = "manual",
        **fields: Any,
    ) -> Fact:
        event_id = event_id or f"e{len(self.facts) + 1}"
        raw = {
            "event_id": event_id,
            "student_id": self.student_id,
            "type": type_,
            "occurred_on": on,
            "source": source,
            **fields,
        }
        event = parse_event(raw)
        self.recorded += timedelta(minutes=1)
        fact = Fact(
            student_id=self.student_id,
            source=source,
            event_id=event_id,
            type=type_,
            occurred_on=event.occurred_on,
            recorded_at=recorded_at or self.recorded,
            seq=len(self.facts) + 2,
            data=event.body(),
            note=None,
        )
        self.facts.append(fact)
        return fact


def d(text: str) -> date:
    return date.fromisoformat(text)


def tasks_of(v, kind: str) -> list:
    """The view's tasks of one kind."""
    return [t for t in v.tasks if t.kind == kind]


def only(v, kind: str):
    """The view's one task of `kind` (fails if there are none or several)."""
    found = tasks_of(v, kind)
    assert len(found) == 1, f"expected one {kind} task, got {[t.kind for t in v.tasks]}"
    return found[0]


def fines_of(v, kind: str) -> list:
    """The view's fines of one kind."""
    return [f for f in v.fines if f.kind == kind]
