"""Issue 8 rules, read from the guide and SPEC §3 before the engine changed.

- R-ARC-ENTRY: every arrival starts its own clock ("within 30 days of arriving").
- R-EXPIRED-ABROAD: "reapply for a resident certificate at a service center".
- R-VISITOR: "15 days prior to the termination of their duration of stay", clamped to entry.
- R-WORKPLACE: "changes their residential address or their place of employment … within
  30 days"; late ones count in the same offense sequence as addresses (R-DETAILS-LATE).
- R-OVERSTAY: "overstays … by less than 30 days … may reapply for residency after paying
  a fine": task pay_fine_and_reapply until overstay day 29.
- contact_updated: accepted, derives nothing, never echoed.

Expected dates are counted by hand ("within N days of X" ends on X + N).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from eventsourcing.cipher import AESCipher
from facts_builder import Timeline, d, fines_of, only, tasks_of

from projections.engine import view
from projections.readmodel import ReadModel
from projections.rules import DOCUMENTS, RuleBook
from scheduler.messages import TASK_NAMES, task_message
from timeline.contract import PERSONAL_FIELDS, UNECHOED_FIELDS, parse_event
from timeline.errors import ContractError
from timeline.history import plain
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

WINDOW = RuleBook().with_settings(visitor_reading="window")


# -- R-ARC-ENTRY: every arrival starts its own clock --------------------------------------


def two_arrivals() -> Timeline:
    """The issue's case: entered 2024-03-16, never applied, left 05-01, back 06-01."""
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="entry1", visa="resident")
    t.add("departed", "2024-05-01", event_id="left")
    t.add("entered", "2024-06-01", event_id="entry2", visa="resident")
    return t


def test_departure_cancels_an_overdue_apply_arc_and_its_fine_stays():
    v = view(two_arrivals().facts, d("2024-05-01"))
    task = only(v, "apply_arc")
    assert task.status == "cancelled"
    assert task.caused_by == ["entry1"]
    [fine] = fines_of(v, "late_arc_application")
    assert fine.accrued_on == d("2024-04-16")
    assert fine.caused_by == ["entry1"]
    assert v.status != "arc_application_overdue"


def test_the_day_before_departure_the_first_apply_arc_is_still_overdue():
    v = view(two_arrivals().facts, d("2024-04-30"))
    assert only(v, "apply_arc").status == "overdue"
    assert v.status == "arc_application_overdue"


def test_a_new_arrival_opens_its_own_apply_arc_due_30_days_later():
    v = view(two_arrivals().facts, d("2024-06-01"))
    first, second = tasks_of(v, "apply_arc")
    assert first.status == "cancelled"
    assert (second.status, second.opens_on, second.due_on) == (
        "open",
        d("2024-06-01"),
        d("2024-07-01"),
    )
    assert second.caused_by == ["entry2"]
    assert v.status == "arc_application_due"
    assert len(v.fines) == 1


def test_the_second_arrival_is_on_time_on_its_due_day():
    v = view(two_arrivals().facts, d("2024-07-01"))
    assert tasks_of(v, "apply_arc")[1].status == "open"
    assert len(fines_of(v, "late_arc_application")) == 1


def test_missing_the_second_deadline_accrues_a_second_fine():
    v = view(two_arrivals().facts, d("2024-07-02"))
    assert tasks_of(v, "apply_arc")[1].status == "overdue"
    fines = fines_of(v, "late_arc_application")
    assert [(f.accrued_on, f.caused_by) for f in fines] == [
        (d("2024-04-16"), ["entry1"]),
        (d("2024-07-02"), ["entry2"]),
    ]
    assert (v.fines_total.min_ntd, v.fines_total.max_ntd) == (4000, 20000)


def test_a_late_application_completes_only_the_second_task():
    t = two_arrivals()
    t.add("arc_applied", "2024-07-20", event_id="applied", application="initial")
    v = view(t.facts, d("2024-07-20"))
    first, second = tasks_of(v, "apply_arc")
    assert first.status == "cancelled"
    assert (second.status, second.done_on) == ("done_late", d("2024-07-20"))
    assert len(fines_of(v, "late_arc_application")) == 2


