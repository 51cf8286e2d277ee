"""Properties of the projection over random, contract-valid timelines (hypothesis).

- The view does not depend on the order in which the facts are handed over (each fact
  keeps its own `recorded_at`, all distinct): SPEC §2 "events may arrive in any order".
- Every task and fine cites a rule id and a non-empty `caused_by` whose ids are facts that
  count (a retracted fact leaves nothing behind, SPEC §4).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from facts_builder import Timeline
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from projections.engine import view
from projections.rules import RULES, RuleBook
from timeline.facts import known_facts

START = date(2023, 11, 1)
SPAN_DAYS = 540
ROLLOVER = RuleBook().with_settings(deadline_rollover=True)

day_offsets = st.integers(min_value=0, max_value=SPAN_DAYS)


def _iso(offset: int) -> str:
    return (START + timedelta(days=offset)).isoformat()


@st.composite
def event_specs(draw: Any) -> tuple[str, int, dict[str, Any]]:
    """One (type, day offset, fields) that the feed contract accepts."""
    offset = draw(day_offsets)
    kind = draw(
        st.sampled_from(
            [
                "entered",
                "entered",
                "visa_changed",
                "registered",
                "arc_applied",
                "arc_applied",
                "arc_issued",
                "arc_issued",
                "address_changed",
                "details_updated",
                "arc_lost",
                "passport_lost",
                "passport_replaced",
                "departed",
                "departed",
                "studies_ceased",
                "arc_revoked",
                "fine_imposed",
                "fine_paid",
                "retracted",
            ]
        )
    )
    fields: dict[str, Any] = {}
    if kind == "entered":
        visa = draw(st.sampled_from(["resident", "visitor", "arc"]))
        fields["visa"] = visa
        if visa == "visitor":
            code = draw(st.sampled_from([None, "FS", "FC", "FR", "XX"]))
            if code:
                fields["visa_code"] = code
            fields["stay_until"] = _iso(offset + draw(st.integers(0, 180)))
    elif kind == "visa_changed":
        fields["to"] = "resident"
    elif kind == "registered":
        fields["semester"] = draw(st.sampled_from(["112-2", "113-1", "113-2"]))
    elif kind == "arc_applied":
        application = draw(
            st.sampled_from(["initial", "extension", "replacement", "reapplication"])
        )
        fields["application"] = application
        if application == "initial":
            fields["basis"] = draw(st.sampled_from(["registration", "admission_notice"]))
    elif kind == "arc_issued":
        fields["valid_until"] = _iso(offset + draw(st.integers(0, 400)))
        fields["application"] = draw(st.sampled_from(["initial", "extension", "replacement"]))
    elif kind == "address_changed":
        fields["address"] = "somewhere"
    elif kind == "details_updated":
        fields["fields"] = draw(
            st.lists(
                st.sampled_from(["address", "passport", "employer"]),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
    elif kind == "studies_ceased":
        fields["reason"] = draw(st.sampled_from(["deferred", "withdrawn", "other"]))
    elif kind == "arc_revoked":
        if draw(st.booleans()):
            fields["leave_by"] = _iso(offset + draw(st.integers(0, 60)))
    elif kind == "fine_imposed":
        fields["fine"] = draw(
            st.sampled_from(["late_arc_application", "late_details_update", "overstay"])
        )
        fields["amount_ntd"] = draw(st.integers(1000, 50000))
    elif kind == "fine_paid":
        fields["amount_ntd"] = draw(st.integers(500, 50000))
        if draw(st.booleans()):
            fields["fine"] = draw(
                st.sampled_from(["late_arc_application", "late_details_update", "overstay"])
            )
    return kind, offset, fields


@st.composite
def timelines(draw: Any) -> Timeline:
    specs = draw(st.lists(event_specs(), min_size=1, max_size=14))
    t = Timeline()
    for i, (kind, offset, fields) in enumerate(specs):
        event_id = f"e{i + 1}"
        if kind == "retracted":
            if not t.facts:
                continue
            target = draw(st.sampled_from([f.event_id for f in t.facts]))
            t.add(kind, _iso(offset), event_id=event_id, retracts=target, reason="wrong")
        else:
            t.add(kind, _iso(offset), event_id=event_id, **fields)
    return t


as_of_days = st.integers(min_value=0, max_value=SPAN_DAYS + 120).map(
    lambda n: START + timedelta(days=n)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=timelines(), as_of=as_of_days, rollover=st.booleans(), data=st.data())
def test_the_view_does_not_depend_on_the_order_of_the_facts(t, as_of, rollover, data):
    rules = ROLLOVER if rollover else RuleBook()
    facts = t.facts
    assert len({f.recorded_at for f in facts}) == len(facts)
    shuffled = data.draw(st.permutations(facts))
    expected = view(facts, as_of, rules=rules).model_dump()
    assert view(shuffled, as_of, rules=rules).model_dump() == expected
    assert view(list(reversed(facts)), as_of, rules=rules).model_dump() == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=timelines(), as_of=as_of_days)
def test_every_task_and_fine_has_a_rule_and_causes_among_the_facts(t, as_of):
    counted = {f.event_id for f in known_facts(t.facts)}
    v = view(t.facts, as_of)
    for item in [*v.tasks, *v.fines]:
        assert item.rule in RULES, item
        assert item.caused_by, item
        assert set(item.caused_by) <= counted, (item, counted)
    for anomaly in v.anomalies:
        assert set(anomaly.events) <= counted


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=timelines(), as_of=as_of_days)
def test_fines_total_is_the_sum_of_the_fines(t, as_of):
    v = view(t.facts, as_of)
    amount = [(f.amount_ntd, f.amount_min_ntd, f.amount_max_ntd) for f in v.fines]
    assert v.fines_total.min_ntd == sum(a if a is not None else lo for a, lo, _ in amount)
    assert v.fines_total.max_ntd == sum(a if a is not None else hi for a, _, hi in amount)
    assert v.fines_total.paid_ntd == sum(f.paid_ntd for f in v.fines)
    for f in v.fines:
        assert f.amount_min_ntd <= f.amount_max_ntd
        assert f.paid_ntd >= 0
        assert f.accrued_on <= as_of


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=timelines(), as_of=as_of_days)
def test_task_status_agrees_with_its_dates(t, as_of):
    for task in view(t.facts, as_of).tasks:
        if task.status == "done":
            assert task.done_on is not None
            assert task.due_on is None or task.done_on <= task.due_on
        elif task.status == "done_late":
            assert task.done_on is not None and task.due_on is not None
            assert task.done_on > task.due_on
        elif task.status == "overdue":
            assert task.due_on is not None and as_of > task.due_on
        elif task.status == "open":
            assert task.opens_on is not None and task.opens_on <= as_of
            assert task.due_on is None or as_of <= task.due_on
        if task.done_on is not None:
            assert task.done_on <= as_of


@settings(max_examples=150, deadline=None)
@given(t=timelines(), as_of=as_of_days, data=st.data())
def test_known_at_before_a_retraction_gives_the_pre_retraction_view(t, as_of, data):
    candidates = [f for f in t.facts if f.type != "retracted"]
    assume(candidates)
    target = data.draw(st.sampled_from(candidates))
    before = view(t.facts, as_of)
    moment = max(f.recorded_at for f in t.facts)
    t.add(
        "retracted",
        target.occurred_on.isoformat(),
        event_id="retraction",
        recorded_at=moment + timedelta(hours=1),
        source=target.source,
        retracts=target.event_id,
        reason="wrong",
    )
    as_known = view(t.facts, as_of, known_at=moment).model_dump()
    assert as_known == before.model_dump() | {"known_at": moment}
    after = view(t.facts, as_of)
    assert all(target.event_id not in task.caused_by for task in after.tasks)
    assert all(target.event_id not in fine.caused_by for fine in after.fines)
