"""The HTTP API, served by a real uvicorn on 127.0.0.1, called with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_server import running

from timeline.api import create_app
from timeline.api_settings import ApiConfig

FEED, STAFF = "feed-secret-0123456789", "staff-secret-0123456789"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    config = ApiConfig.from_env(
        {
            "TIMELINE_FEED_TOKENS": f"feeder:{FEED}:manual",
            "TIMELINE_STAFF_TOKENS": f"staff:{STAFF}",
        },
        str(tmp_path / "t.db"),
    )
    with running(create_app(config)) as url:
        yield url


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ENTRY = {
    "event_id": "e1",
    "student_id": "S1",
    "type": "entered",
    "occurred_on": "2024-03-16",
    "visa": "resident",
}


def test_post_then_read_the_student_view(api):
    r = httpx.post(f"{api}/v1/events", json=ENTRY, headers=_h(FEED))
    assert r.status_code == 200
    assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    again = httpx.post(f"{api}/v1/events", json=[ENTRY], headers=_h(FEED))
    assert again.json()["duplicates"] == 1
    view = httpx.get(f"{api}/v1/students/S1", params={"as_of": "2024-04-16"}, headers=_h(STAFF))
    assert view.status_code == 200
    body = view.json()
    assert body["status"] == "arc_application_overdue"
    assert body["tasks"][0]["due_on"] == "2024-04-15"
    assert body["fines"][0]["accrued_on"] == "2024-04-16"
    history = httpx.get(f"{api}/v1/students/S1/history", headers=_h(STAFF)).json()
    assert [e["event_id"] for e in history] == ["e1"]
    tasks = httpx.get(
        f"{api}/v1/tasks", params={"as_of": "2024-04-16", "status": "overdue"}, headers=_h(STAFF)
    ).json()
    assert [(t["student_id"], t["kind"]) for t in tasks] == [("S1", "apply_arc")]
    fines = httpx.get(f"{api}/v1/fines", params={"as_of": "2024-04-16"}, headers=_h(STAFF))
    assert fines.json()[0]["kind"] == "late_arc_application"
    alerts = httpx.get(f"{api}/v1/alerts", params={"on": "2024-04-16"}, headers=_h(STAFF)).json()
    assert {a["milestone"] for a in alerts} == {"overdue", "accrued"}


def test_tokens_are_checked(api):
    assert httpx.post(f"{api}/v1/events", json=ENTRY).status_code == 401
    assert httpx.post(f"{api}/v1/events", json=ENTRY, headers=_h("nope")).status_code == 401
    assert httpx.post(f"{api}/v1/events", json=ENTRY, headers=_h(STAFF)).status_code == 403
    r = httpx.get(f"{api}/v1/students/S1", headers=_h(FEED))
    assert r.status_code == 403
    assert "error" in r.json()


def test_errors_are_json_with_the_right_status(api):
    unknown = httpx.get(f"{api}/v1/students/NOPE", headers=_h(STAFF))
    assert unknown.status_code == 404
    assert "NOPE" in unknown.json()["error"]
    bad = dict(ENTRY, occurred_on="2024-02-30")
    r = httpx.post(f"{api}/v1/events", json=bad, headers=_h(FEED))
    assert r.status_code == 422
    assert r.json()["rejected"] == [
        {"index": 0, "error": "occurred_on: is not a real calendar date (got '2024-02-30')"}
    ]
    httpx.post(f"{api}/v1/events", json=ENTRY, headers=_h(FEED))
    conflict = httpx.post(
        f"{api}/v1/events",
        json=dict(ENTRY, visa="visitor", stay_until="2024-06-01"),
        headers=_h(FEED),
    )
    assert conflict.status_code == 409
    partial = httpx.post(
        f"{api}/v1/events",
        params={"partial": "true"},
        json=[bad, dict(ENTRY, event_id="e2", student_id="S2")],
        headers=_h(FEED),
    )
    assert partial.status_code == 200
    assert partial.json()["accepted"] == 1
    bad_day = httpx.get(f"{api}/v1/students/S1", params={"as_of": "2024-13-01"}, headers=_h(STAFF))
    assert bad_day.status_code == 400
    assert "as_of" in bad_day.json()["error"]
    schema = httpx.get(f"{api}/openapi.json")
    assert "/v1/students/{student_id}" in schema.json()["paths"]
