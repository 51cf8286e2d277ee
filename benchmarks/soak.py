"""Soak: the production layout on one machine, under a sustained write load.

    .venv/bin/python -m benchmarks.soak [--events 200000] [--apis 4] [--writers 4]
                                        [--batch 500] [--postgres URL] [--keep]

What runs, all as real processes on loopback, against a fresh PostgreSQL schema:

- `--apis` API processes: `timeline serve` on as many ports (as the systemd template
  `timeline-api@PORT` runs them);
- one read-model follower: `timeline follow`, into the read-model file the APIs share;
- the scheduler daemon: `timeline -v scheduler --run-now` (its job runs at start, then
  waits for its daily time), holding the scheduler lock;
- an emitter: `timeline alerts --on D --emit` for a list of days spread over the data,
  one after the other while the writers write (each waits for the emitter lock), all into
  one JSONL sink;
- `--writers` writer processes, each with students of its own, POSTing their events in
  batches of `--batch` to the APIs in turn (a student's events in order, one writer).
  The events are the ingest benchmark's generated registrar feed (entries, ARC
  applications and issues, moves, lost passports, fines, retractions, departures).

When the writers are done: the follower is waited for (its tracked position reaches the
store's), the emitter runs every day once more, and everything is stopped with SIGTERM
(each must exit 0). Then it checks, and exits 1 if any check fails:

1. stored = sent: the facts in the store (every stream read back) and the feed keys
   equal the events the writers sent, and every request was answered 200 with all its
   events accepted;
2. read model = rebuild: every table of the follower's read model equals, row by row,
   the tables `timeline rebuild` makes into a fresh file from the same store (record-time
   intervals included; batch positions left aside);
3. no alert key twice in the JSONL sink, and the sink holds exactly the keys the outbox
   marked sent.

It prints the throughput (events/s over the write phase, wall clock), the request
latency (p50/p99), the follower's lag after the last write, and the counts.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import resource
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from benchmarks.ingest import CHUNK_STUDENTS, student_events

TIMELINE = str(Path(sys.executable).with_name("timeline"))
EVENTS_PER_STUDENT = 8
# The read-model rows compared (as tests/test_bitemporal_readmodel.py `table_rows` does):
# the batch positions in rm_students and rm_errors differ between following and a rebuild.
READ_MODEL_QUERIES = {
    "rm_tasks": "SELECT * FROM rm_tasks",
    "rm_fines": "SELECT * FROM rm_fines",
    "rm_payments": "SELECT * FROM rm_payments",
    "rm_overstays": "SELECT * FROM rm_overstays",
    "rm_errors": "SELECT student_id, error, message, known_from, known_until FROM rm_errors",
    "rm_changes": "SELECT * FROM rm_changes",
    "rm_students": "SELECT uuid, student_id, recorded_to FROM rm_students",
}


# -- the feed ---------------------------------------------------------------------------------
def writer_batches(
    writer: int, events: int, students: int, batch: int, seed: int
) -> Iterator[list[dict[str, Any]]]:
    """Writer `writer`'s events in POST batches: its own students, chunks interleaved by day."""
    rng = random.Random(seed * 1000 + writer)
    base, extra = divmod(events, students)
    pending: list[dict[str, Any]] = []
    for first in range(0, students, CHUNK_STUDENTS):
        numbers = range(first, min(first + CHUNK_STUDENTS, students))
        chunk: list[tuple[date, int, int, dict[str, Any]]] = []
        for position, number in enumerate(numbers):
            count = base + (1 if number < extra else 0)
            sid = f"W{writer}S{number:06d}"
            for seq, (day, obj) in enumerate(student_events(rng, sid, count)):
                chunk.append((day, position, seq, obj))
        chunk.sort(key=lambda row: row[:3])
        for row in chunk:
            pending.append(row[3])
            if len(pending) == batch:
                yield pending
                pending = []
    if pending:
        yield pending


