"""What the HTTP API's OpenAPI document says: answers, errors, parameters and the feed contract.

Routes declare these with `response_model=` / `responses=` and typed parameters; their
bodies still answer with `JSONResponse` (the models document, they do not re-validate).
`install_openapi` adds what FastAPI cannot infer: the feed contract (SPEC §2) as the
request body of `POST /v1/events`, made exact for a client or a fuzzer — text fields are
checked after surrounding whitespace is stripped and may hold no control or format
character, dates lie in 1950-01-01 … 2100-12-31, and the cross-field rules JSON Schema can
state are `if`/`then` and `anyOf` (those it cannot, such as `stay_until` on or after
`occurred_on`, are in the descriptions and answered 422).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from copy import deepcopy
from datetime import date, datetime
from functools import cache
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.convertors import Convertor, register_url_convertor

from projections import models
from projections.rules import TASK_KINDS
from scheduler.alert import Alert as _Alert
from timeline.contract import EVENT_TYPES, FINE_KINDS, FeedEvent

__all__ = [
    "ADMIN_TOKEN",
    "FEED_TOKEN",
    "STAFF_TOKEN",
    "Day",
    "ErrorBody",
    "IngestRefused",
    "IngestReport",
    "Moment",
    "StudentId",
    "errors",
    "install_openapi",
]

JSON_MEDIA = "application/json"

# -- the bearer schemes (one per kind of token, so a client knows which to send) ---------------
FEED_TOKEN = HTTPBearer(
    scheme_name="feedToken",
    description=(
        "A feed token (`TIMELINE_FEED_TOKENS`, `name:token:source|source`): writes events "
        "under the sources it is bound to."
    ),
    auto_error=False,
)
STAFF_TOKEN = HTTPBearer(
    scheme_name="staffToken",
    description=(
        "A staff token (`TIMELINE_STAFF_TOKENS`) or an admin token "
        "(`TIMELINE_ADMIN_TOKENS`): reads. A feed token here is 403."
    ),
    auto_error=False,
)
ADMIN_TOKEN = HTTPBearer(
    scheme_name="adminToken",
    description=(
        "An admin token (`TIMELINE_ADMIN_TOKENS`): reads, and lists the audit of access. "
        "A staff or feed token here is 403."
    ),
    auto_error=False,
)

# -- text: what the contract accepts, as a pattern -----------------------------------------------
# pydantic strips these (Unicode White_Space, Rust's `trim`) from both ends of every text
# field before checking its length; `tests/test_api_openapi.py` pins the list.
STRIPPED = (
    (0x09, 0x0D),
    (0x20, 0x20),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
)
# `contract.forbidden_character`'s categories. Lone surrogates (Cs) are left out of the
# pattern: no regex dialect can name them, and UTF-8 cannot carry them.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_FREE_TEXT_ALLOWED = ((0x09, 0x0A), (0x0D, 0x0D))  # TAB, LF; CR becomes LF
_YEARS = "(19[5-9][0-9]|20[0-9]{2}|2100)"
DAY_PATTERN = f"^{_YEARS}-[0-9]{{2}}-[0-9]{{2}}$"
MOMENT_PATTERN = (
    f"^{_YEARS}-[0-9]{{2}}-[0-9]{{2}}T[0-9]{{2}}:[0-9]{{2}}:[0-5][0-9](\\.[0-9]{{1,6}})?"
    "(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
Ranges = tuple[tuple[int, int], ...]


@cache
def forbidden_ranges() -> Ranges:
    """The code points no text field may hold (control, format, line/paragraph separators)."""
    found: list[list[int]] = []
    for point in range(0x110000):
        if unicodedata.category(chr(point)) in _FORBIDDEN_CATEGORIES:
            if found and found[-1][1] == point - 1:
                found[-1][1] = point
            else:
                found.append([point, point])
    return tuple((low, high) for low, high in found)


def _merged(*sets: Ranges) -> Ranges:
    """The union of range sets, sorted and merged."""
    out: list[list[int]] = []
    for low, high in sorted(r for ranges in sets for r in ranges):
        if out and low <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], high)
        else:
            out.append([low, high])
    return tuple((low, high) for low, high in out)


def _without(ranges: Ranges, removed: Ranges) -> Ranges:
    """`ranges` less the code points in `removed`."""
    gone = {p for low, high in removed for p in range(low, high + 1)}
    points = [p for low, high in ranges for p in range(low, high + 1) if p not in gone]
    return _merged(tuple((p, p) for p in points))


def _char(point: int) -> str:
    # \uXXXX reads the same in ECMA-262, Python and Rust regexes; beyond the BMP the
    # character itself is the only spelling all three share.
    return f"\\u{point:04X}" if point <= 0xFFFF else chr(point)


def _class(ranges: Ranges, *, negate: bool = False, extra: str = "") -> str:
    body = "".join(_char(a) if a == b else f"{_char(a)}-{_char(b)}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}{extra}]"


# Up to this length a text field's pattern counts the characters left once stripped (a
# bounded repetition); beyond it (long free text) a bounded repetition of these classes
# makes validators slow to build, so `maxLength` counts them, whitespace included.
EXACT_TEXT_LENGTH = 128


def text_pattern(max_length: int, *, free_text: bool = False, optional: bool = False) -> str:
    """The pattern of a text field: 1..max_length characters once stripped, none forbidden.

    `optional`: 0..max_length (a field without a minimum length, such as `note`).

    Beyond `EXACT_TEXT_LENGTH` the length is left to `maxLength` (see `text_schema`).
    """
    forbidden = forbidden_ranges()
    if free_text:
        forbidden = _without(forbidden, _FREE_TEXT_ALLOWED)
    edge = _class(STRIPPED)
    inner = _class(forbidden, negate=True)
    outer = _class(_merged(forbidden, STRIPPED), negate=True)
    count = f"{{0,{max_length - 2}}}" if max_length <= EXACT_TEXT_LENGTH else "*"
    core = outer if max_length == 1 else f"{outer}(?:{inner}{count}{outer})?"
    return f"^{edge}*(?:{core})?{edge}*$" if optional else f"^{edge}*{core}{edge}*$"


def text_schema(
    max_length: int, *, free_text: bool = False, optional: bool = False
) -> dict[str, Any]:
    """A text field of the contract, as JSON Schema (`optional`: may be empty)."""
    kind = "Free text (TAB and line ends allowed)" if free_text else "Text"
    schema: dict[str, Any] = {
        "type": "string",
        "pattern": text_pattern(max_length, free_text=free_text, optional=optional),
        "description": (
            f"{kind}: {0 if optional else 1}-{max_length} characters once surrounding "
            "whitespace is removed "
            "(it is, before storing), no control or format characters."
        ),
    }
    if max_length > EXACT_TEXT_LENGTH:
        schema["maxLength"] = max_length
        schema["description"] += (
            f" (`maxLength` counts the whitespace too: the API takes up to {max_length} "
            "characters between it.)"
        )
    return schema


def stored_id_pattern(max_length: int = 64) -> str:
    """An id as stored (stripped, 1..max_length, nothing forbidden); a path carries `/` as %2F."""
    forbidden = forbidden_ranges()
    inner = _class(forbidden, negate=True)
    outer = _class(_merged(forbidden, STRIPPED), negate=True)
    return f"^{outer}(?:{inner}{{0,{max_length - 2}}}{outer})?$"


DAY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "date",
    "pattern": DAY_PATTERN,
    "description": "A calendar day in Taiwan, YYYY-MM-DD, 1950-01-01 … 2100-12-31.",
}
MOMENT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date-time", "pattern": MOMENT_PATTERN},
        {"type": "string", "format": "date", "pattern": DAY_PATTERN},
    ],
    "description": (
        "A record moment: an RFC 3339 timestamp, or a day (the end of that day in Taipei). "
        "Also accepted: without seconds or without an offset (then UTC)."
    ),
}


def _replace(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def replace(target: dict[str, Any]) -> None:
        target.clear()
        target.update(deepcopy(schema))

    return replace


Day = Annotated[
    str | None,
    Query(
        json_schema_extra=_replace(DAY_SCHEMA),
        description="A day, YYYY-MM-DD (default: today in Taipei).",
    ),
]
Moment = Annotated[
    str | None,
    Query(
        json_schema_extra=_replace(MOMENT_SCHEMA),
        description=(
            "A record moment (RFC 3339, or a day = the end of that day in Taipei; without an "
            "offset = UTC): answer with only what had been recorded by then."
        ),
    ),
]
ChangedSince = Annotated[
    str | None,
    Query(
        json_schema_extra=_replace(MOMENT_SCHEMA),
        description="A record moment: keep the students whose derivation changed after it.",
    ),
]
Since = Annotated[
    str,
    Query(
        json_schema_extra=_replace(MOMENT_SCHEMA),
        description="A record moment: the students whose derivation changed after it.",
    ),
]
# What follows a student id in the routes that name one (`/students/{student_id:student}/...`).
STUDENT_ROUTE_ENDINGS = ("history", "alerts/preview", "calendar.ics", "calendar-link", "changes")


class StudentIdConvertor(Convertor[str]):
    """A student id in a route: `/` included (`2024/001`, sent as `%2F`, arrives decoded).

    A `/` is taken as part of the id unless what follows it is one of the student routes'
    own endings, so `/v1/students/2024/001/history` is the history of `2024/001`.
    """

    regex = r"(?:[^/]|/(?!(?:" + "|".join(re.escape(e) for e in STUDENT_ROUTE_ENDINGS) + r")$))+"

    def convert(self, value: str) -> str:
        """The id as routed."""
        return value

    def to_string(self, value: str) -> str:
        """The id for a URL (as given)."""
        return value


register_url_convertor("student", StudentIdConvertor())
# The largest offset a page takes (JavaScript's largest exact integer; SQLite's is larger).
MAX_OFFSET = 2**53 - 1
StudentId = Annotated[
    str,
    Path(
        json_schema_extra=lambda s: s.update(
            {"type": "string", "pattern": stored_id_pattern(), "examples": ["S1"]}
        ),
        description=(
            "The institution's student number (1-64 characters, as stored; a `/` in it "
            "sent as `%2F`)."
        ),
    ),
]
TaskStatus = models.TaskStatus
FineStatus = models.FineStatus
TaskKind = Literal[tuple(TASK_KINDS)]  # type: ignore[valid-type]
FineKind = Literal[FINE_KINDS]  # type: ignore[valid-type]
Milestone = Literal[
    "window_open",
    "due_in_30",
    "due_in_14",
    "due_in_7",
    "due_in_1",
    "due_today",
    "overdue",
    "accrued",
    "overstay_started",
    "reapply_window_closing",
    "reapply_window_closed",
]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


# -- answers ------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error the API answers: one message naming the problem (never the body sent)."""

    model_config = ConfigDict(extra="forbid")

    error: str


