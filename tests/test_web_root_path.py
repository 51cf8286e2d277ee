"""The staff pages under a path prefix (`timeline serve --root-path /timeline`).

A reverse proxy serves the app under /timeline and strips the prefix; the server, told the
prefix, hands it to the app as the scope's `root_path` and puts it back in front of `path`
(the ASGI spec's reading since uvicorn 0.26; Starlette routes on `path` less `root_path`,
and its static files need the prefix in `path`). Two set-ups are tried:

- `uvicorn`: a real uvicorn with `root_path` (as `timeline serve --root-path` runs it)
  behind a stripping proxy (an httpx transport in the client);
- `testclient`: in process, an ASGI wrapper that plays the proxy and the server: it
  refuses what is not under the prefix and sets `root_path` on what is.

Starlette's `TestClient(app, root_path=...)` alone is no proxy: it sends the path it is
given, so a link that left the prefix would still be answered (routing falls back to the
whole path). Here the proxy answers 404 to anything outside the prefix, and notes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from api_server import running
from conftest import FakeClock
from fastapi.testclient import TestClient
from web_client import ADMIN, STAFF, seed, web_app

from web import i18n
from web.app import safe_next
from web.session import LOGIN_COOKIE, SESSION_COOKIE

PREFIX = "/timeline"
# The pages an admin sees, in both languages: every template and every kind of link.
PAGES = [
    "/",
    "/students?q=S",
    "/students?q=zzz",
    "/students/S1?as_of=2025-01-01",
    "/students/S1?as_of=2024-05-01&known_at=2024-06-01T00:00",
    "/students/S2?as_of=2025-01-01",
    "/students/S1/changes?known_from=2024-06-01&known_to=2024-07-05",
    "/lists/overdue?as_of=2025-01-01",
    "/lists/due-soon?as_of=2024-04-01",
    "/lists/fines?as_of=2025-01-01",
    "/lists/overstays?as_of=2025-06-01",
    "/lists/overdue?as_of=2025-01-01&per_page=1&page=2",
    "/audit",
    "/audit?student_id=S1",
    "/students/nope",
    "/students/S1?as_of=bad",
    "/docs",
]
HOSTILE_NEXT = [
    None,
    "",
    "/",
    "//evil.example",
    "//evil.example/timeline/",
    "/\\evil.example",
    "\\\\evil.example",
    "https://evil.example/timeline/",
    "javascript:alert(1)",
    " /timeline/",
    "/timeline",
    "/timelineX/students/S1",
    "/timeline.evil/",
    "/students/S1",
    "/timeline//evil.example",
    "/timeline/\\evil.example",
    "/timeline/students\\..\\..\\evil",
    "/timeline/../other-app/",
    "/timeline/./../other-app/",
    "/timeline/%2e%2e/other-app/",
    "/timeline/students/%2E./../x",
    "/timeline/students/..",
    "/timeline/\t/evil.example",
    "/timeline/\n",
    "/timeline/" + "a" * 2000,
]


# -- the proxies -----------------------------------------------------------------------------
def under_prefix(path: str) -> bool:
    """Whether a request path (query included) is one the proxy passes on."""
    return path == PREFIX or path.startswith((PREFIX + "/", PREFIX + "?"))


class StrippingTransport(httpx.BaseTransport):
    """A reverse proxy in front of `upstream`: serves it under PREFIX, which it strips."""

    def __init__(self, upstream: httpx.BaseTransport) -> None:
        self.upstream = upstream
        self.outside: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Pass a request under the prefix on without it; answer 404 to any other."""
        target = request.url.raw_path.decode("ascii")
        if not under_prefix(target):
            self.outside.append(target)
            return httpx.Response(404, text="not under the proxy's prefix")
        stripped = target[len(PREFIX) :]
        if not stripped.startswith("/"):
            stripped = "/" + stripped
        inner = httpx.Request(
            request.method,
            request.url.copy_with(raw_path=stripped.encode("ascii")),
            headers=request.headers,
            content=request.read(),
        )
        return self.upstream.handle_request(inner)


class PrefixApp:
    """The proxy and the server in one ASGI wrapper: only PREFIX is served, as `root_path`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.outside: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass a request under the prefix on without it; answer 404 to any other."""
        if scope["type"] == "http":
            if not under_prefix(scope["path"]):
                self.outside.append(scope["path"])
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b"not under the prefix"})
                return
            scope = scope | {"root_path": PREFIX}
        await self.app(scope, receive, send)


