"""The rebuild's snapshot pass makes the tables the follower makes, and hands over to it.

A rebuild reads the log stream by stream and derives each student's versions once; the
follower applies the log notification by notification. Both must give the same rows and
intervals for any log (several record times per student, the clock stepping back, broken
students, retractions that mend them), and a follower in another process must neither lose
nor double anything when a rebuild swaps the tables under it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bitemporal_readmodel import table_rows
from test_read_side_robustness import populate, write_directly

from projections.engine import _Task
from projections.readmodel import OPEN, ReadModel, _cited, _task_cited
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

DAY = date(2024, 5, 1)
TIMELINE = str(Path(sys.executable).with_name("timeline"))


def rebuilt_rows(store: TimelineStore, path: Path) -> dict[str, list[tuple]]:
    """The tables a clean rebuild of the whole log makes into a fresh file."""
    clean = ReadModel(path)
    clean.rebuild(store)
    clean.close()
    return table_rows(str(path))


def entered(student: str, event_id: str, on: str) -> dict:
    return {
        "event_id": event_id,
        "student_id": student,
        "type": "entered",
        "visa": "resident",
        "occurred_on": on,
    }


def write_history(store: TimelineStore, clock: FakeClock) -> None:
    """Students with several versions: later batches, a clock step back, broken and mended."""
    populate(store)  # OK1, OK2 healthy; FAR, ANCIENT, BUG broken
    clock.advance(hours=1)
    arc = {
        "event_id": "ok1-arc",
        "student_id": "OK1",
        "type": "arc_issued",
        "occurred_on": "2024-04-01",
        "valid_until": "2025-03-31",
        "application": "initial",
    }
    assert ingest_objects(store, [arc, entered("NEW", "new-in", "2024-02-01")]).ok
    clock.advance(minutes=-30)  # a second writer whose clock is behind: record order differs
    left = {
        "event_id": "ok2-out",
        "student_id": "OK2",
        "type": "departed",
        "occurred_on": "2024-04-10",
    }
    assert ingest_objects(store, [left]).ok
    clock.advance(hours=2)
    mend = {
        "event_id": "mend",
        "student_id": "FAR",
        "source": "manual",
        "type": "retracted",
        "retracts": "far-arc",
        "reason": "typo",
        "occurred_on": "2024-03-10",
    }
    oops = {
        "event_id": "oops",
        "student_id": "NEW",
        "type": "retracted",
        "retracts": "new-in",
        "reason": "wrong student",
        "occurred_on": "2024-02-01",
    }
    assert ingest_objects(store, [mend, oops]).ok
    clock.advance(hours=1)
    arc = {"valid_until": date(9999, 12, 31), "application": "initial"}
    write_directly(store, "OK1", [("ok1-far", "arc_issued", date(2024, 4, 2), arc)])


def test_rebuild_makes_the_rows_and_intervals_the_follower_makes(location, tmp_path, clock):
    with TimelineStore.open(location, clock=clock) as store:
        write_history(store, clock)
        for batch in (1, 3):
            followed = ReadModel(tmp_path / f"followed-{batch}.db")
            followed.sync(store, batch=batch)
            followed.close()
        rebuilt = ReadModel(tmp_path / "rebuilt.db")
        report = rebuilt.rebuild(store)
        assert report.position == store.max_position()
        assert report.students == 6
        assert report.failed == 3  # ANCIENT and BUG, and OK1 broken by its last fact
        errors = rebuilt.errors()
        rebuilt.close()
    expected = table_rows(str(tmp_path / "followed-1.db"))
    assert expected == table_rows(str(tmp_path / "followed-3.db"))
    assert table_rows(str(tmp_path / "rebuilt.db")) == expected
    # The scenario has what makes a rebuild differ from one derivation per student.
    closed = [r for r in expected["rm_tasks"] if r[-1] != OPEN]
    assert closed, "some rows were believed for a while only"
    assert len({r[0] for r in expected["rm_errors"]}) == 4  # FAR broken then mended
    assert [e["student_id"] for e in errors] == ["ANCIENT", "BUG", "OK1"]
    assert {e["position"] for e in errors} == {report.position}


def test_a_rebuild_follows_what_was_written_after_its_snapshot(tmp_path, clock):
    """Events after the snapshot's position are followed; the tables equal a clean rebuild."""
    with TimelineStore.open(str(tmp_path / "e.db"), clock=clock) as store:
        assert ingest_objects(
            store, [entered(f"S{n}", f"in{n}", "2024-03-01") for n in range(5)]
        ).ok
        model = ReadModel(tmp_path / "read.db")
        written = []

        def write_meanwhile(done: int, total: int) -> None:
            if not written:  # once, while the snapshot pass ends
                clock.advance(hours=1)
                written.append(ingest_objects(store, [entered("LATE", "late", "2024-03-02")]))

        report = model.rebuild(store, on_progress=write_meanwhile)
        assert written and written[0].ok
        assert report.position == store.max_position()
        assert "LATE" in {t["student_id"] for t in model.tasks_on(DAY)}
        model.close()
        clean = rebuilt_rows(store, tmp_path / "clean.db")
    assert table_rows(str(tmp_path / "read.db")) == clean


