"""The PostgreSQL recorder of the event store: the library's, plus the feed-key index.

Kept apart from `timeline.store` so that a command on a SQLite store never imports the
PostgreSQL driver (psycopg takes a good part of a second to import); the store names it
by topic (`StoreConfig.env`), and the library imports it only for a PostgreSQL store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier

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
