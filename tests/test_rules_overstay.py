"""SPEC §3 R-OVERSTAY, R-EXPIRED-ABROAD and R-FINES, with the guide's tier boundaries."""

from __future__ import annotations

import pytest
from facts_builder import Timeline, d, fines_of, only, tasks_of

from projections.engine import view


def holding_arc(valid_until: str = "2024-05-31") -> Timeline:
    """In Taiwan with an ARC (registration basis) valid through valid_until."""
    t = Timeline()
    t.add("entered", "2023-08-20", event_id="entry", visa="resident")
    t.add("arc_applied", "2023-08-25", event_id="applied", application="initial")
    t.add("arc_issued", "2023-09-01", event_id="issued", valid_until=valid_until)
    return t


# -- R-OVERSTAY ---------------------------------------------------------------------------


def test_no_overstay_on_the_last_valid_day():
    v = view(holding_arc().facts, d("2024-05-31"))
    assert v.overstay is None
    assert fines_of(v, "overstay") == []
    assert v.status != "overstay"


@pytest.mark.parametrize(
    ("as_of", "days", "fine", "can_reapply"),
    [
        ("2024-06-01", 1, 10000, True),
        ("2024-06-10", 10, 10000, True),  # 10日以下 NTD 10,000
        ("2024-06-11", 11, 20000, True),  # 11~30日 NTD 20,000
        ("2024-06-29", 29, 20000, True),  # under 30 days: may reapply
        ("2024-06-30", 30, 20000, False),  # 30日(含第30天)以上者，不得重辦居留
        ("2024-07-01", 31, 30000, False),  # 31~60日 NTD 30,000
        ("2024-07-30", 60, 30000, False),
        ("2024-07-31", 61, 40000, False),  # 61~90日 NTD 40,000
        ("2024-08-29", 90, 40000, False),
        ("2024-08-30", 91, 50000, False),  # 91日以上 NTD 50,000
        ("2025-05-31", 365, 50000, False),
    ],
)
def test_overstay_days_fine_tier_and_reapplication(as_of, days, fine, can_reapply):
    v = view(holding_arc("2024-05-31").facts, d(as_of))
    assert v.status == "overstay"
    assert v.overstay is not None
    assert v.overstay.since == d("2024-06-01")
    assert v.overstay.days == days
    assert v.overstay.fine_ntd == fine
    assert v.overstay.can_reapply is can_reapply
    [f] = fines_of(v, "overstay")
    assert f.rule == "R-OVERSTAY"
    assert f.accrued_on == d("2024-06-01")
    assert (f.amount_min_ntd, f.amount_max_ntd) == (fine, fine)
    assert "issued" in f.caused_by
    leave = tasks_of(v, "leave_and_reapply_visa")
    if days >= 30:
        [task] = leave
        assert task.opens_on == d("2024-06-30")
        assert task.status == "open"
        assert task.due_on is None
        assert task.rule == "R-OVERSTAY"
        assert task.caused_by
    else:
        assert leave == []


def test_departure_freezes_the_overstay_days():
    t = holding_arc("2024-05-31")
    t.add("departed", "2024-06-05", event_id="left")
    for as_of in ("2024-06-05", "2024-07-15", "2025-01-01"):
        v = view(t.facts, d(as_of))
        assert v.status == "overstay"
        assert v.in_taiwan is False
        assert v.overstay is not None
        assert (v.overstay.since, v.overstay.days, v.overstay.fine_ntd) == (
            d("2024-06-01"),
            5,
            10000,
        )
        assert [f.amount_min_ntd for f in fines_of(v, "overstay")] == [10000]
        assert tasks_of(v, "leave_and_reapply_visa") == []


def test_departure_after_day_30_completes_leave_and_reapply_visa():
    t = holding_arc("2024-05-31")
    t.add("departed", "2024-07-05", event_id="left")  # day 35
    v = view(t.facts, d("2024-09-01"))
    assert v.overstay is not None
    assert (v.overstay.days, v.overstay.fine_ntd, v.overstay.can_reapply) == (35, 30000, False)
    task = only(v, "leave_and_reapply_visa")
    assert (task.status, task.done_on) == ("done", d("2024-07-05"))
    assert "left" in task.caused_by


def test_departing_on_the_last_valid_day_is_an_expiry_abroad_not_an_overstay():
    t = holding_arc("2024-05-31")
    t.add("departed", "2024-05-31")
    v = view(t.facts, d("2024-06-10"))
    assert v.status == "expired_abroad"
    assert v.overstay is None
    assert v.fines == []


