"""The PostgreSQL write path: its per-batch lookups stay index probes as the store grows.

An ingest asks, per batch, for the last version of each stream it appends to and for the
stored feed keys among its records. With a plain join or `= ANY(...)` the planner chose a
(parallel) scan of the whole table whenever the table had no statistics (a fresh store,
autovacuum off or behind): each batch then cost in proportion to the store, and a first
ingest of 1M events spent 40 % of its time there. These tests run on a real server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import _postgres_location
from eventsourcing.persistence import StoredEvent
from psycopg.sql import SQL

from timeline.store import PostgresTimelineRecorder, TimelineStore

pytestmark = pytest.mark.skipif(
    not os.environ.get("TIMELINE_TEST_POSTGRES_URL"),
    reason="TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)",
)

STREAMS = 400
VERSIONS = 12  # per stream: 4,800 events, enough pages that a scan is never free


@pytest.fixture(scope="module")
def filled() -> Iterator[TimelineStore]:
    """A store of STREAMS streams of VERSIONS events and one feed key each, never analysed."""
    making = _postgres_location()
    location = next(making)
    store = TimelineStore.open(location)
    recorder = store.recorder
    for first in range(0, STREAMS, 100):
        ids = [uuid.uuid5(uuid.NAMESPACE_OID, str(n)) for n in range(first, first + 100)]
        events = [
            StoredEvent(uid, version, "t:Topic", b"x" * 200)
            for uid in ids
            for version in range(1, VERSIONS + 1)
        ]
        keys = [
            ("registrar", f"E{first + n}", f"S{first + n}", "entered", "d" * 32)
            for n in range(len(ids))
        ]
        recorder.insert_events(events, feed_keys=keys)
    yield store
    store.close()
    making.close()  # drops the schema


def plan(store: TimelineStore, statement: Any, params: tuple[Any, ...]) -> str:
    """The server's plan for one of the recorder's statements, as text."""
    recorder = store.recorder
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(SQL("EXPLAIN ") + statement, params)
        return "\n".join(str(next(iter(row.values()))) for row in curs.fetchall())


def test_the_last_versions_lookup_probes_the_primary_key_without_statistics(filled):
    recorder = filled.recorder
    assert isinstance(recorder, PostgresTimelineRecorder)
    ids = [uuid.uuid5(uuid.NAMESPACE_OID, str(n)) for n in range(0, STREAMS, 2)]
    text = plan(filled, recorder._select_versions, (ids,))
    assert "Seq Scan" not in text, text
    assert "Index Only Scan Backward" in text or "Index Scan Backward" in text, text


def test_the_feed_key_lookup_probes_the_key_index_without_statistics(filled):
    recorder = filled.recorder
    assert isinstance(recorder, PostgresTimelineRecorder)
    keys = [("registrar", f"E{n}") for n in range(0, STREAMS, 2)]
    text = plan(filled, recorder._select_keys, ([k[0] for k in keys], [k[1] for k in keys]))
    assert "Seq Scan" not in text, text
    assert "feed_keys_pkey" in text, text


def test_last_versions_answers_the_highest_version_of_stored_streams_only(filled):
    stored = [uuid.uuid5(uuid.NAMESPACE_OID, str(n)) for n in (0, 7, STREAMS - 1)]
    missing = [uuid.uuid4() for _ in range(3)]
    versions = filled.recorder.last_versions(stored + missing)
    assert versions == dict.fromkeys(stored, VERSIONS)


def test_lookup_keys_answers_the_stored_keys_only_with_their_rows(filled):
    wanted = [("registrar", "E3"), ("registrar", "E399"), ("registrar", "E400"), ("housing", "E3")]
    found = filled.recorder.lookup_keys(wanted)
    assert found == {
        ("registrar", "E3"): ("registrar", "E3", "S3", "entered", "d" * 32),
        ("registrar", "E399"): ("registrar", "E399", "S399", "entered", "d" * 32),
    }


def test_the_library_path_gets_notification_ids_and_append_writes_without(filled):
    recorder = filled.recorder
    before = filled.max_position()
    first = uuid.uuid4()
    ids = recorder.insert_events([StoredEvent(first, 1, "t:Topic", b"{}")])
    assert ids == [before + 1]
    second = uuid.uuid4()
    assert (
        recorder.insert_events([StoredEvent(second, 1, "t:Topic", b"{}")], notification_ids=False)
        is None
    )
    assert recorder.last_versions([first, second]) == {first: 1, second: 1}
    assert filled.max_position() == before + 2
