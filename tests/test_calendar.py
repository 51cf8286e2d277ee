"""The calendar feed: iCalendar built with `icalendar`, as a subscribed calendar app sees it.

The builder is tested on facts (pure); the HTTP feed, the secret links, their audit and
the access log on a real uvicorn, on SQLite and PostgreSQL; the CLI through click.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from api_server import running
from click.testing import CliRunner
from conftest import FakeClock
from facts_builder import Timeline, d
from fastapi.testclient import TestClient
from icalendar import Calendar
from icalendar.parser import unescape_backslash
from web_client import FEED, STAFF, config, seed, web_app

from projections.engine import view
from projections.ics import FeedWording, clean_text, task_calendar, task_uid
from timeline.api import create_app
from timeline.audit import accesses
from timeline.calendar_links import TABLE, active_link, create_link, look_up, revoke_link
from timeline.cli import main
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore
from web.calendar_feed import WORDING

STAMP = datetime(2024, 6, 10, 1, 2, 3, tzinfo=UTC)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class CalendarApp:
    """A subscribed calendar app: each refresh replaces the feed, keyed by UID.

    An event whose SEQUENCE is lower than the one held is stale and ignored (RFC 5546);
    an event the feed no longer has is removed.
    """

    events: dict[str, tuple[int, str, date]] = field(default_factory=dict)
    added: int = 0
    updated: int = 0
    removed: int = 0

    def refresh(self, body: bytes) -> None:
        self.added = self.updated = self.removed = 0
        seen = {}
        for event in Calendar.from_ical(body).walk("VEVENT"):
            seen[str(event["UID"])] = (
                int(event["SEQUENCE"]),
                str(event["SUMMARY"]),
                event["DTSTART"].dt,
            )
        for uid, new in seen.items():
            old = self.events.get(uid)
            if old is None:
                self.added += 1
            elif new[0] < old[0]:
                raise AssertionError(f"SEQUENCE went down for {uid}: {old[0]} → {new[0]}")
            elif new != old:
                self.updated += 1
            self.events[uid] = new
        for uid in set(self.events) - set(seen):
            del self.events[uid]
            self.removed += 1


def _scenario() -> Timeline:
    t = Timeline("S1")
    t.add("entered", "2024-03-16", visa="resident")
    t.add("address_changed", "2024-03-20", address="Da'an, Taipei")
    return t


def _feed(t: Timeline, as_of: str, stamp: datetime = STAMP) -> bytes:
    v = view(t.facts, d(as_of), student_id=t.student_id)
    return task_calendar(v, WORDING, stamp=stamp, revision=len(t.facts)).to_ical()


def _events(body: bytes) -> list:
    return Calendar.from_ical(body).walk("VEVENT")


# -- the builder (pure) --------------------------------------------------------------------
def test_the_feed_parses_and_round_trips_with_icalendar() -> None:
    body = _feed(_scenario(), "2024-03-25")
    cal = Calendar.from_ical(body)
    assert Calendar.from_ical(cal.to_ical()) == cal
    assert cal.to_ical() == body
    assert str(cal["VERSION"]) == "2.0"
    assert str(cal["PRODID"]).startswith("-//residency-timeline//")
    assert str(cal["X-WR-CALNAME"]) == "居留應辦事項 S1 / Residency tasks S1"
    events = _events(body)
    assert [e["DTSTART"].dt for e in events] == [date(2024, 4, 15), date(2024, 4, 19)]
    first = events[0]
    # All-day: DATE values, the end the day after; DTSTAMP is the injected moment.
    assert b"DTSTART;VALUE=DATE:20240415" in body and b"DTEND;VALUE=DATE:20240416" in body
    assert first["DTEND"].dt == date(2024, 4, 16)
    assert first["DTSTAMP"].dt == STAMP
    assert str(first["SUMMARY"]) == "申請外僑居留證 / Apply for an ARC"
    assert str(first["LOCATION"]) == "線上申辦 / Online application"
    description = str(first["DESCRIPTION"])
    for line in (
        "開始日：2024-03-16",
        "期限：2024-04-15",
        "規費：NTD 1,000",
        "Opens: 2024-03-16",
        "Due: 2024-04-15",
        "Where: Online application",
        "Fee: NTD 1,000",
        "Documents: One application form; Passport and resident visa",
        "護照及居留簽證",
        "規則 Rule: R-ARC-ENTRY; 相關事件 Caused by: e1",
    ):
        assert line in description, line
    alarm = first.walk("VALARM")[0]
    assert alarm["TRIGGER"].dt == -timedelta(days=6, hours=15)  # 09:00 a week before
    assert "2024-04-15" in str(alarm["DESCRIPTION"])


def test_uids_are_stable_across_exports_and_a_done_task_is_removed() -> None:
    t = _scenario()
    app = CalendarApp()
    app.refresh(_feed(t, "2024-03-25"))
    assert app.added == 2
    uids = set(app.events)

    # Another day, another moment: the same events, updated in place (now overdue).
    app.refresh(_feed(t, "2024-04-17", STAMP + timedelta(days=23)))
    assert set(app.events) == uids
    assert (app.added, app.removed, app.updated) == (0, 0, 1)
    apply_uid = task_uid("S1", view(t.facts, d("2024-04-17")).tasks[0])
    assert app.events[apply_uid][1].startswith("已逾期：申請外僑居留證 / Overdue: Apply")

    # The ARC application is made: that task is done and leaves the calendar.
    t.add("arc_applied", "2024-04-17", application="initial")
    app.refresh(_feed(t, "2024-04-17"))
    assert (app.added, app.removed) == (0, 1)
    assert apply_uid not in app.events and set(app.events) == uids - {apply_uid}
    # Exports of the same facts on the same day are the same, bar DTSTAMP.
    again = _feed(t, "2024-04-17", STAMP + timedelta(hours=5))
    assert re.sub(rb"DTSTAMP:\S+", b"", again) == re.sub(
        rb"DTSTAMP:\S+", b"", _feed(t, "2024-04-17")
    )


def test_sequence_never_decreases_as_days_pass_and_facts_arrive() -> None:
    t = _scenario()
    app = CalendarApp()
    for day in ("2024-03-17", "2024-04-01", "2024-04-16", "2024-04-30"):
        app.refresh(_feed(t, day))  # raises if a SEQUENCE went down
    t.add("arc_applied", "2024-04-20", application="initial")
    t.add("arc_issued", "2024-05-02", valid_until="2025-03-31")
    for day in ("2024-05-03", "2024-12-31", "2025-04-01"):
        app.refresh(_feed(t, day))
        # The ARC application is done, so gone; every event now counts the 4 facts.
        assert app.events and not any("Apply for an ARC" in s for _, s, _ in app.events.values())
        assert min(seq for seq, _, _ in app.events.values()) >= 4 * 3


def test_a_task_without_a_deadline_sits_on_its_opening_day_without_a_reminder() -> None:
    t = _scenario()
    t.add("arc_applied", "2024-04-01", application="initial")
    t.add("arc_issued", "2024-04-20", valid_until="2025-03-31")
    t.add("arc_lost", "2024-06-01")
    events = {str(e["SUMMARY"]): e for e in _events(_feed(t, "2024-06-10"))}
    lost = events["外僑居留證遺失補發 (無法定期限) / Replace a lost ARC (no legal deadline)"]
    assert lost["DTSTART"].dt == date(2024, 6, 1)
    assert not lost.walk("VALARM")
    assert "期限：無法定期限" in str(lost["DESCRIPTION"])
    assert str(lost["LOCATION"]) == "移民署服務站 / NIA service center"
    # Done tasks (the ARC application) are absent; upcoming ones (the extension) present.
    assert not any("Apply for an ARC" in s for s in events)
    assert any("Extend the ARC" in s for s in events)


def test_hostile_text_is_escaped_and_control_characters_dropped() -> None:
    hostile_id = 'S,1;\\"<b>'
    t = Timeline(hostile_id)
    t.add("entered", "2024-03-16", visa="resident", note="a,b;c\\d\nEND:VCALENDAR")
    bell = {"zh": "申請,居留;證\x07\x00\u202e", "en": "Apply, now;\r\nBEGIN:VEVENT\x1b[31m"}
    wording = FeedWording({"apply_arc": bell}, WORDING.where_names, WORDING.labels)
    v = view(t.facts, d("2024-03-20"), student_id=hostile_id)
    body = task_calendar(v, wording, stamp=STAMP, revision=1).to_ical()

    text = body.decode()
    # No control character but the CRLF line ends; no injected component.
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202e]", text)
    lines = text.split("\r\n")
    assert [line for line in lines if line.startswith(("BEGIN:", "END:"))] == [
        "BEGIN:VCALENDAR",
        "BEGIN:VEVENT",
        "BEGIN:VALARM",
        "END:VALARM",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    assert "a,b;c" not in text  # notes are never exported
    assert 'X-WR-CALNAME:居留應辦事項 S\\,1\\;\\\\"<b>' in text
    assert "SUMMARY:申請\\,居留\\;證 / Apply\\, now\\;\\nBEGIN:VEVENT[31m" in text
    cal = Calendar.from_ical(body)
    assert Calendar.from_ical(cal.to_ical()) == cal
    event = cal.walk("VEVENT")[0]
    assert str(event["SUMMARY"]) == "申請,居留;證 / Apply, now;\nBEGIN:VEVENT[31m"
    # X- and NAME parse back as raw text (vUnknown): an app unescapes them as RFC 5545 says.
    assert unescape_backslash(str(cal["X-WR-CALNAME"])).endswith(f"tasks {hostile_id}")
    assert clean_text("a\tb\nc\x7f\x85d") == "a\tb\ncd"


def test_the_wording_must_name_every_label() -> None:
    with pytest.raises(ValueError, match="reminder"):
        FeedWording({}, {}, {k: v for k, v in WORDING.labels.items() if k != "reminder"})


# -- HTTP: the staff feed, the secret link, the audit, the log --------------------------------
ENTRY = {
    "event_id": "e1",
    "student_id": "S1",
    "type": "entered",
    "occurred_on": "2024-03-16",
    "visa": "resident",
}


@pytest.fixture
def served(location: str, tmp_path: Path) -> tuple[str, str, FakeClock]:
    """(base URL, store location, clock): the API on a real uvicorn, S1 entered."""
    clock = FakeClock(datetime(2024, 4, 15, 16, 30, tzinfo=UTC))  # 2024-04-16 00:30 in Taipei
    with TimelineStore.open(location, clock=clock) as store:
        assert not ingest_objects(store, [ENTRY]).rejected
    app = create_app(config(location, str(tmp_path / "read.db")), clock=clock)
    with running(app) as url:
        yield url, location, clock


def test_staff_feed_is_text_calendar_today_in_taipei_by_the_injected_clock(served) -> None:
    url, _, clock = served
    r = httpx.get(f"{url}/v1/students/S1/calendar.ics", headers=_h(STAFF))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/calendar; charset=utf-8"
    (event,) = _events(r.content)
    # Taipei's 2024-04-16 (UTC's day is still the 15th): the task is overdue.
    assert str(event["SUMMARY"]).startswith("已逾期：")
    assert event["DTSTAMP"].dt == clock.now
    on_time = httpx.get(
        f"{url}/v1/students/S1/calendar.ics", params={"as_of": "2024-04-15"}, headers=_h(STAFF)
    )
    (event,) = _events(on_time.content)
    assert str(event["SUMMARY"]) == "申請外僑居留證 / Apply for an ARC"


def test_staff_feed_needs_a_staff_token_and_says_what_is_wrong(served) -> None:
    url, _, _ = served
    feed = f"{url}/v1/students/S1/calendar.ics"
    assert httpx.get(feed).status_code == 401
    assert httpx.get(feed, headers=_h("not-a-token-at-all")).status_code == 401
    assert httpx.get(feed, headers=_h(FEED)).status_code == 403
    link = f"{url}/v1/students/S1/calendar-link"
    assert httpx.post(link).status_code == 401
    assert httpx.post(link, headers=_h(FEED)).status_code == 403
    assert httpx.delete(link, headers=_h(FEED)).status_code == 403
    bad = httpx.get(feed, params={"as_of": "2024-02-30"}, headers=_h(STAFF))
    assert bad.status_code == 400 and bad.json()["error"].startswith("as_of: ")
    unknown = httpx.get(f"{url}/v1/students/NOPE/calendar.ics", headers=_h(STAFF))
    assert unknown.status_code == 404 and "NOPE" in unknown.json()["error"]
    nobody = httpx.post(f"{url}/v1/students/NOPE/calendar-link", headers=_h(STAFF))
    assert nobody.status_code == 404
    assert httpx.delete(link, headers=_h(STAFF)).status_code == 404  # none made yet


def test_secret_link_works_without_a_token_until_rotated_or_revoked(served, caplog) -> None:
    url, location, clock = served
    caplog.set_level(logging.INFO, logger="timeline.access")
    made = httpx.post(f"{url}/v1/students/S1/calendar-link", headers=_h(STAFF))
    assert made.status_code == 201
    body = made.json()
    token = re.fullmatch(r"/calendar/([A-Za-z0-9_-]{43})\.ics", body["path"]).group(1)
    assert body["url"] == url + body["path"] and body["student_id"] == "S1"

    clock.advance(minutes=1)
    fetched = httpx.get(url + body["path"])  # no Authorization header
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "text/calendar; charset=utf-8"
    staff = httpx.get(f"{url}/v1/students/S1/calendar.ics", headers=_h(STAFF))
    assert _uids(fetched.content) == _uids(staff.content) != set()
    assert httpx.get(url + body["path"], params={"as_of": "2024-04-01"}).status_code == 200

    rotated = httpx.post(f"{url}/v1/students/S1/calendar-link", headers=_h(STAFF)).json()
    assert rotated["path"] != body["path"]
    old = httpx.get(url + body["path"])
    assert old.status_code == 410 and old.json() == {"error": "this calendar link was revoked"}
    assert httpx.get(url + rotated["path"]).status_code == 200
    assert httpx.delete(f"{url}/v1/students/S1/calendar-link", headers=_h(STAFF)).status_code == 204
    assert httpx.get(url + rotated["path"]).status_code == 410
    assert httpx.get(f"{url}/calendar/{'A' * 43}.ics").status_code == 404
    assert httpx.get(f"{url}/calendar/..%2F..%2Fetc.ics").status_code == 404

    # The secret never reaches a log line; the fetch is logged under `calendar-link`.
    lines = [r.getMessage() for r in caplog.records if r.name == "timeline.access"]
    assert any(
        line.startswith("GET /calendar/[redacted].ics 200 ") and "token=calendar-link" in line
        for line in lines
    )
    logged = "\n".join(lines)
    assert token not in logged and rotated["path"] not in logged

    # Only hashes are stored.
    with TimelineStore.open(location) as store:
        schema = store.recorder.datastore.schema if store.config.is_postgres else None
        table = f'"{schema}".{TABLE}' if schema else TABLE
        with store.recorder.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT * FROM {table}")
            stored = repr([tuple(r.values() if isinstance(r, dict) else r) for r in c.fetchall()])
    assert token not in stored and "S1" in stored


def _uids(body: bytes) -> set[str]:
    return {str(e["UID"]) for e in _events(body)}


def test_every_export_and_link_change_is_audited(served) -> None:
    url, location, clock = served
    httpx.get(f"{url}/v1/students/S1/calendar.ics", headers=_h(STAFF))
    clock.advance(minutes=1)
    path = httpx.post(f"{url}/v1/students/S1/calendar-link", headers=_h(STAFF)).json()["path"]
    clock.advance(minutes=1)
    httpx.get(url + path)
    httpx.get(f"{url}/calendar/{'B' * 43}.ics")  # unknown: no student, no row
    clock.advance(minutes=1)
    httpx.delete(f"{url}/v1/students/S1/calendar-link", headers=_h(STAFF))
    httpx.get(url + path)  # revoked: no row
    with TimelineStore.open(location) as store:
        rows, total = accesses(store)
    assert total == 4
    assert [(r.token_name, r.route, r.student_id) for r in reversed(rows)] == [
        ("alice", "GET /v1/students/{student_id}/calendar.ics", "S1"),
        ("alice", "POST /v1/students/{student_id}/calendar-link", "S1"),
        ("calendar-link", "GET /calendar/{token}.ics", "S1"),
        ("alice", "DELETE /v1/students/{student_id}/calendar-link", "S1"),
    ]
    assert rows[0].at == clock.now


def test_a_done_task_leaves_the_subscribed_calendar(served) -> None:
    url, _, _ = served
    path = httpx.post(f"{url}/v1/students/S1/calendar-link", headers=_h(STAFF)).json()["path"]
    app = CalendarApp()
    app.refresh(httpx.get(url + path, params={"as_of": "2024-04-01"}).content)
    assert app.added == 1
    applied = {**ENTRY, "event_id": "e2", "type": "arc_applied", "occurred_on": "2024-04-02"}
    del applied["visa"]
    applied["application"] = "initial"
    assert httpx.post(f"{url}/v1/events", json=applied, headers=_h(FEED)).status_code == 200
    app.refresh(httpx.get(url + path, params={"as_of": "2024-04-02"}).content)
    assert (app.removed, len(app.events)) == (1, 0)


# -- the link table on both backends -----------------------------------------------------
def test_link_table_keeps_one_active_link_per_student(location, clock) -> None:
    with TimelineStore.open(location, clock=clock) as store:
        assert look_up(store, "x" * 43).state == "unknown"
        assert look_up(store, "not a token!").state == "unknown"
        first = create_link(store, "S1", clock(), "alice")
        other = create_link(store, "S2", clock(), "alice")
        assert look_up(store, first).state == "active" and look_up(store, first).student_id == "S1"
        made = active_link(store, "S1")
        assert made is not None and made.created_at == clock.now and made.created_by == "alice"
        clock.advance(hours=1)
        second = create_link(store, "S1", clock(), "bob")
        assert look_up(store, first).state == "revoked"
        assert look_up(store, second).student_id == "S1"
        assert active_link(store, "S1").created_by == "bob"
        assert revoke_link(store, "S1", clock()) is True
        assert revoke_link(store, "S1", clock()) is False
        assert look_up(store, second).state == "revoked" and active_link(store, "S1") is None
        assert look_up(store, other).student_id == "S2"  # another student's link is untouched
        # The partial unique index: two active links for one student cannot be stored.
        schema = store.recorder.datastore.schema if store.config.is_postgres else None
        table, mark = (f'"{schema}".{TABLE}', "%s") if schema else (TABLE, "?")
        with (
            pytest.raises(Exception, match=r"(?i)unique|duplicate"),
            store.recorder.datastore.transaction(commit=True) as c,
        ):
            c.execute(
                f"INSERT INTO {table} (token_sha256, student_id, created_at, created_by) "
                f"VALUES ({mark}, {mark}, {mark}, {mark})",
                ("f" * 64, "S2", clock.now if schema else clock.now.isoformat(), "x"),
            )


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_writes_the_feed_and_manages_the_link(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    with TimelineStore.open(db) as store:
        assert not ingest_objects(store, [ENTRY]).rejected
    runner = CliRunner()
    out = runner.invoke(main, ["--db", db, "calendar", "S1", "--on", "2024-03-20"])
    assert out.exit_code == 0, out.output
    (event,) = _events(out.stdout_bytes)
    assert event["DTSTART"].dt == date(2024, 4, 15)

    target = tmp_path / "s1.ics"
    wrote = runner.invoke(main, ["--db", db, "calendar", "S1", "--on", "2024-03-20", "-o", target])
    assert wrote.exit_code == 0 and "Wrote 1 event(s)" in wrote.stderr
    assert _uids(target.read_bytes()) == _uids(out.stdout_bytes)
    assert target.stat().st_mode & 0o777 == 0o600

    made = runner.invoke(
        main, ["--db", db, "calendar", "S1", "--link", "--base-url", "https://t.example.edu/"]
    )
    assert made.exit_code == 0, made.output
    url = made.stdout.strip()
    token = re.fullmatch(r"https://t\.example\.edu/calendar/([A-Za-z0-9_-]{43})\.ics", url)[1]
    again = runner.invoke(main, ["--db", db, "calendar", "S1", "--link"])
    assert again.exit_code == 1 and "--rotate" in again.stderr and token not in again.output
    rotated = runner.invoke(main, ["--db", db, "calendar", "S1", "--rotate", "--json"])
    assert rotated.exit_code == 0 and rotated.stdout.count('"path": "/calendar/') == 1
    with TimelineStore.open(db) as store:
        assert look_up(store, token).state == "revoked"
    assert runner.invoke(main, ["--db", db, "calendar", "S1", "--revoke"]).exit_code == 0
    assert runner.invoke(main, ["--db", db, "calendar", "S1", "--revoke"]).exit_code == 1

    unknown = runner.invoke(main, ["--db", db, "calendar", "NOPE"])
    assert unknown.exit_code == 1 and "NOPE" in unknown.stderr
    for bad in (
        ["calendar", "S1", "--on", "2024-02-30"],
        ["calendar", "S1", "--link", "--on", "2024-03-20"],
        ["calendar", "S1", "--json"],
        ["calendar", "S1", "--link", "--base-url", "ftp://x"],
    ):
        result = runner.invoke(main, ["--db", db, *bad])
        assert result.exit_code == 2, bad


def test_the_staff_web_app_serves_the_secret_link_without_a_session(tmp_path: Path) -> None:
    clock = FakeClock()
    location = str(tmp_path / "t.db")
    seed(location, clock)
    client = TestClient(web_app(location, clock, str(tmp_path / "read.db")))
    made = client.post("/v1/students/S1/calendar-link", headers=_h(STAFF))
    assert made.status_code == 201
    fetched = TestClient(client.app).get(made.json()["path"])  # no cookie, no token
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "text/calendar; charset=utf-8"
    assert "Extend the ARC" in str(_events(fetched.content)[0]["SUMMARY"])
