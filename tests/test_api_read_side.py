"""The HTTP read side: the rules come from one configuration read, broken students are
named rather than breaking the answer, and storage trouble never leaks a location."""

from __future__ import annotations

from datetime import date

import httpx
import pytest
from api_server import running
from test_api_fuzz import ENV, STAFF_H
from test_read_side_robustness import BROKEN, populate

from projections.rules import DEFAULT_RULES
from timeline.api import LEFT_OUT, LEFT_OUT_COUNT, create_app
from timeline.api_settings import ApiConfig, ApiConfigError
from timeline.ingest import ingest_objects


def test_population_routes_name_the_students_they_leave_out(store, location, tmp_path):
    populate(store)
    app = create_app(ApiConfig.from_env(ENV, location, str(tmp_path / "read.db")))
    with running(app) as base:
        for route in (
            "/v1/tasks?as_of=2024-05-01",
            "/v1/fines?as_of=2024-05-01",
            "/v1/alerts?on=2024-05-01",
        ):
            response = httpx.get(base + route, headers=STAFF_H)
            assert response.status_code == 200, route
            assert isinstance(response.json(), list)
            assert response.headers[LEFT_OUT_COUNT] == str(len(BROKEN))
            assert sorted(response.headers[LEFT_OUT].split(",")) == BROKEN
            assert not {row["student_id"] for row in response.json()} & set(BROKEN)


def test_a_healthy_population_has_no_left_out_header(store, location, tmp_path):
    events = [
        {
            "event_id": "a",
            "student_id": "S1",
            "type": "entered",
            "occurred_on": "2024-03-16",
            "visa": "resident",
        }
    ]
    assert ingest_objects(store, events).ok
    app = create_app(ApiConfig.from_env(ENV, location, str(tmp_path / "read.db")))
    with running(app) as base:
        response = httpx.get(base + "/v1/tasks?as_of=2024-05-01", headers=STAFF_H)
    assert response.status_code == 200 and len(response.json()) == 1
    assert LEFT_OUT not in response.headers


def test_a_student_that_cannot_be_derived_is_422_without_personal_data(sqlite_store, tmp_path):
    populate(sqlite_store)
    location = sqlite_store.config.location
    app = create_app(ApiConfig.from_env(ENV, location, str(tmp_path / "read.db")))
    with running(app) as base:
        response = httpx.get(base + "/v1/students/BUG?as_of=2024-05-01", headers=STAFF_H)
        healthy = httpx.get(base + "/v1/students/OK1?as_of=2024-05-01", headers=STAFF_H)
    assert response.status_code == 422
    assert "BUG" in response.json()["error"]
    assert "P98765432X" not in response.text
    assert healthy.status_code == 200


def test_the_api_uses_the_rules_it_was_given_not_the_environment(sqlite_store, tmp_path):
    # Entry 2024-03-21 + 30 days = Saturday 2024-04-20; R-DEADLINE-ROLLOVER moves it to
    # Monday 2024-04-22. The environment says 'off': the rules handed over win.
    events = [
        {
            "event_id": "a",
            "student_id": "S1",
            "type": "entered",
            "occurred_on": "2024-03-21",
            "visa": "resident",
        }
    ]
    assert ingest_objects(sqlite_store, events).ok
    location = sqlite_store.config.location
    rollover = DEFAULT_RULES.with_settings(deadline_rollover=True)
    due = {}
    for name, rules in (("default", DEFAULT_RULES), ("rollover", rollover)):
        env = ENV | {"TIMELINE_DEADLINE_ROLLOVER": "0"}
        app = create_app(ApiConfig.from_env(env, location, str(tmp_path / f"{name}.db")), rules)
        with running(app) as base:
            view = httpx.get(base + "/v1/students/S1?as_of=2024-04-01", headers=STAFF_H).json()
            tasks = httpx.get(base + "/v1/tasks?as_of=2024-04-01", headers=STAFF_H).json()
        due[name] = (view["tasks"][0]["due_on"], tasks[0]["due_on"])
    assert date.fromisoformat("2024-04-20").weekday() == 5
    assert due == {
        "default": ("2024-04-20", "2024-04-20"),
        "rollover": ("2024-04-22", "2024-04-22"),
    }


def test_storage_trouble_is_503_and_never_names_the_database(tmp_path):
    secret_place = "postgresql://admin:hunter2@127.0.0.1:1/secretdb"
    app = create_app(ApiConfig.from_env(ENV, secret_place, str(tmp_path / "read.db")))
    with running(app) as base:
        response = httpx.get(base + "/v1/students/S1", headers=STAFF_H, timeout=30)
    assert response.status_code == 503
    assert "hunter2" not in response.text and "secretdb" not in response.text


def test_an_invalid_rule_setting_stops_the_app_before_creation(tmp_path):
    # The configuration is read (and refused) once, before the app exists; create_app
    # itself never reads the environment (see the test above).
    with pytest.raises(ApiConfigError, match="TIMELINE_VISITOR_READING"):
        ApiConfig.from_env({**ENV, "TIMELINE_VISITOR_READING": "sideways"}, str(tmp_path / "t.db"))
