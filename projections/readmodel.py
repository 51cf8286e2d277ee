"""Read models: the projection's output materialized in SQLite with sqlite-utils.

For every student the pure projection is evaluated at a far horizon, which gives the full
derived history with its dates (a task's opens/due/done/cancelled days, a fine's accrual,
imposition and payments, an overstay's first and last day). "Who had an overdue task on
2024-05-01" is then a SQL range query over those dates, not a replay. Nothing here
re-derives a rule: the dates come from `projections.engine`.

**Bitemporal.** Each derived row also carries the record-time interval during which it was
believed, `[known_from, known_until)` (UTC ISO text, fixed width; `OPEN` while it still is).
A student's derivation as known at T is `derive(facts, HORIZON, known_at=T)`; it only
changes at the distinct `recorded_at` values of the student's events, so the follower
derives one version per distinct `recorded_at` and, against the version before, closes the
rows that changed at that moment and opens the new ones. Unchanged rows are kept: storage
grows with changes, not with events. Events that share one `recorded_at` (one ingest batch)
make one version; the rows valid at T are those of the last version at or before T, which
is what `show --known-at T` derives. `rm_changes` lists the (student, moment) pairs where
the derivation changed, for `changed_since`.

Record time is stamped when a batch is written, so the notification order and the
`recorded_at` order can differ (two writers at once, a batch split over two follower
batches, or `timeline import` writing old record times). The follower does not assume
either order: when a student's new events carry a `recorded_at` at or before the last one
it applied for that student, it rewinds that student to just before that moment (rows
opened at or after it are deleted, rows closed at or after it are reopened) and derives
every version from there again. The tables after any prefix of the log are therefore
exactly the bitemporal derivation of the facts in that prefix, whatever the batching.

The tables follow the event store's notification log. Each batch of notifications is
applied in ONE SQLite transaction together with the new tracking position, so a crash
loses nothing and applies nothing twice; `sync` resumes from the stored position.

One student's facts can never stop the others: a version whose derivation fails gets a
row in `rm_errors` (student, position, error class, a message without personal data)
and NO rows in the other tables (stale rows would be false), and the follower goes on.
A later event that makes the student derivable again closes the error row.

The tables record the layout version and the fingerprint of the rules they were derived
under (rule values, settings, the code that derives, the holidays data). Opened under
another fingerprint, they are dropped and re-followed from position 0, so population
queries always follow the rules in force.

Population queries build their JSON in SQLite (`json_object`) and hand back one JSON text
per row, in (student, task/fine number) order, optionally one page at a time: callers
stream them without building Python rows.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import re
import sqlite3
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
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
    overstay_fine_final_days,
    overstay_fine_range,
)
from projections.rules import DEFAULT_RULES, TASK_KINDS, RuleBook, rulebook_fingerprint
from timeline.aggregate import Student
from timeline.errors import StorageConfigError, TimelineError
from timeline.facts import Fact, known_facts
from timeline.store import TimelineStore, to_fact

log = logging.getLogger(__name__)

HORIZON = date(2199, 12, 31)
FOREVER = "9999-12-31"
OPEN = "9999-12-31T23:59:59.999999+00:00"  # known_until of a row still believed
LAYOUT_VERSION = 10  # bump when a table changes: old read models are rebuilt
STREAM_CACHE = 20_000  # students whose facts stay in memory between batches
TRACKING = "rm_tracking"
NAME = "student_views"
RULES_CHANGED = "rules changed since the read models were built: rebuilding"
LAYOUT_CHANGED = "the read-model layout changed: rebuilding"
MAX_FOREIGN_REBUILDS = 3  # rebuilds by another process during one sync before giving up
CHUNK = 500  # ids per `IN (...)` list
# A whole list (no page) of at most this many rows is sorted here: SQLite's sorter copies
# every row's JSON text, which took about as long as building them (overdue tasks, 125,000
# students: 19,611 rows). A longer list is sorted by SQLite: a request holds at most about
# 10 MB of rows here, whatever the population.
SORT_HERE = 25_000
_STAGE = "rm_stage"  # the temporary database a rebuild fills before it swaps the tables in
_STAGE_ROWS = 20_000  # facts derived between two writes to the staging tables
# A rebuild's missing value: binding None goes through the sqlite3 module's adapter lookup
# (about three times the cost of binding a string), so staged rows carry `_NULL` instead
# and their INSERT turns it back into NULL. A float: binding it allocates nothing (a
# string, even '', is copied), and no column ever holds one (days, ids, whole numbers).
_NULL = -0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rm_tracking (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rm_students (
    uuid TEXT PRIMARY KEY, student_id TEXT NOT NULL UNIQUE, position INTEGER NOT NULL,
    recorded_to TEXT
);
CREATE TABLE IF NOT EXISTS rm_tasks (
    student_id TEXT NOT NULL, n INTEGER NOT NULL, kind TEXT NOT NULL, rule TEXT NOT NULL,
    trigger_on TEXT NOT NULL, opens_on TEXT, opens_from TEXT, due_on TEXT, due_from TEXT,
    due_until TEXT, overdue_from TEXT, overdue_to TEXT,
    done_on TEXT, cancelled_on TEXT,
    place TEXT NOT NULL, fee_ntd INTEGER, caused_by TEXT NOT NULL,
    known_from TEXT NOT NULL, known_until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_tasks_student ON rm_tasks (student_id, known_until);
CREATE INDEX IF NOT EXISTS rm_tasks_due ON rm_tasks (due_on);
CREATE INDEX IF NOT EXISTS rm_tasks_overdue ON rm_tasks (overdue_to, overdue_from);
CREATE INDEX IF NOT EXISTS rm_tasks_opens ON rm_tasks (opens_on);
CREATE TABLE IF NOT EXISTS rm_fines (
    student_id TEXT NOT NULL, n INTEGER NOT NULL, kind TEXT NOT NULL, rule TEXT NOT NULL,
    accrued_on TEXT NOT NULL, amount_min INTEGER NOT NULL, amount_max INTEGER NOT NULL,
    offense INTEGER, imposed_on TEXT, imposed_amount INTEGER,
    overstay_valid_until TEXT, overstay_last_day TEXT, caused_by TEXT NOT NULL,
    settled_on TEXT, settled_status TEXT, settled_doc TEXT,
    known_from TEXT NOT NULL, known_until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_fines_student ON rm_fines (student_id, known_until);
-- The fines query reads settled fines from this index alone, in order, as known at any
-- moment (no row look-up, no sort).
CREATE INDEX IF NOT EXISTS rm_fines_listed ON rm_fines (
    student_id, n, known_until, known_from, accrued_on, kind, settled_on, settled_status,
    settled_doc
);
CREATE INDEX IF NOT EXISTS rm_fines_accrued ON rm_fines (accrued_on);
CREATE TABLE IF NOT EXISTS rm_payments (
    student_id TEXT NOT NULL, fine_n INTEGER NOT NULL, k INTEGER NOT NULL,
    paid_on TEXT NOT NULL, amount INTEGER NOT NULL,
    known_from TEXT NOT NULL, known_until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_payments_fine ON rm_payments (student_id, fine_n, known_until);
CREATE TABLE IF NOT EXISTS rm_overstays (
    student_id TEXT NOT NULL, k INTEGER NOT NULL, since TEXT NOT NULL,
    valid_until TEXT NOT NULL, last_day TEXT, resolved_on TEXT, ceased INTEGER NOT NULL,
    known_from TEXT NOT NULL, known_until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_overstays_student ON rm_overstays (student_id, known_until);
CREATE TABLE IF NOT EXISTS rm_errors (
    student_id TEXT NOT NULL, position INTEGER NOT NULL, error TEXT NOT NULL,
    message TEXT NOT NULL, known_from TEXT NOT NULL, known_until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_errors_student ON rm_errors (student_id, known_until);
CREATE TABLE IF NOT EXISTS rm_changes (
    student_id TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (student_id, at)
);
CREATE INDEX IF NOT EXISTS rm_changes_at ON rm_changes (at);
"""
_TABLES = (
    "rm_tracking",
    "rm_students",
    "rm_tasks",
    "rm_fines",
    "rm_payments",
    "rm_overstays",
    "rm_errors",
    "rm_changes",
)
# The versioned tables and the columns that make a row's content (compared between versions).
_CONTENT: dict[str, tuple[str, ...]] = {
    "rm_tasks": (
        "student_id",
        "n",
        "kind",
        "rule",
        "trigger_on",
        "opens_on",
        "opens_from",
        "due_on",
        "due_from",
        "due_until",
        "overdue_from",
        "overdue_to",
        "done_on",
        "cancelled_on",
        "place",
        "fee_ntd",
        "caused_by",
    ),
    "rm_fines": (
        "student_id",
        "n",
        "kind",
        "rule",
        "accrued_on",
        "amount_min",
        "amount_max",
        "offense",
        "imposed_on",
        "imposed_amount",
        "overstay_valid_until",
        "overstay_last_day",
        "caused_by",
        "settled_on",
        "settled_status",
        "settled_doc",
    ),
    "rm_payments": ("student_id", "fine_n", "k", "paid_on", "amount"),
    "rm_overstays": (
        "student_id",
        "k",
        "since",
        "valid_until",
        "last_day",
        "resolved_on",
        "ceased",
    ),
    "rm_errors": ("student_id", "error", "message"),  # and `position`, not compared
}
_VERSIONED = tuple(_CONTENT)
# The NOT NULL columns of each table (the others may hold NULL: `_NULL` in a rebuild's rows).
_NOT_NULL: dict[str, frozenset[str]] = {
    match[1]: frozenset(re.findall(r"(\w+) \w+ NOT NULL", match[2]))
    for match in re.finditer(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\);", _SCHEMA, re.S)
}
_STAGED = (*_VERSIONED, "rm_changes", "rm_students")  # the tables a rebuild fills
Row = tuple[Any, ...]


