"""The audit of access: who viewed whose record, when, and by which route.

Taiwan's Personal Data Protection Act asks an office to be able to tell who looked at a
person's data. Every view of a student's record (the staff pages and the HTTP API) appends
one row to `access_audit`, in the event store's own database (the SQLite file, or the
PostgreSQL schema): the token's *name* (never the token), the UTC moment, the route
template (`GET /v1/students/{student_id}`, never the query) and the student id. The row
holds no personal data of the student: no name, address, passport, note.

The table is append-only: triggers refuse UPDATE and DELETE (and, on PostgreSQL, TRUNCATE)
on both backends, so even a bug in this service cannot rewrite the past.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from timeline.store import TimelineStore

TABLE = "access_audit"
MAX_ROUTE = 200
MAX_ID = 200  # the contract bounds ids far below this; a hostile URL is cut, not refused

_SQLITE_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, token_name TEXT NOT NULL,
    route TEXT NOT NULL, student_id TEXT NOT NULL)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_student ON {TABLE} (student_id, id)",
    f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE}
    BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE}
    BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END""",
)


def _postgres_ddl(schema: str) -> list[str]:
    q = f'"{schema}"'
    return [
        f"""CREATE TABLE IF NOT EXISTS {q}.{TABLE} (
        id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL, token_name TEXT NOT NULL,
        route TEXT NOT NULL, student_id TEXT NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_student ON {q}.{TABLE} (student_id, id)",
        f"""CREATE OR REPLACE FUNCTION {q}.{TABLE}_refuse() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN
        RAISE EXCEPTION '{TABLE} is append-only'; END $$""",
        f"DROP TRIGGER IF EXISTS {TABLE}_append_only ON {q}.{TABLE}",
        f"""CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {q}.{TABLE}
        FOR EACH ROW EXECUTE FUNCTION {q}.{TABLE}_refuse()""",
        f"DROP TRIGGER IF EXISTS {TABLE}_no_truncate ON {q}.{TABLE}",
        f"""CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {q}.{TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION {q}.{TABLE}_refuse()""",
    ]


@dataclass(frozen=True)
class Access:
    """One audited view of a student's record."""

    id: int
    at: datetime
    token_name: str
    route: str
    student_id: str

    def as_json(self) -> dict[str, Any]:
        """The row as JSON (the moment as ISO 8601 UTC)."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "token_name": self.token_name,
            "route": self.route,
            "student_id": self.student_id,
        }


def _schema(store: TimelineStore) -> str | None:
    return store.recorder.datastore.schema if store.config.is_postgres else None


_ENSURED: set[str] = set()  # locations whose table this process has seen (DDL once)


def ensure_table(store: TimelineStore) -> None:
    """Create the table and its append-only triggers if the store has none yet."""
    if store.config.location in _ENSURED:
        return
    _ensure(store)
    _ENSURED.add(store.config.location)


def _ensure(store: TimelineStore) -> None:
    schema = _schema(store)
    with store.recorder.datastore.transaction(commit=True) as c:
        if schema is None:
            for statement in _SQLITE_DDL:
                c.execute(statement)
            return
        c.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s",
            (schema, TABLE),
        )
        if c.fetchone() is not None:
            return
        # Two processes creating it at once would collide in the catalog: take turns.
        c.execute(
            "SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(f"timeline-audit:{schema}".encode()),)
        )
        for statement in _postgres_ddl(schema):
            c.execute(statement)


# A multi-row INSERT binds 4 parameters a row; PostgreSQL takes at most 65,535 a statement.
MAX_ROWS_PER_STATEMENT = 1_000


def record_access(
    store: TimelineStore, token_name: str, route: str, student_id: str, at: datetime
) -> None:
    """Append one row: `token_name` viewed `student_id`'s record through `route` at `at`."""
    record_accesses(store, [(token_name, route, student_id, at)])


def record_accesses(store: TimelineStore, rows: list[tuple[str, str, str, datetime]]) -> None:
    """Append rows `(token_name, route, student_id, at)` in one transaction (one commit)."""
    ensure_table(store)
    schema = _schema(store)
    values = [
        (
            at.astimezone(UTC).isoformat(timespec="microseconds") if schema is None else at,
            token_name,
            route[:MAX_ROUTE],
            student_id[:MAX_ID],
        )
        for token_name, route, student_id, at in rows
    ]
    if schema is None or len(values) > MAX_ROWS_PER_STATEMENT:
        table, mark = (TABLE, "?") if schema is None else (f'"{schema}".{TABLE}', "%s")
        insert = (
            f"INSERT INTO {table} (at, token_name, route, student_id) "
            f"VALUES ({mark}, {mark}, {mark}, {mark})"
        )

        def append() -> None:
            with store.recorder.datastore.transaction(commit=True) as c:
                c.executemany(insert, values)

    else:
        # One statement on an autocommit connection: atomic, and one round trip (a
        # transaction around `executemany` took four, most of a view's time on PostgreSQL).
        marks = ", ".join(["(%s, %s, %s, %s)"] * len(values))
        statement = (
            f'INSERT INTO "{schema}".{TABLE} (at, token_name, route, student_id) VALUES {marks}'
        )
        flat = [value for row in values for value in row]

        def append() -> None:
            with store.recorder.datastore.get_connection() as conn, conn.cursor() as c:
                c.execute(statement, flat)

    try:
        append()
    except Exception:
        # The database was replaced since this process made the table (a restore into a
        # new file at the same path): make it again, once, and append.
        _ENSURED.discard(store.config.location)
        ensure_table(store)
        append()


def accesses(
    store: TimelineStore,
    *,
    student_id: str | None = None,
    token_name: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Access], int]:
    """One page of the audit, newest first, optionally of one student or one token; the total."""
    ensure_table(store)
    schema = _schema(store)
    table, mark = (TABLE, "?") if schema is None else (f'"{schema}".{TABLE}', "%s")
    where, params = ["1=1"], []
    if student_id is not None:
        where.append(f"student_id = {mark}")
        params.append(student_id)
    if token_name is not None:
        where.append(f"token_name = {mark}")
        params.append(token_name)
    condition = " AND ".join(where)
    with store.recorder.datastore.transaction(commit=False) as c:
        c.execute(f"SELECT COUNT(*) AS n FROM {table} WHERE {condition}", params)
        total = _first(c.fetchone(), "n")
        c.execute(
            f"SELECT id, at, token_name, route, student_id FROM {table} WHERE {condition} "
            f"ORDER BY id DESC LIMIT {mark} OFFSET {mark}",
            [*params, limit, offset],
        )
        rows = c.fetchall()
    return [_access(row) for row in rows], int(total)


def _first(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else row[0]


def _access(row: Any) -> Access:
    values = (
        [row[k] for k in ("id", "at", "token_name", "route", "student_id")]
        if isinstance(row, dict)
        else list(row)
    )
    at = values[1] if isinstance(values[1], datetime) else datetime.fromisoformat(values[1])
    return Access(int(values[0]), at.astimezone(UTC), values[2], values[3], values[4])
