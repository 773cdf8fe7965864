"""Node behaviour over virtual time: re-replication, republish, restarts, clean stop."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from node import PutFailed
from node.lookup import disjoint_lookup
from records import Record, location
from simulations.clock import run_virtual
from simulations.harness import SimNode, Simulation
from simulations.scenarios.common import announce, user_identity
from tests.records_factory import meta

pytestmark = pytest.mark.timeout(60)


def holders(sim: Simulation, record: Record) -> list[SimNode]:
    loc = location(record.key)
    now = sim.now_ms()
    return [
        n
        for n in sim.live()
        if n.node is not None and n.node.store is not None and n.node.store.get(loc, now)
    ]


def closest_live(sim: Simulation, record: Record, count: int) -> list[SimNode]:
    target = int.from_bytes(location(record.key), "big")
    return sorted(sim.live(), key=lambda n: int.from_bytes(n.identity.id, "big") ^ target)[:count]


def test_holders_re_replicate_when_holders_die() -> None:
    async def main() -> tuple[int, int]:
        sim = Simulation(seed=11)
        await sim.grow(60)
        origin = sim.nodes[0]
        record = announce(sim, user_identity(11, 0), origin, ttl_ms=6 * 3600_000)
        assert origin.node is not None
        await origin.node.put(record)
        first = [n for n in holders(sim, record) if n is not origin]
        # three of the holders die at once; the originator too, so only holders can repair
        for victim in [*first[:3], origin]:
            await sim.crash(victim)
        before = len(holders(sim, record))
        await asyncio.sleep(15 * 60)  # more than the replication interval
        wanted = closest_live(sim, record, 5)
        after = sum(1 for n in wanted if n in holders(sim, record))
        await sim.stop_all()
        return before, after

    before, after = run_virtual(main())
    assert before <= 3
    assert after == 5  # the five closest live nodes all hold it again


def test_restarted_node_serves_what_it_held() -> None:
    async def main() -> tuple[bool, Record | None]:
        sim = Simulation(seed=12)
        await sim.grow(30)
        origin = sim.nodes[1]
        record = announce(sim, user_identity(12, 0), origin, ttl_ms=3600_000)
        assert origin.node is not None
        await origin.node.put(record)
        holder = next(n for n in holders(sim, record) if n is not origin)
        await sim.crash(holder)
        await asyncio.sleep(60)
        node = await sim.start(holder, via=[sim.nodes[2]])
        assert node.store is not None
        held = node.store.get(location(record.key), sim.now_ms()) is not None
        # ask the restarted node alone
        assert node.protocol is not None
        asker = sim.nodes[3].node
        assert asker is not None
        assert asker.protocol is not None
        ok, answer = await asker.protocol.call(
            holder.address, "find_value", [asker.id, location(record.key)], holder.identity.id
        )
        await sim.stop_all()
        got = None
        if ok and isinstance(answer, dict):
            from records import decode_record

            got = decode_record(answer["value"])
        return held, got

    held, got = run_virtual(main())
    assert held
    assert got is not None


def test_originator_republishes_to_new_closest_nodes() -> None:
    async def main() -> int:
        sim = Simulation(seed=13, config={"replicate_interval": 24 * 3600.0})
        await sim.grow(40)
        origin = sim.nodes[0]
        record = announce(sim, user_identity(13, 0), origin, ttl_ms=6 * 3600_000)
        assert origin.node is not None
        await origin.node.put(record)
        for victim in [n for n in holders(sim, record) if n is not origin]:
            await sim.crash(victim)  # every holder but the originator is gone
        await asyncio.sleep(40 * 60)  # holders' replication is off; republish (30 min) is not
        wanted = closest_live(sim, record, 5)
        count = sum(1 for n in wanted if n in holders(sim, record))
        await sim.stop_all()
        return count

    assert run_virtual(main()) >= 4


def test_stop_during_a_get_ends_it() -> None:
    async def main() -> object:
        sim = Simulation(seed=14)
        await sim.grow(20)
        node = sim.nodes[5].node
        assert node is not None
        record = announce(sim, user_identity(14, 0), sim.nodes[5], ttl_ms=3600_000)
        getter = asyncio.ensure_future(node.get(record.key))
        await asyncio.sleep(0.05)
        await node.stop()
        try:
            result: object = await asyncio.wait_for(getter, 10)
        except Exception as exc:
            result = exc
        await sim.stop_all()
        return result

    result = run_virtual(main())
    assert result is None or isinstance(result, Exception)


def test_failed_put_is_retried_once_peers_appear() -> None:
    async def main() -> tuple[str, int]:
        sim = Simulation(seed=15)
        lonely = sim.new_host()
        node = await sim.start(lonely)
        record = announce(sim, user_identity(15, 0), lonely, ttl_ms=3600_000)
        try:
            await node.put(record)
            outcome = "stored"
        except PutFailed as exc:
            outcome = str(exc)
        for _ in range(8):
            await sim.start(sim.new_host(), via=[lonely])
        await asyncio.sleep(3 * 60)  # a few sweeps
        count = len([n for n in holders(sim, record) if n is not lonely])
        await sim.stop_all()
        return outcome, count

    outcome, count = run_virtual(main())
    assert "no node stored" in outcome
    assert count >= 5


def test_a_holder_serving_a_forgery_is_banned_and_the_get_still_succeeds() -> None:
    async def main() -> tuple[bool, bool, bool]:
        sim = Simulation(seed=16)
        await sim.grow(40)
        origin = sim.nodes[0]
        record = announce(sim, user_identity(16, 0), origin, ttl_ms=3600_000)
        assert origin.node is not None
        await origin.node.put(record)
        liar = next(n for n in holders(sim, record) if n is not origin)
        assert liar.node is not None
        assert liar.node.store is not None
        entry = liar.node.store.get(location(record.key), sim.now_ms())
        assert entry is not None
        entry.data = entry.data[:-3] + bytes([entry.data[-3] ^ 0x40]) + entry.data[-2:]
        reader = sim.nodes[25].node
        assert reader is not None
        assert reader.engine is not None
        got = await reader.get(record.key)
        banned = liar.identity.id in reader.engine.bans
        in_table = reader.table is not None and reader.table.get(liar.identity.id) is not None
        await sim.stop_all()
        return got == record, banned, in_table

    correct, banned, in_table = run_virtual(main())
    assert correct
    assert banned
    assert not in_table


def test_watch_yields_each_new_version_and_ends_when_cancelled() -> None:
    async def main() -> None:
        sim = Simulation(seed=17)
        await sim.grow(10)
        writer, reader = sim.nodes[1].node, sim.nodes[2].node
        assert writer is not None
        assert reader is not None
        assert reader.store is not None
        start = sim.now_ms()
        versions = [meta(name=f"Alice {i}", now=start + i * 1000) for i in range(3)]
        await writer.put(versions[0])
        seen: list[int] = []
        two = asyncio.Event()

        async def follow() -> None:
            async for record in reader.watch(versions[0].key, poll_interval=60.0):
                seen.append(record.values[0].creationDate)
                if len(seen) == 2:
                    two.set()

        task = asyncio.get_running_loop().create_task(follow())
        await asyncio.sleep(1.5)
        await writer.put(versions[1])
        await asyncio.wait_for(two.wait(), 300)  # the next poll finds it
        assert seen == [start, start + 1000]
        # a new version wakes the watch just as it is cancelled: the cancellation must win
        write = reader.store.accept(location(versions[2].key), versions[2], sim.now_ms()).write
        task.cancel()
        if write is not None:
            await write
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)
        await sim.stop_all()

    run_virtual(main())


def test_a_get_that_ends_on_agreement_writes_back_to_no_peer_without_a_copy() -> None:
    async def main() -> tuple[int, int]:
        sim = Simulation(seed=43)
        await sim.grow(80)
        records = [
            announce(sim, user_identity(43, i), sim.nodes[i], ttl_ms=3600_000) for i in range(20)
        ]
        for i, record in enumerate(records):
            node = sim.nodes[i].node
            assert node is not None
            await node.put(record)
        reader = sim.nodes[70].node
        assert reader is not None
        agreed = stores = 0
        for record in records:
            before = reader.stats.requests_out["store"]
            got, lookup = await reader.get_with_lookup(record.key)
            assert got == record
            if lookup.agreed:
                agreed += 1
                stores += reader.stats.requests_out["store"] - before
        await sim.stop_all()
        return agreed, stores

    agreed, stores = run_virtual(main())
    assert agreed >= 10  # most gets end on agreement
    assert stores == 0  # and write nothing: every copy they saw was the same


def test_a_get_checks_the_signatures_of_agreeing_copies_once() -> None:
    """Holders that agree send the same bytes: the getter validates them once, and neither
    the merge of those copies nor keeping it checks them again. A copy that differs is
    validated on its own."""

    async def main() -> tuple[list[int], Record | None]:
        sim = Simulation(seed=44)
        await sim.grow(40)
        record = announce(sim, user_identity(44, 0), sim.nodes[1], ttl_ms=3600_000)
        writer, reader = sim.nodes[1].node, sim.nodes[30].node
        assert writer is not None
        assert reader is not None
        await writer.put(record)
        validator = reader.validator
        calls: list[str] = []
        validate = validator.validate

        def counting(key: str, value: Record, now: int) -> None:
            calls.append(key)
            validate(key, value, now)

        validator.validate = counting  # type: ignore[method-assign,assignment]
        counts = []
        got, lookup = await reader.get_with_lookup(record.key)
        copies = sum(1 for peer in lookup.closest if peer.value is not None)
        counts += [copies, len(calls)]
        # one holder also takes a value from another device: two distinct valid copies
        newer = announce(sim, user_identity(44, 0), sim.nodes[2], ttl_ms=3600_000)
        holder = next(p for p in lookup.closest if p.value is not None)
        held_by = next(n.node for n in sim.live() if n.identity.id == holder.id)
        assert held_by is not None
        held_by.accept_quietly(location(newer.key), newer, sim.now_ms())
        calls.clear()
        await reader.get_with_lookup(record.key, thorough=True)
        counts.append(len(calls))
        await sim.stop_all()
        return counts, got

    (copies, first, second), got = run_virtual(main())
    assert got is not None
    assert copies >= 3
    assert first == 1  # one check for every agreeing copy, the merge and the local keep
    # the two distinct copies; their merge is the fuller one's bytes, checked already
    assert second == 2


def test_a_put_places_the_record_over_disjoint_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup that places a record takes `get_paths` disjoint paths, as a get's does: over
    one path, colluders met first kept updates from every honest holder."""
    paths: list[int] = []

    async def spying(*args: Any, **kwargs: Any) -> Any:
        paths.append(kwargs["paths"])
        return await disjoint_lookup(*args, **kwargs)

    monkeypatch.setattr("node.server.disjoint_lookup", spying)

    async def main() -> int:
        sim = Simulation(seed=45)
        await sim.grow(40)
        record = announce(sim, user_identity(45, 0), sim.nodes[1], ttl_ms=3600_000)
        writer = sim.nodes[1].running_node
        acks = await writer.put(record)
        await sim.stop_all()
        return acks

    assert run_virtual(main()) == 5
    assert paths == [3]


def test_a_get_leaves_nothing_to_the_cycle_collector() -> None:
    """A get's paths and the peers they met are freed by reference counting when it returns:
    in a simulation of thousands of nodes, every object left for a full garbage collection
    costs a scan of the whole network."""

    async def main() -> list[str]:
        sim = Simulation(seed=45)
        await sim.grow(40)
        record = announce(sim, user_identity(45, 0), sim.nodes[1], ttl_ms=3600_000)
        writer, reader = sim.nodes[1].node, sim.nodes[30].node
        assert writer is not None
        assert reader is not None
        await writer.put(record)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept here, not freed
        try:
            got, lookup = await reader.get_with_lookup(record.key)
            assert got == record
            assert lookup.agreed  # the paths of a get that ends on agreement know each other
            del lookup
            await asyncio.sleep(10)  # the calls still out when it ended have timed out
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        await sim.stop_all()
        return left

    left = run_virtual(main())
    assert left == []
