"""How a student wants to be reached on a day, from their `contact_updated` facts (SPEC §2).

A pure function of the facts (already filtered to what was known at a moment, see
`timeline.facts.known_facts`) and a valid-time day: every `contact_updated` that occurred
on or before the day, in valid-time order, each setting only the fields it carries (an
event with just `language` keeps the e-mail address known before it). A retracted event
is not among the known facts, so it leaves nothing behind.

The values are personal data: `Contact`'s repr hides them, so a contact that reaches a
log line or a traceback does not carry an address or a LINE id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from timeline.facts import Fact, chronological

ContactLanguage = Literal["en", "zh"]


@dataclass(frozen=True)
class Contact:
    """A student's e-mail address, LINE user id and language, each possibly unknown."""

    email: str | None = field(default=None, repr=False)
    line_user_id: str | None = field(default=None, repr=False)
    language: ContactLanguage | None = None

    def __repr__(self) -> str:
        # Personal data never in a repr: only which channels are on file.
        return (
            f"Contact(email={'<on file>' if self.email else None}, "
            f"line_user_id={'<on file>' if self.line_user_id else None}, "
            f"language={self.language!r})"
        )

    @property
    def reachable(self) -> bool:
        """Whether any channel (e-mail or LINE) is on file."""
        return bool(self.email or self.line_user_id)

    def as_json(self) -> dict[str, str | None]:
        """The contact as a JSON object (personal data: for staff answers, never for logs)."""
        return {"email": self.email, "line_user_id": self.line_user_id, "language": self.language}


def contact_on(facts: Iterable[Fact], day: date) -> Contact | None:
    """The contact as of `day` from the known facts; None when no `contact_updated` counts."""
    email: str | None = None
    line_user_id: str | None = None
    language: ContactLanguage | None = None
    seen = False
    for fact in chronological(f for f in facts if f.type == "contact_updated"):
        if fact.occurred_on > day:
            break
        seen = True
        email = fact.get("email") or email
        line_user_id = fact.get("line_user_id") or line_user_id
        language = fact.get("language") or language
    if not seen:
        return None
    return Contact(email=email, line_user_id=line_user_id, language=language)
