"""Read models: the projection's output materialized in SQLite with sqlite-utils.

For every student the pure projection is evaluated once at a far horizon, which gives the
full derived history with its dates (a task's opens/due/done/cancelled days, a fine's
accrual, imposition and payments, an overstay's first and last day). "Who had an overdue
task on 2024-05-01" is then a SQL range query over those dates, not a replay. Nothing
here re-derives a rule: the dates come from `projections.engine`.

The tables follow the event store's notification log. Each batch of notifications is
applied in ONE SQLite transaction together with the new tracking position, so a crash
loses nothing and applies nothing twice; `sync` resumes from the stored position.

One student's facts can never stop the others: a student whose derivation fails gets a
row in `rm_errors` (student, position, error class, a message without personal data)
and NO rows in the other tables (stale rows would be false), and the follower goes on.
A later event that makes the student derivable again clears the error row.

The tables record the layout version and the fingerprint of the rules they were derived
under (rule values, settings, the code that derives, the holidays data). Opened under
another fingerprint, they are dropped and re-followed from position 0, so population
queries always follow the rules in force.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from projections import dates
from projections.dates import TaiwanCalendar, taiwan_calendar
from projections.engine import (
    Derivation,
    DerivationError,
    derive,
    out_of_range_events,
    overstay_fine_range,
)
from projections.rules import DEFAULT_RULES, RuleBook, rulebook_fingerprint
from timeline.aggregate import Student
from timeline.errors import TimelineError
from timeline.facts import Fact, known_facts
from timeline.store import TimelineStore, to_fact

log = logging.getLogger(__name__)

HORIZON = date(2199, 12, 31)
FOREVER = "9999-12-31"
LAYOUT_VERSION = 8  # bump when a table changes: old read models are rebuilt
STREAM_CACHE = 20_000  # students whose facts stay in memory between batches
TRACKING = "rm_tracking"
NAME = "student_views"
RULES_CHANGED = "rules changed since the read models were built: rebuilding"
LAYOUT_CHANGED = "the read-model layout changed: rebuilding"
MAX_FOREIGN_REBUILDS = 3  # rebuilds by another process during one sync before giving up

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rm_tracking (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rm_students (
    uuid TEXT PRIMARY KEY, student_id TEXT NOT NULL UNIQUE, position INTEGER NOT NULL,
    arc_valid_until TEXT, revoked_on TEXT, in_taiwan INTEGER
);
CREATE TABLE IF NOT EXISTS rm_tasks (
    student_id TEXT NOT NULL, n INTEGER NOT NULL, kind TEXT NOT NULL, rule TEXT NOT NULL,
    trigger_on TEXT NOT NULL, opens_on TEXT, opens_from TEXT, due_on TEXT, due_from TEXT,
    due_until TEXT, overdue_from TEXT, overdue_to TEXT,
    done_on TEXT, cancelled_on TEXT,
    place TEXT NOT NULL, fee_ntd INTEGER, caused_by TEXT NOT NULL,
    PRIMARY KEY (student_id, n, due_from)
);
CREATE INDEX IF NOT EXISTS rm_tasks_due ON rm_tasks (due_on);
CREATE INDEX IF NOT EXISTS rm_tasks_overdue ON rm_tasks (overdue_to, overdue_from);
CREATE INDEX IF NOT EXISTS rm_tasks_opens ON rm_tasks (opens_on);
CREATE TABLE IF NOT EXISTS rm_fines (
    student_id TEXT NOT NULL, n INTEGER NOT NULL, kind TEXT NOT NULL, rule TEXT NOT NULL,
    accrued_on TEXT NOT NULL, amount_min INTEGER NOT NULL, amount_max INTEGER NOT NULL,
    offense INTEGER, imposed_on TEXT, imposed_amount INTEGER,
    overstay_valid_until TEXT, overstay_last_day TEXT, caused_by TEXT NOT NULL,
    PRIMARY KEY (student_id, n)
);
CREATE INDEX IF NOT EXISTS rm_fines_accrued ON rm_fines (accrued_on);
CREATE TABLE IF NOT EXISTS rm_payments (
    student_id TEXT NOT NULL, fine_n INTEGER NOT NULL, paid_on TEXT NOT NULL,
    amount INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_payments_fine ON rm_payments (student_id, fine_n);
CREATE TABLE IF NOT EXISTS rm_overstays (
    student_id TEXT NOT NULL, since TEXT NOT NULL, valid_until TEXT NOT NULL,
    last_day TEXT, resolved_on TEXT, ceased INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_overstays_student ON rm_overstays (student_id);
CREATE TABLE IF NOT EXISTS rm_errors (
    student_id TEXT PRIMARY KEY, position INTEGER NOT NULL, error TEXT NOT NULL,
    message TEXT NOT NULL
);
"""
_TABLES = (
    "rm_tracking",
    "rm_students",
    "rm_tasks",
    "rm_fines",
    "rm_payments",
    "rm_overstays",
    "rm_errors",
)
_PER_STUDENT = ("rm_tasks", "rm_fines", "rm_payments", "rm_overstays")

