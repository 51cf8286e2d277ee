"""The read side's decoding of stored events equals the eventsourcing library's mapper.

`TimelineStore.decode` and `TimelineStore.stream` parse stored states without the
library's per-object hook (the cost of reading the log). Whatever they return must be
exactly what the mapper returns: same classes, same attributes, same value types; and
whatever the mapper refuses, they refuse the same way.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.cipher import AESCipher
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import FakeClock
from timeline.aggregate import Student, student_uuid
from timeline.ingest import ingest_file
from timeline.store import TimelineStore, to_fact

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "feed.jsonl"


def _typed(value: Any) -> Any:
    """A value with the type of every part spelled out (dates are not strings, 1 is not True)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


def _same(fast: Any, library: Any) -> None:
    assert type(fast) is type(library)
    assert _typed(vars(fast)) == _typed(vars(library))


def _all_notifications(store: TimelineStore) -> list[Any]:
    return store.notifications(0, 100_000)


def test_decode_equals_the_library_mapper_for_every_stored_example(store: TimelineStore) -> None:
    ingest_file(store, EXAMPLES)
    notifications = _all_notifications(store)
    assert len(notifications) > 90
    # The cheap path serves them all (the mapper is only the fallback).
    assert store._fast is not None
    assert all(store._fast.event(n) is not None for n in notifications)
    for notification in notifications:
        _same(store.decode(notification), store.app.mapper.to_domain_event(notification))


def test_stream_equals_the_library_replay_for_every_example_student(
    store: TimelineStore,
) -> None:
    ingest_file(store, EXAMPLES)
    students = {json.loads(line)["student_id"] for line in EXAMPLES.read_text().splitlines()}
    for student_id in sorted(students):
        library = [
            to_fact(student_id, e)
            for e in store.app.events.get(student_uuid(student_id))
            if isinstance(e, Student.FactRecorded)
        ]
        stream = store.stream(student_id)
        assert stream == library
        assert [_typed(dict(f.data)) for f in stream] == [_typed(dict(f.data)) for f in library]
        assert [type(f.occurred_on) for f in stream] == [date] * len(stream)


def _stored(store: TimelineStore, data: dict[str, Any], note: str | None = None) -> StoredEvent:
    """A FactRecorded with this `data`, stored the way the library stores it."""
    student = Student.open("S1", datetime(2024, 1, 1, tzinfo=UTC))
    student.record(
        source="registrar",
        event_id="e1",
        type="entered",
        occurred_on=date(2024, 1, 2),
        data=data,
        note=note,
        digest="d",
        at=datetime(2024, 1, 3, tzinfo=UTC),
    )
    return store.app.mapper.to_stored_event(student.collect_events()[-1])


# Values the transcoder knows, nested in lists and objects, and keys that mimic its markers.
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.text(alphabet='{}[]"_typedaÀ\\ ', max_size=8),
    st.dates(),
    st.datetimes(timezones=st.just(UTC)),
    st.uuids(),
    st.decimals(allow_nan=False, places=2, min_value=-1000, max_value=1000),
)
_keys = st.sampled_from(["_type_", "_data_", "valid_until", "fields", "{", "a"])
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.dictionaries(_keys, _json, max_size=4), note=st.none() | st.text(max_size=5))
@example(data={"_type_": "date_iso", "_data_": ["2024-01-01"]}, note=None)
@example(data={"a": {"_type_": "date_iso", "_data_": {"x": 1}}}, note=None)
@example(data={"a": [{"_type_": "date_iso", "_data_": "2024-01-01"}]}, note=None)
@example(data={"_type_": "date_iso", "_data_": "2024-01-01"}, note=None)
def test_decode_equals_the_mapper_for_any_nested_data(
    sqlite_store: TimelineStore, data: dict[str, Any], note: str | None
) -> None:
    stored = _stored(sqlite_store, data, note)
    try:
        library = sqlite_store.app.mapper.to_domain_event(stored)
    except MapperDeserialisationError:
        # e.g. {"_type_": ..., "_data_": ...} written by hand: refused the same way
        with pytest.raises(MapperDeserialisationError):
            sqlite_store.decode(stored)
        return
    _same(sqlite_store.decode(stored), library)


def test_decode_revives_transcoded_values_at_any_depth(sqlite_store: TimelineStore) -> None:
    data = {
        "valid_until": date(2025, 1, 31),
        "fields": ["address", "passport"],
        "deep": [{"on": date(2024, 5, 1), "ids": [UUID(int=7)]}, [Decimal("1.50")]],
        "at": {"when": datetime(2024, 5, 1, 8, tzinfo=UTC)},
    }
    event = sqlite_store.decode(_stored(sqlite_store, data))
    assert event.data == data
    assert type(event.data["deep"][0]["on"]) is date
    assert event.occurred_on == date(2024, 1, 2)
    assert event.timestamp == datetime(2024, 1, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    "state",
    [
        b"{not json",
        b'{"timestamp": 1} trailing',
        b'{"timestamp":{"_type_":"no_such_transcoding","_data_":"x"}}',
        b"\xff\xfe",
    ],
)
def test_decode_refuses_a_broken_state_as_the_mapper_does(
    sqlite_store: TimelineStore, state: bytes
) -> None:
    good = _stored(sqlite_store, {})
    broken = StoredEvent(good.originator_id, good.originator_version, good.topic, state)
    with pytest.raises(MapperDeserialisationError):
        sqlite_store.app.mapper.to_domain_event(broken)
    with pytest.raises(MapperDeserialisationError):
        sqlite_store.decode(broken)


