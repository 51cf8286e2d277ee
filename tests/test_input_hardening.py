"""Issue 7: every way in through files — nothing lost, nothing false, no traceback.

One test per defect a hostile tester found on the landed main, named after what it
protects, plus the bounded-value rules of the contract.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from feed_examples import entered, example, jsonl, registered, write

from timeline import ingest as ingest_module
from timeline.cli import main
from timeline.contract import parse_event
from timeline.errors import ContractError
from timeline.ingest import ingest_file, ingest_stream, ingest_text, read_csv
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
CSV_HEADER = "event_id,student_id,type,occurred_on,note"


def events_of(location: str, student: str = "S1") -> list[str]:
    with TimelineStore.open(location) as store:
        return [f.event_id for f in store.facts(student)]


def feed(count: int) -> str:
    return jsonl(*(entered(f"e{i}", student=f"S{i % 7}") for i in range(count)))


def stored_count(location: str) -> int:
    with TimelineStore.open(location) as store:
        return sum(len(store.facts(f"S{i}")) for i in range(7))


# -- non-seekable input ----------------------------------------------------------------------
@pytest.mark.parametrize("argument", ["-", "/dev/stdin"])
def test_cli_atomic_ingest_from_a_real_pipe_stores_every_event(tmp_path, argument):
    db = str(tmp_path / "t.db")
    result = subprocess.run(
        [TIMELINE, "--db", db, "ingest", argument],
        input=feed(300).encode(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"accepted": 300, "duplicates": 0, "rejected": []}
    assert stored_count(db) == 300


def test_cli_ingest_from_process_substitution_stores_every_event(tmp_path):
    source = write(tmp_path / "feed.jsonl", feed(50))
    db = str(tmp_path / "t.db")
    result = subprocess.run(
        ["bash", "-c", f'"{TIMELINE}" --db "{db}" ingest <(cat "{source}")'],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["accepted"] == 50
    assert stored_count(db) == 50


def test_cli_csv_from_stdin_with_format_and_a_bad_row_stores_nothing(tmp_path):
    db = str(tmp_path / "t.db")
    text = f"{CSV_HEADER}\ne1,S1,departed,2024-01-01,\ne2,S1,departed,2024-13-01,\n"
    result = subprocess.run(
        [TIMELINE, "--db", db, "ingest", "-", "--format", "csv"],
        input=text.encode(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 1
    assert [r["line"] for r in json.loads(result.stdout)["rejected"]] == [3]
    assert events_of(db) == []


def test_ingest_stream_reads_a_pipe_once_and_stores_everything(store):
    read_fd, write_fd = os.pipe()
    data = feed(120).encode()

    def produce() -> None:
        with os.fdopen(write_fd, "wb") as sink:
            sink.write(data)

    writer = threading.Thread(target=produce)
    writer.start()
    counted: list[int] = []
    with os.fdopen(read_fd, "rb") as stream:
        assert not stream.seekable()
        report = ingest_stream(store, stream, on_bytes=counted.append)
    writer.join()
    assert report.as_json() == {"accepted": 120, "duplicates": 0, "rejected": []}
    assert sum(len(store.facts(f"S{i}")) for i in range(7)) == 120
    # read once by the check pass (no copy of the pipe), reported again by the write pass
    assert sum(counted) == 2 * len(data)


# -- malformed input is a rejection, never a traceback -----------------------------------------
def test_a_json_line_nested_1000_deep_is_a_rejection_and_partial_goes_on(store):
    text = jsonl(entered("e1"), "[" * 1000 + "]" * 1000, registered("e2"))
    report = ingest_text(store, text, partial=True)
    assert report.accepted == 2
    assert [r.position for r in report.rejected] == [2]
    assert "nested" in report.rejected[0].error


def test_duplicate_json_keys_are_a_rejection(store):
    line = '{"event_id":"e1","student_id":"S1","student_id":"S2","type":"departed",' + (
        '"occurred_on":"2024-01-01"}'
    )
    report = ingest_text(store, line + "\n")
    assert [r.position for r in report.rejected] == [1]
    assert "duplicate key 'student_id'" in report.rejected[0].error
    assert store.facts("S1") == [] and store.facts("S2") == []


def test_a_line_longer_than_the_limit_is_rejected_without_being_read_whole(
    store, tmp_path, monkeypatch
):
    monkeypatch.setattr(ingest_module, "MAX_LINE_BYTES", 4096)
    huge = json.dumps(entered("big", note="x" * 20_000))
    path = write(tmp_path / "feed.jsonl", jsonl(entered("e1"), huge, registered("e2")))
    report = ingest_file(store, path, partial=True)
    assert report.accepted == 2
    assert [r.position for r in report.rejected] == [2]
    assert "longer than 4096 bytes" in report.rejected[0].error


def test_a_csv_cell_over_the_csv_field_limit_is_a_rejection(store):
    text = f"{CSV_HEADER}\ne1,S1,departed,2024-01-01,{'n' * 140_000}\ne2,S1,departed,2024-01-02,\n"
    report = ingest_text(store, text, fmt="csv", partial=True)
    assert report.accepted == 1
    assert [r.position for r in report.rejected] == [2]
    quoted = f'{CSV_HEADER}\ne1,S1,departed,2024-01-01,"{"n" * 140_000}"\n'
    report = ingest_text(store, quoted, fmt="csv", partial=True)
    assert [r.position for r in report.rejected] == [2]


def test_a_quoted_cell_growing_past_the_record_limit_is_a_rejection(store):
    long_lines = "\n".join("word " * 20 for _ in range(2000))
    text = f'{CSV_HEADER}\ne1,S1,departed,2024-01-01,"{long_lines}"\ne2,S1,departed,2024-01-02,\n'
    report = ingest_text(store, text, fmt="csv", partial=True)
    assert report.rejected[0].position == 2
    assert "unterminated quoted cell" in report.rejected[0].error
    # reading resumed at line 3: the note's lines are rejected one by one, e2 is stored
    assert store.facts("S1")[-1].event_id == "e2"


@pytest.mark.parametrize("amount", ["²", "١٢", "１２", "+5", "5 5", "5x", "0x10", "1e3"])
def test_csv_amounts_are_ascii_digits_only(store, amount):
    text = f"event_id,student_id,type,occurred_on,amount_ntd\ne1,S1,fine_paid,2024-01-01,{amount}\n"
    report = ingest_text(store, text, fmt="csv")
    assert [r.position for r in report.rejected] == [2]
    assert report.rejected[0].error.startswith("amount_ntd:")
    assert store.facts("S1") == []


def test_csv_amount_with_surrounding_spaces_is_an_integer(store):
    text = "event_id,student_id,type,occurred_on,amount_ntd\ne1,S1,fine_paid,2024-01-01, 500 \n"
    assert ingest_text(store, text, fmt="csv").accepted == 1
    assert store.facts("S1")[0].get("amount_ntd") == 500


def test_deeply_nested_csv_fields_is_a_rejection(store):
    cell = '"' + "[" * 500 + "]" * 500 + '"'
    text = (
        "event_id,student_id,type,occurred_on,fields\n"
        f"e1,S1,details_updated,2024-01-01,{cell}\n"
        'e2,S1,details_updated,2024-01-02,"[""address""]"\n'
        'e3,S1,details_updated,2024-01-03,"[""address"",]"\n'
    )
    report = ingest_text(store, text, fmt="csv", partial=True)
    assert report.accepted == 1
    assert [r.position for r in report.rejected] == [2, 4]
    assert all(r.error.startswith("fields:") for r in report.rejected)


def test_nul_in_an_id_is_a_rejection_on_every_backend_and_partial_reaches_the_end(store):
    text = jsonl(entered("e\u00001"), entered("e2", student="S\u00001"), registered("e3"))
    report = ingest_text(store, text, partial=True)
    assert report.accepted == 1
    assert [(r.position, r.error.split(":")[0]) for r in report.rejected] == [
        (1, "event_id"),
        (2, "student_id"),
    ]
    assert [f.event_id for f in store.facts("S1")] == ["e3"]


# -- CSV quoting ------------------------------------------------------------------------------
def test_an_unterminated_quote_is_rejected_and_the_following_rows_are_read(store):
    text = (
        f"{CSV_HEADER}\n"
        'e1,S1,departed,2024-01-01,"oops\n'
        "e2,S1,departed,2024-01-02,fine\n"
        "e3,S1,departed,2024-01-03,\n"
    )
    report = ingest_text(store, text, fmt="csv", partial=True)
    assert report.accepted == 2
    assert [r.position for r in report.rejected] == [2]
    assert "unterminated quoted cell" in report.rejected[0].error
    assert [f.event_id for f in store.facts("S1")] == ["e2", "e3"]
    assert store.facts("S1")[0].note == "fine"


def test_an_unterminated_quote_makes_an_atomic_csv_store_nothing(store):
    text = f'{CSV_HEADER}\ne1,S1,departed,2024-01-01,\ne2,S1,departed,2024-01-02,"oops\nmore\n'
    report = ingest_text(store, text, fmt="csv")
    assert report.accepted == 0
    assert report.rejected[0].position == 3
    assert "the input ends inside it" in report.rejected[0].error
    assert store.facts("S1") == []


def test_text_after_a_closing_quote_is_malformed_quoting(store):
    text = f'{CSV_HEADER}\ne1,S1,departed,2024-01-01,"a"b\ne2,S1,departed,2024-01-02,\n'
    report = ingest_text(store, text, fmt="csv", partial=True)
    assert [r.position for r in report.rejected] == [2]
    assert "malformed CSV quoting" in report.rejected[0].error
    assert [f.event_id for f in store.facts("S1")] == ["e2"]


def test_legitimate_multiline_quoted_cells_keep_working_with_crlf(store):
    text = (
        f"{CSV_HEADER}\r\n"
        'e1,S1,departed,2024-01-01,"first line\r\nsecond, with comma\r\n""quoted"""\r\n'
        "e2,S1,departed,2024-01-02,\r\n"
    )
    report = ingest_text(store, text, fmt="csv")
    assert report.as_json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert store.facts("S1")[0].note == 'first line\nsecond, with comma\n"quoted"'