def moment_text(moment: datetime) -> str:
    """A record moment as the tables keep it: UTC, fixed width, so text order is time order."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def known_sql(known_at: datetime | None, alias: str = "") -> tuple[str, dict[str, str]]:
    """The condition "this row was believed at `known_at`" (now, when None) and its parameter."""
    a = f"{alias}." if alias else ""
    if known_at is None:
        return f"{a}known_until = :open", {"open": OPEN}
    return f"{a}known_from <= :k AND {a}known_until > :k", {"k": moment_text(known_at)}


def tasks_on_sql(known: str, indexed: str = "") -> str:
    """The tasks that existed on day :d, with the due day known that day, believed per `known`."""
    indexed = f"INDEXED BY {indexed} " if indexed else ""
    return f"""
(SELECT student_id, n, kind, rule, trigger_on,
        CASE WHEN opens_from IS NULL OR opens_from <= :d THEN opens_on END AS opens_on,
        due_on, done_on, cancelled_on, place, fee_ntd, caused_by
 FROM rm_tasks {indexed}WHERE +trigger_on <= :d AND (due_from IS NULL OR due_from <= :d)
 AND (due_until IS NULL OR :d < due_until) AND {known})
"""


# The tasks that existed on day :d as known now (kept for callers of the old name).
TASKS_ON_SQL = tasks_on_sql(f"known_until = '{OPEN}'")
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
# The events a row cites that counted by day :d, as a JSON array (built by SQLite).
CITED_SQL = (
    "CASE WHEN substr(caused_by, 2, 1) = '[' THEN (SELECT json_group_array(value ->> 0) "
    "FROM json_each(caused_by) WHERE value ->> 1 <= :d) ELSE caused_by END"
)


def default_read_db(store_location: str) -> str:
    """Where the read models live: the SQLite event file itself, else ./timeline-read.db."""
    if store_location.startswith(("postgresql://", "postgres://")):
        return "timeline-read.db"
    return store_location


def _give_back_memory() -> None:
    """Return the heap a rebuild freed to the system (glibc keeps it otherwise).

    A rebuild's staging cache and rows are freed at its end, but glibc's allocator keeps
    the pages: a server that filled its read models at start-up held 2-4 times its usual
    memory from then on (12,500 students: 100 MB of heap, 56 MB after the trim).
    Elsewhere (no glibc) nothing is done.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


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


class _DayTexts(dict[date, str]):
    """Days as ISO text, each formatted once (`date.isoformat` goes through printf: a tenth
    of a rebuild). A log names a few thousand distinct days; the memo stays bounded."""

    def __init__(self, text: Callable[[date], str]) -> None:
        super().__init__()
        self.text = text

    def __missing__(self, day: date) -> str:
        if len(self) >= 100_000:
            self.clear()
        text = self[day] = self.text(day)
        return text


_day_iso = _DayTexts(date.isoformat)
_day_after_iso = _DayTexts(lambda day: dates.next_day(day).isoformat())
_day_before_iso = _DayTexts(lambda day: dates.previous_day(day).isoformat())


def _overdue_window(task: Any, due: date | None, null: Any = None) -> tuple[Any, Any]:
    """The days a task is overdue (inclusive), to find "overdue on D" by index.

    `null` stands for "no such day" (see `derived_rows`).
    """
    if due is None or due == date.max:
        return null, null  # a task due on the calendar's last day is never overdue in it
    done, cancelled = task.done_on, task.cancelled_on
    if done is None and cancelled is None:
        return _day_after_iso[due], FOREVER
    end = done if cancelled is None else cancelled if done is None else min(done, cancelled)
    if end <= dates.next_day(due):
        return null, null  # done or cancelled by its first overdue day
    return _day_after_iso[due], _day_before_iso[end]


_quoted = json.encoder.encode_basestring_ascii  # what json.dumps quotes a string with (C)


def _cited(pairs: Iterable[tuple[str, date]], listed_from: date) -> str:
    """The cited events: their ids alone when all count from the row's first listed day,
    else [id, day from which it counts] pairs (filtered by day in SQL).

    Exactly the text `json.dumps` gives (a test holds them equal), built without the
    encoder's generality: this runs for every row of every version a rebuild derives.
    """
    pairs = list(pairs)
    for _, day in pairs:
        if day > listed_from:
            return "[" + ", ".join([f'[{_quoted(e)}, "{_day_iso[d]}"]' for e, d in pairs]) + "]"
    return "[" + ", ".join([_quoted(e) for e, _ in pairs]) + "]"


def first_cause(caused_by: str) -> str:
    """The first event a row cites ("-" for none), in either form `_cited` stores."""
    cited = json.loads(caused_by)
    if not cited:
        return "-"
    return cited[0][0] if isinstance(cited[0], list) else cited[0]


def _task_cited(task: Any) -> str:
    """`_cited(task.cited(), task.trigger_on)`, without building the pairs for most tasks."""
    triggers = task.triggers
    if not task.effective:  # every trigger counts from the trigger day
        done_by = task.done_by
        if not done_by:  # the ids alone
            return "[" + ", ".join([_quoted(e) for e in triggers]) + "]"
        done = task.done_on or task.trigger_on
        if done > task.trigger_on:  # the completions count from their day: pairs
            since, until = _day_iso[task.trigger_on], _day_iso[done]
            cited = [f'[{_quoted(e)}, "{since}"]' for e in triggers]
            cited += [f'[{_quoted(e)}, "{until}"]' for e in done_by]
            return "[" + ", ".join(cited) + "]"
        return "[" + ", ".join([_quoted(e) for e in (*triggers, *done_by)]) + "]"
    return _cited(task.cited(), task.trigger_on)


