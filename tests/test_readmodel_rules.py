"""Read models always follow the rules in force (issue 7, item 4).

The tables record the fingerprint of the rule book (values, settings, the deriving code)
and of the calendar's holidays; opened under another one, they are rebuilt. The CLI reads
the settings once and every command (show, tasks, fines, alerts, rebuild) uses them.

The example: a resident-visa entry on 2024-03-14 gives apply_arc due 2024-04-13, a
Saturday. With TIMELINE_DEADLINE_ROLLOVER=1 (APA Art. 48(4)) it is due Monday 04-15.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from projections.dates import TaiwanCalendar
from projections.engine import view
from projections.readmodel import LAYOUT_CHANGED, RULES_CHANGED, ReadModel
from projections.rules import DEFAULT_RULES
from timeline.cli import main
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
ROLLOVER = DEFAULT_RULES.with_settings(deadline_rollover=True)
DAY = date(2024, 5, 1)
SATURDAY_DUE, MONDAY_DUE, TUESDAY_DUE = "2024-04-13", "2024-04-15", "2024-04-16"


def entries(count: int = 1) -> list[dict[str, Any]]:
    """`count` students entering on 2024-03-14 (apply_arc due on a Saturday)."""
    return [
        {
            "event_id": f"S{n}-in",
            "student_id": f"S{n}",
            "type": "entered",
            "occurred_on": "2024-03-14",
            "visa": "resident",
        }
        for n in range(count)
    ]


def apply_arc_due(model: ReadModel, student: str = "S0") -> str:
    """The due day of the student's apply_arc task as the read model answers it."""
    rows = [r for r in model.tasks_on(DAY) if r["student_id"] == student]
    assert [r["kind"] for r in rows] == ["apply_arc"]
    return rows[0]["due_on"]


def cli(location: str, *args: str, rollover: str = "0") -> Any:
    """Run the CLI in-process with the rule settings in the environment."""
    env = {"TIMELINE_DB": location, "TIMELINE_DEADLINE_ROLLOVER": rollover}
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def cli_store(tmp_path: Path, clock) -> str:
    """A SQLite store file with three students, for CLI runs."""
    path = str(tmp_path / "timeline.db")
    with TimelineStore.open(path, clock=clock) as store:
        assert ingest_objects(store, entries(3)).ok
    return path


def test_tasks_agree_with_show_when_the_rollover_setting_changes(cli_store):
    def both(rollover: str) -> tuple[str, str, Any]:
        tasks = cli(cli_store, "tasks", "--as-of", "2024-05-01", "--json", rollover=rollover)
        assert tasks.exit_code == 0, tasks.output
        show = cli(cli_store, "show", "S0", "--as-of", "2024-05-01", "--json", rollover=rollover)
        assert show.exit_code == 0, show.output
        task_due = next(r["due_on"] for r in json.loads(tasks.stdout) if r["student_id"] == "S0")
        return task_due, json.loads(show.stdout)["tasks"][0]["due_on"], tasks

    task_due, show_due, _ = both("0")
    assert task_due == show_due == SATURDAY_DUE
    task_due, show_due, tasks = both("1")
    assert task_due == show_due == MONDAY_DUE
    assert tasks.stderr.splitlines()[0] == RULES_CHANGED
    _, _, again = both("1")
    assert RULES_CHANGED not in again.stderr  # current now: no second rebuild
    task_due, show_due, tasks = both("0")
    assert task_due == show_due == SATURDAY_DUE
    assert RULES_CHANGED in tasks.stderr


