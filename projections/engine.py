"""The pure projection: facts → the student view, as of a date, as known at a moment.

`view(facts, as_of, known_at, rules, calendar)` replays the facts that counted at
`known_at` and happened on or before `as_of`, in valid-time order, then derives fines,
statuses and the overstay from the state reached. No I/O, no clock, no globals: the same
function serves the CLI, the API, the read models and the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from operator import attrgetter

from projections import dates
from projections.dates import TaiwanCalendar, taiwan_calendar
from projections.models import (
    Anomaly,
    Application,
    Arc,
    Document,
    Fine,
    FinesTotal,
    Overstay,
    StudentView,
    Task,
)
from projections.rules import DEFAULT_RULES, DOCUMENTS, TASK_KINDS, RuleBook
from timeline.clock import EARLIEST_DAY, LATEST_DAY
from timeline.errors import TimelineError
from timeline.facts import Fact, known_facts

APPLY_KINDS = ("apply_arc", "apply_residence")
EXTENSION_KINDS = ("extend_arc", "submit_student_status")
# ARC-bound tasks that a revocation makes moot (R-CEASED).
ALL_KINDS = tuple(TASK_KINDS)
MOOT_ON_REVOCATION = (
    *APPLY_KINDS,
    *EXTENSION_KINDS,
    "replace_arc",
    "update_passport_details",
    "pay_fine_and_reapply",
)


class DerivationError(TimelineError):
    """One student's facts cannot be derived (e.g. a stored date far outside the calendar).

    Raised for that student only: callers that serve a population (read models, alerts)
    catch it per student. The message names the student and the events to correct, never
    a fact's content, so it is safe to show, to log and to store.
    """

    def __init__(self, student_id: str, reason: str, event_ids: list[str]) -> None:
        self.student_id = student_id
        self.reason = reason
        self.event_ids = event_ids
        where = (
            f"; events with a date outside {EARLIEST_DAY}…{LATEST_DAY}: " + ", ".join(event_ids)
            if event_ids
            else ""
        )
        super().__init__(f"cannot derive student {student_id!r}: {reason}{where}")


def out_of_range_events(facts: Iterable[Fact]) -> list[str]:
    """The events that carry a day outside the documented range (the likely culprits)."""
    found = []
    for fact in facts:
        days = [fact.occurred_on, *(v for v in fact.data.values() if isinstance(v, date))]
        if any(not EARLIEST_DAY <= day <= LATEST_DAY for day in days):
            found.append(fact.event_id)
    return found


@dataclass
class _Task:
    kind: str
    rule: str
    trigger_on: date
    opens_on: date | None
    due_on: date | None
    triggers: list[str]
    fee_ntd: int | None = None
    done_on: date | None = None
    done_by: list[str] = field(default_factory=list)
    cancelled_on: date | None = None
    late_fine: str | None = None  # fine kind accrued when not done by the due day
    late_rule: str | None = None
    effective: dict[str, date] = field(default_factory=dict)  # cause → day it began to count
    # Earlier due days replaced later (leave_by set after the task opened): (from, due).
    due_changes: list[tuple[date, date | None]] = field(default_factory=list)
    opens_from: date | None = None  # opens_on learnt from a later fact: known from this day
    where: str | None = None  # None: the kind's usual place (TASK_KINDS)
    # From this day the task can no longer be done (cancelled then; nothing completes it).
    lapses_on: date | None = None

    def due_versions(self) -> list[tuple[date | None, date | None, date | None]]:
        """(known from, known until (exclusive), due day) for each due day the task had.

        The first version's `known from` is None: it holds from the task's trigger day.
        """
        if not self.due_changes:
            return [(None, None, self.due_on)]  # nearly every task: one due day
        dues = [previous for _, previous in self.due_changes] + [self.due_on]
        starts = [self.trigger_on] + [day for day, _ in self.due_changes]
        versions: list[tuple[date | None, date | None, date | None]] = []
        for i, (since, due) in enumerate(zip(starts, dues, strict=True)):
            until = starts[i + 1] if i + 1 < len(starts) else None
            if until == since:
                continue  # replaced the same day: never visible
            versions.append((None if i == 0 else since, until, due))
        return versions

    def cited(self) -> list[tuple[str, date]]:
        """Every event the task cites, with the day from which it counts."""
        causes = [(e, self.effective.get(e, self.trigger_on)) for e in self.triggers]
        return causes + [(e, self.done_on or self.trigger_on) for e in self.done_by]

    def is_pending(self) -> bool:
        return self.done_on is None and self.cancelled_on is None

    def cancel(self, on: date) -> None:
        """Made moot on `on`: the earliest reason wins; a completion before it stands."""
        if self.done_on is not None and self.done_on <= on:
            return
        if self.cancelled_on is None or on < self.cancelled_on:
            self.cancelled_on = on

    def place(self) -> str:
        """Where this task is done: its own place, else its kind's usual one."""
        return self.where or TASK_KINDS[self.kind].where

    def complete(self, on: date, event_id: str) -> None:
        if self.lapses_on is not None and on >= self.lapses_on:
            return  # too late: the task lapsed (cancelled on that day in `finish`)
        if self.is_pending():
            self.done_on = on
            self.done_by.append(event_id)

    def status(self, as_of: date) -> str:
        if self.done_on is not None:
            return "done" if self.due_on is None or self.done_on <= self.due_on else "done_late"
        if self.cancelled_on is not None:
            return "cancelled"
        if self.due_on is not None and as_of > self.due_on:
            return "overdue"
        if self.opens_on is None or as_of < self.opens_on:
            return "upcoming"
        return "open"

    def missed_due_day(self) -> bool:
        """Not done (nor made moot) by the end of its due day."""
        if self.due_on is None:
            return False
        finished = [d for d in (self.done_on, self.cancelled_on) if d is not None]
        return not finished or min(finished) > self.due_on