# The tasks that existed on day :d, with the due day known that day.
TASKS_ON_SQL = """
(SELECT student_id, n, kind, rule, trigger_on,
        CASE WHEN opens_from IS NULL OR opens_from <= :d THEN opens_on END AS opens_on,
        due_on, done_on, cancelled_on, place, fee_ntd, caused_by
 FROM rm_tasks WHERE +trigger_on <= :d AND (due_from IS NULL OR due_from <= :d)
 AND (due_until IS NULL OR :d < due_until))
"""
TASK_STATUS_SQL = """
CASE
  WHEN done_on IS NOT NULL AND done_on <= :d THEN
    CASE WHEN due_on IS NULL OR done_on <= due_on THEN 'done' ELSE 'done_late' END
  WHEN cancelled_on IS NOT NULL AND cancelled_on <= :d THEN 'cancelled'
  WHEN due_on IS NOT NULL AND :d > due_on THEN 'overdue'
  WHEN opens_on IS NULL OR :d < opens_on THEN 'upcoming'
  ELSE 'open'
END
"""


def default_read_db(store_location: str) -> str:
    """Where the read models live: the SQLite event file itself, else ./timeline-read.db."""
    if store_location.startswith(("postgresql://", "postgres://")):
        return "timeline-read.db"
    return store_location


@dataclass
class SyncReport:
    """What one `sync` did."""

    notifications: int = 0
    students: int = 0
    position: int = 0
    failed: int = 0  # students whose derivation failed in this sync (see `errors()`)


class ReadModelConflict(TimelineError):
    """Another process keeps rebuilding this read-model file under other rules."""


def _frames(exc: BaseException) -> str:
    return "\n" + "".join(traceback.format_tb(exc.__traceback__))


def read_model_fingerprint(rules: RuleBook, calendar: TaiwanCalendar) -> str:
    """What the derived rows depend on: the rule book's fingerprint and the calendar's data."""
    return f"{rulebook_fingerprint(rules)}-{calendar.digest}"


def failure_of(student_id: str, exc: Exception) -> tuple[str, str]:
    """(error class, message) for a failed derivation; never a fact's content.

    Our own `DerivationError` says what is wrong and which events to correct. Any other
    exception is a bug whose message might quote a fact, so only its class is kept.
    """
    if isinstance(exc, DerivationError):
        return type(exc).__name__, str(exc)
    return (
        type(exc).__name__,
        f"cannot derive student {student_id!r}: unexpected {type(exc).__name__} "
        "(a bug: report it with the output of `timeline -v rebuild`)",
    )


def _overdue_window(task: Any, due: date | None) -> tuple[str | None, str | None]:
    """The days a task is overdue (inclusive), to find "overdue on D" by index."""
    if due is None or due == date.max:
        return None, None  # a task due on the calendar's last day is never overdue in it
    ends = [d for d in (task.done_on, task.cancelled_on) if d is not None]
    first = dates.next_day(due)
    if not ends:
        return first.isoformat(), FOREVER
    if min(ends) <= first:
        return None, None  # done or cancelled by its first overdue day
    return first.isoformat(), dates.previous_day(min(ends)).isoformat()


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


def _cited(pairs: Iterable[tuple[str, date]]) -> str:
    return json.dumps([[event_id, day.isoformat()] for event_id, day in pairs])