def test_fine_imposed_applies_to_the_latest_unimposed_fine_then_the_earlier_one():
    t = two_arrivals()
    t.add(
        "fine_imposed", "2024-08-01", event_id="imp1", fine="late_arc_application", amount_ntd=4000
    )
    t.add(
        "fine_imposed", "2024-08-02", event_id="imp2", fine="late_arc_application", amount_ntd=3000
    )
    v = view(t.facts, d("2024-08-02"))
    first, second = fines_of(v, "late_arc_application")
    assert (second.amount_ntd, second.caused_by) == (4000, ["entry2", "imp1"])
    assert (first.amount_ntd, first.caused_by) == (3000, ["entry1", "imp2"])
    assert v.anomalies == []
    t.add(
        "fine_imposed", "2024-08-03", event_id="imp3", fine="late_arc_application", amount_ntd=2000
    )
    v = view(t.facts, d("2024-08-03"))
    assert [a.kind for a in v.anomalies] == ["fine_imposed_without_accrued_fine"]


def test_departure_on_the_due_day_cancels_without_a_fine():
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="entry1", visa="resident")
    t.add("departed", "2024-04-15", event_id="left")
    v = view(t.facts, d("2024-06-01"))
    assert only(v, "apply_arc").status == "cancelled"
    assert v.fines == []


def test_departure_cancels_an_overdue_apply_residence():
    t = Timeline()
    t.add(
        "entered",
        "2024-03-01",
        event_id="visit",
        visa="visitor",
        visa_code="FS",
        stay_until="2024-05-30",
    )
    t.add("departed", "2024-05-20", event_id="left")
    assert only(view(t.facts, d("2024-05-19")), "apply_residence").status == "overdue"
    assert only(view(t.facts, d("2024-05-20")), "apply_residence").status == "cancelled"


def test_reentry_on_a_valid_arc_opens_nothing():
    t = Timeline()
    t.add("entered", "2024-03-16", event_id="entry1", visa="resident")
    t.add("arc_applied", "2024-03-20", event_id="applied", application="initial")
    t.add("arc_issued", "2024-04-01", event_id="issued", valid_until="2025-03-31")
    t.add("departed", "2024-05-01", event_id="left")
    t.add("entered", "2024-06-01", event_id="entry2", visa="resident")
    v = view(t.facts, d("2024-06-01"))
    assert len(tasks_of(v, "apply_arc")) == 1
    assert only(v, "apply_arc").status == "done"


# -- R-EXPIRED-ABROAD: the new apply_arc is at a service center -----------------------------


def expired_abroad_then_back() -> Timeline:
    t = Timeline()
    t.add("entered", "2023-08-20", event_id="entry1", visa="resident")
    t.add("arc_applied", "2023-08-25", event_id="applied", application="initial")
    t.add("arc_issued", "2023-09-01", event_id="issued", valid_until="2024-06-30")
    t.add("departed", "2024-06-01", event_id="left")
    t.add("entered", "2024-08-10", event_id="entry2", visa="resident")
    return t


def test_first_apply_arc_is_online():
    v = view(expired_abroad_then_back().facts, d("2023-08-20"))
    assert only(v, "apply_arc").where == "online"


def test_apply_arc_after_an_arc_expired_abroad_is_at_a_service_center():
    v = view(expired_abroad_then_back().facts, d("2024-08-10"))
    first, second = tasks_of(v, "apply_arc")
    assert first.where == "online"
    assert (second.where, second.due_on, second.rule) == (
        "service_center",
        d("2024-09-09"),
        "R-ARC-ENTRY",
    )
    assert only(v, "reapply_visa").status == "done"


def test_a_new_residence_after_revocation_applies_online_again():
    t = expired_abroad_then_back()
    t.add("arc_applied", "2024-08-12", event_id="applied2", application="initial")
    t.add("arc_issued", "2024-08-20", event_id="issued2", valid_until="2025-08-31")
    t.add("studies_ceased", "2024-09-10", event_id="quit", reason="withdrawn")
    t.add("departed", "2024-09-15", event_id="left2")
    t.add("entered", "2025-02-01", event_id="entry3", visa="resident")
    v = view(t.facts, d("2025-02-01"))
    assert [x.where for x in tasks_of(v, "apply_arc")] == ["online", "service_center", "online"]


# -- R-VISITOR: a stay shorter than the 15-day lead --------------------------------------------


