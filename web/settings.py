"""Settings of the staff web app, read once from the environment.

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

from timeline.api_settings import ApiConfigError

SECRET_SETTING = "TIMELINE_SESSION_SECRET"
HOURS_SETTING = "TIMELINE_SESSION_HOURS"
SECURE_SETTING = "TIMELINE_COOKIE_SECURE"
MIN_SECRET_LENGTH = 32
DEFAULT_HOURS = 8
MAX_HOURS = 168

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebSettings:
    """The session key, the session's length and the cookies' `Secure` flag."""

    session_secret: bytes = field(repr=False)
    session_length: timedelta = timedelta(hours=DEFAULT_HOURS)
    always_secure: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebSettings:
        """The settings from the environment, validated (`ApiConfigError` names the setting)."""
        secret = environ.get(SECRET_SETTING, "")
        if not secret:
            log.warning(
                "%s is not set: sessions are signed with a key made for this process "
                "(they end when it restarts)",
                SECRET_SETTING,
            )
            key = secrets.token_bytes(32)
        elif len(secret) < MIN_SECRET_LENGTH:
            raise ApiConfigError(
                f"{SECRET_SETTING}: must be at least {MIN_SECRET_LENGTH} characters"
            )
        else:
            key = secret.encode()
        hours_text = environ.get(HOURS_SETTING, "").strip() or str(DEFAULT_HOURS)
        if not (hours_text.isascii() and hours_text.isdigit()) or not (
            1 <= int(hours_text) <= MAX_HOURS
        ):
            raise ApiConfigError(f"{HOURS_SETTING}: a whole number of hours, 1 to {MAX_HOURS}")
        secure_text = environ.get(SECURE_SETTING, "").strip().lower()
        if secure_text not in ("", "0", "1", "true", "false", "yes", "no"):
            raise ApiConfigError(f"{SECURE_SETTING}: 1 or 0")
        return cls(
            key,
            timedelta(hours=int(hours_text)),
            secure_text in ("1", "true", "yes"),
        )
