"""SPEC §5 exactly-once emitting: the outbox, catch-up, two processes, dead letters.

Everything runs against real things: a store on SQLite and PostgreSQL, a JSON Lines file,
OS processes, and an http.server on 127.0.0.1 for the webhook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from feed_examples import ev

from projections.readmodel import ReadModel
from scheduler.alerts import alerts_on
from scheduler.emit import emit_day, run_until
from scheduler.outbox import Outbox, OutboxDB, outbox_location
from scheduler.retry import RetryPolicy
from scheduler.sinks import JsonlSink, WebhookSink
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
DAY = date(2024, 6, 1)
POSTGRES_URL = os.environ.get("TIMELINE_TEST_POSTGRES_URL")


def entered(student: str, on: str) -> list[dict[str, Any]]:
    return [ev(student, "entered", "entered", on, visa="resident")]


def holding_arc(student: str, valid_until: str) -> list[dict[str, Any]]:
    return [
        ev(student, "entered", "entered", "2023-08-20", visa="resident"),
        ev(student, "applied", "arc_applied", "2023-08-25", application="initial"),
        ev(student, "issued", "arc_issued", "2023-09-01", valid_until=valid_until),
    ]


def cohort(n: int = 1) -> list[dict[str, Any]]:
    """Students with 6 alerts each on 2024-06-01 (DAY)."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        # overdue, overstay_started, accrued, and pay_fine_and_reapply's window_open
        events += holding_arc(f"B{i}", "2024-05-31")
        events += holding_arc(f"C{i}", "2024-07-01")  # extend_arc due_in_30
        events += entered(f"D{i}", "2024-05-02")  # apply_arc due_today
    return events


def jsonl_keys(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["key"] for line in path.read_text("utf-8").splitlines()]


@contextmanager
def wired(store: TimelineStore, tmp_path: Path, events: list[dict]) -> Iterator[tuple]:
    """Ingest, sync the read models, open the outbox where production puts it."""
    report = ingest_objects(store, events)
    assert report.ok, report.as_json()
    read_db = str(tmp_path / "read.db")
    model = ReadModel(read_db)
    model.sync(store)
    location = outbox_location(store.config.location, read_db)
    db = OutboxDB(location)
    try:
        yield model, Outbox(db), location
    finally:
        db.close()
        model.close()


def triples(rows: list[dict]) -> set[tuple[str, str, str]]:
    return {(r["student_id"], r["task"], r["milestone"]) for r in rows}


# -- exactly once -----------------------------------------------------------------------


def test_emit_day_twice_sends_each_alert_once(store, tmp_path):
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    with wired(store, tmp_path, cohort(2)) as (model, outbox, location):
        expected = {a.key for a in alerts_on(model, DAY)}
        assert len(expected) == 12

        first = emit_day(model, outbox, sink, DAY)
        assert (first.found, first.enqueued.new, first.enqueued.already) == (12, 12, 0)
        assert (first.delivered.sent, first.delivered.failed) == (12, 0)

        second = emit_day(model, outbox, sink, DAY)
        assert (second.found, second.enqueued.new, second.enqueued.already) == (12, 0, 12)
        assert (second.delivered.sent, second.delivered.failed) == (0, 0)

        # A restart: a new connection and outbox object; still nothing new.
        again = OutboxDB(location)
        try:
            third = emit_day(model, Outbox(again), sink, DAY)
        finally:
            again.close()
        assert (third.enqueued.new, third.delivered.sent) == (0, 0)

        rows = outbox.rows()
        assert {r["key"] for r in rows} == expected
        assert {r["state"] for r in rows} == {"sent"}
        assert {r["attempts"] for r in rows} == {1}
        assert {r["sink"] for r in rows} == {sink.name}

    keys = jsonl_keys(tmp_path / "alerts.jsonl")
    assert len(keys) == len(set(keys)) == 12
    assert set(keys) == expected


