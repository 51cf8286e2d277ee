"""Retraction and record time (SPEC §2 `retracted`, §4 `--known-at`, `history`)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from feed_examples import entered, registered, retraction

from timeline.cli import main
from timeline.history import history_entries
from timeline.ingest import ingest_objects

EPSILON = timedelta(microseconds=1)


@pytest.fixture
def retracted_store(store, clock):
    """e1 and e2 recorded at T1, e1 retracted by r1 at T2 = T1 + 1 h."""
    t1 = clock.now
    report = ingest_objects(store, [entered("e1"), registered("e2")])
    assert report.accepted == 2
    t2 = clock.advance(hours=1)
    report = ingest_objects(store, [retraction("r1", "e1")])
    assert report.as_json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    return store, t1, t2


def ids(facts):
    return [f.event_id for f in facts]


def test_retracted_fact_counts_until_the_retraction_is_recorded(retracted_store):
    store, t1, t2 = retracted_store
    assert ids(store.facts("S1", known_at=t1 - EPSILON)) == []
    assert ids(store.facts("S1", known_at=t1)) == ["e1", "e2"]
    assert ids(store.facts("S1", known_at=t1 + (t2 - t1) / 2)) == ["e1", "e2"]
    assert ids(store.facts("S1", known_at=t2 - EPSILON)) == ["e1", "e2"]
    assert ids(store.facts("S1", known_at=t2)) == ["e2"]
    assert ids(store.facts("S1", known_at=t2 + timedelta(days=400))) == ["e2"]
    assert ids(store.facts("S1")) == ["e2"]


def test_known_at_in_another_time_zone_is_the_same_instant(retracted_store):
    from zoneinfo import ZoneInfo

    store, _, t2 = retracted_store
    taipei = ZoneInfo("Asia/Taipei")
    assert ids(store.facts("S1", known_at=(t2 - EPSILON).astimezone(taipei))) == ["e1", "e2"]
    assert ids(store.facts("S1", known_at=t2.astimezone(taipei))) == ["e2"]


def test_the_retraction_itself_is_never_a_fact(retracted_store):
    store, _, t2 = retracted_store
    for known_at in (None, t2, t2 + timedelta(days=1)):
        assert all(f.type != "retracted" for f in store.facts("S1", known_at=known_at))
    # but it is stored
    assert [f.event_id for f in store.stream("S1")] == ["e1", "e2", "r1"]


def test_history_marks_the_retracted_event(retracted_store):
    store, t1, t2 = retracted_store
    entries = {e["event_id"]: e for e in history_entries(store.stream("S1"))}
    assert set(entries) == {"e1", "e2", "r1"}
    e1 = entries["e1"]
    assert e1["retracted"] is True
    assert e1["retracted_at"] == t2.isoformat()
    assert e1["retracted_by"] == "r1"
    assert e1["recorded_at"] == t1.isoformat()
    assert e1["visa"] == "resident"
    for other in ("e2", "r1"):
        assert entries[other]["retracted"] is False
        assert entries[other]["retracted_at"] is None
        assert entries[other]["retracted_by"] is None
    assert entries["r1"]["retracts"] == "e1"
    assert entries["r1"]["recorded_at"] == t2.isoformat()


def test_history_cli_shows_the_retraction(retracted_store, location):
    _, _, t2 = retracted_store
    result = CliRunner().invoke(main, ["--db", location, "history", "S1", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    by_id = {e["event_id"]: e for e in entries}
    assert by_id["e1"]["retracted"] is True
    assert by_id["e1"]["retracted_by"] == "r1"
    assert by_id["e1"]["retracted_at"] == t2.isoformat()
    table = CliRunner().invoke(main, ["--db", location, "history", "S1"])
    assert table.exit_code == 0
    assert "by r1" in table.stdout


def test_history_of_an_unknown_student_is_an_empty_array(store, location):
    result = CliRunner().invoke(main, ["--db", location, "history", "nobody", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_retraction_of_an_unknown_event_is_rejected(store):
    ingest_objects(store, [entered("e1")])
    report = ingest_objects(store, [retraction("r1", "nope")])
    assert report.accepted == 0
    (rejection,) = report.rejected
    assert rejection.error.startswith("retracts:")
    assert "'nope'" in rejection.error
    assert ids(store.facts("S1")) == ["e1"]
    assert ids(store.stream("S1")) == ["e1"]


def test_retraction_of_another_students_event_is_rejected(store):
    ingest_objects(store, [entered("e1", student="S1"), entered("e2", student="S2")])
    report = ingest_objects(store, [retraction("r1", "e1", student="S2")])
    assert report.accepted == 0
    (rejection,) = report.rejected
    assert rejection.error.startswith("retracts:")
    assert "another student" in rejection.error
    assert ids(store.facts("S1")) == ["e1"]
    assert ids(store.stream("S2")) == ["e2"]


def test_retraction_of_another_students_event_in_the_same_input_is_rejected(store):
    report = ingest_objects(
        store, [entered("e1", student="S1"), retraction("r1", "e1", student="S2")], partial=True
    )
    assert report.accepted == 1
    assert [r.position for r in report.rejected] == [1]
    assert "another student" in report.rejected[0].error


def test_retraction_must_come_from_the_same_source(store):
    ingest_objects(store, [entered("e1", source="registrar")])
    report = ingest_objects(store, [retraction("r1", "e1", source="housing")])
    assert report.accepted == 0
    assert report.rejected[0].error.startswith("retracts:")
    assert "'housing'" in report.rejected[0].error
    assert ids(store.facts("S1")) == ["e1"]
    same_source = ingest_objects(store, [retraction("r1", "e1", source="registrar")])
    assert same_source.accepted == 1
    assert store.facts("S1") == []


def test_a_retraction_cannot_be_retracted(retracted_store):
    store, _, _ = retracted_store
    report = ingest_objects(store, [retraction("r2", "r1")])
    assert report.accepted == 0
    assert report.rejected[0].error.startswith("retracts:")
    assert ids(store.facts("S1")) == ["e2"]


def test_retraction_in_the_same_input_as_its_target(store, clock):
    report = ingest_objects(store, [entered("e1"), registered("e2"), retraction("r1", "e1")])
    assert report.accepted == 3
    assert ids(store.facts("S1")) == ["e2"]
    # recorded in the same instant: never known without the retraction
    assert ids(store.facts("S1", known_at=clock.now)) == ["e2"]


def test_a_retraction_before_its_target_in_the_input_is_rejected(store):
    report = ingest_objects(store, [retraction("r1", "e1"), entered("e1")])
    assert report.accepted == 0
    assert [r.position for r in report.rejected] == [0]


def test_a_bad_retraction_makes_an_atomic_batch_store_nothing(store):
    report = ingest_objects(store, [entered("e1"), retraction("r1", "e9")])
    assert report.accepted == 0
    assert [r.position for r in report.rejected] == [1]
    assert store.stream("S1") == []


def test_sending_the_same_retraction_again_is_a_duplicate(retracted_store):
    store, _, t2 = retracted_store
    report = ingest_objects(store, [retraction("r1", "e1")])
    assert report.as_json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    entries = {e["event_id"]: e for e in history_entries(store.stream("S1"))}
    assert entries["e1"]["retracted_at"] == t2.isoformat()


def test_a_second_retraction_of_the_same_event_keeps_the_first_time(retracted_store, clock):
    store, _, t2 = retracted_store
    clock.advance(hours=1)
    report = ingest_objects(store, [retraction("r2", "e1", reason="again")])
    assert report.accepted == 1
    entries = {e["event_id"]: e for e in history_entries(store.stream("S1"))}
    assert entries["e1"]["retracted_by"] == "r1"
    assert entries["e1"]["retracted_at"] == t2.isoformat()
    assert ids(store.facts("S1", known_at=t2 - EPSILON)) == ["e1", "e2"]
    assert ids(store.facts("S1", known_at=t2)) == ["e2"]


def test_a_retracted_fact_sent_again_under_a_new_id_counts_again(retracted_store, clock):
    store, _, _ = retracted_store
    t3 = clock.advance(hours=1)
    ingest_objects(store, [entered("e1-fixed", day="2024-03-17")])
    assert ids(store.facts("S1")) == ["e1-fixed", "e2"]
    assert ids(store.facts("S1", known_at=t3 - EPSILON)) == ["e2"]
