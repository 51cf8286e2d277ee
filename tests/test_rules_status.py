"""SPEC §4 status precedence, R-CEASED, known_at, and that every task and fine is cited."""

from __future__ import annotations

from datetime import UTC, datetime

from facts_builder import Timeline, d, only, tasks_of

from projections.engine import view
from projections.rules import RULES
from timeline.facts import known_facts


def holding_arc(valid_until: str = "2024-05-31") -> Timeline:
    t = Timeline()
    t.add("entered", "2023-08-20", event_id="entry", visa="resident")
    t.add("arc_applied", "2023-08-25", event_id="applied", application="initial")
    t.add("arc_issued", "2023-09-01", event_id="issued", valid_until=valid_until)
    return t


# -- status precedence: revoked, overstay, expired_abroad, arc_application_overdue,
#    arc_application_due, application_pending, extension_window, arc_valid, no_arc ------------


def test_revoked_before_overstay():
    t = holding_arc("2024-05-31")
    assert view(t.facts, d("2024-06-10")).status == "overstay"
    t.add("studies_ceased", "2024-06-05", reason="withdrawn")
    assert view(t.facts, d("2024-06-10")).status == "revoked"


# overstay before expired_abroad: not constructible. Both need an expiry of the ARC held
# (in Taiwan / abroad), and only a new ARC can follow an expiry, which resolves both.


def test_expired_abroad_before_arc_application_overdue():
    t = holding_arc("2024-05-31")
    t.add("departed", "2024-05-20")
    t.add("entered", "2024-07-01", visa="visitor", visa_code="FS", stay_until="2024-08-29")
    v = view(t.facts, d("2024-08-20"))  # apply_residence was due 2024-08-14
    assert only(v, "apply_residence").status == "overdue"
    assert v.status == "expired_abroad"


def test_arc_application_overdue_before_arc_application_due():
    t = Timeline()
    t.add("entered", "2024-03-01", visa="visitor", visa_code="FS", stay_until="2024-03-31")
    t.add("visa_changed", "2024-03-20", to="resident")
    v = view(t.facts, d("2024-03-25"))
    assert only(v, "apply_residence").status == "overdue"  # due 2024-03-16
    assert only(v, "apply_arc").status == "open"  # due 2024-04-19
    assert v.status == "arc_application_overdue"


def test_arc_application_due_before_application_pending():
    # A pending replacement application does not complete apply_arc (SPEC completion table).
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident")
    t.add("arc_applied", "2024-03-20", application="replacement")
    v = view(t.facts, d("2024-03-25"))
    assert v.application is not None
    assert only(v, "apply_arc").status == "open"
    assert v.status == "arc_application_due"


def test_application_pending_before_extension_window():
    t = holding_arc("2024-05-31")
    t.add("arc_lost", "2024-03-10")
    t.add("arc_applied", "2024-03-12", application="replacement")
    v = view(t.facts, d("2024-03-15"))
    assert only(v, "extend_arc").status == "open"  # window opened 2024-02-29
    assert v.application is not None
    assert v.status == "application_pending"


def test_extension_window_before_arc_valid():
    t = holding_arc("2024-05-31")
    assert view(t.facts, d("2024-02-28")).status == "arc_valid"
    assert view(t.facts, d("2024-02-29")).status == "extension_window"


def test_arc_valid_and_no_arc():
    assert view([], d("2024-03-01")).status == "no_arc"
    t = Timeline()
    t.add("entered", "2024-03-01", visa="visitor", stay_until="2024-05-29")
    assert view(t.facts, d("2024-03-02")).status == "no_arc"
    assert view(holding_arc("2024-12-31").facts, d("2024-03-01")).status == "arc_valid"


def test_pending_initial_application_is_application_pending():
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident")
    t.add("arc_applied", "2024-03-20", application="initial")
    v = view(t.facts, d("2024-03-25"))
    assert v.status == "application_pending"
    assert v.arc is None


def test_issued_arc_fields():
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident")
    t.add("arc_applied", "2024-03-20", application="initial")
    t.add("arc_issued", "2024-04-01", arc_number="A800000001", valid_until="2025-03-31")
    v = view(t.facts, d("2024-04-01"))
    assert v.arc is not None
    assert v.arc.model_dump() == {
        "number": "A800000001",
        "issued_on": d("2024-04-01"),
        "valid_until": d("2025-03-31"),
        "basis": "registration",
    }
    assert v.application is None
    assert v.status == "arc_valid"


# -- R-CEASED -----------------------------------------------------------------------------


