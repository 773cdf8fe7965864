"""Push (issue 17): subscriptions at the closest holders, notifications on change, client mode
behind a NAT, auto mode. On the simulated network, virtual time."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from node.chat import ChatClient
from node.subscriptions import Subscription
from records import location
from simulations.clock import run_virtual
from simulations.harness import SimNode, Simulation
from simulations.scenarios.common import announce, user_identity
from tests.records_factory import HOUR

pytestmark = pytest.mark.timeout(120)


def tables_holding(sim: Simulation, node_id: bytes, but: SimNode | None = None) -> int:
    """How many running nodes (other than `but`) have `node_id` in a routing table."""
    return sum(
        1
        for n in sim.live()
        if n is not but and (table := n.running_node.table) is not None and table.get(node_id)
    )


async def start_with(sim: Simulation, overrides: dict[str, Any], via: SimNode) -> SimNode:
    """Start one more node with `overrides` on top of the simulation's settings."""
    saved = dict(sim.config_overrides)
    sim.config_overrides.update(overrides)
    try:
        host = sim.new_host()
        await sim.start(host, via=[via])
        return host
    finally:
        sim.config_overrides = saved


class Heard:
    """Collects notifications (virtual time, holder) for a subscription."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = asyncio.Event()

    def __call__(self, _sub: Subscription, holder: bytes | None, _addr: object) -> None:
        self.times.append(asyncio.get_running_loop().time())
        self.event.set()

    async def after(self, count: int, within: float) -> float:
        """The time of the first notification after the first `count` (waits for it)."""
        async with asyncio.timeout(within):
            while len(self.times) <= count:  # bounded by the timeout
                self.event.clear()
                await self.event.wait()
        return self.times[count]


def test_a_change_reaches_a_subscriber_within_a_round_trip_and_survives_holder_churn() -> None:
    async def main() -> tuple[list[float], int, int]:
        sim = Simulation(seed=171)
        await sim.grow(200)
        user = user_identity(171, 0)
        record = announce(sim, user, sim.nodes[3], ttl_ms=HOUR)
        origin = sim.nodes[3].running_node
        await origin.put(record)
        listener = sim.nodes[150].running_node
        heard = Heard()
        listener.subscribe(record.key, heard)
        await asyncio.sleep(5)  # registered at the holders
        assert len(listener.subscriptions) == 1
        loop = asyncio.get_running_loop()
        delays = []
        for round_ in range(3):
            if round_ == 2:  # a fifth of the nodes holding it are replaced by new ones
                target = int.from_bytes(location(record.key), "big")
                holders = sorted(
                    sim.live(), key=lambda n: int.from_bytes(n.identity.id, "big") ^ target
                )[:5]
                await sim.crash(holders[0])
                for _ in range(40):
                    await sim.start(sim.new_host(), via=[sim.nodes[0]])
                await asyncio.sleep(2 * listener.config.listen_refresh)  # renewals move it
            await asyncio.sleep(1)
            fresh = announce(sim, user, sim.nodes[3], ttl_ms=HOUR)
            sent, count = loop.time(), len(heard.times)
            await origin.put(fresh)
            delays.append((await heard.after(count, within=10)) - sent)
        holders_known = len(next(iter(listener.subscriptions._by_loc.values()))[0].holders)
        notified = sum(n.running_node.stats.requests_out["notify"] for n in sim.live())
        await sim.stop_all()
        return delays, holders_known, notified

    delays, holders, notified = run_virtual(main())
    # the put's own stores take about one round trip; the notification half of one more
    assert all(d < 1.0 for d in delays), delays
    assert holders == 3
    assert notified >= 3


def renewing() -> int:
    """How many nodes run a task renewing their subscriptions."""
    return sum(1 for t in asyncio.all_tasks() if "Subscriptions.run" in repr(t.get_coro()))


def test_only_a_node_with_subscriptions_keeps_a_task_renewing_them() -> None:
    """A node that listens to nothing keeps no task waiting (a simulation runs thousands of
    nodes); its first subscription starts the renewals, which a restart resumes."""

    async def main() -> list[int]:
        sim = Simulation(seed=172)
        await sim.grow(30)
        record = announce(sim, user_identity(172, 0), sim.nodes[3], ttl_ms=HOUR)
        await sim.nodes[3].running_node.put(record)
        counts = [renewing()]
        listener = sim.nodes[20].running_node
        heard = Heard()
        listener.subscribe(record.key, heard)
        listener.subscribe(record.key, Heard())
        await asyncio.sleep(5)  # registered at the holders
        counts.append(renewing())
        await listener.stop()
        counts.append(renewing())
        await listener.start()
        counts.append(renewing())
        await asyncio.sleep(5)
        fresh = announce(sim, user_identity(172, 0), sim.nodes[4], ttl_ms=HOUR)
        await sim.nodes[3].running_node.put(fresh)
        await heard.after(0, within=10)  # the restarted node still hears of changes
        await sim.stop_all()
        return counts

    assert run_virtual(main()) == [0, 1, 0, 1]


def test_a_client_behind_a_nat_puts_gets_hears_pushes_and_is_in_no_routing_table() -> None:
    async def main() -> dict[str, Any]:
        sim = Simulation(seed=172)
        await sim.grow(60)
        host = sim.new_host()
        sim.network.behind_nat(host.host, mapping_lifetime=30.0)
        sim.config_overrides = {"mode": "client"}
        await sim.start(host, via=[sim.nodes[0]])
        sim.config_overrides = {}
        client = host.running_node
        record = announce(sim, user_identity(172, 0), sim.nodes[5], ttl_ms=HOUR)
        stored = await client.put(record)
        got = await sim.nodes[40].running_node.get(record.key)
        heard = Heard()
        client.subscribe(record.key, heard)
        await asyncio.sleep(120)  # several keep-alives (25 s) past the NAT's 30 s
        fresh = announce(sim, user_identity(172, 0), sim.nodes[5], ttl_ms=HOUR)
        count = len(heard.times)
        await sim.nodes[5].running_node.put(fresh)
        delay_ok = True
        try:
            await heard.after(count, within=5)
        except TimeoutError:
            delay_ok = False
        got_back = await client.get(record.key)
        # chat: a user on the client receives a message through messages(), by push
        alice, bob = user_identity(172, 1), user_identity(172, 2)
        a = ChatClient(client, alice, name="Alice", random_bytes=random.Random(1).randbytes)
        b = ChatClient(sim.nodes[9].running_node, bob, name="Bob")
        arrived: list[str] = []
        async with a, b:

            async def read() -> None:
                async for entry in a.messages():
                    arrived.append(entry.text or entry.kind)

            reader = asyncio.create_task(read())
            await b.handshake(alice.id)
            await asyncio.sleep(10)  # virtual: the first full read is over, pushes from now on
            full_reads = client.stats.requests_out["find_value"]
            await b.send(alice.id, "through the NAT")
            await asyncio.sleep(5)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            # one page fetched from the holder that pushed (not 16 gets over 3 paths)
            fetches = client.stats.requests_out["find_value"] - full_reads
        in_tables = tables_holding(sim, client.id, but=host)
        result = {
            "stored": stored,
            "got": got == record,
            "pushed": delay_ok,
            "client_get": got_back is not None,
            "chat": arrived[-1] if arrived else None,
            "fetches": fetches,
            "in_tables": in_tables,
            "nat_drops": sim.network.counters["dropped_nat"],
            "client_mode_drops": client.stats.dropped["client_mode"],
        }
        await sim.stop_all()
        return result

    result = run_virtual(main())
    assert result["stored"] >= 4
    assert result["got"]
    assert result["pushed"]
    assert result["client_get"]
    assert result["chat"] == "through the NAT"
    assert 1 <= result["fetches"] <= 3
    assert result["in_tables"] == 0


def test_an_auto_node_turns_server_only_when_others_reach_it_unasked() -> None:
    async def main() -> tuple[bool, bool, int]:
        sim = Simulation(seed=173)
        await sim.grow(40)
        reachable = await start_with(sim, {"mode": "auto"}, sim.nodes[0])
        hidden = sim.new_host()
        sim.network.behind_nat(hidden.host)
        sim.config_overrides = {"mode": "auto"}
        await sim.start(hidden, via=[sim.nodes[0]])
        sim.config_overrides = {}
        await asyncio.sleep(30 * 60)
        open_engine, hidden_engine = reachable.running_node.engine, hidden.running_node.engine
        assert open_engine is not None
        assert hidden_engine is not None
        in_tables = tables_holding(sim, reachable.running_node.id)
        await sim.stop_all()
        return open_engine.client, hidden_engine.client, in_tables

    open_client, hidden_client, in_tables = run_virtual(main())
    assert not open_client  # reached unasked: a server now, in others' tables
    assert in_tables > 0
    assert hidden_client  # behind its NAT nobody reaches it unasked: still a client
