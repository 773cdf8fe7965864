"""Datagrams of services sharing the node's port: routed by their first byte, paid for first.

rpcudp's own datagrams start with 0x00 or 0x01; a service (the key exchange) claims other
first bytes. Every datagram of a service pays `cost(data)` tokens (what it may make us send)
from the service's own limits, if any, and from the node's shared per-source and global budget,
so nothing a peer sends bypasses them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass

from node.engine.limits import Budget, Limits, source_of
from node.routing import Address

log = logging.getLogger(__name__)

Handle = Callable[[bytes, Address, float], None]


@dataclass(slots=True)
class _Service:
    name: str
    handle: Handle
    budget: Budget | None
    cost: Callable[[bytes], int]


class ServiceRoutes:
    """Which service takes a datagram, and whether its sender may spend what it costs."""

    def __init__(self, shared: Budget, dropped: Counter[str], received: Counter[str]) -> None:
        self._shared = shared
        self._dropped = dropped
        self._received = received
        self._by_kind: dict[int, _Service] = {}

    def register(
        self,
        name: str,
        kinds: Collection[int],
        handle: Handle,
        *,
        limits: Limits | None = None,
        cost: Callable[[bytes], int] | None = None,
    ) -> None:
        """Route datagrams whose first byte is in `kinds` to `handle(data, addr, now)`;
        `ValueError` if a kind is rpcudp's or another service's."""
        service = _Service(
            name,
            handle,
            Budget(f"rate_limited_{name}", limits) if limits is not None else None,
            cost or (lambda _data: 1),
        )
        for kind in kinds:
            if kind in (0x00, 0x01) or kind in self._by_kind:
                raise ValueError(f"datagram kind {kind:#x} is taken")
        for kind in kinds:
            self._by_kind[kind] = service

    def route(self, data: bytes, addr: Address, now: float) -> bool:
        """Hand `data` to its service if one claims it (True), within the budgets: a datagram
        over them is dropped and counted (``rate_limited_<name>``, ``rate_limited_lookup``,
        ``rate_limited_global``)."""
        service = self._by_kind.get(data[0]) if data else None
        if service is None:
            return False
        source = source_of(addr)
        cost = service.cost(data)
        reason = service.budget.allow(source, now, cost) if service.budget else None
        if reason is None:
            reason = self._shared.allow(source, now, cost)
        if reason is not None:
            self._dropped[reason] += 1
            return True
        self._received[service.name] += 1
        try:
            service.handle(data, addr, now)
        except Exception:
            log.exception("error handling a %s datagram from %s", service.name, addr)
            self._dropped["handler_error"] += 1
        return True
