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