def test_an_encrypted_store_still_decodes(tmp_path: Path, clock: FakeClock) -> None:
    key = AESCipher.create_key(16)
    location = str(tmp_path / "secret.db")
    with TimelineStore.open(location, cipher_key=key, clock=clock) as store:
        ingest_file(store, EXAMPLES)
        facts = store.stream("S1011")
        assert facts and all(type(f.occurred_on) is date for f in facts)
        assert {s.student_id: s.facts for s in store.streams()}["S1011"] == facts
        first = _all_notifications(store)[1]
        _same(store.decode(first), store.app.mapper.to_domain_event(first))


def _example_students() -> list[str]:
    return sorted({json.loads(line)["student_id"] for line in EXAMPLES.read_text().splitlines()})


def test_streams_read_every_student_once_as_stream_does(store: TimelineStore) -> None:
    ingest_file(store, EXAMPLES)
    streams = list(store.streams())
    assert sorted(s.student_id for s in streams) == _example_students()
    for s in streams:
        assert s.uuid == student_uuid(s.student_id).hex
        assert s.facts == store.stream(s.student_id)
        assert s.version == len(s.facts) + 1  # the registration, then one version per fact
    # Pages of three rows split streams anywhere: the same streams come out.
    assert [(s.student_id, s.facts) for s in store.streams(page=3)] == [
        (s.student_id, s.facts) for s in streams
    ]


def test_streams_stop_at_the_given_log_position(
    store: TimelineStore, clock: FakeClock, tmp_path: Path
) -> None:
    lines = EXAMPLES.read_text().splitlines()
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(lines[:40]) + "\n")
    second.write_text("\n".join(lines[40:]) + "\n")
    ingest_file(store, first)
    upto = store.max_position()
    before = {s: store.stream(s) for s in _example_students()}
    clock.advance(days=1)
    ingest_file(store, second)
    assert store.max_position() > upto
    at_upto = {s.student_id: s.facts for s in store.streams(upto, page=5)}
    assert at_upto == {s: facts for s, facts in before.items() if facts}
    assert {s.student_id: s.facts for s in store.streams()} == {
        s: store.stream(s) for s in _example_students()
    }


def _fact_typed(fact: Any) -> Any:
    return _typed({name: getattr(fact, name) for name in fact.__slots__})


def test_the_exact_layout_path_serves_every_stored_example(store: TimelineStore) -> None:
    ingest_file(store, EXAMPLES)
    assert store._fast is not None and store._fast.exact
    stored = [
        s
        for sid in _example_students()
        for s in store.recorder.select_events(student_uuid(sid))
        if s.topic == Student.FactRecorded.__module__ + ":" + Student.FactRecorded.__qualname__
    ]
    assert len(stored) > 90
    for s in stored:
        fact = store._fast.exact_fact("S", s.originator_version, s.state)
        assert fact is not None  # the regular expression knows what `append` writes
        library = to_fact("S", store.app.mapper.to_domain_event(s))
        assert _fact_typed(fact) == _fact_typed(library)


_awkward_text = st.text(alphabet='a"\\\n\x01é臺\u2028{}:,_', max_size=6)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.dictionaries(_keys, _json, max_size=4),
    note=st.none() | _awkward_text,
    source=_awkward_text,
    event_id=_awkward_text,
)
@example(
    data={"valid_until": date(2025, 3, 31), "fields": ["address"]},
    note=None,
    source="r",
    event_id="e",
)
@example(
    data={"a": {"_type_": "date_iso", "_data_": "2024-13-01"}}, note="x", source="r", event_id="e"
)
def test_exact_fact_equals_the_mapper_or_declines(
    sqlite_store: TimelineStore, data: dict[str, Any], note: str | None, source: str, event_id: str
) -> None:
    stored = _stored(sqlite_store, data, note)
    # The same event with this source and event id, as `append` writes it.
    state = json.loads(stored.state)
    state["source"], state["event_id"] = source, event_id
    text = json.dumps(state, ensure_ascii=False, separators=(",", ":"))
    stored = StoredEvent(
        stored.originator_id, stored.originator_version, stored.topic, text.encode("utf8")
    )
    fast = sqlite_store._fast
    assert fast is not None
    fact = fast.exact_fact("S1", stored.originator_version, stored.state)
    try:
        library = sqlite_store.app.mapper.to_domain_event(stored)
    except MapperDeserialisationError:
        assert fact is None
        return
    if fact is not None:
        assert _fact_typed(fact) == _fact_typed(to_fact("S1", library))
    # Whichever path serves it, a stream reads the same fact.
    assert _fact_typed(
        sqlite_store._fact_of("S1", stored.originator_id, 2, stored.topic, stored.state)
    ) == _fact_typed(to_fact("S1", library))


@pytest.mark.parametrize("student_id", ["S1011", 'S"1', "S\\2", "S\u2028臺", "S\x01"])
def test_the_registration_read_by_streams_names_the_mappers_student(
    sqlite_store: TimelineStore, student_id: str
) -> None:
    sqlite_store.append(
        [
            (
                student_id,
                None,
                sqlite_store.fact_tail(
                    source="r",
                    event_id="e",
                    type="entered",
                    occurred_on=date(2024, 1, 2),
                    data={},
                    note=None,
                    digest="d",
                ),
            )
        ],
        [("r", "e", student_id, "entered", "d")],
    )
    registration = sqlite_store.recorder.select_events(student_uuid(student_id))[0]
    assert sqlite_store._fast is not None
    library = sqlite_store.app.mapper.to_domain_event(registration)
    assert sqlite_store._fast.registered_name(registration.state) == library.student_id
    assert [s.student_id for s in sqlite_store.streams()] == [student_id]
