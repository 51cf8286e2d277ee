"""The event store: one `Student` aggregate per student, on SQLite or PostgreSQL.

Persistence is configuration (eventsourcing's infrastructure factories); this module
only adds what the library does not have: a `date` transcoding, and the feed-key index
(`feed_keys`: one row per (source, event_id) with the student and a content digest),
written in the same transaction as the events so that idempotency checks never have to
replay an aggregate and can never disagree with the events.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder as json_encoder
import logging
import os
import re
import sqlite3
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import unquote, urlparse
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import (
    DatetimeAsISO,
    JSONTranscoder,
    MapperDeserialisationError,
    PersistenceError,
    StoredEvent,
    find_id_convertor,
)
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import Environment, EnvType, get_topic
from pydantic_core import PydanticSerializationError, to_json

from timeline.aggregate import DateAsISO, Student, student_uuid, student_uuid_hex
from timeline.clock import Clock, system_clock
from timeline.errors import StorageConfigError
from timeline.facts import Fact
from timeline.rawjson import one_shot

if TYPE_CHECKING:
    from timeline.store_postgres import PostgresTimelineRecorder

DEFAULT_DB = "timeline.db"
log = logging.getLogger(__name__)
# One feed key as written next to its event: (source, event_id, student_id, type, digest).
FeedKey = tuple[str, str, str, str, str]
# One new fact for `TimelineStore.append`: (student_id, record time or None for "now",
# its stored state after the timestamp, from `TimelineStore.fact_tail`).
NewFact = tuple[str, datetime | None, bytes]
# The library's topics for what `append` writes (exactly what `Application.save` stores).
_STUDENT_TOPIC = get_topic(Student)
_REGISTERED_TOPIC = get_topic(Student.Registered)
_FACT_TOPIC = get_topic(Student.FactRecorded)
_escape = json_encoder.encode_basestring  # what a JSON encoder with ensure_ascii=False uses
_REGISTERED_TAIL = b'"originator_topic":' + _escape(_STUDENT_TOPIC).encode() + b',"student_id":'


class StoredRow(NamedTuple):
    """A stored event as `TimelineStore.append` makes it: the library's `StoredEvent`.

    The same fields, which the recorders read by name, as a tuple: cheaper to make than
    that frozen dataclass, and for SQLite (the id as hex text) the very row it inserts.
    """

    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


_FEED_KEYS_SQLITE = (
    "CREATE TABLE IF NOT EXISTS feed_keys ("
    "source TEXT NOT NULL, event_id TEXT NOT NULL, student_id TEXT NOT NULL, "
    "type TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (source, event_id)) WITHOUT ROWID"
)
_LOOKUP_CHUNK = 400
WAL_CHECKPOINT_PAGES = 16_384  # 64 MB of 4 KiB pages


class SQLiteTimelineRecorder(SQLiteApplicationRecorder):
    """The library's SQLite recorder plus the feed-key index in the same transaction."""

    def construct_create_table_statements(self) -> list[str]:
        """Events table, then the feed-key index."""
        return [*super().construct_create_table_statements(), _FEED_KEYS_SQLITE]

    def _insert_events(
        self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Checkpoint the WAL every 64 MB instead of SQLite's 4 MB: written in batches of a
        # few thousand events, random index pages are copied back once per checkpoint, so
        # this halves a large ingest's commit cost. (A connection setting, set each time
        # because the library's pool may hand out a new writer connection.)
        c.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        feed_keys: Sequence[FeedKey] = kwargs.get("feed_keys", ())
        if feed_keys:
            c.executemany("INSERT INTO feed_keys VALUES (?,?,?,?,?)", feed_keys)
        if not stored_events:
            return []
        # One executemany instead of the library's execute per row. The notification
        # ids are the rowids: this transaction holds the write lock, so the rows get
        # consecutive rowids (max + 1, ...) ending at last_insert_rowid(); checked
        # below on the first row, with the library's per-row lookup as the fallback.
        rows: Sequence[tuple[Any, ...]] = stored_events  # type: ignore[assignment]
        if not all(type(s) is StoredRow and type(s[0]) is str for s in stored_events):
            rows = [
                (
                    s.originator_id.hex if isinstance(s.originator_id, UUID) else s.originator_id,
                    s.originator_version,
                    s.topic,
                    s.state,
                )
                for s in stored_events
            ]
        c.executemany(self.insert_events_statement, rows)
        c.execute("SELECT last_insert_rowid()")
        last = c.fetchone()[0]
        first = last - len(rows) + 1
        if self._rowid(c, rows[0]) == first:
            return list(range(first, last + 1))
        # Not consecutive (SQLite only does that once the largest rowid is taken).
        return [self._rowid(c, row) for row in rows]

    def _rowid(self, c: Any, row: tuple[Any, ...]) -> int:
        c.execute(
            f"SELECT rowid FROM {self.events_table_name} "
            "WHERE originator_id = ? AND originator_version = ?",
            row[:2],
        )
        return int(c.fetchone()[0])

    def lookup_keys(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], FeedKey]:
        """The stored feed keys among `keys`."""
        found: dict[tuple[str, str], FeedKey] = {}
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                values = ",".join("(?,?)" for _ in chunk)
                # CROSS JOIN fixes the plan: the wanted keys drive one primary-key search
                # each (`(a, b) IN (VALUES ...)` scans the whole index instead).
                c.execute(
                    "SELECT k.source, k.event_id, k.student_id, k.type, k.digest "
                    f"FROM (VALUES {values}) AS q CROSS JOIN feed_keys AS k "
                    "ON k.source = q.column1 AND k.event_id = q.column2",
                    [part for key in chunk for part in key],
                )
                for row in c.fetchall():
                    found[(row[0], row[1])] = (row[0], row[1], row[2], row[3], row[4])
        return found

    def existing_students(self, ids: Sequence[UUID]) -> set[UUID]:
        """Which of these aggregate ids have a stream already."""
        found: set[UUID] = set()
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(ids), _LOOKUP_CHUNK):
                chunk = ids[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" for _ in chunk)
                c.execute(
                    f"SELECT originator_id FROM {self.events_table_name} "
                    f"WHERE originator_version = 1 AND originator_id IN ({marks})",
                    [i.hex for i in chunk],
                )
                found.update(UUID(row[0]) for row in c.fetchall())
        return found

    def last_versions(self, ids: Sequence[UUID | str]) -> dict[UUID | str, int]:
        """The last version of each of these streams that exists, by the ids as given.

        An id is a `UUID` or its hex text (as stored).
        """
        given = {i.hex if isinstance(i, UUID) else i: i for i in ids}
        texts = list(given)
        found: dict[UUID | str, int] = {}
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(texts), _LOOKUP_CHUNK):
                chunk = texts[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" for _ in chunk)
                c.execute(
                    f"SELECT originator_id, MAX(originator_version) FROM {self.events_table_name} "
                    f"WHERE originator_id IN ({marks}) GROUP BY originator_id",
                    chunk,
                )
                found.update((given[row[0]], row[1]) for row in c.fetchall())
        return found


@dataclass
class StoredStream:
    """One student's stream as `TimelineStore.streams` reads it."""

    uuid: str  # the aggregate id, hex
    student_id: str
    facts: list[Fact]  # every fact (retractions included), in record order
    version: int  # the last version read


class TimelineApp(Application[UUID]):
    """The eventsourcing application: thin, persistence by configuration."""

    name = "Timeline"

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        """The library's transcodings plus `date`."""
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """Only the configuration given (`StoreConfig.env`), never the process environment.

        The library would also read `TIMELINE_*` variables (its prefix is the application's
        name): a stray TIMELINE_CIPHER_KEY would then change what is stored, unseen by
        the settings (`timeline.settings`), which alone read the environment.
        """
        return Environment(name, {**type(self).env, **(env or {})})


@dataclass(frozen=True)
class StoreConfig:
    """Where the events live, and how they are protected."""

    location: str
    cipher_key: str | None = None

    @property
    def is_postgres(self) -> bool:
        """Whether the location is a PostgreSQL URL."""
        return self.location.startswith(("postgresql://", "postgres://"))

    @classmethod
    def resolve(cls, location: str | None = None, cipher_key: str | None = None) -> StoreConfig:
        """From explicit values, else the default file (settings are the edges' to read)."""
        return cls(location=location or DEFAULT_DB, cipher_key=cipher_key or None)

    def env(self) -> dict[str, str]:
        """The eventsourcing environment for this configuration."""
        env: dict[str, str] = {"CREATE_TABLE": "y"}
        if self.is_postgres:
            env.update(_postgres_env(self.location))
            env["PERSISTENCE_MODULE"] = "eventsourcing.postgres"
            env["APPLICATION_RECORDER_TOPIC"] = "timeline.store_postgres:PostgresTimelineRecorder"
        else:
            path = Path(self.location)
            if path.parent and not path.parent.exists():
                raise StorageConfigError(
                    f"the folder of the database does not exist: {path.parent}"
                )
            env["PERSISTENCE_MODULE"] = "eventsourcing.sqlite"
            env["SQLITE_DBNAME"] = str(path)
            env["SQLITE_LOCK_TIMEOUT"] = "30"
            env["APPLICATION_RECORDER_TOPIC"] = "timeline.store:SQLiteTimelineRecorder"
        if self.cipher_key:
            env["CIPHER_TOPIC"] = "eventsourcing.cipher:AESCipher"
            env["CIPHER_KEY"] = self.cipher_key
        return env


_URL_PARAMETERS = ("schema", "connect_timeout")
# A name the library can use as it does (it also names the schema unquoted) and that
# PostgreSQL keeps whole: letters, digits and _, at most 63 bytes (NAMEDATALEN - 1).
_SCHEMA_NAME = re.compile(r"[^\W\d]\w*")


def _schema_name(value: str) -> str:
    """The `?schema=` of a PostgreSQL URL, refused unless it is a plain name."""
    if not _SCHEMA_NAME.fullmatch(value):
        raise StorageConfigError(
            "schema in the PostgreSQL URL must be a plain name: letters, digits and _, "
            "not starting with a digit"
        )
    if len(value.encode()) > 63:
        raise StorageConfigError(
            "schema in the PostgreSQL URL is longer than PostgreSQL keeps (63 bytes)"
        )
    if value.lower().startswith("pg_"):
        raise StorageConfigError("schema in the PostgreSQL URL: names starting pg_ are reserved")
    return value


def _postgres_env(url: str) -> dict[str, str]:
    parsed = urlparse(url)
    dbname = parsed.path.lstrip("/")
    if not dbname:
        raise StorageConfigError("a PostgreSQL URL needs a database name: postgresql://host/db")
    env = {
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": parsed.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parsed.port or 5432),
        "POSTGRES_USER": unquote(parsed.username or os.environ.get("USER", "postgres")),
        "POSTGRES_PASSWORD": unquote(parsed.password or ""),
        "POSTGRES_POOL_SIZE": "4",
        # Check a pooled connection when it is handed out (one empty round trip): after
        # the server dropped them (a restart, a failover) each stale one would otherwise
        # fail one more request, and our own queries are not retried by the library.
        "POSTGRES_PRE_PING": "y",
    }
    seen: set[str] = set()
    for part in filter(None, parsed.query.split("&")):
        name, _, value = part.partition("=")
        if name not in _URL_PARAMETERS:
            raise StorageConfigError(
                f"the PostgreSQL URL has a parameter the store does not use: {name[:40]!r} "
                f"(it takes {' and '.join(_URL_PARAMETERS)}; TLS and libpq's other "
                "settings come from its environment: PGSSLMODE=require, PGSSLROOTCERT=...)"
            )
        if name in seen:
            raise StorageConfigError(f"{name} is given more than once in the PostgreSQL URL")
        seen.add(name)
        if name == "schema":
            env["POSTGRES_SCHEMA"] = _schema_name(value)
        else:
            # libpq's parameter: how long to wait for a connection (the library's pool
            # waits 30 s by default, on each of its 10 retries of a lost connection).
            seconds = value
            if not (seconds.isascii() and seconds.isdigit() and int(seconds) >= 1):
                raise StorageConfigError(
                    "connect_timeout in the PostgreSQL URL must be a whole number of seconds"
                )
            env["POSTGRES_CONNECT_TIMEOUT"] = str(int(seconds))
    return env


_CIPHER_MISMATCH = (
    "cannot decrypt the stored events: TIMELINE_CIPHER_KEY is missing or is not this store's key"
)


def _key_check(key: str | None) -> str:
    """What the store remembers of its key: whether it has one, and a check value."""
    if not key:
        return "none"
    return "aes:" + hashlib.blake2b(key.encode(), digest_size=8, person=b"tl-keycheck").hexdigest()


def _storage_errors() -> tuple[type[Exception], ...]:
    """What opening a store raises for a bad location or database (the driver's, if loaded)."""
    errors: tuple[type[Exception], ...] = (ValueError, OSError, sqlite3.Error, PersistenceError)
    driver = sys.modules.get("psycopg")  # imported only for a PostgreSQL store
    return (*errors, driver.Error) if driver is not None else errors


@contextmanager
def _opening(config: StoreConfig) -> Iterator[None]:
    """Make opening safe when two processes open the same store at once."""
    if config.is_postgres:
        # The library re-runs CREATE TYPE / CREATE OR REPLACE FUNCTION on every open: two
        # at once fail ("tuple concurrently updated"), so openings take turns.
        url, _, _ = config.location.partition("?")
        schema = _postgres_env(config.location).get("POSTGRES_SCHEMA", "public")
        key = zlib.crc32(f"timeline-ddl:{schema}".encode())
        import psycopg

        with psycopg.connect(url, autocommit=True) as lock:
            lock.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                lock.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return
    # The library switches a new file to WAL without waiting for another connection;
    # do it first, waiting while the file is locked (the mode then stays in the file).
    deadline = time.monotonic() + 30
    while True:
        try:
            with closing(sqlite3.connect(config.location, timeout=30)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield


StoreState = Literal["ready", "no-store", "no-schema"]


def _postgres_schema(location: str) -> str:
    return _postgres_env(location).get("POSTGRES_SCHEMA", "public")


def store_state(location: str) -> StoreState:
    """Whether the event store at `location` was created: its file, or its schema and table.

    Opening a store creates it; the edges ask first, so that reading a mistyped location
    is an error instead of a new empty store. Cannot reach PostgreSQL: StorageConfigError.
    """
    config = StoreConfig(location)
    if not config.is_postgres:
        path = Path(location)
        if path.exists() and not path.is_file():
            # A folder, /dev/null: neither a store nor a place to create one.
            raise StorageConfigError(f"the event store at {location} is not a file")
        return "ready" if path.is_file() else "no-store"
    import psycopg

    url, _, _ = location.partition("?")
    schema = _postgres_schema(location)
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            found = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), "
                "to_regclass(%s) IS NOT NULL",
                (schema, f'"{schema}".{TimelineApp.name.lower()}_events'),
            ).fetchone()
    except psycopg.Error as exc:
        raise StorageConfigError(f"cannot connect to the event store: {exc}") from None
    has_schema, has_table = found if found else (False, False)
    if not has_schema:
        return "no-schema"
    return "ready" if has_table else "no-store"


