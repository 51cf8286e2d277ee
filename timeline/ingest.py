"""Ingestion: stream raw feed records into the store, idempotently and in batches.

Records are validated against the contract (once), digested (once), classified against
the feed-key index (new, duplicate, conflict) and written through the library's recorder
as `StoredEvent`s, many students per transaction, with no aggregate loaded
(`TimelineStore.append`).

- **Atomic** (default): a check pass validates and classifies the whole input without
  writing, and stages what is new (ready-to-store state, on disk, in order); if anything
  is rejected nothing is stored. Only then does the write pass store the staged records,
  ten batches per transaction (PostgreSQL: one), without reading the input again. (A
  crash in the write pass leaves a prefix stored; sending the same input again completes
  it, the stored part counting as duplicates.) When the check pass finds nothing new (a feed sent
  again), there is no write pass. The check pass remembers the keys of the whole input
  in a temporary SQLite table and stages into a temporary file: memory stays bounded.
- **Partial**: one pass; good records are stored, bad ones reported.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import json
import logging
import marshal
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from eventsourcing.cipher import AESCipher
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import Environment
from pydantic_core import PydanticSerializationError, to_json

from timeline.contract import EVENT_TYPES, SORTED_FIELDS, echo, parse_event, parse_event_text
from timeline.errors import ContractError
from timeline.rawjson import loads_strict, one_shot
from timeline.store import FeedKey, TimelineStore

log = logging.getLogger(__name__)

BATCH_SIZE = 2000
# Staged batches the write pass of atomic mode stores per transaction in SQLite. A batch's
# students sit at random places in the events' primary key, so each commit rewrites (WAL)
# and syncs most of the index pages its batch touched: ten batches a commit halve that
# I/O at a million events, and hold the write lock a fraction of a second. PostgreSQL
# keeps one batch a transaction: it has no such cost, and the library's pipelined insert
# of 20,000 rows hung once in a benchmark (psycopg waiting in `Pipeline.sync`, the server
# reading the statement; not seen again in two tries).
WRITE_BATCHES = 10
SAVE_ATTEMPTS = 8
SEEN_CACHE_KIB = 16_384  # page cache of the dry pass's key table; the rest stays on disk
_SEEN_CHUNK = 500
# What classification remembers of each fresh key: (digest, student_id, type).
Seen = tuple[str, str, str]
# The canonical JSON of a digest: `json.dumps(event.model_dump(mode="json"), sort_keys=True,
# separators=(",", ":"))`, written straight from the validated event's fields (all JSON
# values but dates, which `default` writes as pydantic does), with one encoder for all.
_DIGEST_JSON = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), default=lambda value: value.isoformat()
)
_digest_text = one_shot(_DIGEST_JSON)


def _canonical(event: Any) -> bytes:
    """The digest's canonical JSON of a validated event, as UTF-8.

    pydantic-core writes a validated event's values (text, whole numbers, booleans, None,
    dates, lists of text: the contract has no other kind) exactly as `_DIGEST_JSON` does,
    at a third of the cost, but leaves non-ASCII characters and DEL unescaped: its text is
    used only when it has neither, and the fields go in sorted order by hand.
    """
    values = event.__dict__
    names = SORTED_FIELDS.get(type(event))
    if names is not None and len(names) == len(values):
        try:
            text = to_json({name: values[name] for name in names})
        except (KeyError, PydanticSerializationError):  # the general encoder decides
            text = b"\x7f"
        if text.isascii() and b"\x7f" not in text:
            return text
    return _digest_text(values).encode()


# Not frozen: setting each field through `object.__setattr__` cost as much as reading a line.
@dataclass(slots=True)
class RawRecord:
    """One record as read: its position (line or index) and its object or read error."""

    position: int
    payload: Any = None
    error: str | None = None
    # Set instead of `payload` by `read_jsonl(lazy=True)`: the line, for the reader's
    # consumer to parse (`Ingestor` parses and validates a well-formed line in one pass).
    text: str | None = None
    # Set only when restoring a backup: the record time the event had in the exported store.
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that was not stored, and why."""

    position: int
    error: str
    # A conflict with what is stored (the key with other content, a retraction's target),
    # as opposed to an event that is not valid: the API answers 409 rather than 422.
    conflict: bool = False