class _Rows:
    """The rows of a batch of students, written with one executemany per table."""

    def __init__(self) -> None:
        self.student_ids: list[str] = []
        self.students: list[tuple[Any, ...]] = []
        self.tasks: list[tuple[Any, ...]] = []
        self.fines: list[tuple[Any, ...]] = []
        self.payments: list[tuple[Any, ...]] = []
        self.overstays: list[tuple[Any, ...]] = []
        self.healthy: list[str] = []
        self.errors: list[tuple[Any, ...]] = []

    def add(self, uid: str, student_id: str, position: int, derived: Derivation) -> None:
        """One student's derived history (all of it or, if it raises, nothing)."""
        part = _Rows()
        part._fill(uid, student_id, position, derived)
        self.student_ids.append(student_id)
        self.students.extend(part.students)
        self.tasks.extend(part.tasks)
        self.fines.extend(part.fines)
        self.payments.extend(part.payments)
        self.overstays.extend(part.overstays)
        self.healthy.append(student_id)

    def fail(self, uid: str, student_id: str, position: int, error: str, message: str) -> None:
        """A student whose derivation failed: an error row, and no derived rows."""
        self.student_ids.append(student_id)
        self.students.append((uid, student_id, position, None, None, None))
        self.errors.append((student_id, position, error, message))

    def _fill(self, uid: str, student_id: str, position: int, derived: Derivation) -> None:
        replay = derived.replay
        arc = replay.arc
        self.students.append(
            (
                uid,
                student_id,
                position,
                _iso(arc.valid_until) if arc else None,
                _iso(replay.revoked_on),
                int(bool(replay.in_taiwan)),
            )
        )
        self.tasks.extend(
            (
                student_id,
                n,
                t.kind,
                t.rule,
                t.trigger_on.isoformat(),
                _iso(t.opens_on),
                _iso(t.opens_from),
                _iso(due),
                _iso(since),
                _iso(until),
                *_overdue_window(t, due),
                _iso(t.done_on),
                _iso(t.cancelled_on),
                t.place(),
                t.fee_ntd,
                _cited(t.cited()),
            )
            for n, t in enumerate(derived.tasks)
            for since, until, due in t.due_versions()
        )
        for n, f in enumerate(derived.fines):
            cited = [(e, f.effective.get(e, f.accrued_on)) for e in f.caused_by]
            self.fines.append(
                (
                    student_id,
                    n,
                    f.kind,
                    f.rule,
                    f.accrued_on.isoformat(),
                    f.amount_min,
                    f.amount_max,
                    f.offense,
                    _iso(f.imposed_on),
                    f.amount if f.imposed_on else None,
                    _iso(f.valid_until),
                    _iso(f.last_day),
                    _cited(cited),
                )
            )
            self.payments.extend(
                (student_id, n, on.isoformat(), amount) for on, amount in f.payments
            )
        self.overstays.extend(
            (
                student_id,
                e.since.isoformat(),
                e.valid_until.isoformat(),
                _iso(e.end),
                _iso(e.resolved_on),
                int(e.ceased),
            )
            for e in replay.episodes
            if e.kind == "overstay"
        )


