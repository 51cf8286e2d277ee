"""One student's facts can never break the read side for the others (issue 7, item 2b).

Broken students are written straight through the aggregate and the store, bypassing the
feed contract (which now refuses such dates), as a store written before the contract
tightened, an import or a future bug could hold them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from datetime import MAXYEAR, MINYEAR, date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_readmodel_properties import START, _task_rows, events

from projections import dates
from projections.engine import DerivationError, derive, view
from projections.readmodel import HORIZON, ReadModel
from scheduler.alerts import alerts_on, milestones_on
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
PASSPORT = "P98765432X"  # personal data planted in a broken fact: must never surface
DAY = date(2024, 5, 1)


def write_directly(
    store: TimelineStore, student_id: str, facts: list[tuple[str, str, date, dict[str, Any]]]
) -> None:
    """Record facts through the aggregate, as the contract never saw them."""
    student = store.load_students([student_id])[student_id]
    keys = []
    for event_id, type_, on, data in facts:
        digest = f"digest-{event_id}"
        student.record(
            source="manual",
            event_id=event_id,
            type=type_,
            occurred_on=on,
            data=data,
            note=None,
            digest=digest,
            at=store.clock(),
        )
        keys.append(("manual", event_id, student_id, type_, digest))
    store.save([student], keys)


def healthy_events() -> list[dict[str, Any]]:
    """Two students with overdue tasks and accrued fines around DAY."""
    return [
        {
            "event_id": "ok1-in",
            "student_id": "OK1",
            "type": "entered",
            "occurred_on": "2024-03-16",
            "visa": "resident",
        },
        {
            "event_id": "ok2-in",
            "student_id": "OK2",
            "type": "entered",
            "occurred_on": "2024-03-01",
            "visa": "resident",
        },
        {
            "event_id": "ok2-arc",
            "student_id": "OK2",
            "type": "arc_issued",
            "occurred_on": "2024-03-20",
            "valid_until": "2024-06-30",
            "application": "initial",
        },
    ]


def populate(store: TimelineStore) -> None:
    """Healthy students next to three broken ones (far future, year 1, a wrong type)."""
    report = ingest_objects(store, healthy_events())
    assert report.ok, report.as_json()
    write_directly(
        store,
        "FAR",
        [
            ("far-in", "entered", date(2024, 3, 1), {"visa": "resident"}),
            (
                "far-arc",
                "arc_issued",
                date(2024, 3, 10),
                {"valid_until": date(9999, 12, 31), "application": "initial"},
            ),
        ],
    )
    write_directly(
        store,
        "ANCIENT",
        [
            (
                "old-in",
                "entered",
                date(1, 1, 5),
                {"visa": "visitor", "visa_code": "FS", "stay_until": date(1, 1, 10)},
            )
        ],
    )
    # A fact of the wrong shape (a string where a date belongs) stands in for a future bug.
    write_directly(
        store,
        "BUG",
        [
            (
                "bug-arc",
                "arc_issued",
                date(2024, 3, 10),
                {"valid_until": PASSPORT, "application": "initial", "arc_number": PASSPORT},
            )
        ],
    )


BROKEN = ["ANCIENT", "BUG", "FAR"]


def expected_tasks(store: TimelineStore, day: date) -> list[tuple[str, str, str, str | None]]:
    """What the pure view says for the healthy students."""
    out = []
    for sid in ("OK1", "OK2"):
        v = view(store.stream(sid), day, student_id=sid)
        out += [(sid, t.kind, t.status, t.due_on and t.due_on.isoformat()) for t in v.tasks]
    return sorted(out)


@pytest.fixture
def broken_store(store: TimelineStore) -> TimelineStore:
    populate(store)
    return store


def test_population_queries_answer_for_the_healthy_and_name_the_broken(broken_store, tmp_path):
    model = ReadModel(tmp_path / "read.db")
    report = model.sync(broken_store)
    assert report.failed == 3
    assert report.position == broken_store.max_position()
    rows = model.tasks_on(DAY)
    got = sorted((r["student_id"], r["kind"], r["status"], r["due_on"]) for r in rows)
    assert got == expected_tasks(broken_store, DAY)
    assert {f["student_id"] for f in model.fines_on(DAY)} == {"OK1"}
    errors = {e["student_id"]: e for e in model.errors()}
    assert sorted(errors) == BROKEN
    assert errors["FAR"]["error"] == "DerivationError"
    assert "far-arc" in errors["FAR"]["message"]  # names the event to correct
    assert "far-in" not in errors["FAR"]["message"]  # and only that one
    assert "old-in" in errors["ANCIENT"]["message"]
    # A fact of the wrong shape names the event and the failure's class, never its text
    # (which could quote the fact).
    assert errors["BUG"]["error"] == "DerivationError"
    assert "bug-arc" in errors["BUG"]["message"]
    assert "AttributeError" in errors["BUG"]["message"]
    assert PASSPORT not in json.dumps(model.errors())


def test_a_failing_student_leaves_no_stale_rows(broken_store, tmp_path):
    """FAR's rows from before its bad fact are dropped, not left to answer falsely."""
    model = ReadModel(tmp_path / "read.db")
    write_directly(
        broken_store, "LATER", [("l-in", "entered", date(2024, 3, 1), {"visa": "resident"})]
    )
    model.sync(broken_store)
    assert {r["student_id"] for r in model.tasks_on(DAY)} >= {"LATER"}
    write_directly(
        broken_store,
        "LATER",
        [("l-arc", "arc_issued", date(2024, 3, 5), {"valid_until": date(9999, 12, 31)})],
    )
    model.sync(broken_store)
    assert "LATER" not in {r["student_id"] for r in model.tasks_on(DAY)}
    assert "LATER" in {e["student_id"] for e in model.errors()}


