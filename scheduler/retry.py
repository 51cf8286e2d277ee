"""When a failed delivery is tried again: an exponential, capped schedule kept in the outbox.

After failed attempt n (1-based) the next one is due `first_delay · 2^(n-1)`, capped at
`max_delay`, later; after `attempts` attempts the alert is dead-lettered. With the defaults
(12 attempts, 1 minute doubling, capped at 6 hours) the waits are 1, 2, 4, 8, 16, 32, 64,
128, 256 minutes, then 6 h, 6 h: the last attempt comes 20 h 31 min after the first,
inside the 24 hours for which LINE honours a retry key. The due time is stored in the
outbox row (`next_attempt_at`), so the schedule survives restarts.

Settings (read once with the configuration, `timeline.settings`, and handed over by
`scheduler.jobs.DeliveryConfig.from_settings`): `TIMELINE_RETRY_ATTEMPTS` (1–100),
`TIMELINE_RETRY_FIRST_DELAY` and `TIMELINE_RETRY_MAX_DELAY` (seconds),
`TIMELINE_RETRY_JITTER` (0–1: each wait is shortened by up to that fraction, at random,
so many failures at once do not all come back in the same second; default 0).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

ATTEMPTS = "TIMELINE_RETRY_ATTEMPTS"
FIRST_DELAY = "TIMELINE_RETRY_FIRST_DELAY"
MAX_DELAY = "TIMELINE_RETRY_MAX_DELAY"
JITTER = "TIMELINE_RETRY_JITTER"


class RetrySettingError(ValueError):
    """A retry setting is out of range (the message names it)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait after each failed one."""

    attempts: int = 12
    first_delay: timedelta = timedelta(minutes=1)
    max_delay: timedelta = timedelta(hours=6)
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 100:
            raise RetrySettingError(f"{ATTEMPTS} must be a whole number from 1 to 100")
        if self.first_delay < timedelta(0):
            raise RetrySettingError(f"{FIRST_DELAY} must not be negative")
        if self.max_delay < self.first_delay:
            raise RetrySettingError(f"{MAX_DELAY} must not be shorter than {FIRST_DELAY}")
        if not 0.0 <= self.jitter <= 1.0:
            raise RetrySettingError(f"{JITTER} must be a number from 0 to 1")

    def delay(
        self,
        failed: int,
        retry_after: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> timedelta:
        """The wait after failed attempt `failed` (1-based), honouring Retry-After up to the cap."""
        if failed < 1:
            raise ValueError(f"attempts count from 1, got {failed}")
        # Past 2**40 the exponential is above any sane cap; stop before timedelta overflows.
        base = (
            self.max_delay
            if failed > 40
            else min(self.max_delay, self.first_delay * (2 ** (failed - 1)))
        )
        if self.jitter:
            base -= base * (self.jitter * rng())
        if retry_after is not None and retry_after > 0:
            base = min(self.max_delay, max(base, timedelta(seconds=retry_after)))
        return base

    def is_last(self, attempt: int) -> bool:
        """Whether attempt number `attempt` (1-based) is the last one allowed."""
        return attempt >= self.attempts

    def schedule(self) -> list[timedelta]:
        """The waits between attempts, without jitter (attempts − 1 of them)."""
        return [self.delay(n, rng=lambda: 0.0) for n in range(1, self.attempts)]

    def span(self) -> timedelta:
        """From the first attempt to the last, without jitter."""
        return sum(self.schedule(), timedelta(0))