class ReadModel:
    """The materialized tables and the loop that keeps them current."""

    def __init__(
        self,
        path: str | Path,
        rules: RuleBook = DEFAULT_RULES,
        calendar: TaiwanCalendar | None = None,
        *,
        fingerprint: str | None = None,
    ) -> None:
        self.db = Database(str(path))
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.rules = rules
        self.calendar = calendar or taiwan_calendar()
        self.fingerprint = fingerprint or read_model_fingerprint(rules, self.calendar)
        # Why the tables were last dropped by this object (None: they were current).
        self.rebuild_reason: str | None = None
        self._ensure_build()
        self.db.executescript(_SCHEMA)
        # Streams followed so far (uid → student, facts, last version): each notification
        # is decoded once; a stream not followed from its start is read whole once.
        self._streams: OrderedDict[str, tuple[str, list[Fact], int]] = OrderedDict()

    def close(self) -> None:
        """Close the SQLite connection."""
        self.db.close()

    # -- layout and rules the tables were built with -----------------------------------
    def _stored_build(self) -> tuple[int, str | None] | None:
        """(layout version, fingerprint) the tables were built with; None for a new file.

        The fingerprint has a table of its own: `rm_meta` keeps the one-column shape that
        older versions read and rewrite, so they can still open (and rebuild) the file.
        """
        try:
            row = self.db.execute("SELECT version FROM rm_meta").fetchone()
        except sqlite3.OperationalError:
            return None  # a new file
        if row is None:
            return None
        try:
            mark = self.db.execute("SELECT fingerprint FROM rm_fingerprint").fetchone()
        except sqlite3.OperationalError:
            mark = None  # a layout from before fingerprints
        return int(row[0]), mark[0] if mark else None

    def _ensure_build(self) -> None:
        """Tables of another layout or other rules are dropped; the next sync re-follows."""
        if self._stored_build() == (LAYOUT_VERSION, self.fingerprint):
            return
        with self._exclusive():
            self._rebuild_if_foreign()

    def _rebuild_if_foreign(self) -> bool:
        """Inside a write transaction: recreate the tables unless built as we would build them.

        Taken under the write lock, so of two processes opening at once one rebuilds and
        the other waits, then finds the tables current (or, under other rules, rebuilds).
        """
        stored = self._stored_build()
        if stored == (LAYOUT_VERSION, self.fingerprint):
            return False
        built = stored is not None and self._tracked_position() > 0
        for table in (*_TABLES, "rm_meta", "rm_fingerprint"):
            self.db.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)  # not executescript: it would COMMIT
        self.db.execute("CREATE TABLE rm_meta (version INTEGER NOT NULL)")
        self.db.execute("INSERT INTO rm_meta VALUES (?)", [LAYOUT_VERSION])
        self.db.execute("CREATE TABLE rm_fingerprint (fingerprint TEXT NOT NULL)")
        self.db.execute("INSERT INTO rm_fingerprint VALUES (?)", [self.fingerprint])
        if built:
            self.rebuild_reason = LAYOUT_CHANGED if stored[0] != LAYOUT_VERSION else RULES_CHANGED
            log.info("%s", self.rebuild_reason)
        return True

    def _tracked_position(self) -> int:
        try:
            return self.position
        except sqlite3.OperationalError:
            return 0  # no tracking table yet

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """A write transaction that takes the write lock first (two followers take turns)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @property
    def position(self) -> int:
        """The last notification applied."""
        row = self.db.execute(f"SELECT position FROM {TRACKING} WHERE name = ?", [NAME]).fetchone()
        return int(row[0]) if row else 0

    def reset(self) -> None:
        """Empty every table and the tracking position (for a rebuild)."""
        with self.db.atomic():
            for table in _TABLES:
                self.db.execute(f"DELETE FROM {table}")

    # -- following the log -------------------------------------------------------------
    def sync(
        self,
        store: TimelineStore,
        batch: int = 2000,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> SyncReport:
        """Apply every notification after the tracking position, one transaction per batch.

        A student whose derivation raises is recorded in `rm_errors` and left out; the
        others are applied as usual.
        """
        self._ensure_build()  # another process may have rebuilt under other rules
        report = SyncReport(position=self.position)
        last = store.max_position()
        foreign_rebuilds = 0
        while report.position < last:
            notifications = store.notifications(report.position, batch)
            if not notifications:
                break
            touched = self._absorb(store, notifications)
            position = notifications[-1].id
            rows = self._derive(touched, position)
            with self._exclusive():
                if self._rebuild_if_foreign():
                    # Another process rebuilt under other rules meanwhile: start again.
                    foreign_rebuilds += 1
                    if foreign_rebuilds > MAX_FOREIGN_REBUILDS:
                        raise ReadModelConflict(
                            "another process keeps rebuilding these read models under "
                            "other rule settings: give each configuration its own --read-db"
                        )
                    report.position = 0
                    continue
                current = self.position
                if current != report.position:
                    # Another process applied this batch meanwhile: follow from its position.
                    report.position = current
                    continue
                self._write(rows)
                self.db.execute(
                    f"INSERT INTO {TRACKING} (name, position) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                    [NAME, position],
                )
            report.notifications += len(notifications)
            report.students += len(touched)
            report.failed += len(rows.errors)
            report.position = position
            if on_progress:
                on_progress(position, last)
        return report

    def _derive(self, touched: list[str], position: int) -> _Rows:
        """The rows of the touched students; a failure is confined to its student."""
        rows = _Rows()
        for uid in touched:
            student_id, facts, _ = self._streams[uid]
            try:
                derived = derive(
                    facts, HORIZON, None, self.rules, self.calendar, student_id=student_id
                )
                try:
                    rows.add(uid, student_id, position, derived)
                except dates.DateOutOfRangeError as exc:  # e.g. a due day on 9999-12-31
                    events = out_of_range_events(known_facts(facts))
                    raise DerivationError(student_id, str(exc), events) from None
            except Exception as exc:  # any failure, even a bug, stays with its student
                error, message = failure_of(student_id, exc)
                rows.fail(uid, student_id, position, error, message)
                # A bug's traceback frames (code lines, no values) help find it; its
                # own text might quote a fact, so that is neither logged nor stored.
                if isinstance(exc, DerivationError):
                    log.info("%s", message)  # bad data, reported through rm_errors
                else:
                    log.error("%s%s", message, _frames(exc))
        return rows

    def rebuild(self, store: TimelineStore, **kwargs: Any) -> SyncReport:
        """Recreate the tables from the whole notification log."""
        self.reset()
        self._streams.clear()
        return self.sync(store, **kwargs)

    def errors(self) -> list[dict[str, Any]]:
        """The students left out of every population query because their derivation failed."""
        rows = self.db.execute(
            "SELECT student_id, position, error, message FROM rm_errors ORDER BY student_id"
        ).fetchall()
        return [
            {"student_id": sid, "position": position, "error": error, "message": message}
            for sid, position, error, message in rows
        ]

    def _absorb(self, store: TimelineStore, notifications: list[Any]) -> list[str]:
        """Decode each notification once and bring the cached streams up to date."""
        new: dict[str, list[Any]] = {}
        names: dict[str, str] = {}
        for notification in notifications:
            uid = notification.originator_id.hex
            event = store.decode(notification)
            if isinstance(event, Student.Registered):
                names[uid] = event.student_id
            new.setdefault(uid, []).append(event)
        names.update(self._names(set(new) - set(names) - set(self._streams)))
        touched = []
        for uid, events in new.items():
            cached = self._streams.pop(uid, None)
            first = events[0].originator_version
            if cached is None and first == 1:
                cached = (names[uid], [], 0)
            if cached is None or cached[2] < first - 1:
                # Not followed from its start here: read the whole stream once.
                student_id = cached[0] if cached else names.get(uid)
                if student_id is None:
                    log.warning("notification for an unknown stream %s skipped", uid)
                    continue
                facts = store.stream(student_id)
                cached = (student_id, facts, max([1, *(f.seq for f in facts)]))
            student_id, facts, version = cached
            for event in events:
                if event.originator_version > version:
                    if isinstance(event, Student.FactRecorded):
                        facts.append(to_fact(student_id, event))
                    version = event.originator_version
            self._streams[uid] = (student_id, facts, version)
            touched.append(uid)
        while len(self._streams) > STREAM_CACHE:
            self._streams.popitem(last=False)
        return touched

    def _names(self, uuids: set[str]) -> dict[str, str]:
        if not uuids:
            return {}
        marks = ",".join("?" for _ in uuids)
        rows = self.db.execute(
            f"SELECT uuid, student_id FROM rm_students WHERE uuid IN ({marks})", list(uuids)
        ).fetchall()
        return {row[0]: row[1] for row in rows}

    def _write(self, rows: _Rows) -> None:
        """Replace the touched students' rows (inside the caller's transaction)."""
        ids = rows.student_ids
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" for _ in chunk)
            for table in (*_PER_STUDENT, "rm_errors"):
                self.db.execute(f"DELETE FROM {table} WHERE student_id IN ({marks})", chunk)
        conn = self.db.conn
        conn.executemany(
            "INSERT INTO rm_students VALUES (?,?,?,?,?,?) ON CONFLICT(uuid) DO UPDATE SET "
            "position=excluded.position, arc_valid_until=excluded.arc_valid_until, "
            "revoked_on=excluded.revoked_on, in_taiwan=excluded.in_taiwan",
            rows.students,
        )
        conn.executemany(
            "INSERT INTO rm_tasks VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows.tasks
        )
        conn.executemany("INSERT INTO rm_fines VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows.fines)
        conn.executemany("INSERT INTO rm_payments VALUES (?,?,?,?)", rows.payments)
        conn.executemany("INSERT INTO rm_overstays VALUES (?,?,?,?,?,?)", rows.overstays)
        conn.executemany("INSERT INTO rm_errors VALUES (?,?,?,?)", rows.errors)

    # -- population queries ------------------------------------------------------------
    def tasks_on(
        self, day: date, statuses: Iterable[str] = (), kinds: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Every task that existed on `day`, with its status that day."""
        statuses, kinds = list(statuses), list(kinds)
        sql = (
            f"SELECT * FROM (SELECT student_id, n, kind, {TASK_STATUS_SQL} AS status, opens_on, "
            f"due_on, done_on, cancelled_on, place, fee_ntd, rule, caused_by FROM {TASKS_ON_SQL}) "
            "WHERE 1=1"
        )
        params: dict[str, Any] = {"d": day.isoformat()}
        if statuses == ["overdue"]:
            # by index: only tasks whose overdue window contains the day
            sql = sql.replace(
                "WHERE +trigger_on <= :d AND",
                "WHERE overdue_to >= :d AND overdue_from <= :d AND +trigger_on <= :d AND",
            )
        if statuses:
            sql += f" AND status IN ({','.join(f':s{i}' for i in range(len(statuses)))})"
            params.update({f"s{i}": s for i, s in enumerate(statuses)})
        if kinds:
            sql += f" AND kind IN ({','.join(f':k{i}' for i in range(len(kinds)))})"
            params.update({f"k{i}": k for i, k in enumerate(kinds)})
        out = []
        # Sorted here: an ORDER BY would make SQLite walk the primary key, not the index.
        rows = sorted(self.db.execute(sql, params).fetchall(), key=lambda r: (r[0], r[1]))
        cited = _cited_many([row[11] for row in rows], day)
        for row, causes in zip(rows, cited, strict=True):
            status = row[3]
            out.append(
                {
                    "student_id": row[0],
                    "kind": row[2],
                    "status": status,
                    "opens_on": row[4],
                    "due_on": row[5],
                    "done_on": row[6] if status in ("done", "done_late") else None,
                    "where": row[8],
                    "fee_ntd": row[9],
                    "rule": row[10],
                    "caused_by": causes,
                }
            )
        return out

    def fines_on(
        self, day: date, statuses: Iterable[str] = (), *, accrued_that_day: bool = False
    ) -> list[dict[str, Any]]:
        """Every fine accrued by `day` (or only on it), with its amounts and status that day."""
        wanted = set(statuses)
        d = day.isoformat()
        accrued = "accrued_on = ?" if accrued_that_day else "accrued_on <= ?"
        paid_rows = self.db.execute(
            "SELECT p.student_id, p.fine_n, SUM(p.amount) FROM rm_payments p "
            f"JOIN rm_fines f ON f.student_id = p.student_id AND f.n = p.fine_n AND f.{accrued} "
            "WHERE p.paid_on <= ? GROUP BY p.student_id, p.fine_n",
            [d, d],
        ).fetchall()
        paid = {(r[0], r[1]): r[2] for r in paid_rows}
        rows = self.db.execute(
            "SELECT student_id, n, kind, rule, accrued_on, amount_min, amount_max, offense, "
            "imposed_on, imposed_amount, overstay_valid_until, overstay_last_day, caused_by "
            f"FROM rm_fines WHERE {accrued} ORDER BY student_id, n",
            [d],
        ).fetchall()
        out = []
        cited = _cited_many([row[12] for row in rows], day)
        for (
            student_id,
            n,
            kind,
            rule,
            accrued_on,
            low,
            high,
            offense,
            imposed_on,
            imposed,
            valid_until,
            last_day,
            _caused_by,
        ), causes in zip(rows, cited, strict=True):
            if valid_until:
                end = min(day, date.fromisoformat(last_day)) if last_day else day
                days = (end - date.fromisoformat(valid_until)).days
                low, high = overstay_fine_range(self.rules, date.fromisoformat(accrued_on), days)
            amount = imposed if imposed_on and imposed_on <= d else None
            paid_ntd = paid.get((student_id, n), 0)
            status = "accrued" if amount is None else "paid" if paid_ntd >= amount else "imposed"
            if wanted and status not in wanted:
                continue
            out.append(
                {
                    "student_id": student_id,
                    "kind": kind,
                    "status": status,
                    "accrued_on": accrued_on,
                    "amount_min_ntd": low,
                    "amount_max_ntd": high,
                    "amount_ntd": amount,
                    "paid_ntd": paid_ntd,
                    "offense": offense,
                    "rule": rule,
                    "caused_by": causes,
                }
            )
        return out


def _cited_many(caused_by: list[str], day: date) -> list[list[str]]:
    """`_cited_on` for many rows with one JSON parse (it dominates big population queries)."""
    d = day.isoformat()
    parsed = json.loads("[" + ",".join(caused_by) + "]") if caused_by else []
    return [[event_id for event_id, since in cites if since <= d] for cites in parsed]