def write(
    writer: int,
    events: int,
    students: int,
    batch: int,
    seed: int,
    ports: list[int],
    token: str,
    start: Any,
    results: Any,
) -> None:
    """A writer process: generate its feed, wait for the start, POST it; report figures."""
    import httpx

    batches = list(writer_batches(writer, events, students, batch, seed))
    bodies = [json.dumps(b, ensure_ascii=False).encode() for b in batches]
    results.put({"ready": writer})
    start.wait()
    cpu_began = own_cpu()
    latencies: list[float] = []
    sent = accepted = failures = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=300) for p in ports]
    began = time.monotonic()
    try:
        for k, (events_of, body) in enumerate(zip(batches, bodies, strict=True)):
            client = clients[(writer + k) % len(clients)]
            t0 = time.monotonic()
            answer = client.post("/v1/events", content=body, headers=headers)
            latencies.append(time.monotonic() - t0)
            sent += len(events_of)
            if answer.status_code != 200:
                failures += 1
                print(f"writer {writer}: HTTP {answer.status_code}: {answer.text[:300]}")
                continue
            report = answer.json()
            accepted += report["accepted"]
            if report["accepted"] != len(events_of):
                failures += 1
    finally:
        for client in clients:
            client.close()
    results.put(
        {
            "writer": writer,
            "sent": sent,
            "accepted": accepted,
            "requests": len(batches),
            "failures": failures,
            "seconds": time.monotonic() - began,
            "latencies": latencies,
            "cpu": own_cpu() - cpu_began,
        }
    )


# -- processes --------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """`n` TCP ports on loopback that nothing listens on right now."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until_serving(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the API on `port` answers (/healthz where there is one, else /openapi.json)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API on port {port} exited with {process.returncode}")
        for path in ("/healthz", "/openapi.json"):
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                break
        time.sleep(0.2)
    raise SystemExit(f"the API on port {port} did not start within {timeout:.0f} s")


