"""Alert e-mails that reach the student, in their language, and the staff's daily digest.

Every e-mail test talks to a real aiosmtpd server on 127.0.0.1 (see tests/test_sinks.py);
the CLI runs as a real process, the API under a real uvicorn. Scenario (alerts on
2024-04-16): S1..S5 entered on 2024-03-16, so `apply_arc` is overdue and the late
application fine accrues that day; S6 entered on 2024-03-24 (`apply_arc` due in 7 days).
S1 reads English, S2 Chinese (and has LINE), S3 has no contact, S4 has LINE only, S5's
contact is dated after the day (not yet theirs on it), S6 reads English.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from api_server import running
from feed_examples import ev
from test_read_side_robustness import write_directly

import web.labels
from projections import wording
from projections.contact import Contact, contact_on
from projections.readmodel import ReadModel
from scheduler.alert import Alert, Message
from scheduler.alerts import alerts_on
from scheduler.digest import DigestOutbox, digest_key, send_digests
from scheduler.jobs import daily_alerts, emit_once
from scheduler.mail import Composer
from scheduler.messages import line_text
from scheduler.notices import Students
from scheduler.outbox import Outbox, OutboxDB, outbox_location
from scheduler.preview import preview_student
from scheduler.sinks import SmtpSink, smtp_message_id
from timeline.api import create_app
from timeline.api_settings import ApiConfig
from timeline.facts import Fact
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
DAY = date(2024, 4, 16)
LINE_S2 = "U" + "0123456789abcdef" * 2
LINE_S4 = "U" + "fedcba9876543210" * 2
STAFF = ["office@uni.edu.tw", "dean@uni.edu.tw"]
SENDER = "arc-alerts@uni.edu.tw"
CJK = re.compile(r"[\u4e00-\u9fff]")


def scenario() -> list[dict[str, Any]]:
    events = [ev(f"S{i}", "entered", "entered", "2024-03-16", visa="resident") for i in range(1, 6)]
    events += [
        ev("S6", "entered", "entered", "2024-03-24", visa="resident"),
        ev("S1", "contact", "contact_updated", "2024-03-20", email="s1@mail.tw", language="en"),
        ev("S2", "contact", "contact_updated", "2024-03-20", email="s2@mail.tw"),
        ev("S2", "lang", "contact_updated", "2024-03-21", language="zh", line_user_id=LINE_S2),
        ev("S4", "contact", "contact_updated", "2024-03-20", line_user_id=LINE_S4, language="en"),
        ev("S5", "contact", "contact_updated", "2024-05-01", email="s5@mail.tw"),
        ev("S6", "contact", "contact_updated", "2024-03-25", email="s6@mail.tw", language="en"),
    ]
    return events


# --- a real SMTP server ----------------------------------------------------------------


class Inbox:
    """aiosmtpd handler keeping every accepted mail; refuses chosen recipients or DATA."""

    def __init__(self, refuse: set[str] | None = None, fail_data: int = 0) -> None:
        self.envelopes: list[Any] = []
        self.refuse = refuse or set()
        self.fail_data = fail_data  # answer 451 to this many DATA commands first

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail_data:
            self.fail_data -= 1
            return "451 4.3.0 Try again later"
        self.envelopes.append(envelope)
        return "250 OK"

    def mails(self) -> list[tuple[list[str], EmailMessage]]:
        return [
            (
                list(e.rcpt_tos),
                email.message_from_bytes(e.content, policy=email.policy.default),  # type: ignore[misc]
            )
            for e in self.envelopes
        ]

    def students(self) -> dict[str, list[EmailMessage]]:
        """Student mails by recipient (the digest left out)."""
        out: dict[str, list[EmailMessage]] = {}
        for rcpts, mail in self.mails():
            if mail["X-Alert-Digest"] is None:
                (to,) = rcpts
                out.setdefault(to, []).append(mail)
        return out

    def digests(self) -> list[tuple[list[str], EmailMessage]]:
        return [(r, m) for r, m in self.mails() if m["X-Alert-Digest"] is not None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def smtp_server(inbox: Inbox) -> Iterator[int]:
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def spec(port: int) -> str:
    return f"smtp://127.0.0.1:{port}?from={SENDER}&to={','.join(STAFF)}"


def text_of(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("plain",))
    assert part is not None and part.get_content_type() == "text/plain"
    # SMTP carries lines as CRLF; the rendered text has LF.
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


def html_of(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("html",))
    assert part is not None and part.get_content_type() == "text/html"
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


@pytest.fixture
def stored(location: str, clock: Any, tmp_path: Path) -> tuple[str, str]:
    """The scenario stored on each backend: (store location, read db path)."""
    with TimelineStore.open(location, clock=clock) as store:
        report = ingest_objects(store, scenario())
        assert report.ok, report.as_json()
    return location, str(tmp_path / "read.db")


def emit(where: tuple[str, str], port: int, day: date = DAY) -> dict[str, object]:
    return emit_once(where[0], where[1], spec(port), day).as_json()


# --- the contact on a day --------------------------------------------------------------


def _fact(event_id: str, on: str, **data: Any) -> Fact:
    return Fact(
        "S1",
        "manual",
        event_id,
        "contact_updated",
        date.fromisoformat(on),
        datetime(2024, 1, 1, tzinfo=UTC),
        1,
        {"email": None, "line_user_id": None, "language": None} | data,
    )


def test_contact_on_a_day_folds_the_updates_up_to_that_day() -> None:
    facts = [
        _fact("c1", "2024-03-01", email="old@mail.tw", language="zh"),
        _fact("c2", "2024-03-10", language="en"),
        _fact("c3", "2024-04-01", email="new@mail.tw"),
    ]
    assert contact_on(facts, date(2024, 2, 28)) is None
    assert contact_on(facts, date(2024, 3, 1)) == Contact("old@mail.tw", None, "zh")
    # A later event carrying only a language keeps the address known before it.
    assert contact_on(facts, date(2024, 3, 31)) == Contact("old@mail.tw", None, "en")
    assert contact_on(list(reversed(facts)), date(2024, 4, 1)) == Contact("new@mail.tw", None, "en")


def test_a_contact_never_shows_its_personal_data_in_a_repr() -> None:
    contact = Contact("someone@mail.tw", LINE_S2, "en")
    shown = repr(contact)
    assert "someone" not in shown and LINE_S2 not in shown
    assert "<on file>" in shown and "'en'" in shown


def test_a_retracted_contact_stops_counting(sqlite_store: TimelineStore) -> None:
    events = [
        ev("S1", "contact", "contact_updated", "2024-03-20", email="s1@mail.tw"),
        ev("S1", "undo", "retracted", "2024-03-21", retracts="S1-contact", reason="wrong"),
    ]
    assert ingest_objects(sqlite_store, events).ok
    assert contact_on(sqlite_store.facts("S1"), DAY) is None


# --- shared wording --------------------------------------------------------------------


def test_the_web_app_and_the_mails_share_one_wording() -> None:
    assert web.labels.TASK_NAMES is wording.TASK_NAMES
    assert web.labels.FINE_NAMES is wording.FINE_NAMES
    assert web.labels.MILESTONE_NAMES is wording.MILESTONE_NAMES
    for key, entry in wording.FIELD_NAMES.items():
        assert web.labels.LABELS[key] == entry


# --- LINE text -------------------------------------------------------------------------


def _alert(student: str = "S1") -> Alert:
    return Alert(
        key=f"{student}:apply_arc:e1:overdue:2024-04-15",
        student_id=student,
        task="apply_arc",
        milestone="overdue",
        due_on=date(2024, 4, 15),
        rule="R-ARC-ENTRY",
        message=Message(zh="您尚未申請外僑居留證。", en="You have not yet applied."),
    )


def test_line_text_names_the_student_and_the_task_in_their_language_first() -> None:
    alert = _alert()
    english = line_text(alert, Contact(None, LINE_S2, "en"))
    chinese = line_text(alert, Contact(None, LINE_S2, "zh"))
    unknown = line_text(alert, None)
    for text in (english, chinese, unknown):
        assert "S1" in text and "2024-04-15" in text
        assert "Apply for an ARC" in text and "申請外僑居留證" in text
        assert alert.message.en in text and alert.message.zh in text
        assert "apply_arc" not in text and LINE_S2 not in text
    assert english.index(alert.message.en) < english.index(alert.message.zh)
    assert chinese.index(alert.message.zh) < chinese.index(alert.message.en)
    assert unknown == chinese  # Traditional Chinese first when no language is on file


# --- student mails ---------------------------------------------------------------------


def test_each_student_gets_their_own_mail_in_their_language(stored) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        summary = emit(stored, port)
    assert summary["sent"] == 11 and summary["failed"] == 0
    assert summary["digests_sent"] == 1
    mails = inbox.students()
    # S3 (no contact), S4 (LINE only) and S5 (contact dated after the day) get no e-mail.
    assert sorted(mails) == ["s1@mail.tw", "s2@mail.tw", "s6@mail.tw"]
    assert [len(mails[a]) for a in ("s1@mail.tw", "s2@mail.tw", "s6@mail.tw")] == [2, 2, 1]
    for address, received in mails.items():
        for mail in received:
            assert [a for _n, a in getaddresses([str(mail["To"])])] == [address]
            assert [a for _n, a in getaddresses([str(mail["From"])])] == [SENDER]
            assert mail.get_content_type() == "multipart/alternative"
            assert str(mail["Message-ID"]) == smtp_message_id(str(mail["X-Alert-Key"]))

    (s1_overdue,) = [m for m in mails["s1@mail.tw"] if "overdue" in str(m["X-Alert-Key"])]
    subject = str(s1_overdue["Subject"])
    # English first for S1, the student and the task named in words, the due day.
    assert subject.startswith("[ARC reminder 居留證提醒] S1: Apply for an ARC")
    assert "2024-04-15" in subject and "1 day overdue" in subject and "申請外僑居留證" in subject
    assert "apply_arc" not in subject
    text, html = text_of(s1_overdue), html_of(s1_overdue)
    for body in (text, html):
        assert "S1" in body
        assert "Apply for an ARC" in body and "申請外僑居留證" in body
        assert "NTD 1,000" in body  # the fee
        assert "Students Online Application System" in body  # where to go
        assert "Passport and resident visa" in body and "護照及居留簽證" in body  # documents
        assert "R-ARC-ENTRY" in body and "2024-04-15" in body
        assert body.index("Dear student S1") < body.index("S1 同學您好")
    assert '<section lang="en">' in html and '<section lang="zh-Hant-TW"' in html

    # S2 reads Chinese: Chinese first, in the subject and in both parts.
    s2 = mails["s2@mail.tw"][0]
    assert str(s2["Subject"]).startswith("[居留證提醒 ARC reminder] S2：")
    for body in (text_of(s2), html_of(s2)):
        assert body.index("S2 同學您好") < body.index("Dear student S2")

    (s6,) = mails["s6@mail.tw"]
    assert "7 days left" in str(s6["Subject"]) and "2024-04-23" in str(s6["Subject"])


def test_the_mail_says_which_language_comes_first(stored) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        emit(stored, port)
    mails = inbox.students()
    # S1 reads English, S2 Chinese; the digest is Chinese, then English.
    assert {str(m["Content-Language"]) for m in mails["s1@mail.tw"]} == {"en, zh-Hant-TW"}
    assert {str(m["Content-Language"]) for m in mails["s2@mail.tw"]} == {"zh-Hant-TW, en"}
    ((_rcpts, digest),) = inbox.digests()
    assert str(digest["Content-Language"]) == "zh-Hant-TW, en"


@pytest.mark.parametrize("address", ["s7+<office>@mail.tw", "office,s7@mail.tw"])
def test_an_address_that_reads_as_other_recipients_is_never_mailed(
    location: str, clock: Any, tmp_path: Path, address: str
) -> None:
    # Stored before the contract refused such addresses (or by an import): the To header
    # `s7+<office>@mail.tw` names the mailbox "office", `office,s7@mail.tw` two mailboxes.
    with TimelineStore.open(location, clock=clock) as store:
        assert ingest_objects(store, scenario()).ok
        entered = {"visa": "resident", "visa_code": None, "stay_until": None}
        contact = {"email": address, "line_user_id": None, "language": "en"}
        write_directly(
            store,
            "S7",
            [
                ("S7-in", "entered", date(2024, 3, 16), entered),
                ("S7-contact", "contact_updated", date(2024, 3, 20), contact),
            ],
        )
    inbox = Inbox()
    with smtp_server(inbox) as port:
        summary = emit((location, str(tmp_path / "read.db")), port)
    recipients = {r for rcpts, _m in inbox.mails() for r in rcpts}
    assert recipients == {"s1@mail.tw", "s2@mail.tw", "s6@mail.tw", *STAFF}
    # S7's two alerts (apply_arc overdue, its fine accrued) are dead-lettered.
    assert summary["failed"] == 2 and summary["sent"] == 11
    assert not [m for _r, m in inbox.mails() if "S7:" in str(m["X-Alert-Key"] or "")]
    preview = run_cli(
        *("--db", location, "alerts", "--on", DAY.isoformat(), "--student", "S7"),
        *("--preview", "--json"),
        cwd=tmp_path,
    )
    assert preview.returncode == 0, preview.stderr
    for shown in json.loads(preview.stdout):
        assert shown["email"]["would_send"] is False
        assert "other mailboxes" in shown["email"]["reason"]


def test_message_ids_are_the_same_in_two_separate_runs(tmp_path, clock) -> None:
    ids: list[dict[str, str]] = []
    for run in ("a", "b"):
        base = tmp_path / run
        base.mkdir()
        with TimelineStore.open(str(base / "t.db"), clock=clock) as store:
            assert ingest_objects(store, scenario()).ok
        inbox = Inbox()
        with smtp_server(inbox) as port:
            emit_once(str(base / "t.db"), str(base / "read.db"), spec(port), DAY)
        ids.append({str(m["X-Alert-Key"]): str(m["Message-ID"]) for _r, m in inbox.mails()})
    assert ids[0] == ids[1] and len(ids[0]) == 6  # 5 student mails and the digest's id


def test_a_second_run_for_the_day_sends_nothing_at_all(stored) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        emit(stored, port)
        again = emit(stored, port)
    assert (again["sent"], again["digests_sent"], again["new"]) == (0, 0, 0)
    assert len(inbox.mails()) == 6


def test_the_daily_job_mails_students_and_staff_too(stored) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        summary = daily_alerts(stored[0], stored[1], spec(port), today="2024-04-16")
        again = daily_alerts(stored[0], stored[1], spec(port), today="2024-04-16")
    assert (summary["sent"], summary["digests_sent"]) == (11, 1)
    assert (again["sent"], again["digests_sent"]) == (0, 0)
    assert sorted(inbox.students()) == ["s1@mail.tw", "s2@mail.tw", "s6@mail.tw"]
    assert len(inbox.digests()) == 1


# --- the staff digest ------------------------------------------------------------------


def test_the_digest_groups_the_day_by_milestone_and_names_everyone(stored) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        emit(stored, port)
    ((rcpts, digest),) = inbox.digests()
    assert rcpts == STAFF
    assert [a for _n, a in getaddresses([str(digest["To"])])] == STAFF
    assert str(digest["Message-ID"]) == smtp_message_id(digest_key(DAY, STAFF))
    assert "2024-04-16" in str(digest["Subject"]) and "11 alert(s)" in str(digest["Subject"])
    text, html = text_of(digest), html_of(digest)

    # Grouped by milestone, most urgent first, each group with its lines.
    headings = re.findall(r"^== (.+) \((\d+)\)$", text, flags=re.MULTILINE)
    assert headings[:3] == [
        ("已逾期 Overdue", "5"),
        ("罰鍰發生 Fine accrued", "5"),
        ("7 天後到期 Due in 7 days", "1"),
    ]
    overdue_block = text.split("== 已逾期 Overdue (5)")[1].split("==")[0]
    for student in ("S1", "S2", "S3", "S4", "S5"):
        assert re.search(
            rf"^- {student} \| 申請外僑居留證 Apply for an ARC \| .* 2024-04-15 \|",
            overdue_block,
            flags=re.MULTILINE,
        ), student
    assert "- S1 |" in overdue_block and "已寄給學生 e-mailed to the student" in overdue_block
    assert re.search(r"^- S3 \|.*not e-mailed: no e-mail on file$", overdue_block, re.MULTILINE)

    # The students with no e-mail on the day: S3 (nothing), S4 (LINE only), S5 (later).
    missing = text.split("Students with no e-mail on file")[1].split("==")[0]
    assert re.findall(r"^- (S\d)", missing, flags=re.MULTILINE) == ["S3", "S4", "S5"]
    assert "- S4 (僅有 LINE LINE only)" in missing
    assert "- S3 (無任何聯絡方式 no contact on file)" in missing
    assert "No failed deliveries." in text
    for student in ("S1", "S2", "S3", "S4", "S5", "S6"):
        assert f'<td style="padding-right: 1em;">{student}</td>' in html
    assert "<li>S4 (僅有 LINE" in html
    # Addresses of students never appear in the staff digest.
    assert "@mail.tw" not in text and "@mail.tw" not in html


def test_dead_letters_are_listed_in_the_digest(stored) -> None:
    inbox = Inbox(refuse={"s2@mail.tw"})
    with smtp_server(inbox) as port:
        summary = emit(stored, port)
    assert summary["failed"] == 2  # S2's two alerts: 550, permanent
    ((_rcpts, digest),) = inbox.digests()
    text = text_of(digest)
    dead = text.split("Alerts whose delivery failed for good (dead letters) (2)")[1]
    assert re.findall(r"^- (S\d) \|", dead, flags=re.MULTILINE) == ["S2", "S2"]
    assert "SMTPRecipientsRefused" in dead or "recipients refused" in dead
    assert "timeline alerts --retry-failed" in dead
    overdue_block = text.split("== 已逾期 Overdue (5)")[1].split("==")[0]
    assert re.search(r"^- S2 \|.*寄送失敗 delivery failed$", overdue_block, re.MULTILINE)


def test_a_failed_digest_is_sent_by_the_next_run_once(stored) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        first = emit(stored, port)
        assert first["digests_sent"] == 1
        # ...a digest left `sending` by a killed run goes out again with the same id.
        outbox_db = OutboxDB(outbox_location(stored[0], stored[1]))
        try:
            table = DigestOutbox(Outbox(outbox_db))
            (row,) = table.rows()
            assert row["state"] == "sent" and row["day"] == DAY.isoformat()
            table.mark_sending(row["key"])
        finally:
            outbox_db.close()
        second = emit(stored, port)
    assert second["digests_sent"] == 1 and second["sent"] == 0
    ids = [str(m["Message-ID"]) for _r, m in inbox.digests()]
    assert len(ids) == 2 and ids[0] == ids[1]


def test_a_digest_that_failed_stays_pending_and_goes_out_next_time(sqlite_store, tmp_path):
    assert ingest_objects(sqlite_store, scenario()).ok
    model = ReadModel(str(tmp_path / "read.db"))
    model.sync(sqlite_store)
    outbox_db = OutboxDB(str(tmp_path / "read.db"))
    try:
        outbox = Outbox(outbox_db)
        composer = Composer(Students(sqlite_store.facts, model.rules))
        inbox = Inbox(fail_data=3)
        with smtp_server(inbox) as port:
            sink = SmtpSink("127.0.0.1", port, SENDER, STAFF, timeout=5.0)
            waits: list[float] = []
            failed = send_digests(
                outbox, sink, composer, [DAY], now=lambda: datetime.now(UTC), sleep=waits.append
            )
            assert (failed.sent, len(failed.failed), len(waits)) == ([], 1, 2)
            (row,) = DigestOutbox(outbox).rows()
            assert (row["state"], row["attempts"]) == ("pending", 3)
            assert "SMTP 451" in row["last_error"]
            # The next run covers another day and still sends the one left over.
            later = send_digests(
                outbox,
                sink,
                composer,
                [date(2024, 4, 17)],
                now=lambda: datetime.now(UTC),
                sleep=waits.append,
            )
            assert len(later.sent) == 2
        days = sorted(str(m["X-Alert-Digest"]) for _r, m in inbox.digests())
        assert days == ["2024-04-16", "2024-04-17"]
    finally:
        outbox_db.close()
        model.close()


# --- preview ---------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")}
    return subprocess.run(
        [TIMELINE, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_the_preview_is_exactly_what_the_sink_sends(tmp_path, clock) -> None:
    db = str(tmp_path / "t.db")
    with TimelineStore.open(db, clock=clock) as store:
        assert ingest_objects(store, scenario()).ok
    inbox = Inbox()
    with smtp_server(inbox) as port:
        args = ["--db", db, "alerts", "--on", "2024-04-16", "--sink", spec(port)]
        shown = run_cli(*args, "--student", "S1", "--preview", "--json", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert inbox.mails() == []  # a preview sends nothing...
        previews = json.loads(shown.stdout)
        sent = run_cli(*args, "--emit", cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
    received = {str(m["X-Alert-Key"]): m for m in inbox.students()["s1@mail.tw"]}
    assert len(previews) == 2 and set(received) == {p["alert"]["key"] for p in previews}
    for preview in previews:
        mail = received[preview["alert"]["key"]]
        email_ = preview["email"]
        assert email_["would_send"] is True
        for name, value in email_["headers"].items():
            if name != "Date":  # the moment of sending
                assert str(mail[name]) == value, name
        assert set(email_["headers"]) >= {"From", "To", "Subject", "Message-ID", "X-Alert-Key"}
        assert text_of(mail) == email_["text"]
        assert html_of(mail) == email_["html"]
        assert preview["line"]["would_send"] is False  # S1 has no LINE id
        assert preview["webhook"]["headers"]["Idempotency-Key"] == preview["alert"]["key"]
        assert json.loads(preview["webhook"]["body"]) == preview["alert"]
    # ...and touches no outbox: the emit above found every alert new.
    assert json.loads(sent.stdout)["new"] == 11


def test_preview_of_a_student_without_e_mail_says_why_and_shows_line(tmp_path, clock) -> None:
    db = str(tmp_path / "t.db")
    with TimelineStore.open(db, clock=clock) as store:
        assert ingest_objects(store, scenario()).ok
    shown = run_cli(
        "--db",
        db,
        "alerts",
        "--on",
        "2024-04-16",
        "--student",
        "S4",
        "--preview",
        "--json",
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    (first, _second) = json.loads(shown.stdout)
    assert first["email"]["would_send"] is False and "no e-mail" in first["email"]["reason"]
    assert first["line"] == {
        "would_send": True,
        "reason": None,
        "to": LINE_S4,
        "text": line_text(Alert.model_validate(first["alert"]), Contact(None, LINE_S4, "en")),
    }
    assert first["languages"] == ["en", "zh"]
    text = run_cli(
        "--db", db, "alerts", "--on", "2024-04-16", "--student", "S4", "--preview", cwd=tmp_path
    )
    assert text.returncode == 0
    assert "--- e-mail (not sent: no e-mail address on file" in text.stdout
    assert f"--- LINE ({LINE_S4})" in text.stdout
    assert "--- webhook POST (Idempotency-Key: S4:apply_arc:" in text.stdout


def test_preview_bad_input_exit_codes(tmp_path, clock) -> None:
    db = str(tmp_path / "t.db")
    with TimelineStore.open(db, clock=clock) as store:
        assert ingest_objects(store, scenario()).ok
    base = ["--db", db, "alerts", "--on", "2024-04-16"]
    unknown = run_cli(*base, "--student", "NOBODY", "--preview", cwd=tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: no events stored for student 'NOBODY'"
    alone = run_cli(*base, "--preview", cwd=tmp_path)
    assert alone.returncode == 2 and "--preview needs --student" in alone.stderr
    mixed = run_cli(*base, "--student", "S1", "--preview", "--emit", cwd=tmp_path)
    assert mixed.returncode == 2 and "cannot be combined with --emit" in mixed.stderr
    bad_day = run_cli(
        "--db", db, "alerts", "--on", "2024-02-30", "--student", "S1", "--preview", cwd=tmp_path
    )
    assert bad_day.returncode == 2
    quiet = run_cli(
        "--db", db, "alerts", "--on", "2024-04-02", "--student", "S1", "--preview", cwd=tmp_path
    )
    assert quiet.returncode == 0
    assert quiet.stdout.strip() == "No alerts for student S1 on 2024-04-02."
    only = run_cli(*base, "--student", "S6", "--json", cwd=tmp_path)
    assert only.returncode == 0
    assert [a["student_id"] for a in json.loads(only.stdout)] == ["S6"]
    # Nothing sent, no outbox or mail: the store's read models only.
    assert not (tmp_path / "alerts.jsonl").exists()


def test_preview_needs_no_outbox_and_matches_the_composer(sqlite_store, tmp_path) -> None:
    assert ingest_objects(sqlite_store, scenario()).ok
    model = ReadModel(str(tmp_path / "read.db"))
    model.sync(sqlite_store)
    try:
        composer = Composer(Students(sqlite_store.facts, model.rules))
        previews = preview_student(model, composer, "S2", DAY)
        assert [p["alert"]["key"] for p in previews] == [
            a.key for a in alerts_on(model, DAY) if a.student_id == "S2"
        ]
        for p in previews:
            assert p["email"]["headers"]["To"] == "s2@mail.tw"
            assert "From" not in p["email"]["headers"]  # no sink named: From is the sink's
            assert p["line"]["to"] == LINE_S2 and p["languages"] == ["zh", "en"]
            assert CJK.search(p["email"]["subject"].split(" / ")[0])
    finally:
        model.close()
    assert not (tmp_path / "read.db.outbox").exists()


# --- HTTP preview ----------------------------------------------------------------------

FEED_TOKEN, STAFF_TOKEN = "feed-secret-0123456789", "staff-secret-0123456789"
ADMIN_TOKEN = "admin-secret-0123456789"


@pytest.fixture
def api(tmp_path: Path, clock) -> Iterator[str]:
    db = str(tmp_path / "t.db")
    with TimelineStore.open(db, clock=clock) as store:
        assert ingest_objects(store, scenario()).ok
    config = ApiConfig.from_env(
        {
            "TIMELINE_FEED_TOKENS": f"feeder:{FEED_TOKEN}:manual",
            "TIMELINE_STAFF_TOKENS": f"alice:{STAFF_TOKEN}",
            "TIMELINE_ADMIN_TOKENS": f"carol:{ADMIN_TOKEN}",
        },
        db,
    )
    with running(create_app(config)) as url:
        yield url


def test_http_preview_for_staff(api) -> None:
    url = f"{api}/v1/students/S2/alerts/preview"
    staff = {"Authorization": f"Bearer {STAFF_TOKEN}"}
    r = httpx.get(url, params={"on": "2024-04-16"}, headers=staff)
    assert r.status_code == 200
    body = r.json()
    assert [p["alert"]["milestone"] for p in body] == ["overdue", "accrued"]
    assert all(p["email"]["headers"]["To"] == "s2@mail.tw" for p in body)
    assert all(p["line"]["to"] == LINE_S2 for p in body)
    assert r.headers["Cache-Control"] == "no-store"

    assert httpx.get(url, params={"on": "2024-04-16"}).status_code == 401
    feed = httpx.get(url, headers={"Authorization": f"Bearer {FEED_TOKEN}"})
    assert feed.status_code == 403 and "error" in feed.json()
    bad = httpx.get(url, params={"on": "2024-13-01"}, headers=staff)
    assert bad.status_code == 400 and bad.json()["error"].startswith("on:")
    missing = httpx.get(f"{api}/v1/students/NOBODY/alerts/preview", headers=staff)
    assert missing.status_code == 404
    assert missing.json() == {"error": "no events stored for student 'NOBODY'"}
    # It shows the student's contact: audited like the student view.
    audit = httpx.get(f"{api}/v1/audit", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert [(a["token_name"], a["route"], a["student_id"]) for a in audit.json()] == [
        ("alice", "GET /v1/students/{student_id}/alerts/preview", "S2")
    ]