def test_studies_ceased_revokes_from_that_day():
    t = holding_arc("2025-05-31")
    t.add("studies_ceased", "2024-04-10", event_id="ceased", reason="deferred")
    assert view(t.facts, d("2024-04-09")).status == "arc_valid"
    v = view(t.facts, d("2024-04-10"))
    assert v.status == "revoked"
    task = only(v, "report_and_surrender_arc")
    assert task.rule == "R-CEASED"
    assert task.where == "service_center"
    assert task.status == "open"
    assert task.opens_on == d("2024-04-10")
    assert task.due_on is None  # no leave_by known yet
    assert "ceased" in task.caused_by
    assert task.documents


def test_arc_revoked_leave_by_becomes_the_due_day():
    t = holding_arc("2025-05-31")
    t.add("studies_ceased", "2024-04-10", event_id="ceased", reason="withdrawn")
    t.add("arc_revoked", "2024-04-20", event_id="revoked", leave_by="2024-05-10")
    v = view(t.facts, d("2024-04-20"))
    task = only(v, "report_and_surrender_arc")
    assert task.due_on == d("2024-05-10")
    assert "revoked" in task.caused_by
    assert only(view(t.facts, d("2024-05-10")), "report_and_surrender_arc").status == "open"
    assert only(view(t.facts, d("2024-05-11")), "report_and_surrender_arc").status == "overdue"


def test_arc_revoked_alone_opens_the_task_with_leave_by():
    t = holding_arc("2025-05-31")
    t.add("arc_revoked", "2024-04-20", event_id="revoked", leave_by="2024-05-10")
    v = view(t.facts, d("2024-04-20"))
    assert v.status == "revoked"
    task = only(v, "report_and_surrender_arc")
    assert (task.due_on, task.caused_by[0]) == (d("2024-05-10"), "revoked")


def test_departure_completes_the_surrender_and_revocation_cancels_the_extension():
    t = holding_arc("2024-05-31")
    t.add("studies_ceased", "2024-04-10", reason="withdrawn")
    t.add("arc_revoked", "2024-04-20", leave_by="2024-05-10")
    t.add("departed", "2024-05-05", event_id="left")
    v = view(t.facts, d("2024-07-01"))
    task = only(v, "report_and_surrender_arc")
    assert (task.status, task.done_on) == ("done", d("2024-05-05"))
    assert "left" in task.caused_by
    assert only(v, "extend_arc").status == "cancelled"
    assert v.overstay is None
    assert v.fines == []
    assert v.status == "revoked"


# -- known_at -----------------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def retracted_entry() -> Timeline:
    t = Timeline()
    t.add(
        "entered",
        "2024-03-16",
        event_id="e1",
        visa="resident",
        recorded_at=at("2024-03-17T00:00:00"),
    )
    t.add(
        "retracted",
        "2024-04-19",
        event_id="r1",
        retracts="e1",
        reason="wrong student",
        recorded_at=at("2024-04-20T00:00:00"),
    )
    return t


def test_a_retraction_recorded_later_does_not_apply_at_an_earlier_known_at():
    t = retracted_entry()
    before = view(t.facts, d("2024-04-16"), known_at=at("2024-04-19T23:59:59"))
    assert before.known_at == at("2024-04-19T23:59:59")
    assert only(before, "apply_arc").status == "overdue"
    assert [f.kind for f in before.fines] == ["late_arc_application"]
    assert before.status == "arc_application_overdue"


def test_a_retraction_applies_from_its_record_time_on():
    t = retracted_entry()
    for known_at in (at("2024-04-20T00:00:00"), at("2025-01-01T00:00:00"), None):
        v = view(t.facts, d("2024-04-16"), known_at=known_at)
        assert v.tasks == []
        assert v.fines == []
        assert v.status == "no_arc"


def test_a_fact_recorded_after_known_at_does_not_count_yet():
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident", recorded_at=at("2024-03-17T00:00:00"))
    t.add("arc_applied", "2024-04-10", application="initial", recorded_at=at("2024-05-01T00:00:00"))
    early = view(t.facts, d("2024-04-20"), known_at=at("2024-04-25T00:00:00"))
    assert only(early, "apply_arc").status == "overdue"
    assert early.fines != []
    late = view(t.facts, d("2024-04-20"), known_at=at("2024-05-01T00:00:00"))
    assert only(late, "apply_arc").status == "done"
    assert late.fines == []


