"""Issue 8: rules read straight from the guide and SPEC §2–§3, before the engine has them.

Written by an independent reading: expected dates come from the guide
(`seed/arc-student-guide.txt`) and SPEC ("within N days of X" ends on X + N; a thing done
on its due day is on time; a fine accrues the day after the due day), never from the
engine. Each test cites the guide line or SPEC row it protects.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from eventsourcing.cipher import AESCipher
from facts_builder import Timeline, d, fines_of, only, tasks_of

from projections.engine import view
from timeline.contract import parse_event
from timeline.errors import ContractError
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore


def holding_arc(valid_until: str = "2025-08-31") -> Timeline:
    """In Taiwan with an ARC (registration basis) valid through valid_until."""
    t = Timeline()
    t.add("entered", "2023-08-20", event_id="entry", visa="resident")
    t.add("arc_applied", "2023-08-25", event_id="applied", application="initial")
    t.add("arc_issued", "2023-09-01", event_id="issued", valid_until=valid_until)
    return t


def late_details(v) -> list:
    """The view's R-DETAILS-LATE fines, in the order the view lists them."""
    return fines_of(v, "late_details_update")


def by_cause(v, kind: str) -> dict:
    """The view's tasks of `kind`, keyed by their first (triggering) event id."""
    return {x.caused_by[0]: x for x in tasks_of(v, kind)}


# == 1. R-ARC-ENTRY: every arrival starts its own clock ==================================


def away_and_back() -> Timeline:
    """The issue's example: resident visa 03-16, never applied, left 05-01, back 06-01."""
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="first", visa="resident")
    t.add("departed", "2024-05-01", event_id="left")
    t.add("entered", "2024-06-01", event_id="second", visa="resident")
    return t


def test_departure_cancels_an_overdue_apply_arc_and_its_accrued_fine_stays():
    """SPEC R-ARC-ENTRY: "a departure cancels a pending apply_arc … (a fine already accrued
    stays)"; issue 8 item 1: the 2024-05-01 departure cancels the task overdue since 04-16."""
    t = away_and_back()
    before = view(t.facts, d("2024-04-30"))
    assert only(before, "apply_arc").status == "overdue"
    v = view(t.facts, d("2024-05-01"))
    task = only(v, "apply_arc")
    assert task.status == "cancelled"
    assert task.done_on is None
    [fine] = fines_of(v, "late_arc_application")
    assert (fine.accrued_on, fine.amount_min_ntd, fine.amount_max_ntd) == (
        d("2024-04-16"),
        2000,
        10000,
    )
    assert "first" in fine.caused_by
    assert v.in_taiwan is False
    assert v.status != "arc_application_overdue"


def test_second_resident_entry_opens_its_own_apply_arc_due_30_days_later():
    """SPEC R-ARC-ENTRY: "the next arrival opens a new task"; guide: "within 30 days of
    arriving in Taiwan" (entry 2024-06-01 → apply by 2024-07-01)."""
    t = away_and_back()
    v = view(t.facts, d("2024-06-01"))
    tasks = by_cause(v, "apply_arc")
    assert set(tasks) == {"first", "second"}
    assert tasks["first"].status == "cancelled"
    new = tasks["second"]
    assert (new.status, new.opens_on, new.due_on) == ("open", d("2024-06-01"), d("2024-07-01"))
    assert (new.rule, new.where, new.fee_ntd) == ("R-ARC-ENTRY", "online", 1000)
    assert v.status == "arc_application_due"
    assert v.in_taiwan is True
    assert v.anomalies == []


def test_second_apply_arc_open_on_its_due_day_without_a_second_fine():
    """Guide: "must apply … by April 15, 2024 at the latest" — the due day itself is on
    time; only the first arrival's fine exists on 2024-07-01."""
    v = view(away_and_back().facts, d("2024-07-01"))
    assert by_cause(v, "apply_arc")["second"].status == "open"
    assert [f.accrued_on for f in fines_of(v, "late_arc_application")] == [d("2024-04-16")]


def test_missing_the_second_deadline_accrues_a_second_late_fine():
    """SPEC R-ARC-ENTRY "(and, if missed, a new fine)"; R-ARC-LATE accrues the day after
    the due day: 2024-07-02, NTD 2,000–10,000, caused by the second entry."""
    v = view(away_and_back().facts, d("2024-07-02"))
    assert by_cause(v, "apply_arc")["second"].status == "overdue"
    assert v.status == "arc_application_overdue"
    fines = sorted(fines_of(v, "late_arc_application"), key=lambda f: f.accrued_on)
    assert [(f.accrued_on, f.amount_min_ntd, f.amount_max_ntd) for f in fines] == [
        (d("2024-04-16"), 2000, 10000),
        (d("2024-07-02"), 2000, 10000),
    ]
    assert "second" in fines[1].caused_by
    assert "second" not in fines[0].caused_by
    assert v.fines_total.model_dump() == {"min_ntd": 4000, "max_ntd": 20000, "paid_ntd": 0}


