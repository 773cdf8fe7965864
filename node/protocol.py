"""RPC handling on rpcudp's framing: ping, store, find_node, find_value (and stun).

`DHTProtocol` subclasses `kademlia.protocol.KademliaProtocol` for its RPC names and framing but
replaces its request path: no task per datagram (handlers run inside `datagram_received` unless
they must wait on disk), every malformed, oversized or unknown input is dropped and counted by
reason, a handler error answers at once instead of leaving the caller to time out, requests are
rate-limited per source, and timeouts adapt to each peer's measured round-trip time.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import math
import os
import random
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kademlia.protocol import KademliaProtocol
from rpcudp.protocol import RPCProtocol

from node.config import Clock, NodeConfig
from node.errors import ProtocolError, StoreFull
from node.routing import Address, Contact, RoutingTable, RttSpread
from node.storage import RecordStore
from node.tasks import cancel_and_wait
from node.wire import REQUEST, decode, encode_request, encode_response
from records import (
    Identity,
    InvalidRecord,
    check_node_proof,
    decode_record,
    identity_id,
    prove_node,
)

log = logging.getLogger(__name__)

Reply = tuple[bool, Any]
RPC_NAMES = ("ping", "store", "find_node", "find_value", "stun")
_ARITY = {"ping": 1, "store": 3, "find_node": 2, "find_value": 2, "stun": 0}
# A request to a node whose ID is not proven yet carries this extra last argument; the answer
# is then {"answer": result, "proof": [public_key, signature]} (see `records.prove_node`, the
# challenge being the request's random message ID). Stock rpcudp cannot take the extra argument,
# so a stock node never answers and never enters our routing table.
PROVE = "prove"
_PROVABLE = frozenset({"ping", "find_node", "find_value"})
_MAX_PING_BACKS = 256
_OWNER_TTL = 600.0


@dataclass
class NodeStats:
    """Counters a node keeps about its traffic (exported as metrics by the control API)."""

    dropped: Counter[str] = field(default_factory=Counter)
    """Datagrams dropped, by reason."""
    requests_in: Counter[str] = field(default_factory=Counter)
    """Requests answered, by RPC name."""
    requests_out: Counter[str] = field(default_factory=Counter)
    """Requests sent, by RPC name."""
    refused: Counter[str] = field(default_factory=Counter)
    """Records refused by our store, by reason."""
    timeouts: int = 0
    """Requests we sent that got no answer in time."""
    late_answers: int = 0
    """Answers that arrived after their request had timed out."""
    lookup_seconds: LatencyHistogram = field(default_factory=lambda: LatencyHistogram())
    """How long lookups took."""


# Upper bounds (seconds) of the lookup latency histogram's buckets.
LOOKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyHistogram:
    """Counts of observations per bucket (cumulative form is made when exported)."""

    bounds: tuple[float, ...] = LOOKUP_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LOOKUP_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)


class _TokenBuckets:
    """Per-source token buckets with a bounded number of sources (least recently used evicted)."""

    def __init__(self, rate: float, burst: int, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed


OnReply = Callable[[bool, Any], None]
# A call that timed out: (address, sent at, node ID, proof asked), kept a while for a late answer.
_Expired = tuple[Address, float, bytes | None, bool]
_MAX_EXPIRED = 256
_MAX_BANNED = 4096


@dataclass(slots=True)
class _Pending:
    on_reply: OnReply
    address: Address
    sent_at: float
    timeout_at: float
    node_id: bytes | None
    prove: bool
    on_stall: Callable[[], None] | None = None
    stall_at: float = math.inf


class DHTProtocol(KademliaProtocol):  # type: ignore[misc]  # kademlia ships no type hints
    """The node's datagram protocol: answers RPCs and makes them."""

    def __init__(
        self,
        *,
        identity: Identity,
        table: RoutingTable,
        store: RecordStore,
        config: NodeConfig,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        # KademliaProtocol.__init__ would build the stock routing table; only rpcudp's state is
        # wanted from the base classes.
        RPCProtocol.__init__(self, wait_timeout=config.max_timeout)
        self.source_node = None
        self.router = table
        self.storage = store
        self.identity = identity
        self.own_id = identity.id
        self.table = table
        self.store = store
        self.config = config
        self.clock = clock
        self.rng = rng
        self.stats = NodeStats()
        self.rtt = RttSpread()
        # Calls that timed out recently: a late answer still proves the peer alive and teaches
        # us its real round trip.
        self._expired: OrderedDict[bytes, _Expired] = OrderedDict()
        self._loop = asyncio.get_running_loop()
        self._outstanding: dict[bytes, _Pending] = {}
        # Deadlines (stall or timeout) of calls in flight, (when, seq, msg_id), on 1 ms ticks,
        # with one event-loop timer for the earliest: far cheaper than a timer per call.
        self._deadlines: list[tuple[float, int, bytes]] = []
        self._deadline_seq = 0
        self._wakeup_at = math.inf
        self._wakeups: list[asyncio.TimerHandle] = []
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._store_limits = _TokenBuckets(config.stores_per_source_per_s, config.store_burst)
        self._lookup_limits = _TokenBuckets(config.lookups_per_source_per_s, config.lookup_burst)
        # everyone together: one bucket each, a second's worth of burst
        self._all_stores = _TokenBuckets(config.stores_per_s, max(1, int(config.stores_per_s)), 1)
        self._all_lookups = _TokenBuckets(
            config.lookups_per_s, max(1, int(config.lookups_per_s)), 1
        )
        self._secure_ids = config.seed is None
        self._closed = False
        # Datagrams whose first byte is a key here go to that handler instead of rpcudp's
        # decoding (rpcudp's own start with 0x00 or 0x01).
        self.services: dict[int, Callable[[bytes, Address], None]] = {}
        # Nodes caught serving invalid records: out of the routing table, never asked again.
        self.banned: OrderedDict[bytes, None] = OrderedDict()
        # Nodes that proved their IDs lately, by ID: the address they proved it from.
        self._proven_at: OrderedDict[bytes, Address] = OrderedDict()
        # and the other way round: which node proved lately that it holds an address, and when
        # (one node per address: a lookup does not ask it again for another ID it claims)
        self._owners: OrderedDict[Address, tuple[bytes, float]] = OrderedDict()
        # Unproven nodes that asked us something, being pinged for a proof.
        self._ping_backs: set[bytes] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def __getattr__(self, name: str) -> Any:
        # rpcudp turns every unknown attribute into a remote call; a typo should be an error.
        raise AttributeError(name)

    # -- lifecycle -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for something we sent (e.g. port unreachable): the peer times out."""
        self.stats.dropped["icmp_error"] += 1

    async def close(self) -> None:
        """Fail every call in flight, cancel handlers and close the transport."""
        self._closed = True
        outstanding = list(self._outstanding.values())
        self._outstanding.clear()
        self._expired.clear()
        self._deadlines.clear()
        for handle in self._wakeups:
            handle.cancel()
        self._wakeups.clear()
        for pending in outstanding:
            pending.on_reply(False, None)
        await cancel_and_wait(self._handler_tasks)
        if self.transport is not None:
            self.transport.close()

    # -- receiving -------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Decode one datagram and answer it or resolve the call it answers."""
        if data and data[0] in self.services:  # another protocol sharing the port (key exchange)
            try:
                self.services[data[0]](data, addr)
            except Exception:
                log.exception("error handling a datagram of kind %#x from %s", data[0], addr)
                self.stats.dropped["handler_error"] += 1
            return
        try:
            message = decode(data)
        except ProtocolError as exc:
            self.stats.dropped[exc.reason] += 1
            return
        if message.kind == REQUEST:
            self._handle_request(message.msg_id, message.body, addr)
        else:
            self._handle_response(message.msg_id, message.body, addr)

    def _handle_request(self, msg_id: bytes, body: Any, addr: Address) -> None:
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[1], list)):
            self.stats.dropped["malformed"] += 1
            return
        name, args = body
        if not isinstance(name, str) or name not in _ARITY:
            self.stats.dropped["unknown_rpc"] += 1
            return
        prove = name in _PROVABLE and len(args) == _ARITY[name] + 1 and args[-1] == PROVE
        if prove:
            args = args[:-1]
        if len(args) != _ARITY[name] or not _ids_ok(args[:1] if name == "ping" else args[:2]):
            self.stats.dropped["bad_arguments"] += 1
            return
        if name != "store" and not self._allow_lookup(addr):
            return
        self.stats.requests_in[name] += 1
        try:
            if name == "ping":
                result: Any = self.own_id
            elif name == "find_node":
                result = self._closest_as_list(args[1], exclude=args[0])
            elif name == "find_value":
                result = self._find_value(args[1], exclude=args[0])
            elif name == "stun":
                result = [addr[0], addr[1]]
            else:
                self._store(msg_id, args, addr)
                self._heard(args[0], addr)
                return
        except Exception:
            log.exception("error answering %s from %s", name, addr)
            self.stats.dropped["handler_error"] += 1
            result = None
        if prove:
            public_key, signature = prove_node(self.identity, msg_id, args[0])
            result = {"answer": result, "proof": [public_key, signature]}
        self._send(encode_response(msg_id, result), addr)
        if name != "stun":
            self._heard(args[0], addr)  # after answering: it may ping the sender for a proof

    def _allow_lookup(self, addr: Address) -> bool:
        """Per-source, then global, budget for answering ping / find_* (drops are counted)."""
        now = self._loop.time()
        if not self._lookup_limits.allow(_source(addr), now):
            self.stats.dropped["rate_limited_lookup"] += 1
            return False
        if not self._all_lookups.allow("*", now):
            self.stats.dropped["rate_limited_global"] += 1
            return False
        return True

    def ban(self, node_id: bytes) -> None:
        """Stop trusting `node_id` (it served a record that failed validation)."""
        self.banned[node_id] = None
        self.banned.move_to_end(node_id)
        if len(self.banned) > _MAX_BANNED:
            self.banned.popitem(last=False)
        self.table.remove(node_id)
        self.stats.dropped["banned_node"] += 1

    def _heard(self, node_id: bytes, addr: Address) -> None:
        """A request came from `node_id` at `addr`: a known contact is fresh; an unproven node
        whose bucket has room is pinged for a proof (it enters the table when that answers).

        Pinging back only strangers that would be among our k nearest halved the extra
        datagrams of joining, but among 20 % colluders gets succeeded less often (98.8 % instead
        of 99.1 % over three paths, 95.3 % instead of 97.1 % over one): learning honest
        newcomers from their requests keeps tables honest."""
        if node_id in self.banned:
            return
        if self.config.prove_ids and not self._proven(node_id, addr):
            if (
                node_id not in self._ping_backs
                and len(self._ping_backs) < _MAX_PING_BACKS
                and self.table.has_room_for(node_id)
            ):
                self._ping_backs.add(node_id)
                self.request(
                    addr,
                    "ping",
                    [self.own_id],
                    node_id,
                    lambda _ok, _body: self._ping_backs.discard(node_id),
                )
            return
        head = self.table.heard_from(node_id, addr, self._loop.time(), verified=False)
        if head is not None:
            self.ping_contact(head)

    def _closest_as_list(self, key: bytes, exclude: bytes) -> list[list[Any]]:
        target = int.from_bytes(key, "big")
        contacts = self.table.closest(target, self.config.k, exclude=exclude, good_only=True)
        return [[c.id, c.address[0], c.address[1]] for c in contacts]

    def _find_value(self, key: bytes, exclude: bytes) -> Any:
        entry = self.store.get(key, self.clock.now_ms())
        nodes = self._closest_as_list(key, exclude)
        if entry is None:
            return nodes
        return {"value": entry.data, "nodes": nodes}

    def _store(self, msg_id: bytes, args: list[Any], addr: Address) -> None:
        node_id, key, value = args
        if not isinstance(value, bytes):
            self._refuse(msg_id, addr, "malformed_record")
            return
        now = self._loop.time()
        if not self._store_limits.allow(_source(addr), now):
            self.stats.dropped["rate_limited"] += 1
            self._send(encode_response(msg_id, [False, "rate_limited"]), addr)
            return
        if not self._all_stores.allow("*", now):
            self.stats.dropped["rate_limited_global"] += 1
            self._send(encode_response(msg_id, [False, "rate_limited"]), addr)
            return
        if (
            self.store.backend is not None
            and len(self._handler_tasks) >= self.config.max_pending_requests
        ):
            self.stats.dropped["overloaded"] += 1  # too many writes waiting on the disk
            return
        try:
            record = decode_record(value)
            accepted = self.store.accept(key, record, self.clock.now_ms(), source=node_id)
        except (InvalidRecord, StoreFull) as exc:
            self._refuse(msg_id, addr, exc.reason)
            return
        if accepted.write is None:
            self._send(encode_response(msg_id, True), addr)
            return
        task = self._loop.create_task(self._finish_store(msg_id, accepted.write, addr))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _finish_store(self, msg_id: bytes, write: Any, addr: Address) -> None:
        try:
            await write
        except Exception:
            log.exception("could not persist a record from %s", addr)
            self._refuse(msg_id, addr, "storage_error")
            return
        self._send(encode_response(msg_id, True), addr)

    def _refuse(self, msg_id: bytes, addr: Address, reason: str) -> None:
        self.stats.refused[reason] += 1
        self._send(encode_response(msg_id, [False, reason]), addr)

    def _handle_response(self, msg_id: bytes, body: Any, addr: Address) -> None:
        pending = self._outstanding.get(msg_id)
        if pending is not None:
            address, sent_at, node_id, prove = (
                pending.address,
                pending.sent_at,
                pending.node_id,
                pending.prove,
            )
        elif (expired := self._expired.get(msg_id)) is not None:
            address, sent_at, node_id, prove = expired
        else:
            self.stats.dropped["unexpected_response"] += 1
            return
        if address != addr:
            self.stats.dropped["wrong_source"] += 1
            return
        if pending is None:
            del self._expired[msg_id]
            self.stats.late_answers += 1
        else:
            del self._outstanding[msg_id]
        rtt = self._loop.time() - sent_at
        self.rtt.observe(rtt)
        if prove:
            answer, node_id = self._proven_answer(msg_id, body, node_id)
            if node_id is None:
                self._learn_owner(msg_id, body, addr)
                self.stats.dropped["unproven"] += 1
                if pending is not None:
                    pending.on_reply(False, None)
                return
            self._remember_proof(node_id, addr)
            body = answer
        if node_id is None and isinstance(body, bytes) and len(body) == 20:
            node_id = body  # a ping to an address whose node we did not know yet
        if (
            node_id is not None
            and node_id not in self.banned
            and (prove or not self.config.prove_ids or self._proven(node_id, addr))
        ):
            head = self.table.heard_from(node_id, addr, self._loop.time(), verified=True)
            contact = self.table.get(node_id)
            if contact is not None:
                contact.observe_rtt(rtt)
            if head is not None:
                self.ping_contact(head)
        if pending is not None:
            pending.on_reply(True, body)

    def _proven(self, node_id: bytes, address: Address) -> bool:
        """True if `node_id` has proved its ID from `address` (it is in the routing table or
        proved it lately)."""
        if self._proven_at.get(node_id) == address:
            self._proven_at.move_to_end(node_id)
            return True
        return self.table.known_at(node_id, address)

    def _remember_proof(self, node_id: bytes, address: Address) -> None:
        self._proven_at[node_id] = address
        self._proven_at.move_to_end(node_id)
        self._owners[address] = (node_id, self._loop.time())
        self._owners.move_to_end(address)
        if len(self._proven_at) > self.config.proven_cache_size:
            self._proven_at.popitem(last=False)
        if len(self._owners) > self.config.proven_cache_size:
            self._owners.popitem(last=False)

    def _held_by_another(self, address: Address, node_id: bytes | None) -> bool:
        """True if another node proved within ten minutes that `address` is its own (after that
        a restarted node with a new key may sit there; a ping still reaches it)."""
        owner = self._owners.get(address)
        return (
            owner is not None
            and node_id is not None
            and owner[0] != node_id
            and self._loop.time() - owner[1] < _OWNER_TTL
        )

    def _learn_owner(self, msg_id: bytes, body: Any, address: Address) -> None:
        """An answer failed to prove the ID we asked for; if it proves its sender's own ID
        instead, remember whose address it is."""
        parts = _proof_parts(body)
        if parts is not None:
            _, public_key, signature = parts
            owner = identity_id(public_key)
            if check_node_proof(owner, public_key, signature, msg_id, self.own_id):
                self._remember_proof(owner, address)

    def _proven_answer(
        self, msg_id: bytes, body: Any, node_id: bytes | None
    ) -> tuple[Any, bytes | None]:
        """Unwrap an answer that had to carry a proof: ``(answer, proven node ID)``, or
        ``(None, None)`` if the proof is missing or wrong. A ping to a bare address proves the ID
        it answers with."""
        parts = _proof_parts(body)
        if parts is None:
            return None, None
        answer, public_key, signature = parts
        if node_id is None:
            node_id = answer if isinstance(answer, bytes) and len(answer) == 20 else None
        if node_id is None or not check_node_proof(
            node_id, public_key, signature, msg_id, self.own_id
        ):
            return None, None
        return answer, node_id

    # -- sending ---------------------------------------------------------------------------

    def _send(self, data: bytes, addr: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def send_datagram(self, data: bytes, addr: Address) -> None:
        """Send raw bytes from the node's port (for services sharing it)."""
        self._send(data, addr)

    def _new_msg_id(self) -> bytes:
        if self._secure_ids:
            return os.urandom(20)
        return self.rng.getrandbits(160).to_bytes(20, "big")

    def _estimates(self, node_id: bytes | None) -> tuple[float, float]:
        """(timeout, expected round trip) for a request to `node_id`, unbounded."""
        contact = self.table.get(node_id) if node_id is not None else None
        if contact is not None and contact.srtt:
            return contact.srtt + 4 * contact.rttvar, contact.srtt + 2 * contact.rttvar
        if self.rtt.known:
            return 2 * self.rtt.slow, self.rtt.slow
        # Nothing measured yet (a node that has only been asked, never asked): wait the cautious
        # initial timeout, but let a lookup move on early (a stall costs a message, not a fault).
        return self.config.initial_timeout, 2 * self.config.min_timeout

    def _bounded_estimates(self, node_id: bytes | None) -> tuple[float, float]:
        timeout, expected = self._estimates(node_id)
        cfg = self.config
        timeout = min(cfg.max_timeout, max(cfg.min_timeout, timeout))
        return timeout, min(timeout, max(cfg.min_timeout / 2, expected))

    def timeout_for(self, node_id: bytes | None) -> float:
        """The adaptive timeout for a request to `node_id`: RTO from its measured round trips
        (RFC 6298), or for a node not measured yet twice the recent 90th percentile over all
        peers; always within [min_timeout, max_timeout]."""
        return self._bounded_estimates(node_id)[0]

    def expected_rtt(self, node_id: bytes | None) -> float:
        """How long an answer from `node_id` should take; past it a lookup stops waiting."""
        return self._bounded_estimates(node_id)[1]

    def request(
        self,
        address: Address,
        name: str,
        args: list[Any],
        node_id: bytes | None,
        on_reply: OnReply,
        on_stall: Callable[[], None] | None = None,
    ) -> bool:
        """Send request `name` to `address`; `on_reply(True, answer)` runs when it is answered,
        `on_reply(False, None)` after the adaptive timeout (or at once if too many calls are in
        flight). `on_stall()`, if given, runs when the answer is later than expected but the call
        has not timed out yet. `node_id`, when known, is the node expected to answer: its round
        trip is measured and its failures counted. Returns False if nothing was sent (the
        failure was reported at once)."""
        if self._closed:
            on_reply(False, None)
            return False
        if len(self._outstanding) >= self.config.max_outstanding_calls:
            self.stats.dropped["too_many_calls"] += 1
            on_reply(False, None)
            return False
        msg_id = self._new_msg_id()
        prove = (
            self.config.prove_ids
            and name in _PROVABLE
            and (node_id is None or not self._proven(node_id, address))
        )
        if prove and name != "ping" and self._held_by_another(address, node_id):
            self.stats.dropped["address_of_another"] += 1  # not worth a datagram
            on_reply(False, None)
            return False
        data = encode_request(msg_id, name, [*args, PROVE] if prove else args)
        now = self._loop.time()
        timeout, expected = self._bounded_estimates(node_id)
        pending = _Pending(on_reply, address, now, now + timeout, node_id, prove)
        self._outstanding[msg_id] = pending
        self._add_deadline(pending.timeout_at, msg_id)
        if on_stall is not None and expected < timeout:
            pending.on_stall = on_stall
            pending.stall_at = now + expected
            self._add_deadline(pending.stall_at, msg_id)
        self.stats.requests_out[name] += 1
        self._send(data, address)
        return True

    def call(
        self, address: Address, name: str, args: list[Any], node_id: bytes | None = None
    ) -> asyncio.Future[Reply]:
        """`request` as a future of ``(True, answer)`` or ``(False, None)``."""
        future: asyncio.Future[Reply] = self._loop.create_future()

        def resolve(ok: bool, body: Any) -> None:
            if not future.done():
                future.set_result((ok, body))

        self.request(address, name, args, node_id, resolve)
        return future

    def _add_deadline(self, when: float, msg_id: bytes) -> None:
        when = math.ceil(when * 1000.0) / 1000.0
        self._deadline_seq += 1
        heapq.heappush(self._deadlines, (when, self._deadline_seq, msg_id))
        if when < self._wakeup_at:
            self._schedule_wakeup(when)

    def _schedule_wakeup(self, when: float) -> None:
        self._wakeup_at = when
        self._wakeups.append(self._loop.call_at(when, self._expire_due))

    def _expire_due(self) -> None:
        now = self._loop.time() + 1e-6
        self._wakeups = [h for h in self._wakeups if h.when() > now]
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, msg_id = heapq.heappop(deadlines)
            pending = self._outstanding.get(msg_id)
            if pending is None:
                continue  # answered already
            if pending.timeout_at <= now:
                self._on_timeout(msg_id, pending)
            elif pending.on_stall is not None and pending.stall_at <= now:
                on_stall, pending.on_stall = pending.on_stall, None
                on_stall()
        if deadlines and (deadlines[0][0] < self._wakeup_at or self._wakeup_at <= now):
            self._schedule_wakeup(deadlines[0][0])
        elif not deadlines:
            self._wakeup_at = math.inf

    def _on_timeout(self, msg_id: bytes, pending: _Pending) -> None:
        del self._outstanding[msg_id]
        self.stats.timeouts += 1
        # only what a late answer needs: not the callbacks (and whatever they hold)
        self._expired[msg_id] = (pending.address, pending.sent_at, pending.node_id, pending.prove)
        if len(self._expired) > _MAX_EXPIRED:
            self._expired.popitem(last=False)
        if pending.node_id is not None:
            self.table.failed(pending.node_id)
        pending.on_reply(False, None)

    def ping_contact(self, contact: Contact) -> asyncio.Future[Reply]:
        """Ping a contact (ping-before-evict); the routing table hears of the outcome."""
        return self.call(contact.address, "ping", [self.own_id], contact.id)

    def ping_address(self, address: Address) -> asyncio.Future[Reply]:
        """Ping an address whose node ID we may not know (bootstrap)."""
        return self.call(address, "ping", [self.own_id])

    def store_at(
        self, address: Address, node_id: bytes, key: bytes, data: bytes
    ) -> asyncio.Future[Reply]:
        """A store request of record bytes `data` at location `key`."""
        return self.call(address, "store", [self.own_id, key, data], node_id)


def _proof_parts(body: Any) -> tuple[Any, bytes, bytes] | None:
    """``(answer, public key, signature)`` of an answer wrapped with a proof, if well formed."""
    if not (isinstance(body, dict) and body.keys() == {"answer", "proof"}):
        return None
    proof = body["proof"]
    if not (
        isinstance(proof, list) and len(proof) == 2 and all(isinstance(p, bytes) for p in proof)
    ):
        return None
    return body["answer"], proof[0], proof[1]


def _source(addr: Address) -> str:
    """What rate limits count by: the IP address, but on loopback (many nodes, one address)
    the IP and port."""
    host = addr[0]
    if host.startswith("127.") or host == "::1":
        return f"{host}:{addr[1]}"
    return host


def _ids_ok(values: list[Any]) -> bool:
    return all(isinstance(v, bytes) and len(v) == 20 for v in values)
