"""The API as a service: health, readiness, metrics, JSON access log, shared store, workers."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from api_server import free_port, running
from click.testing import CliRunner
from conftest import POSTGRES_URL, FakeClock
from fastapi.testclient import TestClient

from timeline.api import create_app
from timeline.api_logging import JsonFormatter
from timeline.api_service import AuditGroupCommit, ServiceOptions
from timeline.api_settings import ApiConfig, ApiConfigError
from timeline.cli import main
from timeline.clock import taipei_today
from timeline.store import TimelineStore

FEED, STAFF = "feed-secret-0123456789", "staff-secret-0123456789"
ENV = {"TIMELINE_FEED_TOKENS": f"desk:{FEED}:manual", "TIMELINE_STAFF_TOKENS": f"alice:{STAFF}"}


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def entered(event_id: str, student: str = "S1") -> dict[str, str]:
    return {
        "event_id": event_id,
        "student_id": student,
        "type": "entered",
        "occurred_on": "2024-03-16",
        "visa": "resident",
    }


def config(location: str, read_db: str | None = None) -> ApiConfig:
    return ApiConfig.from_env(ENV, location, read_db)


@pytest.fixture
def read_db(location: str, tmp_path: Path) -> str | None:
    """PostgreSQL stores keep their read models in a file: one per test."""
    return str(tmp_path / "read.db") if location.startswith("postgresql") else None


@pytest.fixture
def served(location: str, read_db: str | None, clock: FakeClock) -> Iterator[TestClient]:
    """The API on each backend, its lifespan running (the store shared), ready bound 0."""
    app = create_app(
        config(location, read_db), clock=clock, service=ServiceOptions(ready_max_lag=0)
    )
    with TestClient(app) as client:
        yield client


# -- health and readiness ------------------------------------------------------------------
def test_healthz_answers_without_a_token_or_a_store(tmp_path):
    app = create_app(config(str(tmp_path / "no-such-folder" / "t.db")))
    with TestClient(app) as client:
        r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["x-content-type-options"] == "nosniff"


def test_readyz_is_ready_then_not_while_the_read_models_lag(served):
    ready = served.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "store_position": 0,
        "read_model_position": 0,
        "read_model_lag": 0,
        "scheduler_watermark": None,
    }
    assert served.post("/v1/events", json=entered("e1"), headers=_h(FEED)).status_code == 200
    behind = served.get("/readyz")
    assert behind.status_code == 503
    body = behind.json()
    assert body["status"] == "not ready"
    assert body["read_model_lag"] == body["store_position"] > 0
    assert "notifications behind the log (at most 0: TIMELINE_READY_MAX_LAG)" in body["reason"]
    # A population answer brings the read models up to date (so does the follower).
    assert served.get("/v1/tasks", headers=_h(STAFF)).status_code == 200
    assert served.get("/readyz").status_code == 200


def test_the_follower_keeps_the_read_models_current(tmp_path):
    app = create_app(
        config(str(tmp_path / "t.db")),
        service=ServiceOptions(follow_seconds=0.05, ready_max_lag=0),
    )
    with TestClient(app) as client:
        assert client.post("/v1/events", json=entered("e1"), headers=_h(FEED)).status_code == 200
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the follower did not catch up"
            time.sleep(0.05)
        assert client.get("/readyz").json()["read_model_position"] > 0


def test_the_follower_fills_empty_read_models_by_the_snapshot_rebuild(tmp_path, monkeypatch):
    """A log written before the server started is absorbed by `rebuild`, not event by event."""
    from projections.readmodel import ReadModel
    from timeline.ingest import ingest_objects

    with TimelineStore.open(str(tmp_path / "t.db")) as store:
        ingest_objects(store, [entered(f"e{i}", f"S{i}") for i in range(5)])
    rebuilds: list[int] = []
    rebuild = ReadModel.rebuild

    def counted(self, *args, **kwargs):
        rebuilds.append(1)
        return rebuild(self, *args, **kwargs)

    monkeypatch.setattr(ReadModel, "rebuild", counted)
    app = create_app(
        config(str(tmp_path / "t.db")),
        service=ServiceOptions(follow_seconds=0.05, ready_max_lag=0),
    )
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the follower did not catch up"
            time.sleep(0.05)
        tasks = client.get("/v1/tasks", headers=_h(STAFF)).json()
    assert rebuilds, "the follower followed the log from its start instead"
    assert {t["student_id"] for t in tasks} == {f"S{i}" for i in range(5)}


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_readyz_is_503_when_the_store_is_unreachable(where, tmp_path):
    if where == "postgres":
        if not POSTGRES_URL:
            pytest.skip("TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
        location = f"postgresql://nobody:pw-0123456789@127.0.0.1:{free_port()}/none"
    else:
        location = str(tmp_path / "no-such-folder" / "t.db")
    app = create_app(config(location, str(tmp_path / "read.db")))
    with TestClient(app) as client:
        r = client.get("/readyz")
        student = client.get("/v1/students/S1", headers=_h(STAFF))
        assert client.get("/healthz").status_code == 200
    assert r.status_code == 503
    assert r.json() == {"status": "not ready", "reason": "the event store is unavailable"}
    assert "no-such-folder" not in r.text and "pw-0123456789" not in r.text
    assert student.status_code == 503
    assert student.json() == {"error": "the event store is unavailable"}


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
def test_readyz_answers_503_at_once_when_postgresql_goes_away_and_200_once_back(tmp_path):
    """A probe must not hang: it waited on the library's retries (10 x the pool's 30 s).

    Nor a request: a student view waited 30 s and a population list 300 s for the pool.
    """
    from conftest import _postgres_location
    from test_follower import relayed

    with contextmanager(_postgres_location)() as location, relayed(location) as (relay, via):
        TimelineStore.open(location).close()
        app = create_app(
            config(via, str(tmp_path / "read.db")), service=ServiceOptions(follow_seconds=0)
        )
        with TestClient(app) as client:
            assert client.get("/readyz").status_code == 200
            relay.cut()
            started = time.monotonic()
            r = client.get("/readyz")
            assert time.monotonic() - started < 10
            assert r.status_code == 503
            assert r.json() == {"status": "not ready", "reason": "the event store is unavailable"}
            for path in ("/v1/students/S1", "/v1/tasks", "/v1/students/S1"):
                started = time.monotonic()
                r = client.get(path, headers=_h(STAFF))
                assert time.monotonic() - started < 10, path
                assert r.status_code == 503, path
                assert r.json() == {"error": "the event store is unavailable"}
                assert r.headers["retry-after"] == "5"
            relay.mend()
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "not ready again after the server came back"
                time.sleep(0.2)
            assert client.get("/v1/students/S1", headers=_h(STAFF)).status_code == 404


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
def test_a_busy_pool_is_waited_for_and_an_unreachable_server_fails_fast():
    """Busy (every connection in use) is not down: only a pool that cannot connect fails fast."""
    from psycopg_pool import ConnectionPool, PoolTimeout

    from timeline.store_postgres import FailFast

    with ConnectionPool(POSTGRES_URL, min_size=1, max_size=1, timeout=10) as pool:
        guard = FailFast(pool, probe=0.3)
        held = pool.getconn()
        threading.Timer(1.0, pool.putconn, args=(held,)).start()
        started = time.monotonic()
        with pool.connection() as conn:  # waits past the probe for the busy connection
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert time.monotonic() - started >= 0.9
        assert not guard.down
    away = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    with ConnectionPool(away, min_size=1, max_size=2, timeout=30, open=False) as pool:
        pool.open(wait=False)
        guard = FailFast(pool, probe=0.3)
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn()
        assert time.monotonic() - started < 5  # the probe, not the pool's 30 s
        assert guard.down
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn()
        assert time.monotonic() - started < 0.1  # at once until the next attempt is due


def test_readyz_is_503_when_the_scheduler_last_ran_too_long_ago(tmp_path, clock):
    from scheduler.outbox import Outbox, OutboxDB

    db = str(tmp_path / "t.db")
    today = taipei_today(clock)
    app = create_app(config(db), clock=clock)
    with TestClient(app) as client:
        assert client.get("/readyz").json()["scheduler_watermark"] is None
        outbox = OutboxDB(db)
        Outbox(outbox).enqueue([], now=clock(), watermark=today - timedelta(days=2))
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["scheduler_watermark"] == (today - timedelta(days=2)).isoformat()
        Outbox(outbox).enqueue([], now=clock(), watermark=today - timedelta(days=3))
        late = client.get("/readyz")
        outbox.close()
    assert late.status_code == 503
    assert "3 days ago (at most 2: TIMELINE_READY_SCHEDULER_DAYS)" in late.json()["reason"]


def test_service_settings_are_validated_naming_the_setting():
    from timeline.settings import SettingsError, load_settings

    loaded = load_settings(
        {
            "TIMELINE_HOST": "0.0.0.0",
            "TIMELINE_PORT": "8080",
            "TIMELINE_WORKERS": "4",
            "TIMELINE_ROOT_PATH": "/timeline",
            "TIMELINE_PROXY_HEADERS": "yes",
            "TIMELINE_FORWARDED_ALLOW_IPS": "10.0.0.5",
            "TIMELINE_LOG_FORMAT": "JSON",
            "TIMELINE_FOLLOW_SECONDS": "off",
        }
    )
    assert (loaded.host, loaded.port, loaded.workers, loaded.root_path) == (
        "0.0.0.0",
        8080,
        4,
        "/timeline",
    )
    assert loaded.proxy_headers and loaded.forwarded_allow_ips == "10.0.0.5"
    assert loaded.log_format == "json" and loaded.follow_seconds == 0.0
    assert ServiceOptions.from_settings(loaded) == ServiceOptions(0.0, 10_000, 2, freeze_heap=True)
    for name, bad in (
        ("TIMELINE_PORT", "0"),
        ("TIMELINE_PORT", "http"),
        ("TIMELINE_WORKERS", "65"),
        ("TIMELINE_ROOT_PATH", "timeline/"),
        ("TIMELINE_ROOT_PATH", "/timeline/"),
        ("TIMELINE_LOG_FORMAT", "xml"),
        ("TIMELINE_FOLLOW_SECONDS", "-1"),
        ("TIMELINE_READY_SCHEDULER_DAYS", "1.5"),
    ):
        with pytest.raises(SettingsError, match=f"^{name}: ") as caught:
            load_settings({name: bad})
        assert bad not in str(caught.value).removeprefix(name)


FREEZE_SCRIPT = """
import gc, sys
from fastapi.testclient import TestClient
from timeline.api import create_app
from timeline.api_service import ServiceOptions
from timeline.api_settings import ApiConfig

