"""Subscriptions this node holds at others (seed 003's "socket that will hang", issue 17).

`DHTNode.subscribe(path, on_change)` registers at the `listen_holders` closest holders of the
record (a `listen` RPC, with the holder's cookie), renews there every `listen_refresh` seconds
(`client_keepalive` for a node in client mode: the renewals hold its NAT mapping open), and
moves when the closest holders change: a holder that does not answer a renewal, or refuses it,
is replaced after a fresh lookup, and every few renewals the holders are looked up again
(churn brings closer nodes). A holder pushes a `notify` when the record changes; a renewal's
answer carries a summary of what the holder has, so a notification that was lost is noticed at
the next renewal. `on_change(subscription, holder ID, holder address)` runs on every sign of a
change; the subscriber fetches what it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.engine.handlers import valid_summary
from node.routing import Address
from records import location

if TYPE_CHECKING:
    from node.server import DHTNode

log = logging.getLogger(__name__)

OnChange = Callable[["Subscription", bytes | None, Address | None], None]
_RELOOKUP_AFTER = 3600.0  # seconds between two lookups of the closest holders (churn)
_SLACK = 5.0  # seconds a holder keeps a subscription beyond three missed renewals


@dataclass
class _Holder:
    node_id: bytes
    address: Address
    cookie: bytes = b""
    summary: list[list[Any]] | None = None


@dataclass(eq=False)
class Subscription:
    """One path listened to; `close()` ends it."""

    path: str
    loc: bytes
    on_change: OnChange
    holders: dict[bytes, _Holder] = field(default_factory=dict)
    looked_up: float = -math.inf
    due: float = 0.0
    closed: bool = False
    manager: Subscriptions | None = None

    def close(self) -> None:
        """Stop listening (the holders are told, best effort)."""
        if self.manager is not None:
            self.manager.unsubscribe(self)


class Subscriptions:
    """The subscriptions of one node, renewed by one task the node owns (`run`), started with
    the first subscription: a node that listens to nothing keeps no task waiting."""

    def __init__(self, node: DHTNode) -> None:
        self.node = node
        self._by_loc: dict[bytes, list[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        """Set to wake `run` (None until it runs)."""

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._by_loc.values())

    def subscribe(self, path: str, on_change: OnChange) -> Subscription:
        """Listen to the record at `path` (registered within moments by `run`)."""
        sub = Subscription(path, location(path), on_change, manager=self)
        self._by_loc.setdefault(sub.loc, []).append(sub)
        if self._wake is not None:
            self._wake.set()
        self.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """End `sub`; its holders are asked to forget it if no other subscription needs them."""
        if sub.closed:
            return
        sub.closed = True
        subs = self._by_loc.get(sub.loc, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._by_loc.pop(sub.loc, None)
            if self.node.running:
                for holder in sub.holders.values():
                    self._send_listen(sub, holder, 0)

    def notified(self, loc: bytes, summary: list[list[Any]], holder: bytes, addr: Address) -> bool:
        """A holder pushed a change of `loc` (the engine's `on_notify`): True if we listen."""
        subs = self._by_loc.get(loc)
        if not subs:
            return False
        for sub in list(subs):
            known = sub.holders.get(holder)
            if known is not None:
                known.summary = summary
            sub.on_change(sub, holder, addr)
        return True

    def interval(self) -> float:
        """Seconds between renewals: short for a client (its NAT mapping), long otherwise."""
        engine = self.node.engine
        cfg = self.node.config
        return cfg.client_keepalive if engine is not None and engine.client else cfg.listen_refresh

    def start(self) -> None:
        """Start `run` as a task of the node if there are subscriptions to renew and it is not
        running (the node calls this as it starts; `subscribe` when it has to)."""
        if self._by_loc and (self._task is None or self._task.done()):
            self._task = self.node.spawn(self.run())

    async def run(self) -> None:
        """Register new subscriptions and renew due ones, for as long as the node runs."""
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        try:
            while True:
                now = loop.time()
                due = [s for subs in self._by_loc.values() for s in subs if s.due <= now]
                if due:
                    await asyncio.gather(*(self._renew(s) for s in due))
                    continue
                soonest = min(
                    (s.due for subs in self._by_loc.values() for s in subs), default=math.inf
                )
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(soonest - now, 3600.0)):
                        await wake.wait()
        finally:
            self._wake = None

    async def _renew(self, sub: Subscription) -> None:
        """Renew `sub` at its holders, after looking them up again if one failed (or every
        few renewals); a change a holder reports in its answer wakes the subscriber."""
        interval = self.interval()
        now = asyncio.get_running_loop().time()
        sub.due = now + interval
        if sub.closed:
            return
        node = self.node
        if len(sub.holders) < node.config.listen_holders or now - sub.looked_up >= _RELOOKUP_AFTER:
            sub.looked_up = now
            result = await node.lookup_nodes(sub.loc, count=node.config.listen_holders)
            fresh = {p.id: p.address for p in result.closest[: node.config.listen_holders]}
            sub.holders = {
                node_id: sub.holders.get(node_id) or _Holder(node_id, address)
                for node_id, address in fresh.items()
            }
        ttl = min(3 * interval + _SLACK, node.config.max_listen_ttl)
        results = await asyncio.gather(
            *(self._listen(sub, holder, ttl) for holder in list(sub.holders.values()))
        )
        for holder, ok in zip(list(sub.holders.values()), results, strict=True):
            if not ok:
                sub.holders.pop(holder.node_id, None)  # replaced at the next renewal
        if len(sub.holders) < node.config.listen_holders:
            sub.due = asyncio.get_running_loop().time() + min(interval, 5.0)  # look up again
            if self._wake is not None:
                self._wake.set()

    async def _listen(self, sub: Subscription, holder: _Holder, ttl: float) -> bool:
        """One renewal at `holder` (with a cookie round first if it has none for us)."""
        for _ in range(2):  # bounded: a cookie, then the subscription
            ok, body = await self._send_listen(sub, holder, ttl)
            if not ok:
                return False
            if isinstance(body, dict) and isinstance(body.get("cookie"), bytes):
                holder.cookie = body["cookie"]
                continue
            if not (isinstance(body, dict) and "ok" in body):
                return False  # refused (full), or not an answer we understand
            summary = body.get("summary")
            if valid_summary(summary):
                changed = holder.summary is not None and summary != holder.summary
                holder.summary = summary
                if changed:
                    sub.on_change(sub, holder.node_id, holder.address)
            return True
        return False

    def _send_listen(
        self, sub: Subscription, holder: _Holder, ttl: float
    ) -> asyncio.Future[tuple[bool, Any]]:
        node = self.node
        args = [node.id, sub.loc, holder.cookie, ttl]
        return node._protocol().call(holder.address, "listen", args, holder.node_id)
