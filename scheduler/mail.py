"""Alert e-mails: a student's reminder and the staff's daily digest, as multipart messages.

The wording comes from two places: the names of tasks, fines, milestones, places and the
field labels are the staff app's (`projections.wording`, shared with `web.labels`); the
few words only e-mails use are `MAIL_WORDS` below. Jinja2 templates in
`scheduler/templates/mail/` lay them out, one text and one HTML template per message kind,
each walking the languages in the reader's order (`Notice.langs`).

The templates live beside the scheduler, not in an edge, because the daily job runs from
APScheduler with plain arguments only and must render without an edge handing it anything;
the renderer is still passed in (`Composer(renderer=...)`, any `MailRenderer`), so an edge
can substitute its own.

The SMTP sink takes a `Composer` (`SmtpSink.composer`): for each alert it asks for the
student's e-mail (`student_mail`), which is None when no e-mail address is on file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from projections.wording import FIELD_NAMES, HTML_LANG, Bilingual, Lang, ntd, ntd_range
from scheduler.alert import Alert
from scheduler.notices import Notice, Students
from scheduler.sinks import smtp_message_id
from timeline.contract import plain_address

if TYPE_CHECKING:
    from scheduler.digest import Digest

TEMPLATES = Path(__file__).resolve().parent / "templates" / "mail"

# Words only the e-mails use (the names of things are projections.wording's).
MAIL_WORDS: dict[str, Bilingual] = {
    "reminder": {"zh": "居留證提醒", "en": "ARC reminder"},
    "greeting": {"zh": "{student} 同學您好：", "en": "Dear student {student},"},
    "intro": {
        "zh": "這是您的外僑居留證（ARC）提醒。",
        "en": "This is a reminder about your Alien Resident Certificate (ARC).",
    },
    "milestone": {"zh": "提醒", "en": "Reminder"},
    "no_due": {"zh": "無法定期限", "en": "no legal deadline"},
    "amount": {"zh": "金額", "en": "Amount"},
    "nia_decides": {"zh": "由移民署裁處", "en": "the NIA decides the amount"},
    "imposed": {"zh": "已裁處", "en": "imposed"},
    "overstay_days": {"zh": "已逾期居留 {n} 天", "en": "{n} days of overstay"},
    "footer": {
        "zh": "本信由學校國際學生事務單位的居留時程系統自動寄出，請勿直接回覆。",
        "en": "Sent automatically by your school's international student office's "
        "residency timeline. Please do not reply to this message.",
    },
    "language_name": {"zh": "中文", "en": "English"},
    "digest": {"zh": "每日提醒摘要", "en": "Daily alert digest"},
    "digest_intro": {
        "zh": "{day} 的所有提醒，依提醒種類分組。",
        "en": "Every alert of {day}, grouped by milestone.",
    },
    "digest_count": {"zh": "共 {n} 則提醒", "en": "{n} alert(s)"},
    "no_alerts": {"zh": "本日沒有提醒。", "en": "No alerts on this day."},
    "student": {"zh": "學生", "en": "Student"},
    "outcome": {"zh": "寄送結果", "en": "Outcome"},
    "missing_contact": {
        "zh": "未留 e-mail 的學生（未寄給學生，請聯絡並請其更新聯絡方式）",
        "en": "Students with no e-mail on file (not e-mailed: reach them and have their "
        "contact updated)",
    },
    "no_missing_contact": {
        "zh": "所有學生皆有 e-mail。",
        "en": "Every student has an e-mail address on file.",
    },
    "line_only": {"zh": "僅有 LINE", "en": "LINE only"},
    "no_contact": {"zh": "無任何聯絡方式", "en": "no contact on file"},
    "dead_letters": {
        "zh": "寄送失敗（已停止重試）的提醒",
        "en": "Alerts whose delivery failed for good (dead letters)",
    },
    "no_dead_letters": {"zh": "沒有寄送失敗的提醒。", "en": "No failed deliveries."},
    "alert_day": {"zh": "提醒日", "en": "Alert day"},
    "attempts": {"zh": "嘗試次數", "en": "Attempts"},
    "error": {"zh": "錯誤", "en": "Error"},
    "retry_hint": {
        "zh": "修正後以 `timeline alerts --retry-failed` 重新寄送。",
        "en": "Once fixed, `timeline alerts --retry-failed` sends them again.",
    },
}

# How each alert of the digest went (scheduler.digest.DigestLine.outcome).
OUTCOME_NAMES: dict[str, Bilingual] = {
    "emailed": {"zh": "已寄給學生", "en": "e-mailed to the student"},
    "no_email": {"zh": "未寄出：無 e-mail", "en": "not e-mailed: no e-mail on file"},
    "delivered": {"zh": "已由其他管道送出", "en": "delivered by another channel"},
    "failed": {"zh": "寄送失敗", "en": "delivery failed"},
    "unsent": {"zh": "尚未寄出", "en": "not sent yet"},
}


def word(key: str, lang: str, **values: object) -> str:
    """One of MAIL_WORDS or FIELD_NAMES in `lang`, its `{placeholders}` filled."""
    entry = MAIL_WORDS.get(key) or FIELD_NAMES[key]
    text = entry["zh" if lang == "zh" else "en"]
    return text.format(**values) if values else text


def _count(text: str, n: int, lang: str) -> str:
    # English singular: "1 day left", not "1 days left".
    return text.replace("days", "day") if lang == "en" and abs(n) == 1 else text


def due_phrase(due_on: date | None, days_left: int | None, lang: str) -> str:
    """`2024-04-15 (3 days left)`, `… (due today)`, `… (2 days overdue)`, or no deadline."""
    if due_on is None or days_left is None:
        return word("no_due", lang)
    if days_left > 0:
        left = _count(word("days_left_n", lang, n=days_left), days_left, lang)
    elif days_left == 0:
        left = word("due_today", lang)
    else:
        left = _count(word("overdue_n", lang, n=-days_left), days_left, lang)
    aside = f"（{left}）" if lang == "zh" else f" ({left})"
    return f"{due_on.isoformat()}{aside}"


def amount_phrase(amount: tuple[int, int] | None, lang: str) -> str:
    """A fine's amount: `NTD 2,000–10,000（由移民署裁處）` for a range, the amount if imposed."""
    if amount is None:
        return ""
    low, high = amount
    if low == high:
        return ntd_range(low, high)
    note = word("nia_decides", lang)
    aside = f"（{note}）" if lang == "zh" else f" ({note})"
    return f"{ntd_range(low, high)}{aside}"