def test_retracting_the_bad_fact_clears_the_error_row(broken_store, tmp_path):
    model = ReadModel(tmp_path / "read.db")
    model.sync(broken_store)
    retraction = {
        "event_id": "fix-far",
        "student_id": "FAR",
        "type": "retracted",
        "occurred_on": "2024-04-01",
        "retracts": "far-arc",
        "reason": "the ARC was entered with a placeholder end date",
    }
    assert ingest_objects(broken_store, [retraction]).ok
    model.sync(broken_store)
    assert "FAR" not in {e["student_id"] for e in model.errors()}
    far = [r for r in model.tasks_on(DAY) if r["student_id"] == "FAR"]
    expected = view(broken_store.stream("FAR"), DAY, student_id="FAR")
    assert [(r["kind"], r["status"]) for r in far] == [(t.kind, t.status) for t in expected.tasks]
    assert far  # the apply_arc task of the entry is back


def test_rebuild_isolates_the_same_students(broken_store, tmp_path):
    model = ReadModel(tmp_path / "read.db")
    model.sync(broken_store)
    before = model.tasks_on(DAY)
    report = model.rebuild(broken_store)
    assert report.failed == 3
    assert model.tasks_on(DAY) == before
    assert [e["student_id"] for e in model.errors()] == BROKEN


