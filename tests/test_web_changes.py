"""What changed between two record moments (issue 10, item 4), on built timelines."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from facts_builder import Timeline, d
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.engine import view
from projections.rules import DEFAULT_RULES
from web.changes import ChangeWindowError, what_changed

T0 = datetime(2024, 6, 1, tzinfo=UTC)


def at(hours: float) -> datetime:
    """A record moment `hours` after T0."""
    return T0 + timedelta(hours=hours)


def entered_late() -> Timeline:
    """Entered 2024-03-16 on a resident visa (recorded at T0+1h): apply_arc due 2024-04-15."""
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident", recorded_at=at(1))
    return t


def test_a_retraction_between_a_and_b_removes_the_task_and_its_fine() -> None:
    t = entered_late()
    t.add("retracted", "2024-03-20", retracts="e1", reason="wrong student", recorded_at=at(3))
    changes = what_changed(t.facts, d("2024-05-01"), at(2), at(4), DEFAULT_RULES)
    (task,) = changes.tasks
    assert (task.change, task.kind, task.rule, task.cause) == (
        "removed",
        "apply_arc",
        "R-ARC-ENTRY",
        "e1",
    )
    assert task.old is not None and task.old.status == "overdue" and task.new is None
    (fine,) = changes.fines
    assert (fine.change, fine.kind, fine.cause) == ("removed", "late_arc_application", "e1")
    assert (changes.status.old, changes.status.new) == ("arc_application_overdue", "no_arc")
    (event,) = changes.events
    assert (event.event_id, event.type, event.retracts, event.recorded_at) == (
        "e2",
        "retracted",
        "e1",
        at(3),
    )
    assert "wrong student" not in json.dumps(changes.as_json())  # the reason is free text


def test_a_late_recorded_application_turns_overdue_into_done_late() -> None:
    t = entered_late()
    t.add("arc_applied", "2024-04-20", application="initial", recorded_at=at(3))
    changes = what_changed(t.facts, d("2024-05-01"), at(2), at(3), DEFAULT_RULES)
    (task,) = changes.tasks
    assert (task.change, task.kind) == ("changed", "apply_arc")
    assert {f.field: (f.old, f.new) for f in task.fields} == {
        "status": ("overdue", "done_late"),
        "done_on": (None, "2024-04-20"),
        "caused_by": (["e1"], ["e1", "e2"]),
    }
    assert changes.fines == []  # applied late: the fine stays as it was
    assert (changes.status.old, changes.status.new) == (
        "arc_application_overdue",
        "application_pending",
    )
    assert [e.event_id for e in changes.events] == ["e2"]


def test_a_fine_imposed_between_a_and_b_changes_its_amount() -> None:
    t = entered_late()
    t.add(
        "fine_imposed",
        "2024-05-10",
        fine="late_arc_application",
        amount_ntd=3000,
        recorded_at=at(5),
    )
    changes = what_changed(t.facts, d("2024-06-01"), at(2), at(6), DEFAULT_RULES)
    (fine,) = changes.fines
    assert (fine.change, fine.kind, fine.cause) == ("changed", "late_arc_application", "e1")
    assert {f.field: (f.old, f.new) for f in fine.fields} == {
        "status": ("accrued", "imposed"),
        "amount_ntd": (None, 3000),
        "caused_by": (["e1"], ["e1", "e2"]),
    }
    assert changes.tasks == [] and changes.status is None


def test_a_late_recorded_departure_freezes_the_overstay() -> None:
    t = Timeline()
    t.add("entered", "2024-02-20", visa="resident", recorded_at=at(1))
    t.add("arc_issued", "2024-03-18", valid_until="2025-01-31", recorded_at=at(1))
    t.add("departed", "2025-02-05", recorded_at=at(9))
    changes = what_changed(t.facts, d("2025-02-12"), at(2), at(10), DEFAULT_RULES)
    assert changes.overstay is not None
    assert (changes.overstay.old.days, changes.overstay.new.days) == (12, 5)
    assert (changes.overstay.old.fine_ntd, changes.overstay.new.fine_ntd) == (20000, 10000)
    (fine,) = changes.fines
    assert {f.field: (f.old, f.new) for f in fine.fields}["amount_min_ntd"] == (20000, 10000)
    assert changes.status is None  # an unresolved overstay stays one after departure


def test_the_same_moment_twice_is_no_change() -> None:
    t = entered_late()
    t.add("arc_applied", "2024-04-20", application="initial", recorded_at=at(3))
    for moment in (at(0), at(1), at(2), at(3), at(4)):
        changes = what_changed(t.facts, d("2024-05-01"), moment, moment, DEFAULT_RULES)
        assert changes.unchanged and changes.events == []
        assert changes.as_json()["tasks"] == [] and changes.as_json()["status"] is None


def test_a_after_b_or_a_naive_moment_is_refused() -> None:
    t = entered_late()
    with pytest.raises(ChangeWindowError, match="after the second"):
        what_changed(t.facts, d("2024-05-01"), at(3), at(2), DEFAULT_RULES)
    with pytest.raises(ChangeWindowError, match="time zone"):
        what_changed(t.facts, d("2024-05-01"), datetime(2024, 6, 1), at(2), DEFAULT_RULES)


def test_events_listed_are_exactly_those_recorded_after_a_up_to_b() -> None:
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident", recorded_at=at(1))
    t.add("registered", "2024-03-18", semester="112-2", recorded_at=at(2))
    t.add("arc_applied", "2024-03-20", application="initial", recorded_at=at(3))
    t.add("retracted", "2024-03-21", retracts="e2", reason="dup", recorded_at=at(4))
    changes = what_changed(t.facts, d("2024-05-01"), at(2), at(4), DEFAULT_RULES)
    # at(2) is A itself (excluded); at(4) is B itself (included).
    assert [e.event_id for e in changes.events] == ["e3", "e4"]
    retraction = changes.events[1]
    assert retraction.retracts == "e2" and retraction.retracted_at is None
    earlier = what_changed(t.facts, d("2024-05-01"), at(1), at(4), DEFAULT_RULES)
    registered = earlier.events[0]
    assert (registered.event_id, registered.retracted_at) == ("e2", at(4))


def test_events_never_carry_personal_data_or_notes() -> None:
    t = entered_late()
    fact = t.add("address_changed", "2024-04-01", address="Room 512, secret st.", recorded_at=at(3))
    fact.note = "private note"
    t.add("passport_replaced", "2024-04-02", passport_number="X9999999", recorded_at=at(3))
    text = json.dumps(what_changed(t.facts, d("2024-05-01"), at(2), at(4), DEFAULT_RULES).as_json())
    for secret in ("Room 512", "private note", "X9999999"):
        assert secret not in text
    assert '"address_changed"' in text and '"passport_replaced"' in text


# -- the changes carry the view known at A to the view known at B -------------------------
EVENTS = [
    ("entered", "2024-03-16", {"visa": "resident"}),
    ("arc_applied", "2024-04-20", {"application": "initial"}),
    ("arc_issued", "2024-05-02", {"valid_until": "2025-01-31"}),
    ("address_changed", "2024-06-01", {"address": "Room 1"}),
    ("details_updated", "2024-07-20", {"fields": ["address"]}),
    ("address_changed", "2024-08-01", {"address": "Room 2"}),
    ("fine_imposed", "2024-09-01", {"fine": "late_details_update", "amount_ntd": 2000}),
    ("fine_paid", "2024-09-15", {"amount_ntd": 1000}),
    ("departed", "2025-02-03", {}),
    ("retracted", "2025-03-01", {"retracts": "e2", "reason": "wrong day"}),
]


def _key(item: object) -> str:
    return json.dumps(item.model_dump(mode="json"), sort_keys=True)  # type: ignore[attr-defined]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hours=st.lists(st.integers(0, 30), min_size=len(EVENTS), max_size=len(EVENTS)),
    a=st.integers(-1, 31),
    b=st.integers(-1, 31),
    as_of=st.sampled_from(["2024-04-30", "2024-08-15", "2025-02-20"]),
)
def test_the_changes_carry_the_view_known_at_a_to_the_view_known_at_b(hours, a, b, as_of) -> None:
    t = Timeline()
    for (type_, on, fields), hour in zip(EVENTS, hours, strict=True):
        t.add(type_, on, recorded_at=at(hour), **fields)
    known_a, known_b = at(min(a, b)), at(max(a, b))
    day = d(as_of)
    changes = what_changed(t.facts, day, known_a, known_b, DEFAULT_RULES)
    before = view(t.facts, day, known_a)
    after = view(t.facts, day, known_b)
    for old_items, new_items, diff in (
        (before.tasks, after.tasks, changes.tasks),
        (before.fines, after.fines, changes.fines),
    ):
        carried = Counter(_key(i) for i in old_items)
        for change in diff:
            if change.old is not None:
                carried[_key(change.old)] -= 1
            if change.new is not None:
                carried[_key(change.new)] += 1
        assert +carried == Counter(_key(i) for i in new_items)
    status = changes.status.new if changes.status else before.status
    assert status == after.status
    assert (changes.overstay.new if changes.overstay else before.overstay) == after.overstay
    window = sorted(
        (f.recorded_at, f.seq, f.event_id) for f in t.facts if known_a < f.recorded_at <= known_b
    )
    assert [e.event_id for e in changes.events] == [e for _, _, e in window]
    assert changes.unchanged == (
        before.tasks == after.tasks
        and before.fines == after.fines
        and before.status == after.status
        and before.overstay == after.overstay
    )
