"""The `timeline` command line (SPEC §4). Thin: parse options, call the core, print.

Start-up is kept fast: a module is imported by the command that needs it (the store, the
projections, FastAPI, APScheduler, rich), never here; `timeline --help` imports click only.
The configuration is read once by the `main` group (`timeline.settings`) and passed down.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import functools
import io
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

from timeline.clock import parse_day, parse_known_at, system_clock, taipei_today
from timeline.errors import ContractError, StorageConfigError, TimelineError

if TYPE_CHECKING:  # imported by the commands that use them (a fast start)
    from rich.console import Console

    from projections.readmodel import ReadModel
    from projections.rules import RuleBook
    from scheduler.jobs import DeliveryConfig
    from timeline.settings import Settings
    from timeline.store import TimelineStore

F = TypeVar("F", bound=Callable[..., Any])
# timeline.ingest.ENCODINGS, named here so that `--help` need not import the ingest path
# (tests/test_settings.py checks that the two agree).
ENCODING_NAMES = ("utf-8", "cp950", "big5")
PACKAGE = "residency-timeline"


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


def read_db_option(func: F) -> F:
    """`--read-db PATH`: where the read models live."""
    return click.option(
        "--read-db",
        "read_db",
        default=None,
        help="SQLite file of the read models (default: $TIMELINE_READ_DB, else the SQLite "
        "event store itself, else a file in the data folder; see README Configuration).",
    )(func)


def settings_for(ctx: click.Context, db: str | None = None, read_db: str | None = None) -> Settings:
    """The configuration read by the `main` group, with this command's --db / --read-db."""
    settings: Settings = ctx.find_root().obj["settings"]
    update = {name: value for name, value in (("db", db), ("read_db", read_db)) if value}
    return settings.model_copy(update=update) if update else settings


def init_hint(location: str) -> str:
    """The `timeline init` command that creates the store at `location` (password masked).

    Quoted for a shell: a URL's `&` (`?schema=uni&connect_timeout=5`) or a path's `;`
    would otherwise cut the pasted command in two.
    """
    import shlex

    from timeline.settings import mask_url

    return f"timeline init --db {shlex.quote(mask_url(location))}"


def require_store(settings: Settings, *, create: bool = False) -> None:
    """Refuse a store that was never created (`timeline init`); with `create`, note it.

    Opening a store creates it: without this check a mistyped `--db` would silently make
    an empty database and every answer would be "no events".
    """
    from timeline.settings import mask_url
    from timeline.store import store_state

    location = settings.store_location
    try:
        state = store_state(location)
    except StorageConfigError as exc:
        raise UsageFailure(str(exc)) from exc
    if state == "ready":
        return
    if state == "no-schema":
        raise UsageFailure(
            f"no event store at {mask_url(location)}: the schema does not exist — "
            f"run `{init_hint(location)} --create-schema` first"
        )
    if not create:
        raise UsageFailure(
            f"no event store at {mask_url(location)} — run `{init_hint(location)}` first"
        )
    click.echo(f"note: no event store at {mask_url(location)}: creating a new one", err=True)


def open_store(ctx: click.Context, db: str | None, *, create: bool = False) -> TimelineStore:
    """Open the store named on this command, on the group, or in the configuration.

    It must exist (`timeline init`); with `create` (ingest, import) a new one is made, and
    said so on stderr.
    """
    from timeline.store import TimelineStore

    settings = settings_for(ctx, db)
    require_store(settings, create=create)
    try:
        store = TimelineStore.open(settings.store_location, settings.secret("cipher_key"))
    except StorageConfigError as exc:
        raise UsageFailure(str(exc)) from exc
    ctx.call_on_close(store.close)
    return store


def console_out() -> Console:
    """A console on stdout: the terminal's width, or 160 columns into a pipe."""
    from projections.render import plain_console

    return plain_console() if sys.stdout.isatty() else plain_console(width=160)


def print_json(value: Any) -> None:
    """Print JSON (UTF-8, not escaped) to stdout."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def database_failure(exc: BaseException) -> bool:
    """Whether `exc` is the database failing (locked, full, gone), not the input."""
    import sqlite3

    from eventsourcing.persistence import OperationalError

    failures: tuple[type[BaseException], ...] = (OperationalError, sqlite3.OperationalError)
    psycopg = sys.modules.get("psycopg")  # only loaded for a PostgreSQL store
    if psycopg is not None:
        failures += (psycopg.OperationalError,)
    return isinstance(exc, failures)


class TimelineGroup(click.Group):
    """The command group: a database that fails is an error message (exit 2), not a traceback.

    A SQLite file held by another writer past the busy timeout, a full disk or a lost
    PostgreSQL connection raised from deep in a command; exit 1 then also read as "some
    lines were rejected" to a feed's cron job.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a database failure becomes a `UsageFailure` naming its reason."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not database_failure(exc):
                raise
            hint = (
                " (another process held it past the busy timeout)" if "locked" in str(exc) else ""
            )
            raise UsageFailure(
                f"the database failed: {exc}{hint}; what was stored stays — run the command again"
            ) from exc


