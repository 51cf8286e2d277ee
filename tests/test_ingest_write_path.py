"""The fast write path stores exactly what the aggregate path stores, and stages safely.

Ingestion writes the library's `StoredEvent`s directly (`TimelineStore.append`) instead of
loading `Student` aggregates and calling `Application.save`. Existing stores, `history`,
the read models, the notification log and the eventsourcing repository must read both
the same: the states are compared byte for byte (after decryption when a cipher is set).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import _postgres_location
from eventsourcing.cipher import AESCipher
from feed_examples import VALID, example, retraction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeline.aggregate import student_uuid
from timeline.contract import json_schema, parse_event
from timeline.ingest import Ingestor, RawRecord, Staging, _canonical, ingest_objects
from timeline.rawjson import one_shot
from timeline.store import TimelineStore

STUDENTS = ("S1", "S2")


def varied_events() -> list[dict[str, Any]]:
    """Every event type (dates, lists, booleans, integers in `data`), two students,
    non-ASCII text and a multi-line note, and a retraction."""
    events = []
    for n, type_ in enumerate(t for t in VALID if t != "retracted"):
        student = STUDENTS[n % 2]
        events.append(
            example(type_, event_id=f"{student}-{type_}", student_id=student, source="registrar")
        )
    events.append(
        example(
            "address_changed",
            event_id="S1-move",
            address="臺北市大安區羅斯福路四段1號 5F",
            note="line one\nline two — ünïcode",
        )
    )
    events.append(retraction("S1-x", "S1-move", reason="wrong unit"))
    return events


def save_the_old_way(store: TimelineStore, events: list[dict[str, Any]]) -> None:
    """What ingestion did before: load the aggregates, record, `Application.save`."""
    parsed = [parse_event(raw) for raw in events]
    students = store.load_students(dict.fromkeys(e.student_id for e in parsed))
    keys = []
    for event in parsed:
        digest = Ingestor(store)._digest(event)
        students[event.student_id].record(
            source=event.source,
            event_id=event.event_id,
            type=event.type,  # type: ignore[attr-defined]
            occurred_on=event.occurred_on,
            data=event.body(),
            note=event.note,
            digest=digest,
            at=store.clock(),
        )
        keys.append((event.source, event.event_id, event.student_id, event.type, digest))  # type: ignore[attr-defined]
    store.save(students.values(), keys)


def stored_rows(store: TimelineStore) -> list[tuple[Any, ...]]:
    """Every stored event in log order, its state decrypted when the store has a key."""
    cipher = store.app.mapper.cipher
    return [
        (
            n.originator_id,
            n.originator_version,
            n.topic,
            cipher.decrypt(n.state) if cipher else n.state,
        )
        for n in store.notifications(0, 1000)
    ]


@contextmanager
def another_location(location: str, tmp_path: Path) -> Iterator[str]:
    """A second empty store on the same backend."""
    if location.startswith("postgresql://"):
        making = _postgres_location()
        yield next(making)
        making.close()  # drops the schema
    else:
        yield str(tmp_path / "old.db")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_the_fast_path_stores_the_same_events_as_application_save(
    location, tmp_path, clock, encrypted
):
    key = AESCipher.create_key(32) if encrypted else None
    events = varied_events()
    with TimelineStore.open(location, cipher_key=key, clock=clock) as new:
        report = ingest_objects(new, events)
        assert report.as_json() == {"accepted": len(events), "duplicates": 0, "rejected": []}
        new_rows = stored_rows(new)
        new_aggregates = {s: new.app.repository.get(student_uuid(s)) for s in STUDENTS}
        new_streams = {s: new.stream(s) for s in STUDENTS}
    with (
        another_location(location, tmp_path) as old_location,
        TimelineStore.open(old_location, cipher_key=key, clock=clock) as old,
    ):
        save_the_old_way(old, events)
        old_rows = stored_rows(old)
        old_aggregates = {s: old.app.repository.get(student_uuid(s)) for s in STUDENTS}
        old_streams = {s: old.stream(s) for s in STUDENTS}

    assert len(new_rows) == len(events) + len(STUDENTS)  # one `Registered` per student
    # Stream by stream: ids, versions, topics and state bytes. (`Application.save` puts a
    # batch into the log aggregate by aggregate; the fast path keeps the input order.)
    assert sorted(new_rows) == sorted(old_rows)
    # The log keeps the input order, each new stream's `Registered` just before its first fact.
    logged = [json.loads(row[3]) for row in new_rows]
    assert [e.get("event_id", e.get("student_id")) for e in logged] == [
        "S1",
        events[0]["event_id"],
        "S2",
        *(e["event_id"] for e in events[1:]),
    ]
    assert "臺北市" in new_rows[-2][3].decode()  # UTF-8 in the state, as the library writes
    for student in STUDENTS:
        assert vars(new_aggregates[student]) == vars(old_aggregates[student])
        assert new_aggregates[student].fact_count > 0
        assert new_streams[student] == old_streams[student]


def test_events_of_the_fast_path_follow_events_of_the_old_path_in_one_stream(store, clock):
    # A store written before this path existed goes on: versions continue the stream.
    save_the_old_way(store, [example("registered", event_id="old", occurred_on="2024-03-01")])
    clock.advance(hours=1)
    report = ingest_objects(store, [example("departed", event_id="new", occurred_on="2024-03-05")])
    assert report.accepted == 1
    facts = store.stream("S1")
    assert [(f.event_id, f.seq) for f in facts] == [("old", 2), ("new", 3)]
    assert facts[1].recorded_at == clock.now
    assert store.app.repository.get(student_uuid("S1")).version == 3


def test_a_new_student_gets_its_registered_event_first_at_the_record_time(store, clock):
    ingest_objects(store, [example("registered", event_id="e1", student_id="S9")])
    (registered, recorded) = store.notifications(0, 10)
    assert registered.topic == "timeline.aggregate:Student.Registered"
    assert registered.originator_version == 1
    assert store.decode(registered).timestamp == clock.now
    assert store.decode(registered).student_id == "S9"
    assert recorded.originator_version == 2


def test_a_restored_event_keeps_its_record_time(store, clock):
    # What `import` relies on: RawRecord.recorded_at, carried through the staging file.
    then = datetime(2023, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    records = [RawRecord(0, example("registered", event_id="e1"), recorded_at=then)]
    report = Ingestor(store).run(lambda: records)
    assert report.accepted == 1
    assert [f.recorded_at for f in store.stream("S1")] == [then]


_TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1, max_size=30
).filter(lambda s: s.strip() == s)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    type_=st.sampled_from(sorted(VALID)),
    note=st.none() | _TEXT,
    day=st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 12, 31)),
)
def test_the_digest_is_the_canonical_json_of_the_validated_event(type_, note, day):
    raw = example(type_, occurred_on=day.isoformat())
    for name in ("stay_until", "valid_until", "leave_by"):
        if name in raw:
            raw[name] = max(date.fromisoformat(raw[name]), day).isoformat()
    if note is not None:
        raw["note"] = note
    event = parse_event(raw)
    canonical = json.dumps(event.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    expected = hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
    assert expected == event.digest()  # the contract's own definition
    with TimelineStore.open(":memory:") as store:
        assert Ingestor(store)._digest(event) == expected


# Any text the contract takes in a free-text field: non-ASCII, escapes, TAB and LF.
_FREE_TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")) | st.sampled_from("\t\n"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() == s)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    type_=st.sampled_from(sorted(VALID)),
    note=st.none() | _FREE_TEXT,
    text=_TEXT,
)
def test_the_digest_written_by_pydantic_core_is_the_canonical_json(type_, note, text):
    # `_canonical` takes pydantic-core's text only where it is the canonical encoder's;
    # non-ASCII text (escaped by the canonical encoder only) must give the same digest.
    raw = example(type_, student_id=text, note=note)
    if type_ == "address_changed":
        raw["address"] = text
    event = parse_event(raw)
    canonical = json.dumps(event.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    assert _canonical(event) == canonical.encode()
    assert event.digest() == hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def test_the_contract_holds_no_number_that_pydantic_core_would_write_otherwise():
    # `_canonical` and `fact_tail` rely on it: floats are the one JSON value whose text
    # differs between pydantic-core and `json` (1e16 against 1e+16).
    assert '"number"' not in json.dumps(json_schema())


def test_the_staging_file_of_an_encrypted_store_holds_no_plaintext():
    secret = "Zzyzx Lane 4711, Qwertyville"
    rows = [(0, "housing", "e1", "S1", "address_changed", "d" * 32, None, secret.encode())]
    for encrypted, visible in ((True, False), (False, True)):
        staging = Staging(encrypted=encrypted)
        try:
            staging.add(rows)
            staging.add(rows)
            staging._file.seek(0)
            assert (secret.encode() in staging._file.read()) is visible
            assert list(staging.batches()) == [rows, rows]
            assert staging.count == 2
        finally:
            staging.close()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=80, deadline=None)
@given(value=st.dictionaries(st.text(max_size=8), _JSON, max_size=6), ascii_only=st.booleans())
def test_the_encoder_made_once_writes_what_json_encoder_writes(value, ascii_only):
    encoder = json.JSONEncoder(sort_keys=ascii_only, separators=(",", ":"), ensure_ascii=ascii_only)
    assert one_shot(encoder)(value) == encoder.encode(value)