before = gc.get_freeze_count()
options = ServiceOptions(freeze_heap=sys.argv[2] == "1")
app = create_app(ApiConfig(sys.argv[1], None), service=options)
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
print(before, gc.get_freeze_count())
"""


@pytest.mark.parametrize("freeze", [True, False])
def test_the_configured_service_sets_its_start_up_heap_aside_from_the_collector(tmp_path, freeze):
    out = subprocess.run(
        [sys.executable, "-c", FREEZE_SCRIPT, str(tmp_path / "t.db"), "1" if freeze else "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before == 0
    assert (after > 10_000) if freeze else (after == 0)


def test_service_options_from_the_environment():
    assert ServiceOptions.from_env({}) == ServiceOptions(5.0, 10_000, 2, freeze_heap=True)
    options = ServiceOptions.from_env(
        {
            "TIMELINE_FOLLOW_SECONDS": "0",
            "TIMELINE_READY_MAX_LAG": "off",
            "TIMELINE_READY_SCHEDULER_DAYS": "7",
        }
    )
    assert options == ServiceOptions(0.0, None, 7, freeze_heap=True)
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ApiConfigError, match="TIMELINE_READY_MAX_LAG: must be a number"):
            ServiceOptions.from_env({"TIMELINE_READY_MAX_LAG": bad})


# -- metrics -------------------------------------------------------------------------------
def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def test_metrics_count_requests_by_route_template_ingests_and_lag(served):
    served.post(
        "/v1/events", json=[entered("e1"), entered("e2", "S2"), {"type": "x"}], headers=_h(FEED)
    )
    served.post("/v1/events?partial=true", json=[entered("e1"), {"type": "x"}], headers=_h(FEED))
    for student in ("S1", "S1", "S404"):
        served.get(f"/v1/students/{student}", headers=_h(STAFF))
    served.get("/no/such/path")
    r = served.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    route = 'method="GET",route="/v1/students/{student_id}"'
    assert _metric(text, f'timeline_http_requests_total{{{route},status="200"}}') == 2
    assert _metric(text, f'timeline_http_requests_total{{{route},status="404"}}') == 1
    assert _metric(text, f"timeline_http_request_duration_seconds_count{{{route}}}") == 3
    unmatched = 'timeline_http_requests_total{method="GET",route="unmatched",status="404"}'
    assert _metric(text, unmatched) == 1
    # The atomic request stored nothing (one event was invalid); the partial one stored e1.
    assert _metric(text, 'timeline_ingest_events_total{outcome="rejected"}') == 2
    assert _metric(text, 'timeline_ingest_events_total{outcome="accepted"}') == 1
    assert _metric(text, "timeline_store_up") == 1
    position = _metric(text, "timeline_store_position")
    assert position > 0
    assert _metric(text, "timeline_read_model_lag") == position
    assert _metric(text, 'timeline_alerts{state="sent"}') == 0
    assert "S1" not in text and "S404" not in text  # route templates, never ids
    served.get("/v1/tasks", headers=_h(STAFF))
    assert _metric(served.get("/metrics").text, "timeline_read_model_lag") == 0


def test_metrics_report_the_store_down_without_failing(tmp_path):
    app = create_app(config(str(tmp_path / "no-such-folder" / "t.db")))
    with TestClient(app) as client:
        r = client.get("/metrics")
    assert r.status_code == 200
    assert _metric(r.text, "timeline_store_up") == 0
    assert "no-such-folder" not in r.text


# -- the JSON access log -------------------------------------------------------------------
@pytest.fixture
def json_access_log() -> Iterator[io.StringIO]:
    """The `timeline.access` lines, formatted as the JSON log format writes them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("timeline.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_json_access_line_has_the_route_template_and_never_the_token(tmp_path, json_access_log):
    app = create_app(config(str(tmp_path / "t.db")))
    with TestClient(app) as client:
        client.post("/v1/events", json=entered("e1", "S9001"), headers=_h(FEED))
        r = client.get(
            "/v1/students/S9001",
            params={"as_of": "2024-04-16", "token": STAFF},
            headers=_h(STAFF) | {"X-Request-ID": "req-42.a_b"},
        )
        refused = client.get(f"/v1/students/{FEED}", headers={"X-Request-ID": "bad id!"})
    assert r.status_code == 200 and refused.status_code == 401
    assert r.headers["x-request-id"] == "req-42.a_b"
    generated = refused.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    text = json_access_log.getvalue()
    for secret in (STAFF, FEED, "S9001", "2024-04-16"):
        assert secret not in text  # no token, no student id, no query
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    post, view, unknown = lines
    assert post["route"] == "/v1/events" and post["token"] == "desk"
    assert set(view) == {
        "time",
        "level",
        "logger",
        "request_id",
        "method",
        "route",
        "status",
        "duration_ms",
        "token",
    }
    assert view["logger"] == "timeline.access" and view["level"] == "info"
    assert view["request_id"] == "req-42.a_b"
    assert (view["method"], view["route"], view["status"]) == (
        "GET",
        "/v1/students/{student_id}",
        200,
    )
    assert view["token"] == "alice"
    assert isinstance(view["duration_ms"], float) and view["duration_ms"] >= 0
    assert view["time"].endswith("+00:00")
    assert (unknown["status"], unknown["token"], unknown["request_id"]) == (401, "-", generated)


def test_other_records_are_json_with_their_message():
    record = logging.LogRecord("x.y", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello there"
    assert (line["level"], line["logger"]) == ("warning", "x.y")


# -- one store per process -----------------------------------------------------------------
def test_the_store_is_opened_once_and_shared(served):
    shared = served.app.state.shared
    assert served.post("/v1/events", json=entered("e1"), headers=_h(FEED)).status_code == 200
    opened = shared._store
    assert opened is not None
    for _ in range(3):
        assert served.get("/v1/students/S1", headers=_h(STAFF)).status_code == 200
        assert served.get("/v1/tasks", headers=_h(STAFF)).status_code == 200
    assert shared._store is opened
    assert len(shared.models.idle) == 1  # one read model, lent and handed back each time


def test_a_sqlite_store_replaced_on_disk_is_opened_again(tmp_path, clock):
    db = tmp_path / "t.db"
    app = create_app(config(str(db)))
    with TestClient(app) as client:
        assert client.post("/v1/events", json=entered("e1"), headers=_h(FEED)).status_code == 200
        assert client.get("/v1/tasks", headers=_h(STAFF)).status_code == 200
        other = tmp_path / "restored.db"
        with TimelineStore.open(str(other), clock=clock) as store:
            from timeline.ingest import ingest_objects

            assert ingest_objects(store, [entered("e7", "S7")]).ok
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        shutil.move(other, db)
        assert client.get("/v1/students/S7", headers=_h(STAFF)).status_code == 200
        assert client.get("/v1/students/S1", headers=_h(STAFF)).status_code == 404
        tasks = client.get("/v1/tasks", headers=_h(STAFF))
        assert tasks.status_code == 200
        assert {row["student_id"] for row in tasks.json()} <= {"S7"}


def test_without_a_lifespan_each_request_opens_and_closes_the_store(tmp_path):
    app = create_app(config(str(tmp_path / "t.db")))
    client = TestClient(app)  # no `with`: no lifespan
    assert client.post("/v1/events", json=entered("e1"), headers=_h(FEED)).status_code == 200
    assert client.get("/v1/students/S1", headers=_h(STAFF)).status_code == 200
    assert app.state.shared._store is None


def test_concurrent_views_are_all_audited(location, read_db, clock):
    app = create_app(config(location, read_db), clock=clock)
    with running(app) as url:
        assert httpx.post(f"{url}/v1/events", json=entered("e1"), headers=_h(FEED)).is_success
        statuses: list[int] = []

        def view() -> None:
            with httpx.Client() as client:
                for _ in range(5):
                    r = client.get(f"{url}/v1/students/S1", headers=_h(STAFF))
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=view) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 40
    with TimelineStore.open(location) as store:
        from timeline.audit import accesses

        _, total = accesses(store, student_id="S1")
    assert total == 40


def _slow_first_commit() -> tuple[AuditGroupCommit, threading.Event, list[int], list[str]]:
    """A group whose first commit waits for `gate`; rows per commit, and students written."""
    written: list[str] = []
    calls: list[int] = []
    gate = threading.Event()

    def write(_store, rows):
        if not calls:
            gate.wait(5)  # the first commit is slow: the others queue up behind it
        calls.append(len(rows))
        written.extend(row[2] for row in rows)

    return AuditGroupCommit(write), gate, calls, written


def test_group_commit_writes_rows_together_and_answers_each_after_its_commit():
    group, gate, calls, written = _slow_first_commit()
    store = object()
    done: list[tuple[str, bool]] = []

    def record(student: str) -> None:
        group.record(store, "alice", "GET /x", student, None)  # type: ignore[arg-type]
        done.append((student, student in written))

    first = threading.Thread(target=record, args=("S0",))
    first.start()
    while group.queued or not group.writing:
        time.sleep(0.001)
    others = [threading.Thread(target=record, args=(f"S{i}",)) for i in range(1, 8)]
    for thread in others:
        thread.start()
    while len(group.queued) < 7:
        time.sleep(0.001)
    gate.set()
    for thread in [first, *others]:
        thread.join(5)
    assert sorted(written) == [f"S{i}" for i in range(8)]
    assert calls[0] == 1 and sum(calls) == 8 and len(calls) <= 3
    assert all(committed for _student, committed in done)


def test_group_commit_hands_a_failed_commit_to_every_waiting_request():
    def write(_store, _rows):
        raise OSError("disk full")

    group = AuditGroupCommit(write)
    with pytest.raises(OSError, match="disk full"):
        group.record(object(), "alice", "GET /x", "S1", None)  # type: ignore[arg-type]
    assert not group.writing and not group.queued


def test_group_commit_serves_coroutines_and_threads_alike_in_shared_commits():
    """Coroutines await their row holding no thread; rows queued together commit together."""
    import asyncio

    group, gate, calls, written = _slow_first_commit()
    store = object()
    answered: list[tuple[str, bool]] = []

    async def view(student: str) -> None:
        await group.arecord(store, "alice", "GET /x", student, None)  # type: ignore[arg-type]
        answered.append((student, student in written))

    async def main() -> None:
        first = asyncio.create_task(view("S0"))
        while group.queued or not group.writing:
            await asyncio.sleep(0.001)
        others = [asyncio.create_task(view(f"S{i}")) for i in range(1, 6)]
        thread = threading.Thread(target=group.record, args=(store, "bob", "GET /x", "T1", None))
        thread.start()
        while len(group.queued) < 6:
            await asyncio.sleep(0.001)
        gate.set()
        await asyncio.gather(first, *others)
        thread.join(5)

    asyncio.run(main())
    group.close()
    assert sorted(written) == ["S0", "S1", "S2", "S3", "S4", "S5", "T1"]
    assert calls == [1, 6]
    assert len(answered) == 6 and all(committed for _student, committed in answered)


def test_group_commit_waits_a_moment_for_the_rows_of_views_under_way():
    """A row queued while another view is under way waits for that view's row (one commit)."""
    import asyncio

    calls: list[list[str]] = []
    group = AuditGroupCommit(lambda _store, rows: calls.append([row[2] for row in rows]))
    group.delay = 5.0  # long: the second row, not the deadline, ends the wait
    store = object()

    async def main() -> None:
        with group.expecting() as later:
            first = asyncio.create_task(group.arecord(store, "a", "GET /x", "S1", None))  # type: ignore[arg-type]
            await asyncio.sleep(0.05)  # the writer has S1 and waits for the view under way
            assert calls == [] and group.expected == 1
            await group.arecord(store, "a", "GET /x", "S2", None, later)  # type: ignore[arg-type]
        await first
        with group.expecting():  # a view that ends without a row (a 404) releases the wait
            task = asyncio.create_task(group.arecord(store, "a", "GET /x", "S3", None))  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            assert calls == [["S1", "S2"]]
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    group.close()
    assert calls == [["S1", "S2"], ["S3"]] and group.expected == 0


def test_group_commit_hands_a_failed_commit_to_an_awaiting_coroutine():
    import asyncio

    def write(_store, _rows):
        raise OSError("disk full")

    group = AuditGroupCommit(write)
    with pytest.raises(OSError, match="disk full"):
        asyncio.run(group.arecord(object(), "alice", "GET /x", "S1", None))  # type: ignore[arg-type]
    group.close()
    assert not group.writing and not group.queued


@pytest.mark.parametrize("rows", [1, 7, 1_001])
def test_audit_rows_of_one_commit_are_all_stored_on_each_backend(store, clock, rows):
    """One row, a batch in one statement, and a batch beyond one statement's parameters."""
    from timeline.audit import accesses, record_accesses

    at = clock()
    record_accesses(
        store, [("alice", "GET /v1/students/{student_id}", f"S{i}", at) for i in range(rows)]
    )
    page, total = accesses(store, limit=2)
    assert total == rows
    assert [a.student_id for a in page] == [f"S{rows - 1}", f"S{rows - 2}"][: min(rows, 2)]
    assert page[0].at == at and page[0].token_name == "alice"


def test_a_long_history_is_viewed_in_the_pool_and_answers_the_pure_view(tmp_path, clock):
    """A student with more facts than are derived on the event loop: the same view."""
    from datetime import date

    from projections.engine import view
    from timeline import api

    events = [entered("e0")]
    for i in range(api.INLINE_VIEW_FACTS + 10):
        events.append(
            {
                "event_id": f"a{i}",
                "student_id": "S1",
                "type": "address_changed",
                "occurred_on": (date(2024, 4, 1) + timedelta(days=i)).isoformat(),
                "address": f"No. {i}, Daxue Rd.",
            }
        )
    app = create_app(config(str(tmp_path / "t.db")), clock=clock)
    with TestClient(app) as client:
        assert client.post("/v1/events", json=events, headers=_h(FEED)).status_code == 200
        r = client.get("/v1/students/S1", params={"as_of": "2025-06-01"}, headers=_h(STAFF))
    assert r.status_code == 200
    with TimelineStore.open(str(tmp_path / "t.db")) as store:
        stream = store.stream("S1")
    assert len(stream) > api.INLINE_VIEW_FACTS
    expected = view(stream, date(2025, 6, 1), None, student_id="S1")
    assert r.json() == json.loads(expected.model_dump_json())


# -- real servers: uvicorn and gunicorn workers, `timeline serve` --------------------------
def _wait_for(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the server exited: {out}")
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output or ""


def _exercise(url: str) -> None:
    """Write one event, then read it from new connections (so several workers answer)."""
    r = httpx.post(f"{url}/v1/events", json=entered("e1"), headers=_h(FEED))
    assert r.status_code == 200, r.text
    for _ in range(12):
        view = httpx.get(f"{url}/v1/students/S1", params={"as_of": "2024-04-16"}, headers=_h(STAFF))
        assert view.status_code == 200
        assert view.json()["status"] == "arc_application_overdue"


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_timeline_api_app_under_two_worker_processes(server, tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "metrics"  # a folder of its own: every *.db in it is read
    metrics_dir.mkdir()
    env = (
        os.environ
        | ENV
        | {
            "TIMELINE_DB": str(tmp_path / "t.db"),
            "TIMELINE_LOG_FORMAT": "json",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    )
    command = {
        "uvicorn": [sys.executable, "-m", "uvicorn", "timeline.api:app", "--workers", "2"],
        "gunicorn": [
            *(sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker"),
            *("-w", "2", "timeline.api:app"),
        ],
    }[server]
    bind = ["--port", str(port)] if server == "uvicorn" else ["-b", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*command, *bind],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, proc)
        _exercise(url)
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        output = _stop(proc)
    # Both workers' counters, whichever worker answered the scrape.
    route = 'method="GET",route="/v1/students/{student_id}",status="200"'
    assert _metric(metrics, f"timeline_http_requests_total{{{route}}}") == 12
    access = [json.loads(line) for line in output.splitlines() if '"timeline.access"' in line]
    assert len(access) >= 13, output
    assert FEED not in output and STAFF not in output
    pids = {int(p) for p in re.findall(r"Started server process \[(\d+)\]", output)}
    pids |= {int(p) for p in re.findall(r"Booting worker with pid: (\d+)", output)}
    assert len(pids) == 2, output


def test_serve_with_workers_root_path_and_json_logs(tmp_path):
    port = free_port()
    script = Path(sys.executable).with_name("timeline")
    _init(tmp_path / "t.db")
    proc = subprocess.Popen(
        [
            *(str(script), "--db", str(tmp_path / "t.db"), "serve", "--port", str(port)),
            *("--workers", "2", "--log-format", "json", "--root-path", "/timeline"),
            *("--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"),
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")} | ENV,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, proc)
        _exercise(url)
        # The proxy strips the prefix; the app knows it (the OpenAPI document names it).
        servers = httpx.get(f"{url}/openapi.json").json()["servers"]
        assert servers == [{"url": "/timeline"}]
        # The staff pages are served by the workers too, with one session key for all.
        page = httpx.get(f"{url}/sign-in")
        assert page.status_code == 200
        # ... under the prefix: the form, the assets and the login cookie carry it.
        assert 'action="/timeline/sign-in"' in page.text
        assert 'href="/timeline/static/app.css"' in page.text
        assert "Path=/timeline/sign-in" in page.headers["set-cookie"]
        asked = httpx.get(f"{url}/students/S1")
        assert asked.headers["location"] == "/timeline/sign-in?next=%2Ftimeline%2Fstudents%2FS1"
    finally:
        output = _stop(proc)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line.get("route") == "/v1/students/{student_id}" for line in lines), output
    assert all("time" in line and "level" in line for line in lines)
    assert FEED not in output and STAFF not in output


def _init(db: Path) -> None:
    """`timeline init`: `serve` refuses a store that was never created."""
    made = CliRunner().invoke(main, ["--db", str(db), "init"], env={"TIMELINE_CONFIG": ""})
    assert made.exit_code == 0, made.output


def test_serve_workers_get_the_settings_of_the_config_file_and_environment(tmp_path):
    # Tokens, store and readiness bound only in the settings file, the port and the
    # number of workers only in the environment: every worker must serve under them.
    port = free_port()
    _init(tmp_path / "t.db")
    (tmp_path / "timeline.toml").write_text(
        f'db = "t.db"\nfeed_tokens = "{ENV["TIMELINE_FEED_TOKENS"]}"\n'
        f'staff_tokens = "{ENV["TIMELINE_STAFF_TOKENS"]}"\nready_max_lag = "off"\n'
        'log_format = "json"\n',
        "utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")}
    env |= {"TIMELINE_PORT": str(port), "TIMELINE_WORKERS": "2"}
    script = Path(sys.executable).with_name("timeline")
    work = tmp_path / "elsewhere"  # the file's relative `db` counts from its folder
    work.mkdir()
    proc = subprocess.Popen(
        [str(script), "--config", str(tmp_path / "timeline.toml"), "serve"],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, proc)
        _exercise(url)
        assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
    finally:
        output = _stop(proc)
    assert not (work / "t.db").exists()
    with TimelineStore.open(str(tmp_path / "t.db")) as store:
        assert store.max_position() > 0  # the event was written to the file's store
    pids = {int(p) for p in re.findall(r'"Started server process \[(\d+)\]', output)}
    assert len(pids) == 2, output
    assert FEED not in output and STAFF not in output


def test_serve_refuses_a_bad_root_path_and_log_format(tmp_path):
    db = ["--db", str(tmp_path / "t.db"), "serve"]
    bad_root = CliRunner().invoke(main, [*db, "--root-path", "timeline/"], env=ENV)
    assert bad_root.exit_code == 2
    assert "--root-path" in bad_root.output
    bad_format = CliRunner().invoke(main, db, env=ENV | {"TIMELINE_LOG_FORMAT": "xml"})
    assert bad_format.exit_code == 2
    assert "TIMELINE_LOG_FORMAT" in bad_format.output


def test_importing_the_module_builds_no_app_and_opens_nothing(tmp_path):
    code = (
        "import sys, timeline.api, web.app\n"
        "assert '_app' not in vars(timeline.api) and '_app' not in vars(web.app)\n"
        "app = timeline.api.app\n"
        "assert app is timeline.api.app and app.state.shared._store is None\n"
        "print('ok')\n"
    )
    env = os.environ | ENV | {"TIMELINE_DB": str(tmp_path / "t.db")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr
    assert not (tmp_path / "t.db").exists()


# -- the population gate -------------------------------------------------------------------
def test_population_queries_past_the_slots_get_503_while_views_and_health_answer(tmp_path, clock):
    """With its one slot held, population answers wait `population_wait`, then 503 with
    Retry-After (API JSON, staff page HTML); the student view and /healthz answer at once."""
    from web.app import create_app as create_web_app

    location = str(tmp_path / "t.db")
    options = ServiceOptions(population_slots=1, population_wait=1)
    app = create_web_app(config(location), clock=clock, service=options)
    with TestClient(app) as client:
        assert client.post("/v1/events", json=entered("e1"), headers=_h(FEED)).status_code == 200
        assert client.get("/v1/tasks", headers=_h(STAFF)).status_code == 200  # read models made
        gate = app.state.shared.gate
        with gate.slot():  # another query computes
            started = time.monotonic()
            refused = client.get("/v1/tasks", headers=_h(STAFF))
            assert time.monotonic() - started >= 0.9  # it waited for a slot first
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"].startswith("busy:")
            since = "2000-01-01T00:00:00Z"
            for path in ("/v1/fines?limit=5", "/v1/alerts", f"/v1/changes?since={since}"):
                assert client.get(path, headers=_h(STAFF)).status_code == 503, path
            page = client.get("/lists/overdue", headers=_h(STAFF))
            assert page.status_code == 503 and page.headers["retry-after"] == "1"
            assert "text/html" in page.headers["content-type"]
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/students/S1", headers=_h(STAFF)).status_code == 200
            assert gate.waiting == 0
            held = client.get("/metrics").text
            assert _metric(held, "timeline_population_slots") == 1
            assert _metric(held, "timeline_population_busy") == 1
            assert _metric(held, "timeline_population_waiting") == 0
        assert gate.refused == 5
        text = client.get("/metrics").text
        assert _metric(text, "timeline_population_busy") == 0
        assert _metric(text, "timeline_population_refused_total") == 5
        assert client.get("/v1/tasks", headers=_h(STAFF)).status_code == 200
        assert client.get("/lists/overdue", headers=_h(STAFF)).status_code == 200


def test_a_slow_reader_of_a_streamed_list_holds_no_population_slot(tmp_path, clock):
    """A whole list streamed to a client that stops reading takes a slot only while it
    computes a part: with one slot, other population answers go on meanwhile."""
    location = str(tmp_path / "t.db")
    _many_students(location, clock, 24_000)
    options = ServiceOptions(population_slots=1, population_wait=2)
    app = create_app(config(location), clock=clock, service=options)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("GET", "/v1/tasks", headers=_h(STAFF)) as slow:
            assert slow.status_code == 200
            chunks = slow.iter_raw(4096)
            first = next(chunks)  # then it reads no more for a while
            assert first.startswith(b"[")
            for _ in range(3):  # each would get 503 after 2 s if the reader held the slot
                other = http.get("/v1/fines?limit=1", headers=_h(STAFF))
                assert other.status_code == 200, other.text
            rest = b"".join(chunks)
        rows = json.loads(first + rest)
    assert len(rows) == 24_000 and app.state.shared.gate.refused == 0


def test_the_gate_lets_at_most_its_slots_compute_at_once():
    from timeline.api_service import Busy, PopulationGate

    gate = PopulationGate(slots=2, wait=0.2)
    inside, most, lock = [0], [0], threading.Lock()

    def work() -> None:
        with gate.slot(forever=True):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2
    with gate.slot(), gate.slot(), pytest.raises(Busy), gate.slot():
        pass
    assert gate.refused == 1
    assert list(gate.parts(iter(["a", "b"]))) == ["a", "b"]


def _many_students(location: str, clock: FakeClock, count: int) -> None:
    """A store of `count` students, one entry each (a streamed list of megabytes)."""
    from timeline.ingest import ingest_objects

    with TimelineStore.open(location, clock=clock) as store:
        feed = [entered(f"e{n}", f"S{n:05d}") for n in range(count)]
        assert ingest_objects(store, feed).ok


def _open_files(path: Path) -> int:
    """Descriptors of this process open on the file `path` (one per read model)."""
    return sum(1 for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd) == str(path))


@contextmanager
def _stalled_tasks_request(url: str) -> Iterator[socket.socket]:
    """A client that asks for the whole task list, reads its first bytes, then no more."""
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        stalled.settimeout(30)
        stalled.connect((where.hostname, where.port))
        stalled.sendall(
            f"GET /v1/tasks?offset=1 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {STAFF}\r\n\r\n".encode()
        )
        # (Not the first row: a whole list that short is sorted in Python, no cursor.)
        assert stalled.recv(4096).startswith(b"HTTP/1.1 200")  # then it reads no more
        yield stalled


def _streams_reset_midway(url: str, path: str, clients: int) -> None:
    """`clients` ask for `path` at once, read the first bytes, then reset their connections."""
    import struct
    from urllib.parse import urlsplit

    where = urlsplit(url)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {STAFF}\r\n\r\n"
    socks = [
        socket.create_connection((where.hostname, where.port), timeout=30) for _ in range(clients)
    ]
    try:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request.encode())
        for sock in socks:  # every answer has begun: each holds a read model
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset


@pytest.mark.parametrize(
    "path",
    ["/v1/tasks", "/v1/fines?as_of=2030-01-01", "/lists/overdue?as_of=2030-01-01&format=csv"],
)
def test_a_client_gone_mid_stream_gives_its_read_model_back_at_once(tmp_path, clock, path):
    """A streamed list whose client resets the connection closes its query and hands its
    read model back when the server notices, not when the garbage collector next runs: 40
    such clients kept 40 read-model connections (and their open read transactions) until
    then, the server growing by 90 MB (found by a hostile load probe)."""
    import gc

    from web.app import create_app as create_web_app

    location = str(tmp_path / "t.db")
    _many_students(location, clock, 24_000)
    read_db = tmp_path / "read.db"
    app = create_web_app(config(location, str(read_db)), clock=clock)
    pool = app.state.shared.models
    gc.disable()  # what a collection would tidy up is what this test looks for
    try:
        with running(app) as url:
            assert (
                httpx.get(f"{url}/v1/fines?limit=1", headers=_h(STAFF), timeout=120).status_code
                == 200
            )
            _streams_reset_midway(url, path, 3)
            deadline = time.monotonic() + 10
            while _open_files(read_db) > len(pool.idle) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _open_files(read_db) == len(pool.idle) > 0, "a model stayed lent"
    finally:
        gc.enable()


def test_a_client_that_stops_reading_a_streamed_list_blocks_no_write_to_the_read_models(
    tmp_path, clock
):
    """A streamed list keeps its query (a read transaction) open between parts while its
    client reads nothing. The read models were in SQLite's rollback-journal mode, where an
    open reader keeps every writer from committing: after one new event, every population
    answer (which first applies it) waited the 30 s busy timeout and was answered 503
    "the event store is unavailable", the follower stuck likewise, for as long as that one
    client kept its connection (found by a hostile load probe). In WAL mode readers and
    the writer do not wait for each other. (Read models in the SQLite store's own file, the
    default there, were in WAL mode already; a file of their own, as every PostgreSQL
    deployment has, was not.)"""

    location = str(tmp_path / "t.db")
    _many_students(location, clock, 30_000)
    # A read-model file of its own, as with PostgreSQL (the store's own file is in WAL mode).
    app = create_app(config(location, str(tmp_path / "read.db")), clock=clock)
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        assert http.get("/v1/fines?limit=1", headers=_h(STAFF)).status_code == 200
        with _stalled_tasks_request(url):
            time.sleep(0.5)
            posted = http.post("/v1/events", json=entered("new", "S99999"), headers=_h(FEED))
            assert posted.status_code == 200
            started = time.monotonic()
            page = http.get("/v1/tasks?limit=1&count=true", headers=_h(STAFF), timeout=20)
            assert page.status_code == 200, page.text
            assert page.headers["x-total-count"] == "30001"  # the new event applied
            assert time.monotonic() - started < 10


def test_a_client_that_reads_nothing_is_dropped_and_its_read_model_handed_back(tmp_path, clock):
    """A client that asked for a streamed list and then read nothing kept its read model
    (and query, and the answer's buffers) for as long as it stayed connected: 100 such
    clients took a process from 80 to 475 MB. `serve`'s protocol drops a connection whose
    client took nothing for its stall deadline."""
    import contextlib

    location = str(tmp_path / "t.db")
    _many_students(location, clock, 30_000)
    read_db = tmp_path / "read.db"
    # No follower: its passes borrow a read model too.
    options = ServiceOptions(follow_seconds=0)
    app = create_app(config(location, str(read_db)), clock=clock, service=options)
    pool = app.state.shared.models

    def lent() -> int:
        return _open_files(read_db) - len(pool.idle)

    with running(app, header_seconds=30, stall_seconds=1) as url:
        # (The first answer fills the read models: seconds on a loaded machine.)
        first = httpx.get(f"{url}/v1/fines?limit=1", headers=_h(STAFF), timeout=120)
        assert first.status_code == 200
        with _stalled_tasks_request(url) as stalled:
            time.sleep(0.3)
            assert lent() == 1, lent()  # the answer holds its read model while it waits
            deadline = time.monotonic() + 15
            while lent() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert lent() == 0, "the stalled answer kept its read model"
            got = 0
            with contextlib.suppress(ConnectionResetError):  # what the kernel held, then the end
                while piece := stalled.recv(1 << 20):
                    got += len(piece)
        whole = httpx.get(f"{url}/v1/tasks?offset=1", headers=_h(STAFF), timeout=60)
        assert got < len(whole.content)  # cut short: the connection was dropped


def test_a_page_and_its_total_are_of_one_state_of_the_read_models(tmp_path, clock):
    """`count=true` and the page's rows were two queries: a commit of the follower (or of
    another request's sync) between them gave a page whose X-Total-Count and X-Next-Offset
    disagreed with its rows (13 of 968 pages under writes; found by a hostile load probe:
    an X-Next-Offset pointing past the end, a last page with more rows than the total left)."""
    location = str(tmp_path / "t.db")
    with TimelineStore.open(location, clock=clock) as store:
        from timeline.ingest import ingest_objects

        assert ingest_objects(store, [entered(f"e{n}", f"S{n:05d}") for n in range(500)]).ok
    options = ServiceOptions(follow_seconds=0.02)
    app = create_app(config(location, str(tmp_path / "read.db")), clock=clock, service=options)
    stop = time.monotonic() + 12
    torn: list[tuple[int, int, int, str | None]] = []
    pages = [0]

    def write(writer: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for k in range(100_000):
                if time.monotonic() > stop:
                    return
                batch = [entered(f"A{writer}-{k}-{i}", f"A{writer}-{k}-{i}") for i in range(5)]
                assert http.post("/v1/events", json=batch, headers=_h(FEED)).status_code == 200

    def read() -> None:
        total = 500
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop:
                offset = max(0, total - 50)
                answer = http.get(
                    f"/v1/tasks?limit=100&offset={offset}&count=true", headers=_h(STAFF)
                )
                assert answer.status_code == 200, answer.text
                total, rows = int(answer.headers["x-total-count"]), answer.json()
                following = answer.headers.get("x-next-offset")
                pages[0] += 1
                if len(rows) != min(100, total - offset) or (following is not None) != (
                    offset + 100 < total
                ):
                    torn.append((offset, total, len(rows), following))

    with running(app) as url:
        threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
        threads += [threading.Thread(target=read) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert pages[0] > 50
    assert torn == [], f"{len(torn)} of {pages[0]} pages"
