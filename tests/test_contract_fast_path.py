"""The one-pass parse of a feed line and the printable fast path of the contract (issue 9).

`parse_event_text` (pydantic's own JSON parser, no per-field control-character check)
and `parse_event` on printable values must decide exactly as the full path does: strict
JSON (`loads_strict`), then every validator of the contract, with the same event or the
same rejection text, whatever the line holds.
"""

from __future__ import annotations

import json
import random
from datetime import date
from typing import Any

import test_input_fuzz as fuzz
from feed_examples import VALID, example
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from timeline.contract import (
    _ADAPTER,
    _PRINTABLE,
    describe_errors,
    parse_event,
    parse_event_text,
)
from timeline.ingest import RawRecord, json_record, record_event

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def full_path(record: RawRecord) -> Any:
    """What the contract decided before the fast paths: strict JSON, then every validator."""
    if record.text is not None:
        record = json_record(record.position, record.text)
    if record.error is not None:
        return record.error
    raw = record.payload
    if not isinstance(raw, dict):
        return f"an event must be a JSON object (got {type(raw).__name__})"
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        return "; ".join(describe_errors(exc, raw))


def same(got: Any, want: Any) -> bool:
    """The same rejection text, or the same event (class, values and the fields given)."""
    if isinstance(want, str) or isinstance(got, str):
        return got == want
    return type(got) is type(want) and got == want and got.model_fields_set == want.model_fields_set


def as_line(raw: dict[str, Any], rng: random.Random) -> str:
    """`raw` written as a feed might: ASCII-escaped or not, a key repeated, colons escaped."""
    text = json.dumps(raw, ensure_ascii=rng.random() < 0.5)
    roll = rng.random()
    if roll < 0.2 and raw:
        name = rng.choice(sorted(raw))  # a repeated key: the full path refuses it
        again = json.dumps({name: rng.choice([raw[name], "x:y", None])})[1:-1]
        text = text[:-1] + ", " + again + "}"
    elif roll < 0.35:
        text = text.replace(":", "\\u003a").replace('"\\u003a ', '": ', len(raw))
    elif roll < 0.45:
        text = text.replace(", ", ",\t").replace(": ", " :")
    return text


@PROPERTY
@given(raw=fuzz.mutated_events(), seed=st.integers(0, 2**32 - 1))
def test_a_line_parsed_in_one_pass_is_decided_as_the_full_path_decides(raw, seed):
    text = as_line(raw, random.Random(seed))
    record = RawRecord(7, text=text)
    assert same(record_event(record), full_path(record))


@PROPERTY
@given(raw=fuzz.mutated_events())
def test_an_event_given_as_values_is_decided_as_the_full_path_decides(raw):
    record = RawRecord(3, payload=raw)
    assert same(record_event(record), full_path(record))


class Text(str):
    """A text subclass: pydantic takes it as text, so only the full path may judge it."""


@given(
    type_=st.sampled_from(sorted(VALID)),
    value=st.sampled_from([b"A\x00", bytearray(b"x\x1b"), Text("A\x00B"), Text("fine")]),
)
@settings(max_examples=60, deadline=None)
def test_values_that_pydantic_turns_into_text_take_the_full_path(type_, value):
    raw = example(type_, student_id=value)
    assert same(record_event(RawRecord(1, payload=raw)), full_path(RawRecord(1, payload=raw)))


def test_a_repeated_key_is_refused_even_when_both_values_are_valid():
    line = json.dumps(example("registered"))[:-1] + ', "semester": "113-2"}'
    assert parse_event_text(line) is None
    assert (
        record_event(RawRecord(1, text=line))
        == "invalid JSON: duplicate key 'semester' in one object"
    )


def test_a_colon_written_as_an_escape_still_counts_as_part_of_the_value():
    raw = example("address_changed", address="Rm 3:2, No. 1, Roosevelt Rd")
    line = json.dumps(raw).replace("3:2", "3\\u003a2")
    event = record_event(RawRecord(1, text=line))
    assert not isinstance(event, str) and event.address == "Rm 3:2, No. 1, Roosevelt Rd"


def test_a_control_character_is_found_on_the_full_path_with_its_position():
    line = json.dumps(example("registered", semester="113\\u200b-1")).replace("\\\\u", "\\u")
    assert parse_event_text(line) is None
    assert record_event(RawRecord(1, text=line)) == (
        "semester: must not contain control or format characters (U+200B at character 4)"
    )


def test_every_example_is_valid_on_both_fast_paths():
    for type_ in VALID:
        raw = example(type_)
        assert same(parse_event_text(json.dumps(raw)), parse_event(raw))
        assert same(parse_event(raw), full_path(RawRecord(1, payload=raw)))


def test_a_repeated_key_is_refused_even_when_an_escaped_colon_would_balance_the_count():
    # Two keys but one colon in values: the escape hides the value's colon from a count.
    line = json.dumps(example("registered"))[:-1] + ', "note": "a", "note": "\\u003a"}'
    assert parse_event_text(line) is None
    assert (
        record_event(RawRecord(1, text=line)) == "invalid JSON: duplicate key 'note' in one object"
    )


def test_the_printable_validator_really_leaves_out_the_control_character_check():
    # pydantic-core would silently reuse each model's full validator; then the fast
    # path would cost as much as the full one (and this would raise).
    raw = example("registered", semester="113\u200b-1")
    assert _PRINTABLE.validate_python(raw).semester == "113\u200b-1"


_DATE_FIELDS = [
    (type_, name)
    for type_, fields in sorted(VALID.items())
    for name in ("occurred_on", *fields)
    if name in ("occurred_on", "stay_until", "valid_until", "leave_by")
]
_DATE_LIKE = st.one_of(
    st.dates().map(date.isoformat),  # valid or out of the documented range
    st.from_regex(r"\A[0-9]{2,5}-[0-9]{1,3}-[0-9]{1,3}\Z"),  # a wrong length, a wrong day
    st.dates().map(lambda d: d.isoformat() + "T00:00:00"),
    st.dates().map(lambda d: f" {d.isoformat()}"),
    st.dates().map(lambda d: d.isoformat().replace("-", "")),
    st.text(st.characters(categories=("Nd",)), min_size=8, max_size=8).map(
        lambda t: f"{t[:4]}-{t[4:6]}-{t[6:]}"  # digits of other scripts
    ),
    st.integers(-(10**9), 10**9),
    st.none(),
)


@PROPERTY
@given(where=st.sampled_from(_DATE_FIELDS), value=_DATE_LIKE, seed=st.integers(0, 2**32 - 1))
def test_a_date_checked_by_pydantic_core_on_the_one_pass_is_decided_as_the_full_path_does(
    where, value, seed
):
    # `parse_event_text` checks dates without `_iso_date` (pydantic-core's own string
    # pattern, calendar and range): it must take exactly the dates the full path takes.
    type_, name = where
    raw = example(type_)
    for other in ("stay_until", "valid_until", "leave_by"):
        if other in raw:
            raw[other] = "2100-12-31"  # so that only `value` decides
    raw[name] = value
    record = RawRecord(5, text=as_line(raw, random.Random(seed)))
    assert same(record_event(record), full_path(record))