def stop(process: subprocess.Popen, name: str, timeout: float = 60) -> int:
    """SIGTERM, then the exit code (killed after `timeout` seconds: reported as -9)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            print(f"{name} did not stop within {timeout:.0f} s after SIGTERM: killed")
            return -9
    return process.returncode


def wait_for_log(
    name: str, text: str, process: subprocess.Popen, logs: Path, timeout: float = 120
) -> None:
    """Until the process's log says `text` (it has started its work)."""
    deadline = time.monotonic() + timeout
    log = logs / f"{name}.log"
    while text not in log.read_text("utf-8", errors="replace"):
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}: see {log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start within {timeout:.0f} s: see {log}")
        time.sleep(0.1)


def tracked_position(read_db: Path) -> int:
    """The follower's position in its tracking table (0 before it has one)."""
    try:
        with sqlite3.connect(f"file:{read_db}?mode=ro", uri=True, timeout=30) as conn:
            row = conn.execute("SELECT position FROM rm_tracking").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row else 0


def emit_days(days: list[date], env: dict[str, str], sink: str, logs: Path, stop_flag: Any) -> int:
    """`timeline alerts --on D --emit` for each day, one after the other; the runs made."""
    runs = 0
    with (logs / "emitter.log").open("a") as log:
        for day in days:
            if stop_flag is not None and stop_flag.is_set():
                break
            done = subprocess.run(
                [
                    TIMELINE,
                    "alerts",
                    "--on",
                    day.isoformat(),
                    "--emit",
                    "--sink",
                    sink,
                    "--wait",
                    "600",
                ],
                env=env,
                stdout=log,
                stderr=log,
            )
            runs += 1
            if done.returncode != 0:
                raise SystemExit(f"alerts --emit --on {day} exited {done.returncode}")
    return runs


def emitter(
    days: list[date], env: dict[str, str], sink: str, logs: str, stop_flag: Any, out: Any
) -> None:
    """The emitter process: one pass over the days, cut short when the writers are done."""
    runs = emit_days(days, env, sink, Path(logs), stop_flag)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.put({"runs": runs, "cpu": usage.ru_utime + usage.ru_stime})


# -- CPU time ----------------------------------------------------------------------------------
TICKS = os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """This process's CPU seconds so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


# -- the checks -------------------------------------------------------------------------------
def stored_counts(location: str) -> tuple[int, int, int]:
    """(facts in every stream, feed keys, students) of the store."""
    from timeline.store import TimelineStore

    with TimelineStore.open(location) as store:
        facts = students = 0
        for stream in store.streams():
            facts += len(stream.facts)
            students += 1
        schema = location.split("schema=", 1)[1]
        with store_connection(location) as conn:
            keys = conn.execute(f'SELECT count(*) FROM "{schema}".feed_keys').fetchone()[0]
    return facts, int(keys), students


def store_connection(location: str) -> Any:
    """A plain psycopg connection to the store's database (autocommit)."""
    import psycopg

    return psycopg.connect(location.split("?", 1)[0], autocommit=True)


def table_rows(path: Path) -> dict[str, collections.Counter[tuple[Any, ...]]]:
    """Every compared read-model table as a multiset of rows."""
    with sqlite3.connect(path) as conn:
        return {
            table: collections.Counter(conn.execute(query).fetchall())
            for table, query in READ_MODEL_QUERIES.items()
        }


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank; 0 for none)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# -- the run -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Parse the options, make a fresh schema, run the soak, drop the schema."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--students", type=int, default=None, help="default: events / 8")
    parser.add_argument("--apis", type=int, default=4)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500, help="events per POST")
    parser.add_argument("--alert-days", type=int, default=24, help="days the emitter emits")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--postgres",
        default=None,
        help="server URL (default: $TIMELINE_BENCH_POSTGRES_URL, else $TIMELINE_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the schema and the folder")
    args = parser.parse_args(argv)
    url = (
        args.postgres
        or os.environ.get("TIMELINE_BENCH_POSTGRES_URL")
        or os.environ.get("TIMELINE_TEST_POSTGRES_URL")
    )
    if not url:
        parser.error("a PostgreSQL server is needed: --postgres URL")
    students = args.students or max(args.writers, args.events // EVENTS_PER_STUDENT)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    schema = f"soak_{uuid.uuid4().hex[:10]}"
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    location = f"{url}?schema={schema}"
    result = 1
    try:
        result = run(args, location, folder, students)
    finally:
        if not args.keep:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        else:
            print(f"kept: schema {schema}")
        if args.dir is None and result == 0 and not args.keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"kept: folder {folder} (the processes' logs are there)")
    return result


