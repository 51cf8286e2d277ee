"""Bitemporal read models: a population answer as known at T is what `show --known-at T` says.

A random population is written in several batches, each at a record time drawn from a
clock that may stand still (events sharing one `recorded_at`), move on, or step back (two
writers at once: notification order and record order differ), with retractions of earlier
events in later batches. The follower syncs between batches in small, random batches. For
random valid days and record moments (each batch's time, a microsecond either side, before
everything, now), the read model's `tasks_on`/`fines_on` with `known_at` must equal the
union of the pure views `view(stream, day, known_at)`, on a SQLite and a PostgreSQL event
store. The tables themselves must not depend on how the log was batched: a rebuild in
other batch sizes and an export/import round trip (which writes the old record times in
one go) give the same rows and intervals.
"""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from conftest import POSTGRES_URL, FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_readmodel_properties import START, _fine_rows, _task_rows, events

from projections.engine import view
from projections.readmodel import OPEN, ReadModel, moment_text
from scheduler.alerts import alerts_on
from timeline.backup import export_events, import_events
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

T0 = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
BACKENDS = ["sqlite", "postgres"]


@contextmanager
def fresh_location(backend: str, folder: Path) -> Iterator[str]:
    """A new, empty event store location (a PostgreSQL schema of its own, dropped after)."""
    if backend == "sqlite":
        yield str(folder / f"events-{uuid.uuid4().hex[:8]}.db")
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _skip_without(backend: str) -> None:
    if backend == "postgres" and not POSTGRES_URL:
        pytest.skip("TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")


@st.composite
def scenarios(draw: st.DrawFn, monotonic: bool = False) -> tuple[list[list[dict]], list[int]]:
    """Batches of events (retractions of earlier ones included) and each batch's clock step."""
    ids = draw(st.lists(st.sampled_from(["A", "B", "C"]), min_size=1, max_size=3, unique=True))
    flat = [e for sid in ids for e in draw(events(sid))]
    flat = draw(st.permutations(flat))
    cuts = sorted(draw(st.lists(st.integers(0, len(flat)), min_size=1, max_size=4)))
    batches = [flat[a:b] for a, b in zip([0, *cuts], [*cuts, len(flat)], strict=True)]
    batches = [b for b in batches if b]
    written: list[dict] = []
    for n, batch in enumerate(batches):
        if written and draw(st.booleans()):
            target = draw(st.sampled_from(written))
            batch.append(
                {
                    "event_id": f"R{n}",
                    "student_id": target["student_id"],
                    "type": "retracted",
                    "occurred_on": target["occurred_on"],
                    "retracts": target["event_id"],
                    "reason": "sent in error",
                }
            )
        written += [e for e in batch if e["type"] != "retracted"]
    low = 0 if monotonic else -3
    steps = draw(st.lists(st.integers(low, 4), min_size=len(batches), max_size=len(batches)))
    return batches, steps


def _moments(times: list[datetime]) -> list[datetime | None]:
    """Each batch's record time and a microsecond either side, before everything, and now."""
    tick = timedelta(microseconds=1)
    out: list[datetime | None] = [None, min(times) - timedelta(days=1)]
    for t in times:
        out += [t - tick, t, t + tick]
    return out


def _expected(store: TimelineStore, day: date, known_at: datetime | None) -> tuple[list, list]:
    tasks, fines = [], []
    for sid in ("A", "B", "C"):
        stream = store.stream(sid)
        if not stream:
            continue
        v = view(stream, day, known_at, student_id=sid).model_dump(mode="json")
        tasks += [t | {"student_id": sid} for t in v["tasks"]]
        fines += [f | {"student_id": sid} for f in v["fines"]]
    return _task_rows(tasks), _fine_rows(fines)


def _write(
    store: TimelineStore,
    clock: FakeClock,
    batches: list[list[dict]],
    steps: list[int],
    model: ReadModel | None = None,
    follow: list[int] | None = None,
) -> list[datetime]:
    times = []
    for n, (batch, step) in enumerate(zip(batches, steps, strict=True)):
        clock.now = clock.now + timedelta(seconds=step)
        times.append(clock.now)
        report = ingest_objects(store, batch)
        assert report.ok, report.as_json()
        if model is not None and follow is not None:
            model.sync(store, batch=follow[n % len(follow)])
    return times


