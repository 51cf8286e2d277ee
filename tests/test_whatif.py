"""`timeline show --with FILE`: hypothetical events are evaluated, never stored."""

from __future__ import annotations

import json

from click.testing import CliRunner

from timeline.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_what_if_she_moves_on_1_june(tmp_path):
    db = str(tmp_path / "t.db")
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        json.dumps(
            {
                "event_id": "e1",
                "student_id": "S1",
                "type": "arc_issued",
                "occurred_on": "2024-02-01",
                "valid_until": "2025-01-31",
            }
        )
        + "\n"
    )
    assert _run("ingest", str(feed), "--db", db).exit_code == 0
    move = tmp_path / "move.jsonl"
    move.write_text(
        json.dumps(
            {"type": "address_changed", "occurred_on": "2024-06-01", "address": "New Taipei"}
        )
        + "\n"
    )
    on_time = json.loads(
        _run(
            "show", "S1", "--as-of", "2024-07-01", "--with", str(move), "--json", "--db", db
        ).output
    )
    task = next(t for t in on_time["tasks"] if t["kind"] == "report_address_change")
    assert (task["due_on"], task["status"]) == ("2024-07-01", "open")
    late = json.loads(
        _run(
            "show", "S1", "--as-of", "2024-07-02", "--with", str(move), "--json", "--db", db
        ).output
    )
    assert [(f["kind"], f["accrued_on"], f["amount_min_ntd"]) for f in late["fines"]] == [
        ("late_details_update", "2024-07-02", 2000)
    ]
    history = json.loads(_run("history", "S1", "--json", "--db", db).output)
    assert [e["event_id"] for e in history] == ["e1"]  # nothing was stored
    without = json.loads(_run("show", "S1", "--as-of", "2024-07-02", "--json", "--db", db).output)
    assert without["fines"] == []


def test_what_if_rejects_another_students_events(tmp_path):
    db = str(tmp_path / "t.db")
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        json.dumps(
            {
                "event_id": "e1",
                "student_id": "S1",
                "type": "entered",
                "occurred_on": "2024-02-01",
                "visa": "resident",
            }
        )
        + "\n"
    )
    _run("ingest", str(feed), "--db", db)
    other = tmp_path / "other.jsonl"
    other.write_text(
        json.dumps({"student_id": "S2", "type": "departed", "occurred_on": "2024-03-01"}) + "\n"
    )
    result = _run("show", "S1", "--with", str(other), "--db", db)
    assert result.exit_code == 2
    assert "S2" in result.output
