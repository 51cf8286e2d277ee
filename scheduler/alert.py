"""One alert, exactly as SPEC §5 puts it on the wire.

`Alert.model_dump(mode="json")` is the JSON object every sink delivers:
`{"key", "student_id", "task", "milestone", "due_on", "rule", "message": {"zh", "en"}}`.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    """The alert's text in Traditional Chinese and English."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zh: str
    en: str


class Alert(BaseModel):
    """One alert for one (student, task or fine, milestone); `key` is stable across runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    student_id: str
    task: str
    milestone: str
    due_on: date | None
    rule: str
    message: Message
