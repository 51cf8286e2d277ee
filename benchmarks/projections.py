"""Read-side benchmark: `show` latency, read-model rebuild, population and alert queries.

    .venv/bin/python -m benchmarks.projections [--students 100000] [--events 800000] [--dir D]

Builds (or reuses, with --dir) a SQLite store of the synthetic registrar feed of
`benchmarks.ingest`, then measures in one process:

1. `show`: load one student's stream and evaluate the pure view, p50/p99 over a sample
   (target p99 ≤ 5 ms);
2. rebuild of the read models from the notification log, against the bare read of the
   same log in the same run (target ratio ≥ 0.25), with its two unavoidable parts timed
   alone: reading the log as facts (`TimelineStore.streams`) and deriving each student
   once (`derive`), per event;
3. population queries over every student: overdue tasks and accrued fines on a day
   (target ≤ 200 ms);
4. one day's alerts: computing them from the read models and writing them to a fresh
   outbox (target ≤ 2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from benchmarks.ingest import write_feed
from projections.engine import DerivationError, derive, view
from projections.readmodel import HORIZON, ReadModel
from scheduler.alerts import milestones_on
from scheduler.outbox import Outbox, OutboxDB
from timeline.ingest import ingest_file
from timeline.store import TimelineStore

AS_OF = date(2025, 3, 1)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of the values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=800_000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None, help="keep/reuse the store here")
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
        latencies = []
        for sid in sample:
            started = time.perf_counter()
            view(store.stream(sid), AS_OF, student_id=sid)
            latencies.append((time.perf_counter() - started) * 1000)
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        results.append(("show p50 / p99", f"{p50:.2f} / {p99:.2f} ms", "p99 ≤ 5 ms"))

        # 2. rebuild vs bare read of the same log
        started = time.perf_counter()
        position = 0
        while True:
            batch = store.notifications(position, 500)
            if not batch:
                break
            position = batch[-1].id
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
        model = ReadModel(folder / "read.db")
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
            ("read-model rebuild", f"{total / rebuild:,.0f} events/s ({rebuild:.1f} s)", "")
        )
        results.append(("rebuild / bare", f"{bare / rebuild:.2f}", "≥ 0.25"))

        # 3. population queries
        for label, query in (
            ("tasks overdue", lambda: model.tasks_on(AS_OF, ["overdue"])),
            ("fines accrued", lambda: model.fines_on(AS_OF, ["accrued"])),
        ):
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                rows = query()
                timings.append((time.perf_counter() - started) * 1000)
            results.append(
                (
                    f"population: {label}",
                    f"{statistics.median(timings):.0f} ms ({len(rows):,} rows)",
                    "≤ 200 ms",
                )
            )

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
    print(f"\nstore: {total:,} notifications, {args.students:,} students ({folder})")
    width = max(len(r[0]) for r in results)
    for name, value, target in results:
        print(f"{name:<{width}}  {value:<36} {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
