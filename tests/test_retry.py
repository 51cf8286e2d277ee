"""Failed deliveries are retried on a schedule kept in the outbox, by the daemon itself.

The schedule (exponential from 1 minute, capped at 6 hours, 12 attempts) is walked with
the injected clock against a real loopback webhook; the daemon test runs `timeline
scheduler` as real processes, kills one with SIGKILL, and lets the next finish the job.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, FakeClock, _postgres_location
from feed_examples import ev
from receivers import WebhookReceiver
from test_alerts_crash import cohort

from projections.readmodel import ReadModel, default_read_db
from scheduler.alerts import alerts_on
from scheduler.credentials import Secret
from scheduler.emit import emit_day, fingerprint_of
from scheduler.jobs import DeliveryConfig, daily_alerts, retry_due
from scheduler.outbox import Outbox, OutboxDB, outbox_location
from scheduler.retry import RetryPolicy, RetrySettingError
from scheduler.sinks import DeliveryError, WebhookSink
from timeline.clock import taipei_today
from timeline.ingest import ingest_objects
from timeline.settings import SettingsError, load_settings
from timeline.store import TimelineStore

DAY = date(2024, 6, 1)
TIMELINE = str(Path(sys.executable).with_name("timeline"))


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


# -- the policy --------------------------------------------------------------------------


def test_default_schedule_doubles_from_a_minute_caps_at_six_hours_and_fits_lines_day() -> None:
    policy = RetryPolicy()
    minutes = [delay / timedelta(minutes=1) for delay in policy.schedule()]
    assert minutes == [1, 2, 4, 8, 16, 32, 64, 128, 256, 360, 360]
    assert policy.attempts == 12
    assert policy.span() == timedelta(hours=20, minutes=31)
    assert policy.span() < timedelta(hours=24)  # LINE keeps a retry key for 24 hours


def test_retry_after_is_honoured_up_to_the_cap_and_jitter_only_shortens() -> None:
    policy = RetryPolicy(first_delay=timedelta(minutes=1), max_delay=timedelta(hours=1))
    assert policy.delay(1, retry_after=600) == timedelta(minutes=10)
    assert policy.delay(1, retry_after=86400) == timedelta(hours=1)
    assert policy.delay(60) == timedelta(hours=1)  # no overflow far along
    jittery = RetryPolicy(jitter=0.5)
    for rng_value in (0.0, 0.3, 0.999):
        delay = jittery.delay(3, rng=lambda v=rng_value: v)
        assert timedelta(minutes=2) <= delay <= timedelta(minutes=4)
    with pytest.raises(ValueError):
        policy.delay(0)


def policy_of(environ: dict[str, str]) -> RetryPolicy:
    """The policy as every command gets it: the configuration read once, its delivery part."""
    return DeliveryConfig.from_settings(load_settings(environ)).policy


def test_policy_from_the_settings_and_its_errors() -> None:
    policy = policy_of(
        {
            "TIMELINE_RETRY_ATTEMPTS": "5",
            "TIMELINE_RETRY_FIRST_DELAY": "30",
            "TIMELINE_RETRY_MAX_DELAY": "600",
            "TIMELINE_RETRY_JITTER": "0.2",
        }
    )
    assert policy == RetryPolicy(5, timedelta(seconds=30), timedelta(seconds=600), 0.2)
    assert policy_of({}) == RetryPolicy()
    for environ, setting in [
        ({"TIMELINE_RETRY_ATTEMPTS": "0"}, "TIMELINE_RETRY_ATTEMPTS"),
        ({"TIMELINE_RETRY_ATTEMPTS": "many"}, "TIMELINE_RETRY_ATTEMPTS"),
        ({"TIMELINE_RETRY_FIRST_DELAY": "-1"}, "TIMELINE_RETRY_FIRST_DELAY"),
        ({"TIMELINE_RETRY_MAX_DELAY": "10"}, "TIMELINE_RETRY_MAX_DELAY"),
        ({"TIMELINE_RETRY_JITTER": "2"}, "TIMELINE_RETRY_JITTER"),
        ({"TIMELINE_RETRY_JITTER": "nan"}, "TIMELINE_RETRY_JITTER"),
        ({"TIMELINE_RETRY_FIRST_DELAY": "604801"}, "TIMELINE_RETRY_FIRST_DELAY"),
    ]:
        with pytest.raises(SettingsError, match=setting):
            policy_of(environ)
    with pytest.raises(RetrySettingError, match="TIMELINE_RETRY_ATTEMPTS"):
        RetryPolicy(attempts=0)  # the policy checks itself too, whoever builds it


# -- the outbox keeps the schedule --------------------------------------------------------


def wired(store: TimelineStore, tmp_path: Path, units: int = 1) -> tuple[ReadModel, str]:
    assert ingest_objects(store, cohort(units)).ok
    read_db = str(tmp_path / "read.db")
    model = ReadModel(read_db)
    model.sync(store)
    return model, outbox_location(store.config.location, read_db)


def test_a_failing_receiver_is_retried_on_the_whole_schedule_then_dead_lettered(
    store, tmp_path, clock: FakeClock
):
    """Each attempt's X-Timeline-Timestamp (from the injected clock) shows when it was made."""
    model, location = wired(store, tmp_path)
    policy = RetryPolicy()
    started = clock.now
    with WebhookReceiver(secret="k", now=lambda: clock.now.timestamp()) as receiver:
        receiver.status_for = lambda _n: 503
        sink = WebhookSink(receiver.url, signing_secret=Secret("k"), clock=clock)
        outbox_db = OutboxDB(location)
        try:
            report = emit_day(model, Outbox(outbox_db), sink, DAY, clock=clock, policy=policy)
            assert (report.delivered.retrying, report.delivered.failed) == (5, 0)
        finally:
            outbox_db.close()
        dead: list[str] = []
        rounds = 0
        while not dead:
            rounds += 1
            assert rounds < 100
            # Every round is a fresh process as far as the outbox knows: a new connection.
            outbox_db = OutboxDB(location)
            try:
                outbox = Outbox(outbox_db)
                (waiting,) = {row["next_attempt_at"] for row in outbox.rows("pending")}
                due = datetime.fromisoformat(waiting.replace("Z", "+00:00"))
                clock.now = due - timedelta(seconds=1)
                early = outbox.deliver(sink, now=clock, policy=policy)
                assert (early.sent, early.retrying, early.waiting) == (0, 0, 5)
                clock.now = due
                dead = outbox.deliver(sink, now=clock, policy=policy).dead
            finally:
                outbox_db.close()
        sink.close()
    assert receiver.problems() == []
    stamps = sorted({int(r.headers["x-timeline-timestamp"]) for r in receiver.requests})
    gaps = [timedelta(seconds=b - a) for a, b in itertools.pairwise(stamps)]
    assert gaps == policy.schedule()
    assert timedelta(seconds=stamps[-1]) - timedelta(seconds=started.timestamp()) == policy.span()
    assert len(receiver.requests) == 5 * 12
    outbox_db = OutboxDB(location)
    try:
        rows = Outbox(outbox_db).rows("dead")
    finally:
        outbox_db.close()
    assert len(rows) == 5
    assert {(r["attempts"], r["next_attempt_at"]) for r in rows} == {(12, None)}
    assert all("HTTP 503" in r["last_error"] for r in rows)
    model.close()


