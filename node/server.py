"""DHTNode: a Kademlia node storing validated, signed records (DESIGN §4).

Lifecycle: ``await node.start()`` (or ``async with DHTNode(...)``) loads the identity and held
records, attaches the services it was given, binds the endpoint, joins through the bootstrap
nodes and starts one maintenance task (`node.maintenance`); ``await node.stop()`` closes the
services and ends every task the node owns.

Services (key exchange, directory, ...) are plugins (`Service`): they register the datagram
kinds they answer, their rate limits and the validators of their namespaces with the node; the
node knows none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Container,
    Coroutine,
    Iterable,
)
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from node.config import NodeConfig
from node.contacts import CONTACTS_FILE, encode_contacts, load_contacts, save_contacts
from node.datadir import DataDirLock
from node.engine import Engine, Limits, NodeStats, OnReply, RequestHandlers
from node.engine.handlers import refused_for_good
from node.errors import LookupFailed, NodeNotRunning, ProtocolError, PutFailed, StoreFull
from node.keyfile import load_or_create_identity
from node.lookup import (
    ANSWERED,
    Agreement,
    Lookup,
    LookupResult,
    Peer,
    disjoint_lookup,
    parse_find_reply,
)
from node.maintenance import Maintenance
from node.protocol import EngineProtocol
from node.routing import Address, RoutingTables
from node.storage import RecordBackend, RecordStore, SqliteBackend
from node.subscriptions import OnChange, Subscription, Subscriptions
from node.tasks import cancel_and_wait
from records import (
    MAX_RECORD_SIZE,
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
)
from records.validation import merge_copies, without_expired

log = logging.getLogger(__name__)

KEY_FILE = "node.key"
_REJOIN_THROUGH = 32  # saved contacts (the closest to us) pinged on a restart
RECORDS_FILE = "records.sqlite3"

S = TypeVar("S", bound="Service")
T = TypeVar("T")


class Service(Protocol):
    """A service running on a node, driven by the node's lifecycle: `attach` registers it
    (before the node binds its port), `start` runs once the node is up and has joined, `close`
    ends it (before the node stops)."""

    def attach(self, node: DHTNode) -> None:
        """Register datagram kinds, limits and validators with `node`."""
        ...

    async def start(self) -> None:
        """Begin serving (listeners, background work): the node runs and has joined."""
        ...

    async def close(self) -> None:
        """Stop: end every task and call the service owns."""
        ...


@dataclass
class StoreOutcome:
    """How the closest nodes answered a store."""

    acks: int = 0
    """Nodes that stored it."""
    reasons: Counter[str] = field(default_factory=Counter)
    """Refusals by reason; ``timeout`` for a node that did not answer."""
    final: int = 0
    """Refusals no retry of the same record overcomes (the refusal's `final` field)."""


@dataclass
class GetResult:
    """What a get found, and whether it can be trusted to be complete."""

    record: Record | None
    """The validated, merged record, or None if no holder had one."""
    complete: bool
    """True if most of the closest nodes asked answered: a missing record is then really
    missing. False when too many timed out (the record may be there all the same)."""
    lookup: LookupResult
    """The lookup behind it (messages, hops, holders)."""


class DHTNode:
    """A DHT node; see the module docstring."""

    handlers_class: type[RequestHandlers] = RequestHandlers
    """How the node answers RPCs (a simulation's misbehaving nodes override it)."""

    def __init__(self, config: NodeConfig | None = None, *, services: Iterable[Service] = ()):
        self.config = config or NodeConfig()
        cfg = self.config
        self.clock = cfg.clock
        self.rng = random.Random(cfg.seed)
        self.validator: Validator = cfg.validator or default_validator()
        self.identity: Identity | None = cfg.identity
        self.services: list[Service] = list(services)
        """The services attached to this node, in the order they were given."""
        self.table: RoutingTables | None = None
        self.store: RecordStore | None = None
        self.engine: Engine | None = None
        self.protocol: EngineProtocol | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self._maintenance = Maintenance(self)
        self.subscriptions = Subscriptions(self)
        """The subscriptions this node holds at others (`subscribe`, `watch`)."""
        self._data_dir_lock: DataDirLock | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def id(self) -> bytes:
        """This node's 20-byte ID (SHA-1 of its public key)."""
        return self._identity().id

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
        return self._engine().stats

    async def start(self) -> None:
        """Load identity and records, attach services, bind, join, start maintenance, then
        start the services.

        With a `data_dir`, the node holds the directory's lock until `stop()`: `DataDirInUse`
        if another node (in any process) holds it. If a service fails to start, the node
        stops again and the error is raised."""
        if self._running:
            raise RuntimeError("node already started")
        if self.config.data_dir is not None:
            self.config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds the key
            self._data_dir_lock = DataDirLock.acquire(self.config.data_dir)
        try:
            await self._start()
        except BaseException:
            if self._running:
                await self.stop()
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
        backend: RecordBackend | None = cfg.backend
        if backend is None and cfg.data_dir is not None:
            backend = SqliteBackend(cfg.data_dir / RECORDS_FILE)
        store = RecordStore(self.validator, max_bytes=cfg.max_store_bytes, backend=backend)
        table = RoutingTables(
            self.identity.id,
            k=cfg.k,
            stale_after=cfg.stale_after,
            drop_after=cfg.drop_after,
            now=loop.time(),
            proximity=cfg.proximity,
        )
        engine = Engine(
            identity=self.identity,
            table=table,
            store=store,
            config=cfg,
            clock=self.clock,
            randbytes=cfg.randbytes,
            handlers=self.handlers_class,
        )
        self.store, self.table, self.engine = store, table, engine
        protocol = EngineProtocol(engine, receive_buffer=cfg.receive_buffer)
        engine.on_notify = self.subscriptions.notified
        store.on_change = protocol.record_changed
        attached: list[Service] = []
        try:
            for service in self.services:
                service.attach(self)
                attached.append(service)
            loaded = await store.open(self.clock.now_ms())
            transport = await self._bind(protocol)
        except BaseException:
            await self._close_services(attached)
            await store.close()
            self.engine = None
            raise
        self.transport, self.protocol = transport, protocol
        self._running = True
        log.info(
            "node started id=%s address=%s:%d records=%d",
            self.identity.id_hex,
            *self.address,
            loaded,
        )
        self.spawn(self._maintenance.run())
        self.subscriptions.start()
        saved = [address for _, address in self._saved_contacts()[:_REJOIN_THROUGH]]
        join = list(dict.fromkeys([*cfg.bootstrap, *saved]))
        if join:
            answered = await self.bootstrap(join)
            log.info(
                "joined through %d of %d saved contacts and bootstrap nodes", answered, len(join)
            )
        if cfg.bootstrap:
            self.spawn(self._maintenance.keep_joining())
        for service in self.services:
            await service.start()

    async def stop(self) -> None:
        """Stop every task the node owns, close the services, fail calls in flight, close the
        endpoint and the store."""
        if not self._running:
            return
        self._running = False
        await cancel_and_wait(self._tasks)
        await self.save_contacts()
        await self._close_services(self.services)
        if self.protocol is not None:
            await self.protocol.close()
        if self.store is not None:
            await self.store.close()
        self.transport = None
        self._release_data_dir()
        log.info("node stopped id=%s", self.identity.id_hex if self.identity else "?")

    def _saved_contacts(self) -> list[tuple[bytes, Address]]:
        if self.config.data_dir is None:
            return []
        return load_contacts(self.config.data_dir / CONTACTS_FILE)

    async def save_contacts(self) -> None:
        """Save the routing table to ``contacts.json`` in the data dir (if any), off the loop;
        a failure is logged (the node runs on: only a restart without `bootstrap` needs it)."""
        if self.config.data_dir is None or self.table is None or self.identity is None:
            return
        data = encode_contacts(self.table, self.identity.id)
        try:
            await asyncio.to_thread(save_contacts, self.config.data_dir / CONTACTS_FILE, data)
        except OSError as exc:
            log.warning("could not save the contacts: %s", exc)

    async def _bind(self, protocol: EngineProtocol) -> asyncio.DatagramTransport:
        """The datagram endpoint: the configured factory's (a simulation's), else a UDP socket.
        ``::`` is bound dual-stack whatever the system's default (IPv4 peers reach it too)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        if cfg.transport_factory is not None:
            transport, _ = await cfg.transport_factory(
                lambda: protocol, local_addr=(cfg.host, cfg.port)
            )
            return transport
        if cfg.host in ("::", "::0"):
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((cfg.host, cfg.port))
            except BaseException:
                sock.close()
                raise
            udp, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        else:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: protocol, local_addr=(cfg.host, cfg.port)
            )
        return udp

    async def _close_services(self, services: list[Service]) -> None:
        for service in reversed(services):
            try:
                await service.close()
            except Exception:
                log.exception("closing service %s failed", type(service).__name__)

    async def __aenter__(self) -> DHTNode:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T] | None:
        """Run `coro` as a task owned by the node (cancelled by `stop()`); not once stopped
        (None)."""
        if not self._running:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, NodeNotRunning):
                return  # the node stopped under it
            log.error("background task failed", exc_info=exc)

    def _identity(self) -> Identity:
        if self.identity is None:
            raise NodeNotRunning("the node's identity is loaded by start()")
        return self.identity

    def _engine(self) -> Engine:
        if self.engine is None:
            raise NodeNotRunning("the node is not running: call start() first")
        return self.engine

    def _protocol(self) -> EngineProtocol:
        if self.protocol is None or not self._running:
            raise NodeNotRunning("the node is not running: call start() first")
        return self.protocol

    def _parts(self) -> tuple[EngineProtocol, RoutingTables, RecordStore]:
        protocol = self._protocol()
        assert self.table is not None
        assert self.store is not None
        return protocol, self.table, self.store

    # -- plugins ---------------------------------------------------------------------------

    def register_datagrams(
        self,
        name: str,
        kinds: Collection[int],
        handle: Callable[[bytes, Address, float], None],
        *,
        limits: Limits | None = None,
        cost: Callable[[bytes], int] | None = None,
    ) -> None:
        """Route datagrams whose first byte is in `kinds` to `handle(data, addr, now)`, within
        `limits` and the node's own budgets (see `node.engine.services`)."""
        self._engine().services.register(name, kinds, handle, limits=limits, cost=cost)

    def register_validator(self, namespace: str, validator: Validator) -> None:
        """Check records of `namespace` with `validator` (replacing the default one)."""
        if not isinstance(self.validator, NamespacedValidator):
            raise TypeError("a custom validator was configured: register namespaces there")
        self.validator = self.validator.with_namespace(namespace, validator)
        if self.store is not None:
            self.store.validator = self.validator

    def add_service(self, service: Service) -> None:
        """Attach `service` too (before `start()`: services are attached as the node starts)."""
        if self._running:
            raise RuntimeError("services are added before the node starts")
        self.services.append(service)

    def service(self, kind: type[S]) -> S | None:
        """The attached service of type `kind`, if any."""
        return next((s for s in self.services if isinstance(s, kind)), None)

    def send_datagram(self, data: bytes, addr: Address) -> None:
        """Send raw bytes from the node's port (a service's datagram)."""
        self._protocol().send_datagram(data, addr)

    def timeout_for(self, node_id: bytes | None) -> float:
        """The current RPC timeout for `node_id` (None: a peer not measured yet)."""
        return self._protocol().timeout_for(node_id)

    # -- joining ---------------------------------------------------------------------------

    async def bootstrap(self, addrs: Iterable[Address]) -> int:
        """Ping `addrs`, then look up our own ID to fill the routing table.

        Returns how many of `addrs` answered (the node retries those of its configured bootstrap
        nodes that are not in its table, see `Maintenance.keep_joining`).
        """
        protocol, table, _ = self._parts()
        replies = await asyncio.gather(*(protocol.ping_address((a[0], a[1])) for a in addrs))
        answered = sum(1 for ok, body in replies if ok and isinstance(body, bytes))
        if answered:
            await self.lookup_nodes(self.id)
            self.spawn(self._maintenance.fill_buckets())
        elif not len(table):
            log.warning("no bootstrap node answered; will retry")
        log.info("bootstrap answered=%d contacts=%d", answered, len(table))
        return answered

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
        quorum: int = 0,
        alpha: int | None = None,
    ) -> LookupResult:
        protocol, table, _ = self._parts()
        engine = self._engine()
        loop = asyncio.get_running_loop()
        target_long = int.from_bytes(target, "big")
        table.mark_lookup(target_long, loop.time())
        seeds = table.closest(target_long, self.config.k, good_only=True)
        if len(seeds) < self.config.alpha:
            seeds = table.closest(target_long, self.config.k)
        args = [self.id, target]

        def query(peer: Peer, on_reply: OnReply, on_stall: Callable[[], None]) -> bool:
            return protocol.request(peer.address, rpc, args, peer.id, on_reply, on_stall)

        rtt_of = None
        if self.config.proximity:
            spread = engine.timeouts.spread
            typical = spread.typical if spread.known else 0.0

            def rtt_of(node_id: bytes) -> float:
                contact = table.get(node_id)
                return contact.srtt if contact is not None and contact.srtt else typical

        if alpha is None:
            alpha = self.config.alpha
        agreement = None
        if quorum:
            agreement = Agreement(self.config.replicas, quorum, self.config.get_lagging_paths)

        started = loop.time()
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
                    alpha=alpha,
                    query=query,
                    max_nodes_per_reply=self.config.k,
                    accept_value=accept_value,
                    exclude=engine.bans,
                    rtt_of=rtt_of,
                    agreement=agreement,
                )
            lookup = Lookup(
                target,
                ((c.id, c.address) for c in seeds),
                own_id=self.id,
                count=count,
                alpha=alpha,
                query=query,
                max_nodes_per_reply=self.config.k,
                accept_value=accept_value,
                exclude=engine.bans,
                rtt_of=rtt_of,
                agreement=agreement,
            )
            return await lookup.run()
        finally:
            engine.stats.lookup_seconds.observe(loop.time() - started)
            if agreement is not None:
                # its paths and it refer to each other: unlinked, a get's lookups (and every
                # peer they met) are freed at once rather than by a full garbage collection
                agreement.lookups.clear()

    async def lookup_nodes(self, target: bytes, count: int | None = None) -> LookupResult:
        """The `count` (default k) closest nodes to `target` that answered (find_node)."""
        return await self._lookup(target, "find_node", count or self.config.k)

    async def random_nodes(self) -> list[Address]:
        """Addresses of the nodes closest to a random ID: a sample spread over the network."""
        result = await self.lookup_nodes(self.rng.getrandbits(160).to_bytes(20, "big"))
        return [peer.address for peer in result.closest]

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
        outcome = await self.store_on_closest(loc, data)
        if outcome.acks == 0:
            raise PutFailed(f"no node stored {record.key}", outcome.reasons)
        return outcome.acks

    async def store_on_closest(self, loc: bytes, data: bytes) -> StoreOutcome:
        """Store record bytes `data` at the `replicas` closest nodes to `loc`, found over
        `get_paths` disjoint paths as a get's: over one path whose first hops were colluders
        (each answers with its fellows nearest the target), a put stored only on colluders,
        which acknowledge and keep an older version. Measured with `adversarial --update`,
        seed 1, three bootstrap nodes per joiner: updates found by 3-path gets 93.3 -> 96.5 %
        among 20 % colluders, 95.3 -> 99.3 % among 10 %; put p50 597 -> 677 ms and churn
        datagrams +3 % (`lookup`, `churn` at 2,000 nodes)."""
        protocol, _, store = self._parts()
        result = await self._lookup(loc, "find_node", self.config.k, self.config.get_paths)
        targets = result.closest[: self.config.replicas]
        replies = await asyncio.gather(
            *(protocol.store_at(p.address, p.id, loc, data) for p in targets)
        )
        outcome = StoreOutcome()
        reasons = outcome.reasons
        entry = store.get(loc, self.clock.now_ms())
        for peer, (ok, body) in zip(targets, replies, strict=True):
            if ok and body is True:
                outcome.acks += 1
                if entry is not None and entry.data == data:
                    entry.holders.add(peer.id)
                    entry.published = True
            elif not ok:
                reasons["timeout"] += 1
            elif isinstance(body, list) and len(body) >= 2 and isinstance(body[1], str):
                reasons[body[1][:40]] += 1
                outcome.final += refused_for_good(body)
            else:
                reasons["bad_answer"] += 1
        if not targets:
            reasons["no_peers"] += 1
        return outcome

    async def get(self, path: str) -> Record | None:
        """The record at `path`: collected from the closest holders, each copy validated, merged
        (or the best selected) with any local copy; stale or missing close copies are then
        written back. Returns None if no valid record exists; raises `LookupFailed` if none was
        found but too many of the closest nodes did not answer to say so."""
        result = await self.get_result(path)
        if result.record is None and not result.complete:
            closest = self.config.replicas
            raise LookupFailed(
                f"no record at {path} among the nodes that answered, but most of the "
                f"{closest} closest did not answer",
                answered=len(result.lookup.closest),
                wanted=closest,
            )
        return result.record

    async def get_with_lookup(
        self, path: str, *, thorough: bool = False
    ) -> tuple[Record | None, LookupResult]:
        """`get`, and the lookup behind it (messages, rounds, holders) for measurements;
        `thorough` as in `get_result`."""
        result = await self.get_result(path, thorough=thorough)
        return result.record, result.lookup

    async def get_result(self, path: str, *, thorough: bool = False) -> GetResult:
        """`get` with the lookup behind it and whether it was complete; never raises for
        what peers sent (invalid copies are dropped and counted, forgers banned).

        A get ends as soon as enough of the nearest holders agree (`NodeConfig.get_quorum`);
        `thorough` waits for every path's whole window instead, to meet every holder that
        might keep a stale copy (to repair them all)."""
        self._parts()
        _check_known_namespace(self.validator, path)
        loc = location(path)
        valid: dict[bytes, Record] = {}
        checked: dict[bytes, Record] = {}  # copies the validator passed, by their bytes
        engine = self._engine()

        def accept(peer: Peer, data: bytes) -> bool:
            # holders that agree send the same bytes: check their signatures once
            record = checked.get(data)
            if record is None:
                record = self._valid_answer(path, data, peer)
            if record is None:
                return False
            checked[data] = valid[peer.id] = record
            return True

        result = await self._lookup(
            loc,
            "find_value",
            self.config.k,
            self.config.get_paths,
            accept_value=accept,
            quorum=0 if thorough else self.config.get_quorum,
            alpha=self.config.get_alpha,
        )
        record = self._merge_answers(path, loc, result, list(valid.values()), checked)
        complete = answered_most(result, self.config.replicas)
        if not complete:
            engine.stats.dropped["incomplete_get"] += 1
        return GetResult(record, complete, result)

    def _merge_answers(
        self,
        path: str,
        loc: bytes,
        result: LookupResult,
        answers: list[Record],
        checked: Container[bytes],
    ) -> Record | None:
        """Merge the valid answers with our copy; write the merge back where it is missing,
        if it is itself a valid record (holders that diverged may together hold more than one
        record may: it is then returned, not spread). `checked`: the answers' bytes, which
        the validator passed."""
        protocol, _, store = self._parts()
        now = self.clock.now_ms()
        local = store.get(loc, now)
        merge = merge_copies(
            self.validator,
            path,
            [*answers, *([local.record] if local else [])],
            now,
            known_valid=checked,
        )
        merged, best = merge.record, merge.data
        if merged is None or best is None:
            if merge.refused is not None:
                self._engine().stats.dropped[f"merge_not_written.{merge.refused}"] += 1
            return merged
        for peer in result.closest[: self.config.replicas]:
            # A get that ended on agreement has not heard all of the nearest: the farther
            # peers among those that answered are no holders; write back only to copies.
            if result.agreed and peer.value is None:
                continue
            if peer.value != best:
                try:
                    protocol.store_at(peer.address, peer.id, loc, best)
                except ProtocolError:  # best effort; the record was checked to fit
                    log.debug("write-back of %s to %s did not fit", path, peer)
        if local is None or local.data != best:
            self.accept_quietly(loc, merged, now, validated=True)
        return merged

    def subscribe(self, path: str, on_change: OnChange) -> Subscription:
        """Listen to the record at `path` at its closest holders (see `node.subscriptions`):
        `on_change(subscription, holder ID, holder address)` runs when one says it changed.
        `Subscription.close()` ends it; the node ends every subscription when it stops."""
        self._parts()
        _check_known_namespace(self.validator, path)
        return self.subscriptions.subscribe(path, on_change)

    async def fetch_from(self, path: str, holder_id: bytes, address: Address) -> Record | None:
        """The record at `path` as one holder has it (one find_value, validated): what a
        notification from that holder says changed. None if it does not answer with a valid
        copy (then `get` asks the others)."""
        protocol = self._protocol()
        ok, body = await protocol.call(address, "find_value", [self.id, location(path)], holder_id)
        if not ok:
            return None
        try:
            value, _ = parse_find_reply(body)
        except ValueError:
            return None
        return self._valid_answer(path, value, Peer(holder_id, address, 0, 0))

    async def watch(self, path: str, *, poll_interval: float = 300.0) -> AsyncIterator[Record]:
        """Every new version of the record at `path`: the current one first (if any), then each
        newer one, as soon as it reaches this node in a store or a holder pushes a notification
        of it (a subscription at the closest holders); the network is also asked again every
        `poll_interval` seconds, in case every push was lost."""
        _, _, store = self._parts()
        _check_known_namespace(self.validator, path)
        wake = asyncio.Event()
        stop_listening = store.listen(location(path), lambda _entry: wake.set())
        subscription = self.subscribe(path, lambda *_: wake.set())
        last: bytes | None = None
        try:
            while True:
                record = (await self.get_result(path)).record
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
            subscription.close()

    async def announce(self, message: bytes, client_signature: bytes) -> int:
        """Countersign a client's announcement that it is reachable through this node and put
        it; see `records.client_announcement`. Returns how many nodes stored it."""
        record = countersign(message, client_signature, self._identity())
        return await self.put(record)

    def _valid_answer(self, path: str, data: bytes | None, peer: Peer) -> Record | None:
        """A peer's copy of the record at `path` if it is valid; else None, counted, and the
        peer banned if the copy was forged."""
        if data is None:
            return None
        now = self.clock.now_ms()
        engine = self._engine()
        try:
            record = without_expired(decode_record(data), now)
            if record.key != path:
                raise InvalidRecord(
                    "key_mismatch", "answer is a record for another key", forgery=True
                )
            self.validator.validate(path, record, now)
        except InvalidRecord as exc:
            engine.stats.dropped[f"bad_answer.{exc.reason}"] += 1
            if exc.forgery:
                engine.ban(peer.id, exc.reason, asyncio.get_running_loop().time())
            return None
        return record

    def accept_quietly(
        self, loc: bytes, record: Record, now: int, *, validated: bool = False
    ) -> None:
        """Keep `record` if the store takes it (its write goes on in the background);
        `validated` as for `RecordStore.accept`."""
        _, _, store = self._parts()
        try:
            accepted = store.accept(loc, record, now, validated=validated)
        except (InvalidRecord, StoreFull) as exc:
            log.debug("not keeping a fresher copy of %s: %s", record.key, exc)
            return
        if accepted.write is not None:
            self.spawn(_log_failure(accepted.write, "saving a fresher copy"))


def answered_most(result: LookupResult, replicas: int) -> bool:
    """True if more than half of the `replicas` closest peers the lookup asked answered: a
    record they do not hold is then not there. A dead node or two among the closest do not
    make a get incomplete; a burst of timeouts (an overloaded host) does."""
    asked = sorted([*result.closest, *result.unanswered])[:replicas]
    answered = sum(1 for peer in asked if peer.state == ANSWERED)
    return not asked or 2 * answered > len(asked)


def _check_known_namespace(validator: Validator, path: str) -> None:
    """Refuse a get for a namespace no validator knows, with the validator's own error."""
    if isinstance(validator, NamespacedValidator):
        validator.validator_for(path)


async def _log_failure(work: Awaitable[None], what: str) -> None:
    try:
        await work
    except Exception:
        log.exception("%s failed", what)