def test_late_application_after_the_second_entry_completes_the_second_task_only():
    """Issue 8 item 1: an application on 2024-07-20 must not mark the first (cancelled)
    task done_late; it completes the second one late, and both fines stand."""
    t = away_and_back()
    t.add("arc_applied", "2024-07-20", event_id="applied", application="initial")
    v = view(t.facts, d("2024-07-25"))
    tasks = by_cause(v, "apply_arc")
    assert tasks["first"].status == "cancelled"
    assert (tasks["second"].status, tasks["second"].done_on) == ("done_late", d("2024-07-20"))
    assert "applied" in tasks["second"].caused_by
    assert sorted(f.accrued_on for f in fines_of(v, "late_arc_application")) == [
        d("2024-04-16"),
        d("2024-07-02"),
    ]


@pytest.mark.parametrize(
    ("applied", "status", "second_fine"),
    [("2024-07-01", "done", False), ("2024-07-02", "done_late", True)],
)
def test_second_task_on_time_on_its_due_day_late_the_day_after(applied, status, second_fine):
    """SPEC §3: "A thing done on its due day is on time"; R-ARC-LATE: fine the day after."""
    t = away_and_back()
    t.add("arc_applied", applied, event_id="applied", application="initial")
    v = view(t.facts, d("2024-08-01"))
    assert by_cause(v, "apply_arc")["second"].status == status
    accrued = sorted(f.accrued_on for f in fines_of(v, "late_arc_application"))
    assert accrued == [d("2024-04-16")] + ([d("2024-07-02")] if second_fine else [])


@pytest.mark.parametrize(
    ("imposed_on", "target"),
    [
        ("2024-05-10", 0),  # only the first fine has accrued by then
        ("2024-07-01", 0),  # the second accrues only on 07-02
        ("2024-07-02", 1),  # the latest accrued on or before it: the second
        ("2024-07-25", 1),
    ],
)
def test_fine_imposed_applies_to_the_latest_late_arc_fine_accrued_on_or_before_it(
    imposed_on, target
):
    """SPEC §3: "fine_imposed applies to the latest fine of that kind accrued on or before
    it that has no imposed amount yet" — never a stray fine, never an anomaly."""
    t = away_and_back()
    t.add(
        "fine_imposed",
        imposed_on,
        event_id="imp",
        fine="late_arc_application",
        amount_ntd=3000,
    )
    v = view(t.facts, d("2024-08-01"))
    fines = sorted(fines_of(v, "late_arc_application"), key=lambda f: f.accrued_on)
    assert [f.accrued_on for f in fines] == [d("2024-04-16"), d("2024-07-02")]
    assert [f.amount_ntd for f in fines] == [3000 if i == target else None for i in range(2)]
    assert fines[target].status == "imposed"
    assert "imp" in fines[target].caused_by
    assert v.anomalies == []
    other = fines[1 - target]
    assert v.fines_total.min_ntd == 3000 + other.amount_min_ntd
    assert v.fines_total.max_ntd == 3000 + other.amount_max_ntd


def test_two_impositions_fix_both_late_arc_fines():
    """SPEC §3 fine_imposed rule: the second imposition finds the first fine already
    imposed, so it applies to the other one; nothing is left as a range."""
    t = away_and_back()
    t.add(
        "fine_imposed", "2024-05-10", event_id="imp1", fine="late_arc_application", amount_ntd=2000
    )
    t.add(
        "fine_imposed", "2024-07-10", event_id="imp2", fine="late_arc_application", amount_ntd=6000
    )
    v = view(t.facts, d("2024-08-01"))
    fines = sorted(fines_of(v, "late_arc_application"), key=lambda f: f.accrued_on)
    assert [(f.accrued_on, f.amount_ntd) for f in fines] == [
        (d("2024-04-16"), 2000),
        (d("2024-07-02"), 6000),
    ]
    assert v.fines_total.model_dump() == {"min_ntd": 8000, "max_ntd": 8000, "paid_ntd": 0}
    assert v.anomalies == []


@pytest.mark.parametrize(
    ("left", "fined"),
    [
        ("2024-04-14", False),  # the day before the due day
        ("2024-04-15", False),  # on the due day: still within the 30 days
        ("2024-04-16", True),  # the day after: the fine accrued that day and stays
    ],
)
def test_departure_around_the_due_day_cancels_apply_arc(left, fined):
    """SPEC R-ARC-ENTRY: "a departure cancels a pending apply_arc (a fine already accrued
    stays)"; guide: entry 2024-03-16 → apply by 2024-04-15."""
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="entry", visa="resident")
    t.add("departed", left, event_id="left")
    v = view(t.facts, d("2024-05-20"))
    assert only(v, "apply_arc").status == "cancelled"
    expected = [d("2024-04-16")] if fined else []
    assert [f.accrued_on for f in fines_of(v, "late_arc_application")] == expected


def test_departure_cancels_a_pending_apply_residence():
    """SPEC R-ARC-ENTRY: "a departure cancels a pending apply_arc/apply_residence"."""
    t = Timeline()
    t.add(
        "entered",
        "2024-03-01",
        event_id="entry",
        visa="visitor",
        visa_code="FS",
        stay_until="2024-05-29",
    )
    t.add("departed", "2024-04-01", event_id="left")
    v = view(t.facts, d("2024-06-01"))
    assert only(v, "apply_residence").status == "cancelled"
    assert v.fines == []


