"""The outbox follows the rules (issue 7, item 4) and keeps its locks per schema.

Rows record the rule-book fingerprint they were computed under. When the settings change,
unsent rows are re-checked before delivery: those no longer falling on their day are
`withdrawn` (never sent, listed); sent rows are history and stay.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, _postgres_location
from test_outbox import holding_arc

from projections.readmodel import ReadModel
from projections.rules import RuleBook, rulebook_fingerprint, rulebook_from_env
from scheduler.alert import Alert, Message
from scheduler.alerts import alerts_on
from scheduler.emit import emit_day, recheck_unsent
from scheduler.outbox import (
    WITHDRAWN_REASON,
    EmitterBusy,
    EmitterLock,
    Outbox,
    OutboxDB,
    outbox_location,
)
from scheduler.sinks import JsonlSink
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

NOW = datetime(2024, 6, 1, tzinfo=UTC)
PLAIN = rulebook_from_env({})
ROLLOVER = rulebook_from_env({"TIMELINE_DEADLINE_ROLLOVER": "1"})
SUNDAY = date(2024, 6, 2)  # the day after D's due day 2024-06-01 (a Saturday)
OVERDUE = "D:apply_arc:D-e:overdue:2024-06-01"
FINE = "D:late_arc_application:D-e:accrued:2024-06-02"


def events() -> list[dict[str, Any]]:
    def ev(student: str, name: str, type_: str, on: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": f"{student}-{name}", "student_id": student, "type": type_,
                "occurred_on": on, **fields}  # fmt: skip

    return [
        # Due 2024-06-01, a Saturday: overdue on Sunday unless deadlines roll over.
        ev("D", "e", "entered", "2024-05-02", visa="resident"),
        # An ARC running out 2024-07-02: due_in_30 on 2024-06-02 under both settings.
        ev("C", "e", "entered", "2023-08-20", visa="resident"),
        ev("C", "a", "arc_applied", "2023-08-25", application="initial"),
        ev("C", "i", "arc_issued", "2023-09-01", valid_until="2024-07-02"),
    ]


def model_under(store: TimelineStore, rules: RuleBook, path: Path) -> ReadModel:
    model = ReadModel(path, rules)
    model.sync(store)
    return model


def keys_in(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["key"] for line in path.read_text("utf-8").splitlines()]


def test_settings_change_withdraws_unsent_alerts_that_are_no_longer_due(store, tmp_path):
    assert ingest_objects(store, events()).ok
    plain = model_under(store, PLAIN, tmp_path / "plain.db")
    rolled = model_under(store, ROLLOVER, tmp_path / "rolled.db")
    db = OutboxDB(outbox_location(store.config.location, str(tmp_path / "plain.db")))
    outbox = Outbox(db)
    out = tmp_path / "alerts.jsonl"
    try:
        # Saturday is emitted under the plain rules; Sunday's alerts are computed under them
        # too, but the run dies before delivering (enqueued only).
        emit_day(plain, outbox, JsonlSink(out), date(2024, 6, 1))
        sunday = [(SUNDAY, alert) for alert in alerts_on(plain, SUNDAY)]
        assert {alert.key for _day, alert in sunday} >= {OVERDUE, FINE}
        outbox.enqueue(sunday, now=NOW, fingerprint=rulebook_fingerprint(PLAIN))

        # The operator turns deadline roll-over on: D is not overdue, and owes no fine.
        report = emit_day(rolled, outbox, JsonlSink(out), SUNDAY)
        summary = report.as_json()
        assert summary["withdrawn"] == 2
        rows = {row["key"]: row for row in outbox.rows()}
        assert rows[OVERDUE]["state"] == rows[FINE]["state"] == "withdrawn"
        assert rows[OVERDUE]["last_error"] == WITHDRAWN_REASON
        assert rows["D:apply_arc:D-e:due_today:2024-06-01"]["state"] == "sent"  # history
        assert [row["key"] for row in outbox.rows("withdrawn")] == [OVERDUE, FINE]
        sent = keys_in(out)
        assert OVERDUE not in sent and FINE not in sent
        # What is due under the new rules on Sunday went out; C's reminder holds under both.
        assert "D:apply_arc:D-e:due_in_1:2024-06-03" in sent
        assert any(key.startswith("C:") and ":due_in_30:" in key for key in sent)
        assert {row["state"] for row in outbox.rows() if row["key"] not in (OVERDUE, FINE)} == {
            "sent"
        }

        # A second look under the same rules changes nothing.
        assert recheck_unsent(rolled, outbox, rulebook_fingerprint(ROLLOVER)) == 0

        # Back to the plain rules: the withdrawn alerts fall on Sunday again and are sent.
        back = emit_day(plain, outbox, JsonlSink(out), SUNDAY)
        assert (back.enqueued.new, back.delivered.sent, back.withdrawn) == (2, 2, 0)
        assert keys_in(out).count(OVERDUE) == keys_in(out).count(FINE) == 1
    finally:
        db.close()
        plain.close()
        rolled.close()


def test_unsent_row_still_due_takes_the_current_wording_and_fingerprint(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, events()).ok
    plain = model_under(sqlite_store, PLAIN, tmp_path / "plain.db")
    rolled = model_under(sqlite_store, ROLLOVER, tmp_path / "rolled.db")
    outbox = Outbox(OutboxDB(str(tmp_path / "outbox.db")))
    try:
        pairs = [(SUNDAY, a) for a in alerts_on(plain, SUNDAY) if a.key.startswith("C:")]
        assert len(pairs) == 1
        outbox.enqueue(pairs, now=NOW, fingerprint="0123456789abcdef")
        assert outbox.stale(rulebook_fingerprint(ROLLOVER)) == [(pairs[0][1].key, SUNDAY)]
        assert recheck_unsent(rolled, outbox, rulebook_fingerprint(ROLLOVER)) == 0
        assert outbox.stale(rulebook_fingerprint(ROLLOVER)) == []
        assert outbox.rows()[0]["state"] == "pending"
    finally:
        outbox.db.close()
        plain.close()
        rolled.close()


_OLD_SCHEMA = (
    "CREATE TABLE alert_outbox (key TEXT PRIMARY KEY, day TEXT NOT NULL, student_id TEXT "
    "NOT NULL, task TEXT NOT NULL, milestone TEXT NOT NULL, payload TEXT NOT NULL, state TEXT "
    "NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at TEXT NOT NULL, "
    "sent_at TEXT, sink TEXT)"
)


def test_outbox_from_before_fingerprints_is_migrated_and_its_rows_rechecked(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, events()).ok
    plain = model_under(sqlite_store, PLAIN, tmp_path / "plain.db")
    rolled = model_under(sqlite_store, ROLLOVER, tmp_path / "rolled.db")
    path = tmp_path / "old-outbox.db"
    overdue = next(a for a in alerts_on(plain, SUNDAY) if a.key == OVERDUE)
    with sqlite3.connect(path) as conn:
        conn.execute(_OLD_SCHEMA)
        conn.execute(
            "INSERT INTO alert_outbox (key, day, student_id, task, milestone, payload, state, "
            "created_at) VALUES (?, ?, 'D', 'apply_arc', 'overdue', ?, 'pending', ?)",
            [OVERDUE, SUNDAY.isoformat(), overdue.model_dump_json(), NOW.isoformat()],
        )
    outbox = Outbox(OutboxDB(str(path)))
    try:
        assert outbox.stale(rulebook_fingerprint(ROLLOVER)) == [(OVERDUE, SUNDAY)]
        report = emit_day(rolled, outbox, JsonlSink(tmp_path / "a.jsonl"), SUNDAY)
        assert report.withdrawn == 1
        assert outbox.rows("withdrawn")[0]["key"] == OVERDUE
        assert OVERDUE not in keys_in(tmp_path / "a.jsonl")
    finally:
        outbox.db.close()
        plain.close()
        rolled.close()


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set")
def test_emitter_locks_are_per_postgresql_schema() -> None:
    first_location = _postgres_location()
    second_location = _postgres_location()
    first = OutboxDB(next(first_location))
    second = OutboxDB(next(second_location))
    twin = OutboxDB(first.location)
    try:
        assert first.schema != second.schema
        with EmitterLock(first) as held:
            held.acquire()
            # Another store in another schema of the same database is not held back...
            with EmitterLock(second) as other:
                other.acquire()
            # ...while a second emitter on the same schema is.
            with EmitterLock(twin) as same, pytest.raises(EmitterBusy) as busy:
                same.acquire()
            assert first.schema in str(busy.value)
    finally:
        for db in (first, second, twin):
            db.close()
        for generator in (first_location, second_location):
            next(generator, None)


TIMELINE = str(Path(sys.executable).with_name("timeline"))


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")}
    return subprocess.run(
        [TIMELINE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**environment, **env},
    )


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set")
def test_cli_rollover_switched_on_withdraws_and_lists_stale_alerts(tmp_path):
    # On PostgreSQL the outbox lives with the events, so each setting can have its own
    # read models (--read-db) over one outbox.
    locations = _postgres_location()
    location = next(locations)
    try:
        with TimelineStore.open(location) as store:
            assert ingest_objects(store, events()).ok
        common = ("--on", SUNDAY.isoformat(), "--emit", "--db", location)
        (tmp_path / "a-directory").mkdir()
        failing = cli(
            "alerts", *common, "--sink", f"jsonl:{tmp_path / 'a-directory'}",
            "--read-db", str(tmp_path / "plain.db"), cwd=tmp_path,
        )  # fmt: skip
        assert failing.returncode == 1
        assert json.loads(failing.stdout)["failed"] == 3
        assert cli("alerts", "--retry-failed", "--db", location, cwd=tmp_path).returncode == 0

        out = tmp_path / "alerts.jsonl"
        rolled = cli(
            "alerts", *common, "--sink", f"jsonl:{out}", "--read-db", str(tmp_path / "rolled.db"),
            cwd=tmp_path, TIMELINE_DEADLINE_ROLLOVER="1",
        )  # fmt: skip
        assert rolled.returncode == 0, rolled.stderr
        summary = json.loads(rolled.stdout)
        # C's reminder (still due) waited; D's due_in_1 is new under roll-over.
        assert (summary["withdrawn"], summary["sent"], summary["left_unsent"]) == (2, 2, 1)
        assert "2 unsent alert(s) withdrawn" in rolled.stderr
        assert OVERDUE not in keys_in(out) and FINE not in keys_in(out)

        listed = cli("alerts", "--withdrawn", "--json", "--db", location, cwd=tmp_path)
        assert [row["key"] for row in json.loads(listed.stdout)] == [OVERDUE, FINE]
        text = cli("alerts", "--withdrawn", "--db", location, cwd=tmp_path).stdout
        assert f"2024-06-02 {OVERDUE}: {WITHDRAWN_REASON}" in text
    finally:
        next(locations, None)


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set")
def test_postgresql_outbox_from_before_fingerprints_gains_the_column() -> None:
    import psycopg

    locations = _postgres_location()
    location = next(locations)
    url, _, query = location.partition("?")
    schema = query.split("=", 1)[1]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute(_OLD_SCHEMA)
        db = OutboxDB(location)
        try:
            outbox = Outbox(db)
            outbox.enqueue([(SUNDAY, _alert(OVERDUE))], now=NOW, fingerprint="f00d")
            assert outbox.stale("f00d") == []
            assert outbox.stale("beef") == [(OVERDUE, SUNDAY)]
        finally:
            db.close()
        OutboxDB(location).close()  # opening again finds the column and leaves it be
    finally:
        next(locations, None)


def _alert(key: str) -> Alert:
    return Alert(
        key=key,
        student_id="D",
        task="apply_arc",
        milestone="overdue",
        due_on=date(2024, 6, 1),
        rule="R-ARC-LATE",
        message=Message(zh="逾期", en="overdue"),
    )


def test_emit_says_why_it_rebuilds_when_the_rules_changed(tmp_path):
    """A settings change makes the next `alerts --emit` rebuild: it says so, not silently."""
    db = str(tmp_path / "timeline.db")
    with TimelineStore.open(db) as store:
        assert ingest_objects(store, holding_arc("B", "2024-05-31")).ok
    args = [
        TIMELINE,
        "--db",
        db,
        "alerts",
        "--on",
        "2024-06-01",
        "--emit",
        "--sink",
        f"jsonl:{tmp_path / 'a.jsonl'}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")}
    first = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stderr
    assert "rebuilding" not in first.stderr
    changed = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=False,
        env=env | {"TIMELINE_DEADLINE_ROLLOVER": "1"},
    )
    assert changed.returncode == 0, changed.stderr
    assert "rules changed since the read models were built: rebuilding" in changed.stderr
