"""The one module that does date arithmetic: periods, calendar months, working days.

Conventions (SPEC §3): dates are calendar days in Asia/Taipei. "Within N days of X"
means day 1 is the day after X, so the last day is X + N. Working days skip Saturdays,
Sundays and Taiwan public holidays, and count make-up working Saturdays (補班).
"""

from __future__ import annotations

import calendar
import hashlib
import importlib.util
import sys
import threading
from datetime import MAXYEAR, MINYEAR, date, timedelta
from functools import cached_property
from pathlib import Path

import holidays

from timeline.errors import TimelineError

ONE_DAY = timedelta(days=1)


class DateOutOfRangeError(TimelineError):
    """Date arithmetic left the calendar Python can represent (years 1 to 9999).

    Only a stored fact with an absurd date (e.g. `valid_until` 9999-12-31) gets here; the
    message names the operation, never the facts, so it is safe to show and to log.
    """


def _out_of_range(operation: str) -> DateOutOfRangeError:
    return DateOutOfRangeError(f"date out of range: {operation} is not in the years 1 to 9999")


# The periods of the rules are few: each `timedelta` is made once (a derivation adds
# days for most facts, and building the delta was most of that).
_PERIODS: dict[int, timedelta] = {}


def _period(days: int) -> timedelta:
    period = _PERIODS.get(days)
    if period is None:
        period = timedelta(days=days)
        if len(_PERIODS) < 4096:
            _PERIODS[days] = period
    return period


def days_after(start: date, days: int) -> date:
    """The last day of a period "within `days` days of `start`" (day 1 = start + 1)."""
    try:
        return start + _period(days)
    except OverflowError:
        raise _out_of_range(f"the day {days} days after a date") from None


def days_before(end: date, days: int) -> date:
    """The day `days` calendar days before `end`."""
    try:
        return end - _period(days)
    except OverflowError:
        raise _out_of_range(f"the day {days} days before a date") from None


def next_day(day: date) -> date:
    """The day after `day`."""
    try:
        return day + ONE_DAY
    except OverflowError:
        raise _out_of_range("the day after a date") from None


def previous_day(day: date) -> date:
    """The day before `day`."""
    try:
        return day - ONE_DAY
    except OverflowError:
        raise _out_of_range("the day before a date") from None


def days_between(earlier: date, later: date) -> int:
    """Calendar days from `earlier` to `later` (later − earlier)."""
    return (later - earlier).days


def add_months(day: date, months: int) -> date:
    """Shift by calendar months, clamping to the month's last day (05-31 − 3 → 02-29)."""
    month_index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(month_index, 12)
    month += 1
    if not MINYEAR <= year <= MAXYEAR:
        raise _out_of_range(f"a date shifted by {months} calendar months")
    return date(year, month, min(day.day, month_length(year, month)))


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def month_length(year: int, month: int) -> int:
    """Days in a month (`calendar.monthrange` without its weekday computation)."""
    if month == 2 and calendar.isleap(year):
        return 29
    return _MONTH_DAYS[month]


def _taiwan_holidays(years: range) -> holidays.HolidayBase:
    """`holidays.country_holidays("TW", ...)`, loading Taiwan's module alone.

    The package's `holidays.countries` imports all of its ~250 countries (a good part of a
    second for a command that shows one student); Taiwan's module needs none of them.
    The same class, so the same days (tests/test_dates.py compares the two). Threads of a
    server load it together at start-up: the lock keeps each from using the module while
    another is still executing it (it is in `sys.modules` before its classes are defined).
    """
    name = "holidays.countries.taiwan"
    with _LOADING:
        module = sys.modules.get(name)
        if module is None:
            path = Path(holidays.__file__).parent / "countries" / "taiwan.py"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:  # a different layout: the documented way
                return holidays.country_holidays("TW", years=years, categories=("public",))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return module.Taiwan(years=years, categories=("public",))


# Loading Taiwan's module, building the shared calendar, and growing a calendar's
# holidays to a year outside the ones built (the package fills them in on lookup).
_LOADING = threading.RLock()


class TaiwanCalendar:
    """Working days in Taiwan: public holidays off, make-up Saturdays on.

    Uses only the `holidays` package's PUBLIC category: its WORKDAY category holds
    commemorative days that are not days off.
    """

    def __init__(self, first_year: int = 2000, last_year: int = 2040) -> None:
        self._years = range(first_year, last_year + 1)
        self._holidays = _taiwan_holidays(self._years)

    @cached_property
    def digest(self) -> str:
        """A short digest of the calendar's data (holidays, make-up days), for fingerprints."""
        # Only the years built at start: lookups in other years grow the holidays dict.
        years = self._years
        with _LOADING:  # no other thread adding a year's days while they are listed
            items = list(self._holidays.items())
            weekend_workdays = list(self._holidays.weekend_workdays)
        data = sorted((d.isoformat(), n) for d, n in items if d.year in years)
        workdays = sorted(d.isoformat() for d in weekend_workdays if d.year in years)
        text = repr((data, workdays))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def is_working_day(self, day: date) -> bool:
        """Whether government offices work on `day`."""
        if day.year not in self._years:
            with _LOADING:  # the lookup adds the year's days to the dict other threads read
                return self._working(day)
        return self._working(day)

    def _working(self, day: date) -> bool:
        if day.weekday() >= 5:
            return day in self._holidays.weekend_workdays
        return day not in self._holidays

    def holiday_name(self, day: date) -> str | None:
        """The public holiday on `day`, if any."""
        if day.year not in self._years:
            with _LOADING:
                return self._holidays.get(day)
        return self._holidays.get(day)

    def add_working_days(self, start: date, count: int) -> date:
        """The `count`-th working day after `start` (day 1 = first working day after it)."""
        day = start
        remaining = count
        while remaining > 0:
            day = next_day(day)
            if self.is_working_day(day):
                remaining -= 1
        return day

    def roll_forward(self, day: date) -> date:
        """`day` if it is a working day, else the next working day (APA Art. 48(4))."""
        while not self.is_working_day(day):
            day = next_day(day)
        return day


def taiwan_calendar() -> TaiwanCalendar:
    """The shared calendar (built once, by the first thread to ask; about 60 ms)."""
    calendar = _SHARED.get("calendar")
    if calendar is None:
        with _LOADING:
            calendar = _SHARED.get("calendar")
            if calendar is None:
                calendar = _SHARED["calendar"] = TaiwanCalendar()
    return calendar


_SHARED: dict[str, TaiwanCalendar] = {}
