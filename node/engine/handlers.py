"""The RPCs a node answers: a table of handlers by name, and answers sized to a datagram.

A handler takes a parsed `Request` and returns the answer's body; `DEFERRED` means it answers
later (a store waiting for the disk). Simulations subclass `RequestHandlers` to make nodes that
lie (`closest_as_list`, `find_value`, `store`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.engine.proofs import CHALLENGES, PROVABLE, PROVE, wrap_answer
from node.routing import Address, family_of
from node.wire import MAX_DATAGRAM_SIZE, encode_response
from records import InvalidRecord, decode_record
from records.errors import StoreFull
from records.identity import prove_node

if TYPE_CHECKING:
    from node.engine.core import Engine

ARITY = {
    "ping": 1,
    "store": 3,
    "find_node": 2,
    "find_value": 2,
    "stun": 0,
    "listen": 4,  # sender ID, location, cookie (b"" at first), seconds wanted
    "notify": 3,  # sender ID, location, summary of the record held (see `summarize`)
    "probe": 1,  # sender ID: have a third node ping me (am I reachable?)
    "dial": 3,  # sender ID, host, port: ping that address (for the sender's probe)
}
"""Arguments each RPC takes (without the markers that may follow: `PROVE`, `CLIENT`)."""
# Which arguments are 20-byte IDs: the sender's, and the target or location.
_ID_ARGS = {
    "ping": 1,
    "store": 2,
    "find_node": 2,
    "find_value": 2,
    "stun": 0,
    "listen": 2,
    "notify": 2,
    "probe": 1,
    "dial": 1,
}
CLIENT = "client"
"""A request's last argument from a node in client mode (BEP 43's read-only nodes): answer
it, but never put its sender in a routing table or ping it back."""
MAX_SUMMARY = 32
"""Values a notification or a listen answer describes at most (the newest first)."""

DEFERRED: Any = object()
"""A handler's answer that comes later (`PendingWrite`): the engine sends nothing now."""
NO_ANSWER: Any = object()
"""A handler's answer when the request is dropped unanswered (counted by the handler)."""


@dataclass(slots=True)
class Request:
    """A parsed request."""

    msg_id: bytes
    name: str
    args: list[Any]
    addr: Address
    now: float
    prove: bool
    client: bool = False
    challenges: bool = False

    @property
    def sender_id(self) -> bytes | None:
        """The ID the sender claims (every RPC but stun carries it first)."""
        return self.args[0] if self.args else None


@dataclass(slots=True)
class PendingWrite:
    """A store accepted in memory whose answer waits for the disk: the adapter awaits
    `work`, then tells the engine (`Engine.write_finished`)."""

    request: Request
    work: Awaitable[None]


@dataclass(slots=True)
class Contacts:
    """A find answer: a value or not, and node triples that may be cut to fit a datagram."""

    value: bytes | None
    nodes: list[list[Any]]

    def body(self, count: int) -> Any:
        """The answer's body with the first `count` nodes: a list, or ``{"value", "nodes"}``
        (ours; stock kademlia answers ``{"value"}`` alone)."""
        if self.value is None:
            return self.nodes[:count]
        return {"value": self.value, "nodes": self.nodes[:count]}


def refusal(reason: str, final: bool = False) -> list[Any]:
    """A store's refusal: ``[False, reason]``, or ``[False, reason, True]`` when no retry of
    the same record will ever be accepted (`InvalidRecord.final`)."""
    return [False, reason, True] if final else [False, reason]


def refused_for_good(body: object) -> bool:
    """A store reply refusing in a way no retry overcomes (the refusal's `final` field)."""
    return isinstance(body, list) and len(body) == 3 and body[0] is False and body[2] is True


