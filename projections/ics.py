"""A student's open tasks as an iCalendar feed (RFC 5545), built with the `icalendar` library.

Pure: a function of one student view, the words to use (the edge passes the guide's
bilingual wording, see `FeedWording`), the moment of the export (DTSTAMP, from the
caller's clock) and the student's fact count (the revision). No I/O, no clock.

One all-day VEVENT per task that is still to do (upcoming, open or overdue) on its due
day; a task without a legal deadline sits on its opening day. Done and cancelled tasks
are left out, so a calendar app that refreshes the feed removes them. Each event keeps
its UID across exports (student, task kind, rule and the event that opened the task), so
apps update it in place instead of adding a copy; SEQUENCE never decreases as facts
arrive and as the task goes from upcoming to open to overdue.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from icalendar import Alarm, Calendar, Event, vDuration, vText

from projections import dates
from projections.models import StudentView, Task

Bilingual = Mapping[str, str]  # {"zh": ..., "en": ...}

PRODID = "-//residency-timeline//calendar feed//EN"
UID_DOMAIN = "residency-timeline"
SHOWN_STATUSES = ("upcoming", "open", "overdue")
_STATUS_RANK = {"upcoming": 0, "open": 1, "overdue": 2}
# The reminder: 09:00 seven days before the (all-day, floating) due day.
ALARM_BEFORE = timedelta(days=6, hours=15)
# How often a subscribed app should fetch the feed again (RFC 7986; Outlook's X- name).
REFRESH = timedelta(hours=6)
# The words `FeedWording.labels` must hold (`{...}` placeholders filled by the builder).
LABEL_KEYS = (
    "calendar_name",  # {student}
    "opens",
    "due",
    "no_due",
    "where",
    "fee",
    "documents",
    "rule",
    "events",
    "overdue",
    "reminder",  # {task} {day}
)
_LIST_SEP = {"zh": "、", "en": "; "}
_NAME_SEP = {"zh": "：", "en": ": "}


@dataclass(frozen=True)
class FeedWording:
    """The feed's words in Traditional Chinese and English, each a `{"zh", "en"}` pair.

    `task_names` by task kind and `where_names` by place (a code without an entry is
    shown as the code); `labels` holds every key of `LABEL_KEYS`.
    """

    task_names: Mapping[str, Bilingual]
    where_names: Mapping[str, Bilingual]
    labels: Mapping[str, Bilingual]

    def __post_init__(self) -> None:
        missing = [k for k in LABEL_KEYS if k not in self.labels]
        if missing:
            raise ValueError(f"FeedWording.labels lacks {', '.join(missing)}")

    def label(self, key: str, lang: str, **values: object) -> str:
        """One label in `lang` with its placeholders filled."""
        return self.labels[key][lang].format(**values)

    def task(self, kind: str, lang: str) -> str:
        """The name of a task kind in `lang` (the kind itself when unknown)."""
        entry = self.task_names.get(kind)
        return entry[lang] if entry else kind

    def place(self, where: str, lang: str) -> str:
        """The name of a place in `lang` (the code itself when unknown)."""
        entry = self.where_names.get(where)
        return entry[lang] if entry else where


def clean_text(text: str) -> str:
    """`text` without control or format characters (RFC 5545 TEXT forbids them); keeps LF, TAB.

    Commas, semicolons, backslashes and line ends are escaped by `icalendar` itself.
    """
    if text.isprintable():
        return text
    return "".join(
        ch
        for ch in text
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )


def task_uid(student_id: str, task: Task) -> str:
    """The task's UID, the same in every export: student, kind, rule and its opening event."""
    opened_by = task.caused_by[0] if task.caused_by else "-"
    identity = "\x1f".join((student_id, task.kind, task.rule, opened_by))
    return f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}@{UID_DOMAIN}"


def shown_tasks(view: StudentView) -> list[Task]:
    """The tasks the feed shows: still to do and with a day to sit on."""
    return [
        t
        for t in view.tasks
        if t.status in SHOWN_STATUSES and (t.due_on is not None or t.opens_on is not None)
    ]


