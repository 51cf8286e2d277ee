"""The staff web app's pages through FastAPI's TestClient: sessions, CSRF, language, the
student page, the lists and their CSV, escaping of hostile ids and notes, the API docs."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import FakeClock
from fastapi.testclient import TestClient
from web_client import (
    ADMIN,
    FEED,
    HOSTILE_ID,
    SECRET,
    STAFF,
    config,
    csrf_of,
    ev,
    login_form,
    seed,
    signed_in,
    web_app,
)

from timeline.api_settings import ApiConfig, ApiConfigError
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore
from web.app import create_app
from web.session import SESSION_COOKIE
from web.settings import WebSettings


@pytest.fixture
def location(tmp_path: Path, clock: FakeClock) -> str:
    """A seeded SQLite store (the pages do not depend on the backend; the audit tests do)."""
    path = str(tmp_path / "timeline.db")
    seed(path, clock)
    return path


@pytest.fixture
def app(location: str, clock: FakeClock):
    return web_app(location, clock)


@pytest.fixture
def staff(app) -> TestClient:
    return signed_in(app)


# -- signing in and out ----------------------------------------------------------------------
def test_pages_send_a_browser_without_a_session_to_sign_in_and_json_gets_401(app):
    client = TestClient(app)
    for path in ("/", "/students/S1?as_of=2025-01-01", "/lists/overdue", "/audit"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == "/sign-in?next=" + quote(path, safe="")
    r = client.get("/students/S1", params={"format": "json"})
    assert r.status_code == 401 and "sign in" in r.json()["error"]


def test_signing_in_sets_a_signed_httponly_strict_cookie_and_goes_back(app):
    client = TestClient(app)
    csrf = login_form(client)
    r = client.post(
        "/sign-in",
        data={"token": STAFF, "csrf": csrf, "next": "/students/S1?as_of=2025-01-01"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/students/S1?as_of=2025-01-01"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert STAFF not in cookie  # the cookie names the token, never carries it
    page = client.get("/")
    assert page.status_code == 200 and ">alice<" in page.text


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [("wrong-token-0123456789", 401, "權杖不正確"), (FEED, 403, "此權杖不可查閱資料")],
)
def test_a_wrong_or_feed_token_does_not_sign_in(app, token, status, message):
    client = TestClient(app)
    r = client.post("/sign-in", data={"token": token, "csrf": login_form(client)})
    assert r.status_code == status and message in r.text
    assert SESSION_COOKIE not in client.cookies
    assert client.get("/", follow_redirects=False).status_code == 303


def test_signing_in_needs_the_forms_csrf_token_and_its_cookie(app):
    client = TestClient(app)
    csrf = login_form(client)
    forged = client.post("/sign-in", data={"token": STAFF, "csrf": csrf[:-2] + "xx"})
    assert forged.status_code == 403
    without_cookie = TestClient(app).post("/sign-in", data={"token": STAFF, "csrf": csrf})
    assert without_cookie.status_code == 403
    assert SESSION_COOKIE not in client.cookies


@pytest.mark.parametrize("how", ["forged", "garbage", "expired", "token removed"])
def test_a_forged_expired_or_revoked_session_is_refused(location, clock, how):
    app = web_app(location, clock)
    client = signed_in(app)
    cookie = client.cookies[SESSION_COOKIE]
    if how == "forged":  # another payload under the old signature
        body, signature = cookie.split(".")
        client.cookies.set(SESSION_COOKIE, body[:-3] + "AAA." + signature)
    elif how == "garbage":
        client.cookies.set(SESSION_COOKIE, "not-a-session")
    elif how == "expired":
        clock.advance(hours=8, seconds=1)
    else:  # the same key, but alice's token is no longer configured
        other = ApiConfig.from_env({"TIMELINE_STAFF_TOKENS": "bob:bob-secret-0123456789"}, location)
        client = TestClient(create_app(other, settings=WebSettings(SECRET), clock=clock))
        client.cookies.set(SESSION_COOKIE, cookie)
    r = client.get("/students/S1", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/sign-in?next=") and "ended=1" in r.headers["location"]
    assert client.get("/students/S1", params={"format": "json"}).status_code == 401


def test_a_session_signed_with_another_key_is_refused(location, clock):
    client = signed_in(web_app(location, clock))
    cookie = client.cookies[SESSION_COOKIE]
    other = TestClient(
        create_app(
            config(location),
            settings=WebSettings(b"another-key-0123456789-0123456789"),
            clock=clock,
        )
    )
    other.cookies.set(SESSION_COOKIE, cookie)
    assert other.get("/", follow_redirects=False).status_code == 303


def test_signing_out_needs_the_sessions_csrf_token(app):
    client = signed_in(app)
    csrf = csrf_of(client.get("/").text)
    assert client.post("/sign-out", data={}, follow_redirects=False).status_code == 403
    mismatch = client.post("/sign-out", data={"csrf": csrf[::-1]}, follow_redirects=False)
    assert mismatch.status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 200  # still signed in
    # Another session's token is not this one's.
    assert csrf_of(signed_in(app).get("/").text) != csrf
    out = client.post("/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/sign-in?out=1"
    assert SESSION_COOKIE not in client.cookies
    assert client.get("/", follow_redirects=False).status_code == 303


# -- language --------------------------------------------------------------------------------
def test_the_language_is_chinese_by_default_english_on_request_and_remembered(staff):
    zh = staff.get("/students/S1", params={"as_of": "2025-04-10"})
    assert '<html lang="zh-TW">' in zh.text
    badge = re.compile(r'id="status-badge"[^>]*>([^<]+)<')
    assert badge.search(zh.text).group(1) == "境內逾期居留" and "應辦事項" in zh.text
    switched = staff.get(
        "/lang/en", params={"next": "/students/S1?as_of=2025-04-10"}, follow_redirects=False
    )
    assert switched.status_code == 303
    assert switched.headers["location"] == "/students/S1?as_of=2025-04-10"
    en = staff.get("/students/S1", params={"as_of": "2025-04-10"})
    assert '<html lang="en">' in en.text
    assert badge.search(en.text).group(1) == "Overstay (expired within Taiwan)"
    assert "Tasks" in en.text and "應辦事項" not in en.text
    assert 'id="lang-toggle"' in en.text and 'href="/lang/zh-TW?next=' in en.text


def test_a_browser_that_prefers_english_gets_english_until_it_chooses(app):
    client = TestClient(app, headers={"Accept-Language": "en-GB,en;q=0.8"})
    assert '<html lang="en">' in client.get("/sign-in").text
    client.get("/lang/zh-TW")
    assert '<html lang="zh-TW">' in client.get("/sign-in").text


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil", "x"])
def test_redirects_go_only_to_local_paths(staff, target):
    r = staff.get("/lang/en", params={"next": target}, follow_redirects=False)
    assert r.headers["location"] == "/"


# -- the student page ------------------------------------------------------------------------
def test_the_student_page_turns_to_overstay_across_the_arc_expiry(staff):
    before = staff.get("/students/S1", params={"as_of": "2025-03-20"})
    assert before.status_code == 200
    assert 'data-status="extension_window"' in before.text
    after = staff.get("/students/S1", params={"as_of": "2025-04-10"})
    assert 'data-status="overstay"' in after.text
    overstay = re.search(r'id="overstay".*?</section>', after.text, re.S).group(0)
    assert "2025-04-01" in overstay and ">10<" in overstay and "NTD 10,000" in overstay
    # The timeline is redrawn: its as-of line moves with the day.
    assert before.text.count("<svg") == 1 and after.text.count("<svg") == 1
    svg = lambda page: re.search(r"<svg.*?</svg>", page, re.S).group(0)  # noqa: E731
    assert svg(before.text) != svg(after.text)
    assert "2025-04-10" in svg(after.text)


def test_fines_show_range_imposed_paid_and_outstanding_never_a_range_of_one_amount(staff):
    page = staff.get("/students/S1", params={"as_of": "2025-05-20"}).text
    fines = re.search(r'<table id="fines">.*?</table>', page, re.S).group(0)
    assert "NTD 30,000" in fines and "30000–30000" not in fines and "30,000–30,000" not in fines
    late = staff.get("/students/S2", params={"as_of": "2024-05-01"}).text
    assert "NTD 2,000–10,000" in late and "NTD 0" in late
    assert "逾時申辦外僑居留證" in late  # the guide's name of the fine


def test_the_student_page_shows_tasks_with_days_left_place_fee_and_documents(staff):
    page = staff.get("/students/S2", params={"as_of": "2024-05-01"}).text
    tasks = re.search(r'<table id="tasks">.*?</table>', page, re.S).group(0)
    assert "申請外僑居留證" in tasks and "2024-04-15" in tasks
    assert "已逾期 16 天" in tasks and "NTD 1,000" in tasks and "線上申辦" in tasks
    assert "護照" in tasks and "Passport" in tasks  # the checklist in both languages


def test_known_at_redraws_the_page_as_known_then(staff):
    # The ARC was recorded 30 days after the entry: as known before, no ARC, application pending.
    now = staff.get("/students/S1", params={"as_of": "2024-05-01"}).text
    assert 'data-status="arc_valid"' in now
    then = staff.get(
        "/students/S1", params={"as_of": "2024-05-01", "known_at": "2024-06-15T12:00"}
    ).text
    assert 'data-status="application_pending"' in then
    assert "2024-06-15 12:00:00" in then  # the known-at moment, in Taipei time
    assert then.count('class="event unknown"') == 1  # the ARC, not yet recorded then
    as_json = staff.get(
        "/students/S1",
        params={"as_of": "2024-05-01", "known_at": "2024-06-15T12:00", "format": "json"},
    ).json()
    assert as_json["view"]["status"] == "application_pending"
    assert as_json["view"]["known_at"] == "2024-06-15T04:00:00Z"
    assert [e["event_id"] for e in as_json["history"]] == ["s1-in", "s1-ap", "s1-is"]


def test_the_student_json_is_the_api_view(app, staff):
    page = staff.get("/students/S2", params={"as_of": "2024-05-01", "format": "json"}).json()
    api = TestClient(app).get(
        "/v1/students/S2",
        params={"as_of": "2024-05-01"},
        headers={"Authorization": f"Bearer {STAFF}"},
    )
    assert page["view"] == api.json()


@pytest.mark.parametrize(
    ("params", "field"),
    [({"as_of": "2025-02-30"}, "as_of"), ({"known_at": "yesterday"}, "known_at")],
)
def test_bad_dates_are_a_400_page_naming_the_field(staff, params, field):
    r = staff.get("/students/S1", params=params)
    assert r.status_code == 400 and f"{field}:" in r.text
    r = staff.get("/students/S1", params={**params, "format": "json"})
    assert r.status_code == 400 and r.json()["error"].startswith("Invalid input: " + field)


def test_an_unknown_student_is_404(staff):
    assert staff.get("/students/NOPE").status_code == 404


@pytest.mark.parametrize("student", ["2024/001", "a/b/c", "112/history-dept"])
def test_a_student_id_with_a_slash_opens_on_every_route(location, clock, student):
    # Student numbers like 2024/001 are ids like any other: a link carries the slash as %2F,
    # which the server decodes before routing.
    with TimelineStore.open(location, clock=clock) as store:
        assert not ingest_objects(
            store, [ev(student, "sl-in", "entered", "2024-03-16", visa="resident")]
        ).rejected
    client = signed_in(web_app(location, clock))
    path = quote(student, safe="")
    bearer = {"Authorization": f"Bearer {STAFF}"}
    day = {"as_of": "2024-05-01"}
    answers = {
        route: client.get(route.format(path), params=params, headers=bearer)
        for route, params in (
            ("/students/{}", day),
            ("/students/{}/changes", day | {"known_from": "2024-01-01"}),
            ("/v1/students/{}", day),
            ("/v1/students/{}/history", {}),
            ("/v1/students/{}/calendar.ics", day),
        )
    }
    assert {route: a.status_code for route, a in answers.items()} == dict.fromkeys(answers, 200)
    assert answers["/v1/students/{}"].json()["student_id"] == student
    assert [e["event_id"] for e in answers["/v1/students/{}/history"].json()] == ["sl-in"]
    lists = client.get("/lists/overdue", params={"as_of": "2024-05-01"})
    assert f'href="/students/{path}?' in lists.text
    # A known student's own routes still answer as before.
    assert client.get("/v1/students/S1/history", headers=bearer).json()[0]["event_id"] == "s1-in"


# -- escaping --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/lists/no-such-list", "/lang/xx"])
def test_an_unknown_page_is_404_saying_so_not_no_record_of_a_student(staff, path):
    answer = staff.get(path, params={"format": "json"})
    assert answer.status_code == 404
    assert "student" not in answer.json()["error"]
    assert staff.get("/students/NOPE", params={"format": "json"}).json()["error"] == (
        "No record of this student."
    )


def test_hostile_ids_and_notes_are_escaped_everywhere(staff):
    raw_id = HOSTILE_ID
    pages = [
        staff.get("/students/" + quote(raw_id, safe=""), params={"as_of": "2024-05-01"}),
        staff.get("/students/S2", params={"as_of": "2024-05-01"}),
        staff.get("/students", params={"q": '"><'}),
        staff.get("/lists/overdue", params={"as_of": "2024-05-01"}),
        staff.get("/students/" + quote(raw_id, safe=""), params={"as_of": raw_id}),
    ]
    assert [p.status_code for p in pages] == [200, 200, 200, 200, 400]
    for page in pages:
        assert "<img src=x" not in page.text and "<script>alert" not in page.text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in pages[0].text
    assert "&lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt; &amp; &lt;/td&gt;" in pages[1].text
    assert "&lt;img src=x" in pages[2].text and "&lt;img src=x" in pages[3].text


# -- lists -----------------------------------------------------------------------------------
def test_the_overdue_list_as_of_a_day_with_kind_filter_and_csv(staff):
    page = staff.get("/lists/overdue", params={"as_of": "2024-05-01"})
    assert page.status_code == 200
    assert 'data-testid="csv-download"' in page.text
    listed = staff.get("/lists/overdue", params={"as_of": "2024-05-01", "format": "json"}).json()
    assert {(r["student_id"], r["kind"]) for r in listed["rows"]} == {
        ("S2", "apply_arc"),
        (HOSTILE_ID, "apply_arc"),
        ("=1+2", "apply_arc"),
    }
    assert listed["total"] == 3 and all(r["days_left"] < 0 for r in listed["rows"])
    other_kind = staff.get(
        "/lists/overdue", params={"as_of": "2024-05-01", "kind": "extend_arc", "format": "json"}
    ).json()
    assert other_kind["rows"] == [] and other_kind["total"] == 0
    assert staff.get("/lists/overdue", params={"kind": "nonsense"}).status_code == 400


def test_lists_page_and_sort(staff):
    params = {"as_of": "2024-05-01", "per_page": "2", "format": "json"}
    first = staff.get("/lists/overdue", params=params).json()
    second = staff.get("/lists/overdue", params={**params, "page": "2"}).json()
    assert first["total"] == 3 and len(first["rows"]) == 2 and len(second["rows"]) == 1
    ids = [r["student_id"] for r in first["rows"] + second["rows"]]
    assert ids == sorted(ids)
    by_due = staff.get(
        "/lists/overdue", params={"as_of": "2024-05-01", "sort": "-due", "format": "json"}
    ).json()["rows"]
    assert [r["due_on"] for r in by_due] == sorted((r["due_on"] for r in by_due), reverse=True)
    html = staff.get("/lists/overdue", params={"as_of": "2024-05-01", "per_page": "2"}).text
    assert 'id="next-page"' in html and "page=2" in html
    assert staff.get("/lists/overdue", params={"sort": "salary"}).status_code == 400


def test_lists_answer_as_known_at_a_moment(staff):
    # Before the ARC was recorded, S1's application was pending; after, its ARC is valid and
    # the extension comes due: as known then, nothing of S1 is due in March 2025.
    params = {"as_of": "2025-03-20", "days": "30", "format": "json"}
    now = staff.get("/lists/due-soon", params=params).json()
    assert ("S1", "extend_arc") in {(r["student_id"], r["kind"]) for r in now["rows"]}
    then = staff.get("/lists/due-soon", params={**params, "known_at": "2024-06-15"}).json()
    assert "S1" not in {r["student_id"] for r in then["rows"]}


def test_fines_and_overstays_lists(staff):
    fines = staff.get("/lists/fines", params={"as_of": "2025-05-20", "format": "json"}).json()
    by_student = {r["student_id"]: r for r in fines["rows"]}
    assert by_student["S1"]["kind"] == "overstay"
    assert by_student["S2"]["amount_min_ntd"] == 2000
    assert by_student["S2"]["outstanding_ntd"] is None  # accrued, not yet imposed
    only_overstay = staff.get(
        "/lists/fines", params={"as_of": "2025-05-20", "kind": "overstay", "format": "json"}
    ).json()
    assert [r["student_id"] for r in only_overstay["rows"]] == ["S1"]
    paid = staff.get(
        "/lists/fines", params={"as_of": "2025-05-20", "status": "paid", "format": "json"}
    ).json()
    assert paid["rows"] == []
    overstays = staff.get(
        "/lists/overstays", params={"as_of": "2025-04-10", "format": "json"}
    ).json()
    assert overstays["rows"] == [
        {
            "student_id": "S1",
            "since": "2025-04-01",
            "valid_until": "2025-03-31",
            "last_day": None,
            "days": 10,
            "can_reapply": True,
            "fine_ntd": 10000,
        }
    ]
    page = staff.get("/lists/overstays", params={"as_of": "2025-04-10"}).text
    assert "NTD 10,000" in page


def test_csv_downloads_are_injection_safe_and_excel_gets_a_bom(staff):
    plain = staff.get("/lists/overdue", params={"as_of": "2024-05-01", "format": "csv"})
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/csv")
    assert 'filename="overdue-2024-05-01.csv"' in plain.headers["content-disposition"]
    assert not plain.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(plain.content.decode("utf-8"))))
    assert rows[0][:3] == ["學號", "事項", "狀態"]
    ids = [r[0] for r in rows[1:]]
    assert sorted(ids) == sorted(["S2", HOSTILE_ID, "'=1+2"])  # a formula is text
    assert {r[4] for r in rows[1:]} == {"2024-04-15", "2024-04-19"}
    assert plain.content.count(b"\r\n") == len(rows)
    excel = staff.get("/lists/overdue", params={"as_of": "2024-05-01", "format": "excel"})
    assert excel.content.startswith(b"\xef\xbb\xbf")
    assert excel.content[3:] == plain.content


# -- search, docs, headers -------------------------------------------------------------------
def test_students_are_found_by_id_prefix_with_wildcards_taken_literally(staff):
    assert staff.get("/students", params={"q": "s", "format": "json"}).json()["students"] == [
        "S1",
        "S2",
    ]
    assert staff.get("/students", params={"q": "%", "format": "json"}).json()["students"] == []
    assert staff.get("/students", params={"q": "_1", "format": "json"}).json()["students"] == []
    page = staff.get("/students", params={"q": "S"}).text
    assert 'href="/students/S1"' in page and 'href="/students/S2"' in page


def test_the_api_docs_are_served_offline_from_the_packaged_copy(app):
    client = TestClient(app)
    docs = client.get("/docs")
    assert docs.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert sources and all(s.startswith("/") for s in sources)
    assert "<script>" not in docs.text  # no inline script
    for source in sources:
        assert client.get(source).status_code == 200
    assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text


def test_pages_carry_the_security_headers_and_no_inline_script(staff):
    paths = [
        "/",
        "/students?q=S",
        "/students/S1?as_of=2025-04-10",
        "/lists/overdue?as_of=2024-05-01",
        "/lists/fines",
        "/lists/due-soon",
        "/lists/overstays",
        "/sign-in",
        "/students/NOPE",
    ]
    for path in paths:
        r = staff.get(path)
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert "unsafe-inline" not in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert all(" src=" in tag for tag in re.findall(r"<script\b[^>]*>", r.text))
        assert not re.search(r"\son[a-z]+=", r.text.replace("onerror=alert", ""))
        assert "<style" not in r.text and ' style="' not in r.text


# -- what changed ----------------------------------------------------------------------------
def test_what_changed_between_two_known_at_moments_names_the_status_and_the_events(staff):
    params = {"as_of": "2024-05-01", "known_from": "2024-06-15", "known_to": ""}
    page = staff.get("/students/S1/changes", params=params)
    assert page.status_code == 200
    status = re.search(r'id="changed-status">(.*?)</p>', page.text, re.S).group(1)
    assert status.index("申請審核中") < status.index("居留證有效")
    events = re.search(r'<table id="recorded-events">.*?</table>', page.text, re.S).group(0)
    assert "s1-is" in events and "核發居留證" in events and "s1-in" not in events
    as_json = staff.get("/students/S1/changes", params={**params, "format": "json"}).json()
    assert as_json["status"] == {"old": "application_pending", "new": "arc_valid"}
    assert [e["event_id"] for e in as_json["events"]] == ["s1-is"]
    # The moments may come in either order; the same moments give nothing.
    swapped = {"as_of": "2024-05-01", "known_from": "2030-01-01", "known_to": "2024-06-15"}
    assert staff.get("/students/S1/changes", params={**swapped, "format": "json"}).json()[
        "status"
    ] == {"old": "application_pending", "new": "arc_valid"}
    same = {"as_of": "2024-05-01", "known_from": "2024-06-15", "known_to": "2024-06-15"}
    assert 'id="unchanged"' in staff.get("/students/S1/changes", params=same).text


def test_what_changed_needs_a_first_moment_and_escapes_the_id(staff):
    assert staff.get("/students/S1/changes", params={"as_of": "2024-05-01"}).status_code == 400
    hostile = staff.get(
        "/students/" + quote(HOSTILE_ID, safe="") + "/changes",
        params={"known_from": "2024-06-15"},
    )
    assert hostile.status_code == 200 and "<img src=x" not in hostile.text


# -- settings --------------------------------------------------------------------------------
def test_web_settings_are_validated_and_name_the_setting(caplog):
    good = WebSettings.from_env(
        {"TIMELINE_SESSION_SECRET": "x" * 32, "TIMELINE_SESSION_HOURS": "2"}
    )
    assert good.session_secret == b"x" * 32 and good.session_length.total_seconds() == 7200
    made = WebSettings.from_env({})
    assert len(made.session_secret) == 32 and made.session_secret != b"x" * 32
    assert "TIMELINE_SESSION_SECRET is not set" in caplog.text
    for env, setting in [
        ({"TIMELINE_SESSION_SECRET": "short"}, "TIMELINE_SESSION_SECRET"),
        ({"TIMELINE_SESSION_HOURS": "0"}, "TIMELINE_SESSION_HOURS"),
        ({"TIMELINE_SESSION_HOURS": "٣"}, "TIMELINE_SESSION_HOURS"),
        ({"TIMELINE_COOKIE_SECURE": "maybe"}, "TIMELINE_COOKIE_SECURE"),
    ]:
        with pytest.raises(ApiConfigError, match=setting):
            WebSettings.from_env({"TIMELINE_SESSION_SECRET": "y" * 32} | env)


def test_cookies_are_secure_over_https_or_when_configured(location, clock):
    app = create_app(
        config(location), settings=WebSettings(SECRET, always_secure=True), clock=clock
    )
    client = TestClient(app, base_url="https://testserver")
    page = client.get("/sign-in")
    assert "Secure" in page.headers["set-cookie"]
    plain = TestClient(web_app(location, clock)).get("/sign-in")
    assert "Secure" not in plain.headers["set-cookie"]
    over_https = TestClient(web_app(location, clock), base_url="https://testserver")
    assert "Secure" in over_https.get("/sign-in").headers["set-cookie"]


def test_serve_refuses_a_short_session_secret_naming_the_setting_not_the_value(tmp_path):
    from click.testing import CliRunner

    from timeline.cli import main

    result = CliRunner().invoke(
        main,
        ["--db", str(tmp_path / "t.db"), "serve"],
        env={"TIMELINE_STAFF_TOKENS": f"alice:{STAFF}", "TIMELINE_SESSION_SECRET": "hunter2-x"},
    )
    assert result.exit_code == 2
    assert "TIMELINE_SESSION_SECRET" in result.output and "hunter2-x" not in result.output


def test_admin_tokens_are_named_and_unique_across_the_three_settings():
    reused = {
        "TIMELINE_STAFF_TOKENS": f"alice:{STAFF}",
        "TIMELINE_ADMIN_TOKENS": "alice:another-secret-0123456",
    }
    with pytest.raises(ApiConfigError, match="token names must be unique"):
        ApiConfig.from_env(reused)
    with pytest.raises(ApiConfigError, match="TIMELINE_ADMIN_TOKENS entry 1") as refused:
        ApiConfig.from_env({"TIMELINE_ADMIN_TOKENS": "bare-admin-token-0123456789"})
    assert "bare-admin-token" not in str(refused.value)
    both = ApiConfig.from_env({"TIMELINE_ADMIN_TOKENS": f"root:{STAFF}"})
    assert [t.name for t in both.readers()] == ["root"] and both.staff_tokens == ()


def test_a_page_past_the_end_of_a_list_says_so_and_leads_back_to_the_last_page(staff):
    # A bookmark of page 3 after the list shrank (3 overdue tasks, 2 a page): the page said
    # "3 rows" and "nothing matches" at once, with no pager to reach the rows (found by a
    # hostile probe in chromium).
    params = {"as_of": "2024-05-01", "per_page": "2"}
    html = staff.get("/lists/overdue", params={**params, "page": "3"}).text
    assert 'id="nothing-listed"' not in html
    assert 'id="past-the-end"' in html
    found = re.search(r'<a href="([^"]+)" rel="prev" id="prev-page"', html)
    assert found is not None
    last = staff.get(found.group(1).replace("&amp;", "&")).text
    assert "page=2" in found.group(1) and 'id="next-page"' not in last
    assert last.count('<th scope="row">') == 1
    empty = staff.get("/lists/overdue", params={"as_of": "2000-01-01", "page": "3"}).text
    assert 'id="nothing-listed"' in empty and 'id="past-the-end"' not in empty


def test_an_audit_page_past_the_end_leads_back_to_the_last_page(app):
    admin = signed_in(app, ADMIN)
    assert admin.get("/students/S1").status_code == 200
    html = admin.get("/audit", params={"page": "5"}).text
    assert 'id="past-the-end"' in html and "尚無查閱紀錄" not in html
    found = re.search(r'<a href="([^"]+)" rel="prev"', html)
    assert found is not None and found.group(1).endswith("page=1")


@pytest.mark.parametrize(
    ("path", "params", "label", "kept"),
    [
        (
            "/lists/overdue",
            {"as_of": "2025-02-30", "sort": "-due", "per_page": "2"},
            "查詢日期（以此日為準）",
            "/lists/overdue?sort=-due&amp;per_page=2",
        ),
        (
            "/students/S1",
            {"as_of": "2025-04-10", "known_at": "yesterday"},
            "資料時點（當時已知）",
            "/students/S1?as_of=2025-04-10",
        ),
        ("/lists/fines", {"status": "unpaid"}, "狀態", "/lists/fines"),
    ],
)
def test_a_value_that_cannot_be_read_names_its_field_and_leads_back_without_it(
    staff, path, params, label, kept
):
    # A date typed wrong in a list's or student's form gave an error page with only a link
    # home: the list, its filters and the student were lost, and the field was named by
    # its query key alone (found by a hostile probe in chromium).
    r = staff.get(path, params=params)
    assert r.status_code == 400
    assert label in r.text
    assert f'<a href="{kept}" id="retry">' in r.text
    assert staff.get(kept.replace("&amp;", "&")).status_code == 200


def test_a_missing_required_value_gets_no_link_back_to_the_same_error(staff):
    r = staff.get("/students/S1/changes", params={"known_from": ""})
    assert r.status_code == 400 and 'id="retry"' not in r.text


BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_a_browser_gets_pages_for_a_mistyped_address_and_an_overlong_field(staff):
    # A mistyped bookmark (/student/S1, /list/overdue) or a pasted search of 201 characters
    # showed the browser a raw JSON blob ({"error": "Not Found"}) instead of a page with
    # the header, the language switch and a way home (found by a hostile probe).
    for path in ("/student/S1", "/list/overdue", "/nothing-here"):
        r = staff.get(path, headers=BROWSER)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert "找不到此頁面。" in r.text and 'id="nav-overdue"' in r.text
    r = staff.get("/students", params={"q": "S" * 201}, headers=BROWSER)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert "學號（開頭即可）" in r.text and "at most 200 characters" in r.text
    # Scripts and the API keep their JSON.
    assert staff.get("/nothing-here").json() == {"error": "Not Found"}
    assert staff.get("/v1/nothing", headers=BROWSER).json() == {"error": "Not Found"}
    r = staff.get("/students", params={"q": "S" * 201, "format": "json"}, headers=BROWSER)
    assert r.status_code == 400 and r.json()["error"].startswith("q:")


def test_a_store_that_went_away_is_a_page_for_a_browser_and_json_for_the_api(tmp_path, clock):
    # The event store unreachable (PostgreSQL down, the SQLite folder gone): the student
    # page and the lists showed a browser the API's JSON blob (found by a hostile probe).
    app = web_app(str(tmp_path / "no-such-folder" / "t.db"), clock)
    bearer = {"Authorization": f"Bearer {STAFF}"}
    with TestClient(app) as client:
        for path in ("/students/S1", "/lists/overdue", "/students?q=S"):
            r = client.get(path, headers=BROWSER | bearer)
            assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
            assert "資料庫暫時無法使用" in r.text and "no-such-folder" not in r.text
            assert r.headers["retry-after"] == "5"
        api = client.get("/v1/students/S1", headers=BROWSER | bearer)
        assert api.json() == {"error": "the event store is unavailable"}
        assert api.headers["retry-after"] == "5"
        page_json = client.get("/students/S1", params={"format": "json"}, headers=bearer)
        assert page_json.status_code == 503 and "unavailable" in page_json.json()["error"]


def test_a_search_matching_more_students_than_it_shows_says_so(tmp_path, clock):
    # 50 ids were shown for "S0" among 6,000 students, nothing saying there were more: it
    # read as "these are all" (found by a hostile probe on a store of 6,000 students).
    location = str(tmp_path / "many.db")
    with TimelineStore.open(location, clock=clock) as store:
        events = [
            ev(f"S{n:03d}", f"e{n}", "entered", "2024-03-16", visa="resident") for n in range(51)
        ]
        assert not ingest_objects(store, events).rejected
    staff = signed_in(web_app(location, clock))
    page = staff.get("/students", params={"q": "S"}, headers={"Accept-Language": "en"})
    assert page.text.count('<li><a href="/students/') == 50 and 'id="more-students"' in page.text
    answer = staff.get("/students", params={"q": "S", "format": "json"}).json()
    assert len(answer["students"]) == 50 and answer["more"] is True
    few = staff.get("/students", params={"q": "S05", "format": "json"}).json()
    assert few["students"] == ["S050"] and few["more"] is False
    assert 'id="more-students"' not in staff.get("/students", params={"q": "S05"}).text


def test_the_pager_reaches_the_first_and_the_last_page_in_one_step(staff):
    # The fines of 6,000 students are 288 pages of 50: the pager had only Previous and
    # Next, so the last page was 287 clicks away (found by a hostile probe).
    params = {"as_of": "2024-05-01", "per_page": "1", "sort": "-due"}
    middle = staff.get("/lists/overdue", params={**params, "page": "2"}).text
    first = re.search(r'<a href="([^"]+)" id="first-page">', middle)
    last = re.search(r'<a href="([^"]+)" id="last-page">', middle)
    assert first is not None and first.group(1).endswith("page=1")
    assert last is not None and last.group(1).endswith("page=3") and "sort=-due" in last.group(1)
    start = staff.get("/lists/overdue", params={**params, "page": "1"}).text
    end = staff.get("/lists/overdue", params={**params, "page": "3"}).text
    assert 'id="first-page"' not in start and 'id="last-page"' in start
    assert 'id="last-page"' not in end and 'id="first-page"' in end


def test_date_and_moment_fields_do_not_ask_phones_for_a_digits_only_keypad(staff):
    # inputmode="numeric" gives a phone (iOS) a keypad of 0-9 alone: no '-' for
    # 2025-02-10, no 'T', ':' or '+' for a known-at moment, so the fields could not be
    # filled on a phone (found by a hostile probe reading the forms against their patterns).
    for path in ("/students/S1", "/lists/overdue", "/students/S1/changes?known_from=2024-05-01"):
        html = staff.get(path).text
        fields = re.findall(r'<input [^>]*id="(?:as-of|known-at|known-from|known-to)"[^>]*>', html)
        assert fields, path
        assert not [f for f in fields if 'inputmode="numeric"' in f], path


def test_switching_language_after_a_wrong_token_keeps_where_the_person_was_going(app):
    # After a refused token the page is the answer to a POST: its language switch led to
    # a bare /sign-in, and signing in then went home instead of to the student asked for
    # (found by a hostile probe).
    client = TestClient(app)
    refused = client.post(
        "/sign-in",
        data={
            "token": "wrong-token-0123456789",
            "csrf": login_form(client),
            "next": "/students/S1",
        },
    )
    assert refused.status_code == 401
    toggle = re.search(r'id="lang-toggle" data-testid="lang-toggle" href="([^"]+)"', refused.text)
    assert toggle is not None
    switched = client.get(toggle.group(1).replace("&amp;", "&"))
    assert switched.status_code == 200 and 'lang="en"' in switched.text
    assert 'name="next" value="/students/S1"' in switched.text
