"""Sink credentials: read once from the environment or from secret files, never from a spec.

Each credential `NAME` comes from the variable `NAME` or from the file named by `NAME_FILE`
(a Docker/Kubernetes secret, a systemd credential; one trailing newline is dropped), never
both. The sink spec on the command line (`--sink`) carries no credential: it is visible in
the process list and is stored in the scheduler's job store.

| variable | used by |
|---|---|
| `TIMELINE_SMTP_USERNAME`, `TIMELINE_SMTP_PASSWORD` | `smtp:` (both or neither) |
| `TIMELINE_LINE_CHANNEL_TOKEN` | `line` (the channel access token) |
| `TIMELINE_WEBHOOK_SECRET` | `webhook:` (HMAC-SHA256 signature key) |
| `TIMELINE_WEBHOOK_HEADER` | `webhook:` (one extra header, `Name: value`) |

Values are held in `Secret`, whose repr hides them, so a traceback, a log line or a pickled
object never shows one; `reveal()` is called only where the value goes on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SMTP_USERNAME = "TIMELINE_SMTP_USERNAME"
SMTP_PASSWORD = "TIMELINE_SMTP_PASSWORD"
LINE_CHANNEL_TOKEN = "TIMELINE_LINE_CHANNEL_TOKEN"
WEBHOOK_SECRET = "TIMELINE_WEBHOOK_SECRET"
WEBHOOK_HEADER = "TIMELINE_WEBHOOK_HEADER"
SETTINGS = (SMTP_USERNAME, SMTP_PASSWORD, LINE_CHANNEL_TOKEN, WEBHOOK_SECRET, WEBHOOK_HEADER)

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers the webhook sets itself; a configured header may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "idempotency-key",
        "x-timeline-signature",
        "x-timeline-timestamp",
        "transfer-encoding",
    }
)
_MAX_FILE_BYTES = 64 * 1024


class CredentialError(ValueError):
    """A credential setting is missing, doubled, unreadable or malformed (names the setting)."""


class Secret:
    """A credential value whose repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place it goes on the wire."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Never pickled: a Secret reaching a job store or a cache is a bug, not a feature.
        raise TypeError("a Secret is not picklable")


@dataclass(frozen=True)
class SinkCredentials:
    """Every sink credential, read once at start and passed down to the sinks."""

    smtp_username: Secret | None = None
    smtp_password: Secret | None = None
    line_channel_token: Secret | None = None
    webhook_secret: Secret | None = None
    # (name, value): the header's name is not secret, its value is.
    webhook_header: tuple[str, Secret] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SinkCredentials:
        """Read every credential from `environ` (value or `_FILE`); CredentialError if bad."""
        values = {name: _read(environ, name) for name in SETTINGS}
        username, password = values[SMTP_USERNAME], values[SMTP_PASSWORD]
        if (username is None) != (password is None):
            raise CredentialError(
                f"{SMTP_USERNAME} and {SMTP_PASSWORD} go together: set both (or their "
                "_FILE forms) or neither"
            )
        header = values[WEBHOOK_HEADER]
        return cls(
            smtp_username=username,
            smtp_password=password,
            line_channel_token=values[LINE_CHANNEL_TOKEN],
            webhook_secret=values[WEBHOOK_SECRET],
            webhook_header=parse_header(header.reveal()) if header is not None else None,
        )

    def revealed(self) -> list[str]:
        """Every secret value held (for tests that look for leaks)."""
        found = [
            s.reveal()
            for s in (
                self.smtp_password,
                self.line_channel_token,
                self.webhook_secret,
            )
            if s is not None
        ]
        if self.webhook_header is not None:
            found.append(self.webhook_header[1].reveal())
        return found


def _read(environ: Mapping[str, str], name: str) -> Secret | None:
    file_name = f"{name}_FILE"
    direct = environ.get(name)
    path = environ.get(file_name)
    if direct and path:
        raise CredentialError(f"set {name} or {file_name}, not both")
    if path:
        try:
            with open(path, "rb") as handle:
                data = handle.read(_MAX_FILE_BYTES + 1)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise CredentialError(f"{file_name}: cannot read the file ({reason})") from None
        if len(data) > _MAX_FILE_BYTES:
            raise CredentialError(f"{file_name}: the file is larger than 64 KiB")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialError(f"{file_name}: the file is not UTF-8 text") from None
        # One trailing newline is how editors and `echo` end a file; it is not the secret.
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
        if not text:
            raise CredentialError(f"{file_name}: the file is empty")
        _check_line(text, file_name)
        return Secret(text)
    if direct:
        _check_line(direct, name)
        return Secret(direct)
    return None


def _check_line(text: str, setting: str) -> None:
    # A value with a line break could smuggle a header or an SMTP command; never quoted.
    if any(ch in text for ch in "\r\n\0"):
        raise CredentialError(f"{setting}: the value must be one line")


def parse_header(text: str) -> tuple[str, Secret]:
    """`Name: value` → (name, Secret(value)); CredentialError naming the setting if malformed."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _HEADER_NAME.fullmatch(name) or not value:
        raise CredentialError(f"{WEBHOOK_HEADER}: must be 'Name: value' (one HTTP header)")
    if not (value.isascii() and value.isprintable()):
        raise CredentialError(f"{WEBHOOK_HEADER}: the value must be printable ASCII")
    if name.lower() in RESERVED_HEADERS:
        raise CredentialError(
            f"{WEBHOOK_HEADER}: {name} is set by the webhook itself and cannot be configured"
        )
    return name, Secret(value)


def file_setting(name: str) -> str:
    """The `_FILE` form of a credential setting's name."""
    return f"{name}_FILE"


def where_to_put(name: str) -> str:
    """The hint every "credential in the wrong place" error ends with."""
    return f"set {name} (or {file_setting(name)}, a file holding it) in the environment"
