"""`TimelineStore.fact_tail` writes its envelope by hand: the transcoder's bytes exactly.

The stored state of a fact must not depend on which way it was written (the library's
mapper decodes both, and digests and backups compare bytes), so the hand-written tail
is checked against the transcoder's encoding of the same dict over arbitrary values.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeline.store import TimelineStore

texts = st.text(max_size=40)
data_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    texts,
    st.dates(),
    st.lists(texts, max_size=3),
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