def run_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TIMELINE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def test_cli_emit_twice_emits_nothing_the_second_time(tmp_path):
    db = str(tmp_path / "timeline.db")
    out = tmp_path / "out" / "alerts.jsonl"
    with TimelineStore.open(db) as store:
        assert ingest_objects(store, cohort(1)).ok
    args = ("alerts", "--on", DAY.isoformat(), "--emit", "--sink", f"jsonl:{out}", "--db", db)

    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Emitted 6 alert(s) for 2024-06-01" in first.stderr
    assert json.loads(first.stdout)["new"] == json.loads(first.stdout)["sent"] == 6

    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Nothing new to emit for 2024-06-01" in second.stderr
    assert "6 alert(s) were already emitted" in second.stderr
    summary = json.loads(second.stdout)
    assert (summary["new"], summary["already_emitted"], summary["sent"]) == (0, 6, 0)

    keys = jsonl_keys(out)
    assert len(keys) == len(set(keys)) == 6
    assert not (tmp_path / "alerts.jsonl").exists(), "the default sink was used instead"


# -- catch-up ---------------------------------------------------------------------------


def test_catch_up_sends_only_each_subjects_latest_milestone(store, tmp_path):
    out = tmp_path / "alerts.jsonl"
    sink = JsonlSink(out)
    # A: apply_arc due 2024-04-15. B: ARC valid through 2024-04-05, never extended.
    events = entered("A", "2024-03-16") + holding_arc("B", "2024-04-05")
    with wired(store, tmp_path, events) as (model, outbox, _location):
        mark = run_until(model, outbox, sink, date(2024, 3, 31))
        assert mark.days == [date(2024, 3, 31)]  # the first run covers that day only
        assert outbox.watermark() == date(2024, 3, 31)
        assert mark.delivered.sent == 0

        # Down from 04-01 to 04-10; the run on 04-10 covers all ten days.
        report = run_until(model, outbox, sink, date(2024, 4, 10))
        assert report.days == [date(2024, 4, d) for d in range(1, 11)]
        assert outbox.watermark() == date(2024, 4, 10)

        sent = outbox.rows("sent")
        superseded = outbox.rows("superseded")
        assert triples(sent) == {
            ("A", "apply_arc", "due_in_7"),  # 04-08; due_in_14 on 04-01 superseded
            ("B", "extend_arc", "overdue"),  # 04-06; due_in_1, due_today superseded
            ("B", "overstay", "overstay_started"),  # 04-06 (the overstay episode)
            ("B", "overstay", "accrued"),  # 04-06 (the overstay fine)
            ("B", "pay_fine_and_reapply", "window_open"),  # 04-06 (overstay day 1)
        }
        assert triples(superseded) == {
            ("A", "apply_arc", "due_in_14"),
            ("B", "extend_arc", "due_in_1"),
            ("B", "extend_arc", "due_today"),
        }
        assert {r["day"] for r in superseded} == {"2024-04-01", "2024-04-04", "2024-04-05"}
        assert all(r["sent_at"] is None and r["attempts"] == 0 for r in superseded)
        assert outbox.rows() == sorted(sent + superseded, key=lambda r: (r["day"], r["key"]))
        assert (report.enqueued.new, report.enqueued.superseded) == (5, 3)
        assert (report.delivered.sent, report.delivered.failed) == (5, 0)

        keys = jsonl_keys(out)
        assert sorted(keys) == sorted(r["key"] for r in sent)
        assert not {r["key"] for r in superseded} & set(keys)

        # The same day again (a restart, a second run): nothing is enqueued or sent.
        rerun = run_until(model, outbox, sink, date(2024, 4, 10))
        assert rerun.days == []
        assert (rerun.enqueued.new, rerun.enqueued.superseded, rerun.delivered.sent) == (0, 0, 0)
        # An earlier day (a clock set back) neither re-sends nor moves the watermark back.
        back = run_until(model, outbox, sink, date(2024, 4, 2))
        assert (back.days, back.delivered.sent) == ([], 0)
        assert outbox.watermark() == date(2024, 4, 10)
        # The next day covers only itself.
        nxt = run_until(model, outbox, sink, date(2024, 4, 11))
        assert nxt.days == [date(2024, 4, 11)]
        assert outbox.watermark() == date(2024, 4, 11)
        assert len(outbox.rows()) == 8

    assert jsonl_keys(out) == keys