def test_alerts_and_fines_follow_a_changed_setting(cli_store):
    """No false overdue alert or fine on 04-14 once deadlines roll over to Monday 04-15."""
    before = cli(cli_store, "alerts", "--on", "2024-04-14", "--json")
    assert {a["milestone"] for a in json.loads(before.stdout)} == {"overdue", "accrued"}
    after = cli(cli_store, "alerts", "--on", "2024-04-14", "--json", rollover="1")
    assert after.exit_code == 0, after.output
    assert {a["milestone"] for a in json.loads(after.stdout)} == {"due_in_1"}
    fines = cli(cli_store, "fines", "--as-of", "2024-04-14", "--json", rollover="1")
    assert json.loads(fines.stdout) == []
    fines = cli(cli_store, "fines", "--as-of", "2024-04-16", "--json", rollover="1")
    assert {f["accrued_on"] for f in json.loads(fines.stdout)} == {TUESDAY_DUE}


def test_rebuild_honours_the_settings(cli_store):
    result = cli(cli_store, "rebuild", rollover="1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["failed_students"] == []
    model = ReadModel(cli_store, ROLLOVER)
    assert model.rebuild_reason is None  # built under exactly these rules
    assert apply_arc_due(model) == MONDAY_DUE
    model.close()
    assert ReadModel(cli_store).rebuild_reason == RULES_CHANGED


def test_an_invalid_setting_is_a_usage_error_naming_it(cli_store):
    for name, value in (
        ("TIMELINE_DEADLINE_ROLLOVER", "sometimes"),
        ("TIMELINE_VISITOR_READING", "both"),
    ):
        result = CliRunner().invoke(
            main, ["tasks", "--json"], env={"TIMELINE_DB": cli_store, name: value}
        )
        assert result.exit_code == 2
        assert name in result.stderr
        assert result.stdout == ""


def test_changed_holidays_data_rebuilds_the_read_model(sqlite_store, tmp_path):
    """A new holidays release adding a day off (here: 2024-04-15) moves rolled deadlines."""
    assert ingest_objects(sqlite_store, entries(2)).ok
    path = tmp_path / "read.db"
    model = ReadModel(path, ROLLOVER)
    model.sync(sqlite_store)
    assert apply_arc_due(model) == MONDAY_DUE
    model.close()
    newer = TaiwanCalendar()
    newer._holidays[date(2024, 4, 15)] = "Typhoon day off"  # the newer data's extra day
    model = ReadModel(path, ROLLOVER, newer)
    assert model.rebuild_reason == RULES_CHANGED
    assert model.position == 0
    model.sync(sqlite_store)
    expected = view(sqlite_store.stream("S0"), DAY, rules=ROLLOVER, calendar=newer)
    assert apply_arc_due(model) == expected.tasks[0].due_on.isoformat() == TUESDAY_DUE


def test_an_injected_fingerprint_decides_whether_to_rebuild(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, entries(2)).ok
    path = tmp_path / "read.db"
    first = ReadModel(path, fingerprint="holidays-0.109")
    assert first.rebuild_reason is None  # a new file: nothing to rebuild
    first.sync(sqlite_store)
    first.close()
    same = ReadModel(path, fingerprint="holidays-0.109")
    assert same.rebuild_reason is None and same.position == sqlite_store.max_position()
    same.close()
    other = ReadModel(path, fingerprint="holidays-0.110")
    assert other.rebuild_reason == RULES_CHANGED
    assert other.position == 0 and other.tasks_on(DAY) == []
    other.sync(sqlite_store)
    assert apply_arc_due(other) == SATURDAY_DUE


def test_tables_of_an_older_layout_are_rebuilt(sqlite_store, tmp_path):
    path = tmp_path / "read.db"
    with sqlite3.connect(path) as conn:  # what layout 6 left behind
        conn.execute("CREATE TABLE rm_meta (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO rm_meta VALUES (6)")
        conn.execute("CREATE TABLE rm_tracking (name TEXT PRIMARY KEY, position INTEGER)")
        conn.execute("INSERT INTO rm_tracking VALUES ('student_views', 5)")
    conn.close()
    model = ReadModel(path)
    assert model.rebuild_reason == LAYOUT_CHANGED
    assert model.position == 0


def test_a_model_left_open_follows_its_rules_after_another_process_rebuilt(
    store: TimelineStore, tmp_path
):
    assert ingest_objects(store, entries(2)).ok
    path = tmp_path / "read.db"
    ours = ReadModel(path)
    ours.sync(store)
    theirs = ReadModel(path, ROLLOVER)  # e.g. a CLI run under other settings
    theirs.sync(store)
    assert apply_arc_due(theirs) == MONDAY_DUE
    ours.sync(store)
    assert ours.rebuild_reason == RULES_CHANGED
    assert apply_arc_due(ours) == SATURDAY_DUE
    theirs.close()
    ours.close()


def test_a_rebuild_under_other_rules_in_the_middle_of_a_sync_restarts_it(
    store: TimelineStore, tmp_path
):
    """Between two batches another process rebuilds under other rules: we start over."""
    assert ingest_objects(store, entries(30)).ok
    path = tmp_path / "read.db"
    ours = ReadModel(path)
    interrupted: list[int] = []

    def another_process_rebuilds(position: int, last: int) -> None:
        if not interrupted:
            interrupted.append(position)
            theirs = ReadModel(path, ROLLOVER)
            theirs.sync(store)
            theirs.close()

    report = ours.sync(store, batch=10, on_progress=another_process_rebuilds)
    assert interrupted and interrupted[0] < store.max_position()
    assert report.position == store.max_position() == ours.position
    assert {r["due_on"] for r in ours.tasks_on(DAY)} == {SATURDAY_DUE}
    assert len(ours.tasks_on(DAY)) == 30
    fresh = ReadModel(tmp_path / "fresh.db")
    fresh.sync(store)
    assert ours.tasks_on(DAY) == fresh.tasks_on(DAY)


def test_two_processes_opening_under_new_rules_at_once_agree(cli_store):
    """Both rebuild-or-wait safely: same answer, no error, no duplicate rows."""
    assert cli(cli_store, "tasks", "--json").exit_code == 0  # built under rollover=0
    env = {**os.environ, "TIMELINE_DB": cli_store, "TIMELINE_DEADLINE_ROLLOVER": "1"}
    args = [TIMELINE, "tasks", "--as-of", "2024-05-01", "--json"]
    runs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    answers = [json.loads(out) for out, _ in outputs]
    assert answers[0] == answers[1]
    assert {r["due_on"] for r in answers[0]} == {MONDAY_DUE}
    assert any(RULES_CHANGED in err for _, err in outputs)
    with sqlite3.connect(cli_store) as conn:
        rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT student_id) FROM rm_tasks").fetchone()
    conn.close()
    assert rows == (3, 3)


