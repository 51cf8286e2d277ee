"""Backup and restore: the whole event log as JSON Lines, with record times.

`export_events` writes a header line, one line per stored event in the order the store
recorded them (the feed's own fields, plus `recorded_at`), and a trailer line with the
count and the SHA-256 of the lines before it, so a truncated or edited backup is recognised
as one. `import_events` restores such a file
through the normal ingestion path (contract, idempotency keys, retraction checks,
batches) but gives each event the record time it had, so every view — including
`--known-at` views — is the same in the restored store, on either backend.

The backup holds personal data in clear text (it is decrypted for export and encrypted
again on import when the target store has a cipher key): keep it as carefully as the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from timeline.aggregate import Student
from timeline.clock import Clock, system_clock
from timeline.history import plain
from timeline.ingest import BATCH_SIZE, Ingestor, IngestReport, RawRecord, StopRequest
from timeline.rawjson import loads_strict
from timeline.store import TimelineStore

EXPORT_FORMAT = "residency-timeline/export"
EXPORT_VERSION = 1
_READ_BATCH = 1000


@dataclass
class ExportReport:
    """What an export wrote."""

    events: int = 0
    students: int = 0
    position: int = 0


def _line(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def export_events(
    store: TimelineStore,
    out: IO[bytes],
    *,
    since: datetime | None = None,
    after: int | None = None,
    clock: Clock = system_clock,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Write the log (events recorded after `since`, or all) as export JSON Lines to `out`.

    The export is a snapshot: events stored after it started are left for the next one.
    `after`: only events after this log position (an earlier export's header `position`):
    unlike `since`, it misses no event stamped before that export but committed after it.
    """
    last = store.max_position()
    report = ExportReport(position=last)
    digest = hashlib.sha256()

    def write(line: bytes) -> None:
        digest.update(line)
        out.write(line)

    write(
        _line(
            {
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "exported_at": clock().isoformat(),
                "since": since.isoformat() if since else None,
                **({"after": after} if after is not None else {}),
                "position": last,
            }
        )
    )
    names: dict[str, str] = {}
    students: set[str] = set()
    position = 0
    while position < last:
        notifications = store.notifications(position, _READ_BATCH)
        if not notifications:
            break
        for notification in notifications:
            if notification.id > last:
                break
            event = store.decode(notification)
            uid = notification.originator_id.hex
            if isinstance(event, Student.Registered):
                names[uid] = event.student_id
                continue
            if not isinstance(event, Student.FactRecorded):
                continue
            if since is not None and event.timestamp <= since:
                continue
            if after is not None and notification.id <= after:
                continue
            student_id = names[uid]
            line: dict[str, Any] = {
                "event_id": event.event_id,
                "source": event.source,
                "student_id": student_id,
                "type": event.type,
                "occurred_on": event.occurred_on.isoformat(),
            }
            line.update({k: plain(v) for k, v in event.data.items() if v is not None})
            if event.note is not None:
                line["note"] = event.note
            line["recorded_at"] = event.timestamp.astimezone(UTC).isoformat()
            write(_line(line))
            report.events += 1
            students.add(student_id)
        position = min(notifications[-1].id, last)
        if on_progress:
            on_progress(position, last)
    out.write(_line({"end": True, "events": report.events, "sha256": digest.hexdigest()}))
    report.students = len(students)
    return report


def _recorded_at(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("recorded_at: required, an ISO 8601 timestamp with an offset")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("recorded_at: not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise ValueError("recorded_at: must carry a UTC offset")
    return moment.astimezone(UTC)


def read_export(stream: BinaryIO) -> Iterator[RawRecord]:
    """The events of an export file as records with their record times.

    A file without the export header, or whose trailer is missing or disagrees with the
    number of events (a backup cut short), yields a rejection, so an atomic restore of it
    stores nothing.
    """
    number = 0
    events = 0
    ended = False
    digest = hashlib.sha256()
    for number, raw in enumerate(stream, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            value = loads_strict(text)
        except ValueError as exc:
            yield RawRecord(number, error=str(exc))
            continue
        if number == 1:
            digest.update(text + b"\n")
            if not isinstance(value, dict) or value.get("format") != EXPORT_FORMAT:
                yield RawRecord(number, error="not a residency-timeline export (no header line)")
                return
            if value.get("version") != EXPORT_VERSION:
                yield RawRecord(
                    number, error=f"export version {value.get('version')!r} is not supported"
                )
                return
            continue
        if ended:
            yield RawRecord(number, error="content after the export's end line")
            continue
        if isinstance(value, dict) and value.get("end") is True:
            ended = True
            if value.get("events") != events:
                yield RawRecord(
                    number,
                    error=f"the end line counts {value.get('events')!r} events, "
                    f"the file holds {events}",
                )
            elif "sha256" in value and value["sha256"] != digest.hexdigest():
                yield RawRecord(
                    number,
                    error="the export was altered or damaged: its lines do not match "
                    "the end line's sha256",
                )
            continue
        events += 1
        digest.update(text + b"\n")
        if not isinstance(value, dict):
            yield RawRecord(number, error="an event must be a JSON object")
            continue
        try:
            moment = _recorded_at(value.pop("recorded_at", None))
        except ValueError as exc:
            yield RawRecord(number, error=str(exc))
            continue
        yield RawRecord(number, value, recorded_at=moment)
    if number == 0:
        yield RawRecord(1, error="not a residency-timeline export (the file is empty)")
    elif not ended:
        yield RawRecord(number + 1, error="the export is truncated: its end line is missing")


def import_events(
    store: TimelineStore,
    path: Path | BinaryIO,
    *,
    batch_size: int = BATCH_SIZE,
    stop: StopRequest | None = None,
) -> IngestReport:
    """Restore an export into `store`: all or nothing, each event at its record time.

    Idempotent like ingestion: running it again (after an interruption, or over a store
    that already holds part of the file) counts what is stored as duplicates. `stop`, once
    set, ends it before its next batch (the report then says `interrupted`). `path` may
    be a binary stream (standard input), read once.
    """

    def records() -> Iterator[RawRecord]:
        if not isinstance(path, Path):
            yield from read_export(path)
            return
        with path.open("rb") as stream:
            yield from read_export(stream)

    return Ingestor(store, batch_size=batch_size, stop=stop).run(records, partial=False)
