"""A second independent reading of the guide: edges the earlier rule tests leave uncovered.

Expected values were derived by hand from `seed/arc-student-guide.txt` and SPEC §3 before
reading the engine, then run through the real CLI (`timeline ingest` + `show --json`);
the ones kept here are those no other test pins. Each test cites the guide line or SPEC
row it protects.
"""

from __future__ import annotations

from datetime import UTC, datetime

from facts_builder import Timeline, d, fines_of, only, tasks_of

from projections.engine import view


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def holding_arc(valid_until: str = "2025-08-31") -> Timeline:
    """In Taiwan with an ARC (registration basis) issued 2024-09-05."""
    t = Timeline()
    t.add("entered", "2024-08-20", event_id="entry", visa="resident")
    t.add("arc_applied", "2024-08-25", event_id="applied", application="initial")
    t.add("arc_issued", "2024-09-05", event_id="issued", valid_until=valid_until)
    return t


# == R-FINES: a payment is not an imposition ==============================================


def test_a_payment_below_the_statutory_minimum_is_a_part_payment():
    """Guide: "A fine of between NTD 2,000 and NTD 10,000" (R-ARC-LATE); SPEC R-FINES: "a
    fine keeps its statutory range … payments (paid_ntd) reduce the outstanding total".
    NTD 1,000 cannot be the amount decided, so the fine stays a range, 1,000 paid."""
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="e1", visa="resident")
    t.add("fine_paid", "2024-05-01", amount_ntd=1000, fine="late_arc_application")
    v = view(t.facts, d("2024-05-02"))
    [fine] = fines_of(v, "late_arc_application")
    assert (fine.amount_min_ntd, fine.amount_max_ntd, fine.amount_ntd) == (2000, 10000, None)
    assert (fine.paid_ntd, fine.status) == (1000, "accrued")
    assert (v.fines_total.min_ntd, v.fines_total.max_ntd, v.fines_total.paid_ntd) == (
        2000,
        10000,
        1000,
    )


def test_part_payments_that_reach_the_minimum_fix_the_amount_at_their_sum():
    """R-FINES: once what was paid lies in the statutory range it is taken as the amount."""
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="e1", visa="resident")
    t.add("fine_paid", "2024-05-01", amount_ntd=1000, fine="late_arc_application")
    t.add("fine_paid", "2024-05-08", amount_ntd=1500, fine="late_arc_application")
    [fine] = fines_of(view(t.facts, d("2024-05-09")), "late_arc_application")
    assert (fine.amount_ntd, fine.paid_ntd, fine.status) == (2500, 2500, "paid")


def test_half_an_overstay_tier_paid_leaves_the_rest_outstanding():
    """Guide fine table: "Up to 10 days NTD 10,000" — a fixed amount, so NTD 5,000 paid on
    overstay day 5 is half of it, not the fine (R-OVERSTAY, R-FINES)."""
    t = holding_arc()
    t.add("fine_paid", "2025-09-05", amount_ntd=5000, fine="overstay")
    v = view(t.facts, d("2025-09-06"))
    [fine] = fines_of(v, "overstay")
    assert (fine.amount_ntd, fine.paid_ntd, fine.status) == (None, 5000, "accrued")
    assert v.overstay is not None and v.overstay.fine_ntd == 10000
    assert (v.fines_total.min_ntd, v.fines_total.paid_ntd) == (10000, 5000)


def test_the_tier_paid_on_its_day_stays_the_amount_when_the_overstay_goes_on():
    """Guide: "經處罰鍰後,得重新申請居留" — NTD 10,000 paid on overstay day 5 is that day's
    tier (1–10 days); the overstay running on to day 15 (NTD 20,000) does not reopen it."""
    t = holding_arc()
    t.add("fine_paid", "2025-09-05", amount_ntd=10000, fine="overstay")
    v = view(t.facts, d("2025-09-15"))
    [fine] = fines_of(v, "overstay")
    assert (fine.amount_min_ntd, fine.amount_ntd, fine.paid_ntd, fine.status) == (
        20000,
        10000,
        10000,
        "paid",
    )


# == R-EXTEND: the window never opens before the ARC exists ===============================


