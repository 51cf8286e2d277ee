"""Read-side benchmark: `show` latency, read-model rebuild, population and alert queries.

    .venv/bin/python -m benchmarks.projections [--students 100000] [--events 800000] [--dir D]

Builds (or reuses, with --dir) a SQLite store of the synthetic registrar feed of
`benchmarks.ingest`, then measures in one process:

1. `show`: load one student's stream and evaluate the pure view, p50/p99 over a sample
   (target p99 ≤ 5 ms); then the same while another process ingests a feed of new
   students into the same store (one transaction per batch, as `ingest --partial` does),
   on SQLite and, with a PostgreSQL server (`--postgres URL`, else
   `TIMELINE_BENCH_POSTGRES_URL` or `TIMELINE_TEST_POSTGRES_URL`), on a PostgreSQL store
   of the same feed measured quiet and under the same load (its schema dropped after);
2. rebuild of the read models from the notification log, against the bare read of the
   same log in the same run (target ratio ≥ 0.25), with its two unavoidable parts timed
   alone: reading the log as facts (`TimelineStore.streams`) and deriving each student
   once (`derive`), per event;
3. population queries over every student: overdue tasks on a day (target ≤ 200 ms), every
   accrued fine (first page of 100 ≤ 50 ms, whole list as JSON ≤ 1 s), counts, and the
   same questions as known at a past moment (the record time of the middle of the log);
4. one day's alerts: computing them from the read models and writing them to a fresh
   outbox (target ≤ 2 s).

With `--baseline-ref REF` the read model of that git revision (`projections/readmodel.py`
as it was) is rebuilt and queried side by side in the same run, for before/after ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.ingest import PostgresSchemas, write_feed
from projections.engine import DerivationError, derive, view
from projections.readmodel import HORIZON, ReadModel
from scheduler.alerts import milestones_on
from scheduler.outbox import Outbox, OutboxDB
from timeline.aggregate import student_uuid
from timeline.ingest import ingest_file
from timeline.store import TimelineStore

AS_OF = date(2025, 3, 1)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of the values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def baseline_module(ref: str) -> ModuleType:
    """`projections/readmodel.py` as it was at git revision `ref`, imported under its own name."""
    source = subprocess.run(
        ["git", "show", f"{ref}:projections/readmodel.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="baseline-")) / "baseline_readmodel.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_readmodel", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_readmodel"] = module
    spec.loader.exec_module(module)
    return module


def timed(query: Callable[[], Any], runs: int = 5) -> tuple[float, Any]:
    """The median wall time of `query` in ms over `runs` runs, and its last result."""
    timings = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = query()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), result


def build_store(folder: Path, students: int, events: int) -> str:
    """The store file, created from a generated feed unless it already exists."""
    db = folder / "timeline.db"
    if db.exists():
        return str(db)
    feed = folder / "feed.jsonl"
    print(f"generating {events:,} events over {students:,} students …", flush=True)
    write_feed(feed, events, students, seed=7)
    started = time.perf_counter()
    with TimelineStore.open(str(db)) as store:
        report = ingest_file(store, feed, partial=True)
    print(f"ingested {report.accepted:,} events in {time.perf_counter() - started:.1f} s")
    return str(db)


def _load_ingest(location: str, feed: str, started: Any) -> int:
    """The load: ingest `feed` into the store at `location` (in a child process)."""
    with TimelineStore.open(location) as store:
        started.set()
        return ingest_file(store, Path(feed), partial=True).accepted


def bare_reader(store: TimelineStore, location: str) -> Callable[[str], int]:
    """A student's rows by plain SQL on a connection of its own (no pool, no decoding)."""
    table = store.recorder.events_table_name
    if store.config.is_postgres:
        import psycopg

        conn: Any = psycopg.connect(location.split("?")[0], autocommit=True)
        schema = store.recorder.datastore.schema
        query = (
            f'SELECT originator_version, state FROM "{schema}".{table} '
            "WHERE originator_id = %s ORDER BY originator_version"
        )
        return lambda sid: len(conn.execute(query, (student_uuid(sid),), prepare=True).fetchall())
    db = sqlite3.connect(location, isolation_level=None, check_same_thread=False)
    query = (
        f"SELECT originator_version, state FROM {table} "
        "WHERE originator_id = ? ORDER BY originator_version"
    )
    return lambda sid: len(db.execute(query, (student_uuid(sid).hex,)).fetchall())


