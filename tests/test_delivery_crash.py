"""SIGKILL during delivery on every channel, then a re-run: every key is delivered once.

`timeline alerts --emit` runs as a real process. For the webhook, LINE and e-mail the
receiver itself kills the sender the moment it has accepted the third alert and before it
answers: the alert went through, the sender never learnt so. For the JSON Lines file the
process is killed half-way through writing its batch (crash point `jsonl_mid_write`).
Then the same command runs again, to the end.

What is counted, per channel, is what its real receiver would deliver, deduplicated the
way the real one does:
- LINE: pushes accepted per `X-Line-Retry-Key` (LINE answers 409 to a key it accepted);
- webhook: alerts accepted per `Idempotency-Key`;
- e-mail: messages per `Message-ID` (mail clients fold copies with the same id);
- JSONL: keys of the whole lines in the file.
Each must hold every alert key exactly once; the one repeat (the killed delivery) carries
the same key, retry key or Message-ID as the first time.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from feed_examples import ev
from receivers import LineReceiver, WebhookReceiver
from test_alerts_crash import cohort
from test_sinks import free_port

from projections.readmodel import default_read_db
from scheduler.line import line_retry_key
from scheduler.outbox import Outbox, OutboxDB, outbox_location
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
DAY = "2024-06-01"
KILL_AT = 3
TOKEN = "line-token-crash-7Yk"
WEBHOOK_SECRET = "webhook-secret-crash-Qm2"
SMTP_USER, SMTP_PASSWORD = "alerts-bot", "smtp-pass-crash-Hx5"


def students_with_line(units: int) -> list[dict[str, Any]]:
    """cohort(units) (5 alerts per unit on DAY), every student reachable on LINE and by mail."""
    events = cohort(units)
    for student in sorted({e["student_id"] for e in events}):
        line_id = "U" + hashlib.md5(student.encode()).hexdigest()
        email = f"{student.lower()}@example.edu.tw"
        events.append(
            ev(
                student,
                "contact",
                "contact_updated",
                "2023-08-21",
                line_user_id=line_id,
                email=email,
            )
        )
    return events


def env_with_secrets() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    for name in ("TIMELINE_CRASH_AT", "TIMELINE_ALERT_BATCH"):
        env.pop(name, None)
    env |= {
        "TIMELINE_LINE_CHANNEL_TOKEN": TOKEN,
        "TIMELINE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TIMELINE_SMTP_USERNAME": SMTP_USER,
        "TIMELINE_SMTP_PASSWORD": SMTP_PASSWORD,
    }
    return env


def emit_args(location: str, sink: str) -> list[str]:
    return [
        *(TIMELINE, "alerts", "--on", DAY, "--emit", "--sink", sink),
        *("--db", location, "--wait", "10"),
    ]


def outbox_rows(location: str) -> list[dict[str, Any]]:
    db = OutboxDB(outbox_location(location, default_read_db(location)))
    try:
        return Outbox(db).rows()
    finally:
        db.close()


def killed_then_rerun(args: list[str], cwd: Path, arm: Any, **extra_env: str) -> str:
    """Run `args` until the receiver kills it (armed with its pid), then run it again."""
    env = env_with_secrets()
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=env | extra_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    arm(process.pid)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, err
    again = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["interrupted"] >= 1 and summary["failed"] == summary["retrying"] == 0
    return again.stderr


@pytest.fixture
def crash_location(location: str) -> str:
    with TimelineStore.open(location) as store:
        assert ingest_objects(store, students_with_line(2)).ok
    return location


def assert_all_sent(location: str) -> list[str]:
    rows = outbox_rows(location)
    assert len(rows) == 10
    assert {r["state"] for r in rows} == {"sent"}
    return sorted(r["key"] for r in rows)


def test_line_killed_mid_push_delivers_every_key_once(crash_location, tmp_path):
    with LineReceiver(TOKEN, kill_at=KILL_AT) as receiver:

        def arm(pid: int) -> None:
            receiver.kill_pid = pid

        killed_then_rerun(emit_args(crash_location, f"line:{receiver.url}"), tmp_path, arm)
    keys = assert_all_sent(crash_location)
    assert receiver.problems() == []
    assert sorted(receiver.delivered) == sorted(line_retry_key(k) for k in keys)
    statuses = Counter(r.status for r in receiver.requests)
    assert statuses == {200: 10, 409: 1}  # the killed push was repeated once, and refused
    retry_keys = [r.headers["x-line-retry-key"] for r in receiver.requests]
    (repeated,) = [k for k, n in Counter(retry_keys).items() if n == 2]
    assert retry_keys.index(repeated) == KILL_AT - 1  # the same key as before the kill


def test_webhook_killed_mid_post_delivers_every_key_once(crash_location, tmp_path):
    with WebhookReceiver(secret=WEBHOOK_SECRET, kill_at=KILL_AT) as receiver:

        def arm(pid: int) -> None:
            receiver.kill_pid = pid

        killed_then_rerun(emit_args(crash_location, f"webhook:{receiver.url}"), tmp_path, arm)
    keys = assert_all_sent(crash_location)
    assert receiver.problems() == []  # every request signed, the repeat too
    assert sorted(receiver.delivered) == keys
    posted = Counter(r.headers["idempotency-key"] for r in receiver.requests)
    assert sorted(posted.values()) == [1] * 9 + [2]
    assert [r.status for r in receiver.requests] == [200] * 11


class KillingMailbox:
    """aiosmtpd handler: checks the login, keeps every message, kills at the n-th DATA."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.kill_pid: int | None = None
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not session.authenticated:  # the password came from the environment, or nothing
            return "530 5.7.0 Authentication required"
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        )
        if len(self.messages) == self.kill_at and self.kill_pid is not None:
            os.kill(self.kill_pid, signal.SIGKILL)
        return "250 OK"