def test_a_short_arcs_extension_window_opens_on_its_issue_day():
    """Guide: "within 3 months of the date that their residency will expire"; an ARC valid
    for under 3 months (issued 2025-01-10, valid through 2025-03-01) cannot be extended
    before it was issued: extend_arc opens on the issue day, so its window_open alert has a
    day on which the ARC is known (valid_until − 3 months is 2024-12-01)."""
    t = Timeline()
    t.add("entered", "2025-01-02", visa="resident")
    t.add("arc_applied", "2025-01-03", application="initial")
    t.add("arc_issued", "2025-01-10", valid_until="2025-03-01")
    v = view(t.facts, d("2025-01-10"))
    task = only(v, "extend_arc")
    assert (task.status, task.opens_on, task.due_on) == ("open", d("2025-01-10"), d("2025-03-01"))
    assert v.status == "extension_window"


# == Calendars: make-up Saturdays, leap days, the ends of the holiday data ================


def test_processing_counts_the_2025_make_up_saturday():
    """Guide: "核辦天數約10個工作天 (不含假日)" (R-PROCESSING). Applied Mon 2025-01-20: Jan
    21–24 are days 1–4, Jan 27–31 are days off (bridge day and Lunar New Year), Feb 3–7 are
    days 5–9 and the make-up working Saturday 2025-02-08 is day 10."""
    t = Timeline()
    t.add("entered", "2025-01-02", visa="resident")
    t.add("arc_applied", "2025-01-20", application="initial")
    v = view(t.facts, d("2025-01-21"))
    assert v.application is not None
    assert v.application.expected_decision_on == d("2025-02-08")


def test_a_replacement_decision_counts_the_make_up_saturday():
    """Guide (lost ARC): "核辦天數約10個工作天 (不含假日)". Applied Mon 2025-02-03: Feb 4–7
    are days 1–4, Sat 2025-02-08 (make-up) day 5, Feb 10–14 days 6–10."""
    t = holding_arc()
    t.add("arc_lost", "2025-02-01")
    t.add("arc_applied", "2025-02-03", application="replacement")
    v = view(t.facts, d("2025-02-04"))
    assert v.application is not None
    assert (v.application.application, v.application.expected_decision_on) == (
        "replacement",
        d("2025-02-14"),
    )
    assert only(v, "replace_arc").status == "done"


def test_an_overstay_that_starts_on_a_leap_day():
    """Guide: "逾期居留30日(含第30天)以上者,不得重辦居留". valid_until 2028-02-28: day 1 is
    2028-02-29, day 29 (last day to reapply) 2028-03-28, day 30 2028-03-29."""
    t = holding_arc("2028-02-28")
    v = view(t.facts, d("2028-02-29"))
    assert v.overstay is not None
    assert (v.overstay.since, v.overstay.days, v.overstay.fine_ntd) == (d("2028-02-29"), 1, 10000)
    assert only(v, "pay_fine_and_reapply").due_on == d("2028-03-28")
    day_30 = view(t.facts, d("2028-03-29"))
    assert day_30.overstay is not None and day_30.overstay.can_reapply is False
    assert only(day_30, "leave_and_reapply_visa").status == "open"


def test_the_extension_window_of_a_leap_day_expiry():
    """Guide: "應於居留期限屆滿前 3 個月內" — valid through 2028-02-29 opens 2027-11-29."""
    t = holding_arc("2028-02-29")
    task = only(view(t.facts, d("2027-11-28")), "extend_arc")
    assert (task.status, task.opens_on, task.due_on) == (
        "upcoming",
        d("2027-11-29"),
        d("2028-02-29"),
    )


def test_deadlines_and_decisions_run_past_the_last_day_of_the_contract():
    """SPEC §2 dates end at 2100-12-31, but "within 30 days" of 2100-12-15 ends 2101-01-14,
    and an application of Tue 2100-12-28 is decided on 2101-01-12 (Dec 31 is the observed
    Founding Day; the holiday data ends in 2100, so 2101 skips weekends only)."""
    t = Timeline()
    t.add("entered", "2100-12-15", visa="resident")
    t.add("arc_applied", "2100-12-28", application="initial")
    v = view(t.facts, d("2100-12-31"))
    assert (only(v, "apply_arc").status, only(v, "apply_arc").due_on) == ("done", d("2101-01-14"))
    assert v.application is not None
    assert v.application.expected_decision_on == d("2101-01-12")


def test_the_earliest_day_uses_the_15_day_law_and_weekends_only():
    """Art. 22 before 2024-01-01: 15 days (entry 1950-01-01 → 1950-01-16). The holiday data
    starts in 1998, so a 1950 application skips weekends only: Tue 1950-01-03 → 01-17."""
    t = Timeline()
    t.add("entered", "1950-01-01", visa="resident")
    t.add("arc_applied", "1950-01-03", application="initial")
    v = view(t.facts, d("1950-01-04"))
    assert only(v, "apply_arc").due_on == d("1950-01-16")
    assert v.application is not None
    assert v.application.expected_decision_on == d("1950-01-17")


