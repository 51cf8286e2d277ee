"""Personal data (addresses, passport numbers) is encrypted at rest and never logged."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from conftest import POSTGRES_URL
from eventsourcing.cipher import AESCipher
from feed_examples import entered, example

from timeline.errors import StorageConfigError
from timeline.ingest import ingest_objects, ingest_text
from timeline.settings import load_settings
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))

ADDRESS = "Zzyzx Lane 4711, Qwertyville Dormitory"
PASSPORT = "QP98765432"
SECRETS = (ADDRESS, PASSPORT)


def personal_events():
    return [
        entered("e1"),
        example("address_changed", event_id="e2", occurred_on="2024-04-01", address=ADDRESS),
        example(
            "passport_replaced", event_id="e3", occurred_on="2024-04-02", passport_number=PASSPORT
        ),
    ]


def raw_sqlite_bytes(path: str) -> bytes:
    """The database file and its journal / WAL files, as stored on disk."""
    base = Path(path)
    return b"".join(
        p.read_bytes() for p in sorted(base.parent.glob(base.name + "*")) if p.is_file()
    )


def raw_postgres_bytes(location: str) -> bytes:
    """Every column of every row of the events table and the feed-key index, as bytes."""
    import psycopg

    schema = parse_qs(urlparse(location).query)["schema"][0]
    chunks: list[bytes] = []
    with psycopg.connect(POSTGRES_URL) as conn:
        for table in ("timeline_events", "feed_keys"):
            rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            assert rows, f"no rows in {table}"
            for row in rows:
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        chunks.append(bytes(value))
                    else:
                        chunks.append(str(value).encode())
    return b"\n".join(chunks)


def raw_bytes(location: str) -> bytes:
    if location.startswith("postgresql://"):
        return raw_postgres_bytes(location)
    return raw_sqlite_bytes(location)


@pytest.fixture
def key() -> str:
    return AESCipher.create_key(32)


@pytest.fixture(autouse=True)
def _no_key_in_the_environment(monkeypatch):
    # "without a key" must mean without one: not one inherited from the shell
    monkeypatch.delenv("TIMELINE_CIPHER_KEY", raising=False)


def test_without_a_key_the_plaintext_is_stored(location, clock):
    # The control: it shows the raw read below would see the secrets if they were there.
    with TimelineStore.open(location, clock=clock) as store:
        assert ingest_objects(store, personal_events()).accepted == 3
    raw = raw_bytes(location)
    for secret in SECRETS:
        assert secret.encode() in raw


def test_with_a_key_the_plaintext_is_not_stored(location, clock, key):
    with TimelineStore.open(location, cipher_key=key, clock=clock) as store:
        assert ingest_objects(store, personal_events()).accepted == 3
    raw = raw_bytes(location)
    for secret in SECRETS:
        assert secret.encode() not in raw
        assert secret.lower().encode() not in raw.lower()


def test_with_the_key_the_facts_read_back(location, clock, key):
    with TimelineStore.open(location, cipher_key=key, clock=clock) as store:
        ingest_objects(store, personal_events())
    with TimelineStore.open(location, cipher_key=key, clock=clock) as store:
        facts = {f.event_id: f for f in store.facts("S1")}
        assert facts["e2"].get("address") == ADDRESS
        assert facts["e3"].get("passport_number") == PASSPORT
        # idempotency still works with keyed digests
        again = ingest_objects(store, personal_events())
        assert again.as_json() == {"accepted": 0, "duplicates": 3, "rejected": []}
        changed = ingest_objects(store, [{**personal_events()[1], "address": "elsewhere"}])
        assert len(changed.rejected) == 1


def test_the_key_can_come_from_the_environment(tmp_path, clock, key):
    path = str(tmp_path / "env.db")
    settings = load_settings({"TIMELINE_CIPHER_KEY": key}, db=path)
    with TimelineStore.open(settings.store_location, settings.secret("cipher_key"), clock) as store:
        ingest_objects(store, personal_events())
        assert store.facts("S1")[1].get("address") == ADDRESS
    raw = raw_sqlite_bytes(path)
    assert ADDRESS.encode() not in raw


def test_the_store_itself_never_reads_the_environment(tmp_path, clock, key, monkeypatch):
    # The library would read TIMELINE_CIPHER_KEY on its own (its prefix is the app's name);
    # only the settings read the environment, so a store opened without a key has none.
    monkeypatch.setenv("TIMELINE_CIPHER_KEY", key)
    path = str(tmp_path / "plain.db")
    with TimelineStore.open(path, clock=clock) as store:
        ingest_objects(store, personal_events())
    assert ADDRESS.encode() in raw_sqlite_bytes(path)


@pytest.mark.parametrize("reopen_with", ["wrong key", "no key"])
def test_the_wrong_or_missing_key_is_a_clear_storage_error(tmp_path, clock, key, reopen_with):
    path = str(tmp_path / "wrong.db")
    with TimelineStore.open(path, cipher_key=key, clock=clock) as store:
        ingest_objects(store, personal_events())
    other = AESCipher.create_key(32) if reopen_with == "wrong key" else None
    # refusing to open, or refusing to read, are both fine
    with (
        pytest.raises(StorageConfigError) as info,
        TimelineStore.open(path, cipher_key=other, clock=clock) as store,
    ):
        store.facts("S1")
    assert "key" in str(info.value).lower()
    assert ADDRESS not in str(info.value)


def test_an_encrypted_store_refuses_plaintext_writes_without_the_key(tmp_path, clock, key):
    path = str(tmp_path / "mixed.db")
    with TimelineStore.open(path, cipher_key=key, clock=clock) as store:
        ingest_objects(store, personal_events())
    newcomer = example(
        "address_changed", event_id="n1", student_id="S9", occurred_on="2024-04-01", address=ADDRESS
    )
    # refusing to open, or refusing to write, are both fine
    with pytest.raises(StorageConfigError), TimelineStore.open(path, clock=clock) as store:
        ingest_objects(store, [newcomer])
    with TimelineStore.open(path, cipher_key=key, clock=clock) as store:
        assert store.facts("S9") == []
    assert ADDRESS.encode() not in raw_sqlite_bytes(path)


def test_the_cli_with_the_wrong_key_exits_2_without_a_traceback(tmp_path, clock, key):
    path = tmp_path / "wrong.db"
    with TimelineStore.open(str(path), cipher_key=key, clock=clock) as store:
        ingest_objects(store, personal_events())
    env = {**os.environ, "TIMELINE_CIPHER_KEY": AESCipher.create_key(32)}
    env.pop("TIMELINE_DB", None)
    done = subprocess.run(
        [TIMELINE, "--db", str(path), "history", "S1", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "key" in done.stderr.lower()


# -- never logged ----------------------------------------------------------------------------
def test_personal_data_is_never_logged(store, caplog):
    caplog.set_level(logging.DEBUG)
    events = personal_events()
    text = "\n".join(
        [
            *(json.dumps(e) for e in events),
            # a rejected event carrying personal data, and a conflicting one
            json.dumps(
                example("address_changed", event_id="e4", occurred_on="2024-02-30", address=ADDRESS)
            ),
        ]
    )
    ingest_text(store, text, partial=True)
    ingest_text(store, text, partial=True)  # duplicates
    ingest_objects(store, [{**events[2], "passport_number": PASSPORT + "9"}])  # conflict
    store.facts("S1")
    for record in caplog.records:
        message = record.getMessage()
        for secret in SECRETS:
            assert secret not in message, record
            assert secret not in str(record.args), record


def test_personal_data_is_not_in_the_verbose_cli_log(tmp_path):
    from click.testing import CliRunner

    from timeline.cli import main

    feed = tmp_path / "feed.jsonl"
    feed.write_text("\n".join(json.dumps(e) for e in personal_events()) + "\n")
    db = str(tmp_path / "cli.db")
    result = CliRunner().invoke(main, ["-v", "--db", db, "ingest", str(feed)])
    assert result.exit_code == 0, result.output
    for secret in SECRETS:
        assert secret not in result.stderr
        assert secret not in result.stdout