@dataclass
class _Arc:
    number: str | None
    issued_on: date
    valid_until: date
    basis: str
    event_id: str
    task: _Task | None = None
    ended_on: date | None = None  # revoked (R-CEASED): neither valid nor expiring afterwards


def completes(kind: str, fact: Fact) -> bool:
    """Whether `fact` completes a task of `kind` (SPEC §3's completion table)."""
    kind_of = fact.data.get("application")
    fields = fact.data.get("fields") or ()
    if kind in APPLY_KINDS:
        # An issued initial ARC proves the application was made (by the issue day at latest).
        return (fact.type == "arc_applied" and kind_of in ("initial", "reapplication")) or (
            fact.type == "arc_issued" and kind_of in ("initial", "reapplication", None)
        )
    if kind in EXTENSION_KINDS:
        return fact.type == "arc_applied" and kind_of == "extension"
    if kind == "report_address_change":
        return fact.type == "details_updated" and "address" in fields
    if kind == "report_workplace_change":
        return fact.type == "details_updated" and "employer" in fields
    if kind == "pay_fine_and_reapply":
        return (fact.type == "arc_applied" and kind_of in ("reapplication", "extension")) or (
            fact.type == "arc_issued"
        )
    if kind == "report_passport_loss":
        return fact.type == "passport_replaced" or (
            fact.type == "details_updated" and "passport" in fields
        )
    if kind == "update_passport_details":
        return (fact.type == "details_updated" and "passport" in fields) or (
            fact.type in ("arc_applied", "arc_issued") and kind_of == "extension"
        )
    if kind == "replace_arc":
        return fact.type in ("arc_applied", "arc_issued") and kind_of == "replacement"
    if kind in ("leave_and_reapply_visa", "report_and_surrender_arc"):
        return fact.type == "departed"
    if kind == "reapply_visa":
        return fact.type == "entered" and fact.data.get("visa") == "resident"
    return False


@dataclass
class _Episode:
    """An ARC expiry: an overstay in Taiwan, or an expiry abroad."""

    kind: str  # "overstay" | "expired_abroad"
    since: date
    valid_until: date
    caused_by: list[str]
    end: date | None = None  # last overstay day (frozen at departure / before a new ARC)
    resolved_on: date | None = None
    departed_by: str | None = None
    ceased: bool = False


@dataclass
class _Fine:
    kind: str
    rule: str
    accrued_on: date
    amount_min: int
    amount_max: int
    caused_by: list[str]
    order: tuple[date, ...] = ()
    amount: int | None = None
    paid: int = 0
    offense: int | None = None
    imposed_on: date | None = None
    payments: list[tuple[date, int]] = field(default_factory=list)
    effective: dict[str, date] = field(default_factory=dict)  # money events → their day
    valid_until: date | None = None  # overstay fines: the ARC's last day
    last_day: date | None = None  # overstay fines: frozen last day, None while it runs

    @property
    def outstanding(self) -> int:
        return (self.amount if self.amount is not None else self.amount_min) - self.paid


@dataclass
class _Pending:
    application: str
    applied_on: date
    event_id: str


