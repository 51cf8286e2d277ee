"""The one configuration of every command, the HTTP API and the staff web app.

`load_settings()` reads it once, at start-up, and the edges pass the `Settings` down: no
other module reads the environment. Sources, highest first:

1. explicit values (the CLI's `--db`, `--read-db`, ...);
2. the environment: `TIMELINE_<NAME>` (the names the README's Configuration table lists);
3. a configuration file named by `--config FILE` or `TIMELINE_CONFIG`: TOML when its name
   ends in `.toml` (keys are the setting names: `db`, `staff_tokens`, ...), otherwise a
   `.env` file of `TIMELINE_<NAME>=value` lines. No file is read unless one is named;
4. secret files: `TIMELINE_<NAME>_FILE=/path` (the file holds the value), or a file named
   `TIMELINE_<NAME>` in the folder `TIMELINE_SECRETS_DIR` (Docker / systemd credentials);
5. the defaults.

An unknown setting (a `TIMELINE_*` variable, a key of the file) or an invalid value is a
`SettingsError` naming the setting, never its value. `TIMELINE_TEST_*`, `TIMELINE_BENCH_*`
and `TIMELINE_CRASH_*` belong to the test and benchmark harness and are not settings.
Secrets are `SecretStr`: `masked()` (what `timeline config --show` prints) never shows them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlparse

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from timeline.errors import TimelineError

if TYPE_CHECKING:
    from projections.rules import RuleBook
    from scheduler.credentials import SinkCredentials
    from scheduler.retry import RetryPolicy

PREFIX = "TIMELINE_"
CONFIG_SETTING = "TIMELINE_CONFIG"
SECRETS_DIR_SETTING = "TIMELINE_SECRETS_DIR"
FILE_SUFFIX = "_FILE"
# Variables of the test and benchmark harness (crash points, test databases): not settings.
HARNESS_PREFIXES = ("TIMELINE_TEST_", "TIMELINE_BENCH_", "TIMELINE_CRASH_")
DEFAULT_DB = "timeline.db"
APP_DIR = "residency-timeline"
MASK = "********"
MAX_SECRET_FILE_BYTES = 64 * 1024
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class SettingsError(TimelineError):
    """A setting is unknown or its value is not usable (the message names it, not the value)."""


def env_name(field: str) -> str:
    """The environment variable of a setting: `staff_tokens` → `TIMELINE_STAFF_TOKENS`."""
    return PREFIX + field.upper()


_SOURCES: ContextVar[tuple[dict[str, Any], ...]] = ContextVar("timeline_settings_sources")


class _Given(PydanticBaseSettingsSource):
    """One source's values, read beforehand by `load_settings` (so errors can name them)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The value of one field in this source (None when absent)."""
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