def test_alerts_and_milestones_answer_for_the_healthy_and_name_the_broken(
    broken_store, tmp_path, caplog
):
    model = ReadModel(tmp_path / "read.db")
    model.sync(broken_store)
    overdue_day = date(2024, 4, 16)  # OK1's apply_arc due 2024-04-15
    with caplog.at_level(logging.WARNING, logger="scheduler.alerts"):
        found = alerts_on(model, overdue_day)
        milestones = milestones_on(model, overdue_day)
    assert {(a.student_id, a.milestone) for a in found} >= {("OK1", "overdue"), ("OK1", "accrued")}
    assert {m.alert.student_id for m in milestones} == {"OK1"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(all(sid in w for sid in BROKEN) for w in warnings)
    assert PASSPORT not in caplog.text


def test_show_of_a_broken_student_is_a_clear_error(broken_store):
    with pytest.raises(DerivationError) as raised:
        view(broken_store.stream("FAR"), DAY, student_id="FAR")
    assert raised.value.student_id == "FAR"
    assert raised.value.event_ids == ["far-arc"]
    assert "far-arc" in str(raised.value)


def run_cli(*args: str, location: str, env: dict[str, str] | None = None) -> Any:
    full_env = {**os.environ, "TIMELINE_DB": location, **(env or {})}
    full_env.pop("TIMELINE_DEADLINE_ROLLOVER", None)
    full_env.pop("TIMELINE_VISITOR_READING", None)
    return subprocess.run(
        [TIMELINE, *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_cli_population_commands_and_show_survive_a_broken_student(tmp_path, clock):
    location = str(tmp_path / "timeline.db")
    with TimelineStore.open(location, clock=clock) as store:
        populate(store)
    tasks = run_cli("tasks", "--as-of", DAY.isoformat(), "--json", location=location)
    assert tasks.returncode == 0, tasks.stderr
    assert {r["student_id"] for r in json.loads(tasks.stdout)} == {"OK1", "OK2"}
    assert "Traceback" not in tasks.stderr
    for sid in BROKEN:
        assert sid in tasks.stderr
    assert PASSPORT not in tasks.stderr + tasks.stdout
    fines = run_cli("fines", "--as-of", DAY.isoformat(), "--json", location=location)
    assert fines.returncode == 0 and "FAR" in fines.stderr
    assert isinstance(json.loads(fines.stdout), list)
    alerts = run_cli("alerts", "--on", "2024-04-16", "--json", location=location)
    assert alerts.returncode == 0 and "FAR" in alerts.stderr
    assert {a["student_id"] for a in json.loads(alerts.stdout)} == {"OK1"}
    rebuild = run_cli("rebuild", location=location)
    assert rebuild.returncode == 0, rebuild.stderr
    assert json.loads(rebuild.stdout)["failed_students"] == BROKEN
    show = run_cli("show", "FAR", "--as-of", DAY.isoformat(), "--json", location=location)
    assert show.returncode == 1
    assert show.stderr.startswith("error: cannot derive student 'FAR'")
    assert "far-arc" in show.stderr and "Traceback" not in show.stderr
    assert show.stdout == ""


def test_cli_tables_print_stored_text_as_it_is_not_as_rich_markup(tmp_path, clock):
    """Ids are free text: `[/x]` raised rich's MarkupError (a traceback) from `history`,
    `tasks` and `show`, and `[bold]` or `:cat:` were shown as a style or an emoji."""
    student, event_id = "[/x][bold]:cat:", "[/y]"
    location = str(tmp_path / "timeline.db")
    with TimelineStore.open(location, clock=clock) as store:
        entered = {"event_id": event_id, "student_id": student, "type": "entered"}
        entered |= {"occurred_on": "2024-03-16", "visa": "resident"}
        assert ingest_objects(store, [entered]).ok
    for args in (
        ("history", student),
        ("show", student, "--as-of", DAY.isoformat()),
        ("tasks", "--as-of", DAY.isoformat()),
        ("alerts", "--on", "2024-03-16"),
    ):
        result = run_cli(*args, location=location)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert student in result.stdout and "🐱" not in result.stdout, args
    shown = run_cli("show", student, "--as-of", DAY.isoformat(), location=location)
    assert event_id in shown.stdout
    missing = run_cli("history", "[/z]", location=location)
    assert missing.returncode == 0 and "[/z]" in missing.stdout


# -- the date module: a typed error, never OverflowError ---------------------------------
@pytest.mark.parametrize(
    ("operation", "args"),
    [
        (dates.next_day, (date.max,)),
        (dates.previous_day, (date.min,)),
        (dates.days_after, (date(9999, 12, 1), 31)),
        (dates.days_before, (date(1, 1, 10), 15)),
        (dates.add_months, (date(9999, 11, 30), 3)),
        (dates.add_months, (date(1, 2, 28), -3)),
        (dates.taiwan_calendar().add_working_days, (date(9999, 12, 30), 5)),
    ],
)
def test_date_arithmetic_off_the_calendar_raises_the_typed_error(operation, args):
    with pytest.raises(dates.DateOutOfRangeError):
        operation(*args)


@settings(max_examples=300, deadline=None)
@given(
    day=st.dates(),
    count=st.integers(-4000, 4000),
)
def test_date_arithmetic_answers_or_raises_only_the_typed_error(day: date, count: int):
    for operation in (dates.days_after, dates.days_before, dates.add_months):
        try:
            result = operation(day, count)
        except dates.DateOutOfRangeError:
            continue
        assert MINYEAR <= result.year <= MAXYEAR


def test_the_read_model_horizon_is_in_range():
    """The far horizon itself never overflows for ordinary facts."""
    assert dates.next_day(HORIZON) > HORIZON


# -- property: the broken are exactly the underivable, the rest equal the pure view ------
# Near the ends of what `date` represents, where some arithmetic overflows and some not.
POISON_DAYS = st.one_of(
    st.sampled_from([date.max, date.min]),
    st.dates(date(9999, 9, 1), date.max),
    st.dates(date.min, date(1, 2, 1)),
)


@st.composite
def poison(draw: st.DrawFn, student: str) -> tuple[str, str, date, dict[str, Any]]:
    """One fact with a date no feed may send any more, of a type that uses dates."""
    far = draw(POISON_DAYS)
    kind = draw(st.sampled_from(["arc_issued", "visitor", "entered", "arc_revoked"]))
    if kind == "arc_issued":
        return (f"{student}-p", "arc_issued", date(2024, 3, 1), {"valid_until": far})
    if kind == "visitor":
        data = {"visa": "visitor", "visa_code": "FS", "stay_until": far}
        return (f"{student}-p", "entered", date(2024, 2, 1), data)
    if kind == "arc_revoked":
        return (f"{student}-p", "arc_revoked", date(2024, 4, 1), {"leave_by": far})
    return (f"{student}-p", "entered", far, {"visa": "resident"})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    population=st.lists(
        st.sampled_from(["A", "B", "C"]), min_size=1, max_size=3, unique=True
    ).flatmap(
        lambda ids: st.tuples(*[st.tuples(events(i), poison(i), st.booleans()) for i in ids])
    ),
    offset=st.integers(0, 800),
)
def test_the_students_left_out_are_exactly_those_that_cannot_be_derived(population, offset):
    day = START + timedelta(days=offset)
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "t.db")
        with TimelineStore.open(path) as store:
            assert ingest_objects(store, [e for history, _, _ in population for e in history]).ok
            for history, bad, poisoned in population:
                if poisoned:
                    write_directly(store, history[0]["student_id"], [bad])
            model = ReadModel(path)
            model.sync(store)
            failed = {e["student_id"] for e in model.errors()}
            rows = model.tasks_on(day)
            for history, _, _ in population:
                sid = history[0]["student_id"]
                stream = store.stream(sid)
                try:
                    derive(stream, HORIZON, student_id=sid)
                    derivable = True
                except DerivationError:
                    derivable = False
                assert (sid in failed) == (not derivable)
                event("derivable" if derivable else "left out")
                mine = _task_rows([r for r in rows if r["student_id"] == sid])
                if not derivable:
                    assert mine == []
                    continue
                v = view(stream, day, student_id=sid).model_dump(mode="json")
                assert mine == _task_rows([t | {"student_id": sid} for t in v["tasks"]])
            model.close()


@pytest.mark.parametrize(
    "args",
    [
        ["show", b"S\xff1", "--as-of", "2024-05-01"],
        ["history", b"S\xff1"],
        ["calendar", b"S\xff1"],
        ["alerts", "--on", "2024-05-01", "--student", b"S\xff1"],
        ["tasks", "--as-of", "2024-05-01", "--kind", b"\xff"],
    ],
)
def test_an_id_that_is_not_utf8_on_the_command_line_is_a_usage_error(tmp_path, args):
    """A shell passes bytes: `\\xff` in a student id raised UnicodeEncodeError (a traceback)
    where the id was hashed into its stream id or sent to the store."""
    timeline = str(Path(sys.executable).with_name("timeline"))
    db = str(tmp_path / "t.db")
    assert subprocess.run([timeline, "--db", db, "init"], capture_output=True).returncode == 0
    result = subprocess.run(
        [timeline, "--db", db, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "not UTF-8 text" in result.stderr


def test_history_of_an_unknown_id_does_not_send_its_control_characters_to_the_terminal(tmp_path):
    """An id handed on by a script (a web form's field): `history` echoed it raw, ESC
    sequences included (clear the screen, recolour), where `show` and `calendar` quote it."""
    timeline = str(Path(sys.executable).with_name("timeline"))
    db = str(tmp_path / "t.db")
    assert subprocess.run([timeline, "--db", db, "init"], capture_output=True).returncode == 0
    result = subprocess.run(
        [timeline, "--db", db, "history", "S1\x1b[2J\u202e"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "No events stored for student 'S1\\x1b[2J\\u202e'." in result.stdout
