"""What a message about one alert tells one student, as data: the input of every channel.

A `Notice` joins an alert with the day it falls on, the student's contact as of that day
(`projections.contact`) and the details of its task or fine from the student's view
(`projections.engine.view`: the fee, where to go, the documents). It holds no wording of
its own beyond the shared names (`projections.wording`); templates turn it into text.

Students are named by their student id: the feed contract (SPEC §2) carries no personal
name, and none is invented.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date

from projections import dates
from projections.contact import Contact, contact_on
from projections.engine import DerivationError, view
from projections.models import StudentView
from projections.rules import RuleBook
from projections.wording import MILESTONE_NAMES, WHERE_DIRECTIONS, Bilingual, Lang
from scheduler.alert import Alert
from scheduler.alerts import alert_key
from scheduler.messages import language_order, title_of
from timeline.facts import Fact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    """One alert for one student, with everything its messages say."""

    alert: Alert
    day: date
    contact: Contact | None
    langs: tuple[Lang, Lang]
    # The task's (or fine's) name, as the staff app names it.
    title: Bilingual
    milestone: Bilingual
    due_on: date | None
    # Calendar days from `day` to `due_on` (negative: overdue); None without a due day.
    days_left: int | None
    fee_ntd: int | None = None
    where: Bilingual | None = None
    documents: tuple[Bilingual, ...] = ()
    # A fine's statutory range (low, high), or the amount the NIA imposed (equal ends).
    amount_ntd: tuple[int, int] | None = None
    overstay_days: int | None = None
    rule: str = ""

    @property
    def student_id(self) -> str:
        """The student the alert is about (their only name in the data)."""
        return self.alert.student_id

    @property
    def email(self) -> str | None:
        """The student's e-mail address on the day, if on file."""
        return self.contact.email if self.contact else None

    @property
    def line_user_id(self) -> str | None:
        """The student's LINE user id on the day, if on file."""
        return self.contact.line_user_id if self.contact else None


def notice_for(
    alert: Alert, day: date, student: StudentView | None, contact: Contact | None
) -> Notice:
    """The notice of `alert` on `day`, with the details `student` (the view as of `day`) has."""
    base = Notice(
        alert=alert,
        day=day,
        contact=contact,
        langs=language_order(contact),
        title=title_of(alert.task),
        milestone=MILESTONE_NAMES.get(
            alert.milestone, {"zh": alert.milestone, "en": alert.milestone}
        ),
        due_on=alert.due_on,
        days_left=dates.days_between(day, alert.due_on) if alert.due_on else None,
        rule=alert.rule,
    )
    if student is None:
        return base
    if alert.milestone == "accrued":
        for fine in student.fines:
            if fine.kind == alert.task and fine.accrued_on == day:
                low, high = fine.amount_min_ntd, fine.amount_max_ntd
                if fine.amount_ntd is not None:
                    low = high = fine.amount_ntd
                return replace(base, amount_ntd=(low, high))
        return base
    if alert.task == "overstay":
        return replace(base, overstay_days=student.overstay.days if student.overstay else None)
    due = alert.due_on.isoformat() if alert.due_on else None
    candidates = [t for t in student.tasks if t.kind == alert.task and t.due_on == alert.due_on]
    # The task the alert was made from: the one its key names (first cause), else the first
    # of the same kind and due day.
    exact = [
        t
        for t in candidates
        if alert_key(
            alert.student_id, t.kind, t.caused_by[0] if t.caused_by else "-", alert.milestone, due
        )
        == alert.key
    ]
    task = (exact or candidates or [None])[0]
    if task is None:
        return base
    return replace(
        base,
        fee_ntd=task.fee_ntd,
        where=WHERE_DIRECTIONS.get(task.where, {"zh": task.where, "en": task.where}),
        documents=tuple({"zh": d.zh, "en": d.en} for d in task.documents),
    )


class Students:
    """The facts of each student, read once per run: their contact and view on a day.

    `facts_of` returns a student's known facts (e.g. `TimelineStore.facts`); an empty list
    means no student of that id is stored.
    """

    def __init__(self, facts_of: Callable[[str], list[Fact]], rules: RuleBook) -> None:
        self._facts_of = facts_of
        self.rules = rules
        self._facts: dict[str, list[Fact]] = {}

    def facts(self, student_id: str) -> list[Fact]:
        """The student's known facts (cached for this object's life)."""
        if student_id not in self._facts:
            self._facts[student_id] = list(self._facts_of(student_id))
        return self._facts[student_id]

    def known(self, student_id: str) -> bool:
        """Whether any event of the student is stored."""
        return bool(self.facts(student_id))

    def contact(self, student_id: str, day: date) -> Contact | None:
        """The student's contact as of `day` (None when none is on file)."""
        return contact_on(self.facts(student_id), day)

    def view(self, student_id: str, day: date) -> StudentView | None:
        """The student's view as of `day`; None when their facts cannot be derived."""
        facts = self.facts(student_id)
        if not facts:
            return None
        try:
            return view(facts, day, None, self.rules, student_id=student_id)
        except DerivationError:
            # The alert still goes out with what it carries; the details are left out.
            log.warning("notice details left out: the facts of a student cannot be derived")
            return None

    def notice(self, alert: Alert, day: date) -> Notice:
        """The notice of `alert` on `day`, for the alert's student."""
        sid = alert.student_id
        return notice_for(alert, day, self.view(sid, day), self.contact(sid, day))
