"""Secret calendar links: one unguessable token per student, kept only as its SHA-256 hash.

A student subscribes to `/calendar/<token>.ics` from a calendar app, which cannot send a
staff token. The token is 256 random bits (`secrets.token_urlsafe(32)`), shown once when
made; the table `calendar_links` in the event store's own database (the SQLite file, or
the PostgreSQL schema) keeps its hash, the student id, when and by whom it was made and
when it was revoked. A lookup is by hash, so neither the database nor its timing holds
the token. A student has at most one active link (a partial unique index): making a new
one (rotating) revokes the old, and a revoked link stays in the table so that its
fetches are told it is gone (410) rather than unknown (404).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from timeline.store import TimelineStore

TABLE = "calendar_links"
TOKEN_BYTES = 32
# token_urlsafe's alphabet; anything else (or longer) cannot be a link and is not looked up.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")
MAX_BY = 100

_SQLITE_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    token_sha256 TEXT PRIMARY KEY, student_id TEXT NOT NULL, created_at TEXT NOT NULL,
    created_by TEXT NOT NULL, revoked_at TEXT)""",
    f"""CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_active ON {TABLE} (student_id)
    WHERE revoked_at IS NULL""",
)


def _postgres_ddl(schema: str) -> list[str]:
    q = f'"{schema}"'
    return [
        f"""CREATE TABLE IF NOT EXISTS {q}.{TABLE} (
        token_sha256 TEXT PRIMARY KEY, student_id TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL, created_by TEXT NOT NULL, revoked_at TIMESTAMPTZ)""",
        f"""CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_active ON {q}.{TABLE} (student_id)
        WHERE revoked_at IS NULL""",
    ]


@dataclass(frozen=True)
class CalendarLink:
    """A link as stored: never the token itself."""

    student_id: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """The link's state as JSON (moments ISO 8601 UTC)."""
        return {
            "student_id": self.student_id,
            "active": self.revoked_at is None,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class Lookup:
    """What a presented token is: an active link (with its student), a revoked one, or none."""

    state: Literal["active", "revoked", "unknown"]
    student_id: str | None = None


def link_path(token: str) -> str:
    """The path a calendar app subscribes to."""
    return f"/calendar/{token}.ics"


def token_hash(token: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _schema(store: TimelineStore) -> str | None:
    return store.recorder.datastore.schema if store.config.is_postgres else None


def _table(store: TimelineStore) -> tuple[str, str]:
    schema = _schema(store)
    return (TABLE, "?") if schema is None else (f'"{schema}".{TABLE}', "%s")


def _stored_moment(store: TimelineStore, at: datetime) -> Any:
    return at if _schema(store) else at.astimezone(UTC).isoformat(timespec="microseconds")


_ENSURED: set[str] = set()  # locations whose table this process has made (DDL once)


def ensure_table(store: TimelineStore, *, again: bool = False) -> None:
    """Create the table and its index if the store has none yet."""
    if store.config.location in _ENSURED and not again:
        return
    schema = _schema(store)
    with store.recorder.datastore.transaction(commit=True) as c:
        if schema is None:
            for statement in _SQLITE_DDL:
                c.execute(statement)
        else:
            c.execute(
                "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s",
                (schema, TABLE),
            )
            if c.fetchone() is None:
                # Two processes creating it at once would collide in the catalog.
                key = zlib.crc32(f"timeline-calendar-links:{schema}".encode())
                c.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                for statement in _postgres_ddl(schema):
                    c.execute(statement)
    _ENSURED.add(store.config.location)


def _write(store: TimelineStore, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
    """Run `statements` in one transaction (making the table again if it went); rows changed."""
    ensure_table(store)
    for attempt in range(3):
        try:
            changed = 0
            with store.recorder.datastore.transaction(commit=True) as c:
                for sql, params in statements:
                    c.execute(sql, params)
                    changed += max(_rowcount(c), 0)
            return changed
        except Exception:
            # A store replaced at the same path (a restore) lost the table; or another
            # process made this student's link at the same moment (the unique index).
            if attempt == 2:
                raise
            ensure_table(store, again=True)
    raise AssertionError("unreachable")  # pragma: no cover


def _rowcount(cursor: Any) -> int:
    """Rows the last statement changed (eventsourcing's SQLite cursor wraps sqlite3's)."""
    return int(getattr(cursor, "sqlite_cursor", cursor).rowcount)


def create_link(store: TimelineStore, student_id: str, at: datetime, by: str) -> str:
    """A new link for `student_id` (revoking any active one); the token, shown only now."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    table, mark = _table(store)
    when = _stored_moment(store, at)
    _write(
        store,
        [
            (
                f"UPDATE {table} SET revoked_at = {mark} "
                f"WHERE student_id = {mark} AND revoked_at IS NULL",
                (when, student_id),
            ),
            (
                f"INSERT INTO {table} (token_sha256, student_id, created_at, created_by) "
                f"VALUES ({mark}, {mark}, {mark}, {mark})",
                (token_hash(token), student_id, when, by[:MAX_BY]),
            ),
        ],
    )
    return token


def revoke_link(store: TimelineStore, student_id: str, at: datetime) -> bool:
    """Revoke `student_id`'s active link; whether there was one."""
    table, mark = _table(store)
    changed = _write(
        store,
        [
            (
                f"UPDATE {table} SET revoked_at = {mark} "
                f"WHERE student_id = {mark} AND revoked_at IS NULL",
                (_stored_moment(store, at), student_id),
            )
        ],
    )
    return changed > 0


def active_link(store: TimelineStore, student_id: str) -> CalendarLink | None:
    """`student_id`'s active link (without its token), or None."""
    ensure_table(store)
    table, mark = _table(store)
    with store.recorder.datastore.transaction(commit=False) as c:
        c.execute(
            f"SELECT student_id, created_at, created_by, revoked_at FROM {table} "
            f"WHERE student_id = {mark} AND revoked_at IS NULL",
            (student_id,),
        )
        row = c.fetchone()
    return None if row is None else _link(row)


def look_up(store: TimelineStore, token: str) -> Lookup:
    """What `token` is: the active link of a student, a revoked link, or unknown."""
    if not _TOKEN.fullmatch(token):
        return Lookup("unknown")
    ensure_table(store)
    table, mark = _table(store)
    wanted = token_hash(token)
    with store.recorder.datastore.transaction(commit=False) as c:
        c.execute(
            f"SELECT token_sha256, student_id, revoked_at FROM {table} WHERE token_sha256 = {mark}",
            (wanted,),
        )
        row = c.fetchone()
    if row is None:
        return Lookup("unknown")
    stored, student_id, revoked_at = _values(row, ("token_sha256", "student_id", "revoked_at"))
    if not hmac.compare_digest(stored, wanted):  # the index found it; belt and braces
        return Lookup("unknown")
    return Lookup("revoked") if revoked_at is not None else Lookup("active", student_id)


def _values(row: Any, names: tuple[str, ...]) -> list[Any]:
    return [row[n] for n in names] if isinstance(row, dict) else list(row)


def _moment(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment.astimezone(UTC)


def _link(row: Any) -> CalendarLink:
    student_id, created_at, created_by, revoked_at = _values(
        row, ("student_id", "created_at", "created_by", "revoked_at")
    )
    return CalendarLink(
        student_id,
        _moment(created_at),
        created_by,
        None if revoked_at is None else _moment(revoked_at),
    )
