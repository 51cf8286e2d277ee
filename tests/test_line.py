"""The LINE sink against a loopback LINE push endpoint (tests/receivers.py), never the internet.

The receiver checks what LINE checks (method, path, bearer token, JSON, a UUID retry key,
the body's shape) and answers 409 to a retry key it already accepted, as LINE does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from feed_examples import ev
from receivers import LINE_PATH, LineReceiver
from test_sinks import make_alert

from scheduler.alert import Alert
from scheduler.credentials import Secret, SinkCredentials
from scheduler.line import (
    DEFAULT_BASE_URL,
    RETRY_KEY_NAMESPACE,
    Contact,
    LineSink,
    StoreContacts,
    contact_from_facts,
    line_retry_key,
    line_text,
)
from scheduler.sinks import DeliveryError, Sink, sink_from_spec
from timeline.ingest import ingest_objects

TOKEN = "line-channel-token-Zq81xK"
LINE_ID = "U" + "0123456789abcdef" * 2
OTHER_ID = "U" + "fedcba9876543210" * 2
TIMELINE = str(Path(sys.executable).with_name("timeline"))


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


def contact(language: str | None = None, line_user_id: str | None = LINE_ID) -> Contact:
    return Contact(line_user_id=line_user_id, language=language)


def line_sink(receiver: LineReceiver, found: Contact | None = None, **options: Any) -> LineSink:
    chosen = found if found is not None else contact()
    return LineSink(Secret(TOKEN), lambda _alert: chosen, base_url=receiver.url, **options)


# -- what goes on the wire ---------------------------------------------------------------


def test_push_request_is_what_the_messaging_api_expects() -> None:
    alert = make_alert()
    with LineReceiver(TOKEN) as receiver, line_sink(receiver) as sink:
        sink.send(alert)
    (request,) = receiver.requests
    assert receiver.problems() == []
    assert (request.method, request.path, request.status) == ("POST", LINE_PATH, 200)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    key = request.headers["x-line-retry-key"]
    assert key == str(uuid.uuid5(RETRY_KEY_NAMESPACE, alert.key))
    assert uuid.UUID(key).version == 5
    body = json.loads(request.body.decode("utf-8"))
    assert body == {
        "to": LINE_ID,
        "messages": [{"type": "text", "text": line_text(alert, None)}],
    }


def test_retry_key_depends_only_on_the_alert_key() -> None:
    assert line_retry_key("S1:apply_arc:e1:overdue:2024-04-15") == line_retry_key(
        "S1:apply_arc:e1:overdue:2024-04-15"
    )
    assert line_retry_key("a") != line_retry_key("b")
    # Pinned: a changed namespace would give every alert a new key (and LINE a duplicate).
    assert line_retry_key("S1:apply_arc:e1:overdue:2024-04-15") == str(
        uuid.uuid5(
            uuid.UUID("5b0e7f0c-3c2a-5d7e-9a41-8f2d6c1e4b90"), "S1:apply_arc:e1:overdue:2024-04-15"
        )
    )


def test_a_second_push_with_the_same_retry_key_counts_as_delivered_once() -> None:
    alert = make_alert()
    with LineReceiver(TOKEN) as receiver, line_sink(receiver) as sink:
        sink.send(alert)
        sink.send(alert)  # say the first answer was lost: LINE answers 409, we carry on
    assert [r.status for r in receiver.requests] == [200, 409]
    assert len(receiver.delivered) == 1
    keys = {r.headers["x-line-retry-key"] for r in receiver.requests}
    assert len(keys) == 1


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(500, False), (502, False), (429, False), (408, False), (400, True), (401, True), (403, True)],
)
def test_answers_are_classified_like_lines_retry_guide(status: int, permanent: bool) -> None:
    with (
        LineReceiver(TOKEN, status_for=lambda _n: status) as receiver,
        line_sink(receiver) as sink,
        pytest.raises(DeliveryError) as raised,
    ):
        sink.send(make_alert())
    assert raised.value.permanent is permanent
    assert raised.value.status == status
    assert TOKEN not in str(raised.value) and LINE_ID not in str(raised.value)


def test_wrong_token_is_refused_by_the_receiver_and_permanent() -> None:
    with (
        LineReceiver("another-token") as receiver,
        line_sink(receiver) as sink,
        pytest.raises(DeliveryError) as raised,
    ):
        sink.send(make_alert())
    assert raised.value.permanent is True
    assert receiver.problems() == ["authorization"]


def test_a_student_without_a_line_id_is_a_permanent_failure_naming_no_one() -> None:
    with LineReceiver(TOKEN) as receiver:
        sink = LineSink(Secret(TOKEN), lambda _a: None, base_url=receiver.url)
        with pytest.raises(DeliveryError) as raised:
            sink.send(make_alert())
        email_only = LineSink(
            Secret(TOKEN), lambda _a: Contact(email="s1@example.org"), base_url=receiver.url
        )
        with pytest.raises(DeliveryError):
            email_only.send(make_alert())
    assert raised.value.permanent is True
    assert "no LINE user id" in str(raised.value)
    assert receiver.requests == []


def test_connection_refused_is_transient() -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        sink = LineSink(Secret(TOKEN), lambda _a: contact(), base_url=url)
        with pytest.raises(DeliveryError) as raised:
            sink.send(make_alert())
    assert raised.value.permanent is False


# -- the words -------------------------------------------------------------------------


def test_text_names_the_student_in_both_languages_theirs_first() -> None:
    alert = make_alert()
    english, chinese = line_text(alert, contact("en")), line_text(alert, contact("zh"))
    for text in (english, chinese):
        assert alert.student_id in text
        assert alert.message.en in text and alert.message.zh in text
    assert english.index(alert.message.en) < english.index(alert.message.zh)
    assert chinese.index(alert.message.zh) < chinese.index(alert.message.en)
    assert line_text(alert, None) == line_text(alert, contact(None)) == chinese


def test_text_is_cut_to_lines_limit() -> None:
    long = make_alert(message={"zh": "居" * 6000, "en": "x"})
    text = line_text(long, contact("zh"))
    assert len(text) == 5000 and text.endswith("…")


def test_a_custom_renderer_and_resolver_plug_in() -> None:
    seen: list[tuple[str, Any]] = []

    def render(alert: Alert, found: Any) -> str:
        seen.append((alert.key, found))
        return "custom words"

    with LineReceiver(TOKEN) as receiver:
        sink = LineSink(
            Secret(TOKEN), lambda _a: contact("en"), text_for=render, base_url=receiver.url
        )
        sink.send(make_alert())
    assert json.loads(receiver.requests[0].body)["messages"][0]["text"] == "custom words"
    assert seen == [(make_alert().key, contact("en"))]


# -- where a student is reached ---------------------------------------------------------


def contact_event(name: str, on: str, **fields: Any) -> dict[str, Any]:
    return ev("S1", name, "contact_updated", on, **fields)


def test_contact_is_each_fields_latest_value_on_or_before_the_day(sqlite_store) -> None:
    events = [
        contact_event("c1", "2024-01-10", line_user_id=LINE_ID, language="zh"),
        contact_event("c2", "2024-03-01", language="en"),
        contact_event("c3", "2024-05-01", line_user_id=OTHER_ID),
    ]
    assert ingest_objects(sqlite_store, events).ok
    facts = sqlite_store.facts("S1")
    assert contact_from_facts(facts, date(2024, 1, 9)) is None
    assert contact_from_facts(facts, date(2024, 2, 1)) == Contact(
        line_user_id=LINE_ID, language="zh"
    )
    assert contact_from_facts(facts, date(2024, 4, 30)) == Contact(
        line_user_id=LINE_ID, language="en"
    )
    assert contact_from_facts(facts, date(2024, 5, 1)) == Contact(
        line_user_id=OTHER_ID, language="en"
    )
    assert LINE_ID not in repr(contact_from_facts(facts, date(2024, 2, 1)))


def test_store_contacts_use_the_clocks_day_and_ignore_retracted_facts(sqlite_store) -> None:
    events = [
        contact_event("c1", "2024-01-10", line_user_id=LINE_ID),
        contact_event("c2", "2024-05-01", line_user_id=OTHER_ID),
        ev("S1", "r", "retracted", "2024-05-02", retracts="S1-c2", reason="typo"),
    ]
    assert ingest_objects(sqlite_store, events).ok
    on_day = StoreContacts(sqlite_store, lambda: datetime(2024, 5, 10, 1, tzinfo=UTC))
    found = on_day(make_alert())
    assert found is not None and found.line_user_id == LINE_ID
    before = StoreContacts(sqlite_store, lambda: datetime(2024, 1, 9, 1, tzinfo=UTC))
    assert before(make_alert()) is None
    assert StoreContacts(sqlite_store)(make_alert(student_id="nobody")) is None


# -- the spec --------------------------------------------------------------------------


def test_spec_line_uses_the_token_from_the_credentials() -> None:
    credentials = SinkCredentials(line_channel_token=Secret(TOKEN))
    for spec in ("line", "line:", "LINE:"):
        sink = sink_from_spec(spec, credentials)
        assert isinstance(sink, LineSink) and isinstance(sink, Sink)
        assert sink.url == DEFAULT_BASE_URL + LINE_PATH
        assert sink.name == "line:https://api.line.me"
        sink.close()
    local = sink_from_spec("line:http://127.0.0.1:8099/", credentials)
    assert isinstance(local, LineSink)
    assert local.url == "http://127.0.0.1:8099" + LINE_PATH
    local.close()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("line", "TIMELINE_LINE_CHANNEL_TOKEN"),
        ("line:ftp://api.line.me", "http"),
        ("line:https://api.line.me?token=abc", "query"),
        ("line:https://bot:abc@api.line.me", "TIMELINE_LINE_CHANNEL_TOKEN"),
    ],
)
def test_spec_line_problems_are_named(spec: str, needle: str) -> None:
    credentials = SinkCredentials(line_channel_token=Secret(TOKEN)) if spec != "line" else None
    with pytest.raises(ValueError) as raised:
        sink_from_spec(spec, credentials)
    assert needle in str(raised.value)
    assert "abc" not in str(raised.value)


# -- the command line, end to end -------------------------------------------------------


def holding_arc_with_line(student: str, line_id: str, language: str) -> list[dict[str, Any]]:
    return [
        ev(
            student,
            "contact",
            "contact_updated",
            "2023-08-21",
            line_user_id=line_id,
            language=language,
        ),
        ev(student, "entered", "entered", "2023-08-20", visa="resident"),
        ev(student, "applied", "arc_applied", "2023-08-25", application="initial"),
        ev(student, "issued", "arc_issued", "2023-09-01", valid_until="2024-05-31"),
    ]


def test_cli_emit_to_line_pushes_each_alert_to_its_student_once(sqlite_store, tmp_path) -> None:
    assert ingest_objects(sqlite_store, holding_arc_with_line("B", LINE_ID, "en")).ok
    assert ingest_objects(sqlite_store, holding_arc_with_line("C", OTHER_ID, "zh")).ok
    db = sqlite_store.config.location
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["TIMELINE_LINE_CHANNEL_TOKEN"] = TOKEN
    with LineReceiver(TOKEN) as receiver:
        args = [
            TIMELINE,
            "alerts",
            "--on",
            "2024-06-01",
            "--emit",
            "--sink",
            f"line:{receiver.url}",
            "--db",
            db,
        ]
        first = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        again = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "Nothing new to emit" in again.stderr
    assert receiver.problems() == []
    assert len(receiver.requests) == len(receiver.delivered) == 8
    by_student = {body["to"] for body in receiver.delivered.values()}
    assert by_student == {LINE_ID, OTHER_ID}
    summary = json.loads(first.stdout)
    assert summary["sent"] == 8
    for body in receiver.delivered.values():
        text = body["messages"][0]["text"]
        # B chose English, C Chinese: both languages, the student's first.
        assert "[ARC reminder]" in text and "【居留證提醒】" in text
        if body["to"] == LINE_ID:
            assert text.startswith("[ARC reminder] Student B")
        else:
            assert text.startswith("【居留證提醒】C 同學")
    assert TOKEN not in first.stderr + first.stdout and LINE_ID not in first.stderr


def test_cli_line_without_a_token_exits_2_naming_the_setting(sqlite_store, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_LINE")}
    result = subprocess.run(
        [
            TIMELINE,
            "alerts",
            "--on",
            "2024-06-01",
            "--emit",
            "--sink",
            "line",
            "--db",
            sqlite_store.config.location,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "TIMELINE_LINE_CHANNEL_TOKEN" in result.stderr
    assert "TIMELINE_LINE_CHANNEL_TOKEN_FILE" in result.stderr
    assert "Traceback" not in result.stderr
