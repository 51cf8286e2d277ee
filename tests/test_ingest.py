"""Ingestion (SPEC §2 rules): idempotency, atomic vs partial, line numbers, order, batches."""

from __future__ import annotations

import random
from datetime import date

import pytest
from feed_examples import entered, example, jsonl, registered, retraction, write

from timeline.ingest import Ingestor, ingest_file, ingest_objects, ingest_text, read_array


def stored_keys(store, student="S1"):
    """(source, event_id) of every stored event of a student, in record order."""
    return [(f.source, f.event_id) for f in store.stream(student)]


# -- idempotency -----------------------------------------------------------------------------
def test_same_key_same_content_is_a_duplicate(store, clock):
    t0 = clock.now
    first = ingest_objects(store, [entered("e1")])
    assert first.as_json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    position = store.max_position()
    clock.advance(hours=1)

    again = ingest_objects(store, [entered("e1")])

    assert again.as_json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert store.max_position() == position  # nothing new in the store
    assert stored_keys(store) == [("manual", "e1")]
    assert store.facts("S1")[0].recorded_at == t0  # the first one still


def test_explicit_default_source_is_the_same_key(store):
    ingest_objects(store, [entered("e1")])
    again = ingest_objects(store, [entered("e1", source="manual")])
    assert again.duplicates == 1
    assert again.accepted == 0


def test_same_key_different_content_is_a_conflict_and_changes_nothing(store, clock):
    ingest_objects(store, [entered("e1", day="2024-03-16")])
    before = store.stream("S1")
    position = store.max_position()
    clock.advance(hours=1)

    report = ingest_objects(store, [entered("e1", day="2024-03-17")])

    assert report.accepted == 0
    assert report.duplicates == 0
    assert len(report.rejected) == 1
    assert report.rejected[0].position == 0
    error = report.rejected[0].error
    assert "conflict" in error
    assert "'e1'" in error
    assert store.max_position() == position
    assert store.stream("S1") == before
    assert store.facts("S1")[0].occurred_on == date(2024, 3, 16)


def test_conflict_when_only_the_note_differs(store):
    ingest_objects(store, [entered("e1", note="first")])
    report = ingest_objects(store, [entered("e1", note="second")])
    assert len(report.rejected) == 1
    assert store.facts("S1")[0].note == "first"


def test_conflict_with_another_student_under_the_same_key(store):
    ingest_objects(store, [entered("e1", student="S1")])
    report = ingest_objects(store, [entered("e1", student="S2")])
    assert len(report.rejected) == 1
    assert "conflict" in report.rejected[0].error
    assert store.facts("S2") == []


def test_same_event_id_from_another_source_is_another_event(store):
    report = ingest_objects(
        store,
        [
            entered("e1", source="registrar", day="2024-03-16"),
            registered("e1", source="housing", day="2024-03-20"),
            registered("e1", day="2024-03-21"),  # source "manual"
        ],
    )
    assert report.as_json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    facts = store.facts("S1")
    assert [(f.source, f.event_id, f.type) for f in facts] == [
        ("registrar", "e1", "entered"),
        ("housing", "e1", "registered"),
        ("manual", "e1", "registered"),
    ]


def test_the_conflict_rejects_only_the_conflicting_event_in_partial_mode(store):
    ingest_objects(store, [entered("e1")])
    report = ingest_objects(
        store, [entered("e1", day="2024-01-01"), registered("e2")], partial=True
    )
    assert report.accepted == 1
    assert [r.position for r in report.rejected] == [0]
    assert [f.event_id for f in store.facts("S1")] == ["e1", "e2"]


def test_a_stored_conflict_makes_an_atomic_batch_store_nothing(store):
    ingest_objects(store, [entered("e1")])
    report = ingest_objects(store, [registered("e2"), entered("e1", day="2024-01-01")])
    assert report.accepted == 0
    assert [r.position for r in report.rejected] == [1]
    assert stored_keys(store) == [("manual", "e1")]


@pytest.mark.parametrize("partial", [False, True])
def test_same_key_twice_in_one_input_same_content_is_a_duplicate(store, partial):
    report = ingest_objects(
        store, [entered("e1"), registered("e2"), entered("e1")], partial=partial
    )
    assert report.as_json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    assert stored_keys(store) == [("manual", "e1"), ("manual", "e2")]


def test_same_key_twice_in_one_input_different_content_is_a_conflict(store):
    text = jsonl(entered("e1"), registered("e2"), entered("e1", day="2024-01-01"))
    report = ingest_text(store, text)
    assert report.accepted == 0
    assert len(report.rejected) == 1
    assert report.rejected[0].position == 3
    assert "conflict" in report.rejected[0].error
    assert store.stream("S1") == []


