"""The student view (SPEC §4) as pydantic models: what `show --json` and the API return."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

Status = Literal[
    "revoked",
    "overstay",
    "expired_abroad",
    "arc_application_overdue",
    "arc_application_due",
    "application_pending",
    "extension_window",
    "arc_valid",
    "no_arc",
]
TaskStatus = Literal["upcoming", "open", "overdue", "done", "done_late", "cancelled"]
FineStatus = Literal["accrued", "imposed", "paid"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Document(_Out):
    """A document to bring, as the guide names it in both languages (immutable: shared)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    en: str
    zh: str


class Arc(_Out):
    """The ARC the student holds or held."""

    number: str | None
    issued_on: date
    valid_until: date
    basis: Literal["registration", "admission_notice"]


class Application(_Out):
    """A pending application (R-PROCESSING)."""

    application: str
    applied_on: date
    expected_decision_on: date


class Overstay(_Out):
    """An unresolved overstay (R-OVERSTAY)."""

    since: date
    days: int
    can_reapply: bool
    fine_ntd: int


class Task(_Out):
    """Something the student must do, with its deadline and the rule behind it."""

    kind: str
    status: TaskStatus
    opens_on: date | None
    due_on: date | None
    done_on: date | None
    where: str
    fee_ntd: int | None
    documents: list[Document]
    rule: str
    caused_by: list[str]


class Fine(_Out):
    """A fine accrued under a rule; imposed and paid amounts when known."""

    kind: str
    status: FineStatus
    accrued_on: date
    amount_min_ntd: int
    amount_max_ntd: int
    amount_ntd: int | None = None
    paid_ntd: int = 0
    offense: int | None = None
    rule: str
    caused_by: list[str]


class FinesTotal(_Out):
    """Sum of all fines (imposed amounts, else ranges) and of what was paid."""

    min_ntd: int
    max_ntd: int
    paid_ntd: int


class Anomaly(_Out):
    """Facts that contradict each other: stored, reported, never dropped."""

    kind: str
    on: date
    message: str
    events: list[str]


class StudentView(_Out):
    """Everything derived for one student as of a date, as known at a moment."""

    student_id: str
    as_of: date
    known_at: datetime | None
    status: Status
    in_taiwan: bool
    arc: Arc | None
    application: Application | None
    overstay: Overstay | None
    tasks: list[Task]
    fines: list[Fine]
    fines_total: FinesTotal
    anomalies: list[Anomaly]