def test_visa_change_task_is_cancelled_by_a_departure_and_a_resident_entry_starts_anew():
    """SPEC R-ARC-ENTRY: departure cancels the pending apply_arc (here R-ARC-VISACHANGE's),
    the next arrival on a resident visa opens its own, due entry + 30."""
    t = Timeline()
    t.add("entered", "2024-03-01", visa="visitor", stay_until="2024-08-29")
    t.add("visa_changed", "2024-03-10", event_id="change", to="resident")
    t.add("departed", "2024-03-20", event_id="left")
    t.add("entered", "2024-05-02", event_id="back", visa="resident")
    v = view(t.facts, d("2024-05-02"))
    tasks = by_cause(v, "apply_arc")
    assert tasks["change"].status == "cancelled"
    assert (tasks["back"].status, tasks["back"].due_on) == ("open", d("2024-06-01"))
    assert v.fines == []


def test_regression_application_before_departure_completes_apply_arc():
    """Guide: apply "within 30 days of arriving"; an application made before leaving
    completes the task (done), and the departure cancels nothing."""
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="entry", visa="resident")
    t.add("arc_applied", "2024-04-10", event_id="applied", application="initial")
    t.add("departed", "2024-04-20", event_id="left")
    v = view(t.facts, d("2024-05-20"))
    task = only(v, "apply_arc")
    assert (task.status, task.done_on) == ("done", d("2024-04-10"))
    assert v.fines == []


def test_regression_reentry_on_a_valid_arc_opens_nothing():
    """Guide (R-ENTRIES): "A foreigner who has an ARC may make multiple entries into Taiwan
    during their permitted stay, without having to apply for a new ARC"."""
    t = holding_arc("2025-08-31")
    t.add("departed", "2024-06-01", event_id="left")
    t.add("entered", "2024-06-20", event_id="back", visa="arc")
    t.add("departed", "2024-07-01", event_id="left2")
    t.add("entered", "2024-07-05", event_id="back2", visa="resident")
    v = view(t.facts, d("2024-09-01"))
    assert [x.caused_by[0] for x in tasks_of(v, "apply_arc")] == ["entry"]
    assert only(v, "apply_arc").status == "done"
    assert v.fines == []
    assert v.status == "arc_valid"
    assert v.anomalies == []


# == 2. After R-EXPIRED-ABROAD the new ARC is applied for at a service center ============


def expired_abroad_then_back() -> Timeline:
    t = holding_arc("2024-05-31")
    t.add("departed", "2024-05-20", event_id="left")  # ARC expires abroad on 2024-06-01
    t.add("entered", "2024-07-01", event_id="back", visa="resident")
    return t


def test_entry_after_expired_abroad_opens_apply_arc_at_a_service_center():
    """Guide: 至服務站重新申請辦理居留證 / "reapply for a resident certificate at a service
    center"; SPEC R-ARC-ENTRY: "After R-EXPIRED-ABROAD the new task is at a service
    center" (due entry + 30 as any arrival)."""
    v = view(expired_abroad_then_back().facts, d("2024-07-01"))
    task = by_cause(v, "apply_arc")["back"]
    assert task.where == "service_center"
    assert (task.status, task.opens_on, task.due_on) == ("open", d("2024-07-01"), d("2024-07-31"))
    assert task.rule == "R-ARC-ENTRY"
    assert task.fee_ntd == 1000
    # the first ARC's application was online, and stays as it was
    assert by_cause(v, "apply_arc")["entry"].where == "online"


def test_ordinary_reentry_without_an_arc_applies_online():
    """Guide: "must apply for an ARC online"; paper applications are no longer accepted.
    Only an expiry abroad sends the student to a service center."""
    v = view(away_and_back().facts, d("2024-06-01"))
    assert by_cause(v, "apply_arc")["second"].where == "online"


def test_entry_after_expired_abroad_late_application_accrues_the_late_fine():
    """SPEC R-ARC-ENTRY/R-ARC-LATE: the service-center task keeps the 30-day period and the
    late fine; R-EXPIRED-ABROAD itself has no fine."""
    v = view(expired_abroad_then_back().facts, d("2024-08-01"))
    assert by_cause(v, "apply_arc")["back"].status == "overdue"
    assert [(f.kind, f.accrued_on) for f in v.fines] == [("late_arc_application", d("2024-08-01"))]


# == 3. R-VISITOR: a stay shorter than the 15-day lead ==================================


def visitor(entry: str, stay_days: int) -> Timeline:
    """An FS visitor entering on `entry` whose stay ends `stay_days` days later."""
    t = Timeline()
    stay_until = (d(entry) + timedelta(days=stay_days)).isoformat()
    t.add("entered", entry, event_id="entry", visa="visitor", visa_code="FS", stay_until=stay_until)
    return t


def shorter_than_lead(v) -> list:
    return [a for a in v.anomalies if a.kind == "stay_shorter_than_lead"]


