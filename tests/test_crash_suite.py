"""Crash suite: SIGKILL at random moments during ingest and the read-model follower.

Each trial starts the real CLI in a subprocess, kills it with SIGKILL after a random
delay (drawn from a seeded generator, so a failure can be replayed: the seed is in every
assertion message, and `TIMELINE_CRASH_SEED` fixes it), then runs the same command again
to completion. Afterwards nothing is lost and nothing is doubled:
- ingest: every event is stored exactly once, and what the killed run left is a prefix of
  the input in whole batches (atomic mode never stores part of a batch, and never anything
  when it was killed in its check pass);
- follower: the read models equal a clean rebuild from the log.
On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import _postgres_location

from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
STUDENTS = 300
BATCH = 150
SEED = int(os.environ.get("TIMELINE_CRASH_SEED", random.randrange(1 << 30)))
TRIALS = 3


def feed(path: Path) -> list[tuple[str, str]]:
    """A feed of several events per student; returns the keys in file order."""
    keys: list[tuple[str, str]] = []
    with path.open("w") as out:
        for n in range(STUDENTS):
            sid = f"C{n:05d}"
            day = 1 + n % 28
            events = [
                {"type": "entered", "visa": "resident", "occurred_on": f"2024-03-{day:02d}"},
                {"type": "registered", "semester": "112-2", "occurred_on": f"2024-03-{day:02d}"},
                {"type": "arc_applied", "application": "initial", "occurred_on": "2024-04-20"},
                {"type": "arc_issued", "valid_until": "2025-03-31", "occurred_on": "2024-05-02"},
                {"type": "address_changed", "address": f"Dorm {n}", "occurred_on": "2024-06-01"},
            ]
            for i, event in enumerate(events):
                event |= {"event_id": f"{sid}-{i}", "source": "registrar", "student_id": sid}
                out.write(json.dumps(event) + "\n")
                keys.append(("registrar", event["event_id"]))
            if n % 7 == 0:  # some retractions, which must follow their targets
                out.write(
                    json.dumps(
                        {
                            "event_id": f"{sid}-x",
                            "source": "registrar",
                            "student_id": sid,
                            "type": "retracted",
                            "occurred_on": "2024-06-01",
                            "retracts": f"{sid}-4",
                            "reason": "wrong student",
                        }
                    )
                    + "\n"
                )
                keys.append(("registrar", f"{sid}-x"))
    return keys


def stored_keys(location: str) -> list[tuple[str, str]]:
    """Every stored fact's key, in the order the store recorded them."""
    with TimelineStore.open(location) as store:
        keys = []
        position = 0
        while True:
            notifications = store.notifications(position, 1000)
            if not notifications:
                return keys
            for notification in notifications:
                event = store.decode(notification)
                if hasattr(event, "event_id"):
                    keys.append((event.source, event.event_id))
            position = notifications[-1].id