def test_tasks_agree_with_show_when_the_visitor_reading_changes(tmp_path, clock):
    """R-VISITOR-READING: 'deadline' is due stay_until − 15; 'window' opens then, due stay_until."""
    location = str(tmp_path / "timeline.db")
    visitor = {
        "event_id": "V-in",
        "student_id": "V",
        "type": "entered",
        "occurred_on": "2024-03-01",
        "visa": "visitor",
        "visa_code": "FS",
        "stay_until": "2024-05-29",
    }
    with TimelineStore.open(location, clock=clock) as store:
        assert ingest_objects(store, [visitor]).ok
    answers = {}
    for reading in ("deadline", "window", "deadline"):
        env = {"TIMELINE_DB": location, "TIMELINE_VISITOR_READING": reading}
        tasks = CliRunner().invoke(main, ["tasks", "--as-of", "2024-05-01", "--json"], env=env)
        show = CliRunner().invoke(main, ["show", "V", "--as-of", "2024-05-01", "--json"], env=env)
        assert tasks.exit_code == show.exit_code == 0, tasks.output + show.output
        (row,) = json.loads(tasks.stdout)
        shown = json.loads(show.stdout)["tasks"][0]
        assert (row["opens_on"], row["due_on"]) == (shown["opens_on"], shown["due_on"])
        answers[reading] = row["due_on"]
    assert answers == {"deadline": "2024-05-14", "window": "2024-05-29"}