def visit(stay_until: str) -> Timeline:
    t = Timeline()
    t.add(
        "entered",
        "2024-03-01",
        event_id="visit",
        visa="visitor",
        visa_code="FS",
        stay_until=stay_until,
    )
    return t


def test_a_stay_of_exactly_15_days_is_due_on_the_entry_day_without_anomaly():
    v = view(visit("2024-03-16").facts, d("2024-03-01"))
    task = only(v, "apply_residence")
    assert (task.status, task.due_on) == ("open", d("2024-03-01"))
    assert v.anomalies == []


def test_a_stay_of_16_days_is_due_the_day_after_entry():
    v = view(visit("2024-03-17").facts, d("2024-03-01"))
    assert only(v, "apply_residence").due_on == d("2024-03-02")
    assert v.anomalies == []


def test_a_stay_of_14_days_is_due_on_the_entry_day_with_an_anomaly():
    v = view(visit("2024-03-15").facts, d("2024-03-01"))
    task = only(v, "apply_residence")
    assert (task.status, task.opens_on, task.due_on) == ("open", d("2024-03-01"), d("2024-03-01"))
    [anomaly] = v.anomalies
    assert (anomaly.kind, anomaly.on, anomaly.events) == (
        "stay_shorter_than_lead",
        d("2024-03-01"),
        ["visit"],
    )
    assert (
        only(view(visit("2024-03-15").facts, d("2024-03-02")), "apply_residence").status
        == "overdue"
    )


def test_a_one_day_stay_is_not_overdue_on_arrival():
    v = view(visit("2024-03-01").facts, d("2024-03-01"))
    assert only(v, "apply_residence").status == "open"
    assert [a.kind for a in v.anomalies] == ["stay_shorter_than_lead"]


def test_window_reading_opens_a_short_stay_on_the_entry_day():
    v = view(visit("2024-03-10").facts, d("2024-03-01"), rules=WINDOW)
    task = only(v, "apply_residence")
    assert (task.opens_on, task.due_on) == (d("2024-03-01"), d("2024-03-10"))
    assert [a.kind for a in v.anomalies] == ["stay_shorter_than_lead"]


# -- R-WORKPLACE --------------------------------------------------------------------------------


def workplace(on: str = "2024-03-01") -> Timeline:
    t = Timeline()
    t.add("entered", "2023-08-20", event_id="entry", visa="resident")
    t.add("arc_applied", "2023-08-25", event_id="applied", application="initial")
    t.add("arc_issued", "2023-09-01", event_id="issued", valid_until="2025-08-31")
    t.add("workplace_changed", on, event_id="job", workplace="Lab of Something, NTU")
    return t


def test_workplace_change_opens_a_30_day_online_task_without_fee():
    v = view(workplace().facts, d("2024-03-01"))
    task = only(v, "report_workplace_change")
    assert (task.status, task.opens_on, task.due_on) == ("open", d("2024-03-01"), d("2024-03-31"))
    assert (task.where, task.fee_ntd, task.rule, task.caused_by) == (
        "online",
        None,
        "R-WORKPLACE",
        ["job"],
    )
    assert [doc.zh for doc in task.documents] == [
        zh for _, zh in DOCUMENTS["report_address_change"]
    ]


def test_workplace_change_before_2024_has_15_days():
    v = view(workplace("2023-12-01").facts, d("2023-12-01"))
    assert only(v, "report_workplace_change").due_on == d("2023-12-16")


def test_workplace_change_on_31_december_2023_still_has_15_days():
    v = view(workplace("2023-12-31").facts, d("2024-01-01"))
    assert only(v, "report_workplace_change").due_on == d("2024-01-15")


def test_employer_update_on_the_due_day_is_on_time():
    t = workplace()
    t.add("details_updated", "2024-03-31", event_id="upd", fields=["employer"])
    v = view(t.facts, d("2024-04-30"))
    task = only(v, "report_workplace_change")
    assert (task.status, task.done_on, task.caused_by) == ("done", d("2024-03-31"), ["job", "upd"])
    assert v.fines == []


def test_employer_update_a_day_late_is_done_late_with_a_first_offense():
    t = workplace()
    t.add("details_updated", "2024-04-01", event_id="upd", fields=["employer"])
    v = view(t.facts, d("2024-04-01"))
    assert only(v, "report_workplace_change").status == "done_late"
    [fine] = v.fines
    assert (fine.kind, fine.rule, fine.accrued_on) == (
        "late_details_update",
        "R-DETAILS-LATE",
        d("2024-04-01"),
    )
    assert (fine.offense, fine.amount_min_ntd, fine.amount_max_ntd) == (1, 2000, 2000)


