"""The `timeline` command line (SPEC §4). Thin: parse options, call the core, print."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from timeline.contract import json_schema
from timeline.errors import StorageConfigError, TimelineError
from timeline.history import history_entries
from timeline.ingest import ingest_file
from timeline.store import TimelineStore

F = TypeVar("F", bound=Callable[..., Any])


class UsageFailure(click.ClickException):
    """A usage error: exit code 2."""

    exit_code = 2


def db_option(func: F) -> F:
    """`--db PATH|URL` on every command (falls back to TIMELINE_DB, then ./timeline.db)."""
    return click.option(
        "--db",
        "db",
        default=None,
        help="SQLite file or postgresql:// URL (default: $TIMELINE_DB or ./timeline.db).",
    )(func)


def open_store(ctx: click.Context, db: str | None) -> TimelineStore:
    """Open the store named on this command, on the group, or in the environment."""
    location = db or (ctx.obj or {}).get("db")
    try:
        store = TimelineStore.open(location)
    except StorageConfigError as exc:
        raise UsageFailure(str(exc)) from exc
    ctx.call_on_close(store.close)
    return store


def print_json(value: Any) -> None:
    """Print JSON (UTF-8, not escaped) to stdout."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@db_option
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.pass_context
def main(ctx: click.Context, db: str | None, verbose: bool) -> None:
    """Residency timeline: ARC status, due tasks and fines of foreign students in Taiwan."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.ensure_object(dict)
    ctx.obj["db"] = db


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="Input format (default: from the file name; .csv is CSV, else JSON Lines).",
)
@click.option(
    "--partial", is_flag=True, help="Store the valid events and report the rejected ones."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=2000,
    show_default=True,
    help="Events per transaction.",
)
@db_option
@click.pass_context
def ingest(
    ctx: click.Context, file: Path, fmt: str | None, partial: bool, batch_size: int, db: str | None
) -> None:
    """Ingest a feed file; prints {"accepted", "duplicates", "rejected"}; exit 1 if any rejected."""
    store = open_store(ctx, db)
    total = file.stat().st_size
    if sys.stderr.isatty() and total > 0:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        passes = 1 if partial else 2
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task("checking" if passes == 2 else "storing", total=total * passes)
            report = ingest_file(
                store,
                file,
                fmt=fmt,
                partial=partial,
                batch_size=batch_size,
                on_bytes=lambda n: progress.advance(task, n),
            )
    else:
        report = ingest_file(store, file, fmt=fmt, partial=partial, batch_size=batch_size)
    print_json(report.as_json())
    ctx.exit(0 if report.ok else 1)


@main.command()
@click.argument("student")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of event objects.")
@db_option
@click.pass_context
def history(ctx: click.Context, student: str, as_json: bool, db: str | None) -> None:
    """The stored events of STUDENT with their record time and retraction marks."""
    store = open_store(ctx, db)
    entries = history_entries(store.stream(student))
    if as_json:
        print_json(entries)
        return
    console = Console()
    if not entries:
        console.print(f"No events stored for student {student}.")
        return
    table = Table(title=f"History of {student}", show_lines=False)
    for column in (
        "occurred_on",
        "type",
        "details",
        "source / event_id",
        "recorded_at",
        "retracted",
    ):
        table.add_column(column)
    envelope = {
        "event_id",
        "source",
        "student_id",
        "type",
        "occurred_on",
        "recorded_at",
        "retracted",
        "retracted_at",
        "retracted_by",
    }
    for entry in entries:
        details = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in envelope)
        retracted = (
            f"by {entry['retracted_by']} at {entry['retracted_at'][:19]}"
            if entry["retracted"]
            else ""
        )
        style = "strike dim" if entry["retracted"] else None
        table.add_row(
            entry["occurred_on"],
            entry["type"],
            details,
            f"{entry['source']} / {entry['event_id']}",
            entry["recorded_at"][:19],
            retracted,
            style=style,
        )
    console.print(table)


@main.command()
def schema() -> None:
    """Print the JSON Schema of one feed event."""
    print_json(json_schema())


def run() -> None:
    """Entry point that maps core errors to exit code 2 with a clear message."""
    try:
        main(standalone_mode=True)
    except TimelineError as exc:  # pragma: no cover - click handles most
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
