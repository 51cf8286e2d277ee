"""Prometheus metrics of the HTTP API (`GET /metrics`, text exposition format).

Counted by each process as requests are answered:

- `timeline_http_requests_total{method,route,status}` and
  `timeline_http_request_duration_seconds{method,route}` (a histogram): `route` is the
  route's template (`/v1/students/{student_id}`), never the path, so no student id and
  no unbounded label; a path that matches no route is `unmatched`;
- `timeline_ingest_events_total{outcome}`: events accepted, duplicates and rejected by
  `POST /v1/events`.

Read from the databases at each scrape (the same for every process):

- `timeline_store_up` (1 when the event store answered), `timeline_store_position` (the
  last notification of the log), `timeline_read_model_position` and
  `timeline_read_model_lag` (notifications not yet applied to the read models);
- `timeline_alerts{state}`: outbox rows per delivery state (`sent`, `dead` = failed
  after every retry, `pending`, `withdrawn`, `superseded`), and
  `timeline_scheduler_watermark_days` (days since the last day the scheduler covered).

With several worker processes, set `PROMETHEUS_MULTIPROC_DIR` to an empty directory
before they start (`timeline serve --workers N` does it): the counters are then written
to files there and every scrape, whichever worker answers it, adds up all workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from datetime import date

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from timeline.api_service import Figures, PopulationGate

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_SETTING = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"
BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class FiguresCollector(Collector):
    """The store's, read models' and outbox's figures, read when scraped."""

    def __init__(self, figures: Callable[[], Figures], today: Callable[[], date]) -> None:
        self.figures = figures
        self.today = today

    def collect(self) -> Iterator[Metric]:
        """One gauge family per figure (`timeline_store_up` 0 when the store failed)."""
        up = GaugeMetricFamily("timeline_store_up", "1 when the event store answered the scrape")
        try:
            figures = self.figures()
        except Exception as exc:
            log.warning("metrics: the store is unreachable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "timeline_store_position", "Last notification id of the event log", figures.position
        )
        yield GaugeMetricFamily(
            "timeline_read_model_position",
            "Last notification applied to the read models",
            figures.read_position,
        )
        yield GaugeMetricFamily(
            "timeline_read_model_lag",
            "Notifications of the log not yet applied to the read models",
            figures.lag,
        )
        alerts = GaugeMetricFamily(
            "timeline_alerts", "Alerts in the outbox by delivery state", labels=["state"]
        )
        for state in sorted({"sent", "dead", "pending", *figures.alerts}):
            alerts.add_metric([state], figures.alerts.get(state, 0))
        yield alerts
        if figures.watermark is not None:
            yield GaugeMetricFamily(
                "timeline_scheduler_watermark_days",
                "Days since the last day whose alerts the scheduler enqueued",
                (self.today() - figures.watermark).days,
            )


class GateCollector(Collector):
    """This process's population gate (`PopulationGate`), read when scraped."""

    def __init__(self, gate: PopulationGate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        """Slots configured, held and waited for, and the queries refused since start-up."""
        yield GaugeMetricFamily(
            "timeline_population_slots",
            "Population queries this process computes at once (population_slots)",
            self.gate.slots,
        )
        yield GaugeMetricFamily(
            "timeline_population_busy", "Population slots held now", self.gate.busy
        )
        yield GaugeMetricFamily(
            "timeline_population_waiting",
            "Population queries waiting for a slot now",
            self.gate.waiting,
        )
        yield CounterMetricFamily(
            "timeline_population_refused",
            "Population queries answered 503 (no slot within population_wait) since start-up",
            self.gate.refused,
        )


class ApiMetrics:
    """The counters of one application (and, multiprocess, of every worker)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "timeline_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "timeline_http_request_duration_seconds",
            "Time to answer, by route template",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.ingested = Counter(
            "timeline_ingest_events",
            "Events received by POST /v1/events, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("accepted", "duplicate", "rejected"):
            self.ingested.labels(outcome)
        self.collectors: list[Collector] = []

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)

    def count_ingest(self, accepted: int, duplicates: int, rejected: int) -> None:
        """Count the outcome of one ingest."""
        for outcome, n in (
            ("accepted", accepted),
            ("duplicate", duplicates),
            ("rejected", rejected),
        ):
            if n:
                self.ingested.labels(outcome).inc(n)

    def add_collector(self, collector: Collector) -> None:
        """A collector read at each scrape, besides the counters."""
        self.collectors.append(collector)

    def exposition(self) -> bytes:
        """The metrics as Prometheus text (all workers' counters in multiprocess mode)."""
        if os.environ.get(MULTIPROC_SETTING):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = CollectorRegistry()
            registry.register(_Counted(self.registry))
        for collector in self.collectors:
            registry.register(collector)
        return generate_latest(registry)


class _Counted(Collector):
    """This process's counters, as one collector of the scrape's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        """The counters' current values."""
        return iter(self.registry.collect())
