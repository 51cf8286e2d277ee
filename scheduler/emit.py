"""Turning days into delivered alerts: one day on demand, or every day since the watermark."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from projections import dates
from projections.readmodel import ReadModel
from projections.rules import rulebook_fingerprint
from scheduler.alert import Alert
from scheduler.alerts import Milestone, alerts_on, left_behind, milestones_on
from scheduler.outbox import DeliveryReport, EnqueueReport, Outbox
from scheduler.sinks import Sink
from timeline.clock import Clock, system_clock

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """One emitting run: the days covered, what was found, enqueued and delivered."""

    days: list[date] = field(default_factory=list)
    found: int = 0
    enqueued: EnqueueReport = field(default_factory=EnqueueReport)
    delivered: DeliveryReport = field(default_factory=DeliveryReport)
    # Rows an earlier run had left undelivered (pending, or 'sending' when it died).
    left_unsent: int = 0
    # Unsent rows that no longer fall on their day under the current rules.
    withdrawn: int = 0
    # Staff digests (scheduler.digest) sent and failed by this run; e-mail sinks only.
    digests_sent: int = 0
    digests_failed: int = 0

    def as_json(self) -> dict[str, object]:
        """A summary for logs and the CLI."""
        return {
            "days": [d.isoformat() for d in self.days],
            "found": self.found,
            "new": self.enqueued.new,
            "already_emitted": self.enqueued.already_sent,
            "superseded": self.enqueued.superseded,
            "left_unsent": self.left_unsent,
            "interrupted": self.delivered.interrupted,
            "withdrawn": self.withdrawn,
            "sent": self.delivered.sent,
            "already_in_sink": self.delivered.already_in_sink,
            "failed": self.delivered.failed,
            "digests_sent": self.digests_sent,
            "digests_failed": self.digests_failed,
            "retrying": self.delivered.retrying,
            "waiting": self.delivered.waiting,
            "next_attempt_at": (
                self.delivered.next_attempt_at.isoformat()
                if self.delivered.next_attempt_at is not None
                else None
            ),
        }


def summary_sentence(summary: dict[str, object], label: str) -> str:
    """The one-line account on stderr, made from the JSON summary so the two agree."""
    n = {name: int(value) for name, value in summary.items() if isinstance(value, int)}
    retrying = n.get("retrying", 0)
    waiting = n.get("waiting", 0)
    later = ""
    if retrying or waiting:
        when = summary.get("next_attempt_at")
        later = (
            f" {retrying + waiting} alert(s) wait for another attempt"
            + (f" (the next from {when})" if when else "")
            + "."
        )
    if n["sent"] == n["failed"] == n["withdrawn"] == retrying == 0:
        return (
            f"Nothing new to emit for {label}: "
            f"{n['already_emitted']} alert(s) were already emitted.{later}"
        )
    text = f"Emitted {n['sent']} alert(s) for {label}"
    details = []
    if n["left_unsent"]:
        details.append(f"{n['left_unsent']} left unsent by an earlier run")
    if n["already_in_sink"]:
        details.append(
            f"{n['already_in_sink']} already in the sink from an interrupted run, not written again"
        )
    if details:
        text += f" ({'; '.join(details)})"
    text += f"; {n['failed']} failed"
    text += f", {retrying} will be retried." if retrying else "."
    if n.get("digests_sent") or n.get("digests_failed"):
        text += f" Staff digest: {n['digests_sent']} sent, {n['digests_failed']} failed."
    if n["withdrawn"]:
        text += (
            f" {n['withdrawn']} unsent alert(s) withdrawn: they no longer fall on their day "
            "under the current rules."
        )
    return text + later


def latest_per_subject(found: list[Milestone]) -> tuple[list[Milestone], list[Milestone]]:
    """Split catch-up milestones: each subject's latest day is sent, earlier ones superseded."""
    latest: dict[str, date] = {}
    for milestone in found:
        if milestone.subject not in latest or milestone.day > latest[milestone.subject]:
            latest[milestone.subject] = milestone.day
    keep = [m for m in found if m.day == latest[m.subject]]
    dropped = [m for m in found if m.day != latest[m.subject]]
    return keep, dropped


