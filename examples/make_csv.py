"""Generate examples/feed.csv from examples/feed.jsonl, so the two feeds never drift.

Run from the repository root: `python -m examples.make_csv`. The header is the union of
the field names (envelope first, `note` last); absent fields are empty cells; the
`fields` list is written "address;passport" and booleans "true"/"false".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

ENVELOPE = ("event_id", "source", "student_id", "type", "occurred_on")
HERE = Path(__file__).resolve().parent
JSONL = HERE / "feed.jsonl"
CSV = HERE / "feed.csv"


def csv_value(value: Any) -> str:
    """One JSON value as the CSV cell the ingester reads back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    return str(value)


def jsonl_to_csv(source: Path = JSONL, target: Path = CSV) -> int:
    """Write `target` from `source`; returns the number of rows written."""
    events = [json.loads(line) for line in source.read_text("utf-8").splitlines() if line.strip()]
    names = dict.fromkeys(name for event in events for name in event)
    # the envelope first, the note last, type fields in between (order of first appearance)
    header = sorted(names, key=lambda n: 0 if n in ENVELOPE else 2 if n == "note" else 1)
    with target.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for event in events:
            writer.writerow([csv_value(event[name]) if name in event else "" for name in header])
    return len(events)


if __name__ == "__main__":
    rows = jsonl_to_csv()
    print(f"wrote {rows} rows to {CSV}")
