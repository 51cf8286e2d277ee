"""SPEC §3 rules on ARC details (address, passport) and the late-update fine, plus the
documents, fees and places the guide names for every task kind."""

from __future__ import annotations

import pytest
from facts_builder import Timeline, d, only, tasks_of

from projections.engine import view


def late_details(v):
    return [f for f in v.fines if f.kind == "late_details_update"]


def holding_arc(valid_until: str = "2025-08-31") -> Timeline:
    t = Timeline()
    t.add("entered", "2023-08-20", event_id="entry", visa="resident")
    t.add("arc_applied", "2023-08-25", event_id="applied", application="initial")
    t.add("arc_issued", "2023-09-01", event_id="issued", valid_until=valid_until)
    return t


# -- R-ADDRESS ----------------------------------------------------------------------------


def test_address_change_due_30_days_later_open_on_the_due_day():
    # Guide: 外國人變更居留地址…應於30日內 / must … apply within 30 days
    t = holding_arc()
    t.add("address_changed", "2024-03-16", event_id="moved", address="Da'an")
    v = view(t.facts, d("2024-03-16"))
    task = only(v, "report_address_change")
    assert task.rule == "R-ADDRESS"
    assert task.opens_on == d("2024-03-16")
    assert task.due_on == d("2024-04-15")
    assert task.status == "open"
    assert task.caused_by == ["moved"]
    on_due = view(t.facts, d("2024-04-15"))
    assert only(on_due, "report_address_change").status == "open"
    assert on_due.fines == []


def test_address_change_overdue_and_first_offense_fine_the_day_after():
    t = holding_arc()
    t.add("address_changed", "2024-03-16", event_id="moved", address="Da'an")
    v = view(t.facts, d("2024-04-16"))
    assert only(v, "report_address_change").status == "overdue"
    [fine] = late_details(v)
    assert fine.rule == "R-DETAILS-LATE"
    assert fine.accrued_on == d("2024-04-16")
    assert fine.offense == 1
    assert (fine.amount_min_ntd, fine.amount_max_ntd) == (2000, 2000)
    assert fine.status == "accrued"
    assert "moved" in fine.caused_by


@pytest.mark.parametrize(
    ("moved", "due"),
    [
        ("2023-12-20", "2024-01-04"),  # Art. 31 before the amendment: 15 days
        ("2023-12-31", "2024-01-15"),
        ("2024-01-01", "2024-01-31"),  # 30 days from 2024-01-01
    ],
)
def test_address_period_is_the_one_in_force_on_the_day_of_the_move(moved, due):
    t = holding_arc()
    t.add("address_changed", moved, address="x")
    assert only(view(t.facts, d(moved)), "report_address_change").due_on == d(due)


def test_address_reported_on_the_due_day_is_done():
    t = holding_arc()
    t.add("address_changed", "2024-03-16", address="x")
    t.add("details_updated", "2024-04-15", event_id="upd", fields=["address"])
    v = view(t.facts, d("2024-06-01"))
    task = only(v, "report_address_change")
    assert (task.status, task.done_on) == ("done", d("2024-04-15"))
    assert "upd" in task.caused_by
    assert v.fines == []


def test_address_reported_the_day_after_is_done_late_and_fined():
    t = holding_arc()
    t.add("address_changed", "2024-03-16", address="x")
    t.add("details_updated", "2024-04-16", fields=["address"])
    v = view(t.facts, d("2024-06-01"))
    assert only(v, "report_address_change").status == "done_late"
    assert [(f.accrued_on, f.offense, f.amount_min_ntd) for f in late_details(v)] == [
        (d("2024-04-16"), 1, 2000)
    ]


def test_one_update_closes_every_earlier_change_but_not_a_later_one():
    t = holding_arc()
    t.add("address_changed", "2024-03-01", event_id="m1", address="a")
    t.add("address_changed", "2024-03-10", event_id="m2", address="b")
    t.add("details_updated", "2024-03-15", event_id="upd", fields=["address", "passport"])
    t.add("address_changed", "2024-03-20", event_id="m3", address="c")
    v = view(t.facts, d("2024-03-25"))
    by_cause = {x.caused_by[0]: x for x in tasks_of(v, "report_address_change")}
    assert by_cause["m1"].status == "done"
    assert by_cause["m2"].status == "done"
    assert by_cause["m1"].done_on == by_cause["m2"].done_on == d("2024-03-15")
    assert by_cause["m3"].status == "open"


def test_an_update_on_the_day_of_the_move_closes_it_whatever_the_record_order():
    # SPEC: details_updated with address "closes every open one for changes on or before
    # it". A housing feed may report the move after the NIA update was recorded.
    t = holding_arc()
    t.add("details_updated", "2024-03-15", event_id="upd", fields=["address"])
    t.add("address_changed", "2024-03-15", event_id="moved", address="a")
    v = view(t.facts, d("2024-05-01"))
    assert only(v, "report_address_change").status == "done"
    assert v.fines == []


