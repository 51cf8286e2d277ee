"""The calendar feed at the edges: its wording, a student's feed from a store, its HTTP routes.

`projections.ics` builds the iCalendar text from a view and the words it is given; this
module gives it the guide's bilingual wording (`web.labels`), and serves it:

- `GET /v1/students/{id}/calendar.ics?as_of=` with a staff token (audited as a view),
- `POST` / `DELETE /v1/students/{id}/calendar-link`: make (or rotate) / revoke the
  student's secret link (staff token; audited),
- `GET /calendar/{token}.ics?as_of=`: the secret link, without a staff token (audited
  under the token name `calendar-link`); **404** for a token never made, **410** for a
  revoked or rotated one.

The feed is "today" by the injected clock in Asia/Taipei unless `as_of` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from projections.ics import FeedWording, task_calendar
from projections.rules import RuleBook
from timeline.api import ApiError, query_day
from timeline.api_models import Day, ErrorBody, StudentId, errors
from timeline.api_settings import Token
from timeline.audit import record_access
from timeline.calendar_links import create_link, link_path, look_up, revoke_link
from timeline.clock import Clock
from timeline.store import TimelineStore
from web.labels import LABELS, TASK_NAMES, TASK_STATUS_NAMES, WHERE_NAMES

CONTENT_TYPE = "text/calendar; charset=utf-8"
LINK_TOKEN_NAME = "calendar-link"  # the audit's and the access log's name for a link fetch
FEED_ROUTE = "GET /v1/students/{student_id}/calendar.ics"
LINK_ROUTE = "GET /calendar/{token}.ics"

WORDING = FeedWording(
    task_names=TASK_NAMES,
    where_names=WHERE_NAMES,
    labels={
        "calendar_name": {"zh": "居留應辦事項 {student}", "en": "Residency tasks {student}"},
        "opens": LABELS["opens_on"],
        "due": LABELS["due_on"],
        "no_due": {"zh": "無法定期限", "en": "no legal deadline"},
        "where": LABELS["where"],
        "fee": LABELS["fee"],
        "documents": LABELS["documents"],
        "rule": LABELS["rule"],
        "events": LABELS["caused_by"],
        "overdue": TASK_STATUS_NAMES["overdue"],
        "reminder": {"zh": "{task}：{day} 到期", "en": "{task}: due {day}"},
    },
)


@dataclass(frozen=True)
class Feed:
    """One export: the iCalendar bytes and how many events they hold."""

    body: bytes
    events: int


def student_feed(
    store: TimelineStore, student_id: str, as_of: date, rules: RuleBook, stamp: datetime
) -> Feed | None:
    """`student_id`'s open tasks as of `as_of`, stamped `stamp`; None for an unknown student.

    Raises `projections.engine.DerivationError` when the student's facts cannot be derived.
    """
    from projections.engine import view

    stream = store.stream(student_id)
    if not stream:
        return None
    result = view(stream, as_of, None, rules, student_id=student_id)
    cal = task_calendar(result, WORDING, stamp=stamp, revision=len(stream))
    return Feed(cal.to_ical(), len(cal.walk("VEVENT")))


# The 200 answer of a feed: iCalendar text (RFC 5545).
ICS_ANSWER: dict[str, Any] = {
    "description": "The open tasks as iCalendar (RFC 5545), one all-day VEVENT per task.",
    "content": {"text/calendar": {"schema": {"type": "string"}}},
}


class CalendarLink(BaseModel):
    """A new secret calendar link (shown once: only its hash is kept)."""

    student_id: str
    path: str
    url: str


def _unknown(student_id: str) -> ApiError:
    return ApiError(404, f"no events stored for student {student_id[:64]!r}")


def _ics(feed: Feed) -> Response:
    return Response(
        feed.body,
        media_type=CONTENT_TYPE,
        headers={"Content-Disposition": 'inline; filename="residency-tasks.ics"'},
    )


def add_calendar_routes(
    app: FastAPI,
    *,
    reader: Any,
    store: Callable[[], AbstractContextManager[TimelineStore]],
    rules: RuleBook,
    clock: Clock,
) -> None:
    """Add the feed, the link endpoints and the secret link to the API `app`.

    `reader` is the API's staff-token dependency, `store` opens the event store.
    """

    def export(student_id: str, as_of: date, who: str, route: str) -> Feed:
        with store() as opened:
            feed = student_feed(opened, student_id, as_of, rules, clock())
            if feed is None:
                raise _unknown(student_id)
            record_access(opened, who, route, student_id, clock())
        return feed

    @app.get(
        "/v1/students/{student_id:student}/calendar.ics",
        response_class=Response,
        responses={200: ICS_ANSWER, **errors(400, 401, 403, 404, 422, 503)},
    )
    def get_calendar(student_id: StudentId, token: Token = reader, as_of: Day = None) -> Response:
        """The student's open tasks as an iCalendar feed, as of a day (default: today; audited)."""
        return _ics(export(student_id, query_day(as_of, "as_of", clock), token.name, FEED_ROUTE))

    @app.post(
        "/v1/students/{student_id:student}/calendar-link",
        status_code=201,
        response_model=CalendarLink,
        responses=errors(401, 403, 404, 503),
    )
    def post_calendar_link(
        request: Request, student_id: StudentId, token: Token = reader
    ) -> JSONResponse:
        """Make the student's secret calendar link, revoking any earlier one (shown once)."""
        with store() as opened:
            if not opened.stream(student_id):
                raise _unknown(student_id)
            secret = create_link(opened, student_id, clock(), token.name)
            record_access(
                opened,
                token.name,
                "POST /v1/students/{student_id}/calendar-link",
                student_id,
                clock(),
            )
        path = link_path(secret)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {"student_id": student_id, "path": path, "url": base + path}, status_code=201
        )

    @app.delete(
        "/v1/students/{student_id:student}/calendar-link",
        status_code=204,
        response_class=Response,
        responses={
            204: {"description": "Revoked."},
            **errors(401, 403, 503),
            404: {"model": ErrorBody, "description": "No active calendar link for this student."},
        },
    )
    def delete_calendar_link(student_id: StudentId, token: Token = reader) -> Response:
        """Revoke the student's secret calendar link (404 when none is active)."""
        with store() as opened:
            if not revoke_link(opened, student_id, clock()):
                raise ApiError(404, f"no active calendar link for student {student_id[:64]!r}")
            record_access(
                opened,
                token.name,
                "DELETE /v1/students/{student_id}/calendar-link",
                student_id,
                clock(),
            )
        return Response(status_code=204)

    @app.get(
        "/calendar/{token}.ics",
        response_class=Response,
        responses={
            200: ICS_ANSWER,
            **errors(400, 422),
            404: {"model": ErrorBody, "description": "No such calendar link."},
            410: {"model": ErrorBody, "description": "The link was revoked or rotated."},
        },
    )
    async def get_linked_calendar(request: Request, token: str, as_of: Day = None) -> Response:
        """The feed behind a secret link: no staff token; 404 unknown, 410 revoked."""
        request.state.token_name = LINK_TOKEN_NAME
        on = query_day(as_of, "as_of", clock)

        def answer() -> Feed:
            with store() as opened:
                found = look_up(opened, token)
            if found.state == "revoked":
                raise ApiError(410, "this calendar link was revoked")
            if found.state == "unknown" or found.student_id is None:
                raise ApiError(404, "no such calendar link")
            return export(found.student_id, on, LINK_TOKEN_NAME, LINK_ROUTE)

        return _ics(await run_in_threadpool(answer))
