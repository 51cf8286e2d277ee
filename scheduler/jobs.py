"""Job functions at stable module paths, taking only plain arguments (APScheduler stores them).

Each opens what it needs, brings the read models up to date, takes the emitter lock,
runs, and closes everything again: nothing is kept in memory between runs.

The job store holds the job's arguments pickled, so they are never secret: the store
location (a PostgreSQL password removed), the read-model path and the sink spec (which
refuses credentials). Everything else a job needs — the rules, the batch size, the cipher
key, the sink credentials and the retry policy (`JobSettings`) — comes from the one
configuration, read once when the daemon (or a command) starts and handed to the jobs of
this process through `use_settings`; a job function reads no environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from projections.readmodel import ReadModel, default_read_db
from projections.rules import DEFAULT_RULES, RuleBook, rulebook_fingerprint
from scheduler.alert import Alert
from scheduler.credentials import SinkCredentials
from scheduler.digest import send_digests
from scheduler.emit import RunReport, emit_day, run_until
from scheduler.line import StoreContacts
from scheduler.mail import Composer
from scheduler.notices import Students
from scheduler.outbox import (
    BATCH_SIZE,
    EmitterBusy,
    EmitterLock,
    Outbox,
    OutboxDB,
    outbox_location,
)
from scheduler.retry import RetryPolicy
from scheduler.sinks import Sink, SmtpSink, sink_from_spec
from timeline.clock import Clock, parse_day, system_clock, taipei_today
from timeline.store import StoreConfig, TimelineStore

log = logging.getLogger(__name__)


class DeliverySettings(Protocol):
    """What `DeliveryConfig.from_settings` reads: the one configuration (`timeline.settings`)."""

    def sink_credentials(self) -> SinkCredentials:
        """The sink credentials, checked."""
        ...

    def retry_policy(self) -> RetryPolicy:
        """The retry schedule of failed deliveries, checked."""
        ...


@dataclass(frozen=True)
class DeliveryConfig:
    """Sink credentials and the retry policy: read once at start, passed down."""

    credentials: SinkCredentials = field(default_factory=SinkCredentials)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # The daemon's real store location for each location as stored in the job store
    # (without its password): what a job connects with.
    locations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: DeliverySettings) -> DeliveryConfig:
        """Credentials (`TIMELINE_SMTP_*`, `TIMELINE_LINE_*`, `TIMELINE_WEBHOOK_*`) and policy."""
        return cls(settings.sink_credentials(), settings.retry_policy())


@dataclass(frozen=True)
class JobSettings:
    """What a job needs besides its plain arguments (kept out of the persistent job store)."""

    rules: RuleBook = DEFAULT_RULES
    batch_size: int = BATCH_SIZE  # rows per delivery batch
    cipher_key: str | None = field(default=None, repr=False)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)


# APScheduler calls `daily_alerts` with the plain arguments it stored; the rest comes from
# the configuration the daemon read at start-up and handed over with `use_settings`.
_process_settings = JobSettings()


def use_settings(settings: JobSettings) -> None:
    """Set what this process's jobs run under (the daemon, once, before it starts)."""
    global _process_settings
    _process_settings = settings


def delivery_config(given: DeliveryConfig | None = None) -> DeliveryConfig:
    """The delivery configuration a job runs with: given, else this process's."""
    return given if given is not None else _process_settings.delivery


def stored_location(location: str | None) -> str | None:
    """The store location as the job store may keep it: a PostgreSQL URL loses its password."""
    if not location or not location.startswith(("postgresql://", "postgres://")):
        return location
    parts = urlsplit(location)
    userinfo, at, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{host}" if at and user else host
    # libpq also takes ?password=…; the schema and other parameters stay.
    query = "&".join(
        pair for pair in parts.query.split("&") if pair and not pair.startswith("password=")
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _real_location(location: str | None, config: DeliveryConfig) -> str | None:
    return config.locations.get(location, location) if location else location


@dataclass
class Wiring:
    """Everything an emitting run needs, opened from plain locations."""

    store: TimelineStore
    model: ReadModel
    outbox: Outbox
    sink: Sink
    # The e-mail composer given to an SMTP sink (None for other sinks).
    composer: Composer | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)


@contextmanager
def wiring(
    db: str | None,
    read_db: str | None,
    sink: str | None,
    rules: RuleBook | None = None,
    delivery: DeliveryConfig | None = None,
    clock: Clock = system_clock,
    cipher_key: str | None = None,
) -> Iterator[Wiring]:
    """Open store, read models (synced), outbox and sink; close them afterwards.

    `rules`, `delivery` and `cipher_key` default to the process's `JobSettings` (see
    `use_settings`).
    """
    rules = rules if rules is not None else _process_settings.rules
    config = delivery_config(delivery)
    store = TimelineStore.open(
        _real_location(db, config), cipher_key or _process_settings.cipher_key
    )
    model = outbox_db = opened = None
    try:
        path = read_db or default_read_db(store.config.location)
        model = ReadModel(path, rules)
        if model.rebuild_reason:
            # The rebuild below can take minutes on a big store: say why (stderr in the CLI).
            log.warning("%s", model.rebuild_reason)
        model.sync(store)
        outbox_db = OutboxDB(outbox_location(store.config.location, path))
        outbox = Outbox(outbox_db)
        opened = open_sink(sink, config, store, clock)
        composer = None
        if isinstance(opened, SmtpSink):
            # Each alert To: its student, composed from their facts on the alert's day.
            composer = Composer(Students(store.facts, model.rules), day_of=outbox_day(outbox))
            opened.composer = composer
        yield Wiring(store, model, outbox, opened, composer, config.policy)
    finally:
        if opened is not None:
            close_sink(opened)
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