@dataclass
class Site:
    """A browser's view of the app behind the proxy: its client, and what the proxy refused."""

    client: httpx.Client
    outside: list[str] = field(default_factory=list)


@pytest.fixture
def location(tmp_path: Path, clock: FakeClock) -> str:
    path = str(tmp_path / "timeline.db")
    seed(path, clock)
    return path


@pytest.fixture(params=["uvicorn", "testclient"])
def site(request: pytest.FixtureRequest, location: str, clock: FakeClock) -> Iterator[Site]:
    """The staff app under PREFIX behind a stripping proxy (see the module's docstring)."""
    app = web_app(location, clock)
    if request.param == "uvicorn":
        with running(app, root_path=PREFIX) as base:
            transport = StrippingTransport(httpx.HTTPTransport())
            with httpx.Client(base_url=base, transport=transport) as client:
                found = Site(client)
                found.outside = transport.outside
                yield found
        return
    proxy = PrefixApp(app)
    with TestClient(proxy) as client:
        found = Site(client)
        found.outside = proxy.outside
        yield found


# -- reading pages ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    """A URL a page emits: the tag and attribute it is in, and a form's method."""

    tag: str
    attribute: str
    url: str
    method: str


class _Links(HTMLParser):
    URL_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "xlink:href", "poster"})

    def __init__(self) -> None:
        super().__init__()
        self.found: list[Link] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        method = (dict(attrs).get("method") or "get").lower()
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES and value is not None:
                self.found.append(Link(tag, name, value, method))


def links_of(page: str) -> list[Link]:
    """Every URL in the page's tags (attribute values unescaped, as a browser reads them)."""
    parser = _Links()
    parser.feed(page)
    parser.close()
    return parser.found


def stays_in_app(url: str) -> bool:
    """A fragment, a path under the prefix, or a link to another site."""
    if url.startswith("#"):
        return True
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        ours = parts.hostname in ("127.0.0.1", "localhost", "testserver")
        return parts.scheme in ("http", "https") and not ours
    return parts.path.startswith(PREFIX + "/")


def form_field(page: str, name: str) -> str:
    """The value of the page's (first) field called `name`."""
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, name
    return found.group(1).replace("&amp;", "&")


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """The response's Set-Cookie headers by cookie name."""
    return {c.split("=", 1)[0]: c for c in response.headers.get_list("set-cookie")}


