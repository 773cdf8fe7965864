"""Errors the node raises, on the records package's `DHTError` hierarchy."""

from __future__ import annotations

from records import DHTError


class NodeNotRunning(DHTError):
    """The node was used before `start()` or after `stop()`."""


class PutFailed(DHTError):
    """No other node acknowledged a store; `reasons` counts what the refusing nodes said
    (``timeout`` for one that did not answer; ``no_peers`` when the node knew no other node to
    ask). The putting node itself still holds the record (unless its own store is full) and
    republishes it while it runs, so the record spreads once peers answer."""

    def __init__(self, message: str, reasons: dict[str, int] | None = None) -> None:
        self.reasons = dict(reasons or {})
        detail = ", ".join(f"{reason} x{count}" for reason, count in sorted(self.reasons.items()))
        super().__init__(f"{message} ({detail})" if detail else message)


class DataDirInUse(DHTError):
    """Another node (in this process or another) holds the data directory's lock."""


class StorageError(DHTError):
    """The records database in the data directory cannot be opened or read; the message names
    the file and what to do."""


class StoreFull(DHTError):
    """The local store's byte quota would be exceeded."""

    reason = "store_full"


class ProtocolError(DHTError):
    """A datagram could not be decoded; `reason` is the drop counter's name."""

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}" if message else reason)
