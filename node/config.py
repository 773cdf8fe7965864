"""Node configuration and the injectable clock."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from node.authorities import SHIPPED_AUTHORITIES
from records import Identity, NamespacedValidator, Validator, default_validators
from records.drd import DrdValidator, TicketAuthorities

DEFAULT_PORT = 8468
MiB = 1024 * 1024


class Clock(Protocol):
    """Wall-clock time for record dates. The node never reads the system clock itself."""

    def now_ms(self) -> int:
        """Current Unix time in milliseconds."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        """Current Unix time in milliseconds."""
        return time.time_ns() // 1_000_000


class LoopClock:
    """Wall time that follows an event loop's clock: ``epoch_ms`` plus the loop's seconds.

    On a virtual-time loop (the simulator's) record dates then move with virtual time.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, epoch_ms: int) -> None:
        self._loop = loop
        self._offset_ms = epoch_ms - int(loop.time() * 1000)

    def now_ms(self) -> int:
        """``epoch_ms`` plus the loop time elapsed since this clock was made."""
        return self._offset_ms + int(self._loop.time() * 1000)


# Shaped like ``loop.create_datagram_endpoint(protocol_factory, local_addr=...)`` (DESIGN §5).
EndpointFactory = Callable[..., Awaitable[tuple[asyncio.DatagramTransport, Any]]]


@dataclass(frozen=True)
class NodeConfig:
    """Everything a `DHTNode` can be told. Defaults suit a node on the public internet.

    Times are seconds (they drive the event loop) except where a name ends in ``_ms``.
    """

    host: str = "0.0.0.0"
    """Address to bind."""
    port: int = DEFAULT_PORT
    """UDP port to bind; 0 picks a free one."""
    data_dir: Path | None = None
    """Where the key (``node.key``) and records (``records.sqlite3``) live. None: nothing on disk
    (a fresh identity each start unless `identity` is given, records in memory only)."""
    bootstrap: tuple[tuple[str, int], ...] = ()
    """(ip, port) of nodes to join through."""
    identity: Identity | None = None
    """Use this identity instead of the key file in `data_dir`."""

    k: int = 20
    """Bucket size and how many closest nodes a lookup must hear from."""
    alpha: int = 3
    """Requests a lookup keeps in flight (each path of a get: `get_alpha`)."""
    get_alpha: int = 4
    """Requests each path of a get keeps in flight. Measured (`lookup`, 10,000 nodes, seeds 1
    and 2): 4 instead of 3 took gets from p50 308 and 303 ms to 296 and 290, for 35 messages
    instead of 27; among 500 nodes on 127.0.0.1, where a get's latency is CPU, 23 find_values
    instead of 18 and p95 about 1 ms more."""
    replicas: int = 5
    """How many of the closest nodes store each record (r)."""

    min_timeout: float = 0.2
    """Lower bound of the adaptive per-peer RPC timeout. A busy host answers loopback
    requests in tens of milliseconds; a lower floor counted those late answers as failures."""
    min_expected_rtt: float = 0.01
    """A lookup stops waiting for an answer (without counting it failed) after the peer's
    expected round trip, but never sooner than this."""
    max_timeout: float = 5.0
    """Upper bound of the adaptive per-peer RPC timeout."""
    initial_timeout: float = 1.0
    """Timeout before any round trip has been measured."""
    stale_after: int = 3
    """Consecutive failures after which a contact is replaced (if a replacement is waiting)."""
    drop_after: int = 5
    """Consecutive failures after which a contact is dropped even with no replacement."""

    refresh_interval: float = 3600.0
    """A bucket without lookups for this long is refreshed (paper §2.3)."""
    republish_interval: float = 1800.0
    """Originators re-put their records this often until they expire."""
    replicate_interval: float = 600.0
    """Holders push records to close nodes that do not have them yet this often."""
    sweep_interval: float = 60.0
    """Expired records are removed this often."""
    contacts_save_interval: float = 300.0
    """The routing table is saved to ``contacts.json`` in `data_dir` this often, and when the
    node stops; a restarted node rejoins through those contacts (after each proves its ID
    again), with no `bootstrap` needed."""
    bootstrap_retry_interval: float = 60.0
    """While its routing table holds fewer than k contacts, a node retries the bootstrap nodes
    that are not in it: after 1 s, then at doubling intervals up to this one."""

    max_store_bytes: int = 64 * MiB
    """Quota on the bytes of records held."""
    stores_per_source_per_s: float = 20.0
    """Sustained store requests accepted per source per second (a source is an IP address; on
    loopback, where many nodes share one, an IP and port)."""
    store_burst: int = 100
    """Store requests a source may send at once before being throttled."""
    lookups_per_source_per_s: float = 100.0
    """Sustained ping / find_node / find_value requests answered per source per second."""
    lookup_burst: int = 500
    """Such requests a source may send at once before being throttled."""
    stores_per_s: float = 2_000.0
    """Store requests accepted per second from everyone together."""
    lookups_per_s: float = 20_000.0
    """Ping / find_node / find_value requests answered per second from everyone together."""
    max_pending_requests: int = 512
    """Requests handled concurrently (those that must wait on disk); more are dropped."""
    max_calls_in_flight: int = 64
    """RPCs this node keeps in flight; more wait in a queue and go out as answers come in
    (congestion control: a burst of lookups is slowed down, not lost to full socket buffers)."""
    max_outstanding_calls: int = 10_000
    """RPCs that may wait in that queue; more fail at once."""
    receive_buffer: int = 4 * MiB
    """Socket receive buffer asked of the kernel (it may grant less: ``net.core.rmem_max``)."""
    ban_seconds: float = 3600.0
    """How long a node or address caught forging (a bad signature, a key that does not match
    its ID, a forged proof) is shunned."""

    mode: str = "server"
    """``server``: answer queries and sit in others' routing tables. ``client`` (a node others
    cannot reach: behind NAT, or by choice; BEP 43): ask and store through others, answer
    nothing but notifications of its own subscriptions, enter no routing table. ``auto``: start
    as a client, ask peers to have others ping it, and turn server once `auto_server_after`
    distinct peers have reached it unasked."""
    auto_server_after: int = 3
    """Distinct peers that must reach an ``auto`` node unasked before it turns server."""
    listen_holders: int = 3
    """A subscription (`DHTNode.subscribe`, `watch`) registers at this many of the closest
    holders of the record (OpenDHT registers at 4)."""
    listen_refresh: float = 300.0
    """A server renews its subscriptions this often (a holder keeps one for up to three times
    as long, at most `max_listen_ttl`); the renewal's answer says what the holder has, so a lost
    notification is noticed then. A client renews every `client_keepalive` instead: the
    renewals hold its NAT mapping open. (Measured, `chat-idle`: renewals are most of an idle
    chat device's traffic.)"""
    client_keepalive: float = 25.0
    """How often a client renews its subscriptions (NAT mappings often lapse after 30 s)."""
    max_listen_ttl: float = 600.0
    """The longest a holder keeps a subscription without a renewal."""
    max_listeners_per_key: int = 32
    """Subscriptions a holder keeps per location (more are refused and counted)."""
    max_listeners_per_source: int = 64
    """Subscriptions a holder keeps per source (an IP address, an IPv6 /64)."""
    max_listeners: int = 10_000
    """Subscriptions a holder keeps in all."""

    prove_ids: bool = True
    """A contact enters the routing table (and so can be chosen to store records) only after
    signing a fresh challenge with the key behind its ID; stock `kademlia` nodes cannot, so they
    may route through this node but are never used. False trusts claimed IDs, as stock does."""

    proven_cache_size: int = 1024
    """Nodes outside the routing table whose proofs are remembered (ID and address, least
    recently used dropped), so a lookup does not ask them again."""

    get_paths: int = 3
    """Disjoint paths a get's lookup takes (S/Kademlia): a get succeeds if one path avoids the
    malicious nodes. Each path hears from its share of the k closest; 1 is a plain lookup
    (about 40 % fewer messages, measurably less robust). The lookup that places a record (put,
    republish) takes as many paths, so an update reaches honest holders if one path does."""

    proximity: bool = True
    """Proximity routing and neighbour selection: a lookup asks, among candidates in the same
    XOR bucket as seen from the target, the one with the lowest round trip first; a full bucket
    takes a newcomer that answers in at most half the round trip of its slowest member (who is
    parked as a replacement). False: XOR order only, oldest contacts kept (stock Kademlia)."""
    get_quorum: int = 3
    """A get ends as soon as this many of the `replicas` nearest peers it met hold the same
    valid copy, none of those that answered holds another or none, and all its paths but
    `get_lagging_paths` have reached their nearest peers (`node.lookup.copies_agree`). With the
    default 3 of 5, any write stored on a majority of the 5 is among them, so a newer version
    shows as disagreement and the get waits for every path as before. 0: a get always waits
    for every path's window."""
    get_lagging_paths: int = 2
    """Paths of a get that may still be walking in when the nearest copies agree, if none of
    them has met one of the `replicas` nearest peers without hearing from it; at least one
    path must have converged. 0 waits for every path, as gets did before. Measured over seeds
    1-4 of `adversarial --malicious 0.2 --bootstrap 3 --update` (colluders keep stale copies
    and hide the update's honest holders), with `get_alpha` 4: gets returned the update in
    98.5 % of cases, 98.4 % waiting for every path with `get_alpha` 3, at p50 303-337 ms
    instead of 352-395. With `get_alpha` 3 alone, `lookup` at 10,000 nodes: p50 308 ms
    instead of 373."""

    seed: int | None = None
    """Seed for the node's random choices (timer jitter, refresh targets; simulations);
    None: unpredictable. Message IDs come from `randbytes`."""
    randbytes: Callable[[int], bytes] = field(default=os.urandom, compare=False)
    """Source of random bytes for message IDs and challenges (they must be unpredictable on
    a real network; a simulation injects a seeded one)."""
    drd_authorities: TicketAuthorities | None = SHIPPED_AUTHORITIES
    """Ticket authorities whose quorum every /drd/ entry's ticket must carry (seed 000); the
    default is the set shipped in `node.authorities`. None: tickets are not checked (any
    self-made one passes). Not used when `validator` is given."""
    clock: Clock = field(default_factory=SystemClock, compare=False)
    """Wall clock for record dates."""
    validator: Validator | None = field(default=None, compare=False)
    """Record validator; None: `records.default_validator()`, its ``drd`` namespace checking
    tickets against `drd_authorities`."""
    transport_factory: EndpointFactory | None = field(default=None, compare=False)
    """Datagram endpoint factory; None: the event loop's UDP sockets."""
    backend: Any = field(default=None, compare=False)
    """A `node.storage.RecordBackend` to persist records in; None: SQLite in `data_dir` if set."""

    def __post_init__(self) -> None:
        if self.data_dir is not None and not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "bootstrap", _addresses(self.bootstrap))
        made = isinstance(self.validator, _TicketCheckingValidator)
        if self.validator is None or made:  # made here: a copy may name other authorities
            object.__setattr__(self, "validator", _TicketCheckingValidator.of(self.drd_authorities))
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 0..65535")
        for name in (
            "k",
            "alpha",
            "get_alpha",
            "replicas",
            "stale_after",
            "drop_after",
            "store_burst",
            "lookup_burst",
            "get_paths",
            "max_calls_in_flight",
            "auto_server_after",
            "listen_holders",
            "max_listeners_per_key",
            "max_listeners_per_source",
            "max_listeners",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.replicas > self.k:
            problems.append(f"replicas ({self.replicas}) cannot exceed k ({self.k})")
        if not 0 <= self.get_quorum <= self.replicas:
            problems.append(f"get_quorum must be in 0..replicas ({self.replicas})")
        if self.get_lagging_paths < 0:
            problems.append("get_lagging_paths must not be negative")
        if not 0 < self.min_timeout <= self.initial_timeout <= self.max_timeout:
            problems.append("need 0 < min_timeout <= initial_timeout <= max_timeout")
        if not 0 < self.min_expected_rtt <= self.min_timeout:
            problems.append("need 0 < min_expected_rtt <= min_timeout")
        if self.drop_after < self.stale_after:
            problems.append("drop_after must be at least stale_after")
        for name in (
            "refresh_interval",
            "republish_interval",
            "replicate_interval",
            "sweep_interval",
            "bootstrap_retry_interval",
            "contacts_save_interval",
            "listen_refresh",
            "client_keepalive",
            "max_listen_ttl",
            "stores_per_source_per_s",
            "lookups_per_source_per_s",
            "stores_per_s",
            "lookups_per_s",
            "ban_seconds",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.mode not in ("server", "client", "auto"):
            problems.append(f"mode {self.mode!r} is not server, client or auto")
        if self.proven_cache_size < 0:
            problems.append("proven_cache_size must not be negative")
        if self.max_store_bytes < 0:
            problems.append("max_store_bytes cannot be negative")
        if problems:
            raise ValueError("invalid NodeConfig: " + "; ".join(problems))


def _addresses(items: Sequence[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    out = []
    for item in items:
        host, port = item
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"bootstrap address {item!r} is not (host, port)")
        out.append((host, port))
    return tuple(out)


class _TicketCheckingValidator(NamespacedValidator):
    """`records.default_validator()` whose ``drd`` namespace checks tickets against a
    `NodeConfig`'s authorities."""

    @classmethod
    def of(cls, authorities: TicketAuthorities | None) -> _TicketCheckingValidator | None:
        if authorities is None:
            return None
        validators = default_validators()
        validators["drd"] = DrdValidator(ticket_check=authorities.check)
        return cls(validators)