def only(user: str, password: str) -> Any:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            user.encode(),
            password.encode(),
        )
        return AuthResult(success=ok, handled=False)

    return authenticator


def test_smtp_killed_mid_message_delivers_every_key_once(crash_location, tmp_path):
    mailbox = KillingMailbox(KILL_AT)
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=only(SMTP_USER, SMTP_PASSWORD),
        auth_require_tls=False,
    )
    controller.start()
    try:

        def arm(pid: int) -> None:
            mailbox.kill_pid = pid

        spec = f"smtp://127.0.0.1:{port}?from=alerts@example.edu.tw&to=office@example.edu.tw"
        killed_then_rerun(emit_args(crash_location, spec), tmp_path, arm)
    finally:
        controller.stop()
    keys = assert_all_sent(crash_location)
    by_id: dict[str, set[str]] = {}
    alert_mail = [m for m in mailbox.messages if m["X-Alert-Key"] is not None]
    assert len(mailbox.messages) - len(alert_mail) == 1  # and the staff digest, once
    for message in alert_mail:
        by_id.setdefault(message["Message-ID"], set()).add(message["X-Alert-Key"])
    assert len(by_id) == 10  # what a mail client shows: one message per Message-ID
    assert sorted(key for (key,) in by_id.values()) == keys
    counts = Counter(m["Message-ID"] for m in alert_mail)
    assert sorted(counts.values()) == [1] * 9 + [2]


def test_jsonl_killed_mid_write_delivers_every_key_once(crash_location, tmp_path):
    out = tmp_path / "alerts.jsonl"
    args = emit_args(crash_location, f"jsonl:{out}")
    env = env_with_secrets()
    crashed = subprocess.run(
        args,
        cwd=tmp_path,
        env=env | {"TIMELINE_CRASH_AT": "jsonl_mid_write:1", "TIMELINE_ALERT_BATCH": "4"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert not out.read_bytes().endswith(b"\n")  # a torn line was left behind
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    keys = assert_all_sent(crash_location)
    lines = out.read_bytes().decode("utf-8").splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == keys