def sign_in(client: httpx.Client, token: str = ADMIN) -> None:
    """Through the sign-in form under the prefix."""
    form = client.get(f"{PREFIX}/sign-in")
    assert form.status_code == 200
    answer = client.post(
        f"{PREFIX}/sign-in",
        data={"token": token, "csrf": form_field(form.text, "csrf"), "next": f"{PREFIX}/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"{PREFIX}/"


# -- the tests -------------------------------------------------------------------------------
def test_every_url_on_every_page_stays_under_the_prefix_and_answers(site: Site) -> None:
    client = site.client
    signed_out = [client.get(f"{PREFIX}/sign-in"), client.get(f"{PREFIX}/sign-in?ended=1")]
    sign_in(client)
    pages = [page for page in signed_out]
    for lang in ("zh-TW", "en"):
        client.cookies.set(i18n.LANG_COOKIE, lang)
        pages += [client.get(PREFIX + path) for path in PAGES]
    assert [p.status_code for p in pages].count(200) == len(pages) - 4  # 404 and 400, twice
    seen: set[Link] = set()
    for page in pages:
        found = links_of(page.text)
        assert found, page.url
        for link in found:
            assert stays_in_app(link.url), (page.url, link)
        seen |= set(found)
    assert {link.tag for link in seen} >= {"a", "link", "script", "form"}
    # Every link and asset leads somewhere: pages, the language switch, CSV, static files,
    # the packaged Swagger UI. Forms that post are not sent here (the round trip test does).
    for link in sorted(seen, key=lambda k: k.url):
        if link.url.startswith("#") or link.method == "post":
            continue
        answer = client.get(link.url, follow_redirects=False)
        assert answer.status_code in (200, 303, 400), (link, answer.status_code)
        if answer.status_code == 303:
            assert answer.headers["location"].startswith(PREFIX + "/"), link
    assert site.outside == []


def test_sign_in_page_language_and_sign_out_round_trip_stays_under_the_prefix(
    site: Site,
) -> None:
    client = site.client
    wanted = f"{PREFIX}/students/S1?as_of=2025-01-01"
    # A stale session: sent to sign in, the stale cookie deleted on the prefix's path.
    stale = client.get(
        wanted, headers={"cookie": f"{SESSION_COOKIE}=garbage"}, follow_redirects=False
    )
    assert stale.status_code == 303
    assert stale.headers["location"] == f"{PREFIX}/sign-in?next={quote(wanted, safe='')}&ended=1"
    assert f"Path={PREFIX};" in set_cookies(stale)[SESSION_COOKIE]
    # Signed out: the page leads to the sign-in form, which leads back to it.
    asked = client.get(wanted, follow_redirects=False)
    assert asked.status_code == 303
    assert asked.headers["location"] == f"{PREFIX}/sign-in?next={quote(wanted, safe='')}"
    form = client.get(asked.headers["location"])
    assert form.status_code == 200
    assert f'action="{PREFIX}/sign-in"' in form.text
    assert form_field(form.text, "next") == wanted
    assert f"Path={PREFIX}/sign-in;" in set_cookies(form)[LOGIN_COOKIE]
    signed = client.post(
        f"{PREFIX}/sign-in",
        data={
            "token": STAFF,
            "csrf": form_field(form.text, "csrf"),
            "next": form_field(form.text, "next"),
        },
        follow_redirects=False,
    )
    assert signed.status_code == 303 and signed.headers["location"] == wanted
    cookies = set_cookies(signed)
    assert f"Path={PREFIX};" in cookies[SESSION_COOKIE]
    assert f"Path={PREFIX}/sign-in;" in cookies[LOGIN_COOKIE]  # deleted where it was set
    assert "Max-Age=0" in cookies[LOGIN_COOKIE]
    page = client.get(signed.headers["location"])
    assert page.status_code == 200 and ">alice<" in page.text
    first_lang = re.search(r'<html lang="([^"]+)"', page.text)
    assert first_lang is not None
    # The language switch comes back to the same page, its cookie on the prefix's path.
    toggle = next(link.url for link in links_of(page.text) if "/lang/" in link.url)
    assert toggle.startswith(f"{PREFIX}/lang/")
    switched = client.get(toggle, follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == wanted
    assert f"Path={PREFIX};" in set_cookies(switched)[i18n.LANG_COOKIE]
    again = client.get(wanted)
    assert again.status_code == 200
    assert f'<html lang="{first_lang.group(1)}"' not in again.text
    # Every cookie the browser keeps is the app's, under its prefix.
    assert {c.name for c in client.cookies.jar} == {SESSION_COOKIE, i18n.LANG_COOKIE}
    assert {c.path for c in client.cookies.jar} == {PREFIX}
    # Sign out: back to the sign-in form, the session cookie deleted on its own path.
    csrf = re.search(rf'action="{PREFIX}/sign-out".*?name="csrf" value="([^"]+)"', again.text, re.S)
    assert csrf is not None
    out = client.post(f"{PREFIX}/sign-out", data={"csrf": csrf.group(1)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == f"{PREFIX}/sign-in?out=1"
    assert f"Path={PREFIX};" in set_cookies(out)[SESSION_COOKIE]
    assert SESSION_COOKIE not in {c.name for c in client.cookies.jar}
    assert client.get(out.headers["location"]).status_code == 200
    assert client.get(wanted, follow_redirects=False).status_code == 303
    assert site.outside == []


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_safe_next_keeps_only_paths_under_the_prefix(target: str | None) -> None:
    assert safe_next(target, PREFIX) == f"{PREFIX}/"


@pytest.mark.parametrize(
    "target",
    [
        "/timeline/",
        "/timeline/students/S1?as_of=2025-01-01&known_at=2024-06-01T00%3A00",
        "/timeline/students?q=..",  # dots in the query are no path segment
        "/timeline/students/a..b",
        "/timeline/lists/overdue?as_of=2025-01-01#list",
    ],
)
def test_safe_next_keeps_a_path_of_the_app(target: str) -> None:
    assert safe_next(target, PREFIX) == target
    assert safe_next(target.removeprefix(PREFIX), "") == target.removeprefix(PREFIX)


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil", "https://evil", "/a/../b"])
def test_safe_next_without_a_prefix_keeps_only_local_paths(target: str) -> None:
    assert safe_next(target) == "/"


def test_hostile_next_values_lead_home_under_the_prefix(site: Site) -> None:
    client = site.client
    # Before signing in: the form carries the home page, not the hostile value.
    for target in HOSTILE_NEXT[1:]:
        form = client.get(f"{PREFIX}/sign-in", params={"next": target})
        assert form_field(form.text, "next") == f"{PREFIX}/", target
    sign_in(client, STAFF)
    for target in HOSTILE_NEXT:
        params = {} if target is None else {"next": target}
        for path in ("/lang/en", "/sign-in"):  # a signed-in browser goes straight on
            answer = client.get(PREFIX + path, params=params, follow_redirects=False)
            assert answer.status_code == 303, (path, target)
            assert answer.headers["location"] == f"{PREFIX}/", (path, target)
    assert site.outside == []


def test_the_docs_and_the_calendar_link_are_under_the_prefix(site: Site) -> None:
    client = site.client
    docs = client.get(f"{PREFIX}/docs")
    assert docs.status_code == 200
    scripts = [link.url for link in links_of(docs.text) if link.tag == "script"]
    assert scripts == [f"{PREFIX}/docs-assets/swagger-ui-bundle.js", f"{PREFIX}/static/docs.js"]
    for url in scripts:
        assert client.get(url).status_code == 200
    # The docs script finds the document beside itself: /timeline/static/.. /openapi.json.
    assert "new URL('../openapi.json', document.currentScript.src)" in client.get(scripts[1]).text
    document = client.get(f"{PREFIX}/openapi.json")
    assert document.json()["servers"] == [{"url": PREFIX}]
    # The API's secret calendar link (not shown on the pages) names the prefix too.
    made = client.post(
        f"{PREFIX}/v1/students/S1/calendar-link", headers={"authorization": f"Bearer {STAFF}"}
    )
    assert made.status_code == 201
    url = made.json()["url"]
    assert urlsplit(url).path == PREFIX + made.json()["path"]
    feed = client.get(urlsplit(url).path)
    assert feed.status_code == 200 and feed.text.startswith("BEGIN:VCALENDAR")
    assert site.outside == []


def test_under_a_prefix_only_the_urls_change(location: str, clock: FakeClock) -> None:
    """Each page under the prefix is the page without it, but for the prefix in its URLs."""
    app = web_app(location, clock)
    plain, prefixed = TestClient(app), TestClient(app, root_path=PREFIX)
    for client, root in ((plain, ""), (prefixed, PREFIX)):
        form = client.get(f"{root}/sign-in")
        client.post(
            f"{root}/sign-in",
            data={"token": ADMIN, "csrf": form_field(form.text, "csrf"), "next": f"{root}/"},
        )

    def unprefixed(text: str) -> str:
        for before, after in (('="/timeline/', '="/'), ("%2Ftimeline%2F", "%2F")):
            text = text.replace(before, after)
        text = text.replace("%252Ftimeline%252F", "%252F")
        return re.sub(r'name="csrf" value="[^"]+"', 'name="csrf" value=""', text)

    compared = 0
    for lang in ("zh-TW", "en"):
        for client in (plain, prefixed):
            client.cookies.set(i18n.LANG_COOKIE, lang)
        for path in [*PAGES, "/sign-in?next=/students/S1"]:
            if path.startswith("/sign-in"):
                lang_only = {i18n.LANG_COOKIE: lang}  # signed out
                expected = TestClient(app, cookies=lang_only).get(path)
                got = TestClient(app, root_path=PREFIX, cookies=lang_only).get(
                    PREFIX + path.replace("=/", f"={PREFIX}/")
                )
            else:
                expected, got = plain.get(path), prefixed.get(PREFIX + path)
            assert got.status_code == expected.status_code, path
            assert PREFIX in got.text, path
            assert unprefixed(got.text) == unprefixed(expected.text), path
            compared += 1
    assert compared == 2 * (len(PAGES) + 1)
