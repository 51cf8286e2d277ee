"""Authorization and hygiene of the HTTP API (issue 7): sources, body limit, no echo of
personal data, strict dates, security headers, tokens kept out of logs.

Served by a real uvicorn on 127.0.0.1 (and, for the logs, by `timeline serve` itself).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from api_server import free_port, running
from click.testing import CliRunner

from timeline.api import create_app
from timeline.api_settings import (
    DEFAULT_MAX_BODY_BYTES,
    ApiConfig,
    ApiConfigError,
    parse_tokens,
)
from timeline.cli import main

REGISTRAR = "registrar-token-0123456789"
SIS = "sis-token-0123456789abcdef"
DESK = "desk-token-0123456789abcd"
IMPORT = "import-token-0123456789ab"
STAFF = "staff-token-0123456789abc"
LIMIT = 4096
ENV = {
    "TIMELINE_FEED_TOKENS": (
        f"registrar:{REGISTRAR}:registrar, sis:{SIS}:sis|sis-backfill, desk:{DESK}:manual,"
        f"import:{IMPORT}:*"
    ),
    "TIMELINE_STAFF_TOKENS": f"alice:{STAFF}",
    "TIMELINE_MAX_BODY_BYTES": str(LIMIT),
}
ADDRESS = "No. 77, Lane 3, Secretive Rd, Da'an District"
PASSPORT = "ZX9081726"
NOTE = "lives with her aunt, phone 0912-345-678"


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _event(event_id: str, source: str | None = "registrar", **fields: object) -> dict:
    event: dict[str, object] = {
        "event_id": event_id,
        "student_id": "S1",
        "type": "entered",
        "occurred_on": "2024-03-16",
        "visa": "resident",
    }
    if source is not None:
        event["source"] = source
    return event | fields


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    with running(create_app(ApiConfig.from_env(ENV, str(tmp_path / "t.db")))) as url:
        yield url


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the many cases that store nothing new (a server stops in ~0.2 s)."""
    location = str(tmp_path_factory.mktemp("api") / "t.db")
    with running(create_app(ApiConfig.from_env(ENV, location))) as url:
        yield url


def _history(api: str, student: str = "S1") -> list[dict]:
    r = httpx.get(f"{api}/v1/students/{student}/history", headers=_h(STAFF))
    assert r.status_code == 200
    return r.json()


# -- tokens bound to sources --------------------------------------------------------------
def test_feed_token_may_not_write_under_another_source(api):
    r = httpx.post(f"{api}/v1/events", json=_event("e1", "nia"), headers=_h(REGISTRAR))
    assert r.status_code == 403
    assert "'registrar'" in r.json()["error"] and "'nia'" in r.json()["error"]
    assert _history(api) == []
    ok = httpx.post(f"{api}/v1/events", json=_event("e1", "registrar"), headers=_h(REGISTRAR))
    assert ok.status_code == 200
    assert ok.json()["accepted"] == 1


def test_feed_token_may_not_retract_another_sources_event(api):
    assert httpx.post(f"{api}/v1/events", json=_event("e1"), headers=_h(REGISTRAR)).is_success
    retraction = _event("r1", "registrar", type="retracted", retracts="e1", reason="wrong")
    del retraction["visa"]
    r = httpx.post(f"{api}/v1/events", json=retraction, headers=_h(SIS))
    assert r.status_code == 403
    # Under its own source the retraction cannot reach the registrar's event either.
    # (A retraction whose target is not stored conflicts with the store's state: 409.)
    own = httpx.post(f"{api}/v1/events", json=retraction | {"source": "sis"}, headers=_h(SIS))
    assert own.status_code == 409
    assert own.json()["rejected"][0]["error"].startswith("retracts: no event 'e1'")
    [entry] = _history(api)
    assert entry["event_id"] == "e1"
    assert not entry["retracted"]