def show_times(
    store: TimelineStore,
    sample: list[str],
    keep_going: Callable[[], bool],
    bare: Callable[[str], int],
) -> tuple[list[float], list[float]]:
    """`show` latencies in ms, and those of the bare read of the same rows (the floor):
    the sample once, then again in turn while `keep_going()`."""
    latencies: list[float] = []
    floor: list[float] = []
    n = 0
    while n < len(sample) or keep_going():
        sid = sample[n % len(sample)]
        started = time.perf_counter()
        view(store.stream(sid), AS_OF, student_id=sid)
        between = time.perf_counter()
        if not bare(sid):
            raise RuntimeError(f"the bare read found no rows for {sid}")
        floor.append((time.perf_counter() - between) * 1000)
        latencies.append((between - started) * 1000)
        n += 1
    return latencies, floor


def show_under_load(location: str, sample: list[str], load_feed: Path) -> dict[str, Any]:
    """`show` latencies on a quiet store, then while another process ingests `load_feed`."""
    context = multiprocessing.get_context("spawn")
    with TimelineStore.open(location) as store:
        view(store.stream(sample[0]), AS_OF)  # warm the calendar, imports, connections
        bare = bare_reader(store, location)
        quiet, quiet_floor = show_times(store, sample, lambda: False, bare)
        started = context.Event()
        loader = context.Process(target=_load_ingest, args=(location, str(load_feed), started))
        loader.start()
        try:
            if not started.wait(120):
                raise RuntimeError("the load process did not start")
            began = time.perf_counter()
            loaded, loaded_floor = show_times(store, sample, loader.is_alive, bare)
            seconds = time.perf_counter() - began
        finally:
            loader.join()
        if loader.exitcode != 0:
            raise RuntimeError(f"the load process failed ({loader.exitcode})")
    return {
        "quiet": quiet,
        "loaded": loaded,
        "quiet floor": quiet_floor,
        "loaded floor": loaded_floor,
        "seconds": seconds,
    }


def latency_text(values: list[float]) -> str:
    """p50 / p99 / max of latencies in ms, and how many."""
    return (
        f"{statistics.median(values):.2f} / {percentile(values, 0.99):.2f} / "
        f"{max(values):.1f} ms ({len(values):,} shows)"
    )


