"""The PostgreSQL recorder of the event store: the library's, plus the feed-key index.

Kept apart from `timeline.store` so that a command on a SQLite store never imports the
PostgreSQL driver (psycopg takes a good part of a second to import); the store names it
by topic (`StoreConfig.env`), and the library imports it only for a PostgreSQL store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier
from psycopg_pool import PoolTimeout

from timeline.store import FeedKey


class PostgresTimelineRecorder(PostgresApplicationRecorder):
    """The library's PostgreSQL recorder plus the feed-key index in the same transaction."""

    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.feed_keys ("
                "source text NOT NULL, event_id text NOT NULL, student_id text NOT NULL, "
                "type text NOT NULL, digest text NOT NULL, PRIMARY KEY (source, event_id))"
            ).format(schema=schema)
        )
        # One statement for the whole batch's keys (an executemany is a round trip each).
        self._insert_keys = SQL(
            "INSERT INTO {schema}.feed_keys SELECT * FROM "
            "unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
        ).format(schema=schema)
        # Lookups are shaped so that the only plan is one index probe per wanted key
        # (LATERAL … LIMIT 1 is never flattened into a join): a plain join or `= ANY`
        # let the planner pick a (parallel) scan of the whole table, and did whenever
        # the table had no statistics yet (a fresh store, autovacuum off or behind),
        # which made every batch of an ingest cost in proportion to the store's size.
        self._select_keys = SQL(
            "SELECT k.source, k.event_id, k.student_id, k.type, k.digest "
            "FROM unnest(%s::text[], %s::text[]) AS q(source, event_id) "
            "CROSS JOIN LATERAL (SELECT * FROM {schema}.feed_keys f "
            "WHERE f.source = q.source AND f.event_id = q.event_id LIMIT 1) AS k"
        ).format(schema=schema)
        self._select_students = SQL(
            "SELECT originator_id FROM {schema}.{table} "
            "WHERE originator_version = 1 AND originator_id = ANY(%s)"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        # The library's insert, with one binary array per column instead of an array of
        # its composite type: psycopg's pure-Python text dumping of composites (a regex
        # per field) cost more than the rest of an ingest together.
        self._insert_columns = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[])"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        self._insert_columns_returning = self._insert_columns + SQL(" RETURNING notification_id")
        # The last version of each stream: one backward probe of the primary key each.
        self._select_versions = SQL(
            "SELECT q.id AS originator_id, v.originator_version AS version "
            "FROM unnest(%s::uuid[]) AS q(id) "
            "CROSS JOIN LATERAL (SELECT e.originator_version FROM {schema}.{table} e "
            "WHERE e.originator_id = q.id ORDER BY e.originator_version DESC LIMIT 1) AS v"
        ).format(schema=schema, table=Identifier(self.events_table_name))

    def _insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        feed_keys: Sequence[FeedKey] = kwargs.get("feed_keys", ())
        if feed_keys:
            curs.execute(
                self._insert_keys, [list(column) for column in zip(*feed_keys, strict=True)]
            )

    def _insert_stored_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        """The library's table lock and notification, then the rows as column arrays.

        `notification_ids=False` (from `TimelineStore.append`, which has no use for them):
        no RETURNING, which saved a sixth of the statement's time.
        """
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self._insert_columns_returning
            if kwargs.get("notification_ids", True)
            else self._insert_columns,
            (
                [s.originator_id for s in stored_events],
                [s.originator_version for s in stored_events],
                [s.topic for s in stored_events],
                [s.state for s in stored_events],
            ),
        )

    def _fetch_ids_after_insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if kwargs.get("notification_ids", True):
            return super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        return None

    def lookup_keys(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], FeedKey]:
        """The stored feed keys among `keys`."""
        if not keys:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_keys, ([k[0] for k in keys], [k[1] for k in keys]))
            return {
                (r["source"], r["event_id"]): (
                    r["source"],
                    r["event_id"],
                    r["student_id"],
                    r["type"],
                    r["digest"],
                )
                for r in curs.fetchall()
            }

    def existing_students(self, ids: Sequence[UUID]) -> set[UUID]:
        """Which of these aggregate ids have a stream already."""
        if not ids:
            return set()
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_students, (list(ids),))
            return {r["originator_id"] for r in curs.fetchall()}

    def last_versions(self, ids: Sequence[UUID]) -> dict[UUID, int]:
        """The last version of each of these streams that exists."""
        if not ids:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_versions, (list(ids),))
            return {r["originator_id"]: r["version"] for r in curs.fetchall()}


# While PostgreSQL is unreachable, one attempt to reach it at most this often (seconds).
FAIL_FAST_RETRY = 1.0


class FailFast:
    """A server's pool that answers at once while PostgreSQL is unreachable.

    The library waits for a pooled connection as long as the pool's timeout (30 s by
    default) and retries a failed statement 10 times: during an outage a request held its
    thread for 30 s (a student view) to 300 s (a population list). Installed on a pool,
    a connection is first awaited `probe` seconds; if none came although the pool was not
    merely busy (all its connections in use), PostgreSQL is taken to be unreachable, and
    until a connection is made again every request fails at once but one attempt per
    `FAIL_FAST_RETRY` seconds (the library's retries then end within a few seconds too).
    A wait with an explicit timeout (a readiness probe) is left as asked.
    """

    def __init__(
        self, pool: Any, probe: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.probe = probe
        self.clock = clock
        self.down = False
        self.next_attempt = 0.0
        self.lent = 0  # connections handed out and not yet given back
        self._lock = threading.Lock()
        self._getconn = pool.getconn
        self._putconn = pool.putconn
        pool.getconn = self.getconn
        pool.putconn = self.putconn

    def getconn(self, timeout: float | None = None) -> Any:
        """A connection from the pool, or `PoolTimeout` at once while PostgreSQL is away."""
        if timeout is not None:
            return self._reached(self._getconn(timeout))
        if self.down:
            with self._lock:
                now = self.clock()
                if now < self.next_attempt:
                    raise PoolTimeout("PostgreSQL did not answer lately (failing fast)")
                self.next_attempt = now + self.probe + FAIL_FAST_RETRY  # one attempt at once
            return self._attempt()
        try:
            return self._reached(self._getconn(self.probe))
        except PoolTimeout:
            if not self._busy():
                self._lost()
                raise
        return self._reached(self._getconn(max(self.pool.timeout - self.probe, 0.1)))

    def _attempt(self) -> Any:
        try:
            return self._reached(self._getconn(self.probe))
        except PoolTimeout:
            self._lost()
            raise

    def putconn(self, conn: Any) -> None:
        """Give a connection back to the pool."""
        with self._lock:
            self.lent -= 1
        self._putconn(conn)

    def _busy(self) -> bool:
        # (The pool's own figures count connections still being attempted as its size.)
        return self.lent >= self.pool.max_size

    def _lost(self) -> None:
        with self._lock:
            self.down = True
            self.next_attempt = self.clock() + FAIL_FAST_RETRY

    def _reached(self, conn: Any) -> Any:
        with self._lock:
            self.lent += 1
            self.down = False
        return conn
