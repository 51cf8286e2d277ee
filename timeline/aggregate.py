"""The `Student` aggregate: one stream of facts per student number.

Its topics (`timeline.aggregate:Student...`) are stored with every event: do not move it.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Transcoding

STUDENT_NAMESPACE = UUID("5b0f3f6e-3c3c-4f4e-9a57-6d2b8f1c7a10")


def student_uuid(student_id: str) -> UUID:
    """The deterministic aggregate id of a student number."""
    return uuid5(STUDENT_NAMESPACE, student_id)


_NAMESPACE_BYTES = STUDENT_NAMESPACE.bytes


def student_uuid_hex(student_id: str) -> str:
    """`student_uuid(student_id).hex`, without making the `UUID` (what SQLite stores)."""
    # uuid5: the first 16 bytes of SHA-1(namespace + name), version 5, RFC 4122 variant.
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + student_id.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


class DateAsISO(Transcoding):
    """`datetime.date` as `YYYY-MM-DD` (the library's default transcoder has none)."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        """Encode a date."""
        return obj.isoformat()

    def decode(self, data: str) -> date:
        """Decode a date."""
        return date.fromisoformat(data)


class Student(Aggregate):
    """One student's stream of facts. Small on purpose: the rules live in projections/."""

    class Registered(Aggregate.Created):
        """The stream was opened for a student number."""

        student_id: str

    class FactRecorded(Aggregate.Event):
        """A feed event was accepted; `timestamp` is its record time."""

        source: str
        event_id: str
        type: str
        occurred_on: date
        data: dict[str, Any]
        note: str | None
        digest: str

        def apply(self, aggregate: Aggregate) -> None:
            """Count the fact."""
            aggregate.fact_count += 1  # type: ignore[attr-defined]

    def __init__(self, student_id: str) -> None:
        self.student_id = student_id
        self.fact_count = 0

    @classmethod
    def open(cls, student_id: str, at: datetime) -> Student:
        """Open the stream of a new student."""
        return cls._create(
            cls.Registered, id=student_uuid(student_id), student_id=student_id, timestamp=at
        )

    def record(
        self,
        *,
        source: str,
        event_id: str,
        type: str,
        occurred_on: date,
        data: dict[str, Any],
        note: str | None,
        digest: str,
        at: datetime,
    ) -> None:
        """Record one accepted fact at record time `at`."""
        self.trigger_event(
            self.FactRecorded,
            source=source,
            event_id=event_id,
            type=type,
            occurred_on=occurred_on,
            data=data,
            note=note,
            digest=digest,
            timestamp=at,
        )