def task_calendar(
    view: StudentView, wording: FeedWording, *, stamp: datetime, revision: int
) -> Calendar:
    """The feed of `view`'s open tasks; `stamp` is DTSTAMP, `revision` the student's fact count.

    `revision` grows with every stored fact (a retraction too), so SEQUENCE
    (revision × 3 + the status' rank) never decreases as the student's record grows.
    """
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    name = clean_text(
        " / ".join(
            wording.label("calendar_name", lang, student=view.student_id) for lang in ("zh", "en")
        )
    )
    cal.add("name", vText(name))
    cal.add("x-wr-calname", vText(name))
    cal.add("x-wr-timezone", vText("Asia/Taipei"))
    cal.add("refresh-interval", REFRESH, parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", vDuration(REFRESH))
    seen: dict[str, int] = {}
    for task in shown_tasks(view):
        uid = task_uid(view.student_id, task)
        seen[uid] = seen.get(uid, 0) + 1
        if seen[uid] > 1:  # two tasks of one kind, rule and cause: keep both, apart
            uid = uid.replace("@", f"-{seen[uid]}@", 1)
        cal.add_component(_event(task, uid, wording, stamp, revision))
    return cal


def _event(task: Task, uid: str, wording: FeedWording, stamp: datetime, revision: int) -> Event:
    day = task.due_on if task.due_on is not None else task.opens_on
    assert day is not None  # shown_tasks keeps only tasks with a day
    summary = " / ".join(_title(task, wording, lang) for lang in ("zh", "en"))
    event = Event()
    event.add("uid", uid)
    event.add("dtstamp", stamp)
    event.add("sequence", revision * 3 + _STATUS_RANK[task.status])
    event.add("dtstart", day)
    event.add("dtend", dates.next_day(day))
    event.add("summary", clean_text(summary))
    place = " / ".join(wording.place(task.where, lang) for lang in ("zh", "en"))
    event.add("location", clean_text(place))
    event.add("description", clean_text(_description(task, wording)))
    event.add("transp", "TRANSPARENT")  # a deadline, not a busy day
    event.add("class", "PRIVATE")
    if task.due_on is not None:
        alarm = Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add("trigger", -ALARM_BEFORE)
        reminder = " / ".join(
            wording.label("reminder", lang, task=wording.task(task.kind, lang), day=day)
            for lang in ("zh", "en")
        )
        alarm.add("description", clean_text(reminder))
        event.add_component(alarm)
    return event


def _title(task: Task, wording: FeedWording, lang: str) -> str:
    title = wording.task(task.kind, lang)
    if task.due_on is None:
        title += f" ({wording.label('no_due', lang)})"
    if task.status == "overdue":
        title = f"{wording.label('overdue', lang)}{_NAME_SEP[lang]}{title}"
    return title


def _description(task: Task, wording: FeedWording) -> str:
    """Both languages, one field a line; then the rule and the events behind the task."""
    blocks = []
    for lang in ("zh", "en"):
        sep = _NAME_SEP[lang]
        lines = [wording.task(task.kind, lang)]
        if task.opens_on is not None:
            lines.append(f"{wording.label('opens', lang)}{sep}{task.opens_on.isoformat()}")
        due = task.due_on.isoformat() if task.due_on else wording.label("no_due", lang)
        lines.append(f"{wording.label('due', lang)}{sep}{due}")
        lines.append(f"{wording.label('where', lang)}{sep}{wording.place(task.where, lang)}")
        if task.fee_ntd is not None:
            lines.append(f"{wording.label('fee', lang)}{sep}NTD {task.fee_ntd:,}")
        if task.documents:
            names = _LIST_SEP[lang].join(getattr(d, lang) for d in task.documents)
            lines.append(f"{wording.label('documents', lang)}{sep}{names}")
        blocks.append("\n".join(lines))
    cites = [f"{_both(wording, 'rule')}: {task.rule}"]
    if task.caused_by:
        cites.append(f"{_both(wording, 'events')}: {', '.join(task.caused_by)}")
    blocks.append("; ".join(cites))
    return "\n\n".join(blocks)


def _both(wording: FeedWording, key: str) -> str:
    return f"{wording.label(key, 'zh')} {wording.label(key, 'en')}"
