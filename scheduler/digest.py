"""The staff's daily digest: one e-mail per day to the configured staff recipients.

It lists every alert of the day (the outbox rows of that day), grouped by milestone, each
line naming the student, the task and its due day and how delivery went; the students of
those alerts with no e-mail address on file (they were not e-mailed); and every alert
whose delivery failed for good (the outbox's dead letters, `dead_letters`).

Exactly once per (day, recipients list): the digest has its own row in the outbox
database (`alert_digests`, key `digest:DAY:<hash of the recipients>`: no address in the
key), inserted with `ON CONFLICT DO NOTHING`, marked `sending` (committed) before the
SMTP server is touched and `sent` after, under the same emitter lock as the alerts. A
run killed in between sends it again on the next run with the same `Message-ID`, as the
alerts do. A failed digest stays `pending` and is tried again by the next run (whatever
day that run covers), and becomes `dead` after `DIGEST_ATTEMPTS` failed attempts.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from projections.wording import MILESTONE_NAMES, Bilingual
from scheduler.alert import Alert
from scheduler.mail import Composer
from scheduler.messages import title_of
from scheduler.outbox import Outbox, lock_key
from scheduler.sinks import DeliveryError, SmtpSink, backoff_delay
from timeline.clock import Clock

log = logging.getLogger(__name__)

DIGEST_ATTEMPTS = 5
# Most urgent first; a milestone not listed here comes last.
MILESTONE_ORDER = (
    "reapply_window_closed",
    "reapply_window_closing",
    "overstay_started",
    "overdue",
    "accrued",
    "due_today",
    "due_in_1",
    "due_in_7",
    "due_in_14",
    "due_in_30",
    "window_open",
)
# The outbox state of an alert that failed for good. One name, one place: if the outbox
# grows another final-failure state, `dead_letters` is the one query to adapt.
DEAD_STATE = "dead"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alert_digests ("
    " key TEXT PRIMARY KEY, day TEXT NOT NULL, state TEXT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at TEXT NOT NULL,"
    " sent_at TEXT)",
)


@dataclass(frozen=True)
class DigestLine:
    """One alert in the digest."""

    key: str
    day: date
    student_id: str
    task: str
    title: Bilingual
    milestone: str
    due_on: date | None
    # emailed | no_email | delivered | failed | unsent (mail.OUTCOME_NAMES)
    outcome: str


@dataclass(frozen=True)
class MissingContact:
    """A student of the day's alerts without an e-mail address on file."""

    student_id: str
    line_on_file: bool


@dataclass(frozen=True)
class DeadLetter:
    """An alert whose delivery failed for good."""

    key: str
    day: date
    student_id: str
    title: Bilingual
    milestone: Bilingual
    attempts: int
    last_error: str


@dataclass(frozen=True)
class Digest:
    """The staff's digest of one day."""

    key: str
    day: date
    groups: list[tuple[str, Bilingual, list[DigestLine]]]
    missing: list[MissingContact]
    dead: list[DeadLetter]

    @property
    def total(self) -> int:
        """How many alerts the day had."""
        return sum(len(lines) for _code, _name, lines in self.groups)


@dataclass
class DigestReport:
    """What one run did with digests."""

    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    already: int = 0


def digest_key(day: date, recipients: Sequence[str]) -> str:
    """`digest:DAY:<12 hex>`: one per day and recipients list, no address in it."""
    joined = ",".join(sorted(address.strip().lower() for address in recipients))
    return f"digest:{day.isoformat()}:{hashlib.sha256(joined.encode()).hexdigest()[:12]}"


def dead_letters(outbox: Outbox) -> list[dict[str, Any]]:
    """The outbox rows whose delivery failed for good (any day), oldest first."""
    return outbox.rows(DEAD_STATE)


def day_alerts(outbox: Outbox, day: date) -> list[tuple[Alert, str, str | None]]:
    """The alerts of `day` in the outbox (not superseded or withdrawn): alert, state, sink."""
    rows = outbox.db.execute(
        "SELECT payload, state, sink FROM alert_outbox WHERE day = ? "
        "AND state IN ('pending', 'sending', 'sent', ?) ORDER BY key",
        [day.isoformat(), DEAD_STATE],
    ).fetchall()
    return [(Alert.model_validate_json(payload), state, sink) for payload, state, sink in rows]


def _outcome(state: str, sink: str | None, has_email: bool) -> str:
    if state == DEAD_STATE:
        return "failed"
    if state != "sent":
        return "unsent"
    if not (sink or "").startswith("smtp:"):
        return "delivered"
    return "emailed" if has_email else "no_email"