class Rejected(BaseModel):
    """An event that was not stored: its 0-based index in the body, and why."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    error: str


class IngestReport(BaseModel):
    """What a POST did (SPEC §4's summary); with ?partial=true `rejected` may be non-empty."""

    model_config = ConfigDict(extra="forbid")

    accepted: int = Field(ge=0)
    duplicates: int = Field(ge=0)
    rejected: list[Rejected]


class IngestRefused(IngestReport):
    """An atomic POST that stored nothing: the report (accepted is 0) and the error."""

    error: str


class Task(models.Task):
    """Something the student must do, with its deadline and the rule behind it."""

    kind: TaskKind


class Fine(models.Fine):
    """A fine accrued under a rule; imposed and paid amounts when known."""

    kind: FineKind


class StudentView(models.StudentView):
    """Everything derived for one student as of a date, as known at a moment (SPEC §4)."""

    tasks: list[Task]  # type: ignore[assignment]
    fines: list[Fine]  # type: ignore[assignment]


class TaskRow(BaseModel):
    """One task of a population answer: the view's task with its student, without documents."""

    model_config = ConfigDict(extra="forbid")

    student_id: str
    kind: TaskKind
    status: TaskStatus
    opens_on: date | None
    due_on: date | None
    done_on: date | None
    where: str
    fee_ntd: int | None
    rule: str
    caused_by: list[str]


class FineRow(BaseModel):
    """One fine of a population answer: the view's fine with its student."""

    model_config = ConfigDict(extra="forbid")

    student_id: str
    kind: FineKind
    status: FineStatus
    accrued_on: date
    amount_min_ntd: int
    amount_max_ntd: int
    amount_ntd: int | None
    paid_ntd: int
    offense: int | None
    rule: str
    caused_by: list[str]


class Alert(_Alert):
    """One alert (SPEC §5): a task's or fine's milestone that falls on the day asked."""

    task: Literal[tuple(TASK_KINDS) + FINE_KINDS]  # type: ignore[valid-type]
    milestone: Milestone


class Change(BaseModel):
    """A student whose derivation changed after `since`: how often, and when last."""

    model_config = ConfigDict(extra="forbid")

    student_id: str
    changes: int = Field(ge=1)
    last_changed_at: datetime


class HistoryEntry(BaseModel):
    """A stored event as recorded: its envelope and own fields (as stored, nulls left out),
    its record time, and whether a later retraction made it stop counting."""

    model_config = ConfigDict(extra="allow")

    event_id: str
    source: str
    student_id: str
    type: EventType
    occurred_on: date
    note: str | None = Field(default=None, description="Present only when the event has one.")
    recorded_at: datetime
    retracted: bool
    retracted_at: datetime | None
    retracted_by: str | None


class AuditRow(BaseModel):
    """One view of a student's record: when, by which token (its name), through which route."""

    model_config = ConfigDict(extra="forbid")

    id: int
    at: datetime
    token_name: str
    route: str
    student_id: str


# -- statuses ------------------------------------------------------------------------------
WHY = {
    400: "A parameter or the body is not what this operation takes (the message names it).",
    401: "No bearer token, or not a configured one.",
    403: "A configured token of the wrong kind (or a feed token writing under a source it "
    "is not bound to; nothing is stored).",
    404: "No events are stored for this student.",
    408: "The body stopped arriving: no piece of it came for 30 seconds.",
    409: "Nothing was stored: every rejected event conflicts with what is stored (the same "
    "source and event_id with other content, or a retraction of an event that is not stored, "
    "belongs to another student, or is itself a retraction).",
    413: "The body is larger than `TIMELINE_MAX_BODY_BYTES`, or holds more than 50,000 events.",
    415: "The body is not JSON (`Content-Type: application/json`).",
    422: "The student's stored facts cannot be derived (the message names the events to correct).",
    503: "The event store is unavailable (the log has the reason).",
}


def errors(*statuses: int, why: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """`responses=` for these error statuses, each with the error shape and its meaning."""
    reasons = WHY | (why or {})
    return {status: {"model": ErrorBody, "description": reasons[status]} for status in statuses}


LEFT_OUT_HEADERS: dict[str, Any] = {
    "X-Timeline-Left-Out-Count": {
        "description": "How many students were left out: their stored facts cannot be derived.",
        "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
    },
    "X-Timeline-Left-Out": {
        "description": "The first 50 of them: URL-encoded student ids, comma-separated.",
        "schema": {"type": "string"},
    },
}
PAGE_HEADERS: dict[str, Any] = {
    "X-Total-Count": {
        "description": "With `count=true`: the rows matching, all pages.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "X-Next-Offset": {
        "description": "With `limit`: the offset of the next page, when there is one.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "Link": {
        "description": 'With `limit`, when there is a next page: `<path?query>; rel="next"`, '
        "the next page as of the same day and as known at the same moment "
        "(`X-Timeline-Known-At`), so that the pages make one list while events arrive.",
        "schema": {"type": "string"},
    },
    "X-Timeline-Known-At": {
        "description": "The record moment the answer holds at: `known_at`, else now. Asked "
        "again with it as `known_at` (and the same day), the answer is the same.",
        "schema": {"type": "string", "format": "date-time"},
    },
}


# -- the feed contract as the request body -----------------------------------------------------
EVENT_REF = "#/components/schemas/FeedEvent"
EVENTS_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "One event (SPEC §2) or an array of at most 50,000 events, as JSON "
        "(`application/json` or any `application/*+json`; no `Content-Type` is read as "
        "JSON). Unknown fields, duplicate keys, `NaN`, nesting deeper than 20 and integers "
        "over 18 digits are refused. Atomic by default: one rejected event and nothing is "
        "stored (422, or 409 when every rejection is a conflict with what is stored); with "
        "`?partial=true` the valid events are stored and the others reported (200)."
    ),
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": EVENT_REF},
                    {"type": "array", "items": {"$ref": EVENT_REF}, "maxItems": 50_000},
                ]
            },
            "examples": {
                "one": {
                    "summary": "One event",
                    "value": {
                        "event_id": "e1",
                        "student_id": "S1",
                        "type": "entered",
                        "occurred_on": "2024-03-16",
                        "visa": "resident",
                    },
                }
            },
        }
    },
}
_LATER_THAN_OCCURRED = "On or after `occurred_on` (else 422)."
_FIELD_NOTES = {
    ("Entered", "stay_until"): "Required when `visa` is `visitor`. " + _LATER_THAN_OCCURRED,
    ("Entered", "visa_code"): "Stored upper-cased.",
    ("ArcIssued", "valid_until"): "Valid through this day inclusive. " + _LATER_THAN_OCCURRED,
    ("ArcRevoked", "leave_by"): _LATER_THAN_OCCURRED,
    ("ArcApplied", "basis"): "`admission_notice` applies to initial applications only.",
    ("Retracted", "retracts"): (
        "The event_id of a stored event of the same student and source, not this event's own "
        "(else 422; one not stored, of another student, or a retraction: 409)."
    ),
    ("ContactUpdated", "email"): "Personal data: one `@`, no whitespace.",
    ("ContactUpdated", "line_user_id"): "Personal data: `U` and 32 lowercase hex digits.",
}


