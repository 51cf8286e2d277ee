"""What-if: hypothetical events evaluated with the stored facts, never stored."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from timeline.contract import parse_event
from timeline.errors import ContractError
from timeline.facts import Fact
from timeline.ingest import read_csv, read_jsonl


def hypothetical_facts(path: Path, student_id: str, at: datetime, first_seq: int) -> list[Fact]:
    """The events of a JSONL/CSV file as facts of `student_id`, recorded at `at`.

    `student_id` may be left out of the file's events; any other student id is an error.
    """
    reader = read_csv if path.suffix.lower() == ".csv" else read_jsonl
    facts: list[Fact] = []
    with path.open("rb") as stream:
        for record in reader(stream):
            if record.error:
                raise ContractError([f"line {record.position}: {record.error}"])
            payload = dict(record.payload)
            payload.setdefault("student_id", student_id)
            payload.setdefault("event_id", f"what-if-{record.position}")
            try:
                event = parse_event(payload)
            except ContractError as exc:
                raise ContractError(
                    [f"line {record.position}: {m}" for m in exc.messages]
                ) from None
            if event.student_id != student_id:
                wrong = f"student_id {event.student_id!r} is not {student_id!r}"
                raise ContractError([f"line {record.position}: {wrong}"])
            facts.append(
                Fact(
                    student_id=student_id,
                    source=event.source,
                    event_id=event.event_id,
                    type=event.type,  # type: ignore[attr-defined]
                    occurred_on=event.occurred_on,
                    recorded_at=at,
                    seq=first_seq + len(facts),
                    data=event.body(),
                    note=event.note,
                )
            )
    return facts
