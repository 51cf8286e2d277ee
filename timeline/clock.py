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
