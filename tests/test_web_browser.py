"""The staff web app in a real browser (Debian's chromium driven by Playwright).

The issue's scripted flow, end to end over a real uvicorn on loopback: sign in with a
token, open an example student, move the as-of day across the ARC's expiry (the status
turns to overstay and the timeline is redrawn), switch the language (remembered across
pages), open the overdue list and download its CSV (and the Excel CSV with its BOM),
then sign out. Along the way: no console error and no CSP violation on any page, the
keyboard reaches the skip link first, and screenshots (desktop and 390 px) are saved
under the test's tmp dir. The flow runs twice: on the server's own root, and under
/timeline behind a reverse proxy that strips the prefix (`timeline serve --root-path`),
where the proxy refuses anything outside it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import running
from conftest import FakeClock
from web_client import STAFF, ev, web_app

from timeline.ingest import ingest_file, ingest_objects
from timeline.store import TimelineStore
from web import i18n

CHROMIUM = os.environ.get("TIMELINE_TEST_CHROMIUM")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "feed.jsonl"
# S1009's ARC is valid until 2025-01-31 and the student stays in Taiwan until 2025-03-07.
STUDENT, LAST_VALID, OVERSTAYING = "S1009", "2025-01-31", "2025-02-10"

pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="TIMELINE_TEST_CHROMIUM is not set (.ci/run sets it)"
)


@dataclass
class Site:
    """Where the browser finds the app (the prefix included); what the proxy refused."""

    url: str
    prefix: str
    outside: list[str] = field(default_factory=list)


HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


def stripping_proxy(upstream: str, prefix: str, outside: list[str]) -> Any:
    """A reverse proxy (ASGI) serving `upstream` under `prefix`, which it strips.

    Anything outside the prefix is answered 404 and noted in `outside`.
    """

    clients: list[httpx.AsyncClient] = []

    async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            for client in clients:
                await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["raw_path"].decode("ascii")
        if not (path == prefix or path.startswith(prefix + "/")):
            outside.append(path)
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not under the proxy's prefix"})
            return
        target = (path[len(prefix) :] or "/") + (
            "?" + scope["query_string"].decode("ascii") if scope["query_string"] else ""
        )
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() != "host"]
        if not clients:  # made in the server's event loop, kept (connections kept alive)
            clients.append(httpx.AsyncClient(base_url=upstream))
        request = clients[0].build_request(scope["method"], target, headers=headers, content=body)
        answer = await clients[0].send(request, stream=True)
        passed = [(k, v) for k, v in answer.headers.raw if k.lower() not in HOP_BY_HOP]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": passed})
        async for chunk in answer.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await answer.aclose()

    return proxy


@pytest.fixture(params=["", "/timeline"], ids=["root", "prefix"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """The example feed in a SQLite store; the staff app served on loopback.

    With a prefix: `--root-path /timeline` behind a proxy that strips it.
    """
    location = str(tmp_path / "timeline.db")
    clock = FakeClock(datetime(2025, 6, 30, 2, 0, tzinfo=UTC))
    with TimelineStore.open(location, clock=clock) as store:
        assert not ingest_file(store, EXAMPLES).rejected
    clock.advance(hours=1)
    prefix = request.param
    with running(web_app(location, clock), root_path=prefix) as base:
        if not prefix:
            yield Site(base, prefix)
            return
        outside: list[str] = []
        with running(stripping_proxy(base, prefix, outside)) as proxied:
            yield Site(proxied + prefix, prefix, outside)


@pytest.fixture
def browser():
    """A headless chromium (the system's, never a download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def watch(page) -> list[str]:
    """Collect console errors (CSP violations among them), page errors, failed requests.

    Chromium also logs every 4xx answer as a console error; those are checked on their own
    (`refusals`), so they are left out here.
    """
    problems: list[str] = []

    def console(message) -> None:
        if message.type in ("error", "warning") and "Failed to load resource" not in message.text:
            problems.append(message.text)

    def failed(request) -> None:
        # The browser fetches the icon on its own after the page's load event; the next
        # navigation cancels it if it is still on its way (more often behind the proxy).
        if request.url.endswith("/static/favicon.svg") and request.failure == "net::ERR_ABORTED":
            return
        problems.append(f"failed: {request.url} {request.failure}")

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", failed)
    return problems


def refusals(page) -> list[tuple[int, str]]:
    """Every answer of 400 or more that `page` received: (status, path)."""
    seen: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda r: r.status >= 400 and seen.append((r.status, r.url.split("/", 3)[-1])),
    )
    return seen