@pytest.mark.parametrize("stay_days", [14, 1])
def test_visitor_stay_shorter_than_15_days_is_due_on_the_entry_day_with_an_anomaly(stay_days):
    """Guide: FS/FC/FR visitors "may apply online for residence 15 days prior to the
    termination of their duration of stay"; SPEC R-VISITOR: "when that day is before the
    entry, due on the entry day, with an anomaly stay_shorter_than_lead"."""
    t = visitor("2024-03-10", stay_days)
    v = view(t.facts, d("2024-03-10"))
    task = only(v, "apply_residence")
    assert (task.opens_on, task.due_on, task.status) == (d("2024-03-10"), d("2024-03-10"), "open")
    assert task.rule == "R-VISITOR"
    assert v.status == "arc_application_due"
    [anomaly] = shorter_than_lead(v)
    assert anomaly.events == ["entry"]
    assert anomaly.on == d("2024-03-10")
    assert anomaly.message.strip()
    after = view(t.facts, d("2024-03-11"))
    assert only(after, "apply_residence").status == "overdue"
    assert after.fines == []  # R-ARC-LATE fines apply_arc only


def test_visitor_stay_shorter_than_the_lead_is_not_overdue_before_the_entry():
    """A student cannot be overdue before they land (issue 8 item 3)."""
    t = visitor("2024-03-10", 14)
    v = view(t.facts, d("2024-03-09"))
    assert [x.status for x in tasks_of(v, "apply_residence")] in ([], ["upcoming"])
    assert v.status != "arc_application_overdue"


def test_visitor_stay_of_exactly_15_days_is_due_on_the_entry_day_without_anomaly():
    """SPEC R-VISITOR: stay_until − 15 equals the entry day, which is not before it."""
    t = visitor("2024-03-10", 15)
    v = view(t.facts, d("2024-03-10"))
    assert only(v, "apply_residence").due_on == d("2024-03-10")
    assert shorter_than_lead(v) == []
    assert v.anomalies == []


def test_visitor_stay_of_16_days_is_due_the_day_after_entry_without_anomaly():
    """SPEC R-VISITOR: due stay_until − 15 (2024-03-26 − 15 = 2024-03-11)."""
    t = visitor("2024-03-10", 16)
    v = view(t.facts, d("2024-03-11"))
    task = only(v, "apply_residence")
    assert (task.due_on, task.status) == (d("2024-03-11"), "open")
    assert v.anomalies == []


def test_visitor_short_stay_applied_on_the_entry_day_is_done():
    """SPEC §3: done on the due day is on time (here the clamped due day, the entry)."""
    t = visitor("2024-03-10", 5)
    t.add("arc_applied", "2024-03-10", event_id="applied", application="initial")
    task = only(view(t.facts, d("2024-04-01")), "apply_residence")
    assert (task.status, task.done_on) == ("done", d("2024-03-10"))


# == 4. R-WORKPLACE: change of place of employment (服務處所) =============================


def test_workplace_change_task_due_30_days_later_online_without_fee():
    """Guide: 外國人變更居留地址或服務處所時，應於30日內…辦理資料異動 / "changes their
    residential address or their place of employment must … apply within 30 days";
    SPEC R-WORKPLACE; lead: online, no fee."""
    t = holding_arc()
    t.add("workplace_changed", "2024-03-16", event_id="job", workplace="Campus bookshop")
    v = view(t.facts, d("2024-03-16"))
    task = only(v, "report_workplace_change")
    assert task.rule == "R-WORKPLACE"
    assert (task.opens_on, task.due_on, task.status) == (d("2024-03-16"), d("2024-04-15"), "open")
    assert task.caused_by == ["job"]
    assert task.where == "online"
    assert task.fee_ntd is None
    zh = {doc.zh for doc in task.documents}
    assert {"申請書", "護照", "外僑居留證"} <= zh  # the guide's 資料異動 list
    assert all(doc.en.strip() and doc.zh.strip() for doc in task.documents)
    assert v.status == "arc_valid"


def test_workplace_change_without_a_workplace_name_still_opens_the_task():
    """SPEC §2: `workplace` is optional; the duty comes from the change itself."""
    t = holding_arc()
    t.add("workplace_changed", "2024-03-16", event_id="job")
    assert only(view(t.facts, d("2024-03-16")), "report_workplace_change").due_on == d("2024-04-15")


def test_workplace_change_open_on_due_day_overdue_and_first_offense_the_day_after():
    """Guide: "failure to do so will result in a fine"; 第一次 1st offense NTD 2,000;
    SPEC R-DETAILS-LATE: accrued the day after the due day."""
    t = holding_arc()
    t.add("workplace_changed", "2024-03-16", event_id="job", workplace="Lab")
    on_due = view(t.facts, d("2024-04-15"))
    assert only(on_due, "report_workplace_change").status == "open"
    assert on_due.fines == []
    v = view(t.facts, d("2024-04-16"))
    assert only(v, "report_workplace_change").status == "overdue"
    [fine] = late_details(v)
    assert (fine.rule, fine.accrued_on, fine.offense) == ("R-DETAILS-LATE", d("2024-04-16"), 1)
    assert (fine.amount_min_ntd, fine.amount_max_ntd, fine.status) == (2000, 2000, "accrued")
    assert "job" in fine.caused_by


