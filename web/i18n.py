"""The page's language and how values are written in it: labels, names, days, amounts.

Two languages: Traditional Chinese (`zh-TW`, the default) and English (`en`). The choice is
remembered in a cookie; without one, a browser that prefers English gets English.
Days are written `YYYY-MM-DD` and record moments in Taipei time; amounts `NTD 3,000`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from timeline.clock import TAIPEI
from web import labels

LANGS = ("zh-TW", "en")
DEFAULT_LANG = "zh-TW"
LANG_COOKIE = "tl_lang"


def choose_lang(cookie: str | None, accept_language: str | None) -> str:
    """The page language: the remembered choice, else the browser's preference, else zh-TW."""
    if cookie in LANGS:
        return cookie
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-TW"
        if tag.startswith("en"):
            return "en"
    return DEFAULT_LANG


def pick(entry: Any, lang: str) -> str:
    """One language's text of a bilingual entry: a (zh, en) pair or a mapping by language."""
    if isinstance(entry, Mapping):
        short = "zh" if lang.startswith("zh") else "en"
        return str(entry.get(lang) or entry.get(short) or next(iter(entry.values())))
    if isinstance(entry, tuple | list):
        return str(entry[0] if lang.startswith("zh") else entry[1])
    return str(entry)


def label(key: str, lang: str) -> str:
    """A UI label in `lang` (the key itself if it has no wording: visible, never a crash)."""
    entry = labels.LABELS.get(key)
    return key if entry is None else pick(entry, lang)


def name(kind: str, code: str | None, lang: str) -> str:
    """The name of a code (task, fine, status, place, ...) in `lang`; the code if unnamed."""
    if code is None:
        return "—"
    table = _NAME_TABLES.get(kind, {})
    entry = table.get(code)
    return code if entry is None else pick(entry, lang)


def day(value: date | str | None) -> str:
    """A day as `YYYY-MM-DD` (— when there is none)."""
    if value is None:
        return "—"
    return value.isoformat() if isinstance(value, date) else str(value)[:10]


def moment(value: datetime | str | None) -> str:
    """A record moment in Taipei time, `YYYY-MM-DD HH:MM:SS` (— when there is none)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(TAIPEI).strftime("%Y-%m-%d %H:%M:%S")


def moment_param(value: datetime | None) -> str:
    """A record moment as a known-at value that reads back exactly (Taipei, with offset)."""
    if value is None:
        return ""
    local = value.astimezone(TAIPEI)
    spec = "microseconds" if local.microsecond else "seconds"
    return local.isoformat(timespec=spec)


def ntd(amount: int | None) -> str:
    """An amount as `NTD 3,000` (— when there is none)."""
    return "—" if amount is None else f"NTD {amount:,}"


def ntd_range(low: int, high: int) -> str:
    """A range of amounts, `NTD 2,000–10,000`; one amount when both ends are equal."""
    return labels.ntd_range(low, high)


def _tables() -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for kind, attribute in (
        ("task", "TASK_NAMES"),
        ("fine", "FINE_NAMES"),
        ("status", "STATUS_NAMES"),
        ("task_status", "TASK_STATUS_NAMES"),
        ("fine_status", "FINE_STATUS_NAMES"),
        ("place", "WHERE_NAMES"),
        ("event", "EVENT_NAMES"),
        ("milestone", "MILESTONE_NAMES"),
        ("anomaly", "ANOMALY_NAMES"),
    ):
        table = getattr(labels, attribute, None)
        if isinstance(table, Mapping):
            found[kind] = table
    return found


_NAME_TABLES = _tables()
