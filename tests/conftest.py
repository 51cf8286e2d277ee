"""Shared fixtures: a store per backend (SQLite always; PostgreSQL when configured).

`TIMELINE_TEST_POSTGRES_URL` (set by .ci/run) points at a real PostgreSQL server; each
test gets its own schema, dropped afterwards. Without the variable, the PostgreSQL
variants are skipped, which only a developer machine without PostgreSQL should see.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from timeline.store import TimelineStore

POSTGRES_URL = os.environ.get("TIMELINE_TEST_POSTGRES_URL")


class FakeClock:
    """An injected record-time clock: starts at a fixed instant, moves when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2024, 6, 1, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _postgres_location() -> Iterator[str]:
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store location on each backend."""
    if request.param == "sqlite":
        yield str(tmp_path / "timeline.db")
        return
    if not POSTGRES_URL:
        pytest.skip("TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
    yield from _postgres_location()


@pytest.fixture
def store(location: str, clock: FakeClock) -> Iterator[TimelineStore]:
    """An open store on each backend, with the fake clock."""
    with TimelineStore.open(location, clock=clock) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: FakeClock) -> Iterator[TimelineStore]:
    """An open SQLite store, for tests that are about logic rather than storage."""
    with TimelineStore.open(str(tmp_path / "timeline.db"), clock=clock) as opened:
        yield opened
