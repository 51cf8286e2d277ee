"""Which alerts fall on a day (SPEC §5), asked of the read models — never a copy of the rules.

Milestones:
- a task's `window_open` on its opens_on when that is before its due day (or it has none),
  unless another alert announces it (`pay_fine_and_reapply`: `overstay_started`);
- `due_in_30`, `due_in_14`, `due_in_7`, `due_in_1`, `due_today` while the task is open;
- `overdue` on the day after the due day; a fine's `accrued` on its accrued_on;
- `overstay_started` on overstay day 1, `reapply_window_closing` on day 25 and
  `reapply_window_closed` on day 30 (while the overstay runs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

from projections import dates
from projections.readmodel import (
    TASK_STATUS_SQL,
    ReadModel,
    first_cause,
    known_sql,
    tasks_on_sql,
)
from scheduler.alert import Alert, Message
from scheduler.messages import fine_message, overstay_message, task_message

log = logging.getLogger(__name__)

DUE_MILESTONES = {30: "due_in_30", 14: "due_in_14", 7: "due_in_7", 1: "due_in_1", 0: "due_today"}
CLOSING_DAY = 25
CLOSED_DAY = 30


@dataclass(frozen=True)
class Milestone:
    """An alert and the thing it is about (for catch-up: the latest per subject wins)."""

    day: date
    subject: str
    alert: Alert


def _part(text: str) -> str:
    """One part of a key or subject: its `%` and `:` escaped, so that parts never run
    together (student `P` with event `Q:x:R` and student `P:x:Q` with event `R` made one
    key, and the second alert was never sent). Ids without either keep their text."""
    if "%" in text or ":" in text:
        return text.replace("%", "%25").replace(":", "%3A")
    return text


def _key(student_id: str, thing: str, cause: str, milestone: str, due: str | None) -> str:
    return f"{_part(student_id)}:{thing}:{_part(cause)}:{milestone}:{due or '-'}"


def _subject(student_id: str, thing: str, cause: str) -> str:
    """What a catch-up keeps one milestone of: the student's task, fine or overstay."""
    return f"{_part(student_id)}:{thing}:{_part(cause)}"


def alert_key(student_id: str, thing: str, cause: str, milestone: str, due: str | None) -> str:
    """The stable key of an alert: `student:task:first-cause-event:milestone:due_on`
    (a `%` or `:` inside the student or event id written `%25`, `%3A`)."""
    return _key(student_id, thing, cause, milestone, due)


