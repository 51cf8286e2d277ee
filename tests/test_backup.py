"""Backup and restore: export then import changes no view, at any as-of and known-at."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import POSTGRES_URL, FakeClock, _postgres_location
from feed_examples import entered, jsonl

from projections.engine import view
from timeline.backup import export_events, import_events
from timeline.cli import main
from timeline.history import history_entries
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

FEED = Path(__file__).resolve().parent.parent / "examples" / "feed.jsonl"
AS_OF = [
    date(2023, 12, 31),
    date(2024, 3, 1),
    date(2024, 10, 1),
    date(2025, 6, 30),
    date(2027, 1, 1),
]


@contextmanager
def a_location(kind: str, tmp_path: Path, name: str) -> Iterator[str]:
    if kind == "sqlite":
        yield str(tmp_path / f"{name}.db")
        return
    if not POSTGRES_URL:
        pytest.skip("TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
    yield from _postgres_location()


def feed_lines() -> list[dict]:
    return [json.loads(line) for line in FEED.read_text("utf-8").splitlines() if line.strip()]


def fill(store: TimelineStore, clock: FakeClock) -> list[datetime]:
    """The example feed in chunks a day apart, then two retractions: the record moments."""
    moments = []
    lines = feed_lines()
    for start in range(0, len(lines), 12):
        clock.advance(days=1)
        report = ingest_objects(store, lines[start : start + 12])
        assert report.ok
        moments.append(clock.now)
    clock.advance(days=1)
    stored = [line for line in lines if line["type"] == "arc_applied"][:2]
    retractions = [
        {
            "event_id": f"fix-{n}",
            "source": line.get("source", "manual"),
            "student_id": line["student_id"],
            "type": "retracted",
            "occurred_on": line["occurred_on"],
            "retracts": line["event_id"],
            "reason": "keyed by mistake",
        }
        for n, line in enumerate(stored)
    ]
    assert ingest_objects(store, retractions).ok
    moments.append(clock.now)
    return moments


def students() -> list[str]:
    return sorted({line["student_id"] for line in feed_lines()})


def views(store: TimelineStore, moments: list[datetime]) -> dict:
    known = [None, *moments, *(m - timedelta(seconds=1) for m in moments)]
    out = {}
    for sid in students():
        stream = store.stream(sid)
        out[(sid, "history")] = history_entries(stream)
        for as_of in AS_OF:
            for moment in known:
                out[(sid, as_of, moment)] = view(stream, as_of, moment).model_dump(mode="json")
    return out


@pytest.mark.parametrize(
    ("source_kind", "target_kind"),
    [
        ("sqlite", "sqlite"),
        ("sqlite", "postgres"),
        ("postgres", "sqlite"),
        ("postgres", "postgres"),
    ],
)
def test_export_then_import_changes_no_view(tmp_path, source_kind, target_kind):
    clock = FakeClock()
    with ExitStack() as stack:
        src = stack.enter_context(a_location(source_kind, tmp_path, "src"))
        dst = stack.enter_context(a_location(target_kind, tmp_path, "dst"))
        source = stack.enter_context(TimelineStore.open(src, clock=clock))
        moments = fill(source, clock)
        buffer = io.BytesIO()
        exported = export_events(source, buffer, clock=clock)
        assert exported.events == len(feed_lines()) - 1 + 2  # one duplicate line, 2 retractions
        clock.advance(days=30)  # the restore happens later: record times must not move
        target = stack.enter_context(TimelineStore.open(dst, clock=clock))
        path = tmp_path / "backup.jsonl"
        path.write_bytes(buffer.getvalue())
        report = import_events(target, path, batch_size=7)
        assert report.ok and report.accepted == exported.events
        assert views(target, moments) == views(source, moments)


def test_import_twice_stores_nothing_more(tmp_path):
    clock = FakeClock()
    with TimelineStore.open(str(tmp_path / "a.db"), clock=clock) as source:
        fill(source, clock)
        buffer = io.BytesIO()
        export_events(source, buffer)
    path = tmp_path / "backup.jsonl"
    path.write_bytes(buffer.getvalue())
    with TimelineStore.open(str(tmp_path / "b.db"), clock=clock) as target:
        first = import_events(target, path)
        position = target.max_position()
        again = import_events(target, path)
        assert (again.accepted, again.duplicates) == (0, first.accepted)
        assert target.max_position() == position


def exported(tmp_path: Path, clock: FakeClock) -> bytes:
    """The export of a store filled by `fill`."""
    with TimelineStore.open(str(tmp_path / "a.db"), clock=clock) as source:
        fill(source, clock)
        buffer = io.BytesIO()
        export_events(source, buffer)
    return buffer.getvalue()


def test_a_truncated_backup_is_refused_and_restores_nothing(tmp_path):
    clock = FakeClock()
    buffer = io.BytesIO(exported(tmp_path, clock))
    lines = buffer.getvalue().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[: len(lines) // 2]))
    with TimelineStore.open(str(tmp_path / "b.db"), clock=clock) as target:
        report = import_events(target, cut)
        assert not report.ok
        assert "truncated" in report.rejected[-1].error
        assert target.max_position() == 0


def test_a_feed_file_is_not_mistaken_for_a_backup(tmp_path):
    with TimelineStore.open(str(tmp_path / "b.db")) as target:
        report = import_events(target, FEED)
        assert [r.error for r in report.rejected] == [
            "not a residency-timeline export (no header line)"
        ]
        assert target.max_position() == 0


def test_an_event_line_without_its_record_time_is_refused(tmp_path):
    clock = FakeClock()
    buffer = io.BytesIO(exported(tmp_path, clock))
    lines = buffer.getvalue().decode().splitlines()
    broken = json.loads(lines[3])
    broken["recorded_at"] = "2024-06-01T00:00:00"  # no offset: ambiguous
    lines[3] = json.dumps(broken)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with TimelineStore.open(str(tmp_path / "b.db")) as target:
        report = import_events(target, path)
        assert [(r.position, r.error) for r in report.rejected] == [
            (4, "recorded_at: must carry a UTC offset"),
            (len(lines), ALTERED),  # the line was edited
        ]
        assert target.max_position() == 0


ALTERED = "the export was altered or damaged: its lines do not match the end line's sha256"


def test_a_backup_with_an_edited_line_is_refused_and_restores_nothing(tmp_path):
    """The end line carries the sha256 of the lines before it (line ends aside)."""
    clock = FakeClock()
    buffer = io.BytesIO(exported(tmp_path, clock))
    lines = buffer.getvalue().decode().splitlines()
    edited = lines[:]
    event = json.loads(edited[2])
    event["occurred_on"] = (date.fromisoformat(event["occurred_on"]) + timedelta(1)).isoformat()
    edited[2] = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    assert edited[2] != lines[2]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(edited) + "\n")
    crlf = tmp_path / "crlf.jsonl"  # moved through another system: the same lines
    crlf.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    older = tmp_path / "older.jsonl"  # an export made before the end line had its sha256
    end = json.loads(lines[-1])
    del end["sha256"]
    older.write_text("\n".join([*lines[:-1], json.dumps(end)]) + "\n")
    with TimelineStore.open(str(tmp_path / "b.db"), clock=clock) as target:
        report = import_events(target, tampered)
        assert [(r.position, r.error) for r in report.rejected] == [(len(lines), ALTERED)]
        assert target.max_position() == 0
    for n, path in enumerate((crlf, older)):
        with TimelineStore.open(str(tmp_path / f"c{n}.db"), clock=clock) as target:
            report = import_events(target, path)
            assert report.ok and report.accepted == len(lines) - 2, report.as_json()


def test_an_incremental_export_completes_a_restored_full_one(tmp_path):
    clock = FakeClock()
    with TimelineStore.open(str(tmp_path / "a.db"), clock=clock) as source:
        moments = fill(source, clock)
        full, increment = io.BytesIO(), io.BytesIO()
        export_events(source, full)
        clock.advance(days=1)
        later = [
            {
                "event_id": "late-1",
                "source": "staff",
                "student_id": "S1001",
                "type": "departed",
                "occurred_on": "2025-07-01",
            }
        ]
        assert ingest_objects(source, later).ok
        moments.append(clock.now)
        export_events(source, increment, since=moments[-2])
        expected = views(source, moments)
    (tmp_path / "full.jsonl").write_bytes(full.getvalue())
    (tmp_path / "inc.jsonl").write_bytes(increment.getvalue())
    assert increment.getvalue().count(b"\n") == 3  # header, the one new event, trailer
    with TimelineStore.open(str(tmp_path / "b.db"), clock=clock) as target:
        assert import_events(target, tmp_path / "full.jsonl").ok
        assert import_events(target, tmp_path / "inc.jsonl").accepted == 1
        assert views(target, moments) == expected


def test_encrypted_store_round_trips_through_a_backup(tmp_path):
    from eventsourcing.cipher import AESCipher

    clock = FakeClock()
    key = AESCipher.create_key(32)
    with TimelineStore.open(str(tmp_path / "a.db"), cipher_key=key, clock=clock) as source:
        moments = fill(source, clock)
        buffer = io.BytesIO()
        export_events(source, buffer)
        expected = views(source, moments)
    path = tmp_path / "backup.jsonl"
    path.write_bytes(buffer.getvalue())
    other = AESCipher.create_key(32)
    with TimelineStore.open(str(tmp_path / "b.db"), cipher_key=other, clock=clock) as target:
        assert import_events(target, path).ok
        assert views(target, moments) == expected
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("b.db*"))
    assert b"University Rd" not in stored and b"P7712045" not in stored
    assert b"University Rd" in path.read_bytes()  # the backup itself is clear text


def test_cli_export_to_a_file_then_import(tmp_path):
    runner = CliRunner()
    src, dst = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    result = runner.invoke(main, ["--db", src, "ingest", str(FEED)])
    assert result.exit_code == 0, result.output
    backup = tmp_path / "backup.jsonl"
    result = runner.invoke(main, ["--db", src, "export", "-o", str(backup)])
    assert result.exit_code == 0, result.output
    assert oct(os.stat(backup).st_mode & 0o777) == "0o600"  # it holds personal data
    assert not list(tmp_path.glob(".*.partial"))
    result = runner.invoke(main, ["--db", dst, "import", str(backup)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] == 92
    first = runner.invoke(main, ["--db", src, "history", "S1002", "--json"]).stdout
    second = runner.invoke(main, ["--db", dst, "history", "S1002", "--json"]).stdout
    assert first == second


def test_export_to_a_fifo_or_through_a_symlink_writes_there_and_replaces_neither(tmp_path):
    """`-o` is atomic for a regular file; a FIFO (or `/dev/stdout`) is written as it is.

    The atomic rename replaced a FIFO by a regular file (its reader got nothing) and a
    symbolic link by a file of its own (as root, `-o /dev/stdout` replaced /dev/stdout).
    """
    import stat
    import threading

    runner = CliRunner()
    src = str(tmp_path / "a.db")
    assert runner.invoke(main, ["--db", src, "ingest", str(FEED)]).exit_code == 0
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = runner.invoke(main, ["--db", src, "export", "-o", str(fifo)])
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    lines = received[0].decode().splitlines()
    assert json.loads(lines[-1])["events"] == 92

    (tmp_path / "backups").mkdir()
    target = tmp_path / "backups" / "latest.jsonl"
    target.write_text("yesterday's\n")
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target)
    result = runner.invoke(main, ["--db", src, "export", "-o", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target
    assert json.loads(target.read_text().splitlines()[-1])["events"] == 92
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"
    assert not list(tmp_path.rglob(".*.partial"))


def test_an_export_that_cannot_be_written_in_full_leaves_no_partial_file_and_no_traceback(
    tmp_path,
):
    """A full disk (here: a file size limit) in the middle of `export -o`.

    It ended in an OSError traceback and left the half-written `.NAME.partial`, personal
    data in clear text, holding the space the disk lacked.
    """
    import resource
    import signal
    import subprocess
    import sys

    src = str(tmp_path / "a.db")
    feed = tmp_path / "feed.jsonl"
    feed.write_text(jsonl(*(entered(f"e{n}", student=f"S{n}") for n in range(1000))))
    assert CliRunner().invoke(main, ["--db", src, "ingest", str(feed)]).exit_code == 0
    backup = tmp_path / "backup.jsonl"
    backup.write_text("yesterday's\n")
    limit = 65536  # above the store's own files' writes (its -shm), below the export's size

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [str(Path(sys.executable).with_name("timeline")), "--db", src, "export", "-o", backup],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot write {backup}: File too large" in result.stderr
    assert not list(tmp_path.glob(".*.partial"))
    assert backup.read_text() == "yesterday's\n"


def test_an_interrupted_import_says_so_and_running_it_again_completes_it(tmp_path):
    """Ctrl-C during `import`: 'Aborted!' and exit 1 (the code of a refused backup)."""
    import signal
    import subprocess
    import sys
    import time

    timeline = str(Path(sys.executable).with_name("timeline"))
    src, dst = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    feed = tmp_path / "feed.jsonl"
    feed.write_text(jsonl(*(entered(f"e{n}", student=f"S{n}") for n in range(3000))))
    assert CliRunner().invoke(main, ["--db", src, "ingest", str(feed)]).exit_code == 0
    backup = tmp_path / "backup.jsonl"
    assert CliRunner().invoke(main, ["--db", src, "export", "-o", str(backup)]).exit_code == 0
    process = subprocess.Popen(
        [timeline, "--db", dst, "import", str(backup)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Once the store is created the signals are handled (they are, before it opens).
    while not os.path.exists(dst) and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert "Traceback" not in err and "Aborted" not in err
    if process.returncode == 130:  # stopped before its end: nothing, or whole batches
        assert json.loads(out)["interrupted"] is True
        assert "interrupted:" in err
    else:  # it had stored everything when the signal came
        assert process.returncode == 0, err
    again = CliRunner().invoke(main, ["--db", dst, "import", str(backup)])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["accepted"] + json.loads(again.stdout)["duplicates"] == 3000
    # The same events with the same record times (header and end line carry the moment).
    first, second = (
        CliRunner().invoke(main, ["--db", db, "export"]).stdout.splitlines()[1:-1]
        for db in (src, dst)
    )
    assert first == second


def test_a_dash_is_standard_output_for_export_and_standard_input_for_import(tmp_path):
    """`export -o -` wrote a file named '-' (a backup of personal data where nobody looks)
    and `import -` refused, or read that file instead of the pipe."""
    import subprocess
    import sys

    timeline = str(Path(sys.executable).with_name("timeline"))
    src, dst = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    assert CliRunner().invoke(main, ["--db", src, "ingest", str(FEED)]).exit_code == 0
    exported = subprocess.run(
        [timeline, "--db", src, "export", "-o", "-"], capture_output=True, cwd=tmp_path, timeout=60
    )
    assert exported.returncode == 0, exported.stderr
    assert not (tmp_path / "-").exists()
    assert json.loads(exported.stdout.splitlines()[-1])["events"] == 92
    imported = subprocess.run(
        [timeline, "--db", dst, "import", "-"],
        input=exported.stdout,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["accepted"] == 92


def test_an_export_after_the_last_ones_position_misses_no_event_committed_after_it(tmp_path):
    """An event stamped before an export but committed after it (a writer that waited for
    the SQLite lock, a long atomic ingest) was in neither the export nor the next
    `--since exported_at` one: the chain of incremental backups lost it. The log position
    in the header marks exactly what the export held."""
    clock = FakeClock()
    path = str(tmp_path / "a.db")
    with TimelineStore.open(path, clock=clock) as source:
        moments = fill(source, clock)
        full = io.BytesIO()
        export_events(source, full, clock=clock)
        header = json.loads(full.getvalue().splitlines()[0])
        slow = FakeClock(clock.now - timedelta(seconds=1))  # stamped before the export
        with TimelineStore.open(path, clock=slow) as writer:
            late = {
                "event_id": "late-1",
                "source": "staff",
                "student_id": "S1001",
                "type": "departed",
                "occurred_on": "2025-07-01",
            }
            assert ingest_objects(writer, [late]).ok
        moments.append(clock.now)
        by_time, by_position = io.BytesIO(), io.BytesIO()
        export_events(source, by_time, since=datetime.fromisoformat(header["exported_at"]))
        export_events(source, by_position, after=header["position"])
        expected = views(source, moments)
    assert b"late-1" not in by_time.getvalue()  # why --since cannot chain backups
    assert json.loads(by_position.getvalue().splitlines()[0])["after"] == header["position"]
    (tmp_path / "full.jsonl").write_bytes(full.getvalue())
    (tmp_path / "inc.jsonl").write_bytes(by_position.getvalue())
    with TimelineStore.open(str(tmp_path / "b.db"), clock=clock) as target:
        assert import_events(target, tmp_path / "full.jsonl").ok
        assert import_events(target, tmp_path / "inc.jsonl").accepted == 1
        assert views(target, moments) == expected


def test_cli_export_after_a_position_takes_only_the_later_events(tmp_path):
    runner = CliRunner()
    src = str(tmp_path / "a.db")
    assert runner.invoke(main, ["--db", src, "ingest", str(FEED)]).exit_code == 0
    full = runner.invoke(main, ["--db", src, "export"])
    position = json.loads(full.stdout.splitlines()[0])["position"]
    assert f"--after {position}" in full.stderr
    later = tmp_path / "later.jsonl"
    later.write_text(jsonl(entered("late-1", student="S9")))
    assert runner.invoke(main, ["--db", src, "ingest", str(later)]).exit_code == 0
    increment = runner.invoke(main, ["--db", src, "export", "--after", str(position)])
    assert increment.exit_code == 0, increment.output
    lines = increment.stdout.splitlines()
    assert [json.loads(line)["event_id"] for line in lines[1:-1]] == ["late-1"]
    refused = runner.invoke(main, ["--db", src, "export", "--after", "-1"])
    assert refused.exit_code == 2


def test_two_exports_to_one_file_at_once_each_write_their_own_partial_copy(tmp_path):
    """A cron job's export and an operator's, both `-o backup.jsonl`: they shared
    `.backup.jsonl.partial`, each truncating and renaming the other's copy, and the
    backup left (with exit 0) failed its sha256 at import. Here the other export's copy
    is in the folder while this one runs: it must be left alone."""
    runner = CliRunner()
    src = str(tmp_path / "a.db")
    assert runner.invoke(main, ["--db", src, "ingest", str(FEED)]).exit_code == 0
    other = tmp_path / ".backup.jsonl.partial"
    other.write_text("another export's lines so far\n")
    result = runner.invoke(main, ["--db", src, "export", "-o", str(tmp_path / "backup.jsonl")])
    assert result.exit_code == 0, result.output
    assert other.read_text() == "another export's lines so far\n"
    assert json.loads((tmp_path / "backup.jsonl").read_text().splitlines()[-1])["events"] == 92
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".backup.jsonl.partial"]
