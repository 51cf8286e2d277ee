"""The feed contract (SPEC §2): one strict pydantic model per event type.

Feeds push immutable facts as JSON objects (or CSV rows with the same column names).
Everything that enters the store passes through `parse_event`, which either returns a
typed event or raises `ContractError` with messages that name the field and the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from datetime import date
from email.utils import getaddresses
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import SchemaValidator, core_schema

from timeline.clock import EARLIEST_DAY, LATEST_DAY, in_range, shown
from timeline.errors import ContractError

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Unicode categories no id or text may hold: controls (C0, C1, DEL), format and bidi
# controls (U+200B..U+200F, U+202A..U+202E, U+2066..U+2069, ...), lone surrogates, and the
# line/paragraph separators. They reach terminals and logs raw, and PostgreSQL refuses NUL.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Free text (multi-line notes from registrar exports) may keep TAB and LF.
FREE_TEXT_FIELDS = frozenset({"note", "reason"})
_FREE_TEXT_ALLOWED = frozenset("\t\n")
MAX_MESSAGES = 10  # problems listed per rejected event
MAX_MESSAGE_CHARS = 400  # characters per problem

FINE_KINDS = ("late_arc_application", "late_details_update", "overstay")
APPLICATION_KINDS = ("initial", "extension", "replacement", "reapplication")
EVENT_TYPES = (
    "entered",
    "visa_changed",
    "registered",
    "arc_applied",
    "arc_issued",
    "address_changed",
    "workplace_changed",
    "contact_updated",
    "details_updated",
    "arc_lost",
    "passport_lost",
    "passport_replaced",
    "departed",
    "studies_ceased",
    "arc_revoked",
    "fine_imposed",
    "fine_paid",
    "retracted",
)


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (`null`, `true`, `an array`, ...)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def echo(value: Any) -> str:
    """A value shown back in a message: short, control characters escaped, containers named."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return repr(value) if abs(value) < 10**18 else "a very large number"
    return json_kind(value)  # null, true, false, an array, an object


def forbidden_character(text: str, *, free_text: bool = False) -> str | None:
    """Why `text` may not be stored (a control or format character), or None if it is clean."""
    if text.isprintable():  # the common case, at C speed
        return None
    for position, ch in enumerate(text, start=1):
        if free_text and ch in _FREE_TEXT_ALLOWED:
            continue
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            code = f"U+{ord(ch):04X}"
            return f"must not contain control or format characters ({code} at character {position})"
    return None


def plain_address(value: str) -> bool:
    """Whether `value` is one bare e-mail address that a mail header reads back as itself."""
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in value):
        return False
    # `a<b>@x` is the mailbox "b", `a,b@x` two mailboxes, `a:b@x` a group holding "b@x".
    return getaddresses([value]) == [("", value)]


def _iso_date(value: Any) -> date:
    """Accept a `date` or a strict `YYYY-MM-DD` string in the documented range, else an error."""
    if isinstance(value, date) and not hasattr(value, "hour"):
        day = value
    elif not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError(f"must be a date written YYYY-MM-DD (got {echo(value)})")
    else:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"is not a real calendar date (got {echo(value)})") from None
    if not in_range(day):
        raise ValueError(
            f"must lie between {EARLIEST_DAY.isoformat()} and {LATEST_DAY.isoformat()} "
            f"(got {day.isoformat()})"
        )
    return day


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
FineKind = Literal["late_arc_application", "late_details_update", "overstay"]
ApplicationKind = Literal["initial", "extension", "replacement", "reapplication"]
Amount = Annotated[int, Field(gt=0, le=10_000_000, strict=True)]


