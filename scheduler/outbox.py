"""The alert outbox: one row per alert key, delivery state in the database.

Exactly once: an alert enters the outbox through `INSERT … ON CONFLICT (key) DO NOTHING`,
so a restart, a second run for the same day or a second process cannot enqueue it twice;
one emitter at a time holds the emitter lock (`EmitterLock`, per database file or per
PostgreSQL schema) while it enqueues and delivers.

A row goes pending → sending → sent. A failed attempt puts it back to pending with its
next attempt due later (`next_attempt_at`, `scheduler.retry.RetryPolicy`: exponential,
capped, kept in the row so it survives restarts); a permanent failure or the last attempt
makes it dead (a dead letter: listed, re-queued only by `retry_dead`).
'sending' is committed before the sink is touched, so a run killed mid-delivery leaves
rows that say so; the next run delivers them again and the sink makes that safe: the
JSON Lines sink skips keys the file already holds (see `JsonlSink`), the webhook repeats
its `Idempotency-Key` and the e-mail its deterministic `Message-ID`.

Each row records the fingerprint of the rule book it was computed under; unsent rows from
another fingerprint are re-checked before delivery (`scheduler.emit.recheck_unsent`) and
`withdrawn` when their alert no longer falls on its day. Sent rows are history and stay.

The same table lives in SQLite (sqlite-utils) or PostgreSQL (psycopg), following where
the events live.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TextIO

from scheduler import crashpoints
from scheduler.alert import Alert
from scheduler.retry import RetryPolicy
from scheduler.sinks import BatchSink, DeliveryError, Sink
from timeline.clock import Clock, system_clock

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alert_outbox ("
    " key TEXT PRIMARY KEY, day TEXT NOT NULL, student_id TEXT NOT NULL, task TEXT NOT NULL,"
    " milestone TEXT NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at TEXT NOT NULL,"
    " sent_at TEXT, sink TEXT, fingerprint TEXT)",
    "CREATE INDEX IF NOT EXISTS alert_outbox_state ON alert_outbox (state, day)",
    "CREATE TABLE IF NOT EXISTS scheduler_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


# Columns added after the first release, for outboxes created before them.
_ADDED_COLUMNS = {"fingerprint": "TEXT", "last_attempt_at": "TEXT", "next_attempt_at": "TEXT"}

WITHDRAWN_REASON = "withdrawn: no longer falls on this day under the current rules"
# Rows per batch for sinks that take batches: one write + fsync and two transactions each.
BATCH_SIZE = 500
# A far end that did not answer at all (refused, unreachable, timed out) this many times in
# a row is down: the run leaves its other rows for a later round instead of spending a
# timeout on each while it holds the emitter lock.
UNANSWERED_LIMIT = 3


def lock_key(name: str, schema: str | None) -> int:
    """A 64-bit advisory-lock key for `name`, distinct per PostgreSQL schema."""
    digest = hashlib.sha256(f"residency-timeline {name} {schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class EmitterBusy(RuntimeError):
    """Another emitter holds the lock."""


@dataclass
class EnqueueReport:
    """What went into the outbox."""

    new: int = 0
    already: int = 0
    # Of `already`: rows that had been delivered before this run.
    already_sent: int = 0
    superseded: int = 0


@dataclass
class DeliveryReport:
    """What delivery did."""

    sent: int = 0
    failed: int = 0
    dead: list[str] = field(default_factory=list)
    # Failed in this run, not for the last time: each waits in its row for its next attempt.
    retrying: int = 0
    # Rows that failed in earlier runs and whose next attempt is not due yet (not attempted).
    waiting: int = 0
    # The earliest next attempt of any row waiting (this run's failures included).
    next_attempt_at: datetime | None = None
    # Of `sent`: alerts the sink already held (delivered by a run that died before it
    # could record so) and therefore did not deliver again.
    already_in_sink: int = 0
    # Rows found in 'sending': an earlier run died while delivering them.
    interrupted: int = 0


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
            row = self.conn.execute("SELECT current_schema()").fetchone()
            # Locks are per schema: two stores in two schemas of one database stay apart.
            self.schema: str | None = row[0] if row else schema
        else:
            from sqlite_utils import Database

            self.sqlite = Database(location)
            self.conn = self.sqlite.conn
            # Autocommit: a lone UPDATE is durable at once; `transaction()` uses BEGIN.
            self.conn.isolation_level = None
            self.conn.execute("PRAGMA busy_timeout = 30000")
            self.schema = None
        with self.transaction():
            if self.is_postgres:
                # CREATE ... IF NOT EXISTS races with a concurrent creator on PostgreSQL.
                self.execute("SELECT pg_advisory_xact_lock(?)", [lock_key("schema", self.schema)])
            for statement in _SCHEMA:
                self.execute(statement)
            self._add_columns()

    def _add_columns(self) -> None:
        # Look before altering: ALTER TABLE takes an exclusive lock even when it has nothing
        # to do, and would make this open wait behind a running emitter's transaction.
        if self.is_postgres:
            have = {
                row[0]
                for row in self.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'alert_outbox'"
                )
            }
        else:
            have = {row[1] for row in self.execute("PRAGMA table_info(alert_outbox)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self.execute(f"ALTER TABLE alert_outbox ADD COLUMN {name} {kind}")

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
        self.key = lock_key(name, outbox.schema)
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
        if self.outbox.is_postgres:
            return f"schema {self.outbox.schema} of this PostgreSQL database"
        return self.outbox.location

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
        fingerprint: str | None = None,
    ) -> EnqueueReport:
        """Insert alerts (pending) and superseded ones (recorded, never sent), atomically.

        A due alert whose row was withdrawn (the rules had moved it off its day) and that
        falls on its day again goes back to pending.
        """
        report = EnqueueReport()
        with self.db.transaction():
            states = self.states([alert.key for _day, alert in due])
            for rows, state in ((due, "pending"), (superseded, "superseded")):
                for day, alert in rows:
                    cursor = self.db.execute(
                        "INSERT INTO alert_outbox (key, day, student_id, task, milestone, "
                        "payload, state, created_at, fingerprint) VALUES (?,?,?,?,?,?,?,?,?) "
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
                            fingerprint,
                        ],
                    )
                    if cursor.rowcount == 1:
                        if state == "pending":
                            report.new += 1
                        else:
                            report.superseded += 1
                    elif state == "pending" and states.get(alert.key) == "withdrawn":
                        self.db.execute(
                            "UPDATE alert_outbox SET state = 'pending', payload = ?, "
                            "fingerprint = ?, last_error = NULL WHERE key = ? "
                            "AND state = 'withdrawn'",
                            [alert.model_dump_json(), fingerprint, alert.key],
                        )
                        report.new += 1
                    elif state == "pending":
                        report.already += 1
                        report.already_sent += states.get(alert.key) == "sent"
            if watermark is not None:
                self._set_watermark(watermark)
        return report

    def states(self, keys: Sequence[str]) -> dict[str, str]:
        """The state of each of `keys` that has a row."""
        found: dict[str, str] = {}
        for start in range(0, len(keys), BATCH_SIZE):
            chunk = list(keys[start : start + BATCH_SIZE])
            marks = ",".join("?" * len(chunk))
            for key, state in self.db.execute(
                f"SELECT key, state FROM alert_outbox WHERE key IN ({marks})", chunk
            ):
                found[key] = state
        return found

    def unsent_count(self) -> int:
        """Rows waiting for delivery (pending, or left 'sending' by a run that died)."""
        row = self.db.execute(
            "SELECT count(*) FROM alert_outbox WHERE state IN ('pending', 'sending')"
        ).fetchone()
        return int(row[0])

    # -- rules changed -------------------------------------------------------------------
    def stale(self, fingerprint: str) -> list[tuple[str, date]]:
        """Unsent rows computed under another rule book (or before fingerprints): key, day."""
        rows = self.db.execute(
            "SELECT key, day FROM alert_outbox WHERE state IN ('pending', 'sending', 'dead') "
            "AND (fingerprint IS NULL OR fingerprint <> ?) ORDER BY day, key",
            [fingerprint],
        ).fetchall()
        return [(key, date.fromisoformat(day)) for key, day in rows]

    def confirm(self, alerts: Sequence[Alert], fingerprint: str) -> None:
        """Unsent rows that still fall on their day: take the current wording and fingerprint."""
        with self.db.transaction():
            for alert in alerts:
                self.db.execute(
                    "UPDATE alert_outbox SET payload = ?, fingerprint = ? WHERE key = ? "
                    "AND state IN ('pending', 'sending', 'dead')",
                    [alert.model_dump_json(), fingerprint, alert.key],
                )

    def withdraw(self, keys: Sequence[str], fingerprint: str) -> int:
        """Mark unsent rows `withdrawn`: never to be sent, kept and listed."""
        count = 0
        with self.db.transaction():
            for key in keys:
                cursor = self.db.execute(
                    "UPDATE alert_outbox SET state = 'withdrawn', last_error = ?, fingerprint = ? "
                    "WHERE key = ? AND state IN ('pending', 'sending', 'dead')",
                    [WITHDRAWN_REASON, fingerprint, key],
                )
                count += cursor.rowcount
        return count

    # -- deliver -------------------------------------------------------------------------
    def deliver(
        self,
        sink: Sink,
        *,
        now: Clock = system_clock,
        policy: RetryPolicy | None = None,
        rng: Callable[[], float] = random.random,
        batch_size: int = BATCH_SIZE,
        fingerprint: str | None = None,
    ) -> DeliveryReport:
        """Make one attempt at every row that is due; reschedule or dead-letter failures.

        After `UNANSWERED_LIMIT` attempts in a row that got no answer at all (refused,
        unreachable, timed out), the rest wait one first delay, unattempted.

        Due: pending with no `next_attempt_at` or one at or before `now()`, and every row
        left 'sending' by a run that was killed (delivered again; the sinks are idempotent
        by key). Rows are marked 'sending' (committed, attempts + 1) before the sink is
        touched and 'sent' after. A failed attempt waits `policy.delay(...)` in the row
        itself; a permanent failure or the last attempt makes the row 'dead'. With
        `fingerprint`, only rows computed under that rule book are touched (the retry job
        leaves rows of older rules to the daily job, which re-checks them first).
        """
        policy = policy if policy is not None else RetryPolicy()
        report = DeliveryReport()
        at = moment(now())
        sql = (
            "SELECT key, payload, attempts, state FROM alert_outbox WHERE (state = 'sending' "
            "OR (state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)))"
        )
        params: list[Any] = [at]
        if fingerprint is not None:
            sql += " AND fingerprint = ?"
            params.append(fingerprint)
        rows = self.db.execute(sql + " ORDER BY day, key", params).fetchall()
        report.interrupted = sum(1 for row in rows if row[3] == "sending")
        report.waiting = int(
            self.db.execute(
                "SELECT count(*) FROM alert_outbox WHERE state = 'pending' "
                "AND next_attempt_at > ?" + (" AND fingerprint = ?" if fingerprint else ""),
                params,
            ).fetchone()[0]
        )
        step = _Step(policy, now, rng, report)
        if isinstance(sink, BatchSink):
            for start in range(0, len(rows), batch_size):
                batch = [
                    (key, payload, tried)
                    for key, payload, tried, _ in rows[start : start + batch_size]
                ]
                self._deliver_batch(sink, batch, step)
        else:
            unanswered = 0
            for index, (key, payload, tried, _state) in enumerate(rows):
                if unanswered >= UNANSWERED_LIMIT:
                    self._postpone([row[0] for row in rows[index:]], step)
                    break
                error = self._deliver_one(sink, key, payload, tried, step)
                down = error is not None and error.status is None and not error.permanent
                unanswered = unanswered + 1 if down else 0
        (first,) = self.db.execute(
            "SELECT min(next_attempt_at) FROM alert_outbox WHERE state = 'pending'"
        ).fetchone()
        if first is not None:
            report.next_attempt_at = parse_moment(first)
        return report

    def due_count(self, now: datetime, fingerprint: str | None = None) -> int:
        """Rows `deliver` would attempt at `now` (optionally of one rule book only)."""
        sql = (
            "SELECT count(*) FROM alert_outbox WHERE (state = 'sending' OR (state = 'pending' "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= ?)))"
        )
        params: list[Any] = [moment(now)]
        if fingerprint is not None:
            sql += " AND fingerprint = ?"
            params.append(fingerprint)
        return int(self.db.execute(sql, params).fetchone()[0])

    def _mark_sending(self, keys: Sequence[str], now: Clock) -> None:
        marks = ",".join("?" * len(keys))
        # The attempt is counted before it is made: a run killed mid-delivery used one up.
        self.db.execute(
            f"UPDATE alert_outbox SET state = 'sending', attempts = attempts + 1, "
            f"last_attempt_at = ? WHERE key IN ({marks})",
            [moment(now()), *keys],
        )
        crashpoints.reach("outbox_marked_sending")

    def _mark_sent(self, keys: Sequence[str], sink: Sink, now: Clock) -> None:
        crashpoints.reach("outbox_delivered")
        marks = ",".join("?" * len(keys))
        self.db.execute(
            f"UPDATE alert_outbox SET state = 'sent', sent_at = ?, sink = ?, last_error = NULL, "
            f"next_attempt_at = NULL WHERE key IN ({marks})",
            [now().isoformat(), sink.name, *keys],
        )
        crashpoints.reach("outbox_marked_sent")

    def _mark_failed(
        self, keys: Sequence[str], attempt: int, error: DeliveryError, sink: Sink, step: _Step
    ) -> None:
        dead = error.permanent or step.policy.is_last(attempt)
        log.warning(
            "%s: attempt %d of %d failed%s: %s",
            f"alert {keys[0]}" if len(keys) == 1 else f"{len(keys)} alerts",
            attempt,
            step.policy.attempts,
            " (permanent)" if error.permanent else "",
            error,
        )
        marks = ",".join("?" * len(keys))
        if dead:
            next_at = None
            step.report.dead.extend(keys)
            step.report.failed += len(keys)
        else:
            due = step.now() + step.policy.delay(attempt, error.retry_after, step.rng)
            next_at = moment(due)
            step.report.retrying += len(keys)
        self.db.execute(
            f"UPDATE alert_outbox SET last_error = ?, state = ?, sink = ?, next_attempt_at = ? "
            f"WHERE key IN ({marks})",
            [str(error)[:500], "dead" if dead else "pending", sink.name, next_at, *keys],
        )

    def _deliver_one(
        self, sink: Sink, key: str, payload: str, tried: int, step: _Step
    ) -> DeliveryError | None:
        alert = Alert.model_validate_json(payload)
        self._mark_sending([key], step.now)
        try:
            sink.send(alert)
        except DeliveryError as exc:
            self._mark_failed([key], tried + 1, exc, sink, step)
            return exc
        self._mark_sent([key], sink, step.now)
        step.report.sent += 1
        return None

    def _postpone(self, keys: Sequence[str], step: _Step) -> None:
        """Leave rows for a later round, unattempted (their attempts are not counted)."""
        due = moment(step.now() + step.policy.delay(1, None, step.rng))
        log.warning(
            "the far end did not answer %d attempts in a row: %d alert(s) wait until %s",
            UNANSWERED_LIMIT,
            len(keys),
            due,
        )
        for start in range(0, len(keys), BATCH_SIZE):
            chunk = list(keys[start : start + BATCH_SIZE])
            marks = ",".join("?" * len(chunk))
            self.db.execute(
                f"UPDATE alert_outbox SET state = 'pending', next_attempt_at = ? "
                f"WHERE key IN ({marks})",
                [due, *chunk],
            )
        step.report.waiting += len(keys)

    def _deliver_batch(
        self, sink: BatchSink, batch: Sequence[tuple[str, str, int]], step: _Step
    ) -> None:
        keys = [key for key, _payload, _tried in batch]
        alerts = [Alert.model_validate_json(payload) for _key, payload, _tried in batch]
        tried = max(t for _key, _payload, t in batch)
        self._mark_sending(keys, step.now)
        try:
            result = sink.send_batch(alerts)
        except DeliveryError as exc:
            self._mark_failed(keys, tried + 1, exc, sink, step)
            return
        self._mark_sent(keys, sink, step.now)
        step.report.sent += len(keys)
        step.report.already_in_sink += len(result.present)

    # -- reading -------------------------------------------------------------------------
    def rows(self, state: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows (optionally of one state), oldest first."""
        sql = (
            "SELECT key, day, student_id, task, milestone, state, attempts, last_error, "
            "sent_at, sink, last_attempt_at, next_attempt_at FROM alert_outbox"
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
            "last_attempt_at",
            "next_attempt_at",
        ]
        return [dict(zip(names, row, strict=True)) for row in self.db.execute(sql, params)]

    def waiting_rows(self) -> list[dict[str, Any]]:
        """Rows whose delivery failed and that wait for their next attempt, soonest first."""
        rows = [row for row in self.rows("pending") if row["next_attempt_at"] is not None]
        return sorted(rows, key=lambda row: (row["next_attempt_at"], row["key"]))

    def retry_dead(self) -> int:
        """Put dead-lettered alerts back to pending, due at once (after the receiver is fixed)."""
        cursor = self.db.execute(
            "UPDATE alert_outbox SET state = 'pending', attempts = 0, next_attempt_at = NULL "
            "WHERE state = 'dead'"
        )
        return cursor.rowcount


@dataclass(frozen=True)
class _Step:
    """What one delivery run needs at each row: the policy, the clock, the report."""

    policy: RetryPolicy
    now: Clock
    rng: Callable[[], float]
    report: DeliveryReport


def moment(value: datetime) -> str:
    """An instant as fixed-width UTC text, so that text order is time order (SQL compares it)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_moment(text: str) -> datetime:
    """The instant `moment` wrote."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def outbox_location(store_location: str, read_db: str) -> str:
    """The outbox follows the events: PostgreSQL when they are there, else the read db."""
    if store_location.startswith(("postgresql://", "postgres://")):
        return store_location
    return read_db