class _Replay:
    """The state of one student while the facts are replayed in valid-time order."""

    def __init__(self, student_id: str, as_of: date, rules: RuleBook, cal: TaiwanCalendar) -> None:
        self.student_id = student_id
        self.as_of = as_of
        self.rules = rules
        self.cal = cal
        self.in_taiwan: bool | None = None
        self.last_entry: str | None = None
        self.arc: _Arc | None = None
        self.expiry_handled = False
        self.reapply_at_center = False  # A-REAPPLY-AT-CENTER: an ARC expired abroad
        self.pending: list[_Pending] = []
        self.initial_basis = "registration"
        self.registrations: list[tuple[date, str]] = []
        self.revoked_on: date | None = None
        self.surrender: _Task | None = None
        self.episodes: list[_Episode] = []
        self.tasks: list[_Task] = []
        self.money: list[Fact] = []
        # (kind, day, message, events): `view` makes the `Anomaly` models (a rebuild never
        # asks for them, and a pydantic model per anomaly was a measurable part of derive).
        self.anomalies: list[tuple[str, date, str, list[str]]] = []
        self.today: list[Fact] = []  # facts already replayed on the current day

    # -- helpers -------------------------------------------------------------------------
    def add_task(self, task: _Task) -> _Task:
        task.fee_ntd = _fee(task.kind, task.trigger_on, self.rules)
        if task.kind == "apply_arc" and self.reapply_at_center:
            task.where = "service_center"  # A-REAPPLY-AT-CENTER
        self.tasks.append(task)
        # Same-day facts count whatever order they were recorded in: a completion
        # replayed before its trigger on the trigger's own day still completes it.
        for earlier in self.today:
            if earlier.occurred_on == task.trigger_on and completes(task.kind, earlier):
                task.complete(earlier.occurred_on, earlier.event_id)
                break
        return task

    def add_period_task(
        self, kind: str, rule_id: str, fact: Fact, late_fine: str, late_rule: str
    ) -> _Task:
        """A task due "within N days" of `fact` (N from the rule in force that day)."""
        on = fact.occurred_on
        days = self.rules[rule_id].value("days", on)
        return self.add_task(
            _Task(
                kind,
                rule_id,
                on,
                on,
                self.deadline(on, days),
                [fact.event_id],
                late_fine=late_fine,
                late_rule=late_rule,
            )
        )

    def complete_with(self, fact: Fact, kinds: Iterable[str]) -> None:
        """Complete the pending tasks of `kinds` that `fact` completes."""
        for task in self.pending_tasks(kinds, fact.occurred_on):
            if completes(task.kind, fact):
                task.complete(fact.occurred_on, fact.event_id)

    def pending_tasks(self, kinds: Iterable[str], on: date) -> list[_Task]:
        # `is_pending` inlined, and no kind test for ALL_KINDS (every task has one of them):
        # this runs for most facts.
        if kinds is ALL_KINDS:
            return [
                t
                for t in self.tasks
                if t.done_on is None and t.cancelled_on is None and t.trigger_on <= on
            ]
        kinds = tuple(kinds)
        return [
            t
            for t in self.tasks
            if t.kind in kinds
            and t.done_on is None
            and t.cancelled_on is None
            and t.trigger_on <= on
        ]

    def anomaly(self, kind: str, on: date, message: str, events: list[str]) -> None:
        self.anomalies.append((kind, on, message, events))

    def deadline(self, start: date, days: int) -> date:
        due = dates.days_after(start, days)
        return self.cal.roll_forward(due) if self.rules.deadline_rollover else due

    def holds_valid_arc(self, on: date) -> bool:
        arc = self.arc
        return arc is not None and arc.valid_until >= on and arc.ended_on is None

    def pending_initial_application(self, before: date) -> bool:
        """An initial application made before `before` and still undecided."""
        return any(
            p.application in ("initial", "reapplication") and p.applied_on < before
            for p in self.pending
        )

    def current_episode(self, kind: str | None = None) -> _Episode | None:
        for episode in reversed(self.episodes):
            if episode.resolved_on is None and (kind is None or episode.kind == kind):
                return episode
        return None

    # -- time passing --------------------------------------------------------------------
    def advance_to(self, day: date) -> None:
        """Let the ARC expire if its last day is before `day` (R-OVERSTAY, R-EXPIRED-ABROAD)."""
        arc = self.arc
        if arc is None or self.expiry_handled or arc.ended_on is not None:
            return
        first_day_without = dates.next_day(arc.valid_until)
        if first_day_without > day:
            return
        self.expiry_handled = True
        if any(
            p.application == "extension" and p.applied_on <= arc.valid_until for p in self.pending
        ):
            return  # an extension applied for in time and undecided suspends the overstay
        present = self.in_taiwan is not False  # A-PRESENCE
        kind = "overstay" if present else "expired_abroad"
        self.episodes.append(
            _Episode(
                kind=kind,
                since=first_day_without,
                valid_until=arc.valid_until,
                caused_by=[arc.event_id],
            )
        )
        if kind == "overstay":
            # R-OVERSTAY, A-PAY-FINE-TASK: reapply after paying the fine, while under N days.
            under = self.rules["R-OVERSTAY"].value("reapply_under_days", first_day_without)
            self.add_task(
                _Task(
                    "pay_fine_and_reapply",
                    "R-OVERSTAY",
                    first_day_without,
                    first_day_without,
                    dates.days_after(arc.valid_until, under - 1),
                    [arc.event_id],
                    lapses_on=dates.days_after(arc.valid_until, under),
                )
            )
        if kind == "expired_abroad":
            # R-EXPIRED-ABROAD: an ARC that expired abroad cannot be extended any more.
            if arc.task is not None:
                arc.task.cancel(first_day_without)
            self.add_task(
                _Task(
                    "reapply_visa",
                    "R-EXPIRED-ABROAD",
                    first_day_without,
                    first_day_without,
                    None,
                    [arc.event_id],
                )
            )

    # -- facts ---------------------------------------------------------------------------
    def apply(self, fact: Fact) -> None:
        on = fact.occurred_on
        today = self.today
        if today and today[-1].occurred_on != on:
            today = self.today = []
        handler = _HANDLERS.get(fact.type)  # a dict lookup, not getattr of a built name
        if handler is not None:
            handler(self, fact, on)
        today.append(fact)

    def on_entered(self, fact: Fact, on: date) -> None:
        if self.in_taiwan:
            self.anomaly(
                "entered_twice",
                on,
                "entered again with no departure in between",
                [e for e in (self.last_entry, fact.event_id) if e],
            )
        self.in_taiwan = True
        self.last_entry = fact.event_id
        visa = fact.data.get("visa")
        if visa == "resident":
            abroad = self.current_episode("expired_abroad")
            if abroad is not None:
                abroad.resolved_on = on
                self.complete_with(fact, ["reapply_visa"])
                self.reapply_at_center = True
            if self.revoked_on is not None:
                self.revoked_on = None  # a new residence on a new visa
            if self.holds_valid_arc(on):
                return  # R-ENTRIES: multiple entries on a valid ARC
            if self.pending_initial_application(on):
                return  # already applied; the decision is pending
            if not self.pending_tasks(["apply_arc"], on):
                self.add_period_task(
                    "apply_arc", "R-ARC-ENTRY", fact, "late_arc_application", "R-ARC-LATE"
                )
        elif visa == "arc":
            if not self.holds_valid_arc(on):
                self.anomaly(
                    "entered_without_valid_arc",
                    on,
                    "entered on an ARC that was not valid on the day of entry",
                    [fact.event_id] + ([self.arc.event_id] if self.arc else []),
                )
        elif visa == "visitor":
            values = self.rules["R-VISITOR"].on(on)
            code = (fact.data.get("visa_code") or "").upper()
            stay_until = fact.data.get("stay_until")
            if code in values["visa_codes"] and stay_until is not None:
                lead_day = dates.days_before(stay_until, values["days"])
                if self.rules.visitor_reading == "window":
                    opens, due = max(on, lead_day), stay_until
                else:
                    opens, due = on, max(on, lead_day)  # never due before the arrival
                if lead_day < on:  # A-SHORT-STAY
                    self.anomaly(
                        "stay_shorter_than_lead",
                        on,
                        f"the stay ends less than {values['days']} days after the entry: "
                        "apply for residence at once",
                        [fact.event_id],
                    )
                self.add_task(
                    _Task("apply_residence", "R-VISITOR", on, opens, due, [fact.event_id])
                )

    def on_visa_changed(self, fact: Fact, on: date) -> None:
        if (
            self.holds_valid_arc(on)
            or self.pending_initial_application(on)
            or self.pending_tasks(["apply_arc"], on)
        ):
            return
        self.add_period_task(
            "apply_arc", "R-ARC-VISACHANGE", fact, "late_arc_application", "R-ARC-LATE"
        )

    def on_registered(self, fact: Fact, on: date) -> None:
        self.registrations.append((on, fact.event_id))

    def on_arc_applied(self, fact: Fact, on: date) -> None:
        application = fact.data.get("application")
        self.pending.append(_Pending(application, on, fact.event_id))
        if application in ("initial", "reapplication"):
            if self.in_taiwan is None:
                self.in_taiwan = True  # A-PRESENCE
            if application == "initial":
                self.initial_basis = fact.data.get("basis") or "registration"
        self.complete_with(fact, ALL_KINDS)

    def on_arc_issued(self, fact: Fact, on: date) -> None:
        valid_until: date = fact.data.get("valid_until")
        application = fact.data.get("application") or "initial"
        self.pending = [p for p in self.pending if p.applied_on > on]
        if self.in_taiwan is None:
            self.in_taiwan = True  # A-PRESENCE
        for episode in self.episodes:
            if episode.resolved_on is None:
                episode.resolved_on = on
                if episode.kind == "overstay" and episode.end is None:
                    episode.end = dates.previous_day(on)
        if self.revoked_on is not None:
            self.revoked_on = None  # a new ARC after a revocation: a new residence
        self.reapply_at_center = False
        self.complete_with(fact, ALL_KINDS)
        previous = self.arc
        if previous is not None and previous.valid_until == valid_until:
            previous.number = fact.data.get("arc_number") or previous.number
            previous.issued_on = on
            return  # a new card for the same period (e.g. a replacement)
        if previous is not None and previous.task is not None:
            if valid_until > previous.valid_until:
                previous.task.complete(on, fact.event_id)
            elif previous.task.is_pending():
                previous.task.cancel(on)
                self.anomaly(
                    "valid_until_shortened",
                    on,
                    "an ARC was issued with an earlier valid_until than the one held",
                    [previous.event_id, fact.event_id],
                )
        basis = (
            "admission_notice"
            if (application == "initial" and self.initial_basis == "admission_notice")
            else "registration"
        )
        # An extension keeps the card's number unless the NIA sends a new one.
        number = fact.data.get("arc_number") or (previous.number if previous else None)
        arc = _Arc(number, on, valid_until, basis, fact.event_id)
        if basis == "admission_notice":
            arc.task = self.add_task(
                _Task(
                    "submit_student_status", "R-ADMISSION", on, None, valid_until, [fact.event_id]
                )
            )
        else:
            months = self.rules["R-EXTEND"].value("months", on)
            # An ARC valid for under 3 months: its window opens when it is issued.
            opens = max(dates.add_months(valid_until, -months), on)
            arc.task = self.add_task(
                _Task(
                    "extend_arc",
                    "R-EXTEND",
                    on,
                    opens,
                    valid_until,
                    [fact.event_id],
                )
            )
        self.arc = arc
        self.expiry_handled = False
        self.initial_basis = "registration"

    def on_address_changed(self, fact: Fact, on: date) -> None:
        if self.in_taiwan is None:
            self.in_taiwan = True  # A-PRESENCE
        self.add_period_task(
            "report_address_change", "R-ADDRESS", fact, "late_details_update", "R-DETAILS-LATE"
        )

    def on_workplace_changed(self, fact: Fact, on: date) -> None:
        if self.in_taiwan is None:
            self.in_taiwan = True  # A-PRESENCE
        self.add_period_task(
            "report_workplace_change", "R-WORKPLACE", fact, "late_details_update", "R-DETAILS-LATE"
        )

    def on_details_updated(self, fact: Fact, on: date) -> None:
        self.complete_with(fact, ALL_KINDS)

    def on_arc_lost(self, fact: Fact, on: date) -> None:
        self.add_task(_Task("replace_arc", "R-ARC-LOST", on, on, None, [fact.event_id]))

    def on_passport_lost(self, fact: Fact, on: date) -> None:
        self.add_task(_Task("report_passport_loss", "R-PASSPORT", on, on, None, [fact.event_id]))

    def on_passport_replaced(self, fact: Fact, on: date) -> None:
        self.complete_with(fact, ALL_KINDS)
        due = self.arc.valid_until if self.holds_valid_arc(on) and self.arc else None
        self.add_task(
            _Task(
                "update_passport_details",
                "R-PASSPORT",
                on,
                on,
                due,
                [fact.event_id],
                late_fine="late_details_update",
                late_rule="R-DETAILS-LATE",
            )
        )

    def on_departed(self, fact: Fact, on: date) -> None:
        if self.in_taiwan is False:
            self.anomaly(
                "departed_while_abroad",
                on,
                "departed with no entry since the last departure",
                [fact.event_id],
            )
        self.in_taiwan = False
        overstay = self.current_episode("overstay")
        if overstay is not None and overstay.end is None:
            overstay.end = on
            overstay.departed_by = fact.event_id
        self.complete_with(fact, ["report_and_surrender_arc"])
        # R-ARC-ENTRY: every arrival starts its own clock; a fine already accrued stays
        # (no fine when still within the period: A-DEPARTURE-BEFORE-DUE).
        for task in self.pending_tasks((*APPLY_KINDS, "pay_fine_and_reapply"), on):
            task.cancel(on)

    def revoke(self, fact: Fact, on: date, leave_by: date | None) -> None:
        if self.arc is not None and self.arc.ended_on is None:
            self.arc.ended_on = on
        if self.revoked_on is None:
            self.revoked_on = on
            for task in self.pending_tasks(MOOT_ON_REVOCATION, on):
                task.cancel(on)
            for episode in self.episodes:
                episode.ceased = True
        if self.surrender is None or not self.surrender.is_pending():
            self.surrender = self.add_task(
                _Task("report_and_surrender_arc", "R-CEASED", on, on, leave_by, [fact.event_id])
            )
        else:
            self.surrender.triggers.append(fact.event_id)
            self.surrender.effective[fact.event_id] = on
            if leave_by is not None and leave_by != self.surrender.due_on:
                self.surrender.due_changes.append((on, self.surrender.due_on))
                self.surrender.due_on = leave_by

    def on_studies_ceased(self, fact: Fact, on: date) -> None:
        self.revoke(fact, on, None)

    def on_arc_revoked(self, fact: Fact, on: date) -> None:
        self.revoke(fact, on, fact.data.get("leave_by"))

    def on_fine_imposed(self, fact: Fact, on: date) -> None:
        self.money.append(fact)

    on_fine_paid = on_fine_imposed

    # -- derivation at as_of ---------------------------------------------------------------
    def finish(self) -> tuple[list[_Fine], _OpenOverstay | None]:
        """Derive overstay, its task and all fines as of `as_of`.

        The unresolved overstay comes back as its parts (its view is built on demand by
        `Derivation.overstay`: a rebuild never asks for it).
        """
        self.advance_to(self.as_of)
        fines: list[_Fine] = []
        overstay_open: tuple[date, int, bool] | None = None
        overstay_fine: _Fine | None = None
        for episode in self.episodes:
            if episode.kind != "overstay":
                continue
            last_day = episode.end if episode.end is not None else self.as_of
            days = dates.days_between(episode.valid_until, last_day)
            if days <= 0:
                continue
            rule = self.rules["R-OVERSTAY"].on(episode.since)
            low, high = _overstay_amount(rule, days)
            fine = _Fine(
                "overstay",
                "R-OVERSTAY",
                episode.since,
                low,
                high,
                list(episode.caused_by),
                order=(episode.since,),
                valid_until=episode.valid_until,
                last_day=episode.end,
            )
            fines.append(fine)
            day_limit = dates.days_after(episode.valid_until, rule["reapply_under_days"])
            if last_day >= day_limit:
                task = self.add_task(
                    _Task(
                        "leave_and_reapply_visa",
                        "R-OVERSTAY",
                        day_limit,
                        day_limit,
                        None,
                        list(episode.caused_by),
                    )
                )
                if episode.departed_by is not None:
                    task.complete(last_day, episode.departed_by)
                elif episode.resolved_on is not None:
                    task.cancel(episode.resolved_on)
                # From day 30 the ARC can no longer be extended or reapplied for here.
                for moot in self.tasks:
                    if moot.kind in EXTENSION_KINDS and moot.due_on == episode.valid_until:
                        moot.cancel(day_limit)
            if episode.resolved_on is None:
                # The view is built once its fine is known (after impositions, below).
                overstay_open = (
                    episode.since,
                    days,
                    days < rule["reapply_under_days"] and not episode.ceased,
                )
                overstay_fine = fine
        for task in self.tasks:
            if task.lapses_on is not None and task.lapses_on <= self.as_of:
                task.cancel(task.lapses_on)
            if task.kind == "submit_student_status" and task.opens_on is None:
                task.opens_on = self._registration_after(task.trigger_on)
                task.opens_from = task.opens_on  # known once the registration happened
            if task.late_fine and task.missed_due_day() and task.due_on is not None:
                accrued = dates.next_day(task.due_on)
                if accrued <= self.as_of:
                    values = self.rules[task.late_rule or ""].on(task.trigger_on)
                    fines.append(
                        _Fine(
                            task.late_fine,
                            task.late_rule or "",
                            accrued,
                            values.get("min_ntd", 0),
                            values.get("max_ntd", 0),
                            list(task.triggers),
                            order=(accrued, task.trigger_on),
                        )
                    )
        fines.sort(key=_FINE_ORDER)
        self._number_offenses(fines)
        self._apply_money(fines)
        if overstay_open is not None and overstay_fine is not None:
            return fines, (*overstay_open, overstay_fine)
        return fines, None

    def _registration_after(self, day: date) -> date | None:
        after = [d for d, _ in self.registrations if d >= day]
        if after:
            return min(after)
        if any(d <= day for d, _ in self.registrations):
            return day  # registered while the application was pending: evidence exists
        return None

    def _number_offenses(self, fines: list[_Fine]) -> None:
        count = 0
        for fine in fines:
            if fine.kind != "late_details_update":
                continue
            count += 1
            tiers = self.rules["R-DETAILS-LATE"].value("tiers", fine.accrued_on)
            fine.offense = count
            fine.amount_min = fine.amount_max = tiers[min(count, len(tiers)) - 1]

    def _fine_floor(self, fine: _Fine, on: date) -> int:
        """The least amount the NIA could have decided for `fine` by day `on` (R-FINES).

        An overstay fine's tier is the one reached on that day (days frozen at departure).
        """
        if fine.kind != "overstay" or fine.valid_until is None:
            return fine.amount_min
        last = on if fine.last_day is None else min(on, fine.last_day)
        days = max(dates.days_between(fine.valid_until, last), 1)
        return _overstay_amount(self.rules["R-OVERSTAY"].on(fine.accrued_on), days)[0]

    def _apply_money(self, fines: list[_Fine]) -> None:
        for fact in sorted(self.money, key=_FACT_ORDER):
            on, kind, amount = fact.occurred_on, fact.data.get("fine"), fact.data.get("amount_ntd")
            if fact.type == "fine_imposed":
                candidates = [
                    f for f in fines if f.kind == kind and f.accrued_on <= on and f.amount is None
                ]
                if candidates:
                    target = max(candidates, key=lambda f: f.accrued_on)
                    target.amount = amount
                    target.imposed_on = on
                    target.caused_by.append(fact.event_id)
                    target.effective[fact.event_id] = on
                else:
                    fines.append(
                        _Fine(
                            kind,
                            "R-FINES",
                            on,
                            amount,
                            amount,
                            [fact.event_id],
                            order=(on,),
                            amount=amount,
                            imposed_on=on,
                        )
                    )
                    self.anomaly(
                        "fine_imposed_without_accrued_fine",
                        on,
                        f"a {kind} fine was imposed but no such fine had accrued",
                        [fact.event_id],
                    )
                continue
            remaining = amount
            targets = [
                f
                for f in fines
                if f.accrued_on <= on and f.outstanding > 0 and (kind is None or f.kind == kind)
            ]
            for target in sorted(targets, key=lambda f: f.order):
                if remaining <= 0:
                    break
                paid_so_far = target.paid + remaining
                if target.amount is None and paid_so_far >= self._fine_floor(target, on):
                    # Paying a fine nobody told us was imposed: what was paid is the amount,
                    # once it lies in the statutory range (R-FINES); below it, a part payment.
                    target.amount = min(paid_so_far, target.amount_max) or paid_so_far
                    target.imposed_on = on
                share = min(remaining, target.outstanding)
                target.paid += share
                target.payments.append((on, share))
                remaining -= share
                target.caused_by.append(fact.event_id)
                target.effective[fact.event_id] = on
            if remaining > 0:
                self.anomaly(
                    "payment_without_fine",
                    on,
                    f"NTD {remaining} paid with no outstanding fine to apply it to",
                    [fact.event_id],
                )


