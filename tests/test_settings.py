"""Issue 12: one configuration (`timeline.settings`), safe defaults, `init`, a fast start.

The settings come from explicit values > the environment > a TOML or .env file > secret
files > defaults; an unknown or invalid setting stops the start naming it (never its
value); read commands refuse a store that was never created; `timeline init` creates it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import POSTGRES_URL, _postgres_location
from feed_examples import entered

from timeline.api_settings import ApiConfig
from timeline.cli import ENCODING_NAMES, main
from timeline.ingest import ENCODINGS, ingest_objects
from timeline.settings import MASK, Settings, SettingsError, env_name, load_settings
from timeline.store import TimelineStore

TIMELINE = str(Path(sys.executable).with_name("timeline"))
STAFF = "alice-staff-token-0123456789"
FEED = "sis-feed-token-0123456789"
SESSION = "a-session-secret-of-at-least-32-characters!"


def cli(*args: str, env: dict[str, str] | None = None) -> object:
    """The CLI in-process, with these variables on top of the test process's environment."""
    return CliRunner().invoke(main, list(args), env=env or {})


def clean_environ(**extra: str) -> dict[str, str]:
    """The process environment without TIMELINE_ settings (the harness's own are kept)."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIMELINE_") or k.startswith(("TIMELINE_TEST_", "TIMELINE_BENCH_"))
    }
    return kept | extra


# -- precedence ------------------------------------------------------------------------------
def test_explicit_values_beat_the_environment_which_beats_the_file_which_beats_secret_files(
    tmp_path,
):
    config = tmp_path / "timeline.toml"
    config.write_text('db = "from-file.db"\nsession_hours = 3\nalert_batch = 7\n')
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "TIMELINE_ALERT_BATCH").write_text("9\n")
    (secrets / "TIMELINE_SESSION_SECRET").write_text(SESSION + "\n")
    environ = {
        "TIMELINE_CONFIG": str(config),
        "TIMELINE_SECRETS_DIR": str(secrets),
        "TIMELINE_DB": str(tmp_path / "from-env.db"),
        "TIMELINE_SESSION_HOURS": "5",
    }
    settings = load_settings(environ)
    assert settings.store_location == str(tmp_path / "from-env.db")  # env over file
    assert settings.session_hours == 5  # env over file
    assert settings.alert_batch == 7  # file over secret file
    assert settings.secret("session_secret") == SESSION  # secret file over default
    assert settings.max_body_bytes == 10 * 1024 * 1024  # the default
    explicit = load_settings(environ, db=str(tmp_path / "explicit.db"), session_hours=None)
    assert explicit.store_location == str(tmp_path / "explicit.db")  # explicit over env
    assert explicit.session_hours == 5  # None means "not given"
    without_env = load_settings({"TIMELINE_CONFIG": str(config)})
    # A relative path in the file counts from the file's folder, not the current one.
    assert without_env.store_location == str(tmp_path / "from-file.db")


def test_a_dotenv_file_named_by_config_uses_the_variable_names(tmp_path):
    config = tmp_path / "timeline.env"
    config.write_text(f"TIMELINE_STAFF_TOKENS=alice:{STAFF}\nTIMELINE_DEADLINE_ROLLOVER=yes\n")
    settings = load_settings({}, config_file=config)
    assert settings.secret("staff_tokens") == f"alice:{STAFF}"
    assert settings.deadline_rollover is True
    assert settings.rulebook().deadline_rollover is True


def test_the_config_option_reads_the_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('visitor_reading = "window"\n')
    result = cli("--config", str(config), "config", "--json", env=clean_environ())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["visitor_reading"] == "window"


# -- unknown and invalid settings --------------------------------------------------------------
def test_an_unknown_key_in_the_toml_file_is_an_error_naming_it(tmp_path):
    config = tmp_path / "timeline.toml"
    config.write_text('staf_tokens = "x"\n')
    with pytest.raises(SettingsError, match="unknown setting 'staf_tokens'") as refused:
        load_settings({"TIMELINE_CONFIG": str(config)})
    assert "did you mean staff_tokens" in str(refused.value)
    assert str(config) in str(refused.value)


def test_an_unknown_key_in_a_dotenv_file_is_an_error_naming_it(tmp_path):
    config = tmp_path / "settings.env"
    config.write_text("TIMELINE_SESION_SECRET=whatever\n")
    with pytest.raises(SettingsError, match="TIMELINE_SESION_SECRET"):
        load_settings({}, config_file=config)


def test_an_unknown_timeline_variable_is_an_error_naming_it():
    with pytest.raises(SettingsError, match="TIMELINE_STAF_TOKENS: unknown setting") as refused:
        load_settings({"TIMELINE_STAF_TOKENS": f"alice:{STAFF}"})
    assert "did you mean TIMELINE_STAFF_TOKENS" in str(refused.value)
    assert STAFF not in str(refused.value)


def test_variables_of_the_test_harness_and_of_other_programs_are_not_settings():
    settings = load_settings(
        {
            "TIMELINE_TEST_POSTGRES_URL": "postgresql://x/y",
            "TIMELINE_BENCH_POSTGRES_URL": "postgresql://x/y",
            "TIMELINE_CRASH_AT": "outbox_delivered:2",
            "PATH": "/usr/bin",
        }
    )
    assert settings.db is None


def test_a_missing_config_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match=r"nope\.toml: no such file"):
        load_settings({"TIMELINE_CONFIG": str(missing)})
    bad = tmp_path / "bad.toml"
    bad.write_text("db = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings({}, config_file=bad)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TIMELINE_SESSION_HOURS", "0", "1 to 168"),
        ("TIMELINE_SESSION_HOURS", "٣", "1 to 168"),
        ("TIMELINE_ALERT_BATCH", "10001", "from 1 to 10000"),
        ("TIMELINE_MAX_BODY_BYTES", "ten", "positive number of bytes"),
        ("TIMELINE_DEADLINE_ROLLOVER", "sometimes", "1 or 0"),
        ("TIMELINE_VISITOR_READING", "both", "'deadline' or 'window'"),
        ("TIMELINE_COOKIE_SECURE", "maybe", "1 or 0"),
        ("TIMELINE_SESSION_SECRET", "short-secret-hunter2", "at least 32"),
        ("TIMELINE_STAFF_TOKENS", "alice:short-hunter2", "at least 16"),
        ("TIMELINE_POPULATION_SLOTS", "0", "1 to 64"),
        ("TIMELINE_POPULATION_SLOTS", "2.5", "1 to 64"),
        ("TIMELINE_POPULATION_WAIT", "601", "1 to 600"),
    ],
)
def test_an_invalid_value_is_an_error_naming_the_setting_never_the_value(name, value, message):
    with pytest.raises(SettingsError) as refused:
        load_settings({name: value})
    assert name in str(refused.value) and message in str(refused.value)
    assert value not in str(refused.value)


def test_an_invalid_value_in_the_file_names_the_setting(tmp_path):
    config = tmp_path / "timeline.toml"
    config.write_text("session_hours = 500\n")
    with pytest.raises(SettingsError, match="TIMELINE_SESSION_HOURS"):
        load_settings({}, config_file=config)


def test_every_command_stops_at_start_up_on_a_bad_setting(tmp_path):
    for args in (["show", "S1"], ["schema"], ["config", "--show"]):
        result = cli(*args, env=clean_environ(TIMELINE_SESSION_HOURS="0"))
        assert result.exit_code == 2, result.output
        assert "TIMELINE_SESSION_HOURS" in result.stderr and result.stdout == ""


# -- secret files --------------------------------------------------------------------------------
def test_a_secret_can_come_from_a_file_named_by_a_file_variable(tmp_path):
    tokens = tmp_path / "staff"
    tokens.write_text(f"alice:{STAFF}\n")
    settings = load_settings({"TIMELINE_STAFF_TOKENS_FILE": str(tokens)})
    assert [t.name for t in ApiConfig.from_settings(settings).staff_tokens] == ["alice"]
    assert ApiConfig.from_settings(settings).staff_tokens[0].matches(STAFF)


def test_a_secret_file_that_cannot_be_read_or_a_doubly_set_secret_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="TIMELINE_CIPHER_KEY_FILE: cannot read the file"):
        load_settings({"TIMELINE_CIPHER_KEY_FILE": str(tmp_path / "missing")})
    key = tmp_path / "key"
    key.write_text("k")
    with pytest.raises(SettingsError, match="set only one of them"):
        load_settings({"TIMELINE_CIPHER_KEY_FILE": str(key), "TIMELINE_CIPHER_KEY": "k"})
    with pytest.raises(SettingsError, match="TIMELINE_SECRETS_DIR: not a folder"):
        load_settings({"TIMELINE_SECRETS_DIR": str(key)})


# -- config --show ---------------------------------------------------------------------------
def test_config_show_masks_every_secret_in_text_and_json(tmp_path):
    key = "cipher-key-hunter2-value"
    env = clean_environ(
        TIMELINE_DB="postgresql://app:pg-hunter2@127.0.0.1:5432/prod?schema=s1",
        TIMELINE_STAFF_TOKENS=f"alice:{STAFF}",
        TIMELINE_FEED_TOKENS=f"sis:{FEED}:sis|registrar",
        TIMELINE_SESSION_SECRET=SESSION,
        TIMELINE_CIPHER_KEY=key,
        TIMELINE_DATA_DIR=str(tmp_path / "data"),
    )
    text = cli("config", "--show", env=env)
    as_json = cli("config", "--show", "--json", env=env)
    for result in (text, as_json):
        assert result.exit_code == 0, result.output
        for secret in (STAFF, FEED, SESSION, key, "pg-hunter2"):
            assert secret not in result.output
    shown = json.loads(as_json.stdout)
    assert shown["staff_tokens"] == f"alice:{MASK}"
    assert shown["feed_tokens"] == f"sis:{MASK}:sis|registrar"
    assert shown["session_secret"] == shown["cipher_key"] == MASK
    assert shown["db"] == f"postgresql://app:{MASK}@127.0.0.1:5432/prod?schema=s1"
    assert shown["effective"]["read_db"] == str(
        tmp_path / "data" / "read-127.0.0.1-5432-prod-s1.db"
    )
    assert "TIMELINE_STAFF_TOKENS" in text.stdout and f"alice:{MASK}" in text.stdout
    assert shown["session_hours"] == 8 and shown["admin_tokens"] is None


# -- where things live -------------------------------------------------------------------------
def test_locations_are_absolute_and_the_read_models_live_beside_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({}, db="events.db")
    assert settings.store_location == str(tmp_path / "events.db")
    assert settings.read_db_location == settings.store_location  # the same SQLite file
    assert load_settings({}, read_db="r.db").read_db_location == str(tmp_path / "r.db")
    postgres = load_settings({"HOME": str(tmp_path / "home")}, db="postgresql://h/d")
    expected = tmp_path / "home/.local/share/residency-timeline/read-h-5432-d-public.db"
    assert postgres.read_db_location == str(expected)
    other_schema = load_settings({}, db="postgresql://h/d?schema=b", data_dir=tmp_path)
    assert other_schema.read_db_location == str(tmp_path / "read-h-5432-d-b.db")
    assert Path(other_schema.read_db_location).is_absolute()


def test_the_cli_keeps_no_read_models_in_the_current_folder(tmp_path, monkeypatch):
    store = tmp_path / "store" / "events.db"
    store.parent.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = clean_environ(TIMELINE_DB=str(store))
    assert cli("init", env=env).exit_code == 0
    result = cli("tasks", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert list(elsewhere.iterdir()) == []


# -- refusal to create on read ------------------------------------------------------------------
READ_COMMANDS = [
    ["show", "S1"],
    ["history", "S1"],
    ["tasks"],
    ["fines"],
    ["changes", "--since", "2024-01-01"],
    ["alerts", "--on", "2024-05-01"],
    ["alerts", "--on", "2024-05-01", "--emit"],
    ["alerts", "--failed"],
    ["alerts", "--retrying"],
    ["alerts", "--on", "2024-05-01", "--student", "S1", "--preview"],
    ["rebuild"],
    ["follow", "--once"],
    ["calendar", "S1"],
    ["calendar", "S1", "--link"],
    ["export"],
    ["serve", "--port", "1"],
    ["scheduler"],
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: "-".join(a[:2] + a[-1:]))
def test_a_read_command_refuses_a_sqlite_store_that_does_not_exist(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = cli("--db", "timline.db", *args, env=clean_environ())
    assert result.exit_code == 2, result.output
    missing = tmp_path / "timline.db"
    assert f"no event store at {missing}" in result.stderr
    assert f"timeline init --db {missing}" in result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # nothing created, no read models either


def _hinted_command(stderr: str) -> list[str]:
    """The command the error tells to run (between backticks), as a shell splits it."""
    import shlex

    words = shlex.shlex(stderr.split("`")[1], posix=True, punctuation_chars=True)
    words.whitespace_split = True  # `&`, `;`, `|` stay operators of their own
    return list(words)


def test_the_init_hint_is_a_command_a_shell_runs_as_shown(tmp_path, monkeypatch):
    """A path or URL holding `&` or `;` (`?schema=uni&connect_timeout=5`) was shown bare:
    pasted into a shell, it ran `timeline init` in the background and the rest apart."""
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "store&co;x.db"
    result = cli("--db", str(missing), "show", "S1", env=clean_environ())
    assert result.exit_code == 2, result.output
    assert _hinted_command(result.stderr) == ["timeline", "init", "--db", str(missing)]


def test_the_create_schema_hint_is_a_command_a_shell_runs_as_shown(missing_schema):
    location = f"{POSTGRES_URL}?schema={missing_schema}&connect_timeout=5"
    result = cli("--db", location, "show", "S1", env=clean_environ())
    assert result.exit_code == 2, result.output
    assert _hinted_command(result.stderr) == [
        "timeline", "init", "--db", location, "--create-schema",
    ]  # fmt: skip


@pytest.fixture
def missing_schema():
    if not POSTGRES_URL:
        pytest.skip("TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
    import psycopg

    schema = f"t_missing_{uuid.uuid4().hex[:8]}"
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_a_postgres_schema_that_does_not_exist_is_refused_without_a_traceback(missing_schema):
    location = f"{POSTGRES_URL}?schema={missing_schema}"
    for args in (["show", "S1"], ["tasks"], ["ingest", "-"]):
        done = subprocess.run(
            [TIMELINE, "--db", location, *args],
            capture_output=True,
            text=True,
            env=clean_environ(),
            input="",
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "the schema does not exist" in done.stderr and "--create-schema" in done.stderr


@pytest.fixture
def empty_schema():
    if not POSTGRES_URL:
        pytest.skip("TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
    yield from _postgres_location()


def test_a_postgres_schema_without_a_store_is_refused_on_read(empty_schema):
    result = cli("--db", empty_schema, "show", "S1", env=clean_environ())
    assert result.exit_code == 2
    assert "no event store at" in result.stderr and "timeline init" in result.stderr


def test_a_postgres_store_that_was_never_created_is_named_without_its_password(empty_schema):
    """The hint masked the password; the words before it printed the URL as given."""
    scheme, rest = empty_schema.split("://", 1)
    user, host = rest.split("@", 1)
    location = f"{scheme}://{user.split(':')[0]}:s3cret-pw@{host}"  # the test server trusts
    result = cli("--db", location, "show", "S1", env=clean_environ())
    assert result.exit_code == 2, result.output
    assert "no event store at" in result.stderr and "********" in result.stderr
    assert "s3cret-pw" not in result.output


def test_init_creates_the_postgres_schema_only_when_asked(missing_schema, tmp_path):
    location = f"{POSTGRES_URL}?schema={missing_schema}"
    env = clean_environ(TIMELINE_DATA_DIR=str(tmp_path / "data"))
    refused = cli("--db", location, "init", env=env)
    assert refused.exit_code == 2 and "--create-schema" in refused.stderr
    made = cli("--db", location, "init", "--create-schema", env=env)
    assert made.exit_code == 0, made.output
    assert "created the schema" in made.stdout and "created the event store" in made.stdout
    again = cli("--db", location, "init", "--create-schema", env=env)
    assert again.exit_code == 0 and "already exists" in again.stdout
    assert "created" not in again.stdout
    # The read models went to the data folder (absolute), named after the schema.
    assert (tmp_path / "data" / f"read-127.0.0.1-5432-test-{missing_schema}.db").exists()
    assert cli("--db", location, "tasks", env=env).exit_code == 0


# -- init ----------------------------------------------------------------------------------------
def test_init_is_idempotent_and_says_what_it_did(tmp_path):
    db = str(tmp_path / "t.db")
    first = cli("--db", db, "init", env=clean_environ())
    assert first.exit_code == 0, first.output
    assert f"created the event store at {db}" in first.stdout
    assert f"read models at {db}" in first.stdout
    with TimelineStore.open(db) as store:
        assert ingest_objects(store, [entered("e1", student_id="S1")]).ok
    second = cli("--db", db, "init", env=clean_environ())
    assert second.exit_code == 0, second.output
    assert "already exists (log position 2)" in second.stdout
    shown = cli("--db", db, "history", "S1", "--json", env=clean_environ())
    assert [e["event_id"] for e in json.loads(shown.stdout)] == ["e1"]


def test_init_refuses_a_folder_that_does_not_exist(tmp_path):
    result = cli("--db", str(tmp_path / "no" / "t.db"), "init", env=clean_environ())
    assert result.exit_code == 2
    assert "folder of the database does not exist" in result.stderr


def test_ingest_into_a_new_store_creates_it_and_says_so(tmp_path):
    feed = tmp_path / "feed.jsonl"
    feed.write_text(json.dumps(entered("e1", student_id="S1")) + "\n")
    db = tmp_path / "new.db"
    result = cli("--db", str(db), "ingest", str(feed), env=clean_environ())
    assert result.exit_code == 0, result.output
    assert f"no event store at {db}: creating a new one" in result.stderr
    assert json.loads(result.stdout)["accepted"] == 1
    again = cli("--db", str(db), "ingest", str(feed), env=clean_environ())
    assert "creating" not in again.stderr


# -- the API takes the settings it is given --------------------------------------------------
def test_create_app_never_reads_the_environment(tmp_path, monkeypatch):
    from timeline.api import create_app

    monkeypatch.setenv("TIMELINE_VISITOR_READING", "sideways")
    monkeypatch.setenv("TIMELINE_STAFF_TOKENS", "not a token setting")
    config = ApiConfig.from_settings(load_settings({}, db=str(tmp_path / "t.db")))
    assert create_app(config) is not None
    assert config.read_db == str(tmp_path / "t.db") and config.staff_tokens == ()


def test_settings_built_directly_hold_only_defaults_and_explicit_values(monkeypatch):
    monkeypatch.setenv("TIMELINE_SESSION_HOURS", "3")
    assert Settings().session_hours == 8
    assert Settings(session_hours=2).session_hours == 2


# -- version and a fast start --------------------------------------------------------------
def test_version_is_the_package_version():
    from importlib.metadata import version

    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"timeline {version('residency-timeline')}"


def test_the_encodings_offered_are_the_ones_ingest_knows():
    assert list(ENCODING_NAMES) == list(ENCODINGS)


def _imported_by(args: list[str], cwd: Path) -> set[str]:
    """The top-level modules a CLI run imports (its own process, the real entry point)."""
    script = (
        "import sys, atexit\n"
        "atexit.register(lambda: print('MODULES', ' '.join(sorted({m.split('.')[0] "
        "for m in sys.modules})), file=sys.stderr))\n"
        "from timeline.cli import run\n"
        f"sys.argv = ['timeline', *{args!r}]\n"
        "run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_environ(),
        timeout=60,
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:])


def test_help_imports_neither_the_store_nor_the_web_stack(tmp_path):
    modules = _imported_by(["--help"], tmp_path)
    assert "click" in modules
    for heavy in ("psycopg", "eventsourcing", "pydantic", "fastapi", "rich", "apscheduler"):
        assert heavy not in modules, heavy


def test_show_imports_no_postgres_driver_nor_web_nor_scheduler(tmp_path):
    db = str(tmp_path / "t.db")
    with TimelineStore.open(db) as store:
        assert ingest_objects(store, [entered("e1", student_id="S1")]).ok
    modules = _imported_by(["--db", db, "show", "S1", "--as-of", "2024-05-01"], tmp_path)
    assert "projections" in modules and "eventsourcing" in modules
    for heavy in ("psycopg", "fastapi", "starlette", "uvicorn", "apscheduler", "jinja2"):
        assert heavy not in modules, heavy


# -- the scheduler's jobs run under the settings handed to them --------------------------------
def test_the_daily_job_uses_the_settings_the_daemon_handed_over(tmp_path):
    from eventsourcing.cipher import AESCipher

    from scheduler.jobs import JobSettings, daily_alerts, use_settings
    from timeline.errors import StorageConfigError

    key = AESCipher.create_key(32)
    db = str(tmp_path / "secret.db")
    with TimelineStore.open(db, key) as store:
        assert ingest_objects(store, [entered("e1", day="2024-03-16")]).ok
    sink = f"jsonl:{tmp_path / 'alerts.jsonl'}"
    # APScheduler calls the job with its stored plain arguments only: no key among them.
    with pytest.raises(StorageConfigError, match="encrypted"):
        daily_alerts(db, None, sink, wait=5, today="2024-04-15")
    use_settings(JobSettings(cipher_key=key, batch_size=10))
    try:
        summary = daily_alerts(db, None, sink, wait=5, today="2024-04-15")
    finally:
        use_settings(JobSettings())
    assert summary["sent"] >= 1 and summary["failed"] == 0, summary


def test_a_read_model_file_in_a_folder_that_does_not_exist_is_a_usage_error(tmp_path):
    db = str(tmp_path / "t.db")
    assert cli("--db", db, "init", env=clean_environ()).exit_code == 0
    result = cli("--db", db, "tasks", "--read-db", str(tmp_path / "no" / "r.db"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"the folder of the read models does not exist: {tmp_path / 'no'}" in result.stderr


@pytest.mark.parametrize("kind", ["a folder", "not a database"])
@pytest.mark.parametrize(
    "command",
    [
        ["tasks", "--as-of", "2024-05-01"],
        ["rebuild"],
        ["follow", "--once"],
        ["init"],
        ["alerts", "--on", "2024-04-15", "--emit", "--sink", "jsonl:alerts.jsonl"],
    ],
)
def test_a_read_model_file_that_cannot_be_opened_is_a_clear_error(tmp_path, kind, command):
    """A folder, a file that is no database (and, for a user, a read-only place): no traceback."""
    db = str(tmp_path / "t.db")
    with TimelineStore.open(db) as store:
        assert ingest_objects(store, [entered("e1", day="2024-03-16")]).ok
    read_db = tmp_path / "read"
    if kind == "a folder":
        read_db.mkdir()
    else:
        read_db.write_text("these are not the read models\n" * 200)
    done = subprocess.run(
        [TIMELINE, "--db", db, *command, "--read-db", str(read_db)],
        capture_output=True,
        text=True,
        env=clean_environ(),
        cwd=tmp_path,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert f"cannot open the read models at {read_db}" in done.stderr


def test_the_readme_configuration_table_lists_every_setting():
    """README: "A new setting is one field in `Settings` … a row in this table"."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    rows = re.findall(r"^\| `(\w+)` \| `(TIMELINE_\w+)` \|", readme, flags=re.MULTILINE)
    assert dict(rows) == {name: env_name(name) for name in Settings.model_fields}
    assert len(rows) == len(Settings.model_fields)  # each once
