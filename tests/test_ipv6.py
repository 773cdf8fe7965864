"""IPv6 and dual stack (issue 20; BEP 32's approach): one node ID, a routing table per address
family, answers in the asker's family. Real UDP sockets on ::1 and 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from node import DHTNode
from node.routing import family_of
from node.wire import decode, encode_request
from tests.loopback import loopback_config
from tests.records_factory import meta

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not socket.has_ipv6, reason="this Python has no IPv6 sockets"),
]


async def find_node(host: str, port: int) -> list[list[Any]]:
    """A find_node from a socket on `host` to the node at `port` there: the contacts."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((host, 0))
        request = encode_request(b"\x05" * 20, "find_node", [b"\x02" * 20, b"\x00" * 20])
        await loop.sock_sendto(sock, request, (host, port))
        answer: list[list[Any]] = decode(
            await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        ).body
        return answer


async def test_a_record_put_over_ipv4_is_got_by_an_ipv6_only_node() -> None:
    """Three nodes on ::1 only, one bound dual-stack (``::``), one on 127.0.0.1 only: the
    dual-stack node bridges the families."""
    nodes: list[DHTNode] = []
    try:
        bridge = DHTNode(loopback_config(host="::"))
        await bridge.start()
        nodes.append(bridge)
        port = bridge.address[1]
        for _ in range(3):
            v6 = DHTNode(loopback_config(host="::1", bootstrap=(("::1", port),)))
            await v6.start()
            nodes.append(v6)
        v4 = DHTNode(loopback_config(host="127.0.0.1", bootstrap=(("127.0.0.1", port),)))
        await v4.start()
        nodes.append(v4)
        assert bridge.table is not None
        assert bridge.table.families == {4, 6}
        assert v4.table is not None
        assert v4.table.families == {4}
        assert nodes[1].table is not None
        assert nodes[1].table.families == {6}
        # the bridge knows the IPv4 node at its IPv4 address (not ::ffff:127.0.0.1)
        contact = bridge.table.get(v4.id)
        assert contact is not None
        assert contact.address == ("127.0.0.1", v4.address[1])
        # ... and the IPv6 nodes never learn an IPv4 contact they could not reach
        assert all(family_of(c.address) == 6 for n in nodes[1:4] for c in n.table or ())
        record = meta(user="dual", name="Dual Stack")
        assert await v4.put(record) >= 1  # the bridge holds it (the only IPv4 node it knows)
        for reader in nodes[1:4]:
            assert await reader.get(record.key) == record
        # the same node ID in both families, proven in each
        assert bridge.table.get(nodes[1].id, 6) is not None
        # the bridge answers each asker with contacts of the asker's own family
        for host, family in (("::1", 6), ("127.0.0.1", 4)):
            hosts = {entry[1] for entry in await find_node(host, port)}
            assert hosts, host
            assert all(family_of((h, 0)) == family for h in hosts), (host, hosts)
    finally:
        for node in nodes:
            await node.stop()