class _Event(BaseModel):
    """The envelope every event shares."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    event_id: str = Field(min_length=1, max_length=128)
    source: str = Field(default="manual", min_length=1, max_length=64)
    student_id: str = Field(min_length=1, max_length=64)
    occurred_on: IsoDate
    note: str | None = Field(default=None, max_length=2000)

    @field_validator("note", "reason", mode="before", check_fields=False)
    @classmethod
    def _unix_line_ends(cls, value: Any) -> Any:
        # Windows exports carry CRLF inside multi-line cells; store one line end, LF.
        if isinstance(value, str) and "\r" in value:
            return value.replace("\r\n", "\n").replace("\r", "\n")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            problem = forbidden_character(value, free_text=info.field_name in FREE_TEXT_FIELDS)
            if problem:
                raise ValueError(problem)
        return value

    def body(self) -> dict[str, Any]:
        """The type-specific fields (everything but the envelope), as Python values."""
        values = self.__dict__
        names = BODY_FIELDS.get(type(self))
        if names is not None and len(values) == len(names) + len(ENVELOPE):
            return {name: values[name] for name in names}  # (a validated event: every field)
        return {k: v for k, v in values.items() if k not in ENVELOPE}

    def digest(self) -> str:
        """A stable fingerprint of the content, to tell a duplicate from a conflict."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


