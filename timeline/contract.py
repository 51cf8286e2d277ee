"""The feed contract (SPEC §2): one strict pydantic model per event type.

Feeds push immutable facts as JSON objects (or CSV rows with the same column names).
Everything that enters the store passes through `parse_event`, which either returns a
typed event or raises `ContractError` with messages that name the field and the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from timeline.errors import ContractError

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

FINE_KINDS = ("late_arc_application", "late_details_update", "overstay")
APPLICATION_KINDS = ("initial", "extension", "replacement", "reapplication")
EVENT_TYPES = (
    "entered",
    "visa_changed",
    "registered",
    "arc_applied",
    "arc_issued",
    "address_changed",
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


def _iso_date(value: Any) -> date:
    """Accept a `date` or a strict `YYYY-MM-DD` string; anything else is an error."""
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError(f"must be a date written YYYY-MM-DD (got {value!r})")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"is not a real calendar date (got {value!r})") from None


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

    def body(self) -> dict[str, Any]:
        """The type-specific fields (everything but the envelope), as Python values."""
        envelope = {"event_id", "source", "student_id", "occurred_on", "note", "type"}
        return {k: v for k, v in self.__dict__.items() if k not in envelope}

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
# Fields that are personal data: never logged, encrypted at rest when a key is set.
PERSONAL_FIELDS = frozenset({"address", "passport_number"})


def parse_event(raw: Any) -> _Event:
    """Validate one raw event (a dict) against the contract, or raise `ContractError`."""
    if not isinstance(raw, dict):
        raise ContractError([f"an event must be a JSON object (got {type(raw).__name__})"])
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ContractError(describe_errors(exc, raw)) from None


def describe_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """Turn pydantic's errors into 'field: reason' sentences a feed author can act on."""
    messages: list[str] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] == raw.get("type"):
            loc = loc[1:]  # drop the discriminator tag pydantic puts first
        field = ".".join(loc)
        kind = err["type"]
        got = err.get("input")
        if kind == "union_tag_invalid":
            reason = f"type: unknown event type {raw.get('type')!r} (expected one of: " + (
                ", ".join(EVENT_TYPES) + ")"
            )
            messages.append(reason)
            continue
        if kind == "union_tag_not_found":
            messages.append("type: required field is missing")
            continue
        if kind == "missing":
            messages.append(f"{field}: required field is missing")
        elif kind == "extra_forbidden":
            messages.append(f"{field}: unknown field for an event of type {raw.get('type')!r}")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            messages.append(f"{field}: must be one of {expected} (got {got!r})")
        elif kind == "value_error":
            text = str(err.get("ctx", {}).get("error", err["msg"]))
            # model-level validators carry their own "field: reason" text
            messages.append(text if not field else f"{field}: {text}")
        else:
            messages.append(f"{field}: {err['msg'][0].lower()}{err['msg'][1:]} (got {got!r})")
    return messages


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one feed event, for feed authors to validate against."""
    schema = _ADAPTER.json_schema()
    schema["title"] = "residency-timeline feed event"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