def build_digest(outbox: Outbox, composer: Composer, day: date, key: str) -> Digest:
    """The digest of `day` from the outbox as it is now, contacts as of `day`."""
    students = composer.students
    grouped: dict[str, list[DigestLine]] = {}
    missing: dict[str, MissingContact] = {}
    for alert, state, sink in day_alerts(outbox, day):
        contact = students.contact(alert.student_id, day)
        has_email = bool(contact and contact.email)
        if not has_email and alert.student_id not in missing:
            missing[alert.student_id] = MissingContact(
                alert.student_id, bool(contact and contact.line_user_id)
            )
        grouped.setdefault(alert.milestone, []).append(
            DigestLine(
                key=alert.key,
                day=day,
                student_id=alert.student_id,
                task=alert.task,
                title=title_of(alert.task),
                milestone=alert.milestone,
                due_on=alert.due_on,
                outcome=_outcome(state, sink, has_email),
            )
        )
    order = {code: i for i, code in enumerate(MILESTONE_ORDER)}
    groups = [
        (
            code,
            MILESTONE_NAMES.get(code, {"zh": code, "en": code}),
            sorted(lines, key=lambda line: (line.student_id, line.key)),
        )
        for code, lines in sorted(grouped.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))
    ]
    dead = [
        DeadLetter(
            key=row["key"],
            day=date.fromisoformat(row["day"]),
            student_id=row["student_id"],
            title=title_of(row["task"]),
            milestone=MILESTONE_NAMES.get(
                row["milestone"], {"zh": row["milestone"], "en": row["milestone"]}
            ),
            attempts=int(row["attempts"]),
            last_error=row["last_error"] or "",
        )
        for row in dead_letters(outbox)
    ]
    return Digest(key, day, groups, sorted(missing.values(), key=lambda m: m.student_id), dead)


class DigestOutbox:
    """The `alert_digests` table beside the alert outbox: one row per digest key."""

    def __init__(self, outbox: Outbox) -> None:
        self.db = outbox.db
        with self.db.transaction():
            if self.db.is_postgres:
                # CREATE ... IF NOT EXISTS races with a concurrent creator on PostgreSQL.
                self.db.execute(
                    "SELECT pg_advisory_xact_lock(?)", [lock_key("schema", self.db.schema)]
                )
            for statement in _SCHEMA:
                self.db.execute(statement)

    def enqueue(self, key: str, day: date, now: str) -> None:
        """Add the digest of a day (pending) unless it has a row already."""
        self.db.execute(
            "INSERT INTO alert_digests (key, day, state, created_at) VALUES (?, ?, 'pending', ?) "
            "ON CONFLICT (key) DO NOTHING",
            [key, day.isoformat(), now],
        )

    def unsent(self, suffix: str) -> list[tuple[str, date, int]]:
        """Digests for this recipients list still to send (pending, or left 'sending')."""
        rows = self.db.execute(
            "SELECT key, day, attempts FROM alert_digests "
            "WHERE state IN ('pending', 'sending') AND key LIKE ? ORDER BY day, key",
            [f"digest:%:{suffix}"],
        ).fetchall()
        return [(key, date.fromisoformat(day), int(attempts)) for key, day, attempts in rows]

    def state(self, key: str) -> str | None:
        """The state of a digest row, None without one."""
        row = self.db.execute("SELECT state FROM alert_digests WHERE key = ?", [key]).fetchone()
        return str(row[0]) if row else None

    def mark_sending(self, key: str) -> None:
        """Committed before the SMTP server is touched: a crash after it resends."""
        self.db.execute("UPDATE alert_digests SET state = 'sending' WHERE key = ?", [key])

    def mark_sent(self, key: str, tries: int, now: str) -> None:
        """The server took it."""
        self.db.execute(
            "UPDATE alert_digests SET state = 'sent', attempts = attempts + ?, sent_at = ?, "
            "last_error = NULL WHERE key = ?",
            [tries, now, key],
        )

    def mark_failed(self, key: str, tries: int, error: str, dead: bool) -> None:
        """Back to pending (the next run tries again), or dead."""
        self.db.execute(
            "UPDATE alert_digests SET state = ?, attempts = attempts + ?, last_error = ? "
            "WHERE key = ?",
            ["dead" if dead else "pending", tries, error[:500], key],
        )

    def rows(self) -> list[dict[str, Any]]:
        """Every digest row, oldest first."""
        names = ["key", "day", "state", "attempts", "last_error", "created_at", "sent_at"]
        cursor = self.db.execute(f"SELECT {', '.join(names)} FROM alert_digests ORDER BY day, key")
        return [dict(zip(names, row, strict=True)) for row in cursor]


def send_digests(
    outbox: Outbox,
    sink: SmtpSink,
    composer: Composer,
    days: Sequence[date],
    *,
    now: Clock,
    tries_per_run: int = 3,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    sleep: Callable[[float], object] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> DigestReport:
    """Send the digest of each of `days` (and any left unsent) once to the staff recipients.

    Nothing is sent when the sink has no fixed staff recipients.
    """
    report = DigestReport()
    recipients = sink.staff_recipients
    if not recipients:
        return report
    table = DigestOutbox(outbox)
    suffix = digest_key(date(2000, 1, 1), recipients).rsplit(":", 1)[1]
    for day in days:
        table.enqueue(digest_key(day, recipients), day, now().isoformat())
    pending = table.unsent(suffix)
    report.already = len(days) - sum(1 for _key, day, _n in pending if day in days)
    for key, day, tried in pending:
        message = composer.digest_mail(build_digest(outbox, composer, day, key), recipients)
        table.mark_sending(key)
        tries = 0
        while True:
            tries += 1
            try:
                sink.send_email(message)
            except DeliveryError as error:
                dead = error.permanent or tried + tries >= DIGEST_ATTEMPTS
                log.warning("staff digest %s: attempt %d failed: %s", key, tried + tries, error)
                if dead or tries >= tries_per_run:
                    table.mark_failed(key, tries, str(error), dead)
                    report.failed.append(key)
                    break
                sleep(backoff_delay(tries, base_delay, max_delay, rng))
                continue
            table.mark_sent(key, tries, now().isoformat())
            report.sent.append(key)
            break
    return report