def run(args: argparse.Namespace, location: str, folder: Path, students: int) -> int:
    """Start every process, write, wait, stop, check; 0 when every check holds."""
    from timeline.store import TimelineStore

    read_db = folder / "read.db"
    sink_path = folder / "alerts.jsonl"
    sink = f"jsonl:{sink_path}"
    feed_token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "TIMELINE_DB": location,
        "TIMELINE_READ_DB": str(read_db),
        "TIMELINE_FEED_TOKENS": f"soak:{feed_token}:registrar|housing",
        "TIMELINE_STAFF_TOKENS": f"staff:{secrets.token_urlsafe(24)}",
        "TIMELINE_SESSION_SECRET": secrets.token_urlsafe(48),
    }
    with TimelineStore.open(location):
        pass  # the tables, made once before the APIs start together
    print(
        f"soak: {args.events:,} events of {students:,} students, {args.writers} writers, "
        f"{args.apis} API processes, batches of {args.batch}; work folder {folder}",
        flush=True,
    )
    logs = folder
    processes: dict[str, subprocess.Popen] = {}

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("w")
        process = subprocess.Popen(argv, env=env, cwd=folder, stdout=log, stderr=log)
        processes[name] = process
        return process

    ports = free_ports(args.apis)
    checks: list[tuple[str, bool]] = []
    figures: dict[str, Any] = {}
    try:
        for port in ports:
            start(f"api-{port}", [TIMELINE, "serve", "--host", "127.0.0.1", "--port", str(port)])
        for port in ports:
            wait_until_serving(port, processes[f"api-{port}"])
        start("follower", [TIMELINE, "follow", "--interval", "0.5"])
        sched = [TIMELINE, "-v", "scheduler", "--at", "08:00", "--sink", sink, "--run-now"]
        start("scheduler", sched)
        # Both up before the first write: they run all along.
        wait_for_log("follower", "following from position", processes["follower"], logs)
        wait_for_log("scheduler", "the daily job", processes["scheduler"], logs)
        spawn = multiprocessing.get_context("spawn")
        go, results = spawn.Event(), spawn.Queue()
        share, extra = divmod(args.events, args.writers)
        people, more = divmod(students, args.writers)
        writers = [
            spawn.Process(
                target=write,
                args=(
                    w,
                    share + (1 if w < extra else 0),
                    people + (1 if w < more else 0),
                    args.batch,
                    args.seed,
                    ports,
                    feed_token,
                    go,
                    results,
                ),
                daemon=True,  # ended with this process, should it fail
            )
            for w in range(args.writers)
        ]
        for writer in writers:
            writer.start()
        days = [date(2019, 3, 1) + timedelta(days=61 * k) for k in range(args.alert_days)]
        writers_done = spawn.Event()
        emitted = spawn.Queue()
        emitting = spawn.Process(
            target=emitter, args=(days, env, sink, str(logs), writers_done, emitted), daemon=True
        )
        print("writers generating their feeds ...", flush=True)
        for _ in writers:  # each says when its feed is ready, then waits for the start
            results.get(timeout=1800)
        print("writing ...", flush=True)
        cpu_at_start = {name: process_cpu(p.pid) for name, p in processes.items()}
        load_at_start = os.getloadavg()[0]
        began = time.monotonic()
        go.set()
        emitting.start()
        # Each writer's figures when it ends (bounded: a stuck run stops by itself).
        reports = [results.get(timeout=7200) for _ in writers]
        finished = time.monotonic()
        load_at_end = os.getloadavg()[0]
        cpu = {name: process_cpu(p.pid) - cpu_at_start[name] for name, p in processes.items()}
        for writer in writers:
            writer.join()
        write_seconds = finished - began
        writers_done.set()
        sent = sum(r["sent"] for r in reports)
        figures |= {
            "sent": sent,
            "accepted (API answers)": sum(r["accepted"] for r in reports),
            "requests": sum(r["requests"] for r in reports),
            "failed requests": sum(r["failures"] for r in reports),
            "write phase (s)": round(write_seconds, 1),
            "throughput (events/s)": round(sent / write_seconds),
        }
        latencies = [x for r in reports for x in r["latencies"]]
        figures["POST latency p50 / p99 (ms)"] = (
            f"{percentile(latencies, 0.5) * 1000:.0f} / {percentile(latencies, 0.99) * 1000:.0f}"
        )
        with TimelineStore.open(location) as store:
            last = store.max_position()
        figures["follower behind at the last write (notifications)"] = last - tracked_position(
            read_db
        )
        deadline = time.monotonic() + 600
        while tracked_position(read_db) < last:
            if time.monotonic() > deadline or processes["follower"].poll() is not None:
                break
            time.sleep(0.1)
        figures["follower lag after the last write (s)"] = round(time.monotonic() - finished, 1)
        figures["notifications followed"] = tracked_position(read_db)
        checks.append(
            (
                "the follower reached the store's last notification",
                tracked_position(read_db) == last,
            )
        )
        emitter_report = emitted.get(timeout=900)
        emitting.join(timeout=60)
        apis = sum(v for k, v in cpu.items() if k.startswith("api-"))
        writers_cpu = sum(r["cpu"] for r in reports)
        figures["emitter runs during the writes"] = emitter_report["runs"]
        figures["CPU s in the write phase"] = (
            f"APIs {apis:.1f}, follower {cpu['follower']:.1f}, scheduler "
            f"{cpu['scheduler']:.1f}, writers {writers_cpu:.1f}, emitter runs "
            f"{emitter_report['cpu']:.1f} (PostgreSQL not counted)"
        )
        figures["load average at start / end of writes"] = (
            f"{load_at_start:.1f} / {load_at_end:.1f} (2 cores; the machine may be shared)"
        )
        # Every day once more with all events stored: only alerts not yet emitted go out.
        emit_days(days, env, sink, logs, None)
        for name, process in processes.items():
            code = stop(process, name)
            if name.startswith("api-"):
                # uvicorn shuts down, then ends itself with the signal it was sent.
                clean = "Finished server process" in (logs / f"{name}.log").read_text("utf-8")
                checks.append((f"{name} shut down cleanly on SIGTERM", clean and code in (0, -15)))
            else:
                checks.append((f"{name} exited 0 on SIGTERM", code == 0))
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    # 1. stored = sent
    facts, keys, stored_students = stored_counts(location)
    figures |= {"stored facts": facts, "feed keys": keys, "students stored": stored_students}
    checks.append(
        (
            "every request answered 200 with all its events accepted",
            figures["failed requests"] == 0 and figures["accepted (API answers)"] == sent,
        )
    )
    checks.append(("stored = sent (facts in the store)", facts == sent))
    checks.append(("stored = sent (feed keys)", keys == sent))

    # 2. read model = rebuild
    rebuilt = folder / "rebuilt.db"
    t0 = time.monotonic()
    done = subprocess.run(
        [TIMELINE, "rebuild", "--read-db", str(rebuilt)], env=env, capture_output=True, text=True
    )
    figures["rebuild for the comparison (s)"] = round(time.monotonic() - t0, 1)
    checks.append(("timeline rebuild exited 0", done.returncode == 0))
    followed, fresh = table_rows(read_db), table_rows(rebuilt)
    for table in READ_MODEL_QUERIES:
        same = followed[table] == fresh[table]
        figures[f"rows {table}"] = sum(followed[table].values())
        checks.append((f"read model = rebuild: {table}", same))
        if not same:
            extra_rows = followed[table] - fresh[table]
            missing = fresh[table] - followed[table]
            print(f"{table}: {sum(extra_rows.values())} extra, {sum(missing.values())} missing")

    # 3. no alert key twice
    keys_in_sink = (
        collections.Counter(
            json.loads(line)["key"] for line in sink_path.read_text("utf-8").splitlines() if line
        )
        if sink_path.exists()
        else collections.Counter()
    )
    with store_connection(location) as conn:
        schema = location.split("schema=", 1)[1]
        sent_keys = {
            row[0]
            for row in conn.execute(
                f"SELECT key FROM \"{schema}\".alert_outbox WHERE state = 'sent'"
            )
        }
    twice = [k for k, n in keys_in_sink.items() if n > 1]
    figures |= {"alerts in the sink": sum(keys_in_sink.values()), "alert keys twice": len(twice)}
    figures["emitter days"] = len(days)
    checks.append(("no alert key twice in the sink", not twice))
    checks.append(
        ("the sink holds exactly the keys the outbox sent", set(keys_in_sink) == sent_keys)
    )
    checks.append(("some alerts were emitted", bool(keys_in_sink)))

    width = max(len(k) for k in figures)
    print()
    for name, value in figures.items():
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"  {name:<{width}}  {shown}")
    print()
    for name, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'}  {name}")
    failed = [name for name, ok in checks if not ok]
    print(f"\nchecks: {len(checks) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
