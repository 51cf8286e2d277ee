"""The population lists of the staff app: what each shows, its filters, sorts and CSV.

Every list is asked of the read models as of a day and as known at a moment, one page at
a time (the counts and the order come from SQLite); the overstays' days, fine and
"can reapply" are the student view's (`projections.engine.view`) for the rows shown.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from projections import dates
from projections.readmodel import ReadModel
from projections.rules import TASK_KINDS
from web import i18n
from web.labels import FINE_NAMES

TASK_STATUSES = ("upcoming", "open", "overdue", "done", "done_late", "cancelled")
FINE_STATUSES = ("accrued", "imposed", "paid")
OUTSTANDING = ("accrued", "imposed")
# A cell that a spreadsheet would read as a formula is written as text (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
BOM = "\ufeff"


@dataclass(frozen=True)
class Column:
    """One column: its label key and how to write a row's value (for people and for CSV)."""

    key: str
    value: Callable[[dict[str, Any], str], Any]
    money: bool = False  # an amount in NTD: `NTD 3,000` on the page, a number in CSV


@dataclass(frozen=True)
class ListSpec:
    """A list: its title, which filters it offers, its sorts and its columns."""

    name: str
    title: str
    kinds: tuple[str, ...]
    statuses: tuple[str, ...]
    default_statuses: tuple[str, ...]
    sorts: dict[str, tuple[str, ...]]  # sort key -> JSON fields (see ReadModel._page)
    columns: tuple[Column, ...]


@dataclass
class Query:
    """One request of a list: day, moment, filters, sort, page."""

    as_of: date
    known_at: datetime | None
    kinds: list[str]
    statuses: list[str]
    sort: str
    page: int
    per_page: int
    days: int = 30


def _days_left(row: dict[str, Any], as_of: date) -> int | None:
    due = row.get("due_on")
    return None if due is None else dates.days_between(as_of, date.fromisoformat(due))


def _outstanding(row: dict[str, Any]) -> int | None:
    """What is left to pay: the imposed amount less payments (None while only accrued)."""
    if row.get("amount_ntd") is None:
        return None
    return max(int(row["amount_ntd"]) - int(row.get("paid_ntd") or 0), 0)


def _sid(row: dict[str, Any], _lang: str) -> str:
    return str(row["student_id"])


TASK_COLUMNS = (
    Column("student_id", _sid),
    Column("task", lambda r, lang: i18n.name("task", r["kind"], lang)),
    Column("state", lambda r, lang: i18n.name("task_status", r["status"], lang)),
    Column("opens_on", lambda r, _: i18n.day(r.get("opens_on"))),
    Column("due_on", lambda r, _: i18n.day(r.get("due_on"))),
    Column("days_left", lambda r, _: r.get("days_left")),
    Column("where", lambda r, lang: i18n.name("place", r.get("where"), lang)),
    Column("fee", lambda r, _: r.get("fee_ntd"), money=True),
    Column("rule", lambda r, _: r["rule"]),
)
FINE_COLUMNS = (
    Column("student_id", _sid),
    Column("fine", lambda r, lang: i18n.name("fine", r["kind"], lang)),
    Column("state", lambda r, lang: i18n.name("fine_status", r["status"], lang)),
    Column("accrued_on", lambda r, _: i18n.day(r["accrued_on"])),
    Column("fine_range", lambda r, _: i18n.ntd_range(r["amount_min_ntd"], r["amount_max_ntd"])),
    Column("imposed", lambda r, _: r.get("amount_ntd"), money=True),
    Column("paid", lambda r, _: r.get("paid_ntd"), money=True),
    Column("outstanding", lambda r, _: r.get("outstanding_ntd"), money=True),
    Column("rule", lambda r, _: r["rule"]),
)
OVERSTAY_COLUMNS = (
    Column("student_id", _sid),
    Column("overstay_since", lambda r, _: i18n.day(r["since"])),
    Column("valid_until", lambda r, _: i18n.day(r["valid_until"])),
    Column("overstay_days", lambda r, _: r.get("days")),
    Column(
        "can_reapply",
        lambda r, lang: (
            "—"
            if r.get("can_reapply") is None
            else i18n.label("yes" if r["can_reapply"] else "no", lang)
        ),
    ),
    Column("overstay_fine", lambda r, _: r.get("fine_ntd"), money=True),
    Column("last_day", lambda r, _: i18n.day(r.get("last_day"))),
)
TASK_SORTS = {
    "student": (),
    "due": ("due_on",),
    "-due": ("-due_on",),
    "kind": ("kind",),
}
LISTS: dict[str, ListSpec] = {
    "overdue": ListSpec(
        "overdue", "list_overdue", tuple(TASK_KINDS), (), ("overdue",), TASK_SORTS, TASK_COLUMNS
    ),
    "due-soon": ListSpec(
        "due-soon",
        "list_due_soon",
        tuple(TASK_KINDS),
        ("upcoming", "open", "done", "done_late", "cancelled"),
        ("upcoming", "open"),
        {"due": ("due_on",), **TASK_SORTS},
        TASK_COLUMNS,
    ),
    "fines": ListSpec(
        "fines",
        "list_fines",
        tuple(FINE_NAMES),
        FINE_STATUSES,
        OUTSTANDING,
        {
            "student": (),
            "accrued": ("accrued_on",),
            "-accrued": ("-accrued_on",),
            "kind": ("kind",),
        },
        FINE_COLUMNS,
    ),
    "overstays": ListSpec(
        "overstays",
        "list_overstays",
        (),
        (),
        (),
        {"student": (), "since": ("since",), "-since": ("-since",)},
        OVERSTAY_COLUMNS,
    ),
}
SORT_LABELS = {
    "student": "sort_student",
    "due": "sort_due",
    "-due": "sort_due_desc",
    "kind": "sort_kind",
    "accrued": "sort_accrued",
    "-accrued": "sort_accrued_desc",
    "since": "sort_since",
    "-since": "sort_since_desc",
}