def test_a_passport_only_update_does_not_close_an_address_change():
    t = holding_arc()
    t.add("address_changed", "2024-03-01", address="a")
    t.add("details_updated", "2024-03-05", fields=["passport"])
    assert only(view(t.facts, d("2024-03-06")), "report_address_change").status == "open"


# -- R-DETAILS-LATE -----------------------------------------------------------------------


def test_offenses_are_numbered_and_priced_2000_5000_10000_10000():
    t = holding_arc()
    moves = ["2024-01-05", "2024-03-01", "2024-05-01", "2024-07-01"]
    for i, moved in enumerate(moves):
        t.add("address_changed", moved, event_id=f"m{i + 1}", address=str(i))
    v = view(t.facts, d("2024-09-01"))
    fines = late_details(v)
    assert [(f.offense, f.amount_min_ntd, f.amount_max_ntd) for f in fines] == [
        (1, 2000, 2000),
        (2, 5000, 5000),
        (3, 10000, 10000),
        (4, 10000, 10000),
    ]
    assert [f.accrued_on for f in fines] == [
        d("2024-02-05"),
        d("2024-04-01"),
        d("2024-06-01"),
        d("2024-08-01"),
    ]
    assert [f.caused_by[0] for f in fines] == ["m1", "m2", "m3", "m4"]
    assert v.fines_total.min_ntd == v.fines_total.max_ntd == 27000


def test_an_update_in_time_is_no_offense_and_does_not_count():
    t = holding_arc()
    t.add("address_changed", "2024-01-05", address="a")
    t.add("details_updated", "2024-01-20", fields=["address"])
    t.add("address_changed", "2024-03-01", event_id="late", address="b")
    fines = late_details(view(t.facts, d("2024-05-01")))
    assert [(f.offense, f.amount_min_ntd, f.caused_by[0]) for f in fines] == [(1, 2000, "late")]


def test_a_late_passport_update_is_an_offense_in_the_same_count():
    # R-DETAILS-LATE: "a report_address_change (or other details update)"
    t = holding_arc("2024-08-31")
    t.add("address_changed", "2024-03-01", address="a")  # late: offense 1 on 2024-04-01
    t.add("passport_replaced", "2024-05-20", event_id="pp")  # due 2024-08-31
    v = view(t.facts, d("2024-09-01"))
    assert only(v, "update_passport_details").status == "overdue"
    fines = late_details(v)
    assert [(f.offense, f.amount_min_ntd, f.accrued_on) for f in fines] == [
        (1, 2000, d("2024-04-01")),
        (2, 5000, d("2024-09-01")),
    ]
    assert "pp" in fines[1].caused_by


# -- R-PASSPORT ---------------------------------------------------------------------------


def test_lost_passport_report_in_person_without_deadline():
    t = holding_arc()
    t.add("passport_lost", "2024-05-01", event_id="lost")
    v = view(t.facts, d("2024-05-01"))
    task = only(v, "report_passport_loss")
    assert task.rule == "R-PASSPORT"
    assert task.where == "service_center"
    assert task.due_on is None
    assert task.status == "open"
    assert task.caused_by == ["lost"]
    later = view(t.facts, d("2025-01-01"))
    assert only(later, "report_passport_loss").status == "open"
    assert later.fines == []


def test_replaced_passport_closes_the_report_and_opens_the_update_due_valid_until():
    t = holding_arc("2025-08-31")
    t.add("passport_lost", "2024-05-01")
    t.add("passport_replaced", "2024-05-20", event_id="pp")
    v = view(t.facts, d("2024-05-20"))
    report = only(v, "report_passport_loss")
    assert (report.status, report.done_on) == ("done", d("2024-05-20"))
    update = only(v, "update_passport_details")
    assert update.rule == "R-PASSPORT"
    assert update.where == "online"
    assert update.due_on == d("2025-08-31")
    assert update.status == "open"
    assert "pp" in update.caused_by


def test_a_passport_details_update_closes_a_pending_loss_report():
    t = holding_arc()
    t.add("passport_lost", "2024-05-01")
    t.add("details_updated", "2024-05-10", fields=["passport"])
    task = only(view(t.facts, d("2024-05-11")), "report_passport_loss")
    assert (task.status, task.done_on) == ("done", d("2024-05-10"))


def test_passport_update_done_online():
    t = holding_arc()
    t.add("passport_replaced", "2024-05-20")
    t.add("details_updated", "2024-06-01", event_id="upd", fields=["passport"])
    task = only(view(t.facts, d("2024-06-02")), "update_passport_details")
    assert (task.status, task.done_on) == ("done", d("2024-06-01"))
    assert "upd" in task.caused_by


def test_passport_update_done_with_the_extension():
    t = holding_arc("2024-08-31")
    t.add("passport_replaced", "2024-05-20")
    t.add("arc_applied", "2024-07-01", event_id="ext", application="extension")
    v = view(t.facts, d("2024-07-02"))
    task = only(v, "update_passport_details")
    assert (task.status, task.done_on) == ("done", d("2024-07-01"))
    assert "ext" in task.caused_by


