"""`timeline scheduler`: APScheduler 3.11, a daily cron job, a retry job, a persistent job store.

Safe start: `add_job(..., replace_existing=True)` at every start would silently drop a
run missed while the daemon was down. So the scheduler starts *paused*; when it has
started, each job is added only if the persistent store does not hold it yet; then it is
resumed, and a missed run fires (coalesced into one). The job itself catches up every
missed day from its watermark, so even a dropped run loses nothing.

Two jobs: the daily one (`daily-alerts`, a cron trigger) and `retry-deliveries` (an
interval trigger, every minute by default) that makes the next attempt at failed
deliveries whose time has come (`scheduler.jobs.retry_due`). The job store is a table
`apscheduler_jobs` in the store's PostgreSQL schema, or in the read-model SQLite file;
it holds only non-secret arguments (see `scheduler.jobs`).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_STARTED, SchedulerEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from scheduler.jobs import DeliveryConfig, JobSettings, stored_location, use_settings
from timeline.clock import TAIPEI

log = logging.getLogger(__name__)

JOB_ID = "daily-alerts"
JOB_FUNC = "scheduler.jobs:daily_alerts"
RETRY_JOB_ID = "retry-deliveries"
RETRY_JOB_FUNC = "scheduler.jobs:retry_due"


@dataclass(frozen=True)
class DaemonConfig:
    """Where things live and when the job runs."""

    db: str | None
    read_db: str | None
    sink: str | None
    jobstore_url: str
    hour: int = 8
    minute: int = 0
    # The PostgreSQL schema of the store: its job table lives there, apart from other stores.
    jobstore_schema: str | None = None
    # Seconds between two rounds of the retry job.
    retry_every: int = 60


def jobstore_url(store_location: str, read_db: str) -> str:
    """SQLAlchemy URL of the persistent job store: next to the events or the read models."""
    if store_location.startswith(("postgresql://", "postgres://")):
        url, _, _ = store_location.partition("?")
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return f"sqlite:///{read_db}"


def jobstore_schema(store_location: str) -> str | None:
    """The PostgreSQL schema named in the store location (`?schema=`), if any."""
    if not store_location.startswith(("postgresql://", "postgres://")):
        return None
    _, _, query = store_location.partition("?")
    return dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("schema")


def build_scheduler(config: DaemonConfig) -> BlockingScheduler:
    """A paused-start scheduler that adds the daily job only when the store lacks it."""
    scheduler = BlockingScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(
                url=config.jobstore_url, tableschema=config.jobstore_schema
            )
        },
        job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        timezone=TAIPEI,
    )
    trigger = CronTrigger(hour=config.hour, minute=config.minute, timezone=TAIPEI)
    # Pickled into the job store: nothing secret (no password, the spec holds no credential).
    kwargs: dict[str, Any] = {
        "db": stored_location(config.db),
        "read_db": config.read_db,
        "sink": config.sink,
    }
    retry_trigger = IntervalTrigger(seconds=config.retry_every, timezone=TAIPEI)

    def keep_retry_job() -> None:
        job = scheduler.get_job(RETRY_JOB_ID)
        if job is None:
            scheduler.add_job(
                RETRY_JOB_FUNC,
                retry_trigger,
                id=RETRY_JOB_ID,
                kwargs=kwargs,
                name="retry deliveries",
            )
            log.info("added the retry job (every %d s)", config.retry_every)
        elif str(job.trigger) != str(retry_trigger) or job.kwargs != kwargs:
            scheduler.modify_job(RETRY_JOB_ID, kwargs=kwargs)
            scheduler.reschedule_job(RETRY_JOB_ID, trigger=retry_trigger)
            log.info("retry job now every %d s", config.retry_every)

    def on_started(event: SchedulerEvent) -> None:
        job = scheduler.get_job(JOB_ID)
        if job is None:
            scheduler.add_job(JOB_FUNC, trigger, id=JOB_ID, kwargs=kwargs, name="daily alerts")
            log.info("added the daily job at %02d:%02d Asia/Taipei", config.hour, config.minute)
        else:
            if str(job.trigger) != str(trigger) or job.kwargs != kwargs:
                # A changed time or target: keep the job's missed run by running a catch-up
                # now, then move it (rescheduling alone would skip the missed run).
                missed = job.next_run_time is not None and job.next_run_time <= datetime.now(TAIPEI)
                if missed:
                    scheduler.add_job(JOB_FUNC, kwargs=kwargs, id="catch-up", replace_existing=True)
                scheduler.modify_job(JOB_ID, kwargs=kwargs)
                scheduler.reschedule_job(JOB_ID, trigger=trigger)
                log.info("daily job moved to %02d:%02d", config.hour, config.minute)
            log.info("daily job found in the job store; next run %s", job.next_run_time)
        keep_retry_job()
        scheduler.resume()

    scheduler.add_listener(on_started, EVENT_SCHEDULER_STARTED)
    return scheduler


def run_daemon(config: DaemonConfig, settings: JobSettings | None = None) -> None:
    """Run until SIGTERM or SIGINT; shut down cleanly (the running job finishes).

    `settings` (rules, batch size, cipher key, credentials, retry policy), read once by
    the caller, reach the jobs of this process without passing through the job store.
    """
    settings = settings if settings is not None else JobSettings()
    if config.db and stored_location(config.db) != config.db:
        delivery = settings.delivery
        delivery = DeliveryConfig(
            delivery.credentials,
            delivery.policy,
            {**delivery.locations, str(stored_location(config.db)): config.db},
        )
        settings = replace(settings, delivery=delivery)
    use_settings(settings)
    scheduler = build_scheduler(config)

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        scheduler.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("scheduler starting (job store %s)", config.jobstore_url.split("@")[-1])
    scheduler.start(paused=True)
    log.info("scheduler stopped")