def _docs(
    spec: ListSpec, model: ReadModel, q: Query, limit: int | None, offset: int
) -> Iterator[str]:
    order = spec.sorts[q.sort]
    if spec.name in ("overdue", "due-soon"):
        return model.task_rows(
            q.as_of,
            q.statuses,
            q.kinds,
            known_at=q.known_at,
            limit=limit,
            offset=offset,
            due_between=_due_window(q) if spec.name == "due-soon" else None,
            order=order,
        )
    if spec.name == "fines":
        return model.fine_rows(
            q.as_of,
            q.statuses,
            known_at=q.known_at,
            kinds=q.kinds,
            limit=limit,
            offset=offset,
            order=order,
        )
    return model.overstay_rows(
        q.as_of, known_at=q.known_at, limit=limit, offset=offset, order=order
    )


def _due_window(q: Query) -> tuple[date, date]:
    return q.as_of, dates.days_after(q.as_of, q.days)


def count(spec: ListSpec, model: ReadModel, q: Query) -> int:
    """How many rows the list has (all pages)."""
    if spec.name in ("overdue", "due-soon"):
        return model.count_tasks(
            q.as_of,
            q.statuses,
            q.kinds,
            known_at=q.known_at,
            due_between=_due_window(q) if spec.name == "due-soon" else None,
        )
    if spec.name == "fines":
        return model.count_fines(q.as_of, q.statuses, known_at=q.known_at, kinds=q.kinds)
    return model.count_overstays(q.as_of, known_at=q.known_at)


def rows(
    spec: ListSpec,
    model: ReadModel,
    q: Query,
    *,
    limit: int | None,
    offset: int,
    overstay_of: Callable[[str], dict[str, Any] | None],
) -> Iterator[dict[str, Any]]:
    """The list's rows (as JSON objects, with the derived columns filled in)."""
    for doc in _docs(spec, model, q, limit, offset):
        row = json.loads(doc)
        if spec.name in ("overdue", "due-soon"):
            row["days_left"] = _days_left(row, q.as_of)
        elif spec.name == "fines":
            row["outstanding_ntd"] = _outstanding(row)
        else:
            found = overstay_of(row["student_id"]) or {}
            row.update(
                days=found.get("days"),
                can_reapply=found.get("can_reapply"),
                fine_ntd=found.get("fine_ntd"),
            )
        yield row


def safe_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting with = + - @ gets a '."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def csv_lines(spec: ListSpec, found: Iterable[dict[str, Any]], lang: str) -> Iterator[str]:
    """The list as CSV text (header in `lang`), a few rows at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # the default dialect ends lines with CRLF (RFC 4180)
    writer.writerow([safe_cell(i18n.label(c.key, lang)) for c in spec.columns])
    for n, row in enumerate(found, start=1):
        writer.writerow([safe_cell(c.value(row, lang)) for c in spec.columns])
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
