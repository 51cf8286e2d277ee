"""The read-model follower: a long-running process that keeps one read-model file caught up.

`timeline follow` runs `Follower.run`: every `interval` seconds it asks the event store for
its last notification id and, when the tables are behind, applies the new notifications
with `ReadModel.sync` (one transaction per batch together with the tracking position, so a
crash at any moment loses nothing and applies nothing twice; the next start resumes from
the tracked position). Readers (the CLI, the API, the scheduler) then find the tables
current and pay for no sync of their own.

Stopping: `stop` (a `threading.Event`, set by the CLI's SIGTERM/SIGINT handler) is checked
between polls and after every committed batch, so the follower stops within one batch.
A first sync of empty tables (a new file, other rules) runs `rebuild`'s snapshot pass; a
stop in the middle of it abandons the staging tables (SQLite drops them) and the next
start begins it again.

The store being unreachable (PostgreSQL restarting, a network cut) or the read-model file
staying locked longer than SQLite's busy timeout is not fatal: the pass is retried with
a growing delay (`backoff`, up to `max_backoff` seconds) and the reason's class logged,
never its text (it could name the database URL). Anything else is raised: the service
manager restarts the process, which resumes from the tracked position.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass

from eventsourcing.persistence import PersistenceError

from projections.readmodel import ReadModel, SyncReport
from timeline.errors import StorageConfigError
from timeline.store import TimelineStore

log = logging.getLogger(__name__)

# What a pass may meet that passes by itself: the store unreachable, the file busy.
TRANSIENT = (PersistenceError, StorageConfigError, sqlite3.OperationalError, OSError)


class Stopped(Exception):
    """Raised from the progress hook to end a sync between two committed batches."""


@dataclass
class FollowReport:
    """What a follower did since it started."""

    passes: int = 0  # polls of the store
    notifications: int = 0  # notifications applied
    students: int = 0  # students (re)derived, counted once per batch they were in
    failed: int = 0  # students whose derivation failed (see `ReadModel.errors`)
    retries: int = 0  # passes that met a transient failure
    position: int = 0  # the tracked position when it stopped

    def as_json(self) -> dict[str, int]:
        """The counters as a JSON object."""
        return dict(self.__dict__)


class Follower:
    """Polls the store and applies what is new to the read models, until told to stop."""

    def __init__(
        self,
        store: TimelineStore,
        model: ReadModel,
        *,
        interval: float = 1.0,
        batch: int = 2000,
        max_backoff: float = 30.0,
        on_pass: Callable[[SyncReport], None] | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.interval = interval
        self.batch = batch
        self.max_backoff = max_backoff
        self.on_pass = on_pass
        self.report = FollowReport(position=model.position)

    def catch_up(
        self,
        stop: threading.Event | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> SyncReport:
        """Apply every notification stored now (empty tables: the snapshot pass); one pass."""

        def between_batches(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(done, total)
            if stop is not None and stop.is_set():
                raise Stopped

        try:
            synced = self.model.sync(self.store, self.batch, between_batches, rebuild_if_empty=True)
        except Stopped:
            synced = SyncReport(position=self.model.position)
        self.report.passes += 1
        self.report.notifications += synced.notifications
        self.report.students += synced.students
        self.report.failed += synced.failed
        self.report.position = self.model.position
        if synced.notifications:
            log.debug(
                "applied %d notification(s) of %d student(s); position %d",
                synced.notifications,
                synced.students,
                self.report.position,
            )
        if self.on_pass is not None:
            self.on_pass(synced)
        return synced

    def run(self, stop: threading.Event) -> FollowReport:
        """Catch up every `interval` seconds until `stop` is set; retry transient failures."""
        delay = 0.0
        log.info("following from position %d", self.model.position)
        while not stop.is_set():
            try:
                self.catch_up(stop)
            except TRANSIENT as exc:
                self.report.retries += 1
                delay = min(self.max_backoff, max(self.interval, delay * 2))
                log.warning(
                    "catching up failed (%s); retrying in %.1f s", type(exc).__name__, delay
                )
                stop.wait(delay)
                continue
            delay = 0.0
            stop.wait(self.interval)
        self.report.position = self.model.position
        log.info("stopped at position %d", self.report.position)
        return self.report