def table_rows(path: str) -> dict[str, list[tuple]]:
    """Every versioned table's rows with their intervals (positions of batches left aside)."""
    queries = {
        "rm_tasks": "SELECT * FROM rm_tasks",
        "rm_fines": "SELECT * FROM rm_fines",
        "rm_payments": "SELECT * FROM rm_payments",
        "rm_overstays": "SELECT * FROM rm_overstays",
        "rm_errors": "SELECT student_id, error, message, known_from, known_until FROM rm_errors",
        "rm_changes": "SELECT * FROM rm_changes",
        "rm_students": "SELECT uuid, student_id, recorded_to FROM rm_students",
    }
    with sqlite3.connect(path) as conn:
        return {t: sorted(conn.execute(q).fetchall(), key=repr) for t, q in queries.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    scenario=scenarios(),
    follow=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    days=st.lists(st.integers(0, 800), min_size=1, max_size=3),
)
def test_population_known_at_equals_show_known_at_for_every_student(
    backend, scenario, follow, days
):
    _skip_without(backend)
    batches, steps = scenario
    with tempfile.TemporaryDirectory() as tmp, fresh_location(backend, Path(tmp)) as location:
        folder = Path(tmp)
        clock = FakeClock(T0)
        with TimelineStore.open(location, clock=clock) as store:
            read_db = str(folder / "read.db")
            model = ReadModel(read_db)
            times = _write(store, clock, batches, steps, model, follow)
            model.sync(store)
            for offset in days:
                day = START + timedelta(days=offset)
                for moment in _moments(times):
                    tasks, fines = _expected(store, day, moment)
                    context = f"day {day}, known at {moment}"
                    assert _task_rows(model.tasks_on(day, known_at=moment)) == tasks, context
                    assert _fine_rows(model.fines_on(day, known_at=moment)) == fines, context
            model.close()
            # The same facts followed in other batch sizes give the same rows and intervals.
            again = ReadModel(str(folder / "again.db"))
            again.rebuild(store, batch=7)
            again.close()
            assert table_rows(str(folder / "again.db")) == table_rows(read_db)
            export = folder / "export.jsonl"
            with export.open("wb") as out:
                export_events(store, out)
        # An import writes every old record time in one go: one version per recorded_at.
        with fresh_location(backend, folder) as other, TimelineStore.open(other) as restored:
            assert import_events(restored, export, batch_size=5).ok
            imported = ReadModel(str(folder / "imported.db"))
            imported.sync(restored, batch=3)
            imported.close()
        assert table_rows(str(folder / "imported.db")) == table_rows(read_db)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenario=scenarios(monotonic=True), days=st.lists(st.integers(0, 800), min_size=1, max_size=3)
)
def test_the_report_made_back_then_is_the_answer_known_at_then(scenario, days):
    """With record time moving forward, "as known at T" is what the model answered at T."""
    batches, steps = scenario
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clock = FakeClock(T0)
        with TimelineStore.open(str(folder / "events.db"), clock=clock) as store:
            model = ReadModel(str(folder / "read.db"))
            then: list[tuple[datetime, date, list, list, list]] = []
            for batch, step in zip(batches, steps, strict=True):
                clock.now = clock.now + timedelta(seconds=step)
                assert ingest_objects(store, batch).ok
                model.sync(store, batch=4)
                for offset in days:
                    day = START + timedelta(days=offset)
                    then.append(
                        (
                            clock.now,
                            day,
                            model.tasks_on(day),
                            model.fines_on(day),
                            [a.model_dump(mode="json") for a in alerts_on(model, day)],
                        )
                    )
            for moment, day, *_ in then:
                current = [
                    a.model_dump(mode="json") for a in alerts_on(model, day, known_at=moment)
                ]
                # Batches written at one moment: the last report made then is the answer.
                final = [x for x in then if x[0] == moment and x[1] == day][-1]
                assert model.tasks_on(day, known_at=moment) == final[2], (moment, day)
                assert model.fines_on(day, known_at=moment) == final[3], (moment, day)
                assert current == final[4], (moment, day)
            model.close()


