"""Settings of the HTTP API, taken from the one configuration (`timeline.settings`).

Tokens are named (the name, never the token, is what logs and messages show) and a feed
token is bound to the sources it may write under:

- `TIMELINE_FEED_TOKENS="sis:<token>:registrar|sis,nia-import:<token>:nia"`:
  entries `name:token:source[|source...]` separated by `,`; the source `*` means any
  source (a deliberate choice for an import tool, never a default).
- `TIMELINE_STAFF_TOKENS="alice:<token>,bob:<token>"`: entries `name:token`.
- `TIMELINE_ADMIN_TOKENS="carol:<token>"`: entries `name:token`; an admin token reads
  like a staff token and may also list the audit of access (who viewed whose record).
- `TIMELINE_MAX_BODY_BYTES`: the largest request body accepted (default 10 MiB).

A bare token (the old comma-separated format) is refused: there is no safe source to
bind it to. Errors name the setting and the entry number, never the token.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from timeline.errors import TimelineError

if TYPE_CHECKING:
    from timeline.settings import Settings

FEED_SETTING = "TIMELINE_FEED_TOKENS"
STAFF_SETTING = "TIMELINE_STAFF_TOKENS"
ADMIN_SETTING = "TIMELINE_ADMIN_TOKENS"
BODY_SETTING = "TIMELINE_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
ANY_SOURCE = "*"
MIN_TOKEN_LENGTH = 16

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Printable ASCII without the separators (`:` `,` `|`) and without spaces.
_SECRET = re.compile(r"[!-~]+")
_SOURCE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ApiConfigError(TimelineError):
    """A setting of the HTTP API is not usable (the message names it, never a token)."""


@dataclass(frozen=True)
class Token:
    """A named bearer token; a feed token carries the sources it may write under."""

    name: str
    secret: str = field(repr=False)
    sources: frozenset[str] = frozenset()

    def matches(self, presented: str) -> bool:
        """Whether the presented token is this one (constant time)."""
        return hmac.compare_digest(presented.encode(), self.secret.encode())

    def may_write(self, source: str) -> bool:
        """Whether this token may write (or retract) under `source`."""
        return ANY_SOURCE in self.sources or source in self.sources


def parse_tokens(setting: str, text: str, *, feed: bool) -> tuple[Token, ...]:
    """The tokens of one setting, or `ApiConfigError` naming the setting and the entry."""
    form = "name:token:source[|source...]" if feed else "name:token"
    tokens: list[Token] = []
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue  # a trailing comma
        parts = [p.strip() for p in entry.split(":")]
        where = f"{setting} entry {number}"
        if len(parts) == 1:
            raise ApiConfigError(
                f"{where}: a bare token is no longer accepted; write {form} "
                "(name each token" + (" and the sources it may write under)" if feed else ")")
            )
        if len(parts) != (3 if feed else 2):
            raise ApiConfigError(f"{where}: expected {form}")
        name, secret = parts[0], parts[1]
        if not _NAME.fullmatch(name):
            raise ApiConfigError(f"{where}: the name must be 1-64 letters, digits, '_', '.' or '-'")
        if len(secret) < MIN_TOKEN_LENGTH or not _SECRET.fullmatch(secret) or "|" in secret:
            raise ApiConfigError(
                f"{where} ({name}): the token must be at least {MIN_TOKEN_LENGTH} printable "
                "ASCII characters without spaces, ':', ',' or '|'"
            )
        sources: frozenset[str] = frozenset()
        if feed:
            named = [s.strip() for s in parts[2].split("|")]
            if not named or any(s != ANY_SOURCE and not _SOURCE.fullmatch(s) for s in named):
                raise ApiConfigError(
                    f"{where} ({name}): sources are 1-64 letters, digits, '_', '.' or '-', "
                    f"separated by '|' ('{ANY_SOURCE}' for any source)"
                )
            sources = frozenset(named)
        tokens.append(Token(name, secret, sources))
    return tuple(tokens)


@dataclass(frozen=True)
class ApiConfig:
    """Where the data lives, who may do what, and how large a request may be."""

    db: str | None
    read_db: str | None
    feed_tokens: tuple[Token, ...] = ()
    staff_tokens: tuple[Token, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    admin_tokens: tuple[Token, ...] = ()
    cipher_key: str | None = field(default=None, repr=False)
    # Longest wait for the next piece of a request body before answering 408.
    body_idle_seconds: float = 30.0

    def __post_init__(self) -> None:
        every = self.feed_tokens + self.staff_tokens + self.admin_tokens
        settings = f"{FEED_SETTING} / {STAFF_SETTING} / {ADMIN_SETTING}"
        names = [t.name for t in every]
        if len(set(names)) != len(names):
            raise ApiConfigError(
                f"{settings}: token names must be unique (an audit log tells tokens apart by name)"
            )
        secrets = [t.secret for t in every]
        if len(set(secrets)) != len(secrets):
            raise ApiConfigError(
                f"{settings}: the same token is configured twice; give each name its own token"
            )
        if self.max_body_bytes < 1:
            raise ApiConfigError(f"{BODY_SETTING}: must be a positive number of bytes")

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        """The API's part of the one configuration (`ApiConfigError` names a bad setting)."""
        return cls(
            settings.store_location,
            settings.read_db_location,
            parse_tokens(FEED_SETTING, settings.secret("feed_tokens") or "", feed=True),
            parse_tokens(STAFF_SETTING, settings.secret("staff_tokens") or "", feed=False),
            settings.max_body_bytes,
            parse_tokens(ADMIN_SETTING, settings.secret("admin_tokens") or "", feed=False),
            settings.secret("cipher_key"),
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], db: str | None = None, read_db: str | None = None
    ) -> ApiConfig:
        """The settings of an environment mapping, validated (`ApiConfigError` otherwise)."""
        from timeline.settings import SettingsError, load_settings

        try:
            settings = load_settings(environ, db=db, read_db=read_db)
        except SettingsError as exc:
            raise ApiConfigError(str(exc)) from None
        return cls.from_settings(settings)

    def secrets(self) -> tuple[str, ...]:
        """Every configured token, for scrubbing them out of log lines."""
        return tuple(t.secret for t in self.feed_tokens + self.readers())

    def readers(self) -> tuple[Token, ...]:
        """The tokens that may read: staff and admin tokens."""
        return self.staff_tokens + self.admin_tokens