def milestones_on(
    model: ReadModel,
    day: date,
    *,
    log_left_out: bool = True,
    known_at: datetime | None = None,
) -> list[Milestone]:
    """Every milestone that falls on `day`, for every student that can be derived.

    With `known_at`, from the derivations as they were known at that moment (the rows
    believed then), exactly as `show --known-at` derives each student.

    A student whose facts cannot be derived has no rows in the read models, so no alert;
    they are named in a warning (and in `ReadModel.errors()`), never silently dropped.
    """
    failed = model.errors(known_at) if log_left_out else []
    if failed:
        names = ", ".join(row["student_id"] for row in failed[:20])
        more = f" and {len(failed) - 20} more" if len(failed) > 20 else ""
        log.warning(
            "alerts for %s leave out %d student(s) whose facts cannot be derived: %s%s",
            day.isoformat(),
            len(failed),
            names,
            more,
        )
    d = day.isoformat()
    out: list[Milestone] = []
    wanted_due = {dates.days_after(day, n).isoformat(): m for n, m in DUE_MILESTONES.items()}
    overdue_due = dates.previous_day(day).isoformat()
    known, params = known_sql(known_at)
    params |= {"d": d, "overdue": overdue_due}
    params.update({f"w{i}": due for i, due in enumerate(wanted_due)})
    marks = ",".join(f":w{i}" for i in range(len(wanted_due)))
    rows = model.db.execute(
        f"SELECT student_id, kind, rule, opens_on, due_on, place, fee_ntd, caused_by, "
        f"{TASK_STATUS_SQL} AS status FROM {tasks_on_sql(known)} "
        f"WHERE (opens_on = :d OR due_on = :overdue OR due_on IN ({marks}))",
        params,
    ).fetchall()
    for student_id, kind, rule, opens_on, due_on, place, fee, caused_by, status in rows:
        found: list[str] = []
        opening = opens_on == d and status == "open" and (due_on is None or opens_on < due_on)
        if opening:
            found.append("window_open")
        if status == "open" and due_on in wanted_due:
            found.append(wanted_due[due_on])
        if status == "overdue" and due_on == overdue_due:
            found.append("overdue")
        cause = first_cause(caused_by)
        due = date.fromisoformat(due_on) if due_on else None
        for milestone in found:
            zh, en = task_message(kind, milestone, day, due, place, fee, rule)
            out.append(
                Milestone(
                    day,
                    _subject(student_id, kind, cause),
                    Alert(
                        key=_key(student_id, kind, cause, milestone, due_on),
                        student_id=student_id,
                        task=kind,
                        milestone=milestone,
                        due_on=due,
                        rule=rule,
                        message=Message(zh=zh, en=en),
                    ),
                )
            )
    for fine in model.fines_on(day, accrued_that_day=True, known_at=known_at):
        cause = fine["caused_by"][0] if fine["caused_by"] else "-"
        zh, en = fine_message(
            fine["kind"], day, fine["amount_min_ntd"], fine["amount_max_ntd"], fine["rule"]
        )
        out.append(
            Milestone(
                day,
                _subject(fine["student_id"], fine["kind"], cause),
                Alert(
                    key=_key(fine["student_id"], fine["kind"], cause, "accrued", d),
                    student_id=fine["student_id"],
                    task=fine["kind"],
                    milestone="accrued",
                    due_on=None,
                    rule=fine["rule"],
                    message=Message(zh=zh, en=en),
                ),
            )
        )
    closing = dates.days_before(day, CLOSING_DAY).isoformat()
    closed = dates.days_before(day, CLOSED_DAY).isoformat()
    episodes = model.db.execute(
        "SELECT student_id, since, valid_until FROM rm_overstays "
        "WHERE (since = :d OR valid_until IN (:closing, :closed)) "
        "AND (last_day IS NULL OR last_day >= :d) AND (resolved_on IS NULL OR resolved_on > :d) "
        f"AND {known}",
        params | {"closing": closing, "closed": closed},
    ).fetchall()
    for student_id, since, valid_until in episodes:
        if since == d:
            milestone = "overstay_started"
        elif valid_until == closing:
            milestone = "reapply_window_closing"
        else:
            milestone = "reapply_window_closed"
        zh, en = overstay_message(
            milestone, date.fromisoformat(since), day, date.fromisoformat(valid_until)
        )
        out.append(
            Milestone(
                day,
                _subject(student_id, "overstay", since),
                Alert(
                    key=_key(student_id, "overstay", since, milestone, None),
                    student_id=student_id,
                    task="overstay",
                    milestone=milestone,
                    due_on=None,
                    rule="R-OVERSTAY",
                    message=Message(zh=zh, en=en),
                ),
            )
        )
    out.sort(key=lambda m: (m.alert.student_id, m.alert.key))
    return out


FINISHED_STATUSES = ("done", "done_late", "cancelled")


def left_behind(model: ReadModel, milestones: list[Milestone], today: date) -> set[str]:
    """Keys of catch-up milestones (days before `today`) whose subject is over by `today`.

    A task done or cancelled since its milestone's day, or an overstay that ended since
    (the student left, or it was resolved), makes its alert stale: sent late, it would
    remind of something already settled. A fine's `accrued` always stands. A subject the
    read models no longer show on `today` at all is kept (nothing says it is over).
    """
    past = [m for m in milestones if m.day < today and m.alert.milestone != "accrued"]
    if not past:
        return set()
    d = today.isoformat()
    known, params = known_sql(None)
    params |= {"d": d}
    over: dict[str, bool] = {}
    rows = model.db.execute(
        f"SELECT student_id, kind, caused_by, {TASK_STATUS_SQL} AS status "
        f"FROM {tasks_on_sql(known)}",
        params,
    ).fetchall()
    for student_id, kind, caused_by, status in rows:
        subject = _subject(student_id, kind, first_cause(caused_by))
        # Over only when every row of the subject on `today` is finished.
        over[subject] = over.get(subject, True) and status in FINISHED_STATUSES
    episodes = model.db.execute(
        "SELECT student_id, since, (last_day IS NULL OR last_day >= :d) "
        "AND (resolved_on IS NULL OR resolved_on > :d) FROM rm_overstays "
        f"WHERE {known}",
        params,
    ).fetchall()
    for student_id, since, running in episodes:
        subject = _subject(student_id, "overstay", since)
        over[subject] = over.get(subject, True) and not running
    return {m.alert.key for m in past if over.get(m.subject, False)}


def alerts_on(
    model: ReadModel,
    day: date,
    *,
    log_left_out: bool = True,
    known_at: datetime | None = None,
) -> list[Alert]:
    """The alerts that fall on `day` (a pure query of the read models), as known at a moment."""
    return [
        m.alert for m in milestones_on(model, day, log_left_out=log_left_out, known_at=known_at)
    ]