def _text_like(schema: dict[str, Any]) -> bool:
    return (
        schema.get("type") == "string"
        and not {"enum", "const", "format", "pattern"} & schema.keys()
    )


def _exact_field(
    model: str, name: str, schema: dict[str, Any], texts: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One property of an event, made exact (text patterns, day range, notes).

    Text fields refer to one component per kind and length (`Text64`, `FreeText2000`),
    added to `texts`.
    """
    branches = schema.get("anyOf", [schema])
    for branch in branches:
        if branch.get("format") == "date":
            branch["pattern"] = DAY_PATTERN
        elif name == "email" and branch.get("type") == "string":
            # Stripped, then one @ between non-empty parts, no whitespace (Python's isspace).
            no_space = _class(_merged(forbidden_ranges(), STRIPPED, ((0x1C, 0x1F),)), negate=True)
            at_free = no_space[:-1] + "@]"
            edge = _class(STRIPPED)
            branch.update(pattern=f"^{edge}*{at_free}+@{at_free}+{edge}*$", maxLength=254)
            branch.pop("minLength", None)
        elif name == "line_user_id" and branch.get("type") == "string":
            edge = _class(STRIPPED)
            branch.update(pattern=f"^{edge}*U[0-9a-f]{{32}}{edge}*$")
        elif _text_like(branch):
            free = name in {"note", "reason"}
            length = int(branch.get("maxLength", 64))
            optional = not branch.get("minLength")
            component = f"{'Optional' if optional else ''}{'FreeText' if free else 'Text'}{length}"
            texts.setdefault(component, text_schema(length, free_text=free, optional=optional))
            for key in ("type", "minLength", "maxLength"):
                branch.pop(key, None)
            branch["$ref"] = f"#/components/schemas/{component}"
    note = _FIELD_NOTES.get((model, name))
    if note:
        schema["description"] = note
    return schema


def event_schemas() -> dict[str, dict[str, Any]]:
    """The feed contract as OpenAPI components: `FeedEvent` (by `type`) and one per type."""
    raw = TypeAdapter(FeedEvent).json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, dict[str, Any]] = raw.pop("$defs")
    texts: dict[str, dict[str, Any]] = {}
    for model, schema in components.items():
        for name, prop in schema.get("properties", {}).items():
            _exact_field(model, name, prop, texts)
    components.update(sorted(texts.items()))
    components["Entered"].update(
        {
            "if": {"properties": {"visa": {"const": "visitor"}}, "required": ["visa"]},
            "then": {"required": ["stay_until"], "properties": {"stay_until": {"type": "string"}}},
        }
    )
    components["ArcApplied"].update(
        {
            "if": {"properties": {"basis": {"const": "admission_notice"}}, "required": ["basis"]},
            "then": {"properties": {"application": {"const": "initial"}}},
        }
    )
    components["ContactUpdated"]["anyOf"] = [
        {"required": [name], "properties": {name: {"type": "string"}}}
        for name in ("email", "line_user_id", "language")
    ]
    components["ContactUpdated"]["description"] += " At least one of the three, not null."
    raw["description"] = (
        "One event of the feed contract (SPEC §2), told apart by `type`. Text is stored with "
        "surrounding whitespace removed."
    )
    components["FeedEvent"] = raw
    return components


def install_openapi(app: FastAPI) -> None:
    """Complete the app's OpenAPI document (built once, on first request) as described above.

    Adds the feed contract's schemas, and drops FastAPI's default 422 "validation error"
    answers: a bad parameter is 400 with the error shape here.
    """
    build = app.openapi
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        document = build()
        if done:
            return document
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(event_schemas())
        for path_item in document.get("paths", {}).values():
            for operation in path_item.values():
                for parameter in operation.get("parameters", []):
                    # A query string cannot carry null: an optional parameter is left out.
                    options = parameter.get("schema", {}).get("anyOf", [])
                    if len(options) == 2 and {"type": "null"} in options:
                        title = parameter["schema"].get("title")
                        [kept] = [o for o in options if o != {"type": "null"}]
                        parameter["schema"] = kept | ({"title": title} if title else {})
                answers = operation.get("responses", {})
                default = answers.get("422", {}).get("content", {}).get(JSON_MEDIA, {})
                if default.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    del answers["422"]
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        done = True
        return document

    app.openapi = openapi  # type: ignore[method-assign]
