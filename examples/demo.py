"""The demo behind `make demo`: ingest the example feed, then show every example student.

    python -m examples.demo --db timeline.db [--as-of 2025-06-30]

Ingests `examples/feed.jsonl` (a second run reports everything as duplicates), then for
each student prints the stored history and the view as of a fixed day (so the output is
stable), and finally the population of overdue tasks on that day. The history table and
the population table are the CLI's own (`timeline history`, `timeline tasks`), run
in-process; the view is `projections.engine.view` rendered by `print_view`.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from projections.engine import view
from projections.render import print_view
from timeline.cli import main as timeline_cli
from timeline.ingest import ingest_file
from timeline.settings import load_settings
from timeline.store import TimelineStore

FEED = Path(__file__).resolve().parent / "feed.jsonl"
DEMO_DAY = date(2025, 6, 30)


def feed_students(feed: Path = FEED) -> list[str]:
    """The student numbers in the feed, sorted."""
    lines = feed.read_text("utf-8").splitlines()
    return sorted({json.loads(line)["student_id"] for line in lines if line.strip()})


def timeline(*args: str) -> None:
    """Run a `timeline` CLI command in this process (same rendering as the shell)."""
    timeline_cli.main(list(args), prog_name="timeline", standalone_mode=False)


def run(db: str, as_of: date) -> None:
    """Ingest the feed, then print each student's history and view, then overdue tasks."""
    console = Console()
    settings = load_settings(db=db)  # the environment's settings, as the CLI reads them
    rules = settings.rulebook()
    with TimelineStore.open(settings.store_location, settings.secret("cipher_key")) as store:
        report = ingest_file(store, FEED)
        console.print_json(data=report.as_json())
        for student in feed_students():
            console.print(Rule(f"{student} as of {as_of}"))
            timeline("--db", db, "history", student)
            print_view(view(store.stream(student), as_of, None, rules, student_id=student))
    console.print(Rule(f"Overdue tasks on {as_of}"))
    timeline("--db", db, "tasks", "--as-of", as_of.isoformat(), "--status", "overdue")


def main(argv: list[str] | None = None) -> None:
    """Parse `--db` and `--as-of`, then run the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo",
        description="Ingest the example feed, then show every example student on a fixed day.",
    )
    parser.add_argument("--db", default="timeline.db", help="SQLite file or postgresql:// URL")
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=DEMO_DAY,
        help=f"the day to evaluate (default {DEMO_DAY}, for a stable output)",
    )
    args = parser.parse_args(argv)
    run(args.db, args.as_of)


if __name__ == "__main__":
    main()
