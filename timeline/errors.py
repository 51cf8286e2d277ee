"""Typed errors raised in the core and mapped once at each edge (CLI, HTTP)."""

from __future__ import annotations


class TimelineError(Exception):
    """Base class of every error the service raises on purpose."""


class ContractError(TimelineError):
    """An event does not satisfy the feed contract (SPEC §2)."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("; ".join(messages))


class ConflictError(TimelineError):
    """The same (source, event_id) was sent again with different content."""


class UnknownTargetError(TimelineError):
    """A retraction names an event that the store does not hold."""


class StorageConfigError(TimelineError):
    """The storage location or key given is not usable."""
