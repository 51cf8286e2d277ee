"""What changed between two record moments: the answer to "why did the alert say X on Monday?".

`what_changed(stream, as_of, known_a, known_b, rules)` derives the student's view as of
one day twice — as known at A and as known at B, with the same pure `view()` the page
uses — and compares them:

- the status and the running overstay (old → new);
- the tasks and the fines: `added`, `removed`, or `changed` with each field's old → new;
- the events recorded in (A, B] — retractions included — which are why.

A task or fine is the "same" one in both views when it has the same kind, rule and first
causing event (its trigger: what opened the task or made the fine accrue); several with
the same identity are paired in their view order. A task whose trigger was retracted is
therefore `removed`, and one opened by a late-recorded earlier event is `added`.

The events carry their envelope only (id, source, type, days, record time, what a
retraction retracts), never their fields: addresses, passport numbers, notes and a
retraction's reason stay out of the answer.

A must not be after B (`ChangeWindowError`); A == B is an empty answer. Both must be aware
datetimes (record times are UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from projections.dates import TaiwanCalendar
from projections.engine import view
from projections.models import Fine, Overstay, Status, Task
from projections.rules import RuleBook
from timeline.errors import TimelineError
from timeline.facts import Fact, retraction_times

Change = Literal["added", "removed", "changed"]
# A task's documents follow from its kind; they are not compared.
TASK_FIELDS = ("status", "opens_on", "due_on", "done_on", "where", "fee_ntd", "rule", "caused_by")
FINE_FIELDS = (
    "status",
    "accrued_on",
    "amount_min_ntd",
    "amount_max_ntd",
    "amount_ntd",
    "paid_ntd",
    "offense",
    "rule",
    "caused_by",
)


class ChangeWindowError(TimelineError):
    """The two record moments cannot be compared (A after B, or a naive datetime)."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldChange(_Out):
    """One field of a task or fine, as known at A and as known at B (JSON values)."""

    field: str
    old: Any
    new: Any


class StatusChange(_Out):
    """The student's status as known at A and at B."""

    old: Status
    new: Status


class OverstayChange(_Out):
    """The running overstay (or none) as known at A and at B."""

    old: Overstay | None
    new: Overstay | None


class TaskChange(_Out):
    """A task that appeared, disappeared or differs between A and B."""

    change: Change
    kind: str
    rule: str
    cause: str | None  # the first causing event: what makes it the same task
    old: Task | None
    new: Task | None
    fields: list[FieldChange]


class FineChange(_Out):
    """A fine that appeared, disappeared or differs between A and B."""

    change: Change
    kind: str
    rule: str
    cause: str | None
    old: Fine | None
    new: Fine | None
    fields: list[FieldChange]


class RecordedEvent(_Out):
    """An event recorded in (A, B]: its envelope, never its personal or free-text fields."""

    event_id: str
    source: str
    type: str
    occurred_on: date
    recorded_at: datetime
    retracts: str | None = None  # a retraction: the event_id it takes back
    retracted_at: datetime | None = None  # itself retracted by B: from when


class Changes(_Out):
    """Everything that differs between the view as known at A and as known at B."""

    student_id: str
    as_of: date
    known_a: datetime
    known_b: datetime
    status: StatusChange | None
    overstay: OverstayChange | None
    tasks: list[TaskChange]
    fines: list[FineChange]
    events: list[RecordedEvent]

    @property
    def unchanged(self) -> bool:
        """No status, overstay, task or fine differs (events may still have been recorded)."""
        return not (self.status or self.overstay or self.tasks or self.fines)

    def as_json(self) -> dict[str, Any]:
        """The changes as JSON-ready values (dates and times as ISO 8601 text)."""
        return self.model_dump(mode="json")


Item = TypeVar("Item", Task, Fine)


def _identity(item: Task | Fine) -> tuple[str, str, str | None]:
    return (item.kind, item.rule, item.caused_by[0] if item.caused_by else None)