class Settings(BaseSettings):
    """Every setting of the service, validated; build it with `load_settings()`."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        validate_default=False,
    )

    # -- storage ---------------------------------------------------------------------------
    db: str | None = Field(
        None,
        description="SQLite file or postgresql:// URL of the event store "
        "(default ./timeline.db, made absolute at start-up).",
    )
    read_db: str | None = Field(
        None,
        description="SQLite file of the read models (default: the SQLite event store itself; "
        "for PostgreSQL a file in data_dir named after the database and schema).",
    )
    data_dir: Path | None = Field(
        None,
        description="Folder for files the service keeps beside a PostgreSQL store "
        "(default $XDG_DATA_HOME/residency-timeline, else ~/.local/share/residency-timeline).",
    )
    cipher_key: SecretStr | None = Field(
        None, description="AES key encrypting events at rest (README: Feeding events)."
    )
    # -- rules -----------------------------------------------------------------------------
    deadline_rollover: bool = Field(
        False, description="R-DEADLINE-ROLLOVER: a deadline on a day off moves to the next day."
    )
    visitor_reading: Literal["deadline", "window"] = Field(
        "deadline", description="R-VISITOR-READING: how a visitor's stay is read."
    )
    # -- HTTP API --------------------------------------------------------------------------
    feed_tokens: SecretStr | None = Field(
        None, description="Feed tokens: name:token:source[|source...], comma-separated."
    )
    staff_tokens: SecretStr | None = Field(
        None, description="Staff tokens (read): name:token, comma-separated."
    )
    admin_tokens: SecretStr | None = Field(
        None, description="Admin tokens (read + audit of access): name:token, comma-separated."
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024, description="Largest request body the API accepts, in bytes."
    )
    # -- staff web app ---------------------------------------------------------------------
    session_secret: SecretStr | None = Field(
        None,
        description="Key signing session cookies, at least 32 characters "
        "(unset: a random key per process).",
    )
    session_hours: int = Field(8, description="How long a sign-in lasts, 1 to 168 hours.")
    cookie_secure: bool = Field(
        False, description="Always mark cookies Secure (default: when the request was HTTPS)."
    )
    # -- alerts ----------------------------------------------------------------------------
    alert_batch: int = Field(500, description="Alerts per delivery batch, 1 to 10000.")
    # -- delivery (SMTP, LINE, webhook secrets; the retry schedule) ------------------------
    # Checked together by `_delivery` (scheduler.credentials, scheduler.retry) and handed to
    # the sinks by `scheduler.jobs.DeliveryConfig.from_settings`.
    smtp_username: SecretStr | None = Field(
        None, description="SMTP user name of an smtp: sink (with smtp_password, or neither)."
    )
    smtp_password: SecretStr | None = Field(
        None, description="SMTP password of an smtp: sink (with smtp_username, or neither)."
    )
    line_channel_token: SecretStr | None = Field(
        None, description="LINE Messaging API channel access token (the line sink)."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Key of the HMAC-SHA256 signature on every webhook request."
    )
    webhook_header: SecretStr | None = Field(
        None, description="One extra header on every webhook request: 'Name: value'."
    )
    retry_attempts: int = Field(
        12, description="Delivery attempts of an alert before it is dead-lettered, 1 to 100."
    )
    retry_first_delay: int = Field(
        60, description="Seconds before the first retry; the wait doubles after each failure."
    )
    retry_max_delay: int = Field(
        6 * 3600, description="Longest wait between two attempts, seconds (at most 604800)."
    )
    retry_jitter: float = Field(
        0.0, description="Each wait shortened at random by up to this fraction, 0 to 1."
    )
    # New settings go here: a field (SecretStr for a secret) with a description; its
    # environment variable is TIMELINE_<NAME>, and the README's Configuration table lists it.
    # -- service (host, port, workers, root path, log format, readiness) -------------------
    host: str = Field("127.0.0.1", description="Address `timeline serve` listens on.")
    port: int = Field(8000, description="Port `timeline serve` listens on, 1 to 65535.")
    workers: int = Field(1, description="Worker processes of `timeline serve`, 1 to 64.")
    root_path: str = Field(
        "", description="Path prefix a reverse proxy serves the app under (e.g. /timeline)."
    )
    proxy_headers: bool = Field(
        False, description="Trust X-Forwarded-For/-Proto from forwarded_allow_ips."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated proxy addresses whose X-Forwarded-* are trusted ('*': any).",
    )
    log_format: Literal["text", "json"] | None = Field(
        None,
        description="Server log lines: text or json (unset: text under `timeline serve`; "
        "`timeline.api:app` under another server leaves its logging as it is).",
    )
    follow_seconds: float = Field(
        5.0,
        description="Seconds between a server process's catch-ups of the read models "
        "with the log (0 or off: no follower thread).",
    )
    ready_max_lag: int | None = Field(
        10_000,
        description="/readyz: most notifications the read models may lag the log (off: no check).",
    )
    ready_scheduler_days: int | None = Field(
        2,
        description="/readyz: most days the scheduler's last covered day may lie before "
        "today (off: no check).",
    )
    population_slots: int = Field(
        2,
        description="Population queries (every student's tasks, fines, alerts; the staff "
        "lists) a server process computes at once, 1 to 64; the others wait.",
    )
    population_wait: int = Field(
        30,
        description="Seconds a population query waits for a slot before the answer is "
        "503 with Retry-After, 1 to 600.",
    )
    header_timeout: int = Field(
        30,
        description="Seconds `timeline serve` gives a request's header to arrive before "
        "it closes the connection (408), 1 to 600.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then what `load_settings` read: environment, file, secret files."""
        given = _SOURCES.get(None)
        if given is None:  # Settings() built directly: explicit values and defaults only
            return (init_settings,)
        return (init_settings, *(_Given(settings_cls, values) for values in given))

    @field_validator("deadline_rollover", "cookie_secure", "proxy_headers", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("must be 1 or 0 (also true/false, yes/no)")

    @field_validator("visitor_reading", mode="before")
    @classmethod
    def _reading(cls, value: Any) -> Any:
        text = str(value).strip().lower() or "deadline"
        if text not in ("deadline", "window"):
            raise ValueError("must be 'deadline' or 'window'")
        return text

    @field_validator("max_body_bytes", mode="before")
    @classmethod
    def _body(cls, value: Any) -> int:
        return _whole(value, 1, 10**12, "must be a positive number of bytes")

    @field_validator("population_slots", mode="before")
    @classmethod
    def _slots(cls, value: Any) -> int:
        return _whole(value, 1, 64, "a whole number of queries, 1 to 64")

    @field_validator("population_wait", "header_timeout", mode="before")
    @classmethod
    def _wait(cls, value: Any) -> int:
        return _whole(value, 1, 600, "a whole number of seconds, 1 to 600")

    @field_validator("session_hours", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> int:
        return _whole(value, 1, 168, "a whole number of hours, 1 to 168")

    @field_validator("alert_batch", mode="before")
    @classmethod
    def _batch(cls, value: Any) -> int:
        return _whole(value, 1, 10_000, "must be a whole number from 1 to 10000")

    @field_validator("retry_attempts", mode="before")
    @classmethod
    def _attempts(cls, value: Any) -> int:
        return _whole(value, 1, 100, "must be a whole number from 1 to 100")

    @field_validator("retry_first_delay", "retry_max_delay", mode="before")
    @classmethod
    def _delay(cls, value: Any) -> int:
        return _whole(value, 0, 7 * 24 * 3600, "must be a whole number of seconds, at most 604800")

    @field_validator("retry_jitter", mode="before")
    @classmethod
    def _jitter(cls, value: Any) -> float:
        message = "must be a number from 0 to 1"
        if isinstance(value, bool):
            raise ValueError(message)
        try:
            number = float(str(value).strip()) if not isinstance(value, int | float) else value
        except ValueError:
            raise ValueError(message) from None
        if not 0.0 <= number <= 1.0:  # NaN fails this too
            raise ValueError(message)
        return float(number)

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> int:
        return _whole(value, 1, 65_535, "a port number, 1 to 65535")

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int:
        return _whole(value, 1, 64, "a whole number of processes, 1 to 64")

    @field_validator("host", "forwarded_allow_ips", mode="before")
    @classmethod
    def _word(cls, value: Any) -> str:
        text = str(value).strip()
        if not text or any(c.isspace() for c in text):
            raise ValueError("must be one word (no spaces)")
        return text

    @field_validator("root_path", mode="before")
    @classmethod
    def _root_path(cls, value: Any) -> str:
        text = str(value).strip()
        if text and (not root_path_ok(text)):
            raise ValueError("a path such as /timeline (a leading '/', no trailing '/')")
        return text

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: Any) -> Any:
        text = None if value is None else str(value).strip().lower()
        if not text:
            return None
        if text not in ("text", "json"):
            raise ValueError("one of text, json")
        return text

    @field_validator("follow_seconds", mode="before")
    @classmethod
    def _follow(cls, value: Any) -> float:
        number = _bound(value, "a number of seconds ≥ 0 (or 'off')", whole=False)
        return 0.0 if number is None else number

    @field_validator("ready_max_lag", "ready_scheduler_days", mode="before")
    @classmethod
    def _ready(cls, value: Any) -> int | None:
        number = _bound(value, "must be a number ≥ 0 (or 'off')", whole=True)
        return None if number is None else int(number)

    @field_validator("session_secret")
    @classmethod
    def _session_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("db", "read_db", mode="before")
    @classmethod
    def _location(cls, value: Any) -> Any:
        return None if value is None or str(value).strip() == "" else str(value).strip()

    @model_validator(mode="after")
    def _tokens(self) -> Settings:
        # The token settings are checked here, together: names and tokens must be unique
        # across the three (ApiConfig's rules, its messages naming the setting and entry).
        from timeline.api_settings import ApiConfig, ApiConfigError

        try:
            ApiConfig.from_settings(self)
        except ApiConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _delivery(self) -> Settings:
        # The sink credentials and the retry schedule, checked as the sinks will take them
        # (both SMTP settings or neither, one-line values, the header's form, max ≥ first).
        from scheduler.credentials import CredentialError
        from scheduler.retry import RetrySettingError

        try:
            self.sink_credentials()
            self.retry_policy()
        except (CredentialError, RetrySettingError) as exc:
            raise ValueError(str(exc)) from None
        return self

    # Where the user's data folder is, from the environment `load_settings` read.
    _user_data_dir: Path | None = PrivateAttr(None)

    # -- derived values --------------------------------------------------------------------
    @property
    def is_postgres(self) -> bool:
        """Whether the event store is a PostgreSQL URL."""
        return is_postgres_url(self.store_location)

    @property
    def store_location(self) -> str:
        """The event store: a PostgreSQL URL as given, or an absolute SQLite path."""
        location = self.db or DEFAULT_DB
        if is_postgres_url(location):
            return location
        return os.path.abspath(os.path.expanduser(location))

    @property
    def data_directory(self) -> Path:
        """`data_dir`, else the user's data folder for this service (always absolute)."""
        if self.data_dir is not None:
            return Path(os.path.abspath(self.data_dir.expanduser()))
        return self._user_data_dir or user_data_dir(os.environ)

    @property
    def read_db_location(self) -> str:
        """Where the read models live, always an absolute path."""
        if self.read_db:
            return os.path.abspath(os.path.expanduser(self.read_db))
        location = self.store_location
        if not is_postgres_url(location):
            return location  # beside the events: the same SQLite file
        return str(self.data_directory / postgres_read_db_name(location))

    def rulebook(self) -> RuleBook:
        """The rule book under these settings (the one every derivation uses)."""
        from projections.rules import DEFAULT_RULES

        return DEFAULT_RULES.with_settings(
            deadline_rollover=self.deadline_rollover, visitor_reading=self.visitor_reading
        )

    def sink_credentials(self) -> SinkCredentials:
        """The sink credentials of these settings (`CredentialError` names a bad one)."""
        from scheduler.credentials import SinkCredentials

        return SinkCredentials.from_values(
            smtp_username=self.secret("smtp_username"),
            smtp_password=self.secret("smtp_password"),
            line_channel_token=self.secret("line_channel_token"),
            webhook_secret=self.secret("webhook_secret"),
            webhook_header=self.secret("webhook_header"),
        )

    def retry_policy(self) -> RetryPolicy:
        """The retry schedule of failed deliveries (`RetrySettingError` names a bad setting)."""
        from datetime import timedelta

        from scheduler.retry import RetryPolicy

        return RetryPolicy(
            attempts=self.retry_attempts,
            first_delay=timedelta(seconds=self.retry_first_delay),
            max_delay=timedelta(seconds=self.retry_max_delay),
            jitter=self.retry_jitter,
        )

    def secret(self, name: str) -> str | None:
        """The plain value of a secret setting, or None when unset."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def masked(self) -> dict[str, Any]:
        """Every setting with secrets masked, plus the derived locations (`config --show`)."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith("_tokens"):
                value = _masked_tokens(value)
            elif isinstance(value, SecretStr):
                value = MASK if value.get_secret_value() else None
            elif name == "db" and value is not None:
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            shown[name] = value
        shown["effective"] = {
            "store": mask_url(self.store_location),
            "read_db": self.read_db_location,
            "data_dir": str(self.data_directory),
        }
        return shown


def _whole(value: Any, low: int, high: int, message: str) -> int:
    """A whole number in [low, high] from an int or ASCII digits, else ValueError(message)."""
    if isinstance(value, bool):
        raise ValueError(message)
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 13):
            raise ValueError(message)
        number = int(text)
    if not low <= number <= high:
        raise ValueError(message)
    return number