def test_a_follower_sharing_the_file_loses_nothing_when_a_rebuild_swaps_the_tables(tmp_path, clock):
    """Another follower of the same file follows before, during and after a rebuild's swap.

    The swap moves the tracking position back to the snapshot's: the other follower has
    already read the events after it, and must derive them again rather than skip them.
    """
    with TimelineStore.open(str(tmp_path / "e.db"), clock=clock) as store:
        assert ingest_objects(
            store, [entered(f"S{n}", f"in{n}", "2024-03-01") for n in range(4)]
        ).ok
        read_db = tmp_path / "read.db"
        other = ReadModel(read_db)
        other.sync(store)
        rebuilding = ReadModel(read_db)
        snapshot = store.max_position()  # what the rebuild's pass will read
        calls: list[tuple[int, int]] = []

        def interleave(done: int, total: int) -> None:
            calls.append((done, total))
            if len(calls) == 1:  # during the snapshot pass
                clock.advance(hours=1)
                arcs = [
                    {
                        "event_id": f"arc{n}",
                        "student_id": f"S{n}",
                        "type": "arc_issued",
                        "occurred_on": "2024-03-20",
                        "valid_until": "2025-03-31",
                        "application": "initial",
                    }
                    for n in range(4)
                ]
                assert ingest_objects(store, arcs).ok
                other.sync(store)  # onto the old tables, past the snapshot
            elif total > snapshot and len([c for c in calls if c[1] > snapshot]) == 1:
                # After the swap the rebuild followed one event past its snapshot: the
                # other follower takes over the rest, having read them all before.
                assert rebuilding.position == snapshot + 1
                other.sync(store)

        rebuilding.rebuild(store, batch=1, on_progress=interleave)
        assert [c for c in calls if c[1] > snapshot], "the rebuild followed after its swap"
        assert other.sync(store).position == rebuilding.position == store.max_position()
        other.close()
        rebuilding.close()
        clean = rebuilt_rows(store, tmp_path / "clean.db")
    assert table_rows(str(read_db)) == clean


def test_a_rebuild_replaces_tables_of_other_rules_and_keeps_nothing_of_them(tmp_path, clock):
    with TimelineStore.open(str(tmp_path / "e.db"), clock=clock) as store:
        assert ingest_objects(store, [entered("A", "a", "2024-03-01")]).ok
        old = ReadModel(tmp_path / "read.db", fingerprint="other rules")
        old.sync(store)
        old.db.execute("INSERT INTO rm_changes VALUES ('GHOST', '2000-01-01')")
        old.db.conn.commit()
        old.close()
        model = ReadModel(tmp_path / "read.db")
        model.rebuild(store)
        assert [c["student_id"] for c in model.changes(clock.now - timedelta(days=1))] == ["A"]
        model.close()


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.text(max_size=12), max_size=4),
    days=st.lists(st.integers(-3, 3), min_size=4, max_size=4),
)
def test_cited_text_is_exactly_what_json_dumps_gives(ids, days):
    """`_cited` builds its JSON by hand for speed: the stored text must not change."""
    listed_from = date(2024, 5, 1)
    pairs = [(e, listed_from + timedelta(days=d)) for e, d in zip(ids, days, strict=False)]
    if any(day > listed_from for _, day in pairs):
        expected = json.dumps([[e, day.isoformat()] for e, day in pairs])
    else:
        expected = json.dumps([e for e, _ in pairs])
    assert _cited(pairs, listed_from) == expected


@settings(max_examples=300, deadline=None)
@given(
    triggers=st.lists(st.text(max_size=8), min_size=1, max_size=3),
    done_by=st.lists(st.text(max_size=8), max_size=2),
    done=st.one_of(st.none(), st.integers(-2, 3)),
    effective=st.lists(st.integers(-2, 3), max_size=3),
)
def test_task_cited_short_cuts_give_the_general_text(triggers, done_by, done, effective):
    """`_task_cited`'s short cuts (no late triggers; completions) equal `_cited` of `cited()`."""
    trigger_on = date(2024, 5, 1)
    task = _Task("apply_arc", "R-ARC-ENTRY", trigger_on, trigger_on, None, list(triggers))
    task.done_by = list(done_by)
    task.done_on = None if done is None else trigger_on + timedelta(days=done)
    task.effective = {
        e: trigger_on + timedelta(days=d) for e, d in zip(triggers, effective, strict=False)
    }
    assert _task_cited(task) == _cited(task.cited(), trigger_on)


def test_progress_bar_is_drawn_only_once_the_work_has_taken_its_delay():
    from rich.console import Console

    from timeline.cli import progress_bar

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    now = [0.0]
    with progress_bar(
        "following the log", after=1.0, start=100, console=console, clock=lambda: now[0]
    ) as on_progress:
        assert on_progress is not None
        on_progress(150, 300)
        assert screen.getvalue() == ""  # half a second of work: nothing drawn
        now[0] = 1.5
        on_progress(200, 300)
        drawn = screen.getvalue()
    assert "following the log" in drawn
    assert "100/200" in drawn  # counted from where this sync started


