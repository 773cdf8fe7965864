"""Iterative lookups with `alpha` requests always in flight (no lockstep rounds).

The stock crawler (`kademlia.crawling`) sends `alpha` requests, waits for all of them (or a 5 s
timeout), then starts the next round, so one dead peer stalls every round. Here each answer,
failure or stall immediately starts the next request to the closest peer not yet asked, and a
request slower than its peer's expected round trip stops counting against `alpha` (its answer is
still used if it comes) and gives up its place among the closest to the next candidate. The
lookup ends once the `count` closest peers it knows (not counting failed or stalled ones) have
answered; when the closest peer known has answered, the rest of those `count` are asked at once
(the paper's final round).

Proximity routing: before that final round, among the candidates equally useful in XOR terms
(in the same bucket as seen from the target: their distances have the same bit length) the
one with the lowest expected round trip is asked first. A get can also end before every path's
window has answered: as soon as enough of the nearest peers hold the same valid copy
(`Agreement`); until their copies disagree, such a get's final round asks only the nearest
peers that decide it. A get gives up on a late peer at twice its expected round trip: the
agreement is then judged without it (its answer, if it comes, still counts) rather than held
until it times out.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from node.routing import Address

NEW, WAITING, STALLED, ANSWERED, FAILED = range(5)

OnReply = Callable[[bool, Any], None]
# query(peer, on_reply, on_stall): send the lookup's request to `peer`; on_reply(ok, answer) once
# answered or timed out, on_stall() if the answer is later than the peer's expected round trip.
# Sends a request to a peer; returns False if nothing was sent (its failure already reported).
Query = Callable[["Peer", OnReply, Callable[[], None]], bool | None]
# rtt_of(node_id): the round trip (seconds) to expect from that node, measured or typical.
RttOf = Callable[[bytes], float]


class Peer:
    """A node met during a lookup."""

    __slots__ = ("address", "depth", "distance", "given_up", "id", "rtt", "state", "value")

    def __init__(
        self, node_id: bytes, address: Address, distance: int, depth: int, rtt: float = 0.0
    ) -> None:
        self.id = node_id
        self.address = address
        self.distance = distance
        self.depth = depth  # 1 for a seed, n+1 for a peer learned from a depth-n peer
        self.rtt = rtt  # the round trip expected (0.0: not considered; -1.0: not known yet)
        self.state = NEW
        self.value: bytes | None = None
        self.given_up = False  # late for long enough that a get's verdict goes without it

    def __lt__(self, other: Peer) -> bool:
        return self.distance < other.distance

    def __repr__(self) -> str:
        return f"Peer({self.id.hex()[:12]}, depth={self.depth}, state={self.state})"


@dataclass
class LookupResult:
    """What a lookup found."""

    closest: list[Peer]
    """Peers that answered, nearest the target first, at most `count`."""
    holders: list[Peer] = field(default_factory=list)
    """Peers that answered with a value (find_value), in the order they answered."""
    messages: int = 0
    """Requests sent."""
    rounds: int = 0
    """Hops: the deepest `depth` among `closest` (a seed is hop 1)."""
    failures: int = 0
    """Requests that timed out or got an unusable answer."""
    liars: int = 0
    """Peers whose value failed validation (their answers were dropped)."""
    unanswered: list[Peer] = field(default_factory=list)
    """Peers asked that never gave a usable answer (timed out, stalled to the end, lied)."""
    agreed: bool = False
    """The lookup ended early because enough of the nearest peers held the same valid copy
    (`Agreement`); peers still being asked then are in neither `closest` nor `unanswered`."""


def proximity_order(candidates: list[Peer]) -> list[Peer]:
    """`candidates` (nearest the target first) in the order to ask them: by XOR bucket as seen
    from the target (the bit length of the distance: peers in one bucket are equally useful
    in XOR terms), then by expected round trip, then by distance."""
    return sorted(candidates, key=lambda p: (p.distance.bit_length(), p.rtt))


AGREE, WAIT, DISAGREE = range(3)


def _left_out(peer: Peer) -> bool:
    """True if a get's verdict goes without `peer`: it failed, or was late for so long that
    the get gave up on it."""
    state = peer.state
    return state == FAILED or (state == STALLED and peer.given_up)


def copies_verdict(peers: Iterable[Peer], replicas: int, quorum: int) -> int:
    """Whether a get may stop, judged on the `replicas` nearest `peers` (given nearest first)
    that have not failed: `AGREE` if at least `quorum` of them answered, each with a valid
    copy, all byte-identical, and none answered without one; `DISAGREE` if that can no longer
    happen among them (one answered without a copy or with another one, or every one has
    answered and they are too few); `WAIT` while some are still being asked.

    A write acknowledged by a majority of the `replicas` nearest and a quorum of
    ``replicas // 2 + 1`` of them always share a node, so a newer version or a value they lack
    shows as disagreement; the get then waits for every path, as it would without this rule.
    Failed peers (timed out, or whose copy did not validate) are skipped, and so are peers
    late for so long that the get gave up on them (`Peer.given_up`); peers still being asked
    or late for less long count among the nearest, so the quorum cannot be made of farther
    nodes while they may answer in time."""
    copy: bytes | None = None
    agreeing = 0
    nearest = 0
    for peer in peers:
        if _left_out(peer):
            continue
        if peer.state == ANSWERED:
            value = peer.value
            if value is None or (copy is not None and value != copy):
                return DISAGREE
            copy = value
            agreeing += 1
        nearest += 1
        if nearest >= replicas:
            break
    if agreeing >= quorum:
        return AGREE
    return WAIT if nearest > agreeing else DISAGREE


def copies_agree(peers: Iterable[Peer], replicas: int, quorum: int) -> bool:
    """True if `copies_verdict` says the get may stop."""
    return copies_verdict(peers, replicas, quorum) == AGREE


class Agreement:
    """Ends every path of a get once `copies_agree` over the peers all paths met, and every
    path has converged (the nearest peer it knows, not failed or late, has answered), or all
    but `lagging` have (at least one) and no path still walking in has met one of the
    `replicas` nearest peers without hearing from it. A path still walking in might yet meet
    nearer nodes, but waiting for every path bought nothing measurable against colluders that
    hide a newer version and cost a fifth of a get's latency (`NodeConfig.get_lagging_paths`).

    Until the copies disagree, a converged path asks only those of its peers that are among
    the `replicas` nearest of all paths (`wanted`), not the rest of its window: the verdict
    depends on those alone. Measured: gets among 500 nodes on 127.0.0.1 sent 20 find_values
    instead of 29 and took 10.7 ms of CPU instead of 20.5; in the lookup scenario (2,000
    nodes) 24 messages instead of 33 at p50, 31 instead of 43 at p95, latency unchanged. Once
    they disagree, every path asks its whole window, as a get without this rule does.
    """

    def __init__(self, replicas: int, quorum: int, lagging: int = 0) -> None:
        self.replicas = replicas
        self.quorum = quorum
        self.lagging = lagging
        """Paths that may still be walking in when the get ends (one path must converge)."""
        self.lookups: list[Lookup] = []
        self.disagreed = False
        """The nearest copies disagreed: every path asks its whole window from then on."""

    def _nearest(self) -> Iterable[Peer]:
        return heapq.merge(*(lookup.peers for lookup in self.lookups), key=_distance)

    @property
    def running(self) -> bool:
        """True while some path has not ended."""
        return any(not lookup.ended for lookup in self.lookups)

    def _deciding(self) -> Iterator[Peer]:
        """The `replicas` nearest peers of every path, not failed nor given up: those
        `copies_verdict` decides on."""
        return islice((peer for peer in self._nearest() if not _left_out(peer)), self.replicas)

    def wanted(self) -> set[Peer]:
        """Peers not asked yet among the deciding ones (`_deciding`)."""
        return {peer for peer in self._deciding() if peer.state == NEW}

    def _awaits_nearest(self, lagging: list[Lookup]) -> bool:
        """True if one of the `lagging` paths has met one of the deciding peers (`_deciding`)
        and not heard from it yet: a lagging path may be left behind, not a nearest peer it
        has found."""
        met = {id(peer) for lookup in lagging for peer in lookup.peers}
        return any(peer.state != ANSWERED and id(peer) in met for peer in self._deciding())

    def check(self, source: Lookup) -> None:
        """After an answer to `source` or a stall in it: stop every path if the rule holds;
        if the copies disagree, let every path ask its whole window; else let the other
        converged paths ask what has become wanted (a failed peer makes room among the
        nearest)."""
        lookups = self.lookups
        lagging = [lookup for lookup in lookups if not lookup.converged]
        if lagging and (
            len(lagging) > min(self.lagging, len(lookups) - 1) or self._awaits_nearest(lagging)
        ):
            return
        verdict = copies_verdict(self._nearest(), self.replicas, self.quorum)
        if verdict == AGREE:
            for lookup in lookups:
                lookup.stop(agreed=True)
            return
        if verdict == DISAGREE:
            self.disagreed = True
        for lookup in lookups:
            if lookup is not source:
                lookup.pump()


def _distance(peer: Peer) -> int:
    return peer.distance


def _node_entry(item: Any) -> tuple[bytes, Address] | None:
    """An ``(id, ip, port)`` triple from a find answer, or None if it is malformed."""
    if type(item) is not list and type(item) is not tuple:
        return None
    if len(item) != 3:
        return None
    node_id, ip, port = item
    if (
        type(node_id) is bytes
        and len(node_id) == 20
        and type(ip) is str
        and 0 < len(ip) <= 64
        and type(port) is int
        and 0 < port <= 65535
    ):
        return node_id, (ip, port)
    return None


async def disjoint_lookup(
    target: bytes,
    seeds: list[tuple[bytes, Address]],
    *,
    paths: int,
    own_id: bytes,
    count: int,
    alpha: int,
    query: Query,
    max_nodes_per_reply: int = 20,
    accept_value: Callable[[Peer, bytes], bool] | None = None,
    exclude: Container[bytes] = (),
    rtt_of: RttOf | None = None,
    agreement: Agreement | None = None,
) -> LookupResult:
    """S/Kademlia's disjoint lookup: the seeds are dealt round-robin to `paths` lookups that run
    side by side and never ask the same peer, so one path's answers cannot be poisoned by peers
    met on another. Each path ends when the `count` closest peers it knows have answered.
    Returns the union: every path's answered peers and holders."""
    claimed: dict[bytes, Peer] = {}
    lookups = [
        Lookup(
            target,
            seeds[i::paths],
            own_id=own_id,
            count=count,
            alpha=alpha,
            query=query,
            max_nodes_per_reply=max_nodes_per_reply,
            claimed=claimed,
            accept_value=accept_value,
            exclude=exclude,
            rtt_of=rtt_of,
            agreement=agreement,
        )
        for i in range(paths)
    ]
    results = await asyncio.gather(*(lookup.run() for lookup in lookups))
    closest = sorted({id(p): p for r in results for p in r.closest}.values())
    return LookupResult(
        closest=closest,
        holders=[p for r in results for p in r.holders],
        messages=sum(r.messages for r in results),
        rounds=max(r.rounds for r in results),
        failures=sum(r.failures for r in results),
        liars=sum(r.liars for r in results),
        unanswered=[p for r in results for p in r.unanswered],
        agreed=any(r.agreed for r in results),
    )


