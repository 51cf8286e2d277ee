"""The audit of access: one append-only row per view of a student's record, on both backends."""

from __future__ import annotations

import pytest
from conftest import FakeClock
from fastapi.testclient import TestClient
from web_client import ADMIN, HOSTILE_NOTE, STAFF, seed, signed_in, web_app

from timeline.audit import TABLE, accesses
from timeline.store import TimelineStore


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_view_of_a_record_appends_one_row_with_token_name_time_and_route(
    location, clock, tmp_path
):
    seed(location, clock)
    app = web_app(location, clock, str(tmp_path / "read.db"))
    staff = signed_in(app)
    first = clock.now
    assert staff.get("/students/S1", params={"as_of": "2025-04-10"}).status_code == 200
    later = clock.advance(minutes=1)
    api = TestClient(app)
    assert api.get("/v1/students/S2", headers=_bearer(STAFF)).status_code == 200
    assert api.get("/v1/students/S2/history", headers=_bearer(ADMIN)).status_code == 200
    assert staff.get("/students/S1", params={"format": "json"}).status_code == 200
    # Not a view of a record: an unknown student, a list, a search.
    assert api.get("/v1/students/NOPE", headers=_bearer(STAFF)).status_code == 404
    assert staff.get("/students/NOPE").status_code == 404
    assert staff.get("/lists/overdue", params={"as_of": "2024-05-01"}).status_code == 200

    with TimelineStore.open(location) as store:
        rows, total = accesses(store)
    assert total == 4
    newest_first = [(r.token_name, r.route, r.student_id) for r in rows]
    assert newest_first == [
        ("alice", "GET /students/{student_id}", "S1"),
        ("root", "GET /v1/students/{student_id}/history", "S2"),
        ("alice", "GET /v1/students/{student_id}", "S2"),
        ("alice", "GET /students/{student_id}", "S1"),
    ]
    assert rows[-1].at == first and rows[0].at == later


def test_the_audit_table_refuses_update_and_delete(location, clock):
    seed(location, clock)
    signed_in(web_app(location, clock)).get("/students/S1")
    with TimelineStore.open(location) as store:
        schema = store.recorder.datastore.schema if store.config.is_postgres else None
        table = f'"{schema}".{TABLE}' if schema else TABLE
        for statement in (
            f"UPDATE {table} SET token_name = 'someone-else'",
            f"DELETE FROM {table}",
        ):
            with (
                pytest.raises(Exception, match="append-only"),
                store.recorder.datastore.transaction(commit=True) as cursor,
            ):
                cursor.execute(statement)
        rows, total = accesses(store)
    assert total == 1 and rows[0].token_name == "alice"


def test_a_staff_token_cannot_read_the_audit_and_an_admin_can(location, clock):
    seed(location, clock)
    app = web_app(location, clock)
    staff = signed_in(app)
    staff.get("/students/S2")
    assert staff.get("/audit").status_code == 403
    assert staff.get("/audit", params={"format": "json"}).status_code == 403
    api = TestClient(app)
    refused = api.get("/v1/audit", headers=_bearer(STAFF))
    assert refused.status_code == 403 and "audit" in refused.json()["error"]
    assert api.get("/v1/audit").status_code == 401

    admin = signed_in(app, ADMIN)
    page = admin.get("/audit")
    assert page.status_code == 200 and "GET /students/{student_id}" in page.text
    listed = admin.get("/audit", params={"format": "json"}).json()
    assert listed["total"] == 1
    assert listed["rows"][0]["token_name"] == "alice"
    assert listed["rows"][0]["student_id"] == "S2"
    by_api = api.get("/v1/audit", headers=_bearer(ADMIN), params={"student_id": "S2"})
    assert by_api.status_code == 200 and by_api.headers["x-total-count"] == "1"
    # The audit holds who, when, which route and whose record: nothing of the record.
    assert set(by_api.json()[0]) == {"id", "at", "token_name", "route", "student_id"}
    assert HOSTILE_NOTE not in by_api.text and "resident" not in by_api.text


def test_a_store_replaced_at_the_same_path_gets_its_audit_table_again(tmp_path, clock):
    path = tmp_path / "timeline.db"
    seed(str(path), clock)
    staff = signed_in(web_app(str(path), clock))
    assert staff.get("/students/S1").status_code == 200
    for leftover in tmp_path.glob("timeline.db*"):
        leftover.unlink()
    seed(str(path), FakeClock())  # a new store (a restore) where the old one was
    assert staff.get("/students/S1").status_code == 200
    with TimelineStore.open(str(path)) as store:
        rows, total = accesses(store)
    assert total == 1 and rows[0].student_id == "S1"