def create_postgres_schema(location: str) -> bool:
    """Create the schema named in a PostgreSQL location; whether it was new."""
    import psycopg
    from psycopg.sql import SQL, Identifier

    url, _, _ = location.partition("?")
    schema = _postgres_schema(location)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            existed = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", (schema,)
            ).fetchone()
            conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
    except psycopg.Error as exc:
        raise StorageConfigError(f"cannot create the schema {schema!r}: {exc}") from None
    return not (existed and existed[0])


class TimelineStore:
    """The write side's handle: append facts, read facts and history."""

    def __init__(self, config: StoreConfig, clock: Clock = system_clock) -> None:
        self.config = config
        self.clock = clock
        env = config.env()  # a clear error for a folder that does not exist
        try:
            with _opening(config):
                self.app = TimelineApp(env=env)
                self.recorder: SQLiteTimelineRecorder | PostgresTimelineRecorder = self.app.recorder  # type: ignore[assignment]
                self._fast = _FastDecoder.for_mapper(self.app.mapper)
                transcoder = self.app.mapper.transcoder
                # The transcoder's own encoder, made once (see `one_shot`): same bytes.
                self._encode_text = (
                    one_shot(transcoder.encoder)
                    if isinstance(transcoder, JSONTranscoder)
                    else lambda value: transcoder.encode(value).decode("utf8")
                )
                # `fact_tail` writes its envelope by hand where that gives the same bytes.
                self._tail_by_hand = self._same_tail()
                self._registered_by_hand = self._same_registered()
                self._check_cipher()
        except StorageConfigError:
            raise
        except _storage_errors() as exc:
            raise StorageConfigError(f"cannot open the event store: {exc}") from exc

    # -- the cipher marker -------------------------------------------------------------
    def _meta(self, name: str, value: str | None = None) -> str | None:
        """Read (or, with `value`, write once) a row of `timeline_meta`.

        On SQLite the library's transactions begin deferred: one that has read cannot
        start writing once another connection wrote meanwhile, and SQLite says "locked" at
        once instead of waiting (several processes opening a new store together: about one
        open in a thousand failed under load). The row is written once whoever writes it,
        so the transaction is taken again, on a fresh snapshot, for up to 30 s.
        """
        deadline = time.monotonic() + 30
        while True:
            try:
                return self._meta_once(name, value)
            except (sqlite3.OperationalError, PersistenceError) as exc:
                retry = not self.config.is_postgres and "locked" in str(exc)
                if not retry or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _meta_once(self, name: str, value: str | None) -> str | None:
        if self.config.is_postgres:
            table = f'"{self.recorder.datastore.schema}".timeline_meta'
            mark = "%s"
        else:
            table, mark = "timeline_meta", "?"
        with self.recorder.datastore.transaction(commit=value is not None) as c:
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            if value is not None:
                c.execute(
                    f"INSERT INTO {table} (name, value) VALUES ({mark}, {mark}) "
                    "ON CONFLICT (name) DO NOTHING",
                    (name, value),
                )
            c.execute(f"SELECT value FROM {table} WHERE name = {mark}", (name,))
            row = c.fetchone()
        if row is None:
            return None
        return row["value"] if isinstance(row, dict) else row[0]

    def _check_cipher(self) -> None:
        """Refuse a key that is not the store's, and a missing one (no plaintext writes)."""
        expected = _key_check(self.config.cipher_key)
        stored = self._meta("cipher")
        if stored is None:
            if self.max_position() > 0:
                first = self.recorder.select_notifications(None, 1)
                try:
                    self.decode(first[0])
                except Exception:
                    raise StorageConfigError(_CIPHER_MISMATCH) from None
            stored = self._meta("cipher", expected)
        if stored == expected:
            return
        if stored == "none":
            raise StorageConfigError(
                "this store is not encrypted but a cipher key was given: unset "
                "TIMELINE_CIPHER_KEY (encrypting an existing store needs a new store)"
            )
        if expected == "none":
            raise StorageConfigError("this store is encrypted: set TIMELINE_CIPHER_KEY to its key")
        raise StorageConfigError(_CIPHER_MISMATCH)

    @classmethod
    def open(
        cls, location: str | None = None, cipher_key: str | None = None, clock: Clock = system_clock
    ) -> TimelineStore:
        """Open (and create if needed) the store at `location` (default ./timeline.db)."""
        return cls(StoreConfig.resolve(location, cipher_key), clock)

    def close(self) -> None:
        """Release the database connections."""
        self.app.close()

    def __enter__(self) -> TimelineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------
    def stream(self, student_id: str) -> list[Fact]:
        """Every stored fact of a student (retractions included), in record order."""
        uid = student_uuid(student_id)
        # One plain query (on PostgreSQL one round trip: no transaction around it) and
        # the rows decoded straight to facts, as `streams` reads them; the library's
        # `select_events` built a StoredEvent and a UUID per row inside a transaction.
        rows = self._stream_postgres(uid) if self.config.is_postgres else self._stream_sqlite(uid)
        facts = []
        for row_uid, version, topic, state in rows:
            fact = self._fact_of(student_id, row_uid, version, topic, state)
            if fact is not None:
                facts.append(fact)
        return facts

    def streams(self, upto: int | None = None, page: int = 20_000) -> Iterator[StoredStream]:
        """Every student's stream as of log position `upto` (default: now), one at a time.

        Read in primary-key order (student stream, then version) in pages of `page` rows,
        each page its own short read, and decoded straight to facts: a rebuild derives
        each student once from here instead of following the log notification by
        notification. Memory holds one page and one stream. Events after `upto` are left
        out, so the streams are the log's state at that position (track `upto` after).
        """
        upto = self.max_position() if upto is None else upto
        fetch = self._stream_page_postgres if self.config.is_postgres else self._stream_page_sqlite
        fast = self._fast
        # The usual fact straight from the fast decoder (`_fact_of` calls it too, first).
        exact = fast.exact_fact if fast is not None and fast.exact else None
        after: tuple[Any, int] | None = None
        current: StoredStream | None = None
        while True:
            rows = fetch(after, upto, page)
            for uid, version, topic, state in rows:
                key = uid.hex if isinstance(uid, UUID) else uid
                if current is None or current.uuid != key:
                    if current is not None and current.student_id:
                        yield current
                    current = StoredStream(
                        key, self._registered_name(uid, version, topic, state), [], version
                    )
                    continue  # its registration (or no stream of ours): no fact
                current.version = version
                if not current.student_id:
                    continue  # no registration at the start of this stream: not ours
                fact = None
                if exact is not None and topic == _RECORDED:
                    fact = exact(current.student_id, version, state)
                if fact is None:
                    fact = self._fact_of(current.student_id, uid, version, topic, state)
                if fact is not None:
                    current.facts.append(fact)
            if len(rows) < page:
                break
            after = (rows[-1][0], rows[-1][1])
        if current is not None and current.student_id:
            yield current

    def streams_of(self, uuids: Sequence[str], chunk: int = 500) -> Iterator[StoredStream]:
        """The whole streams of these aggregates (hex ids), as `streams` reads them.

        One read per `chunk` ids instead of one per stream: a follower that meets many
        students it has not cached (a new process after an ingest) reads them together.
        A stream that does not start with its registration is left out, as in `streams`.
        """
        fetch = self._streams_in_postgres if self.config.is_postgres else self._streams_in_sqlite
        for start in range(0, len(uuids), chunk):
            current: StoredStream | None = None
            for uid, version, topic, state in fetch(uuids[start : start + chunk]):
                key = uid.hex if isinstance(uid, UUID) else uid
                if current is None or current.uuid != key:
                    if current is not None and current.student_id:
                        yield current
                    current = StoredStream(
                        key, self._registered_name(uid, version, topic, state), [], version
                    )
                    continue  # its registration (or no stream of ours): no fact
                current.version = version
                if not current.student_id:
                    continue
                fact = self._fact_of(current.student_id, uid, version, topic, state)
                if fact is not None:
                    current.facts.append(fact)
            if current is not None and current.student_id:
                yield current

    def _streams_in_sqlite(self, uuids: Sequence[str]) -> list[tuple[Any, int, str, bytes]]:
        table = self.recorder.events_table_name
        marks = ",".join("?" for _ in uuids)
        with self.recorder.datastore.transaction(commit=False) as c:
            c.sqlite_cursor.row_factory = None  # plain tuples: no `sqlite3.Row` per event
            c.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {table} "
                f"WHERE originator_id IN ({marks}) ORDER BY originator_id, originator_version",
                list(uuids),
            )
            return c.fetchall()

    def _streams_in_postgres(self, uuids: Sequence[str]) -> list[tuple[Any, int, str, bytes]]:
        return self._rows_postgres(
            "originator_id = ANY(%s) ORDER BY originator_id, originator_version",
            [UUID(hex=u) for u in uuids],
        )

    def _rows_postgres(self, condition: str, value: Any) -> list[tuple[Any, int, str, bytes]]:
        """(id, version, topic, state) of the stored events meeting `condition` (one `%s`)."""
        from psycopg.sql import SQL, Identifier

        recorder = self.recorder
        statement = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE " + condition  # a constant of this module, never input
        ).format(
            schema=Identifier(recorder.datastore.schema),
            table=Identifier(recorder.events_table_name),
        )
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (value,))
            return [
                (r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
                for r in curs.fetchall()
            ]

    def _stream_sqlite(self, uid: UUID) -> list[tuple[Any, int, str, bytes]]:
        table = self.recorder.events_table_name
        # One statement on an autocommit connection is its own read transaction: no
        # BEGIN and ROLLBACK around it (the library's `transaction` issues both).
        with self.recorder.datastore.get_connection(commit=False) as conn:
            cursor = conn.cursor().sqlite_cursor
            cursor.row_factory = None  # plain tuples: no `sqlite3.Row` per event
            return cursor.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {table} "
                "WHERE originator_id = ? ORDER BY originator_version",
                (uid.hex,),
            ).fetchall()

    def _stream_postgres(self, uid: UUID) -> list[tuple[Any, int, str, bytes]]:
        return self._rows_postgres("originator_id = %s ORDER BY originator_version", uid)

    def _registered_name(self, uid: Any, version: int, topic: str, state: bytes) -> str:
        """The student number of a stream's first event ('' when it is no registration)."""
        if version != 1:
            log.warning("stream %s does not start with its registration: skipped", uid)
            return ""
        if topic == _REGISTERED and self._fast is not None:
            # What `decode` would build, without building the event: its student number.
            student_id = self._fast.registered_name(state)
            if student_id is not None:
                return student_id
        try:
            event = self.decode(StoredEvent(uid, version, topic, state))
        except MapperDeserialisationError:
            raise StorageConfigError(_CIPHER_MISMATCH) from None
        if not isinstance(event, Student.Registered):
            log.warning("stream %s does not start with its registration: skipped", uid)
            return ""
        return event.student_id

    def _fact_of(
        self, student_id: str, uid: Any, version: int, topic: str, state: bytes
    ) -> Fact | None:
        """One stored row as a Fact (None for a registration), as `stream` decodes it."""
        fast = self._fast
        fact = fast.fact_of(student_id, version, topic, state) if fast is not None else None
        if fact is None:
            try:
                event = self.app.mapper.to_domain_event(StoredEvent(uid, version, topic, state))
            except MapperDeserialisationError:
                raise StorageConfigError(_CIPHER_MISMATCH) from None
            return to_fact(student_id, event) if isinstance(event, Student.FactRecorded) else None
        return None if fact is _NOT_A_FACT else fact

    def _stream_page_sqlite(
        self, after: tuple[Any, int] | None, upto: int, page: int
    ) -> list[tuple[Any, int, str, bytes]]:
        table = self.recorder.events_table_name
        start = after or ("", 0)
        with self.recorder.datastore.transaction(commit=False) as c:
            c.sqlite_cursor.row_factory = None  # plain tuples: no `sqlite3.Row` per event
            c.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {table} "
                "WHERE (originator_id, originator_version) > (?, ?) AND rowid <= ? "
                "ORDER BY originator_id, originator_version LIMIT ?",
                (*start, upto, page),
            )
            return c.fetchall()

    def _stream_page_postgres(
        self, after: tuple[Any, int] | None, upto: int, page: int
    ) -> list[tuple[Any, int, str, bytes]]:
        from psycopg.sql import SQL, Identifier

        recorder = self.recorder
        statement = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE (originator_id, originator_version) > (%s, %s) AND notification_id <= %s "
            "ORDER BY originator_id, originator_version LIMIT %s"
        ).format(
            schema=Identifier(recorder.datastore.schema),
            table=Identifier(recorder.events_table_name),
        )
        start = after or (UUID(int=0), 0)
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (*start, upto, page))
            return [
                (r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
                for r in curs.fetchall()
            ]

    def facts(self, student_id: str, known_at: datetime | None = None) -> list[Fact]:
        """The facts known at `known_at` (all when None), retractions applied, in order."""
        from timeline.facts import known_facts

        return known_facts(self.stream(student_id), known_at)

    def lookup_keys(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], FeedKey]:
        """The stored feed keys among `keys` (no aggregate is replayed)."""
        return self.recorder.lookup_keys(keys)

    def notifications(self, after: int = 0, limit: int = 500) -> list[Any]:
        """The notification log from position `after` (exclusive)."""
        return list(self.app.recorder.select_notifications(after, limit, inclusive_of_start=False))

    def decode(self, notification: Any) -> Any:
        """Turn a notification into its domain event (the library's mapper, made cheaper)."""
        if self._fast is not None:
            event = self._fast.event(notification)
            if event is not None:
                return event
        return self.app.mapper.to_domain_event(notification)

    def max_position(self) -> int:
        """The last notification id (0 for an empty store)."""
        return self.app.recorder.max_notification_id() or 0

    def reachable(self, timeout: float) -> bool:
        """Whether PostgreSQL answers within about `timeout` seconds (SQLite: always).

        For a probe: one attempt. The library retries a lost connection 10 times, each
        waiting for the pool (30 s by default), which held a readiness probe 5 minutes.
        """
        if not self.config.is_postgres:
            return True
        import psycopg

        try:
            with self.recorder.datastore.pool.connection(timeout=timeout) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:  # PoolTimeout included
            return False
        return True

    def fail_fast(self, probe: float) -> None:
        """While PostgreSQL is unreachable, fail within seconds instead of minutes (a server).

        See `timeline.store_postgres.FailFast`; SQLite: nothing to do.
        """
        if not self.config.is_postgres:
            return
        from timeline.store_postgres import FailFast

        pool = self.recorder.datastore.pool
        if not isinstance(getattr(pool.getconn, "__self__", None), FailFast):  # not twice
            FailFast(pool, probe)

    # -- writing -----------------------------------------------------------------------
    def load_students(self, student_ids: Iterable[str]) -> dict[str, Student]:
        """The current aggregates of these students, new ones opened (not yet saved)."""
        wanted = {student_uuid(s): s for s in student_ids}
        existing = self.recorder.existing_students(list(wanted))
        now = self.clock()
        students: dict[str, Student] = {}
        for uid, sid in wanted.items():
            if uid in existing:
                try:
                    students[sid] = self.app.repository.get(uid)
                except MapperDeserialisationError:
                    raise StorageConfigError(_CIPHER_MISMATCH) from None
            else:
                students[sid] = Student.open(sid, now)
        return students

    def save(self, students: Iterable[Student], feed_keys: Sequence[FeedKey]) -> None:
        """Save the pending events of `students` and their feed keys in one transaction."""
        self.app.save(*students, feed_keys=feed_keys)

    def fact_tail(
        self,
        *,
        source: str,
        event_id: str,
        type: str,
        occurred_on: date,
        data: dict[str, Any],
        note: str | None,
        digest: str,
    ) -> bytes:
        """A new fact's stored state after its timestamp, unencrypted (see `append`)."""
        if self._tail_by_hand:
            plain = _transcoded_data(data)
            if plain is not None and occurred_on.__class__ is date:  # (`type` is a field here)
                # The whole tail by pydantic-core, which escapes text exactly as the
                # transcoder's encoder does (checked at open, `_same_tail`).
                state = {
                    "source": source,
                    "event_id": event_id,
                    "type": type,
                    "occurred_on": {"_type_": "date_iso", "_data_": occurred_on.isoformat()},
                    "data": plain,
                    "note": note,
                    "digest": digest,
                }
                try:
                    return to_json(state)[1:]
                except PydanticSerializationError:  # (text that UTF-8 cannot hold) as below
                    pass
            # The transcoder's bytes, with its C string escaper for the envelope (twice
            # as fast as encoding the whole dict: a Python call per date is the cost).
            return (
                '"source":'
                + _escape(source)
                + ',"event_id":'
                + _escape(event_id)
                + ',"type":'
                + _escape(type)
                + ',"occurred_on":{"_type_":"date_iso","_data_":"'
                + occurred_on.isoformat()
                + '"},"data":'
                + (self._encode_text(data) if data else "{}")
                + ',"note":'
                + ("null" if note is None else _escape(note))
                + ',"digest":'
                + _escape(digest)
                + "}"
            ).encode("utf8")
        return self._encoded_tail(
            source=source,
            event_id=event_id,
            type=type,
            occurred_on=occurred_on,
            data=data,
            note=note,
            digest=digest,
        )

    def _encoded_tail(
        self,
        *,
        source: str,
        event_id: str,
        type: str,
        occurred_on: date,
        data: dict[str, Any],
        note: str | None,
        digest: str,
    ) -> bytes:
        """`fact_tail` by the transcoder alone."""
        # The field order of `Student.FactRecorded` after `timestamp`: the library's mapper
        # encodes `vars(event)` in that order, with this same transcoder.
        state = {
            "source": source,
            "event_id": event_id,
            "type": type,
            "occurred_on": occurred_on,
            "data": data,
            "note": note,
            "digest": digest,
        }
        return self._encode_text(state)[1:].encode("utf8")

    def _same_tail(self) -> bool:
        """Whether `fact_tail` by hand gives the transcoder's bytes (else it uses the latter)."""
        probe: dict[str, Any] = {
            "source": "régistrar\u2028",
            "event_id": 'e"1\\',
            "type": "arc_issued",
            "occurred_on": date(2024, 3, 16),
            "data": {
                "valid_until": date(2025, 3, 31),
                "fields": ["address", "臺\x7f"],
                "by_agent": True,
                "amount_ntd": 2000,
                "stay_until": None,
                "reason": "a\u2028b\x00\\",
            },
            "note": "line one\nline\ttwo 臺",
            "digest": "0f" * 16,
        }
        self._tail_by_hand = True
        bare = {**probe, "note": None, "data": {}}
        return all(self.fact_tail(**p) == self._encoded_tail(**p) for p in (probe, bare))

    def _same_registered(self) -> bool:
        """Whether `_registered` by hand gives the transcoder's bytes."""
        now = datetime(2024, 3, 16, 1, 2, 3, 456789, tzinfo=UTC)
        stamp = b'{"timestamp":' + self.app.mapper.transcoder.encode(now) + b","
        self._registered_by_hand = False
        expected = self._registered(now, stamp, 'S"é\u2028')
        self._registered_by_hand = True
        return self._registered(now, stamp, 'S"é\u2028') == expected

    def append(self, facts: Sequence[NewFact], feed_keys: Sequence[FeedKey]) -> None:
        """Store new facts after the last event of each stream, with their keys, atomically.

        Writes what `Application.save` of `Student.record` would (same topics, same state
        bytes, the cipher applied), without loading an aggregate: the versions come from
        the streams' last versions, and a student without a stream gets its `Registered`
        event first. Raises the library's `IntegrityError` when another writer took one
        of these versions or keys meanwhile (the caller classifies again and retries).
        """
        if not facts:
            return
        encode = self.app.mapper.transcoder.encode
        now = self.clock()
        stamps: dict[datetime, bytes] = {}
        # The ids as the recorder writes them: SQLite's as hex text, made without a `UUID`.
        students = dict.fromkeys(fact[0] for fact in facts)
        ids: dict[str, UUID | str] = {
            sid: student_uuid(sid) if self.config.is_postgres else student_uuid_hex(sid)
            for sid in students
        }
        versions = self.recorder.last_versions(list(ids.values()))  # type: ignore[arg-type]
        # The next version of each stream; 1 for a student without one, whose
        # `Registered` event goes into the log just before its first fact.
        next_version = {sid: versions.get(uid, 0) + 1 for sid, uid in ids.items()}
        mapper = self.app.mapper
        protect = self._protect if mapper.compressor or mapper.cipher else None
        now_stamp = stamps[now] = b'{"timestamp":' + encode(now) + b","
        stored: list[StoredRow] = []
        for sid, at, tail in facts:
            version = next_version[sid]
            if version == 1:
                state = self._registered(now, now_stamp, sid)
                stored.append(
                    StoredRow(ids[sid], 1, _REGISTERED_TOPIC, protect(state) if protect else state)
                )
                version = 2
            moment = at or now
            stamp = stamps.get(moment)
            if stamp is None:
                stamp = stamps[moment] = b'{"timestamp":' + encode(moment) + b","
            next_version[sid] = version + 1
            state = stamp + tail
            stored.append(
                StoredRow(ids[sid], version, _FACT_TOPIC, protect(state) if protect else state)
            )
        # No notification ids back: nothing here uses them (PostgreSQL skips RETURNING).
        self.recorder.insert_events(stored, feed_keys=feed_keys, notification_ids=False)

    def _registered(self, now: datetime, stamp: bytes, student_id: str) -> bytes:
        """The state of a new stream's `Registered` event (`stamp`: `now`'s, as in `append`)."""
        if self._registered_by_hand:
            return stamp + _REGISTERED_TAIL + _escape(student_id).encode("utf8") + b"}"
        registered = {
            "timestamp": now,
            "originator_topic": _STUDENT_TOPIC,
            "student_id": student_id,
        }
        return self.app.mapper.transcoder.encode(registered)

    def _protect(self, state: bytes) -> bytes:
        """Compress and encrypt a state as the library's mapper does (when configured)."""
        mapper = self.app.mapper
        if mapper.compressor:
            state = mapper.compressor.compress(state)
        if mapper.cipher:
            state = mapper.cipher.encrypt(state)
        return state


