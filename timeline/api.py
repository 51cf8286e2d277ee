"""The HTTP API (`timeline serve`): the CLI's surface under /v1, with an OpenAPI document.

Writing needs a feed token bound to the event's source, reading a staff token (named
bearer tokens from configuration, see `timeline.api_settings`). Errors are JSON
`{"error": "..."}` with 400/401/403/404/408/409/413/415/422 and never echo the request body
(personal data) nor a stack trace. Every response carries security headers; one access
line per request is logged with tokens redacted (uvicorn's own access log is off), as
text or JSON (`timeline.api_logging`), and counted for `/metrics` (`timeline.api_metrics`).

`timeline.api:app` is the API configured by `load_settings` (`app_from_environment`),
for `uvicorn timeline.api:app --workers N` or gunicorn; it is built when first asked
for, and opens the store only when its lifespan starts (`timeline.api_service`).
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager, contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qsl, quote

import psycopg
from eventsourcing.persistence import PersistenceError
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from timeline import api_models as doc
from timeline.api_logging import log_config
from timeline.api_metrics import (
    CONTENT_TYPE,
    UNMATCHED,
    ApiMetrics,
    FiguresCollector,
    GateCollector,
)
from timeline.api_models import Day, Moment, StudentId, errors
from timeline.api_service import Busy, ClosingStreamingResponse, ServiceOptions, SharedStore
from timeline.api_settings import ANY_SOURCE, ApiConfig, ApiConfigError, Token
from timeline.audit import accesses
from timeline.clock import Clock, parse_day, parse_known_at, system_clock, taipei_today
from timeline.contract import parse_event
from timeline.errors import ContractError, StorageConfigError, TimelineError
from timeline.history import history_entries
from timeline.ingest import ingest_objects
from timeline.rawjson import loads_strict
from timeline.store import TimelineStore

if TYPE_CHECKING:
    from timeline.settings import Settings

__all__ = ["ApiConfig", "ApiError", "app_from_environment", "create_app"]

log = logging.getLogger(__name__)

# Population answers keep SPEC §4's array shape; students whose facts cannot be derived
# (and so are missing from the array) are named in these headers (at most 50 ids).
LEFT_OUT = "X-Timeline-Left-Out"
LEFT_OUT_COUNT = "X-Timeline-Left-Out-Count"
TOTAL_COUNT = "X-Total-Count"  # with ?count=true: rows matching, all pages
NEXT_OFFSET = "X-Next-Offset"  # with ?limit=: the offset of the next page, if any
KNOWN_AT = "X-Timeline-Known-At"  # the record moment a population answer holds at
STORE_RETRY_AFTER = 5  # seconds a client is told to wait after "the event store is unavailable"
MAX_PAGE = 100_000
JSON = "application/json"
access_log = logging.getLogger("timeline.access")

# The whole batch is one report; beyond this many events a request is refused rather
# than answered with a report larger than the body (a body of `[1,1,1,...]`).
MAX_EVENTS_PER_REQUEST = 50_000
# A student view derived on the event loop at most this long a history (~30 µs a fact);
# a longer one is derived in the thread pool so that other requests are not held up.
INLINE_VIEW_FACTS = 200
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
REQUEST_ID = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Query parameters whose values never reach a log line.
_SECRET_PARAM = re.compile(r"token|key|secret|pass|auth|sig|session|credential", re.IGNORECASE)
_JSON_TYPE = re.compile(r"application/([a-z0-9.+-]*\+)?json", re.IGNORECASE)
# A secret calendar link is its own credential: the path never reaches a log line.
_CALENDAR_LINK = re.compile(r"^/calendar/.*$", re.DOTALL)


class ApiError(Exception):
    """An error with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class SecurityHeaders:
    """ASGI middleware: the security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the headers to the response start (keeping any the route set itself)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AccessLog:
    """ASGI middleware: one log line per request, tokens redacted wherever they appear.

    Each request gets an id (a sane incoming `X-Request-ID`, else a new one), sent back
    in `X-Request-ID`; the line's fields (`record.access`) are what the JSON format
    writes; the request is counted in `metrics` by its route's template.
    """

    def __init__(
        self, app: ASGIApp, secrets: tuple[str, ...], metrics: ApiMetrics | None = None
    ) -> None:
        self.app = app
        self.secrets = tuple(s for s in secrets if s)
        self.metrics = metrics
        # Each secret as it may appear in a line: as is, and percent-encoded two ways.
        self.forms = tuple(
            {secret, quote(secret, safe=""), quote(secret, safe="/")} for secret in self.secrets
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and log method, path, redacted query, status and token name."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the application raises
        request_id = self.request_id(scope)

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            seconds = time.perf_counter() - started
            token_name = scope.get("state", {}).get("token_name", "-")
            route = self.route(scope)
            if self.metrics is not None:
                self.metrics.observe(scope["method"], route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):  # else nobody reads the line
                self.log(scope, request_id, route, status, seconds, token_name)

    def log(
        self, scope: Scope, request_id: str, route: str, status: int, seconds: float, token: str
    ) -> None:
        """The access line (redacted), with its fields for the JSON format."""
        line = (
            f"{scope['method']} {self.target(scope)} {status} {seconds * 1000:.1f}ms token={token}"
        )
        fields = {
            "request_id": request_id,
            "method": self.redact(scope["method"]),
            "route": self.redact(route),
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "token": self.redact(token),
        }
        access_log.info("%s", self.redact(line), extra={"access": fields})

    @staticmethod
    def request_id(scope: Scope) -> str:
        """The client's `X-Request-ID` when it is short and plain, else a new id."""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                text = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(text):
                    return text
                break
        return uuid.uuid4().hex

    @staticmethod
    def route(scope: Scope) -> str:
        """The template of the route that answered (`/v1/students/{student_id}`)."""
        route = scope.get("route")
        path = getattr(route, "path_format", None)  # `{student_id}`, not its convertor
        return path if isinstance(path, str) and path else UNMATCHED

    @staticmethod
    def target(scope: Scope) -> str:
        """The path (percent-encoded: no control characters) and the redacted query."""
        path = quote(scope["path"], safe="/:@!$&'()*+,;=-._~")
        path = _CALENDAR_LINK.sub("/calendar/[redacted].ics", path)
        raw = scope.get("query_string", b"").decode("latin-1")
        if not raw:
            return path
        pairs = (
            f"{quote(k, safe='')}="
            + ("[redacted]" if _SECRET_PARAM.search(k) else quote(v, safe=""))
            for k, v in parse_qsl(raw, keep_blank_values=True)
        )
        return f"{path}?{'&'.join(pairs)}"

    def redact(self, line: str) -> str:
        """The line with any configured token replaced (also when sent where none belongs)."""
        for forms in self.forms:
            for form in forms:
                line = line.replace(form, "[redacted]")
        return line


