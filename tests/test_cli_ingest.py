"""`timeline ingest` (SPEC §4): the JSON summary and the exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from feed_examples import entered, jsonl, registered, write

from timeline.cli import main
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
CSV_TEXT = (
    "event_id,student_id,type,occurred_on,visa,semester,fields\n"
    "e1,S1,entered,2024-03-16,resident,,\n"
    "\n"
    "e2,S1,registered,2024-03-20,,112-2,\n"
    "e3,S1,details_updated,2024-04-02,,,address;passport\n"
)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def summary(result) -> dict:
    return json.loads(result.stdout)


@pytest.fixture
def good_file(tmp_path):
    return write(tmp_path / "good.jsonl", jsonl(entered("e1"), None, registered("e2")))


@pytest.fixture
def bad_file(tmp_path):
    return write(
        tmp_path / "bad.jsonl",
        jsonl(entered("e1"), registered("e2", day="2024-02-30"), None, "oops"),
    )


def facts_of(location, student="S1"):
    with TimelineStore.open(location) as store:
        return [f.event_id for f in store.facts(student)]


def test_ingest_prints_the_summary_and_exits_0(location, good_file):
    result = invoke("--db", location, "ingest", str(good_file))
    assert result.exit_code == 0, result.output
    assert summary(result) == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert facts_of(location) == ["e1", "e2"]


def test_ingest_again_reports_duplicates_and_exits_0(location, good_file):
    invoke("--db", location, "ingest", str(good_file))
    result = invoke("--db", location, "ingest", str(good_file))
    assert result.exit_code == 0
    assert summary(result) == {"accepted": 0, "duplicates": 2, "rejected": []}


def test_db_option_after_the_command_too(location, good_file):
    result = invoke("ingest", str(good_file), "--db", location)
    assert result.exit_code == 0, result.output
    assert summary(result)["accepted"] == 2


def test_db_from_the_environment(tmp_path, good_file, monkeypatch):
    db = str(tmp_path / "env.db")
    monkeypatch.setenv("TIMELINE_DB", db)
    result = invoke("ingest", str(good_file))
    assert result.exit_code == 0, result.output
    assert facts_of(db) == ["e1", "e2"]


def test_a_rejected_line_exits_1_and_stores_nothing(location, bad_file):
    result = invoke("--db", location, "ingest", str(bad_file))
    assert result.exit_code == 1
    body = summary(result)
    assert body["accepted"] == 0
    assert body["duplicates"] == 0
    assert [r["line"] for r in body["rejected"]] == [2, 4]
    assert body["rejected"][0]["error"].startswith("occurred_on:")
    assert "JSON" in body["rejected"][1]["error"]
    assert facts_of(location) == []


def test_partial_stores_the_good_lines_and_still_exits_1(location, bad_file):
    result = invoke("--db", location, "ingest", str(bad_file), "--partial")
    assert result.exit_code == 1
    body = summary(result)
    assert body["accepted"] == 1
    assert [r["line"] for r in body["rejected"]] == [2, 4]
    assert facts_of(location) == ["e1"]


def test_csv_by_extension_and_by_format_option(location, tmp_path):
    by_name = invoke("--db", location, "ingest", str(write(tmp_path / "feed.csv", CSV_TEXT)))
    assert by_name.exit_code == 0, by_name.output
    assert summary(by_name) == {"accepted": 3, "duplicates": 0, "rejected": []}
    declared = invoke(
        "--db", location, "ingest", str(write(tmp_path / "feed.txt", CSV_TEXT)), "--format", "csv"
    )
    assert declared.exit_code == 0
    assert summary(declared) == {"accepted": 0, "duplicates": 3, "rejected": []}
    assert facts_of(location) == ["e1", "e2", "e3"]


def test_csv_bad_row_exits_1_with_its_line(location, tmp_path):
    text = CSV_TEXT + "e4,S1,departed,2024-3-1,,,\n"
    result = invoke("--db", location, "ingest", str(write(tmp_path / "feed.csv", text)))
    assert result.exit_code == 1
    assert [r["line"] for r in summary(result)["rejected"]] == [6]
    assert facts_of(location) == []
    partial = invoke(
        "--db", location, "ingest", str(write(tmp_path / "feed.csv", text)), "--partial"
    )
    assert partial.exit_code == 1
    assert summary(partial)["accepted"] == 3


def test_jsonl_read_as_csv_is_rejected_not_crashed(location, good_file):
    result = invoke("--db", location, "ingest", str(good_file), "--format", "csv")
    assert result.exit_code == 1
    assert summary(result)["accepted"] == 0


def test_small_batch_size_option(location, tmp_path):
    events = [registered(f"e{i}", student=f"S{i % 4}") for i in range(11)]
    path = write(tmp_path / "feed.jsonl", jsonl(*events))
    result = invoke("--db", location, "ingest", str(path), "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert summary(result)["accepted"] == 11
    again = invoke("--db", location, "ingest", str(path), "--batch-size", "3")
    assert summary(again) == {"accepted": 0, "duplicates": 11, "rejected": []}


# -- usage errors: exit 2 --------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "/no/such/file.jsonl"],
        ["ingest"],
        ["ingest", "{good}", "--format", "xml"],
        ["ingest", "{good}", "--batch-size", "0"],
        ["ingest", "{good}", "--frobnicate"],
        ["ingest", "{tmp}"],  # a directory
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(tmp_path, good_file, args):
    db = str(tmp_path / "usage.db")
    args = [a.format(good=good_file, tmp=tmp_path) for a in args]
    result = invoke("--db", db, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_a_database_in_a_missing_folder_is_a_usage_error(tmp_path, good_file):
    result = invoke("--db", str(tmp_path / "nope" / "x.db"), "ingest", str(good_file))
    assert result.exit_code == 2
    assert "nope" in result.stderr


# -- the installed command, as a feed's cron job runs it ---------------------------------------
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")}
    return subprocess.run(
        [TIMELINE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60, check=False
    )


def test_installed_command_exit_codes(tmp_path, good_file, bad_file):
    db = str(tmp_path / "proc.db")
    ok = run_cli("--db", db, "ingest", str(good_file), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"accepted": 2, "duplicates": 0, "rejected": []}

    rejected = run_cli("--db", db, "ingest", str(bad_file), cwd=tmp_path)
    assert rejected.returncode == 1, rejected.stderr
    assert [r["line"] for r in json.loads(rejected.stdout)["rejected"]] == [2, 4]

    missing = run_cli("--db", db, "ingest", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr

    bad_format = run_cli("--db", db, "ingest", str(good_file), "--format", "xml", cwd=tmp_path)
    assert bad_format.returncode == 2


def test_installed_command_default_database_is_in_the_working_directory(tmp_path, good_file):
    done = run_cli("ingest", str(good_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "timeline.db").exists()
    assert facts_of(str(tmp_path / "timeline.db")) == ["e1", "e2"]


def test_a_store_locked_past_the_busy_timeout_is_a_clear_error_not_a_traceback(tmp_path, good_file):
    """Another writer holds the SQLite file longer than the 30 s busy timeout."""
    import sqlite3

    db = str(tmp_path / "locked.db")
    assert run_cli("--db", db, "init", cwd=tmp_path).returncode == 0
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        locked = run_cli("--db", db, "ingest", str(good_file), cwd=tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Exit 1 would say "something was rejected"; the input was fine, the store was not.
    assert locked.returncode == 2, locked.stderr
    assert "Traceback" not in locked.stderr
    assert "database is locked" in locked.stderr and "again" in locked.stderr
    assert locked.stdout == ""
    again = run_cli("--db", db, "ingest", str(good_file), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["accepted"] == 2


# -- an output that cannot be written ------------------------------------------------------------
OUTPUT_COMMANDS = [
    ["ingest", "feed.jsonl"],
    ["show", "S1", "--as-of", "2024-05-01"],
    ["show", "S1", "--as-of", "2024-05-01", "--json"],
    ["history", "S1"],
    ["tasks", "--as-of", "2024-05-01"],
    ["tasks", "--as-of", "2024-05-01", "--json"],
    ["export"],
]


def run_with_stdout(args: list[str], redirect: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed command with its standard output closed (`>&-`) or sent elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")}
    line = " ".join(f"'{a}'" for a in [TIMELINE, "--db", "t.db", *args])
    return subprocess.run(
        ["sh", "-c", f"exec {line} {redirect}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("args", OUTPUT_COMMANDS)
@pytest.mark.parametrize(
    ("redirect", "reason"),
    [(">&-", "standard output is closed"), (">/dev/full", "No space left on device")],
)
def test_an_answer_that_cannot_be_written_is_an_error_not_silence_or_a_traceback(
    tmp_path, args, redirect, reason
):
    """A closed stdout made `show` print nothing and exit 0; /dev/full gave tracebacks."""
    write(tmp_path / "feed.jsonl", jsonl(entered("e1", "S1", "2024-03-16")))
    stored = run_cli("--db", str(tmp_path / "t.db"), "ingest", "feed.jsonl", cwd=tmp_path)
    assert stored.returncode == 0, stored.stderr
    done = run_with_stdout(args, redirect, tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    assert f"error: cannot write the answer: {reason}" in done.stderr


def test_a_command_that_writes_no_answer_works_with_stdout_closed(tmp_path):
    write(tmp_path / "feed.jsonl", jsonl(entered("e1", "S1", "2024-03-16")))
    stored = run_cli("--db", str(tmp_path / "t.db"), "ingest", "feed.jsonl", cwd=tmp_path)
    assert stored.returncode == 0, stored.stderr
    done = run_with_stdout(["export", "-o", "backup.jsonl"], ">&-", tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "backup.jsonl").read_text().count("\n") == 3
    assert not (tmp_path / "t.db").read_bytes().startswith(b"{")  # fd 1 never reused


@pytest.mark.parametrize("command", ["ingest", "import"])
def test_reading_a_closed_standard_input_is_a_usage_error(tmp_path, command):
    """`timeline ingest - <&-` (a cron job, a daemon without stdin): click's RuntimeError
    traceback, after the new store had been created."""
    done = subprocess.run(
        ["sh", "-c", f"exec '{TIMELINE}' --db t.db {command} - <&-"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "standard input is closed" in done.stderr
    assert not (tmp_path / "t.db").exists()


@pytest.mark.parametrize(
    "args",
    [["show", "S1", "--as-of", "2024-05-01"], ["history", "S1"], ["history", "S1", "--json"]],
)
def test_an_ascii_locale_gets_utf8_answers_not_a_traceback(tmp_path, args):
    """Python's own C-locale coercion off (or a Latin-1 locale): rich raised UnicodeEncodeError."""
    note = "學生 入境 — テスト"
    write(tmp_path / "feed.jsonl", jsonl(entered("e1", "S1", "2024-03-16", note=note)))
    assert run_cli("--db", "t.db", "ingest", "feed.jsonl", cwd=tmp_path).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMELINE_", "LC_", "LANG"))}
    env |= {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run(
        [TIMELINE, "--db", "t.db", *args], capture_output=True, cwd=tmp_path, env=env, timeout=60
    )
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    assert done.returncode == 0
    text = done.stdout.decode("utf-8")  # what a program reading a pipe expects
    assert ("學生" in text) if "history" in args else ("S1" in text)


# -- Ctrl-C / SIGTERM in the middle of an ingest ------------------------------------------------
def feed_lines(first: int, count: int) -> bytes:
    """`count` entries of students S<first>…, one JSON line each."""
    return "".join(
        json.dumps(entered(f"e{n}", student=f"S{n}")) + "\n" for n in range(first, first + count)
    ).encode()


def stored_count(db: str) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM feed_keys").fetchone()[0]


def process_fds(pid: int) -> list[Path]:
    """The files a process holds open (Linux /proc)."""
    return list(Path(f"/proc/{pid}/fd").iterdir())


def wait_for(condition, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_partial_ingest_stops_between_batches_and_says_what_it_stored(
    tmp_path, signum, code
):
    """Ctrl-C (or a cron job's timeout) while a feed streams in: click printed 'Aborted!'
    and exited 1 ('something was rejected'), saying nothing of the events it had stored."""
    import signal

    db = str(tmp_path / "int.db")
    assert run_cli("--db", db, "init", cwd=tmp_path).returncode == 0
    process = subprocess.Popen(
        [TIMELINE, "--db", db, "ingest", "-", "--partial", "--batch-size", "10"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        process.stdin.write(feed_lines(0, 30))
        process.stdin.flush()
        process.stdin.write(feed_lines(30, 5))  # half a batch, then the producer waits
        process.stdin.flush()
        wait_for(lambda: stored_count(db) == 30)
        process.send_signal(getattr(signal, signum))
        # The pipe stays open: the ingest waiting for the rest of its batch stops at once.
        process.wait(timeout=30)
        out, err = process.stdout.read(), process.stderr.read()
    finally:
        process.kill()
    assert process.returncode == code, err
    assert b"Traceback" not in err and b"Aborted" not in err
    assert json.loads(out) == {
        "accepted": 30,
        "duplicates": 0,
        "rejected": [],
        "interrupted": True,
    }
    assert b"interrupted: 30 new event(s) stored" in err
    assert stored_count(db) == 30


def test_an_atomic_ingest_interrupted_in_its_check_pass_stores_nothing(tmp_path):
    import signal

    db = str(tmp_path / "int.db")
    assert run_cli("--db", db, "init", cwd=tmp_path).returncode == 0
    process = subprocess.Popen(
        [TIMELINE, "--db", db, "ingest", "-", "--batch-size", "10"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        process.stdin.write(feed_lines(0, 25))
        process.stdin.flush()
        # Once the store is open the signals are handled (they are, before it opens).
        wait_for(lambda: any(fd.resolve() == Path(db) for fd in process_fds(process.pid)))
        process.send_signal(signal.SIGINT)
        process.stdin.write(feed_lines(25, 10))
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert json.loads(out)["accepted"] == 0
    assert json.loads(out)["interrupted"] is True
    assert stored_count(db) == 0