def _fine_cited(fine: Any) -> str:
    """A fine's cited events (`_cited` from its accrual day)."""
    effective = fine.effective
    if not effective:
        return "[" + ", ".join([_quoted(e) for e in fine.caused_by]) + "]"
    accrued = fine.accrued_on
    return _cited([(e, effective.get(e, accrued)) for e in fine.caused_by], accrued)


_text = json.encoder.encode_basestring  # json.dumps(ensure_ascii=False): SQLite's quoting


def _settled_fine(
    student_id: str, fine: Any, amount: int | None, rules: RuleBook
) -> tuple[str, str, str] | None:
    """(day, status, JSON text) of a fine on every day from that day on, None if none.

    From the last of its accrual, imposition, payment and cited event's day, and the day
    an overstay's fine stops growing, on, nothing in the fine's answer changes with the
    day asked: the fines query reads this text instead of building it (`_fines_sql`; the
    same bytes, a test holds them equal). This module is not in the rules' fingerprint:
    a change to the text needs `LAYOUT_VERSION` bumped, so that stored texts are rebuilt.
    """
    accrued, effective, caused_by = fine.accrued_on, fine.effective, fine.caused_by
    settled = accrued
    if effective:  # the cited events' days (`_fine_cited`)
        settled = max([effective.get(e, accrued) for e in caused_by], default=accrued)
    # Cited as stored, SQLite hands back the ids' quoted text, or in the pairs form (some
    # event counts from a later day) each id re-quoted, which would cut an id at a NUL.
    pairs = settled > accrued
    if pairs and any("\x00" in e for e in caused_by):
        return None
    quote = _text if pairs else _quoted
    paid = 0
    for on, part in fine.payments:
        paid += part
        settled = max(settled, on)
    imposed, valid_until = fine.imposed_on, fine.valid_until
    if imposed is not None:
        settled = max(settled, imposed)
    if valid_until is not None:  # its range, by days overstayed up to the last day if frozen
        final = dates.days_after(valid_until, overstay_fine_final_days(rules, accrued))
        last_day = fine.last_day
        settled = max(settled, final if last_day is None else min(final, last_day))
    status = "accrued" if amount is None else "paid" if paid >= amount else "imposed"
    offense = fine.offense
    doc = (
        f'{{"student_id":{_text(student_id)},"kind":{_text(fine.kind)},"status":"{status}",'
        f'"accrued_on":"{_day_iso[accrued]}","amount_min_ntd":{fine.amount_min},'
        f'"amount_max_ntd":{fine.amount_max},'
        f'"amount_ntd":{"null" if amount is None else amount},"paid_ntd":{paid},'
        f'"offense":{"null" if offense is None else offense},"rule":{_text(fine.rule)},'
        f'"caused_by":[{",".join([quote(e) for e in caused_by])}]}}'
    )
    return _day_iso[settled], status, doc


def derived_rows(
    student_id: str, derived: Derivation, tail: Row = (), null: Any = None
) -> dict[str, list[Row]]:
    """One derivation's rows, table by table (content columns of `_CONTENT`, in order).

    `tail` is appended to every row (a rebuild's interval, when the row's is known).
    `null` stands for a missing value: None, or for a rebuild `_NULL`, which binds faster
    and which its INSERT turns back into NULL (`NULLIF`).
    Runs for every version a rebuild derives: the days' texts are looked up (`_day_iso`)
    and the common shapes take short cuts.
    """
    day = _day_iso
    tasks: list[Row] = []
    add_task = tasks.append
    for n, t in enumerate(derived.tasks):
        opens, opens_from, done, cancelled = t.opens_on, t.opens_from, t.done_on, t.cancelled_on
        fee = t.fee_ntd
        # The same for each due version of the task: computed once.
        head = (
            student_id,
            n,
            t.kind,
            t.rule,
            day[t.trigger_on],
            null if opens is None else day[opens],
            null if opens_from is None else day[opens_from],
        )
        rest = (
            null if done is None else day[done],
            null if cancelled is None else day[cancelled],
            t.where or TASK_KINDS[t.kind].where,  # `_Task.place`
            null if fee is None else fee,
            _task_cited(t),
            *tail,
        )
        if not t.due_changes:  # nearly every task: one due day, known from its trigger
            due = t.due_on
            add_task(
                (
                    *head,
                    null if due is None else day[due],
                    null,
                    null,
                    *_overdue_window(t, due, null),
                    *rest,
                )
            )
            continue
        for since, until, due in t.due_versions():
            add_task(
                (
                    *head,
                    null if due is None else day[due],
                    null if since is None else day[since],
                    null if until is None else day[until],
                    *_overdue_window(t, due, null),
                    *rest,
                )
            )
    fines: list[Row] = []
    payments: list[Row] = []
    rules = derived.replay.rules
    for n, f in enumerate(derived.fines):
        imposed, valid_until, last_day, offense = f.imposed_on, f.valid_until, f.last_day, f.offense
        amount = f.amount if imposed else None
        fines.append(
            (
                student_id,
                n,
                f.kind,
                f.rule,
                day[f.accrued_on],
                f.amount_min,
                f.amount_max,
                null if offense is None else offense,
                null if imposed is None else day[imposed],
                null if amount is None else amount,
                null if valid_until is None else day[valid_until],
                null if last_day is None else day[last_day],
                _fine_cited(f),
                *(_settled_fine(student_id, f, amount, rules) or (null, null, null)),
                *tail,
            )
        )
        if f.payments:
            payments.extend(
                (student_id, n, k, day[on], amount, *tail)
                for k, (on, amount) in enumerate(f.payments)
            )
    overstays: list[Row] = []
    k = 0
    for e in derived.replay.episodes:
        if e.kind != "overstay":
            continue
        end, resolved = e.end, e.resolved_on
        overstays.append(
            (
                student_id,
                k,
                day[e.since],
                day[e.valid_until],
                null if end is None else day[end],
                null if resolved is None else day[resolved],
                int(e.ceased),
                *tail,
            )
        )
        k += 1
    return {
        "rm_tasks": tasks,
        "rm_fines": fines,
        "rm_payments": payments,
        "rm_overstays": overstays,
        "rm_errors": [],
    }


class _Entry:
    """One row of a student's state: in the table (`rowid`) or new in this batch (None)."""

    __slots__ = ("known_from", "loaded_until", "position", "rowid", "until")

    def __init__(
        self, rowid: int | None, known_from: str, until: str, position: int | None = None
    ) -> None:
        self.rowid = rowid
        self.known_from = known_from
        self.until = until
        self.loaded_until = until  # what the table says now (for rows already there)
        self.position = position


@dataclass
class _Student:
    """What the follower knows of one touched student before deriving its new versions."""

    uid: str
    student_id: str
    facts: list[Fact]
    since: datetime | None  # the earliest record time among its new facts (None: no new fact)


def _log_failure(student_id: str, failure: Exception | None, bug: Exception | None) -> None:
    """Log a student's failed derivation once per student and batch, not once per version."""
    if bug is not None:
        message = failure_of(student_id, bug)[1]
        log.error("%s%s", message, _frames(bug))
    if isinstance(failure, DerivationError):
        log.info("%s", failure_of(student_id, failure)[1])


