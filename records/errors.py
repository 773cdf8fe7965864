"""The project's one error hierarchy: every error we raise on purpose derives from `DHTError`."""

from __future__ import annotations


class DHTError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidRecord(DHTError):
    """A record was refused by a validator.

    `reason` is a short, stable, machine-readable token (``"expired"``, ``"bad_client_signature"``
    ...) that callers may match on and count; the message explains it to a human.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        self.message = message or reason.replace("_", " ")
        super().__init__(f"{reason}: {self.message}")


class RecordTooLarge(InvalidRecord):
    """A serialized record (or one of its values) exceeds the size limit."""

    def __init__(self, size: int, limit: int, what: str = "record") -> None:
        reason = "too_large" if what == "record" else f"{what}_too_large"
        super().__init__(
            reason, f"serialized {what} is {size} bytes, more than the {limit} allowed"
        )
        self.size = size
        self.limit = limit