def test_an_event_without_source_is_written_under_manual(api):
    no_source = _event("e1", None)
    assert httpx.post(f"{api}/v1/events", json=no_source, headers=_h(REGISTRAR)).status_code == 403
    assert _history(api) == []
    r = httpx.post(f"{api}/v1/events", json=no_source, headers=_h(DESK))
    assert r.status_code == 200
    assert [e["source"] for e in _history(api)] == ["manual"]


def test_one_foreign_event_refuses_the_whole_batch_also_when_partial(api):
    batch = [_event("e1", "sis"), _event("e2", "sis-backfill"), _event("e3", "registrar")]
    for params in ({}, {"partial": "true"}):
        r = httpx.post(f"{api}/v1/events", params=params, json=batch, headers=_h(SIS))
        assert r.status_code == 403
        assert "index 2" in r.json()["error"]
        assert _history(api) == []
    r = httpx.post(f"{api}/v1/events", json=batch[:2], headers=_h(SIS))
    assert r.json()["accepted"] == 2


def test_the_source_is_judged_as_the_contract_stores_it(api):
    padded = _event("e1", "  registrar ")
    assert httpx.post(f"{api}/v1/events", json=padded, headers=_h(REGISTRAR)).status_code == 200
    assert [e["source"] for e in _history(api)] == ["registrar"]
    r = httpx.post(f"{api}/v1/events", json=_event("e2", " nia"), headers=_h(REGISTRAR))
    assert r.status_code == 403


def test_a_star_token_writes_under_any_source_and_staff_tokens_never_write(api):
    r = httpx.post(
        f"{api}/v1/events", json=[_event("e1", "nia"), _event("e2", None)], headers=_h(IMPORT)
    )
    assert r.status_code == 200
    assert r.json()["accepted"] == 2
    assert httpx.post(f"{api}/v1/events", json=_event("e3"), headers=_h(STAFF)).status_code == 403
    assert httpx.get(f"{api}/v1/students/S1", headers=_h(IMPORT)).status_code == 403


# -- body limit and body parsing ----------------------------------------------------------
def _padded_array(size: int) -> bytes:
    body = b'[{"event_id": "e1", "source": "registrar", "student_id": "S1", "type": "entered",'
    body += b' "occurred_on": "2024-03-16", "visa": "resident"}]'
    return body + b" " * (size - len(body))


