"""Delivery sinks for alerts: a JSON Lines file, a webhook, e-mail (SPEC §5), LINE (line.py).

A sink's `send` makes exactly ONE delivery attempt and raises `DeliveryError` on failure;
the outbox keeps delivery state and decides when to retry. `deliver_with_retries` is the
in-process retry loop (exponential backoff with full jitter) for callers without an outbox.

Error messages never carry the alert body, the webhook's response body, credentials or
server reply texts (they may hold personal data); they carry status codes. Credentials come
from `scheduler.credentials` (environment or secret files), never from the spec.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import random
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

import httpx

from scheduler import crashpoints
from scheduler.alert import Alert
from scheduler.credentials import (
    SMTP_PASSWORD,
    SMTP_USERNAME,
    WEBHOOK_HEADER,
    WEBHOOK_SECRET,
    Secret,
    SinkCredentials,
    where_to_put,
)

DEFAULT_JSONL_PATH = "alerts.jsonl"

SUBJECT_PREFIX = "[居留證提醒 ARC reminder]"
MESSAGE_ID_DOMAIN = "residency-timeline"

ACCEPTED_SPECS = (
    "accepted sink forms: jsonl:PATH, webhook:URL (http:// or https://), "
    "smtp://host:port?from=ADDR&to=ADDR[,ADDR...][&starttls=1] "
    "(also smtp:host:port?...), line (or line:BASE_URL); credentials come from the "
    "environment, never from the spec"
)

SIGNATURE_HEADER = "X-Timeline-Signature"
TIMESTAMP_HEADER = "X-Timeline-Timestamp"
# How old a signed webhook may be before a receiver should refuse it (a replay).
SIGNATURE_TOLERANCE_SECONDS = 300


class DeliveryError(Exception):
    """A failed delivery attempt; `permanent` is True when retrying cannot help."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        # HTTP status or SMTP reply code, when the far end answered.
        self.status = status
        # Seconds the far end asked us to wait (HTTP Retry-After, delta-seconds form only).
        self.retry_after = retry_after


@runtime_checkable
class Sink(Protocol):
    """Where alerts go: `send` makes one attempt and raises DeliveryError on failure."""

    name: str

    def send(self, alert: Alert) -> None:
        """Deliver one alert, once; raise DeliveryError on failure."""
        ...


def alert_json(alert: Alert) -> str:
    """The alert as one line of JSON, non-ASCII kept readable (no \\u escapes)."""
    return json.dumps(alert.model_dump(mode="json"), ensure_ascii=False)


# --- a bound on the whole exchange ----------------------------------------------------

# Seconds one delivery attempt may take in all. A socket's timeout bounds each read or
# write only: a far end that sends a byte now and then would hold the attempt (and the
# emitter lock, and with it the daily job) for as long as it liked.
DEFAULT_DEADLINE = 60.0


class Deadline:
    """Cuts one exchange with a far end off after `seconds` in all.

    Sockets are registered with `watch` (the HTTP sinks: at connect, through httpcore's
    `trace` extension; SMTP: its socket); when the time is up they are shut down, which
    wakes a blocked read at once, and `expired` tells the caller why the exchange failed.
    """

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("a deadline must be positive")
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket | None) -> None:
        """Shut `sock` down when the time is up (at once when it is up already)."""
        if sock is None:
            return
        with self._lock:
            self._sockets = [s for s in self._sockets if s.fileno() != -1]
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's `trace` extension: watch each connection the client opens."""
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            if stream is not None:
                self.watch(stream.get_extra_info("socket"))

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> Deadline:
        self.expired = False
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def post_within(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    deadline: Deadline,
    where: str,
) -> httpx.Response:
    """POST `body`; a transport failure, or no whole answer within `deadline`, is a
    `DeliveryError` (transient but for an unsupported protocol)."""
    try:
        with deadline:
            return client.post(
                url,
                content=body,
                headers=headers,
                timeout=timeout,
                extensions={"trace": deadline.trace},
            )
    except httpx.TimeoutException as error:
        raise DeliveryError(f"{where}: timed out ({type(error).__name__})") from error
    except httpx.UnsupportedProtocol as error:
        raise DeliveryError(f"{where}: unsupported protocol", permanent=True) from error
    except httpx.TransportError as error:
        if deadline.expired:
            raise DeliveryError(
                f"{where}: timed out (no complete answer within {deadline.seconds:g} s)"
            ) from error
        raise DeliveryError(f"{where}: {type(error).__name__}: {error}") from error


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