def test_same_key_twice_in_one_input_partial_keeps_the_first(store):
    text = jsonl(entered("e1"), registered("e2"), entered("e1", day="2024-01-01"))
    report = ingest_text(store, text, partial=True)
    assert report.accepted == 2
    assert [(r.position, "conflict" in r.error) for r in report.rejected] == [(3, True)]
    assert [(f.event_id, f.occurred_on) for f in store.facts("S1")] == [
        ("e1", date(2024, 3, 16)),
        ("e2", date(2024, 3, 20)),
    ]


# -- atomic vs partial, JSON Lines -----------------------------------------------------------
def test_one_bad_line_stores_nothing_by_default(store, tmp_path):
    path = write(
        tmp_path / "feed.jsonl",
        jsonl(entered("e1"), registered("e2"), example("departed", occurred_on="2024-02-30")),
    )
    report = ingest_file(store, path)
    assert report.accepted == 0
    assert report.duplicates == 0
    assert [r.position for r in report.rejected] == [3]
    assert "occurred_on" in report.rejected[0].error
    assert report.as_json()["rejected"] == [{"line": 3, "error": report.rejected[0].error}]
    assert store.stream("S1") == []
    assert store.max_position() == 0


def test_partial_stores_the_good_lines_and_reports_the_bad(store, tmp_path):
    path = write(
        tmp_path / "feed.jsonl",
        jsonl(
            entered("e1"),
            {
                "event_id": "x",
                "student_id": "S1",
                "type": "teleported",
                "occurred_on": "2024-03-01",
            },
            registered("e2"),
            "{not json",
            example("departed", event_id="e3", occurred_on="2024-04-01"),
        ),
    )
    report = ingest_file(store, path, partial=True)
    assert report.accepted == 3
    assert [r.position for r in report.rejected] == [2, 4]
    assert "type" in report.rejected[0].error
    assert "'teleported'" in report.rejected[0].error
    assert "JSON" in report.rejected[1].error
    assert [f.event_id for f in store.facts("S1")] == ["e1", "e2", "e3"]


def test_blank_lines_are_skipped_but_counted(store, tmp_path):
    path = write(
        tmp_path / "feed.jsonl",
        jsonl(
            None,
            entered("e1"),
            None,
            "   ",
            registered("e2"),
            None,
            {"event_id": "x", "type": "departed", "occurred_on": "2024-04-01"},
        ),
    )
    report = ingest_file(store, path)
    # physical lines: 1 blank, 2 e1, 3 blank, 4 spaces, 5 e2, 6 blank, 7 bad
    assert report.accepted == 0
    assert [r.position for r in report.rejected] == [7]
    assert "student_id" in report.rejected[0].error
    partial = ingest_file(store, path, partial=True)
    assert partial.accepted == 2
    assert [r.position for r in partial.rejected] == [7]


def test_all_errors_of_a_file_are_reported_with_their_lines(store):
    text = jsonl(
        entered("e1", visa="tourist"),
        entered("e2"),
        entered("e3", student_id="x" * 65),
        "[1, 2]",
    )
    report = ingest_text(store, text)
    assert report.accepted == 0
    lines = {r.position: r.error for r in report.rejected}
    assert sorted(lines) == [1, 3, 4]
    assert lines[1].startswith("visa:")
    assert lines[3].startswith("student_id:")
    assert "JSON object" in lines[4]