def _pair(old: Sequence[Item], new: Sequence[Item]) -> list[tuple[Item | None, Item | None]]:
    """Match items by identity, in view order; unmatched ones pair with None."""
    waiting: dict[tuple[str, str, str | None], list[Item]] = {}
    for item in new:
        waiting.setdefault(_identity(item), []).append(item)
    pairs: list[tuple[Item | None, Item | None]] = []
    for item in old:
        same = waiting.get(_identity(item))
        pairs.append((item, same.pop(0) if same else None))
    matched = {id(b) for _, b in pairs if b is not None}
    pairs += [(None, item) for item in new if id(item) not in matched]
    return pairs


def _field_changes(old: BaseModel, new: BaseModel, fields: Sequence[str]) -> list[FieldChange]:
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return [
        FieldChange(field=name, old=before[name], new=after[name])
        for name in fields
        if before[name] != after[name]
    ]


def _compare(
    old: Sequence[Item],
    new: Sequence[Item],
    fields: Sequence[str],
    build: Callable[..., Any],
) -> list[Any]:
    out = []
    for a, b in _pair(old, new):
        kind, rule, cause = _identity(a or b)  # type: ignore[arg-type]
        if a is None or b is None:
            change = "added" if a is None else "removed"
            out.append(
                build(change=change, kind=kind, rule=rule, cause=cause, old=a, new=b, fields=[])
            )
            continue
        diff = _field_changes(a, b, fields)
        if diff:
            out.append(
                build(
                    change="changed", kind=kind, rule=rule, cause=cause, old=a, new=b, fields=diff
                )
            )
    return out


def recorded_between(
    stream: Sequence[Fact], known_a: datetime, known_b: datetime
) -> list[RecordedEvent]:
    """The events recorded after `known_a` and at or before `known_b`, in record order."""
    retracted = retraction_times(stream, known_b)
    window = [f for f in stream if known_a < f.recorded_at <= known_b]
    window.sort(key=lambda f: (f.recorded_at, f.seq))
    return [
        RecordedEvent(
            event_id=f.event_id,
            source=f.source,
            type=f.type,
            occurred_on=f.occurred_on,
            recorded_at=f.recorded_at,
            retracts=f.get("retracts") if f.type == "retracted" else None,
            retracted_at=retracted.get(f.key),
        )
        for f in window
    ]


def what_changed(
    stream: list[Fact],
    as_of: date,
    known_a: datetime,
    known_b: datetime,
    rules: RuleBook,
    *,
    calendar: TaiwanCalendar | None = None,
) -> Changes:
    """How the view as of `as_of` differs as known at `known_b` from as known at `known_a`.

    `stream` is the student's stored stream (retractions included). Raises
    ChangeWindowError when A is after B or either is naive, and the engine's
    DerivationError when the student cannot be derived at one of the moments.
    """
    for moment in (known_a, known_b):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ChangeWindowError("record moments must carry a time zone (record time is UTC)")
    if known_a > known_b:
        raise ChangeWindowError(
            f"the first moment ({known_a.isoformat()}) is after the second "
            f"({known_b.isoformat()}): ask from the earlier moment to the later one"
        )
    student_id = stream[0].student_id if stream else ""
    before = view(stream, as_of, known_a, rules, calendar, student_id=student_id)
    after = view(stream, as_of, known_b, rules, calendar, student_id=student_id)
    return Changes(
        student_id=student_id,
        as_of=as_of,
        known_a=known_a,
        known_b=known_b,
        status=None
        if before.status == after.status
        else StatusChange(old=before.status, new=after.status),
        overstay=None
        if before.overstay == after.overstay
        else OverstayChange(old=before.overstay, new=after.overstay),
        tasks=_compare(before.tasks, after.tasks, TASK_FIELDS, TaskChange),
        fines=_compare(before.fines, after.fines, FINE_FIELDS, FineChange),
        events=recorded_between(stream, known_a, known_b),
    )
