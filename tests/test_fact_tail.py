"""`TimelineStore.fact_tail` writes its envelope by hand: the transcoder's bytes exactly.

The stored state of a fact must not depend on which way it was written (the library's
mapper decodes both, and digests and backups compare bytes), so the hand-written tail
is checked against the transcoder's encoding of the same dict over arbitrary values.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date

import pytest
from eventsourcing.utils import get_topic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeline.aggregate import Student
from timeline.store import WAL_CHECKPOINT_PAGES, TimelineStore

texts = st.text(max_size=40)
data_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.integers(),  # beyond 64 bits too
    texts,
    st.dates(),
    st.lists(texts, max_size=3),
    # Kinds no event holds, which the transcoder alone writes (the fast path steps aside).
    st.datetimes(timezones=st.just(UTC)),
    st.lists(st.dates(), min_size=1, max_size=2),
    st.dictionaries(st.text(max_size=5), st.dates(), max_size=2),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TimelineStore]:
    """One SQLite store for every example (opening one per example would dominate)."""
    with TimelineStore.open(str(tmp_path_factory.mktemp("tail") / "t.db")) as opened:
        yield opened


def test_a_store_writes_the_tail_by_hand(store: TimelineStore):
    assert store._tail_by_hand  # else the property below tests nothing


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=texts,
    event_id=texts,
    type_=texts,
    day=st.dates(),
    data=st.dictionaries(st.text(max_size=12), data_values, max_size=4),
    note=st.none() | texts,
    digest=texts,
)
def test_the_tail_by_hand_is_the_transcoders_encoding(
    store, source, event_id, type_, day: date, data, note, digest
):
    fields = {
        "source": source,
        "event_id": event_id,
        "type": type_,
        "occurred_on": day,
        "data": data,
        "note": note,
        "digest": digest,
    }
    assert store.fact_tail(**fields) == store._encoded_tail(**fields)


def test_a_store_writes_the_registered_event_by_hand(store: TimelineStore):
    assert store._registered_by_hand  # else the property below tests nothing


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(student_id=texts, now=st.datetimes(timezones=st.just(UTC)))
def test_the_registered_event_by_hand_is_the_transcoders_encoding(store, student_id, now):
    stamp = b'{"timestamp":' + store.app.mapper.transcoder.encode(now) + b","
    expected = store.app.mapper.transcoder.encode(
        {"timestamp": now, "originator_topic": get_topic(Student), "student_id": student_id}
    )
    assert store._registered(now, stamp, student_id) == expected


def test_a_write_sets_the_larger_wal_checkpoint_on_the_writer_connection(tmp_path):
    with TimelineStore.open(str(tmp_path / "w.db")) as store:
        store.append([("S1", None, store.fact_tail(**_FACT))], [("m", "e1", "S1", "x", "d")])
        with store.recorder.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA wal_autocheckpoint")
            assert c.fetchone()[0] == WAL_CHECKPOINT_PAGES


_FACT = {
    "source": "m",
    "event_id": "e1",
    "type": "departed",
    "occurred_on": date(2024, 3, 16),
    "data": {},
    "note": None,
    "digest": "d",
}