def _bound(value: Any, message: str, *, whole: bool) -> float | None:
    """A number ≥ 0 (at most 10**9; whole if asked), or None for `off`; else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(message)
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip().lower()
        if text == "off":
            return None
        try:
            number = float(text)
        except ValueError:
            raise ValueError(message) from None
    if not 0 <= number <= 10**9 or (whole and not number.is_integer()):
        raise ValueError(message)
    return number


def root_path_ok(path: str) -> bool:
    """Whether `path` is a path prefix such as /timeline (a leading '/', no trailing '/')."""
    return path.startswith("/") and not path.endswith("/") and " " not in path


def _masked_tokens(value: SecretStr | None) -> str | None:
    """Token entries with the names and sources kept and each token masked."""
    if value is None or not value.get_secret_value().strip():
        return None
    entries = []
    for entry in value.get_secret_value().split(","):
        parts = [p.strip() for p in entry.split(":")]
        if not entry.strip():
            continue
        entries.append(":".join([parts[0], MASK, *parts[2:]]))
    return ",".join(entries)


def user_data_dir(environ: Mapping[str, str]) -> Path:
    """$XDG_DATA_HOME/residency-timeline, else ~/.local/share/residency-timeline."""
    base = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "share"
    )
    return Path(os.path.abspath(base)) / APP_DIR


def is_postgres_url(location: str) -> bool:
    """Whether a store location is a PostgreSQL URL."""
    return location.startswith(("postgresql://", "postgres://"))


def mask_url(location: str) -> str:
    """A PostgreSQL URL with its password masked (other locations as they are)."""
    if not is_postgres_url(location):
        return location
    parsed = urlparse(location)
    if parsed.password is None:
        return location
    user = quote(parsed.username or "", safe="")
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    return parsed._replace(netloc=f"{user}:{MASK}@{host}{port}").geturl()


def postgres_read_db_name(url: str) -> str:
    """The read-model file of a PostgreSQL store: named after its server, database and schema."""
    parsed = urlparse(url)
    schema = "public"
    for part in parsed.query.split("&"):
        if part.startswith("schema="):
            schema = part.split("=", 1)[1] or "public"
    words = [parsed.hostname or "localhost", str(parsed.port or 5432), parsed.path.lstrip("/")]
    safe = "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in w) for w in words)
    schema_safe = "".join(c if c.isalnum() or c in "._" else "_" for c in schema)
    return f"read-{safe}-{schema_safe}.db"


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    **explicit: Any,
) -> Settings:
    """Read and validate the settings once (`SettingsError` naming the setting otherwise).

    `environ` defaults to the process environment; `config_file` (else `TIMELINE_CONFIG`)
    names a TOML or `.env` file; `explicit` values (None = not given) win over everything.
    """
    environ = os.environ if environ is None else environ
    fields = Settings.model_fields
    by_env = {env_name(name): name for name in fields}
    file_vars = {name + FILE_SUFFIX: field for name, field in by_env.items()}
    known = {*by_env, *file_vars, CONFIG_SETTING, SECRETS_DIR_SETTING}
    env_values: dict[str, Any] = {}
    file_values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in environ.items():
        upper = key.upper()
        if not upper.startswith(PREFIX) or upper.startswith(HARNESS_PREFIXES):
            continue
        if upper not in known:
            problems.append(f"{key}: unknown setting{_did_you_mean(upper, known)}")
        elif upper in by_env and value != "":
            env_values[by_env[upper]] = value
        elif upper in file_vars and value != "":
            field = file_vars[upper]
            if env_name(field) in environ and environ[env_name(field)] != "":
                problems.append(f"{key}: {env_name(field)} is set too; set only one of them")
                continue
            try:
                file_values[field] = _read_secret_file(Path(value))
            except OSError as exc:
                problems.append(f"{key}: cannot read the file: {exc.strerror or exc}")
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    secrets_dir = environ.get(SECRETS_DIR_SETTING, "")
    if secrets_dir:
        folder = Path(secrets_dir)
        if not folder.is_dir():
            problems.append(f"{SECRETS_DIR_SETTING}: not a folder: {folder}")
        else:
            for name, field in by_env.items():
                path = folder / name
                if field not in file_values and path.is_file():
                    try:
                        file_values[field] = _read_secret_file(path)
                    except OSError as exc:
                        problems.append(f"{path}: cannot read the file: {exc.strerror or exc}")
                    except ValueError as exc:
                        problems.append(f"{path}: {exc}")
    config_path = config_file or environ.get(CONFIG_SETTING) or None
    config_values: dict[str, Any] = {}
    if config_path is not None:
        try:
            config_values = _read_config_file(Path(config_path), by_env, problems)
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("; ".join(problems))
    token = _SOURCES.set((env_values, config_values, file_values))
    try:
        settings = Settings(**{k: v for k, v in explicit.items() if v is not None})
        settings._user_data_dir = user_data_dir(environ)
        return settings
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
    finally:
        _SOURCES.reset(token)


def _read_secret_file(path: Path) -> str:
    """A secret file's text without the final line break (editors add one).

    ValueError (never quoting the content) when it is empty, not UTF-8 or over 64 KiB.
    """
    with path.open("rb") as handle:
        data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError("the file is larger than 64 KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ValueError("the file is empty")
    return text


def _read_config_file(path: Path, by_env: dict[str, str], problems: list[str]) -> dict[str, Any]:
    """The settings of a TOML or `.env` file; unknown keys are problems naming them."""
    where = f"config file {path}"
    if not path.is_file():
        raise SettingsError(f"{where}: no such file")
    fields = set(by_env.values())
    values: dict[str, Any] = {}
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise SettingsError(f"{where}: not valid TOML ({exc})") from None
        for key, value in data.items():
            if key not in fields:
                problems.append(f"{where}: unknown setting {key!r}{_did_you_mean(key, fields)}")
                continue
            if key in ("db", "read_db", "data_dir") and isinstance(value, str):
                value = _beside(path, value)
            values[key] = value
        return values
    from dotenv import dotenv_values

    try:
        data_env = dotenv_values(path, encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise SettingsError(f"{where}: cannot read it ({exc})") from None
    for key, text in data_env.items():
        upper = key.upper()
        if upper not in by_env:
            problems.append(f"{where}: unknown setting {key!r}{_did_you_mean(upper, by_env)}")
        elif text:
            values[by_env[upper]] = text
    return values


def _beside(config: Path, location: str) -> str:
    """A relative path in a TOML file counts from the file's folder, not the current one."""
    if is_postgres_url(location) or os.path.isabs(os.path.expanduser(location)):
        return location
    return os.path.join(os.path.dirname(os.path.abspath(config)), location)


def _did_you_mean(name: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def describe_errors(exc: ValidationError) -> str:
    """One line naming each failing setting and what is wrong, never the value given."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = error["loc"]
        if not loc:
            parts.append(message)
            continue
        field = str(loc[0])
        if error["type"] == "extra_forbidden":
            parts.append(f"{field}: unknown setting")
            continue
        name = env_name(field)
        parts.append(message if name in message else f"{name}: {message}")
    return "; ".join(parts)
