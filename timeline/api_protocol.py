"""uvicorn's h11 protocol with deadlines for slow clients (what `serve` runs).

uvicorn closes an idle keep-alive connection after a few seconds, but not a connection
that is still sending its header: a client could open one and send a header line every
few seconds for ever (a "slowloris"). Measured before this: 3,000 such connections were
all still open after 70 s, and with the usual limit of 1,024 open files, 1,000 of them
left the server unable to accept anyone else (and its log follower unable to open the
store). Here a request's header must be complete within `header_timeout` seconds (a
setting, default 30) of the connection's opening, or on a kept-alive connection of the
next request's first byte (until that byte, uvicorn's keep-alive timeout of 5 s
applies); otherwise the connection is closed, with a 408 if part of a header came. A
body that stops arriving is the app's own 408. And a client that takes nothing of an
answer for `STALL_SECONDS` (60 s: the transport's buffer full, writing paused the whole
time) has its connection dropped, which releases what the answer held (a streamed list's
read model and query).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEADER_SECONDS = 30.0  # the longest a request's header may take to arrive
STALL_SECONDS = 60.0  # the longest an answer may wait, unread, for its client


def timed_out(seconds: float) -> bytes:
    """The 408 answer written before closing a connection whose header came too slowly."""
    body = b'{"error": "the request header took longer than %g s"}' % seconds
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )


class HeaderDeadlineProtocol(H11Protocol):
    """`H11Protocol`, closing a connection whose request header is not complete in time,
    or whose client takes nothing of an answer for `stall_seconds`."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        # `serve` sets them on its uvicorn Config (which workers receive pickled).
        self.header_seconds: float = getattr(config, "header_seconds", HEADER_SECONDS)
        self.stall_seconds: float = getattr(config, "stall_seconds", STALL_SECONDS)
        self._header_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Open the connection, and start the clock for its first request's header."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Feed h11; a header still incomplete keeps its deadline, a complete one drops it."""
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:
                self._arm()  # the next request of a keep-alive connection began
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        """Answered: uvicorn's keep-alive timeout takes over until the next byte comes."""
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Closed, by either side: no deadline left to keep."""
        self._disarm()
        self._unstall()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client reads slower than we write: from now on it has `stall_seconds` to
        take some of what waits, or the connection is dropped."""
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.stall_seconds, self._stalled)

    def resume_writing(self) -> None:
        """The client read enough: no stall."""
        self._unstall()
        super().resume_writing()

    def _unstall(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        # A client that reads nothing kept a streamed list's read model, its query and the
        # answer's buffers for as long as it stayed connected (100 such clients: a process
        # from 80 to 475 MB). Dropped, the app sees the client gone and lets them go.
        self._stall_timer = None
        log.info("dropped a connection whose client read nothing for %g s", self.stall_seconds)
        self.transport.abort()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot read, in the API's JSON error shape.

        (uvicorn's own is text/plain "Invalid HTTP request received.": a negative or
        doubled Content-Length, a header name with a space, ...)
        """
        body = b'{"error": "not a valid HTTP/1.1 request"}'
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # an answer under way (pipelined): the next header waits its turn
        if self.conn.trailing_data[0]:  # part of a header came: say why it ends
            self.transport.write(timed_out(self.header_seconds))
        self.transport.close()


def raise_open_files_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise this process's soft limit of open files toward its hard limit; (before, after).

    Each connection is a file: at the usual soft limit of 1,024 a thousand clients stop
    the server from accepting more, while the hard limit is most often far higher.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit: %s", exc)
            return soft, soft
        return soft, target
    return soft, soft


def with_header_deadline(config: Any, seconds: float, stall: float = STALL_SECONDS) -> Any:
    """`config` (a uvicorn Config) serving h11 with a header deadline of `seconds` and
    connections dropped when their client reads nothing for `stall` seconds."""
    config.http = HeaderDeadlineProtocol
    config.header_seconds = seconds
    config.stall_seconds = stall
    return config