@dataclass
class IngestReport:
    """What an ingest did: the JSON summary of SPEC §4."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    position_name: str = "line"
    halted: bool = False
    interrupted: bool = False  # stopped between two batches when asked (Ctrl-C, SIGTERM)

    @property
    def ok(self) -> bool:
        """Whether nothing was rejected."""
        return not self.rejected

    def as_json(self) -> dict[str, Any]:
        """`{"accepted", "duplicates", "rejected": [{"line"|"index", "error"}]}`.

        An ingest stopped before the end of its input adds `"interrupted": true`.
        """
        summary: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{self.position_name: r.position, "error": r.error} for r in self.rejected],
        }
        if self.interrupted:
            summary["interrupted"] = True
        return summary


# -- readers -------------------------------------------------------------------------------
MAX_LINE_BYTES = 1 << 20  # a longer physical line is skipped and rejected, never held whole
MAX_CSV_RECORD_CHARS = 100_000  # below csv's cell limit (131,072); far above any valid row
ENCODINGS = {"utf-8": "UTF-8", "cp950": "cp950", "big5": "Big5"}  # line-splittable on b"\n"
# Only these make a line or cell blank: a line of other invisible characters is read (and
# rejected), never skipped unseen.
_BLANKS = " \t\r\n"


class _Unreadable(Exception):
    """A physical line that cannot become text (too long, or bytes that do not decode)."""


def _physical_lines(
    stream: BinaryIO, on_bytes: Callable[[int], None] | None, encoding: str
) -> Iterator[tuple[int, str | _Unreadable]]:
    """(1-based line number, text or the reason it is unreadable) for each physical line."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r} (use one of: {', '.join(ENCODINGS)})")
    label = ENCODINGS[encoding]
    number = 0
    utf16: _Unreadable | None = None
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if on_bytes:
            on_bytes(len(raw))
        if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            # Excel's "Unicode text": each of its lines would be garbage of its own.
            utf16 = _Unreadable(
                "the input is UTF-16 (it starts with a UTF-16 byte order mark): save it as "
                "UTF-8 and send it again"
            )
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (more := stream.readline(MAX_LINE_BYTES)) and not more.endswith(b"\n"):
                if on_bytes:
                    on_bytes(len(more))
            if on_bytes and more:
                on_bytes(len(more))
            yield number, _Unreadable(f"line is longer than {MAX_LINE_BYTES} bytes")
            continue
        if utf16 is not None:
            yield number, utf16
            continue
        try:
            # a UTF-8 byte order mark is accepted at the start of the input
            codec = "utf-8-sig" if number == 1 and encoding == "utf-8" else encoding
            yield number, raw.decode(codec)
        except UnicodeDecodeError as exc:
            where = f"byte {exc.start + 1} of the line"
            yield number, _Unreadable(f"cannot be decoded as {label} ({where})")


def read_jsonl(
    stream: BinaryIO,
    on_bytes: Callable[[int], None] | None = None,
    *,
    encoding: str = "utf-8",
    lazy: bool = False,
) -> Iterator[RawRecord]:
    """JSON Lines: one object per physical line; blank lines are skipped.

    `lazy`: yield each readable line's text unparsed (`RawRecord.text`); `json_record`
    parses it as this reader would have.
    """
    for number, text in _physical_lines(stream, on_bytes, encoding):
        if isinstance(text, _Unreadable):
            yield RawRecord(number, error=str(text))
            continue
        text = text.strip(_BLANKS)
        if not text:
            continue
        if lazy:
            yield RawRecord(number, text=text)
        else:
            yield json_record(number, text)


def json_record(position: int, text: str) -> RawRecord:
    """One JSON line as `read_jsonl` reads it: its object, or why it is not JSON we take."""
    try:
        return RawRecord(position, loads_strict(text))
    except ValueError as exc:
        problem = str(exc)
        if not problem.startswith("invalid JSON"):
            problem = f"invalid JSON: {problem}"
        return RawRecord(position, error=problem)


_LIST_FIELDS = {"fields"}
_CSV_INTEGER = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only, as in JSON


def csv_cell(name: str, value: str) -> Any:
    """A CSV cell as the JSON value it stands for (lists split on ';', ',' or '|').

    Raises `ValueError` (safe to show) for a `fields` cell that is broken JSON.
    """
    if name in _LIST_FIELDS:
        text = value.strip()
        if text.startswith("["):
            return loads_strict(text, max_depth=2)
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
    if name == "amount_ntd" and _CSV_INTEGER.fullmatch(value.strip(" ")):
        return int(value)
    return value