@pytest.mark.parametrize(
    ("changed", "due"),
    [
        ("2023-12-20", "2024-01-04"),  # Art. 31 before the 2023 amendment: 15 days
        ("2023-12-31", "2024-01-15"),
        ("2024-01-01", "2024-01-31"),  # 30 days from 2024-01-01
    ],
)
def test_workplace_period_is_the_one_in_force_on_the_day_of_the_change(changed, due):
    """SPEC §3: Art. 31 ("change of address or place of service") gives 30 days from
    2024-01-01, 15 before; a fact is judged by the rule in force on its day."""
    t = holding_arc()
    t.add("workplace_changed", changed, event_id="job", workplace="x")
    assert only(view(t.facts, d(changed)), "report_workplace_change").due_on == d(due)
    assert only(view(t.facts, d(due)), "report_workplace_change").status == "open"
    day_after = d(due) + timedelta(days=1)
    after = view(t.facts, day_after)
    assert only(after, "report_workplace_change").status == "overdue"
    assert [f.accrued_on for f in late_details(after)] == [day_after]


@pytest.mark.parametrize(
    ("reported", "status", "fined"),
    [
        ("2024-04-14", "done", False),
        ("2024-04-15", "done", False),
        ("2024-04-16", "done_late", True),
    ],
)
def test_workplace_reported_with_employer_around_the_due_day(reported, status, fined):
    """SPEC completion table: report_workplace_change is completed by details_updated with
    `employer`; on the due day it is on time, the day after it is late and fined."""
    t = holding_arc()
    t.add("workplace_changed", "2024-03-16", event_id="job", workplace="x")
    t.add("details_updated", reported, event_id="upd", fields=["employer"])
    v = view(t.facts, d("2024-06-01"))
    task = only(v, "report_workplace_change")
    assert (task.status, task.done_on) == (status, d(reported))
    assert "upd" in task.caused_by
    assert [f.accrued_on for f in late_details(v)] == ([d("2024-04-16")] if fined else [])


def test_one_employer_update_closes_every_earlier_workplace_change_but_not_a_later_one():
    """SPEC completion table: "closes every open one for changes on or before it"."""
    t = holding_arc()
    t.add("workplace_changed", "2024-03-01", event_id="w1", workplace="a")
    t.add("workplace_changed", "2024-03-10", event_id="w2", workplace="b")
    t.add("details_updated", "2024-03-15", event_id="upd", fields=["employer"])
    t.add("workplace_changed", "2024-03-20", event_id="w3", workplace="c")
    v = view(t.facts, d("2024-03-25"))
    tasks = by_cause(v, "report_workplace_change")
    assert (tasks["w1"].status, tasks["w1"].done_on) == ("done", d("2024-03-15"))
    assert (tasks["w2"].status, tasks["w2"].done_on) == ("done", d("2024-03-15"))
    assert tasks["w3"].status == "open"


def test_employer_update_on_the_day_of_the_change_closes_it_whatever_the_record_order():
    """SPEC: "changes on or before it" — an update on the same day counts, even when the
    feed reports the change after the update was recorded."""
    t = holding_arc()
    t.add("details_updated", "2024-03-15", event_id="upd", fields=["employer"])
    t.add("workplace_changed", "2024-03-15", event_id="job", workplace="a")
    v = view(t.facts, d("2024-05-01"))
    assert only(v, "report_workplace_change").status == "done"
    assert v.fines == []


def test_address_and_employer_updates_close_only_their_own_tasks():
    """SPEC completion table: address → report_address_change, employer →
    report_workplace_change; one does not complete the other, nor does a passport update."""
    t = holding_arc()
    t.add("address_changed", "2024-03-01", event_id="moved", address="a")
    t.add("workplace_changed", "2024-03-01", event_id="job", workplace="b")
    t.add("details_updated", "2024-03-05", event_id="addr", fields=["address"])
    t.add("details_updated", "2024-03-06", event_id="pp", fields=["passport"])
    v = view(t.facts, d("2024-03-07"))
    assert only(v, "report_address_change").status == "done"
    assert only(v, "report_workplace_change").status == "open"
    t2 = holding_arc()
    t2.add("address_changed", "2024-03-01", event_id="moved", address="a")
    t2.add("workplace_changed", "2024-03-01", event_id="job", workplace="b")
    t2.add("details_updated", "2024-03-08", event_id="emp", fields=["employer"])
    v2 = view(t2.facts, d("2024-03-09"))
    assert only(v2, "report_address_change").status == "open"
    assert (
        only(v2, "report_workplace_change").status,
        only(v2, "report_workplace_change").done_on,
    ) == (
        "done",
        d("2024-03-08"),
    )


def test_one_update_with_address_and_employer_closes_both():
    """SPEC §2: `fields` lists what was recorded; one update may record both changes."""
    t = holding_arc()
    t.add("address_changed", "2024-03-01", address="a")
    t.add("workplace_changed", "2024-03-02", workplace="b")
    t.add("details_updated", "2024-03-20", fields=["address", "employer"])
    v = view(t.facts, d("2024-06-01"))
    assert only(v, "report_address_change").status == "done"
    assert only(v, "report_workplace_change").status == "done"
    assert v.fines == []


