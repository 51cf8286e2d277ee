"""Run an ASGI app on a real uvicorn on 127.0.0.1 for the duration of a test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(
    app: FastAPI,
    root_path: str = "",
    header_seconds: float | None = None,
    stall_seconds: float | None = None,
) -> Iterator[str]:
    """Serve `app` in a thread; yield its base URL; stop it afterwards.

    With `root_path`, as `timeline serve --root-path` does: uvicorn then puts the prefix in
    front of every path it is sent, as behind a proxy that strips it. With
    `header_seconds` (and `stall_seconds`), on `serve`'s protocol with those deadlines.
    """
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        root_path=root_path,
    )
    if header_seconds is not None:
        from timeline.api_protocol import STALL_SECONDS, with_header_deadline

        with_header_deadline(config, header_seconds, stall_seconds or STALL_SECONDS)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