def test_duplicate_csv_headers_reject_every_row(store):
    text = "event_id,student_id,type,occurred_on,student_id\ne1,S1,departed,2024-01-01,S2\n\n"
    text += "e2,S1,departed,2024-01-02,S1\n"
    report = ingest_text(store, text, fmt="csv", partial=True)
    assert report.accepted == 0
    assert [r.position for r in report.rejected] == [2, 4]
    assert all("names column 'student_id' twice" in r.error for r in report.rejected)


def test_a_csv_with_carriage_returns_alone_for_line_ends_is_rejected_not_read_as_empty(store):
    """Old Mac exports end lines with CR alone: one physical line, the header followed by
    every row. It was read as a header with no rows: 0 accepted, 0 rejected, exit 0."""
    text = "event_id,student_id,type,occurred_on,visa\re1,S1,entered,2024-01-01,resident\r"
    report = ingest_text(store, text, fmt="csv", partial=True)
    assert report.accepted == 0
    [rejection] = report.rejected
    assert rejection.position == 1
    assert "header" in rejection.error and "carriage return (CR)" in rejection.error


def test_an_unreadable_csv_header_is_rejected_at_its_line_and_every_row_after(store):
    text = 'event_id,"student_id,type,occurred_on\ne1,S1,departed,2024-01-01\n'
    report = ingest_text(store, text, fmt="csv", partial=True)
    assert report.accepted == 0 and [r.position for r in report.rejected] == [1, 2]
    assert all("header on line 1 cannot be read" in r.error for r in report.rejected)


