"""SPEC §5 alerts: which milestone falls on which day, and the alert's JSON shape.

Each scenario is ingested into a real store (SQLite and PostgreSQL), the read models are
synced, and `alerts_on` is asked for EVERY day of a range. The result must equal the
expected (task, milestone) -> [days] map exactly, so a milestone on the day before or after
its day, a duplicate, or an alert that should not exist all fail the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from feed_examples import ev

from projections.readmodel import ReadModel
from scheduler.alert import Alert
from scheduler.alerts import alerts_on, milestones_on
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
CJK = re.compile(r"[\u4e00-\u9fff]")
ALERT_KEYS = {"key", "student_id", "task", "milestone", "due_on", "rule", "message"}


def entered(student: str = "S1", on: str = "2024-03-16") -> list[dict[str, Any]]:
    """Entered on a resident visa: apply_arc opens that day, due 30 days later."""
    return [ev(student, "entered", "entered", on, visa="resident")]


def holding_arc(student: str = "S1", valid_until: str = "2024-05-31") -> list[dict[str, Any]]:
    """In Taiwan on an ARC (registration basis) valid through `valid_until`."""
    return [
        ev(student, "entered", "entered", "2023-08-20", visa="resident"),
        ev(student, "applied", "arc_applied", "2023-08-25", application="initial"),
        ev(student, "issued", "arc_issued", "2023-09-01", valid_until=valid_until),
    ]


def admission_arc(student: str = "S1", registered_on: str = "2024-08-19") -> list[dict[str, Any]]:
    """The 6-month admission-notice ARC (valid through 2024-08-19), registered later."""
    return [
        ev(student, "entered", "entered", "2024-02-01", visa="resident"),
        ev(
            student,
            "applied",
            "arc_applied",
            "2024-02-05",
            application="initial",
            basis="admission_notice",
        ),
        ev(student, "issued", "arc_issued", "2024-02-20", valid_until="2024-08-19"),
        ev(student, "registered", "registered", registered_on, semester="113-1"),
    ]


def synced_model(store: TimelineStore, tmp_path: Path, events: list[dict]) -> ReadModel:
    report = ingest_objects(store, events)
    assert report.ok and report.accepted == len(events), report.as_json()
    model = ReadModel(tmp_path / "read.db")
    model.sync(store)
    return model


def scan(model: ReadModel, start: str, end: str) -> dict[tuple[str, str], list[str]]:
    """(task, milestone) -> every day of [start, end] it was alerted on."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    day, last = date.fromisoformat(start), date.fromisoformat(end)
    while day <= last:
        for alert in alerts_on(model, day):
            found[(alert.task, alert.milestone)].append(day.isoformat())
        day += timedelta(days=1)
    return dict(found)


def _model_factory(store: TimelineStore, tmp_path: Path):
    models: list[ReadModel] = []

    def make(events: list[dict]) -> ReadModel:
        model = synced_model(store, tmp_path, events)
        models.append(model)
        return model

    yield make
    for model in models:
        model.close()


@pytest.fixture
def model_of(store: TimelineStore, tmp_path: Path):
    """Read models over a store on each backend (SQLite, PostgreSQL)."""
    yield from _model_factory(store, tmp_path)


@pytest.fixture
def sqlite_model_of(sqlite_store: TimelineStore, tmp_path: Path):
    """Read models over a SQLite store (for tests about the alert text, not storage)."""
    yield from _model_factory(sqlite_store, tmp_path)


APPLY_ARC_OPEN = {
    # entry 2024-03-16 -> due 2024-04-15; the window opens on the entry day.
    ("apply_arc", "window_open"): ["2024-03-16"],
    ("apply_arc", "due_in_30"): ["2024-03-16"],
    ("apply_arc", "due_in_14"): ["2024-04-01"],
    ("apply_arc", "due_in_7"): ["2024-04-08"],
    ("apply_arc", "due_in_1"): ["2024-04-14"],
    ("apply_arc", "due_today"): ["2024-04-15"],
    ("apply_arc", "overdue"): ["2024-04-16"],
    ("late_arc_application", "accrued"): ["2024-04-16"],
}

EXTEND_ARC = {
    # valid_until 2024-05-31: the window opens 3 calendar months before (leap day).
    ("extend_arc", "window_open"): ["2024-02-29"],
    ("extend_arc", "due_in_30"): ["2024-05-01"],
    ("extend_arc", "due_in_14"): ["2024-05-17"],
    ("extend_arc", "due_in_7"): ["2024-05-24"],
    ("extend_arc", "due_in_1"): ["2024-05-30"],
    ("extend_arc", "due_today"): ["2024-05-31"],
    ("extend_arc", "overdue"): ["2024-06-01"],
}

