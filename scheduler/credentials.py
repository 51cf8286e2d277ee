"""Sink credentials: read once with the configuration, never from a sink spec.

Each credential is a setting of the one configuration (`timeline.settings`): the variable
`NAME`, or the file named by `NAME_FILE` (a Docker/Kubernetes secret, a systemd
credential; the final line break is dropped), or a file `NAME` in `TIMELINE_SECRETS_DIR`;
never two of them. The configuration hands the plain values to `SinkCredentials.from_values`,
which checks them. The sink spec on the command line (`--sink`) carries no credential: it
is visible in the process list and is stored in the scheduler's job store.

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
    def from_values(
        cls,
        *,
        smtp_username: str | None = None,
        smtp_password: str | None = None,
        line_channel_token: str | None = None,
        webhook_secret: str | None = None,
        webhook_header: str | None = None,
    ) -> SinkCredentials:
        """Credentials of plain configured values (None or "" = unset); CredentialError if bad."""
        given = {
            SMTP_USERNAME: smtp_username,
            SMTP_PASSWORD: smtp_password,
            LINE_CHANNEL_TOKEN: line_channel_token,
            WEBHOOK_SECRET: webhook_secret,
            WEBHOOK_HEADER: webhook_header,
        }
        values = {name: _secret(name, text) for name, text in given.items()}
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


def _secret(name: str, text: str | None) -> Secret | None:
    if not text:
        return None
    _check_line(text, name)
    return Secret(text)


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