def test_an_address_update_does_not_complete_a_workplace_change():
    t = workplace()
    t.add("details_updated", "2024-03-10", event_id="upd", fields=["address"])
    assert only(view(t.facts, d("2024-04-01")), "report_workplace_change").status == "overdue"


def test_late_workplace_and_late_address_count_in_one_offense_sequence():
    t = workplace()
    t.add("address_changed", "2024-05-01", event_id="moved", address="Somewhere 1")
    v = view(t.facts, d("2024-06-01"))
    offenses = [
        (f.accrued_on, f.offense, f.amount_min_ntd) for f in fines_of(v, "late_details_update")
    ]
    assert offenses == [(d("2024-04-01"), 1, 2000), (d("2024-06-01"), 2, 5000)]


def test_one_employer_update_closes_every_earlier_workplace_change():
    t = workplace()
    t.add("workplace_changed", "2024-03-10", event_id="job2")
    t.add("workplace_changed", "2024-03-20", event_id="job3")
    t.add("details_updated", "2024-03-15", event_id="upd", fields=["employer"])
    v = view(t.facts, d("2024-04-30"))
    assert [x.status for x in tasks_of(v, "report_workplace_change")] == ["done", "done", "overdue"]


# -- R-OVERSTAY: pay_fine_and_reapply -------------------------------------------------------------


def overstaying() -> Timeline:
    """In Taiwan, ARC valid through 2024-06-30: overstay day 1 is 07-01, day 29 is 07-29."""
    t = Timeline()
    t.add("entered", "2023-08-20", event_id="entry", visa="resident")
    t.add("arc_applied", "2023-08-25", event_id="applied", application="initial")
    t.add("arc_issued", "2023-09-01", event_id="issued", valid_until="2024-06-30")
    return t


def test_no_pay_fine_task_on_the_arcs_last_day():
    assert tasks_of(view(overstaying().facts, d("2024-06-30")), "pay_fine_and_reapply") == []


def test_pay_fine_and_reapply_opens_on_overstay_day_1_due_day_29():
    v = view(overstaying().facts, d("2024-07-01"))
    task = only(v, "pay_fine_and_reapply")
    assert (task.status, task.opens_on, task.due_on) == ("open", d("2024-07-01"), d("2024-07-29"))
    assert (task.where, task.fee_ntd, task.rule, task.caused_by) == (
        "service_center",
        None,
        "R-OVERSTAY",
        ["issued"],
    )
    assert v.overstay is not None and v.overstay.can_reapply


def test_pay_fine_and_reapply_is_open_on_day_29():
    v = view(overstaying().facts, d("2024-07-29"))
    assert only(v, "pay_fine_and_reapply").status == "open"
    assert tasks_of(v, "leave_and_reapply_visa") == []


def test_pay_fine_and_reapply_is_cancelled_on_day_30_when_leave_takes_over():
    v = view(overstaying().facts, d("2024-07-30"))
    assert only(v, "pay_fine_and_reapply").status == "cancelled"
    assert only(v, "leave_and_reapply_visa").status == "open"
    assert not v.overstay.can_reapply


def test_reapplication_on_day_29_completes_it():
    t = overstaying()
    t.add("arc_applied", "2024-07-29", event_id="reapp", application="reapplication")
    v = view(t.facts, d("2024-08-15"))
    task = only(v, "pay_fine_and_reapply")
    assert (task.status, task.done_on, task.caused_by) == (
        "done",
        d("2024-07-29"),
        ["issued", "reapp"],
    )


def test_an_extension_application_during_the_overstay_completes_it():
    t = overstaying()
    t.add("arc_applied", "2024-07-05", event_id="ext", application="extension")
    assert only(view(t.facts, d("2024-07-05")), "pay_fine_and_reapply").status == "done"


def test_reapplication_on_day_30_is_too_late_and_completes_nothing():
    t = overstaying()
    t.add("arc_applied", "2024-07-30", event_id="reapp", application="reapplication")
    task = only(view(t.facts, d("2024-08-15")), "pay_fine_and_reapply")
    assert (task.status, task.done_on) == ("cancelled", None)