def test_a_recovered_receiver_gets_each_alert_once_at_the_next_due_attempt(
    sqlite_store, tmp_path, clock
):
    model, location = wired(sqlite_store, tmp_path)
    outbox_db = OutboxDB(location)
    outbox = Outbox(outbox_db)
    with WebhookReceiver() as receiver, WebhookSink(receiver.url) as sink:
        receiver.status_for = lambda n: 500 if n <= 5 else 200
        first = emit_day(model, outbox, sink, DAY, clock=clock)
        assert first.delivered.retrying == 5
        assert first.as_json()["next_attempt_at"] == (clock.now + timedelta(minutes=1)).isoformat()
        waiting = outbox.waiting_rows()
        assert len(waiting) == 5 and {r["attempts"] for r in waiting} == {1}
        # Another emit for the day before the minute is up: nothing is attempted.
        clock.advance(seconds=30)
        again = emit_day(model, outbox, sink, DAY, clock=clock)
        assert (again.delivered.sent, again.delivered.waiting) == (0, 5)
        clock.advance(seconds=30)
        done = outbox.deliver(sink, now=clock)
        assert (done.sent, done.retrying, done.waiting) == (5, 0, 0)
    assert len(receiver.requests) == 10 and len(receiver.delivered) == 5
    assert {(r["state"], r["attempts"]) for r in outbox.rows()} == {("sent", 2)}
    assert outbox.waiting_rows() == []
    outbox_db.close()
    model.close()


