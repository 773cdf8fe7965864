"""Anonymous key exchange (seed 002) on a node: the key-server role and the client.

*Key server* (``NodeConfig.key_server``, ``python -m node --key-server``): holds posted key parts
by the hash of their key ID for a short TTL, in bounded memory. A new post from a sender (an
IP:port) replaces the sender's previous one (seed 002: "write over any other requests it has
made"); Get Key hands a part out once and forgets it. A node without the role answers Post and
Get with the seed's "offline" status.

*Client* (every node): `KeyExchange.send_key` makes or takes a key of at least 16 bytes whose
last byte is 0xFF, finds the key servers among the nodes the DHT shows it, splits the key into
parts of allowed sizes (at least two, at most one per key server found), posts each part to a
different key server, and sends the receiver a Signal naming where the parts wait. A node
receiving a Signal fetches the parts, reassembles and checks the key, answers with the parts it
used, and hands the key to the application: to the handlers registered with
`add_key_handler` (a directory server takes its sessions' keys so), else to the
`KeyExchange.received` queue.

All of it travels over the node's own UDP port (see `records.rke` for the framing).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.engine import Limits
from node.errors import NodeNotRunning
from node.routing import Address
from node.tasks import cancel_and_wait
from records.errors import KeyExchangeFailed, RkeError
from records.rke import (
    GET_KEY,
    KEY_LAST_BYTE,
    KEY_LENGTHS,
    MAX_SIGNAL_PARTS,
    MIN_PARTS,
    PADDING_SIZE,
    POST_KEY,
    RESPONSE_FLAG,
    SIGNAL,
    GetKeyStatus,
    PartLocation,
    PostKeyStatus,
    SignalStatus,
    check_key,
    decode_get_key,
    decode_get_key_answer,
    decode_post_key,
    decode_signal,
    decode_signal_answer,
    encode_get_key,
    encode_get_key_answer,
    encode_post_key,
    encode_signal,
    encode_signal_answer,
    key_id_hash,
    parse_response,
    request,
    response,
    split_sizes,
)

if TYPE_CHECKING:
    from node.server import DHTNode

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _HeldPart:
    part: bytes
    sender: Address
    expires: float


REQUEST_LIMITS = Limits(per_source_rate=20.0, per_source_burst=40.0, rate=500.0)
"""Budget of Post Key / Get Key / Signal datagrams, in tokens: a request costs one, a Signal
one more per part it names (each costs us a Get Key to a server the sender chose)."""


def request_cost(data: bytes) -> int:
    """Tokens a request datagram costs: 1, plus the parts a Signal makes us fetch."""
    if data[0] == SIGNAL and len(data) > 17:
        return 1 + data[17]  # seed 002: the Signal's part count follows its 16-byte challenge
    return 1


class KeyExchange:
    """One node's key-exchange service (server role optional) and client: a node plugin
    (`DHTNode(config, services=[KeyExchange(...)])`).

    Bounded: at most `max_collections` Signals are collected at once (more are answered FAIL
    and counted), at most `max_calls` Post / Get / Signal calls wait for answers, and every
    datagram it answers is paid for from the node's budgets (`REQUEST_LIMITS` on top)."""

    def __init__(
        self,
        *,
        serve: bool = False,
        ttl: float = 300.0,
        max_parts: int = 10_000,
        max_collections: int = 16,
        max_calls: int = 256,
        rng: random.Random | None = None,
        find_servers: Callable[[], Awaitable[list[Address]]] | None = None,
    ) -> None:
        if ttl <= 0 or max_parts < 1 or max_collections < 1 or max_calls < 1:
            raise ValueError("ttl must be positive; max_parts, max_collections, max_calls >= 1")
        self.serve = serve
        self.ttl = ttl
        self.max_parts = max_parts
        self.max_collections = max_collections
        self.max_calls = max_calls
        self.rng = rng or random.Random()
        self._rng_given = rng is not None
        self.find_servers = find_servers
        self.stats: Counter[str] = Counter()
        self.received: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        """Keys reassembled from signals, for the application to take (when no key handler is
        registered; the newest 64 are kept)."""
        self._key_handlers: list[Callable[[bytes], None]] = []
        self.node: DHTNode | None = None
        self._randbytes: Callable[[int], bytes] = os.urandom
        self._parts: OrderedDict[bytes, _HeldPart] = OrderedDict()  # by key-ID hash, oldest first
        self._by_sender: dict[Address, bytes] = {}
        # calls in flight by challenge: (server, command, answer)
        self._pending: dict[bytes, tuple[Address, int, asyncio.Future[tuple[int, bytes]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, node: DHTNode) -> None:
        """Answer Post Key / Get Key / Signal on `node`'s port, within its budgets."""
        self.node = node
        self._randbytes = node.config.randbytes
        if not self._rng_given:
            self.rng = node.rng  # seeded in simulations
        if self.find_servers is None:
            self.find_servers = node.random_nodes
        # through lambdas, so that the methods are looked up at each datagram (tests patch them)
        node.register_datagrams(
            "rke",
            (POST_KEY, GET_KEY, SIGNAL),
            lambda data, addr, now: self._on_request(data, addr, now),
            limits=REQUEST_LIMITS,
            cost=request_cost,
        )
        node.register_datagrams(
            "rke_answer",
            [RESPONSE_FLAG | c for c in (POST_KEY, GET_KEY, SIGNAL)],
            lambda data, addr, now: self._on_response(data, addr, now),
        )

    async def start(self) -> None:
        """Nothing to start: the service answers as soon as it is attached."""

    def add_key_handler(self, handler: Callable[[bytes], None]) -> None:
        """From now on, hand every key reassembled here to `handler` (and to the other
        handlers) instead of the `received` queue. A handler is called before the Signal is
        answered, so the key is in its hands by the time `send_key` returns to its sender."""
        self._key_handlers.append(handler)

    def remove_key_handler(self, handler: Callable[[bytes], None]) -> None:
        """Stop handing keys to `handler` (keys go to `received` once no handler is left)."""
        if handler in self._key_handlers:
            self._key_handlers.remove(handler)

    @property
    def parts_held(self) -> dict[bytes, bytes]:
        """Parts this node holds now, by key-ID hash (for inspection)."""
        self._expire(asyncio.get_running_loop().time())
        return {h: held.part for h, held in self._parts.items()}

    async def close(self) -> None:
        """Stop: fail calls in flight, cancel signal handling."""
        for _, _, future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
        await cancel_and_wait(self._tasks)

    def _node(self) -> DHTNode:
        if self.node is None or not self.node.running:
            raise NodeNotRunning("the key exchange is not attached to a running node")
        return self.node

    def _drop(self, reason: str) -> None:
        self.stats[f"dropped.{reason}"] += 1
        if self.node is not None and self.node.engine is not None:
            self.node.engine.stats.dropped[f"rke_{reason}"] += 1

    # -- server side -----------------------------------------------------------------------

    def _on_request(self, data: bytes, addr: Address, now: float) -> None:
        command, body = data[0], data[1:]
        challenge = body[:16]
        self.stats[f"requests.{command}"] += 1
        if command == POST_KEY:
            status = self._post(body, addr, now)
            self._answer(POST_KEY, status, challenge, addr)
        elif command == GET_KEY:
            status, answer = self._get(body, now)
            self._answer(GET_KEY, status, challenge, addr, answer)
        else:
            self._signal(body, addr)

    def _answer(
        self, command: int, status: int, challenge: bytes, addr: Address, body: bytes = b"\xe3\xe3"
    ) -> None:
        self.stats[f"answers.{command}.{status}"] += 1
        self._node().send_datagram(response(command, status, challenge, body), addr)

    def _expire(self, now: float) -> None:
        while self._parts:
            key_hash, held = next(iter(self._parts.items()))
            if held.expires > now:
                break
            self._forget(key_hash)

    def _forget(self, key_hash: bytes) -> _HeldPart | None:
        held = self._parts.pop(key_hash, None)
        if held is not None and self._by_sender.get(held.sender) == key_hash:
            del self._by_sender[held.sender]
        return held

    def _post(self, body: bytes, addr: Address, now: float) -> int:
        if not self.serve:
            return PostKeyStatus.OFFLINE
        post, status = decode_post_key(body)
        if post is None:
            return status
        self._expire(now)
        previous = self._by_sender.get(addr)
        if previous is not None:  # seed 002: a new request writes over the sender's last one
            self._forget(previous)
        if len(self._parts) >= self.max_parts:
            return PostKeyStatus.OFFLINE  # full: "service temporarily offline"
        key_hash = key_id_hash(post.key_id)
        self._forget(key_hash)
        self._parts[key_hash] = _HeldPart(post.part, addr, now + self.ttl)
        self._by_sender[addr] = key_hash
        return PostKeyStatus.SUCCESS

    def _get(self, body: bytes, now: float) -> tuple[int, bytes]:
        if not self.serve:
            return GetKeyStatus.OFFLINE, b"\xe3\xe3"
        parsed = decode_get_key(body)
        if parsed is None:
            return GetKeyStatus.FAIL, b"\xe3\xe3"
        self._expire(now)
        _, key_hash = parsed
        held = self._forget(key_hash)  # handed out once, then forgotten
        if held is None:
            return GetKeyStatus.KEY_NOT_FOUND, b"\xe3\xe3"
        return GetKeyStatus.SUCCESS, encode_get_key_answer(key_hash, held.sender[0], held.part)

    # -- receiving a signal ----------------------------------------------------------------

    def _signal(self, body: bytes, addr: Address) -> None:
        parsed = decode_signal(body)
        if parsed is None:
            self._answer(SIGNAL, SignalStatus.FAIL, body[:16], addr, encode_signal_answer([]))
            return
        challenge, locations = parsed
        if len(self._tasks) >= self.max_collections:
            self._drop("busy")  # every collection slot taken: this Signal fails at once
            used = [False] * len(locations)
            self._answer(SIGNAL, SignalStatus.FAIL, challenge, addr, encode_signal_answer(used))
            return
        task = asyncio.get_running_loop().create_task(self._collect(challenge, locations, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _collect(
        self, challenge: bytes, locations: list[PartLocation], addr: Address
    ) -> None:
        answers = await asyncio.gather(
            *(self.get_part(loc.key_hash, (loc.host, loc.port)) for loc in locations),
            return_exceptions=True,
        )
        parts = [a if isinstance(a, bytes) else None for a in answers]
        used = [p is not None for p in parts]
        key = b"".join(p for p in parts if p is not None)
        complete = all(used)
        try:
            check_key(key)
        except RkeError:
            complete = False
        if complete:
            self._deliver(key)
        status = SignalStatus.SUCCESS if complete else SignalStatus.FAIL
        self._answer(SIGNAL, status, challenge, addr, encode_signal_answer(used))

    def _deliver(self, key: bytes) -> None:
        self.stats["keys_received"] += 1
        if self._key_handlers:
            for handler in list(self._key_handlers):
                try:
                    handler(key)
                except Exception:
                    log.exception("a key handler failed")
            return
        if self.received.full():
            self.received.get_nowait()  # keep the newest keys
        self.received.put_nowait(key)

    # -- client side -----------------------------------------------------------------------

    def _on_response(self, data: bytes, addr: Address, now: float) -> None:
        try:
            command, status, challenge, body = parse_response(data)
        except RkeError:
            self._drop("malformed_response")
            return
        waiting = self._pending.get(challenge)
        if waiting is None or waiting[:2] != (addr, command):
            self._drop("unexpected_response")
            return
        del self._pending[challenge]
        if not waiting[2].done():
            waiting[2].set_result((status, body))

    async def _call(
        self, command: int, body: bytes, addr: Address, within: float
    ) -> tuple[int, bytes]:
        node = self._node()
        if len(self._pending) >= self.max_calls:
            self._drop("too_many_calls")
            raise KeyExchangeFailed("too many key-exchange calls in flight")
        challenge = body[:16]
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[challenge] = (addr, command, future)
        node.send_datagram(request(command, body), addr)
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            raise KeyExchangeFailed(f"no answer from {addr[0]}:{addr[1]}") from None
        finally:
            self._pending.pop(challenge, None)

    def _timeout(self) -> float:
        return 2 * self._node().timeout_for(None)

    def _random(self, size: int) -> bytes:
        return self._randbytes(size)

    async def post_part(self, part: bytes, server: Address) -> bytes:
        """Post one part to `server`; returns its key-ID hash. `KeyExchangeFailed` if refused."""
        key_id = self._random(16)
        start = self.rng.randrange(PADDING_SIZE - len(part) + 1)
        body = encode_post_key(self._random(16), key_id, part, start, self._random(PADDING_SIZE))
        status, _ = await self._call(POST_KEY, body, server, self._timeout())
        if status != PostKeyStatus.SUCCESS:
            raise KeyExchangeFailed(f"{server[0]}:{server[1]} refused the part (status {status})")
        return key_id_hash(key_id)

    async def get_part(self, key_hash: bytes, server: Address) -> bytes:
        """Fetch (and so remove) the part stored under `key_hash` at `server`."""
        body = encode_get_key(self._random(16), key_hash)
        status, answer = await self._call(GET_KEY, body, server, self._timeout())
        if status != GetKeyStatus.SUCCESS:
            raise KeyExchangeFailed(f"{server[0]}:{server[1]} has no such part (status {status})")
        try:
            return decode_get_key_answer(answer).part
        except RkeError as exc:
            raise KeyExchangeFailed(f"bad Get Key answer from {server}: {exc}") from exc

    def new_key(self, size: int = 32) -> bytes:
        """A random key of `size` bytes whose last byte is 0xFF (seed 002)."""
        key = self._random(size - 1) + bytes([KEY_LAST_BYTE])
        check_key(key)
        return key

    async def send_key(
        self,
        receiver: Address,
        key: bytes | None = None,
        servers: list[Address] | None = None,
        *,
        min_parts: int = MIN_PARTS,
        max_part: int = max(KEY_LENGTHS),
    ) -> bytes:
        """Post `key` (a new 32-byte one by default) in parts to different key servers and
        signal `receiver`; returns the key once the receiver has reassembled it.

        The nodes found (or `servers`) are first asked which serve keys; the key is split into
        as many parts as there are key servers, or fewer, at least `min_parts` (two: seed 002),
        each at most `max_part` bytes, so it needs at least `min_parts` key servers besides this
        node and the receiver (`KeyExchangeFailed`)."""
        key = key if key is not None else self.new_key()
        check_key(key)
        if min_parts < MIN_PARTS or max_part not in KEY_LENGTHS:
            raise ValueError(f"min_parts >= {MIN_PARTS}; max_part one of {KEY_LENGTHS}")
        if servers is None:
            if self.find_servers is None:
                raise KeyExchangeFailed("no way to find key servers")
            servers = await self.find_servers()
        own = self._node().address
        candidates = [s for s in servers if s != receiver and s != own]
        found = await self.key_servers(candidates)
        if len(found) < min_parts:
            raise KeyExchangeFailed(
                f"found {len(found)} key server(s) among {len(candidates)} nodes asked; a key "
                f"exchange needs at least {min_parts} besides the sender and the receiver"
            )
        self.rng.shuffle(found)
        locations = await self._post_parts(key, found, min_parts=min_parts, max_part=max_part)
        body = encode_signal(self._random(16), locations)
        status, answer = await self._call(SIGNAL, body, receiver, 4 * self._timeout())
        used = decode_signal_answer(answer, len(locations))
        if status != SignalStatus.SUCCESS or not all(used):
            raise KeyExchangeFailed(f"the receiver could not collect every part (used {used})")
        return key

    async def key_servers(self, candidates: list[Address]) -> list[Address]:
        """Those of `candidates` that serve keys: each is asked for a part under a random hash
        (no side effect); a key server says "not found", any other node "offline"."""

        async def serves(server: Address) -> bool:
            body = encode_get_key(self._random(16), self._random(16))
            try:
                status, _ = await self._call(GET_KEY, body, server, self._timeout())
            except KeyExchangeFailed:
                return False
            return status != GetKeyStatus.OFFLINE

        answers = await asyncio.gather(*(serves(c) for c in candidates))
        return [c for c, ok in zip(candidates, answers, strict=True) if ok]

    async def _post_parts(
        self,
        key: bytes,
        servers: list[Address],
        *,
        min_parts: int = MIN_PARTS,
        max_part: int = max(KEY_LENGTHS),
    ) -> list[PartLocation]:
        """Post `key` in parts, one per server of `servers` (consumed); a server that refuses
        or is silent is passed over and what is left of the key is split again over the
        servers left."""
        locations: list[PartLocation] = []
        offset = 0
        plan: list[int] = []
        while offset < len(key):
            if not plan:
                room = min(len(servers), MAX_SIGNAL_PARTS - len(locations))
                least = min_parts if not locations else 1
                plan = self._split(len(key) - offset, room, least=least, max_part=max_part)
            size = plan.pop(0)
            server = servers.pop(0)
            try:
                key_hash = await self.post_part(key[offset : offset + size], server)
            except KeyExchangeFailed as exc:
                log.debug("key server %s:%d passed over: %s", *server, exc)
                plan = []
                continue
            locations.append(PartLocation(key_hash, server[0], server[1]))
            offset += size
        return locations

    def _split(self, size: int, servers: int, *, least: int, max_part: int) -> list[int]:
        """Random part sizes for `size` bytes over at most `servers` servers, in at least
        `least` parts (the whole key in at least two; what is left of it after a refusal in
        one or more), none above `max_part` bytes."""
        choices = [self.rng.randrange(MAX_SIGNAL_PARTS) for _ in range(size)]
        try:
            return split_sizes(size, choices, max_parts=servers, min_parts=least, max_size=max_part)
        except RkeError:
            raise KeyExchangeFailed(
                f"not enough key servers left for {size} bytes of the key ({servers} left)"
            ) from None
