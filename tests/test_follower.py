"""`timeline follow`: a process of its own keeps the read models caught up, exactly once.

The follower runs as a real subprocess against real stores (SQLite, PostgreSQL); writers
ingest while it runs; its tables must then equal a rebuild's, row by row. It stops cleanly
on SIGTERM, resumes after SIGKILL from its tracking table, and outlives a cut connection to
PostgreSQL (a real TCP relay in front of the real server, closed and reopened).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import POSTGRES_URL, FakeClock, _postgres_location
from test_bitemporal_readmodel import table_rows

from projections.follower import Follower
from projections.readmodel import ReadModel
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))


def lives(first: int, count: int) -> list[dict]:
    """Valid events of `count` students numbered from `first`: entry to ARC, a move."""
    events: list[dict] = []
    for n in range(first, first + count):
        sid = f"F{n:05d}"
        day = date(2024, 1, 1) + timedelta(days=n % 200)

        def on(offset: int, day: date = day) -> str:
            return (day + timedelta(days=offset)).isoformat()

        events += [
            {"event_id": f"{sid}-in", "student_id": sid, "type": "entered",
             "occurred_on": on(0), "visa": "resident"},
            {"event_id": f"{sid}-reg", "student_id": sid, "type": "registered",
             "occurred_on": on(3), "semester": "112-2"},
            {"event_id": f"{sid}-app", "student_id": sid, "type": "arc_applied",
             "occurred_on": on(10 + n % 30), "application": "initial"},
        ]  # fmt: skip
        if n % 3:
            events.append(
                {"event_id": f"{sid}-arc", "student_id": sid, "type": "arc_issued",
                 "occurred_on": on(50), "valid_until": on(400)}
            )  # fmt: skip
        if n % 4 == 0:
            events.append(
                {"event_id": f"{sid}-mv", "student_id": sid, "type": "address_changed",
                 "occurred_on": on(70), "address": f"No. {n}, Sec. 4, Roosevelt Rd."}
            )  # fmt: skip
    return events


def write_batches(
    location: str, clock: FakeClock, batches: int, size: int = 40, first: int = 0
) -> None:
    """Ingest batches `first`.. of new students (and a later fact of earlier ones)."""
    with TimelineStore.open(location, clock=clock) as store:
        for b in range(first, first + batches):
            clock.advance(minutes=7)
            report = ingest_objects(store, lives(b * size, size))
            assert report.ok, report.as_json()
            if b:  # a later fact of students written in an earlier batch: a second version
                late = [
                    {"event_id": f"F{n:05d}-dep", "student_id": f"F{n:05d}", "type": "departed",
                     "occurred_on": "2024-12-01"}
                    for n in range((b - 1) * size, (b - 1) * size + 5)
                ]  # fmt: skip
                assert ingest_objects(store, late).ok


def write_in_parallel(
    location: str, clock: FakeClock, batches: int, size: int, others: int, other_size: int
) -> None:
    """Two writers at once, each with its own clock: `write_batches`, and new students
    numbered from 10,000 in `others` batches of `other_size`."""
    second = FakeClock(clock.now + timedelta(seconds=1))

    def other_students() -> None:
        with TimelineStore.open(location, clock=second) as store:
            for b in range(others):
                second.advance(minutes=5)
                assert ingest_objects(store, lives(10_000 + b * other_size, other_size)).ok

    writers = [
        threading.Thread(
            target=write_batches, args=(location, FakeClock(clock.now), batches, size)
        ),
        threading.Thread(target=other_students),
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()


def rebuilt_rows(location: str, path: Path) -> dict[str, list[tuple]]:
    """The tables a fresh rebuild of the whole log makes."""
    with TimelineStore.open(location) as store:
        model = ReadModel(path)
        model.rebuild(store)
        model.close()
    return table_rows(str(path))


def tracked(read_db: Path) -> int:
    """The position the follower has recorded in its tracking table (0 before it has one)."""
    try:
        with sqlite3.connect(read_db) as conn:
            row = conn.execute("SELECT position FROM rm_tracking").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row else 0


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_follower(location: str, read_db: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [TIMELINE, "--db", location, "follow", "--read-db", str(read_db), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def max_position(location: str) -> int:
    with TimelineStore.open(location) as store:
        return store.max_position()


def test_follow_once_catches_up_and_equals_a_rebuild(location, tmp_path, clock):
    write_batches(location, clock, 3)
    read_db = tmp_path / "read.db"
    done = subprocess.run(
        [TIMELINE, "--db", location, "follow", "--once", "--read-db", str(read_db)],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(done.stdout)
    assert summary["position"] == summary["store_position"] == max_position(location)
    assert summary["notifications"] == summary["position"] > 0
    write_batches(location, clock, 1, first=3)  # more, then a second catch-up applies only those
    again = json.loads(
        subprocess.run(
            [TIMELINE, "--db", location, "follow", "--once", "--read-db", str(read_db)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert again["notifications"] == again["position"] - summary["position"] > 0
    assert table_rows(str(read_db)) == rebuilt_rows(location, tmp_path / "rebuilt.db")


def test_the_follower_keeps_up_while_writers_write_and_stops_on_sigterm(location, tmp_path, clock):
    read_db = tmp_path / "read.db"
    follower = start_follower(location, read_db, "--interval", "0.1", "--batch-size", "50")
    try:
        write_in_parallel(location, clock, 4, 30, others=4, other_size=25)
        last = max_position(location)
        wait_for(lambda: tracked(read_db) == last, what="the follower to catch up")
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    report = json.loads(out)
    assert report["position"] == last
    assert report["notifications"] == last  # each applied once (an empty file at start)
    assert "signal 15: stopping" in err and f"stopped at position {last}" in err
    assert table_rows(str(read_db)) == rebuilt_rows(location, tmp_path / "rebuilt.db")


def test_three_followers_of_one_read_model_equal_a_rebuild(location, tmp_path, clock):
    """As in production, where every API process follows too: three `timeline follow`
    processes with small batches of different sizes race for each batch while two writers
    write (before the fix of the test above, 17 students differed from a rebuild)."""
    read_db = tmp_path / "read.db"
    TimelineStore.open(location).close()  # `follow` refuses to create the store
    followers = [
        start_follower(location, read_db, "--interval", "0.05", "--batch-size", str(size))
        for size in (3, 7, 11)
    ]
    try:
        for follower in followers:  # each has its SIGTERM handler (a busy machine starts slowly)
            assert follower.stderr is not None
            seen = ""
            while "following the event store" not in seen:
                seen += follower.stderr.readline()
                assert follower.poll() is None, seen + follower.stderr.read()
        write_in_parallel(location, clock, 6, 12, others=6, other_size=10)
        last = max_position(location)
        wait_for(lambda: tracked(read_db) == last, what="the followers to catch up")
        for follower in followers:
            follower.send_signal(signal.SIGTERM)
        for follower in followers:
            _, err = follower.communicate(timeout=20)
            assert follower.returncode == 0, err
    finally:
        for follower in followers:
            if follower.poll() is None:
                follower.kill()
    assert table_rows(str(read_db)) == rebuilt_rows(location, tmp_path / "rebuilt.db")


def test_a_killed_follower_resumes_from_its_tracking_table(tmp_path, clock):
    location = str(tmp_path / "events.db")
    write_batches(location, clock, 2)
    read_db = tmp_path / "read.db"
    first = subprocess.run(
        [TIMELINE, "--db", location, "follow", "--once", "--read-db", str(read_db)],
        capture_output=True,
        text=True,
        check=True,
    )
    before = json.loads(first.stdout)["position"]
    follower = start_follower(location, read_db, "--interval", "0.05", "--batch-size", "7")
    try:
        write_batches_after = threading.Thread(
            target=write_batches,
            args=(location, FakeClock(clock.now + timedelta(hours=1)), 3),
            kwargs={"first": 2},
        )
        write_batches_after.start()
        # Killed without warning once it has applied some of the new events, not all.
        wait_for(lambda: tracked(read_db) > before, what="the follower to apply something")
        follower.send_signal(signal.SIGKILL)
        follower.wait(timeout=10)
        write_batches_after.join()
    finally:
        if follower.poll() is None:
            follower.kill()
    stopped_at = tracked(read_db)
    assert before < stopped_at
    done = subprocess.run(
        [TIMELINE, "--db", location, "follow", "--once", "--read-db", str(read_db)],
        capture_output=True,
        text=True,
        check=True,
    )
    resumed = json.loads(done.stdout)
    # It went on from where the tracking table said, not from the start.
    assert resumed["notifications"] == resumed["position"] - stopped_at
    assert resumed["position"] == max_position(location)
    assert table_rows(str(read_db)) == rebuilt_rows(location, tmp_path / "rebuilt.db")


def test_a_batch_another_process_applied_first_leaves_no_later_event_unseen(tmp_path, clock):
    """Found by the soak (4 API processes and a follower on one read-model file): a
    follower met a student it had not cached and read the stream whole, events stored
    after its batch included; another process applied that batch first, so the plan was
    dropped, but those later events stayed cached as seen: when their batch came they were
    never derived (the rows stopped at the earlier version, rm_students said otherwise)."""
    location, read_db = str(tmp_path / "t.db"), str(tmp_path / "read.db")
    events = [
        ("2024-02-01", {"event_id": "r-in", "type": "entered", "visa": "resident"}),
        ("2024-02-05", {"event_id": "r-reg", "type": "registered", "semester": "112-2"}),
        ("2024-02-20", {"event_id": "r-app", "type": "arc_applied", "application": "initial"}),
        ("2024-03-20", {"event_id": "r-arc", "type": "arc_issued", "valid_until": "2024-09-01"}),
        ("2024-06-01", {"event_id": "r-move", "type": "address_changed", "address": "No. 1"}),
    ]
    batches = [
        [e | {"student_id": "R00001", "occurred_on": day} for day, e in part]
        for part in (events[:3], events[3:4], events[4:])
    ]
    with TimelineStore.open(location, clock=clock) as store:

        def ingest(batch: list[dict]) -> None:
            clock.advance(minutes=1)
            assert ingest_objects(store, batch).ok

        ingest(batches[0])
        first = ReadModel(read_db)
        first.sync(store)  # the first batch applied
        first.close()
        ingest(batches[1])
        a, b = ReadModel(read_db), ReadModel(read_db)  # two processes, nothing cached
        absorb = a._absorb

        def meanwhile(store_: TimelineStore, notifications: list) -> list:
            b.sync(store)  # b applies the second batch first: a's plan will be dropped
            ingest(batches[2])  # stored before a reads the stream whole
            return absorb(store_, notifications)

        a._absorb = meanwhile  # type: ignore[method-assign]
        a.sync(store)
        a._absorb = absorb  # type: ignore[method-assign]
        a.sync(store)  # the third batch: a must derive the move
        a.close()
        b.close()
    assert table_rows(read_db) == rebuilt_rows(location, tmp_path / "rebuilt.db")


def test_a_stop_takes_effect_between_two_committed_batches(sqlite_store, tmp_path, clock):
    assert ingest_objects(sqlite_store, lives(0, 30)).ok
    model = ReadModel(tmp_path / "read.db")
    model.rebuild(sqlite_store)
    first = model.position
    clock.advance(hours=1)
    for b in range(5):
        clock.advance(minutes=1)
        assert ingest_objects(sqlite_store, lives(100 + 10 * b, 10)).ok
    stop = threading.Event()
    seen: list[int] = []

    def after_batch(done: int, total: int) -> None:
        seen.append(done)
        stop.set()  # as SIGTERM does, in the middle of a catch-up

    follower = Follower(sqlite_store, model, batch=20)
    follower.catch_up(stop, on_progress=after_batch)
    assert seen == [first + 20]
    assert model.position == first + 20 < sqlite_store.max_position()
    # Nothing lost: the next pass goes on from there.
    follower.catch_up()
    assert model.position == sqlite_store.max_position()
    model.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--interval", "0"], "--interval"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, args, message):
    done = subprocess.run(
        [TIMELINE, "--db", str(tmp_path / "e.db"), "follow", "--once", *args],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert message in done.stderr


# -- a cut connection to PostgreSQL ------------------------------------------------------
class Relay:
    """A TCP relay on loopback in front of the real PostgreSQL server, which can be cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()  # refused while cut
                continue
            server = socket.create_connection(self.target)
            with self.lock:
                self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Close every relayed connection and refuse new ones."""
        self.open.clear()
        with self.lock:
            for pair in self.pairs:
                for s in pair:
                    with suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self.pairs.clear()

    def mend(self) -> None:
        """Accept connections again."""
        self.open.set()

    def close(self) -> None:
        self.closing = True
        self.cut()
        self.listener.close()


@contextmanager
def relayed(url: str) -> Iterator[tuple[Relay, str]]:
    """`url` (postgresql://user@host:port/db?schema=...) rewritten through a relay."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{relay.port}"
    rewritten = urlunsplit(
        parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
    )
    try:
        yield relay, rewritten
    finally:
        relay.close()


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
def test_the_follower_retries_while_postgresql_is_unreachable(tmp_path, clock):
    # The library retries a lost connection 10 times, waiting for the pool each time (30 s
    # by default): shortened by the URL's `connect_timeout` so a pass gives up in seconds.
    # (The store reads no environment: the settings alone do.)
    with contextmanager(_postgres_location)() as location:
        write_batches(location, clock, 1)
        with relayed(location) as (relay, through):
            store = TimelineStore.open(through + "&connect_timeout=1")
            model = ReadModel(tmp_path / "read.db", any_thread=True)
            follower = Follower(store, model, interval=0.05, max_backoff=0.2)
            stop = threading.Event()
            runner = threading.Thread(target=follower.run, args=(stop,))
            runner.start()
            try:
                wait_for(lambda: model_position(tmp_path) == max_position(location))
                relay.cut()
                write_batches_clock = FakeClock(clock.now + timedelta(hours=1))
                # Written directly meanwhile.
                write_batches(location, write_batches_clock, 2, first=1)
                wait_for(lambda: follower.report.retries >= 1, what="a failed pass")
                assert model_position(tmp_path) < max_position(location)
                relay.mend()
                wait_for(
                    lambda: model_position(tmp_path) == max_position(location),
                    what="the follower to catch up after the cut",
                )
            finally:
                stop.set()
                runner.join(timeout=20)
                store.close()
            assert not runner.is_alive()
            model.close()
        assert table_rows(str(tmp_path / "read.db")) == rebuilt_rows(
            location, tmp_path / "rebuilt.db"
        )


def model_position(tmp_path: Path) -> int:
    return tracked(tmp_path / "read.db")


def test_follow_refuses_a_store_location_it_cannot_use(tmp_path):
    done = subprocess.run(
        [TIMELINE, "follow", "--once"],
        capture_output=True,
        text=True,
        env={**os.environ, "TIMELINE_DB": "postgresql://"},
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "a PostgreSQL URL needs a database name" in done.stderr
