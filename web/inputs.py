"""What a staff member types into the pages, read into days and record moments.

The same syntax as the CLI and the API (`timeline.clock`), with one difference made for
people in Taiwan: a known-at moment written without an offset is Taipei time here (the
pages show record times in Taipei time, and a value copied from them reads back).
"""

from __future__ import annotations

import re
from datetime import date, datetime

from timeline.clock import TAIPEI, parse_day, parse_known_at

_NAIVE_MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}([.,]\d{1,6})?)?", re.ASCII)


class InputError(ValueError):
    """A value a person typed that is not usable (the message names the field)."""


def as_of_day(text: str | None, today: date) -> date:
    """The as-of day: `YYYY-MM-DD`, or `today` when blank."""
    if text is None or not text.strip():
        return today
    try:
        return parse_day(text)
    except ValueError as exc:
        raise InputError(f"as_of: {exc}") from None


def known_moment(text: str | None, field: str = "known_at") -> datetime | None:
    """A known-at moment (None when blank: everything known now); naive = Taipei time."""
    if text is None or not text.strip():
        return None
    raw = text.strip()
    try:
        if _NAIVE_MOMENT.fullmatch(raw):
            local = datetime.fromisoformat(raw.replace(" ", "T").replace(",", "."))
            # Through parse_known_at, so the supported range is checked the same way.
            return parse_known_at(local.replace(tzinfo=TAIPEI).isoformat())
        return parse_known_at(raw)
    except ValueError as exc:
        raise InputError(f"{field}: {exc}") from None


def whole_number(text: str | None, field: str, default: int, low: int, high: int) -> int:
    """A whole number in [low, high] (default when blank)."""
    if text is None or not text.strip():
        return default
    raw = text.strip()
    if not (raw.isascii() and raw.isdigit()) or not (low <= int(raw) <= high):
        raise InputError(f"{field}: a whole number from {low} to {high}")
    return int(raw)
