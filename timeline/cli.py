"""The `timeline` command line (SPEC §4). Thin: parse options, call the core, print."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import logging.config
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import click
from rich.console import Console
from rich.table import Table

from timeline.clock import parse_day, parse_known_at, system_clock, taipei_today
from timeline.contract import json_schema
from timeline.errors import ContractError, StorageConfigError, TimelineError
from timeline.history import history_entries
from timeline.ingest import ENCODINGS, detect_format, ingest_stream
from timeline.store import TimelineStore

if TYPE_CHECKING:  # the write side imports the read side only lazily, at run time
    from projections.readmodel import ReadModel
    from projections.rules import RuleBook

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
    from projections.rules import rulebook_from_env

    # The one read of the rule settings: every command derives under this RuleBook.
    try:
        ctx.obj["rules"] = rulebook_from_env(os.environ)
    except ValueError as exc:
        raise UsageFailure(str(exc)) from exc


def rules_of(ctx: click.Context) -> RuleBook:
    """The RuleBook read once by the `main` group."""
    return ctx.find_root().obj["rules"]


@main.command()
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="Input format (default: from the file name; .csv is CSV, else JSON Lines).",
)
@click.option(
    "--encoding",
    type=click.Choice(list(ENCODINGS)),
    default="utf-8",
    show_default=True,
    help="Text encoding of the feed (cp950/big5: Taiwanese registrar exports).",
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
    ctx: click.Context,
    file: Path,
    fmt: str | None,
    encoding: str,
    partial: bool,
    batch_size: int,
    db: str | None,
) -> None:
    """Ingest a feed (FILE, or - for stdin); prints the summary; exit 1 if any rejected."""
    store = open_store(ctx, db)
    from_stdin = str(file) == "-"
    with contextlib.ExitStack() as stack:
        stream: BinaryIO = (
            click.get_binary_stream("stdin") if from_stdin else stack.enter_context(file.open("rb"))
        )
        # A regular file has a known size; a pipe's progress counts bytes without a total.
        total = _regular_file_size(stream)
        run = functools.partial(
            ingest_stream,
            store,
            stream,
            fmt=fmt or ("jsonl" if from_stdin else detect_format(file, None)),
            partial=partial,
            encoding=encoding,
            batch_size=batch_size,
        )
        if sys.stderr.isatty() and total != 0:
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
                task = progress.add_task(
                    "storing" if partial else "checking",
                    total=total * passes if total is not None else None,
                )
                report = run(on_bytes=lambda n: progress.advance(task, n))
        else:
            report = run()
    print_json(report.as_json())
    ctx.exit(0 if report.ok else 1)


def _regular_file_size(stream: BinaryIO) -> int | None:
    """The size of the file behind `stream`, or None for a pipe, terminal or in-memory stream."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


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
    console = Console() if sys.stdout.isatty() else Console(width=160)
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


class ParsedType(click.ParamType):
    """A value parsed by a core function; its ValueError becomes a usage error."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        """Parse or fail with a usage error."""
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DAY = ParsedType("DATE", parse_day)  # YYYY-MM-DD
MOMENT = ParsedType("TIMESTAMP", parse_known_at)  # ISO 8601, or a day (its end in Taipei)


@main.command()
@click.argument("student")
@click.option(
    "--as-of",
    "as_of",
    type=DAY,
    default=None,
    help="Valid date to evaluate (default: today in Taipei).",
)
@click.option(
    "--known-at",
    "known_at",
    type=MOMENT,
    default=None,
    help="Count only events recorded at or before this moment.",
)
@click.option(
    "--with",
    "with_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Hypothetical events (JSONL/CSV) to add, not stored.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the view as JSON (SPEC §4).")
@db_option
@click.pass_context
def show(
    ctx: click.Context,
    student: str,
    as_of: Any,
    known_at: Any,
    with_file: Path | None,
    as_json: bool,
    db: str | None,
) -> None:
    """STUDENT's ARC status, tasks and fines as of a date (as known at a moment)."""
    from projections.engine import DerivationError, view
    from projections.render import print_view
    from timeline.whatif import hypothetical_facts

    store = open_store(ctx, db)
    stream = store.stream(student)
    if with_file is not None:
        moment = known_at or system_clock()
        try:
            stream += hypothetical_facts(with_file, student, moment, len(stream) + 10_000)
        except ContractError as exc:
            raise UsageFailure("--with: " + "; ".join(exc.messages)) from exc
    if not stream:
        click.echo(f"error: no events stored for student {student!r}", err=True)
        ctx.exit(1)
    try:
        result = view(stream, as_of or taipei_today(), known_at, rules_of(ctx), student_id=student)
    except DerivationError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    else:
        print_view(result)