def test_late_address_workplace_and_passport_updates_share_one_offense_count():
    """Guide table 未依規定變更外僑居留證資料 / "Failure to update your ARC information":
    1st NTD 2,000, 2nd 5,000, 3rd 10,000; SPEC R-WORKPLACE: "a late one is an
    R-DETAILS-LATE offense like an address" (passport updates count too)."""
    t = holding_arc("2024-08-31")
    t.add("address_changed", "2024-01-05", event_id="moved", address="a")  # late 02-05: #1
    t.add("workplace_changed", "2024-03-01", event_id="job1", workplace="b")  # late 04-01: #2
    t.add("workplace_changed", "2024-04-10", event_id="job2", workplace="c")
    t.add("details_updated", "2024-04-20", fields=["employer"])  # job2 in time: no offense
    t.add("workplace_changed", "2024-05-01", event_id="job3", workplace="d")  # late 05-31→06-01: #3
    t.add("passport_replaced", "2024-05-20", event_id="pp")  # due 08-31, late 09-01: #4
    v = view(t.facts, d("2024-09-01"))
    fines = late_details(v)
    assert [(f.caused_by[0], f.offense, f.amount_min_ntd, f.amount_max_ntd) for f in fines] == [
        ("moved", 1, 2000, 2000),
        ("job1", 2, 5000, 5000),
        ("job3", 3, 10000, 10000),
        ("pp", 4, 10000, 10000),
    ]
    assert [f.accrued_on for f in fines] == [
        d("2024-02-05"),
        d("2024-04-01"),
        d("2024-06-01"),
        d("2024-09-01"),
    ]
    assert {f.rule for f in fines} == {"R-DETAILS-LATE"}
    # job1 was closed late by the 04-20 update: done_late, its fine stays
    assert by_cause(v, "report_workplace_change")["job1"].status == "done_late"
    assert by_cause(v, "report_workplace_change")["job2"].status == "done"


def test_a_late_workplace_report_first_makes_a_later_late_address_the_second_offense():
    """R-DETAILS-LATE: the count is per student across kinds, in order of accrual."""
    t = holding_arc()
    t.add("workplace_changed", "2024-02-01", event_id="job", workplace="a")  # late 03-03
    t.add("address_changed", "2024-04-01", event_id="moved", address="b")  # late 05-02
    fines = late_details(view(t.facts, d("2024-06-01")))
    assert [(f.caused_by[0], f.offense, f.amount_min_ntd) for f in fines] == [
        ("job", 1, 2000),
        ("moved", 2, 5000),
    ]
    assert [f.accrued_on for f in fines] == [d("2024-03-03"), d("2024-05-02")]


# == 5. R-OVERSTAY under 30 days: pay_fine_and_reapply ==================================


def test_no_pay_fine_task_on_the_last_valid_day():
    """SPEC R-OVERSTAY: the overstay starts on valid_until + 1."""
    v = view(holding_arc("2024-05-31").facts, d("2024-05-31"))
    assert tasks_of(v, "pay_fine_and_reapply") == []


@pytest.mark.parametrize(
    ("as_of", "day"),
    [("2024-06-01", 1), ("2024-06-15", 15), ("2024-06-28", 28), ("2024-06-29", 29)],
)
def test_pay_fine_and_reapply_open_from_overstay_day_1_through_day_29(as_of, day):
    """Guide: 逾期居留未滿30日…經處罰鍰後，得重新申請居留 / "overstays … by less than 30
    days … may reapply for residency after paying a fine"; SPEC R-OVERSTAY: task
    pay_fine_and_reapply, service center, due on overstay day 29."""
    v = view(holding_arc("2024-05-31").facts, d(as_of))
    assert v.overstay is not None and v.overstay.days == day
    assert v.overstay.can_reapply is True
    task = only(v, "pay_fine_and_reapply")
    assert (task.opens_on, task.due_on, task.status) == (d("2024-06-01"), d("2024-06-29"), "open")
    assert task.rule == "R-OVERSTAY"
    assert task.where == "service_center"
    assert task.fee_ntd is None  # the overstay fine is the fine
    assert task.caused_by
    assert tasks_of(v, "leave_and_reapply_visa") == []


@pytest.mark.parametrize("as_of", ["2024-06-30", "2024-07-01", "2024-09-01"])
def test_pay_fine_and_reapply_cancelled_from_day_30_when_leave_and_reapply_takes_over(as_of):
    """Guide: 逾期居留30日(含第30天)以上者，不得重辦居留 / "by 30 days or more is not
    permitted to reapply"; SPEC completion table: "cancelled on day 30"."""
    v = view(holding_arc("2024-05-31").facts, d(as_of))
    task = only(v, "pay_fine_and_reapply")
    assert (task.status, task.done_on, task.due_on) == ("cancelled", None, d("2024-06-29"))
    assert only(v, "leave_and_reapply_visa").status == "open"
    assert v.overstay is not None and v.overstay.can_reapply is False


