"""Alert delivery benchmark: outbox → JSON Lines file, alerts per second.

    .venv/bin/python -m benchmarks.alerts [--alerts 20000] [--postgres URL]

Enqueues that many synthetic alerts into a fresh outbox (SQLite in a temporary directory,
or a fresh schema of the PostgreSQL database at URL, dropped afterwards), then delivers
them to a fresh JSONL file, timing each phase; then delivers again with nothing pending
(the cost of a re-run). Issue 9's target: ≥ 5,000 JSONL alerts/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

from scheduler.alert import Alert, Message
from scheduler.outbox import Outbox, OutboxDB
from scheduler.sinks import JsonlSink

DAY = date(2024, 6, 1)


def synthetic(n: int) -> list[tuple[date, Alert]]:
    """n distinct alerts on DAY, with bilingual text of a realistic length."""
    return [
        (
            DAY,
            Alert(
                key=f"S{i:07d}:apply_arc:S{i:07d}-entered:due_today:2024-06-01",
                student_id=f"S{i:07d}",
                task="apply_arc",
                milestone="due_today",
                due_on=DAY,
                rule="R-ARC-ENTRY",
                message=Message(
                    zh="今天是申請居留證的最後一天（2024-06-01）。請至移民署線上申辦系統申請。",
                    en="Today (2024-06-01) is the last day to apply for your ARC online.",
                ),
            ),
        )
        for i in range(n)
    ]


def measure(location: str, out: Path, n: int) -> None:
    """Print the rate of each phase for one outbox location."""
    alerts = synthetic(n)
    db = OutboxDB(location)
    try:
        outbox = Outbox(db)
        started = time.perf_counter()
        outbox.enqueue(alerts, now=datetime.now(UTC))
        enqueued = time.perf_counter() - started
        started = time.perf_counter()
        report = outbox.deliver(JsonlSink(out))
        delivered = time.perf_counter() - started
        started = time.perf_counter()
        outbox.deliver(JsonlSink(out))
        rerun = time.perf_counter() - started
    finally:
        db.close()
    lines = sum(1 for _ in out.open("rb"))
    print(f"enqueue  {n} alerts: {enqueued:7.2f} s  {n / enqueued:9,.0f} alerts/s")
    print(f"deliver  {report.sent} alerts: {delivered:7.2f} s  {n / delivered:9,.0f} alerts/s")
    print(f"re-run (nothing pending): {rerun:.3f} s; file has {lines} lines")


def main() -> None:
    """Run the benchmark on SQLite, or on PostgreSQL when --postgres is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=20000)
    parser.add_argument("--postgres", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "alerts.jsonl"
        if not args.postgres:
            measure(str(Path(tmp) / "outbox.db"), out, args.alerts)
            return
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            measure(f"{args.postgres}?schema={schema}", out, args.alerts)
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
