"""Helpers for tests with real nodes on 127.0.0.1 UDP sockets."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from node import DHTNode, NodeConfig
from tests.records_factory import NOW


class FixedClock:
    """Wall time that stands still at `now` (records in tests are dated NOW)."""

    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now


def loopback_config(**overrides: Any) -> NodeConfig:
    """A node on 127.0.0.1, any free port, nothing on disk, a fixed clock."""
    base = NodeConfig(host="127.0.0.1", port=0, clock=FixedClock())
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def loopback_network(count: int, **overrides: Any) -> AsyncIterator[list[DHTNode]]:
    """`count` nodes joined through the first; all stopped on exit."""
    nodes: list[DHTNode] = []
    try:
        first = DHTNode(loopback_config(**overrides))
        await first.start()
        nodes.append(first)
        for _ in range(count - 1):
            node = DHTNode(loopback_config(bootstrap=(first.address,), **overrides))
            await node.start()
            nodes.append(node)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()
