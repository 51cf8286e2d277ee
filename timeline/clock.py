"""The one place that reads the wall clock. Everything else is handed a `Clock`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

TAIPEI = ZoneInfo("Asia/Taipei")
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Now, as an aware UTC datetime (record time)."""
    return datetime.now(UTC)


def taipei_today(clock: Clock = system_clock) -> date:
    """The calendar day in Taiwan at the clock's now (valid time)."""
    return clock().astimezone(TAIPEI).date()


def parse_day(text: str) -> date:
    """A `YYYY-MM-DD` calendar day (Asia/Taipei), with a clear error."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a date written YYYY-MM-DD: {text!r}") from None


def parse_known_at(text: str) -> datetime:
    """A record moment: ISO 8601 timestamp (naive = UTC), or a day (= end of that day in Taipei)."""
    raw = text.strip()
    if len(raw) == 10:
        day = parse_day(raw)
        end = datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=TAIPEI)
        return end.astimezone(UTC)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
