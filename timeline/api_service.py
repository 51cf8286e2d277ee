"""What one server process shares across requests: the event store and the read models.

While the application's lifespan runs (uvicorn, gunicorn, `with TestClient(app)`), the
store is opened once per process and shared by every request: its connections come from
the library's pools (SQLite: one pool of `check_same_thread=False` connections with one
writer at a time; PostgreSQL: a psycopg pool), which are safe to use from the server's
thread pool. Read models are SQLite connections that are not: each request borrows one
from a small pool (opened once each, returned when the answer is complete, a streamed
one included) and syncs it before answering.

A SQLite store replaced on disk (a restore into a new file at the same path) is noticed
by its inode at the next request and opened again; the old handle is kept until shutdown
because a request may still be reading from it. Outside a lifespan (an app called without
one), every request opens and closes what it uses, as before.

Every view of a student's record appends a row to the audit of access before it is
answered, and on SQLite that commit (an fsync) costs more than the rest of the request.
Rows of requests that arrive together are therefore committed together (a group commit:
a writer thread commits every row queued so far in one transaction while the next ones
queue); each request still answers only once its own row is durable. The student view
awaits its row's commit on the event loop, holding no thread of the server's pool.

Readiness (`/readyz`) asks: is the store reachable, are the read models within
`TIMELINE_READY_MAX_LAG` notifications of the log, and, when the scheduler has ever run
(its watermark is in the outbox), did it cover a day within `TIMELINE_READY_SCHEDULER_DAYS`
of today. With `TIMELINE_FOLLOW_SECONDS` > 0 a thread keeps the read models following the
log every that many seconds, so that population answers and the lag stay small. These
are settings (`timeline.settings`), handed here as `ServiceOptions`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from projections.dates import taiwan_calendar
from projections.readmodel import ReadModel, default_read_db, read_model_fingerprint
from projections.rules import RuleBook
from timeline.api_settings import ApiConfigError
from timeline.audit import record_accesses
from timeline.errors import StorageConfigError
from timeline.store import StoreConfig, TimelineStore

if TYPE_CHECKING:
    from timeline.settings import Settings

log = logging.getLogger(__name__)

FOLLOW_SETTING = "TIMELINE_FOLLOW_SECONDS"
LAG_SETTING = "TIMELINE_READY_MAX_LAG"
SCHEDULER_SETTING = "TIMELINE_READY_SCHEDULER_DAYS"
DEFAULT_FOLLOW_SECONDS = 5.0
DEFAULT_MAX_LAG = 10_000
DEFAULT_SCHEDULER_DAYS = 2
DEFAULT_POPULATION_SLOTS = 2
_Part = TypeVar("_Part")
DEFAULT_POPULATION_WAIT = 30.0
MAX_IDLE_MODELS = 8
# How long the audit writer waits for the rows of views under way before it commits.
COMMIT_DELAY = 0.002
# The scheduler's tables (scheduler/outbox.py), read here without creating them.
OUTBOX_TABLE = "alert_outbox"
STATE_TABLE = "scheduler_state"


READY_TIMEOUT = 3.0  # seconds /readyz waits for PostgreSQL before it answers 503


@dataclass(frozen=True)
class ServiceOptions:
    """How the server process follows the log and judges its own readiness."""

    follow_seconds: float = 0.0  # 0: no background follower (population answers still sync)
    ready_max_lag: int | None = DEFAULT_MAX_LAG  # notifications; None: not checked
    ready_scheduler_days: int | None = DEFAULT_SCHEDULER_DAYS  # None: not checked
    # After start-up, set everything made so far aside from the garbage collector
    # (`gc.freeze`): a full collection then walks only what requests made. Measured in the
    # server: ~60 ms a full collection before, ~1.5 ms after, a pause every few thousand
    # requests that set the p99. Once per process; the configured service does it.
    freeze_heap: bool = False
    population_slots: int = DEFAULT_POPULATION_SLOTS  # population queries computed at once
    population_wait: float = DEFAULT_POPULATION_WAIT  # seconds to wait for a slot, then 503

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceOptions:
        """The service's part of the one configuration (validated when it was loaded)."""
        return cls(
            follow_seconds=settings.follow_seconds,
            ready_max_lag=settings.ready_max_lag,
            ready_scheduler_days=settings.ready_scheduler_days,
            freeze_heap=True,
            population_slots=settings.population_slots,
            population_wait=settings.population_wait,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServiceOptions:
        """The options of an environment mapping (`ApiConfigError` naming a bad setting)."""
        from timeline.settings import SettingsError, load_settings

        try:
            return cls.from_settings(load_settings(environ))
        except SettingsError as exc:
            raise ApiConfigError(str(exc)) from None


class Busy(Exception):
    """No population slot came free in time: the answer is 503 with Retry-After."""

    def __init__(self, wait: float) -> None:
        self.retry_after = max(1, round(wait / 10))
        super().__init__(
            f"busy: more population queries than this process computes at once; "
            f"retry in {self.retry_after} s"
        )


class PopulationGate:
    """At most `slots` population queries compute at once in this process; the others wait.

    A population query (every student's tasks, fines or alerts; a staff list) costs from
    milliseconds to seconds of CPU in a thread of the server's pool. Unbounded, 200 of them
    at once (12,500 students) took every thread and the GIL: `/healthz` on the event loop
    waited up to 16 s and the heap grew past 500 MB. A query waits for its slot in a
    semaphore (outside the GIL), so the event loop and the student views stay quick; one
    that gets none within `wait` seconds raises `Busy`. A streamed answer takes a slot for
    each part it computes (`parts`), never while its client reads, so a slow reader holds
    no slot.
    """

    def __init__(
        self, slots: int = DEFAULT_POPULATION_SLOTS, wait: float = DEFAULT_POPULATION_WAIT
    ) -> None:
        self.slots = slots
        self.wait = wait
        self._free = threading.BoundedSemaphore(slots)
        self.waiting = 0  # queries waiting for a slot now
        self.busy = 0  # slots held now
        self.refused = 0  # answered 503 since start-up (also counted as 503s in /metrics)
        self._count = threading.Lock()

    @contextmanager
    def slot(self, *, forever: bool = False) -> Iterator[None]:
        """Hold a slot for the block; `Busy` after the gate's `wait` unless `forever`."""
        if not self._free.acquire(blocking=False):
            with self._count:
                self.waiting += 1
            try:
                got = self._free.acquire(timeout=None if forever else self.wait)
            finally:
                with self._count:
                    self.waiting -= 1
            if not got:
                with self._count:
                    self.refused += 1
                raise Busy(self.wait)
        with self._count:
            self.busy += 1
        try:
            yield
        finally:
            with self._count:
                self.busy -= 1
            self._free.release()

    def parts(self, parts: Iterator[_Part]) -> Iterator[_Part]:
        """`parts`, each computed holding a slot (waiting as long as it takes: the answer
        has begun, a 503 can no longer be sent)."""
        while True:
            with self.slot(forever=True):
                part = next(parts, None)
            if part is None:
                return
            yield part


class ClosingStreamingResponse(StreamingResponse):
    """A streamed answer that releases what it holds as soon as the answer ends.

    Starlette runs a plain generator's parts in the thread pool and, when the client goes
    away mid-answer, stops asking for parts but leaves the generator to the garbage
    collector: its `finally` (the query closed, the read model handed back) ran only at
    the next collection. 40 clients that reset a streamed list kept 40 read-model
    connections, each with its read transaction open, and the server grew by 90 MB.
    Here the parts are closed and `on_close` called (the model handed back) once the
    answer ends, however it ends (done, the client gone, cancelled; also when no part was
    asked for yet, where a generator's own `finally` would never run), on the event loop,
    after the part being computed (if any) is done: a cancelled wait for a thread lets the
    thread finish.
    """

    def __init__(
        self, parts: Generator[Any, None, None], *, on_close: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(parts, **kwargs)
        self._parts = parts
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the answer; then close the parts and call `on_close`."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                self._parts.close()
            finally:
                self._on_close()


class _PooledReadModel(ReadModel):
    """A read model whose `close` hands it back to its pool."""

    pool: ReadModelPool | None = None
    generation: int = 0
    path: str = ""

    def close(self) -> None:
        """Back to the pool (or closed, outside a lifespan or after shutdown)."""
        if self.pool is None:
            super().close()
        else:
            self.pool.release(self)

    def discard(self) -> None:
        """Close the connection for good."""
        ReadModel.close(self)


@dataclass
class ReadModelPool:
    """Idle read models of one read-model file, opened once each."""

    rules: RuleBook
    generation: int = 0
    idle: list[_PooledReadModel] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    _fingerprint: tuple[Any, str] | None = None

    def acquire(self, path: str, pooled: bool) -> _PooledReadModel:
        """An idle model of `path`, or a new one."""
        with self.lock:
            while pooled and self.idle:
                model = self.idle.pop()
                if model.generation == self.generation and model.path == path:
                    return model
                model.discard()
        if self._fingerprint is None:
            calendar = taiwan_calendar()
            self._fingerprint = (calendar, read_model_fingerprint(self.rules, calendar))
        calendar, fingerprint = self._fingerprint
        model = _PooledReadModel(
            path, self.rules, calendar, fingerprint=fingerprint, any_thread=True
        )
        model.path = path
        model.generation = self.generation
        model.pool = self if pooled else None
        return model

    def release(self, model: _PooledReadModel) -> None:
        """Keep `model` for the next request, unless it is stale or the pool is full."""
        with self.lock:
            if (
                not self.closed
                and model.generation == self.generation
                and len(self.idle) < MAX_IDLE_MODELS
                and not model.db.conn.in_transaction
            ):
                self.idle.append(model)
                return
        model.discard()

    def renew(self) -> None:
        """Models opened so far belong to a replaced store: close them as they come back."""
        with self.lock:
            self.generation += 1
            stale, self.idle = self.idle, []
        for model in stale:
            model.discard()

    def close(self) -> None:
        """Close every idle model; models still lent out close when they come back."""
        with self.lock:
            self.closed = True
            stale, self.idle = self.idle, []
        for model in stale:
            model.discard()


@dataclass
class _AuditRow:
    store: TimelineStore
    row: tuple[str, str, str, datetime]
    committed: threading.Event | None = None  # a waiting thread's
    future: asyncio.Future[None] | None = None  # a waiting coroutine's, on `loop`
    loop: asyncio.AbstractEventLoop | None = None
    error: BaseException | None = None


@dataclass
class Expectation:
    """A view's promise of an audit row (`AuditGroupCommit.expecting`)."""

    met: bool = False


def _settle_all(items: list[_AuditRow]) -> None:
    """Hand a commit's outcome to its waiting coroutines (gone if a request was cancelled)."""
    for item in items:
        future = item.future
        if future is None or future.done():
            continue
        if item.error is None:
            future.set_result(None)
        else:
            future.set_exception(item.error)


class AuditGroupCommit:
    """Audit rows of concurrent requests, committed together (each caller waits for its own).

    One writer thread takes every row queued so far and commits them in one transaction
    per store, while the rows that arrive meanwhile queue for the next one. A thread
    waits in `record`; a coroutine awaits `arecord` without holding a thread of the
    server's pool (and without a hop through it). Either returns once its row is
    committed, or raises what the commit raised.
    """

    def __init__(self, write: Callable[[TimelineStore, list[Any]], None] = record_accesses) -> None:
        self.write = write
        self.queued: list[_AuditRow] = []
        self.writing = False
        self.ready = threading.Condition()
        self.batches = 0  # transactions written (for tests and the benchmark)
        self._writer: threading.Thread | None = None
        self._closing = False
        self.expected = 0  # views under way whose rows are not queued yet
        self.delay = COMMIT_DELAY
        # What the writer waits for: "rows" (an empty queue), "views" (the rows of views
        # under way), None (busy). A row wakes it only when it waits for that row: a wake-up
        # per row cost a view a sixth of its CPU (the GIL handed back and forth).
        self._awaiting: str | None = None

    def record(
        self, store: TimelineStore, token_name: str, route: str, student_id: str, at: datetime
    ) -> None:
        """Append one row; returns once it is committed (raises what the commit raised)."""
        mine = _AuditRow(store, (token_name, route, student_id, at), committed=threading.Event())
        self._enqueue(mine)
        assert mine.committed is not None
        mine.committed.wait()
        if mine.error is not None:
            raise mine.error

    async def arecord(
        self,
        store: TimelineStore,
        token_name: str,
        route: str,
        student_id: str,
        at: datetime,
        expectation: Expectation | None = None,
    ) -> None:
        """`record` for a coroutine: awaits the commit of its row (fulfils `expectation`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        row = _AuditRow(store, (token_name, route, student_id, at), None, future, loop)
        self._enqueue(row, expectation)
        await future

    @contextmanager
    def expecting(self) -> Iterator[Expectation]:
        """A view under way whose row will follow: the writer may wait a moment for it."""
        expectation = Expectation()
        with self.ready:
            self.expected += 1
        try:
            yield expectation
        finally:
            if not expectation.met:  # it ended without a row (404, an error)
                with self.ready:
                    expectation.met = True
                    self.expected -= 1
                    if self._awaiting == "views" and self.expected <= 0:
                        self.ready.notify_all()

    def close(self) -> None:
        """Stop the writer once the rows queued so far are committed."""
        with self.ready:
            self._closing = True
            writer, self._writer = self._writer, None
            self.ready.notify_all()
        if writer is not None:
            writer.join(timeout=30)
        with self.ready:
            self._closing = False

    def _enqueue(self, row: _AuditRow, expectation: Expectation | None = None) -> None:
        with self.ready:
            self.queued.append(row)
            if expectation is not None and not expectation.met:
                expectation.met = True
                self.expected -= 1
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(
                    target=self._run, name="timeline-audit-writer", daemon=True
                )
                self._writer.start()
            elif self._awaiting == "rows" or (self._awaiting == "views" and self.expected <= 0):
                self.ready.notify()

    def _run(self) -> None:
        """The writer: commit whatever is queued, batch after batch, until closed and empty."""
        while True:
            with self.ready:
                self._awaiting = "rows"
                while not self.queued and not self._closing:
                    self.ready.wait()
                if not self.queued:
                    self._awaiting = None
                    return
                # Like PostgreSQL's commit_delay with commit_siblings: while views are
                # under way, wait a moment for their rows, to commit them together.
                self._awaiting = "views"
                deadline = time.monotonic() + self.delay
                while self.expected > 0 and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.ready.wait(left)
                batch, self.queued = self.queued, []
                self._awaiting = None
                self.writing = True
            try:
                self._write(batch)
            finally:
                with self.ready:
                    self.writing = False
                waiting: dict[asyncio.AbstractEventLoop, list[_AuditRow]] = {}
                for item in batch:
                    if item.committed is not None:
                        item.committed.set()
                    elif item.future is not None and item.loop is not None:
                        waiting.setdefault(item.loop, []).append(item)
                for loop, items in waiting.items():  # one wake-up of each loop per batch
                    with suppress(RuntimeError):  # its loop closed: nobody waits
                        loop.call_soon_threadsafe(_settle_all, items)

    def _write(self, batch: list[_AuditRow]) -> None:
        """One transaction per store in the batch; every row learns how its commit went."""
        by_store: dict[int, list[_AuditRow]] = {}
        for item in batch:
            by_store.setdefault(id(item.store), []).append(item)
        for items in by_store.values():
            error: BaseException | None = None
            try:
                self.write(items[0].store, [item.row for item in items])
                self.batches += 1
            except BaseException as exc:  # handed to each waiting request
                error = exc
            for item in items:
                item.error = error


class SharedStore:
    """The store and read models of one server process (see the module's docstring)."""

    def __init__(
        self,
        db: str | None,
        read_db: str | None,
        rules: RuleBook,
        options: ServiceOptions | None = None,
        cipher_key: str | None = None,
    ) -> None:
        self.db = db
        self.cipher_key = cipher_key
        self.read_db = read_db
        self.options = options or ServiceOptions()
        self.models = ReadModelPool(rules)
        self.audit = AuditGroupCommit()
        self.gate = PopulationGate(self.options.population_slots, self.options.population_wait)
        self._store: TimelineStore | None = None
        self._identity: tuple[int, int] | None = None
        self._retired: list[TimelineStore] = []
        self._lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    # -- lifespan ----------------------------------------------------------------------
    def start(self) -> None:
        """Share from now on: open the store (a failure is logged; requests retry)."""
        self._started = True
        self.models.closed = False
        taiwan_calendar()  # built now, not by the first requests (about 60 ms)
        if self.options.freeze_heap:
            _freeze_heap()
        try:
            self._shared()
        except StorageConfigError as exc:
            log.error("the event store is unavailable at start-up: %s", type(exc).__name__)
        if self.options.follow_seconds > 0:
            self._stop.clear()
            self._follower = threading.Thread(
                target=self._follow, name="timeline-follower", daemon=True
            )
            self._follower.start()

    def close(self) -> None:
        """Stop the follower and close everything opened (at the lifespan's end)."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=30)
            self._follower = None
        self.audit.close()
        with self._lock:
            self._started = False
            stores = [*self._retired, *([self._store] if self._store else [])]
            self._store, self._identity, self._retired = None, None, []
        self.models.close()
        for store in stores:
            with suppress(Exception):
                store.close()

    # -- the store ---------------------------------------------------------------------
    @contextmanager
    def store(self) -> Iterator[TimelineStore]:
        """The shared store (in a lifespan), else one opened for this use and closed after."""
        if self._started:
            yield self._shared()
            return
        opened = TimelineStore.open(self.db, self.cipher_key)
        try:
            yield opened
        finally:
            opened.close()

    @asynccontextmanager
    async def astore(self) -> AsyncIterator[TimelineStore]:
        """`store` for a coroutine: opening (rare: the first use, a replaced file) in a thread."""
        store = self._store
        if self._started and store is not None and self._same_file(store):
            yield store  # the usual case: no I/O but a stat of the file
            return
        if self._started:
            yield await run_in_threadpool(self._shared)
            return
        opened = await run_in_threadpool(TimelineStore.open, self.db, self.cipher_key)
        try:
            yield opened
        finally:
            await run_in_threadpool(opened.close)

    def _shared(self) -> TimelineStore:
        store = self._store
        if store is not None and self._same_file(store):
            return store
        with self._lock:
            store = self._store
            if store is not None and self._same_file(store):
                return store
            if store is not None:
                log.info("the event store's file was replaced: opening it again")
                self._retired.append(store)
                self.models.renew()
            self._store = store = TimelineStore.open(self.db, self.cipher_key)
            store.fail_fast(READY_TIMEOUT)  # an outage answers 503 in seconds, not minutes
            self._identity = _file_identity(store.config)
            return store

    def _same_file(self, store: TimelineStore) -> bool:
        """Whether a SQLite store's file is still the one opened (PostgreSQL: always)."""
        return store.config.is_postgres or _file_identity(store.config) == self._identity

    def record_access(
        self, store: TimelineStore, token_name: str, route: str, student_id: str, at: datetime
    ) -> None:
        """Append a row to the audit of access (committed with concurrent requests' rows)."""
        self.audit.record(store, token_name, route, student_id, at)

    # -- read models --------------------------------------------------------------------
    def read_db_path(self, store: TimelineStore) -> str:
        """The read-model file of `store`."""
        return self.read_db or default_read_db(store.config.location)

    def read_model(
        self, store: TimelineStore, *, sync: bool = True, rebuild_if_empty: bool = False
    ) -> ReadModel:
        """A read model brought up to date with `store`; `close()` hands it back.

        `rebuild_if_empty`: tables that follow nothing yet (a new file, other rules or code)
        are filled by the snapshot rebuild, several times faster than following the log.
        """
        model = self.models.acquire(self.read_db_path(store), pooled=self._started)
        if not sync:
            return model
        try:
            model.sync(store, rebuild_if_empty=rebuild_if_empty)
        except BaseException:
            model.discard()
            raise
        return model

    def _follow(self) -> None:
        """Keep the read models following the log until stopped."""
        while not self._stop.wait(self.options.follow_seconds):
            try:
                with self.store() as store:
                    self.read_model(store, rebuild_if_empty=True).close()
            except Exception as exc:
                log.warning("following the log failed: %s", type(exc).__name__)

    # -- readiness and figures ----------------------------------------------------------
    def figures(self) -> Figures:
        """The store's log position, the read models' position, and the outbox's state."""
        with self.store() as store:
            position = store.max_position()
            model = self.read_model(store, sync=False)
            try:
                read_position = model.position
                outbox = (
                    _postgres_outbox(store) if store.config.is_postgres else _sqlite_outbox(model)
                )
            finally:
                model.close()
        return Figures(position, read_position, *outbox)

    def readiness(self, today: date) -> tuple[bool, dict[str, Any]]:
        """Whether this process can serve, with the figures and the reason if not."""
        try:
            with self.store() as store:
                if not store.reachable(READY_TIMEOUT):
                    raise StorageConfigError("the event store does not answer")
            figures = self.figures()
        except Exception as exc:  # StorageConfigError, or a database error from a pool
            log.warning("readiness: the store is unreachable: %s", type(exc).__name__)
            return False, {"status": "not ready", "reason": "the event store is unavailable"}
        body: dict[str, Any] = {
            "store_position": figures.position,
            "read_model_position": figures.read_position,
            "read_model_lag": figures.lag,
            "scheduler_watermark": figures.watermark.isoformat() if figures.watermark else None,
        }
        reasons = []
        bound = self.options.ready_max_lag
        if bound is not None and figures.lag > bound:
            reasons.append(
                f"the read models are {figures.lag} notifications behind the log "
                f"(at most {bound}: {LAG_SETTING})"
            )
        days = self.options.ready_scheduler_days
        if days is not None and figures.watermark is not None:
            late = (today - figures.watermark).days
            if late > days:
                reasons.append(
                    f"the scheduler's last day covered is {figures.watermark.isoformat()}, "
                    f"{late} days ago (at most {days}: {SCHEDULER_SETTING})"
                )
        if reasons:
            return False, {"status": "not ready", "reason": "; ".join(reasons), **body}
        return True, {"status": "ready", **body}


@dataclass(frozen=True)
class Figures:
    """What `/readyz` and `/metrics` report of the store, read models and outbox."""

    position: int
    read_position: int
    watermark: date | None
    alerts: dict[str, int]

    @property
    def lag(self) -> int:
        """Notifications in the log that the read models have not applied yet."""
        return max(0, self.position - self.read_position)


_FROZEN = threading.Lock()
_frozen = False


def _freeze_heap() -> None:
    """Collect once, then move every object alive into the permanent generation."""
    global _frozen
    with _FROZEN:
        if _frozen:
            return
        gc.collect()
        gc.freeze()
        _frozen = True
        log.info("start-up heap set aside from the collector: %d objects", gc.get_freeze_count())


def _file_identity(config: StoreConfig) -> tuple[int, int] | None:
    if config.is_postgres:
        return None
    try:
        stat = os.stat(config.location)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _sqlite_outbox(model: ReadModel) -> tuple[date | None, dict[str, int]]:
    """The scheduler's watermark and alerts per state, from the read-model file."""
    run: Callable[[str], list[Any]] = lambda sql: model.db.conn.execute(sql).fetchall()  # noqa: E731
    tables = {row[0] for row in run("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return _outbox(run, tables, "")


def _postgres_outbox(store: TimelineStore) -> tuple[date | None, dict[str, int]]:
    """The scheduler's watermark and alerts per state, from the store's schema."""
    schema = store.recorder.datastore.schema
    with store.recorder.datastore.transaction(commit=False) as c:

        def run(sql: str) -> list[Any]:
            c.execute(sql)
            return [tuple(row.values()) if isinstance(row, dict) else row for row in c.fetchall()]

        c.execute("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = %s", (schema,))
        tables = {next(iter(row.values())) for row in c.fetchall()}
        return _outbox(run, tables, f'"{schema}".')


def _outbox(
    run: Callable[[str], list[Any]], tables: set[str], prefix: str
) -> tuple[date | None, dict[str, int]]:
    watermark = None
    if STATE_TABLE in tables:
        rows = run(f"SELECT value FROM {prefix}{STATE_TABLE} WHERE name = 'watermark'")
        if rows:
            with suppress(ValueError):
                watermark = date.fromisoformat(rows[0][0])
    alerts: dict[str, int] = {}
    if OUTBOX_TABLE in tables:
        for state, count in run(
            f"SELECT state, COUNT(*) FROM {prefix}{OUTBOX_TABLE} GROUP BY state"
        ):
            alerts[str(state)] = int(count)
    return watermark, alerts