def test_a_body_over_the_limit_is_413_by_content_length(api):
    r = httpx.post(
        f"{api}/v1/events",
        content=_padded_array(LIMIT + 1),
        headers=_h(REGISTRAR) | {"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert str(LIMIT) in r.json()["error"]
    assert "event_id" not in r.text
    assert _history(api) == []
    at_limit = httpx.post(
        f"{api}/v1/events",
        content=_padded_array(LIMIT),
        headers=_h(REGISTRAR) | {"content-type": "application/json"},
    )
    assert at_limit.status_code == 200
    assert at_limit.json()["accepted"] == 1


def test_a_chunked_body_over_the_limit_is_413(api):
    body = _padded_array(LIMIT * 2)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    r = httpx.post(
        f"{api}/v1/events",
        content=chunks(),
        headers=_h(REGISTRAR) | {"content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert _history(api) == []
    small = _padded_array(LIMIT - 10)
    ok = httpx.post(
        f"{api}/v1/events",
        content=iter([small[:100], small[100:]]),
        headers=_h(REGISTRAR) | {"content-type": "application/json"},
    )
    assert ok.status_code == 200


def test_the_token_is_checked_before_the_body_is_read(api):
    r = httpx.post(f"{api}/v1/events", content=b"x" * (LIMIT * 4), headers=_h("nope"))
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"event_id": "e1", "address": "%s", "address": "x"}', "duplicate key"),
        (b'[{"note": "%s", "a": ' + b"[" * 40 + b"]" * 40 + b"}]", "nested"),
        (b'{"note": "%s", "amount_ntd": NaN}', "NaN"),
        (b'{"note": "%s", "amount_ntd": 1' + b"0" * 30 + b"}", "digits"),
        (b'{"note": "%s", "amount_ntd": 1,}', "invalid JSON"),
        (b'{"note": "%s\xff\xfe"}', "UTF-8"),
        (b"   ", "empty"),
    ],
)
def test_a_malformed_body_is_400_naming_the_problem_without_echo(shared_api, body, reason):
    if b"%s" in body:
        body = body.replace(b"%s", ADDRESS.encode())
    r = httpx.post(
        f"{shared_api}/v1/events",
        content=body,
        headers=_h(REGISTRAR) | {"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert reason in r.json()["error"]
    assert "Secretive" not in r.text


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_that_is_not_json_by_content_type_is_415(shared_api, content_type):
    r = httpx.post(
        f"{shared_api}/v1/events",
        content=b'{"event_id": "e1"}',
        headers=_h(REGISTRAR) | {"content-type": content_type},
    )
    assert r.status_code == 415
    assert "Content-Type" in r.json()["error"]
    ok = httpx.post(
        f"{shared_api}/v1/events",
        content=_padded_array(300),
        headers=_h(REGISTRAR) | {"content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200


# -- personal data never echoed -----------------------------------------------------------
def test_rejections_name_the_field_but_never_echo_personal_data(api):
    events = [
        _event("a1", None, type="address_changed", occurred_on="2024-02-30", address=ADDRESS)
        | {"note": NOTE},
        _event("p1", None, type="passport_replaced", occurred_on="16/03/2024")
        | {"passport_number": PASSPORT, "note": NOTE},
        _event("a2", None, type="address_changed", address=ADDRESS, bogus=1),
    ]
    for event in events:
        del event["visa"]
    for params in ({}, {"partial": "true"}):
        r = httpx.post(f"{api}/v1/events", params=params, json=events, headers=_h(DESK))
        assert r.status_code == (200 if params else 422)
        rejected = r.json()["rejected"]
        assert [x["index"] for x in rejected] == [0, 1, 2]
        assert rejected[0]["error"].startswith("occurred_on:")
        assert rejected[1]["error"].startswith("occurred_on:")
        assert rejected[2]["error"].startswith("bogus:")
        for secret in (ADDRESS, PASSPORT, NOTE, "Secretive", "0912"):
            assert secret not in r.text


def test_a_bad_query_parameter_is_not_echoed(api):
    r = httpx.post(
        f"{api}/v1/events", params={"partial": PASSPORT}, json=_event("e1"), headers=_h(REGISTRAR)
    )
    assert r.status_code == 400
    assert r.json()["error"].startswith("partial:")
    assert PASSPORT not in r.text


# -- dates parsed as the CLI parses them --------------------------------------------------
@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        ("/v1/students/S1", "as_of", "20240101"),
        ("/v1/students/S1", "as_of", "2024-W01-1"),
        ("/v1/students/S1", "as_of", ""),
        ("/v1/students/S1", "known_at", "2024-01-01T00:00:00+99:00"),
        ("/v1/students/S1", "known_at", "0001-01-01T00:00:00+01:00"),
        ("/v1/students/S1", "known_at", "9999-12-31T23:59:59-23:59"),
        ("/v1/tasks", "as_of", "1949-12-31"),
        ("/v1/fines", "as_of", "2101-01-01"),
        ("/v1/alerts", "on", "9999-12-31"),
        ("/v1/alerts", "on", "0001-01-01"),
    ],
)
def test_a_date_the_cli_refuses_is_400_naming_the_parameter(shared_api, path, param, value):
    stored = httpx.post(f"{shared_api}/v1/events", json=_event("e1"), headers=_h(REGISTRAR))
    assert stored.is_success
    r = httpx.get(f"{shared_api}{path}", params={param: value}, headers=_h(STAFF))
    assert r.status_code == 400
    assert r.json()["error"].startswith(f"{param}: ")
    option = {"as_of": "--as-of", "known_at": "--known-at", "on": "--on"}[param]
    command = "alerts" if param == "on" else "show"
    args = [command, option, value] if command == "alerts" else ["show", "S1", option, value]
    assert CliRunner().invoke(main, args).exit_code == 2


# -- security headers ---------------------------------------------------------------------
def test_every_response_carries_the_security_headers(api):
    httpx.post(f"{api}/v1/events", json=_event("e1"), headers=_h(REGISTRAR))
    responses = [
        httpx.get(f"{api}/openapi.json"),
        httpx.get(f"{api}/v1/students/S1", params={"as_of": "2024-04-01"}, headers=_h(STAFF)),
        httpx.get(f"{api}/v1/students/S1"),
        httpx.get(f"{api}/no/such/page"),
        httpx.post(f"{api}/v1/events", content=b"x" * (LIMIT + 1), headers=_h(REGISTRAR)),
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 404, 413]
    for r in responses:
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"


# -- raw bytes on the wire ----------------------------------------------------------------
def _raw_status(api: str, request_line: bytes, token: str = STAFF) -> int:
    host, port = urlsplit(api).hostname, urlsplit(api).port
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(
            request_line + b"\r\nHost: x\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /v1/students/%FF%FE HTTP/1.1",
        b"GET /v1/students/%00%0A%1B/history HTTP/1.1",
        b"GET /v1/alerts?on=%FF%FE%00 HTTP/1.1",
        b"GET /v1/tasks?as_of=2024-01-01&status=%C0%AF&kind=%00 HTTP/1.1",
        b"GET /v1/students/S1?as_of=" + b"9" * 6000 + b" HTTP/1.1",
    ],
)
def test_odd_bytes_on_the_wire_never_give_a_500(shared_api, request_line):
    assert _raw_status(shared_api, request_line) in {200, 400, 404}


def test_a_header_without_end_is_cut_off_not_buffered(shared_api):
    """h11 stops a request head at 16 KB; httptools (uvicorn's "auto" when installed)
    would buffer all of it: 8 MB here, a server's memory with a few connections."""
    parts = urlsplit(shared_api)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        with pytest.raises(OSError):  # reset (or a broken pipe) long before the 8 MB
            for _ in range(128):
                conn.sendall(b"a" * 65536)
                sent += 65536
    assert sent < 4 * 1024 * 1024


def test_a_body_that_stops_arriving_is_408_not_a_connection_held_open(tmp_path):
    """A chunked body without its end (or short of its Content-Length) held the request
    open for as long as the client liked: minutes, with a feed token (one fd each)."""
    config = dataclasses.replace(
        ApiConfig.from_env(ENV, str(tmp_path / "t.db")), body_idle_seconds=0.5
    )
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + REGISTRAR.encode()
        + b"\r\nContent-Type: application/json\r\n"
    )
    with running(create_app(config)) as api:
        parts = urlsplit(api)
        for request in (
            head + b"Transfer-Encoding: chunked\r\n\r\n5\r\n[{}, \r\n",
            head + b"Content-Length: 100\r\n\r\n[{}, ",
        ):
            with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
                conn.sendall(request)
                started = time.monotonic()
                reply = conn.recv(65536)
            assert time.monotonic() - started < 5
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:80]
            assert b'{"error":"the body stopped arriving' in reply
        # A body arriving in pieces, each within the limit, is read whole.
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
            body = json.dumps(_event("slow-1")).encode()
            conn.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            for piece in (body[:10], body[10:30], body[30:]):
                time.sleep(0.2)
                conn.sendall(piece)
            assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")