@dataclass(frozen=True)
class RenderedMail:
    """One e-mail's words: the subject line, the plain text and the HTML body."""

    subject: str
    text: str
    html: str


class MailRenderer(Protocol):
    """Turns a notice or a digest into words (see `TemplateRenderer`)."""

    def student(self, notice: Notice) -> RenderedMail:
        """The e-mail to the student about one alert."""
        ...

    def digest(self, digest: Digest) -> RenderedMail:
        """The staff's daily digest."""
        ...


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class TemplateRenderer:
    """The Jinja2 templates in `scheduler/templates/mail/` (or another directory)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.env = Environment(
            loader=FileSystemLoader(directory or TEMPLATES),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.globals.update(
            word=word,
            due_phrase=due_phrase,
            amount_phrase=amount_phrase,
            html_lang=HTML_LANG,
            outcome_names=OUTCOME_NAMES,
            ntd=ntd,
            message=lambda alert, lang: alert.message.zh if lang == "zh" else alert.message.en,
            # Full-width punctuation in Chinese text.
            colon=lambda lang: "：" if lang == "zh" else ": ",
            comma=lambda lang: "，" if lang == "zh" else ", ",
        )

    def _render(self, name: str, **values: Any) -> str:
        return self.env.get_template(name).render(**values)

    def student(self, notice: Notice) -> RenderedMail:
        """The student's e-mail about one alert, in their language first."""
        return RenderedMail(
            subject=_one_line(self._render("student_subject.txt", n=notice)),
            text=self._render("student.txt", n=notice),
            html=self._render("student.html", n=notice),
        )

    def digest(self, digest: Digest) -> RenderedMail:
        """The staff's daily digest (Traditional Chinese, then English)."""
        langs: tuple[Lang, Lang] = ("zh", "en")
        return RenderedMail(
            subject=_one_line(self._render("digest_subject.txt", d=digest, langs=langs)),
            text=self._render("digest.txt", d=digest, langs=langs),
            html=self._render("digest.html", d=digest, langs=langs),
        )


def multipart(
    rendered: RenderedMail, to: Sequence[str], message_id: str, langs: Sequence[Lang]
) -> EmailMessage:
    """A multipart/alternative e-mail (text, then HTML) without From and Date (the sink's)."""
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["To"] = ", ".join(to)
    message["Message-ID"] = message_id
    message.set_content(rendered.text, charset="utf-8")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8")
    # After the parts: set_content() drops every Content-* header, add_alternative() moves
    # them into the text part.
    message["Content-Language"] = ", ".join(HTML_LANG[lang] for lang in langs)
    return message


def student_email(notice: Notice, rendered: RenderedMail) -> EmailMessage | None:
    """The student's e-mail for a notice, To: their address; None when none is on file."""
    if not notice.email:
        return None
    if not plain_address(notice.email):  # stored before the contract refused it
        raise ValueError("the e-mail address on file would reach other mailboxes")
    message = multipart(rendered, [notice.email], smtp_message_id(notice.alert.key), notice.langs)
    message["X-Alert-Key"] = notice.alert.key
    return message


class Composer:
    """Builds alert e-mails for the SMTP sink: the student's, and the staff digest.

    `day_of` tells the day an alert falls on (the outbox row's day); `students` reads each
    student's facts for their contact and details.
    """

    def __init__(
        self,
        students: Students,
        renderer: MailRenderer | None = None,
        day_of: Callable[[Alert], date | None] | None = None,
    ) -> None:
        self.students = students
        self.renderer: MailRenderer = renderer or TemplateRenderer()
        self.day_of = day_of

    def notice(self, alert: Alert, day: date | None = None) -> Notice:
        """The notice of an alert on its day (given, or the day `day_of` knows)."""
        on = day or (self.day_of(alert) if self.day_of else None)
        if on is None:
            raise ValueError("the day this alert falls on is unknown")
        return self.students.notice(alert, on)

    def email(self, notice: Notice) -> EmailMessage | None:
        """The student's e-mail for a notice (None when no e-mail address is on file)."""
        if not notice.email:
            return None
        return student_email(notice, self.renderer.student(notice))

    def student_mail(self, alert: Alert) -> EmailMessage | None:
        """The e-mail the SMTP sink sends for an alert (None: no e-mail address on file)."""
        return self.email(self.notice(alert))

    def digest_mail(self, digest: Digest, to: Sequence[str]) -> EmailMessage:
        """The staff digest, To: the staff recipients."""
        message = multipart(
            self.renderer.digest(digest), to, smtp_message_id(digest.key), ("zh", "en")
        )
        message["X-Alert-Digest"] = digest.day.isoformat()
        return message