def bearer_token(request: Request) -> str:
    """The presented bearer token (401 when the Authorization header has none)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "a bearer token is required (Authorization: Bearer <token>)")
    return token.strip()


def find_token(presented: str, tokens: tuple[Token, ...]) -> Token | None:
    """The configured token that `presented` is, among `tokens` (None if none)."""
    # Compare with every token (constant time each) so timing tells nothing of which.
    found = None
    for token in tokens:
        if token.matches(presented) and found is None:
            found = token
    return found


async def _read_body(request: Request, limit: int, idle_seconds: float) -> bytes:
    """The body, refused with 413 beyond `limit` bytes: by Content-Length, or while streaming.

    408 when no piece of it arrives for `idle_seconds` (a chunked body without its end,
    or one short of its Content-Length, would otherwise hold the request open for good).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(400, "Content-Length: not a number of bytes")
        if int(declared) > limit:
            raise ApiError(413, f"the body is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    pieces = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(pieces), idle_seconds)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ApiError(
                408, f"the body stopped arriving: nothing for {idle_seconds:g} s"
            ) from None
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _payload(body: bytes) -> list[Any]:
    """The events of a body: one JSON object or an array; errors never quote the body."""
    if not body.strip():
        raise ApiError(400, "body: empty; send one event (a JSON object) or an array of events")
    try:
        payload = loads_strict(body)
    except ValueError as exc:
        raise ApiError(400, f"body: {exc}") from None
    items = payload if isinstance(payload, list) else [payload]
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise ApiError(413, f"body: at most {MAX_EVENTS_PER_REQUEST} events per request")
    return items


