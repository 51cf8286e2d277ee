"""No input gives a 500: every route's parameters and bodies, fuzzed with hypothesis.

The TestClient re-raises whatever reaches the catch-all handler, so an example that got
there fails the test with its exception (the first test shows that this detector works).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeline.api import create_app
from timeline.api_settings import ApiConfig
from timeline.clock import parse_day, parse_known_at
from timeline.contract import EVENT_TYPES

FEED = "feed-token-0123456789abcd"
STAFF = "staff-token-0123456789abc"
ENV = {
    "TIMELINE_FEED_TOKENS": f"registrar:{FEED}:registrar|manual",
    "TIMELINE_STAFF_TOKENS": f"alice:{STAFF}",
    "TIMELINE_MAX_BODY_BYTES": "65536",
}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SEED = [
    {
        "event_id": "e1",
        "source": "registrar",
        "student_id": "S1",
        "type": "entered",
        "occurred_on": "2024-03-16",
        "visa": "resident",
    },
    {
        "event_id": "e2",
        "source": "registrar",
        "student_id": "S1",
        "type": "arc_issued",
        "occurred_on": "2024-03-20",
        "valid_until": "2024-09-30",
    },
]
FEED_H = {"Authorization": f"Bearer {FEED}"}
STAFF_H = {"Authorization": f"Bearer {STAFF}"}


def _client(location: str) -> Iterator[TestClient]:
    with TestClient(create_app(ApiConfig.from_env(ENV, location))) as client:
        seeded = client.post("/v1/events", json=SEED, headers=FEED_H)
        assert seeded.status_code == 200, seeded.text
        yield client


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from _client(str(tmp_path_factory.mktemp("fuzz") / "t.db"))


@pytest.fixture
def backend_client(location: str) -> Iterator[TestClient]:
    yield from _client(location)


def test_the_catch_all_answers_500_and_the_fuzz_client_would_raise(tmp_path: Path) -> None:
    app = create_app(ApiConfig.from_env(ENV, str(tmp_path / "t.db")))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as quiet:
        r = quiet.get("/boom")
        assert r.status_code == 500
        assert r.json() == {"error": "internal error (logged)"}
        assert r.headers["x-frame-options"] == "DENY"
    with TestClient(app) as loud, pytest.raises(RuntimeError, match="a bug"):
        loud.get("/boom")


# -- strategies ---------------------------------------------------------------------------
day_texts = st.one_of(
    st.dates(min_value=date(1, 1, 1)).map(date.isoformat),
    st.dates(min_value=date(1940, 1, 1), max_value=date(2110, 12, 31)).map(date.isoformat),
    st.from_regex(r"\A\s?[0-9]{4}-[0-9]{2}-[0-9]{2}\s?\Z"),
    st.from_regex(r"\A[0-9]{8}\Z"),
    st.text(max_size=30),
    st.sampled_from(["", "2024-W01-1", "２０２４-01-01", "9999-12-31", "2024-02-30", "today"]),
)
offsets = st.sampled_from(["", "Z", "+00:00", "+08:00", "-23:59", "+23:59", "+99:00", "+08"])
moment_texts = st.one_of(
    day_texts,
    st.tuples(st.datetimes(), offsets).map(lambda p: p[0].isoformat() + p[1]),
    st.text(alphabet=string.digits + "-:T+Z. ", max_size=40),
)
filters = st.lists(
    st.one_of(st.sampled_from(["overdue", "open", "done", "accrued", "apply_arc"]), st.text()),
    max_size=3,
)
student_ids = st.one_of(st.sampled_from(["S1", "S2"]), st.text(min_size=1, max_size=80))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**17), max_value=10**17)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=15,
)
events = st.fixed_dictionaries(
    {
        "event_id": st.text(max_size=8) | st.sampled_from(["e1", "e2", "x"]),
        "student_id": student_ids,
        "type": st.sampled_from(EVENT_TYPES) | st.text(max_size=8),
        "occurred_on": day_texts,
    },
    optional={
        "source": st.sampled_from(["registrar", " registrar", "manual", "nia", ""]),
        "visa": st.sampled_from(["resident", "visitor", "arc"]) | json_values,
        "valid_until": day_texts,
        "stay_until": day_texts,
        "address": st.text(max_size=30),
        "passport_number": st.text(max_size=40),
        "note": st.text(max_size=30),
        "retracts": st.sampled_from(["e1", "e2"]),
        "reason": st.text(max_size=10),
        "amount_ntd": st.integers(min_value=-(10**17), max_value=10**17) | json_values,
        "kind": st.text(max_size=20),
    },
)
bodies = st.one_of(events, st.lists(events, max_size=4), json_values, st.lists(json_values))


# -- fuzz ---------------------------------------------------------------------------------
@FUZZ
@given(student=student_ids, as_of=st.none() | day_texts, known_at=st.none() | moment_texts)
def test_the_student_routes_never_answer_500(client, student, as_of, known_at):
    params = {k: v for k, v in {"as_of": as_of, "known_at": known_at}.items() if v is not None}
    path = f"/v1/students/{quote(student, safe='')}"
    assert client.get(path, params=params, headers=STAFF_H).status_code in {200, 400, 404}
    assert client.get(f"{path}/history", headers=STAFF_H).status_code in {200, 404}


@FUZZ
@given(as_of=st.none() | day_texts, status=filters, kind=filters, on=st.none() | day_texts)
def test_the_population_routes_never_answer_500(client, as_of, status, kind, on):
    params: dict[str, Any] = {"status": status, "kind": kind}
    if as_of is not None:
        params["as_of"] = as_of
    assert client.get("/v1/tasks", params=params, headers=STAFF_H).status_code in {200, 400}
    fines = {k: v for k, v in params.items() if k != "kind"}
    assert client.get("/v1/fines", params=fines, headers=STAFF_H).status_code in {200, 400}
    alerts = {} if on is None else {"on": on}
    assert client.get("/v1/alerts", params=alerts, headers=STAFF_H).status_code in {200, 400}


@FUZZ
@given(text=day_texts, moment=moment_texts)
def test_the_api_accepts_exactly_the_dates_the_cli_accepts(client, text, moment):
    def cli_accepts(parse: Any, value: str) -> bool:
        try:
            parse(value)
        except ValueError:
            return False
        return True

    r = client.get("/v1/students/S1", params={"as_of": text}, headers=STAFF_H)
    assert r.status_code == (200 if cli_accepts(parse_day, text) else 400)
    if r.status_code == 400:
        assert r.json()["error"].startswith("as_of: ")
    r = client.get("/v1/alerts", params={"on": text}, headers=STAFF_H)
    assert r.status_code == (200 if cli_accepts(parse_day, text) else 400)
    r = client.get(
        "/v1/students/S1", params={"as_of": "2024-06-01", "known_at": moment}, headers=STAFF_H
    )
    assert r.status_code == (200 if cli_accepts(parse_known_at, moment) else 400)


@FUZZ
@given(body=bodies, partial=st.booleans())
def test_posted_bodies_never_answer_500(backend_client, body, partial):
    r = backend_client.post(
        "/v1/events", params={"partial": str(partial).lower()}, json=body, headers=FEED_H
    )
    assert r.status_code in {200, 400, 403, 409, 422}
    assert "error" in r.json() or r.status_code == 200


@FUZZ
@given(
    raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
    content_type=st.none() | st.text(alphabet=string.printable.strip(), max_size=40),
    partial=st.text(alphabet=string.ascii_letters + string.digits, max_size=6),
)
def test_raw_bytes_and_content_types_never_answer_500(client, raw, content_type, partial):
    headers = dict(FEED_H)
    if content_type is not None:
        headers["content-type"] = content_type
    r = client.post("/v1/events", params={"partial": partial}, content=raw, headers=headers)
    assert r.status_code in {200, 400, 403, 409, 415, 422}


@pytest.mark.parametrize("size", [10_000, 60_000])
def test_huge_query_strings_are_400(client, size):
    r = client.get("/v1/students/S1", params={"as_of": "9" * size}, headers=STAFF_H)
    assert r.status_code == 400
    assert len(r.content) < 1000  # the value is not echoed back in full


def test_far_dates_inside_the_range_are_answered(client):
    for day in ("1950-01-01", "2100-12-31"):
        assert client.get("/v1/alerts", params={"on": day}, headers=STAFF_H).status_code == 200
        r = client.get("/v1/students/S1", params={"as_of": day}, headers=STAFF_H)
        assert r.status_code == 200
