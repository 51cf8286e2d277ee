"""No secret in the logs, the scheduler's job store or the outbox, on any channel.

The daemon runs as a real process (`timeline -v scheduler --run-now`) with every sink
credential in its environment, delivering to a real loopback receiver that refuses the
first alert (so failures are logged and stored too). Then its log, the job store's table
and the outbox's rows are searched for every secret and for the students' LINE ids. An
in-process run logs at DEBUG (httpx, httpcore, everything) and is searched the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from feed_examples import ev
from receivers import LineReceiver, WebhookReceiver
from test_delivery_crash import only
from test_retry import arrivals_due_around_today
from test_sinks import StoringHandler, free_port

from scheduler.credentials import Secret, SinkCredentials
from scheduler.jobs import DeliveryConfig, daily_alerts
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
SECRETS = {
    "TIMELINE_LINE_CHANNEL_TOKEN": "tok-Lq93hZ",
    "TIMELINE_WEBHOOK_SECRET": "whsec-Pz71Kd",
    "TIMELINE_SMTP_USERNAME": "mailbot-Ux42",
    "TIMELINE_SMTP_PASSWORD": "smtp-pw-Rt58Jw",
}
HEADER_VALUE = "Bearer hdr-Vc26Ns"
LINE_IDS = ["U" + f"{i:x}" * 32 for i in range(10, 16)]


def secret_words() -> list[str]:
    """Credentials, and the students' LINE ids and e-mail addresses (personal data)."""
    students = sorted({e["student_id"] for e in arrivals_due_around_today()})
    emails = [f"{student.lower()}@example.edu.tw" for student in students]
    return [*SECRETS.values(), HEADER_VALUE, "hdr-Vc26Ns", *LINE_IDS, *emails]


def student_events() -> list[dict[str, Any]]:
    events = arrivals_due_around_today()
    students = sorted({e["student_id"] for e in events})
    for student, line_id in zip(students, LINE_IDS, strict=False):
        email = f"{student.lower()}@example.edu.tw"
        events.append(
            ev(
                student,
                "contact",
                "contact_updated",
                "2020-01-01",
                line_user_id=line_id,
                email=email,
            )
        )
    return events


def refuse_first(n: int) -> int:
    return 503 if n == 1 else 200


class FirstRefused(StoringHandler):
    """Refuses the first message with a temporary error, keeps the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.seen += 1
        if self.seen == 1:
            return "451 4.3.0 try again later"
        return await super().handle_DATA(server, session, envelope)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def stored_text(db: str) -> bytes:
    """The job store's rows (pickled job states) and every outbox row, as bytes."""
    conn = sqlite3.connect(db)
    try:
        jobs = conn.execute("SELECT id, job_state FROM apscheduler_jobs").fetchall()
        assert sorted(row[0] for row in jobs) == ["daily-alerts", "retry-deliveries"]
        outbox = conn.execute("SELECT * FROM alert_outbox").fetchall()
        assert outbox, "the outbox is empty: nothing was exercised"
    finally:
        conn.close()
    blob = b"".join(bytes(state) for _id, state in jobs)
    return blob + repr(outbox).encode()


@pytest.fixture
def store_db(tmp_path: Path) -> str:
    db = str(tmp_path / "timeline.db")
    with TimelineStore.open(db) as store:
        assert ingest_objects(store, student_events()).ok
    return db


def run_daemon_once(db: str, spec: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env |= SECRETS | {"TIMELINE_WEBHOOK_HEADER": f"Authorization: {HEADER_VALUE}"}
    log = tmp_path / "daemon.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [TIMELINE, "-v", "scheduler", "--run-now", "--db", db, "--sink", spec],
            cwd=tmp_path,
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: "added the retry job" in log.read_text(), 60, "the daemon to start")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
    return log.read_text()


