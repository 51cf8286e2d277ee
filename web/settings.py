"""Settings of the staff web app, taken from the one configuration (`timeline.settings`).

- `TIMELINE_SESSION_SECRET`: the key that signs session cookies (at least 32 characters).
  Unset, a random key is made for this process (with a warning): sessions then end when
  the server restarts, and several server processes would not accept each other's.
- `TIMELINE_SESSION_HOURS`: how long a sign-in lasts (default 8, at most 168).
- `TIMELINE_COOKIE_SECURE`: `1` always marks cookies `Secure`; by default they are marked
  when the request came over HTTPS (also behind a proxy that says so).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from timeline.api_settings import ApiConfigError

if TYPE_CHECKING:
    from timeline.settings import Settings

SECRET_SETTING = "TIMELINE_SESSION_SECRET"
HOURS_SETTING = "TIMELINE_SESSION_HOURS"
SECURE_SETTING = "TIMELINE_COOKIE_SECURE"
DEFAULT_HOURS = 8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebSettings:
    """The session key, the session's length and the cookies' `Secure` flag."""

    session_secret: bytes = field(repr=False)
    session_length: timedelta = timedelta(hours=DEFAULT_HOURS)
    always_secure: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> WebSettings:
        """The web app's part of the one configuration (validated when it was loaded)."""
        secret = settings.secret("session_secret")
        if not secret:
            log.warning(
                "%s is not set: sessions are signed with a key made for this process "
                "(they end when it restarts)",
                SECRET_SETTING,
            )
            key = secrets.token_bytes(32)
        else:
            key = secret.encode()
        return cls(key, timedelta(hours=settings.session_hours), settings.cookie_secure)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebSettings:
        """The settings of an environment mapping (`ApiConfigError` names a bad setting)."""
        from timeline.settings import SettingsError, load_settings

        try:
            return cls.from_settings(load_settings(environ))
        except SettingsError as exc:
            raise ApiConfigError(str(exc)) from None