def test_nothing_known_before_the_first_record():
    t = retracted_entry()
    v = view(t.facts, d("2024-04-16"), known_at=at("2024-03-16T00:00:00"))
    assert v.tasks == [] and v.status == "no_arc"


# -- every task and fine cites a rule id and at least one event ---------------------------


def busy_student() -> Timeline:
    t = Timeline()
    t.add("entered", "2024-01-10", visa="visitor", visa_code="FS", stay_until="2024-03-31")
    t.add("visa_changed", "2024-02-10", to="resident")
    t.add("arc_applied", "2024-03-20", application="initial", basis="admission_notice")
    t.add("arc_issued", "2024-03-30", valid_until="2024-09-29")
    t.add("registered", "2024-04-01", semester="112-2")
    t.add("address_changed", "2024-04-02", address="a")
    t.add("passport_lost", "2024-05-01")
    t.add("passport_replaced", "2024-05-20")
    t.add("arc_lost", "2024-06-01")
    t.add("fine_imposed", "2024-06-02", fine="late_arc_application", amount_ntd=3000)
    t.add("fine_paid", "2024-06-03", amount_ntd=1000)
    t.add("departed", "2024-10-05")
    t.add("entered", "2024-11-01", visa="resident")
    t.add("address_changed", "2024-11-05", address="b")
    t.add("studies_ceased", "2024-12-01", reason="other")
    t.add("arc_revoked", "2024-12-05", leave_by="2024-12-31")
    return t


def test_every_task_and_fine_cites_a_rule_and_events_that_exist():
    t = busy_student()
    ids = {f.event_id for f in known_facts(t.facts)}
    for as_of in ("2024-03-01", "2024-05-01", "2024-08-01", "2024-10-10", "2024-12-31"):
        v = view(t.facts, d(as_of))
        assert v.tasks or v.fines
        for item in [*v.tasks, *v.fines]:
            assert item.rule in RULES, item
            assert item.caused_by, item
            assert set(item.caused_by) <= ids, item
        for task in v.tasks:
            assert task.where in ("online", "service_center", "overseas_mission"), task
            for doc in task.documents:
                assert doc.en and doc.zh


# -- after a revocation, a new entry starts a new residence --------------------------------


def revoked_and_left(valid_until: str) -> Timeline:
    t = holding_arc(valid_until)
    t.add("studies_ceased", "2024-06-01", event_id="ceased", reason="withdrawn")
    t.add("arc_revoked", "2024-06-05", event_id="revoked", leave_by="2024-06-30")
    t.add("departed", "2024-06-20", event_id="left")
    return t


def test_a_revoked_arc_that_expires_while_abroad_is_no_overstay_after_a_new_entry():
    # The revoked ARC (valid_until 2024-09-30) expired while the student was abroad; they
    # come back on a new resident visa on 2024-11-01. They never overstayed: no overstay,
    # no fine, just a new apply_arc (R-ARC-ENTRY).
    t = revoked_and_left("2024-09-30")
    t.add("entered", "2024-11-01", event_id="back", visa="resident")
    v = view(t.facts, d("2024-11-05"))
    assert v.overstay is None
    assert [f.kind for f in v.fines] == []
    assert tasks_of(v, "leave_and_reapply_visa") == []
    new = [x for x in tasks_of(v, "apply_arc") if x.opens_on == d("2024-11-01")]
    assert [(x.status, x.due_on) for x in new] == [("open", d("2024-12-01"))]
    assert v.status == "arc_application_due"


def test_a_revoked_arc_is_not_valid_again_after_a_new_entry():
    # R-CEASED: "the ARC is revoked from that day". Re-entering on a new resident visa
    # before the revoked card's printed valid_until does not revive it: the student
    # holds no valid ARC and must apply again (R-ARC-ENTRY).
    t = revoked_and_left("2025-05-31")
    t.add("entered", "2024-09-01", event_id="back", visa="resident")
    v = view(t.facts, d("2024-09-05"))
    new = [x for x in tasks_of(v, "apply_arc") if x.opens_on == d("2024-09-01")]
    assert [(x.status, x.due_on) for x in new] == [("open", d("2024-10-01"))]
    assert v.status == "arc_application_due"


def test_studies_ceased_during_an_overstay_ends_can_reapply():
    # R-OVERSTAY: can_reapply only while days <= 29 "and the purpose of residence continues"
    t = holding_arc("2024-05-31")
    t.add("studies_ceased", "2024-06-05", reason="withdrawn")
    v = view(t.facts, d("2024-06-10"))
    assert v.overstay is not None
    assert v.overstay.days == 10
    assert v.overstay.can_reapply is False