def _foreign_sources(token: Token, items: list[Any]) -> list[tuple[int, str]]:
    """The events this token may not write: (index, source) of each valid one.

    The source is read from the validated event, so it is exactly the one that would be
    stored (an absent source is `manual`, SPEC §2). Invalid events are left to ingestion,
    which rejects them without storing anything.
    """
    if ANY_SOURCE in token.sources:
        return []
    foreign: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        try:
            source = parse_event(item).source
        except ContractError:
            continue
        if not token.may_write(source):
            foreign.append((index, source))
    return foreign


def query_day(value: str | None, name: str, clock: Clock = system_clock) -> date:
    """A day parameter (YYYY-MM-DD; default: today in Taipei by `clock`), else a 400."""
    if value is None:
        return taipei_today(clock)
    try:
        return parse_day(value)
    except ValueError as exc:
        raise ApiError(400, f"{name}: {exc}") from None


def _moment(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_known_at(value)
    except ValueError as exc:
        raise ApiError(400, f"{name}: {exc}") from None


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods the routes of `app` answer at the scope's path, sorted."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        route_methods = getattr(route, "methods", None)
        # A route whose path matches answers FULL (its method) or PARTIAL (another method).
        if route_methods and route.matches({**scope, "type": "http"})[0] != Match.NONE:
            methods |= set(route_methods)
    return sorted(methods)


def create_app(
    config: ApiConfig,
    rules: Any = None,
    clock: Clock = system_clock,
    *,
    service: ServiceOptions | None = None,
) -> FastAPI:
    """The FastAPI application under `rules` (a RuleBook; default: the guide's, no settings).

    `clock` stamps the audit of access (record time) and dates readiness; the staff pages
    (`web.app`) wrap this application. `service`: the follower and the readiness bounds
    (default: no follower, the default bounds). The store is shared by the requests
    while the lifespan runs (`timeline.api_service.SharedStore`, at `app.state.shared`).
    """
    from projections.readmodel import ReadModel, json_array, moment_text
    from projections.rules import DEFAULT_RULES

    # The configuration was read once by the caller (`timeline.settings`), never here.
    rulebook = rules if rules is not None else DEFAULT_RULES
    shared = SharedStore(config.db, config.read_db, rulebook, service, config.cipher_key)
    metrics = ApiMetrics()
    metrics.add_collector(FiguresCollector(shared.figures, lambda: taipei_today(clock)))
    metrics.add_collector(GateCollector(shared.gate))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(shared.start)
        try:
            yield
        finally:
            await run_in_threadpool(shared.close)

    app = FastAPI(
        title="residency-timeline",
        version="0.1.0",
        description="ARC status, due tasks and fines of foreign students in Taiwan (SPEC §4).",
        # The interactive docs load script from a CDN and inline; /openapi.json stays.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.shared = shared
    app.state.metrics = metrics
    app.add_middleware(SecurityHeaders)
    app.add_middleware(AccessLog, secrets=config.secrets(), metrics=metrics)

    wanted_of = {
        "feed": config.feed_tokens,
        "staff": config.readers(),
        "admin": config.admin_tokens,
    }
    every = config.feed_tokens + config.readers()
    refusals = {"feed": "write", "staff": "read", "admin": "read the audit of access"}

    def authorize(request: Request, kind: str) -> Token:
        """The request's bearer token if it is of `kind` (feed, staff, admin); else 401/403."""
        presented = bearer_token(request)
        token = find_token(presented, wanted_of[kind])
        if token is not None:
            request.state.token_name = token.name
            return token
        token = find_token(presented, every)
        if token is not None:
            request.state.token_name = token.name
            raise ApiError(403, f"this token may not {refusals[kind]}")
        raise ApiError(401, "unknown token")

    def require(kind: str) -> Any:
        """A dependency: the bearer token of the wanted kind (feed, staff or admin)."""
        # Declares the bearer scheme in the OpenAPI document; the header is read below.
        scheme = {"feed": doc.FEED_TOKEN, "staff": doc.STAFF_TOKEN, "admin": doc.ADMIN_TOKEN}[kind]
        declared = Depends(scheme)

        async def check(
            request: Request, _: HTTPAuthorizationCredentials | None = declared
        ) -> Token:
            # No I/O here: run on the event loop, not in a thread of the pool.
            return authorize(request, kind)

        return Depends(check)

    @contextmanager
    def store() -> Iterator[TimelineStore]:
        with shared.store() as opened:
            yield opened

    record_access = shared.record_access  # audit rows of concurrent requests commit together
    gate = shared.gate  # population queries computed at once (`PopulationGate`)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc)},
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(TimelineError)
    async def core_error(_: Request, exc: TimelineError) -> JSONResponse:
        if isinstance(exc, StorageConfigError):
            # Its text may name the database URL or path: the log has it, the client not.
            log.error("storage unavailable: %s", type(exc).__name__)
            return unavailable()
        # A student whose facts cannot be derived (DerivationError) is unprocessable data.
        status = 422 if type(exc).__name__ == "DerivationError" else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    def unavailable() -> JSONResponse:
        # Retry-After: an outage of PostgreSQL is seen within seconds (`FailFast`).
        return JSONResponse(
            {"error": "the event store is unavailable"},
            status_code=503,
            headers={"Retry-After": str(STORE_RETRY_AFTER)},
        )

    async def store_failed(_: Request, exc: Exception) -> JSONResponse:
        # A pooled connection that failed (the server went away, the file is locked).
        log.error("storage unavailable: %s", type(exc).__name__)
        return unavailable()

    for failure in (PersistenceError, psycopg.OperationalError, sqlite3.OperationalError):
        app.add_exception_handler(failure, store_failed)

    @app.get("/healthz", include_in_schema=True)
    async def healthz() -> dict[str, str]:
        """The process is alive (no store is touched, no token needed)."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Ready to serve: the store answers, the read models and the scheduler are current.

        503 with `{"status": "not ready", "reason": ...}` otherwise (no token needed; the
        answer holds positions and a day, no personal data).
        """
        ready, body = shared.readiness(taipei_today(clock))
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def get_metrics() -> Response:
        """Prometheus metrics (see `timeline.api_metrics`; no token: no personal data)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Field and reason only: pydantic's `input` would echo what was sent.
        parts = [
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'body', 'path'))}: "
            f"{e['msg']}"
            for e in exc.errors()
        ]
        return JSONResponse({"error": "; ".join(parts)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Keeps the exception's headers: a 405 names the allowed methods (Allow), those of
        # every route of the path (Starlette names only the first route's).
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope)) or "GET"
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette answers this one outside the middleware: add the headers here.
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse(
            {"error": "internal error (logged)"}, status_code=500, headers=SECURITY_HEADERS
        )

    writer = require("feed")

    @app.post(
        "/v1/events",
        response_model=doc.IngestReport,
        responses={
            **errors(400, 401, 403, 408, 413, 415, 503),
            409: {"model": doc.IngestRefused, "description": doc.WHY[409]},
            422: {
                "model": doc.IngestRefused,
                "description": "Nothing was stored: some events are not valid (each rejection "
                "names the index, the field and the reason).",
            },
        },
        openapi_extra={"requestBody": doc.EVENTS_BODY},
    )
    async def post_events(
        request: Request,
        token: Token = writer,
        partial: Annotated[
            bool,
            Query(description="Store the valid events and report the others (answer 200)."),
        ] = False,
    ) -> JSONResponse:
        """Ingest one event or an array of events (atomic unless ?partial=true).

        Every event must be under a source the token is bound to, else 403 and nothing
        is stored (also with ?partial=true).
        """
        content_type = request.headers.get("content-type", "application/json")
        if not _JSON_TYPE.fullmatch(content_type.split(";")[0].strip()):
            raise ApiError(415, "Content-Type: send application/json")
        items = _payload(await _read_body(request, config.max_body_bytes, config.body_idle_seconds))
        foreign = await run_in_threadpool(_foreign_sources, token, items)
        if foreign:
            shown = ", ".join(f"index {i} ({source!r})" for i, source in foreign[:10])
            more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
            raise ApiError(
                403,
                f"token {token.name!r} may not write under the source of {shown}{more}; "
                "nothing was stored",
            )

        def ingest() -> Any:
            with store() as opened:
                return ingest_objects(opened, items, partial=partial)

        report = await run_in_threadpool(ingest)
        metrics.count_ingest(report.accepted, report.duplicates, len(report.rejected))
        body = report.as_json()
        if report.ok or partial:
            return JSONResponse(body, status_code=200)
        conflicts = all(r.conflict for r in report.rejected)
        return JSONResponse(
            body | {"error": "nothing was stored: some events were rejected"},
            status_code=409 if conflicts else 422,
        )

    reader = require("staff")

    @app.get(
        "/v1/students/{student_id:student}",
        response_model=doc.StudentView,
        responses=errors(400, 401, 403, 404, 422, 503),
        # The token is checked in the body (below), not by a dependency: FastAPI's
        # dependency machinery cost this route a fifth of its time. Declared the same.
        openapi_extra={"security": [{doc.STAFF_TOKEN.scheme_name: []}]},
    )
    async def get_student(
        request: Request,
        student_id: StudentId,
        as_of: Day = None,
        known_at: Moment = None,
    ) -> Response:
        """The student view (SPEC §4) as of a date, as known at a moment (audited)."""
        from projections.engine import view

        token = authorize(request, "staff")
        on, moment = query_day(as_of, "as_of", clock), _moment(known_at, "known_at")
        async with shared.astore() as opened:
            with shared.audit.expecting() as expectation:
                # SQLite's read of one stream is local and short: on the event loop, sparing
                # a hop through the thread pool. PostgreSQL's waits on the network: in the pool.
                if opened.config.is_postgres:
                    stream = await run_in_threadpool(opened.stream, student_id)
                else:
                    stream = opened.stream(student_id)
                if not stream:
                    raise ApiError(404, f"no events stored for student {student_id[:64]!r}")
                at = clock()
                if len(stream) > INLINE_VIEW_FACTS:  # a long history: not on the loop
                    result = await run_in_threadpool(
                        view, stream, on, moment, rulebook, student_id=student_id
                    )
                else:
                    result = view(stream, on, moment, rulebook, student_id=student_id)
                # Answered once its audit row is committed (with concurrent requests' rows).
                await shared.audit.arecord(
                    opened, token.name, "GET /v1/students/{student_id}", student_id, at, expectation
                )
        # pydantic's own serializer: the bytes JSONResponse would make, in a fifth the time.
        return Response(result.model_dump_json(), media_type=JSON)

    @app.get(
        "/v1/students/{student_id:student}/history",
        response_model=list[doc.HistoryEntry],
        responses=errors(401, 403, 503),
    )
    def get_history(student_id: StudentId, token: Token = reader) -> JSONResponse:
        """The stored events with recorded_at and retraction marks ([] for unknown; audited)."""
        with store() as opened:
            stream = opened.stream(student_id)
            if stream:
                record_access(
                    opened,
                    token.name,
                    "GET /v1/students/{student_id}/history",
                    student_id,
                    clock(),
                )
            # As built (the model documents it): absent fields stay absent, times as stored.
            return JSONResponse(history_entries(stream))

    from web.calendar_feed import add_calendar_routes  # the edge's wording (web.labels)

    add_calendar_routes(app, reader=reader, store=store, rules=rulebook, clock=clock)

    @app.get(
        "/v1/audit",
        dependencies=[require("admin")],
        response_model=list[doc.AuditRow],
        responses={200: {"headers": doc.PAGE_HEADERS}, **errors(400, 401, 403, 503)},
    )
    def get_audit(
        student_id: str | None = None,
        token_name: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=doc.MAX_OFFSET)] = 0,
    ) -> JSONResponse:
        """Who viewed whose record, newest first (admin tokens only); X-Total-Count: all rows."""
        with store() as opened:
            rows, total = accesses(
                opened, student_id=student_id, token_name=token_name, limit=limit, offset=offset
            )
        headers = {TOTAL_COUNT: str(total)}
        if offset + len(rows) < total:
            headers[NEXT_OFFSET] = str(offset + len(rows))
        return JSONResponse([r.as_json() for r in rows], headers=headers)

    def read_model(opened: TimelineStore, *, any_thread: bool = False) -> ReadModel:
        # Every model may move between threads (a pooled one serves the next request).
        return shared.read_model(opened)

    def left_out(model: ReadModel, known_at: datetime | None) -> dict[str, str]:
        """Students left out (their facts cannot be derived), for the response headers."""
        ids = [row["student_id"] for row in model.errors(known_at)]
        if not ids:
            return {}
        return {
            LEFT_OUT_COUNT: str(len(ids)),
            LEFT_OUT: ",".join(quote(sid, safe="") for sid in ids[:50]),
        }

    def population(rows: list[Any], model: ReadModel, known_at: datetime | None) -> JSONResponse:
        """A population answer; students left out (their facts cannot be derived) in headers."""
        return JSONResponse(rows, headers=left_out(model, known_at))

    def as_known(model: ReadModel, known_at: datetime | None) -> datetime:
        """The record moment an answer reflects: `known_at`, else now.

        Now, or the newest record time the read models hold if that is later (another
        host's clock may run ahead): as known at it, the answer is the same.
        """
        if known_at is not None:
            return known_at
        now, newest = clock(), model.newest_record_time()
        return newest if newest is not None and newest > now else now

    def streamed(
        request: Request,
        model: ReadModel,
        view: tuple[date, datetime | None],
        docs: Callable[[int | None, int], Iterator[str]],
        total: Callable[[], int],
        limit: int | None,
        offset: int,
        count: bool,
    ) -> Response:
        """JSON texts built by SQLite, as one array: a page (with paging headers) or streamed.

        `view`: the day and the `known_at` asked for. The answer says as known at which
        moment it holds (`X-Timeline-Known-At`), and a page's `Link: rel="next"` asks for
        the next one at that moment and day, so that the pages make one list however the
        log grows meanwhile. The total, the rows and the left-out students are of one
        state of the read models. The model is closed when the answer is complete (or the
        client went away).
        """
        on, known_at = view
        held = ExitStack()
        try:
            held.enter_context(model.snapshot())
            with gate.slot():
                headers = left_out(model, known_at)
                moment = moment_text(as_known(model, known_at))
                headers[KNOWN_AT] = moment
                if count:
                    headers[TOTAL_COUNT] = str(total())
                if limit is not None:
                    page = list(docs(limit + 1, offset))  # one more: is there a next page?
                    if len(page) > limit:
                        if limit:  # a page of no rows points at itself: no next page
                            headers[NEXT_OFFSET] = str(offset + limit)
                            pinned = {"as_of": on.isoformat(), "known_at": moment}
                            after = request.url.include_query_params(
                                offset=offset + limit, **pinned
                            )
                            headers["Link"] = f'<{after.path}?{after.query}>; rel="next"'
                        page = page[:limit]
                    held.close()
                    model.close()
                    return Response("[" + ",".join(page) + "]", media_type=JSON, headers=headers)
            parts = json_array(docs(None, offset))
        except BaseException:
            held.close()
            model.close()
            raise

        def end() -> None:
            parts.close()  # ends the query before the model serves another request
            held.close()
            model.close()

        return ClosingStreamingResponse(
            gate.parts(parts), on_close=end, media_type=JSON, headers=headers
        )

    @app.get(
        "/v1/tasks",
        dependencies=[require("staff")],
        response_model=list[doc.TaskRow],
        responses={
            200: {"headers": doc.LEFT_OUT_HEADERS | doc.PAGE_HEADERS},
            **errors(400, 401, 403, 503),
        },
    )
    def get_tasks(
        request: Request,
        as_of: Day = None,
        status: Annotated[list[doc.TaskStatus] | None, Query()] = None,
        kind: Annotated[list[doc.TaskKind] | None, Query()] = None,
        known_at: Moment = None,
        changed_since: doc.ChangedSince = None,
        limit: Annotated[int | None, Query(ge=0, le=MAX_PAGE)] = None,
        offset: Annotated[int, Query(ge=0, le=doc.MAX_OFFSET)] = 0,
        count: bool = False,
    ) -> Response:
        """Every student's tasks as of a day, as known at a moment (paging: see the README).

        Left-out students are named in X-Timeline-Left-Out.
        """
        on, moment = query_day(as_of, "as_of", clock), _moment(known_at, "known_at")
        since = _moment(changed_since, "changed_since")
        query = {"known_at": moment, "changed_since": since}
        with store() as opened:
            model = read_model(opened, any_thread=True)
        return streamed(
            request,
            model,
            (on, moment),
            lambda lim, off: model.task_rows(
                on, status or (), kind or (), limit=lim, offset=off, **query
            ),
            lambda: model.count_tasks(on, status or (), kind or (), **query),
            limit,
            offset,
            count,
        )

    @app.get(
        "/v1/fines",
        dependencies=[require("staff")],
        response_model=list[doc.FineRow],
        responses={
            200: {"headers": doc.LEFT_OUT_HEADERS | doc.PAGE_HEADERS},
            **errors(400, 401, 403, 503),
        },
    )
    def get_fines(
        request: Request,
        as_of: Day = None,
        status: Annotated[list[doc.FineStatus] | None, Query()] = None,
        known_at: Moment = None,
        changed_since: doc.ChangedSince = None,
        limit: Annotated[int | None, Query(ge=0, le=MAX_PAGE)] = None,
        offset: Annotated[int, Query(ge=0, le=doc.MAX_OFFSET)] = 0,
        count: bool = False,
    ) -> Response:
        """Every student's fines accrued by a day, as known at a moment (paging: README).

        Left-out students are named in X-Timeline-Left-Out.
        """
        on, moment = query_day(as_of, "as_of", clock), _moment(known_at, "known_at")
        since = _moment(changed_since, "changed_since")
        query = {"known_at": moment, "changed_since": since}
        with store() as opened:
            model = read_model(opened, any_thread=True)
        return streamed(
            request,
            model,
            (on, moment),
            lambda lim, off: model.fine_rows(on, status or (), limit=lim, offset=off, **query),
            lambda: model.count_fines(on, status or (), **query),
            limit,
            offset,
            count,
        )

    @app.get(
        "/v1/alerts",
        dependencies=[require("staff")],
        response_model=list[doc.Alert],
        responses={200: {"headers": doc.LEFT_OUT_HEADERS}, **errors(400, 401, 403, 503)},
    )
    def get_alerts(on: Day = None, known_at: Moment = None) -> JSONResponse:
        """The alerts that fall on a day (a pure query), as known at a moment."""
        from scheduler.alerts import alerts_on

        day, moment = query_day(on, "on", clock), _moment(known_at, "known_at")
        with gate.slot(), store() as opened:
            model = read_model(opened)
            try:
                found = alerts_on(model, day, known_at=moment)
                return population([a.model_dump(mode="json") for a in found], model, moment)
            finally:
                model.close()

    @app.get(
        "/v1/students/{student_id:student}/alerts/preview",
        response_model=list[dict[str, Any]],
        responses=errors(400, 401, 403, 404, 503),
    )
    def get_alerts_preview(
        student_id: StudentId, token: Token = reader, on: Day = None
    ) -> JSONResponse:
        """The messages of the student's alerts on a day, per channel, rendered, not sent.

        Each element: the alert, the contact on file, the e-mail (headers, text, HTML), the
        LINE text and the webhook request (as `timeline alerts --student --preview --json`).
        Audited like the student view: it shows the student's contact.
        """
        from scheduler.mail import Composer
        from scheduler.notices import Students
        from scheduler.preview import UnknownStudent, preview_student

        day = query_day(on, "on", clock)
        with store() as opened:
            model = read_model(opened)
            try:
                composer = Composer(Students(opened.facts, rulebook))
                try:
                    previews = preview_student(model, composer, student_id, day)
                except UnknownStudent as exc:
                    raise ApiError(404, str(exc)) from None
                record_access(
                    opened,
                    token.name,
                    "GET /v1/students/{student_id}/alerts/preview",
                    student_id,
                    clock(),
                )
                return JSONResponse(previews)
            finally:
                model.close()

    @app.get(
        "/v1/changes",
        dependencies=[require("staff")],
        response_model=list[doc.Change],
        responses=errors(400, 401, 403, 503),
    )
    def get_changes(since: doc.Since) -> JSONResponse:
        """The students whose derivation changed after `since` (how often, and when last)."""
        moment = _moment(since, "since")
        with gate.slot(), store() as opened:
            model = read_model(opened)
            try:
                return JSONResponse(model.changes(moment))
            finally:
                model.close()

    doc.install_openapi(app)
    return app


def config_from_settings(settings: Settings) -> tuple[ApiConfig, ServiceOptions]:
    """The server's part of the one configuration: the API's config and the service options."""
    return ApiConfig.from_settings(settings), ServiceOptions.from_settings(settings)


def settings_from_environment(environ: Mapping[str, str] | None = None) -> Settings:
    """The one configuration, read once (`load_settings`; `ApiConfigError` naming a bad one).

    The environment (default: the process's) with `TIMELINE_CONFIG` and the secret files it
    names: `timeline serve --workers N` hands its resolved options to its workers there.
    """
    from timeline.settings import SettingsError, load_settings

    try:
        return load_settings(environ)
    except SettingsError as exc:
        raise ApiConfigError(str(exc)) from None


def config_from_environment(
    environ: Mapping[str, str] | None = None,
) -> tuple[ApiConfig, ServiceOptions]:
    """The server's settings from `load_settings`: tokens, store, read models, service options."""
    return config_from_settings(settings_from_environment(environ))


def configure_logging(fmt: str | None) -> None:
    """Apply the `log_format` setting (`text` or `json`) when set; otherwise leave logging be."""
    if fmt:
        logging.config.dictConfig(log_config(fmt))


def app_from_environment(environ: Mapping[str, str] | None = None) -> FastAPI:
    """The API configured from `load_settings` (`timeline.api:app`), with a log follower."""
    settings = settings_from_environment(environ)
    configure_logging(settings.log_format)
    config, service = config_from_settings(settings)
    return create_app(config, settings.rulebook(), service=service)


def __getattr__(name: str) -> Any:
    # `timeline.api:app` is built when first asked for (by uvicorn or gunicorn), so that
    # importing this module reads no setting; the store opens in the app's lifespan.
    if name == "app":
        built = globals().get("_app")
        if built is None:
            built = globals()["_app"] = app_from_environment()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
