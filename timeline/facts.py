"""The stored fact as the read side sees it, and the record-time filter.

A `Fact` is one accepted feed event plus its record time (`recorded_at`) and its
position in the student's stream (`seq`). `known_facts` answers the bitemporal
question "which facts counted at record moment T?" for any T.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from operator import attrgetter
from typing import Any


# Not `frozen`: a frozen dataclass sets each field through `object.__setattr__`, which
# was a sixth of decoding an event in a rebuild. Nothing changes a fact once built.
@dataclass(slots=True)
class Fact:
    """One stored event of one student (treat as immutable)."""

    student_id: str
    source: str
    event_id: str
    type: str
    occurred_on: date
    recorded_at: datetime
    seq: int
    data: Mapping[str, Any] = field(default_factory=dict)
    note: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """The idempotency key (source, event_id)."""
        return (self.source, self.event_id)

    def get(self, name: str, default: Any = None) -> Any:
        """A type-specific field, or `default`."""
        return self.data.get(name, default)


_VALID_ORDER = attrgetter("occurred_on", "recorded_at", "seq")  # C-level sort key


def chronological(facts: Iterable[Fact]) -> list[Fact]:
    """Facts ordered by valid time, ties by record time, then stream position."""
    return sorted(facts, key=_VALID_ORDER)


def retraction_times(
    facts: Iterable[Fact], known_at: datetime | None = None
) -> dict[tuple[str, str], datetime]:
    """When each retracted (source, event_id) stopped counting, as known at `known_at`."""
    retracted: dict[tuple[str, str], datetime] = {}
    for fact in facts:
        if fact.type != "retracted":
            continue
        if known_at is not None and fact.recorded_at > known_at:
            continue
        target = (fact.source, fact.data.get("retracts"))
        if target not in retracted or fact.recorded_at < retracted[target]:
            retracted[target] = fact.recorded_at
    return retracted


def known_facts(facts: Iterable[Fact], known_at: datetime | None = None) -> list[Fact]:
    """The facts that counted at `known_at` (all when None), retractions applied, in order.

    A fact counts when it was recorded at or before `known_at` and no retraction of it
    was recorded at or before `known_at`. Retraction events themselves are not facts
    about the student and are left out.
    """
    # One pass: the candidates, and the retracted keys (only which, not when, matters here).
    kept: list[Fact] = []
    retracted: set[tuple[str, Any]] = set()
    for fact in facts:
        if known_at is not None and fact.recorded_at > known_at:
            continue
        if fact.type == "retracted":
            retracted.add((fact.source, fact.data.get("retracts")))
        else:
            kept.append(fact)
    if retracted:
        kept = [f for f in kept if (f.source, f.event_id) not in retracted]
    kept.sort(key=_VALID_ORDER)
    return kept