# == Retractions of the facts that ended or froze something ===============================


def test_retracting_the_departure_unfreezes_the_overstay():
    """SPEC R-OVERSTAY: days "frozen at departure"; a retracted departure never happened, so
    as known after the retraction the student is still here on day 40 (NTD 30,000)."""
    t = holding_arc()
    t.add("departed", "2025-09-05", event_id="left", recorded_at=at("2025-09-06T00:00:00"))
    t.add(
        "retracted",
        "2025-10-01",
        retracts="left",
        reason="did not leave",
        recorded_at=at("2025-10-01T00:00:00"),
    )
    before = view(t.facts, d("2025-10-10"), known_at=at("2025-09-30T00:00:00"))
    assert before.overstay is not None and before.overstay.days == 5
    assert before.in_taiwan is False
    after = view(t.facts, d("2025-10-10"))
    assert after.overstay is not None
    assert (after.overstay.days, after.overstay.fine_ntd, after.in_taiwan) == (40, 30000, True)
    assert only(after, "leave_and_reapply_visa").status == "open"


def test_retracting_the_report_brings_back_the_late_address_offense():
    """Guide: "apply within 30 days to have this change recorded; failure to do so will
    result in a fine" — the report retracted, the change of 2025-03-10 was never reported:
    offense 1 (NTD 2,000) accrued 2025-04-10, as known after the retraction."""
    t = holding_arc("2026-08-31")
    t.add("address_changed", "2025-03-10", address="x", recorded_at=at("2025-03-11T00:00:00"))
    t.add(
        "details_updated",
        "2025-04-01",
        event_id="report",
        fields=["address"],
        recorded_at=at("2025-04-02T00:00:00"),
    )
    t.add(
        "retracted",
        "2025-05-01",
        retracts="report",
        reason="never filed",
        recorded_at=at("2025-05-01T00:00:00"),
    )
    before = view(t.facts, d("2025-05-15"), known_at=at("2025-04-30T00:00:00"))
    assert only(before, "report_address_change").status == "done"
    assert before.fines == []
    after = view(t.facts, d("2025-05-15"))
    assert only(after, "report_address_change").status == "overdue"
    [fine] = fines_of(after, "late_details_update")
    assert (fine.accrued_on, fine.offense, fine.amount_min_ntd) == (d("2025-04-10"), 1, 2000)


# == Several residences ===================================================================


def test_a_second_overstay_after_a_reapplication_is_a_second_fine():
    """Guide: overstay under 30 days → "may reapply for residency after paying a fine"; the
    new ARC (to 2025-12-31) lapses too: a new overstay from 2026-01-01, with its own fine."""
    t = holding_arc()
    t.add("arc_applied", "2025-09-03", application="reapplication")
    t.add("arc_issued", "2025-09-10", valid_until="2025-12-31", application="reapplication")
    v = view(t.facts, d("2026-01-05"))
    assert v.overstay is not None
    assert (v.overstay.since, v.overstay.days) == (d("2026-01-01"), 5)
    assert [(f.accrued_on, f.amount_min_ntd) for f in fines_of(v, "overstay")] == [
        (d("2025-09-01"), 10000),
        (d("2026-01-01"), 10000),
    ]


def test_one_application_answers_both_the_visitor_and_the_visa_change_tasks():
    """Guide: FS visitors "may apply online for residence 15 days prior to the termination"
    (R-VISITOR, due 2024-09-30) and a visa changed in Taiwan gives "30 days from the day
    following" (R-ARC-VISACHANGE, due 2024-10-01): one initial application does both."""
    t = Timeline()
    t.add("entered", "2024-08-20", visa="visitor", visa_code="FS", stay_until="2024-10-15")
    t.add("visa_changed", "2024-09-01", to="resident")
    t.add("arc_applied", "2024-09-10", application="initial")
    v = view(t.facts, d("2024-09-11"))
    got = sorted((x.kind, x.status, x.due_on) for x in v.tasks)
    assert got == [
        ("apply_arc", "done", d("2024-10-01")),
        ("apply_residence", "done", d("2024-09-30")),
    ]
    assert tasks_of(v, "apply_arc")[0].rule == "R-ARC-VISACHANGE"
