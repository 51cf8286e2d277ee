"""The LINE sink: a push message through the LINE Messaging API, one per alert.

LINE Notify closed on 2025-03-31; the Messaging API's push endpoint replaces it:

    POST {base}/v2/bot/message/push
    Authorization: Bearer {channel access token}      (TIMELINE_LINE_CHANNEL_TOKEN[_FILE])
    Content-Type: application/json
    X-Line-Retry-Key: {uuid5(RETRY_KEY_NAMESPACE, alert.key)}
    {"to": "<the student's LINE user id>", "messages": [{"type": "text", "text": "..."}]}

The retry key is derived from the alert key alone, so every attempt at one alert (a retry
an hour later, a re-run after the process was killed) carries the same key and LINE
delivers the message at most once: a request whose key LINE already accepted is answered
409, which this sink counts as delivered. LINE keeps a retry key for 24 hours; the default
retry schedule (`scheduler.retry`) ends well inside that.

Where a student is reached comes from `contact_updated` facts (`StoreContacts`); what is
said from `line_text`. Both are parameters of `LineSink` (`contact_for`, `text_for`): the
seam where richer recipient resolution and templates plug in. The LINE user id and the
token are never written to a log or an error message.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from projections import contact
from scheduler import messages
from scheduler.alert import Alert
from scheduler.credentials import LINE_CHANNEL_TOKEN, Secret, SinkCredentials, where_to_put
from scheduler.sinks import (
    ACCEPTED_SPECS,
    DEFAULT_DEADLINE,
    Deadline,
    DeliveryError,
    _http_url_problem,
    _redacted_url,
    _retry_after_seconds,
    post_within,
    url_credential_problem,
)
from timeline.clock import Clock, system_clock, taipei_today
from timeline.facts import known_facts
from timeline.store import TimelineStore

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.line.me"
PUSH_PATH = "/v2/bot/message/push"
RETRY_KEY_HEADER = "X-Line-Retry-Key"
# Fixed for all time: changing it would give every alert a new retry key.
RETRY_KEY_NAMESPACE = uuid.UUID("5b0e7f0c-3c2a-5d7e-9a41-8f2d6c1e4b90")
# The Messaging API's limit for one text message, in characters.
MAX_TEXT = 5000


class LineContact(Protocol):
    """What the LINE sink needs to know of a student's contact."""

    @property
    def line_user_id(self) -> str | None:
        """The LINE user id (U + 32 hex digits), if the student gave one."""
        ...

    @property
    def language(self) -> str | None:
        """ "en" or "zh" when the student chose one."""
        ...


# One notion of a student's contact for every channel: projections.contact.
Contact = contact.Contact
contact_from_facts = contact.contact_on


class StoreContacts:
    """Finds a student's contact in the store: current knowledge, valid on the delivery day.

    The day is the clock's day in Taipei (the alert's day, or a later one for a retry); a
    retracted `contact_updated` does not count. One read per student per run (cached).
    """

    def __init__(self, store: TimelineStore, clock: Clock = system_clock) -> None:
        self._store = store
        self._clock = clock
        self._cache: dict[str, Contact | None] = {}

    def __call__(self, alert: Alert) -> Contact | None:
        """The contact of the alert's student, or None when none is known."""
        if alert.student_id not in self._cache:
            facts = known_facts(self._store.stream(alert.student_id))
            self._cache[alert.student_id] = contact_from_facts(facts, taipei_today(self._clock))
        return self._cache[alert.student_id]


def line_text(alert: Alert, found: Contact | None) -> str:
    """The message text (scheduler.messages.line_text), cut to LINE's limit for one message."""
    text = messages.line_text(alert, found)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def line_retry_key(alert_key: str) -> str:
    """The X-Line-Retry-Key of an alert: a UUID that depends only on its key."""
    return str(uuid.uuid5(RETRY_KEY_NAMESPACE, alert_key))


def _no_contacts(_alert: Alert) -> None:
    return None


class LineSink:
    """Pushes each alert to the student's LINE account; 2xx and 409 (already accepted) succeed."""

    def __init__(
        self,
        token: Secret,
        contact_for: Callable[[Alert], LineContact | None] = _no_contacts,
        text_for: Callable[[Alert, LineContact | None], str] = line_text,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        problem = _http_url_problem(base_url)
        if problem:
            raise ValueError(f"LINE API base URL {problem}")
        if not token.reveal():
            raise ValueError("the LINE channel access token is empty")
        self._token = token
        self.contact_for = contact_for
        self.text_for = text_for
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + PUSH_PATH
        self.timeout = timeout
        self._deadline = Deadline(deadline)
        self.name = f"line:{_redacted_url(self.base_url)}"
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def send(self, alert: Alert) -> None:
        """Push the alert once; raise DeliveryError (permanent for 4xx other than 408/409/429)."""
        where = self.name
        contact = self.contact_for(alert)
        user_id = contact.line_user_id if contact is not None else None
        if not user_id:
            raise DeliveryError(
                f"{where}: no LINE user id is known for student {alert.student_id}",
                permanent=True,
            )
        body = json.dumps(
            {"to": user_id, "messages": [{"type": "text", "text": self.text_for(alert, contact)}]},
            ensure_ascii=False,
        ).encode("utf-8")
        headers = {
            "Authorization": f"Bearer {self._token.reveal()}",
            "Content-Type": "application/json",
            RETRY_KEY_HEADER: line_retry_key(alert.key),
        }
        response = post_within(
            self._client, self.url, body, headers, self.timeout, self._deadline, where
        )
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 409:
            # LINE already accepted a request with this retry key: an earlier attempt got
            # through (its answer was lost, or we were killed before recording it).
            log.info("%s: alert %s was already accepted (409 for its retry key)", where, alert.key)
            return
        transient = status in (408, 429) or status >= 500
        # The answer's body is left out: it can quote the request.
        raise DeliveryError(
            f"{where}: answered HTTP {status}",
            permanent=not transient,
            status=status,
            retry_after=_retry_after_seconds(response) if transient else None,
        )

    def close(self) -> None:
        """Close the HTTP client if this sink created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> LineSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def line_sink_from_spec(
    rest: str,
    credentials: SinkCredentials,
    *,
    contact_for: Callable[[Alert], LineContact | None] | None = None,
) -> LineSink:
    """`line` or `line:` (the real endpoint), or `line:BASE_URL` (a proxy, a test receiver)."""
    base = rest.strip() or DEFAULT_BASE_URL
    problem = _http_url_problem(base)
    if problem:
        raise ValueError(f"line sink base URL {problem}; {ACCEPTED_SPECS}")
    parts = urlsplit(base)
    if parts.query or parts.fragment:
        raise ValueError(f"line sink base URL takes no query or fragment; {ACCEPTED_SPECS}")
    leak = url_credential_problem(base)
    if leak:
        raise ValueError(f"line sink base URL {leak}: {where_to_put(LINE_CHANNEL_TOKEN)}")
    if credentials.line_channel_token is None:
        raise ValueError(
            f"line sink needs the channel access token: {where_to_put(LINE_CHANNEL_TOKEN)}"
        )
    return LineSink(
        credentials.line_channel_token,
        contact_for=contact_for if contact_for is not None else _no_contacts,
        base_url=base,
    )
