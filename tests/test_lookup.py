"""The lookup state machine, on a scripted network (no sockets)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from node.lookup import Lookup, Peer

TARGET = bytes(20)


def nid(n: int) -> bytes:
    return hashlib.sha1(b"peer%d" % n).digest()


class ScriptedNetwork:
    """Each peer knows some others; some are dead; answers come after a delay."""

    def __init__(
        self,
        knows: dict[int, list[int]],
        dead: set[int] = frozenset(),  # type: ignore[assignment]
        delay: float = 0.01,
        timeout: float = 0.5,
        stall: float = 0.05,
    ) -> None:
        self.knows = knows
        self.dead = dead
        self.delay = delay
        self.timeout = timeout
        self.stall = stall
        self.asked: list[int] = []
        self.by_id = {nid(n): n for n in knows}

    def query(
        self, peer: Peer, on_reply: Callable[[bool, Any], None], on_stall: Callable[[], None]
    ) -> None:
        n = self.by_id[peer.id]
        self.asked.append(n)
        loop = asyncio.get_running_loop()
        loop.call_later(self.stall, on_stall)
        if n in self.dead:
            loop.call_later(self.timeout, on_reply, False, None)
        else:
            # like a real node: the 20 it knows closest to the target
            known = sorted(self.knows[n], key=lambda m: int.from_bytes(nid(m), "big"))[:20]
            nodes = [[nid(m), "127.0.0.1", 1000 + m] for m in known]
            loop.call_later(self.delay, on_reply, True, nodes)


def closest_ids(ns: list[int], count: int) -> list[bytes]:
    return sorted((nid(n) for n in ns), key=lambda i: int.from_bytes(i, "big"))[:count]


async def run(net: ScriptedNetwork, seeds: list[int], count: int, alpha: int = 3) -> Any:
    lookup = Lookup(
        TARGET,
        [(nid(n), ("127.0.0.1", 1000 + n)) for n in seeds],
        own_id=nid(-1),
        count=count,
        alpha=alpha,
        query=net.query,
    )
    return await lookup.run()


async def test_finds_the_closest_nodes() -> None:
    everyone = list(range(60))
    net = ScriptedNetwork({n: everyone for n in everyone})
    result = await run(net, [0, 1, 2], count=5)
    assert [p.id for p in result.closest] == closest_ids(everyone, 5)
    assert result.messages == len(net.asked)
    assert len(set(net.asked)) == len(net.asked)  # nobody asked twice
    assert result.rounds == 2  # seeds, then the closest they named


async def test_dead_peers_replaced_and_skipped() -> None:
    everyone = list(range(40))
    ranked = sorted(everyone, key=lambda n: int.from_bytes(nid(n), "big"))
    dead = set(ranked[:3])  # the three closest of all are dead
    net = ScriptedNetwork({n: everyone for n in everyone}, dead=dead, timeout=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run(net, [ranked[-1]], count=4)
    assert [p.id for p in result.closest] == [nid(n) for n in ranked[3:7]]
    # stalled (dead) peers gave their place to the next candidates: no 5 s timeout waited
    assert loop.time() - started < 1.0


async def test_never_more_than_alpha_before_convergence() -> None:
    everyone = list(range(30))
    net = ScriptedNetwork({n: everyone for n in everyone}, stall=10.0, delay=0.01)
    in_flight = 0
    peak = 0
    original = net.query

    def counting(
        peer: Peer, on_reply: Callable[[bool, Any], None], on_stall: Callable[[], None]
    ) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)

        def done(ok: bool, body: Any) -> None:
            nonlocal in_flight
            in_flight -= 1
            on_reply(ok, body)

        original(peer, done, on_stall)

    net.query = counting  # type: ignore[method-assign]
    # the seeds are the farthest nodes: the lookup has to walk in, alpha at a time
    ranked = sorted(everyone, key=lambda n: int.from_bytes(nid(n), "big"))
    result = await run(net, ranked[-3:], count=20, alpha=2)
    assert len(result.closest) == 20
    assert peak > 2  # the final round asks the rest of the window at once


async def test_lookup_with_no_seeds_ends_empty() -> None:
    result = await run(ScriptedNetwork({}), [], count=5)
    assert result.closest == []
    assert result.messages == 0


async def test_malformed_answers_count_as_failures() -> None:
    net = ScriptedNetwork({0: [], 1: []})

    def query(
        peer: Peer, on_reply: Callable[[bool, Any], None], on_stall: Callable[[], None]
    ) -> None:
        asyncio.get_running_loop().call_soon(on_reply, True, "not a list")

    net.query = query  # type: ignore[method-assign]
    result = await run(net, [0, 1], count=3)
    assert result.closest == []
    assert result.failures == 2


async def test_slow_peers_are_waited_for_when_nobody_can_replace_them() -> None:
    # five peers, all slower than their expected round trip: the lookup must not end with
    # fewer answers than there are peers
    everyone = list(range(5))
    net = ScriptedNetwork({n: everyone for n in everyone}, delay=0.2, stall=0.01)
    result = await run(net, everyone, count=20)
    assert sorted(p.id for p in result.closest) == sorted(nid(n) for n in everyone)


async def test_disjoint_paths_never_share_a_peer() -> None:
    from node.lookup import disjoint_lookup

    everyone = list(range(80))
    net = ScriptedNetwork({n: everyone for n in everyone})
    seeds = sorted(everyone, key=lambda n: -int.from_bytes(nid(n), "big"))[:9]
    result = await disjoint_lookup(
        TARGET,
        [(nid(n), ("127.0.0.1", 1000 + n)) for n in seeds],
        paths=3,
        own_id=nid(-1),
        count=5,
        alpha=2,
        query=net.query,
    )
    assert len(net.asked) == len(set(net.asked))  # no peer asked twice, by any path
    assert result.messages == len(net.asked)
    # together the paths still find the closest nodes of all
    assert [p.id for p in result.closest[:5]] == closest_ids(everyone, 5)


def test_a_get_over_three_disjoint_paths_finds_the_record() -> None:
    from simulations.clock import run_virtual
    from simulations.harness import Simulation
    from simulations.scenarios.common import announce, user_identity

    async def main() -> tuple[bool, int]:
        sim = Simulation(seed=41, config={"get_paths": 3})
        await sim.grow(60)
        record = announce(sim, user_identity(41, 0), sim.nodes[2], ttl_ms=3600_000)
        node = sim.nodes[2].node
        reader = sim.nodes[40].node
        assert node is not None
        assert reader is not None
        await node.put(record)
        got, lookup = await reader.get_with_lookup(record.key)
        await sim.stop_all()
        return got == record, len(lookup.holders)

    found, holders = run_virtual(main())
    assert found
    assert holders >= 2


# -- proximity routing and ending a get on agreement --------------------------------------


def peer_at(distance: int, rtt: float = 0.0, state: int = 0, value: bytes | None = None) -> Peer:
    peer = Peer(distance.to_bytes(20, "big"), ("127.0.0.1", 1000), distance, 1, rtt)
    peer.state = state
    peer.value = value
    return peer


def test_proximity_order_prefers_low_rtt_within_an_xor_bucket_only() -> None:
    from node.lookup import proximity_order

    near_slow = peer_at(0b1000, rtt=0.300)  # bit length 4
    near_fast = peer_at(0b1111, rtt=0.020)  # bit length 4: as useful as near_slow
    far_fast = peer_at(0b10000, rtt=0.001)  # bit length 5: a bucket farther, however fast
    ordered = proximity_order([near_slow, near_fast, far_fast])
    assert [p.distance for p in ordered] == [0b1111, 0b1000, 0b10000]
    # equal round trips keep XOR order
    a, b = peer_at(0b1000, rtt=0.1), peer_at(0b1001, rtt=0.1)
    assert proximity_order([a, b]) == [a, b]


async def test_lookup_asks_the_fastest_of_equally_close_seeds_first() -> None:
    everyone = list(range(40))
    net = ScriptedNetwork({n: everyone for n in everyone})
    ranked = sorted(everyone, key=lambda n: int.from_bytes(nid(n), "big"))
    # seeds far from the target: the closest of them by XOR is the slowest; all three sit in
    # the same XOR bucket as seen from the target (same top bit)
    far = [n for n in ranked if nid(n)[0] >> 7 == 1][:8]
    rtts = {nid(n): 0.3 - 0.03 * i for i, n in enumerate(far)}  # farther by XOR, faster
    lookup = Lookup(
        TARGET,
        [(nid(n), ("127.0.0.1", 1000 + n)) for n in far],
        own_id=nid(-1),
        count=20,
        alpha=1,
        query=net.query,
        rtt_of=lambda node_id: rtts.get(node_id, 0.15),
    )
    await lookup.run()
    assert net.asked[0] == far[-1]  # the fastest, not the XOR-closest far[0]
    plain = ScriptedNetwork({n: everyone for n in everyone})
    await run(plain, far, count=20, alpha=1)
    assert plain.asked[0] == far[0]  # without round trips: XOR order


def test_copies_agree_needs_a_quorum_of_the_nearest_with_one_copy() -> None:
    from node.lookup import ANSWERED, FAILED, NEW, WAITING, copies_agree

    v1, v2 = b"version 1", b"version 2"
    three = [peer_at(d, state=ANSWERED, value=v1) for d in (1, 2, 3)]
    assert copies_agree(three, replicas=5, quorum=3)
    assert not copies_agree(three[:2], replicas=5, quorum=3)
    # one of the nearest holds another version, or none: they disagree
    other = peer_at(4, state=ANSWERED, value=v2)
    assert not copies_agree([*three, other], replicas=5, quorum=3)
    empty = peer_at(0, state=ANSWERED)
    assert not copies_agree([empty, *three], replicas=5, quorum=3)
    # failed peers (timed out, or lied) are skipped; peers still asked count among the nearest
    failed = peer_at(0, state=FAILED, value=v2)
    assert copies_agree([failed, *three], replicas=5, quorum=3)
    waiting = [peer_at(d, state=s) for d, s in ((0, WAITING), (1, NEW), (2, WAITING))]
    assert not copies_agree([*waiting, *three], replicas=5, quorum=3)  # 3 of the 5 nearest
    assert copies_agree([*waiting[:2], *three], replicas=5, quorum=3)
    # a copy beyond the `replicas` nearest says nothing either way
    assert copies_agree([*three, *waiting[:2], other], replicas=5, quorum=3)


class HoldingNetwork(ScriptedNetwork):
    """find_value: peers in `values` answer with their copy and the nodes they know."""

    def __init__(self, knows: dict[int, list[int]], values: dict[int, bytes], **kw: Any) -> None:
        super().__init__(knows, **kw)
        self.values = values
        self.slow: dict[int, float] = {}

    def query(
        self, peer: Peer, on_reply: Callable[[bool, Any], None], on_stall: Callable[[], None]
    ) -> None:
        n = self.by_id[peer.id]
        self.asked.append(n)
        loop = asyncio.get_running_loop()
        if n in self.dead or self.slow.get(n, self.delay) > self.stall:
            loop.call_later(self.stall, on_stall)
        if n in self.dead:
            loop.call_later(self.timeout, on_reply, False, None)
            return
        known = sorted(self.knows[n], key=lambda m: int.from_bytes(nid(m), "big"))[:20]
        nodes = [[nid(m), "127.0.0.1", 1000 + m] for m in known]
        body: Any = {"value": self.values[n], "nodes": nodes} if n in self.values else nodes
        loop.call_later(self.slow.get(n, self.delay), on_reply, True, body)


async def get_like(
    net: HoldingNetwork,
    seeds: list[int],
    quorum: int,
    *,
    whole_windows: bool = False,
    lagging: int = 0,
) -> Any:
    from node.lookup import Agreement, disjoint_lookup

    agreement = Agreement(5, quorum, lagging) if quorum else None
    if agreement is not None and whole_windows:
        agreement.disagreed = True  # as if the copies had disagreed from the start
    return await disjoint_lookup(
        TARGET,
        [(nid(n), ("127.0.0.1", 1000 + n)) for n in seeds],
        paths=3,
        own_id=nid(-1),
        count=7,
        alpha=3,
        query=net.query,
        agreement=agreement,
    )


async def test_a_get_ends_when_the_nearest_agree_and_waits_when_they_differ() -> None:
    everyone = list(range(80))
    ranked = sorted(everyone, key=lambda n: int.from_bytes(nid(n), "big"))
    seeds = ranked[-9:]
    holders = {n: b"v1" for n in ranked[:5]}

    def network() -> HoldingNetwork:
        net = HoldingNetwork({n: everyone for n in everyone}, dict(holders))
        for n in ranked[5:30]:
            net.slow[n] = 0.4  # farther peers answer late: the wait a get need not pay
        return net

    loop = asyncio.get_running_loop()
    net = network()
    started = loop.time()
    early = await get_like(net, seeds, quorum=3)
    early_time = loop.time() - started
    assert early.agreed
    assert {p.value for p in early.holders} == {b"v1"}
    full_net = network()
    started = loop.time()
    full = await get_like(full_net, seeds, quorum=0)
    assert not full.agreed
    assert early_time < loop.time() - started
    assert early.messages <= full.messages

    # the nearest holder has a newer version: no agreement, the get waits as before
    net = network()
    net.values[ranked[0]] = b"v2"
    differ = await get_like(net, seeds, quorum=3)
    assert not differ.agreed
    assert b"v2" in {p.value for p in differ.holders}


async def test_a_get_asks_only_the_nearest_while_their_copies_may_agree() -> None:
    everyone = list(range(80))
    ranked = sorted(everyone, key=lambda n: int.from_bytes(nid(n), "big"))
    seeds = ranked[-9:]
    holders = {n: b"v1" for n in ranked[:7]}
    net = HoldingNetwork({n: everyone for n in everyone}, dict(holders))
    result = await get_like(net, seeds, quorum=3)
    assert result.agreed
    # the 5 nearest decide: the rest of a converged path's window is not asked
    assert set(ranked[:5]) <= set(net.asked)
    assert not set(ranked[5:7]) & set(net.asked)
    whole = HoldingNetwork({n: everyone for n in everyone}, dict(holders))
    before = await get_like(whole, seeds, quorum=3, whole_windows=True)
    assert before.agreed
    assert set(ranked[:7]) <= set(whole.asked)
    assert result.messages < before.messages

    # three of the nearest never answer: once the get gives up on them (at twice the
    # 0.05 s they stalled at, long before they time out), the next nearest take their
    # places and are asked (by whichever path met them)
    dead = set(ranked[1:4])
    net = HoldingNetwork({n: everyone for n in everyone}, dict(holders), dead=dead)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await get_like(net, seeds, quorum=3)
    assert loop.time() - started < net.timeout
    assert result.agreed
    assert set(ranked[5:7]) <= set(net.asked)


async def test_a_late_nearest_peer_does_not_hold_up_an_agreement() -> None:
    everyone = list(range(80))
    ranked = sorted(everyone, key=lambda n: int.from_bytes(nid(n), "big"))
    net = HoldingNetwork({n: everyone for n in everyone}, {n: b"v1" for n in ranked[:7]})
    net.slow[ranked[0]] = 2.0  # stalls after 0.05 s, answers after 2 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await get_like(net, ranked[-9:], quorum=3)
    assert result.agreed
    assert loop.time() - started < 1.0  # decided once it stalled, not when it answered


def _hidden_newer_version(
    late_scouts: list[int], fast_scout: int | None = None
) -> tuple[HoldingNetwork, list[int]]:
    """The two nearest nodes hold a newer version and only scouts know them: seeds (path i
    starts at seeds[i]) that know every node. Late scouts stall at 0.05 s but answer before the
    get gives up on them (twice that), so their paths are still walking in when the others have
    converged on three holders of the older version. A fast scout answers at once, and the
    two nearest take 0.04 s (under a stall) to answer its path."""
    everyone = list(range(80))
    ranked = sorted(everyone, key=lambda n: int.from_bytes(nid(n), "big"))
    hidden = ranked[:2]
    knows = {n: [m for m in everyone if m not in hidden] for n in everyone}
    values = {ranked[2]: b"v1", ranked[3]: b"v1", ranked[4]: b"v1"}
    values.update({n: b"v2" for n in hidden})
    net = HoldingNetwork(knows, values)
    seeds = [ranked[-2], ranked[-1], ranked[-3]]
    for index in late_scouts:
        knows[seeds[index]] = everyone
        net.slow[seeds[index]] = 0.08
    if fast_scout is not None:
        knows[seeds[fast_scout]] = everyone
        for n in hidden:
            net.slow[n] = 0.04
    return net, seeds


def _found(result: Any) -> set[bytes]:
    return {p.value for p in result.holders}


async def test_a_get_ends_on_agreement_once_all_its_paths_but_the_lagging_have_converged() -> None:
    # waiting for every path: the late path brings the newer version
    net, seeds = _hidden_newer_version(late_scouts=[1])
    result = await get_like(net, seeds, quorum=3)
    assert b"v2" in _found(result)
    assert not result.agreed
    # one path may lag (the node lets two): the two converged paths' agreement ends the get
    # before the late one walks in; the price of not waiting (measured: nothing against
    # colluders, a fifth of a get's latency; `NodeConfig.get_lagging_paths`)
    net, seeds = _hidden_newer_version(late_scouts=[1])
    result = await get_like(net, seeds, quorum=3, lagging=1)
    assert result.agreed
    assert _found(result) == {b"v1"}


async def test_a_get_waits_while_more_paths_lag_than_it_may_leave_behind() -> None:
    net, seeds = _hidden_newer_version(late_scouts=[1, 2])
    result = await get_like(net, seeds, quorum=3, lagging=1)
    assert b"v2" in _found(result)
    assert not result.agreed
    net, seeds = _hidden_newer_version(late_scouts=[1, 2])
    result = await get_like(net, seeds, quorum=3, lagging=2)
    assert _found(result) == {b"v1"}  # two may lag: it does not wait


async def test_a_get_hears_the_nearest_peers_a_lagging_path_has_met() -> None:
    # the lagging path has met nearer peers than the agreeing ones: the get waits for them
    net, seeds = _hidden_newer_version(late_scouts=[], fast_scout=1)
    result = await get_like(net, seeds, quorum=3, lagging=1)
    assert b"v2" in _found(result)
    assert not result.agreed


async def test_a_path_that_ended_still_tells_the_others_how_its_late_peers_end() -> None:
    # Path A fills its window while its nearest peer (slow, not late) keeps it walking in;
    # that peer then names the three nearest nodes, which are dead: A asks them, they stall,
    # and A ends (its window is full). Their stalls hold the verdict at "wait" and the other
    # paths, converged, wait on it: when the dead peers time out, A must still report it.
    # (Before, A ignored it once ended and the get hung: seen among 500 nodes on 127.0.0.1.)
    everyone = list(range(80))
    ranked = sorted(everyone, key=lambda n: int.from_bytes(nid(n), "big"))
    seeds = ranked[-9:]  # dealt round-robin: path i gets seeds[i::3]
    knows: dict[int, list[int]] = {n: [] for n in everyone}
    knows[seeds[0]] = ranked[3:10]
    knows[seeds[1]] = ranked[10:30]
    knows[seeds[2]] = ranked[30:50]
    for group in (ranked[3:10], ranked[10:30], ranked[30:50]):
        for n in group:
            knows[n] = group
    knows[ranked[3]] = ranked[:10]
    net = HoldingNetwork(knows, {n: b"v1" for n in ranked[3:10]}, dead=set(ranked[:3]), timeout=0.5)
    net.slow[ranked[3]] = 0.045  # later than the others, sooner than a stall
    result = await asyncio.wait_for(get_like(net, seeds, quorum=3), 5)
    assert result.agreed  # once the dead time out, the next nearest agree
    assert {p.value for p in result.holders} == {b"v1"}
