"""What a student would receive on a day, on every channel, rendered and not sent.

`timeline alerts --on D --student S --preview` and `GET /v1/students/{id}/alerts/preview`
both answer from `preview_student`: for each of the student's alerts on D, the e-mail
(headers, text and HTML parts, exactly as `SmtpSink` sends it with a composer), the LINE
text (`scheduler.messages.line_text`) and the webhook request (headers and JSON body, as
`WebhookSink` posts it). Nothing is sent and the outbox is not touched.

The answer holds the student's e-mail address and LINE id (personal data): it is for
staff, never for a log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from email.message import EmailMessage
from typing import Any

from projections.readmodel import ReadModel
from scheduler.alerts import alerts_on
from scheduler.mail import Composer
from scheduler.messages import line_text
from scheduler.sinks import address_mail, alert_json

NO_EMAIL = "no e-mail address on file: not e-mailed (the staff digest lists the student)"
NO_LINE = "no LINE user id on file: no LINE message"
# The headers shown, in this order (the rest of a message's headers are MIME plumbing).
SHOWN_HEADERS = (
    "From",
    "To",
    "Date",
    "Subject",
    "Message-ID",
    "X-Alert-Key",
    "Content-Language",
)


class UnknownStudent(LookupError):
    """No event of this student is stored."""


def email_json(message: EmailMessage) -> dict[str, Any]:
    """An e-mail as JSON: its headers, the text part and the HTML part."""
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return {
        "headers": {name: str(message[name]) for name in SHOWN_HEADERS if message[name]},
        "text": text.get_content() if text is not None else None,  # type: ignore[attr-defined]
        "html": html.get_content() if html is not None else None,  # type: ignore[attr-defined]
    }


def preview_student(
    model: ReadModel,
    composer: Composer,
    student_id: str,
    day: date,
    *,
    sender: str | None = None,
    clock: Callable[[], datetime] | None = None,
) -> list[dict[str, Any]]:
    """The messages of each of the student's alerts on `day`, on every channel, unsent.

    `sender` and `clock` fill From and Date as the SMTP sink would (left out without them).
    Raises UnknownStudent when no event of the student is stored.
    """
    if not composer.students.known(student_id):
        raise UnknownStudent(f"no events stored for student {student_id[:64]!r}")
    found = [a for a in alerts_on(model, day, log_left_out=False) if a.student_id == student_id]
    out: list[dict[str, Any]] = []
    for alert in found:
        notice = composer.notice(alert, day)
        rendered = composer.renderer.student(notice)
        reason = NO_EMAIL
        try:
            message = composer.email(notice)
        except ValueError as error:  # an address the sink refuses to mail (never quoted)
            message, reason = None, str(error)
        if message is not None and sender is not None and clock is not None:
            address_mail(message, sender, clock())
        email: dict[str, Any] = {
            "would_send": message is not None,
            "reason": None if message is not None else reason,
            "subject": rendered.subject,
        }
        if message is not None:
            email |= email_json(message)
        else:
            email |= {"headers": {}, "text": rendered.text, "html": rendered.html}
        contact = notice.contact
        out.append(
            {
                "alert": alert.model_dump(mode="json"),
                "day": day.isoformat(),
                "contact": contact.as_json() if contact else None,
                "languages": list(notice.langs),
                "email": email,
                "line": {
                    "would_send": bool(notice.line_user_id),
                    "reason": None if notice.line_user_id else NO_LINE,
                    "to": notice.line_user_id,
                    "text": line_text(alert, contact),
                },
                "webhook": {
                    "headers": {"Idempotency-Key": alert.key, "Content-Type": "application/json"},
                    "body": alert_json(alert),
                },
            }
        )
    return out


def preview_text(previews: list[dict[str, Any]], student_id: str, day: date) -> str:
    """The previews as readable text (the CLI without --json)."""
    if not previews:
        return f"No alerts for student {student_id} on {day.isoformat()}."
    blocks: list[str] = []
    for p in previews:
        alert, email, line, hook = p["alert"], p["email"], p["line"], p["webhook"]
        lines = [
            f"=== {alert['student_id']} {alert['task']} {alert['milestone']} on {p['day']}"
            f" (key {alert['key']})",
            "--- e-mail" + ("" if email["would_send"] else f" (not sent: {email['reason']})"),
        ]
        lines += [f"{name}: {value}" for name, value in email["headers"].items()]
        if not email["headers"]:
            lines.append(f"Subject: {email['subject']}")
        lines += ["", "[text/plain]", email["text"].rstrip(), "", "[text/html]"]
        lines += [email["html"].rstrip(), ""]
        to = line["to"] if line["would_send"] else f"not sent: {line['reason']}"
        lines += [f"--- LINE ({to})", line["text"], ""]
        lines += [f"--- webhook POST (Idempotency-Key: {hook['headers']['Idempotency-Key']})"]
        lines += [hook["body"], ""]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
