"""SPEC §3 rules on applying for, extending and replacing the ARC, read from the guide.

Expected dates are derived by hand from the guide (`seed/arc-student-guide.txt`) and
SPEC §3 ("within N days of X" ends on X + N; a thing done on its due day is on time),
never from the implementation.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from facts_builder import Timeline, d, fines_of, only, tasks_of

from projections.engine import view
from projections.rules import RuleBook

ROLLOVER = RuleBook().with_settings(deadline_rollover=True)


def entered_resident(on: str) -> Timeline:
    t = Timeline()
    t.add("entered", on, event_id="entry", visa="resident")
    return t


def holding_arc(valid_until: str, issued_on: str = "2023-09-01") -> Timeline:
    """A student in Taiwan who holds an ARC (registration basis) valid through valid_until."""
    t = Timeline()
    t.add("entered", "2023-08-20", event_id="entry", visa="resident")
    t.add("arc_applied", "2023-08-25", event_id="applied", application="initial")
    t.add("arc_issued", issued_on, event_id="issued", valid_until=valid_until)
    return t


# -- R-ARC-ENTRY ------------------------------------------------------------------------


def test_arc_entry_no_task_before_the_entry_day():
    t = entered_resident("2024-03-16")
    v = view(t.facts, d("2024-03-15"))
    assert v.tasks == []
    assert v.status == "no_arc"


def test_arc_entry_task_opens_on_entry_day_due_30_days_later():
    # Guide: "enters Taiwan on March 16, 2024 … must apply … by April 15, 2024 at the latest"
    t = entered_resident("2024-03-16")
    v = view(t.facts, d("2024-03-16"))
    task = only(v, "apply_arc")
    assert task.status == "open"
    assert task.opens_on == d("2024-03-16")
    assert task.due_on == d("2024-04-15")
    assert task.rule == "R-ARC-ENTRY"
    assert task.caused_by == ["entry"]
    assert task.where == "online"
    assert task.fee_ntd == 1000
    assert v.status == "arc_application_due"
    assert v.in_taiwan is True


def test_arc_entry_still_open_on_the_due_day_without_fine():
    t = entered_resident("2024-03-16")
    v = view(t.facts, d("2024-04-15"))
    assert only(v, "apply_arc").status == "open"
    assert v.fines == []
    assert v.status == "arc_application_due"


def test_arc_entry_overdue_and_fine_accrued_the_day_after():
    t = entered_resident("2024-03-16")
    v = view(t.facts, d("2024-04-16"))
    assert only(v, "apply_arc").status == "overdue"
    assert v.status == "arc_application_overdue"
    [fine] = v.fines
    assert fine.kind == "late_arc_application"
    assert fine.status == "accrued"
    assert fine.accrued_on == d("2024-04-16")
    assert (fine.amount_min_ntd, fine.amount_max_ntd) == (2000, 10000)
    assert fine.rule == "R-ARC-LATE"
    assert "entry" in fine.caused_by
    assert v.fines_total.model_dump() == {"min_ntd": 2000, "max_ntd": 10000, "paid_ntd": 0}


def test_arc_entry_applied_on_the_due_day_is_done_without_fine():
    t = entered_resident("2024-03-16")
    t.add("arc_applied", "2024-04-15", event_id="applied", application="initial")
    v = view(t.facts, d("2024-05-20"))
    task = only(v, "apply_arc")
    assert task.status == "done"
    assert task.done_on == d("2024-04-15")
    assert "applied" in task.caused_by
    assert v.fines == []


def test_arc_entry_applied_the_day_after_is_done_late_and_fine_still_accrued():
    t = entered_resident("2024-03-16")
    t.add("arc_applied", "2024-04-16", event_id="applied", application="initial")
    v = view(t.facts, d("2024-05-20"))
    task = only(v, "apply_arc")
    assert task.status == "done_late"
    assert task.done_on == d("2024-04-16")
    [fine] = v.fines
    assert (fine.kind, fine.accrued_on) == ("late_arc_application", d("2024-04-16"))
    assert (fine.amount_min_ntd, fine.amount_max_ntd) == (2000, 10000)


def test_arc_entry_applied_on_the_entry_day_recorded_before_the_entry_counts():
    # The registrar's feed may report the online application before the entry feed
    # reports the arrival (SPEC §1: facts arrive late). Applying on the day of entry is
    # "within 30 days", so the task is done and no fine may accrue.
    t = Timeline()
    t.add("arc_applied", "2024-03-16", event_id="applied", application="initial")
    t.add("entered", "2024-03-16", event_id="entry", visa="resident")
    v = view(t.facts, d("2024-05-20"))
    assert [x.status for x in tasks_of(v, "apply_arc")] == ["done"]
    assert v.fines == []


# -- the period before the 2023 amendment (Art. 22: 15 days before 2024-01-01) ------------


@pytest.mark.parametrize(
    ("entry", "due"),
    [
        ("2023-12-20", "2024-01-04"),  # judged by the 15-day rule in force on the entry day
        ("2023-12-31", "2024-01-15"),
        ("2024-01-01", "2024-01-31"),  # the 30-day rule from its first day
    ],
)
def test_arc_entry_period_is_the_one_in_force_on_the_entry_day(entry, due):
    t = entered_resident(entry)
    task = only(view(t.facts, d(entry)), "apply_arc")
    assert task.due_on == d(due)
    on_due = view(t.facts, d(due))
    assert only(on_due, "apply_arc").status == "open"
    assert on_due.fines == []
    day_after = d(due) + timedelta(days=1)
    after = view(t.facts, day_after)
    assert only(after, "apply_arc").status == "overdue"
    assert [f.accrued_on for f in fines_of(after, "late_arc_application")] == [day_after]


# -- R-ARC-VISACHANGE -----------------------------------------------------------------------


def visa_change(on: str) -> Timeline:
    t = Timeline()
    t.add("entered", "2023-11-01", event_id="entry", visa="visitor", stay_until="2024-12-31")
    t.add("visa_changed", on, event_id="change", to="resident")
    return t


def test_visa_change_opens_apply_arc_due_30_days_after_the_change():
    # Guide: 居留簽證換發之翌日起30日內 / within 30 days from the day following the change
    t = visa_change("2024-05-10")
    v = view(t.facts, d("2024-05-10"))
    task = only(v, "apply_arc")
    assert task.rule == "R-ARC-VISACHANGE"
    assert task.opens_on == d("2024-05-10")
    assert task.due_on == d("2024-06-09")
    assert "change" in task.caused_by
    assert task.fee_ntd == 1000
    assert task.where == "online"
    assert only(view(t.facts, d("2024-06-09")), "apply_arc").status == "open"
    assert view(t.facts, d("2024-06-09")).fines == []


def test_visa_change_late_application_accrues_the_late_fine():
    t = visa_change("2024-05-10")
    v = view(t.facts, d("2024-06-10"))
    assert only(v, "apply_arc").status == "overdue"
    [fine] = v.fines
    assert (fine.kind, fine.rule, fine.accrued_on) == (
        "late_arc_application",
        "R-ARC-LATE",
        d("2024-06-10"),
    )
    assert (fine.amount_min_ntd, fine.amount_max_ntd) == (2000, 10000)
    assert "change" in fine.caused_by


def test_visa_change_before_2024_has_the_15_day_period():
    t = visa_change("2023-12-25")
    assert only(view(t.facts, d("2023-12-25")), "apply_arc").due_on == d("2024-01-09")


def test_visa_change_applied_on_due_day_is_done():
    t = visa_change("2024-05-10")
    t.add("arc_applied", "2024-06-09", event_id="applied", application="initial")
    v = view(t.facts, d("2024-07-01"))
    assert only(v, "apply_arc").status == "done"
    assert v.fines == []


# -- R-VISITOR ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["FS", "FC", "FR"])
def test_visitor_fs_fc_fr_apply_residence_due_stay_until_minus_15(code):
    t = Timeline()
    t.add(
        "entered",
        "2024-03-01",
        event_id="entry",
        visa="visitor",
        visa_code=code,
        stay_until="2024-05-29",
    )
    v = view(t.facts, d("2024-03-01"))
    task = only(v, "apply_residence")
    assert task.rule == "R-VISITOR"
    assert task.due_on == d("2024-05-14")
    assert task.status == "open"
    assert task.caused_by == ["entry"]
    assert task.where == "online"
    assert v.status == "arc_application_due"
    assert only(view(t.facts, d("2024-05-14")), "apply_residence").status == "open"
    after = view(t.facts, d("2024-05-15"))
    assert only(after, "apply_residence").status == "overdue"
    assert after.status == "arc_application_overdue"
    # R-ARC-LATE's fine is for apply_arc (a resident visa); a visitor has no such fine
    assert after.fines == []


@pytest.mark.parametrize("code", [None, "FX", "VS"])
def test_visitor_other_visa_codes_create_no_task(code):
    t = Timeline()
    fields = {"visa_code": code} if code else {}
    t.add("entered", "2024-03-01", visa="visitor", stay_until="2024-05-29", **fields)
    v = view(t.facts, d("2024-04-01"))
    assert v.tasks == []
    assert v.status == "no_arc"


def test_visitor_application_on_the_due_day_is_done():
    t = Timeline()
    t.add("entered", "2024-03-01", visa="visitor", visa_code="FS", stay_until="2024-05-29")
    t.add("arc_applied", "2024-05-14", event_id="applied", application="initial")
    task = only(view(t.facts, d("2024-06-01")), "apply_residence")
    assert (task.status, task.done_on) == ("done", d("2024-05-14"))
    t2 = Timeline()
    t2.add("entered", "2024-03-01", visa="visitor", visa_code="FS", stay_until="2024-05-29")
    t2.add("arc_applied", "2024-05-15", application="initial")
    assert only(view(t2.facts, d("2024-06-01")), "apply_residence").status == "done_late"


# -- R-ADMISSION --------------------------------------------------------------------------


def admission_timeline() -> Timeline:
    t = Timeline()
    t.add("entered", "2024-08-20", event_id="entry", visa="resident")
    t.add(
        "arc_applied",
        "2024-08-25",
        event_id="applied",
        application="initial",
        basis="admission_notice",
    )
    t.add("arc_issued", "2024-09-05", event_id="issued", valid_until="2025-03-04")
    return t


def test_admission_arc_has_submit_student_status_instead_of_extend_arc():
    t = admission_timeline()
    v = view(t.facts, d("2024-09-06"))
    assert v.arc is not None
    assert v.arc.basis == "admission_notice"
    assert tasks_of(v, "extend_arc") == []
    task = only(v, "submit_student_status")
    assert task.rule == "R-ADMISSION"
    assert task.due_on == d("2025-03-04")
    assert "issued" in task.caused_by
    # not registered yet: the task has not opened
    assert task.status == "upcoming"
    # and no extend_arc ever appears for this ARC, not even 3 months before expiry
    assert tasks_of(view(t.facts, d("2024-12-04")), "extend_arc") == []


def test_admission_task_opens_at_the_first_registration_after_issue():
    t = admission_timeline()
    t.add("registered", "2024-09-12", event_id="reg", semester="113-1")
    t.add("registered", "2025-02-10", event_id="reg2", semester="113-2")
    assert only(view(t.facts, d("2024-09-11")), "submit_student_status").status == "upcoming"
    v = view(t.facts, d("2024-09-12"))
    task = only(v, "submit_student_status")
    assert task.opens_on == d("2024-09-12")
    assert task.status == "open"
    assert v.status == "extension_window"
    assert only(view(t.facts, d("2025-03-04")), "submit_student_status").status == "open"
    assert only(view(t.facts, d("2025-03-05")), "submit_student_status").status == "overdue"


def test_admission_task_done_by_an_extension_application():
    t = admission_timeline()
    t.add("registered", "2024-09-12", semester="113-1")
    t.add("arc_applied", "2024-09-20", event_id="ext", application="extension")
    v = view(t.facts, d("2024-09-21"))
    task = only(v, "submit_student_status")
    assert (task.status, task.done_on) == ("done", d("2024-09-20"))
    assert v.status == "application_pending"


def test_admission_task_done_by_a_later_arc_then_extend_arc_applies():
    t = admission_timeline()
    t.add("registered", "2024-09-12", semester="113-1")
    t.add(
        "arc_issued",
        "2024-10-15",
        event_id="issued2",
        valid_until="2025-09-04",
        application="extension",
    )
    v = view(t.facts, d("2024-10-16"))
    task = only(v, "submit_student_status")
    assert (task.status, task.done_on) == ("done", d("2024-10-15"))
    extend = only(v, "extend_arc")
    assert (extend.opens_on, extend.due_on) == (d("2025-06-04"), d("2025-09-04"))
    assert v.arc is not None and v.arc.basis == "registration"


def test_registration_basis_arc_has_extend_arc_and_no_submit_student_status():
    t = holding_arc("2025-02-28")
    v = view(t.facts, d("2024-01-01"))
    assert v.arc is not None and v.arc.basis == "registration"
    assert tasks_of(v, "submit_student_status") == []
    assert only(v, "extend_arc").rule == "R-EXTEND"


# -- R-EXTEND -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("valid_until", "opens", "day_before"),
    [
        ("2024-05-31", "2024-02-29", "2024-02-28"),  # leap February
        ("2025-05-31", "2025-02-28", "2025-02-27"),
        ("2024-11-30", "2024-08-30", "2024-08-29"),  # not the month's end in August
        ("2024-09-15", "2024-06-15", "2024-06-14"),
    ],
)
def test_extend_window_opens_exactly_three_calendar_months_before(valid_until, opens, day_before):
    t = holding_arc(valid_until, issued_on="2023-09-01")
    before = view(t.facts, d(day_before))
    task = only(before, "extend_arc")
    assert task.opens_on == d(opens)
    assert task.due_on == d(valid_until)
    assert task.status == "upcoming"
    assert before.status == "arc_valid"
    on_open = view(t.facts, d(opens))
    assert only(on_open, "extend_arc").status == "open"
    assert on_open.status == "extension_window"
    on_due = view(t.facts, d(valid_until))
    assert only(on_due, "extend_arc").status == "open"
    assert on_due.status == "extension_window"


def test_extend_task_where_fee_rule_and_cause():
    t = holding_arc("2024-05-31")
    task = only(view(t.facts, d("2024-03-01")), "extend_arc")
    assert task.where == "online"
    assert task.fee_ntd == 1000
    assert task.rule == "R-EXTEND"
    assert "issued" in task.caused_by


def test_extend_overdue_the_day_after_valid_until():
    t = holding_arc("2024-05-31")
    assert only(view(t.facts, d("2024-06-01")), "extend_arc").status == "overdue"


def test_extend_done_by_an_extension_application_on_the_due_day():
    t = holding_arc("2024-05-31")
    t.add("arc_applied", "2024-05-31", event_id="ext", application="extension")
    v = view(t.facts, d("2024-06-05"))
    task = only(v, "extend_arc")
    assert (task.status, task.done_on) == ("done", d("2024-05-31"))
    assert "ext" in task.caused_by
    assert v.status == "application_pending"
    assert v.overstay is None


def test_extend_done_by_a_later_arc_issued():
    t = holding_arc("2024-05-31")
    t.add(
        "arc_issued",
        "2024-04-10",
        event_id="new",
        valid_until="2025-05-31",
        application="extension",
    )
    v = view(t.facts, d("2024-04-11"))
    done = [x for x in tasks_of(v, "extend_arc") if x.due_on == d("2024-05-31")]
    assert [(x.status, x.done_on) for x in done] == [("done", d("2024-04-10"))]
    new = [x for x in tasks_of(v, "extend_arc") if x.due_on == d("2025-05-31")]
    assert [(x.status, x.opens_on) for x in new] == [("upcoming", d("2025-02-28"))]
    assert v.status == "arc_valid"
    assert v.arc is not None and v.arc.valid_until == d("2025-05-31")


def test_extend_done_late_by_an_arc_issued_after_valid_until():
    t = holding_arc("2024-05-31")
    t.add("arc_issued", "2024-06-03", valid_until="2025-05-31", application="reapplication")
    v = view(t.facts, d("2024-06-04"))
    old = [x for x in tasks_of(v, "extend_arc") if x.due_on == d("2024-05-31")]
    assert [x.status for x in old] == ["done_late"]


def test_same_valid_until_does_not_complete_the_extension():
    # R-EXTEND: "done by an arc_issued with a later valid_until" — a new card for the same
    # period (e.g. a replacement) is not an extension.
    t = holding_arc("2024-05-31")
    t.add("arc_issued", "2024-03-10", valid_until="2024-05-31", application="replacement")
    assert only(view(t.facts, d("2024-03-11")), "extend_arc").status == "open"


# -- R-PROCESSING -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("applied", "expected"),
    [
        # Mon before Lunar New Year 2024: 6, 7 | 8–14 off | 15, 16, Sat 17 (make-up), 19–23
        ("2024-02-05", "2024-02-23"),
        # Fri 02-16: day 1 is the make-up Saturday 02-17; 02-28 Peace Memorial Day is off
        ("2024-02-16", "2024-03-01"),
        ("2024-02-26", "2024-03-12"),
        # Wed 04-03: 04-04 and 04-05 are off (Children's Day, Tomb-Sweeping Day)
        ("2024-04-03", "2024-04-19"),
        # applied on a Saturday: day 1 is Monday
        ("2024-03-16", "2024-03-29"),
        ("2024-04-15", "2024-04-29"),
    ],
)
def test_processing_expected_decision_on_the_10th_working_day(applied, expected):
    t = Timeline()
    t.add("entered", "2024-01-20", visa="resident")
    t.add("arc_applied", applied, event_id="applied", application="initial")
    v = view(t.facts, d(applied))
    assert v.application is not None
    assert v.application.application == "initial"
    assert v.application.applied_on == d(applied)
    assert v.application.expected_decision_on == d(expected)
    assert v.status == "application_pending"


def test_processing_applies_to_extensions_and_ends_with_the_decision():
    t = holding_arc("2024-05-31")
    t.add("arc_applied", "2024-04-03", application="extension")
    v = view(t.facts, d("2024-04-10"))
    assert v.application is not None
    assert v.application.application == "extension"
    assert v.application.expected_decision_on == d("2024-04-19")
    t.add("arc_issued", "2024-04-18", valid_until="2025-05-31", application="extension")
    assert view(t.facts, d("2024-04-18")).application is None


# -- R-ENTRIES ----------------------------------------------------------------------------


def test_reentry_on_a_valid_arc_creates_no_task():
    t = holding_arc("2025-02-28")
    t.add("departed", "2024-06-01")
    t.add("entered", "2024-06-20", event_id="back", visa="arc")
    v = view(t.facts, d("2024-06-21"))
    assert [x.kind for x in v.tasks] == ["apply_arc", "extend_arc"]
    assert only(v, "apply_arc").status == "done"  # the original one, long done
    assert v.status == "arc_valid"
    assert v.in_taiwan is True
    assert v.anomalies == []


def test_reentry_on_a_resident_visa_while_holding_a_valid_arc_creates_no_task():
    t = holding_arc("2025-02-28")
    t.add("departed", "2024-06-01")
    t.add("entered", "2024-06-20", visa="resident")
    v = view(t.facts, d("2024-08-01"))
    assert len(tasks_of(v, "apply_arc")) == 1
    assert v.fines == []
    assert v.status == "arc_valid"


# -- R-ARC-LOST ---------------------------------------------------------------------------


def test_lost_arc_task_at_a_service_center_fee_500_without_deadline():
    t = holding_arc("2025-02-28")
    t.add("arc_lost", "2024-05-01", event_id="lost")
    v = view(t.facts, d("2024-05-01"))
    task = only(v, "replace_arc")
    assert task.rule == "R-ARC-LOST"
    assert task.where == "service_center"
    assert task.fee_ntd == 500
    assert task.opens_on == d("2024-05-01")
    assert task.due_on is None
    assert task.status == "open"
    assert task.caused_by == ["lost"]
    assert [doc.zh for doc in task.documents] == [
        "申請書",
        "護照",
        "兩吋證件照(同身分證規格)",
        "在學證明",
        "遺失居留證聲明書或報案證明",
    ]
    # no deadline in the guide: still open months later, no fine
    later = view(t.facts, d("2024-12-01"))
    assert only(later, "replace_arc").status == "open"
    assert later.fines == []


def test_lost_arc_done_by_a_replacement_application():
    t = holding_arc("2025-02-28")
    t.add("arc_lost", "2024-05-01")
    t.add("arc_applied", "2024-05-03", event_id="repl", application="replacement")
    v = view(t.facts, d("2024-05-04"))
    task = only(v, "replace_arc")
    assert (task.status, task.done_on) == ("done", d("2024-05-03"))
    assert "repl" in task.caused_by


# -- R-DEADLINE-ROLLOVER ------------------------------------------------------------------


def test_rollover_off_by_default_a_sunday_due_day_stays():
    t = entered_resident("2024-03-15")  # + 30 = Sunday 2024-04-14
    assert only(view(t.facts, d("2024-03-15")), "apply_arc").due_on == d("2024-04-14")
    v = view(t.facts, d("2024-04-15"))
    assert only(v, "apply_arc").status == "overdue"
    assert [f.accrued_on for f in v.fines] == [d("2024-04-15")]


def test_rollover_on_moves_a_sunday_due_day_to_monday():
    t = entered_resident("2024-03-15")
    v = view(t.facts, d("2024-04-15"), rules=ROLLOVER)
    assert only(v, "apply_arc").due_on == d("2024-04-15")
    assert only(v, "apply_arc").status == "open"
    assert v.fines == []


def test_rollover_on_moves_past_holidays_and_the_weekend():
    # + 30 = Thu 2024-04-04 (Children's Day); 04-05 off; 04-06/07 weekend → Mon 04-08
    t = entered_resident("2024-03-05")
    assert only(view(t.facts, d("2024-03-05")), "apply_arc").due_on == d("2024-04-04")
    v = view(t.facts, d("2024-04-08"), rules=ROLLOVER)
    assert only(v, "apply_arc").due_on == d("2024-04-08")
    assert only(v, "apply_arc").status == "open"
    after = view(t.facts, d("2024-04-09"), rules=ROLLOVER)
    assert [f.accrued_on for f in after.fines] == [d("2024-04-09")]


def test_rollover_on_moves_past_lunar_new_year():
    t = entered_resident("2024-01-09")  # + 30 = Thu 2024-02-08, off until Wed 02-14
    v = view(t.facts, d("2024-01-09"), rules=ROLLOVER)
    assert only(v, "apply_arc").due_on == d("2024-02-15")


def test_rollover_keeps_a_make_up_working_saturday():
    t = entered_resident("2024-01-18")  # + 30 = Sat 2024-02-17, a make-up working day
    v = view(t.facts, d("2024-01-18"), rules=ROLLOVER)
    assert only(v, "apply_arc").due_on == d("2024-02-17")


def test_rollover_applies_to_the_address_change_period():
    t = Timeline()
    t.add("address_changed", "2024-03-15", address="x")
    assert only(view(t.facts, d("2024-03-15")), "report_address_change").due_on == d("2024-04-14")
    v = view(t.facts, d("2024-03-15"), rules=ROLLOVER)
    assert only(v, "report_address_change").due_on == d("2024-04-15")


# -- apply_arc when the application or the ARC is already there ----------------------------


def test_an_issued_arc_means_the_application_was_made_no_late_fine():
    # The feed missed the arc_applied event but reports the ARC issued on 2024-04-01: the
    # student necessarily applied on or before 2024-04-01, inside the 30 days. The guide
    # fines only a person who "fails to apply within this period".
    t = entered_resident("2024-03-16")
    t.add("arc_issued", "2024-04-01", event_id="issued", valid_until="2025-03-31")
    v = view(t.facts, d("2024-05-10"))
    assert only(v, "apply_arc").status != "overdue"
    assert v.fines == []
    assert v.status == "arc_valid"


def test_reentry_while_the_first_application_is_pending_needs_no_second_application():
    # Applied 2024-03-20, briefly abroad, back on the same resident visa, ARC issued 04-03:
    # the student applied in time and holds a valid ARC; no second apply_arc can be overdue.
    t = entered_resident("2024-03-16")
    t.add("arc_applied", "2024-03-20", event_id="applied", application="initial")
    t.add("departed", "2024-03-25")
    t.add("entered", "2024-03-30", event_id="back", visa="resident")
    t.add("arc_issued", "2024-04-03", event_id="issued", valid_until="2025-03-31")
    v = view(t.facts, d("2024-05-10"))
    assert [x.status for x in tasks_of(v, "apply_arc") if x.status in ("open", "overdue")] == []
    assert v.fines == []
    assert v.status == "arc_valid"


def test_departure_before_the_due_day_cancels_apply_arc_without_fine():
    # A-DEPARTURE-BEFORE-DUE (documented assumption): no violation happened.
    t = entered_resident("2024-03-16")
    t.add("departed", "2024-04-15")
    v = view(t.facts, d("2024-05-10"))
    assert only(v, "apply_arc").status == "cancelled"
    assert v.fines == []


def test_departure_after_the_due_day_keeps_the_late_fine():
    t = entered_resident("2024-03-16")
    t.add("departed", "2024-04-16")
    v = view(t.facts, d("2024-05-10"))
    assert only(v, "apply_arc").status == "cancelled"  # the next arrival restarts the clock
    assert [(f.kind, f.accrued_on) for f in v.fines] == [("late_arc_application", d("2024-04-16"))]