def parse_find_reply(body: Any) -> tuple[bytes | None, list[Any]]:
    """(value or None, raw node entries) of a find_node / find_value answer.

    A value answer is ``{"value": bytes}`` (stock) or ``{"value": bytes, "nodes": [...]}`` (ours,
    so a lookup can keep going past a holder). Raises `ValueError` if it is neither shape. Node
    entries are checked one by one as they are used (`_node_entry`).
    """
    if isinstance(body, dict):
        value = body.get("value")
        if not isinstance(value, bytes):
            raise ValueError("value answer without bytes")
        nodes = body.get("nodes", [])
        return value, nodes if isinstance(nodes, list) else []
    if isinstance(body, list):
        return None, body
    raise ValueError(f"unexpected answer type {type(body).__name__}")


class Lookup:
    """One iterative lookup of `target`; run it with ``await lookup.run()``."""

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[tuple[bytes, Address]],
        *,
        own_id: bytes,
        count: int,
        alpha: int,
        query: Query,
        max_nodes_per_reply: int = 20,
        claimed: dict[bytes, Peer] | None = None,
        accept_value: Callable[[Peer, bytes], bool] | None = None,
        exclude: Container[bytes] = (),
        rtt_of: RttOf | None = None,
        agreement: Agreement | None = None,
    ) -> None:
        self.target = target
        self._target_long = int.from_bytes(target, "big")
        self._own_id = own_id
        self._count = count
        self._alpha = alpha
        self._query = query
        self._limit = max_nodes_per_reply
        # Peers met so far; shared between the paths of a disjoint lookup, so that a peer one
        # path has met is never asked by another.
        self._peers: dict[bytes, Peer] = {} if claimed is None else claimed
        # A value that fails this check marks its sender a liar: its whole answer is dropped
        # (the nodes it named too) and it counts as failed, so it fills no place among the
        # closest (S/Kademlia: results are accepted on validated records only).
        self._accept_value = accept_value
        self._exclude = exclude  # never asked (e.g. nodes caught lying)
        # Expected round trips: None asks in XOR order only (no proximity routing).
        self._rtt_of = rtt_of
        self._agreement = agreement
        if agreement is not None:
            agreement.lookups.append(self)
        self._sorted: list[Peer] = []
        self._distances: list[int] = []  # each of `_sorted`'s distances, for bisect in C
        self._active = 0
        self._result = LookupResult(closest=[])
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[LookupResult] = self._loop.create_future()
        for node_id, address in seeds:
            self._add(node_id, address, depth=1)

    async def run(self) -> LookupResult:
        """Query until the `count` closest known peers have answered; return what was found."""
        self._pump()
        try:
            return await self._done
        finally:
            self._finish()

    @property
    def peers(self) -> list[Peer]:
        """Every peer this lookup met, nearest the target first."""
        return self._sorted

    @property
    def converged(self) -> bool:
        """True once the nearest peer known (not failed, not late) has answered."""
        for peer in self._sorted:
            state = peer.state
            if state != FAILED and state != STALLED:
                return state == ANSWERED
        return True

    @property
    def ended(self) -> bool:
        """True once the lookup has its result."""
        return self._done.done()

    def stop(self, *, agreed: bool = False) -> None:
        """End the lookup now with what it found (answers still to come are ignored)."""
        if not self._done.done():
            self._result.agreed = agreed
            self._done.set_result(self._result)

    def _add(self, node_id: bytes, address: Address, depth: int) -> None:
        if node_id == self._own_id or node_id in self._peers or node_id in self._exclude:
            return
        distance = int.from_bytes(node_id, "big") ^ self._target_long
        peer = Peer(node_id, address, distance, depth, -1.0 if self._rtt_of else 0.0)
        self._peers[node_id] = peer
        at = bisect.bisect_right(self._distances, distance)
        self._distances.insert(at, distance)
        self._sorted.insert(at, peer)

    def pump(self) -> None:
        """Ask the next peers, or end (`Agreement` calls this when its verdict changes)."""
        self._pump()

    def _pump(self) -> None:
        if self._done.done():
            return
        live = 0
        pending = False
        # Once the closest peer known has answered, no closer one is likely to appear: ask the
        # rest of the window at once instead of `alpha` at a time (paper §2.3's final round).
        converged = False
        stalled = False
        candidates: list[Peer] = []  # not asked yet, in the window, nearest first
        for peer in self._sorted:
            state = peer.state
            # A stalled peer (later than its expected round trip) is passed over here: the next
            # candidate takes its place in the window at once. If it answers after all, it is
            # counted again.
            if state == FAILED:
                continue
            if state == STALLED:
                stalled = True
                continue
            if live == 0 and state == ANSWERED:
                converged = True
            if state == NEW:
                candidates.append(peer)
                pending = True
            elif state == WAITING:
                pending = True
            live += 1
            if live >= self._count:
                break
        if candidates:
            if not converged:
                free = self._alpha - self._active
                rtt_of = self._rtt_of
                if rtt_of is not None and 1 <= free < len(candidates):
                    for peer in candidates:
                        if peer.rtt < 0.0:  # looked up when first needed: most never are
                            peer.rtt = rtt_of(peer.id)
                    candidates = proximity_order(candidates)
                candidates = candidates[: max(0, free)]
            elif self._agreement is not None and not self._agreement.disagreed:
                wanted = self._agreement.wanted()
                candidates = [peer for peer in candidates if peer in wanted]
            for peer in candidates:
                # asking may fail at once and pump again (which may ask this peer, or end)
                if self._done.done():
                    return
                if peer.state == NEW and (converged or self._active < self._alpha):
                    self._launch(peer)
        # Done when the window is full of answers, or when nothing is left to wait for; while
        # the window is short, stalled peers may still answer and fill it.
        if not pending and (live >= self._count or not stalled):
            self._done.set_result(self._result)

    def _launch(self, peer: Peer) -> None:
        peer.state = WAITING
        self._active += 1
        asked = self._loop.time()
        sent = self._query(
            peer,
            lambda ok, body: self._on_reply(peer, ok, body),
            lambda: self._on_stall(peer, asked),
        )
        if sent is not False:
            self._result.messages += 1

    def _closed(self) -> bool:
        """True once how this path's peers in flight end no longer matters: it has ended and
        no other path of its get still runs. While one does, they count among the nearest for
        its `Agreement`, so how they end must still reach it (ignored, a late peer stayed
        late forever, and the paths waiting on the verdict waited for good: a get among 500
        nodes on 127.0.0.1 hung so)."""
        if not self._done.done():
            return False
        return self._agreement is None or not self._agreement.running

    def _on_stall(self, peer: Peer, asked: float) -> None:
        if peer.state != WAITING or self._closed():
            return
        peer.state = STALLED
        self._active -= 1
        if self._agreement is not None:
            # A get gives up on a late peer at twice its expected round trip (about its RTO
            # without `min_timeout`'s floor, which only spares the routing table from counting
            # a busy host as failed): dead nearest nodes then cost it tens of milliseconds on
            # a LAN, not the floor's 200. Measured, 500 nodes on 127.0.0.1, 20 % killed: get
            # p95 23-49 ms over 16 runs; before, 200+ ms in about half the runs. Only the
            # verdict goes without it: counted failed, every peer of a loaded host was given
            # up and gets of 16 inbox pages at once found nothing (test_concurrent_gets).
            self._loop.call_later(self._loop.time() - asked, self._give_up, peer)
            self._agreement.check(self)  # passing a late peer may make this path converged
        self._pump()

    def _give_up(self, peer: Peer) -> None:
        """The get's verdict stops waiting for `peer`, still late (its path still waits for
        it if its window is short: under load everyone is late, and a get that gave up on
        them all would end with nothing)."""
        if peer.state != STALLED or self._closed():
            return
        peer.given_up = True
        if self._agreement is not None:
            self._agreement.check(self)
        self._pump()

    def _on_reply(self, peer: Peer, ok: bool, body: Any) -> None:
        if self._closed():
            return
        ended = self._done.done()
        if peer.state == WAITING:
            self._active -= 1
        try:
            value, nodes = parse_find_reply(body) if ok else (None, [])
        except ValueError:
            ok = False
        if ok and value is not None and self._accept_value is not None:
            ok = self._accept_value(peer, value)
            if not ok:
                self._result.liars += 1
        if not ok:
            peer.state = FAILED
            self._result.failures += 1
        else:
            peer.state = ANSWERED
            if value is not None:
                peer.value = value
                self._result.holders.append(peer)
            if not ended:
                self._add_entries(nodes[: self._limit], peer.depth + 1)
        if self._agreement is not None:
            self._agreement.check(self)  # may end this lookup and the other paths
        self._pump()

    def _add_entries(self, entries: list[Any], depth: int) -> None:
        peers = self._peers
        # Peers far beyond the window can only matter if many closer ones fail; skip them.
        horizon = 2 * self._count
        cutoff = self._distances[horizon - 1] if len(self._distances) >= horizon else None
        for item in entries:
            try:
                if item[0] in peers:  # most entries name peers met already: check that first
                    continue
            except (TypeError, IndexError, KeyError):
                continue
            entry = _node_entry(item)
            if entry is None:
                continue
            node_id, address = entry
            if (
                cutoff is not None
                and (int.from_bytes(node_id, "big") ^ self._target_long) >= cutoff
            ):
                continue
            self._add(node_id, address, depth)

    def _finish(self) -> None:
        closest = [p for p in self._sorted if p.state == ANSWERED][: self._count]
        self._result.closest = closest
        self._result.unanswered = [p for p in self._sorted if p.state in (FAILED, STALLED)]
        self._result.rounds = max((p.depth for p in closest), default=0)
