"""Signed session cookies and CSRF tokens (HMAC-SHA256 with the server's session key).

A session cookie is `payload.signature`, both base64url: the payload names the token
(its *name*, never the token), a fingerprint of the token (so a rotated or removed token
ends its sessions), when the session was issued and when it expires, and a random nonce.
Nothing is kept on the server. The CSRF token of a session is an HMAC of its nonce: every
form that writes carries it, and a request whose token is not the session's is refused.

Signing in has its own CSRF pair: the sign-in page sets a short-lived signed nonce cookie
and puts the matching token in the form, so a page elsewhere cannot sign a browser in
under another person's token (login CSRF).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from timeline.api_settings import Token

SESSION_COOKIE = "tl_session"
LOGIN_COOKIE = "tl_login"
LOGIN_LENGTH = timedelta(minutes=30)
MAX_COOKIE = 4096
_CLOCK_SKEW = timedelta(minutes=5)


class SessionError(Exception):
    """A cookie or CSRF token that is missing, forged, expired or not this session's."""


@dataclass(frozen=True)
class Session:
    """A signed-in browser: which token, since when, until when."""

    token_name: str
    issued_at: datetime
    expires_at: datetime
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SessionError("malformed cookie") from None


class Signer:
    """Signs and checks sessions and CSRF tokens with one key."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _mac(self, purpose: str, text: str) -> str:
        digest = hmac.new(self.key, f"{purpose}|{text}".encode(), hashlib.sha256).digest()
        return _b64(digest)

    def fingerprint(self, token: Token) -> str:
        """A short keyed digest of the token's secret (tells a rotated token apart)."""
        return self._mac("token", token.secret)[:22]

    # -- sessions ------------------------------------------------------------------------
    def issue(self, token: Token, now: datetime, length: timedelta) -> tuple[str, Session]:
        """A new session for `token`: the cookie value and the session."""
        session = Session(token.name, now, now + length, secrets.token_hex(16))
        payload = {
            "n": token.name,
            "f": self.fingerprint(token),
            "i": int(now.timestamp()),
            "e": int(session.expires_at.timestamp()),
            "x": session.nonce,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac('session', body)}", session

    def open(self, cookie: str | None, tokens: tuple[Token, ...], now: datetime) -> Session:
        """The session of a cookie, or `SessionError` (missing, forged, expired, revoked)."""
        if not cookie:
            raise SessionError("not signed in")
        if len(cookie) > MAX_COOKIE or cookie.count(".") != 1:
            raise SessionError("malformed cookie")
        body, signature = cookie.split(".")
        if not hmac.compare_digest(signature.encode(), self._mac("session", body).encode()):
            raise SessionError("the session cookie is not signed by this server")
        try:
            payload = json.loads(_unb64(body))
            name, fingerprint = str(payload["n"]), str(payload["f"])
            issued = datetime.fromtimestamp(int(payload["i"]), UTC)
            expires = datetime.fromtimestamp(int(payload["e"]), UTC)
            nonce = str(payload["x"])
        except (ValueError, KeyError, TypeError, OverflowError):
            raise SessionError("malformed cookie") from None
        if now >= expires or issued > now + _CLOCK_SKEW:
            raise SessionError("the session has expired: sign in again")
        token = next((t for t in tokens if t.name == name), None)
        if token is None or not hmac.compare_digest(
            fingerprint.encode(), self.fingerprint(token).encode()
        ):
            raise SessionError("the token of this session is no longer configured")
        return Session(name, issued, expires, nonce)

    def csrf(self, session: Session) -> str:
        """The CSRF token of a session (goes into every form that writes)."""
        return self._mac("csrf", session.nonce)

    def check_csrf(self, session: Session, presented: str | None) -> None:
        """Refuse (`SessionError`) a form whose CSRF token is not this session's."""
        if not presented or not hmac.compare_digest(
            presented.encode(), self.csrf(session).encode()
        ):
            raise SessionError("the form's CSRF token does not match this session")

    # -- signing in ----------------------------------------------------------------------
    def login_pair(self, now: datetime, cookie: str | None = None) -> tuple[str, str]:
        """A (cookie, form token) pair for the sign-in form.

        The nonce of a sign-in cookie still valid is kept (its life renewed), so that the
        forms of several tabs, shown one after the other, all stay good.
        """
        nonce = self._login_nonce(cookie, now) or secrets.token_hex(16)
        body = f"{nonce}.{int((now + LOGIN_LENGTH).timestamp())}"
        return f"{body}.{self._mac('login-cookie', body)}", self._mac("login-form", nonce)

    def _login_nonce(self, cookie: str | None, now: datetime) -> str | None:
        """The nonce of a sign-in cookie signed here and not expired (None otherwise)."""
        if not cookie or len(cookie) > MAX_COOKIE or cookie.count(".") != 2:
            return None
        nonce, expires, signature = cookie.split(".")
        body = f"{nonce}.{expires}"
        if not hmac.compare_digest(signature.encode(), self._mac("login-cookie", body).encode()):
            return None
        if not (expires.isascii() and expires.isdigit()) or now.timestamp() >= int(expires):
            return None
        return nonce

    def check_login(self, cookie: str | None, presented: str | None, now: datetime) -> None:
        """Refuse (`SessionError`) a sign-in whose form token does not match its cookie."""
        nonce = self._login_nonce(cookie, now)
        if nonce is None or not presented:
            raise SessionError("the sign-in form has expired: reload the page")
        if not hmac.compare_digest(presented.encode(), self._mac("login-form", nonce).encode()):
            raise SessionError("the sign-in form's CSRF token does not match")