_FINE_ORDER = attrgetter("order")
_TRIGGER_ORDER = attrgetter("trigger_on")
_FACT_ORDER = attrgetter("occurred_on", "recorded_at", "seq")

# Fact type → its `_Replay.on_<type>` method (types without one change nothing).
_HANDLERS: dict[str, Callable[[_Replay, Fact, date], None]] = {
    name.removeprefix("on_"): method
    for name, method in vars(_Replay).items()
    if name.startswith("on_") and callable(method)
}


def _overstay_amount(rule: dict, days: int) -> tuple[int, int]:
    tiers = rule.get("tiers")
    if not tiers:
        return rule["min_ntd"], rule["max_ntd"]
    for bound, amount in tiers:
        if bound is None or days <= bound:
            return amount, amount
    raise AssertionError("the last overstay tier has no bound")


def _fee(kind: str, on: date, rules: RuleBook) -> int | None:
    fee_rule = TASK_KINDS[kind].fee_rule
    if fee_rule is None:
        return None
    return rules[fee_rule].on(on).get("fee_ntd")


def _status(replay: _Replay, tasks: list[Task], overstay: Overstay | None) -> str:
    as_of = replay.as_of
    if replay.revoked_on is not None:
        return "revoked"
    if overstay is not None:
        return "overstay"
    if replay.current_episode("expired_abroad") is not None:
        return "expired_abroad"
    statuses = {(t.kind, t.status) for t in tasks}
    if any((k, "overdue") in statuses for k in APPLY_KINDS):
        return "arc_application_overdue"
    if any((k, "open") in statuses for k in APPLY_KINDS):
        return "arc_application_due"
    if replay.pending:
        return "application_pending"
    if any((k, "open") in statuses for k in EXTENSION_KINDS):
        return "extension_window"
    if replay.arc is not None and replay.arc.valid_until >= as_of:
        return "arc_valid"
    return "no_arc"


