"""The alert outbox: one row per alert key, delivery state in the database.

Exactly once: an alert enters the outbox through `INSERT … ON CONFLICT (key) DO NOTHING`,
so a restart, a second run for the same day or a second process cannot enqueue it twice;
one emitter at a time holds the emitter lock (`EmitterLock`) while it enqueues and
delivers. Delivery is at-least-once towards a sink only if the process dies between a
successful send and the row being marked sent; the webhook's `Idempotency-Key` and the
e-mail's deterministic `Message-ID` let the receiver drop that rare repeat.

The same table lives in SQLite (sqlite-utils) or PostgreSQL (psycopg), following where
the events live.
"""

from __future__ import annotations

import fcntl
import logging
import random
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TextIO

from scheduler.alert import Alert
from scheduler.sinks import DeliveryError, Sink, backoff_delay
from timeline.clock import Clock, system_clock

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alert_outbox ("
    " key TEXT PRIMARY KEY, day TEXT NOT NULL, student_id TEXT NOT NULL, task TEXT NOT NULL,"
    " milestone TEXT NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at TEXT NOT NULL,"
    " sent_at TEXT, sink TEXT)",
    "CREATE INDEX IF NOT EXISTS alert_outbox_state ON alert_outbox (state, day)",
    "CREATE TABLE IF NOT EXISTS scheduler_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


_SCHEMA_LOCK = zlib.crc32(b"residency-timeline outbox schema")


class EmitterBusy(RuntimeError):
    """Another emitter holds the lock."""


@dataclass
class EnqueueReport:
    """What went into the outbox."""

    new: int = 0
    already: int = 0
    superseded: int = 0


@dataclass
class DeliveryReport:
    """What delivery did."""

    sent: int = 0
    failed: int = 0
    dead: list[str] = field(default_factory=list)


class OutboxDB:
    """A tiny adapter over sqlite3 (via sqlite-utils) or psycopg: `?` placeholders."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.is_postgres = location.startswith(("postgresql://", "postgres://"))
        if self.is_postgres:
            import psycopg

            url, _, query = location.partition("?")
            self.conn: Any = psycopg.connect(url, autocommit=True)
            schema = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("schema")
            if schema:
                self.conn.execute(f'SET search_path TO "{schema}"')
        else:
            from sqlite_utils import Database

            self.sqlite = Database(location)
            self.conn = self.sqlite.conn
            # Autocommit: a lone UPDATE is durable at once; `transaction()` uses BEGIN.
            self.conn.isolation_level = None
            self.conn.execute("PRAGMA busy_timeout = 30000")
        with self.transaction():
            if self.is_postgres:
                # CREATE ... IF NOT EXISTS races with a concurrent creator on PostgreSQL.
                self.execute("SELECT pg_advisory_xact_lock(?)", [_SCHEMA_LOCK])
            for statement in _SCHEMA:
                self.execute(statement)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the cursor."""
        if self.is_postgres:
            return self.conn.execute(sql.replace("?", "%s"), params)
        return self.conn.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work."""
        if self.is_postgres:
            with self.conn.transaction():
                yield
        else:
            with self.sqlite.atomic():
                yield

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class EmitterLock:
    """One emitter at a time: a file lock beside SQLite, an advisory lock on PostgreSQL.

    `name` separates locks: "emitter" guards enqueue+deliver; "scheduler" keeps a second
    daemon from starting.
    """

    def __init__(self, outbox: OutboxDB, name: str = "emitter") -> None:
        self.outbox = outbox
        self.name = name
        self.key = zlib.crc32(f"residency-timeline {name}".encode())
        self._file: TextIO | None = None
        self._pg: Any = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to `wait` seconds; raise `EmitterBusy` otherwise."""
        deadline = time.monotonic() + wait
        while True:
            if self._try():
                return
            if time.monotonic() >= deadline:
                raise EmitterBusy(
                    f"another process holds the {self.name} lock for {self._where()} "
                    "(a running `timeline scheduler` or `timeline alerts --emit`); "
                    "try again later or pass a longer --wait"
                )
            time.sleep(0.2)

    def _where(self) -> str:
        return "this PostgreSQL database" if self.outbox.is_postgres else self.outbox.location

    def _try(self) -> bool:
        if self.outbox.is_postgres:
            import psycopg

            if self._pg is None:
                url, _, _ = self.outbox.location.partition("?")
                self._pg = psycopg.connect(url, autocommit=True)
            row = self._pg.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            return bool(row[0])
        if self._file is None:
            self._file = open(f"{self.outbox.location}.{self.name}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        """Let another emitter in."""
        if self._pg is not None:
            self._pg.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self._pg.close()
            self._pg = None
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> EmitterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Outbox:
    """Enqueue alerts once per key; deliver pending ones; remember the watermark."""

    def __init__(self, db: OutboxDB) -> None:
        self.db = db

    # -- watermark -----------------------------------------------------------------------
    def watermark(self) -> date | None:
        """The last day whose alerts were enqueued by the daily job."""
        row = self.db.execute(
            "SELECT value FROM scheduler_state WHERE name = ?", ["watermark"]
        ).fetchone()
        return date.fromisoformat(row[0]) if row else None

    def _set_watermark(self, day: date) -> None:
        self.db.execute(
            "INSERT INTO scheduler_state (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            ["watermark", day.isoformat()],
        )

    # -- enqueue -------------------------------------------------------------------------
    def enqueue(
        self,
        due: Sequence[tuple[date, Alert]],
        superseded: Sequence[tuple[date, Alert]] = (),
        *,
        now: datetime,
        watermark: date | None = None,
    ) -> EnqueueReport:
        """Insert alerts (pending) and superseded ones (recorded, never sent), atomically."""
        report = EnqueueReport()
        with self.db.transaction():
            for rows, state in ((due, "pending"), (superseded, "superseded")):
                for day, alert in rows:
                    cursor = self.db.execute(
                        "INSERT INTO alert_outbox (key, day, student_id, task, milestone, "
                        "payload, state, created_at) VALUES (?,?,?,?,?,?,?,?) "
                        "ON CONFLICT (key) DO NOTHING",
                        [
                            alert.key,
                            day.isoformat(),
                            alert.student_id,
                            alert.task,
                            alert.milestone,
                            alert.model_dump_json(),
                            state,
                            now.isoformat(),
                        ],
                    )
                    if cursor.rowcount == 1:
                        if state == "pending":
                            report.new += 1
                        else:
                            report.superseded += 1
                    elif state == "pending":
                        report.already += 1
            if watermark is not None:
                self._set_watermark(watermark)
        return report

    # -- deliver -------------------------------------------------------------------------
    def deliver(
        self,
        sink: Sink,
        *,
        now: Clock = system_clock,
        attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> DeliveryReport:
        """Send every pending alert (retrying with backoff); dead-letter after `attempts`."""
        report = DeliveryReport()
        rows = self.db.execute(
            "SELECT key, payload, attempts FROM alert_outbox WHERE state = 'pending' "
            "ORDER BY day, key"
        ).fetchall()
        for key, payload, tried in rows:
            alert = Alert.model_validate_json(payload)
            while True:
                tried += 1
                try:
                    sink.send(alert)
                except DeliveryError as exc:
                    give_up = exc.permanent or tried >= attempts
                    self.db.execute(
                        "UPDATE alert_outbox SET attempts = ?, last_error = ?, state = ?, "
                        "sink = ? WHERE key = ?",
                        [tried, str(exc)[:500], "dead" if give_up else "pending", sink.name, key],
                    )
                    log.warning("alert %s: attempt %d failed: %s", key, tried, exc)
                    if give_up:
                        report.dead.append(key)
                        report.failed += 1
                        break
                    delay = backoff_delay(tried, base_delay, max_delay, rng)
                    if exc.retry_after:
                        delay = min(max(delay, exc.retry_after), max_delay)
                    sleep(delay)
                    continue
                self.db.execute(
                    "UPDATE alert_outbox SET attempts = ?, state = 'sent', sent_at = ?, sink = ?, "
                    "last_error = NULL WHERE key = ?",
                    [tried, now().isoformat(), sink.name, key],
                )
                report.sent += 1
                break
        return report

    # -- reading -------------------------------------------------------------------------
    def rows(self, state: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows (optionally of one state), oldest first."""
        sql = (
            "SELECT key, day, student_id, task, milestone, state, attempts, last_error, "
            "sent_at, sink FROM alert_outbox"
        )
        params: list[Any] = []
        if state:
            sql += " WHERE state = ?"
            params.append(state)
        sql += " ORDER BY day, key"
        names = [
            "key",
            "day",
            "student_id",
            "task",
            "milestone",
            "state",
            "attempts",
            "last_error",
            "sent_at",
            "sink",
        ]
        return [dict(zip(names, row, strict=True)) for row in self.db.execute(sql, params)]

    def retry_dead(self) -> int:
        """Put dead-lettered alerts back to pending (after the receiver is fixed)."""
        cursor = self.db.execute(
            "UPDATE alert_outbox SET state = 'pending', attempts = 0 WHERE state = 'dead'"
        )
        return cursor.rowcount


def outbox_location(store_location: str, read_db: str) -> str:
    """The outbox follows the events: PostgreSQL when they are there, else the read db."""
    if store_location.startswith(("postgresql://", "postgres://")):
        return store_location
    return read_db