# -- configuration ------------------------------------------------------------------------
def test_token_settings_name_each_token_and_bind_feed_tokens_to_sources():
    config = ApiConfig.from_env(ENV)
    assert [(t.name, sorted(t.sources)) for t in config.feed_tokens] == [
        ("registrar", ["registrar"]),
        ("sis", ["sis", "sis-backfill"]),
        ("desk", ["manual"]),
        ("import", ["*"]),
    ]
    assert [t.name for t in config.staff_tokens] == ["alice"]
    assert config.max_body_bytes == LIMIT
    assert ApiConfig.from_env({}).max_body_bytes == DEFAULT_MAX_BODY_BYTES == 10 * 1024 * 1024
    assert REGISTRAR not in repr(config)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("TIMELINE_FEED_TOKENS", "ok:%s:registrar,%s", "entry 2: a bare token"),
        ("TIMELINE_FEED_TOKENS", "sis:%s", "entry 1: expected name:token:source"),
        ("TIMELINE_FEED_TOKENS", "sis:%s:", "entry 1 (sis): sources"),
        ("TIMELINE_FEED_TOKENS", "sis:%s:a b", "entry 1 (sis): sources"),
        ("TIMELINE_FEED_TOKENS", "sis:short:sis", "at least 16"),
        ("TIMELINE_FEED_TOKENS", "a:%s:x, a:%s-other:y", "names must be unique"),
        ("TIMELINE_FEED_TOKENS", "a:%s:x, b:%s:y", "configured twice"),
        ("TIMELINE_STAFF_TOKENS", "%s", "entry 1: a bare token"),
        ("TIMELINE_STAFF_TOKENS", "alice:%s:registrar", "expected name:token"),
        ("TIMELINE_STAFF_TOKENS", "al ice:%s", "the name must be"),
        ("TIMELINE_MAX_BODY_BYTES", "ten", "TIMELINE_MAX_BODY_BYTES"),
        ("TIMELINE_MAX_BODY_BYTES", "0", "TIMELINE_MAX_BODY_BYTES"),
    ],
)
def test_a_bad_token_setting_is_refused_naming_the_setting_never_the_token(setting, value, message):
    secret = "s3cret-value-0123456789"
    text = value.replace("%s", secret)
    with pytest.raises(ApiConfigError) as refused:
        ApiConfig.from_env({setting: text})
    assert setting in str(refused.value) or "/" in str(refused.value)
    assert message in str(refused.value)
    assert secret not in str(refused.value)