PAY_FINE = {
    # overstay day 1 = 2024-06-01 -> pay_fine_and_reapply due on day 29 (2024-06-29);
    # due_in_30 would fall before the task exists; cancelled on day 30, never overdue.
    # SPEC §5: a window_open on its opens_on (day 1, before its due day).
    ("pay_fine_and_reapply", "window_open"): ["2024-06-01"],
    ("pay_fine_and_reapply", "due_in_14"): ["2024-06-15"],
    ("pay_fine_and_reapply", "due_in_7"): ["2024-06-22"],
    ("pay_fine_and_reapply", "due_in_1"): ["2024-06-28"],
    ("pay_fine_and_reapply", "due_today"): ["2024-06-29"],
}


def pay_fine_until(last: str) -> dict[tuple[str, str], list[str]]:
    """The pay_fine_and_reapply milestones up to `last` (the task ends that day)."""
    return {k: days for k, days in PAY_FINE.items() if days[0] <= last}


SCENARIOS: dict[str, tuple[list[dict], str, str, dict[tuple[str, str], list[str]]]] = {
    "apply_arc left open": (entered(), "2024-03-01", "2024-05-31", APPLY_ARC_OPEN),
    "apply_arc done before due_in_1": (
        [*entered(), ev("S1", "applied", "arc_applied", "2024-04-09", application="initial")],
        "2024-03-01",
        "2024-05-31",
        {
            ("apply_arc", "window_open"): ["2024-03-16"],
            ("apply_arc", "due_in_30"): ["2024-03-16"],
            ("apply_arc", "due_in_14"): ["2024-04-01"],
            ("apply_arc", "due_in_7"): ["2024-04-08"],
            # done 2024-04-09: no due_in_1, no due_today, no overdue, no fine
        },
    ),
    "overstay runs past day 30": (
        holding_arc(),
        "2024-02-01",
        "2024-07-31",
        {
            **EXTEND_ARC,
            ("overstay", "accrued"): ["2024-06-01"],  # the overstay fine
            ("overstay", "overstay_started"): ["2024-06-01"],  # valid_until + 1
            ("overstay", "reapply_window_closing"): ["2024-06-25"],  # overstay day 25
            ("overstay", "reapply_window_closed"): ["2024-06-30"],  # overstay day 30
            ("leave_and_reapply_visa", "window_open"): ["2024-06-30"],
            **PAY_FINE,
        },
    ),
    "departs on overstay day 10": (
        [*holding_arc(), ev("S1", "departed", "departed", "2024-06-10")],
        "2024-02-01",
        "2024-07-31",
        {
            **EXTEND_ARC,
            ("overstay", "accrued"): ["2024-06-01"],
            ("overstay", "overstay_started"): ["2024-06-01"],
            # gone before day 25: no closing / closed, no leave_and_reapply_visa
            **pay_fine_until("2024-06-09"),  # nothing: gone before due_in_14
        },
    ),
    "departs on overstay day 27": (
        [*holding_arc(), ev("S1", "departed", "departed", "2024-06-27")],
        "2024-02-01",
        "2024-07-31",
        {
            **EXTEND_ARC,
            ("overstay", "accrued"): ["2024-06-01"],
            ("overstay", "overstay_started"): ["2024-06-01"],
            ("overstay", "reapply_window_closing"): ["2024-06-25"],
            **pay_fine_until("2024-06-26"),
        },
    ),
    "new ARC on overstay day 20": (
        [
            *holding_arc(),
            ev(
                "S1",
                "reissued",
                "arc_issued",
                "2024-06-20",
                valid_until="2025-05-31",
                application="reapplication",
            ),
        ],
        "2024-02-01",
        "2024-07-31",
        {
            **EXTEND_ARC,
            ("overstay", "accrued"): ["2024-06-01"],
            ("overstay", "overstay_started"): ["2024-06-01"],
            **pay_fine_until("2024-06-19"),
        },
    ),
    "admission ARC, registered on its due day (opens_on == due_on)": (
        admission_arc(registered_on="2024-08-19"),
        "2024-02-01",
        "2024-08-20",
        {
            ("apply_arc", "window_open"): ["2024-02-01"],
            ("apply_arc", "due_in_30"): ["2024-02-01"],
            # submit_student_status opens on its due day: no window_open
            ("submit_student_status", "due_today"): ["2024-08-19"],
            ("submit_student_status", "overdue"): ["2024-08-20"],
            ("overstay", "overstay_started"): ["2024-08-20"],
            ("overstay", "accrued"): ["2024-08-20"],
            ("pay_fine_and_reapply", "window_open"): ["2024-08-20"],  # overstay day 1
        },
    ),
    "admission ARC, registered 9 days before the due day": (
        admission_arc(registered_on="2024-08-10"),
        "2024-02-01",
        "2024-08-19",
        {
            ("apply_arc", "window_open"): ["2024-02-01"],
            ("apply_arc", "due_in_30"): ["2024-02-01"],
            # upcoming (not open) on due-30 and due-14: none of those
            ("submit_student_status", "window_open"): ["2024-08-10"],
            ("submit_student_status", "due_in_7"): ["2024-08-12"],
            ("submit_student_status", "due_in_1"): ["2024-08-18"],
            ("submit_student_status", "due_today"): ["2024-08-19"],
        },
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_milestone_falls_on_its_day_and_no_other(model_of, name):
    events, start, end, expected = SCENARIOS[name]
    model = model_of(events)
    assert scan(model, start, end) == expected


def test_milestone_not_on_the_day_before_or_after(model_of):
    """The same property, spelled out for each milestone of the richest scenarios."""
    model = model_of([*entered("A"), *holding_arc("B")])
    expected = {("A", *k): v for k, v in APPLY_ARC_OPEN.items()}
    expected.update({("B", *k): v for k, v in SCENARIOS["overstay runs past day 30"][3].items()})

    def on(day: date) -> set[tuple[str, str, str]]:
        return {(a.student_id, a.task, a.milestone) for a in alerts_on(model, day)}

    for what, days in expected.items():
        [day] = [date.fromisoformat(d) for d in days]
        assert what in on(day), f"{what} missing on {day}"
        assert what not in on(day - timedelta(days=1)), f"{what} also on the day before"
        assert what not in on(day + timedelta(days=1)), f"{what} also on the day after"


def test_done_task_gets_no_due_today_nor_overdue(sqlite_model_of):
    model = sqlite_model_of(
        [*entered(), ev("S1", "applied", "arc_applied", "2024-04-12", application="initial")]
    )
    for day in ("2024-04-14", "2024-04-15", "2024-04-16"):
        assert alerts_on(model, date.fromisoformat(day)) == [], day


def assert_alert_shape(alert: Alert) -> dict[str, Any]:
    data = alert.model_dump(mode="json")
    assert set(data) == ALERT_KEYS
    assert set(data["message"]) == {"zh", "en"}
    for name in ("key", "student_id", "task", "milestone", "rule"):
        assert isinstance(data[name], str) and data[name], name
    zh, en = data["message"]["zh"], data["message"]["en"]
    assert isinstance(zh, str) and zh.strip()
    assert isinstance(en, str) and en.strip()
    assert CJK.search(zh), zh
    assert alert.rule in en, en
    assert alert.rule in zh, zh
    # round-trips through JSON unchanged
    assert Alert.model_validate_json(json.dumps(data)) == alert
    return data


def test_alert_json_shape_and_bilingual_messages(sqlite_model_of):
    model = sqlite_model_of([*entered("A"), *holding_arc("B")])
    seen: set[str] = set()
    milestones: set[str] = set()
    day = date(2024, 2, 1)
    while day <= date(2024, 7, 31):
        for alert in alerts_on(model, day):
            data = assert_alert_shape(alert)
            assert data["key"] not in seen, "an alert key repeats on another day"
            seen.add(data["key"])
            milestones.add(alert.milestone)
            zh, en = alert.message.zh, alert.message.en
            if alert.due_on is not None:
                assert data["due_on"] == alert.due_on.isoformat()
                assert alert.due_on.isoformat() in zh, zh
                assert alert.due_on.isoformat() in en, en
            if alert.milestone.startswith("due_in_"):
                n = int(alert.milestone.removeprefix("due_in_"))
                assert alert.due_on == day + timedelta(days=n)
                assert f"{n} day" in en and f"尚餘 {n} 天" in zh
            elif alert.milestone == "due_today":
                assert alert.due_on == day
                assert "TODAY" in en and "今天" in zh
            elif alert.milestone == "overdue":
                assert alert.due_on == day - timedelta(days=1)
                assert "1 day OVERDUE" in en and "已逾期 1 天" in zh
            elif alert.milestone == "accrued":
                assert data["due_on"] is None
                assert day.isoformat() in zh and day.isoformat() in en
                assert re.search(r"NTD [\d,]+", en) and "新臺幣" in zh
            elif alert.milestone == "overstay_started":
                assert data["due_on"] is None and alert.rule == "R-OVERSTAY"
                assert "2024-05-31" in en and "2024-05-31" in zh  # the expiry day
            elif alert.milestone in ("reapply_window_closing", "reapply_window_closed"):
                days = 25 if alert.milestone.endswith("closing") else 30
                assert f"{days} days" in en and f"{days} 天" in zh
        day += timedelta(days=1)
    assert milestones == {
        "window_open",
        "due_in_30",
        "due_in_14",
        "due_in_7",
        "due_in_1",
        "due_today",
        "overdue",
        "accrued",
        "overstay_started",
        "reapply_window_closing",
        "reapply_window_closed",
    }


def test_alert_keys_are_stable_across_a_rebuild(sqlite_model_of, sqlite_store):
    model = sqlite_model_of([*entered("A"), *holding_arc("B")])
    days = [date(2024, 4, 16), date(2024, 6, 1), date(2024, 6, 25)]
    before = [[a.model_dump(mode="json") for a in alerts_on(model, d)] for d in days]
    model.rebuild(sqlite_store)
    after = [[a.model_dump(mode="json") for a in alerts_on(model, d)] for d in days]
    assert before == after
    assert all(before)


def test_ids_holding_the_key_separator_never_make_two_alerts_one_key(model_of):
    """Student `P` with event `Q:apply_arc:R` and student `P:apply_arc:Q` with event `R`:
    joined with `:` their keys and catch-up subjects were equal and one alert was dropped."""
    feed = [
        {**entered("P")[0], "event_id": "Q:apply_arc:R"},
        {**entered("P:apply_arc:Q")[0], "event_id": "R"},
        {**entered("50%")[0], "event_id": "a%3Ab"},  # escaped text vs the escape itself
        {**entered("50%25")[0], "event_id": "a:b"},
    ]
    model = model_of(feed)
    found = milestones_on(model, date(2024, 4, 1))  # due_in_14 of each apply_arc
    assert len(found) == 4
    assert len({m.alert.key for m in found}) == 4
    assert len({m.subject for m in found}) == 4
    keys = {m.alert.student_id: m.alert.key for m in found}
    assert keys["P"] == "P:apply_arc:Q%3Aapply_arc%3AR:due_in_14:2024-04-15"
    assert keys["P:apply_arc:Q"] == "P%3Aapply_arc%3AQ:apply_arc:R:due_in_14:2024-04-15"


def test_catch_up_subjects_separate_tasks_fines_and_overstays(sqlite_model_of):
    model = sqlite_model_of(holding_arc())
    found = milestones_on(model, date(2024, 6, 1))
    subjects = {(m.alert.task, m.alert.milestone): m.subject for m in found}
    assert set(subjects) == {
        ("extend_arc", "overdue"),
        ("overstay", "overstay_started"),
        ("overstay", "accrued"),
        ("pay_fine_and_reapply", "window_open"),
    }
    assert len(set(subjects.values())) == 4


def test_cli_alerts_json_prints_exactly_the_alerts(tmp_path: Path):
    db = str(tmp_path / "timeline.db")
    with TimelineStore.open(db) as store:
        assert ingest_objects(store, [*entered("A"), *holding_arc("B")]).ok
        model = ReadModel(tmp_path / "expected-read.db")
        model.sync(store)
        expected = [a.model_dump(mode="json") for a in alerts_on(model, date(2024, 6, 1))]
        model.close()
    result = subprocess.run(
        [TIMELINE, "alerts", "--on", "2024-06-01", "--json", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == expected
    assert len(printed) == 4  # B's extend_arc overdue, overstay started and fine, pay_fine opens
    for item in printed:
        assert set(item) == ALERT_KEYS
        assert set(item["message"]) == {"zh", "en"}


def test_english_messages_have_no_doubled_full_stop(sqlite_model_of):
    """A document name that ends in '.' must not become '..' in the English text."""
    model = sqlite_model_of([*holding_arc("B"), *admission_arc("C", registered_on="2024-08-10")])
    texts = [
        a.message.en
        for d in (date(2024, 2, 29), date(2024, 5, 1), date(2024, 8, 12))
        for a in alerts_on(model, d)
    ]
    assert texts
    doubled = [t for t in texts if ".." in t]
    assert doubled == [], doubled[0] if doubled else None