class Entered(_Event):
    """Arrived in Taiwan."""

    type: Literal["entered"]
    visa: Literal["resident", "visitor", "arc"]
    visa_code: str | None = Field(default=None, min_length=1, max_length=8)
    stay_until: IsoDate | None = None

    @field_validator("visa_code")
    @classmethod
    def _upper_code(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @model_validator(mode="after")
    def _visitor_needs_stay(self) -> Entered:
        if self.visa == "visitor" and self.stay_until is None:
            raise ValueError("stay_until: required when visa is 'visitor'")
        if self.stay_until is not None and self.stay_until < self.occurred_on:
            raise ValueError("stay_until: must be on or after occurred_on")
        return self


class VisaChanged(_Event):
    """A resident visa was obtained while in Taiwan."""

    type: Literal["visa_changed"]
    to: Literal["resident"]


class Registered(_Event):
    """Registered for a semester."""

    type: Literal["registered"]
    semester: str = Field(min_length=1, max_length=32)


class ArcApplied(_Event):
    """An ARC application was submitted."""

    type: Literal["arc_applied"]
    application: ApplicationKind
    basis: Literal["registration", "admission_notice"] = "registration"
    by_agent: bool = Field(default=False, strict=True)

    @model_validator(mode="after")
    def _basis_initial_only(self) -> ArcApplied:
        if self.basis == "admission_notice" and self.application != "initial":
            raise ValueError("basis: 'admission_notice' applies to initial applications only")
        return self


class ArcIssued(_Event):
    """An ARC was issued or extended, valid through `valid_until` inclusive."""

    type: Literal["arc_issued"]
    valid_until: IsoDate
    arc_number: str | None = Field(default=None, min_length=1, max_length=32)
    application: ApplicationKind = "initial"

    @model_validator(mode="after")
    def _valid_after_issue(self) -> ArcIssued:
        if self.valid_until < self.occurred_on:
            raise ValueError("valid_until: must be on or after occurred_on")
        return self


class AddressChanged(_Event):
    """Moved to a new residential address (personal data)."""

    type: Literal["address_changed"]
    address: str = Field(min_length=1, max_length=500)


class WorkplaceChanged(_Event):
    """Started at or changed their place of employment, 服務處所 (personal data)."""

    type: Literal["workplace_changed"]
    workplace: str | None = Field(default=None, min_length=1, max_length=500)


_LINE_USER_ID = re.compile(r"U[0-9a-f]{32}")


class ContactUpdated(_Event):
    """How the student wants to be reached (personal data: never logged nor echoed)."""

    type: Literal["contact_updated"]
    email: str | None = Field(default=None, min_length=3, max_length=254)
    line_user_id: str | None = None
    language: Literal["en", "zh"] | None = None

    @field_validator("email")
    @classmethod
    def _looks_like_an_address(cls, value: str | None) -> str | None:
        # The messages never quote the value: it is personal data.
        if value is None:
            return value
        if not plain_address(value):
            raise ValueError(
                "must look like an e-mail address (one @, no spaces, nothing a mailer reads "
                "as a name, a comment or a second address: no < > , ; : ( ))"
            )
        return value

    @field_validator("line_user_id")
    @classmethod
    def _line_id(cls, value: str | None) -> str | None:
        if value is not None and not _LINE_USER_ID.fullmatch(value):
            raise ValueError("must be a LINE user id: U followed by 32 lowercase hex digits")
        return value

    @model_validator(mode="after")
    def _at_least_one(self) -> ContactUpdated:
        if self.email is None and self.line_user_id is None and self.language is None:
            raise ValueError("at least one of email, line_user_id, language is required")
        return self


class DetailsUpdated(_Event):
    """A change was recorded with the NIA."""

    type: Literal["details_updated"]
    fields: list[Literal["address", "passport", "employer"]] = Field(min_length=1, max_length=3)

    @field_validator("fields")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class ArcLost(_Event):
    """The ARC card was lost."""

    type: Literal["arc_lost"]


class PassportLost(_Event):
    """The passport was lost."""

    type: Literal["passport_lost"]


class PassportReplaced(_Event):
    """A new passport was obtained (the number is personal data)."""

    type: Literal["passport_replaced"]
    passport_number: str | None = Field(default=None, min_length=1, max_length=32)


class Departed(_Event):
    """Left Taiwan."""

    type: Literal["departed"]


class StudiesCeased(_Event):
    """The purpose of residence ended."""

    type: Literal["studies_ceased"]
    reason: Literal["deferred", "withdrawn", "other"]


class ArcRevoked(_Event):
    """The NIA revoked the ARC, possibly setting a departure deadline."""

    type: Literal["arc_revoked"]
    leave_by: IsoDate | None = None

    @model_validator(mode="after")
    def _leave_after(self) -> ArcRevoked:
        if self.leave_by is not None and self.leave_by < self.occurred_on:
            raise ValueError("leave_by: must be on or after occurred_on")
        return self


class FineImposed(_Event):
    """The NIA decided the amount of a fine."""

    type: Literal["fine_imposed"]
    fine: FineKind
    amount_ntd: Amount


class FinePaid(_Event):
    """A fine was paid."""

    type: Literal["fine_paid"]
    amount_ntd: Amount
    fine: FineKind | None = None


class Retracted(_Event):
    """An earlier event of the same student and source was wrong."""

    type: Literal["retracted"]
    retracts: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _not_itself(self) -> Retracted:
        if self.retracts == self.event_id:
            raise ValueError("retracts: an event cannot retract itself")
        return self


FeedEvent = Annotated[
    Entered
    | VisaChanged
    | Registered
    | ArcApplied
    | ArcIssued
    | AddressChanged
    | WorkplaceChanged
    | ContactUpdated
    | DetailsUpdated
    | ArcLost
    | PassportLost
    | PassportReplaced
    | Departed
    | StudiesCeased
    | ArcRevoked
    | FineImposed
    | FinePaid
    | Retracted,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(FeedEvent)
MODELS: dict[str, type[_Event]] = {
    m.model_fields["type"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in _Event.__subclasses__()
}
ENVELOPE = frozenset({"event_id", "source", "student_id", "occurred_on", "note", "type"})
# Per event class, its type-specific fields in declaration order (the order of a validated
# event's `__dict__`), and all its fields sorted (the order of the digest's canonical JSON).
BODY_FIELDS: dict[type[_Event], tuple[str, ...]] = {
    m: tuple(name for name in m.model_fields if name not in ENVELOPE) for m in MODELS.values()
}
SORTED_FIELDS: dict[type[_Event], tuple[str, ...]] = {
    m: tuple(sorted(m.model_fields)) for m in MODELS.values()
}
# Fields that are personal data: never logged, encrypted at rest when a key is set.
PERSONAL_FIELDS = frozenset({"address", "passport_number", "workplace", "email", "line_user_id"})
# Fields whose values never appear in a rejection message: personal data and free text.
# (`reason` is free text in a retraction, an enumeration in studies_ceased.)
UNECHOED_FIELDS = PERSONAL_FIELDS | {"note", "reason", "arc_number"}


_CLEAN_TEXT = _Event.__pydantic_decorators__.field_validators["_clean_text"].func.__func__


def _without_clean_text(node: Any) -> Any:
    """A copy of a core schema without the `_clean_text` validators (everything else kept)."""
    if isinstance(node, dict):
        if node.get("type") == "function-after":
            function = node["function"].get("function")
            if getattr(function, "__func__", None) is _CLEAN_TEXT:
                return _without_clean_text(node["schema"])
        return {key: _without_clean_text(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_without_clean_text(value) for value in node]
    return node


def _with_native_dates(node: Any) -> Any:
    """A copy of a core schema whose `_iso_date` validators are pydantic-core's own.

    A JSON string of exactly `YYYY-MM-DD` (ASCII digits, nothing stripped), then a real
    calendar date within the documented range: what `_iso_date` accepts from JSON, with
    the same value, and no Python call. Its errors are pydantic's: for a valid-or-not
    verdict only (`parse_event_text`), never for the messages.
    """
    if isinstance(node, dict):
        if node.get("type") == "function-before" and node["function"].get("function") is _iso_date:
            return core_schema.chain_schema(
                [
                    core_schema.str_schema(
                        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", strip_whitespace=False, strict=True
                    ),
                    core_schema.date_schema(ge=EARLIEST_DAY, le=LATEST_DAY),
                ]
            )
        return {key: _with_native_dates(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_with_native_dates(value) for value in node]
    return node


# The contract minus the per-field control-character check (a Python call for each of
# some ten fields, a third of the validation's cost). It returns the same classes and
# the same errors as `_ADAPTER` for any input whose text values are all printable,
# where that check cannot fire; `parse_event` and `parse_event_text` use it only then.
def _validator_without_clean_text(*, native_dates: bool = False) -> SchemaValidator:
    """A validator of the contract without `_clean_text`, made of the models' own schemas."""
    # pydantic-core reuses a finished model's own validator for a model in a schema
    # (all validators included): marked unfinished while this one is built, each model
    # is built from the schema given, which is what is wanted.
    models = list(MODELS.values())
    for model in models:
        model.__pydantic_complete__ = False
    try:
        schema = _without_clean_text(_ADAPTER.core_schema)
        return SchemaValidator(_with_native_dates(schema) if native_dates else schema)
    finally:
        for model in models:
            model.__pydantic_complete__ = True


_PRINTABLE = _validator_without_clean_text()
# The same with the dates checked by pydantic-core: `parse_event_text` only, which takes
# a valid event from it and leaves every rejection to the full path and its messages.
_PRINTABLE_JSON = _validator_without_clean_text(native_dates=True)
# Values that pydantic's `str` never accepts (exact types: a subclass takes the full path).
_NOT_TEXT = frozenset({int, float, bool, type(None), list, dict})


def _printable_values(raw: dict[str, Any]) -> bool:
    """Whether every value is printable text or a JSON value that cannot become text."""
    for value in raw.values():
        kind = type(value)
        if kind is str:
            if not value.isprintable():
                return False
        elif kind not in _NOT_TEXT:
            return False
    return True


def parse_event(raw: Any) -> _Event:
    """Validate one raw event (a dict) against the contract, or raise `ContractError`."""
    if not isinstance(raw, dict):
        raise ContractError([f"an event must be a JSON object (got {json_kind(raw)})"])
    try:
        if _printable_values(raw):
            return _PRINTABLE.validate_python(raw)  # type: ignore[no-any-return]
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ContractError(describe_errors(exc, raw)) from None


def parse_event_text(text: str) -> _Event | None:
    """The valid event one JSON text holds, parsed and validated in one pass; else None.

    None means only the full path (`rawjson.loads_strict`, then `parse_event`) can say:
    the text is not a valid event, or it holds what that path refuses and pydantic's
    parser takes silently (a duplicate key), or text that is not printable. An event
    returned here is the one the full path returns (same class, fields and fields set).
    """
    try:
        event = _PRINTABLE_JSON.validate_json(text)
    except ValidationError:
        return None
    # A valid event is one flat object of known fields (so no deep nesting, NaN or huge
    # number got through). Outside strings a colon only ends a key, and a value's colon
    # is written `:` or `\u003a`: so with no such escape, the text holds one colon per key
    # plus the values' colons exactly when no key is repeated.
    given = event.model_fields_set
    colons = len(given)
    if "\\" not in text and text.isprintable() and text.count(":") == colons:
        # The common case at C speed: no escapes, so every value is a printable piece of
        # the text, and there are no more colons than keys given, so no key repeats.
        return event  # type: ignore[no-any-return]
    values = event.__dict__
    for name in given:
        value = values[name]
        if type(value) is str:
            if not value.isprintable():
                return None  # the full path says which character, and where
            colons += value.count(":")
    if text.count(":") != colons or "\\u003a" in text or "\\u003A" in text:
        return None
    return event  # type: ignore[no-any-return]


def describe_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """Turn pydantic's errors into 'field: reason' sentences a feed author can act on.

    Values are echoed short and escaped, and never for personal or free-text fields.
    """
    messages: list[str] = []
    kind_of_event = raw.get("type")
    errors = exc.errors(include_url=False)
    for err in errors[:MAX_MESSAGES]:
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] == kind_of_event:
            loc = loc[1:]  # drop the discriminator tag pydantic puts first
        field = _field_name(loc)
        kind = err["type"]
        private = bool(loc) and loc[0] in UNECHOED_FIELDS
        if private and not (loc[0] == "reason" and kind_of_event == "studies_ceased"):
            got = ""
        else:
            got = f" (got {echo(err.get('input'))})"
        if kind == "union_tag_invalid":
            messages.append(
                f"type: unknown event type {echo(kind_of_event)} (expected one of: "
                + ", ".join(EVENT_TYPES)
                + ")"
            )
        elif kind == "union_tag_not_found":
            messages.append("type: required field is missing")
        elif kind == "missing":
            messages.append(f"{field}: required field is missing")
        elif kind == "extra_forbidden":
            key = field if field.strip() else echo(field)  # a CSV column without a name
            messages.append(f"{key}: unknown field for an event of type {echo(kind_of_event)}")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            messages.append(f"{field}: must be one of {expected}{got}")
        elif kind == "value_error":
            text = str(err.get("ctx", {}).get("error", err["msg"]))
            # model-level validators carry their own "field: reason" text
            messages.append(text if not field else f"{field}: {text}")
        else:
            messages.append(f"{field}: {err['msg'][0].lower()}{err['msg'][1:]}{got}")
    if len(errors) > MAX_MESSAGES:
        messages.append(f"and {len(errors) - MAX_MESSAGES} more problems")
    # Every message stays short whatever was sent (a long field path plus a long echo).
    return [
        m if len(m) <= MAX_MESSAGE_CHARS else m[: MAX_MESSAGE_CHARS - 1] + "…" for m in messages
    ]


def _field_name(loc: list[str]) -> str:
    """A field path fit to print: a feed may send any key, control characters included."""
    name = ".".join(loc)
    if len(name) > 40 or not name.isprintable():
        return echo(name)
    return name


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one feed event, for feed authors to validate against."""
    schema = _ADAPTER.json_schema()
    schema["title"] = "residency-timeline feed event"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
