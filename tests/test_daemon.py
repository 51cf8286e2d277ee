"""SPEC §5 the scheduler daemon: a daily 08:00 Asia/Taipei job that survives restarts.

In-process tests run the real BlockingScheduler (paused start, SQLAlchemy job store in
SQLite) in a thread, with the wall clock moved by time-machine. The CLI test runs
`timeline scheduler` as a real process and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED, JobEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from apscheduler.schedulers.blocking import BlockingScheduler
from conftest import POSTGRES_URL, _postgres_location

from projections.readmodel import ReadModel
from scheduler.alerts import alerts_on
from scheduler.daemon import (
    JOB_FUNC,
    JOB_ID,
    RETRY_JOB_FUNC,
    RETRY_JOB_ID,
    DaemonConfig,
    build_scheduler,
    jobstore_schema,
    jobstore_url,
)
from scheduler.outbox import Outbox, OutboxDB
from timeline.clock import TAIPEI
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
DAY = date(2024, 6, 1)


def at(hour: int, minute: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=TAIPEI)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def holding_arc(student: str, valid_until: str) -> list[dict[str, Any]]:
    def ev(name: str, type_: str, on: str, **fields: Any) -> dict[str, Any]:
        return {
            "event_id": f"{student}-{name}",
            "student_id": student,
            "type": type_,
            "occurred_on": on,
            **fields,
        }

    return [
        ev("entered", "entered", "2023-08-20", visa="resident"),
        ev("applied", "arc_applied", "2023-08-25", application="initial"),
        ev("issued", "arc_issued", "2023-09-01", valid_until=valid_until),
    ]


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    """A SQLite store whose student has four alerts on 2024-06-01, and where things go."""
    db = str(tmp_path / "timeline.db")
    with TimelineStore.open(db) as store:
        assert ingest_objects(store, holding_arc("B", "2024-05-31")).ok
        model = ReadModel(tmp_path / "expected.db")
        model.sync(store)
        expected = {a.key for a in alerts_on(model, DAY)}
        model.close()
    assert len(expected) == 4
    out = tmp_path / "alerts.jsonl"
    return {
        "db": db,
        "out": out,
        "expected": expected,
        "config": DaemonConfig(
            db=db,
            read_db=None,
            sink=f"jsonl:{out}",
            jobstore_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        ),
    }


def jsonl_keys(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["key"] for line in path.read_text("utf-8").splitlines()]


@contextmanager
def running(config: DaemonConfig, events: list[JobEvent] | None = None) -> Iterator[Any]:
    """build_scheduler(config) started (paused start, as the daemon does) in a thread."""
    scheduler: BlockingScheduler = build_scheduler(config)
    if events is not None:
        scheduler.add_listener(events.append, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED)
    thread = threading.Thread(target=scheduler.start, kwargs={"paused": True}, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: scheduler.state == STATE_RUNNING and scheduler.get_job(JOB_ID),
            10,
            "the scheduler to start and hold the daily job",
        )
        yield scheduler
    finally:
        if scheduler.state != STATE_STOPPED:
            scheduler.shutdown(wait=True)
        thread.join(timeout=15)
        assert not thread.is_alive(), "the scheduler thread did not stop"


def watermark(db: str) -> date | None:
    outbox_db = OutboxDB(db)
    try:
        return Outbox(outbox_db).watermark()
    finally:
        outbox_db.close()


def test_daily_job_is_kept_across_restarts_and_a_missed_run_fires(world):
    config: DaemonConfig = world["config"]
    with time_machine.travel(at(7, 59), tick=True) as traveller:
        with running(config) as first:
            job = first.get_job(JOB_ID)
            assert job.next_run_time == at(8, 0)
            assert job.func_ref == JOB_FUNC
            assert job.kwargs == {"db": config.db, "read_db": None, "sink": config.sink}
            assert {j.id for j in first.get_jobs()} == {JOB_ID, RETRY_JOB_ID}
            retry = first.get_job(RETRY_JOB_ID)
            assert retry.func_ref == RETRY_JOB_FUNC and retry.kwargs == job.kwargs
        assert not world["out"].exists()

        # A restart before 08:00 keeps the stored job as it is.
        with running(config) as second:
            assert {j.id for j in second.get_jobs()} == {JOB_ID, RETRY_JOB_ID}
            assert second.get_job(JOB_ID).next_run_time == at(8, 0)
        assert not world["out"].exists()

        # Down across 08:00: on restart the missed run fires (it is not dropped).
        traveller.move_to(at(9, 30))
        events: list[JobEvent] = []
        with running(config, events) as third:
            wait_for(
                lambda: any(e.code == EVENT_JOB_EXECUTED and e.job_id == JOB_ID for e in events),
                30,
                "the missed daily run",
            )
            assert third.get_job(JOB_ID).next_run_time == at(8, 0, date(2024, 6, 2))
        executed = [e for e in events if e.code == EVENT_JOB_EXECUTED and e.job_id == JOB_ID]
        assert len(executed) == 1, "a missed run must fire once (coalesced)"
        assert executed[0].exception is None, executed[0].traceback
        assert executed[0].scheduled_run_time == at(8, 0)
        assert executed[0].retval["days"] == ["2024-06-01"]

    assert watermark(world["db"]) == DAY
    keys = jsonl_keys(world["out"])
    assert sorted(keys) == sorted(world["expected"])


def test_moving_the_daily_time_keeps_a_missed_run(world):
    config: DaemonConfig = world["config"]
    with time_machine.travel(at(7, 0), tick=True) as traveller:
        with running(config):
            pass
        traveller.move_to(at(9, 30))  # the 08:00 run was missed while down
        moved = DaemonConfig(**{**config.__dict__, "hour": 10})
        events: list[JobEvent] = []
        with running(moved, events) as scheduler:
            wait_for(
                lambda: any(
                    e.code == EVENT_JOB_EXECUTED and e.job_id == "catch-up" for e in events
                ),
                30,
                "the catch-up run",
            )
            assert scheduler.get_job(JOB_ID).next_run_time == at(10, 0)
    assert watermark(world["db"]) == DAY
    assert sorted(jsonl_keys(world["out"])) == sorted(world["expected"])


def test_moving_the_daily_time_does_not_run_early(world):
    """Nothing was missed (restart at 07:00, 08:00 -> 10:00): no run before 10:00.

    BUG: build_scheduler's on_started adds the "catch-up" job whenever the trigger or
    kwargs changed, even when the stored next_run_time is still in the future, so the
    day's alerts go out at restart time (07:00) instead of at 10:00.
    """
    config: DaemonConfig = world["config"]
    with time_machine.travel(at(7, 0), tick=True):
        with running(config):
            pass
        moved = DaemonConfig(**{**config.__dict__, "hour": 10})
        events: list[JobEvent] = []
        with running(moved, events) as scheduler:
            assert scheduler.get_job(JOB_ID).next_run_time == at(10, 0)
            time.sleep(1.0)  # a due catch-up job would be submitted at once
            submitted = [
                e.job_id
                for e in events
                if e.code == EVENT_JOB_SUBMITTED and e.job_id != RETRY_JOB_ID
            ]
    assert submitted == []
    assert watermark(world["db"]) is None
    assert not world["out"].exists()


# -- the `timeline scheduler` process ---------------------------------------------------


def read(path: Path) -> str:
    return path.read_text("utf-8", errors="replace") if path.exists() else ""


@contextmanager
def scheduler_process(tmp_path: Path, db: str, out: Path, name: str) -> Iterator[tuple]:
    log = tmp_path / f"{name}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [TIMELINE, "-v", "scheduler", "--db", db, "--sink", f"jsonl:{out}"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_cli_scheduler_stops_cleanly_on_sigterm_and_refuses_a_second_instance(world, tmp_path):
    db, out = world["db"], world["out"]
    with scheduler_process(tmp_path, db, out, "first") as (first, log):
        wait_for(lambda: "added the daily job" in read(log), 30, "the scheduler to start")
        assert first.poll() is None

        second = subprocess.run(
            [TIMELINE, "scheduler", "--db", db, "--sink", f"jsonl:{out}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1, second.stderr
        assert "scheduler lock" in second.stderr
        assert db in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the second instance disturbed the first"

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0, read(log)
        text = read(log)
        assert "signal 15: shutting down" in text
        assert "scheduler stopped" in text
        assert "Traceback" not in text

    # The lock went with the process, and the job store kept the job.
    with scheduler_process(tmp_path, db, out, "third") as (third, log):
        wait_for(lambda: "found in the job store" in read(log), 30, "the restart")
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=10) == 0, read(log)
        assert "scheduler stopped" in read(log)


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set")
def test_job_stores_of_two_schemas_in_one_database_stay_apart(tmp_path):
    # Two stores in two schemas of one database: each daemon keeps its own daily job
    # (a shared job table would make the second daemon rewrite the first one's job).
    generators = [_postgres_location(), _postgres_location()]
    locations = [next(g) for g in generators]
    try:
        for location in locations:
            config = DaemonConfig(
                db=location,
                read_db=None,
                sink=f"jsonl:{tmp_path / 'a.jsonl'}",
                jobstore_url=jobstore_url(location, "unused"),
                jobstore_schema=jobstore_schema(location),
            )
            with running(config):
                pass
        for location in locations:
            store = SQLAlchemyJobStore(
                url=jobstore_url(location, "unused"), tableschema=jobstore_schema(location)
            )
            store.start(None, "default")  # type: ignore[arg-type]
            try:
                jobs = store.get_all_jobs()
                assert sorted(job.id for job in jobs) == sorted([JOB_ID, RETRY_JOB_ID])
                assert {job.kwargs["db"] for job in jobs} == {location}
            finally:
                store.shutdown()
    finally:
        for generator in generators:
            next(generator, None)
