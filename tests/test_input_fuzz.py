"""Property-based fuzzing of every way in through files (issue 7).

The readers (JSONL, CSV) get arbitrary bytes and text built from the characters that
break parsers; the contract gets arbitrary JSON values and mutated valid events. What
must hold: nothing but a rejection comes out, `--partial` reaches the end of the input
and accounts for every record, and an atomic batch with any rejection stores nothing.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from feed_examples import VALID, entered, example
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from timeline.contract import UNECHOED_FIELDS, parse_event
from timeline.errors import ContractError
from timeline.ingest import ingest_stream, read_csv, read_jsonl
from timeline.store import TimelineStore

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_STORE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CSV_HEADER = "event_id,student_id,type,occurred_on,note,amount_ntd,fields"
STUDENTS = ("S1", "S2", "S3")
# The last record of an input: no fuzzed text can produce this key (no '#' is generated).
FINAL = entered("final#1", student="S1")
# Rejected (no visa column) but always read on its own; its literal quote before a comma
# would silently close a quoted cell left open above it, if that cell were let run on.
FINAL_CSV = 'final#1,S1,entered,2024-03-16,disk 5",,'


@pytest.fixture(scope="module")
def shared_store() -> Iterator[TimelineStore]:
    """One SQLite store for a whole property (examples only ever add to it)."""
    with (
        tempfile.TemporaryDirectory() as folder,
        TimelineStore.open(str(Path(folder) / "fuzz.db")) as store,
    ):
        yield store


def non_blank_lines(data: bytes) -> list[int]:
    """The 1-based numbers of the physical lines holding more than JSON whitespace."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    return [n for n, line in enumerate(lines, start=1) if line.strip(b" \t\r\n")]