@pytest.mark.parametrize("channel", ["line", "webhook", "smtp"])
def test_no_secret_in_the_daemons_log_job_store_or_outbox(channel, store_db, tmp_path):
    token, webhook_secret = (
        SECRETS["TIMELINE_LINE_CHANNEL_TOKEN"],
        SECRETS["TIMELINE_WEBHOOK_SECRET"],
    )
    if channel == "line":
        with LineReceiver(token, status_for=refuse_first) as receiver:
            text = run_daemon_once(store_db, f"line:{receiver.url}", tmp_path)
        assert receiver.problems() == [] and len(receiver.delivered) == 5
    elif channel == "webhook":
        with WebhookReceiver(
            secret=webhook_secret, header=("Authorization", HEADER_VALUE), status_for=refuse_first
        ) as receiver:
            text = run_daemon_once(store_db, f"webhook:{receiver.url}", tmp_path)
        assert receiver.problems() == [] and len(receiver.delivered) == 5
    else:
        handler = FirstRefused()
        port = free_port()
        authenticator = only(SECRETS["TIMELINE_SMTP_USERNAME"], SECRETS["TIMELINE_SMTP_PASSWORD"])
        controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            authenticator=authenticator,
            auth_require_tls=False,
        )
        controller.start()
        try:
            spec = f"smtp:127.0.0.1:{port}?from=alerts@example.edu.tw&to=office@example.edu.tw"
            text = run_daemon_once(store_db, spec, tmp_path)
        finally:
            controller.stop()
        # Five alerts, each to its student (the first refused, then retried), and the digest.
        assert len(handler.envelopes) == 5 + 1
    # The run really happened, failure included: the log says so.
    assert "attempt 1 of 12 failed" in text and "daily alerts for" in text
    stored = stored_text(store_db)
    for word in secret_words():
        assert word not in text, f"{word!r} in the log"
        assert word.encode() not in stored, f"{word!r} in the job store or outbox"


def test_debug_logs_of_every_library_hold_no_secret(store_db, tmp_path, caplog, monkeypatch):
    credentials = SinkCredentials(
        smtp_username=Secret(SECRETS["TIMELINE_SMTP_USERNAME"]),
        smtp_password=Secret(SECRETS["TIMELINE_SMTP_PASSWORD"]),
        line_channel_token=Secret(SECRETS["TIMELINE_LINE_CHANNEL_TOKEN"]),
        webhook_secret=Secret(SECRETS["TIMELINE_WEBHOOK_SECRET"]),
        webhook_header=("Authorization", Secret(HEADER_VALUE)),
    )
    config = DeliveryConfig(credentials=credentials)
    caplog.set_level(logging.DEBUG)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with LineReceiver(SECRETS["TIMELINE_LINE_CHANNEL_TOKEN"], status_for=refuse_first) as line:
        daily_alerts(store_db, None, f"line:{line.url}", delivery=config)
    with WebhookReceiver(
        secret=SECRETS["TIMELINE_WEBHOOK_SECRET"], header=("Authorization", HEADER_VALUE)
    ) as hook:
        # A second store: the first has emitted its day already.
        other = str(tmp_path / "other.db")
        with TimelineStore.open(other) as store:
            assert ingest_objects(store, student_events()).ok
        daily_alerts(other, None, f"webhook:{hook.url}", delivery=config)
    assert (len(line.delivered), len(hook.delivered)) == (5, 6)  # LINE refused its first
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "httpcore" in logged or "httpx" in logged  # the libraries did log, at DEBUG
    for word in secret_words():
        assert word not in logged, f"{word!r} in a DEBUG log"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("postgresql://u:pw-Xy@h:5432/db?schema=s", "postgresql://u@h:5432/db?schema=s"),
        ("postgres://:pw-Xy@h/db", "postgres://h/db"),
        ("postgresql://u@h/db?password=pw-Xy&schema=s", "postgresql://u@h/db?schema=s"),
        ("postgresql://u@h/db?schema=s", "postgresql://u@h/db?schema=s"),
        ("/srv/timeline.db", "/srv/timeline.db"),
        (None, None),
    ],
)
def test_the_job_store_keeps_the_store_location_without_its_password(given, stored):
    from scheduler.jobs import stored_location

    assert stored_location(given) == stored