def test_departing_the_day_after_valid_until_is_a_one_day_overstay():
    t = holding_arc("2024-05-31")
    t.add("departed", "2024-06-01")
    v = view(t.facts, d("2024-06-10"))
    assert v.status == "overstay"
    assert v.overstay is not None
    assert (v.overstay.days, v.overstay.fine_ntd) == (1, 10000)


def test_overstay_before_2024_03_01_is_a_range_2000_to_10000():
    # Art. 85 before Art. 74-1 took effect on 2024-03-01
    v = view(holding_arc("2024-01-31").facts, d("2024-02-15"))
    assert v.status == "overstay"
    assert v.overstay is not None
    assert (v.overstay.since, v.overstay.days) == (d("2024-02-01"), 15)
    [f] = fines_of(v, "overstay")
    assert (f.amount_min_ntd, f.amount_max_ntd) == (2000, 10000)
    assert v.fines_total.min_ntd == 2000
    assert v.fines_total.max_ntd == 10000


def test_overstay_rule_boundary_on_2024_03_01():
    leap_day = view(holding_arc("2024-02-28").facts, d("2024-02-29"))
    [f] = fines_of(leap_day, "overstay")
    assert (f.accrued_on, f.amount_min_ntd, f.amount_max_ntd) == (d("2024-02-29"), 2000, 10000)
    march = view(holding_arc("2024-02-29").facts, d("2024-03-01"))
    [f] = fines_of(march, "overstay")
    assert (f.accrued_on, f.amount_min_ntd, f.amount_max_ntd) == (d("2024-03-01"), 10000, 10000)


def test_extension_applied_on_valid_until_and_undecided_suspends_the_overstay():
    t = holding_arc("2024-05-31")
    t.add("arc_applied", "2024-05-31", event_id="ext", application="extension")
    v = view(t.facts, d("2024-07-15"))
    assert v.overstay is None
    assert v.fines == []
    assert v.status == "application_pending"
    assert tasks_of(v, "leave_and_reapply_visa") == []


def test_extension_applied_after_valid_until_does_not_suspend_the_overstay():
    t = holding_arc("2024-05-31")
    t.add("arc_applied", "2024-06-01", event_id="ext", application="extension")
    v = view(t.facts, d("2024-06-20"))
    assert v.status == "overstay"
    assert v.overstay is not None
    assert (v.overstay.since, v.overstay.days, v.overstay.fine_ntd) == (
        d("2024-06-01"),
        20,
        20000,
    )


def test_a_new_arc_closes_the_overstay_and_the_fine_stays():
    t = holding_arc("2024-05-31")
    t.add("arc_applied", "2024-06-01", application="extension")
    t.add("arc_issued", "2024-06-25", event_id="new", valid_until="2025-05-31")
    v = view(t.facts, d("2024-07-01"))
    assert v.overstay is None
    assert v.status == "arc_valid"
    [f] = fines_of(v, "overstay")
    # overstayed 2024-06-01 … 2024-06-24: 24 days, tier 11–30
    assert (f.accrued_on, f.amount_min_ntd) == (d("2024-06-01"), 20000)


def test_extension_applied_in_time_and_granted_late_leaves_no_fine():
    t = holding_arc("2024-05-31")
    t.add("arc_applied", "2024-05-20", application="extension")
    t.add("arc_issued", "2024-06-10", valid_until="2025-05-31")
    v = view(t.facts, d("2024-07-01"))
    assert v.fines == []
    assert v.status == "arc_valid"


# -- R-EXPIRED-ABROAD ---------------------------------------------------------------------


def abroad() -> Timeline:
    t = holding_arc("2024-05-31")
    t.add("departed", "2024-05-20", event_id="left")
    return t


def test_expired_abroad_has_no_fine_and_a_reapply_visa_task():
    v = view(abroad().facts, d("2024-06-10"))
    assert v.status == "expired_abroad"
    assert v.in_taiwan is False
    assert v.overstay is None
    assert v.fines == []
    task = only(v, "reapply_visa")
    assert task.rule == "R-EXPIRED-ABROAD"
    assert task.status == "open"
    assert task.due_on is None
    assert "issued" in task.caused_by


def test_before_expiry_abroad_is_still_arc_valid():
    v = view(abroad().facts, d("2024-05-31"))
    assert v.status != "expired_abroad"
    assert tasks_of(v, "reapply_visa") == []