def read_model_path(store: TimelineStore, read_db: str | None) -> str:
    """`--read-db`, else TIMELINE_READ_DB, else next to the events."""
    from projections.readmodel import default_read_db

    return read_db or os.environ.get("TIMELINE_READ_DB") or default_read_db(store.config.location)


def open_read_model(ctx: click.Context, store: TimelineStore, read_db: str | None) -> ReadModel:
    """The read models under the rules in force, brought up to date with the event store."""
    from projections.readmodel import ReadModel

    model = ReadModel(read_model_path(store, read_db), rules_of(ctx))
    ctx.call_on_close(model.close)
    if model.rebuild_reason:
        # Said before the slow part, so a user knows why this command takes a while.
        click.echo(model.rebuild_reason, err=True)
    start = model.position
    with progress_bar("following the log", after=SYNC_BAR_AFTER, start=start) as on_progress:
        # Empty tables (a new file, other rules) are filled by the faster snapshot pass.
        model.sync(store, on_progress=on_progress, rebuild_if_empty=True)
    return model


SYNC_BAR_AFTER = 1.0  # seconds of following before a bar is drawn (short syncs stay quiet)


@contextlib.contextmanager
def progress_bar(
    description: str,
    *,
    after: float = 0.0,
    start: int = 0,
    console: Console | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[[int, int], None] | None]:
    """A (done, total) callback drawing a bar on stderr once `after` seconds have passed.

    None when stderr is not a terminal: nothing is drawn into a pipe or a log file.
    Positions count from `start` (where a sync began), so the bar measures this run.
    """
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    began = clock()
    shown: list[Any] = []  # the Progress and its task, once drawn

    def update(done: int, total: int) -> None:
        if not shown:
            if clock() - began < after:
                return
            bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            bar.start()
            shown.extend([bar, bar.add_task(description, total=None)])
        bar, task = shown
        bar.update(task, completed=max(done - start, 0), total=max(total - start, 0), refresh=True)

    try:
        yield update
    finally:
        if shown:
            shown[0].stop()


def warn_left_out(model: ReadModel, limit: int = 20, known_at: Any = None) -> None:
    """Name on stderr the students a population answer leaves out (derivation failed)."""
    failed = model.errors(known_at)
    if not failed:
        return
    click.echo(
        f"warning: {len(failed)} student(s) left out, their facts cannot be derived "
        "(correct or retract the events named):",
        err=True,
    )
    for row in failed[:limit]:
        click.echo(f"  {row['message']}", err=True)
    if len(failed) > limit:
        click.echo(f"  … and {len(failed) - limit} more", err=True)


def read_db_option(func: F) -> F:
    """`--read-db PATH`: where the read models live."""
    return click.option(
        "--read-db",
        "read_db",
        default=None,
        help="SQLite file of the read models (default: $TIMELINE_READ_DB, else the SQLite "
        "event store itself, else ./timeline-read.db).",
    )(func)


TASK_STATUSES = ["upcoming", "open", "overdue", "done", "done_late", "cancelled"]
FINE_STATUSES = ["accrued", "imposed", "paid"]


def _population_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if not rows:
        console.print(f"No {title.lower()}.")
        return
    table = Table(title=f"{title} ({len(rows)})")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(
            *[
                ", ".join(v) if isinstance(v, list) else "—" if v is None else str(v)
                for v in (row[c] for c in columns)
            ]
        )
    console.print(table)