def test_a_new_arc_completes_it():
    t = overstaying()
    t.add(
        "arc_issued",
        "2024-07-15",
        event_id="new",
        valid_until="2025-06-30",
        application="reapplication",
    )
    v = view(t.facts, d("2024-07-15"))
    assert only(v, "pay_fine_and_reapply").status == "done"
    assert v.overstay is None


def test_departure_cancels_it():
    t = overstaying()
    t.add("departed", "2024-07-10", event_id="left")
    v = view(t.facts, d("2024-07-10"))
    assert only(v, "pay_fine_and_reapply").status == "cancelled"
    assert only(view(t.facts, d("2024-07-09")), "pay_fine_and_reapply").status == "open"
    assert tasks_of(view(t.facts, d("2024-09-01")), "leave_and_reapply_visa") == []


def test_studies_ceasing_cancels_it():
    t = overstaying()
    t.add("studies_ceased", "2024-07-05", event_id="quit", reason="withdrawn")
    v = view(t.facts, d("2024-07-05"))
    assert only(v, "pay_fine_and_reapply").status == "cancelled"


def test_an_extension_applied_in_time_suspends_the_overstay_and_opens_no_task():
    t = overstaying()
    t.add("arc_applied", "2024-06-20", event_id="ext", application="extension")
    assert tasks_of(view(t.facts, d("2024-07-10")), "pay_fine_and_reapply") == []


# -- contact_updated ---------------------------------------------------------------------------

LINE_ID = "U" + "0123456789abcdef" * 2


def contact(**fields) -> dict:
    return {
        "event_id": "c1",
        "student_id": "S1",
        "type": "contact_updated",
        "occurred_on": "2024-03-01",
        **fields,
    }


def test_contact_updated_accepts_each_field_alone():
    assert parse_event(contact(email="a.b@example.org")).body()["email"] == "a.b@example.org"
    assert parse_event(contact(line_user_id=LINE_ID)).body()["line_user_id"] == LINE_ID
    assert parse_event(contact(language="zh")).body()["language"] == "zh"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, None),
        ({"email": "no-at-sign.example.org"}, "email"),
        ({"email": "two@@example.org"}, "email"),
        ({"email": "has space@example.org"}, "email"),
        ({"email": "x" * 250 + "@e.org"}, "email"),
        ({"line_user_id": "U" + "0123456789ABCDEF" * 2}, "line_user_id"),
        ({"line_user_id": "U" + "0" * 31}, "line_user_id"),
        ({"line_user_id": "@someone"}, "line_user_id"),
        ({"language": "fr"}, "language"),
    ],
)
def test_contact_updated_rejections_name_the_field_but_never_echo_the_value(fields, field):
    with pytest.raises(ContractError) as info:
        parse_event(contact(**fields))
    text = str(info.value)
    if field is None:
        assert "at least one" in text
    else:
        assert text.startswith(field)
    for value in fields.values():
        if field != "language":
            assert value not in text


def test_contact_fields_and_workplace_are_personal_data():
    assert {"email", "line_user_id", "workplace"} <= PERSONAL_FIELDS <= UNECHOED_FIELDS


def test_contact_updated_derives_nothing():
    t = overstaying()
    before = view(t.facts, d("2024-07-10"))
    t.add("contact_updated", "2024-07-01", event_id="c", email="a@b.org", language="en")
    after = view(t.facts, d("2024-07-10"))
    assert after == before


def test_workplace_rejection_never_echoes_the_workplace():
    raw = contact() | {"type": "workplace_changed", "workplace": "Secret Lab " + "x" * 600}
    with pytest.raises(ContractError) as info:
        parse_event(raw)
    assert "Secret Lab" not in str(info.value)
    assert str(info.value).startswith("workplace")


def test_workplace_is_optional():
    assert parse_event(contact() | {"type": "workplace_changed"}).body() == {"workplace": None}


# -- wording and read models -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["report_workplace_change", "pay_fine_and_reapply"])
def test_new_task_kinds_have_bilingual_alert_wording(kind):
    zh_name, en_name = TASK_NAMES[kind]
    zh, en = task_message(
        kind, "due_today", d("2024-07-29"), d("2024-07-29"), "service_center", None, "R-X"
    )
    assert zh_name in zh and en_name in en
    assert kind not in zh and kind not in en