# -- encodings --------------------------------------------------------------------------------
BIG5_ADDRESS = "臺北市大安區羅斯福路四段1號"


def big5_csv(tmp_path: Path) -> Path:
    path = tmp_path / "registrar.csv"
    path.write_bytes(
        "event_id,student_id,type,occurred_on,address\n".encode("cp950")
        + b"a1,S1,address_changed,2024-04-01,"
        + BIG5_ADDRESS.encode("cp950")
        + b"\n"
        + b"a2,S1,address_changed,2024-04-02,"
        + "地址".encode("cp950")
        + b"\n"
    )
    return path


@pytest.mark.parametrize("encoding", ["cp950", "big5"])
def test_a_big5_csv_is_read_with_its_encoding(store, tmp_path, encoding):
    report = ingest_file(store, big5_csv(tmp_path), encoding=encoding)
    assert report.as_json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert [f.get("address") for f in store.facts("S1")] == [BIG5_ADDRESS, "地址"]


def test_a_big5_csv_read_as_utf8_is_rejected_naming_line_and_encoding(store, tmp_path):
    report = ingest_file(store, big5_csv(tmp_path), partial=True)
    assert report.accepted == 0
    assert [r.position for r in report.rejected] == [2, 3]
    assert all("cannot be decoded as UTF-8" in r.error for r in report.rejected)