def test_a_utf8_bom_and_crlf_line_ends_are_accepted(store, tmp_path):
    path = tmp_path / "feed.jsonl"
    text = jsonl(entered("e1"), registered("e2")).replace("\n", "\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    report = ingest_file(store, path)
    assert report.as_json() == {"accepted": 2, "duplicates": 0, "rejected": []}


def test_an_empty_file_accepts_nothing_and_rejects_nothing(store, tmp_path):
    report = ingest_file(store, write(tmp_path / "empty.jsonl", "\n\n"))
    assert report.as_json() == {"accepted": 0, "duplicates": 0, "rejected": []}


def test_ingest_objects_reports_array_indexes(store):
    report = ingest_objects(store, [entered("e1"), {"event_id": "x", "type": "departed"}])
    assert report.accepted == 0
    body = report.as_json()
    assert [r["index"] for r in body["rejected"]] == [1]
    assert "line" not in body["rejected"][0]


# -- atomic vs partial, CSV ------------------------------------------------------------------
CSV_HEADER = "event_id,source,student_id,type,occurred_on,visa,stay_until,semester,fields,note"


def test_csv_with_empty_cells_and_a_fields_list(store, tmp_path):
    path = write(
        tmp_path / "feed.csv",
        "\n".join(
            [
                CSV_HEADER,
                "e1,,S1,entered,2024-03-16,resident,,,,",
                "e2,registrar,S1,registered,2024-03-20,,,112-2,,first semester",
                "e3,,S1,details_updated,2024-04-02,,,,address;passport,",
                'e4,,S2,entered,2024-03-18,visitor,2024-05-16,,,"note, with comma"',
            ]
        )
        + "\n",
    )
    report = ingest_file(store, path)
    assert report.as_json() == {"accepted": 4, "duplicates": 0, "rejected": []}
    facts = store.facts("S1")
    assert [(f.source, f.event_id, f.type) for f in facts] == [
        ("manual", "e1", "entered"),
        ("registrar", "e2", "registered"),
        ("manual", "e3", "details_updated"),
    ]
    assert facts[0].get("stay_until") is None
    assert facts[1].note == "first semester"
    assert list(facts[2].get("fields")) == ["address", "passport"]
    (s2,) = store.facts("S2")
    assert s2.get("stay_until") == date(2024, 5, 16)
    assert s2.note == "note, with comma"


def test_csv_format_is_chosen_by_file_name_or_declared(store, tmp_path):
    text = CSV_HEADER + "\ne1,,S1,entered,2024-03-16,resident,,,,\n"
    assert ingest_file(store, write(tmp_path / "a.csv", text)).accepted == 1
    declared = ingest_file(store, write(tmp_path / "b.txt", text), fmt="csv")
    assert declared.duplicates == 1


def test_csv_one_bad_row_stores_nothing_and_names_its_line(store, tmp_path):
    path = write(
        tmp_path / "feed.csv",
        "\n".join(
            [
                CSV_HEADER,
                "e1,,S1,entered,2024-03-16,resident,,,,",
                "",
                "e2,,S1,registered,2024-3-20,,,112-2,,",
                "e3,,S1,details_updated,2024-04-02,,,,address;hair,",
            ]
        )
        + "\n",
    )
    report = ingest_file(store, path)
    assert report.accepted == 0
    lines = {r.position: r.error for r in report.rejected}
    assert sorted(lines) == [4, 5]  # the header is line 1, the blank line 3 counts
    assert lines[4].startswith("occurred_on:")
    assert "fields" in lines[5]
    assert "'hair'" in lines[5]
    assert store.stream("S1") == []


def test_csv_partial_stores_the_good_rows(store, tmp_path):
    path = write(
        tmp_path / "feed.csv",
        "\n".join(
            [
                CSV_HEADER,
                "e1,,S1,entered,2024-03-16,resident,,,,",
                "e2,,S1,registered,2024-3-20,,,112-2,,",
                "e3,,S1,entered,2024-03-18,visitor,,,,",  # visitor without stay_until
                "",
                "e4,,S1,details_updated,2024-04-02,,,,address,",
            ]
        )
        + "\n",
    )
    report = ingest_file(store, path, partial=True)
    assert report.accepted == 2
    assert [r.position for r in report.rejected] == [3, 4]
    assert report.rejected[1].error.startswith("stay_until:")
    assert [f.event_id for f in store.facts("S1")] == ["e1", "e4"]


def test_csv_multiline_cell_reports_the_first_line_of_its_row(store, tmp_path):
    path = write(
        tmp_path / "feed.csv",
        "\n".join(
            [
                CSV_HEADER,
                'e1,,S1,entered,2024-03-16,resident,,,,"line one',
                'line two"',
                "e2,,S1,registered,2024-02-30,,,112-2,,",
            ]
        )
        + "\n",
    )
    report = ingest_file(store, path, partial=True)
    assert report.accepted == 1
    assert [r.position for r in report.rejected] == [4]
    assert store.facts("S1")[0].note == "line one\nline two"


def test_csv_row_with_too_many_cells_is_rejected(store, tmp_path):
    path = write(
        tmp_path / "feed.csv",
        CSV_HEADER + "\ne1,,S1,entered,2024-03-16,resident,,,,,surplus\n",
    )
    report = ingest_file(store, path)
    assert [r.position for r in report.rejected] == [2]
    assert report.accepted == 0


def test_csv_unknown_column_is_an_unknown_field(store, tmp_path):
    path = write(
        tmp_path / "feed.csv",
        "event_id,student_id,type,occurred_on,visa,colour\ne1,S1,entered,2024-03-16,resident,red\n",
    )
    report = ingest_file(store, path)
    assert [r.position for r in report.rejected] == [2]
    assert report.rejected[0].error.startswith("colour:")


def test_csv_amounts_and_booleans_are_typed(store, tmp_path):
    path = write(
        tmp_path / "feed.csv",
        "event_id,student_id,type,occurred_on,application,by_agent,fine,amount_ntd\n"
        "a1,S1,arc_applied,2024-04-01,initial,true,,\n"
        "f1,S1,fine_imposed,2024-05-01,,,late_arc_application,3000\n"
        "f2,S1,fine_paid,2024-05-02,,,,0\n",
    )
    report = ingest_file(store, path, partial=True)
    assert report.accepted == 2
    assert [r.position for r in report.rejected] == [4]
    assert report.rejected[0].error.startswith("amount_ntd:")
    applied, imposed = store.facts("S1")
    assert applied.get("by_agent") is True
    assert imposed.get("amount_ntd") == 3000


def test_ingest_text_accepts_csv(store):
    report = ingest_text(
        store, CSV_HEADER + "\ne1,,S1,entered,2024-03-16,resident,,,,\n", fmt="csv"
    )
    assert report.accepted == 1


# -- out-of-order arrival --------------------------------------------------------------------
def test_shuffled_events_come_back_in_valid_time_order(store):
    days = [f"2024-{month:02d}-{day:02d}" for month in (1, 3, 5) for day in (3, 14, 25)]
    events = [registered(f"e{i}", day=day) for i, day in enumerate(days)]
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != events
    report = ingest_objects(store, shuffled)
    assert report.accepted == len(events)
    facts = store.facts("S1")
    assert [f.occurred_on.isoformat() for f in facts] == days
    assert [f.event_id for f in facts] == [e["event_id"] for e in events]


def test_shuffled_events_in_one_at_a_time_come_back_ordered(store, clock):
    days = ["2024-02-01", "2024-03-01", "2024-04-01", "2024-05-01", "2024-06-01"]
    order = [3, 0, 4, 2, 1]
    for index in order:
        clock.advance(minutes=5)
        ingest_objects(store, [registered(f"e{index}", day=days[index])])
    facts = store.facts("S1")
    assert [f.event_id for f in facts] == ["e0", "e1", "e2", "e3", "e4"]
    # the record order is the arrival order
    assert [f.event_id for f in store.stream("S1")] == [f"e{i}" for i in order]


def test_a_late_arrival_sorts_by_when_it_occurred(store, clock):
    ingest_objects(store, [registered("e2", day="2024-03-20")])
    t1 = clock.now
    clock.advance(days=10)
    ingest_objects(store, [entered("e1", day="2024-03-16")])
    facts = store.facts("S1")
    assert [f.event_id for f in facts] == ["e1", "e2"]
    assert facts[0].recorded_at > facts[1].recorded_at
    assert facts[1].recorded_at == t1


def test_same_day_ties_are_broken_by_record_time(store, clock):
    ingest_objects(store, [registered("zz-first", day="2024-03-20")])
    clock.advance(seconds=1)
    ingest_objects(store, [entered("aa-second", day="2024-03-20")])
    assert [f.event_id for f in store.facts("S1")] == ["zz-first", "aa-second"]


def test_recorded_at_is_the_store_clock(store, clock):
    ingest_objects(store, [entered("e1")])
    first = clock.now
    clock.advance(hours=3)
    ingest_objects(store, [registered("e2")])
    assert [f.recorded_at for f in store.facts("S1")] == [first, clock.now]
    assert all(f.recorded_at.utcoffset() is not None for f in store.facts("S1"))


# -- batching --------------------------------------------------------------------------------
def many_events(students=4, per_student=3):
    events = []
    for s in range(students):
        for k in range(per_student):
            events.append(registered(f"S{s}-e{k}", student=f"S{s}", day=f"2024-03-{10 + k:02d}"))
    random.Random(3).shuffle(events)
    return events


@pytest.mark.parametrize("partial", [False, True])
def test_small_batches_store_everything_once(store, tmp_path, partial):
    events = many_events(students=4, per_student=3)  # 12 events, 4 batches of 3
    path = write(tmp_path / "feed.jsonl", jsonl(*events))

    report = ingest_file(store, path, batch_size=3, partial=partial)

    assert report.as_json() == {"accepted": 12, "duplicates": 0, "rejected": []}
    for s in range(4):
        facts = store.facts(f"S{s}")
        assert [f.event_id for f in facts] == [f"S{s}-e{k}" for k in range(3)]
        assert len(store.stream(f"S{s}")) == 3
    # 12 facts plus one stream-opening event per student, nothing more
    assert store.max_position() == 12 + 4
    decoded = [type(store.decode(n)).__name__ for n in store.notifications(0, 100)]
    assert decoded.count("FactRecorded") == 12

    again = ingest_file(store, path, batch_size=3, partial=partial)
    assert again.as_json() == {"accepted": 0, "duplicates": 12, "rejected": []}
    assert store.max_position() == 12 + 4


def test_small_batches_atomic_rejects_a_bad_line_in_the_last_batch(store, tmp_path):
    events = [*many_events(students=4, per_student=3), entered("bad", visa="tourist")]
    path = write(tmp_path / "feed.jsonl", jsonl(*events))
    report = ingest_file(store, path, batch_size=3)
    assert report.accepted == 0
    assert [r.position for r in report.rejected] == [13]
    assert store.max_position() == 0


def test_small_batches_duplicate_and_conflict_across_batches(store, tmp_path):
    events = many_events(students=2, per_student=3)  # 6 events: batches of 3
    same = events[0]
    other = {**events[1], "note": "changed"}
    path = write(tmp_path / "feed.jsonl", jsonl(*events, same, other))
    atomic = ingest_file(store, path, batch_size=3)
    assert atomic.accepted == 0
    assert [r.position for r in atomic.rejected] == [8]
    assert store.max_position() == 0

    partial = ingest_file(store, path, batch_size=3, partial=True)
    assert partial.as_json()["accepted"] == 6
    assert partial.duplicates == 1
    assert [r.position for r in partial.rejected] == [8]


@pytest.mark.parametrize("partial", [False, True])
def test_retraction_of_an_event_in_an_earlier_batch_of_the_same_file(store, tmp_path, partial):
    events = [
        entered("e1"),
        registered("e2"),
        registered("e3", student="S2"),
        registered("e4", student="S3"),
        retraction("r1", "e1"),
    ]
    path = write(tmp_path / "feed.jsonl", jsonl(*events))
    report = ingest_file(store, path, batch_size=2, partial=partial)
    assert report.as_json() == {"accepted": 5, "duplicates": 0, "rejected": []}
    assert [f.event_id for f in store.facts("S1")] == ["e2"]


def test_ingestor_with_batch_size_one_over_an_array(store):
    events = many_events(students=3, per_student=4)
    report = Ingestor(store, batch_size=1).run(lambda: read_array(events))
    assert report.accepted == 12
    assert sum(len(store.facts(f"S{s}")) for s in range(3)) == 12


def test_many_students_in_one_batch(store):
    events = [entered(f"e{i}", student=f"S{i}") for i in range(60)]
    report = ingest_objects(store, events)
    assert report.accepted == 60
    assert all(len(store.facts(f"S{i}")) == 1 for i in range(60))
    assert ingest_objects(store, events).duplicates == 60


# -- encoding --------------------------------------------------------------------------------
def test_utf8_addresses_are_stored_exactly(store):
    address = "臺北市大安區羅斯福路四段1號 男一舍 Room 3"
    text = jsonl(example("address_changed", address=address))
    assert ingest_text(store, text).accepted == 1
    assert store.facts("S1")[0].get("address") == address


def test_a_jsonl_line_that_is_not_utf8_is_rejected_not_mangled(store, tmp_path):
    # A Big5 or Latin-1 export must not be stored with U+FFFD in place of its letters.
    path = tmp_path / "feed.jsonl"
    good = jsonl(entered("e1")).encode()
    bad = (
        b'{"event_id":"a1","student_id":"S1","type":"address_changed",'
        b'"occurred_on":"2024-04-01","address":"Caf\xe9 Street 1"}\n'
    )
    path.write_bytes(good + bad)
    report = ingest_file(store, path)
    assert report.accepted == 0
    assert [r.position for r in report.rejected] == [2]
    assert "UTF-8" in report.rejected[0].error
    assert store.stream("S1") == []


def test_a_csv_row_that_is_not_utf8_is_rejected_not_mangled(store, tmp_path):
    path = tmp_path / "feed.csv"
    big5_address = "臺北市大安區".encode("big5")
    path.write_bytes(
        b"event_id,student_id,type,occurred_on,address\n"
        b"a1,S1,address_changed,2024-04-01,Roosevelt Rd 1\n"
        b"a2,S1,address_changed,2024-04-02," + big5_address + b"\n"
    )
    report = ingest_file(store, path, partial=True)
    assert report.accepted == 1
    assert [r.position for r in report.rejected] == [3]
    assert "UTF-8" in report.rejected[0].error
    assert all("\ufffd" not in f.get("address") for f in store.facts("S1"))