def test_a_permanent_failure_is_dead_at_once(sqlite_store, tmp_path, clock):
    model, location = wired(sqlite_store, tmp_path)
    outbox_db = OutboxDB(location)
    outbox = Outbox(outbox_db)
    with WebhookReceiver() as receiver, WebhookSink(receiver.url) as sink:
        receiver.status_for = lambda _n: 404
        report = emit_day(model, outbox, sink, DAY, clock=clock)
    assert (report.delivered.failed, report.delivered.retrying) == (5, 0)
    assert {(r["state"], r["attempts"]) for r in outbox.rows()} == {("dead", 1)}
    outbox_db.close()
    model.close()


class Flaky:
    """A sink that raises what it is told to (for counting, not for the wire)."""

    def __init__(self, error: DeliveryError | None) -> None:
        self.name = "flaky"
        self.error = error
        self.sent: list[str] = []

    def send(self, alert: Any) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(alert.key)


def test_an_interrupted_attempt_counts_and_is_made_again_at_once(sqlite_store, tmp_path, clock):
    model, location = wired(sqlite_store, tmp_path)
    outbox_db = OutboxDB(location)
    outbox = Outbox(outbox_db)
    keys = sorted(a.key for a in alerts_on(model, DAY))
    outbox.enqueue([(DAY, a) for a in alerts_on(model, DAY)], now=clock())
    outbox._mark_sending(keys[:2], clock)  # what a run killed mid-delivery leaves
    sink = Flaky(None)
    report = outbox.deliver(sink, now=clock)
    assert (report.interrupted, report.sent) == (2, 5)
    attempts = {r["key"]: r["attempts"] for r in outbox.rows()}
    assert [attempts[k] for k in keys] == [2, 2, 1, 1, 1]
    outbox_db.close()
    model.close()