@click.group(cls=TimelineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=PACKAGE, prog_name="timeline", message="%(prog)s %(version)s")
@db_option
@click.option(
    "--config",
    "config_file",
    default=None,
    metavar="FILE",
    help="Settings file: TOML (*.toml) or .env lines (default: $TIMELINE_CONFIG; none).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.pass_context
def main(ctx: click.Context, db: str | None, config_file: str | None, verbose: bool) -> None:
    """Residency timeline: ARC status, due tasks and fines of foreign students in Taiwan."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from timeline.settings import SettingsError, load_settings

    ctx.ensure_object(dict)
    # The one read of the configuration: every command runs under these settings.
    try:
        ctx.obj["settings"] = load_settings(config_file=config_file, db=db)
        ctx.obj["config_file"] = config_file
    except SettingsError as exc:
        raise UsageFailure(str(exc)) from exc


def rules_of(ctx: click.Context) -> RuleBook:
    """The RuleBook of the configuration read once by the `main` group."""
    obj = ctx.find_root().obj
    if "rules" not in obj:
        obj["rules"] = obj["settings"].rulebook()
    return obj["rules"]


@main.command()
@click.option(
    "--create-schema",
    is_flag=True,
    help="PostgreSQL: also create the schema named by ?schema= when it does not exist.",
)
@db_option
@read_db_option
@click.pass_context
def init(ctx: click.Context, create_schema: bool, db: str | None, read_db: str | None) -> None:
    """Create the event store and its read models (idempotent); say what was done."""
    from timeline.settings import mask_url
    from timeline.store import TimelineStore, create_postgres_schema, store_state

    settings = settings_for(ctx, db, read_db)
    location = settings.store_location
    shown = mask_url(location)
    try:
        state = store_state(location)
        if state == "no-schema":
            if not create_schema:
                raise UsageFailure(
                    f"the schema of {shown} does not exist: add --create-schema to create it"
                )
            create_postgres_schema(location)
            click.echo(f"created the schema of {shown}")
        store = TimelineStore.open(location, settings.secret("cipher_key"))
    except StorageConfigError as exc:
        raise UsageFailure(str(exc)) from exc
    ctx.call_on_close(store.close)
    if state == "ready":
        click.echo(f"event store at {shown} already exists (log position {store.max_position()})")
    else:
        click.echo(f"created the event store at {shown}")
    model = open_read_model(ctx, store, read_db)
    path = settings_for(ctx, location, read_db).read_db_location
    click.echo(f"read models at {path}: up to date (log position {model.position})")


@main.command("config")
@click.option("--show", is_flag=True, help="Print the effective configuration (the default).")
@click.option("--json", "as_json", is_flag=True, help="Print it as a JSON object.")
@db_option
@read_db_option
@click.pass_context
def config_command(
    ctx: click.Context, show: bool, as_json: bool, db: str | None, read_db: str | None
) -> None:
    """The effective configuration (every setting, where things live), secrets masked."""
    from timeline.settings import env_name

    shown = settings_for(ctx, db, read_db).masked()
    if as_json:
        print_json(shown)
        return
    effective = shown.pop("effective")
    width = max(len(env_name(name)) for name in shown)
    for name, value in shown.items():
        text = "(not set)" if value is None else value
        if isinstance(value, bool):
            text = "1" if value else "0"
        click.echo(f"{env_name(name):<{width}}  {text}")
    click.echo("")
    for name, value in effective.items():
        click.echo(f"{'effective ' + name:<{width}}  {value}")


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
    type=click.Choice(list(ENCODING_NAMES)),
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
    help="Events per batch: per transaction with --partial or on PostgreSQL; atomic "
    "mode on SQLite writes ten batches per transaction.",
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
    from timeline.ingest import detect_format, ingest_stream

    from_stdin = str(file) == "-"
    stdin = standard_input() if from_stdin else None
    stop, signals = _stop_on_signals(ctx)
    store = open_store(ctx, db, create=True)
    with contextlib.ExitStack() as stack:
        stream: BinaryIO = stdin if stdin is not None else stack.enter_context(file.open("rb"))
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
            stop=stop,
        )
        if sys.stderr.isatty() and total != 0:
            from rich.console import Console
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
    _end_of_ingest(ctx, report, signals)


def _end_of_ingest(ctx: click.Context, report: Any, signals: list[int]) -> None:
    """Print an ingest's or import's summary; exit 0, 1 (rejected), or 128+n (interrupted)."""
    print_json(report.as_json())
    if report.interrupted:
        click.echo(
            f"interrupted: {report.accepted} new event(s) stored, the rest of the input not — "
            "run the same command again to complete it (what is stored counts as duplicates)",
            err=True,
        )
        ctx.exit(128 + signals[0])
    ctx.exit(0 if report.ok else 1)


def _stop_on_signals(ctx: click.Context) -> tuple[Any, list[int]]:
    """A stop request made by the first SIGINT or SIGTERM (the ingest stops before its next
    batch, or at once while it waits for input).

    A second signal stops at once: what is stored stays (whole transactions), exit 128+n.
    The previous handlers come back when the command ends. Returns the request and the
    numbers of the signals received.
    """
    import signal
    import threading

    from timeline.ingest import StopRequest

    stop = StopRequest()
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        if stop.is_set():
            click.echo("stopped at once: what was stored stays — run the command again", err=True)
            os._exit(128 + signum)  # a second Ctrl-C means now, as SIGKILL would
        stop.request()

    if threading.current_thread() is not threading.main_thread():
        return stop, signals  # only the main thread may handle signals (an embedding test)
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(signum, on_signal)
        ctx.call_on_close(functools.partial(signal.signal, signum, previous))
    return stop, signals


def standard_input() -> BinaryIO:
    """Standard input as bytes; closed (`<&-`, a daemon without one) is a usage error."""
    if sys.stdin is None:
        raise UsageFailure("standard input is closed: there is nothing to read from '-'")
    return click.get_binary_stream("stdin")


def _regular_file_size(stream: BinaryIO) -> int | None:
    """The size of the file behind `stream`, or None for a pipe, terminal or in-memory stream."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


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


def parse_text(value: str) -> str:
    """`value` if it is UTF-8 text; a shell passes bytes, which Python keeps as surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not UTF-8 text (character {exc.start + 1})") from None
    return value


DAY = ParsedType("DATE", parse_day)  # YYYY-MM-DD
MOMENT = ParsedType("TIMESTAMP", parse_known_at)  # ISO 8601, or a day (its end in Taipei)
TEXT = ParsedType("TEXT", parse_text)  # an id: stored and hashed as UTF-8


@main.command()
@click.argument("student", type=TEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of event objects.")
@db_option
@click.pass_context
def history(ctx: click.Context, student: str, as_json: bool, db: str | None) -> None:
    """The stored events of STUDENT with their record time and retraction marks."""
    from rich.table import Table

    from timeline.history import history_entries

    store = open_store(ctx, db)
    entries = history_entries(store.stream(student))
    if as_json:
        print_json(entries)
        return
    console = console_out()
    if not entries:
        console.print(f"No events stored for student {student!r}.")
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
@click.argument("student", type=TEXT)
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

    store = open_store(ctx, db)
    stream = store.stream(student)
    if with_file is not None:
        from timeline.whatif import hypothetical_facts  # the feed contract: only with --with

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


def read_model_path(settings: Settings) -> str:
    """`--read-db`, else the configured read_db, else beside the events (an absolute path)."""
    path = settings.read_db_location
    folder = Path(path).parent
    if folder == settings.data_directory:
        # The default place of a PostgreSQL store's read models: ours to create.
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise UsageFailure(f"the folder of the read models does not exist: {folder}")
    return path


def open_read_model(ctx: click.Context, store: TimelineStore, read_db: str | None) -> ReadModel:
    """The read models under the rules in force, brought up to date with the event store."""
    from projections.readmodel import ReadModel

    path = read_model_path(settings_for(ctx, store.config.location, read_db))
    model = ReadModel(path, rules_of(ctx))
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
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
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


TASK_STATUSES = ["upcoming", "open", "overdue", "done", "done_late", "cancelled"]
FINE_STATUSES = ["accrued", "imposed", "paid"]


def _population_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    from rich.table import Table

    console = console_out()
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


# A page's limit and offset go to SQLite, whose integers end at 2**63 - 1 (a larger one
# raised OverflowError from the query).
ROW_COUNT = click.IntRange(min=0, max=2**63 - 1)


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
        click.option("--limit", type=ROW_COUNT, default=None, help="At most this many rows."),
        click.option("--offset", type=ROW_COUNT, default=0, help="Skip this many rows first."),
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
@click.option(
    "--kind", "kinds", type=TEXT, multiple=True, help="Only tasks of this kind (repeatable)."
)
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
    model = ReadModel(
        read_model_path(settings_for(ctx, store.config.location, read_db)), rules_of(ctx)
    )
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


def delivery_settings(settings: Settings, sink: str | None) -> DeliveryConfig:
    """Sink credentials and retry policy of the configuration; the sink spec checked.

    The settings were checked when the `main` group read them (a malformed credential or
    retry setting stops every command there, exit 2 naming it). Here: exit 2 naming what
    the spec lacks (a credential written into the spec itself is refused, saying where it
    belongs).
    """
    from scheduler.credentials import CredentialError
    from scheduler.jobs import DeliveryConfig, close_sink
    from scheduler.retry import RetrySettingError
    from scheduler.sinks import sink_from_spec

    try:
        delivery = DeliveryConfig.from_settings(settings)
    except (CredentialError, RetrySettingError) as exc:
        raise UsageFailure(str(exc)) from exc
    if sink is not None:
        try:
            close_sink(sink_from_spec(sink, delivery.credentials))
        except ValueError as exc:
            raise UsageFailure(f"--sink: {exc}") from exc
    return delivery


@main.command()
@click.option("--once", is_flag=True, help="Catch up once, print a JSON summary and exit.")
@click.option(
    "--interval",
    type=click.FloatRange(0.05, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between two polls of the event store.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=2000,
    show_default=True,
    help="Notifications per read-model transaction.",
)
@db_option
@read_db_option
@click.pass_context
def follow(
    ctx: click.Context,
    once: bool,
    interval: float,
    batch_size: int,
    db: str | None,
    read_db: str | None,
) -> None:
    """Keep the read models caught up with the event store until SIGTERM (one per read db)."""
    import signal
    import threading

    from projections.follower import Follower
    from projections.readmodel import ReadModel, ReadModelConflict

    settings = settings_for(ctx, db, read_db)
    store = open_store(ctx, db)
    path = read_model_path(settings)
    model = ReadModel(path, rules_of(ctx))
    ctx.call_on_close(model.close)
    if model.rebuild_reason:
        click.echo(model.rebuild_reason, err=True)
    follower = Follower(store, model, interval=interval, batch=batch_size)
    if once:
        with progress_bar("following the log", after=SYNC_BAR_AFTER, start=model.position) as bar:
            follower.catch_up(on_progress=bar)
        print_json(follower.report.as_json() | {"store_position": store.max_position()})
        return
    logging.getLogger("projections.follower").setLevel(logging.INFO)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("projections.follower").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(f"following the event store into {path} (every {interval:g} s)", err=True)
    try:
        report = follower.run(stop)
    except ReadModelConflict as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    print_json(report.as_json())


@main.command()
@click.option("--on", "day", type=DAY, default=None, help="Day (default: today in Taipei).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of alerts.")
@click.option("--emit", is_flag=True, help="Emit them, exactly once per alert key.")
@click.option(
    "--sink",
    default=None,
    help="jsonl:PATH (default jsonl:alerts.jsonl), webhook:URL, "
    "smtp://host:port?from=…&to=…, or line (credentials from the environment: see README).",
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
    "--retrying",
    is_flag=True,
    help="List alerts whose delivery failed and that wait for their next attempt.",
)
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
@click.option("--student", type=TEXT, default=None, help="Only this student's alerts.")
@click.option(
    "--preview",
    is_flag=True,
    help="With --student: print the e-mail, LINE and webhook messages of each alert, "
    "rendered, without sending anything.",
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
    retrying: bool,
    withdrawn: bool,
    wait: float,
    student: str | None,
    preview: bool,
    db: str | None,
    read_db: str | None,
) -> None:
    """The alerts that fall on a day; with --emit, deliver them once per key."""
    from scheduler.alerts import alerts_on
    from scheduler.emit import summary_sentence
    from scheduler.jobs import emit_once, wiring
    from scheduler.outbox import EmitterBusy

    settings = settings_for(ctx, db, read_db)
    day = day or taipei_today()
    outbox_views = failed or retry_failed or retrying or withdrawn
    if known_at is not None and (emit or outbox_views):
        raise UsageFailure("--known-at lists past knowledge: it cannot be combined with --emit")
    if preview or student is not None:
        modes = {"--emit": emit, "--failed": failed, "--retry-failed": retry_failed}
        for name, on in (modes | {"--retrying": retrying, "--withdrawn": withdrawn}).items():
            if on:
                raise UsageFailure(f"--student and --preview cannot be combined with {name}")
        if preview and student is None:
            raise UsageFailure("--preview needs --student STUDENT")
        if preview and known_at is not None:
            raise UsageFailure("--preview renders what would be sent now: drop --known-at")
    delivery = None
    if emit or outbox_views or sink is not None:
        delivery = delivery_settings(settings, sink)
    if preview:
        credentials = delivery.credentials if delivery is not None else None
        _preview_alerts(ctx, db, read_db, sink, credentials, str(student), day, as_json)
        return
    if outbox_views or emit:
        require_store(settings)
        location, read_path = settings.store_location, read_model_path(settings)
        key = settings.secret("cipher_key")
    if outbox_views:
        with wiring(location, read_path, sink, rules_of(ctx), delivery, cipher_key=key) as w:
            if retry_failed:
                click.echo(f"{w.outbox.retry_dead()} dead-lettered alert(s) back to pending")
                return
            if retrying:
                rows = w.outbox.waiting_rows()
            else:
                rows = w.outbox.rows("withdrawn" if withdrawn else "dead")
        if as_json:
            print_json(rows)
        elif not rows:
            empty = "No failed alerts."
            if withdrawn or retrying:
                empty = "No withdrawn alerts." if withdrawn else "No alerts wait for a retry."
            click.echo(empty)
        elif withdrawn:
            for row in rows:
                click.echo(f"{row['day']} {row['key']}: {row['last_error']}")
        elif retrying:
            for row in rows:
                click.echo(
                    f"{row['day']} {row['key']} after {row['attempts']} attempt(s), next at "
                    f"{row['next_attempt_at']}: {row['last_error']}"
                )
        else:
            for row in rows:
                click.echo(
                    f"{row['day']} {row['key']} after {row['attempts']} attempt(s): "
                    f"{row['last_error']}"
                )
        return
    if emit:
        try:
            report = emit_once(
                location,
                read_path,
                sink,
                day,
                wait,
                rules=rules_of(ctx),
                delivery=delivery,
                batch_size=settings.alert_batch,
                cipher_key=key,
            )
        except EmitterBusy as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        summary = report.as_json()
        # Made from the summary itself, so the sentence and the JSON cannot disagree.
        click.echo(summary_sentence(summary, day.isoformat()), err=True)
        print_json(summary)
        undelivered = report.delivered.failed + report.delivered.retrying
        ctx.exit(0 if undelivered == 0 and not report.digests_failed else 1)
    store = open_store(ctx, db)
    model = open_read_model(ctx, store, read_db)
    found = alerts_on(model, day, log_left_out=False, known_at=known_at)  # named below
    if student is not None:
        found = [alert for alert in found if alert.student_id == student]
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


def _preview_alerts(
    ctx: click.Context,
    db: str | None,
    read_db: str | None,
    sink: str | None,
    credentials: Any,
    student: str,
    day: Any,
    as_json: bool,
) -> None:
    """`alerts --student S --preview`: every channel's message, rendered, nothing sent."""
    from scheduler.mail import Composer
    from scheduler.notices import Students
    from scheduler.preview import UnknownStudent, preview_student, preview_text
    from scheduler.sinks import SmtpSink, sink_from_spec

    store = open_store(ctx, db)
    model = open_read_model(ctx, store, read_db)
    target = sink_from_spec(sink, credentials) if sink is not None else None
    sender = target.sender if isinstance(target, SmtpSink) else None
    composer = Composer(Students(store.facts, rules_of(ctx)))
    try:
        previews = preview_student(model, composer, student, day, sender=sender, clock=system_clock)
    except UnknownStudent as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    if as_json:
        print_json(previews)
    else:
        click.echo(preview_text(previews, student, day))


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
@click.option(
    "--retry-every",
    type=click.IntRange(10, 3600),
    default=60,
    show_default=True,
    help="Seconds between two rounds of the retry job (failed deliveries whose time has come).",
)
@db_option
@read_db_option
@click.pass_context
def scheduler_command(
    ctx: click.Context,
    at: str,
    sink: str | None,
    wait: float,
    run_now: bool,
    retry_every: int,
    db: str | None,
    read_db: str | None,
) -> None:
    """Run the daily alert job and the retry job (APScheduler) until SIGTERM."""
    from scheduler.daemon import DaemonConfig, jobstore_schema, jobstore_url, run_daemon
    from scheduler.jobs import JobSettings, daily_alerts, use_settings
    from scheduler.outbox import EmitterBusy, EmitterLock, OutboxDB, outbox_location

    try:
        hour, minute = (int(part) for part in at.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise UsageFailure(f"--at must be HH:MM (got {at!r})") from None
    settings = settings_for(ctx, db, read_db)
    delivery = delivery_settings(settings, sink)
    store = open_store(ctx, db)
    path = read_model_path(settings)
    db = store.config.location
    # What the jobs need beyond their stored arguments: never written to the job store.
    job_settings = JobSettings(
        rules_of(ctx), settings.alert_batch, settings.secret("cipher_key"), delivery
    )
    use_settings(job_settings)
    outbox_db = OutboxDB(outbox_location(store.config.location, path))
    instance = EmitterLock(outbox_db, name="scheduler")
    try:
        instance.acquire(wait=wait)
    except EmitterBusy as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    try:
        if run_now:
            click.echo(json.dumps(daily_alerts(db, path, sink)), err=True)
        run_daemon(
            DaemonConfig(
                db=db,
                read_db=path,
                sink=sink,
                jobstore_url=jobstore_url(store.config.location, path),
                jobstore_schema=jobstore_schema(store.config.location),
                hour=hour,
                minute=minute,
                retry_every=retry_every,
            ),
            job_settings,
        )
    finally:
        instance.release()
        outbox_db.close()


@main.command()
@click.option(
    "--host", default=None, help="Address to listen on (default: $TIMELINE_HOST, else 127.0.0.1)."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on (default: $TIMELINE_PORT, else 8000).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes, each opening the store once (default: $TIMELINE_WORKERS, else 1; "
    "more than one: see the README).",
)
@click.option(
    "--root-path",
    default=None,
    help="The path prefix a reverse proxy serves the app under, e.g. /timeline "
    "(default: $TIMELINE_ROOT_PATH, else none).",
)
@click.option(
    "--proxy-headers/--no-proxy-headers",
    default=None,
    help="Trust X-Forwarded-For/-Proto from --forwarded-allow-ips, behind a proxy "
    "(default: $TIMELINE_PROXY_HEADERS, else off).",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Comma-separated proxy addresses whose X-Forwarded-* headers are trusted, '*': any "
    "(default: $TIMELINE_FORWARDED_ALLOW_IPS, else 127.0.0.1).",
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
    host: str | None,
    port: int | None,
    workers: int | None,
    root_path: str | None,
    proxy_headers: bool | None,
    forwarded_allow_ips: str | None,
    log_format: str | None,
    db: str | None,
    read_db: str | None,
) -> None:
    """Run the HTTP API and the staff web app (see the README: tokens, session settings)."""
    import secrets
    import tempfile

    import uvicorn

    from timeline.api import config_from_settings
    from timeline.api_logging import log_config
    from timeline.api_metrics import MULTIPROC_SETTING
    from timeline.api_settings import ApiConfigError
    from timeline.settings import env_name, root_path_ok
    from web.app import create_app
    from web.settings import WebSettings

    if root_path and not root_path_ok(root_path):
        raise UsageFailure("--root-path: a path such as /timeline (a leading '/', no trailing '/')")
    given = {
        "host": host,
        "port": port,
        "workers": workers,
        "root_path": root_path,
        "proxy_headers": proxy_headers,
        "forwarded_allow_ips": forwarded_allow_ips,
        "log_format": log_format,
    }
    # The options win over the settings they stand for (validated by click above).
    settings = settings_for(ctx, db, read_db).model_copy(
        update={name: value for name, value in given.items() if value is not None}
    )
    fmt = settings.log_format or "text"
    try:
        config, service = config_from_settings(settings)
    except ApiConfigError as exc:
        raise UsageFailure(str(exc)) from exc
    require_store(settings)
    read_model_path(settings)  # made, if it is the default folder
    if not config.feed_tokens and not config.readers():
        click.echo(
            "warning: no TIMELINE_FEED_TOKENS / TIMELINE_STAFF_TOKENS / TIMELINE_ADMIN_TOKENS "
            "set: every request will be refused with 401",
            err=True,
        )
    logging.config.dictConfig(log_config(fmt))  # this process's own lines too
    from timeline.api_protocol import raise_open_files_limit, with_header_deadline

    before, after = raise_open_files_limit()  # each connection is an open file
    if after != before:
        logging.getLogger("timeline.serve").info("open files limit %d -> %d", before, after)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "root_path": settings.root_path,
        "proxy_headers": settings.proxy_headers,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        # uvicorn's access log would print query strings (a token sent as ?token=...): the
        # app logs its own line per request, redacted, on the `timeline.access` logger.
        "access_log": False,
        "log_config": log_config(fmt),
        # h11 stops a request's header at 16 KB; httptools, which "auto" would pick when
        # installed, buffers it without a bound (one connection could fill the memory).
        # (`with_header_deadline` below: the header must also arrive in time.)
        "http": "h11",
    }
    if settings.workers == 1:
        try:
            app = create_app(
                config,
                rules_of(ctx),
                settings=WebSettings.from_settings(settings),
                service=service,
            )
        except ApiConfigError as exc:
            raise UsageFailure(str(exc)) from exc
        server = uvicorn.Server(
            with_header_deadline(uvicorn.Config(app, **options), settings.header_timeout)
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        if not server.started:  # as uvicorn.run: it could not start (the port is taken)
            from uvicorn.main import STARTUP_FAILURE

            sys.exit(STARTUP_FAILURE)
        return
    # Each worker builds `web.app:app` from `load_settings()` of the environment it
    # inherits: this process's resolved settings are handed down there, as settings the
    # workers know (the settings file read here, and what the command line gave).
    handed = {
        "db": settings.store_location,
        "read_db": settings.read_db_location,
        "log_format": fmt,
    }
    if settings.session_secret is None:
        # Every worker must sign sessions with the same key; it lasts as long as `serve`.
        handed["session_secret"] = secrets.token_urlsafe(32)
    for name, value in handed.items():
        os.environ.pop(env_name(name) + "_FILE", None)  # the value itself wins, and only it
        os.environ[env_name(name)] = value
    config_file = ctx.find_root().obj.get("config_file")
    if config_file:
        os.environ["TIMELINE_CONFIG"] = os.path.abspath(config_file)
    with contextlib.ExitStack() as stack:
        if not os.environ.get(MULTIPROC_SETTING):
            # Counters of all workers, added up at each scrape (see timeline.api_metrics).
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="timeline-metrics-"))
            os.environ[MULTIPROC_SETTING] = folder
        config = uvicorn.Config("web.app:app", workers=settings.workers, **options)
        serve_workers(with_header_deadline(config, settings.header_timeout))


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
    help="Only events recorded after this moment.",
)
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=None,
    metavar="POSITION",
    help="Only events after this log position: the `position` of the last export's header "
    "(an incremental backup that misses nothing).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Write to this file (atomically, mode 0600) instead of standard output (-).",
)
@db_option
@click.pass_context
def export_command(
    ctx: click.Context, since: Any, after: int | None, output: Path | None, db: str | None
) -> None:
    """Write the whole event log as JSON Lines with record times (the backup)."""
    from timeline.backup import export_events

    write = functools.partial(export_events, since=since, after=after)
    store = open_store(ctx, db)
    if output is None or str(output) == "-":
        report = write(store, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    elif output.exists() and not output.is_file():
        # A FIFO, a device, `/dev/stdout`: written as it is (a rename would replace it).
        try:
            with output.open("wb") as out:
                report = write(store, out)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror}") from exc
    else:
        with replacing(output) as out:
            report = write(store, out)
    click.echo(
        f"Exported {report.events} event(s) of {report.students} student(s) "
        f"(log position {report.position}; the next incremental backup: "
        f"--after {report.position}).",
        err=True,
    )