def test_rows_that_do_not_change_are_kept_and_changes_are_listed(tmp_path, clock):
    """Another student's new fact leaves a row alone; `changes` names who changed, and when."""
    with TimelineStore.open(str(tmp_path / "e.db"), clock=clock) as store:
        model = ReadModel(str(tmp_path / "r.db"))
        first = [
            {
                "event_id": "a1",
                "student_id": "A",
                "type": "entered",
                "visa": "resident",
                "occurred_on": "2024-01-10",
            },
            {
                "event_id": "b1",
                "student_id": "B",
                "type": "entered",
                "visa": "resident",
                "occurred_on": "2024-01-10",
            },
        ]
        assert ingest_objects(store, first).ok
        model.sync(store)
        t1 = clock.now
        (task_a,) = model.db.execute(
            "SELECT known_from, known_until FROM rm_tasks WHERE student_id = 'A'"
        ).fetchall()
        assert task_a == (moment_text(t1), OPEN)
        t2 = clock.advance(hours=1)
        later = {
            "event_id": "r1",
            "student_id": "B",
            "type": "retracted",
            "retracts": "b1",
            "reason": "wrong student",
            "occurred_on": "2024-01-20",
        }
        assert ingest_objects(store, [later]).ok
        model.sync(store)
        # A's row untouched; B's changed at t2.
        assert model.db.execute(
            "SELECT known_from, known_until FROM rm_tasks WHERE student_id = 'A'"
        ).fetchall() == [task_a]
        assert [c["student_id"] for c in model.changes(t1)] == ["B"]
        assert model.changes(t1)[0]["last_changed_at"] == moment_text(t2)
        assert [c["student_id"] for c in model.changes(t1 - timedelta(seconds=1))] == ["A", "B"]
        assert model.changes(t2) == []
        before = model.tasks_on(date(2024, 3, 1), known_at=t1)
        assert before == model.tasks_on(date(2024, 3, 1), known_at=t2 - timedelta(microseconds=1))
        model.close()


def test_a_student_broken_then_mended_is_left_out_only_as_known_while_broken(tmp_path, clock):
    """The error row is versioned like the rows: left out as known at T1, back at T2."""
    from test_read_side_robustness import write_directly

    with TimelineStore.open(str(tmp_path / "e.db"), clock=clock) as store:
        t0 = clock.now
        entered = {
            "event_id": "in",
            "student_id": "FAR",
            "type": "entered",
            "visa": "resident",
            "occurred_on": "2024-03-01",
        }
        assert ingest_objects(store, [entered]).ok
        t1 = clock.advance(hours=1)
        arc = {"valid_until": date(9999, 12, 31), "application": "initial"}
        write_directly(store, "FAR", [("far-arc", "arc_issued", date(2024, 3, 10), arc)])
        t2 = clock.advance(hours=1)
        fix = {
            "event_id": "fix",
            "student_id": "FAR",
            "source": "manual",
            "type": "retracted",
            "retracts": "far-arc",
            "reason": "typo",
            "occurred_on": "2024-03-10",
        }
        assert ingest_objects(store, [fix]).ok
        model = ReadModel(str(tmp_path / "r.db"))
        model.sync(store, batch=1)
        day = date(2024, 5, 1)
        assert [e["student_id"] for e in model.errors(t1)] == ["FAR"]
        assert model.errors(t0) == model.errors(t2) == model.errors() == []
        assert model.tasks_on(day, known_at=t1) == []
        assert _task_rows(model.tasks_on(day, known_at=t0)) == _task_rows(model.tasks_on(day))
        assert model.tasks_on(day)  # the apply_arc task is back once the bad fact is retracted
        model.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), days=st.lists(st.integers(0, 800), min_size=1, max_size=3))
def test_a_fine_read_as_stored_is_the_text_the_query_would_build(scenario, days):
    """Fines settled by the day are read as stored: byte for byte what SQLite builds for them,
    every status filter, as known at every moment (ids that JSON must escape included)."""
    batches, steps = scenario
    odd = [
        [e | {k: f'{e[k]}-é"\\' for k in ("event_id", "retracts") if k in e} for e in b]
        for b in batches
    ]
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock(T0)
        with TimelineStore.open(str(Path(tmp) / "events.db"), clock=clock) as store:
            model = ReadModel(str(Path(tmp) / "read.db"))
            times = _write(store, clock, odd, steps, model, [5])
            asked = [
                (day, moment, statuses)
                for day in [START + timedelta(days=o) for o in days] + [date(2030, 1, 1)]
                for moment in _moments(times)
                for statuses in ([], ["accrued"], ["imposed"], ["paid"])
            ]
            # Each fine's first settled day and the day before, where a wrong day would show.
            for (settled_on,) in model.db.execute("SELECT DISTINCT settled_on FROM rm_fines"):
                first = date.fromisoformat(settled_on)
                asked += [(d, None, []) for d in (first - timedelta(days=1), first)]

            def answers() -> list[list[str]]:
                return [list(model.fine_rows(d, s, known_at=m)) for d, m, s in asked]

            stored = answers()
            # Every fine has a day from which it is settled (ids with a NUL would not).
            unsettled = "SELECT COUNT(*) FROM rm_fines WHERE settled_on IS NULL"
            assert model.db.execute(unsettled).fetchone()[0] == 0
            model.db.execute("UPDATE rm_fines SET settled_on = NULL")  # every text built
            assert answers() == stored
            model.close()
