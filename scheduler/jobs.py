"""Job functions at stable module paths, taking only plain arguments (APScheduler stores them).

Each opens what it needs, brings the read models up to date, takes the emitter lock,
runs, and closes everything again: nothing is kept in memory between runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date

from projections.readmodel import ReadModel, default_read_db
from projections.rules import RuleBook, rulebook_from_env
from scheduler.alert import Alert
from scheduler.digest import send_digests
from scheduler.emit import RunReport, emit_day, run_until
from scheduler.mail import Composer
from scheduler.notices import Students
from scheduler.outbox import BATCH_SIZE, EmitterLock, Outbox, OutboxDB, outbox_location
from scheduler.sinks import Sink, SmtpSink, sink_from_spec
from timeline.clock import parse_day, system_clock, taipei_today
from timeline.store import TimelineStore

log = logging.getLogger(__name__)


@dataclass
class Wiring:
    """Everything an emitting run needs, opened from plain locations."""

    store: TimelineStore
    model: ReadModel
    outbox: Outbox
    sink: Sink
    # The e-mail composer given to an SMTP sink (None for other sinks).
    composer: Composer | None = None


def batch_size_from_env() -> int:
    """Rows per delivery batch: `TIMELINE_ALERT_BATCH` (1..10,000), default 500."""
    text = os.environ.get("TIMELINE_ALERT_BATCH", "").strip()
    if not text:
        return BATCH_SIZE
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise ValueError("TIMELINE_ALERT_BATCH must be a whole number from 1 to 10000")
    return int(text)


@contextmanager
def wiring(
    db: str | None, read_db: str | None, sink: str | None, rules: RuleBook | None = None
) -> Iterator[Wiring]:
    """Open store, read models (synced), outbox and sink; close them afterwards.

    `rules` is the CLI's one reading of the settings; jobs started by APScheduler get only
    plain arguments and read the environment through the same `rulebook_from_env`.
    """
    rules = rules if rules is not None else rulebook_from_env(os.environ)
    store = TimelineStore.open(db)
    model = outbox_db = None
    try:
        path = (
            read_db or os.environ.get("TIMELINE_READ_DB") or default_read_db(store.config.location)
        )
        model = ReadModel(path, rules)
        if model.rebuild_reason:
            # The rebuild below can take minutes on a big store: say why (stderr in the CLI).
            log.warning("%s", model.rebuild_reason)
        model.sync(store)
        outbox_db = OutboxDB(outbox_location(store.config.location, path))
        outbox = Outbox(outbox_db)
        target = sink_from_spec(sink)
        composer = None
        if isinstance(target, SmtpSink):
            # Each alert To: its student, composed from their facts on the alert's day.
            composer = Composer(Students(store.facts, model.rules), day_of=outbox_day(outbox))
            target.composer = composer
        yield Wiring(store, model, outbox, target, composer)
    finally:
        if outbox_db is not None:
            outbox_db.close()
        if model is not None:
            model.close()
        store.close()


def outbox_day(outbox: Outbox) -> Callable[[Alert], date | None]:
    """The day an alert falls on, as its outbox row records it."""

    def day_of(alert: Alert) -> date | None:
        row = outbox.db.execute(
            "SELECT day FROM alert_outbox WHERE key = ?", [alert.key]
        ).fetchone()
        return date.fromisoformat(row[0]) if row else None

    return day_of


def digests(w: Wiring, report: RunReport) -> RunReport:
    """Send the staff digest of each day the run covered (e-mail sinks with `to=` only)."""
    if w.composer is None or not isinstance(w.sink, SmtpSink):
        return report
    sent = send_digests(w.outbox, w.sink, w.composer, report.days, now=system_clock)
    report.digests_sent, report.digests_failed = len(sent.sent), len(sent.failed)
    return report


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
        report = run_until(w.model, w.outbox, w.sink, today_, batch_size=batch_size_from_env())
        digests(w, report)
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
) -> RunReport:
    """`timeline alerts --on DAY --emit`: one day, once per alert key."""
    with wiring(db, read_db, sink, rules) as w, EmitterLock(w.outbox.db) as lock:
        lock.acquire(wait=wait)
        report = emit_day(w.model, w.outbox, w.sink, day, batch_size=batch_size_from_env())
        return digests(w, report)
