"""Real nodes on loopback UDP: put through one node, get through others; stock interop."""

from __future__ import annotations

import asyncio
import logging

import pytest
from kademlia.network import Server

from node import DHTNode, NodeNotRunning, PutFailed
from records import InvalidRecord, location, meta_key, presence_key
from tests.loopback import loopback_config, loopback_network
from tests.records_factory import identity, meta, presence

pytestmark = pytest.mark.timeout(60)


async def test_twenty_nodes_put_and_get() -> None:
    async with loopback_network(20) as nodes:
        records = [presence(client=f"user-{i}", node=f"dev-{i}") for i in range(5)]
        for i, record in enumerate(records):
            assert await nodes[i].put(record) == 5
        for i, record in enumerate(records):
            for via in (nodes[10 + i], nodes[19 - i]):
                assert await via.get(record.key) == record
        # each record sits on the 5 nodes closest to its location (gets repair any gap), and
        # not all over the network
        for record in records:
            loc = location(record.key)
            target = int.from_bytes(loc, "big")
            closest = sorted(nodes, key=lambda n: int.from_bytes(n.id, "big") ^ target)[:5]
            assert all(n.store is not None and n.store.get(loc, 0) for n in closest)
            holders = [n for n in nodes if n.store is not None and n.store.get(loc, 0)]
            assert len(holders) <= 8


async def test_get_merges_devices_and_newest_wins() -> None:
    async with loopback_network(8) as nodes:
        phone_old = presence(node="phone")
        phone_new = presence(node="phone", now=phone_old.updateDate + 1000)
        laptop = presence(node="laptop")
        await nodes[0].put(phone_new)
        await nodes[1].put(laptop)
        await nodes[2].put(phone_old)  # a replay of an older announcement changes nothing
        got = await nodes[5].get(phone_new.key)
        assert got is not None
        by_device = {v.id2: v.creationDate for v in got.values}
        assert by_device == {
            identity("phone").id_hex: phone_new.values[0].creationDate,
            identity("laptop").id_hex: laptop.values[0].creationDate,
        }


async def test_missing_record_is_none_and_bad_input_is_refused() -> None:
    async with loopback_network(4) as nodes:
        assert await nodes[1].get(meta_key(identity("nobody").id)) is None
        with pytest.raises(InvalidRecord) as info:
            await nodes[1].get("/weshare/x/")
        assert info.value.reason == "unknown_namespace"
        forged = meta()
        forged.values[0].value = forged.values[0].value[:-1] + bytes(
            [forged.values[0].value[-1] ^ 1]
        )
        with pytest.raises(InvalidRecord) as info:
            await nodes[0].put(forged)
        assert info.value.reason == "bad_signature"


async def test_local_copy_does_not_hide_a_newer_remote_one() -> None:
    async with loopback_network(6) as nodes:
        old, new = meta(name="Old"), meta(name="New", now=meta().updateDate + 1)
        await nodes[0].put(old)
        await nodes[1].put(new)
        got = await nodes[0].get(old.key)  # nodes[0] holds the old one locally
        assert got == new
        assert nodes[0].store is not None
        held = nodes[0].store.get(location(old.key), 0)
        assert held is not None
        assert held.record == new  # and it refreshed its own copy


async def test_put_with_no_peers_fails() -> None:
    node = DHTNode(loopback_config())
    await node.start()
    try:
        with pytest.raises(PutFailed, match="no node stored"):
            await node.put(presence())
    finally:
        await node.stop()
    with pytest.raises(NodeNotRunning):
        await node.get(presence_key(identity("alice").id))


async def test_stock_kademlia_routes_with_us_but_cannot_store_junk_or_be_chosen() -> None:
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    async with loopback_network(5) as nodes:
        stock = Server()
        await stock.listen(0, interface="127.0.0.1")
        try:
            found = await stock.bootstrap([nodes[0].address])
            # it learned our nodes through our node's find_node answers
            assert {n.port for n in found} >= {n.address[1] for n in nodes[1:]}
            assert len(stock.protocol.router.find_neighbors(stock.node)) >= 5
            await stock.set("hello", b"arbitrary bytes")  # returns once the stores were answered
            junk = location("hello")
            assert all(n.store is not None and n.store.get(junk, 0) is None for n in nodes)
            assert sum(n.stats.refused["malformed_record"] for n in nodes) >= 1
            # and it can fetch a real record through our nodes
            record = presence()
            assert await nodes[2].put(record) == 4  # the four others of ours, not the stock one
            value = await stock.get(record.key)
            assert value is not None
            # but it cannot prove an ID, so it is in no routing table and never holds a record
            stock_id = stock.node.id
            assert all(n.table is not None and n.table.get(stock_id) is None for n in nodes)
            assert stock.storage.get(location(record.key)) is None
        finally:
            stock.stop()
            await asyncio.sleep(0)
