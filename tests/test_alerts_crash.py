"""Exactly-once alerts under SIGKILL at any moment (issue 7, item 3).

`timeline alerts --emit` runs in a real subprocess over a store with a few thousand alerts
and is killed with SIGKILL, at crash points inside the delivery loop
(`TIMELINE_CRASH_AT=POINT:N`, see scheduler/crashpoints.py) and after random delays; it is
re-run until it completes. Then every key is in the JSONL file exactly once, every line is
whole JSON, and the outbox says every row is sent. The kill plan comes from a seeded RNG;
the seed (`TIMELINE_CRASH_SEED` to choose another) is printed and named on failure.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from feed_examples import ev
from test_sinks import StoringHandler, http_server, smtp_server

from projections.readmodel import default_read_db
from scheduler.emit import summary_sentence
from scheduler.outbox import Outbox, OutboxDB, outbox_location
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
DAY = date(2024, 6, 1)
SEED = int(os.environ.get("TIMELINE_CRASH_SEED", "7"))
POINTS = ("outbox_marked_sending", "jsonl_mid_write", "outbox_delivered", "outbox_marked_sent")
PER_STUDENT_TRIO = 5  # alerts on DAY per cohort() unit


def holding_arc(student: str, valid_until: str) -> list[dict[str, Any]]:
    return [
        ev(student, "entered", "entered", "2023-08-20", visa="resident"),
        ev(student, "applied", "arc_applied", "2023-08-25", application="initial"),
        ev(student, "issued", "arc_issued", "2023-09-01", valid_until=valid_until),
    ]


def cohort(n: int) -> list[dict[str, Any]]:
    """5 alerts per unit on DAY: B's extend_arc overdue, overstay_started, its fine accrued and
    pay_fine_and_reapply's window_open (overstay day 1); C's extend_arc due_in_30."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        events += holding_arc(f"B{i}", "2024-05-31")
        events += holding_arc(f"C{i}", "2024-07-01")
    return events


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("TIMELINE_CRASH_AT", None)
    env.pop("TIMELINE_ALERT_BATCH", None)
    env.update(extra)
    return env


def emit_args(location: str, sink: str) -> list[str]:
    # --wait: PostgreSQL frees a killed session's advisory lock once it sees the socket close.
    return [
        *(TIMELINE, "alerts", "--on", DAY.isoformat(), "--emit", "--sink", sink),
        *("--db", location, "--wait", "10"),
    ]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, cwd=cwd, env=clean_env(**env)
    )


def outbox_rows(location: str, cwd: Path) -> list[dict[str, Any]]:
    # Where the CLI puts it: beside SQLite events, or in the PostgreSQL schema itself.
    db = OutboxDB(outbox_location(location, default_read_db(location)))
    try:
        return Outbox(db).rows()
    finally:
        db.close()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n") if path.exists() else []


def whole_keys(path: Path) -> list[str]:
    """Keys of the complete lines (a torn last line, if any, is not one)."""
    return [json.loads(line)["key"] for line in lines_of(path)[:-1]]


def check_no_duplicates(path: Path, note: str) -> None:
    keys = whole_keys(path)
    assert len(keys) == len(set(keys)), f"duplicate keys in the file ({note})"


@pytest.fixture
def crash_store(location: str, tmp_path: Path) -> Iterator[str]:
    """A store (SQLite or PostgreSQL) with 1,500 alerts on DAY."""
    with TimelineStore.open(location) as store:
        report = ingest_objects(store, cohort(300))
        assert report.ok, report.as_json()
    yield location


def test_emit_killed_at_random_moments_delivers_every_key_exactly_once(crash_store, tmp_path):
    rng = random.Random(SEED)
    # Batches of 100: 15 of them, more than the four crash points can use up.
    plan: list[str] = [f"{point}:{rng.randint(1, 3)}" for point in rng.sample(POINTS, 4)]
    plan.insert(rng.randint(0, len(plan)), "delay")
    note = f"seed={SEED} plan={plan} (TIMELINE_CRASH_SEED={SEED} to replay)"
    print(note)
    out = tmp_path / "out" / "alerts.jsonl"
    args = emit_args(crash_store, f"jsonl:{out}")
    batches = {"TIMELINE_ALERT_BATCH": "100"}
    killed = 0
    for step in plan:
        if step == "delay":
            process = subprocess.Popen(
                args,
                cwd=tmp_path,
                env=clean_env(**batches),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, 1.5))
            process.send_signal(signal.SIGKILL)
            code = process.wait(timeout=60)
        else:
            code = run(args, tmp_path, TIMELINE_CRASH_AT=step, **batches).returncode
        assert code in (-signal.SIGKILL, 0), f"{step}: exit {code}; {note}"
        killed += code == -signal.SIGKILL
        check_no_duplicates(out, f"after {step}; {note}")
    assert killed >= 4, f"only {killed} runs were killed; {note}"

    final = run(args, tmp_path, **batches)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert final.stderr.strip() == summary_sentence(summary, DAY.isoformat())

    raw = out.read_bytes()
    assert raw.endswith(b"\n"), note
    keys = [json.loads(line)["key"] for line in raw.decode("utf-8").splitlines()]
    rows = outbox_rows(crash_store, tmp_path)
    assert len(rows) == 300 * PER_STUDENT_TRIO
    assert {row["state"] for row in rows} == {"sent"}, note
    assert len(keys) == len(set(keys)), f"a key was delivered twice; {note}"
    assert sorted(keys) == sorted(row["key"] for row in rows), note


