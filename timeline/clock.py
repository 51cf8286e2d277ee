"""The one place that reads the wall clock. Everything else is handed a `Clock`.

Also the one place that turns a user's text into a day or a record moment, so the CLI,
the HTTP API and the feed contract accept exactly the same dates: `YYYY-MM-DD`, a real
calendar day, inside the documented range `EARLIEST_DAY` … `LATEST_DAY`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

TAIPEI = ZoneInfo("Asia/Taipei")
Clock = Callable[[], datetime]

# Every date the service accepts (feed events, --as-of, known_at) lies in this range: wide
# enough for any student's life, narrow enough that date arithmetic (+ months, + working
# days, far horizons) can never leave what `datetime.date` represents.
EARLIEST_DAY = date(1950, 1, 1)
LATEST_DAY = date(2100, 12, 31)
_EARLIEST_MOMENT = datetime(1949, 12, 31, tzinfo=UTC)
_LATEST_MOMENT = datetime(2101, 1, 2, tzinfo=UTC)

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_MOMENT = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,6})?)?)"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)
_SHOWN = 40  # at most this many characters of a bad value are echoed back


def system_clock() -> datetime:
    """Now, as an aware UTC datetime (record time)."""
    return datetime.now(UTC)


def taipei_today(clock: Clock = system_clock) -> date:
    """The calendar day in Taiwan at the clock's now (valid time)."""
    return clock().astimezone(TAIPEI).date()


def shown(text: str) -> str:
    """A user's value, quoted for an error message: shortened, control characters escaped."""
    clipped = text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
    return ascii(clipped) if not clipped.isprintable() else repr(clipped)


def in_range(day: date) -> bool:
    """Whether `day` lies in the documented range EARLIEST_DAY … LATEST_DAY."""
    return EARLIEST_DAY <= day <= LATEST_DAY


def _range_error(text: str) -> ValueError:
    return ValueError(
        f"{shown(text)} is outside the supported range "
        f"{EARLIEST_DAY.isoformat()} … {LATEST_DAY.isoformat()}"
    )


def parse_day(text: str) -> date:
    """A `YYYY-MM-DD` calendar day (Asia/Taipei) in the supported range, with a clear error."""
    raw = text.strip() if isinstance(text, str) else text
    if not isinstance(raw, str) or not _DAY.fullmatch(raw):
        raise ValueError(f"not a date written YYYY-MM-DD: {shown(str(text))}")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"not a real calendar date: {shown(raw)}") from None
    if not in_range(day):
        raise _range_error(raw)
    return day


def parse_known_at(text: str) -> datetime:
    """A record moment: ISO 8601 timestamp (naive = UTC), or a day (= end of that day in Taipei).

    Only `ValueError` is raised, for any input; the moment lies in the supported range.
    """
    raw = text.strip() if isinstance(text, str) else text
    if not isinstance(raw, str):
        raise ValueError(f"not an ISO 8601 timestamp: {shown(str(text))}")
    if len(raw) == 10:
        day = parse_day(raw)
        end = datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=TAIPEI)
        return end.astimezone(UTC)
    if not _MOMENT.fullmatch(raw):
        raise ValueError(
            f"not an ISO 8601 timestamp (YYYY-MM-DDTHH:MM[:SS][Z|±HH:MM]): {shown(raw)}"
        )
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a real moment: {shown(raw)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    offset = moment.utcoffset() or timedelta(0)
    if abs(offset) >= timedelta(hours=24):
        raise ValueError(f"not a real UTC offset: {shown(raw)}")
    # Compare before converting: near date.min/max, astimezone() itself would overflow.
    naive_utc = moment.replace(tzinfo=None) - offset if in_range(moment.date()) else None
    if naive_utc is None:
        raise _range_error(raw)
    utc = naive_utc.replace(tzinfo=UTC)
    if not (_EARLIEST_MOMENT <= utc <= _LATEST_MOMENT):
        raise _range_error(raw)
    return utc
