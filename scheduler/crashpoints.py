"""Crash points for the crash tests: `TIMELINE_CRASH_AT=POINT:N` SIGKILLs this process the
N-th time it reaches POINT (N defaults to 1). Unset, every call is one dictionary lookup.

Points: `outbox_marked_sending` (rows marked 'sending', nothing delivered yet),
`jsonl_mid_write` (half of a batch written, a torn last line), `outbox_delivered`
(the sink has the alerts, the outbox does not know yet), `outbox_marked_sent`.
"""

from __future__ import annotations

import os
import signal

ENV = "TIMELINE_CRASH_AT"
_reached: dict[str, int] = {}


def due(point: str) -> bool:
    """Count one arrival at `point`; True when this arrival is the one to crash at."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    name, _, count = spec.partition(":")
    if name != point:
        return False
    _reached[point] = _reached.get(point, 0) + 1
    return _reached[point] == int(count or 1)


def crash() -> None:
    """Die at once, the way the kernel's OOM killer or `kill -9` would end us."""
    os.kill(os.getpid(), signal.SIGKILL)


def reach(point: str) -> None:
    """Crash here if the environment asks for it."""
    if due(point):
        crash()
