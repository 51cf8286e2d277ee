import pytest

from timeline.errors import StorageConfigError
from timeline.ingest import ingest_objects
from timeline.store import StoreConfig


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


def test_a_postgres_url_may_set_the_connect_timeout_and_a_bad_one_is_refused():
    """`connect_timeout` (libpq's name) reaches the library's pool; the store reads no env."""
    config = StoreConfig.resolve("postgresql://app@db.internal/tl?schema=s&connect_timeout=3")
    assert config.env()["POSTGRES_CONNECT_TIMEOUT"] == "3"
    assert "POSTGRES_CONNECT_TIMEOUT" not in StoreConfig.resolve("postgresql://app@h/tl").env()
    for bad in ("0", "soon", "-1"):
        with pytest.raises(StorageConfigError, match="connect_timeout"):
            StoreConfig.resolve(f"postgresql://app@h/tl?connect_timeout={bad}").env()