def test_reentry_on_a_resident_visa_completes_reapply_visa_and_opens_apply_arc():
    t = abroad()
    t.add("entered", "2024-07-01", event_id="back", visa="resident")
    v = view(t.facts, d("2024-07-01"))
    task = only(v, "reapply_visa")
    assert (task.status, task.done_on) == ("done", d("2024-07-01"))
    assert "back" in task.caused_by
    new = [x for x in tasks_of(v, "apply_arc") if x.opens_on == d("2024-07-01")]
    assert [(x.status, x.due_on, x.rule) for x in new] == [("open", d("2024-07-31"), "R-ARC-ENTRY")]
    assert v.status == "arc_application_due"


def test_reentry_on_a_visitor_visa_does_not_complete_reapply_visa():
    t = abroad()
    t.add("entered", "2024-07-01", visa="visitor", stay_until="2024-08-29")
    v = view(t.facts, d("2024-07-02"))
    assert only(v, "reapply_visa").status == "open"
    assert v.status == "expired_abroad"


# -- R-FINES ------------------------------------------------------------------------------


def late_applicant() -> Timeline:
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="entry", visa="resident")
    t.add("arc_applied", "2024-04-20", event_id="applied", application="initial")
    return t


def test_an_imposed_amount_replaces_the_range():
    t = late_applicant()
    t.add(
        "fine_imposed", "2024-04-25", event_id="imp", fine="late_arc_application", amount_ntd=4000
    )
    before = view(t.facts, d("2024-04-24"))
    assert before.fines_total.model_dump() == {"min_ntd": 2000, "max_ntd": 10000, "paid_ntd": 0}
    v = view(t.facts, d("2024-04-25"))
    [f] = v.fines
    assert f.status == "imposed"
    assert f.amount_ntd == 4000
    assert f.rule == "R-ARC-LATE"
    assert "imp" in f.caused_by
    assert v.fines_total.model_dump() == {"min_ntd": 4000, "max_ntd": 4000, "paid_ntd": 0}


def test_payments_reduce_what_is_outstanding():
    t = late_applicant()
    t.add("fine_imposed", "2024-04-25", fine="late_arc_application", amount_ntd=4000)
    t.add("fine_paid", "2024-04-28", event_id="p1", amount_ntd=1500, fine="late_arc_application")
    part = view(t.facts, d("2024-04-28"))
    [f] = part.fines
    assert (f.status, f.paid_ntd) == ("imposed", 1500)
    assert "p1" in f.caused_by
    assert part.fines_total.model_dump() == {"min_ntd": 4000, "max_ntd": 4000, "paid_ntd": 1500}
    t.add("fine_paid", "2024-05-02", event_id="p2", amount_ntd=2500)
    full = view(t.facts, d("2024-05-02"))
    [f] = full.fines
    assert (f.status, f.paid_ntd) == ("paid", 4000)
    assert full.fines_total.paid_ntd == 4000
    assert full.anomalies == []


def test_imposition_applies_to_the_latest_unimposed_fine_of_its_kind():
    t = Timeline()
    t.add("address_changed", "2024-01-05", event_id="m1", address="a")  # late 2024-02-05
    t.add("address_changed", "2024-03-01", event_id="m2", address="b")  # late 2024-04-01
    t.add("fine_imposed", "2024-04-10", event_id="imp", fine="late_details_update", amount_ntd=4500)
    v = view(t.facts, d("2024-04-10"))
    first, second = [f for f in v.fines if f.kind == "late_details_update"]
    assert first.amount_ntd is None
    assert (second.amount_ntd, second.status) == (4500, "imposed")
    assert v.fines_total.min_ntd == 2000 + 4500
    assert v.fines_total.max_ntd == 2000 + 4500


def test_fines_total_sums_ranges_and_fixed_amounts():
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident")  # late application: 2,000–10,000
    t.add("arc_applied", "2024-04-20", application="initial")
    t.add("arc_issued", "2024-04-30", valid_until="2024-05-31")
    v = view(t.facts, d("2024-06-05"))  # overstay day 5: 10,000
    assert {f.kind for f in v.fines} == {"late_arc_application", "overstay"}
    assert v.fines_total.model_dump() == {"min_ntd": 12000, "max_ntd": 20000, "paid_ntd": 0}


def test_an_imposed_overstay_fine_replaces_the_table_amount():
    t = holding_arc("2024-05-31")
    t.add("fine_imposed", "2024-06-12", event_id="imp", fine="overstay", amount_ntd=20000)
    t.add("fine_paid", "2024-06-13", amount_ntd=20000, fine="overstay")
    v = view(t.facts, d("2024-06-14"))
    [f] = fines_of(v, "overstay")
    assert (f.amount_ntd, f.paid_ntd, f.status) == (20000, 20000, "paid")
    assert v.overstay is not None
    assert v.overstay.fine_ntd == 20000