def population_options(func: F) -> F:
    """`--known-at`, `--changed-since`, `--limit`, `--offset`, `--count` of a population query."""
    options = [
        click.option(
            "--known-at",
            "known_at",
            type=MOMENT,
            default=None,
            help="As known at this moment: only events recorded by then count (as `show`).",
        ),
        click.option(
            "--changed-since",
            "changed_since",
            type=MOMENT,
            default=None,
            help="Only students whose derivation changed after this moment.",
        ),
        click.option(
            "--limit", type=click.IntRange(min=0), default=None, help="At most this many rows."
        ),
        click.option(
            "--offset", type=click.IntRange(min=0), default=0, help="Skip this many rows first."
        ),
        click.option("--count", is_flag=True, help="Print only how many rows match."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def print_json_rows(docs: Iterable[str]) -> None:
    """Stream JSON texts built by SQLite to stdout as one JSON array, one element per line."""
    from projections.readmodel import json_array

    out = sys.stdout
    for part in json_array(docs):
        out.write(part)
    out.flush()


@main.command()
@click.option("--as-of", "as_of", type=DAY, default=None, help="Day (default: today in Taipei).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(TASK_STATUSES),
    help="Only tasks in this status that day (repeatable).",
)
@click.option("--kind", "kinds", multiple=True, help="Only tasks of this kind (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@population_options
@db_option
@read_db_option
@click.pass_context
def tasks(
    ctx: click.Context,
    as_of: Any,
    statuses: tuple[str, ...],
    kinds: tuple[str, ...],
    as_json: bool,
    known_at: Any,
    changed_since: Any,
    limit: int | None,
    offset: int,
    count: bool,
    db: str | None,
    read_db: str | None,
) -> None:
    """Every student's tasks as of a day (from the read models), as known at a moment."""
    store = open_store(ctx, db)
    model = open_read_model(ctx, store, read_db)
    day = as_of or taipei_today()
    query = {"known_at": known_at, "changed_since": changed_since}
    warn_left_out(model, known_at=known_at)
    if count:
        click.echo(model.count_tasks(day, statuses, kinds, **query))
        return
    docs = model.task_rows(day, statuses, kinds, limit=limit, offset=offset, **query)
    if as_json:
        print_json_rows(docs)
        return
    _population_table(
        "Tasks",
        [json.loads(doc) for doc in docs],
        [
            "student_id",
            "kind",
            "status",
            "opens_on",
            "due_on",
            "done_on",
            "where",
            "rule",
            "caused_by",
        ],
    )


@main.command()
@click.option("--as-of", "as_of", type=DAY, default=None, help="Day (default: today in Taipei).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(FINE_STATUSES),
    help="Only fines in this status that day (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@population_options
@db_option
@read_db_option
@click.pass_context
def fines(
    ctx: click.Context,
    as_of: Any,
    statuses: tuple[str, ...],
    as_json: bool,
    known_at: Any,
    changed_since: Any,
    limit: int | None,
    offset: int,
    count: bool,
    db: str | None,
    read_db: str | None,
) -> None:
    """Every student's fines accrued by a day (from the read models), as known at a moment."""
    store = open_store(ctx, db)
    model = open_read_model(ctx, store, read_db)
    day = as_of or taipei_today()
    query = {"known_at": known_at, "changed_since": changed_since}
    warn_left_out(model, known_at=known_at)
    if count:
        click.echo(model.count_fines(day, statuses, **query))
        return
    docs = model.fine_rows(day, statuses, limit=limit, offset=offset, **query)
    if as_json:
        print_json_rows(docs)
        return
    _population_table(
        "Fines",
        [json.loads(doc) for doc in docs],
        [
            "student_id",
            "kind",
            "status",
            "accrued_on",
            "amount_min_ntd",
            "amount_max_ntd",
            "amount_ntd",
            "paid_ntd",
            "offense",
            "rule",
            "caused_by",
        ],
    )


@main.command()
@click.option(
    "--since",
    "since",
    type=MOMENT,
    required=True,
    help="List the students whose derivation changed after this moment.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@db_option
@read_db_option
@click.pass_context
def changes(
    ctx: click.Context, since: Any, as_json: bool, db: str | None, read_db: str | None
) -> None:
    """The students whose derived tasks, fines or overstays changed after a moment."""
    store = open_store(ctx, db)
    model = open_read_model(ctx, store, read_db)
    rows = model.changes(since)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(f"No student's derivation changed after {since.isoformat()}.")
    for row in rows:
        click.echo(
            f"{row['student_id']}  {row['changes']} change(s), last at {row['last_changed_at']}"
        )


@main.command()
@db_option
@read_db_option
@click.pass_context
def rebuild(ctx: click.Context, db: str | None, read_db: str | None) -> None:
    """Recreate the read models from the whole event log (under the rules in force)."""
    from projections.readmodel import ReadModel

    store = open_store(ctx, db)
    model = ReadModel(read_model_path(store, read_db), rules_of(ctx))
    ctx.call_on_close(model.close)
    with progress_bar("rebuilding") as on_progress:
        report = model.rebuild(store, on_progress=on_progress)
    warn_left_out(model)
    print_json(
        {
            "notifications": report.notifications,
            "position": report.position,
            "failed_students": [row["student_id"] for row in model.errors()],
        }
    )


@main.command()
@click.option("--on", "day", type=DAY, default=None, help="Day (default: today in Taipei).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of alerts.")
@click.option("--emit", is_flag=True, help="Emit them, exactly once per alert key.")
@click.option(
    "--sink",
    default=None,
    help="jsonl:PATH (default jsonl:alerts.jsonl), webhook:URL, or "
    "smtp://[user:pass@]host:port?from=…&to=…",
)
@click.option(
    "--known-at",
    "known_at",
    type=MOMENT,
    default=None,
    help="List the alerts as known at this moment (not with --emit).",
)
@click.option("--failed", is_flag=True, help="List dead-lettered alerts instead.")
@click.option("--retry-failed", is_flag=True, help="Put dead-lettered alerts back to pending.")
@click.option(
    "--withdrawn",
    is_flag=True,
    help="List unsent alerts withdrawn because the rules or settings changed.",
)
@click.option(
    "--wait",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds to wait for another emitter to finish.",
)
@db_option
@read_db_option
@click.pass_context
def alerts(
    ctx: click.Context,
    day: Any,
    as_json: bool,
    emit: bool,
    sink: str | None,
    known_at: Any,
    failed: bool,
    retry_failed: bool,
    withdrawn: bool,
    wait: float,
    db: str | None,
    read_db: str | None,
) -> None:
    """The alerts that fall on a day; with --emit, deliver them once per key."""
    from scheduler.alerts import alerts_on
    from scheduler.emit import summary_sentence
    from scheduler.jobs import batch_size_from_env, emit_once, wiring
    from scheduler.outbox import EmitterBusy
    from scheduler.sinks import sink_from_spec

    day = day or taipei_today()
    if known_at is not None and (emit or failed or retry_failed or withdrawn):
        raise UsageFailure("--known-at lists past knowledge: it cannot be combined with --emit")
    if sink is not None:
        try:
            sink_from_spec(sink)
        except ValueError as exc:
            raise UsageFailure(f"--sink: {exc}") from exc
    if failed or retry_failed or withdrawn:
        rules = (ctx.obj or {}).get("rules")
        with wiring(db or (ctx.obj or {}).get("db"), read_db, sink, rules) as w:
            if retry_failed:
                click.echo(f"{w.outbox.retry_dead()} dead-lettered alert(s) back to pending")
                return
            rows = w.outbox.rows("withdrawn" if withdrawn else "dead")
        if as_json:
            print_json(rows)
        elif not rows:
            click.echo("No withdrawn alerts." if withdrawn else "No failed alerts.")
        elif withdrawn:
            for row in rows:
                click.echo(f"{row['day']} {row['key']}: {row['last_error']}")
        else:
            for row in rows:
                click.echo(
                    f"{row['day']} {row['key']} after {row['attempts']} attempt(s): "
                    f"{row['last_error']}"
                )
        return
    if emit:
        try:
            batch_size_from_env()
        except ValueError as exc:
            raise UsageFailure(str(exc)) from exc
        try:
            report = emit_once(
                db or (ctx.obj or {}).get("db"),
                read_db,
                sink,
                day,
                wait,
                rules=(ctx.obj or {}).get("rules"),
            )
        except EmitterBusy as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        summary = report.as_json()
        # Made from the summary itself, so the sentence and the JSON cannot disagree.
        click.echo(summary_sentence(summary, day.isoformat()), err=True)
        print_json(summary)
        ctx.exit(0 if report.delivered.failed == 0 else 1)
    store = open_store(ctx, db)
    model = open_read_model(ctx, store, read_db)
    found = alerts_on(model, day, log_left_out=False, known_at=known_at)  # named below
    warn_left_out(model, known_at=known_at)
    if as_json:
        print_json([a.model_dump(mode="json") for a in found])
        return
    if not found:
        click.echo(f"No alerts on {day.isoformat()}.")
    for alert in found:
        click.echo(
            f"{alert.student_id}  {alert.task}  {alert.milestone}  "
            f"due {alert.due_on or '—'}  [{alert.rule}]\n  {alert.message.en}\n"
            f"  {alert.message.zh}"
        )


@main.command("scheduler")
@click.option(
    "--at", "at", default="08:00", show_default=True, help="Daily run time, HH:MM in Asia/Taipei."
)
@click.option("--sink", default=None, help="As for `alerts --emit`.")
@click.option(
    "--wait",
    type=float,
    default=0.0,
    help="Seconds to wait if another scheduler is running (default: exit at once).",
)
@click.option("--run-now", is_flag=True, help="Also run the job once at start (catch-up).")
@db_option
@read_db_option
@click.pass_context
def scheduler_command(
    ctx: click.Context,
    at: str,
    sink: str | None,
    wait: float,
    run_now: bool,
    db: str | None,
    read_db: str | None,
) -> None:
    """Run the daily alert job (APScheduler) until SIGTERM."""
    from projections.readmodel import default_read_db
    from scheduler.daemon import DaemonConfig, jobstore_schema, jobstore_url, run_daemon
    from scheduler.jobs import daily_alerts
    from scheduler.outbox import EmitterBusy, EmitterLock, OutboxDB, outbox_location
    from scheduler.sinks import sink_from_spec

    try:
        hour, minute = (int(part) for part in at.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise UsageFailure(f"--at must be HH:MM (got {at!r})") from None
    if sink is not None:
        try:
            sink_from_spec(sink)
        except ValueError as exc:
            raise UsageFailure(f"--sink: {exc}") from exc
    db = db or (ctx.obj or {}).get("db")
    store = open_store(ctx, db)
    path = read_db or os.environ.get("TIMELINE_READ_DB") or default_read_db(store.config.location)
    outbox_db = OutboxDB(outbox_location(store.config.location, path))
    instance = EmitterLock(outbox_db, name="scheduler")
    try:
        instance.acquire(wait=wait)
    except EmitterBusy as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    try:
        if run_now:
            click.echo(json.dumps(daily_alerts(db, read_db, sink)), err=True)
        run_daemon(
            DaemonConfig(
                db=db,
                read_db=read_db,
                sink=sink,
                jobstore_url=jobstore_url(store.config.location, path),
                jobstore_schema=jobstore_schema(store.config.location),
                hour=hour,
                minute=minute,
            )
        )
    finally:
        instance.release()
        outbox_db.close()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes (each opens the store once; more than one: see the README).",
)
@click.option(
    "--root-path",
    default="",
    help="The path prefix a reverse proxy serves the app under (e.g. /timeline).",
)
@click.option(
    "--proxy-headers/--no-proxy-headers",
    default=False,
    show_default=True,
    help="Trust X-Forwarded-For/-Proto from --forwarded-allow-ips (behind a proxy).",
)
@click.option(
    "--forwarded-allow-ips",
    default="127.0.0.1",
    show_default=True,
    help="Comma-separated proxy addresses whose X-Forwarded-* headers are trusted ('*': any).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text or one JSON object each (default: $TIMELINE_LOG_FORMAT, else text).",
)
@db_option
@read_db_option
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    workers: int,
    root_path: str,
    proxy_headers: bool,
    forwarded_allow_ips: str,
    log_format: str | None,
    db: str | None,
    read_db: str | None,
) -> None:
    """Run the HTTP API and the staff web app (see the README: tokens, session settings)."""
    import secrets
    import tempfile

    import uvicorn

    from timeline.api import config_from_environment
    from timeline.api_logging import FORMAT_SETTING, log_config
    from timeline.api_metrics import MULTIPROC_SETTING
    from timeline.api_settings import ApiConfigError
    from web.app import create_app
    from web.settings import SECRET_SETTING, WebSettings

    fmt = log_format or os.environ.get(FORMAT_SETTING, "").strip().lower() or "text"
    if fmt not in ("text", "json"):
        raise UsageFailure(f"{FORMAT_SETTING}: one of text, json, got {fmt[:20]!r}")
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise UsageFailure("--root-path: a path such as /timeline (a leading '/', no trailing '/')")
    # The workers read their configuration from the environment: it is resolved here,
    # once, and handed down (the options win over the variables they stand for).
    location = db or (ctx.obj or {}).get("db")
    if location:
        os.environ["TIMELINE_DB"] = location
    if read_db:
        os.environ["TIMELINE_READ_DB"] = read_db
    os.environ[FORMAT_SETTING] = fmt
    logging.config.dictConfig(log_config(fmt))  # this process's own lines too
    try:
        config, service = config_from_environment(os.environ)
        settings = WebSettings.from_env(os.environ)
    except ApiConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not config.feed_tokens and not config.readers():
        click.echo(
            "warning: no TIMELINE_FEED_TOKENS / TIMELINE_STAFF_TOKENS / TIMELINE_ADMIN_TOKENS "
            "set: every request will be refused with 401",
            err=True,
        )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "root_path": root_path,
        "proxy_headers": proxy_headers,
        "forwarded_allow_ips": forwarded_allow_ips,
        # uvicorn's access log would print query strings (a token sent as ?token=...): the
        # app logs its own line per request, redacted, on the `timeline.access` logger.
        "access_log": False,
        "log_config": log_config(fmt),
    }
    if workers == 1:
        try:
            app = create_app(config, rules_of(ctx), settings=settings, service=service)
        except ApiConfigError as exc:
            raise UsageFailure(str(exc)) from exc
        uvicorn.run(app, **options)
        return
    if not os.environ.get(SECRET_SETTING):
        # Every worker must sign sessions with the same key; it lasts as long as `serve`.
        os.environ[SECRET_SETTING] = secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        if not os.environ.get(MULTIPROC_SETTING):
            # Counters of all workers, added up at each scrape (see timeline.api_metrics).
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="timeline-metrics-"))
            os.environ[MULTIPROC_SETTING] = folder
        serve_workers(uvicorn.Config("web.app:app", workers=workers, **options))


def serve_workers(config: Any) -> None:
    """Run `config.workers` uvicorn worker processes on one listening socket.

    What `uvicorn.run` does for workers, plus TCP_NODELAY on the listening socket (Linux
    gives it to every accepted connection): uvicorn binds without naming the protocol, so
    asyncio leaves Nagle's algorithm on, and each answer written in two parts (head, body)
    waits for the client's delayed ACK, about 40 ms, on a keep-alive connection.
    """
    import socket

    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(config, sockets=[sock]).run()


@main.command("export")
@click.option(
    "--since",
    type=MOMENT,
    default=None,
    help="Only events recorded after this moment (an incremental backup).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (atomically, mode 0600) instead of standard output.",
)
@db_option
@click.pass_context
def export_command(ctx: click.Context, since: Any, output: Path | None, db: str | None) -> None:
    """Write the whole event log as JSON Lines with record times (the backup)."""
    from timeline.backup import export_events

    store = open_store(ctx, db)
    if output is None:
        report = export_events(store, sys.stdout.buffer, since=since)
        sys.stdout.buffer.flush()
    else:
        partial_file = output.with_name(f".{output.name}.partial")
        fd = os.open(partial_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            report = export_events(store, out, since=since)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial_file, output)
    click.echo(
        f"Exported {report.events} event(s) of {report.students} student(s) "
        f"(log position {report.position}).",
        err=True,
    )


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@db_option
@click.pass_context
def import_command(ctx: click.Context, file: Path, db: str | None) -> None:
    """Restore an export into the store, keeping record times; all or nothing."""
    from timeline.backup import import_events

    store = open_store(ctx, db)
    before = store.max_position()
    report = import_events(store, file)
    if before and report.accepted:
        click.echo(
            "note: the store was not empty; the imported events were added to what it held",
            err=True,
        )
    print_json(report.as_json())
    ctx.exit(0 if report.ok else 1)


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