def test_catch_up_never_sends_a_milestone_its_task_or_overstay_left_behind(store, tmp_path):
    """A task done, or an overstay ended, while the daemon was down gets no stale alert.

    Found by a hostile probe: after downtime the run on 04-12 told A "please apply for
    your ARC, due 2024-04-15, 7 days left" though A had applied on 04-09, and told B,
    who had left Taiwan on 04-08, that the overstay had started and the reapply window
    was open. The fine B incurred still stands and is still sent.
    """
    out = tmp_path / "alerts.jsonl"
    events = [
        *entered("A", "2024-03-16"),
        ev("A", "applied", "arc_applied", "2024-04-09", application="initial"),
        *holding_arc("B", "2024-04-05"),
        ev("B", "left", "departed", "2024-04-08"),
        *entered("K", "2024-03-20"),  # apply_arc due 04-19, still open on 04-12
    ]
    with wired(store, tmp_path, events) as (model, outbox, _location):
        run_until(model, outbox, JsonlSink(out), date(2024, 3, 31))
        report = run_until(model, outbox, JsonlSink(out), date(2024, 4, 12))
        sent = triples(outbox.rows("sent"))
        assert sent == {
            ("B", "extend_arc", "overdue"),  # still not done on 04-12 (B left, ARC expired)
            ("B", "overstay", "accrued"),  # a fine stands
            ("K", "apply_arc", "due_in_7"),  # 04-12 itself
        }
        assert ("A", "apply_arc", "due_in_7") in triples(outbox.rows("superseded"))
        assert ("B", "overstay", "overstay_started") in triples(outbox.rows("superseded"))
        assert ("B", "pay_fine_and_reapply", "window_open") in triples(outbox.rows("superseded"))
        assert report.delivered.sent == 3
    assert len(jsonl_keys(out)) == 3


# -- two processes ----------------------------------------------------------------------

CHILD = r"""
import json, sys, time
from datetime import date, datetime
from pathlib import Path

mode, db, read_db, sink, day, ready, go = sys.argv[1:8]
from scheduler.jobs import daily_alerts, emit_once
from timeline.clock import TAIPEI
import time_machine

Path(ready).touch()
deadline = time.monotonic() + 60
while not Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.005)
d = date.fromisoformat(day)
for attempt in range(10):
    try:
        if mode == "emit_once":
            summary = emit_once(db, read_db or None, sink, d, wait=60).as_json()
        else:
            moment = datetime(d.year, d.month, d.day, 8, 0, tzinfo=TAIPEI)
            with time_machine.travel(moment, tick=True):
                summary = daily_alerts(db, read_db or None, sink, wait=60)
        break
    except Exception as exc:
        # Only the store-open race (test_emitters_open_an_existing_store_at_once) is retried:
        # it happens before the emitter lock is taken, so nothing was enqueued or sent.
        if "tuple concurrently updated" not in str(exc) or attempt == 9:
            raise
        print(f"retrying after the store-open race: {exc}", file=sys.stderr)
        time.sleep(0.05)
print(json.dumps(summary))
"""