_DAILY = """
import json, sys
from scheduler.jobs import daily_alerts
print(json.dumps(daily_alerts(sys.argv[1], None, sys.argv[2], wait=5, today=sys.argv[3])))
"""


def test_daily_job_killed_mid_delivery_completes_on_the_next_run(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, cohort(300)).ok
    db = sqlite_store.config.location
    out = tmp_path / "daily.jsonl"
    args = [sys.executable, "-c", _DAILY, db, f"jsonl:{out}", DAY.isoformat()]
    crashed = run(args, tmp_path, TIMELINE_CRASH_AT="outbox_delivered:2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert len(whole_keys(out)) == 1000  # two batches written; the second not yet marked sent
    assert {r["state"] for r in outbox_rows(db, tmp_path)} == {"sent", "sending", "pending"}

    done = run(args, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["new"], summary["left_unsent"], summary["interrupted"]) == (0, 1000, 500)
    assert (summary["sent"], summary["already_in_sink"]) == (1000, 500)
    keys = whole_keys(out)
    assert len(keys) == len(set(keys)) == 1500
    assert {r["state"] for r in outbox_rows(db, tmp_path)} == {"sent"}


# -- the stderr sentence agrees with the JSON summary -----------------------------------


def numbers_said(sentence: str) -> dict[str, int]:
    """Read the counts back out of the stderr sentence."""
    patterns = {
        "sent": r"Emitted (\d+) alert",
        "left_unsent": r"(\d+) left unsent by an earlier run",
        "already_in_sink": r"(\d+) already in the sink",
        "failed": r"; (\d+) failed[.,]",
        "withdrawn": r"(\d+) unsent alert\(s\) withdrawn",
        "already_emitted": r"(\d+) alert\(s\) were already emitted",
    }
    said = {}
    for name, pattern in patterns.items():
        match = re.search(pattern, sentence)
        if match:
            said[name] = int(match.group(1))
    return said


def assert_agrees(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    summary = json.loads(result.stdout)
    said = numbers_said(result.stderr)
    for name, value in said.items():
        assert summary[name] == value, (name, result.stderr, summary)
    for name in ("left_unsent", "already_in_sink", "withdrawn"):
        if summary[name]:
            assert name in said, (name, result.stderr, summary)
    if summary["sent"] or summary["failed"] or summary["withdrawn"] or summary["retrying"]:
        assert {"sent", "failed"} <= said.keys(), result.stderr
        assert "Nothing new" not in result.stderr
    else:
        assert said.keys() == {"already_emitted"}, result.stderr
    return summary


def test_stderr_sentence_agrees_with_the_summary_in_every_case(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, cohort(200)).ok  # 1,000 alerts: two batches
    db = sqlite_store.config.location
    out = tmp_path / "alerts.jsonl"
    args = emit_args(db, f"jsonl:{out}")

    crashed = run(args, tmp_path, TIMELINE_CRASH_AT="outbox_delivered:2")
    assert crashed.returncode == -signal.SIGKILL
    sent_before = sum(r["state"] == "sent" for r in outbox_rows(db, tmp_path))
    assert sent_before == 500

    # The re-run after a crash: 500 were emitted, 500 wait, and the file holds them already.
    after_crash = run(args, tmp_path)
    assert after_crash.returncode == 0, after_crash.stderr
    summary = assert_agrees(after_crash)
    assert summary["already_emitted"] == sent_before
    assert (summary["new"], summary["left_unsent"], summary["sent"]) == (0, 500, 500)
    assert summary["already_in_sink"] == 500
    assert after_crash.stderr.startswith("Emitted 500 alert(s) for 2024-06-01")

    nothing = run(args, tmp_path)
    summary = assert_agrees(nothing)
    assert (summary["new"], summary["sent"], summary["already_emitted"]) == (0, 0, 1000)
    assert nothing.stderr.startswith("Nothing new to emit for 2024-06-01: 1000 alert(s)")

    fresh = run(emit_args(db, f"jsonl:{tmp_path / 'b.jsonl'}"), tmp_path)
    summary = assert_agrees(fresh)  # a new file, but the outbox already sent them all
    assert summary["sent"] == 0 and not (tmp_path / "b.jsonl").exists()

    # B's pay_fine_and_reapply is due in 14 days on 2024-06-15 (overstay day 29 = 06-29).
    next_day = [*args[:3], "2024-06-15", *args[4:]]
    (tmp_path / "a-directory").mkdir()
    failing = run([*next_day[:6], f"jsonl:{tmp_path / 'a-directory'}", *next_day[7:]], tmp_path)
    assert failing.returncode == 1
    summary = assert_agrees(failing)
    assert summary["failed"] == summary["new"] > 0 and summary["sent"] == 0
    dead = summary["failed"]

    assert run([TIMELINE, "alerts", "--retry-failed", "--db", db], tmp_path).returncode == 0
    retried = run(next_day, tmp_path)
    assert retried.returncode == 0, retried.stderr
    summary = assert_agrees(retried)
    assert (summary["new"], summary["left_unsent"], summary["sent"]) == (0, dead, dead)
    assert retried.stderr.startswith(
        f"Emitted {dead} alert(s) for 2024-06-15 ({dead} left unsent by an earlier run); 0 failed."
    )


def test_first_run_sentence_counts_what_it_sent(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, cohort(2)).ok
    result = run(emit_args(sqlite_store.config.location, f"jsonl:{tmp_path / 'a'}"), tmp_path)
    summary = assert_agrees(result)
    assert (summary["found"], summary["new"], summary["sent"], summary["left_unsent"]) == (
        10,
        10,
        10,
        0,
    )
    assert result.stderr.strip() == "Emitted 10 alert(s) for 2024-06-01; 0 failed."


# -- webhook and e-mail keep their idempotency handles across a crash --------------------


def test_webhook_retry_after_a_crash_repeats_the_idempotency_key(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, cohort(1)).ok
    db = sqlite_store.config.location
    with http_server(lambda _n: 200) as server:
        args = emit_args(db, f"webhook:{server.url}")
        crashed = run(args, tmp_path, TIMELINE_CRASH_AT="outbox_delivered:3")
        assert crashed.returncode == -signal.SIGKILL
        done = run(args, tmp_path)
        assert done.returncode == 0, done.stderr
        summary = assert_agrees(done)
        posted = [
            (r.headers["idempotency-key"], json.loads(r.body)["key"]) for r in server.requests
        ]
    assert all(header == key for header, key in posted)
    keys = [key for _header, key in posted]
    # The third POST got through before the kill: it is the one (and only one) repeated.
    assert len(keys) == 6 and len(set(keys)) == 5
    assert keys[2] == keys[3]
    assert (summary["interrupted"], summary["sent"]) == (1, 3)
    assert {r["state"] for r in outbox_rows(db, tmp_path)} == {"sent"}


def test_smtp_retry_after_a_crash_repeats_the_message_id(sqlite_store, tmp_path):
    # Each student's alerts go to the student's own address (see tests/test_alert_mail.py).
    contacts = [
        ev(student, "contact", "contact_updated", "2023-01-01", email=f"{student}@uni.edu.tw")
        for student in sorted({e["student_id"] for e in cohort(1)})
    ]
    assert ingest_objects(sqlite_store, cohort(1) + contacts).ok
    db = sqlite_store.config.location
    handler = StoringHandler()
    with smtp_server(handler) as port:
        spec = f"smtp://127.0.0.1:{port}?from=alerts@example.edu.tw&to=office@example.edu.tw"
        args = emit_args(db, spec)
        assert run(args, tmp_path, TIMELINE_CRASH_AT="outbox_delivered:2").returncode == (
            -signal.SIGKILL
        )
        done = run(args, tmp_path)
        assert done.returncode == 0, done.stderr
        mails = handler.parsed()
    # The staff digest (to=) comes last, once.
    assert [m["X-Alert-Digest"] is not None for m in mails] == [False] * 6 + [True]
    pairs = [(m["X-Alert-Key"], m["Message-ID"]) for m in mails[:6]]
    assert len(pairs) == 6 and len(set(pairs)) == 5
    assert pairs[1] == pairs[2]  # the repeat carries the same Message-ID
    assert len({message_id for _key, message_id in pairs}) == 5
    assert {r["state"] for r in outbox_rows(db, tmp_path)} == {"sent"}


@pytest.mark.parametrize("value", ["0", "10001"])
def test_bad_batch_size_is_a_usage_error_before_anything_is_sent(sqlite_store, tmp_path, value):
    assert ingest_objects(sqlite_store, cohort(1)).ok
    out = tmp_path / "a.jsonl"
    result = run(
        emit_args(sqlite_store.config.location, f"jsonl:{out}"),
        tmp_path,
        TIMELINE_ALERT_BATCH=value,
    )
    assert result.returncode == 2, result.stderr
    assert "TIMELINE_ALERT_BATCH: must be a whole number from 1 to 10000" in result.stderr
    assert not out.exists()