def test_staff_tokens_carry_no_sources():
    [token] = parse_tokens("TIMELINE_STAFF_TOKENS", f" alice : {STAFF} ,", feed=False)
    assert (token.name, token.sources) == ("alice", frozenset())
    assert token.matches(STAFF) and not token.matches(STAFF + "x")


def test_serve_refuses_old_style_bare_tokens_at_start_up(tmp_path):
    result = CliRunner().invoke(
        main,
        ["--db", str(tmp_path / "t.db"), "serve"],
        env={"TIMELINE_FEED_TOKENS": REGISTRAR, "TIMELINE_STAFF_TOKENS": ""},
    )
    assert result.exit_code == 2
    assert "TIMELINE_FEED_TOKENS entry 1" in result.output
    assert REGISTRAR not in result.output


# -- tokens never in logs (a real `timeline serve`) ---------------------------------------
def _timeline() -> list[str]:
    script = Path(sys.executable).with_name("timeline")
    return [str(script)] if script.exists() else [sys.executable, "-m", "timeline.cli"]


def _wait_until_serving(proc: subprocess.Popen, base: str) -> None:
    """Until `timeline serve` answers on `base` (its output, should it exit first)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            return
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)


def test_serve_logs_one_line_per_request_and_never_a_token(tmp_path):
    port = free_port()
    env = os.environ | ENV
    db = str(tmp_path / "t.db")
    subprocess.run([*_timeline(), "--db", db, "init"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [*_timeline(), "--db", db, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(proc, base)
        httpx.post(f"{base}/v1/events", json=_event("e1"), headers=_h(REGISTRAR))
        httpx.get(f"{base}/v1/alerts", params={"on": "2024-04-16", "token": STAFF})
        httpx.get(f"{base}/v1/students/S1", params={"access_token": STAFF}, headers=_h(STAFF))
        httpx.get(f"{base}/v1/students/{STAFF}", params={"as_of": REGISTRAR}, headers=_h(STAFF))
        httpx.get(f"{base}/v1/tasks", params={"api_key": "k-1", "as_of": "2024-04-16"})
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode in (0, -15), output  # uvicorn re-raises SIGTERM after shutdown
    for secret in (REGISTRAR, STAFF, "k-1"):
        assert secret not in output
    access = [line for line in output.splitlines() if "timeline.access" in line]
    assert len(access) == 6, output
    assert re.search(r"POST /v1/events 200 [\d.]+ms token=registrar$", access[1])
    assert re.search(r"GET /v1/alerts\?on=2024-04-16&token=\[redacted\] 401 ", access[2])
    assert "GET /v1/students/S1?access_token=[redacted] 200 " in access[3]
    assert access[3].endswith("token=alice")
    assert "GET /v1/students/[redacted]?as_of=[redacted] 400 " in access[4]
    assert "api_key=[redacted]&as_of=2024-04-16 401" in access[5]


# -- a header that comes too slowly (a "slowloris") --------------------------------------
def _recv_all(sock: socket.socket, within: float) -> bytes:
    """What the server sends until it closes the connection (or `within` seconds pass)."""
    sock.settimeout(within)
    got = b""
    try:
        while piece := sock.recv(65536):
            got += piece
    except TimeoutError:
        return got + b"<still open>"
    return got


def test_a_header_trickled_slower_than_the_deadline_is_408_and_closed(tmp_path):
    """A slowloris held its connection for ever (3,000 of them, 70 s and counting)."""
    app = create_app(ApiConfig.from_env(ENV, str(tmp_path / "t.db")))
    with running(app, header_seconds=1) as url:
        port = urlsplit(url).port
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            for _ in range(3):  # a header line now and then, never the blank line
                time.sleep(0.4)
                try:
                    slow.sendall(b"X-A: b\r\n")
                except OSError:
                    break
                assert httpx.get(f"{url}/healthz").status_code == 200  # others still served
            answer = _recv_all(slow, 5)
            assert time.monotonic() - started < 3
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert answer.endswith(b'{"error": "the request header took longer than 1 s"}')
        with socket.create_connection(("127.0.0.1", port)) as silent:
            assert _recv_all(silent, 5) == b""  # nothing sent: closed without a word


def test_a_header_in_pieces_within_the_deadline_is_answered_and_kept_alive(tmp_path):
    app = create_app(ApiConfig.from_env(ENV, str(tmp_path / "t.db")))
    with running(app, header_seconds=1) as url:
        with socket.create_connection(("127.0.0.1", urlsplit(url).port)) as conn:
            for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
                conn.sendall(piece)
                time.sleep(0.3)
            conn.settimeout(5)
            assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(1.5)  # kept alive past the header deadline: none runs between requests
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the next one, too slow
            answer = _recv_all(conn, 5)
        assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_serve_closes_slow_headers_and_raises_its_open_files_limit(tmp_path):
    import resource

    port = free_port()
    env = os.environ | ENV | {"TIMELINE_HEADER_TIMEOUT": "1"}
    db = str(tmp_path / "t.db")
    subprocess.run([*_timeline(), "--db", db, "init"], env=env, check=True, capture_output=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def low_soft_limit() -> None:  # the usual 1,024 or less: a thousand clients filled it
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    proc = subprocess.Popen(
        [*_timeline(), "--db", db, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=low_soft_limit,
    )
    try:
        _wait_until_serving(proc, f"http://127.0.0.1:{port}")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert int(soft.split()[3]) == min(hard, 65536) > 256
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\n")
            answer = _recv_all(slow, 10)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_request_h11_cannot_read_is_a_json_400_on_the_served_protocol(tmp_path):
    """uvicorn answered these in text/plain, unlike every other error of the API."""
    app = create_app(ApiConfig.from_env(ENV, str(tmp_path / "t.db")))
    with running(app, header_seconds=30) as url:
        port = urlsplit(url).port
        for request in (
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(request)
                answer = _recv_all(conn, 5)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
            assert b"content-type: application/json" in head.lower()
            assert json.loads(body) == {"error": "not a valid HTTP/1.1 request"}
