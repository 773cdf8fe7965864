"""The node's errors; they are defined with the rest of the hierarchy in `records.errors`."""

from __future__ import annotations

from records.errors import (
    LookupFailed,
    NodeNotRunning,
    ProtocolError,
    PutFailed,
    StoreFull,
)

__all__ = ["LookupFailed", "NodeNotRunning", "ProtocolError", "PutFailed", "StoreFull"]