def test_bytes_that_are_not_cp950_are_rejected_naming_the_encoding(store, tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_bytes(jsonl(entered("e1")).encode() + b'{"bad": "\x80\xff"}\n')
    report = ingest_file(store, path, encoding="cp950", partial=True)
    assert report.accepted == 1
    assert [r.position for r in report.rejected] == [2]
    assert "cannot be decoded as cp950 (byte" in report.rejected[0].error


def test_cli_encoding_option_reads_big5(tmp_path):
    db = str(tmp_path / "t.db")
    result = CliRunner().invoke(
        main, ["--db", db, "ingest", str(big5_csv(tmp_path)), "--encoding", "cp950"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] == 2


def test_a_utf8_bom_before_a_csv_header_is_accepted(store):
    data = b"\xef\xbb\xbf" + f"{CSV_HEADER}\ne1,S1,departed,2024-01-01,\n".encode()
    report = ingest_stream(store, io.BytesIO(data), fmt="csv")
    assert report.accepted == 1


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be"])
def test_a_utf16_feed_is_named_as_such_on_every_line(store, fmt, codec):
    """Excel's 'Unicode text' is UTF-16: line 1 was 'cannot be decoded as UTF-8', every
    other line 'invalid JSON: Expecting value' (its NUL bytes), naming nothing to do."""
    text = jsonl(entered("e1"), registered("e2"))
    if fmt == "csv":
        text = f"{CSV_HEADER}\ne1,S1,departed,2024-01-01,\n"
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = b"\xfe\xff" + data
    report = ingest_stream(store, io.BytesIO(data), fmt=fmt, partial=True)
    assert report.accepted == 0
    assert report.rejected
    for rejection in report.rejected:
        assert "the input is UTF-16" in rejection.error, rejection.error
        assert "save it as UTF-8" in rejection.error


# -- bounded, clean values --------------------------------------------------------------------
CONTROLS = [
    "\x00",
    "\x1b",
    "\x7f",
    "\r",
    "\n",
    "\x85",
    "\x9b",
    "\u200b",
    "\u200f",
    "\u202e",
    "\u2066",
    "\u2069",
    "\u2028",
    "\ufeff",
]


def rejected(raw: dict) -> list[str]:
    with pytest.raises(ContractError) as info:
        parse_event(raw)
    return info.value.messages


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize(
    ("type_", "field"),
    [
        ("departed", "event_id"),
        ("departed", "student_id"),
        ("departed", "source"),
        ("retracted", "retracts"),
        ("registered", "semester"),
        ("address_changed", "address"),
        ("passport_replaced", "passport_number"),
    ],
)
def test_control_and_format_characters_are_rejected_in_ids_and_strings(type_, field, char):
    messages = rejected(example(type_, **{field: f"ab{char}cd"}))
    assert messages == [
        f"{field}: must not contain control or format characters (U+{ord(char):04X} at character 3)"
    ]


def test_a_lone_surrogate_is_rejected_without_being_echoed():
    messages = rejected(example("departed", event_id="ab\ud800"))
    assert len(messages) == 1 and messages[0].startswith("event_id:")
    assert "\ud800" not in messages[0]


@pytest.mark.parametrize("field", ["note", "reason"])
def test_free_text_keeps_tab_and_lf_and_stores_crlf_as_lf(field):
    event = parse_event(example("retracted", **{field: "one\ttwo\r\nthree\rfour"}))
    assert getattr(event, field) == "one\ttwo\nthree\nfour"


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\u202e", "\u200b", "\x85"])
def test_free_text_still_rejects_other_controls(char):
    messages = rejected(example("retracted", note=f"x{char}x", reason=f"y{char}y"))
    assert [m.split(":")[0] for m in messages] == ["note", "reason"]


@pytest.mark.parametrize(
    ("type_", "field", "day"),
    [
        ("arc_issued", "valid_until", "9999-12-31"),
        ("arc_issued", "valid_until", "2101-01-01"),
        ("departed", "occurred_on", "0001-01-01"),
        ("departed", "occurred_on", "1949-12-31"),
        ("entered", "stay_until", "9999-12-31"),
        ("arc_revoked", "leave_by", "9999-12-31"),
    ],
)
def test_dates_outside_the_documented_range_are_rejected(type_, field, day):
    messages = rejected(example(type_, **{field: day}))
    assert messages == [f"{field}: must lie between 1950-01-01 and 2100-12-31 (got {day})"]


def test_the_ends_of_the_documented_range_are_accepted():
    event = parse_event(example("arc_issued", occurred_on="1950-01-01", valid_until="2100-12-31"))
    assert (event.occurred_on.isoformat(), event.valid_until.isoformat()) == (  # type: ignore[attr-defined]
        "1950-01-01",
        "2100-12-31",
    )


def test_unicode_digits_in_a_date_are_rejected():
    messages = rejected(example("departed", occurred_on="２０２４-01-01"))
    assert messages[0].startswith("occurred_on: must be a date written YYYY-MM-DD")


# -- rejection messages never echo personal data -----------------------------------------------
SECRET = "SECRET-A1234567-台北"
PERSONAL_CASES = [
    ("address_changed", "address", SECRET * 40),  # too long
    ("address_changed", "address", SECRET + "\x1b"),  # control character
    ("address_changed", "address", [SECRET]),  # wrong type
    ("passport_replaced", "passport_number", SECRET * 3),
    ("passport_replaced", "passport_number", 12345678901),
    ("arc_issued", "arc_number", SECRET * 3),
    ("departed", "note", SECRET * 200),
    ("departed", "note", {"text": SECRET}),
    ("retracted", "reason", SECRET * 40),
]


@pytest.mark.parametrize(("type_", "field", "value"), PERSONAL_CASES)
def test_rejections_name_the_field_but_never_echo_personal_data(type_, field, value):
    messages = rejected(example(type_, **{field: value}))
    assert messages[0].startswith(f"{field}:")
    text = "; ".join(messages)
    assert "SECRET" not in text and "A1234567" not in text and "12345678901" not in text


def test_a_conflict_or_bad_retraction_does_not_echo_the_personal_content(store):
    first = example("address_changed", event_id="a1", address="Old Street 1")
    ingest_text(store, jsonl(first))
    again = dict(first, address=SECRET)
    report = ingest_text(store, jsonl(again))
    assert report.rejected and SECRET not in report.rejected[0].error


def test_echoed_values_are_short_and_escaped():
    messages = rejected(example("departed", type="\x1b[31m\u202e" + "x" * 500))
    assert "\x1b" not in messages[0] and "\u202e" not in messages[0]
    assert "\\x1b" in messages[0]
    assert len(messages[0]) < 400
    messages = rejected({**example("departed"), "\x1b]0;pwned\x07": 1})
    assert "\x1b" not in messages[0] and "\x07" not in messages[0]


def test_many_mistakes_are_capped_in_one_message():
    raw = {**example("departed"), **{f"extra{i}": i for i in range(50)}}
    messages = rejected(raw)
    assert len(messages) == 11
    assert messages[-1] == "and 40 more problems"


def test_cli_rejection_output_carries_no_raw_control_characters(tmp_path):
    db = str(tmp_path / "t.db")
    line = json.dumps(
        {**entered("e\u202e1"), "\x1b[2J": 1, "student_id": "S\x9b1"}, ensure_ascii=False
    )
    path = tmp_path / "feed.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    result = subprocess.run(
        [TIMELINE, "--db", db, "ingest", str(path)], capture_output=True, check=False
    )
    assert result.returncode == 1
    out = result.stdout.decode()
    assert not any(ch in out for ch in ("\x1b", "\u202e", "\x9b"))
    assert len(json.loads(out)["rejected"][0]["error"]) < 600


def test_csv_reader_resumes_after_a_row_of_its_own_inside_an_open_quote():
    text = f'{CSV_HEADER}\ne1,S1,departed,2024-01-01,"a\ne2,S1,departed,2024-01-02,b"\n'
    records = list(read_csv(io.BytesIO(text.encode())))
    assert [(r.position, r.error is None) for r in records] == [(2, False), (3, True)]
    assert records[1].payload["note"] == 'b"'  # a quote inside an unquoted cell is literal


def test_cli_shows_progress_on_a_terminal_while_reading_a_pipe(tmp_path):
    import pty

    db = str(tmp_path / "t.db")
    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [TIMELINE, "--db", db, "ingest", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    stdout, _ = process.communicate(feed(200).encode(), timeout=60)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.returncode == 0
    assert json.loads(stdout)["accepted"] == 200
    assert b"checking" in shown  # the progress line was drawn on the terminal
    assert stored_count(db) == 200


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_line_of_invisible_characters_is_rejected_not_skipped_as_blank(store, fmt):
    header = f"{CSV_HEADER}\n" if fmt == "csv" else ""
    report = ingest_text(store, header + "\x1c\u3000\n \t\n", fmt=fmt, partial=True)
    first = 2 if fmt == "csv" else 1
    assert [r.position for r in report.rejected] == [first]