# -- strategies -------------------------------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Characters that break parsers and terminals, mixed with plain ones.
nasty_chars = st.sampled_from(
    [
        *",;\"'[]{}:\\ \t\r\n0123456789-aZ",
        *("\x00", "\x1b", "\x7f", "\x85", "\u202e", "\u200b", "\ufeff", "\ud800"),
        *("²", "１", "臺", "é"),
    ]
)
nasty_text = st.text(nasty_chars, max_size=60) | st.text(max_size=30)


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one or two fields replaced, added or removed."""
    raw = example(draw(st.sampled_from(sorted(VALID))))
    raw["student_id"] = draw(st.sampled_from(STUDENTS))
    raw["event_id"] = draw(st.sampled_from(["e1", "e2", "e3", "e4"]))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        field = draw(st.sampled_from([*raw.keys(), "note", "extra", "address"]))
        action = draw(st.sampled_from(["replace", "text", "delete"]))
        if action == "delete":
            raw.pop(field, None)
        elif action == "text":
            raw[field] = draw(nasty_text)
        else:
            raw[field] = draw(json_values)
    return raw


def feed_lines(draw: st.DrawFn) -> list[bytes]:
    """JSONL lines: mutated events, raw JSON values and garbage bytes."""
    kinds = st.one_of(
        mutated_events().map(lambda e: json.dumps(e).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=40),
        nasty_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.just(b""),
    )
    return draw(st.lists(kinds, max_size=8))


# -- the readers --------------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=300))
def test_jsonl_reader_reads_every_non_blank_line_of_arbitrary_bytes_once(data):
    records = list(read_jsonl(io.BytesIO(data)))
    assert [r.position for r in records] == non_blank_lines(data)
    assert all(r.error is None or r.payload is None for r in records)


@FUZZ
@given(body=st.text(nasty_chars, max_size=200), encoding=st.sampled_from(["utf-8", "cp950"]))
def test_csv_reader_never_raises_and_reads_to_the_end_of_arbitrary_text(body, encoding):
    data = f"{CSV_HEADER}\n{body}\n{FINAL_CSV}\n".encode("utf-8", "surrogatepass")
    stream = io.BytesIO(data)
    records = list(read_csv(stream, encoding=encoding))
    positions = [r.position for r in records]
    assert positions == sorted(set(positions))
    assert set(positions) <= set(non_blank_lines(data))
    assert stream.tell() == len(data)
    # the last row is always read on its own, whatever quoting came before it
    assert records[-1].position == data.count(b"\n")
    assert records[-1].payload is not None
    assert records[-1].payload["event_id"] == "final#1"
    assert records[-1].payload["note"] == 'disk 5"'


@FUZZ
@given(lines=st.lists(st.binary(max_size=50), max_size=6))
def test_csv_reader_never_raises_on_arbitrary_bytes(lines):
    data = b"\n".join([CSV_HEADER.encode(), *lines])
    stream = io.BytesIO(data)
    records = list(read_csv(stream))
    assert stream.tell() == len(data)
    assert all((r.error is None) == isinstance(r.payload, dict) for r in records)


# -- the contract -------------------------------------------------------------------------------
def assert_clean_messages(messages: list[str]) -> None:
    assert messages and len(messages) <= 11
    for message in messages:
        assert len(message) <= 400
        assert message.isprintable(), message


@FUZZ
@given(raw=json_values)
def test_contract_turns_any_json_value_into_an_event_or_a_rejection(raw):
    try:
        event = parse_event(raw)
    except ContractError as exc:
        assert_clean_messages(exc.messages)
    else:
        assert event.digest()


@settings(max_examples=300, deadline=None)
@given(raw=mutated_events())
def test_contract_turns_any_mutated_event_into_an_event_or_a_clean_rejection(raw):
    try:
        event = parse_event(raw)
    except ContractError as exc:
        assert_clean_messages(exc.messages)
    else:
        assert event.digest()  # canonical JSON encodes: no lone surrogates got through
        for value in event.model_dump(mode="json").values():
            if isinstance(value, str):
                assert "\x00" not in value and "\x1b" not in value and "\u202e" not in value


@settings(max_examples=150, deadline=None)
@given(
    type_=st.sampled_from(sorted(VALID)),
    field=st.sampled_from(sorted(UNECHOED_FIELDS - {"email", "line_user_id", "workplace"})),
    value=st.one_of(
        nasty_text.map(lambda t: "Zq" + t),
        st.lists(nasty_text.map(lambda t: "Zq" + t), min_size=1, max_size=2),
        st.dictionaries(st.just("k"), nasty_text.map(lambda t: "Zq" + t), min_size=1),
    ),
)
def test_contract_never_echoes_personal_or_free_text_values(type_, field, value):
    assume((type_, field) != ("studies_ceased", "reason"))  # an enumeration there: echoed
    try:
        parse_event(example(type_, **{field: value}))
    except ContractError as exc:
        assert "Zq" not in str(exc)


# -- whole ingests ------------------------------------------------------------------------------
@FUZZ_STORE
@given(data=st.data())
def test_partial_jsonl_ingest_accounts_for_every_record_and_reaches_the_end(shared_store, data):
    lines = feed_lines(data.draw)
    blob = b"\n".join([*lines, json.dumps(FINAL).encode()]) + b"\n"
    report = ingest_stream(shared_store, io.BytesIO(blob), partial=True)
    reported = report.accepted + report.duplicates + len(report.rejected)
    assert reported == len(non_blank_lines(blob))
    assert all(r.position in non_blank_lines(blob) for r in report.rejected)
    assert ("S1", "final#1") in {(f.student_id, f.event_id) for f in shared_store.stream("S1")}


@FUZZ_STORE
@given(data=st.data(), fmt=st.sampled_from(["jsonl", "csv"]))
def test_atomic_ingest_with_any_rejection_stores_nothing(shared_store, data, fmt):
    if fmt == "jsonl":
        blob = b"\n".join(feed_lines(data.draw)) + b"\n"
    else:
        body = data.draw(st.text(nasty_chars, max_size=150))
        good = data.draw(st.lists(st.sampled_from(["e1", "e2", "e3"]), max_size=3))
        rows = [f"{e},S2,departed,2024-01-0{i + 1},,," for i, e in enumerate(good)]
        blob = "\n".join([CSV_HEADER, *rows, body]).encode("utf-8", "surrogatepass")
    before = shared_store.max_position()  # the position of the last stored event
    report = ingest_stream(shared_store, io.BytesIO(blob), fmt=fmt)
    after = shared_store.max_position()
    if report.rejected:
        assert report.accepted == 0
        assert after == before
    else:
        assert after >= before + report.accepted
