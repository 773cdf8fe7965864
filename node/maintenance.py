"""A node's periodic jobs: expiry, bootstrap retries, re-replication, republishing, bucket
refresh (Kademlia paper §2.3, §2.5), each at its own interval, in one task the node owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from node.engine.handlers import refused_for_good
from node.routing import Bucket, Contact
from node.storage import StoredRecord

if TYPE_CHECKING:
    from node.server import DHTNode

log = logging.getLogger(__name__)

_RETRIES_PER_SWEEP = 16
_PROBE_INTERVAL = 300.0  # an auto node in client mode asks for dial-backs this often
_PROBES = 3


class Maintenance:
    """The periodic jobs of one `DHTNode`."""

    def __init__(self, node: DHTNode) -> None:
        self.node = node

    async def run(self) -> None:
        """Run the jobs, each at its own interval, with a random first offset."""
        node = self.node
        cfg = node.config
        loop = asyncio.get_running_loop()
        jobs: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (cfg.sweep_interval, self.sweep),
            (cfg.replicate_interval, self.replicate),
            (cfg.republish_interval, self.republish),
            (min(cfg.refresh_interval / 4, 600.0), self.refresh),
            (cfg.contacts_save_interval, node.save_contacts),
            (_PROBE_INTERVAL, self.probe_reachability),
        ]
        now = loop.time()
        due = [now + interval * (0.5 + node.rng.random() / 2) for interval, _ in jobs]
        while True:
            soonest = min(range(len(jobs)), key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[soonest] - loop.time()))
            interval, job = jobs[soonest]
            due[soonest] = loop.time() + interval * (0.9 + node.rng.random() / 5)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance job %s failed", getattr(job, "__name__", job))

    async def keep_joining(self) -> None:
        """While the routing table holds fewer than k contacts, retry the configured bootstrap
        nodes that are not in it: after 1 s, then at doubling intervals up to
        `bootstrap_retry_interval`. A node started before its bootstrap nodes (the README's
        three nodes started at once) joins them within seconds of their start, even once
        another node has found it."""
        node = self.node
        _, table, _ = node._parts()
        cfg = node.config
        delay = min(1.0, cfg.bootstrap_retry_interval)
        while True:
            await asyncio.sleep(delay)
            delay = min(2 * delay, cfg.bootstrap_retry_interval)
            if len(table) >= cfg.k:
                continue
            known = {contact.address for contact in table}
            missing = [address for address in cfg.bootstrap if address not in known]
            if missing:
                try:
                    await node.bootstrap(missing)
                except asyncio.CancelledError:
                    raise
                except Exception:  # as a maintenance job: log it, keep trying
                    log.exception("retrying the bootstrap nodes failed")

    async def fill_buckets(self) -> None:
        """After joining, meet a few nodes in every bucket that is not full (paper §2.3 refreshes
        every bucket farther than the closest neighbour; a short lookup per bucket suffices to
        populate it, at a fraction of the messages)."""
        node = self.node
        _, table, _ = node._parts()
        for bucket in list(table.buckets):
            if len(bucket.contacts) < node.config.k and not bucket.covers(table.own_long_id):
                await node.lookup_nodes(self.random_id_in(bucket), count=1)

    def random_id_in(self, bucket: Bucket) -> bytes:
        """A random 20-byte ID in `bucket`'s range (a lookup target that refreshes it)."""
        return (bucket.lo + self.node.rng.randrange(bucket.size)).to_bytes(20, "big")

    async def probe_reachability(self) -> None:
        """An ``auto`` node still in client mode asks a few contacts to have a third node
        ping it (`probe`): if those pings get through, it is reachable and turns server."""
        node = self.node
        engine = node.engine
        if node.config.mode != "auto" or engine is None or not engine.client:
            return
        protocol, table, _ = node._parts()
        contacts = list(table)
        node.rng.shuffle(contacts)
        await asyncio.gather(
            *(protocol.call(c.address, "probe", [node.id], c.id) for c in contacts[:_PROBES])
        )

    async def sweep(self) -> None:
        """Drop expired records; retry originated records no node has acknowledged yet (a put
        that failed, or records reloaded after a restart)."""
        node = self.node
        _, table, store = node._parts()
        work = store.sweep(node.clock.now_ms())
        if work is not None:
            await work
        unpublished = [(loc, e) for loc, e in store if e.origin and not e.published]
        for loc, entry in unpublished[:_RETRIES_PER_SWEEP]:
            if len(table):
                await self.republish_one(loc, entry.data)

    async def replicate(self) -> None:
        """Make sure each held record sits on the `replicas` closest live nodes we know."""
        node = self.node
        _, _, store = node._parts()
        now = node.clock.now_ms()
        entries = [(loc, entry) for loc, entry in store if entry.expires > now]
        limit = asyncio.Semaphore(8)

        async def one(loc: bytes, entry: StoredRecord) -> None:
            async with limit:
                await self.replicate_entry(loc, entry)

        await asyncio.gather(*(one(loc, entry) for loc, entry in entries))

    async def replicate_entry(self, loc: bytes, entry: StoredRecord) -> None:
        """Store `entry` on the closest known nodes not known to hold it, in waves: a node that
        does not answer gives its turn to the next closest, until `replicas` nodes (this one
        included, if it is among the closest) hold it or the candidates run out."""
        node = self.node
        protocol, table, _ = node._parts()
        target = int.from_bytes(loc, "big")
        replicas = node.config.replicas
        candidates = table.closest(target, 2 * replicas, good_only=True)
        own_distance = int.from_bytes(node.id, "big") ^ target
        closer = sum(1 for c in candidates[:replicas] if c.long_id ^ target < own_distance)
        needed = replicas - (1 if closer < replicas else 0)
        queue = list(reversed(candidates))
        data = entry.data
        while needed > 0 and queue:
            wave: list[Contact] = []
            while queue and len(wave) < needed:
                contact = queue.pop()
                if contact.id in entry.holders:
                    needed -= 1
                else:
                    wave.append(contact)
            replies = await asyncio.gather(
                *(protocol.store_at(c.address, c.id, loc, data) for c in wave)
            )
            for contact, (ok, body) in zip(wave, replies, strict=True):
                if ok and body is True and entry.data == data:
                    entry.holders.add(contact.id)
                    needed -= 1
            # a close node holds a version that supersedes ours: take it rather than push ours
            # on to farther nodes that lack it (an acknowledged chat entry would spread again)
            refused = any(ok and refused_for_good(body) for ok, body in replies)
            if refused and await self.refresh_superseded(loc, data):
                return

    async def republish(self) -> None:
        """Originators re-store their records on the current closest nodes."""
        node = self.node
        _, _, store = node._parts()
        now = node.clock.now_ms()
        for loc, entry in store:
            if entry.origin and entry.expires > now:
                await self.republish_one(loc, entry.data)

    async def republish_one(self, loc: bytes, data: bytes) -> None:
        """Store `data` on the closest nodes; stop republishing it if none stored it and every
        node that answered refused it for good (e.g. a chat entry its recipient acknowledged),
        and take the network's version instead."""
        node = self.node
        outcome = await node.store_on_closest(loc, data)
        refusals = sum(outcome.reasons.values()) - outcome.reasons["timeout"]
        if outcome.acks == 0 and outcome.final and outcome.final == refusals:
            _, _, store = node._parts()
            work = store.disown(loc, data)
            if work is not None:
                await work
            await self.refresh_superseded(loc, data)

    async def refresh_superseded(self, loc: bytes, data: bytes) -> bool:
        """Our copy `data` at `loc` was refused for good: get the record, which merges the
        network's version into the store. True if the held copy changed."""
        node = self.node
        _, _, store = node._parts()
        entry = store.get(loc, node.clock.now_ms())
        if entry is None or entry.data != data:
            return entry is not None
        await node.get_result(entry.record.key)
        fresh = store.get(loc, node.clock.now_ms())
        return fresh is None or fresh.data != data

    async def refresh(self) -> None:
        """Look up a random ID in every bucket that saw no lookup for `refresh_interval`."""
        node = self.node
        _, table, _ = node._parts()
        now = asyncio.get_running_loop().time()
        for bucket in table.stale_buckets(now, node.config.refresh_interval):
            # A short lookup meets (and so re-checks) enough nodes of the bucket's range.
            await node.lookup_nodes(self.random_id_in(bucket), count=node.config.alpha)
