"""Weshare's one error hierarchy."""

from __future__ import annotations


class WeshareError(Exception):
    """Base of every error weshare raises on purpose."""


class InvalidFile(WeshareError):
    """Bytes that are not a valid weshare file: malformed, tampered, wrongly signed, or signed by
    someone who may not write them. `reason` says which, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyNotHeld(InvalidFile):
    """A file encrypted with a domain key we do not hold (yet: a key that came with a `U.x` we
    have not read, or one that was never sealed to us)."""


class ExchangeError(WeshareError):
    """An exchange could not do what was asked (unreachable, refused, bad configuration)."""


class ObjectNotFound(ExchangeError):
    """The exchange has no object of that name."""


class StateInUse(WeshareError):
    """Another process (or client) has this local state open: one at a time, or two syncs would
    push the same edits twice and interleave their writes. The message names its pid."""


class UsageError(WeshareError):
    """The caller asked for something that cannot be done as asked (unknown domain, bad
    configuration, not a member yet...). The CLI turns it into exit status 2."""
