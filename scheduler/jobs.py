"""Job functions at stable module paths, taking only plain arguments (APScheduler stores them).

Each opens what it needs, brings the read models up to date, takes the emitter lock,
runs, and closes everything again: nothing is kept in memory between runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date

from projections.readmodel import ReadModel, default_read_db
from projections.rules import DEFAULT_RULES, RuleBook
from scheduler.emit import RunReport, emit_day, run_until
from scheduler.outbox import BATCH_SIZE, EmitterLock, Outbox, OutboxDB, outbox_location
from scheduler.sinks import Sink, sink_from_spec
from timeline.clock import parse_day, taipei_today
from timeline.store import TimelineStore

log = logging.getLogger(__name__)


@dataclass
class Wiring:
    """Everything an emitting run needs, opened from plain locations."""

    store: TimelineStore
    model: ReadModel
    outbox: Outbox
    sink: Sink


@dataclass(frozen=True)
class JobSettings:
    """What a job needs besides its plain arguments (kept out of the persistent job store)."""

    rules: RuleBook = DEFAULT_RULES
    batch_size: int = BATCH_SIZE  # rows per delivery batch
    cipher_key: str | None = field(default=None, repr=False)


# APScheduler calls `daily_alerts` with the plain arguments it stored; the rest comes from
# the configuration the daemon read at start-up and handed over with `use_settings`.
_process_settings = JobSettings()


def use_settings(settings: JobSettings) -> None:
    """Set what this process's jobs run under (the daemon, once, before it starts)."""
    global _process_settings
    _process_settings = settings


@contextmanager
def wiring(
    db: str | None,
    read_db: str | None,
    sink: str | None,
    rules: RuleBook | None = None,
    cipher_key: str | None = None,
) -> Iterator[Wiring]:
    """Open store, read models (synced), outbox and sink; close them afterwards.

    `rules` and `cipher_key` default to the process's `JobSettings` (see `use_settings`).
    """
    rules = rules if rules is not None else _process_settings.rules
    store = TimelineStore.open(db, cipher_key or _process_settings.cipher_key)
    model = outbox_db = None
    try:
        path = read_db or default_read_db(store.config.location)
        model = ReadModel(path, rules)
        if model.rebuild_reason:
            # The rebuild below can take minutes on a big store: say why (stderr in the CLI).
            log.warning("%s", model.rebuild_reason)
        model.sync(store)
        outbox_db = OutboxDB(outbox_location(store.config.location, path))
        yield Wiring(store, model, Outbox(outbox_db), sink_from_spec(sink))
    finally:
        if outbox_db is not None:
            outbox_db.close()
        if model is not None:
            model.close()
        store.close()


def daily_alerts(
    db: str | None = None,
    read_db: str | None = None,
    sink: str | None = None,
    wait: float = 600.0,
    today: str | None = None,
) -> dict[str, object]:
    """The scheduled job: catch up from the watermark to today (Taipei) and deliver.

    `today` (YYYY-MM-DD) stands in for the clock, for tests and manual catch-ups.
    """
    today_ = parse_day(today) if today else taipei_today()
    with wiring(db, read_db, sink) as w, EmitterLock(w.outbox.db) as lock:
        lock.acquire(wait=wait)
        report = run_until(
            w.model, w.outbox, w.sink, today_, batch_size=_process_settings.batch_size
        )
    summary = report.as_json()
    log.info("daily alerts for %s: %s", today_.isoformat(), summary)
    return summary


def emit_once(
    db: str | None,
    read_db: str | None,
    sink: str | None,
    day: date,
    wait: float = 0.0,
    rules: RuleBook | None = None,
    *,
    batch_size: int | None = None,
    cipher_key: str | None = None,
) -> RunReport:
    """`timeline alerts --on DAY --emit`: one day, once per alert key."""
    batch = batch_size or _process_settings.batch_size
    with wiring(db, read_db, sink, rules, cipher_key) as w, EmitterLock(w.outbox.db) as lock:
        lock.acquire(wait=wait)
        return emit_day(w.model, w.outbox, w.sink, day, batch_size=batch)