def open_sink(spec: str | None, config: DeliveryConfig, store: TimelineStore, clock: Clock) -> Sink:
    """The sink of `spec` with the credentials given and contacts from the store."""
    return sink_from_spec(
        spec, config.credentials, contact_for=StoreContacts(store, clock), clock=clock
    )


def close_sink(sink: Sink) -> None:
    """Release what a sink holds (an HTTP client), if anything."""
    close = getattr(sink, "close", None)
    if callable(close):
        close()


def daily_alerts(
    db: str | None = None,
    read_db: str | None = None,
    sink: str | None = None,
    wait: float = 600.0,
    today: str | None = None,
    delivery: DeliveryConfig | None = None,
) -> dict[str, object]:
    """The scheduled job: catch up from the watermark to today (Taipei) and deliver.

    `today` (YYYY-MM-DD) stands in for the clock, for tests and manual catch-ups.
    """
    today_ = parse_day(today) if today else taipei_today()
    with wiring(db, read_db, sink, delivery=delivery) as w, EmitterLock(w.outbox.db) as lock:
        lock.acquire(wait=wait)
        report = run_until(
            w.model,
            w.outbox,
            w.sink,
            today_,
            batch_size=_process_settings.batch_size,
            policy=w.policy,
        )
        digests(w, report)
    summary = report.as_json()
    log.info("daily alerts for %s: %s", today_.isoformat(), summary)
    return summary


def retry_due(
    db: str | None = None,
    read_db: str | None = None,
    sink: str | None = None,
    now: str | None = None,
    delivery: DeliveryConfig | None = None,
) -> dict[str, object]:
    """The frequent job: one attempt at every outbox row whose next attempt is due.

    Cheap when nothing is due (one count on the outbox). Skips the round when another
    emitter holds the lock (the daily job delivers then anyway). Rows computed under other
    rules are left to the daily job, which re-checks them first. `now` (ISO 8601 with an
    offset) stands in for the clock, for tests.
    """
    clock: Clock = (lambda: datetime.fromisoformat(now).astimezone(UTC)) if now else system_clock
    config = delivery_config(delivery)
    location = StoreConfig.resolve(_real_location(db, config)).location
    path = read_db or default_read_db(location)
    fingerprint = rulebook_fingerprint(_process_settings.rules)
    outbox_db = OutboxDB(outbox_location(location, path))
    try:
        outbox = Outbox(outbox_db)
        due = outbox.due_count(clock(), fingerprint)
        if not due:
            return {"due": 0}
        with EmitterLock(outbox_db) as lock:
            try:
                lock.acquire(wait=0.0)
            except EmitterBusy:
                log.info("retry round skipped: another emitter is running")
                return {"due": due, "skipped": "another emitter is running"}
            with TimelineStore.open(location, _process_settings.cipher_key) as store:
                opened = open_sink(sink, config, store, clock)
                try:
                    report = outbox.deliver(
                        opened,
                        now=clock,
                        policy=config.policy,
                        fingerprint=fingerprint,
                        batch_size=_process_settings.batch_size,
                    )
                finally:
                    close_sink(opened)
    finally:
        outbox_db.close()
    summary: dict[str, object] = {
        "due": due,
        "sent": report.sent,
        "already_in_sink": report.already_in_sink,
        "interrupted": report.interrupted,
        "retrying": report.retrying,
        "dead": report.failed,
        "next_attempt_at": (
            report.next_attempt_at.isoformat() if report.next_attempt_at is not None else None
        ),
    }
    log.info("retry round: %s", summary)
    return summary


def emit_once(
    db: str | None,
    read_db: str | None,
    sink: str | None,
    day: date,
    wait: float = 0.0,
    rules: RuleBook | None = None,
    delivery: DeliveryConfig | None = None,
    *,
    batch_size: int | None = None,
    cipher_key: str | None = None,
) -> RunReport:
    """`timeline alerts --on DAY --emit`: one day, once per alert key."""
    batch = batch_size or _process_settings.batch_size
    with (
        wiring(db, read_db, sink, rules, delivery, cipher_key=cipher_key) as w,
        EmitterLock(w.outbox.db) as lock,
    ):
        lock.acquire(wait=wait)
        report = emit_day(w.model, w.outbox, w.sink, day, batch_size=batch, policy=w.policy)
        return digests(w, report)
