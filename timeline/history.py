"""A student's stored events as staff read them: with record time and retraction marks."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from timeline.facts import Fact, chronological


def plain(value: Any) -> Any:
    """A stored value as JSON: dates and datetimes as ISO text, tuples as lists."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def history_entries(stream: list[Fact]) -> list[dict[str, Any]]:
    """Every stored event (retractions included) as a JSON object, in timeline order.

    Each object is the event as stored (envelope and fields, the contract's defaults
    applied) plus `recorded_at`, and
    `retracted` / `retracted_at` / `retracted_by` telling whether and when a later
    retraction made it stop counting.
    """
    retractions: dict[tuple[str, str], Fact] = {}
    for fact in stream:
        if fact.type == "retracted":
            target = (fact.source, fact.get("retracts"))
            if target not in retractions or fact.recorded_at < retractions[target].recorded_at:
                retractions[target] = fact
    entries = []
    for fact in chronological(stream):
        by = retractions.get(fact.key)
        entry: dict[str, Any] = {
            "event_id": fact.event_id,
            "source": fact.source,
            "student_id": fact.student_id,
            "type": fact.type,
            "occurred_on": fact.occurred_on.isoformat(),
        }
        entry.update({k: plain(v) for k, v in fact.data.items() if v is not None})
        if fact.note is not None:
            entry["note"] = fact.note
        entry["recorded_at"] = fact.recorded_at.isoformat()
        entry["retracted"] = by is not None
        entry["retracted_at"] = by.recorded_at.isoformat() if by else None
        entry["retracted_by"] = by.event_id if by else None
        entries.append(entry)
    return entries