def _transcoded_data(data: dict[str, Any]) -> dict[str, Any] | None:
    """`data` with its dates as the transcoder writes them (`DateAsISO`), for pydantic-core.

    None when a value is of a kind other than text, whole numbers, booleans, None, exact
    dates and lists of text (what the contract's events hold): the transcoder decides.
    """
    plain: dict[str, Any] = {}
    for name, value in data.items():
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            plain[name] = value
        elif kind is date:
            plain[name] = {"_type_": "date_iso", "_data_": value.isoformat()}
        elif kind is list and all(type(item) is str for item in value):
            plain[name] = value
        else:
            return None
        if type(name) is not str:
            return None
    return plain


def to_fact(student_id: str, event: Student.FactRecorded) -> Fact:
    """The read side's view of one recorded event."""
    return Fact(  # positional: cheaper than keywords, once per event in a rebuild
        student_id,
        event.source,
        event.event_id,
        event.type,
        event.occurred_on,
        event.timestamp,
        event.originator_version,
        event.data,
        event.note,
    )


_REGISTERED = "timeline.aggregate:Student.Registered"
_RECORDED = "timeline.aggregate:Student.FactRecorded"
_NOT_A_FACT: Any = object()  # `_FastDecoder.fact` for an event that is no fact (Registered)


