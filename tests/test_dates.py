"""projections.dates: periods, calendar months and Taiwan working days (SPEC §3 conventions).

The 2024/2025 calendar below is the DGPA's published one (行政院人事行政總處): Lunar New
Year 2024 off Thu 02-08 … Wed 02-14 with Sat 02-17 a make-up working day; 2025 off Mon
01-27 … Fri 01-31 with Sat 02-08 a make-up working day.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta

import pytest
from facts_builder import d
from hypothesis import given, settings
from hypothesis import strategies as st

from projections import dates
from projections.dates import taiwan_calendar

CAL = taiwan_calendar()


def test_within_n_days_ends_on_x_plus_n():
    assert dates.days_after(d("2024-03-16"), 30) == d("2024-04-15")  # the guide's example
    assert dates.days_after(d("2023-12-20"), 15) == d("2024-01-04")
    assert dates.days_after(d("2024-02-28"), 1) == d("2024-02-29")


def test_days_before_between_next_previous():
    assert dates.days_before(d("2024-05-29"), 15) == d("2024-05-14")
    assert dates.days_between(d("2024-05-31"), d("2024-06-30")) == 30
    assert dates.days_between(d("2024-05-31"), d("2024-05-31")) == 0
    assert dates.next_day(d("2024-02-28")) == d("2024-02-29")
    assert dates.next_day(d("2024-12-31")) == d("2025-01-01")
    assert dates.previous_day(d("2024-03-01")) == d("2024-02-29")


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        ("2024-05-31", -3, "2024-02-29"),
        ("2025-05-31", -3, "2025-02-28"),
        ("2024-11-30", -3, "2024-08-30"),
        ("2024-05-30", -3, "2024-02-29"),
        ("2024-05-29", -3, "2024-02-29"),
        ("2024-05-28", -3, "2024-02-28"),
        ("2024-03-31", -1, "2024-02-29"),
        ("2025-02-15", -3, "2024-11-15"),
        ("2024-01-31", 1, "2024-02-29"),
        ("2024-08-31", 6, "2025-02-28"),
        ("2024-12-15", 1, "2025-01-15"),
        ("2024-06-30", 0, "2024-06-30"),
    ],
)
def test_add_calendar_months_clamps_to_the_month_end(day, months, expected):
    assert dates.add_months(d(day), months) == d(expected)


@pytest.mark.parametrize(
    ("day", "working"),
    [
        ("2024-01-01", False),  # Founding Day
        ("2024-01-02", True),
        ("2024-02-07", True),
        ("2024-02-08", False),  # bridge day off, made up on 02-17
        ("2024-02-09", False),  # Lunar New Year's Eve
        ("2024-02-10", False),  # Saturday
        ("2024-02-12", False),
        ("2024-02-13", False),
        ("2024-02-14", False),
        ("2024-02-15", True),
        ("2024-02-17", True),  # make-up working Saturday
        ("2024-02-18", False),  # Sunday
        ("2024-02-28", False),  # Peace Memorial Day
        ("2024-04-04", False),  # Children's Day / Tomb-Sweeping Day
        ("2024-04-05", False),
        ("2024-06-10", False),  # Dragon Boat Festival
        ("2024-09-17", False),  # Mid-Autumn Festival
        ("2024-10-10", False),  # National Day
        ("2024-10-11", True),
        ("2025-01-27", False),
        ("2025-01-31", False),
        ("2025-02-03", True),
        ("2025-02-08", True),  # make-up working Saturday
    ],
)
def test_taiwan_working_days(day, working):
    assert CAL.is_working_day(d(day)) is working


@pytest.mark.parametrize(
    ("start", "count", "expected"),
    [
        ("2024-02-05", 10, "2024-02-23"),
        ("2024-02-16", 1, "2024-02-17"),  # the make-up Saturday is day 1
        ("2024-02-16", 10, "2024-03-01"),
        ("2024-02-07", 1, "2024-02-15"),
        ("2024-04-03", 10, "2024-04-19"),
        ("2024-03-16", 10, "2024-03-29"),
        ("2025-01-24", 10, "2025-02-13"),  # 01-27…31 off, Sat 02-08 works
    ],
)
def test_nth_working_day_after(start, count, expected):
    assert CAL.add_working_days(d(start), count) == d(expected)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2024-04-14", "2024-04-15"),  # Sunday → Monday
        ("2024-04-04", "2024-04-08"),  # holiday, holiday, weekend → Monday
        ("2024-02-08", "2024-02-15"),  # Lunar New Year
        ("2024-02-17", "2024-02-17"),  # make-up Saturday is a working day
        ("2024-04-15", "2024-04-15"),
    ],
)
def test_roll_forward_to_the_next_working_day(day, expected):
    assert CAL.roll_forward(d(day)) == d(expected)


@settings(max_examples=200, deadline=None)
@given(
    start=st.dates(min_value=date(2023, 1, 1), max_value=date(2026, 12, 31)),
    count=st.integers(min_value=1, max_value=30),
)
def test_nth_working_day_counts_exactly_n_working_days(start, count):
    end = CAL.add_working_days(start, count)
    assert CAL.is_working_day(end)
    span = [start + timedelta(days=i) for i in range(1, (end - start).days + 1)]
    assert sum(CAL.is_working_day(x) for x in span) == count


@settings(max_examples=200, deadline=None)
@given(day=st.dates(min_value=date(2023, 1, 1), max_value=date(2026, 12, 31)))
def test_three_months_back_is_never_later_than_the_same_day_number(day):
    opens = dates.add_months(day, -3)
    assert 89 <= (day - opens).days <= 92
    assert opens.day <= day.day


def test_month_length_agrees_with_the_standard_calendar_in_every_year() -> None:
    for year in range(1, 10000):
        for month in range(1, 13):
            assert dates.month_length(year, month) == calendar.monthrange(year, month)[1]


def test_the_calendar_loaded_alone_is_the_holidays_package_own_taiwan() -> None:
    """`TaiwanCalendar` loads Taiwan's module alone (a fast start): the same days off."""
    import holidays

    years = range(2000, 2041)
    ours = dates._taiwan_holidays(years)
    theirs = holidays.country_holidays("TW", years=years, categories=("public",))
    assert isinstance(theirs, type(ours)) or isinstance(ours, type(theirs))
    assert sorted(ours.items()) == sorted(theirs.items()) and len(ours) > 500
    assert sorted(ours.weekend_workdays) == sorted(theirs.weekend_workdays)


CONCURRENT_START = """
import threading
from datetime import date

from projections import dates

barrier = threading.Barrier(16)
results, errors = [], []


def ask(i):
    barrier.wait()
    try:
        calendar = dates.taiwan_calendar()
        day = date(2100 + i % 4, 1, 1) if i % 2 else date(2025, 1, 1)
        results.append((id(calendar), calendar.is_working_day(day), calendar.digest))
    except BaseException as exc:
        errors.append(repr(exc))


threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(len({r[0] for r in results}), len(results), len({r[2] for r in results}), errors)
"""


def test_threads_asking_for_the_calendar_at_once_in_a_fresh_process_all_get_the_one() -> None:
    """A server's first requests arrive together: none sees Taiwan's module half loaded."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for _ in range(3):
        out = (
            subprocess.run(
                [sys.executable, "-c", CONCURRENT_START],
                capture_output=True,
                text=True,
                check=True,
                cwd=root,
            )
            .stdout.strip()
            .split(maxsplit=3)
        )
        assert out == ["1", "16", "1", "[]"], out
