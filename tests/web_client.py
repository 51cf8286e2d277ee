"""Helpers for the staff web app's tests: a seeded store, the app, a signed-in client.

Not a test module (no `test_` prefix): imported by the test files next to it.
"""

from __future__ import annotations

import re
from typing import Any

from conftest import FakeClock
from fastapi import FastAPI
from fastapi.testclient import TestClient

from timeline.api_settings import ApiConfig
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore
from web.app import create_app
from web.settings import WebSettings

STAFF = "staff-secret-0123456789"
ADMIN = "admin-secret-0123456789"
FEED = "feed-secret-01234567890"
SECRET = b"session-key-for-tests-0123456789"
HOSTILE_ID = '"><img src=x onerror=alert(1)>'
HOSTILE_NOTE = "<script>alert('note')</script> & </td></tr>"


def ev(student: str, event_id: str, type_: str, on: str, **fields: Any) -> dict[str, Any]:
    """A raw feed event."""
    return {"event_id": event_id, "student_id": student, "type": type_, "occurred_on": on, **fields}


# S1 enters on a resident visa and applies; the ARC (valid to 2025-03-31) is recorded 30
# days later. S2 enters and never applies (overdue, late fine); its note is hostile.
FIRST_BATCH = [
    ev("S1", "s1-in", "entered", "2024-03-16", visa="resident"),
    ev("S1", "s1-ap", "arc_applied", "2024-04-01", application="initial"),
    ev("S2", "s2-in", "entered", "2024-03-16", visa="resident", note=HOSTILE_NOTE),
    ev(HOSTILE_ID, "h-in", "entered", "2024-03-16", visa="resident", note=HOSTILE_NOTE),
    ev("=1+2", "f-in", "entered", "2024-03-20", visa="resident"),
]
SECOND_BATCH = [ev("S1", "s1-is", "arc_issued", "2024-04-20", valid_until="2025-03-31")]


def seed(location: str, clock: FakeClock) -> None:
    """Store the scenario: the first batch at the clock's start, the second 30 days later."""
    with TimelineStore.open(location, clock=clock) as store:
        assert not ingest_objects(store, FIRST_BATCH).rejected
        clock.advance(days=30)
        assert not ingest_objects(store, SECOND_BATCH).rejected
        clock.advance(days=1)


def config(location: str, read_db: str | None = None, **extra: str) -> ApiConfig:
    """Staff `alice`, admin `root` and feed `desk` tokens on `location`."""
    env = {
        "TIMELINE_STAFF_TOKENS": f"alice:{STAFF}",
        "TIMELINE_ADMIN_TOKENS": f"root:{ADMIN}",
        "TIMELINE_FEED_TOKENS": f"desk:{FEED}:manual",
        **extra,
    }
    return ApiConfig.from_env(env, location, read_db)


def web_app(location: str, clock: FakeClock, read_db: str | None = None, **extra: str) -> FastAPI:
    """The staff app on `location`, with a fixed session key and the injected clock.

    On PostgreSQL, pass `read_db` (else the read models go to ./timeline-read.db).
    """
    settings = WebSettings(SECRET)
    return create_app(config(location, read_db, **extra), settings=settings, clock=clock)


def login_form(client: TestClient) -> str:
    """Open the sign-in page; the form's CSRF token (its cookie is now in the client)."""
    page = client.get("/sign-in")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def signed_in(app: FastAPI, token: str = STAFF) -> TestClient:
    """A client that went through the sign-in form with `token`."""
    client = TestClient(app)
    response = client.post(
        "/sign-in",
        data={"token": token, "csrf": login_form(client), "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return client


def csrf_of(page_html: str) -> str:
    """The session's CSRF token, from the sign-out form of a page."""
    found = re.search(r'action="/sign-out".*?name="csrf" value="([^"]+)"', page_html, re.S)
    assert found is not None
    return found.group(1)
