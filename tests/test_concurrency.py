"""Concurrent writers never lose an event (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

from conftest import _postgres_location
from feed_examples import entered, jsonl, registered

from timeline.ingest import Ingestor, ingest_objects, read_array
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
PER_WRITER = 15


def writer_events(writer: str, student: str = "S1", count: int = PER_WRITER) -> list[dict]:
    return [
        registered(f"{writer}-{i}", student=student, day=f"2024-03-{1 + i:02d}")
        for i in range(count)
    ]


def run_threads(location: str, work, *, open_in_threads: bool = False) -> list[BaseException]:
    """Run `work(store, index)` in two threads at once, each with its own store.

    By default the two stores are opened before the threads start, so that only the
    writes race; with `open_in_threads` the threads also race to open their store.
    Returns the errors the threads raised.
    """
    stores = [None, None] if open_in_threads else [TimelineStore.open(location) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            store = stores[index] or TimelineStore.open(location)
            stores[index] = store
            work(store, index)
        except threading.BrokenBarrierError:
            pass  # the other thread failed; its error is the one reported
        except BaseException as exc:  # reported to the test
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a writer hung"
    finally:
        for store in stores:
            if store is not None:
                store.close()
    return errors


def test_two_threads_one_event_at_a_time_same_student(location, caplog):
    caplog.set_level(logging.DEBUG)
    reports = [[], []]

    def work(store, index):
        for event in writer_events(f"w{index}"):
            if index == 1:  # personal data, to check the retry path logs none of it
                event = {
                    **{k: event[k] for k in ("event_id", "student_id", "occurred_on")},
                    "type": "address_changed",
                    "address": f"Secret Alley {event['event_id']}",
                }
            reports[index].append(ingest_objects(store, [event]))

    assert run_threads(location, work) == []
    assert all(r.ok and r.accepted == 1 for rs in reports for r in rs)
    with TimelineStore.open(location) as store:
        facts = store.facts("S1")
        expected = {f"w{w}-{i}" for w in range(2) for i in range(PER_WRITER)}
        assert {f.event_id for f in facts} == expected
        assert len(facts) == 2 * PER_WRITER
        assert len(store.stream("S1")) == 2 * PER_WRITER
        # one stream, versions without gaps: 1 (opened) + 30 facts
        assert sorted(f.seq for f in store.stream("S1")) == list(range(2, 2 * PER_WRITER + 2))
    for record in caplog.records:
        assert "Secret Alley" not in record.getMessage()


def test_two_threads_whole_batches_same_new_student(location):
    def work(store, index):
        report = ingest_objects(store, writer_events(f"w{index}", student="NEW"))
        assert report.as_json() == {"accepted": PER_WRITER, "duplicates": 0, "rejected": []}

    assert run_threads(location, work) == []
    with TimelineStore.open(location) as store:
        assert len(store.facts("NEW")) == 2 * PER_WRITER


def test_two_threads_sending_the_same_events_store_them_once(location):
    events = writer_events("shared")
    reports = []

    def work(store, index):
        for event in events:
            reports.append(ingest_objects(store, [event]))

    assert run_threads(location, work) == []
    assert sum(r.accepted for r in reports) == PER_WRITER
    assert sum(r.duplicates for r in reports) == PER_WRITER
    assert all(r.ok for r in reports)
    with TimelineStore.open(location) as store:
        assert [f.event_id for f in store.facts("S1")] == [e["event_id"] for e in events]
        assert len(store.stream("S1")) == PER_WRITER


def test_two_processes_ingesting_files_for_the_same_student(location, tmp_path):
    files = []
    for w in range(2):
        path = tmp_path / f"feed{w}.jsonl"
        path.write_text(jsonl(*writer_events(f"p{w}", count=20)))
        files.append(path)
    processes = [
        subprocess.Popen(
            [TIMELINE, "--db", location, "ingest", str(path), "--batch-size", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert json.loads(out) == {"accepted": 20, "duplicates": 0, "rejected": []}
    with TimelineStore.open(location) as store:
        assert len(store.facts("S1")) == 40


def fresh_locations(location: str, count: int):
    """`count` more fresh, empty locations on the same backend as `location`."""
    if not location.startswith("postgresql://"):
        for i in range(count):
            yield f"{location}.{i}"
        return
    for _ in range(count):
        making = _postgres_location()
        yield next(making)
        making.close()  # drops the schema


def test_two_writers_opening_a_fresh_store_at_the_same_time(location):
    # Services start together (serve + scheduler, two ingest jobs) on a new database:
    # both create the tables; neither may fail. The race window is short, so try it on
    # several fresh stores.
    rounds = 100 if not location.startswith("postgresql://") else 5
    for fresh in fresh_locations(location, rounds):

        def work(store, index):
            assert ingest_objects(store, writer_events(f"w{index}", count=2)).accepted == 2
            assert len(store.facts("S1")) >= 2

        assert run_threads(fresh, work, open_in_threads=True) == [], fresh


def test_two_writers_opening_an_existing_store_at_the_same_time(location):
    TimelineStore.open(location).close()
    for round_ in range(5):

        def work(store, index, round_=round_):
            report = ingest_objects(store, writer_events(f"r{round_}-w{index}", count=2))
            assert report.accepted == 2

        assert run_threads(location, work, open_in_threads=True) == []
    with TimelineStore.open(location) as store:
        assert len(store.facts("S1")) == 5 * 2 * 2


def test_atomic_input_stays_atomic_when_another_writer_conflicts_meanwhile(location):
    # Atomic mode checks the whole input first, then writes. If another writer stores a
    # conflicting event between the check and the write, the input must still be
    # stored all or nothing: not "e1 stored, e2 rejected".
    events = [entered("e1"), registered("e2")]
    calls = []
    with TimelineStore.open(location) as store, TimelineStore.open(location) as other:

        def open_records():
            calls.append(1)
            yield from read_array(events)
            # The check pass has read the whole input: the other writer gets in before
            # the write pass.
            report = ingest_objects(other, [registered("e2", day="2024-01-01")])
            assert report.accepted == 1

        report = Ingestor(store).run(open_records)

        assert len(calls) == 1, "the write pass works from what the check pass staged"
        assert [r.position for r in report.rejected] == [1]
        assert "conflict" in report.rejected[0].error
        assert report.accepted == 0
        assert [f.event_id for f in store.facts("S1")] == ["e2"]  # only the other's
