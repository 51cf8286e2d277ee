"""Turning days into delivered alerts: one day on demand, or every day since the watermark."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from projections import dates
from projections.readmodel import ReadModel
from scheduler.alert import Alert
from scheduler.alerts import Milestone, milestones_on
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

    def as_json(self) -> dict[str, object]:
        """A summary for logs and the CLI."""
        return {
            "days": [d.isoformat() for d in self.days],
            "found": self.found,
            "new": self.enqueued.new,
            "already_emitted": self.enqueued.already,
            "superseded": self.enqueued.superseded,
            "sent": self.delivered.sent,
            "failed": self.delivered.failed,
        }


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
    report.enqueued = outbox.enqueue(_pairs(found), now=clock())
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
    are recorded as superseded). The first run ever covers `today` only.
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
    report.enqueued = outbox.enqueue(
        _pairs(keep), _pairs(dropped), now=clock(), watermark=max(today, mark) if mark else today
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