# An unresolved overstay's first day, its days, whether the student can still reapply,
# and its fine.
_OpenOverstay = tuple[date, int, bool, _Fine]


@dataclass
class Derivation:
    """Everything the replay derived, with full date history (for views and read models)."""

    student_id: str
    as_of: date
    replay: _Replay
    fines: list[_Fine]
    open_overstay: _OpenOverstay | None

    @cached_property
    def overstay(self) -> Overstay | None:
        """The unresolved overstay's view (built when asked for)."""
        if self.open_overstay is None:
            return None
        since, days, can_reapply, fine = self.open_overstay
        return Overstay(
            since=since,
            days=days,
            can_reapply=can_reapply,
            fine_ntd=fine.amount if fine.amount is not None else fine.amount_min,
        )

    @property
    def tasks(self) -> list[_Task]:
        """Tasks in trigger order."""
        return sorted(self.replay.tasks, key=_TRIGGER_ORDER)


def derive(
    facts: Iterable[Fact],
    as_of: date,
    known_at: datetime | None = None,
    rules: RuleBook = DEFAULT_RULES,
    calendar: TaiwanCalendar | None = None,
    *,
    student_id: str | None = None,
) -> Derivation:
    """Replay the facts that counted at `known_at` and happened by `as_of`."""
    cal = calendar or taiwan_calendar()
    counted = known_facts(facts, known_at)
    sid = student_id or (counted[0].student_id if counted else "")
    replay = _Replay(sid, as_of, rules, cal)
    current: Fact | None = None
    try:
        for current in counted:
            on = current.occurred_on
            if on > as_of:
                break
            arc = replay.arc
            # `advance_to` only acts (or, for the last representable day, raises) once the
            # ARC's last day is behind; skip the call while it is not (most facts).
            if arc is not None and (arc.valid_until < on or arc.valid_until == date.max):
                replay.advance_to(on)
            replay.apply(current)
        current = None
        fines, overstay = replay.finish()
    except dates.DateOutOfRangeError as exc:
        raise DerivationError(sid, str(exc), out_of_range_events(counted)) from None
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        # A stored fact of a shape the contract would refuse (written before it tightened,
        # or by a bug): this student only is left out; the message names the event, never
        # its content.
        culprit = f"event {current.event_id!r}" if current is not None else "its facts"
        reason = f"{culprit} could not be applied ({type(exc).__name__}): correct or retract it"
        raise DerivationError(sid, reason, []) from None
    return Derivation(sid, as_of, replay, fines, overstay)


