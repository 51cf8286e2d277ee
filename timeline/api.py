"""The HTTP API (`timeline serve`): the CLI's surface under /v1, with an OpenAPI document.

Writing needs a feed token, reading a staff token (bearer tokens from configuration:
`TIMELINE_FEED_TOKENS`, `TIMELINE_STAFF_TOKENS`, comma-separated). Errors are JSON
`{"error": "..."}` with 400/401/403/404/409/422, never a stack trace.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from timeline.clock import parse_known_at, taipei_today
from timeline.errors import TimelineError
from timeline.history import history_entries
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class ApiConfig:
    """Where the data lives and who may do what."""

    db: str | None
    read_db: str | None
    feed_tokens: frozenset[str]
    staff_tokens: frozenset[str]

    @classmethod
    def from_env(cls, db: str | None = None, read_db: str | None = None) -> ApiConfig:
        """Tokens from TIMELINE_FEED_TOKENS / TIMELINE_STAFF_TOKENS."""

        def tokens(name: str) -> frozenset[str]:
            return frozenset(t.strip() for t in os.environ.get(name, "").split(",") if t.strip())

        return cls(db, read_db, tokens("TIMELINE_FEED_TOKENS"), tokens("TIMELINE_STAFF_TOKENS"))


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "a bearer token is required (Authorization: Bearer <token>)")
    return token.strip()


def _matches(token: str, allowed: frozenset[str]) -> bool:
    return any(hmac.compare_digest(token, candidate) for candidate in allowed)


def create_app(config: ApiConfig) -> FastAPI:
    """The FastAPI application."""
    app = FastAPI(
        title="residency-timeline",
        version="0.1.0",
        description="ARC status, due tasks and fines of foreign students in Taiwan (SPEC §4).",
    )

    def require(kind: str) -> Any:
        def check(request: Request) -> None:
            token = _bearer(request)
            wanted = config.feed_tokens if kind == "feed" else config.staff_tokens
            other = config.staff_tokens if kind == "feed" else config.feed_tokens
            if _matches(token, wanted):
                return
            if _matches(token, other):
                raise ApiError(403, f"this token may not {'write' if kind == 'feed' else 'read'}")
            raise ApiError(401, "unknown token")

        return Depends(check)

    @contextmanager
    def store() -> Iterator[TimelineStore]:
        opened = TimelineStore.open(config.db)
        try:
            yield opened
        finally:
            opened.close()

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(TimelineError)
    async def core_error(_: Request, exc: TimelineError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'body', 'path'))}: "
            f"{e['msg']}"
            for e in exc.errors()
        ]
        return JSONResponse({"error": "; ".join(parts)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"error": "internal error (logged)"}, status_code=500)

    def day(value: str | None, name: str) -> date:
        if value is None:
            return taipei_today()
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ApiError(400, f"{name}: not a date written YYYY-MM-DD: {value!r}") from None

    @app.post("/v1/events", dependencies=[require("feed")])
    def post_events(
        payload: Annotated[Any, Body()],
        partial: Annotated[bool, Query()] = False,
    ) -> JSONResponse:
        """Ingest one event or an array of events (atomic unless ?partial=true)."""
        items = payload if isinstance(payload, list) else [payload]
        with store() as opened:
            report = ingest_objects(opened, items, partial=partial)
        body = report.as_json()
        if report.ok or partial:
            return JSONResponse(body, status_code=200)
        conflicts = all(r.error.startswith("conflict:") for r in report.rejected)
        return JSONResponse(
            body | {"error": "nothing was stored: some events were rejected"},
            status_code=409 if conflicts else 422,
        )

    @app.get("/v1/students/{student_id}", dependencies=[require("staff")])
    def get_student(
        student_id: str, as_of: str | None = None, known_at: str | None = None
    ) -> JSONResponse:
        """The student view (SPEC §4) as of a date, as known at a moment."""
        from projections.engine import view
        from projections.rules import rulebook_from_env

        moment = None
        if known_at:
            try:
                moment = parse_known_at(known_at)
            except ValueError as exc:
                raise ApiError(400, f"known_at: {exc}") from None
        with store() as opened:
            stream = opened.stream(student_id)
        if not stream:
            raise ApiError(404, f"no events stored for student {student_id!r}")
        result = view(
            stream,
            day(as_of, "as_of"),
            moment,
            rulebook_from_env(os.environ),
            student_id=student_id,
        )
        return JSONResponse(result.model_dump(mode="json"))

    @app.get("/v1/students/{student_id}/history", dependencies=[require("staff")])
    def get_history(student_id: str) -> list[dict[str, Any]]:
        """The stored events with recorded_at and retraction marks ([] for unknown)."""
        with store() as opened:
            return history_entries(opened.stream(student_id))

    def read_model(opened: TimelineStore) -> Any:
        from projections.readmodel import ReadModel, default_read_db
        from projections.rules import rulebook_from_env

        path = (
            config.read_db
            or os.environ.get("TIMELINE_READ_DB")
            or default_read_db(opened.config.location)
        )
        model = ReadModel(path, rulebook_from_env(os.environ))
        model.sync(opened)
        return model

    @app.get("/v1/tasks", dependencies=[require("staff")])
    def get_tasks(
        as_of: str | None = None,
        status: Annotated[list[str] | None, Query()] = None,
        kind: Annotated[list[str] | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        """Every student's tasks as of a day."""
        with store() as opened:
            model = read_model(opened)
            try:
                return model.tasks_on(day(as_of, "as_of"), status or (), kind or ())
            finally:
                model.close()

    @app.get("/v1/fines", dependencies=[require("staff")])
    def get_fines(
        as_of: str | None = None, status: Annotated[list[str] | None, Query()] = None
    ) -> list[dict[str, Any]]:
        """Every student's fines accrued by a day."""
        with store() as opened:
            model = read_model(opened)
            try:
                return model.fines_on(day(as_of, "as_of"), status or ())
            finally:
                model.close()

    @app.get("/v1/alerts", dependencies=[require("staff")])
    def get_alerts(on: str | None = None) -> list[dict[str, Any]]:
        """The alerts that fall on a day (a pure query)."""
        from scheduler.alerts import alerts_on

        with store() as opened:
            model = read_model(opened)
            try:
                return [a.model_dump(mode="json") for a in alerts_on(model, day(on, "on"))]
            finally:
                model.close()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        """A small page for people: look a student up with a staff token."""
        return _PAGE

    return app


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>residency-timeline</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}
input{margin:0 .5rem .5rem 0}pre{background:#f6f6f6;padding:1rem;overflow:auto}
.overdue{color:#b00}.open{color:#a60}.done{color:#080}</style></head>
<body><h1>居留證時程 ARC timeline</h1>
<form id="f"><input id="token" placeholder="staff token" type="password" required>
<input id="sid" placeholder="student id" required><input id="asof" type="date">
<button>Show</button></form><div id="out"></div>
<script>
const esc = (x) => String(x ?? '—').replace(/[&<>"']/g,
  (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
document.getElementById('f').onsubmit = async (e) => {
  e.preventDefault();
  const sid = encodeURIComponent(document.getElementById('sid').value);
  const asof = document.getElementById('asof').value;
  const r = await fetch('/v1/students/' + sid + (asof ? '?as_of=' + asof : ''),
    {headers: {Authorization: 'Bearer ' + document.getElementById('token').value}});
  const v = await r.json(); const out = document.getElementById('out');
  if (!r.ok) { out.textContent = v.error; return; }
  const rows = v.tasks.map(t => `<tr class="${esc(t.status)}"><td>${esc(t.kind)}</td>
    <td>${esc(t.status)}</td><td>${esc(t.due_on)}</td><td>${esc(t.where)}</td>
    <td>${esc(t.rule)}</td></tr>`).join('');
  const fines = v.fines.map(f => `<tr><td>${esc(f.kind)}</td><td>${esc(f.status)}</td>
    <td>${esc(f.accrued_on)}</td><td>${esc(f.amount_min_ntd)}–${esc(f.amount_max_ntd)}</td>
    <td>${esc(f.rule)}</td></tr>`).join('');
  out.innerHTML = `<h2>${esc(v.student_id)}: ${esc(v.status)} (as of ${esc(v.as_of)})</h2>
    <table><tr><th>task</th><th>status</th><th>due</th><th>where</th><th>rule</th></tr>${rows}</table>
    <table><tr><th>fine</th><th>status</th><th>accrued</th><th>NTD</th><th>rule</th></tr>${fines}</table>`;
};
</script></body></html>
"""