def _pairs(milestones: list[Milestone]) -> list[tuple[date, Alert]]:
    return [(m.day, m.alert) for m in milestones]


def fingerprint_of(model: ReadModel) -> str:
    """The fingerprint of the rule book the read models compute with."""
    return rulebook_fingerprint(model.rules)


def recheck_unsent(model: ReadModel, outbox: Outbox, fingerprint: str) -> int:
    """Re-check unsent rows computed under other rules; withdraw those no longer due.

    A row still due takes the current wording; one that no longer falls on its day (a
    setting moved the deadline, a rule value changed) is withdrawn, so a rules change never
    sends a false overdue alert or fine. Returns how many were withdrawn.
    """
    stale = outbox.stale(fingerprint)
    withdrawn = 0
    for day in sorted({day for _key, day in stale}):
        current = {alert.key: alert for alert in alerts_on(model, day)}
        keys = [key for key, on in stale if on == day]
        outbox.confirm([current[key] for key in keys if key in current], fingerprint)
        withdrawn += outbox.withdraw([key for key in keys if key not in current], fingerprint)
    if withdrawn:
        log.info("withdrew %d unsent alert(s) no longer due under the current rules", withdrawn)
    return withdrawn


def emit_day(
    model: ReadModel,
    outbox: Outbox,
    sink: Sink,
    day: date,
    clock: Clock = system_clock,
    **delivery: object,
) -> RunReport:
    """Enqueue the alerts of one day (once per key) and deliver what is pending."""
    found = milestones_on(model, day)
    report = RunReport(days=[day], found=len(found))
    fingerprint = fingerprint_of(model)
    report.withdrawn = recheck_unsent(model, outbox, fingerprint)
    report.left_unsent = outbox.unsent_count()
    report.enqueued = outbox.enqueue(_pairs(found), now=clock(), fingerprint=fingerprint)
    report.delivered = outbox.deliver(sink, now=clock, **delivery)  # type: ignore[arg-type]
    return report


def run_until(
    model: ReadModel,
    outbox: Outbox,
    sink: Sink,
    today: date,
    clock: Clock = system_clock,
    **delivery: object,
) -> RunReport:
    """The daily job: every day after the watermark up to `today`, then deliver.

    After downtime each task gets only the latest milestone it reached (the earlier ones
    are recorded as superseded), and none when it was done or cancelled by `today` (an
    overstay: ended by `today`). The first run ever covers `today` only.
    """
    mark = outbox.watermark()
    start = dates.next_day(mark) if mark is not None else today
    report = RunReport()
    found: list[Milestone] = []
    day = start
    while day <= today:
        report.days.append(day)
        found.extend(milestones_on(model, day))
        day = dates.next_day(day)
    report.found = len(found)
    keep, dropped = latest_per_subject(found)
    # A task done or an overstay ended while the job was down: its alert would be stale.
    stale = left_behind(model, keep, today)
    if stale:
        dropped += [m for m in keep if m.alert.key in stale]
        keep = [m for m in keep if m.alert.key not in stale]
    fingerprint = fingerprint_of(model)
    report.withdrawn = recheck_unsent(model, outbox, fingerprint)
    report.left_unsent = outbox.unsent_count()
    report.enqueued = outbox.enqueue(
        _pairs(keep),
        _pairs(dropped),
        now=clock(),
        watermark=max(today, mark) if mark else today,
        fingerprint=fingerprint,
    )
    report.delivered = outbox.deliver(sink, now=clock, **delivery)  # type: ignore[arg-type]
    log.info(
        "alerts run %s..%s: found %d, new %d, sent %d, failed %d",
        start,
        today,
        report.found,
        report.enqueued.new,
        report.delivered.sent,
        report.delivered.failed,
    )
    return report
