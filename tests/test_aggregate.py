"""The `Student` aggregate id: deterministic, so every writer finds the same stream."""

from __future__ import annotations

import subprocess
import sys
from uuid import UUID, uuid5

from feed_examples import entered
from hypothesis import given, settings
from hypothesis import strategies as st

from timeline.aggregate import STUDENT_NAMESPACE, Student, student_uuid, student_uuid_hex
from timeline.ingest import ingest_objects


def test_student_uuid_is_uuid5_of_the_student_number():
    uid = student_uuid("S1")
    assert isinstance(uid, UUID)
    assert uid.version == 5
    assert uid == uuid5(STUDENT_NAMESPACE, "S1")


def test_student_uuid_is_stable_across_calls_and_releases():
    # Stored streams are keyed by this value: it must never change.
    assert student_uuid("S1") == student_uuid("S1")
    assert student_uuid("S1") == UUID("5e4e42b3-353d-540c-ac20-62ce586eb514")
    assert UUID("5b0f3f6e-3c3c-4f4e-9a57-6d2b8f1c7a10") == STUDENT_NAMESPACE


def test_student_uuid_is_the_same_in_another_process():
    code = "from timeline.aggregate import student_uuid; print(student_uuid('S1'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == str(student_uuid("S1"))


def test_distinct_student_numbers_get_distinct_ids():
    numbers = ["S1", "S2", "s1", "S1 ", "410123456", "學生1", ""]
    assert len({student_uuid(n) for n in numbers}) == len(numbers)


def test_the_stored_stream_is_under_that_id(store):
    ingest_objects(store, [entered("e1", student="410123456")])
    aggregate = store.app.repository.get(student_uuid("410123456"))
    assert isinstance(aggregate, Student)
    assert aggregate.student_id == "410123456"
    assert aggregate.fact_count == 1


@settings(max_examples=200, deadline=None)
@given(student_id=st.text(st.characters(blacklist_categories=("Cs",)), max_size=64))
def test_the_hex_id_is_the_uuid5_as_stored(student_id: str) -> None:
    # What `append` writes into SQLite without making the `UUID`.
    assert student_uuid_hex(student_id) == student_uuid(student_id).hex