@contextlib.contextmanager
def replacing(output: Path) -> Iterator[BinaryIO]:
    """A file that replaces `output` atomically (mode 0600) once the block ends well.

    It is a copy of its own beside the file itself (`output`'s target when it is a
    symbolic link, which a rename would replace by a file): two commands writing one file
    at once shared one partial copy, each truncating it and renaming it into place
    half-written. A failure (a full disk: exit 1 naming `output`) or Ctrl-C removes the
    copy (personal data, the space the disk lacks) and leaves `output` as it was.
    """
    import tempfile

    target = Path(os.path.realpath(output))
    partial_file: str | None = None
    try:
        fd, partial_file = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".partial", dir=target.parent
        )
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial_file, target)
    except BaseException as exc:
        if partial_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial_file)
        if isinstance(exc, OSError):
            raise click.ClickException(
                f"cannot write {output}: {exc.strerror}; it is left as it was"
            ) from exc
        raise


@main.command("import")
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
)
@db_option
@click.pass_context
def import_command(ctx: click.Context, file: Path, db: str | None) -> None:
    """Restore an export (FILE, or - for stdin) into the store, keeping record times."""
    from timeline.backup import import_events

    source = standard_input() if str(file) == "-" else file
    stop, signals = _stop_on_signals(ctx)
    store = open_store(ctx, db, create=True)
    before = store.max_position()
    report = import_events(store, source, stop=stop)
    if before and report.accepted:
        click.echo(
            "note: the store was not empty; the imported events were added to what it held",
            err=True,
        )
    _end_of_ingest(ctx, report, signals)


