"""HTTP benchmark: `GET /v1/students/{id}` against a hello-world endpoint of the same server.

    .venv/bin/python -m benchmarks.http_load [--students 100000] [--events 800000]
        [--dir D] [--postgres URL|none] [--workers 1] [--duration 3] [--rounds 3]
        [--concurrency 1,8,32] [--writes 8] [--skip-reads] [--baseline-ref REF] [--skip-sqlite]

Builds (or reuses, cached in `--dir`, default `~/.cache/residency-timeline/http-load`) a
store of the synthetic registrar feed of `benchmarks.ingest` (100,000 students) on SQLite
and, with a PostgreSQL server (`--postgres URL`, else `TIMELINE_BENCH_POSTGRES_URL` or
`TIMELINE_TEST_POSTGRES_URL`), in the dedicated schema `bench_http_load` (kept between
runs; `--postgres none` skips it). Then, per backend, it starts the server as a
subprocess (`uvicorn timeline.api:app`, configured from the environment; with
`--workers N` > 1, `timeline serve --workers N`, which also serves the staff pages),
and a second process generates the load: keep-alive HTTP/1.1 connections on loopback,
`--concurrency` of them at once, each sending its next request when the answer to the
last one is complete, for `--duration` seconds after a one-second warm-up, `--rounds`
times, alternating with the other endpoint (so that a drift in the machine's load weighs
on both alike); rates and percentiles are over every round. Measured in the same run:
`GET /healthz` (the hello world of the same app: no store, no auth) and
`GET /v1/students/{id}` (a staff token; random students; the stream read, the pure view
and one audit row written per request). The table gives requests/s, p50 and p99, and
the ratio of the student rate to the hello-world rate at the same concurrency.

Targets (issue 12): ratio ≥ 0.5, p99 ≤ 20 ms at concurrency 8, on SQLite and PostgreSQL.

Then writes (`--writes N` batches, 0 to skip): `POST /v1/events` of 500 new events each
(100 new students of the same feed), N of them one at a time, then N more four at once,
into a fresh SQLite store and a fresh PostgreSQL schema (dropped after): events/s and the
slowest POST of each (issue 12 reported four at once cutting throughput by 4x).

With `--baseline-ref REF` the server of git revision REF (exported to a temporary
folder; an app without `timeline.api:app` is built with `create_app` and given a
`/healthz` route for the hello world) is measured right before, on the same stores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAFF_TOKEN = "bench-staff-token-0123456789"
FEED_TOKEN = "bench-feed-token-0123456789"
PG_SCHEMA = "bench_http_load"
TARGET_RATIO = 0.5
TARGET_P99_MS = 20.0
# Serves an app of a revision without `timeline.api:app` (the hello world added here).
LEGACY_LAUNCHER = """
import os
from timeline.api import create_app
from timeline.api_settings import ApiConfig


def make():
    app = create_app(ApiConfig.from_env(os.environ, os.environ.get("TIMELINE_DB")))
    if not any(getattr(r, "path", None) == "/healthz" for r in app.routes):
        @app.get("/healthz")
        async def healthz():
            return {"status": "ok"}
    return app