# A JSON string without escapes or control characters: its text is its value.
_PLAIN = r'"([^"\\\x00-\x1f]*)"'
# `append`'s layout of a fact's state, up to `data` (see `TimelineStore.fact_tail`).
_FACT_HEAD = re.compile(
    r'\{"timestamp":\{"_type_":"datetime_iso","_data_":' + _PLAIN + r"\},"
    r'"source":' + _PLAIN + r',"event_id":' + _PLAIN + r',"type":' + _PLAIN + r","
    r'"occurred_on":\{"_type_":"date_iso","_data_":' + _PLAIN + r'\},"data":'
)
_FACT_TAIL = re.compile(r',"note":(?:null|' + _PLAIN + r'),"digest":"[^"\\\x00-\x1f]*"\}')
# `append`'s layout of a registration (`TimelineStore._registered`).
_REGISTERED_STATE = re.compile(
    r'\{"timestamp":\{"_type_":"datetime_iso","_data_":'
    + _PLAIN
    + r"\},"
    + re.escape('"originator_topic":' + json.dumps(_STUDENT_TOPIC) + ',"student_id":')
    + _PLAIN
    + r"\}"
)
_DECODED_CACHE = 50_000  # distinct date and time texts remembered while decoding


def _flat(items: list[Any]) -> bool:
    """Whether a parsed list holds no objects or lists (nothing for the hook to revive)."""
    return not any(type(v) is dict or type(v) is list for v in items)