def encode_answer(
    msg_id: bytes,
    answer: Any,
    proof: tuple[bytes, bytes] | None,
    challenge: bytes | None = None,
) -> bytes | None:
    """The response datagram for `answer` (wrapped with `proof` and `challenge` if given),
    within `MAX_DATAGRAM_SIZE`: a `Contacts` answer loses its farthest nodes until it fits.
    None if even that cannot fit (nothing we hold is that large: records are at most 8 KiB)."""

    def build(body: Any) -> bytes:
        return encode_response(msg_id, wrap_answer(body, proof, challenge))

    if not isinstance(answer, Contacts):
        data = build(answer)
        return data if len(data) <= MAX_DATAGRAM_SIZE else None
    count = len(answer.nodes)
    data = build(answer.body(count))
    while len(data) > MAX_DATAGRAM_SIZE and count > 0:
        excess = len(data) - MAX_DATAGRAM_SIZE
        per_node = max(1, (len(data) - len(build(answer.body(0)))) // count)
        count = max(0, count - max(1, -(-excess // per_node)))
        data = build(answer.body(count))
    return data if len(data) <= MAX_DATAGRAM_SIZE else None


def parse_request(body: Any) -> Request | str:
    """The request of a body (`msg_id`, `addr` and `now` left to fill in), or the drop reason.
    Markers follow the arguments: `CLIENT`, then `CHALLENGES`, then `PROVE` (the last)."""
    if not (isinstance(body, list) and len(body) == 2 and isinstance(body[1], list)):
        return "malformed"
    name, args = body
    if not isinstance(name, str) or name not in ARITY:
        return "unknown_rpc"
    arity = ARITY[name]
    markers = {"prove": False, "challenges": False, "client": False}
    for key, marker in (("prove", PROVE), ("challenges", CHALLENGES), ("client", CLIENT)):
        if len(args) > arity and args[-1] == marker:
            markers[key] = True
            args = args[:-1]
    if markers["prove"] and name not in PROVABLE:
        return "bad_arguments"
    ids = args[: _ID_ARGS[name]]
    if len(args) != arity or not all(isinstance(v, bytes) and len(v) == 20 for v in ids):
        return "bad_arguments"
    return Request(b"", name, args, ("", 0), 0.0, **markers)


def summarize(values: Any) -> list[list[Any]]:
    """``[id2, creationDate, expirationDate]`` of the newest `MAX_SUMMARY` values of a record:
    enough for a listener to tell whether it holds them already (no values travel)."""
    newest = sorted(values, key=lambda v: (v.creationDate, v.id2), reverse=True)
    return [[v.id2[:64], v.creationDate, v.expirationDate] for v in newest[:MAX_SUMMARY]]


def valid_summary(summary: Any) -> bool:
    """True if `summary` has the shape `summarize` gives."""
    return (
        isinstance(summary, list)
        and len(summary) <= MAX_SUMMARY
        and all(
            isinstance(s, list)
            and len(s) == 3
            and isinstance(s[0], str)
            and isinstance(s[1], int)
            and isinstance(s[2], int)
            for s in summary
        )
    )


class RequestHandlers:
    """The RPCs of `ARITY`, each a method; `table()` maps names to them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def table(self) -> dict[str, Callable[[Request], Any]]:
        """Handlers by RPC name."""
        return {
            "ping": self.ping,
            "find_node": self.find_node,
            "find_value": self.find_value,
            "stun": self.stun,
            "store": self.store,
            "listen": self.listen,
            "notify": self.notify,
            "probe": self.probe,
            "dial": self.dial,
        }

    def ping(self, request: Request) -> Any:
        """Our ID."""
        return self.engine.own_id

    def stun(self, request: Request) -> Any:
        """The address the request came from, as we see it."""
        return [request.addr[0], request.addr[1]]

    def find_node(self, request: Request) -> Any:
        """The k closest good contacts to the target (not the asker), of the asker's address
        family (BEP 32: an IPv4 asker learns IPv4 contacts, an IPv6 one IPv6 contacts)."""
        family = family_of(request.addr)
        return Contacts(None, self.closest_as_list(request.args[1], request.args[0], family))

    def find_value(self, request: Request) -> Any:
        """The record at the target, if held, and the closest contacts."""
        key = request.args[1]
        entry = self.engine.store.get(key, self.engine.clock.now_ms())
        nodes = self.closest_as_list(key, request.args[0], family_of(request.addr))
        return Contacts(entry.data if entry is not None else None, nodes)

    def closest_as_list(
        self, key: bytes, exclude: bytes, family: int | None = None
    ) -> list[list[Any]]:
        """``[id, host, port]`` of the k closest good contacts to `key` (in `family`)."""
        engine = self.engine
        target = int.from_bytes(key, "big")
        contacts = engine.table.closest(
            target, engine.config.k, exclude=exclude, good_only=True, family=family
        )
        return [[c.id, c.address[0], c.address[1]] for c in contacts]

    def store(self, request: Request) -> Any:
        """Validate and keep a record: True, a refusal, or `DEFERRED` until it is on disk."""
        engine = self.engine
        value = request.args[2]
        if not isinstance(value, bytes):
            return engine.refuse("malformed_record")
        reason = engine.store_budget.allow(engine.source_of(request.addr), request.now)
        if reason is not None:
            engine.stats.dropped[reason] += 1
            return refusal("rate_limited")
        if engine.store.holds_exactly(
            request.args[1], value, engine.clock.now_ms(), source=request.args[0]
        ):
            return True  # our very copy: nothing to check, change or write
        if engine.store.backend is not None and not engine.can_defer_write():
            engine.stats.dropped["overloaded"] += 1  # too many writes waiting on the disk
            return NO_ANSWER
        try:
            record = decode_record(value)
            accepted = engine.store.accept(
                request.args[1], record, engine.clock.now_ms(), source=request.args[0]
            )
        except (InvalidRecord, StoreFull) as exc:
            return engine.refuse(exc.reason, getattr(exc, "final", False))
        if accepted.write is None:
            return True
        engine.defer_write(PendingWrite(request, accepted.write))
        return DEFERRED

    def listen(self, request: Request) -> Any:
        """Subscribe the sender to changes of the record at a location: first a cookie, then
        (with it) ``{"ok": seconds, "summary": [...]}`` of what is held now, or a refusal."""
        engine = self.engine
        _, loc, cookie, seconds = request.args
        if not isinstance(cookie, bytes) or not isinstance(seconds, int | float):
            engine.stats.dropped["bad_arguments"] += 1
            return NO_ANSWER
        listeners = engine.listeners
        if not listeners.cookie_ok(cookie, request.addr, loc, request.now):
            return {"cookie": listeners.cookie(request.addr, loc, request.now)}
        ttl = min(float(seconds), engine.config.max_listen_ttl)
        if ttl <= 0:
            listeners.remove(loc, request.addr)
            return {"ok": 0, "summary": []}
        refused = listeners.add(loc, request.args[0], request.addr, ttl, request.now)
        if refused is not None:
            engine.stats.dropped[refused] += 1
            return refusal(refused)
        entry = engine.store.get(loc, engine.clock.now_ms())
        return {"ok": ttl, "summary": summarize(entry.record.values) if entry else []}

    def probe(self, request: Request) -> Any:
        """Have one of our contacts (not the asker) ping the asker's address, as we see it: a
        datagram from a node it never wrote to reaches it only if it is reachable."""
        engine = self.engine
        contacts = [c for c in engine.table if c.id != request.args[0]]
        if not contacts:
            return False
        pick = contacts[int.from_bytes(engine.randbytes(4), "big") % len(contacts)]
        host, port = request.addr
        engine.call(
            pick.address, "dial", [engine.own_id, host, port], pick.id, _ignore, request.now
        )
        return True

    def dial(self, request: Request) -> Any:
        """Ping the address a proven node asks us to (for its asker's probe): one ping for one
        request, so nobody can use us to flood an address."""
        engine = self.engine
        sender, host, port = request.args
        proven = engine.proofs.proven(sender, request.addr, engine.table)
        if not (proven and isinstance(host, str) and isinstance(port, int) and 0 < port < 65536):
            engine.stats.dropped["dial_refused"] += 1
            return False
        if not engine.table.reachable((host, port)):
            return False
        engine.call((host, port), "ping", [engine.own_id], None, _ignore, request.now)
        return True

    def notify(self, request: Request) -> Any:
        """A holder tells us the record at a location changed: True if we listen to it (the
        node then fetches what it lacks), False to end the subscription."""
        engine = self.engine
        _, loc, summary = request.args
        if not valid_summary(summary):
            engine.stats.dropped["bad_arguments"] += 1
            return NO_ANSWER
        on_notify = engine.on_notify
        return bool(
            on_notify is not None and on_notify(loc, summary, request.args[0], request.addr)
        )


def answer_with_proof(engine: Engine, request: Request) -> tuple[bytes, bytes] | None:
    """The proof of our ID for `request`, if it asked for one."""
    if not request.prove:
        return None
    return prove_node(engine.identity, request.msg_id, request.args[0])


def _ignore(_ok: bool, _body: Any) -> None:
    """An answer nobody waits for."""