class _CsvLines:
    """Physical lines with push-back, so a row with broken quoting can be re-read."""

    def __init__(self, lines: Iterator[tuple[int, str | _Unreadable]]) -> None:
        self._lines = lines
        self._back: list[tuple[int, str | _Unreadable]] = []

    def next(self) -> tuple[int, str | _Unreadable] | None:
        """The next physical line, or None at the end of the input."""
        if self._back:
            return self._back.pop()
        return next(self._lines, None)

    def push_back(self, lines: list[tuple[int, str | _Unreadable]]) -> None:
        """Read these lines again, in order, before the rest."""
        self._back.extend(reversed(lines))


def _looks_like_a_row(text: str, type_at: int, day_at: int) -> bool:
    """Whether a physical line is a record of its own (an event type and a date in place)."""
    cells = next(csv.reader((text,)), [])
    return (
        len(cells) > max(type_at, day_at)
        and cells[type_at].strip() in EVENT_TYPES
        and _ISO_DAY.fullmatch(cells[day_at].strip()) is not None
    )


_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _csv_records(
    lines: _CsvLines, shape: tuple[int, int] | None
) -> Iterator[tuple[int, list[str] | str]]:
    """(first line, cells or the reason the record is unreadable), blank rows skipped.

    A quoted cell may run over several physical lines. It is broken quoting, rejected at
    the line where the quote opened, when the input ends inside it, when it would grow past
    `MAX_CSV_RECORD_CHARS`, when it runs into an unreadable line or (`shape`: the columns of
    `type` and `occurred_on`) into a line that is a record of its own, or when a closing
    quote is followed by anything but a delimiter. Reading then resumes at the next line.
    """
    while (first := lines.next()) is not None:
        number, text = first
        if isinstance(text, _Unreadable):
            yield number, str(text)
            continue
        body = text.rstrip("\r\n")
        if not body.strip(_BLANKS):
            continue
        if len(body) > MAX_CSV_RECORD_CHARS:
            yield number, f"row is longer than {MAX_CSV_RECORD_CHARS} characters"
            continue
        if '"' not in body and "\r" not in body:
            cells = body.split(",")  # the common case: no quoting, so csv would split the same
        else:
            quoted = _quoted_row(lines, text, shape)
            if isinstance(quoted, str):
                yield number, quoted
                continue
            cells = quoted
        if any(cell.strip(_BLANKS) for cell in cells):
            yield number, cells


def _quoted_row(lines: _CsvLines, text: str, shape: tuple[int, int] | None) -> list[str] | str:
    """The cells of a row with quoting (maybe over several lines), or why it is broken."""
    taken: list[tuple[int, str | _Unreadable]] = []
    broken: list[str] = []

    def continued() -> Iterator[str]:
        yield text
        size = len(text)
        while (line := lines.next()) is not None:
            taken.append(line)
            number, following = line
            if isinstance(following, _Unreadable):
                broken.append(f"line {number} cannot be read")
                return
            size += len(following)
            if size > MAX_CSV_RECORD_CHARS:
                broken.append(f"longer than {MAX_CSV_RECORD_CHARS} characters")
                return
            if shape and _looks_like_a_row(following, *shape):
                broken.append(f"line {number} is a row of its own")
                return
            yield following

    try:
        # csv asks for another line only while a quoted cell is open
        return next(csv.reader(continued(), strict=True))
    except csv.Error as exc:
        lines.push_back(taken)  # resume at the line after the one the row began on
        if broken or "unexpected end of data" in str(exc):
            reason = broken[0] if broken else "the input ends inside it"
            return f"unterminated quoted cell ({reason})"
        if "new-line character seen in unquoted field" in str(exc):
            # Python's wording asks about "universal-newline mode", which no feed author has.
            return (
                "a carriage return (CR) in an unquoted cell: end lines with LF or CRLF, "
                "and quote a cell that holds a CR"
            )
        return f"malformed CSV quoting: {exc}"


