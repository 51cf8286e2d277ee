"""Ingestion: stream raw feed records into the store, idempotently and in batches.

Records are validated against the contract, classified against the feed-key index
(new, duplicate, conflict) and saved many aggregates per transaction.

- **Atomic** (default): a first pass validates and classifies the whole input without
  writing; if anything is rejected nothing is stored. Only then does a second pass write,
  one transaction per batch. (A crash in the second pass leaves a prefix stored; sending
  the same input again completes it, the stored part counting as duplicates.) When the
  first pass finds nothing new (a feed sent again), there is no second pass. The first
  pass remembers the keys of the whole input in a temporary SQLite table, not in memory.
- **Partial**: one pass; good records are stored, bad ones reported.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from eventsourcing.persistence import IntegrityError

from timeline.aggregate import Student
from timeline.contract import parse_event
from timeline.errors import ContractError
from timeline.store import FeedKey, TimelineStore

log = logging.getLogger(__name__)

BATCH_SIZE = 2000
SAVE_ATTEMPTS = 8
AGGREGATE_CACHE = 20_000
SEEN_CACHE_KIB = 16_384  # page cache of the dry pass's key table; the rest stays on disk
_SEEN_CHUNK = 500
# What classification remembers of each fresh key: (digest, student_id, type).
Seen = tuple[str, str, str]
# The canonical JSON of a digest (`json.dumps(..., sort_keys=True, separators=(",", ":"))`,
# without building an encoder per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as read: its position (line or index) and its object or read error."""

    position: int
    payload: Any = None
    error: str | None = None
    # Set only when restoring a backup: the record time the event had in the exported store.
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that was not stored, and why."""

    position: int
    error: str


@dataclass
class IngestReport:
    """What an ingest did: the JSON summary of SPEC §4."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    position_name: str = "line"
    halted: bool = False

    @property
    def ok(self) -> bool:
        """Whether nothing was rejected."""
        return not self.rejected

    def as_json(self) -> dict[str, Any]:
        """`{"accepted", "duplicates", "rejected": [{"line"|"index", "error"}]}`."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{self.position_name: r.position, "error": r.error} for r in self.rejected],
        }


# -- readers -------------------------------------------------------------------------------
def read_jsonl(
    stream: BinaryIO, on_bytes: Callable[[int], None] | None = None
) -> Iterator[RawRecord]:
    """JSON Lines: one object per physical line; blank lines are skipped."""
    for number, raw in enumerate(stream, start=1):
        if on_bytes:
            on_bytes(len(raw))
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            yield RawRecord(
                number,
                error=f"not UTF-8 text (byte {exc.start + 1} of the line); feeds must be UTF-8",
            )
            continue
        if not text:
            continue
        try:
            yield RawRecord(number, json.loads(text))
        except json.JSONDecodeError as exc:
            yield RawRecord(number, error=f"invalid JSON: {exc.msg} at column {exc.colno}")


_LIST_FIELDS = {"fields"}
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that surrogateescape could not decode


def csv_cell(name: str, value: str) -> Any:
    """A CSV cell as the JSON value it stands for (lists split on ';', ',' or '|')."""
    if name in _LIST_FIELDS:
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [
            part.strip()
            for part in text.replace("|", ";").replace(",", ";").split(";")
            if part.strip()
        ]
    if name in ("by_agent",):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
    if name == "amount_ntd" and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def read_csv(
    stream: BinaryIO, on_bytes: Callable[[int], None] | None = None
) -> Iterator[RawRecord]:
    """CSV with a header row of SPEC §2 field names; empty cells are absent fields."""

    def lines() -> Iterator[str]:
        for number, raw in enumerate(stream, start=1):
            if on_bytes:
                on_bytes(len(raw))
            # surrogateescape keeps bad bytes visible, so the row can be rejected below
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8", errors="surrogateescape")

    reader = csv.reader(lines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    previous_end = reader.line_num
    for row in reader:
        start, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if any(_NOT_UTF8.search(cell) for cell in row):
            yield RawRecord(start, error="not UTF-8 text; feeds must be UTF-8")
            continue
        if len(row) > len(header):
            yield RawRecord(
                start, error=f"row has {len(row)} cells but the header names {len(header)}"
            )
            continue
        try:
            payload = {
                name: csv_cell(name, cell)
                for name, cell in zip(header, row, strict=False)
                if cell.strip() != ""
            }
        except json.JSONDecodeError as exc:
            yield RawRecord(start, error=f"fields: invalid JSON list: {exc.msg}")
            continue
        yield RawRecord(start, payload)


def read_array(items: list[Any]) -> Iterator[RawRecord]:
    """A JSON array (HTTP body): positions are 0-based array indexes."""
    for index, item in enumerate(items):
        yield RawRecord(index, item)


def detect_format(path: Path, declared: str | None) -> str:
    """`jsonl` or `csv`, from `--format` or else the file name."""
    if declared:
        return declared
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


# -- ingestion -----------------------------------------------------------------------------
@dataclass(slots=True)
class _Valid:
    position: int
    student_id: str
    source: str
    event_id: str
    type: str
    event: Any
    digest: str
    key: tuple[str, str]  # (source, event_id), built once: classification reads it often
    recorded_at: datetime | None = None


class SeenKeys:
    """The keys a dry pass found fresh so far, over the whole input, in bounded memory.

    A private temporary SQLite database (kept in its page cache up to `SEEN_CACHE_KIB`,
    then spilled to a temporary file; deleted when closed) holds, per key, what a later
    record needs: its digest (duplicate or conflict), and for a retraction the target's
    student and type. A dict of a million keys would take some 250 MB.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute(f"PRAGMA cache_size=-{SEEN_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE seen (source TEXT, event_id TEXT, digest TEXT, student_id TEXT, "
            "type TEXT, PRIMARY KEY (source, event_id)) WITHOUT ROWID"
        )

    def get_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Seen]:
        """The remembered entries among these keys."""
        found: dict[tuple[str, str], Seen] = {}
        for start in range(0, len(keys), _SEEN_CHUNK):
            chunk = keys[start : start + _SEEN_CHUNK]
            values = ",".join("(?,?)" for _ in chunk)
            for source, event_id, digest, student_id, kind in self._db.execute(
                "SELECT s.source, s.event_id, s.digest, s.student_id, s.type "
                f"FROM (VALUES {values}) AS q CROSS JOIN seen AS s "
                "ON s.source = q.column1 AND s.event_id = q.column2",
                [part for key in chunk for part in key],
            ):
                found[(source, event_id)] = (digest, student_id, kind)
        return found

    def add_many(self, entries: Iterable[tuple[tuple[str, str], Seen]]) -> None:
        """Remember these (key, entry) pairs."""
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT INTO seen VALUES (?,?,?,?,?)", [(*key, *entry) for key, entry in entries]
        )
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Drop the table (and its temporary file)."""
        self._db.close()


class Ingestor:
    """Streams records into a `TimelineStore`."""

    def __init__(
        self,
        store: TimelineStore,
        *,
        batch_size: int = BATCH_SIZE,
        on_record: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.on_record = on_record
        self._cache: OrderedDict[str, Student] = OrderedDict()
        key = (store.config.cipher_key or "").encode()
        # With a cipher key, digests are keyed so the index leaks nothing of the content.
        self._digest_key = hashlib.blake2b(key, digest_size=32).digest() if key else b""

    def run(
        self, open_records: Callable[[], Iterable[RawRecord]], *, partial: bool = False
    ) -> IngestReport:
        """Ingest the records `open_records()` yields (called twice in atomic mode)."""
        report = IngestReport()
        if not partial:
            check = IngestReport()
            self._pass(open_records(), check, write=False)
            if check.rejected:
                report.rejected = check.rejected
                return report
            if not check.accepted:
                # Every record is a duplicate of a stored event; stored keys are never
                # removed, so the write pass would find exactly that again: skip it.
                report.duplicates = check.duplicates
                return report
        self._pass(open_records(), report, write=True, atomic=not partial)
        return report

    # -- one pass --------------------------------------------------------------------------
    def _pass(
        self,
        records: Iterable[RawRecord],
        report: IngestReport,
        *,
        write: bool,
        atomic: bool = False,
    ) -> None:
        seen = None if write else SeenKeys()  # whole-input keys, for the dry pass
        try:
            batch: list[_Valid] = []
            for record in records:
                if report.halted:
                    return
                if self.on_record:
                    self.on_record()
                valid = self._validate(record, report)
                if valid is None:
                    continue
                batch.append(valid)
                if len(batch) >= self.batch_size:
                    self._batch(batch, report, seen, write=write, atomic=atomic)
                    batch = []
            if batch and not report.halted:
                self._batch(batch, report, seen, write=write, atomic=atomic)
        finally:
            if seen is not None:
                seen.close()

    def _validate(self, record: RawRecord, report: IngestReport) -> _Valid | None:
        if record.error is not None:
            report.rejected.append(Rejection(record.position, record.error))
            return None
        try:
            event = parse_event(record.payload)
        except ContractError as exc:
            report.rejected.append(Rejection(record.position, "; ".join(exc.messages)))
            return None
        return _Valid(
            position=record.position,
            student_id=event.student_id,
            source=event.source,
            event_id=event.event_id,
            type=event.type,  # type: ignore[attr-defined]
            event=event,
            digest=self._digest(event),
            key=(event.source, event.event_id),
            recorded_at=record.recorded_at,
        )

    def _digest(self, event: Any) -> str:
        canonical = _CANONICAL.encode(event.model_dump(mode="json"))
        return hashlib.blake2b(canonical.encode(), digest_size=16, key=self._digest_key).hexdigest()

    def _batch(
        self,
        batch: list[_Valid],
        report: IngestReport,
        seen: SeenKeys | None,
        *,
        write: bool,
        atomic: bool = False,
    ) -> None:
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            fresh, duplicates, rejected = self._classify(batch, seen)
            if write and atomic and rejected:
                # Another writer stored a conflicting event after the check pass: write
                # nothing more (the input fits one batch: nothing at all) and stop.
                report.rejected.extend(rejected)
                report.halted = True
                return
            if not write or not fresh:
                break
            try:
                self._save(fresh)
                break
            except IntegrityError:
                # Another writer got there first (same key, or a newer version of a
                # student's stream): forget what we hold and classify again.
                for item in fresh:
                    self._cache.pop(item.student_id, None)
                if attempt == SAVE_ATTEMPTS:
                    raise
                log.info("write conflict on batch, retrying (attempt %d)", attempt)
                time.sleep(0.01 * 2**attempt)
        report.accepted += len(fresh)
        report.duplicates += duplicates
        report.rejected.extend(rejected)

    def _classify(
        self, batch: list[_Valid], seen: SeenKeys | None
    ) -> tuple[list[_Valid], int, list[Rejection]]:
        """Split a batch into fresh events, duplicates and rejections.

        Keys are checked against the store, and against the earlier records of this
        batch, and (`seen`, the dry pass) of the whole input so far.
        """
        keys = list(
            {item.key for item in batch}
            | {(i.source, i.event.retracts) for i in batch if i.type == "retracted"}
        )
        stored = self.store.lookup_keys(keys)
        local: dict[tuple[str, str], Seen] = {}
        if seen is not None:
            local = seen.get_many([key for key in keys if key not in stored])
        remembered = len(local)
        fresh: list[_Valid] = []
        duplicates = 0
        rejected: list[Rejection] = []
        for item in batch:
            key = item.key
            known = stored.get(key)
            if known is not None:
                if known[4] == item.digest:
                    duplicates += 1
                else:
                    rejected.append(Rejection(item.position, _conflict_message(item)))
                continue
            earlier = local.get(key)
            if earlier is not None:
                if earlier[0] == item.digest:
                    duplicates += 1
                else:
                    rejected.append(Rejection(item.position, _conflict_message(item)))
                continue
            if item.type == "retracted":
                problem = self._retraction_problem(item, stored, local)
                if problem:
                    rejected.append(Rejection(item.position, problem))
                    continue
            local[key] = (item.digest, item.student_id, item.type)
            fresh.append(item)
        if seen is not None and len(local) > remembered:
            seen.add_many(itertools.islice(local.items(), remembered, None))
        return fresh, duplicates, rejected

    def _retraction_problem(
        self,
        item: _Valid,
        stored: dict[tuple[str, str], FeedKey],
        local: dict[tuple[str, str], Seen],
    ) -> str | None:
        target_id = item.event.retracts
        target = stored.get((item.source, target_id))
        if target is not None:
            student_id, target_type = target[2], target[3]
        elif (earlier := local.get((item.source, target_id))) is not None:
            student_id, target_type = earlier[1], earlier[2]
        else:
            return f"retracts: no event {target_id!r} from source {item.source!r} is stored"
        if student_id != item.student_id:
            return f"retracts: event {target_id!r} belongs to another student"
        if target_type == "retracted":
            return (
                "retracts: a retraction cannot be retracted; "
                "send the fact again under a new event_id"
            )
        return None

    def _save(self, fresh: list[_Valid]) -> None:
        wanted = [
            sid for sid in dict.fromkeys(i.student_id for i in fresh) if sid not in self._cache
        ]
        loaded = self.store.load_students(wanted) if wanted else {}
        students: dict[str, Student] = {}
        for sid in dict.fromkeys(i.student_id for i in fresh):
            students[sid] = self._cache.pop(sid) if sid in self._cache else loaded[sid]
        now = self.store.clock()
        keys: list[FeedKey] = []
        for item in fresh:
            event = item.event
            students[item.student_id].record(
                source=item.source,
                event_id=item.event_id,
                type=item.type,
                occurred_on=event.occurred_on,
                data=event.body(),
                note=event.note,
                digest=item.digest,
                at=item.recorded_at or now,
            )
            keys.append((item.source, item.event_id, item.student_id, item.type, item.digest))
        self.store.save(students.values(), keys)
        for sid, student in students.items():
            self._cache[sid] = student
        while len(self._cache) > AGGREGATE_CACHE:
            self._cache.popitem(last=False)


def _conflict_message(item: _Valid) -> str:
    return (
        f"conflict: event_id {item.event_id!r} from source {item.source!r} was already "
        "received with different content (send a correction as a new event, or retract it)"
    )


def ingest_file(
    store: TimelineStore,
    path: Path,
    *,
    fmt: str | None = None,
    partial: bool = False,
    on_bytes: Callable[[int], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> IngestReport:
    """Ingest a JSONL or CSV file, streaming (bounded memory whatever its size)."""
    kind = detect_format(path, fmt)
    reader = read_csv if kind == "csv" else read_jsonl

    def records() -> Iterator[RawRecord]:
        with path.open("rb") as stream:
            yield from reader(stream, on_bytes)

    return Ingestor(store, batch_size=batch_size).run(records, partial=partial)


def ingest_objects(
    store: TimelineStore, items: list[Any], *, partial: bool = False
) -> IngestReport:
    """Ingest an in-memory list of event objects (positions are array indexes)."""
    report = Ingestor(store).run(lambda: read_array(items), partial=partial)
    report.position_name = "index"
    return report


def ingest_text(
    store: TimelineStore, text: str, *, fmt: str = "jsonl", partial: bool = False
) -> IngestReport:
    """Ingest JSONL or CSV given as a string."""
    data = text.encode()
    reader = read_csv if fmt == "csv" else read_jsonl
    return Ingestor(store).run(lambda: reader(io.BytesIO(data)), partial=partial)