@pytest.mark.parametrize(
    ("event", "fields", "on"),
    [
        ("arc_applied", {"application": "reapplication"}, "2024-06-10"),
        ("arc_applied", {"application": "extension"}, "2024-06-29"),  # on the due day
        ("arc_issued", {"valid_until": "2025-05-31", "application": "reapplication"}, "2024-06-20"),
    ],
)
def test_pay_fine_and_reapply_done_by_reapplication_extension_or_new_arc(event, fields, on):
    """SPEC completion table: pay_fine_and_reapply is done by arc_applied (reapplication or
    extension) or arc_issued, on or before day 29."""
    t = holding_arc("2024-05-31")
    t.add(event, on, event_id="done", **fields)
    v = view(t.facts, d("2024-07-15"))
    task = only(v, "pay_fine_and_reapply")
    assert (task.status, task.done_on) == ("done", d(on))
    assert "done" in task.caused_by
    # SPEC R-OVERSTAY: only an extension applied on or before valid_until suspends the
    # overstay, so an undecided reapplication leaves the count running: once day 30 is
    # reached, leave_and_reapply_visa appears unless a new ARC was issued before it.
    leave = tasks_of(v, "leave_and_reapply_visa")
    assert (
        leave == [] if event == "arc_issued" else [t.opens_on for t in leave] == [d("2024-06-30")]
    )


def test_an_initial_or_replacement_application_does_not_complete_pay_fine_and_reapply():
    """SPEC completion table names reapplication or extension only."""
    t = holding_arc("2024-05-31")
    t.add("arc_applied", "2024-06-05", application="replacement")
    assert only(view(t.facts, d("2024-06-06")), "pay_fine_and_reapply").status == "open"


@pytest.mark.parametrize("left", ["2024-06-01", "2024-06-28", "2024-06-29"])
def test_departure_during_the_first_29_days_cancels_pay_fine_and_reapply(left):
    """SPEC completion table: "cancelled on day 30 or at departure"."""
    t = holding_arc("2024-05-31")
    t.add("departed", left, event_id="left")
    v = view(t.facts, d("2024-08-01"))
    task = only(v, "pay_fine_and_reapply")
    assert (task.status, task.done_on) == ("cancelled", None)
    assert v.status == "overstay"  # the overstay stays unresolved (SPEC §4)


def test_studies_ceased_during_the_overstay_cancels_pay_fine_and_reapply():
    """Guide: reapply only if "the reason for their original residency application
    continues to exist"; SPEC: cancelled "when studies cease (can_reapply false)"."""
    t = holding_arc("2024-05-31")
    t.add("studies_ceased", "2024-06-10", event_id="quit", reason="withdrawn")
    v = view(t.facts, d("2024-06-15"))
    assert only(v, "pay_fine_and_reapply").status == "cancelled"


def test_pay_fine_and_reapply_under_the_pre_2024_03_fine_regime_due_on_leap_day():
    """Art. 31(3) (the under-30-days reapplication) holds in both fine regimes; valid until
    2024-01-31 → overstay day 1 is 02-01, day 29 is 2024-02-29."""
    t = holding_arc("2024-01-31")
    task = only(view(t.facts, d("2024-02-01")), "pay_fine_and_reapply")
    assert (task.opens_on, task.due_on) == (d("2024-02-01"), d("2024-02-29"))
    assert only(view(t.facts, d("2024-02-29")), "pay_fine_and_reapply").status == "open"
    assert only(view(t.facts, d("2024-03-01")), "pay_fine_and_reapply").status == "cancelled"


def test_regression_extension_applied_in_time_opens_no_pay_fine_task():
    """SPEC R-OVERSTAY: an extension applied on or before valid_until and undecided
    suspends the overstay, so there is nothing to pay."""
    t = holding_arc("2024-05-31")
    t.add("arc_applied", "2024-05-31", application="extension")
    v = view(t.facts, d("2024-06-15"))
    assert tasks_of(v, "pay_fine_and_reapply") == []
    assert v.overstay is None


# == 6. contact_updated: accepted, derives nothing, never echoed =========================

EMAIL = "qx.student7731@example.edu.tw"
LINE_ID = "U" + "0123456789abcdef" * 2


def test_contact_updated_is_accepted_with_any_one_of_its_fields():
    """SPEC §2: `email`, `line_user_id`, `language` ("en" | "zh"), each optional, at least
    one."""
    base = {
        "event_id": "c",
        "student_id": "S1",
        "type": "contact_updated",
        "occurred_on": "2024-03-01",
    }
    for fields in (
        {"email": EMAIL},
        {"line_user_id": LINE_ID},
        {"language": "zh"},
        {"language": "en"},
        {"email": EMAIL, "line_user_id": LINE_ID, "language": "en"},
    ):
        body = parse_event(base | fields).body()
        assert {k: body.get(k) for k in fields} == fields
        assert all(
            body.get(k) is None for k in ("email", "line_user_id", "language") - fields.keys()
        )