# --- retries ---------------------------------------------------------------------------


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Full-jitter delay after failed attempt n (1-based): rng() * min(cap, base * 2**(n-1))."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if base < 0 or cap < 0:
        raise ValueError("base and cap must not be negative")
    # Past 2**64 the exponential is above any sane cap; stop before floats overflow.
    ceiling = cap if attempt > 64 else min(cap, base * 2.0 ** (attempt - 1))
    return max(0.0, min(ceiling, rng() * ceiling))


def deliver_with_retries(
    sink: Sink,
    alert: Alert,
    attempts: int,
    base_delay: float,
    max_delay: float,
    sleep: Callable[[float], object] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> int:
    """Send with up to `attempts` tries and jittered backoff; return tries used or re-raise."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            sink.send(alert)
        except DeliveryError as error:
            if error.permanent or attempt == attempts:
                raise
            delay = backoff_delay(attempt, base_delay, max_delay, rng)
            if error.retry_after is not None:
                # Honour the server's Retry-After, but never wait longer than our cap.
                delay = min(max_delay, max(delay, error.retry_after))
            sleep(delay)
        else:
            return attempt
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


# --- JSON Lines file -------------------------------------------------------------------


class BatchResult(NamedTuple):
    """What one batch delivery did: keys written now, keys the sink already held."""

    written: list[str]
    present: list[str]


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that takes many alerts in one attempt and is idempotent by alert key."""

    def send_batch(self, alerts: Sequence[Alert]) -> BatchResult:
        """Deliver every alert whose key the sink lacks, in one attempt."""
        ...


class JsonlSink:
    """Appends one JSON object per line to a file, each alert key at most once.

    Idempotent by key: under the file's exclusive flock the sink reads the lines added
    since it last looked (the whole file once per process) and skips keys already there,
    so a run that died between writing and recording "sent" is reconciled, not repeated.
    A torn last line (a writer killed mid-write; never acknowledged) is cut off before
    anything is appended. Safe for concurrent appending processes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path}"
        self._keys: set[str] = set()
        # (device, inode, offset): the file and how far its keys are in `_keys`.
        self._seen: tuple[int, int, int] | None = None

    def send(self, alert: Alert) -> None:
        """Append the alert as one line unless its key is already in the file."""
        self.send_batch([alert])

    def send_batch(self, alerts: Sequence[Alert]) -> BatchResult:
        """Append every alert whose key the file lacks: one write and one fsync, under flock."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existed = self.path.exists()
            # O_RDWR (not O_WRONLY) to read the keys back; O_APPEND makes every write land
            # at the current end even with other writers.
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise _file_error(self.path, error) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._catch_up(fd)
            written: list[str] = []
            present: list[str] = []
            lines: list[bytes] = []
            for alert in alerts:
                if alert.key in self._keys or alert.key in written:
                    present.append(alert.key)
                    continue
                written.append(alert.key)
                lines.append((alert_json(alert) + "\n").encode("utf-8"))
            data = b"".join(lines)
            if data:
                if crashpoints.due("jsonl_mid_write"):
                    _write_all(fd, data[: len(data) // 2 + 1])
                    crashpoints.crash()
                _write_all(fd, data)
                os.fsync(fd)
                self._keys.update(written)
                stat = os.fstat(fd)
                self._seen = (stat.st_dev, stat.st_ino, stat.st_size)
        except OSError as error:
            raise _file_error(self.path, error) from error
        finally:
            os.close(fd)  # also releases the flock
        if not existed:
            _fsync_directory(self.path.parent)
        return BatchResult(written, present)

    def _catch_up(self, fd: int) -> None:
        # Called under the flock: nobody is writing, so an unfinished last line is torn.
        stat = os.fstat(fd)
        if self._seen is None or self._seen[:2] != (stat.st_dev, stat.st_ino):
            self._keys, offset = set(), 0  # first look, or the file was replaced
        elif stat.st_size < self._seen[2]:
            self._keys, offset = set(), 0  # truncated by someone else: read it again
        else:
            offset = self._seen[2]
        end = offset
        rest = b""
        while True:
            chunk = os.pread(fd, _READ_CHUNK, end)
            if not chunk:
                break
            end += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                key = _line_key(line)
                if key is not None:
                    self._keys.add(key)
        if rest:
            end -= len(rest)
            os.ftruncate(fd, end)
            os.fsync(fd)
        self._seen = (stat.st_dev, stat.st_ino, end)


_READ_CHUNK = 1 << 20


def _line_key(line: bytes) -> str | None:
    # Lines that are not our JSON objects are left alone and hold no key.
    try:
        value = json.loads(line)
    except ValueError:
        return None
    key = value.get("key") if isinstance(value, dict) else None
    return key if isinstance(key, str) else None


def _write_all(fd: int, data: bytes) -> None:
    # One write() per line; the loop only matters for the rare short write.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    # Makes a newly created file's directory entry durable; best effort.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_error(path: Path, error: OSError) -> DeliveryError:
    permanent = isinstance(error, PermissionError | IsADirectoryError | NotADirectoryError)
    reason = error.strerror or type(error).__name__
    return DeliveryError(f"jsonl {path}: {reason}", permanent=permanent)


# --- webhook ---------------------------------------------------------------------------


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=` + hex HMAC-SHA256, keyed by `secret`, of `"<timestamp>." + body`."""
    signed = str(timestamp).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def verify_webhook_signature(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: datetime,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (no replay)."""
    if not timestamp or not signature or not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs(now.timestamp() - int(timestamp)) > tolerance:
        return False
    expected = webhook_signature(secret, int(timestamp), body)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace"))


class WebhookSink:
    """HTTP POST of the alert JSON with `Idempotency-Key: <alert.key>`; 2xx is success.

    With `signing_secret` each POST also carries `X-Timeline-Timestamp` (Unix seconds, from
    the injected clock) and `X-Timeline-Signature: sha256=<hex HMAC-SHA256 of
    "<timestamp>." + the exact body>`; `headers` adds configured headers (say an
    `Authorization`), which cannot replace the sink's own.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
        *,
        signing_secret: Secret | None = None,
        clock: Callable[[], datetime] | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        problem = _http_url_problem(url)
        if problem:
            raise ValueError(f"webhook URL {problem}")
        self.url = url
        self.timeout = timeout
        self._deadline = Deadline(deadline)
        self.name = f"webhook:{_redacted_url(url)}"
        self._headers = httpx.Headers(headers or {})
        self._signing_secret = signing_secret
        self._clock = clock or (lambda: datetime.now(UTC))
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def send(self, alert: Alert) -> None:
        """POST the alert once; raise DeliveryError (permanent for 3xx and most 4xx)."""
        where = self.name
        if not _is_header_safe(alert.key):
            raise DeliveryError(
                f"{where}: alert key is not usable as an Idempotency-Key header",
                permanent=True,
            )
        headers = httpx.Headers(self._headers)
        headers["Idempotency-Key"] = alert.key
        headers["Content-Type"] = "application/json"
        body = alert_json(alert).encode("utf-8")
        if self._signing_secret is not None:
            timestamp = int(self._clock().timestamp())
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = webhook_signature(
                self._signing_secret.reveal(), timestamp, body
            )
        response = post_within(
            self._client, self.url, body, headers, self.timeout, self._deadline, where
        )
        status = response.status_code
        if 200 <= status < 300:
            return
        transient = status in (408, 429) or status >= 500
        # The response body is deliberately left out of the message (may hold personal data).
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

    def __enter__(self) -> WebhookSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _http_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return "is malformed"
    if parts.scheme.lower() not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    return None


def _redacted_url(url: str) -> str:
    # Userinfo and query string may carry tokens; keep them out of names and messages.
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _is_header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and value.strip() == value and bool(value)


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


# --- e-mail ----------------------------------------------------------------------------


def smtp_message_id(key: str) -> str:
    """A Message-ID derived only from the alert key, so a resend is recognisably the same."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{MESSAGE_ID_DOMAIN}>"


def smtp_message(
    alert: Alert, sender: str, recipients: Sequence[str], sent_at: datetime
) -> EmailMessage:
    """The e-mail for one alert: bilingual subject, zh then en text body, deterministic id."""
    message = EmailMessage()
    message["Subject"] = f"{SUBJECT_PREFIX} {alert.task} — {alert.milestone}"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = smtp_message_id(alert.key)
    message["X-Alert-Key"] = alert.key
    message.set_content(f"{alert.message.zh}\n\n{alert.message.en}\n", charset="utf-8")
    return message


@runtime_checkable
class MailComposer(Protocol):
    """Builds the e-mail for an alert (see `scheduler.mail.Composer`)."""

    def student_mail(self, alert: Alert) -> EmailMessage | None:
        """The student's e-mail with its To header; None when no address is on file."""
        ...


def address_mail(message: EmailMessage, sender: str, sent_at: datetime) -> EmailMessage:
    """A composed e-mail with From and Date set (the sink's sender, the time of sending)."""
    del message["From"], message["Date"]
    message["From"] = sender
    message["Date"] = format_datetime(sent_at)
    return message


class SmtpSink:
    """Sends each alert as one UTF-8 e-mail over SMTP (optionally STARTTLS + login).

    Without a `composer`, every alert is one plain-text e-mail to the fixed recipients.
    With one (`scheduler.mail.Composer`, set by the scheduler's wiring), each alert goes
    To: the student's own address, in their language first, as text and HTML; an alert
    for a student with no e-mail address on file is not e-mailed (the staff digest lists
    them), and the fixed recipients (`staff_recipients`) get the daily digest instead.
    """

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients_for: Callable[[Alert], list[str]] | list[str],
        starttls: bool = False,
        username: str | None = None,
        password: str | Secret | None = None,
        timeout: float = 10.0,
        *,
        clock: Callable[[], datetime] | None = None,
        composer: MailComposer | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        if not host:
            raise ValueError("SMTP host is empty")
        if not sender:
            raise ValueError("SMTP sender is empty")
        if (username is None) != (password is None):
            raise ValueError("SMTP username and password must be given together")
        # The fixed recipients (`to=`): every alert's without a composer, the digest's with one.
        self.staff_recipients: list[str] = []
        if callable(recipients_for):
            self.recipients_for: Callable[[Alert], list[str]] = recipients_for
        else:
            fixed = list(recipients_for)
            if not fixed:
                raise ValueError("SMTP recipients list is empty")
            self.staff_recipients = list(fixed)
            self.recipients_for = lambda _alert: list(fixed)
        self.composer = composer
        self.host = host
        self.port = port
        self.sender = sender
        self.starttls = starttls
        self.username = username
        # Kept wrapped: the sink object's repr, a traceback's locals never show it.
        self._password = Secret(password) if isinstance(password, str) else password
        self.timeout = timeout
        self._deadline = Deadline(deadline)
        self.name = f"smtp:{host}:{port}"
        self._clock = clock or (lambda: datetime.now(UTC))

    def send(self, alert: Alert) -> None:
        """Send one e-mail; raise DeliveryError (permanent on 5xx replies and misconfiguration)."""
        where = self.name
        if self.composer is not None:
            try:
                composed = self.composer.student_mail(alert)
            except ValueError as error:  # e.g. a header value with a line break
                raise DeliveryError(f"{where}: cannot build the e-mail", permanent=True) from error
            if composed is not None:  # None: no address on file, the digest names them
                self.send_email(composed)
            return
        recipients = list(self.recipients_for(alert))
        if not recipients:
            raise DeliveryError(f"{where}: no recipients for this alert", permanent=True)
        try:
            message = smtp_message(alert, self.sender, recipients, self._clock())
        except ValueError as error:  # e.g. a header value with a line break
            raise DeliveryError(f"{where}: cannot build the e-mail", permanent=True) from error
        self._transmit(message, recipients)

    def send_email(self, message: EmailMessage) -> None:
        """Send a composed e-mail to the addresses of its To header, From and Date set here."""
        where = self.name
        recipients = [address for _name, address in getaddresses(message.get_all("To", []))]
        if not recipients:
            raise DeliveryError(f"{where}: no recipients for this e-mail", permanent=True)
        try:
            address_mail(message, self.sender, self._clock())
        except ValueError as error:
            raise DeliveryError(f"{where}: cannot build the e-mail", permanent=True) from error
        self._transmit(message, recipients)

    def _transmit(self, message: EmailMessage, recipients: list[str]) -> None:
        where = self.name
        smtp = _WatchedSMTP(self._deadline, timeout=self.timeout)
        deadline = self._deadline.__enter__()
        try:
            code, greeting = smtp.connect(self.host, self.port)
            if code != 220:  # connect() reports a refusing greeting instead of raising
                raise smtplib.SMTPConnectError(code, greeting)
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username is not None and self._password is not None:
                smtp.login(self.username, self._password.reveal())
            # Not `send_message`: its generator turns a body line "From …" into ">From …".
            international = not all(a.isascii() for a in (self.sender, *recipients))
            data = message.as_bytes(policy=message.policy.clone(linesep="\r\n", utf8=international))
            options = ["SMTPUTF8", "BODY=8BITMIME"] if international else []
            refused = smtp.sendmail(self.sender, recipients, data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _text in error.recipients.values()]
            raise DeliveryError(
                f"{where}: all {len(codes)} recipients refused (codes {sorted(set(codes))})",
                permanent=all(500 <= code < 600 for code in codes),
                status=max(codes, default=None),
            ) from error
        except smtplib.SMTPResponseException as error:
            # Reply text left out: servers echo addresses back in it.
            raise DeliveryError(
                f"{where}: {type(error).__name__} (SMTP {error.smtp_code})",
                permanent=500 <= error.smtp_code < 600,
                status=error.smtp_code,
            ) from error
        except smtplib.SMTPNotSupportedError as error:
            # STARTTLS or AUTH asked for but not offered: a configuration problem.
            raise DeliveryError(f"{where}: {error}", permanent=True) from error
        except smtplib.SMTPException as error:  # disconnected, helo trouble, ...
            if deadline.expired:
                raise DeliveryError(
                    f"{where}: timed out (no complete exchange within {deadline.seconds:g} s)",
                    permanent=False,
                ) from error
            raise DeliveryError(f"{where}: {type(error).__name__}", permanent=False) from error
        except ssl.SSLCertVerificationError as error:
            raise DeliveryError(
                f"{where}: TLS certificate rejected ({error.verify_message})", permanent=True
            ) from error
        except OSError as error:  # refused, unreachable, timed out, TLS trouble
            reason = error.strerror or type(error).__name__
            if deadline.expired:
                reason = f"timed out (no complete exchange within {deadline.seconds:g} s)"
            raise DeliveryError(f"{where}: {reason}", permanent=False) from error
        finally:
            deadline.__exit__()
            _quit_quietly(smtp)

        if refused:
            # Some recipients took it, some did not. A retry re-sends to all; the shared
            # Message-ID lets mail clients fold the duplicates.
            codes = [code for code, _text in refused.values()]
            raise DeliveryError(
                f"{where}: {len(refused)} of {len(recipients)} recipients refused "
                f"(codes {sorted(set(codes))})",
                permanent=all(500 <= code < 600 for code in codes),
                status=max(codes),
            )


class _WatchedSMTP(smtplib.SMTP):
    """smtplib.SMTP whose socket a `Deadline` watches from the moment it connects."""

    def __init__(self, deadline: Deadline, **options: Any) -> None:
        self._watcher = deadline
        super().__init__(**options)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._watcher.watch(sock)
        return sock


def _quit_quietly(smtp: smtplib.SMTP) -> None:
    # The message is already accepted (or the attempt already failed): a failing QUIT
    # must not turn a delivered alert into a reported failure.
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


# --- the CLI's --sink ------------------------------------------------------------------


def sink_from_spec(
    spec: str | None,
    credentials: SinkCredentials | None = None,
    *,
    contact_for: Callable[[Alert], object] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Sink:
    """The sink a `--sink` value names; empty/None means `jsonl:alerts.jsonl`.

    `credentials` are the ones read at start (`DeliveryConfig.from_settings`); a credential
    written into the spec itself is refused, with a message naming where it belongs.
    `contact_for` finds a student's contact for the LINE sink (see `scheduler.line`).
    """
    credentials = credentials if credentials is not None else SinkCredentials()
    text = (spec or "").strip()
    if not text:
        return JsonlSink(DEFAULT_JSONL_PATH)
    kind, colon, rest = text.partition(":")
    kind = kind.lower()
    # The spec itself is not echoed in errors: it may hold a password or a token.
    if kind == "line":
        from scheduler.line import line_sink_from_spec

        return line_sink_from_spec(rest, credentials, contact_for=contact_for)
    if not colon:
        raise ValueError(f"sink spec has no kind prefix; {ACCEPTED_SPECS}")
    if kind == "jsonl":
        if not rest.strip():
            raise ValueError(f"jsonl sink needs a file path; {ACCEPTED_SPECS}")
        return JsonlSink(rest)
    if kind == "webhook":
        return _webhook_sink_from_spec(rest, credentials, clock)
    if kind == "smtp":
        return _smtp_sink_from_spec(rest, credentials, clock)
    raise ValueError(f"unknown sink kind {kind!r}; {ACCEPTED_SPECS}")


# Query parameters that carry credentials in the wild (?token=, ?access_token=, ?sig=,
# Azure's ?code=, ...): refused in a spec, which is logged in the job store.
_CREDENTIAL_PARAMS = frozenset({"auth", "code", "key", "pass", "pwd", "sig", "signature"})
_CREDENTIAL_WORDS = ("token", "secret", "passw", "apikey", "api_key", "api-key", "credential")


def url_credential_problem(url: str) -> str | None:
    """Why a sink URL would carry a credential (user:pass@, ?token=...), or None."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "carries user:password@"
    for name in _query_values(parts.query):
        lowered = name.lower()
        if lowered in _CREDENTIAL_PARAMS or any(word in lowered for word in _CREDENTIAL_WORDS):
            return "carries a credential in its query string"
    return None


def _webhook_sink_from_spec(
    rest: str, credentials: SinkCredentials, clock: Callable[[], datetime] | None
) -> WebhookSink:
    problem = _http_url_problem(rest)
    if problem:
        raise ValueError(f"webhook sink URL {problem}; {ACCEPTED_SPECS}")
    leak = url_credential_problem(rest)
    if leak:
        raise ValueError(
            f"webhook sink URL {leak}: a sink spec is visible in the process list and kept "
            f"in the scheduler's job store; for a header such as Authorization "
            f"{where_to_put(WEBHOOK_HEADER)} ('Name: value'), for a signature "
            f"{where_to_put(WEBHOOK_SECRET)}"
        )
    headers = {}
    if credentials.webhook_header is not None:
        name, value = credentials.webhook_header
        headers[name] = value.reveal()
    return WebhookSink(
        rest, headers=headers, signing_secret=credentials.webhook_secret, clock=clock
    )


_ADDRESS = re.compile(r"[^@\s,<>]+@[^@\s,<>]+")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _smtp_sink_from_spec(
    rest: str, credentials: SinkCredentials, clock: Callable[[], datetime] | None
) -> SmtpSink:
    def bad(problem: str) -> ValueError:
        return ValueError(f"smtp sink {problem}; {ACCEPTED_SPECS}")

    parts = urlsplit("smtp:" + (rest if rest.startswith("//") else "//" + rest))
    if "@" in parts.netloc:
        raise ValueError(
            "smtp sink spec carries user:password@: a sink spec is visible in the process "
            "list and kept in the scheduler's job store; "
            f"{where_to_put(SMTP_USERNAME)} and {where_to_put(SMTP_PASSWORD)}"
        )
    try:
        port = parts.port
    except ValueError:
        raise bad("port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise bad("needs a host")
    if port is None:
        raise bad("needs a port (host:port)")
    if port == 0:
        raise bad("port must be a number from 1 to 65535")
    if parts.path not in ("", "/") or parts.fragment:
        raise bad("takes no path or fragment")

    query = _query_values(parts.query)
    unknown = sorted(set(query) - {"from", "to", "starttls"})
    if unknown:
        raise bad(f"has unknown parameter(s) {', '.join(unknown)}")
    senders = query.get("from", [])
    if len(senders) != 1 or not _ADDRESS.fullmatch(senders[0]):
        raise bad("needs exactly one from=ADDRESS")
    recipients = [
        address.strip()
        for value in query.get("to", [])
        for address in value.split(",")
        if address.strip()
    ]
    if not recipients:
        raise bad("needs to=ADDRESS[,ADDRESS...]")
    if not all(_ADDRESS.fullmatch(address) for address in recipients):
        raise bad("has a malformed to= address")
    starttls_values = query.get("starttls", ["0"])
    if len(starttls_values) != 1 or starttls_values[0].lower() not in _TRUE | _FALSE:
        raise bad("starttls must be 1 or 0")

    username = credentials.smtp_username
    return SmtpSink(
        host=parts.hostname,
        port=port,
        sender=senders[0],
        recipients_for=recipients,
        starttls=starttls_values[0].lower() in _TRUE,
        username=username.reveal() if username is not None else None,
        password=credentials.smtp_password,
        clock=clock,
    )


def _query_values(query: str) -> dict[str, list[str]]:
    # Not parse_qs: it turns "+" into a space, and "+" is common in e-mail addresses.
    values: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        name, _eq, value = pair.partition("=")
        values.setdefault(unquote(name).lower(), []).append(unquote(value))
    return values