def read_csv(
    stream: BinaryIO,
    on_bytes: Callable[[int], None] | None = None,
    *,
    encoding: str = "utf-8",
) -> Iterator[RawRecord]:
    """CSV with a header row of SPEC §2 field names; empty cells are absent fields.

    If the header cannot be used (broken, or a column named twice), every row is rejected
    with that reason: nothing is read under a guessed header. A header that cannot be
    read is rejected at its own line as well.
    """
    lines = _CsvLines(_physical_lines(stream, on_bytes, encoding))
    first = next(_csv_records(lines, None), None)
    if first is None:
        return
    header_line, header_cells = first
    header: list[str] = []
    problem = None
    if isinstance(header_cells, str):
        problem = f"the header on line {header_line} cannot be read: {header_cells}"
        # Its line may hold rows too (line ends of CR alone): it is rejected itself, so
        # such a file is never an empty success.
        yield RawRecord(header_line, error=problem)
    else:
        header = [h.strip() for h in header_cells]
        named = [h for h in header if h]
        twice = next((h for h in named if named.count(h) > 1), None)
        if twice is not None:
            problem = f"the header on line {header_line} names column {echo(twice)} twice"
    shape = (
        (header.index("type"), header.index("occurred_on"))
        if "type" in header and "occurred_on" in header
        else None
    )
    for number, cells in _csv_records(lines, shape):
        if problem:
            yield RawRecord(number, error=f"not read: {problem}")
        elif isinstance(cells, str):
            yield RawRecord(number, error=cells)
        elif len(cells) > len(header):
            yield RawRecord(
                number, error=f"row has {len(cells)} cells but the header names {len(header)}"
            )
        else:
            try:
                payload = {
                    name: csv_cell(name, cell)
                    for name, cell in zip(header, cells, strict=False)
                    if cell.strip(_BLANKS) != ""
                }
            except ValueError as exc:
                yield RawRecord(number, error=f"fields: not a JSON list of names: {exc}")
                continue
            yield RawRecord(number, payload)


def read_array(items: list[Any]) -> Iterator[RawRecord]:
    """A JSON array (HTTP body): positions are 0-based array indexes."""
    for index, item in enumerate(items):
        yield RawRecord(index, item)


def detect_format(path: Path, declared: str | None) -> str:
    """`jsonl` or `csv`, from `--format` or else the file name."""
    if declared:
        return declared
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def record_event(record: RawRecord) -> Any:
    """The valid event a record holds, or the text it is rejected with."""
    # A line read lazily: a valid event in one pass, else the reader's full path (strict
    # JSON, then the contract), which alone words rejections. Same outcome either way.
    event = parse_event_text(record.text) if record.text is not None else None
    if event is not None:
        return event
    if record.text is not None:
        record = json_record(record.position, record.text)
    if record.error is not None:
        return record.error
    try:
        return parse_event(record.payload)
    except ContractError as exc:
        return "; ".join(exc.messages)


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


# One fresh record as the check pass stages it for the write pass: (position, source,
# event_id, student_id, type, digest, record time as ISO text or None, state tail).
Staged = tuple[int, str, str, str, str, str, str | None, bytes]


class Staging:
    """The fresh records of a check pass, in input order, on disk: what the write pass stores.

    Batches are marshalled into an unlinked temporary file, so memory stays bounded
    whatever the input size, and the write pass neither reads, parses, validates nor
    digests the input again. When the store is encrypted, each batch is encrypted with
    a key that lives only in this process: personal data never reaches the disk in clear.
    """

    def __init__(self, *, encrypted: bool) -> None:
        # Closed by `close()`, which `Ingestor.run` calls in a `finally`.
        self._file = tempfile.TemporaryFile(prefix="timeline-staged-")  # noqa: SIM115
        self._cipher = (
            AESCipher(Environment(env={"CIPHER_KEY": AESCipher.create_key(32)}))
            if encrypted
            else None
        )
        self.count = 0

    def add(self, rows: list[Staged]) -> None:
        """Append one batch."""
        if not rows:
            return
        blob = marshal.dumps(rows)
        if self._cipher is not None:
            blob = self._cipher.encrypt(blob)
        self._file.write(len(blob).to_bytes(8, "big"))
        self._file.write(blob)
        self.count += len(rows)

    def batches(self) -> Iterator[list[Staged]]:
        """The batches, in the order they were added."""
        self._file.seek(0)
        while header := self._file.read(8):
            blob = self._file.read(int.from_bytes(header, "big"))
            if self._cipher is not None:
                blob = self._cipher.decrypt(blob)
            yield marshal.loads(blob)

    def close(self) -> None:
        """Delete the file."""
        self._file.close()


class Interrupted(BaseException):
    """Raised by `StopRequest.request` while the ingest waits for input (never mid-write)."""


