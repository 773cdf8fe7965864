"""Garbage on the wire never crashes a node; every drop is counted by reason."""

from __future__ import annotations

import asyncio
import socket

import msgpack
import pytest

from node import DHTNode
from node.wire import REQUEST, decode, encode_request
from tests.loopback import loopback_config

pytestmark = pytest.mark.timeout(30)

MSG_ID = b"\x07" * 20


def request(name: object, args: object) -> bytes:
    body: bytes = msgpack.packb([name, args], use_bin_type=True)
    return b"\x00" + MSG_ID + body


async def exchange(sock: socket.socket, address: tuple[str, int], data: bytes) -> bytes:
    """Send request `data` and wait for its answer (the node may also send us requests of its
    own, once it has taken our socket for a node: those are skipped)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, address)
    while True:
        answer = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        if answer[:21] == b"\x01" + data[1:21]:
            return answer


async def answers_before_ping(
    sock: socket.socket, address: tuple[str, int], datagrams: list[bytes]
) -> list[bytes]:
    """Send `datagrams`, then a ping; every answer that came before the ping's answer.

    Loopback keeps datagrams in order, so junk that were answered would show up first. Requests
    the node sends us (it pings an unknown sender for a proof of its ID) are not answers.
    """
    loop = asyncio.get_running_loop()
    for data in datagrams:
        await loop.sock_sendto(sock, data, address)
    ping_id = b"\x09" * 20
    await loop.sock_sendto(sock, encode_request(ping_id, "ping", [b"\x01" * 20]), address)
    before: list[bytes] = []
    while True:
        answer = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        if answer[1:21] == ping_id:
            return before
        if answer[0] != REQUEST:
            before.append(answer)


async def test_garbage_is_dropped_and_counted() -> None:
    node = DHTNode(loopback_config())
    await node.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    try:
        address = node.address
        nodeid = b"\x01" * 20
        junk = {
            "truncated": [b"", b"\x00", b"\x00" + MSG_ID],
            "malformed": [
                b"\x00" + MSG_ID + b"\xc1",  # never-used msgpack byte
                b"\x00" + MSG_ID + msgpack.packb(["ping", [nodeid]])[:-5],  # truncated msgpack
                request("ping", "not a list"),
                b"\x00" + MSG_ID + msgpack.packb({"a": 1}),
            ],
            "oversized": [b"\x00" + MSG_ID + b"\x00" * (9 * 1024)],
            "unknown_kind": [b"\x07" + MSG_ID + msgpack.packb(1)],
            "unknown_rpc": [request("delete_everything", [nodeid]), request(42, [])],
            "bad_arguments": [
                request("ping", []),
                request("ping", [nodeid, nodeid]),
                request("ping", [b"short"]),
                request("find_node", [nodeid, "not bytes"]),
                request("store", [nodeid, nodeid]),
                request("find_value", [1, 2]),
            ],
            "unexpected_response": [b"\x01" + MSG_ID + msgpack.packb(True)],
        }
        everything = [data for datagrams in junk.values() for data in datagrams]
        assert await answers_before_ping(sock, address, everything) == []
        # the node still answers a well-formed ping
        answer = await exchange(sock, address, encode_request(MSG_ID, "ping", [nodeid]))
        assert decode(answer).body == node.id
        dropped = node.stats.dropped
        for reason, datagrams in junk.items():
            assert dropped[reason] == len(datagrams), reason
        # a store of bytes that are not a record is answered with the refusal's reason
        answer = await exchange(
            sock, address, encode_request(MSG_ID, "store", [nodeid, nodeid, b"\xff\xfe"])
        )
        assert decode(answer).body == [False, "malformed_record"]
        assert node.stats.refused["malformed_record"] == 1
    finally:
        sock.close()
        await node.stop()


async def test_store_flood_from_one_source_is_throttled() -> None:
    node = DHTNode(loopback_config(store_burst=5, stores_per_source_per_s=1.0))
    await node.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    try:
        nodeid = b"\x01" * 20
        answers = []
        for _ in range(8):
            answer = await exchange(
                sock, node.address, encode_request(MSG_ID, "store", [nodeid, nodeid, b"x"])
            )
            answers.append(decode(answer).body)
        assert answers[:5] == [[False, "malformed_record"]] * 5
        assert answers[5:] == [[False, "rate_limited"]] * 3
        assert node.stats.dropped["rate_limited"] == 3
    finally:
        sock.close()
        await node.stop()


async def test_a_flooding_source_is_throttled_while_others_still_store() -> None:
    from tests.loopback import loopback_network
    from tests.records_factory import meta

    async with loopback_network(6, store_burst=20, stores_per_source_per_s=5.0) as nodes:
        target = nodes[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        flood = encode_request(MSG_ID, "store", [b"\x01" * 20, b"\x02" * 20, b"junk"])
        try:
            answers = []
            for i in range(300):
                answers.append(decode(await exchange(sock, target.address, flood)).body)
                if i % 60 == 0:  # meanwhile everyone else's stores still land on this node
                    record = meta(user=f"user{i}", name=f"User {i}")
                    assert await nodes[1 + i % 5].put(record) >= 4
        finally:
            sock.close()
        throttled = answers.count([False, "rate_limited"])
        assert throttled >= 250
        assert throttled + answers.count([False, "malformed_record"]) == 300
        assert target.stats.dropped["rate_limited"] == throttled
        assert target.store is not None
        assert len(target.store) >= 1  # the real stores were accepted


async def test_lookups_are_rate_limited_per_source_and_overall() -> None:
    node = DHTNode(
        loopback_config(lookup_burst=10, lookups_per_source_per_s=1.0, lookups_per_s=25.0)
    )
    await node.start()
    socks = []
    try:
        for _ in range(3):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        loop = asyncio.get_running_loop()
        query = encode_request(MSG_ID, "find_node", [b"\x01" * 20, b"\x02" * 20])
        for sock in socks:
            for _ in range(15):
                await loop.sock_sendto(sock, query, node.address)
        # a store from each socket, answered after everything it sent before (loopback keeps
        # order): once answered, the node has seen every query
        barrier = encode_request(b"\x0b" * 20, "store", [b"\x01" * 20, b"\x02" * 20, b"x"])
        for sock in socks:
            await exchange(sock, node.address, barrier)
        dropped = node.stats.dropped
        assert dropped["rate_limited_lookup"] == 3 * 5  # each source: 10 answered, 5 dropped
        assert dropped["rate_limited_global"] == 30 - 25  # and 25 in all
        assert node.stats.requests_in["find_node"] == 25
    finally:
        for sock in socks:
            sock.close()
        await node.stop()
