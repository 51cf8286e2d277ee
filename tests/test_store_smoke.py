from timeline.ingest import ingest_objects


def entered(event_id: str, student: str, day: str) -> dict:
    return {
        "event_id": event_id,
        "student_id": student,
        "type": "entered",
        "occurred_on": day,
        "visa": "resident",
    }


def test_ingest_then_read_back_on_each_backend(store, clock):
    report = ingest_objects(store, [entered("e1", "S1", "2024-03-16")])
    assert report.as_json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    facts = store.facts("S1")
    assert [(f.event_id, f.occurred_on.isoformat(), f.recorded_at) for f in facts] == [
        ("e1", "2024-03-16", clock.now)
    ]