def test_progress_bar_is_never_drawn_off_a_terminal():
    from rich.console import Console

    from timeline.cli import progress_bar

    screen = io.StringIO()
    with progress_bar("rebuilding", console=Console(file=screen)) as on_progress:
        assert on_progress is None
    assert screen.getvalue() == ""


def run_on_terminal(args: list[str]) -> tuple[int, str, bytes]:
    """Run the CLI with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    import pty

    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([TIMELINE, *args], stdout=subprocess.PIPE, stderr=terminal, env=env)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    stdout, _ = process.communicate(timeout=60)
    os.close(controller)
    return process.returncode, stdout.decode(), shown


def test_cli_rebuild_draws_its_bar_on_a_terminal_and_nothing_into_a_pipe(tmp_path, clock):
    db = str(tmp_path / "e.db")
    with TimelineStore.open(db, clock=clock) as store:
        assert ingest_objects(
            store, [entered(f"S{n}", f"in{n}", "2024-03-01") for n in range(30)]
        ).ok
    code, stdout, shown = run_on_terminal(["--db", db, "rebuild"])
    assert code == 0
    assert json.loads(stdout)["position"] == 60
    assert b"rebuilding" in shown
    piped = subprocess.run(
        [TIMELINE, "--db", db, "rebuild"], capture_output=True, text=True, check=False
    )
    assert piped.returncode == 0
    assert json.loads(piped.stdout)["position"] == 60
    assert piped.stderr == ""  # no bar, no escape codes in a pipe


def test_an_empty_read_model_is_filled_by_the_snapshot_pass_when_asked(tmp_path, clock):
    with TimelineStore.open(str(tmp_path / "e.db"), clock=clock) as store:
        assert ingest_objects(
            store, [entered(f"S{n}", f"in{n}", "2024-03-01") for n in range(6)]
        ).ok
        snapshot = ReadModel(tmp_path / "snapshot.db")
        snapshot.sync(store, batch=1, rebuild_if_empty=True)
        followed = ReadModel(tmp_path / "followed.db")
        followed.sync(store, batch=1)
        # The pass applies everyone at once, at its snapshot's position; following, batch by batch.
        positions = "SELECT DISTINCT position FROM rm_students"
        assert snapshot.db.execute(positions).fetchall() == [(store.max_position(),)]
        assert len(followed.db.execute(positions).fetchall()) == 6
        snapshot.close()
        followed.close()
    assert table_rows(str(tmp_path / "snapshot.db")) == table_rows(str(tmp_path / "followed.db"))


def test_filling_empty_tables_keeps_what_another_process_filled_further_meanwhile(tmp_path, clock):
    """Every process of a new deployment finds the tables empty and fills them by the
    snapshot pass. One that swapped its pass in and followed on must not be taken back in
    time by a slower one's older pass (found by three followers of one file: the tables
    went back from the log's end to an early position until the slow one caught up)."""
    read_db = tmp_path / "read.db"
    with TimelineStore.open(str(tmp_path / "e.db"), clock=clock) as store:
        assert ingest_objects(
            store, [entered(f"S{n}", f"in{n}", "2024-03-01") for n in range(4)]
        ).ok
        slow, fast = ReadModel(read_db), ReadModel(read_db)
        stage = slow._stage
        seen: list[int] = []

        def the_other_fills_further_meanwhile(*args: object) -> object:
            staged = stage(*args)  # type: ignore[arg-type]
            clock.advance(hours=1)
            assert ingest_objects(store, [entered("LATE", "late", "2024-03-02")]).ok
            fast.sync(store, rebuild_if_empty=True)
            seen.append(fast.position)
            return staged

        slow._stage = the_other_fills_further_meanwhile  # type: ignore[method-assign]
        slow_sync = slow.sync

        def watched_sync(*args: object, **kwargs: object) -> object:
            if not kwargs.get("rebuild_if_empty"):  # the catch-up right after the swap
                seen.append(slow.position)
            return slow_sync(*args, **kwargs)  # type: ignore[arg-type]

        slow.sync = watched_sync  # type: ignore[method-assign]
        slow.sync(store, rebuild_if_empty=True)
        assert seen == [store.max_position()] * 2  # never back to the slow pass's position
        slow.close()
        fast.close()
        clean = rebuilt_rows(store, tmp_path / "clean.db")
    assert table_rows(str(read_db)) == clean


def test_streams_of_reads_each_stream_as_stream_does(store, clock):
    """The follower reads the streams it has not cached together: the same facts, in order."""
    write_history(store, clock)
    ids = ["OK1", "OK2", "FAR", "ANCIENT", "BUG", "NEW"]
    by_uuid = {s.uuid: s for s in store.streams()}
    wanted = [u for u, s in by_uuid.items() if s.student_id in ids] + ["0" * 32]  # one unknown
    read = list(store.streams_of(wanted, chunk=2))
    assert sorted(s.student_id for s in read) == sorted(ids)
    for stream in read:
        assert stream.facts == store.stream(stream.student_id)
        assert stream.version == by_uuid[stream.uuid].version