def test_contact_updated_derives_no_task_status_fine_or_anomaly():
    """SPEC §2 / issue 8 item 6: contact_updated "derives no task" (alerts use it)."""
    without = holding_arc("2024-05-31")
    with_contact = holding_arc("2024-05-31")
    with_contact.add("contact_updated", "2024-03-01", event_id="c1", email=EMAIL, language="zh")
    with_contact.add("contact_updated", "2024-06-10", event_id="c2", line_user_id=LINE_ID)
    for as_of in ("2024-03-01", "2024-04-01", "2024-06-10", "2024-07-15"):
        assert view(with_contact.facts, d(as_of)).model_dump() == (
            view(without.facts, d(as_of)).model_dump()
        ), as_of


def test_contact_updated_alone_leaves_a_student_with_no_arc_and_nothing_to_do():
    t = Timeline()
    t.add("contact_updated", "2024-03-01", event_id="c1", email=EMAIL)
    v = view(t.facts, d("2024-03-02"))
    assert (v.status, v.tasks, v.fines, v.anomalies) == ("no_arc", [], [], [])


BAD_CONTACTS = [
    ("email", {"email": "qx.student7731 at example.edu.tw"}),  # no @
    ("email", {"email": "qx@student@example.edu.tw"}),  # two @
    ("email", {"email": "qx student7731@example.edu.tw"}),  # a space
    ("email", {"email": "q" * 250 + "@example.edu.tw"}),  # over 254
    ("line_user_id", {"line_user_id": "U" + "0123456789ABCDEF" * 2}),  # upper-case hex
    ("line_user_id", {"line_user_id": "U" + "0123456789abcdef" * 2 + "0"}),  # 33 digits
    ("line_user_id", {"line_user_id": "qx-student-7731"}),
    ("language", {"language": "fr"}),
    ("", {}),  # at least one field
]


@pytest.mark.parametrize(("field", "fields"), BAD_CONTACTS)
def test_contact_updated_rejections_name_the_field_never_the_personal_value(field, fields):
    """Lead's contract for contact_updated; SPEC §2: personal data; issue 7: personal data
    never appears in rejection messages. A valid e-mail next to a bad field is not echoed
    either."""
    raw = {
        "event_id": "c",
        "student_id": "S1",
        "type": "contact_updated",
        "occurred_on": "2024-03-01",
    } | fields
    if field == "line_user_id":
        raw["email"] = EMAIL
    with pytest.raises(ContractError) as info:
        parse_event(raw)
    text = " ".join(info.value.messages)
    assert "unknown event type" not in text  # rejected for its content, not its type
    if field:
        assert field in text
    else:
        assert text.strip()
    for secret in [v for k, v in raw.items() if k in ("email", "line_user_id")]:
        assert secret not in text
        assert secret[:20] not in text


def test_workplace_is_never_echoed_in_a_rejection():
    """Lead: `workplace` (≤ 500) is personal data like `address`, never echoed."""
    secret = "Qwertyville Noodle Shop " * 25  # 600 characters
    raw = {
        "event_id": "w",
        "student_id": "S1",
        "type": "workplace_changed",
        "occurred_on": "2024-03-01",
        "workplace": secret,
    }
    with pytest.raises(ContractError) as info:
        parse_event(raw)
    text = " ".join(info.value.messages)
    assert "unknown event type" not in text
    assert "workplace" in text
    assert "Qwertyville" not in text
    assert parse_event(raw | {"workplace": secret[:500]}).body()["workplace"] == secret[:500]


def test_ingest_report_of_a_bad_contact_event_does_not_echo_it(tmp_path):
    """The whole ingest path: the JSON summary of a rejected line carries no personal data."""
    bad = {
        "event_id": "c",
        "student_id": "S1",
        "type": "contact_updated",
        "occurred_on": "2024-03-01",
        "email": EMAIL,
        "line_user_id": "U-" + EMAIL,
    }
    with TimelineStore.open(str(tmp_path / "t.db")) as store:
        report = ingest_objects(store, [bad])
    text = json.dumps(report.as_json())
    assert report.as_json()["rejected"], text
    assert "line_user_id" in text
    assert EMAIL not in text
    assert "qx.student7731" not in text


def test_contact_details_are_encrypted_at_rest_with_the_cipher(tmp_path):
    """Lead: contact_updated is personal data, "encrypted at rest like every event"."""
    path = tmp_path / "t.db"
    key = AESCipher.create_key(32)
    event = {
        "event_id": "c",
        "student_id": "S1",
        "type": "contact_updated",
        "occurred_on": "2024-03-01",
        "email": EMAIL,
        "line_user_id": LINE_ID,
    }
    with TimelineStore.open(str(path), cipher_key=key) as store:
        assert ingest_objects(store, [event]).accepted == 1
    raw = b"".join(p.read_bytes() for p in Path(tmp_path).glob("t.db*") if p.is_file())
    assert EMAIL.encode() not in raw
    assert LINE_ID.encode() not in raw
    with TimelineStore.open(str(path), cipher_key=key) as store:
        [fact] = store.facts("S1")
        assert (fact.get("email"), fact.get("line_user_id")) == (EMAIL, LINE_ID)
