"""Delivery sinks against real loopback servers: HTTP (http.server), SMTP (aiosmtpd), files.

No HTTP or SMTP mocks: every webhook and e-mail test talks to a real server on 127.0.0.1.
Backoff sleeps are injected as a recorder, so nothing here really waits.
"""

from __future__ import annotations

import email
import email.policy
import fcntl
import json
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydantic
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from scheduler.alert import Alert, Message
from scheduler.credentials import Secret, SinkCredentials
from scheduler.sinks import (
    BatchResult,
    DeliveryError,
    JsonlSink,
    Sink,
    SmtpSink,
    WebhookSink,
    alert_json,
    backoff_delay,
    deliver_with_retries,
    sink_from_spec,
    smtp_message_id,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET_BODY = "secret-response-body-張三"


def make_alert(key: str = "S1/apply_arc/due_in_7/2024-04-08", **changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "key": key,
        "student_id": "S1",
        "task": "apply_arc",
        "milestone": "due_in_7",
        "due_on": date(2024, 4, 15),
        "rule": "R-ARC-ENTRY",
        "message": Message(
            zh="請於 2024-04-15 前申請居留證（還有 7 天）。",
            en="Apply for your ARC by 2024-04-15 (7 days left).",
        ),
    }
    fields.update(changes)
    return Alert(**fields)


class DelayRecorder:
    """Stands in for time.sleep: records the delays, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback servers only: a proxy from the environment must not intercept.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


# --- the alert model -------------------------------------------------------------------


def test_alert_dumps_to_the_spec_json_object() -> None:
    dumped = make_alert().model_dump(mode="json")
    assert dumped == {
        "key": "S1/apply_arc/due_in_7/2024-04-08",
        "student_id": "S1",
        "task": "apply_arc",
        "milestone": "due_in_7",
        "due_on": "2024-04-15",
        "rule": "R-ARC-ENTRY",
        "message": {
            "zh": "請於 2024-04-15 前申請居留證（還有 7 天）。",
            "en": "Apply for your ARC by 2024-04-15 (7 days left).",
        },
    }
    assert make_alert(due_on=None).model_dump(mode="json")["due_on"] is None
    assert Alert.model_validate(dumped) == make_alert()


def test_alert_forbids_extra_fields_and_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        Alert.model_validate({**make_alert().model_dump(mode="json"), "extra": 1})
    with pytest.raises(pydantic.ValidationError):
        Message.model_validate({"zh": "x", "en": "y", "fr": "z"})
    with pytest.raises(pydantic.ValidationError):
        make_alert().key = "other"  # type: ignore[misc]


# --- backoff ---------------------------------------------------------------------------


def test_backoff_delay_is_full_jitter_under_an_exponential_ceiling() -> None:
    assert [backoff_delay(n, 0.5, 5.0, lambda: 1.0) for n in range(1, 7)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    assert backoff_delay(3, 0.5, 5.0, lambda: 0.0) == 0.0
    rng = random.Random(7).random
    for attempt in range(1, 40):
        delay = backoff_delay(attempt, 0.1, 3.0, rng)
        assert 0.0 <= delay <= min(3.0, 0.1 * 2 ** (attempt - 1))
    assert backoff_delay(10_000, 0.1, 3.0, lambda: 1.0) == 3.0  # no float overflow


def test_backoff_delay_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, 1.0, 2.0, random.random)
    with pytest.raises(ValueError):
        backoff_delay(1, -1.0, 2.0, random.random)


# --- a real HTTP server ----------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpServer:
    url: str
    requests: list[Received] = field(default_factory=list)


@contextmanager
def http_server(
    status_for: Callable[[int], int], extra_headers: dict[str, str] | None = None
) -> Iterator[HttpServer]:
    """A ThreadingHTTPServer on 127.0.0.1 answering request n with status_for(n)."""
    lock = threading.Lock()
    state = HttpServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
                number = len(state.requests)
            status = status_for(number)
            payload = json.dumps({"detail": SECRET_BODY}).encode("utf-8")
            self.send_response(status)
            for name, value in (extra_headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/alerts"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def fail_first(k: int, status: int = 503) -> Callable[[int], int]:
    return lambda n: status if n <= k else 200


def test_webhook_retries_until_the_server_recovers() -> None:
    alert = make_alert()
    sleep = DelayRecorder()
    with http_server(fail_first(3)) as server, WebhookSink(server.url) as sink:
        used = deliver_with_retries(
            sink, alert, attempts=6, base_delay=0.1, max_delay=0.3, sleep=sleep, rng=lambda: 0.9
        )
    assert used == 4
    assert len(server.requests) == 4
    # One delay per failed attempt, growing, never above the cap.
    assert sleep.delays == pytest.approx([0.09, 0.18, 0.27])
    assert all(0.0 <= d <= 0.3 for d in sleep.delays)
    assert sleep.delays == sorted(sleep.delays)
    for request in server.requests:
        assert request.headers["idempotency-key"] == alert.key
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.body.decode("utf-8")) == alert.model_dump(mode="json")


def test_webhook_backoff_with_real_jitter_stays_within_bounds() -> None:
    sleep = DelayRecorder()
    with http_server(fail_first(5)) as server, WebhookSink(server.url) as sink:
        used = deliver_with_retries(
            sink,
            make_alert(),
            attempts=6,
            base_delay=0.05,
            max_delay=0.2,
            sleep=sleep,
            rng=random.Random(1).random,
        )
    assert used == 6
    assert len(sleep.delays) == 5
    for attempt, delay in enumerate(sleep.delays, start=1):
        assert 0.0 <= delay <= min(0.2, 0.05 * 2 ** (attempt - 1))


def test_webhook_always_500_gives_up_after_exactly_n_attempts() -> None:
    sleep = DelayRecorder()
    with (
        http_server(lambda n: 500) as server,
        WebhookSink(server.url) as sink,
        pytest.raises(DeliveryError) as raised,
    ):
        deliver_with_retries(
            sink, make_alert(), attempts=4, base_delay=0.01, max_delay=1.0, sleep=sleep
        )
    assert len(server.requests) == 4
    assert len(sleep.delays) == 3  # no sleep after the last attempt
    assert raised.value.permanent is False
    assert raised.value.status == 500
    assert "500" in str(raised.value)
    assert SECRET_BODY not in str(raised.value)


def test_webhook_400_is_permanent_and_not_retried() -> None:
    sleep = DelayRecorder()
    with (
        http_server(lambda n: 400) as server,
        WebhookSink(server.url) as sink,
        pytest.raises(DeliveryError) as raised,
    ):
        deliver_with_retries(
            sink, make_alert(), attempts=5, base_delay=0.01, max_delay=1.0, sleep=sleep
        )
    assert len(server.requests) == 1
    assert sleep.delays == []
    assert raised.value.permanent is True
    assert raised.value.status == 400
    assert "400" in str(raised.value)
    assert SECRET_BODY not in str(raised.value)


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(301, True), (401, True), (404, True), (422, True), (408, False), (429, False), (502, False)],
)
def test_webhook_status_classification(status: int, permanent: bool) -> None:
    with (
        http_server(lambda n: status) as server,
        WebhookSink(server.url) as sink,
        pytest.raises(DeliveryError) as raised,
    ):
        sink.send(make_alert())
    assert raised.value.permanent is permanent
    assert raised.value.status == status
    assert str(status) in str(raised.value)


def test_webhook_honours_retry_after_up_to_the_cap() -> None:
    sleep = DelayRecorder()
    with (
        http_server(fail_first(2, status=429), {"Retry-After": "120"}) as server,
        WebhookSink(server.url) as sink,
    ):
        used = deliver_with_retries(
            sink, make_alert(), attempts=3, base_delay=0.01, max_delay=2.0, sleep=sleep
        )
    assert used == 3
    assert sleep.delays == [2.0, 2.0]  # asked for 120 s, capped at max_delay


def test_webhook_sends_configured_headers_but_keeps_its_own() -> None:
    alert = make_alert()
    headers = {"Authorization": "Bearer t0ken", "idempotency-key": "spoofed"}
    with http_server(lambda n: 204) as server, WebhookSink(server.url, headers=headers) as sink:
        sink.send(alert)
    (request,) = server.requests
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["idempotency-key"] == alert.key


def bound_but_not_listening() -> socket.socket:
    # A bound port with no listener refuses connections, and nobody else can take it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_webhook_connection_refused_is_transient() -> None:
    with bound_but_not_listening() as closed:
        port = closed.getsockname()[1]
        with WebhookSink(f"http://127.0.0.1:{port}/x") as sink, pytest.raises(DeliveryError) as e:
            sink.send(make_alert())
    assert e.value.permanent is False
    assert e.value.status is None


def test_webhook_timeout_is_transient() -> None:
    # Listening but never answering: the connection succeeds, the read times out.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x"
        with WebhookSink(url, timeout=0.2) as sink, pytest.raises(DeliveryError) as raised:
            sink.send(make_alert())
    assert raised.value.permanent is False
    assert "timed out" in str(raised.value)


def test_webhook_name_hides_credentials_and_query() -> None:
    sink = WebhookSink("https://user:pw@hooks.example.tw:8443/a/b?token=abc")
    try:
        assert sink.name == "webhook:https://hooks.example.tw:8443/a/b"
    finally:
        sink.close()
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://hooks.example.tw/x")


# --- a real SMTP server ----------------------------------------------------------------


class StoringHandler:
    """aiosmtpd handler keeping every accepted envelope; can refuse chosen recipients."""

    def __init__(self, refuse: set[str] | None = None, data_reply: str = "250 OK") -> None:
        self.envelopes: list[Any] = []
        self.refuse = refuse or set()
        self.data_reply = data_reply

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply.startswith("250"):
            self.envelopes.append(envelope)
        return self.data_reply

    def parsed(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(e.content, policy=email.policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def smtp_server(handler: StoringHandler, **smtp_options: Any) -> Iterator[int]:
    """An aiosmtpd server on 127.0.0.1; yields its port."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **smtp_options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


FIXED_NOW = datetime(2024, 4, 8, 0, 0, tzinfo=UTC)


def smtp_sink(port: int, **options: Any) -> SmtpSink:
    options.setdefault("recipients_for", ["office@example.edu.tw", "s1@example.edu.tw"])
    return SmtpSink(
        "127.0.0.1",
        port,
        "alerts@example.edu.tw",
        timeout=5.0,
        clock=lambda: FIXED_NOW,
        **options,
    )


def test_smtp_delivers_a_bilingual_plain_text_mail() -> None:
    alert = make_alert()
    handler = StoringHandler()
    with smtp_server(handler) as port:
        smtp_sink(port).send(alert)
    (envelope,) = handler.envelopes
    assert envelope.mail_from == "alerts@example.edu.tw"
    assert envelope.rcpt_tos == ["office@example.edu.tw", "s1@example.edu.tw"]
    (mail,) = handler.parsed()
    subject = str(mail["Subject"])
    assert "居留證" in subject and "ARC reminder" in subject
    assert "apply_arc" in subject and "due_in_7" in subject
    assert [a for _n, a in getaddresses([str(mail["From"])])] == ["alerts@example.edu.tw"]
    assert [a for _n, a in getaddresses([str(mail["To"])])] == [
        "office@example.edu.tw",
        "s1@example.edu.tw",
    ]
    assert str(mail["Message-ID"]) == smtp_message_id(alert.key)
    assert str(mail["X-Alert-Key"]) == alert.key
    assert parsedate_to_datetime(str(mail["Date"])) == FIXED_NOW
    body_part = mail.get_body(preferencelist=("plain",))
    assert body_part is not None
    assert body_part.get_content_type() == "text/plain"
    assert body_part.get_content_charset() == "utf-8"
    body = body_part.get_content()
    assert alert.message.zh in body and alert.message.en in body
    assert body.index(alert.message.zh) < body.index(alert.message.en)


def test_smtp_message_id_depends_only_on_the_alert_key() -> None:
    first, other = make_alert("S1/a"), make_alert("S1/b")
    handler = StoringHandler()
    with smtp_server(handler) as port:
        sink = smtp_sink(port)
        sink.send(first)
        sink.send(first)
        sink.send(other)
    ids = [str(mail["Message-ID"]) for mail in handler.parsed()]
    assert ids[0] == ids[1] == smtp_message_id("S1/a")
    assert ids[2] != ids[0]
    assert ids[0].startswith("<") and ids[0].endswith("@residency-timeline>")


def test_smtp_recipients_can_depend_on_the_alert() -> None:
    handler = StoringHandler()
    with smtp_server(handler) as port:
        sink = smtp_sink(port, recipients_for=lambda a: [f"{a.student_id.lower()}@uni.edu.tw"])
        sink.send(make_alert(student_id="S9"))
    assert handler.envelopes[0].rcpt_tos == ["s9@uni.edu.tw"]


def test_smtp_all_recipients_refused_is_permanent() -> None:
    handler = StoringHandler(refuse={"office@example.edu.tw", "s1@example.edu.tw"})
    with smtp_server(handler) as port, pytest.raises(DeliveryError) as raised:
        smtp_sink(port).send(make_alert())
    assert raised.value.permanent is True
    assert raised.value.status == 550
    assert "example.edu.tw" not in str(raised.value)


def test_smtp_some_recipients_refused_is_reported() -> None:
    handler = StoringHandler(refuse={"s1@example.edu.tw"})
    with smtp_server(handler) as port, pytest.raises(DeliveryError) as raised:
        smtp_sink(port).send(make_alert())
    assert "1 of 2" in str(raised.value)
    assert raised.value.permanent is True
    assert handler.envelopes[0].rcpt_tos == ["office@example.edu.tw"]


def test_smtp_4xx_reply_is_transient() -> None:
    handler = StoringHandler(data_reply="451 4.3.0 Try again later")
    with smtp_server(handler) as port, pytest.raises(DeliveryError) as raised:
        smtp_sink(port).send(make_alert())
    assert raised.value.permanent is False
    assert raised.value.status == 451


def test_smtp_connection_refused_is_transient() -> None:
    with bound_but_not_listening() as closed, pytest.raises(DeliveryError) as raised:
        smtp_sink(closed.getsockname()[1]).send(make_alert())
    assert raised.value.permanent is False


def test_smtp_starttls_not_offered_is_permanent() -> None:
    handler = StoringHandler()
    with smtp_server(handler) as port, pytest.raises(DeliveryError) as raised:
        smtp_sink(port, starttls=True).send(make_alert())
    assert raised.value.permanent is True
    assert handler.envelopes == []


def accept_only(user: str, password: str) -> Callable[..., AuthResult]:
    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == user.encode()
            and data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return authenticator


def test_smtp_login() -> None:
    handler = StoringHandler()
    options = {"authenticator": accept_only("bot", "s3cret"), "auth_require_tls": False}
    with smtp_server(handler, **options) as port:
        smtp_sink(port, username="bot", password="s3cret").send(make_alert())
        with pytest.raises(DeliveryError) as raised:
            smtp_sink(port, username="bot", password="wrong").send(make_alert())
    assert len(handler.envelopes) == 1
    assert raised.value.permanent is True
    assert raised.value.status == 535
    assert "wrong" not in str(raised.value)


# --- JSON Lines file -------------------------------------------------------------------


def test_jsonl_appends_one_readable_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "alerts.jsonl"
    first, second = make_alert("k1"), make_alert("k2", due_on=None)
    sink = JsonlSink(path)
    sink.send(first)
    sink.send(second)
    raw = path.read_bytes()
    assert "居留證".encode() in raw
    assert b"\\u" not in raw
    lines = raw.decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        first.model_dump(mode="json"),
        second.model_dump(mode="json"),
    ]


