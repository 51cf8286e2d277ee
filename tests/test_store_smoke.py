from contextlib import contextmanager

import pytest
from conftest import POSTGRES_URL, _postgres_location

from timeline.errors import StorageConfigError
from timeline.ingest import ingest_objects
from timeline.store import StoreConfig, TimelineStore


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


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
def test_a_postgresql_restart_fails_no_read_on_a_pooled_connection_it_broke(clock):
    """After the server dropped every connection (a restart, a failover), the next reads work.

    The pool keeps its connections between requests: without a check when one is handed
    out, each of them answered one more request 503 after the server was back.
    """
    from test_follower import relayed

    with (
        contextmanager(_postgres_location)() as location,
        relayed(location) as (relay, through),
        TimelineStore.open(through, clock=clock) as store,
    ):
        assert ingest_objects(store, [entered("e1", "S1", "2024-03-16")]).ok
        assert [f.event_id for f in store.facts("S1")] == ["e1"]
        relay.cut()  # every connection of the pool dies with the server
        relay.mend()  # and the server is back
        for _ in range(6):  # more reads than the pool has connections
            assert [f.event_id for f in store.facts("S1")] == ["e1"]
            assert store.lookup_keys([("manual", "e1")])


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("schema=probe_'q", "schema"),  # the library names it unquoted: a syntax error
        ('schema=probe_"q', "schema"),
        ("schema=probe;drop", "schema"),
        ("schema=probe.b", "schema"),
        ("schema=probe%20b", "schema"),
        ("schema=1probe", "schema"),
        ("schema=", "schema"),
        ("schema=pg_probe", "pg_"),  # reserved by PostgreSQL
        ("schema=" + "x" * 64, "63 bytes"),  # PostgreSQL would cut it: two names, one schema
        ("schema=" + "學" * 22, "63 bytes"),  # 66 bytes in UTF-8
        ("schema=probe&schema=public", "more than once"),  # which one?
        ("connect_timeout=3&connect_timeout=9", "more than once"),
        ("sslmode=require", "sslmode"),  # silently dropped, it would connect without TLS
        ("schema=s&password=pw", "password"),
    ],
)
def test_a_postgres_url_the_store_cannot_honour_is_refused(query, message):
    """Refused before any connection, naming the parameter; nothing is created."""
    with pytest.raises(StorageConfigError, match=message) as raised:
        StoreConfig.resolve(f"postgresql://app@db.internal/tl?{query}").env()
    assert "pw" not in str(raised.value)


@pytest.mark.parametrize("schema", ["Registry_2", "學生", "x" * 63, "_a1"])
def test_a_plain_schema_name_is_accepted(schema):
    env = StoreConfig.resolve(f"postgresql://app@db.internal/tl?schema={schema}").env()
    assert env["POSTGRES_SCHEMA"] == schema


@pytest.mark.parametrize("command", [["init"], ["show", "S1"], ["ingest", "-"], ["import", "x"]])
@pytest.mark.parametrize("kind", ["a folder", "/dev/null"])
def test_a_store_path_that_is_no_file_is_named_as_such(tmp_path, command, kind):
    """Was "no event store … run timeline init", and then init failed without saying why."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "x").write_text("")
    location = str(tmp_path) if kind == "a folder" else "/dev/null"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("timeline")), "--db", location, *command],
        capture_output=True,
        text=True,
        input="",
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"the event store at {location} is not a file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not POSTGRES_URL, reason="needs TIMELINE_TEST_POSTGRES_URL")
def test_tls_comes_from_libpqs_environment(monkeypatch):
    """`sslmode` is refused in the URL; PGSSLMODE is how TLS is asked for, and it is obeyed
    (this test server speaks no TLS, so requiring it must fail the open, naming SSL)."""
    with pytest.raises(StorageConfigError, match="PGSSLMODE"):
        StoreConfig.resolve(f"{POSTGRES_URL}?sslmode=require").env()
    monkeypatch.setenv("PGSSLMODE", "require")
    with pytest.raises(StorageConfigError, match="SSL"):
        TimelineStore.open(f"{POSTGRES_URL}?schema=tls_probe&connect_timeout=3").close()
