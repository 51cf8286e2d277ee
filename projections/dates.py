"""The one module that does date arithmetic: periods, calendar months, working days.

Conventions (SPEC §3): dates are calendar days in Asia/Taipei. "Within N days of X"
means day 1 is the day after X, so the last day is X + N. Working days skip Saturdays,
Sundays and Taiwan public holidays, and count make-up working Saturdays (補班).
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from functools import lru_cache

import holidays

ONE_DAY = timedelta(days=1)


def days_after(start: date, days: int) -> date:
    """The last day of a period "within `days` days of `start`" (day 1 = start + 1)."""
    return start + timedelta(days=days)


def days_before(end: date, days: int) -> date:
    """The day `days` calendar days before `end`."""
    return end - timedelta(days=days)


def next_day(day: date) -> date:
    """The day after `day`."""
    return day + ONE_DAY


def previous_day(day: date) -> date:
    """The day before `day`."""
    return day - ONE_DAY


def days_between(earlier: date, later: date) -> int:
    """Calendar days from `earlier` to `later` (later − earlier)."""
    return (later - earlier).days


def add_months(day: date, months: int) -> date:
    """Shift by calendar months, clamping to the month's last day (05-31 − 3 → 02-29)."""
    month_index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(month_index, 12)
    month += 1
    last = calendar.monthrange(year, month)[1]
    return date(year, month, min(day.day, last))


class TaiwanCalendar:
    """Working days in Taiwan: public holidays off, make-up Saturdays on.

    Uses only the `holidays` package's PUBLIC category: its WORKDAY category holds
    commemorative days that are not days off.
    """

    def __init__(self, first_year: int = 2000, last_year: int = 2040) -> None:
        self._holidays = holidays.country_holidays(
            "TW", years=range(first_year, last_year + 1), categories=("public",)
        )

    def is_working_day(self, day: date) -> bool:
        """Whether government offices work on `day`."""
        if day.weekday() >= 5:
            return day in self._holidays.weekend_workdays
        return day not in self._holidays

    def holiday_name(self, day: date) -> str | None:
        """The public holiday on `day`, if any."""
        return self._holidays.get(day)

    def add_working_days(self, start: date, count: int) -> date:
        """The `count`-th working day after `start` (day 1 = first working day after it)."""
        day = start
        remaining = count
        while remaining > 0:
            day += ONE_DAY
            if self.is_working_day(day):
                remaining -= 1
        return day

    def roll_forward(self, day: date) -> date:
        """`day` if it is a working day, else the next working day (APA Art. 48(4))."""
        while not self.is_working_day(day):
            day += ONE_DAY
        return day


@lru_cache(maxsize=1)
def taiwan_calendar() -> TaiwanCalendar:
    """The shared calendar (built once; about 60 ms)."""
    return TaiwanCalendar()
