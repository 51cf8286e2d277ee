"""One parser for days and record moments, shared by the CLI, the API and the contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeline.clock import EARLIEST_DAY, LATEST_DAY, parse_day, parse_known_at, shown


@pytest.mark.parametrize(
    "text",
    ["20240101", "2024-W01-1", "2024-1-01", "２０２４-01-01", "2024-01-01T00:00", "", "today"],
)
def test_parse_day_accepts_only_yyyy_mm_dd(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_day(text)


def test_parse_day_refuses_days_that_do_not_exist() -> None:
    with pytest.raises(ValueError, match="not a real calendar date"):
        parse_day("2023-02-29")


@pytest.mark.parametrize("text", ["0001-01-01", "1949-12-31", "2101-01-01", "9999-12-31"])
def test_parse_day_refuses_days_outside_the_supported_range(text: str) -> None:
    with pytest.raises(ValueError, match="outside the supported range"):
        parse_day(text)


def test_parse_day_accepts_the_range_bounds() -> None:
    assert parse_day(EARLIEST_DAY.isoformat()) == EARLIEST_DAY
    assert parse_day(f" {LATEST_DAY.isoformat()} ") == LATEST_DAY


def test_parse_known_at_day_is_the_end_of_that_day_in_taipei() -> None:
    assert parse_known_at("2024-03-01") == datetime(2024, 3, 1, 15, 59, 59, 999999, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T08:00:00+08:00", datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
        ("2024-03-01T00:00:00Z", datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
        ("2024-03-01 00:00", datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
    ],
)
def test_parse_known_at_reads_offsets_and_naive_as_utc(text: str, expected: datetime) -> None:
    assert parse_known_at(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+01:00",  # astimezone() would overflow
        "9999-12-31T23:59:59-05:00",
        "2024-01-01T00:00:00+25:00",
        "20240101T000000",
        "2024-01-01T00:00:00\x00",
    ],
)
def test_parse_known_at_raises_only_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_known_at(text)


@given(st.text(max_size=40))
def test_parsers_never_raise_anything_but_value_error(text: str) -> None:
    for parse in (parse_day, parse_known_at):
        try:
            result = parse(text)
        except ValueError:
            continue
        day = result.date() if isinstance(result, datetime) else result
        assert EARLIEST_DAY - timedelta(days=1) <= day <= LATEST_DAY + timedelta(days=1)


def test_shown_escapes_control_characters_and_clips() -> None:
    assert "\x1b" not in shown("\x1b[31mred")
    assert "\u202e" not in shown("abc\u202edef")
    assert len(shown("x" * 500)) < 50