class StopRequest:
    """A request to stop an ingest (a signal): before its next batch, never inside one.

    While the ingest waits for its input (a slow producer keeping a pipe open), the
    request stops it at once, raising `Interrupted` from the read; what was stored is
    whole batches either way.
    """

    def __init__(self) -> None:
        self.requested = False
        self.reading = False  # set by the ingest around each read of its input

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self.requested

    def request(self) -> None:
        """Ask to stop (from a signal handler); interrupts a read of the input at once."""
        self.requested = True
        if self.reading:
            self.reading = False
            raise Interrupted


class Ingestor:
    """Streams records into a `TimelineStore`."""

    def __init__(
        self,
        store: TimelineStore,
        *,
        batch_size: int = BATCH_SIZE,
        on_record: Callable[[], None] | None = None,
        on_written: Callable[[int, int], None] | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        self.store = store
        # Once set, the ingest stops before its next batch (never inside one's transaction).
        self.stop = stop
        self.batch_size = batch_size
        self.on_record = on_record
        # The write pass of atomic mode reads no input: it reports (written, staged).
        self.on_written = on_written
        key = (store.config.cipher_key or "").encode()
        # With a cipher key, digests are keyed so the index leaks nothing of the content.
        self._digest_key = hashlib.blake2b(key, digest_size=32).digest() if key else b""

    def run(
        self, open_records: Callable[[], Iterable[RawRecord]], *, partial: bool = False
    ) -> IngestReport:
        """Ingest the records `open_records()` yields (once, in both modes)."""
        report = IngestReport()
        if partial:
            self._pass(open_records(), report, staging=None)
            return report
        staging = Staging(encrypted=bool(self.store.config.cipher_key))
        try:
            check = IngestReport()
            self._pass(open_records(), check, staging=staging)
            if check.interrupted:  # nothing was written: the check pass writes nothing
                report.interrupted = True
                report.rejected = check.rejected
                return report
            if check.rejected:
                report.rejected = check.rejected
                return report
            # Duplicates of stored events stay duplicates: stored keys are never removed.
            # With nothing new (a feed sent again) there is nothing to write.
            report.duplicates = check.duplicates
            if staging.count:
                self._write_staged(staging, report)
            return report
        finally:
            staging.close()

    # -- one pass over the input --------------------------------------------------------
    def _pass(
        self, records: Iterable[RawRecord], report: IngestReport, *, staging: Staging | None
    ) -> None:
        """Validate and classify; stage the fresh records (atomic) or store them (partial)."""
        seen = SeenKeys() if staging is not None else None  # whole-input keys
        try:
            batch: list[_Valid] = []
            for record in self._interruptible(records):
                if report.halted:
                    return
                if self.on_record:
                    self.on_record()
                valid = self._validate(record, report)
                if valid is None:
                    continue
                batch.append(valid)
                if len(batch) >= self.batch_size:
                    if self._stopped(report):
                        return
                    self._batch(batch, report, seen, staging)
                    batch = []
            if batch and not report.halted and not self._stopped(report):
                self._batch(batch, report, seen, staging)
        finally:
            if seen is not None:
                seen.close()

    def _interruptible(self, records: Iterable[RawRecord]) -> Iterator[RawRecord]:
        """`records`, each read open to a stop request (it then ends, `Interrupted`)."""
        stop = self.stop
        if stop is None:
            yield from records
            return
        iterator = iter(records)
        while True:
            try:
                stop.reading = True
                record = next(iterator, None)
                stop.reading = False
            except BaseException as exc:
                if isinstance(exc, Interrupted):
                    return
                stop.reading = False
                raise
            if record is None:
                return
            yield record

    def _stopped(self, report: IngestReport) -> bool:
        """Whether the ingest was asked to stop (then `report` says it was interrupted)."""
        if self.stop is not None and self.stop.is_set():
            report.interrupted = True
        return report.interrupted

    def _validate(self, record: RawRecord, report: IngestReport) -> _Valid | None:
        event = record_event(record)
        if isinstance(event, str):
            report.rejected.append(Rejection(record.position, event))
            return None
        source, event_id = event.source, event.event_id
        return _Valid(  # positional: once per record
            record.position,
            event.student_id,
            source,
            event_id,
            event.type,  # type: ignore[attr-defined]
            event,
            self._digest(event),
            (source, event_id),
            record.recorded_at,
        )

    def _digest(self, event: Any) -> str:
        return hashlib.blake2b(_canonical(event), digest_size=16, key=self._digest_key).hexdigest()

    def _batch(
        self,
        batch: list[_Valid],
        report: IngestReport,
        seen: SeenKeys | None,
        staging: Staging | None,
    ) -> None:
        if staging is not None:
            # The check pass: classify against the store and the whole input; stage.
            fresh, duplicates, rejected = self._classify(batch, seen)
            if not rejected and not report.rejected:  # once rejected, only errors count
                staging.add([self._staged(item) for item in fresh])
            report.accepted += len(fresh)
            report.duplicates += duplicates
            report.rejected.extend(rejected)
            return
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            fresh, duplicates, rejected = self._classify(batch, None)
            if not fresh:
                break
            try:
                self.store.append(
                    [(i.student_id, i.recorded_at, self._tail(i)) for i in fresh],
                    [(i.source, i.event_id, i.student_id, i.type, i.digest) for i in fresh],
                )
                break
            except IntegrityError:
                # Another writer got there first (same key, or the next version of a
                # student's stream): classify again against what it stored.
                if attempt == SAVE_ATTEMPTS:
                    raise
                log.info("write conflict on batch, retrying (attempt %d)", attempt)
                time.sleep(0.01 * 2**attempt)
        report.accepted += len(fresh)
        report.duplicates += duplicates
        report.rejected.extend(rejected)

    def _tail(self, item: _Valid) -> bytes:
        event = item.event
        return self.store.fact_tail(
            source=item.source,
            event_id=item.event_id,
            type=item.type,
            occurred_on=event.occurred_on,
            data=event.body(),
            note=event.note,
            digest=item.digest,
        )

    def _staged(self, item: _Valid) -> Staged:
        at = item.recorded_at.isoformat() if item.recorded_at is not None else None
        return (
            item.position,
            item.source,
            item.event_id,
            item.student_id,
            item.type,
            item.digest,
            at,
            self._tail(item),
        )

    # -- the write pass of atomic mode ---------------------------------------------------
    def _write_staged(self, staging: Staging, report: IngestReport) -> None:
        """Store the staged records, `WRITE_BATCHES` staged batches per transaction (SQLite).

        The check pass classified every record against the store and the input, so the
        first attempt writes at once: if another writer stored one of these keys (or a
        version of one of these streams) meanwhile, the write fails on the key index and
        the batch is classified again. A key it stored with the same content is then a
        duplicate; with other content, a conflict that stops the ingest. Retractions
        need no new check: their targets are stored, or staged earlier and so written
        earlier (or found conflicting, which stopped the ingest first).
        """
        written = 0
        size = 1 if self.store.config.is_postgres else WRITE_BATCHES
        for rows in _groups(staging.batches(), size):
            if self._stopped(report):
                return
            fresh = rows
            duplicates = 0
            for attempt in range(1, SAVE_ATTEMPTS + 1):
                if attempt > 1:
                    fresh, duplicates, conflicts = self._reclassify(rows)
                    if conflicts:
                        # Write nothing more (an input of one batch: nothing at all).
                        report.rejected.extend(conflicts)
                        report.halted = True
                        return
                    if not fresh:
                        break
                try:
                    self.store.append(
                        [
                            (r[3], datetime.fromisoformat(r[6]) if r[6] else None, r[7])
                            for r in fresh
                        ],
                        [(r[1], r[2], r[3], r[4], r[5]) for r in fresh],
                    )
                    break
                except IntegrityError:
                    if attempt == SAVE_ATTEMPTS:
                        raise
                    log.info("write conflict on batch, retrying (attempt %d)", attempt)
                    time.sleep(0.01 * 2**attempt)
            report.accepted += len(fresh)
            report.duplicates += duplicates
            written += len(rows)
            if self.on_written:
                self.on_written(written, staging.count)

    def _reclassify(self, rows: list[Staged]) -> tuple[list[Staged], int, list[Rejection]]:
        """Split staged rows into still fresh, now stored (duplicates) and conflicts."""
        stored = self.store.lookup_keys([(r[1], r[2]) for r in rows])
        fresh: list[Staged] = []
        duplicates = 0
        conflicts: list[Rejection] = []
        for row in rows:
            known = stored.get((row[1], row[2]))
            if known is None:
                fresh.append(row)
            elif known[4] == row[5]:
                duplicates += 1
            else:
                conflicts.append(Rejection(row[0], _conflict_text(row[2], row[1]), conflict=True))
        return fresh, duplicates, conflicts

    # -- classification ----------------------------------------------------------------
    def _classify(
        self, batch: list[_Valid], seen: SeenKeys | None
    ) -> tuple[list[_Valid], int, list[Rejection]]:
        """Split a batch into fresh events, duplicates and rejections.

        Keys are checked against the store, and against the earlier records of this
        batch, and (`seen`, the check pass) of the whole input so far.
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
                    rejected.append(
                        Rejection(item.position, _conflict_message(item), conflict=True)
                    )
                continue
            earlier = local.get(key)
            if earlier is not None:
                if earlier[0] == item.digest:
                    duplicates += 1
                else:
                    rejected.append(
                        Rejection(item.position, _conflict_message(item), conflict=True)
                    )
                continue
            if item.type == "retracted":
                problem = self._retraction_problem(item, stored, local)
                if problem:
                    rejected.append(Rejection(item.position, problem, conflict=True))
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
            return f"retracts: no event {echo(target_id)} from source {echo(item.source)} is stored"
        if student_id != item.student_id:
            return f"retracts: event {echo(target_id)} belongs to another student"
        if target_type == "retracted":
            return (
                "retracts: a retraction cannot be retracted; "
                "send the fact again under a new event_id"
            )
        return None


def _groups(batches: Iterable[list[Staged]], size: int) -> Iterator[list[Staged]]:
    """The staged batches joined `size` at a time, in order."""
    group: list[Staged] = []
    taken = 0
    for batch in batches:
        group.extend(batch)
        taken += 1
        if taken == size:
            yield group
            group, taken = [], 0
    if group:
        yield group


def _conflict_message(item: _Valid) -> str:
    return _conflict_text(item.event_id, item.source)


def _conflict_text(event_id: str, source: str) -> str:
    return (
        f"conflict: event_id {echo(event_id)} from source {echo(source)} was already "
        "received with different content (send a correction as a new event, or retract it)"
    )


def ingest_file(
    store: TimelineStore,
    path: Path,
    *,
    fmt: str | None = None,
    partial: bool = False,
    encoding: str = "utf-8",
    on_bytes: Callable[[int], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> IngestReport:
    """Ingest a JSONL or CSV file (or a pipe: /dev/stdin, /dev/fd/N), streaming."""
    with path.open("rb") as stream:
        return ingest_stream(
            store,
            stream,
            fmt=detect_format(path, fmt),
            partial=partial,
            encoding=encoding,
            on_bytes=on_bytes,
            batch_size=batch_size,
        )


def ingest_stream(
    store: TimelineStore,
    stream: BinaryIO,
    *,
    fmt: str = "jsonl",
    partial: bool = False,
    encoding: str = "utf-8",
    on_bytes: Callable[[int], None] | None = None,
    batch_size: int = BATCH_SIZE,
    stop: StopRequest | None = None,
) -> IngestReport:
    """Ingest JSONL or CSV from a binary stream, in bounded memory whatever its size.

    Both modes read the input once, so a pipe (stdin) needs no copy: atomic mode's write
    pass works from what its check pass staged. `on_bytes` hears of every byte read, and
    in atomic mode of the same bytes again as the write pass stores them. `stop`, once
    set, ends the ingest before its next batch (the report then says `interrupted`).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r} (use one of: {', '.join(ENCODINGS)})")
    reader = read_csv if fmt == "csv" else functools.partial(read_jsonl, lazy=True)
    if partial:
        ingestor = Ingestor(store, batch_size=batch_size, stop=stop)
        return ingestor.run(lambda: reader(stream, on_bytes, encoding=encoding), partial=True)
    # The write pass reads no input: it reports the check pass's bytes again as it writes,
    # so that progress runs to twice the input, as `on_bytes` callers expect.
    checked = [0, 0]  # bytes read by the check pass, bytes reported for the write pass

    def on_checked(count: int) -> None:
        checked[0] += count
        if on_bytes:
            on_bytes(count)

    def on_written(done: int, total: int) -> None:
        if on_bytes:
            due = checked[0] * done // total if done < total else checked[0]
            on_bytes(due - checked[1])
            checked[1] = due

    ingestor = Ingestor(store, batch_size=batch_size, on_written=on_written, stop=stop)
    return ingestor.run(lambda: reader(stream, on_checked if on_bytes else None, encoding=encoding))


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
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate is then a rejected line
    return ingest_stream(store, io.BytesIO(data), fmt=fmt, partial=partial)
