"""DHTNode: a Kademlia node storing validated, signed records (DESIGN §4).

Lifecycle: ``await node.start()`` binds the endpoint, loads the identity and held records, joins
through the bootstrap nodes and starts one maintenance task (bucket refresh, republish,
re-replication, expiry); ``await node.stop()`` ends every task the node owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from node.config import NodeConfig
from node.datadir import DataDirLock
from node.errors import NodeNotRunning, PutFailed, StoreFull
from node.keyexchange import KeyExchange
from node.keyfile import load_or_create_identity
from node.lookup import Lookup, LookupResult, Peer, disjoint_lookup
from node.protocol import DHTProtocol, NodeStats, OnReply
from node.routing import Address, Bucket, Contact, RoutingTable
from node.storage import RecordBackend, RecordStore, SqliteBackend, StoredRecord
from node.tasks import cancel_and_wait
from records import (
    MAX_RECORD_SIZE,
    PERMANENT_REFUSALS,
    Identity,
    InvalidRecord,
    NamespacedValidator,
    Record,
    RecordTooLarge,
    Validator,
    countersign,
    decode_record,
    default_validator,
    encode_record,
    location,
    without_expired,
)

log = logging.getLogger(__name__)

KEY_FILE = "node.key"
_RETRIES_PER_SWEEP = 16
RECORDS_FILE = "records.sqlite3"


class DHTNode(Server):  # type: ignore[misc]  # kademlia ships no type hints
    """A DHT node. Subclasses `kademlia.network.Server` and replaces its lookups, storage and
    maintenance; see the module docstring for the lifecycle."""

    protocol_class: type[DHTProtocol] = DHTProtocol
    """The datagram protocol a node speaks (a simulation's misbehaving nodes override it)."""

    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig()
        cfg = self.config
        # The stock Server's attributes, for code that inspects them; its storage is ours.
        self.ksize = cfg.k
        self.alpha = cfg.alpha
        self.node: Node | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.protocol: DHTProtocol | None = None
        self.refresh_loop = None
        self.save_state_loop = None

        self.clock = cfg.clock
        self.rng = random.Random(cfg.seed)
        self.validator: Validator = cfg.validator or default_validator()
        self.identity: Identity | None = cfg.identity
        self.table: RoutingTable | None = None
        self.store: RecordStore | None = None
        self.storage: RecordStore | None = None
        self.key_exchange: KeyExchange | None = None
        """The anonymous key-exchange service (seed 002), once started."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self._data_dir_lock: DataDirLock | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def id(self) -> bytes:
        """This node's 20-byte ID (SHA-1 of its public key)."""
        if self.identity is None:
            raise NodeNotRunning("the node's identity is loaded by start()")
        return self.identity.id

    @property
    def address(self) -> Address:
        """The (host, port) actually bound."""
        if self.transport is None:
            raise NodeNotRunning("the node is not running")
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)

    @property
    def running(self) -> bool:
        """True between `start()` and `stop()`."""
        return self._running

    @property
    def stats(self) -> NodeStats:
        """Traffic counters."""
        return self._protocol().stats

    async def start(self) -> None:
        """Bind, load identity and records, join the network, start maintenance.

        With a `data_dir`, the node holds the directory's lock until `stop()`: `DataDirInUse`
        if another node (in any process) holds it."""
        if self._running:
            raise RuntimeError("node already started")
        if self.config.data_dir is not None:
            self.config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds the key
            self._data_dir_lock = DataDirLock.acquire(self.config.data_dir)
        try:
            await self._start()
        except BaseException:
            if not self._running:
                self._release_data_dir()
            raise

    def _release_data_dir(self) -> None:
        if self._data_dir_lock is not None:
            lock, self._data_dir_lock = self._data_dir_lock, None
            lock.release()

    async def _start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        if self.identity is None:
            if cfg.data_dir is not None:
                self.identity = load_or_create_identity(cfg.data_dir / KEY_FILE)
            elif cfg.seed is not None:
                self.identity = Identity.from_seed(self.rng.randbytes(32))
            else:
                self.identity = Identity.generate()
        self.node = Node(self.identity.id)
        backend: RecordBackend | None = cfg.backend
        if backend is None and cfg.data_dir is not None:
            backend = SqliteBackend(cfg.data_dir / RECORDS_FILE)
        self.store = self.storage = RecordStore(
            self.validator, max_bytes=cfg.max_store_bytes, backend=backend
        )
        loaded = await self.store.open(self.clock.now_ms())
        self.table = RoutingTable(
            self.identity.id,
            k=cfg.k,
            stale_after=cfg.stale_after,
            drop_after=cfg.drop_after,
            now=loop.time(),
        )
        protocol = self.protocol_class(
            identity=self.identity,
            table=self.table,
            store=self.store,
            config=cfg,
            clock=self.clock,
            rng=self.rng,
        )
        factory = cfg.transport_factory or loop.create_datagram_endpoint
        try:
            transport, _ = await factory(lambda: protocol, local_addr=(cfg.host, cfg.port))
        except BaseException:
            await self.store.close()
            raise
        self.transport, self.protocol = transport, protocol
        self.key_exchange = KeyExchange(
            protocol,
            serve=cfg.key_server,
            ttl=cfg.key_ttl,
            max_parts=cfg.key_max_parts,
            rng=self.rng,
            find_servers=lambda: asyncio.ensure_future(self._key_servers()),
        )
        self._running = True
        log.info(
            "node started id=%s address=%s:%d records=%d",
            self.identity.id_hex,
            *self.address,
            loaded,
        )
        self._spawn(self._maintain())
        if cfg.bootstrap:
            await self.bootstrap(cfg.bootstrap)
            self._spawn(self._keep_joining())

    async def stop(self) -> None:
        """Stop every task the node owns, fail calls in flight, close the endpoint and store."""
        if not self._running:
            return
        self._running = False
        await cancel_and_wait(self._tasks)
        if self.key_exchange is not None:
            await self.key_exchange.close()
        if self.protocol is not None:
            await self.protocol.close()
        if self.store is not None:
            await self.store.close()
        self.transport = None
        self._release_data_dir()
        log.info("node stopped id=%s", self.identity.id_hex if self.identity else "?")

    async def __aenter__(self) -> DHTNode:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as a task owned by the node (cancelled by `stop()`); not once stopped."""
        if not self._running:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, NodeNotRunning):
                return  # the node stopped under it
            log.error("background task failed", exc_info=exc)

    def _protocol(self) -> DHTProtocol:
        if self.protocol is None or not self._running:
            raise NodeNotRunning("the node is not running: call start() first")
        return self.protocol

    def _parts(self) -> tuple[DHTProtocol, RoutingTable, RecordStore]:
        protocol = self._protocol()
        assert self.table is not None
        assert self.store is not None
        return protocol, self.table, self.store

    # -- joining ---------------------------------------------------------------------------

    async def bootstrap(self, addrs: Iterable[Address]) -> int:
        """Ping `addrs`, then look up our own ID to fill the routing table.

        Returns how many of `addrs` answered (the node retries those of its configured bootstrap
        nodes that are not in its table, see `_keep_joining`).
        """
        protocol, table, _ = self._parts()
        replies = await asyncio.gather(*(protocol.ping_address((a[0], a[1])) for a in addrs))
        answered = sum(1 for ok, body in replies if ok and isinstance(body, bytes))
        if answered:
            await self.lookup_nodes(self.id)
            self._spawn(self._fill_buckets())
        elif not len(table):
            log.warning("no bootstrap node answered; will retry")
        log.info("bootstrap answered=%d contacts=%d", answered, len(table))
        return answered

    async def _keep_joining(self) -> None:
        """While the routing table holds fewer than k contacts, retry the configured bootstrap
        nodes that are not in it: after 1 s, then at doubling intervals up to
        `bootstrap_retry_interval`. A node started before its bootstrap nodes (the README's
        three nodes started at once) joins them within seconds of their start, even once
        another node has found it."""
        _, table, _ = self._parts()
        cfg = self.config
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
                    await self.bootstrap(missing)
                except asyncio.CancelledError:
                    raise
                except Exception:  # as a maintenance job: log it, keep trying
                    log.exception("retrying the bootstrap nodes failed")

    def bootstrappable_neighbors(self) -> list[Address]:
        """Addresses of the closest contacts, to bootstrap from later."""
        _, table, _ = self._parts()
        return [c.address for c in table.closest(int.from_bytes(self.id, "big"), self.config.k)]

    # -- lookups ---------------------------------------------------------------------------

    async def _lookup(
        self,
        target: bytes,
        rpc: str,
        count: int,
        paths: int = 1,
        accept_value: Callable[[Peer, bytes], bool] | None = None,
    ) -> LookupResult:
        protocol, table, _ = self._parts()
        target_long = int.from_bytes(target, "big")
        table.mark_lookup(target_long, asyncio.get_running_loop().time())
        seeds = table.closest(target_long, self.config.k, good_only=True)
        if len(seeds) < self.config.alpha:
            seeds = table.closest(target_long, self.config.k)

        args = [self.id, target]

        def query(peer: Peer, on_reply: OnReply, on_stall: Callable[[], None]) -> bool:
            return protocol.request(peer.address, rpc, args, peer.id, on_reply, on_stall)

        started = asyncio.get_running_loop().time()
        try:
            if paths > 1:
                # Each path hears from its share of `count`, but at least from as many as hold a
                # record. Measured (lookup scenario, 2,000 nodes, 3 paths): every path hearing
                # from all k took 110 messages per get; a share each, 39, and among 20 %
                # colluders gets succeeded as often (adversarial scenario).
                per_path = max(self.config.replicas, -(-count // paths))
                return await disjoint_lookup(
                    target,
                    [(c.id, c.address) for c in seeds],
                    paths=paths,
                    own_id=self.id,
                    count=per_path,
                    alpha=self.config.alpha,
                    query=query,
                    max_nodes_per_reply=self.config.k,
                    accept_value=accept_value,
                    exclude=protocol.banned,
                )
            lookup = Lookup(
                target,
                ((c.id, c.address) for c in seeds),
                own_id=self.id,
                count=count,
                alpha=self.config.alpha,
                query=query,
                max_nodes_per_reply=self.config.k,
                accept_value=accept_value,
                exclude=protocol.banned,
            )
            return await lookup.run()
        finally:
            protocol.stats.lookup_seconds.observe(asyncio.get_running_loop().time() - started)

    async def lookup_nodes(self, target: bytes, count: int | None = None) -> LookupResult:
        """The `count` (default k) closest nodes to `target` that answered (find_node)."""
        return await self._lookup(target, "find_node", count or self.config.k)

    async def _fill_buckets(self) -> None:
        """After joining, meet a few nodes in every bucket that is not full (paper §2.3 refreshes
        every bucket farther than the closest neighbour; a short lookup per bucket suffices to
        populate it, at a fraction of the messages)."""
        _, table, _ = self._parts()
        for bucket in list(table.buckets):
            if len(bucket.contacts) < self.config.k and not bucket.covers(table.own_long_id):
                await self.lookup_nodes(self._random_id_in(bucket), count=1)

    def _random_id_in(self, bucket: Bucket) -> bytes:
        """A random 20-byte ID in `bucket`'s range (a lookup target that refreshes it)."""
        return (bucket.lo + self.rng.randrange(bucket.size)).to_bytes(20, "big")

    # -- put / get -------------------------------------------------------------------------

    async def put(self, record: Record) -> int:
        """Validate `record`, keep it (this node republishes it) and store it on the `replicas`
        closest nodes. Returns how many of them acknowledged.

        Raises `InvalidRecord` (with the validator's reason) or `RecordTooLarge` for a bad record,
        and `PutFailed` if no node acknowledged.
        """
        _, _, store = self._parts()
        now = self.clock.now_ms()
        size = record.ByteSize()
        if size > MAX_RECORD_SIZE:
            raise RecordTooLarge(size, MAX_RECORD_SIZE)
        self.validator.validate(record.key, record, now)
        loc = location(record.key)
        data = encode_record(record)
        try:
            accepted = store.accept(loc, record, now, origin=True)
        except StoreFull:
            log.warning("local store full: %s is put but will not be republished", record.key)
        else:
            if accepted.write is not None:
                await accepted.write
            data = accepted.entry.data
        acks, reasons = await self._store_on_closest(loc, data)
        if acks == 0:
            raise PutFailed(f"no node stored {record.key}", reasons)
        return acks

    async def _store_on_closest(self, loc: bytes, data: bytes) -> tuple[int, Counter[str]]:
        protocol, _, store = self._parts()
        result = await self._lookup(loc, "find_node", self.config.k)
        targets = result.closest[: self.config.replicas]
        replies = await asyncio.gather(
            *(protocol.store_at(p.address, p.id, loc, data) for p in targets)
        )
        reasons: Counter[str] = Counter()
        acks = 0
        entry = store.get(loc, self.clock.now_ms())
        for peer, (ok, body) in zip(targets, replies, strict=True):
            if ok and body is True:
                acks += 1
                if entry is not None and entry.data == data:
                    entry.holders.add(peer.id)
                    entry.published = True
            elif not ok:
                reasons["timeout"] += 1
            elif isinstance(body, list) and len(body) == 2 and isinstance(body[1], str):
                reasons[body[1][:40]] += 1
            else:
                reasons["bad_answer"] += 1
        if not targets:
            reasons["no_peers"] += 1
        return acks, reasons

    async def get(self, path: str) -> Record | None:
        """The record at `path`: collected from the closest holders, each copy validated, merged
        (or the best selected) with any local copy; stale or missing close copies are then
        written back. Returns None if no valid record exists."""
        record, _ = await self.get_with_lookup(path)
        return record

    async def get_with_lookup(self, path: str) -> tuple[Record | None, LookupResult]:
        """`get`, and the lookup behind it (messages, rounds, holders) for measurements."""
        self._parts()
        _check_known_namespace(self.validator, path)
        loc = location(path)
        valid: dict[bytes, Record] = {}
        protocol = self._protocol()

        def accept(peer: Peer, data: bytes) -> bool:
            record = self._valid_answer(path, data, self.clock.now_ms())
            if record is None:
                protocol.ban(peer.id)
                return False
            valid[peer.id] = record
            return True

        result = await self._lookup(
            loc, "find_value", self.config.k, self.config.get_paths, accept_value=accept
        )
        return self._merge_answers(path, loc, result, list(valid.values())), result

    def _merge_answers(
        self, path: str, loc: bytes, result: LookupResult, answers: list[Record]
    ) -> Record | None:
        protocol, _, store = self._parts()
        now = self.clock.now_ms()
        found: list[Record] = list(answers)
        local = store.get(loc, now)
        if local is not None:
            found.append(local.record)
        if not found:
            return None
        merged = self.validator.consolidate(path, found, now)
        if not merged.values:
            return None
        best = encode_record(merged)
        for peer in result.closest[: self.config.replicas]:
            if peer.value != best:
                protocol.store_at(peer.address, peer.id, loc, best)
        if local is not None and local.data != best:
            self._accept_quietly(loc, merged, now)
        return merged

    async def watch(self, path: str, *, poll_interval: float = 5.0) -> AsyncIterator[Record]:
        """Every new version of the record at `path`: the current one first (if any), then each
        newer one, whether it reaches this node in a store or shows up when the network is asked
        again (every `poll_interval` seconds)."""
        _, _, store = self._parts()
        _check_known_namespace(self.validator, path)
        wake = asyncio.Event()
        stop_listening = store.listen(location(path), lambda _entry: wake.set())
        last: bytes | None = None
        try:
            while True:
                record = await self.get(path)
                if record is not None and (data := encode_record(record)) != last:
                    last = data
                    yield record
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the event is set, and the watch would never end
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_interval):
                        await wake.wait()
                wake.clear()
        finally:
            stop_listening()

    async def announce(self, message: bytes, client_signature: bytes) -> int:
        """Countersign a client's announcement that it is reachable through this node and put
        it; see `records.client_announcement`. Returns how many nodes stored it."""
        record = countersign(message, client_signature, self._identity())
        return await self.put(record)

    async def _key_servers(self) -> list[Address]:
        """Candidate key servers: the nodes closest to a random ID (spread over the network)."""
        target = self.rng.getrandbits(160).to_bytes(20, "big")
        result = await self.lookup_nodes(target)
        return [peer.address for peer in result.closest]

    def _identity(self) -> Identity:
        if self.identity is None:
            raise NodeNotRunning("the node's identity is loaded by start()")
        return self.identity

    def _valid_answer(self, path: str, data: bytes | None, now: int) -> Record | None:
        if data is None:
            return None
        try:
            record = without_expired(decode_record(data), now)
            if record.key != path:
                raise InvalidRecord("key_mismatch", "answer is a record for another key")
            self.validator.validate(path, record, now)
        except InvalidRecord as exc:
            self._protocol().stats.dropped[f"bad_answer.{exc.reason}"] += 1
            return None
        return record

    def _accept_quietly(self, loc: bytes, record: Record, now: int) -> None:
        _, _, store = self._parts()
        try:
            accepted = store.accept(loc, record, now)
        except (InvalidRecord, StoreFull) as exc:
            log.debug("not keeping a fresher copy of %s: %s", record.key, exc)
            return
        if accepted.write is not None:
            self._spawn(_log_failure(accepted.write, "saving a fresher copy"))

    # -- maintenance -----------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Run the periodic jobs, each at its own interval, with a random first offset."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        jobs: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (cfg.sweep_interval, self._sweep),
            (cfg.replicate_interval, self._replicate),
            (cfg.republish_interval, self._republish),
            (min(cfg.refresh_interval / 4, 600.0), self._refresh),
        ]
        now = loop.time()
        due = [now + interval * (0.5 + self.rng.random() / 2) for interval, _ in jobs]
        while True:
            soonest = min(range(len(jobs)), key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[soonest] - loop.time()))
            interval, job = jobs[soonest]
            due[soonest] = loop.time() + interval * (0.9 + self.rng.random() / 5)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance job %s failed", getattr(job, "__name__", job))

    async def _sweep(self) -> None:
        """Drop expired records; retry originated records no node has acknowledged yet (a put
        that failed, or records reloaded after a restart)."""
        _, table, store = self._parts()
        work = store.sweep(self.clock.now_ms())
        if work is not None:
            await work
        unpublished = [(loc, e) for loc, e in store if e.origin and not e.published]
        for loc, entry in unpublished[:_RETRIES_PER_SWEEP]:
            if len(table):
                await self._republish_one(loc, entry.data)

    async def _replicate(self) -> None:
        """Make sure each held record sits on the `replicas` closest live nodes we know."""
        _, _, store = self._parts()
        now = self.clock.now_ms()
        entries = [(loc, entry) for loc, entry in store if entry.expires > now]
        limit = asyncio.Semaphore(8)

        async def one(loc: bytes, entry: StoredRecord) -> None:
            async with limit:
                await self._replicate_entry(loc, entry)

        await asyncio.gather(*(one(loc, entry) for loc, entry in entries))

    async def _replicate_entry(self, loc: bytes, entry: StoredRecord) -> None:
        """Store `entry` on the closest known nodes not known to hold it, in waves: a node that
        does not answer gives its turn to the next closest, until `replicas` nodes (this one
        included, if it is among the closest) hold it or the candidates run out."""
        protocol, table, _ = self._parts()
        target = int.from_bytes(loc, "big")
        replicas = self.config.replicas
        candidates = table.closest(target, 2 * replicas, good_only=True)
        own_distance = int.from_bytes(self.id, "big") ^ target
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
            refused = any(ok and _refused_for_good(body) for ok, body in replies)
            if refused and await self._refresh_superseded(loc, data):
                return

    async def _republish(self) -> None:
        """Originators re-store their records on the current closest nodes."""
        _, _, store = self._parts()
        now = self.clock.now_ms()
        for loc, entry in store:
            if entry.origin and entry.expires > now:
                await self._republish_one(loc, entry.data)

    async def _republish_one(self, loc: bytes, data: bytes) -> None:
        """Store `data` on the closest nodes; stop republishing it if none stored it and every
        node that answered refused it for good (`PERMANENT_REFUSALS`, e.g. a chat entry its
        recipient acknowledged), and take the network's version instead."""
        acks, reasons = await self._store_on_closest(loc, data)
        refused = set(reasons) - {"timeout"}
        if acks == 0 and refused and refused <= PERMANENT_REFUSALS:
            _, _, store = self._parts()
            work = store.disown(loc, data)
            if work is not None:
                await work
            await self._refresh_superseded(loc, data)

    async def _refresh_superseded(self, loc: bytes, data: bytes) -> bool:
        """Our copy `data` at `loc` was refused for good: get the record, which merges the
        network's version into the store. True if the held copy changed."""
        _, _, store = self._parts()
        entry = store.get(loc, self.clock.now_ms())
        if entry is None or entry.data != data:
            return entry is not None
        await self.get(entry.record.key)
        fresh = store.get(loc, self.clock.now_ms())
        return fresh is None or fresh.data != data

    async def _refresh(self) -> None:
        """Look up a random ID in every bucket that saw no lookup for `refresh_interval`."""
        _, table, _ = self._parts()
        now = asyncio.get_running_loop().time()
        for bucket in table.stale_buckets(now, self.config.refresh_interval):
            # A short lookup meets (and so re-checks) enough nodes of the bucket's range.
            await self.lookup_nodes(self._random_id_in(bucket), count=self.config.alpha)


def _refused_for_good(body: object) -> bool:
    """A store reply refusing with one of the `PERMANENT_REFUSALS`."""
    return isinstance(body, list) and len(body) == 2 and body[1] in PERMANENT_REFUSALS


def _check_known_namespace(validator: Validator, path: str) -> None:
    """Refuse a get for a namespace no validator knows, with the validator's own error."""
    if isinstance(validator, NamespacedValidator):
        validator.validator_for(path)


async def _log_failure(work: Awaitable[None], what: str) -> None:
    try:
        await work
    except Exception:
        log.exception("%s failed", what)