def build_postgres_store(url: str, schema: str, folder: Path) -> str:
    """A PostgreSQL store (in a fresh schema) of the same feed as the SQLite one."""
    location = f"{url}?schema={schema}"
    started = time.perf_counter()
    with TimelineStore.open(location) as store:
        report = ingest_file(store, folder / "feed.jsonl", partial=True)
    print(
        f"PostgreSQL: ingested {report.accepted:,} events in {time.perf_counter() - started:.1f} s"
    )
    return location


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=800_000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None, help="keep/reuse the store here")
    parser.add_argument("--baseline-ref", default=None, help="git revision to compare with")
    parser.add_argument("--skip-show", action="store_true", help="skip the show latency")
    parser.add_argument(
        "--show-only", action="store_true", help="only the show latencies (quiet and under load)"
    )
    parser.add_argument(
        "--load-events", type=int, default=100_000, help="events of the load ingest (new students)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TIMELINE_BENCH_POSTGRES_URL")
        or os.environ.get("TIMELINE_TEST_POSTGRES_URL"),
        help="PostgreSQL server for the show figures on PostgreSQL (none: skipped)",
    )
    args = parser.parse_args(argv)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-projections-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = build_store(folder, args.students, args.events)
    results: list[tuple[str, str, str]] = []
    with TimelineStore.open(db) as store:
        total = store.max_position()
        # 1. show latency
        rng = random.Random(1)
        ids = [f"S{n:07d}" for n in range(args.students)]
        sample = rng.sample(ids, min(args.sample, len(ids)))
        view(store.stream(sample[0]), AS_OF)  # warm the calendar and imports
        if not args.skip_show:
            latencies = []
            for sid in sample:
                started = time.perf_counter()
                view(store.stream(sid), AS_OF, student_id=sid)
                latencies.append((time.perf_counter() - started) * 1000)
            p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
            results.append(("show p50 / p99", f"{p50:.2f} / {p99:.2f} ms", "p99 ≤ 5 ms"))
            results.extend(show_figures(args, folder, db, sample))
        if args.show_only:
            print_results(results, total, args.students, folder)
            return 0

        # 2. rebuild vs bare read of the same log
        started = time.perf_counter()
        position = 0
        middle = None
        while True:
            batch = store.notifications(position, 500)
            if not batch:
                break
            position = batch[-1].id
            if middle is None and position >= total // 2:
                middle = store.decode(batch[-1]).timestamp  # a record moment mid-log
        bare = time.perf_counter() - started
        # What a rebuild cannot avoid: reading the log as facts, and deriving each student
        # once. Their sum against the bare read bounds what any rebuild can reach.
        # One student at a time, as a rebuild would (holding them all costs GC time).
        read_facts = derived = 0.0
        facts_count = 0
        clock = time.perf_counter
        started = clock()
        for stream in store.streams(total):
            between = clock()
            read_facts += between - started
            facts_count += len(stream.facts)
            # A failing student costs its time like the others (the read model records it).
            with contextlib.suppress(DerivationError):
                derive(stream.facts, HORIZON, None, student_id=stream.student_id)
            started = clock()
            derived += started - between
        read_facts += clock() - started
        read_db = folder / "read.db"
        read_db.unlink(missing_ok=True)
        model = ReadModel(read_db)
        started = time.perf_counter()
        model.rebuild(store)
        rebuild = time.perf_counter() - started
        results.append(("bare log read", f"{total / bare:,.0f} events/s ({bare:.1f} s)", ""))
        results.append(
            (
                "log → facts (streams)",
                f"{read_facts * 1e6 / total:.1f} µs/event ({bare / read_facts:.2f} of bare)",
                "",
            )
        )
        results.append(
            ("derive, each student once", f"{derived * 1e6 / max(facts_count, 1):.1f} µs/fact", "")
        )
        results.append(
            ("read + derive / bare", f"{bare / (read_facts + derived):.2f}", "(rebuild's ceiling)")
        )
        results.append(
            (
                "read-model rebuild",
                f"{total / rebuild:,.0f} events/s ({rebuild:.1f} s, "
                f"{rebuild * 1e6 / total:.1f} µs/event)",
                "linear",
            )
        )
        results.append(("rebuild / bare", f"{bare / rebuild:.3f}", "≥ 0.25"))
        old = None
        if args.baseline_ref:
            baseline = baseline_module(args.baseline_ref)
            old_db = folder / "read-baseline.db"
            old_db.unlink(missing_ok=True)
            old = baseline.ReadModel(old_db)
            started = time.perf_counter()
            old.rebuild(store)
            old_rebuild = time.perf_counter() - started
            results.append(
                (
                    f"baseline ({args.baseline_ref}) rebuild / bare",
                    f"{bare / old_rebuild:.3f} ({old_rebuild * 1e6 / total:.1f} µs/event; "
                    f"now {old_rebuild / rebuild:.2f}× faster)",
                    "",
                )
            )
        counts = {
            table: model.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("rm_tasks", "rm_fines", "rm_payments", "rm_overstays", "rm_changes")
        }
        results.append(
            ("rows (bitemporal)", ", ".join(f"{t[3:]} {n:,}" for t, n in counts.items()), "")
        )
        if old is not None:
            old_counts = {
                table: old.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("rm_tasks", "rm_fines", "rm_payments", "rm_overstays")
            }
            results.append(
                ("rows (baseline)", ", ".join(f"{t[3:]} {n:,}" for t, n in old_counts.items()), "")
            )

        # 3. population queries: JSON built by SQLite (what the CLI and the API send)
        def population(label: str, query: Callable[[], Any], target: str) -> None:
            ms, rows = timed(query)
            if isinstance(rows, str):
                size = f"{rows.count('},{') + 1 if len(rows) > 2 else 0:,} rows, "
                size += f"{len(rows.encode()) / 1e6:.1f} MB"
            else:
                size = f"{rows if isinstance(rows, int) else len(rows):,}"
            results.append((f"population: {label}", f"{ms:.0f} ms ({size})", target))

        for when, known in (("now", None), ("known at mid-log", middle)):
            population(
                f"tasks overdue, {when}",
                lambda k=known: list(model.task_rows(AS_OF, ["overdue"], known_at=k)),
                "≤ 200 ms",
            )
            population(
                f"fines accrued, first page of 100, {when}",
                lambda k=known: list(model.fine_rows(AS_OF, ["accrued"], known_at=k, limit=100)),
                "≤ 50 ms",
            )
            population(
                f"fines accrued, whole list as JSON, {when}",
                lambda k=known: (
                    "[" + ",".join(model.fine_rows(AS_OF, ["accrued"], known_at=k)) + "]"
                ),
                "≤ 1 s",
            )
            population(
                f"fines accrued, count, {when}",
                lambda k=known: model.count_fines(AS_OF, ["accrued"], known_at=k),
                "",
            )
        population(
            "fines, every status, whole list as JSON",
            lambda: "[" + ",".join(model.fine_rows(AS_OF)) + "]",
            "≤ 1 s",
        )
        if old is not None:
            population(
                "baseline: tasks overdue (Python rows)",
                lambda: old.tasks_on(AS_OF, ["overdue"]),
                "",
            )
            population(
                "baseline: fines accrued (Python rows)",
                lambda: old.fines_on(AS_OF, ["accrued"]),
                "",
            )
            if hasattr(old, "fine_rows"):  # a revision whose SQLite builds the JSON
                for when, known in (("now", None), ("known at mid-log", middle)):
                    population(
                        f"baseline: tasks overdue, {when}",
                        lambda k=known: list(old.task_rows(AS_OF, ["overdue"], known_at=k)),
                        "",
                    )
                    population(
                        f"baseline: fines accrued, whole list as JSON, {when}",
                        lambda k=known: (
                            "[" + ",".join(old.fine_rows(AS_OF, ["accrued"], known_at=k)) + "]"
                        ),
                        "",
                    )
            old.close()

        # 4. one day's alerts, computed and written to a fresh outbox
        outbox = Outbox(OutboxDB(str(folder / "outbox.db")))
        started = time.perf_counter()
        found = milestones_on(model, AS_OF)
        outbox.enqueue([(m.day, m.alert) for m in found], now=datetime.now(UTC))
        alerts = time.perf_counter() - started
        results.append(
            ("one day's alerts", f"{alerts * 1000:.0f} ms ({len(found):,} alerts)", "≤ 2 s")
        )
        outbox.db.close()
        model.close()
    print_results(results, total, args.students, folder)
    return 0