def test_retry_after_from_the_receiver_sets_the_next_attempt(sqlite_store, tmp_path, clock):
    model, location = wired(sqlite_store, tmp_path)
    outbox_db = OutboxDB(location)
    outbox = Outbox(outbox_db)
    outbox.enqueue([(DAY, a) for a in alerts_on(model, DAY)], now=clock())
    outbox.deliver(Flaky(DeliveryError("429", status=429, retry_after=900)), now=clock)
    (due,) = {r["next_attempt_at"] for r in outbox.rows()}
    assert due == (clock.now + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    outbox_db.close()
    model.close()


def test_deliver_with_a_fingerprint_leaves_other_rules_rows_alone(sqlite_store, tmp_path, clock):
    model, location = wired(sqlite_store, tmp_path)
    outbox_db = OutboxDB(location)
    outbox = Outbox(outbox_db)
    found = [(DAY, a) for a in alerts_on(model, DAY)]
    outbox.enqueue(found[:2], now=clock(), fingerprint="old")
    outbox.enqueue(found[2:], now=clock(), fingerprint="new")
    sink = Flaky(None)
    assert outbox.due_count(clock(), "new") == 3
    report = outbox.deliver(sink, now=clock, fingerprint="new")
    assert report.sent == 3 and sorted(sink.sent) == sorted(a.key for _d, a in found[2:])
    assert outbox.due_count(clock(), "new") == 0 and outbox.due_count(clock()) == 2
    outbox_db.close()
    model.close()


# -- the retry job -------------------------------------------------------------------------


def test_retry_job_delivers_only_what_is_due(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, cohort(1)).ok
    db = sqlite_store.config.location
    config = DeliveryConfig(policy=RetryPolicy(attempts=3, first_delay=timedelta(minutes=10)))
    with WebhookReceiver() as receiver:
        receiver.status_for = lambda n: 503 if n <= 5 else 200
        spec = f"webhook:{receiver.url}"
        first = daily_alerts(db, None, spec, today=DAY.isoformat(), delivery=config)
        assert (first["sent"], first["retrying"]) == (0, 5)
        due_at = datetime.fromisoformat(str(first["next_attempt_at"]))
        assert due_at - datetime.now(UTC) <= timedelta(minutes=10)

        early = retry_due(
            db, None, spec, now=(due_at - timedelta(seconds=5)).isoformat(), delivery=config
        )
        assert early == {"due": 0}
        assert len(receiver.requests) == 5
        # The five failed a few milliseconds apart: a minute later all five are due.
        later = (due_at + timedelta(minutes=1)).isoformat()
        done = retry_due(db, None, spec, now=later, delivery=config)
        assert (done["due"], done["sent"], done["retrying"], done["dead"]) == (5, 5, 0, 0)
    assert len(receiver.delivered) == 5 and len(receiver.requests) == 10


def test_retry_job_skips_a_round_while_another_emitter_runs(sqlite_store, tmp_path):
    from scheduler.outbox import EmitterLock

    assert ingest_objects(sqlite_store, cohort(1)).ok
    db = sqlite_store.config.location
    outbox_db = OutboxDB(outbox_location(db, default_read_db(db)))
    model = ReadModel(db)
    model.sync(sqlite_store)
    found = [(DAY, a) for a in alerts_on(model, DAY)]
    Outbox(outbox_db).enqueue(found, now=datetime.now(UTC), fingerprint=fingerprint_of(model))
    out = tmp_path / "a.jsonl"
    with EmitterLock(outbox_db) as lock:
        lock.acquire()
        busy = retry_due(db, None, f"jsonl:{out}")
    assert busy["skipped"] == "another emitter is running" and not out.exists()
    done = retry_due(db, None, f"jsonl:{out}")
    assert done["sent"] == 5
    assert len([json.loads(line)["key"] for line in out.read_text("utf-8").splitlines()]) == 5
    outbox_db.close()
    model.close()


# -- the daemon: retries survive a SIGKILL and a restart ----------------------------------


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def rows_of(location: str) -> list[dict[str, Any]]:
    outbox_db = OutboxDB(outbox_location(location, default_read_db(location)))
    try:
        return Outbox(outbox_db).rows()
    finally:
        outbox_db.close()


def arrivals_due_around_today() -> list[dict[str, Any]]:
    """Six apply_arc milestones today (Taipei, by the real clock the daemon reads)."""
    today = taipei_today()
    events = []
    for days_ago in (30, 29, 23, 16, 0):  # due_today, due_in_1, _7, _14; window_open, _30
        on = (today - timedelta(days=days_ago)).isoformat()
        events.append(ev(f"A{days_ago}", "entered", "entered", on, visa="resident"))
    return events


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set")
def test_daemon_retries_after_being_killed_and_restarted(tmp_path):
    """PostgreSQL, a URL with a password (trust auth ignores it), a receiver down at first."""
    generator = _postgres_location()
    location = next(generator)
    with_password = location.replace("postgresql://postgres@", "postgresql://postgres:pgS3cret@")
    assert with_password != location
    try:
        with TimelineStore.open(location) as store:
            assert ingest_objects(store, arrivals_due_around_today()).ok
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env |= {"TIMELINE_RETRY_FIRST_DELAY": "1", "TIMELINE_WEBHOOK_SECRET": "whS3cret"}
        with WebhookReceiver(secret="whS3cret") as receiver:
            receiver.status_for = lambda _n: 503
            args = [
                *(TIMELINE, "-v", "scheduler", "--db", with_password, "--sink"),
                *(f"webhook:{receiver.url}", "--retry-every", "10", "--wait", "10"),
            ]
            log = tmp_path / "first.log"
            with log.open("w") as stderr:
                first = subprocess.Popen([*args, "--run-now"], cwd=tmp_path, env=env, stderr=stderr)
            try:
                wait_for(
                    lambda: (
                        {r["state"] for r in rows_of(location)} == {"pending"}
                        and all(r["attempts"] >= 1 for r in rows_of(location))
                    ),
                    60,
                    "the first failed attempts",
                )
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
            receiver.status_for = lambda _n: 200
            tried = len(receiver.requests)
            log2 = tmp_path / "second.log"
            with log2.open("w") as stderr:
                second = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=stderr)
            try:
                wait_for(
                    lambda: {r["state"] for r in rows_of(location)} == {"sent"},
                    60,
                    "the retry job of the restarted daemon",
                )
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=20) == 0, log2.read_text()
        assert receiver.problems() == []
        keys = sorted(r["key"] for r in rows_of(location))
        assert len(keys) == 6  # A0 (entered today) has window_open and due_in_30
        assert sorted(receiver.delivered) == keys and tried >= 6
        text = log.read_text() + log2.read_text()
        assert "retry round" in log2.read_text()
        for secret in ("pgS3cret", "whS3cret"):
            assert secret not in text
        schema = location.rsplit("schema=", 1)[1]
        import psycopg

        with psycopg.connect(POSTGRES_URL) as conn:
            states = conn.execute(
                f'SELECT id, job_state FROM "{schema}".apscheduler_jobs'
            ).fetchall()
        assert sorted(row[0] for row in states) == ["daily-alerts", "retry-deliveries"]
        for _id, state in states:
            assert b"pgS3cret" not in bytes(state) and b"whS3cret" not in bytes(state)
    finally:
        next(generator, None)