class _FastDecoder:
    """Stored state → domain event or `Fact`, as the library's mapper would decode it.

    The mapper parses with a Python `object_hook` called for every JSON object and
    resolves topics and id convertors per event; that was most of the cost of reading
    the log. Here the C parser runs without a hook and only the objects that can hold a
    transcoded value are revived, with the transcoder's own transcodings. It serves only
    this application's two event classes, unencrypted and uncompressed, at class version
    1: for anything else (or any doubt) it answers None and the caller uses the mapper,
    so errors and unusual states are the mapper's, unchanged.
    """

    def __init__(self, transcoder: JSONTranscoder) -> None:
        self.names = transcoder.names
        self.classes: dict[str, type] = {
            _REGISTERED: Student.Registered,
            _RECORDED: Student.FactRecorded,
        }
        # The C scanner itself: `raw_decode` minus a Python frame (StopIteration on errors).
        self.scan = json.JSONDecoder().scan_once
        # `exact_fact` remembers decoded dates and times by their text: only when the
        # transcodings are the known pure ones (same text, same value).
        pure = type(self.names.get("date_iso")) is DateAsISO and (
            type(self.names.get("datetime_iso")) is DatetimeAsISO
        )
        self.exact = pure
        self.days: dict[str, date] = {}
        self.moments: dict[str, datetime] = {}

    @classmethod
    def for_mapper(cls, mapper: Any) -> _FastDecoder | None:
        """A fast decoder for this mapper, or None when its states are not plain JSON."""
        transcoder = mapper.transcoder
        if mapper.cipher is not None or mapper.compressor is not None:
            return None
        if (
            not isinstance(transcoder, JSONTranscoder)
            or type(transcoder)._decode_obj is not JSONTranscoder._decode_obj
        ):
            return None
        return cls(transcoder)

    def state(self, stored: Any) -> dict[str, Any] | None:
        """The event's attributes from its stored JSON state; None to leave it to the mapper."""
        return self.parse(stored.state)

    def parse(self, raw: bytes) -> dict[str, Any] | None:
        """Attributes from a stored JSON state; None to leave it to the mapper."""
        try:
            text = raw.decode("utf8")
            state, end = self.scan(text, 0)
            if end != len(text) or type(state) is not dict or "class_version" in state:
                return None
            if len(state) == 2 and "_type_" in state and "_data_" in state:
                return None  # the whole state is one transcoded value: not an event of ours
            return self._revive(state)
        except Exception:  # the mapper raises its own error for this state
            return None

    def _revive(self, state: dict[str, Any]) -> dict[str, Any]:
        """The library's object hook applied to a parsed state (bottom-up, as the hook runs).

        Events are shallow: transcoded leaves (`{"_type_": name, "_data_": "text"}`) at the
        top level or one level down (a fact's `data`), lists of scalars. Those are revived
        in place here; anything deeper goes through the general walk.
        """
        names = self.names
        for key, value in state.items():
            kind = type(value)
            if kind is dict:
                if len(value) == 2 and type(value.get("_data_")) is str and "_type_" in value:
                    state[key] = names[value["_type_"]].decode(value["_data_"])
                    continue
                for inner_key, inner in value.items():
                    inner_kind = type(inner)
                    if inner_kind is dict:
                        if (
                            len(inner) == 2
                            and type(inner.get("_data_")) is str
                            and "_type_" in inner
                        ):
                            value[inner_key] = names[inner["_type_"]].decode(inner["_data_"])
                        else:
                            return self._revive_any(state)
                    elif inner_kind is list and not _flat(inner):
                        return self._revive_any(state)
                if len(value) == 2 and "_type_" in value and "_data_" in value:
                    return self._revive_any(state)
            elif kind is list and not _flat(value):
                return self._revive_any(state)
        return state

    def _revive_any(self, obj: Any) -> Any:
        """The library's object hook applied bottom-up to any parsed value."""
        kind = type(obj)
        if kind is list:
            return [self._revive_any(v) for v in obj]
        if kind is not dict:
            return obj
        for key, value in obj.items():
            if type(value) is dict or type(value) is list:
                obj[key] = self._revive_any(value)
        if len(obj) == 2 and "_type_" in obj and "_data_" in obj:
            return self.names[obj["_type_"]].decode(obj["_data_"])
        return obj

    def event(self, stored: Any) -> Any:
        """The domain event of a stored event or notification; None to leave it to the mapper."""
        cls = self.classes.get(stored.topic)
        if cls is None:
            return None
        state = self.state(stored)
        if state is None:
            return None
        originator_id = stored.originator_id
        state["originator_id"] = find_id_convertor(cls, type(originator_id))(originator_id)
        state["originator_version"] = stored.originator_version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return event

    def fact(self, student_id: str, stored: Any) -> Fact | None:
        """The `Fact` of a stored event (`_NOT_A_FACT` for a registration); None: use the mapper."""
        return self.fact_of(student_id, stored.originator_version, stored.topic, stored.state)

    def fact_of(self, student_id: str, version: int, topic: str, raw: bytes) -> Fact | None:
        """`fact` from a stored row's parts."""
        if topic != _RECORDED and topic != _REGISTERED:
            return None
        if topic == _RECORDED and self.exact:
            fact = self.exact_fact(student_id, version, raw)
            if fact is not None:
                return fact
        state = self.parse(raw)
        if state is None:
            return None
        if topic == _REGISTERED:
            return _NOT_A_FACT
        try:
            return Fact(
                student_id,
                state["source"],
                state["event_id"],
                state["type"],
                state["occurred_on"],
                state["timestamp"],
                version,
                state["data"],
                state["note"],
            )
        except KeyError:
            return None

    def registered_name(self, raw: bytes) -> str | None:
        """The student number of a `Registered` state; None to leave it to the mapper."""
        try:
            if self.exact:
                found = _REGISTERED_STATE.fullmatch(raw.decode("utf8"))
                if found is not None:
                    at = found[1]
                    if at not in self.moments:
                        self._moment(at)  # decoded as the mapper would (it may refuse)
                    return found[2]
        except Exception:  # a bad text or value: the mapper decides
            return None
        attributes = self.parse(raw)
        if attributes is not None and type(attributes.get("student_id")) is str:
            return attributes["student_id"]
        return None

    def exact_fact(self, student_id: str, version: int, raw: bytes) -> Fact | None:
        """The `Fact` of a state in exactly the layout `append` writes; None for any other.

        The envelope is matched by a regular expression (strings without escapes or
        control characters, so each is its own text) and only `data` goes through the
        JSON scanner; the dates and the record time are decoded once per distinct text
        (a batch shares one record time). Anything else is left to `parse`.
        """
        try:
            text = raw.decode("utf8")
            head = _FACT_HEAD.match(text)
            if head is None:
                return None
            data, end = self.scan(text, head.end())
            tail = _FACT_TAIL.fullmatch(text, end)
            if tail is None or type(data) is not dict or "_type_" in data:
                return None  # (a `data` that is itself one transcoded value: the general walk)
            days = self.days
            for key, value in data.items():
                kind = type(value)
                if kind is dict:
                    if len(value) != 2 or value.get("_type_") != "date_iso":
                        return None
                    day_text = value.get("_data_")
                    if type(day_text) is not str:
                        return None
                    day = days.get(day_text)
                    if day is None:
                        day = self._day(day_text)
                    data[key] = day
                elif kind is list and not _flat(value):
                    return None
            at, source, event_id, fact_type, on = head.groups()
            moment = self.moments.get(at)
            if moment is None:
                moment = self._moment(at)
            day = days.get(on)
            if day is None:
                day = self._day(on)
            return Fact(
                student_id, source, event_id, fact_type, day, moment, version, data, tail[1]
            )
        except Exception:  # a bad text or value: `parse` and the mapper decide
            return None

    def _day(self, text: str) -> date:
        """A `date_iso` text decoded by the transcoder, remembered (bounded)."""
        if len(self.days) > _DECODED_CACHE:
            self.days.clear()
        day = self.days[text] = self.names["date_iso"].decode(text)
        return day

    def _moment(self, text: str) -> datetime:
        """A `datetime_iso` text decoded by the transcoder, remembered (bounded)."""
        if len(self.moments) > _DECODED_CACHE:
            self.moments.clear()
        moment = self.moments[text] = self.names["datetime_iso"].decode(text)
        return moment


def __getattr__(name: str) -> Any:
    """`PostgresTimelineRecorder` from its own module, imported only when asked for."""
    if name == "PostgresTimelineRecorder":
        from timeline.store_postgres import PostgresTimelineRecorder

        return PostgresTimelineRecorder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