def view(
    facts: Iterable[Fact],
    as_of: date,
    known_at: datetime | None = None,
    rules: RuleBook = DEFAULT_RULES,
    calendar: TaiwanCalendar | None = None,
    *,
    student_id: str | None = None,
) -> StudentView:
    """The student's view as of `as_of` (valid time), as known at `known_at` (record time)."""
    cal = calendar or taiwan_calendar()
    facts = list(facts)
    derived = derive(facts, as_of, known_at, rules, cal, student_id=student_id)
    replay = derived.replay
    tasks = [_task_out(t, as_of) for t in derived.tasks]
    fines_out = [_fine_out(f) for f in derived.fines]
    try:
        application = _application_out(replay, cal)
    except dates.DateOutOfRangeError as exc:
        raise DerivationError(
            derived.student_id, str(exc), out_of_range_events(known_facts(facts, known_at))
        ) from None
    return StudentView(
        student_id=derived.student_id,
        as_of=as_of,
        known_at=known_at,
        status=_status(replay, tasks, derived.overstay),  # type: ignore[arg-type]
        in_taiwan=bool(replay.in_taiwan),
        arc=_arc_out(replay.arc),
        application=application,
        overstay=derived.overstay,
        tasks=tasks,
        fines=fines_out,
        fines_total=fines_total(fines_out),
        anomalies=sorted(
            (Anomaly(kind=k, on=on, message=m, events=e) for k, on, m, e in replay.anomalies),
            key=lambda a: a.on,
        ),
    )