def test_summary_names_what_waits(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, cohort(1)).ok
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    with WebhookReceiver() as receiver:
        receiver.status_for = lambda _n: 503
        result = subprocess.run(
            [
                *(TIMELINE, "alerts", "--on", DAY.isoformat(), "--emit"),
                *("--sink", f"webhook:{receiver.url}", "--db", sqlite_store.config.location),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        listed = subprocess.run(
            [TIMELINE, "alerts", "--retrying", "--json", "--db", sqlite_store.config.location],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["failed"], summary["retrying"]) == (0, 0, 5)
    assert "0 failed, 5 will be retried." in result.stderr
    assert f"5 alert(s) wait for another attempt (the next from {summary['next_attempt_at']})" in (
        result.stderr
    )
    rows = json.loads(listed.stdout)
    assert len(rows) == 5 and {r["attempts"] for r in rows} == {1}
    assert all(r["next_attempt_at"] and "HTTP 503" in r["last_error"] for r in rows)


def test_a_receiver_that_never_answers_costs_a_run_three_timeouts_not_one_per_alert(
    sqlite_store, tmp_path, clock
):
    """Found by a hostile probe: a webhook that accepted connections and never answered
    cost every due row its full timeout in turn (20 alerts, timeout 1 s: 20.6 s; at the
    default 10 s, 500 alerts held the emitter lock, and the next daily run, 83 minutes).
    After three unanswered attempts in a row the run leaves the rest for a later round,
    uncounted, and a later round delivers them once the receiver is back."""
    import socket
    import threading

    model, location = wired(sqlite_store, tmp_path)
    outbox_db = OutboxDB(location)
    outbox = Outbox(outbox_db)
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept_and_hold() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_and_hold, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    try:
        with WebhookSink(url, timeout=0.3) as sink:
            report = emit_day(model, outbox, sink, DAY, clock=clock)
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert len(held) == 3, "each of the other rows waited for its own timeout"
    assert (report.delivered.sent, report.delivered.retrying, report.delivered.failed) == (0, 3, 0)
    assert report.delivered.waiting == 2
    rows = outbox.rows()
    assert sorted(r["attempts"] for r in rows) == [0, 0, 1, 1, 1]
    assert {r["state"] for r in rows} == {"pending"}
    assert all(r["next_attempt_at"] > clock().strftime("%Y-%m-%dT%H:%M:%S") for r in rows)
    assert outbox.due_count(clock()) == 0

    clock.advance(minutes=2)
    with WebhookReceiver() as receiver, WebhookSink(receiver.url) as sink:
        again = outbox.deliver(sink, now=clock)
        assert again.sent == 5
        assert len(receiver.delivered) == 5
    outbox_db.close()
    model.close()