def run_together(
    scripts: list[tuple[str, list[str]]], tmp_path: Path, name: str
) -> list[tuple[int, str, str]]:
    """Run `python -c script argv... READY GO` processes; release them together.

    Each child touches its READY file once imported, then waits for GO; the parent creates
    GO when all are ready. Returns (returncode, stdout, stderr) per child.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    go = tmp_path / f"{name}-go"
    ready = [tmp_path / f"{name}-ready-{i}" for i in range(len(scripts))]
    children: list[subprocess.Popen] = []
    try:
        for (script, argv), flag in zip(scripts, ready, strict=True):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, *argv, str(flag), str(go)],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + 60
        while not all(flag.exists() for flag in ready):
            assert time.monotonic() < deadline, "the children did not start"
            exited = [c for c in children if c.poll() is not None]
            assert not exited, [c.communicate(timeout=10) for c in exited]
            time.sleep(0.01)
        go.touch()
        results = [c.communicate(timeout=90) for c in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    return [(c.returncode, out, err) for c, (out, err) in zip(children, results, strict=True)]


def race(n: int, work: Callable[[], object]) -> list[str]:
    """Run `work` in n threads released together; the errors they raised, one line each."""
    barrier = threading.Barrier(n)
    errors: list[str] = []

    def target() -> None:
        try:
            barrier.wait(timeout=30)
            work()
        except Exception as exc:  # reported to the test
            errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])

    threads = [threading.Thread(target=target) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


@contextmanager
def fresh_location(backend: str, tmp_path: Path, name: str) -> Iterator[str]:
    """A new, empty location: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if backend == "sqlite":
        yield str(tmp_path / f"{name}.db")
        return
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_emitters_open_an_existing_store_at_once(location):
    """Two emitters or schedulers starting together must both get a working store.

    BUG (PostgreSQL): every `TimelineStore.open` re-runs eventsourcing's
    `CREATE OR REPLACE FUNCTION es_insert_events_uuid(...)` (CREATE_TABLE=y); when two
    run at once PostgreSQL aborts one with "tuple concurrently updated", and that
    `timeline scheduler` / `timeline alerts --emit` dies before emitting anything.
    """
    TimelineStore.open(location).close()  # the tables exist, as in production
    failures = []
    for _round in range(5):
        failures += race(4, lambda: TimelineStore.open(location).close())
    assert failures == []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_emitters_create_the_outbox_at_once(backend, tmp_path):
    """The first two emitters on a database must not crash creating the outbox tables.

    BUG (PostgreSQL): `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent
    creator; the loser fails with UniqueViolation on pg_type_typname_nsp_index.
    """
    if backend == "postgres" and not POSTGRES_URL:
        pytest.skip("TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
    failures = []
    for round_ in range(5):
        with fresh_location(backend, tmp_path, f"outbox-{round_}") as where:
            failures += race(4, lambda where=where: OutboxDB(where).close())
    assert failures == []


@pytest.mark.parametrize("mode", ["emit_once", "daily_alerts"])
def test_two_processes_deliver_every_key_exactly_once(location, tmp_path, mode):
    out = tmp_path / "alerts.jsonl"
    is_postgres = location.startswith("postgresql")
    # With events in PostgreSQL the outbox is there too; the read models stay in SQLite.
    read_db = str(tmp_path / "read.db") if is_postgres else ""
    with TimelineStore.open(location) as store:
        assert ingest_objects(store, cohort(8)).ok
    # The outbox tables exist already (their concurrent creation is another test's bug).
    OutboxDB(location).close()  # SQLite: in the store file (the default read db)

    argv = [mode, location, read_db, f"jsonl:{out}", DAY.isoformat()]
    results = run_together([(CHILD, argv)] * 2, tmp_path, "emit")
    for code, _stdout, stderr in results:
        assert code == 0, stderr
    summaries = [json.loads(stdout.strip().splitlines()[-1]) for _code, stdout, _ in results]

    model = ReadModel(read_db or location)
    try:
        expected = {a.key for a in alerts_on(model, DAY)}
    finally:
        model.close()
    assert len(expected) == 48

    keys = jsonl_keys(out)
    assert len(keys) == len(set(keys)), "a key was delivered twice"
    assert set(keys) == expected
    assert sorted(s["sent"] for s in summaries) == [0, 48]
    assert sorted(s["new"] for s in summaries) == [0, 48]
    assert all(s["failed"] == 0 for s in summaries)

    db = OutboxDB(location)  # SQLite: the store file is the read db; else PostgreSQL
    try:
        rows = Outbox(db).rows()
    finally:
        db.close()
    assert len(rows) == 48 and {r["state"] for r in rows} == {"sent"}
    assert {r["attempts"] for r in rows} == {1}


# -- webhook dead letter ----------------------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1 answering every POST with `status`."""

    def __init__(self) -> None:
        self.status = 500
        self.requests: list[tuple[int, str | None, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.status
                with receiver.lock:
                    receiver.requests.append(
                        (status, self.headers.get("Idempotency-Key"), json.loads(body))
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token=t0ken"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_webhook_dead_letter_listed_by_cli_then_retried(sqlite_store, tmp_path, clock):
    # Three attempts, 1 minute then 2: each run makes one attempt at the rows that are due.
    policy = RetryPolicy(attempts=3, first_delay=timedelta(minutes=1))
    db = sqlite_store.config.location
    assert ingest_objects(sqlite_store, holding_arc("B", "2024-05-31")).ok
    model = ReadModel(db)  # the default read db, so the CLI finds the same outbox
    model.sync(sqlite_store)
    outbox_db = OutboxDB(outbox_location(db, db))
    outbox = Outbox(outbox_db)
    try:
        with Receiver() as receiver, WebhookSink(receiver.url, timeout=5) as sink:
            expected = {a.key for a in alerts_on(model, DAY)}
            assert len(expected) == 4
            report = emit_day(model, outbox, sink, DAY, clock=clock, policy=policy)
            assert (report.delivered.sent, report.delivered.retrying) == (0, 4)
            assert report.delivered.failed == 0
            assert report.delivered.next_attempt_at == clock.now + timedelta(minutes=1)
            assert len(receiver.requests) == 4

            # Not due yet: nothing is attempted, the rows wait.
            clock.advance(seconds=59)
            early = outbox.deliver(sink, now=clock, policy=policy)
            assert (early.sent, early.retrying, early.waiting) == (0, 0, 4)
            assert len(receiver.requests) == 4

            clock.advance(seconds=1)
            second = outbox.deliver(sink, now=clock, policy=policy)
            assert (second.retrying, second.failed) == (4, 0)
            assert second.next_attempt_at == clock.now + timedelta(minutes=2)
            clock.advance(minutes=2)
            third = outbox.deliver(sink, now=clock, policy=policy)
            assert third.failed == 4 and set(third.dead) == expected
            assert len(receiver.requests) == 12

            dead = outbox.rows("dead")
            assert {r["key"] for r in dead} == expected
            assert {r["attempts"] for r in dead} == {3}
            assert {r["next_attempt_at"] for r in dead} == {None}
            assert all("HTTP 500" in r["last_error"] for r in dead)
            assert all("t0ken" not in r["last_error"] + r["sink"] for r in dead)

            listed = run_cli("alerts", "--failed", "--json", "--db", db, cwd=tmp_path)
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
            assert {r["key"] for r in rows} == expected
            assert {(r["state"], r["attempts"]) for r in rows} == {("dead", 3)}
            text = run_cli("alerts", "--failed", "--db", db, cwd=tmp_path)
            assert text.returncode == 0, text.stderr
            assert all(f"{key} after 3 attempt(s)" in text.stdout for key in expected)

            # A second emit for the day, much later, does not resurrect dead letters.
            clock.advance(days=1)
            again = emit_day(model, outbox, sink, DAY, clock=clock, policy=policy)
            assert (again.enqueued.new, again.delivered.sent, len(receiver.requests)) == (0, 0, 12)

            receiver.status = 200
            assert outbox.retry_dead() == 4
            assert {(r["state"], r["attempts"]) for r in outbox.rows()} == {("pending", 0)}
            delivered = outbox.deliver(sink, now=clock, policy=policy)
            assert (delivered.sent, delivered.failed) == (4, 0)
            ok = [r for r in receiver.requests if r[0] == 200]
            assert sorted(key for _, key, _ in ok) == sorted(expected)
            assert all(body["key"] == key for _, key, body in ok)

        sent = outbox.rows("sent")
        assert {r["key"] for r in sent} == expected
        assert {r["attempts"] for r in sent} == {1}
        assert all(r["last_error"] is None for r in sent)
        assert outbox.rows("dead") == []
        listed = run_cli("alerts", "--failed", "--json", "--db", db, cwd=tmp_path)
        assert listed.returncode == 0 and json.loads(listed.stdout) == []
    finally:
        outbox_db.close()
        model.close()