def fines_total(fines: list[Fine]) -> FinesTotal:
    """Imposed amounts (else the ranges) summed, and what was paid."""
    return FinesTotal(
        min_ntd=sum(f.amount_min_ntd if f.amount_ntd is None else f.amount_ntd for f in fines),
        max_ntd=sum(f.amount_max_ntd if f.amount_ntd is None else f.amount_ntd for f in fines),
        paid_ntd=sum(f.paid_ntd for f in fines),
    )


def overstay_fine_range(rules: RuleBook, since: date, days: int) -> tuple[int, int]:
    """The overstay fine for `days` days, by the rule in force on the overstay's first day."""
    return _overstay_amount(rules["R-OVERSTAY"].on(since), days)


def overstay_fine_final_days(rules: RuleBook, since: date) -> int:
    """Days overstayed from which the fine's range no longer grows (its last tier's)."""
    tiers = rules["R-OVERSTAY"].on(since).get("tiers")
    return tiers[-2][0] + 1 if tiers and len(tiers) > 1 else 0


# Each kind's documents, built once and shared by every view (`Document` is frozen).
_DOCUMENTS_OUT = {
    kind: tuple(Document(en=en, zh=zh) for en, zh in documents)
    for kind, documents in DOCUMENTS.items()
}


def _task_out(task: _Task, as_of: date) -> Task:
    return Task(
        kind=task.kind,
        status=task.status(as_of),  # type: ignore[arg-type]
        opens_on=task.opens_on,
        due_on=task.due_on,
        done_on=task.done_on,
        where=task.place(),
        fee_ntd=task.fee_ntd,
        documents=list(_DOCUMENTS_OUT[task.kind]),
        rule=task.rule,
        caused_by=[*task.triggers, *task.done_by],
    )


def _fine_out(fine: _Fine) -> Fine:
    if fine.amount is None:
        status = "accrued"
    elif fine.paid >= fine.amount:
        status = "paid"
    else:
        status = "imposed"
    return Fine(
        kind=fine.kind,
        status=status,  # type: ignore[arg-type]
        accrued_on=fine.accrued_on,
        amount_min_ntd=fine.amount_min,
        amount_max_ntd=fine.amount_max,
        amount_ntd=fine.amount,
        paid_ntd=fine.paid,
        offense=fine.offense,
        rule=fine.rule,
        caused_by=fine.caused_by,
    )


def _arc_out(arc: _Arc | None) -> Arc | None:
    if arc is None:
        return None
    return Arc(
        number=arc.number, issued_on=arc.issued_on, valid_until=arc.valid_until, basis=arc.basis
    )  # type: ignore[arg-type]


def _application_out(replay: _Replay, cal: TaiwanCalendar) -> Application | None:
    if not replay.pending:
        return None
    latest = replay.pending[-1]
    working_days = replay.rules["R-PROCESSING"].value("working_days", latest.applied_on)
    return Application(
        application=latest.application,
        applied_on=latest.applied_on,
        expected_decision_on=cal.add_working_days(latest.applied_on, working_days),
    )