"""


# -- the stores ----------------------------------------------------------------------------
def prepare_sqlite(folder: Path, students: int, events: int) -> str:
    """The SQLite store of the feed (built once, then reused); its path."""
    from benchmarks.ingest import write_feed
    from timeline.ingest import ingest_file
    from timeline.store import TimelineStore

    db = folder / f"students-{students}-{events}.db"
    done = db.with_suffix(".done")
    if done.exists():
        return str(db)
    feed = feed_file(folder, students, events, write_feed)
    for stale in folder.glob(db.name + "*"):
        stale.unlink()
    started = time.perf_counter()
    with TimelineStore.open(str(db)) as store:
        report = ingest_file(store, feed, partial=True)
    print(
        f"built {db.name}: {report.accepted} events in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    done.write_text("ok")
    return str(db)


def prepare_postgres(folder: Path, url: str, students: int, events: int) -> str:
    """The PostgreSQL store of the feed in schema `bench_http_load` (built once); its URL."""
    import psycopg

    from benchmarks.ingest import write_feed
    from timeline.ingest import ingest_file
    from timeline.store import TimelineStore

    marker = f"{students}-{events}"
    location = f"{url}?schema={PG_SCHEMA}"
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
            (PG_SCHEMA,),
        ).fetchone()
        if row is not None and row[0] == marker:
            return location
        conn.execute(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{PG_SCHEMA}"')
    feed = feed_file(folder, students, events, write_feed)
    started = time.perf_counter()
    with TimelineStore.open(location) as store:
        report = ingest_file(store, feed, partial=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"COMMENT ON SCHEMA \"{PG_SCHEMA}\" IS '{marker}'")
    print(
        f"built schema {PG_SCHEMA}: {report.accepted} events in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return location


def prepare_read_models(location: str, read_db: str) -> None:
    """Bring the read models up to date (a rebuild the first time), as a running service has
    them: the server's follower then has nothing to catch up with during the measurements."""
    from projections.readmodel import ReadModel
    from projections.rules import rulebook_from_env
    from timeline.store import TimelineStore

    started = time.perf_counter()
    with TimelineStore.open(location) as store:
        model = ReadModel(read_db, rulebook_from_env({}))
        try:
            report = model.sync(store, rebuild_if_empty=True)
        finally:
            model.close()
    if report.notifications:
        print(
            f"read models of {location.rsplit('/', 1)[-1]}: {report.notifications} "
            f"notifications in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )


def feed_file(folder: Path, students: int, events: int, write_feed: Any) -> Path:
    """The synthetic feed (written once)."""
    feed = folder / f"feed-{students}-{events}.jsonl"
    if not feed.exists():
        partial = feed.with_suffix(".partial")
        write_feed(partial, events, students, seed=12)
        partial.replace(feed)
    return feed


# -- the server ----------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(code: Path, db: str, workers: int, read_db: str) -> tuple[subprocess.Popen, int]:
    """The server of the tree `code` on a free port, once it answers /healthz."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMELINE_", "POSTGRES_"))} | {
        "TIMELINE_DB": db,
        "TIMELINE_READ_DB": read_db,
        "TIMELINE_STAFF_TOKENS": f"bench:{STAFF_TOKEN}",
        "TIMELINE_FEED_TOKENS": f"feed:{FEED_TOKEN}:*",
        # No follower: the student view reads the log, not the read models, and a revision
        # whose rules or code differ would re-follow them from the start meanwhile.
        "TIMELINE_FOLLOW_SECONDS": "0",
        "PYTHONPATH": str(code),
    }
    legacy = "def app_from_environment" not in (code / "timeline" / "api.py").read_text()
    if legacy:
        folder = Path(tempfile.mkdtemp(prefix="http-load-launcher-"))
        (folder / "legacy_launcher.py").write_text(LEGACY_LAUNCHER)
        env["PYTHONPATH"] = f"{code}{os.pathsep}{folder}"
        target = ["--factory", "legacy_launcher:make"]
    else:
        target = ["timeline.api:app"]
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        *target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    if workers > 1 and not legacy:
        # uvicorn's own workers leave Nagle's algorithm on (see `timeline.cli.serve_workers`).
        timeline = Path(sys.executable).with_name("timeline")
        command = [str(timeline), "serve", "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen(command, cwd=code, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            status, _ = asyncio.run(one_request(port, "/healthz"))
            if status == 200:
                return server, port
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.1)


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# -- the load ------------------------------------------------------------------------------
async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: its status and body (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return status, body


def request_bytes(path: str, token: str | None) -> bytes:
    """A keep-alive GET request."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


async def one_request(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    """A single request on a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(path, token))
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


async def load(
    port: int, paths: list[str], token: str | None, concurrency: int, duration: float
) -> dict[str, Any]:
    """`concurrency` connections, each sending its next request when its last is answered."""
    latencies: list[float] = []
    errors = 0
    warmup_end = time.perf_counter() + 1.0
    end = warmup_end + duration

    async def connection(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                started = time.perf_counter()
                if started >= end:
                    return
                writer.write(request_bytes(rng.choice(paths), token))
                status, _ = await read_response(reader)
                finished = time.perf_counter()
                if started >= warmup_end:
                    latencies.append(finished - started)
                    if status != 200:
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(concurrency)))
    return {
        "errors": errors,
        "seconds": duration,
        "latencies_us": [round(x * 1e6) for x in latencies],
    }


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one measurement added up: requests/s, p50 and p99 over every request."""
    latencies = sorted(x for r in results for x in r["latencies_us"])
    seconds = sum(r["seconds"] for r in results)
    count = len(latencies)
    return {
        "requests": count,
        "errors": sum(r["errors"] for r in results),
        "rate": count / seconds,
        "p50_ms": latencies[count // 2] / 1000 if count else float("nan"),
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] / 1000 if count else float("nan"),
    }


def load_main(argv: list[str]) -> int:
    """The load generator's own process: reads its spec on stdin, prints one JSON result."""
    spec = json.loads(argv[0] if argv else sys.stdin.read())
    result = asyncio.run(
        load(spec["port"], spec["paths"], spec["token"], spec["concurrency"], spec["duration"])
    )
    print(json.dumps(result))
    return 0


def measure(
    port: int, paths: list[str], token: str | None, concurrency: int, duration: float
) -> dict[str, Any]:
    """Run the load generator in a second process and read its result."""
    spec = {
        "port": port,
        "paths": paths,
        "token": token,
        "concurrency": concurrency,
        "duration": duration,
    }
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.http_load", "--load"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return json.loads(out)


def run_backend(
    label: str,
    code: Path,
    db: str,
    read_db: str,
    students: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every measurement of one server (one backend, one code revision)."""
    rng = random.Random(7)
    paths = [f"/v1/students/S{rng.randrange(students):07d}" for _ in range(20_000)]
    server, port = start_server(code, db, args.workers, read_db)
    rows = []
    try:
        status, _ = asyncio.run(one_request(port, paths[0], STAFF_TOKEN))
        if status != 200:
            raise SystemExit(f"{label}: GET {paths[0]} answered {status}")
        for concurrency in args.concurrency:
            # Rounds of hello, student, hello, ...: a machine whose load drifts (other jobs)
            # weighs on both alike.
            hellos, students = [], []
            for _ in range(args.rounds):
                hellos.append(measure(port, ["/healthz"], None, concurrency, args.duration))
                students.append(measure(port, paths, STAFF_TOKEN, concurrency, args.duration))
            hello, student = summary(hellos), summary(students)
            row = {
                "server": label,
                "c": concurrency,
                "hello": hello,
                "student": student,
                "ratio": student["rate"] / hello["rate"] if hello["rate"] else float("nan"),
            }
            rows.append(row)
            print_row(row)
    finally:
        stop_server(server)
    return rows


HEADER = (
    f"{'server':<26} {'c':>3} {'hello/s':>9} {'p50':>6} {'p99':>7} "
    f"{'student/s':>9} {'p50':>6} {'p99':>7} {'ratio':>6}"
)


def print_row(row: dict[str, Any]) -> None:
    """One line of the table (times in ms)."""
    h, s = row["hello"], row["student"]
    errors = f"  ({s['errors']} errors)" if s["errors"] or h["errors"] else ""
    print(
        f"{row['server']:<26} {row['c']:>3} {h['rate']:>9.0f} {h['p50_ms']:>6.1f} "
        f"{h['p99_ms']:>7.1f} {s['rate']:>9.0f} {s['p50_ms']:>6.1f} {s['p99_ms']:>7.1f} "
        f"{row['ratio']:>6.2f}{errors}",
        flush=True,
    )


def write_batches(prefix: str, count: int, size: int = 500) -> list[bytes]:
    """`count` request bodies of `size` new events (students `prefix`NNNNNN, 5 events each)."""
    from benchmarks.ingest import student_events

    rng = random.Random(prefix)
    bodies = []
    for batch in range(count):
        events = []
        for k in range(size // 5):
            student = f"{prefix}{batch:03d}{k:03d}"
            events += [obj for _day, obj in student_events(rng, student, 5)]
        bodies.append(json.dumps(events).encode())
    return bodies


def post_all(port: int, bodies: list[bytes], at_once: int) -> tuple[float, float]:
    """POST the bodies, `at_once` at a time; (events/s, the slowest POST in ms)."""
    import threading

    import httpx

    slowest = 0.0
    headers = {"Authorization": f"Bearer {FEED_TOKEN}", "Content-Type": "application/json"}

    def send(mine: list[bytes]) -> None:
        nonlocal slowest
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            for body in mine:
                started = time.perf_counter()
                r = client.post("/v1/events", content=body, headers=headers)
                if r.status_code != 200:
                    raise SystemExit(f"POST /v1/events answered {r.status_code}: {r.text[:200]}")
                slowest = max(slowest, time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=send, args=(bodies[i::at_once],)) for i in range(at_once)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = sum(body.count(b'"event_id"') for body in bodies)
    return events / (time.perf_counter() - started), slowest * 1000


def run_writes(label: str, code: Path, db: str, read_db: str, args: argparse.Namespace) -> None:
    """One at a time, then four at once, into a fresh store."""
    server, port = start_server(code, db, args.workers, read_db)
    try:
        post_all(port, write_batches("W", 1), 1)  # warm up (opens, creates tables)
        alone = post_all(port, write_batches("A", args.writes), 1)
        four = post_all(port, write_batches("B", args.writes), 4)
    finally:
        stop_server(server)
    print(
        f"{label:<26} one at a time {alone[0]:>6.0f} events/s (slowest POST {alone[1]:>5.0f} ms)"
        f"   four at once {four[0]:>6.0f} events/s (slowest {four[1]:>5.0f} ms)"
        f"   ratio {four[0] / alone[0]:.2f}",
        flush=True,
    )


def export_revision(ref: str) -> Path:
    """Git revision `ref` of this repository in a temporary folder."""
    from benchmarks.ingest import export_revision as export

    return Path(export(ref, Path(tempfile.mkdtemp(prefix="http-load-"))))


def main(argv: list[str] | None = None) -> int:
    """Build or reuse the stores, then measure each backend (and the baseline revision)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--load"]:
        return load_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=800_000)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path.home() / ".cache" / "residency-timeline" / "http-load",
        help="where the stores are built once and reused",
    )
    parser.add_argument("--postgres", default=None, help="server URL, or 'none'")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 8, 32],
    )
    parser.add_argument("--baseline-ref", default=None, help="also measure this git revision")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--writes", type=int, default=8, help="500-event POSTs per write measurement (0: none)"
    )
    parser.add_argument("--skip-reads", action="store_true", help="only the writes")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    url = (
        args.postgres
        or os.environ.get("TIMELINE_BENCH_POSTGRES_URL")
        or os.environ.get("TIMELINE_TEST_POSTGRES_URL")
    )
    backends: list[tuple[str, str, str]] = []
    if not args.skip_sqlite:
        db = prepare_sqlite(args.dir, args.students, args.events)
        prepare_read_models(db, db)
        backends.append(("sqlite", db, db))
    if url and url != "none":
        location = prepare_postgres(args.dir, url, args.students, args.events)
        prepare_read_models(location, str(args.dir / "pg-read.db"))
        backends.append(("postgres", location, str(args.dir / "pg-read.db")))
    revisions = [("now", ROOT)]
    if args.baseline_ref:
        revisions.insert(0, (args.baseline_ref, export_revision(args.baseline_ref)))
    print(
        f"{args.students} students, {args.events} events; {args.workers} worker(s); "
        f"{args.rounds} rounds of {args.duration:.0f} s per measurement; times in ms; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    results = []
    if not args.skip_reads:
        print(HEADER)
        for backend, db, read_db in backends:
            for name, code in revisions:
                results += run_backend(f"{backend} {name}", code, db, read_db, args.students, args)
    if args.writes:
        print("\nwrites: POST /v1/events of 500 new events")
        scratch = Path(tempfile.mkdtemp(prefix="http-load-writes-"))
        for name, code in revisions:
            run_writes(f"sqlite {name}", code, str(scratch / f"{name}.db"), "", args)
            if url and url != "none":
                schema = f"bench_writes_{random.randrange(16**8):08x}"
                import psycopg

                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f'CREATE SCHEMA "{schema}"')
                try:
                    location = f"{url}?schema={schema}"
                    read_db = str(scratch / f"{name}-pg-read.db")
                    run_writes(f"postgres {name}", code, location, read_db, args)
                finally:
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    for row in results:
        if row["c"] == 8:
            ok = row["ratio"] >= TARGET_RATIO and row["student"]["p99_ms"] <= TARGET_P99_MS
            print(
                f"{row['server']}: c=8 ratio {row['ratio']:.2f} (target ≥ {TARGET_RATIO}), "
                f"p99 {row['student']['p99_ms']:.1f} ms (target ≤ {TARGET_P99_MS:.0f}): "
                f"{'met' if ok else 'missed'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