def run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TIMELINE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def kill_after(args: list[str], delay: float) -> int | None:
    """Start the CLI, SIGKILL it after `delay` seconds; its exit code if it ended first."""
    process = subprocess.Popen(
        [TIMELINE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None


def timed(args: list[str]) -> float:
    started = time.monotonic()
    result = run(args)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


@pytest.fixture
def fresh(location: str, tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Another empty store on the same backend (a new file, or a new schema dropped after)."""
    made: list[Iterator[str]] = []

    def another(n: int) -> str:
        if not location.startswith("postgresql://"):
            return str(tmp_path / f"trial{n}.db")
        making = _postgres_location()
        made.append(making)
        return next(making)

    yield another
    for making in made:
        making.close()  # drops the schema


def window(location: str, args: list[str]) -> tuple[float, float]:
    """From when the CLI has started and opened the store to when the uncut run ends."""
    assert run(["--db", location, "init"]).returncode == 0  # a read needs a created store
    startup = timed(["--db", location, "history", "nobody"])
    return startup, max(timed(args), startup * 1.5)


@pytest.mark.parametrize("mode", ["atomic", "partial"])
def test_ingest_killed_at_random_moments_loses_and_doubles_nothing(fresh, tmp_path, mode):
    path = tmp_path / "feed.jsonl"
    keys = feed(path)
    extra = ["--batch-size", str(BATCH)] + (["--partial"] if mode == "partial" else [])
    # The uncut run's duration spreads the kill moments over both passes.
    probe = fresh(99)
    start, end = window(probe, ["--db", probe, "ingest", str(path), *extra])
    rng = random.Random(SEED)
    for trial in range(TRIALS):
        where = fresh(trial)
        delay = rng.uniform(start, end)
        context = f"seed {SEED}, trial {trial}, kill after {delay:.2f}s of {end:.2f}s"
        kill_after(["--db", where, "ingest", str(path), *extra], delay)
        left = stored_keys(where)
        # Whatever the kill left is a prefix of the input, in whole batches.
        assert left == keys[: len(left)], context
        assert len(left) % BATCH == 0 or len(left) == len(keys), context
        again = run(["--db", where, "ingest", str(path), *extra])
        assert again.returncode == 0, f"{context}: {again.stderr}"
        summary = json.loads(again.stdout)
        assert summary["accepted"] + summary["duplicates"] == len(keys), context
        assert summary["duplicates"] == len(left), context
        assert stored_keys(where) == keys, context


def read_model_rows(path: str) -> dict[str, list[tuple]]:
    """Every read-model table's rows, sorted (tracking and layout tables aside).

    A `position` column says which batch applied the row (a rebuild applies everything
    at its snapshot's position): bookkeeping, not derivation, so it is left aside.
    """
    with sqlite3.connect(path) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'rm\\_%' "
                "ESCAPE '\\' AND name NOT IN ('rm_tracking', 'rm_meta')"
            )
        ]
        rows = {}
        for table in tables:
            columns = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
            kept = ", ".join(c for c in columns if c != "position")
            rows[table] = sorted(conn.execute(f"SELECT {kept} FROM {table}").fetchall(), key=repr)
        return rows


def test_follower_killed_at_random_moments_ends_equal_to_a_clean_rebuild(location, tmp_path):
    path = tmp_path / "feed.jsonl"
    feed(path)
    result = run(["--db", location, "ingest", str(path)])
    assert result.returncode == 0, result.stderr
    clean = str(tmp_path / "clean-read.db")
    start, end = window(location, ["--db", location, "rebuild", "--read-db", clean])
    expected = read_model_rows(clean)
    assert expected["rm_tasks"], "the scenario needs derived rows"
    rng = random.Random(SEED)
    for trial in range(TRIALS):
        read_db = str(tmp_path / f"read{trial}.db")
        delay = rng.uniform(start, end)
        context = f"seed {SEED}, trial {trial}, kill after {delay:.2f}s of {end:.2f}s"
        # `tasks` follows the log before it answers: killed mid-way, it resumes next time.
        kill_after(["--db", location, "tasks", "--read-db", read_db, "--json"], delay)
        again = run(["--db", location, "tasks", "--read-db", read_db, "--json"])
        assert again.returncode == 0, f"{context}: {again.stderr}"
        assert read_model_rows(read_db) == expected, context


def tracked(path: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT position FROM rm_tracking").fetchone()[0]


def test_rebuild_killed_at_random_moments_leaves_the_old_tables_whole(location, tmp_path):
    """A killed rebuild leaves the tables it was replacing, or the new ones: never a mix."""
    path = tmp_path / "feed.jsonl"
    feed(path)
    lines = path.read_text().splitlines(keepends=True)
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_text("".join(lines[: len(lines) // 2]))
    rest.write_text("".join(lines[len(lines) // 2 :]))
    assert run(["--db", location, "ingest", str(first)]).returncode == 0
    old_db = str(tmp_path / "old-read.db")
    assert run(["--db", location, "rebuild", "--read-db", old_db]).returncode == 0
    old, old_position = read_model_rows(old_db), tracked(old_db)
    assert run(["--db", location, "ingest", str(rest)]).returncode == 0
    clean = str(tmp_path / "clean-read.db")
    start, end = window(location, ["--db", location, "rebuild", "--read-db", clean])
    expected, position = read_model_rows(clean), tracked(clean)
    assert expected != old
    rng = random.Random(SEED)
    outcomes = set()
    for trial in range(TRIALS):
        read_db = str(tmp_path / f"read{trial}.db")
        with open(old_db, "rb") as src, open(read_db, "wb") as dst:
            dst.write(src.read())
        delay = rng.uniform(start, end)
        context = f"seed {SEED}, trial {trial}, kill after {delay:.2f}s of {end:.2f}s"
        ended = kill_after(["--db", location, "rebuild", "--read-db", read_db], delay)
        left = read_model_rows(read_db)
        if left == old:
            assert tracked(read_db) == old_position, context
            outcomes.add("old")
        else:
            assert left == expected, context
            assert tracked(read_db) == position, context
            outcomes.add("new" if ended is None else "finished")
        # Whatever was left, the follower brings it to the clean rebuild's state.
        again = run(["--db", location, "tasks", "--read-db", read_db, "--json"])
        assert again.returncode == 0, f"{context}: {again.stderr}"
        assert read_model_rows(read_db) == expected, context
    assert outcomes, "no trial ran"