class _Staged:
    """Rows a rebuild derived and has not yet written: each with its final interval."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Row]] = {t: [] for t in _VERSIONED}
        self.changes: list[tuple[str, str]] = []
        self.students: list[tuple[str, str, int, str | None]] = []
        self.pending = 0  # facts derived since the last write


class _Plan:
    """The writes of one batch: rewinds, closed rows, new rows, changes, tracking of students."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.rewinds: list[tuple[str, str]] = []  # (student, moment): forget from there on
        self.loaded: dict[str, list[_Entry]] = {t: [] for t in _VERSIONED}
        self.inserts: dict[str, list[tuple[Row, _Entry]]] = {t: [] for t in _VERSIONED}
        self.changes: list[tuple[str, str]] = []
        self.students: list[tuple[str, str, int, str | None]] = []
        self.failed = 0


class ReadModel:
    """The materialized tables and the loop that keeps them current."""

    def __init__(
        self,
        path: str | Path,
        rules: RuleBook = DEFAULT_RULES,
        calendar: TaiwanCalendar | None = None,
        *,
        fingerprint: str | None = None,
        any_thread: bool = False,
    ) -> None:
        # `any_thread`: the connection may be used from one thread after another (never
        # two at once), as a streamed HTTP answer does from the server's thread pool.
        self.rules = rules
        self.calendar = calendar or taiwan_calendar()
        self.fingerprint = fingerprint or read_model_fingerprint(rules, self.calendar)
        self._overstay_bounds: dict[tuple[str, str, str | None, str], tuple[int, int]] = {}
        # Why the tables were last dropped by this object (None: they were current).
        self.rebuild_reason: str | None = None
        try:
            self.db = Database(sqlite3.connect(str(path), check_same_thread=not any_thread))
        except sqlite3.Error as exc:
            raise StorageConfigError(f"cannot open the read models at {path}: {exc}") from None
        try:
            self.db.execute("PRAGMA busy_timeout = 30000")
            # WAL: a reader (a streamed list whose client reads slowly keeps its query open)
            # and the writer (the follower, a request's sync) never wait for each other. In
            # the rollback journal an open reader kept every commit out: population answers
            # waited 30 s, then 503. The WAL is cut back to 64 MB after a checkpoint (a
            # rebuild's swap passes through it).
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")
            self.db.conn.create_function(
                "rm_overstay_ntd", 5, self._overstay_ntd, deterministic=True
            )
            self._ensure_build()
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            # A folder, a file that is no database, a read-only place, a lock held too long.
            self.db.close()
            raise StorageConfigError(f"cannot open the read models at {path}: {exc}") from None
        # Streams followed so far (uid → student, facts, last version): each notification
        # is decoded once; a stream not followed from its start is read whole once.
        self._streams: OrderedDict[str, tuple[str, list[Fact], int]] = OrderedDict()
        # The last notification absorbed into `_streams`. Following again from before it
        # (another process rebuilt, or applied a shorter batch than ours) would take those
        # events for old ones and derive nothing from them: the cache is dropped first.
        self._absorbed = 0

    def close(self) -> None:
        """Close the SQLite connection."""
        self.db.close()

    def _overstay_ntd(
        self, accrued_on: str, valid_until: str, last_day: str | None, day: str, high: int
    ) -> int:
        """An overstay fine's range bound on `day` (SQL function: the rule stays in Python)."""
        key = (accrued_on, valid_until, last_day, day)
        bounds = self._overstay_bounds.get(key)
        if bounds is None:  # asked twice per fine (low, high): computed once
            on = date.fromisoformat(day)
            end = min(on, date.fromisoformat(last_day)) if last_day else on
            days = (end - date.fromisoformat(valid_until)).days
            bounds = overstay_fine_range(self.rules, date.fromisoformat(accrued_on), days)
            if len(self._overstay_bounds) > 100_000:
                self._overstay_bounds.clear()
            self._overstay_bounds[key] = bounds
        return bounds[1] if high else bounds[0]

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
        self._streams = OrderedDict()
        self._absorbed = 0
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

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """The block's queries read one state of the tables (one read transaction).

        A page and its total, counted by two queries, otherwise read two states when
        another connection (the follower, another request's sync) committed in between.
        """
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

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
        *,
        rebuild_if_empty: bool = False,
    ) -> SyncReport:
        """Apply every notification after the tracking position, one transaction per batch.

        A student whose derivation raises is recorded in `rm_errors` and left out; the
        others are applied as usual. With `rebuild_if_empty`, tables that follow nothing
        yet (a new file, or rules changed) are filled by `rebuild`'s snapshot pass, which
        gives the same tables faster than following the log from its start.
        """
        self._ensure_build()  # another process may have rebuilt under other rules
        report = SyncReport(position=self.position)
        last = store.max_position()
        if rebuild_if_empty and report.position == 0 and last > 0:
            return self.rebuild(store, batch, on_progress, unless_ahead=True)
        foreign_rebuilds = 0
        while report.position < last:
            notifications = store.notifications(report.position, batch)
            if not notifications:
                break
            if report.position < self._absorbed:
                self._streams.clear()
            touched = self._absorb(store, notifications)
            position = notifications[-1].id
            self._absorbed = position
            plan = self._plan(touched, position)
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
                self._write(plan)
                self.db.execute(
                    f"INSERT INTO {TRACKING} (name, position) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                    [NAME, position],
                )
            report.notifications += len(notifications)
            report.students += len(touched)
            report.failed += plan.failed
            report.position = position
            if on_progress:
                on_progress(position, last)
        return report

    def rebuild(
        self,
        store: TimelineStore,
        batch: int = 2000,
        on_progress: Callable[[int, int], None] | None = None,
        *,
        unless_ahead: bool = False,
    ) -> SyncReport:
        """Recreate the tables from the whole log: one pass by stream, swapped in at the end.

        The log as of `upto = store.max_position()` is read stream by stream
        (`TimelineStore.streams`) and each student's versions derived once, as the
        follower derives them, into a private temporary database (deleted by SQLite when
        the connection closes, even when the process is killed). Its indexes are built
        after the load. One short write transaction then replaces the tables with the
        staged ones and tracks `upto`, so a rebuild killed half-way leaves the old tables
        as they were, and a follower in another process waits only for the swap (it then
        goes on from `upto`). The events after `upto` are followed as usual. `on_progress`
        gets (events read, `upto`) during the pass, then (position, last) as `sync` does.
        With `unless_ahead` (the filling of empty tables), tables that another process has
        meanwhile brought to `upto` or beyond are kept and the pass is dropped.
        """
        upto = store.max_position()
        self._streams.clear()
        self._absorbed = 0
        self.db.execute(f"ATTACH DATABASE '' AS {_STAGE}")
        try:
            report = self._stage(store, upto, on_progress)
            with self._exclusive():
                self._rebuild_if_foreign()  # our layout and fingerprint, in any case
                if unless_ahead and self._tracked_position() >= upto:
                    # Several processes found the tables empty at once (the API processes
                    # and the follower of a new deployment): the first swapped its pass in
                    # and followed on. Swapping an older pass over theirs would take the
                    # tables back in time until this process caught up again.
                    report = SyncReport(position=upto)
                else:
                    conn = self.db.conn
                    for table in _TABLES:
                        conn.execute(f"DELETE FROM main.{table}")
                    for table in _STAGED:
                        conn.execute(f"INSERT INTO main.{table} SELECT * FROM {_STAGE}.{table}")
                    conn.execute(f"INSERT INTO main.{TRACKING} VALUES (?, ?)", [NAME, upto])
        finally:
            self.db.execute(f"DETACH DATABASE {_STAGE}")
            _give_back_memory()
        self.rebuild_reason = None
        after = self.sync(store, batch, on_progress)
        report.notifications += after.notifications
        report.students += after.students
        report.failed += after.failed
        report.position = after.position
        return report

    def _stage(
        self,
        store: TimelineStore,
        upto: int,
        on_progress: Callable[[int, int], None] | None,
    ) -> SyncReport:
        """Derive every student of the log as of `upto` into the staging database."""
        conn = self.db.conn
        for statement in _SCHEMA.split(";"):
            if statement.strip().startswith("CREATE TABLE"):
                conn.execute(statement.replace("EXISTS ", f"EXISTS {_STAGE}.", 1))
        conn.execute(f"PRAGMA {_STAGE}.journal_mode = OFF")
        conn.execute(f"PRAGMA {_STAGE}.cache_size = -65536")  # 64 MiB, bounded
        report = SyncReport(position=upto)
        if on_progress:
            on_progress(0, upto)
        staged = _Staged()
        texts: dict[datetime, str] = {}  # record moments as text (a batch shares one)
        # The pass allocates millions of short-lived rows and no cycles: the collector
        # would only walk them again and again (a fifth of the time, measured).
        collecting = gc.isenabled()
        gc.freeze()
        gc.disable()
        conn.execute("BEGIN")
        try:
            for stream in store.streams(upto):
                report.notifications += stream.version
                report.students += 1
                facts = stream.facts
                latest = None
                if facts:
                    moments = sorted({f.recorded_at for f in facts})
                    ats = [texts.get(m) or texts.setdefault(m, moment_text(m)) for m in moments]
                    report.failed += self._snapshot(
                        stream.student_id, facts, moments, ats, upto, staged
                    )
                    staged.pending += len(facts)
                    latest = ats[-1]
                staged.students.append((stream.uuid, stream.student_id, upto, latest))
                if staged.pending >= _STAGE_ROWS:
                    self._insert_staged(staged)
                    staged = _Staged()
                    if len(texts) > 10_000:  # bounded memory, whatever the log's record times
                        texts.clear()
                    if on_progress:
                        on_progress(report.notifications, upto)
            self._insert_staged(staged)
            for statement in _SCHEMA.split(";"):
                if statement.strip().startswith("CREATE INDEX"):
                    conn.execute(statement.replace("EXISTS ", f"EXISTS {_STAGE}.", 1))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            if collecting:
                gc.enable()
            gc.unfreeze()
        if on_progress:
            on_progress(upto, upto)
        return report

    def _snapshot(
        self,
        student_id: str,
        facts: list[Fact],
        moments: list[datetime],
        ats: list[str],
        position: int,
        out: _Staged,
    ) -> bool:
        """Every version of one student, each row with its final interval, into `out`.

        The same versions and intervals `_follow` makes from empty tables (one version per
        distinct record time `moments`, sorted, `ats` their texts; unchanged rows kept),
        without the follower's bookkeeping. True when the student's last version failed (it is left
        out, as by the follower).
        """
        student = _Student("", student_id, facts, moments[0])
        if len(moments) == 1:  # most students: one version, every row believed from then on
            at = ats[0]
            # As known at its one record time = every fact known (no record-time filter).
            rows, failure = self._version(student, None, (at, OPEN), _NULL)
            for table, fresh in rows.items():
                if table == "rm_errors":
                    fresh = [(*c, at, OPEN, position) for c in fresh]
                out.rows[table].extend(fresh)
            if any(rows.values()):
                out.changes.append((student_id, at))
            bug = failure if not isinstance(failure, DerivationError | None) else None
            _log_failure(student_id, failure, bug)
            return failure is not None
        held: dict[str, dict[Row, str]] = {t: {} for t in _VERSIONED}
        # An error row also keeps the position it was found at (here: the snapshot's).
        tails: dict[str, Row] = {t: () for t in _VERSIONED} | {"rm_errors": (position,)}
        failure: Exception | None = None
        bug: Exception | None = None
        for moment, at in zip(moments, ats, strict=True):
            rows, failure = self._version(student, moment, null=_NULL)
            if failure is not None and not isinstance(failure, DerivationError):
                bug = failure
            changed = False
            for table in _VERSIONED:
                believed = held[table]
                fresh = rows[table]
                if believed:
                    keep = set(fresh)
                    closed = out.rows[table]
                    for content in [c for c in believed if c not in keep]:
                        closed.append((*content, believed.pop(content), at, *tails[table]))
                        changed = True
                for content in fresh:
                    if content not in believed:
                        believed[content] = at
                        changed = True
            if changed:
                out.changes.append((student_id, at))
        for table, believed in held.items():
            out.rows[table].extend(
                [(*content, since, OPEN, *tails[table]) for content, since in believed.items()]
            )
        _log_failure(student_id, failure, bug)
        return failure is not None

    def _insert_staged(self, staged: _Staged) -> None:
        """Write staged rows (all new, intervals final) into the staging tables."""
        conn = self.db.conn
        for table, columns in _CONTENT.items():
            names = [*columns, "known_from", "known_until"]
            if table == "rm_errors":
                names.append("position")
            marks = ",".join(
                "?" if name in _NOT_NULL[table] else f"NULLIF(?, {_NULL})" for name in names
            )
            conn.executemany(
                f"INSERT INTO {_STAGE}.{table} ({', '.join(names)}) VALUES ({marks})",
                staged.rows[table],
            )
        conn.executemany(f"INSERT INTO {_STAGE}.rm_changes VALUES (?, ?)", staged.changes)
        conn.executemany(f"INSERT INTO {_STAGE}.rm_students VALUES (?,?,?,?)", staged.students)

    def _absorb(self, store: TimelineStore, notifications: list[Any]) -> list[_Student]:
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
        # Streams not followed from their start here are read whole, together.
        unread = [
            uid
            for uid, events in new.items()
            if self._unfollowed(self._streams.get(uid), events[0].originator_version)
        ]
        read = {s.uuid: s for s in store.streams_of(unread)} if unread else {}
        touched = []
        for uid, events in new.items():
            cached = self._streams.pop(uid, None)
            first = events[0].originator_version
            if cached is None and first == 1:
                cached = (names[uid], [], 0)
            whole = self._unfollowed(cached, first)
            if whole:
                student_id = cached[0] if cached else names.get(uid)
                if student_id is None:
                    log.warning("notification for an unknown stream %s skipped", uid)
                    continue
                stream = read.get(uid)
                if stream is not None and stream.student_id == student_id:
                    facts = stream.facts
                else:  # not a stream `streams_of` reads: as it always was read
                    facts = store.stream(student_id)
                # The stream as these notifications leave it, not as it is now: events
                # stored since belong to later batches. Were they cached now, and this
                # batch's plan then dropped (another process applied it first), a later
                # batch would find them "already seen" and never derive them.
                version = events[-1].originator_version
                facts = [f for f in facts if f.seq <= version]
                cached = (student_id, facts, version)
            student_id, facts, version = cached
            added = []
            for event in events:
                if event.originator_version > version:
                    if isinstance(event, Student.FactRecorded):
                        added.append(to_fact(student_id, event))
                    version = event.originator_version
            facts.extend(added)
            fresh = [f for f in facts if f.seq >= first] if whole else added
            since = min((f.recorded_at for f in fresh), default=None)
            self._streams[uid] = (student_id, facts, version)
            touched.append(_Student(uid, student_id, facts, since))
        while len(self._streams) > STREAM_CACHE:
            self._streams.popitem(last=False)
        return touched

    @staticmethod
    def _unfollowed(cached: tuple[str, list[Fact], int] | None, first: int) -> bool:
        """Whether a stream whose new events start at version `first` must be read whole."""
        if cached is None:
            return first != 1
        return cached[2] < first - 1

    def _names(self, uuids: set[str]) -> dict[str, str]:
        if not uuids:
            return {}
        marks = ",".join("?" for _ in uuids)
        rows = self.db.execute(
            f"SELECT uuid, student_id FROM rm_students WHERE uuid IN ({marks})", list(uuids)
        ).fetchall()
        return {row[0]: row[1] for row in rows}

    # -- deriving the versions of the touched students ---------------------------------
    def _plan(self, touched: list[_Student], position: int) -> _Plan:
        """Derive each touched student's new versions against the rows the tables hold.

        Read outside the write transaction; `sync` applies the plan only if the tracking
        position is still the one these reads saw (no other process wrote meanwhile).
        """
        plan = _Plan(position)
        recorded = self._recorded_to([s.uid for s in touched])
        followed: list[_Student] = []  # new facts after everything applied: go on from now
        rewound: list[_Student] = []  # new facts at or before the last applied moment
        for student in touched:
            if student.since is None or student.uid not in recorded:
                continue
            last = recorded[student.uid]
            if last is not None and moment_text(student.since) <= last:
                rewound.append(student)
            else:
                followed.append(student)
        states = self._load_current(plan, [s.student_id for s in followed])
        for student in rewound:
            since = moment_text(student.since)  # type: ignore[arg-type]
            plan.rewinds.append((student.student_id, since))
            states[student.student_id] = self._load_before(plan, student.student_id, since)
        for student in touched:
            facts = student.facts
            if student.since is not None:
                state = states.get(student.student_id) or {t: {} for t in _VERSIONED}
                self._follow(plan, student, state)
            latest = max((f.recorded_at for f in facts), default=None)
            plan.students.append(
                (
                    student.uid,
                    student.student_id,
                    position,
                    moment_text(latest) if latest else None,
                )
            )
        return plan

    def _follow(self, plan: _Plan, student: _Student, state: dict[str, dict[Row, _Entry]]) -> None:
        """Derive one version per distinct record time from `since` on; diff each with the last."""
        since = student.since
        assert since is not None
        moments = sorted({f.recorded_at for f in student.facts if f.recorded_at >= since})
        failure: Exception | None = None
        bug: Exception | None = None
        for moment in moments:
            at = moment_text(moment)
            rows, failure = self._version(student, moment)
            if failure is not None and not isinstance(failure, DerivationError):
                bug = failure
            changed = False
            for table in _VERSIONED:
                held = state[table]
                fresh = rows[table]
                if held:
                    keep = set(fresh)
                    for content in [c for c in held if c not in keep]:
                        held.pop(content).until = at
                        changed = True
                for content in fresh:
                    if content not in held:
                        entry = _Entry(None, at, OPEN, position=plan.position)
                        held[content] = entry
                        plan.inserts[table].append((content, entry))
                        changed = True
            if changed:
                plan.changes.append((student.student_id, at))
        _log_failure(student.student_id, failure, bug)
        if failure is not None:
            plan.failed += 1

    def _version(
        self, student: _Student, moment: datetime | None, tail: Row = (), null: Any = None
    ) -> tuple[dict[str, list[Row]], Any]:
        """The rows of the student's derivation as known at `moment` (None: every fact known),
        or its error row.

        `tail` is appended to the derivation's rows (not to the error row's content);
        `null` stands for a missing value (see `derived_rows`).
        """
        student_id, facts = student.student_id, student.facts
        try:
            derived = derive(
                facts, HORIZON, moment, self.rules, self.calendar, student_id=student_id
            )
            try:
                return derived_rows(student_id, derived, tail, null), None
            except dates.DateOutOfRangeError as exc:  # e.g. a due day on 9999-12-31
                events = out_of_range_events(known_facts(facts, moment))
                raise DerivationError(student_id, str(exc), events) from None
        except Exception as exc:  # any failure, even a bug, stays with its student
            error, message = failure_of(student_id, exc)
            rows: dict[str, list[Row]] = {table: [] for table in _VERSIONED}
            rows["rm_errors"] = [(student_id, error, message)]
            return rows, exc

    def _recorded_to(self, uids: list[str]) -> dict[str, str | None]:
        """The last record time applied per student already in the tables."""
        found: dict[str, str | None] = {}
        for start in range(0, len(uids), CHUNK):
            chunk = uids[start : start + CHUNK]
            marks = ",".join("?" for _ in chunk)
            found.update(
                self.db.execute(
                    f"SELECT uuid, recorded_to FROM rm_students WHERE uuid IN ({marks})", chunk
                ).fetchall()
            )
        return found

    def _select_state(
        self, plan: _Plan, where: str, params: list[Any], reopen: bool
    ) -> dict[str, dict[str, dict[Row, _Entry]]]:
        """Rows of the versioned tables matching `where`, as each student's current state."""
        states: dict[str, dict[str, dict[Row, _Entry]]] = {}
        for table, columns in _CONTENT.items():
            position = "position" if table == "rm_errors" else "NULL"
            rows = self.db.execute(
                f"SELECT rowid, known_from, known_until, {position}, {', '.join(columns)} "
                f"FROM {table} WHERE {where}",
                params,
            )
            for rowid, known_from, known_until, pos, *content in rows:
                entry = _Entry(rowid, known_from, known_until, pos)
                if reopen:
                    entry.until = OPEN  # believed again until the versions say otherwise
                state = states.setdefault(content[0], {t: {} for t in _VERSIONED})
                state[table][tuple(content)] = entry
                plan.loaded[table].append(entry)
        return states

    def _load_current(
        self, plan: _Plan, student_ids: list[str]
    ) -> dict[str, dict[str, dict[Row, _Entry]]]:
        """The rows still believed of these students."""
        states: dict[str, dict[str, dict[Row, _Entry]]] = {}
        for start in range(0, len(student_ids), CHUNK):
            chunk = student_ids[start : start + CHUNK]
            marks = ",".join("?" for _ in chunk)
            states.update(
                self._select_state(
                    plan,
                    f"student_id IN ({marks}) AND known_until = ?",
                    [*chunk, OPEN],
                    reopen=False,
                )
            )
        return states

    def _load_before(
        self, plan: _Plan, student_id: str, moment: str
    ) -> dict[str, dict[Row, _Entry]]:
        """The rows believed just before `moment` (a rewind: later versions are derived again)."""
        states = self._select_state(
            plan,
            "student_id = ? AND known_from < ? AND known_until >= ?",
            [student_id, moment, moment],
            reopen=True,
        )
        return states.get(student_id) or {t: {} for t in _VERSIONED}

    def _write(self, plan: _Plan) -> None:
        """Apply a plan (inside the caller's transaction)."""
        conn = self.db.conn
        if plan.rewinds:
            for table in _VERSIONED:
                conn.executemany(
                    f"DELETE FROM {table} WHERE student_id = ? AND known_from >= ?", plan.rewinds
                )
            conn.executemany(
                "DELETE FROM rm_changes WHERE student_id = ? AND at >= ?", plan.rewinds
            )
        for table, columns in _CONTENT.items():
            conn.executemany(
                f"UPDATE {table} SET known_until = ? WHERE rowid = ?",
                [(e.until, e.rowid) for e in plan.loaded[table] if e.until != e.loaded_until],
            )
            if table == "rm_errors":
                conn.executemany(
                    "INSERT INTO rm_errors (student_id, position, error, message, known_from, "
                    "known_until) VALUES (?,?,?,?,?,?)",
                    [
                        (c[0], e.position, c[1], c[2], e.known_from, e.until)
                        for c, e in plan.inserts[table]
                    ],
                )
                continue
            marks = ",".join("?" for _ in range(len(columns) + 2))
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}, known_from, known_until) "
                f"VALUES ({marks})",
                [(*c, e.known_from, e.until) for c, e in plan.inserts[table]],
            )
        conn.executemany("INSERT INTO rm_changes VALUES (?, ?)", plan.changes)
        conn.executemany(
            "INSERT INTO rm_students VALUES (?,?,?,?) ON CONFLICT(uuid) DO UPDATE SET "
            "position=excluded.position, recorded_to=excluded.recorded_to",
            plan.students,
        )

    # -- population queries ------------------------------------------------------------
    def newest_record_time(self) -> datetime | None:
        """The latest moment at which a derivation changed (None for empty tables)."""
        row = self.db.execute("SELECT max(at) FROM rm_changes").fetchone()
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    def errors(self, known_at: datetime | None = None) -> list[dict[str, Any]]:
        """The students left out of population queries (as known at `known_at`, else now)."""
        known, params = known_sql(known_at)
        rows = self.db.execute(
            f"SELECT student_id, position, error, message FROM rm_errors WHERE {known} "
            "ORDER BY student_id",
            params,
        ).fetchall()
        return [
            {"student_id": sid, "position": position, "error": error, "message": message}
            for sid, position, error, message in rows
        ]

    def changes(self, since: datetime) -> list[dict[str, Any]]:
        """The students whose derivation changed after `since`: how often and when last."""
        rows = self.db.execute(
            "SELECT student_id, COUNT(*), MAX(at) FROM rm_changes WHERE at > ? "
            "GROUP BY student_id ORDER BY student_id",
            [moment_text(since)],
        ).fetchall()
        return [
            {"student_id": sid, "changes": count, "last_changed_at": last}
            for sid, count, last in rows
        ]

    def _tasks_sql(
        self,
        day: date,
        statuses: Iterable[str],
        kinds: Iterable[str],
        known_at: datetime | None,
        changed_since: datetime | None,
        due_between: tuple[date, date] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """SELECT student_id, n, doc (the task's JSON as SPEC §4 shows it) of the tasks on `day`."""
        statuses, kinds = list(statuses), list(kinds)
        known, params = known_sql(known_at)
        params["d"] = day.isoformat()
        if statuses == ["overdue"]:
            # by index: only tasks whose overdue window contains the day (named, or SQLite
            # walks the student index to spare the sort, a full scan)
            inner = tasks_on_sql(known, "rm_tasks_overdue").replace(
                "WHERE +trigger_on <= :d AND",
                "WHERE overdue_to >= :d AND overdue_from <= :d AND +trigger_on <= :d AND",
            )
        else:
            inner = tasks_on_sql(known)
        where = _filters(params, statuses, kinds, changed_since)
        if due_between is not None:
            where += " AND due_on BETWEEN :due_a AND :due_b"
            params.update(due_a=due_between[0].isoformat(), due_b=due_between[1].isoformat())
        sql = f"""
SELECT student_id, n, json_object(
    'student_id', student_id, 'kind', kind, 'status', status, 'opens_on', opens_on,
    'due_on', due_on, 'done_on', CASE WHEN status IN ('done', 'done_late') THEN done_on END,
    'where', place, 'fee_ntd', fee_ntd, 'rule', rule, 'caused_by', json({CITED_SQL})) AS doc
FROM (SELECT student_id, n, kind, {TASK_STATUS_SQL} AS status, opens_on, due_on, done_on,
             place, fee_ntd, rule, caused_by FROM {inner})
WHERE {where}"""
        return sql, params

    def _fines_sql(
        self,
        day: date,
        statuses: Iterable[str],
        accrued_that_day: bool,
        known_at: datetime | None,
        changed_since: datetime | None,
        kinds: Iterable[str] = (),
    ) -> tuple[str, dict[str, Any]]:
        """SELECT student_id, n, doc (the fine's JSON) of the fines accrued by (or on) `day`."""
        known_f, params = known_sql(known_at, "f")
        known_p, _ = known_sql(known_at, "p")
        params["d"] = day.isoformat()
        accrued = "f.accrued_on = :d" if accrued_that_day else "+f.accrued_on <= :d"
        where = _filters(params, list(statuses), list(kinds), changed_since)
        # A fine settled by the day is read as stored (`_settled_fine`), from the index
        # alone; only the others (a few in a thousand) are built from their row, their
        # amounts, payments and cited events as of the day.
        built = f"""(SELECT json_object(
    'student_id', student_id, 'kind', kind, 'status', CASE WHEN amount IS NULL THEN 'accrued'
      WHEN paid >= amount THEN 'paid' ELSE 'imposed' END, 'accrued_on', accrued_on,
    'amount_min_ntd', low, 'amount_max_ntd', high, 'amount_ntd', amount, 'paid_ntd', paid,
    'offense', offense, 'rule', rule, 'caused_by', json(cited))
  FROM (
    SELECT g.student_id, g.kind, g.rule, g.accrued_on, g.offense,
      CASE WHEN g.overstay_valid_until IS NULL THEN g.amount_min ELSE rm_overstay_ntd(
        g.accrued_on, g.overstay_valid_until, g.overstay_last_day, :d, 0) END AS low,
      CASE WHEN g.overstay_valid_until IS NULL THEN g.amount_max ELSE rm_overstay_ntd(
        g.accrued_on, g.overstay_valid_until, g.overstay_last_day, :d, 1) END AS high,
      CASE WHEN g.imposed_on IS NOT NULL AND g.imposed_on <= :d THEN g.imposed_amount
      END AS amount,
      (SELECT COALESCE(SUM(p.amount), 0) FROM rm_payments p
       WHERE p.student_id = g.student_id AND p.fine_n = g.n AND p.paid_on <= :d
       AND {known_p}) AS paid,
      ({CITED_SQL.replace("caused_by", "g.caused_by")}) AS cited
    FROM rm_fines g WHERE g.rowid = f.rowid))"""
        sql = f"""
SELECT * FROM (
  SELECT *, COALESCE(settled, doc ->> '$.status') AS status FROM (
    SELECT f.student_id, f.n, f.kind, CASE WHEN f.settled_on <= :d THEN f.settled_status END
      AS settled, CASE WHEN f.settled_on <= :d THEN f.settled_doc ELSE {built} END AS doc
    FROM rm_fines f WHERE {known_f} AND {accrued}
  )
)
WHERE {where}"""
        return sql, params

    def _page(
        self,
        sql: str,
        params: dict[str, Any],
        limit: int | None,
        offset: int,
        order: Sequence[str] = (),
        *,
        sort_here: bool = False,
    ) -> Iterator[str]:
        """The JSON texts of `sql`'s rows in `order`, then (student, number), one page if `limit`.

        `order` names fields of the row's JSON (`due_on`, `-accrued_on` for descending);
        empty values sort last either way. `sort_here`: a whole list in the usual order
        is sorted in Python when short (`SORT_HERE`), for queries SQLite would sort.
        """
        if sort_here and limit is None and offset == 0 and not order:
            docs = self._sorted_here(sql, params)
            if docs is not None:
                yield from docs
                return
        params = params | {"limit": -1 if limit is None else limit, "offset": offset}
        keys = "".join(_order_key(field) for field in order)
        cursor = self.db.conn.execute(
            f"SELECT doc FROM ({sql}) ORDER BY {keys}student_id, n LIMIT :limit OFFSET :offset",
            params,
        )
        while True:
            rows = cursor.fetchmany(1000)
            if not rows:
                return
            for (doc,) in rows:
                yield doc

    def _sorted_here(self, sql: str, params: dict[str, Any]) -> list[str] | None:
        """`sql`'s JSON texts in (student, number) order, sorted here; None past `SORT_HERE`."""
        cursor = self.db.conn.execute(f"SELECT student_id, n, doc FROM ({sql})", params)
        try:
            rows = cursor.fetchmany(SORT_HERE + 1)
        finally:
            cursor.close()
        if len(rows) > SORT_HERE:
            return None
        rows.sort()  # as SQLite sorts: UTF-8 byte order is code point order
        return [doc for _, _, doc in rows]

    def _count(self, sql: str, params: dict[str, Any]) -> int:
        return int(self.db.conn.execute(f"SELECT COUNT(*) FROM ({sql})", params).fetchone()[0])

    def task_rows(
        self,
        day: date,
        statuses: Iterable[str] = (),
        kinds: Iterable[str] = (),
        *,
        known_at: datetime | None = None,
        changed_since: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
        due_between: tuple[date, date] | None = None,
        order: Sequence[str] = (),
    ) -> Iterator[str]:
        """Each task that existed on `day` as one JSON text (built by SQLite), in order.

        `due_between` keeps the tasks due in that closed range of days; `order` sorts by
        fields of the task (see `_page`) before the usual (student, number) order.
        """
        sql, params = self._tasks_sql(day, statuses, kinds, known_at, changed_since, due_between)
        return self._page(sql, params, limit, offset, order, sort_here=True)

    def count_tasks(
        self,
        day: date,
        statuses: Iterable[str] = (),
        kinds: Iterable[str] = (),
        *,
        known_at: datetime | None = None,
        changed_since: datetime | None = None,
        due_between: tuple[date, date] | None = None,
    ) -> int:
        """How many rows `task_rows` gives without a limit."""
        return self._count(
            *self._tasks_sql(day, statuses, kinds, known_at, changed_since, due_between)
        )

    def tasks_on(
        self,
        day: date,
        statuses: Iterable[str] = (),
        kinds: Iterable[str] = (),
        *,
        known_at: datetime | None = None,
        changed_since: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Every task that existed on `day`, with its status that day, as known at `known_at`."""
        rows = self.task_rows(day, statuses, kinds, known_at=known_at, changed_since=changed_since)
        return json.loads("[" + ",".join(rows) + "]")

    def fine_rows(
        self,
        day: date,
        statuses: Iterable[str] = (),
        *,
        accrued_that_day: bool = False,
        known_at: datetime | None = None,
        changed_since: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
        kinds: Iterable[str] = (),
        order: Sequence[str] = (),
    ) -> Iterator[str]:
        """Each fine accrued by `day` (or only on it) as one JSON text, in order."""
        sql, params = self._fines_sql(
            day, statuses, accrued_that_day, known_at, changed_since, kinds
        )
        return self._page(sql, params, limit, offset, order)

    def count_fines(
        self,
        day: date,
        statuses: Iterable[str] = (),
        *,
        accrued_that_day: bool = False,
        known_at: datetime | None = None,
        changed_since: datetime | None = None,
        kinds: Iterable[str] = (),
    ) -> int:
        """How many rows `fine_rows` gives without a limit."""
        return self._count(
            *self._fines_sql(day, statuses, accrued_that_day, known_at, changed_since, kinds)
        )

    def _overstays_sql(self, day: date, known_at: datetime | None) -> tuple[str, dict[str, Any]]:
        """SELECT student_id, n, doc of the overstays unresolved on `day` (status `overstay`)."""
        known, params = known_sql(known_at)
        params["d"] = day.isoformat()
        sql = f"""
SELECT student_id, k AS n, json_object(
    'student_id', student_id, 'since', since, 'valid_until', valid_until,
    'last_day', last_day) AS doc
FROM rm_overstays
WHERE since <= :d AND (resolved_on IS NULL OR resolved_on > :d) AND {known}"""
        return sql, params

    def overstay_rows(
        self,
        day: date,
        *,
        known_at: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
        order: Sequence[str] = (),
    ) -> Iterator[str]:
        """Each overstay unresolved on `day` (`student_id`, `since`, `valid_until`, `last_day`:
        its frozen last day, null while it runs) as one JSON text, as known at `known_at`.

        Days, fine and whether the student can reapply are the student view's (`view()`).
        """
        sql, params = self._overstays_sql(day, known_at)
        return self._page(sql, params, limit, offset, order)

    def count_overstays(self, day: date, *, known_at: datetime | None = None) -> int:
        """How many rows `overstay_rows` gives without a limit."""
        return self._count(*self._overstays_sql(day, known_at))

    def students_with_prefix(self, prefix: str, limit: int = 50) -> list[str]:
        """The student ids (of stored students) that start with `prefix`, in order."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.db.execute(
            "SELECT student_id FROM rm_students WHERE student_id LIKE :p ESCAPE '\\' "
            "ORDER BY student_id LIMIT :limit",
            {"p": escaped + "%", "limit": limit},
        ).fetchall()
        return [sid for (sid,) in rows]

    def fines_on(
        self,
        day: date,
        statuses: Iterable[str] = (),
        *,
        accrued_that_day: bool = False,
        known_at: datetime | None = None,
        changed_since: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Every fine accrued by `day` (or only on it), with its amounts and status that day."""
        rows = self.fine_rows(
            day,
            statuses,
            accrued_that_day=accrued_that_day,
            known_at=known_at,
            changed_since=changed_since,
        )
        return json.loads("[" + ",".join(rows) + "]")


def _filters(
    params: dict[str, Any],
    statuses: list[str],
    kinds: list[str],
    changed_since: datetime | None,
) -> str:
    """The WHERE of a population query's outer SELECT (its parameters added to `params`)."""
    where = ["1=1"]
    if statuses:
        where.append(f"status IN ({','.join(f':s{i}' for i in range(len(statuses)))})")
        params.update({f"s{i}": s for i, s in enumerate(statuses)})
    if kinds:
        where.append(f"kind IN ({','.join(f':k{i}' for i in range(len(kinds)))})")
        params.update({f"k{i}": k for i, k in enumerate(kinds)})
    if changed_since is not None:
        where.append("student_id IN (SELECT student_id FROM rm_changes WHERE at > :since)")
        params["since"] = moment_text(changed_since)
    return " AND ".join(where)


_ORDERABLE = re.compile(r"-?[a-z_]{1,32}")


def _order_key(field: str) -> str:
    """One ORDER BY term for a field of the row's JSON (`-field`: descending), nulls last."""
    if not _ORDERABLE.fullmatch(field):
        raise ValueError(f"cannot sort by {field!r}")
    name, descending = field.lstrip("-"), field.startswith("-")
    value = f"doc ->> '$.{name}'"
    return f"{value} IS NULL, {value}{' DESC' if descending else ''}, "


def json_array(docs: Iterable[str], batch: int = 1000) -> Iterator[str]:
    """JSON texts as the parts of one JSON array, one element per line (for streaming).

    A part holds up to `batch` elements: a server sends each part as a message of its
    own, and one message per element cost more than the query.
    """
    head, parts = "[\n", []
    for doc in docs:
        parts.append(doc)
        if len(parts) == batch:
            yield head + ",\n".join(parts)
            head, parts = ",\n", []
    if parts:
        yield head + ",\n".join(parts)
        head = ",\n"
    yield "[]\n" if head == "[\n" else "\n]\n"