def show_figures(
    args: argparse.Namespace, folder: Path, db: str, sample: list[str]
) -> list[tuple[str, str, str]]:
    """`show` p50/p99/max quiet and while another process ingests, SQLite and PostgreSQL."""
    load_feed = folder / "load.jsonl"
    if not load_feed.exists():  # new students ("L…"): every record is written
        write_feed(load_feed, args.load_events, max(1, args.load_events // 8), 11, prefix="L")
    rows: list[tuple[str, str, str]] = []
    # The load writes: measure on a copy of the SQLite store, so that it stays as built.
    scratch = folder / "show-under-load.db"
    scratch.unlink(missing_ok=True)
    with (
        contextlib.closing(sqlite3.connect(db)) as source,
        contextlib.closing(sqlite3.connect(scratch)) as copy,
    ):
        source.backup(copy)
    stores = [("SQLite", str(scratch))]
    schemas = PostgresSchemas(args.postgres.split("?")[0]) if args.postgres else None
    try:
        if schemas is not None:
            url = args.postgres.split("?")[0]
            stores.append(("PostgreSQL", build_postgres_store(url, schemas.new(), folder)))
        for name, location in stores:
            print(f"show under load, {name} …", flush=True)
            measured = show_under_load(location, sample, load_feed)
            rows.append(
                (f"show p50 / p99 / max, quiet, {name}", latency_text(measured["quiet"]), "")
            )
            rows.append(
                (
                    f"  bare read of the rows, quiet, {name}",
                    latency_text(measured["quiet floor"]),
                    "",
                )
            )
            rows.append(
                (
                    f"show p50 / p99 / max, ingest running, {name}",
                    latency_text(measured["loaded"])
                    + f", load {args.load_events / measured['seconds']:,.0f} events/s",
                    "p99 ≤ 5 ms",
                )
            )
            rows.append(
                (
                    f"  bare read of the rows, ingest running, {name}",
                    latency_text(measured["loaded floor"]),
                    "(the floor)",
                )
            )
    finally:
        if schemas is not None:
            schemas.drop_all()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    return rows


def print_results(
    results: list[tuple[str, str, str]], total: int, students: int, folder: Path
) -> None:
    """The table of figures."""
    print(f"\nstore: {total:,} notifications, {students:,} students ({folder})")
    width = max(len(r[0]) for r in results)
    for name, value, target in results:
        print(f"{name:<{width}}  {value:<44} {target}")


if __name__ == "__main__":
    raise SystemExit(main())