def timeline_state(page) -> dict[str, object]:
    """What the drawn timeline says: its as-of day, the as-of line's x, its overstay items."""
    return page.evaluate(
        """() => {
          const svg = document.querySelector('#timeline svg');
          const line = svg.querySelector('g.as-of line');
          return {
            asOf: svg.getAttribute('data-as-of'),
            x: parseFloat(line.getAttribute('x1')),
            overstays: svg.querySelectorAll('g.item[data-kind="overstay"]').length,
            width: svg.getBoundingClientRect().width,
          };
        }"""
    )


def set_as_of(page, day: str) -> None:
    """Type a day into the as-of control and redraw (the way a person does)."""
    page.fill("#as-of", day)
    with page.expect_navigation():
        page.click("#redraw")


def test_the_scripted_staff_flow_in_chromium(site: Site, browser, tmp_path: Path) -> None:
    base = site.url
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, accept_downloads=True, locale="en-US"
    )
    page = context.new_page()
    problems = watch(page)
    refused = refusals(page)

    # Signed out, any page leads to the sign-in form; a wrong token is refused.
    page.goto(f"{base}/students/{STUDENT}")
    assert page.locator("#sign-in-form").is_visible()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.fill("#token", "not-a-token-at-all-0000")
    page.click("#sign-in-button")
    assert page.locator("#sign-in-message").is_visible()
    page.fill("#token", STAFF)
    page.click("#sign-in-button")
    page.wait_for_selector("#token-name")
    assert page.text_content("#token-name") == "alice"
    cookies = {c["name"]: c for c in context.cookies()}
    session = next(c for n, c in cookies.items() if "session" in n)
    assert session["httpOnly"] and session["sameSite"] in ("Lax", "Strict")
    assert STAFF not in session["value"]

    # The example student, the day the ARC is still valid.
    page.goto(f"{base}/students/{STUDENT}?as_of={LAST_VALID}")
    badge = page.locator("#status-badge")
    assert badge.get_attribute("data-status") == "extension_window"  # its last month
    before = timeline_state(page)
    assert before["asOf"] == LAST_VALID and before["overstays"] == 0
    page.screenshot(path=str(tmp_path / "student-desktop.png"), full_page=True)

    # Across the expiry: overstay, with its details, and a redrawn timeline.
    set_as_of(page, OVERSTAYING)
    assert badge.get_attribute("data-status") == "overstay"
    assert page.text_content("#overstay-days").strip() == "10"
    after = timeline_state(page)
    assert after["asOf"] == OVERSTAYING and after["overstays"] == 1
    assert after["x"] > before["x"]
    assert page.input_value("#as-of") == OVERSTAYING

    # Keyboard: an item of the timeline takes the focus and shows its rule.
    page.focus("#timeline svg g.item[data-kind='overstay']")
    tip = page.evaluate("getComputedStyle(document.activeElement.querySelector('.tip')).visibility")
    assert tip == "visible"
    assert "R-OVERSTAY" in page.evaluate("document.activeElement.textContent")

    # Switch the language; it is remembered on the next page.
    english_heading = page.text_content("#tasks-heading")
    with page.expect_navigation():  # through the redirect, to the page's load event
        page.click("#lang-toggle")
    assert page.evaluate("document.documentElement.lang") == "zh-TW"
    assert page.text_content("#tasks-heading") != english_heading
    assert page.text_content("#status-badge").strip() == i18n.name("status", "overstay", "zh-TW")
    assert badge.get_attribute("data-status") == "overstay"
    assert page.input_value("#as-of") == OVERSTAYING  # the switch keeps the page's state

    # The overdue list (still in Chinese), then its CSV downloads.
    page.click("#nav-overdue")
    page.wait_for_selector("#list-title")
    assert page.evaluate("document.documentElement.lang") == "zh-TW"
    rows = page.locator("table tbody tr")
    assert rows.count() > 0
    total = page.text_content("#row-count")
    with page.expect_download() as plain:
        page.click("#download-csv")
    data = Path(plain.value.path()).read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")
    table = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert len(table) - 1 == rows.count() or str(len(table) - 1) in total
    assert all(len(r) == len(table[0]) for r in table)
    assert any(r[0].startswith("S1") for r in table[1:])
    with page.expect_download() as excel:
        page.click("#download-excel")
    excel_data = Path(excel.value.path()).read_bytes()
    assert excel_data.startswith(b"\xef\xbb\xbf")
    assert (
        excel_data[3:].decode("utf-8").replace("\r\n", "\n").strip().splitlines()[1:]
        == (data.decode("utf-8").replace("\r\n", "\n").strip().splitlines()[1:])
    )
    page.screenshot(path=str(tmp_path / "overdue-desktop.png"), full_page=True)

    # A phone: the student page fits 390 px; the timeline scrolls sideways inside its frame.
    phone = context.new_page()
    problems += watch(phone)
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(f"{base}/students/{STUDENT}?as_of={OVERSTAYING}")
    overflow = phone.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the phone"
    frame = phone.evaluate(
        "(() => { const f = document.querySelector('#timeline');"
        " return [f.clientWidth, f.scrollWidth]; })()"
    )
    assert frame[0] <= 390 and frame[1] > frame[0]
    # ... scrolled so that the as-of line is in view, not left at the first month.
    line_x, frame_left, frame_right = phone.evaluate(
        "(() => { const f = document.querySelector('#timeline').getBoundingClientRect();"
        " const l = document.querySelector('#timeline svg g.as-of line').getBoundingClientRect();"
        " return [l.left, f.left, f.right]; })()"
    )
    assert frame_left <= line_x <= frame_right
    phone.screenshot(path=str(tmp_path / "student-390.png"), full_page=True)
    phone.close()

    # Sign out: the session ends; the student page asks for a token again.
    page.click("#sign-out")
    page.wait_for_selector("#sign-in-form")
    page.goto(f"{base}/students/{STUDENT}")
    assert page.locator("#sign-in-form").is_visible()
    assert not [c for c in context.cookies() if "session" in c["name"] and c["value"]]

    # The API docs: Swagger UI from the packaged copy reads the document beside the app.
    page.goto(f"{base}/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert page.locator(".swagger-ui .opblock").count() > 5

    paths = {c["path"] for c in context.cookies()}
    assert all((path + "/").startswith(site.prefix + "/") for path in paths), paths
    context.close()
    assert problems == [], problems
    # The only refusal: the wrong token (signed out, pages redirect to the sign-in form).
    assert refused == [(401, f"{site.prefix}/sign-in".lstrip("/"))], refused
    assert site.outside == [], site.outside  # nothing asked for outside the prefix
    for shot in ("student-desktop.png", "overdue-desktop.png", "student-390.png"):
        assert (tmp_path / shot).stat().st_size > 10_000, shot


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """The example feed in a SQLite store; the staff app on loopback at its root."""
    location = str(tmp_path / "timeline.db")
    clock = FakeClock(datetime(2025, 6, 30, 2, 0, tzinfo=UTC))
    with TimelineStore.open(location, clock=clock) as store:
        assert not ingest_file(store, EXAMPLES).rejected
    clock.advance(hours=1)
    with running(web_app(location, clock)) as base:
        yield base


# Clipped on paper: a scroll region (or the page) wider than its box.
CLIPPED = """() => [document.documentElement,
    ...document.querySelectorAll('.scroll, .timeline-scroll')]
  .filter(e => e.scrollWidth > e.clientWidth + 1)
  .map(e => `${e.id || e.firstElementChild?.id || e.tagName} ${e.scrollWidth}>${e.clientWidth}`)"""


def test_pages_print_on_a4_whole_without_the_controls(served: str, browser) -> None:
    # Printed, a wide table was cut at its scroll region's edge (the tasks table's rules
    # and documents, the fines' outstanding column, the timeline's last years), and the
    # navigation, forms and sign-out button took the first half page (found by a hostile
    # probe: print media at A4's printable width, 718 px).
    context = browser.new_context(
        viewport={"width": 718, "height": 1000},
        extra_http_headers={"Authorization": f"Bearer {STAFF}"},
    )
    page = context.new_page()
    problems = watch(page)
    page.emulate_media(media="print")
    for path in (
        f"/students/{STUDENT}?as_of={OVERSTAYING}",
        f"/lists/overdue?as_of={OVERSTAYING}",
        f"/lists/fines?as_of={OVERSTAYING}",
        f"/students/{STUDENT}/changes?as_of={OVERSTAYING}&known_from=2025-01-01",
    ):
        page.goto(served + path)
        assert page.evaluate(CLIPPED) == [], path
        for hidden in ("header nav", "#sign-out", "form.controls", "#changes-form"):
            for element in page.locator(hidden).all():
                assert not element.is_visible(), (path, hidden)
        assert page.locator("h1").is_visible() and page.locator(".context").is_visible()
    page.emulate_media(media="screen")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{served}/students/{STUDENT}?as_of={OVERSTAYING}")
    assert page.locator("#as-of").is_visible() and page.locator("header nav").is_visible()
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF")
    context.close()
    assert problems == [], problems


def test_signing_in_from_any_of_several_open_tabs(served: str, browser) -> None:
    # A session that ended with several tabs open (a list, two students): each tab's
    # reload showed a sign-in form and set a new sign-in cookie, so only the last form
    # worked; the others said "Your session has ended" and, re-shown, broke the next one
    # in turn (found by a hostile probe: two tabs, sign in from the first). Now the forms
    # shown one after the other share the sign-in cookie's nonce.
    context = browser.new_context(locale="en-US")
    tabs = [context.new_page() for _ in range(3)]
    problems: list[str] = []
    for tab, path in zip(tabs, ("/lists/overdue", f"/students/{STUDENT}", "/"), strict=True):
        problems += watch(tab)
        tab.goto(served + path)
        assert tab.locator("#sign-in-form").is_visible()
    first, second, third = tabs
    first.fill("#token", STAFF)
    first.click("#sign-in-button")
    first.wait_for_selector("#token-name")
    assert first.url.endswith("/lists/overdue")
    # A form left open in another tab takes the person on (signed in already).
    for tab, path in ((second, f"/students/{STUDENT}"), (third, "/")):
        tab.fill("#token", STAFF)
        tab.click("#sign-in-button")
        tab.wait_for_selector("#token-name")
        assert tab.url == served + path
    context.close()
    assert problems == [], problems


def test_the_keyboard_can_pass_the_timeline_in_one_step(served: str, browser) -> None:
    # Every item of the timeline is a Tab stop: a student with many trips (3,000 events:
    # 1,505 stops) kept a keyboard user Tabbing through the drawing to reach the tasks and
    # fines (found by a hostile probe in chromium). A link just before it skips past it.
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {STAFF}"})
    page = context.new_page()
    problems = watch(page)
    page.goto(f"{served}/students/{STUDENT}?as_of={OVERSTAYING}")
    page.focus("#time-controls a")  # the controls' last stop ("today")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "skip-timeline"
    box = page.locator("#skip-timeline").bounding_box()
    assert box is not None and box["width"] > 0 and box["x"] >= 0  # seen when focused
    page.keyboard.press("Tab")  # not taken: the timeline's first item
    assert page.evaluate("!!document.activeElement.closest('#timeline')")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    after = page.evaluate(
        """() => { const e = document.activeElement, t = document.querySelector('#timeline');
          return !t.contains(e) && !!(t.compareDocumentPosition(e) & 4); }"""
    )
    assert after, page.evaluate("document.activeElement.outerHTML.slice(0, 120)")
    unfocused = page.locator("#skip-timeline").bounding_box()
    assert unfocused is None or unfocused["x"] < 0 or unfocused["width"] <= 1
    context.close()
    assert problems == [], problems


def test_a_long_unbroken_note_wraps_in_the_history(tmp_path: Path, browser) -> None:
    # A note holding a long link or reference without spaces made the history table
    # 13,000 px wide: the record times and the "view as known then" links moved 12,000 px
    # off to the right (found by a hostile probe in chromium, a 1,500-character note).
    location = str(tmp_path / "timeline.db")
    clock = FakeClock(datetime(2025, 6, 30, 2, 0, tzinfo=UTC))
    link = "https://docs.example.edu/arc/" + "x" * 1500
    with TimelineStore.open(location, clock=clock) as store:
        event = ev("S7", "s7-in", "entered", "2024-08-20", visa="resident", note=link)
        assert not ingest_objects(store, [event]).rejected
    clock.advance(hours=1)
    with running(web_app(location, clock)) as base:
        context = browser.new_context(
            viewport={"width": 1280, "height": 900},
            extra_http_headers={"Authorization": f"Bearer {STAFF}"},
        )
        page = context.new_page()
        page.goto(f"{base}/students/S7")
        assert link in page.text_content("#history")
        width, box = page.evaluate(
            "(() => { const r = document.querySelector('#history').parentElement;"
            " return [r.scrollWidth, r.clientWidth]; })()"
        )
        assert width <= box, (width, box)
        context.close()


def test_sign_out_from_a_tab_opened_before_signing_in_again(served: str, browser) -> None:
    # A tab left open from an earlier session carries that session's sign-out token:
    # "Sign out" there answered "This token may not see this page" and left the person
    # signed in, on what may be a shared office computer (found by a hostile probe: two
    # tabs, sign out and in again in one, sign out in the other).
    context = browser.new_context(locale="en-US")
    first, second = context.new_page(), context.new_page()
    problems = watch(first) + watch(second)
    first.goto(f"{served}/")
    first.fill("#token", STAFF)
    first.click("#sign-in-button")
    first.wait_for_selector("#token-name")
    second.goto(f"{served}/lists/overdue")
    first.click("#sign-out")
    first.wait_for_selector("#sign-in-form")
    first.fill("#token", STAFF)
    first.click("#sign-in-button")
    first.wait_for_selector("#token-name")
    second.click("#sign-out")
    message = second.text_content("#error-message") or ""
    assert "Sign out" in message and "may not see" not in message, message
    second.click("#sign-out")  # the page's own button, with this session's token
    second.wait_for_selector("#sign-in-form")
    first.goto(f"{served}/")
    assert first.locator("#sign-in-form").is_visible()
    context.close()
    assert problems == [], problems


def test_a_long_student_id_fits_a_phone(tmp_path: Path, browser) -> None:
    # An id of 64 characters (the longest the feed takes) without a space made the
    # student page, what changed and the search 760-1,130 px wide on a 360 px phone: the
    # whole page scrolled sideways (found by a hostile probe in chromium).
    location = str(tmp_path / "timeline.db")
    clock = FakeClock(datetime(2025, 6, 30, 2, 0, tzinfo=UTC))
    long_id = "EXCHANGE-2024-" + "Z" * 50
    with TimelineStore.open(location, clock=clock) as store:
        event = ev(long_id, "z-in", "entered", "2024-08-20", visa="resident")
        assert not ingest_objects(store, [event]).rejected
    clock.advance(hours=1)
    with running(web_app(location, clock)) as base:
        context = browser.new_context(
            viewport={"width": 360, "height": 800},
            extra_http_headers={"Authorization": f"Bearer {STAFF}"},
        )
        page = context.new_page()
        for path in (
            f"/students/{long_id}",
            f"/students/{long_id}/changes?known_from=2025-01-01",
            "/students?q=EXCHANGE",
            "/lists/overdue?as_of=2025-01-01",
        ):
            page.goto(base + path)
            assert long_id in page.text_content("main"), path
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (path, overflow)
        context.close()
