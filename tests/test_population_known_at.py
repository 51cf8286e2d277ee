"""The population surfaces (CLI and HTTP): `known_at`, `changed_since`, paging and counts.

The scenario: S1 and S2 enter on 2024-03-16 (recorded at T1); at T2 S1's entry is
retracted and S3 enters. On 2024-05-01, as known at T1, S1 and S2 were overdue with their
ARC application; as known now, S2 and S3 are.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import httpx
from api_server import running
from feed_examples import retraction
from test_api_fuzz import ENV, STAFF_H
from test_read_side_robustness import run_cli

from projections.engine import view
from projections.readmodel import ReadModel
from timeline.api import KNOWN_AT, NEXT_OFFSET, TOTAL_COUNT, create_app
from timeline.api_settings import ApiConfig
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

DAY = "2024-05-01"


def _entered(event_id: str, student: str) -> dict:
    return {
        "event_id": event_id,
        "student_id": student,
        "type": "entered",
        "occurred_on": "2024-03-16",
        "visa": "resident",
    }


def populate(store: TimelineStore, clock) -> tuple:
    """Two moments of knowledge; returns (T1, T2)."""
    t1 = clock.now
    assert ingest_objects(store, [_entered("e1", "S1"), _entered("e2", "S2")]).ok
    t2 = clock.advance(hours=2)
    assert ingest_objects(store, [retraction("r1", "e1", student="S1"), _entered("e3", "S3")]).ok
    return t1, t2


def _students(rows: list[dict]) -> list[str]:
    return sorted({row["student_id"] for row in rows})


def _expected_tasks(store: TimelineStore, known_at) -> list[dict]:
    out = []
    for sid in ("S1", "S2", "S3"):
        v = view(store.stream(sid), date.fromisoformat(DAY), known_at, student_id=sid)
        out += [t | {"student_id": sid} for t in v.model_dump(mode="json")["tasks"]]
    return sorted(out, key=lambda t: (t["student_id"], t["kind"]))


def _comparable(rows: list[dict]) -> list[dict]:
    keep = ("student_id", "kind", "status", "opens_on", "due_on", "done_on", "rule", "caused_by")
    return sorted(
        ({k: r[k] for k in keep} for r in rows), key=lambda t: (t["student_id"], t["kind"])
    )


def test_cli_tasks_known_at_answers_what_show_known_at_answers(tmp_path, clock):
    location = str(tmp_path / "timeline.db")
    with TimelineStore.open(location, clock=clock) as store:
        t1, _ = populate(store, clock)
        then_expected = _comparable(_expected_tasks(store, t1))
        now_expected = _comparable(_expected_tasks(store, None))
    then = run_cli(
        "tasks", "--as-of", DAY, "--known-at", t1.isoformat(), "--json", location=location
    )
    assert then.returncode == 0, then.stderr
    now = run_cli("tasks", "--as-of", DAY, "--json", location=location)
    assert _comparable(json.loads(then.stdout)) == then_expected
    assert _comparable(json.loads(now.stdout)) == now_expected
    assert _students(json.loads(then.stdout)) == ["S1", "S2"]
    assert _students(json.loads(now.stdout)) == ["S2", "S3"]
    # Paging walks the same list; --count counts it.
    full = json.loads(now.stdout)
    pages = []
    for offset in range(0, len(full) + 1):
        page = run_cli(
            "tasks",
            "--as-of",
            DAY,
            "--json",
            "--limit",
            "1",
            "--offset",
            str(offset),
            location=location,
        )
        pages += json.loads(page.stdout)
    assert pages == full
    count = run_cli("tasks", "--as-of", DAY, "--count", location=location)
    assert int(count.stdout) == len(full)
    changed = run_cli(
        "changes", "--since", (t1 + timedelta(minutes=1)).isoformat(), "--json", location=location
    )
    assert [r["student_id"] for r in json.loads(changed.stdout)] == ["S1", "S3"]
    bad = run_cli("alerts", "--on", DAY, "--known-at", t1.isoformat(), "--emit", location=location)
    assert bad.returncode == 2


def test_cli_changed_since_keeps_only_the_students_that_changed(tmp_path, clock):
    location = str(tmp_path / "timeline.db")
    with TimelineStore.open(location, clock=clock) as store:
        t1, _ = populate(store, clock)
    result = run_cli(
        "tasks",
        "--as-of",
        DAY,
        "--json",
        "--changed-since",
        (t1 + timedelta(minutes=1)).isoformat(),
        location=location,
    )
    assert _students(json.loads(result.stdout)) == ["S3"]  # S1 changed too, to no task


def test_api_known_at_paging_count_and_changes(store, location, clock, tmp_path):
    t1, _ = populate(store, clock)
    read_db = str(tmp_path / "read.db")
    app = create_app(ApiConfig.from_env(ENV, location, read_db))
    with running(app) as base:
        get = lambda route: httpx.get(base + route, headers=STAFF_H)  # noqa: E731
        now = get(f"/v1/tasks?as_of={DAY}")
        assert now.status_code == 200
        assert _students(now.json()) == ["S2", "S3"]
        then = get(f"/v1/tasks?as_of={DAY}&known_at={t1.isoformat().replace('+', '%2B')}")
        assert _comparable(then.json()) == _comparable(_expected_tasks(store, t1))
        assert _students(then.json()) == ["S1", "S2"]
        first = get(f"/v1/tasks?as_of={DAY}&limit=1&count=true")
        assert first.headers[TOTAL_COUNT] == str(len(now.json()))
        assert first.headers[NEXT_OFFSET] == "1"
        assert first.json() == now.json()[:1]
        rest = get(f"/v1/tasks?as_of={DAY}&limit=100&offset=1")
        assert NEXT_OFFSET not in rest.headers
        assert first.json() + rest.json() == now.json()
        fines_then = get(
            f"/v1/fines?as_of=2024-12-31&known_at={t1.isoformat().replace('+', '%2B')}"
        )
        assert fines_then.headers[KNOWN_AT] == t1.isoformat(timespec="microseconds")
        fines_now = get("/v1/fines?as_of=2024-12-31")
        assert fines_then.status_code == fines_now.status_code == 200
        model = ReadModel(read_db)
        assert fines_then.json() == model.fines_on(date(2024, 12, 31), known_at=t1)
        assert fines_now.json() == model.fines_on(date(2024, 12, 31))
        assert _students(fines_then.json()) == ["S1", "S2"]
        assert _students(fines_now.json()) == ["S2", "S3"]
        model.close()
        alerts_then = get(f"/v1/alerts?on=2024-04-16&known_at={t1.isoformat().replace('+', '%2B')}")
        alerts_now = get("/v1/alerts?on=2024-04-16")
        assert {a["student_id"] for a in alerts_then.json()} == {"S1", "S2"}
        assert {a["student_id"] for a in alerts_now.json()} == {"S2", "S3"}
        since = (t1 + timedelta(minutes=1)).isoformat().replace("+", "%2B")
        changes = get(f"/v1/changes?since={since}")
        assert [r["student_id"] for r in changes.json()] == ["S1", "S3"]
        assert get("/v1/changes").status_code == 400
        assert get(f"/v1/tasks?as_of={DAY}&limit=-1").status_code == 400
        assert get(f"/v1/tasks?as_of={DAY}&known_at=yesterday").status_code == 400


def test_whole_task_lists_sorted_in_python_or_by_sqlite_come_in_the_same_order(
    tmp_path, clock, monkeypatch
):
    """A whole list sorted here (short) and one sorted by SQLite (past `SORT_HERE`, or
    paged) are the same rows in the same (student, number) order, non-ASCII ids included."""
    import projections.readmodel as readmodel

    location = str(tmp_path / "timeline.db")
    # Ids whose UTF-8 byte order and code point order must agree with SQLite's BINARY
    # collation: ASCII, Latin-1, CJK, an astral character, and digits of unequal length.
    students = ["S10", "S9", "Sé", "S學", "S\U0001f600", "s1", "S1"]
    with TimelineStore.open(location, clock=clock) as store:
        feed = [_entered(f"e{i}", sid) for i, sid in enumerate(students)]
        feed += [
            {
                "event_id": f"a{i}",
                "student_id": sid,
                "type": "address_changed",
                "occurred_on": "2024-03-20",
                "address": "Taipei",
            }
            for i, sid in enumerate(students)
        ]
        assert ingest_objects(store, feed).ok
        model = ReadModel(tmp_path / "read.db")
        model.rebuild(store)
    day = date.fromisoformat(DAY)
    for statuses in ([], ["overdue"], ["open", "overdue"]):
        here = list(model.task_rows(day, statuses))
        paged = [
            d
            for start in range(0, 40, 3)
            for d in model.task_rows(day, statuses, limit=3, offset=start)
        ]
        monkeypatch.setattr(readmodel, "SORT_HERE", 2)
        by_sqlite = list(model.task_rows(day, statuses))
        monkeypatch.undo()
        assert len(here) > 2 and here == by_sqlite == paged, statuses
        keys = [(json.loads(d)["student_id"]) for d in here]
        assert keys == sorted(keys, key=lambda s: s.encode())
    model.close()


def test_cli_paging_past_sqlite_integers_is_a_usage_error_not_a_traceback(tmp_path, clock):
    location = str(tmp_path / "timeline.db")
    with TimelineStore.open(location, clock=clock) as store:
        populate(store, clock)
    huge = str(10**30)  # SQLite's integers end at 2**63 - 1: the query raised OverflowError
    for command in ("tasks", "fines"):
        for option in ("--limit", "--offset"):
            result = run_cli(command, "--as-of", DAY, option, huge, "--json", location=location)
            assert result.returncode == 2, result.stderr
            assert option in result.stderr and "Traceback" not in result.stderr
    largest = run_cli(
        "tasks", "--as-of", DAY, "--json", "--limit", str(2**63 - 1), location=location
    )
    assert largest.returncode == 0, largest.stderr
    assert _students(json.loads(largest.stdout)) == ["S2", "S3"]


def test_api_a_page_of_no_rows_points_at_no_next_page(store, location, clock, tmp_path):
    """limit=0 (the count alone) answered X-Next-Offset equal to the offset asked for: a
    client following it asked for the same empty page for ever."""
    populate(store, clock)
    app = create_app(ApiConfig.from_env(ENV, location, str(tmp_path / "read.db")))
    with running(app) as base:
        for route in ("tasks", "fines"):
            answer = httpx.get(
                f"{base}/v1/{route}?as_of=2024-12-31&limit=0&offset=0&count=true",
                headers=STAFF_H,
            )
            assert answer.status_code == 200
            assert answer.json() == [] and int(answer.headers[TOTAL_COUNT]) > 0
            assert NEXT_OFFSET not in answer.headers


def test_api_pages_followed_by_link_make_one_list_while_the_log_grows(store, location, clock):
    """Paging by offset "as known now" skipped or repeated rows when events landed between
    pages; the `Link` of a page pins the day and the moment its list holds at."""
    populate(store, clock)
    app = create_app(ApiConfig.from_env(ENV, location, None), clock=clock)
    with running(app) as base:
        first = httpx.get(f"{base}/v1/tasks", params={"limit": 1}, headers=STAFF_H)
        whole = httpx.get(f"{base}/v1/tasks", headers=STAFF_H).json()
        clock.advance(hours=1)
        # Meanwhile a student who sorts first arrives, and S2 leaves the list.
        assert ingest_objects(
            store, [_entered("e0", "S0"), retraction("r2", "e2", student="S2")]
        ).ok
        pages, answer = [first.json()], first
        while "Link" in answer.headers:
            link = answer.headers["Link"]
            assert link.endswith('>; rel="next"') and link.startswith("</v1/tasks?")
            answer = httpx.get(base + link[1 : -len('>; rel="next"')], headers=STAFF_H)
            assert answer.status_code == 200
            assert answer.headers[KNOWN_AT] == first.headers[KNOWN_AT]
            pages.append(answer.json())
        assert [row for page in pages for row in page] == whole
        now = httpx.get(f"{base}/v1/tasks", headers=STAFF_H).json()
        assert "S0" in _students(now) and "S2" not in _students(now)  # the log did grow