@main.command()
@click.argument("student", type=TEXT)
@click.option("--on", "day", type=DAY, default=None, help="As of this day (default: today).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the .ics to this file (atomically, mode 0600) instead of standard output.",
)
@click.option("--link", "action", flag_value="link", help="Make the secret subscription link.")
@click.option("--rotate", "action", flag_value="rotate", help="Replace it with a new link.")
@click.option("--revoke", "action", flag_value="revoke", help="Revoke it (it then answers 410).")
@click.option("--base-url", default=None, help="Print the link as a URL under this address.")
@click.option("--json", "as_json", is_flag=True, help="Print the link as JSON.")
@db_option
@click.pass_context
def calendar(
    ctx: click.Context,
    student: str,
    day: Any,
    output: Path | None,
    action: str | None,
    base_url: str | None,
    as_json: bool,
    db: str | None,
) -> None:
    """STUDENT's open tasks as an iCalendar feed; or make, rotate, revoke their secret link."""
    from projections.engine import DerivationError
    from timeline import calendar_links
    from web.calendar_feed import student_feed

    if action is None and (base_url or as_json):
        raise UsageFailure("--base-url and --json go with --link or --rotate")
    if action is not None and (day is not None or output is not None):
        raise UsageFailure(f"--{action} manages the link: it takes no --on or --output")
    if base_url is not None and not base_url.startswith(("https://", "http://")):
        raise UsageFailure("--base-url must start with https:// (or http://)")
    store = open_store(ctx, db)
    if action == "revoke":
        if not calendar_links.revoke_link(store, student, system_clock()):
            click.echo(f"error: no active calendar link for student {student!r}", err=True)
            ctx.exit(1)
        click.echo(f"Revoked the calendar link of {student}: it now answers 410 Gone.", err=True)
        return
    if not store.stream(student):
        click.echo(f"error: no events stored for student {student!r}", err=True)
        ctx.exit(1)
    if action is not None:
        active = calendar_links.active_link(store, student)
        if action == "link" and active is not None:
            click.echo(
                f"error: student {student!r} already has a calendar link (made "
                f"{active.created_at.isoformat(timespec='seconds')} by {active.created_by}); "
                "only its hash is kept, so it cannot be shown again: --rotate makes a new "
                "one (the old one then stops working)",
                err=True,
            )
            ctx.exit(1)
        token = calendar_links.create_link(store, student, system_clock(), "cli")
        path = calendar_links.link_path(token)
        url = base_url.rstrip("/") + path if base_url else None
        if as_json:
            print_json({"student_id": student, "path": path, "url": url})
        else:
            click.echo(url or path)
        click.echo("Shown once: only its hash is stored.", err=True)
        return
    try:
        feed = student_feed(store, student, day or taipei_today(), rules_of(ctx), system_clock())
    except DerivationError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    assert feed is not None  # the student has events
    if output is None:
        sys.stdout.buffer.write(feed.body)
        sys.stdout.buffer.flush()
        return
    with replacing(output) as out:
        out.write(feed.body)
    click.echo(f"Wrote {feed.events} event(s) to {output}.", err=True)