def _raw(t: Timeline) -> list[dict]:
    """The timeline's facts as feed events again (to ingest them into a real store)."""
    return [
        {
            "event_id": f.event_id,
            "student_id": f.student_id,
            "type": f.type,
            "occurred_on": f.occurred_on.isoformat(),
            **{k: plain(v) for k, v in f.data.items() if v is not None},
        }
        for f in t.facts
    ]


def _rows(tasks: list[dict]) -> list[tuple]:
    return sorted(
        (str(x["kind"]), x["status"], str(x["due_on"]), str(x["done_on"]), x["where"], x["rule"])
        for x in tasks
    )


@pytest.mark.parametrize(
    ("scenario", "days"),
    [
        (expired_abroad_then_back, ["2024-08-10", "2024-09-10"]),
        (overstaying, ["2024-07-01", "2024-07-29", "2024-07-30", "2024-09-01"]),
        (two_arrivals, ["2024-04-20", "2024-05-01", "2024-07-02"]),
        (workplace, ["2024-03-31", "2024-04-01"]),
        (lambda: visit("2024-03-10"), ["2024-03-01", "2024-03-02"]),
    ],
)
def test_read_model_agrees_with_the_view_on_new_rules(tmp_path, scenario, days):
    t = scenario()
    t.add("contact_updated", "2024-03-02", event_id="c", language="zh", email="s@example.org")
    path = str(tmp_path / "t.db")
    with TimelineStore.open(path) as store:
        assert ingest_objects(store, _raw(t)).ok
        model = ReadModel(path)
        model.sync(store)
        assert model.errors() == []
        stream = store.stream("S1")
        for day in days:
            expected = view(stream, d(day)).model_dump(mode="json")["tasks"]
            assert _rows(model.tasks_on(d(day))) == _rows(expected), day
        model.close()


# -- personal data of the new events: encrypted at rest, shown to staff in history ------------

EMAIL = "zq.unique.student@example.org"
WORKPLACE = "Qwertyville Quantum Lab 4711"


def _personal_events() -> list[dict]:
    envelope = {"student_id": "S1", "occurred_on": "2024-03-01"}
    return [
        envelope | {"event_id": "w", "type": "workplace_changed", "workplace": WORKPLACE},
        envelope
        | {"event_id": "c", "type": "contact_updated", "email": EMAIL, "line_user_id": LINE_ID},
    ]


@pytest.mark.parametrize("with_key", [False, True])
def test_workplace_and_contact_are_encrypted_at_rest_with_a_key(tmp_path, with_key):
    path = str(tmp_path / "enc.db")
    key = AESCipher.create_key(32) if with_key else None
    with TimelineStore.open(path, cipher_key=key) as store:
        assert ingest_objects(store, _personal_events()).accepted == 2
        facts = {f.event_id: f for f in store.facts("S1")}
        assert facts["w"].get("workplace") == WORKPLACE
        assert facts["c"].get("email") == EMAIL
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("enc.db*"))
    for secret in (EMAIL, WORKPLACE, LINE_ID):
        # without a key the control shows the raw read would see them
        assert (secret.encode() in raw) is not with_key


def test_history_and_schema_show_the_new_events(tmp_path):
    timeline = str(Path(sys.executable).with_name("timeline"))
    db = str(tmp_path / "h.db")
    feed = tmp_path / "feed.jsonl"
    feed.write_text("\n".join(json.dumps(e) for e in _personal_events()) + "\n")
    env = {"PATH": "/usr/bin:/bin", "TIMELINE_DB": db}
    ingest = subprocess.run(
        [timeline, "ingest", str(feed)], capture_output=True, text=True, env=env
    )
    assert ingest.returncode == 0, ingest.stderr
    shown = subprocess.run(
        [timeline, "history", "S1", "--json"], capture_output=True, text=True, env=env
    )
    entries = {e["event_id"]: e for e in json.loads(shown.stdout)}
    assert entries["w"]["workplace"] == WORKPLACE
    assert entries["c"]["email"] == EMAIL
    schema = subprocess.run([timeline, "schema"], capture_output=True, text=True, env=env)
    mapping = json.loads(schema.stdout)["discriminator"]["mapping"]
    assert {"workplace_changed", "contact_updated"} <= set(mapping)
