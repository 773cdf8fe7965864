"""Garbage on the wire never crashes a node; every drop is counted by reason."""

from __future__ import annotations

import asyncio
import socket

import msgpack
import pytest

from node import DHTNode
from node.wire import decode, encode_request
from tests.loopback import loopback_config

pytestmark = pytest.mark.timeout(30)

MSG_ID = b"\x07" * 20


def request(name: object, args: object) -> bytes:
    body: bytes = msgpack.packb([name, args], use_bin_type=True)
    return b"\x00" + MSG_ID + body


async def exchange(sock: socket.socket, address: tuple[str, int], data: bytes) -> bytes:
    """Send `data` and wait for the answer."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, address)
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)


async def answers_before_ping(
    sock: socket.socket, address: tuple[str, int], datagrams: list[bytes]
) -> list[bytes]:
    """Send `datagrams`, then a ping; every answer that came before the ping's answer.

    Loopback keeps datagrams in order, so junk that were answered would show up first.
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