@main.command()
def schema() -> None:
    """Print the JSON Schema of one feed event."""
    from timeline.contract import json_schema

    print_json(json_schema())


class OutputError(OSError):
    """The answer could not be written to standard output (closed, a full disk, ...)."""


class _ClosedOutput(io.RawIOBase):
    """Standard output that was closed when the command started."""

    def writable(self) -> bool:
        """It takes writes (which fail)."""
        return True

    def write(self, data: Any) -> int:
        """Fail: there is nowhere to write."""
        raise OSError(errno.EBADF, "standard output is closed")


class _Output(io.BufferedWriter):
    """Standard output's buffer, whose failures are `OutputError` (so `run` knows them)."""

    discard = False  # after a failure: drop what is left instead of failing at exit again

    def write(self, data: Any) -> int:
        """Buffer `data`; a failure to write is an OutputError."""
        if self.discard:
            return len(data)
        try:
            return super().write(data)
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror) from None

    def flush(self) -> None:
        """Write what is buffered; a failure is an OutputError."""
        if self.discard:
            return
        try:
            super().flush()
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror) from None


def _standard_output() -> _Output:
    """Standard output whose write errors `run` can tell apart; a closed one fails writes.

    Under a locale that is not UTF-8, a pipe or file gets UTF-8 and a terminal gets its
    own encoding with "?" for what it cannot show (not a UnicodeEncodeError traceback).

    A descriptor 0, 1 or 2 closed at start is held by /dev/null, so that no file the
    command opens (the store) gets its number; the answer, if any, then fails to be
    written instead of vanishing with exit 0 (and `-` refuses a closed standard input).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    old = sys.stdout
    raw: io.RawIOBase = _ClosedOutput() if old is None else io.FileIO(1, "wb", closefd=False)
    buffer = _Output(raw)
    encoding = old.encoding if old else "utf-8"
    errors = old.errors if old else "strict"
    if codecs.lookup(encoding).name != "utf-8":  # an ASCII or Latin-1 locale
        if raw.isatty():
            errors = "replace"  # a person sees "?" for what the terminal cannot show
        else:
            encoding = "utf-8"  # a program gets every character (JSON is UTF-8)
    sys.stdout = io.TextIOWrapper(
        buffer,
        encoding=encoding,
        errors=errors,
        line_buffering=old.line_buffering if old else False,
    )
    return buffer


def run() -> None:
    """Entry point that maps core errors to exit code 2 with a clear message."""
    output = _standard_output()
    try:
        main(standalone_mode=True)
    except TimelineError as exc:  # pragma: no cover - click handles most
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OutputError as exc:  # a broken pipe is click's: exit 1, quietly
        output.discard = True
        click.echo(f"error: cannot write the answer: {exc.strerror}", err=True)
        sys.exit(1)