def test_jsonl_cuts_a_torn_last_line_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    whole = alert_json(make_alert("k1")) + "\n"
    # A writer killed mid-line never had that line acknowledged: it goes, the rest stays.
    path.write_bytes(whole.encode() + b'{"key": "k2", "stud')
    result = JsonlSink(path).send_batch([make_alert("k1"), make_alert("k2")])
    assert result == BatchResult(written=["k2"], present=["k1"])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k1", "k2"]
    assert path.read_bytes().endswith(b"\n")


def test_jsonl_skips_keys_the_file_already_holds(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    JsonlSink(path).send(make_alert("k1"))
    # A new process (a new sink object) learns the keys from the file itself.
    again = JsonlSink(path)
    again.send(make_alert("k1"))
    result = again.send_batch([make_alert("k2"), make_alert("k1"), make_alert("k2")])
    assert result == BatchResult(written=["k2"], present=["k1", "k2"])
    keys = [json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert keys == ["k1", "k2"]


def test_jsonl_sees_keys_another_writer_appended_since(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    first, second = JsonlSink(path), JsonlSink(path)
    first.send(make_alert("k1"))
    second.send(make_alert("k2"))
    assert first.send_batch([make_alert("k2"), make_alert("k3")]).written == ["k3"]
    assert second.send_batch([make_alert("k1"), make_alert("k3")]).written == []
    keys = [json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert keys == ["k1", "k2", "k3"]


def test_jsonl_rotated_file_is_read_afresh(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = JsonlSink(path)
    sink.send(make_alert("k1"))
    path.rename(tmp_path / "alerts.jsonl.1")  # a log rotator moved it away
    sink.send(make_alert("k2"))
    assert [json.loads(line)["key"] for line in path.read_text("utf-8").splitlines()] == ["k2"]
    path.write_text("")  # truncated in place: nothing known any more
    sink.send(make_alert("k2"))
    assert [json.loads(line)["key"] for line in path.read_text("utf-8").splitlines()] == ["k2"]


def test_jsonl_keeps_foreign_lines_and_ignores_them(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_text('not json\n[1, 2]\n{"key": 7}\n', encoding="utf-8")
    JsonlSink(path).send(make_alert("k1"))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["not json", "[1, 2]", '{"key": 7}']
    assert json.loads(lines[3])["key"] == "k1"


def test_jsonl_unwritable_path_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as raised:
        JsonlSink(tmp_path).send(make_alert())  # a directory, not a file
    assert raised.value.permanent is True


def test_jsonl_waits_for_the_file_lock(tmp_path: Path) -> None:
    # Another holder of the flock (a second scheduler, a log rotator) holds the writer back.
    path = tmp_path / "alerts.jsonl"
    path.touch()
    sink = JsonlSink(path)
    with path.open("rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        writer = threading.Thread(target=sink.send, args=(make_alert(),))
        writer.start()
        writer.join(timeout=0.2)
        assert writer.is_alive()
        assert path.read_bytes() == b""
        fcntl.flock(holder, fcntl.LOCK_UN)
        writer.join(timeout=5)
    assert not writer.is_alive()
    assert json.loads(path.read_text(encoding="utf-8")) == make_alert().model_dump(mode="json")


_APPENDER = """
import sys
from scheduler.alert import Alert, Message
from scheduler.credentials import Secret, SinkCredentials
from scheduler.sinks import JsonlSink
path, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sink = JsonlSink(path)
for i in range(count):
    text = "居留證" * 2000  # long lines make interleaving visible if locking were broken
    sink.send(Alert(key=f"{tag}-{i}", student_id=tag, task="apply_arc", milestone="due_today",
                    due_on=None, rule="R-ARC-ENTRY", message=Message(zh=text, en=tag)))
"""


def test_jsonl_two_processes_appending_keep_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    count = 40
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _APPENDER, str(path), tag, str(count)],
            cwd=REPO_ROOT,
            env=env,
        )
        for tag in ("A", "B")
    ]
    for writer in writers:
        assert writer.wait(timeout=30) == 0
    keys = [json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert sorted(keys) == sorted(f"{tag}-{i}" for tag in "AB" for i in range(count))


# --- sink_from_spec --------------------------------------------------------------------


def test_every_sink_satisfies_the_protocol(tmp_path: Path) -> None:
    webhook = WebhookSink("https://hooks.example.tw/x")
    try:
        for sink in (JsonlSink(tmp_path / "a.jsonl"), webhook, smtp_sink(25)):
            assert isinstance(sink, Sink)
            assert sink.name
    finally:
        webhook.close()


@pytest.mark.parametrize("spec", [None, "", "   "])
def test_spec_default_is_alerts_jsonl(spec: str | None) -> None:
    sink = sink_from_spec(spec)
    assert isinstance(sink, JsonlSink)
    assert sink.path == Path("alerts.jsonl")


def test_spec_jsonl(tmp_path: Path) -> None:
    sink = sink_from_spec(f"jsonl:{tmp_path}/out/alerts.jsonl")
    assert isinstance(sink, JsonlSink)
    assert sink.path == tmp_path / "out" / "alerts.jsonl"
    sink.send(make_alert())
    assert (tmp_path / "out" / "alerts.jsonl").exists()


def test_spec_webhook_delivers_to_a_real_server() -> None:
    with http_server(lambda n: 200) as server:
        sink = sink_from_spec(f"webhook:{server.url}")
        assert isinstance(sink, WebhookSink)
        assert sink.url == server.url
        try:
            sink.send(make_alert())
        finally:
            sink.close()
    assert len(server.requests) == 1
    https = sink_from_spec("webhook:https://hooks.example.tw/alerts")
    assert isinstance(https, WebhookSink)
    https.close()


def test_spec_smtp_url_form() -> None:
    credentials = SinkCredentials(smtp_username=Secret("bot"), smtp_password=Secret("p@ss"))
    sink = sink_from_spec(
        "smtp://mail.example.tw:587"
        "?from=alerts@example.tw&to=office@example.tw,ops+arc@example.tw&starttls=1",
        credentials,
    )
    assert isinstance(sink, SmtpSink)
    assert (sink.host, sink.port, sink.sender) == ("mail.example.tw", 587, "alerts@example.tw")
    assert sink.recipients_for(make_alert()) == ["office@example.tw", "ops+arc@example.tw"]
    assert sink.starttls is True
    assert sink.username == "bot"
    assert sink.name == "smtp:mail.example.tw:587"


def test_spec_smtp_short_form_delivers_to_a_real_server() -> None:
    handler = StoringHandler()
    with smtp_server(handler) as port:
        sink = sink_from_spec(f"smtp:127.0.0.1:{port}?from=a@example.tw&to=b@example.tw")
        assert isinstance(sink, SmtpSink)
        assert sink.starttls is False and sink.username is None
        sink.send(make_alert())
    assert handler.envelopes[0].rcpt_tos == ["b@example.tw"]


@pytest.mark.parametrize(
    "spec",
    [
        "alerts.jsonl",
        "ftp:somewhere",
        "jsonl:",
        "webhook:",
        "webhook:ftp://hooks.example.tw/x",
        "webhook:https://",
        "webhook:hooks.example.tw/x",
        "smtp://mail.example.tw:25?to=b@example.tw",
        "smtp://mail.example.tw:25?from=a@example.tw",
        "smtp://mail.example.tw:25?from=a@example.tw&from=c@example.tw&to=b@example.tw",
        "smtp://mail.example.tw?from=a@example.tw&to=b@example.tw",
        "smtp://mail.example.tw:0?from=a@example.tw&to=b@example.tw",
        "smtp://mail.example.tw:99999?from=a@example.tw&to=b@example.tw",
        "smtp://:25?from=a@example.tw&to=b@example.tw",
        "smtp://mail.example.tw:25?from=not-an-address&to=b@example.tw",
        "smtp://mail.example.tw:25?from=a@example.tw&to=b@example.tw,oops",
        "smtp://mail.example.tw:25?from=a@example.tw&to=b@example.tw&starttls=maybe",
        "smtp://mail.example.tw:25?from=a@example.tw&to=b@example.tw&bcc=c@example.tw",
        "smtp://mail.example.tw:25/path?from=a@example.tw&to=b@example.tw",
    ],
)
def test_spec_rejects_bad_input_naming_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ValueError) as raised:
        sink_from_spec(spec)
    message = str(raised.value)
    assert "jsonl:PATH" in message and "webhook:URL" in message and "smtp://" in message


def test_spec_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ValueError) as raised:
        sink_from_spec("smtp://bot:hunter2@mail.example.tw:port?from=a@example.tw")
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ValueError) as raised:
        sink_from_spec("smpt://bot:hunter2@mail.example.tw:25")
    assert "hunter2" not in str(raised.value)


# --- a far end that answers, but too slowly ---------------------------------------------


@contextmanager
def trickling_server(head: bytes, drip: bytes, count: int, every: float) -> Iterator[tuple]:
    """A TCP server on 127.0.0.1 that sends `head`, then `drip` `count` times, `every` s apart.

    Each send comes well within any per-read timeout, so only a bound on the whole
    exchange ends it. Yields (port, sent): `sent[0]` counts the drips sent so far.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    sent = [0]
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(0.5)
            try:
                if not head.startswith(b"220"):
                    conn.recv(65536)  # HTTP: the request first
                conn.sendall(head)
                for _ in range(count):
                    if stop.wait(every):
                        return
                    conn.sendall(drip)
                    sent[0] += 1
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], sent
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


HTTP_TRICKLE = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"


def test_webhook_gives_up_on_a_receiver_that_trickles_its_answer() -> None:
    """Found by a hostile probe: the timeout bounded each read only, so a receiver sending
    a byte every half second held one delivery (and the emitter lock, and with it the
    daily job) as long as it liked: 10 s with `timeout=1`, forever with a chunked body."""
    with trickling_server(HTTP_TRICKLE, b"x", 40, 0.25) as (port, sent):
        sink = WebhookSink(f"http://127.0.0.1:{port}/hook", timeout=1.0, deadline=1.5)
        with pytest.raises(DeliveryError) as caught:
            sink.send(make_alert())
        assert sent[0] < 40, "the whole answer arrived: the deadline did not cut it"
    assert not caught.value.permanent
    assert "timed out" in str(caught.value)
    # The sink still works afterwards (the cut connection is not reused).
    with http_server(lambda n: 200) as server:
        sink = WebhookSink(server.url, timeout=1.0, deadline=1.5)
        sink.send(make_alert())
        sink.send(make_alert(key="second"))
        sink.close()
    assert len(server.requests) == 2


def test_line_gives_up_on_a_receiver_that_trickles_its_answer() -> None:
    from scheduler.line import LineSink

    contact = type("C", (), {"line_user_id": "U" + "0" * 32, "language": "en"})()
    with trickling_server(HTTP_TRICKLE, b"x", 40, 0.25) as (port, sent):
        sink = LineSink(
            Secret("token"),
            contact_for=lambda _alert: contact,
            base_url=f"http://127.0.0.1:{port}",
            timeout=1.0,
            deadline=1.5,
        )
        with pytest.raises(DeliveryError) as caught:
            sink.send(make_alert())
        assert sent[0] < 40
    assert not caught.value.permanent
    assert "timed out" in str(caught.value)


def test_smtp_gives_up_on_a_server_that_trickles_its_greeting() -> None:
    with trickling_server(b"220-hello\r\n", b"220-still here\r\n", 40, 0.25) as (port, sent):
        sink = SmtpSink(
            "127.0.0.1",
            port,
            "alerts@example.edu.tw",
            ["office@example.edu.tw"],
            timeout=1.0,
            deadline=1.5,
        )
        with pytest.raises(DeliveryError) as caught:
            sink.send(make_alert())
        assert sent[0] < 40
    assert not caught.value.permanent
    assert "timed out" in str(caught.value)
