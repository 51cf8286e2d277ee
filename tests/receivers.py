"""Real loopback receivers that behave like the far ends: LINE's push API and a webhook.

Each is a ThreadingHTTPServer on 127.0.0.1 that checks every request the way the real
service would and deduplicates by the idempotency key the real one honours:

- `LineReceiver`: POST /v2/bot/message/push, `Authorization: Bearer <token>`, JSON, an
  `X-Line-Retry-Key` that is a UUID, a body `{"to": "U…", "messages": [{"type": "text",
  "text": …}]}`. A retry key it already accepted is answered 409 and not delivered again.
- `WebhookReceiver`: checks the configured header and the HMAC signature (computed here
  independently of the code under test) and a fresh timestamp; a repeated
  `Idempotency-Key` is answered 200 and not delivered again.

`status_for(n)` chooses the answer to the n-th request; `kill_at`/`kill_pid` SIGKILL the
sending process after the n-th request was accepted and before it is answered: the
delivery went through, the sender never learnt so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LINE_PATH = "/v2/bot/message/push"


@dataclass
class Request:
    """One request as the receiver saw it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    problem: str | None = None


@dataclass
class Receiver:
    """Shared state: requests, what was delivered (once per key), the kill switch."""

    status_for: Callable[[int], int] = lambda _n: 200
    kill_at: int | None = None
    kill_pid: int | None = None
    requests: list[Request] = field(default_factory=list)
    delivered: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def problems(self) -> list[str]:
        """Every request the receiver found malformed."""
        return [r.problem for r in self.requests if r.problem]


class _Server:
    """The HTTP server thread around a `handle(request) -> (status, body)` function."""

    def __init__(self, handle: Callable[[Request, int], tuple[int, bytes]], state: Receiver):
        self.state = state

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def _serve(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = Request(
                    method, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                with state.lock:
                    state.requests.append(request)
                    number = len(state.requests)
                    status, payload = handle(request, number)
                    request.status = status
                if state.kill_at == number and state.kill_pid is not None:
                    os.kill(state.kill_pid, signal.SIGKILL)
                    time.sleep(0.2)  # the sender is gone before any answer could reach it
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the sender was killed

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class LineReceiver(Receiver):
    """The LINE push endpoint, at `url` (the base URL: the sink appends the path)."""

    def __init__(self, token: str, **options: Any) -> None:
        super().__init__(**options)
        self.token = token
        self._server = _Server(self._handle, self)
        self.url = f"http://127.0.0.1:{self._server.port}"

    def __enter__(self) -> LineReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _handle(self, request: Request, number: int) -> tuple[int, bytes]:
        problem = self._check(request)
        if problem:
            request.problem = problem
            return 400, json.dumps({"message": problem}).encode()
        status = self.status_for(number)
        if status != 200:
            return status, b'{"message": "try later"}'
        key = request.headers["x-line-retry-key"]
        if key in self.delivered:
            # What LINE does: the request with this retry key was already accepted.
            return 409, b'{"message": "The retry key is already accepted"}'
        self.delivered[key] = json.loads(request.body)
        return 200, b'{"sentMessages": [{"id": "1", "quoteToken": "q"}]}'

    def _check(self, request: Request) -> str | None:
        if request.method != "POST":
            return f"method {request.method}"
        if request.path != LINE_PATH:
            return f"path {request.path}"
        headers = request.headers
        if headers.get("authorization") != f"Bearer {self.token}":
            return "authorization"
        if headers.get("content-type", "").split(";")[0] != "application/json":
            return "content-type"
        try:
            uuid.UUID(headers.get("x-line-retry-key", ""))
        except ValueError:
            return "x-line-retry-key is not a UUID"
        try:
            body = json.loads(request.body)
        except ValueError:
            return "body is not JSON"
        if set(body) != {"to", "messages"} or not str(body["to"]).startswith("U"):
            return "body fields"
        messages = body["messages"]
        if not (
            isinstance(messages, list)
            and len(messages) == 1
            and messages[0].get("type") == "text"
            and 0 < len(messages[0].get("text", "")) <= 5000
        ):
            return "messages"
        return None


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The documented scheme, written out here apart from the code under test."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookReceiver(Receiver):
    """A webhook endpoint that verifies the signature and a configured header."""

    def __init__(
        self,
        secret: str | None = None,
        header: tuple[str, str] | None = None,
        tolerance: float = 300.0,
        now: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.secret = secret
        self.header = header
        self.tolerance = tolerance
        self.now = now
        self._server = _Server(self._handle, self)
        self.url = f"http://127.0.0.1:{self._server.port}/hooks/alerts"

    def __enter__(self) -> WebhookReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _handle(self, request: Request, number: int) -> tuple[int, bytes]:
        problem = self._check(request)
        if problem:
            request.problem = problem
            return 401, json.dumps({"error": problem}).encode()
        status = self.status_for(number)
        if status != 200:
            return status, b"{}"
        key = request.headers["idempotency-key"]
        if key not in self.delivered:
            self.delivered[key] = json.loads(request.body)
        return 200, b"{}"

    def _check(self, request: Request) -> str | None:
        headers = request.headers
        if request.method != "POST" or "idempotency-key" not in headers:
            return "method or idempotency key"
        if self.header is not None:
            name, value = self.header
            if headers.get(name.lower()) != value:
                return f"header {name}"
        if self.secret is not None:
            timestamp = headers.get("x-timeline-timestamp", "")
            signature = headers.get("x-timeline-signature", "")
            if not timestamp.isdigit() or abs(self.now() - int(timestamp)) > self.tolerance:
                return "stale or missing timestamp"
            expected = expected_signature(self.secret, timestamp, request.body)
            if not hmac.compare_digest(expected, signature):
                return "bad signature"
        return None