# -- documents, fees and places as the guide names them -----------------------------------

APPLY_ARC_ZH = [
    "申請表",
    "護照及居留簽證",
    "兩吋證件照(同身分證規格)",
    "蓋有當學期註冊章之學生證或1個月內開立之在學證明書(尚未註冊得以入學分發通知書替代)",
    "居住地證明(如房屋契約或是學校開立地址之住宿證明)",
]
EXTEND_ZH = [
    "申請書",
    "護照",
    "外僑居留證",
    "蓋有當學期註冊章之學生證或1個月內開立之在學證明",
    "兩吋證件照(同身分證規格)",
    "委託書(如有委託他人辦理)",
]
ADDRESS_ZH = [
    "申請書",
    "護照",
    "外僑居留證",
    "兩吋證件照(同身分證規格)",
    "房屋契約或是學校開立地址之住宿證明",
]
PASSPORT_ZH = [
    "申請書",
    "新、舊護照 (遺失案僅提供遺失護照影本)",
    "外僑居留證",
    "兩吋證件照(同身分證規格)",
]
REPLACE_ZH = [
    "申請書",
    "護照",
    "兩吋證件照(同身分證規格)",
    "在學證明",
    "遺失居留證聲明書或報案證明",
]


def every_task_timeline() -> Timeline:
    t = Timeline()
    t.add("entered", "2024-03-01", visa="visitor", visa_code="FS", stay_until="2024-05-29")
    t.add("visa_changed", "2024-03-05", to="resident")
    t.add("arc_applied", "2024-03-10", application="initial")
    t.add("arc_issued", "2024-03-20", valid_until="2024-09-30")
    t.add("address_changed", "2024-04-01", address="a")
    t.add("passport_lost", "2024-04-02")
    t.add("passport_replaced", "2024-04-10")
    t.add("arc_lost", "2024-04-11")
    t.add("studies_ceased", "2024-08-01", reason="withdrawn")
    return t


def test_documents_fee_and_place_of_every_task_as_the_guide_names_them():
    v = view(every_task_timeline().facts, d("2024-08-01"))
    by_kind = {t.kind: t for t in v.tasks}
    assert set(by_kind) >= {
        "apply_residence",
        "apply_arc",
        "extend_arc",
        "report_address_change",
        "report_passport_loss",
        "update_passport_details",
        "replace_arc",
        "report_and_surrender_arc",
    }
    expected = {
        # kind: (where, fee, zh documents or None when only "non-empty" is derivable)
        "apply_arc": ("online", 1000, APPLY_ARC_ZH),
        "apply_residence": ("online", 1000, None),
        "extend_arc": ("online", 1000, EXTEND_ZH),
        "report_address_change": (None, None, ADDRESS_ZH),
        "report_passport_loss": ("service_center", None, None),
        "update_passport_details": ("online", None, PASSPORT_ZH),
        "replace_arc": ("service_center", 500, REPLACE_ZH),
        "report_and_surrender_arc": ("service_center", None, None),
    }
    for kind, (where, fee, zh) in expected.items():
        task = by_kind[kind]
        if where is not None:
            assert task.where == where, kind
        assert task.fee_ntd == fee, kind
        assert task.documents, kind
        for doc in task.documents:
            assert doc.en.strip() and doc.zh.strip(), (kind, doc)
        if zh is not None:
            assert [doc.zh for doc in task.documents] == zh, kind


def test_surrender_documents_are_the_guides_list():
    v = view(every_task_timeline().facts, d("2024-08-01"))
    task = only(v, "report_and_surrender_arc")
    text = " ".join(doc.en.lower() for doc in task.documents)
    for word in ("ticket", "passport", "resident certificate", "deferred or abandoned"):
        assert word in text


def test_submit_student_status_documents_are_the_student_status_evidence():
    t = Timeline()
    t.add("arc_applied", "2024-08-25", application="initial", basis="admission_notice")
    t.add("arc_issued", "2024-09-05", valid_until="2025-03-04")
    task = only(view(t.facts, d("2024-09-06")), "submit_student_status")
    assert task.documents
    assert any("Student Status Certificate" in doc.en for doc in task.documents)
    assert all(doc.en and doc.zh for doc in task.documents)


def test_passport_update_done_by_an_extension_reported_only_as_issued():
    # R-PASSPORT: "online, or together with the next extension". The feed reports only the
    # extended ARC (arc_issued, application "extension"): an extension was applied for, on
    # or before 2024-08-20, so the passport was updated with it and no fine may accrue.
    t = holding_arc("2024-08-31")
    t.add("passport_replaced", "2024-05-20")
    t.add("arc_issued", "2024-08-20", valid_until="2025-08-31", application="extension")
    v = view(t.facts, d("2024-09-05"))
    assert only(v, "update_passport_details").status == "done"
    assert late_details(v) == []
