"""Proven node identities: a node enters a routing table only after signing a fresh challenge
with the key behind its ID (issue 10)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from node import DHTNode
from node.engine.handlers import RequestHandlers
from node.engine.proofs import CHALLENGES, PROVE
from node.wire import REQUEST, decode, encode_request, encode_response
from records import Identity, location
from records.identity import check_node_proof, prove_node
from simulations.clock import run_virtual
from simulations.harness import Simulation
from simulations.scenarios.common import announce, user_identity
from tests.loopback import loopback_config

pytestmark = pytest.mark.timeout(60)

CHALLENGE = bytes(range(20))


def test_a_proof_answers_one_challenge_from_one_asker_for_one_identity() -> None:
    me, asker, other = (Identity.from_seed(bytes([i]) * 32) for i in range(3))
    public_key, signature = prove_node(me, CHALLENGE, asker.id)
    assert check_node_proof(me.id, public_key, signature, CHALLENGE, asker.id)
    assert not check_node_proof(me.id, public_key, signature, bytes(20), asker.id)  # replayed
    assert not check_node_proof(me.id, public_key, signature, CHALLENGE, other.id)  # relayed
    assert not check_node_proof(other.id, public_key, signature, CHALLENGE, asker.id)  # borrowed
    forged_key, forged_signature = prove_node(other, CHALLENGE, asker.id)
    assert not check_node_proof(me.id, forged_key, forged_signature, CHALLENGE, asker.id)


async def answer_ping_backs(
    sock: socket.socket, node_id: bytes, proof: Callable[[bytes, bytes], Any], count: int = 1
) -> list[list[Any]]:
    """Answer the node's next `count` requests to `sock` as `node_id`, with `proof(msg_id,
    asker_id)` as the proof; returns the requests' bodies."""
    loop = asyncio.get_running_loop()
    bodies: list[list[Any]] = []
    while len(bodies) < count:  # bounded: each wait times out after 5 s
        data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), 5)
        message = decode(data)
        if message.kind != REQUEST:
            continue  # the answer to our own ping
        bodies.append(message.body)
        asker_id = message.body[1][0]
        answer = {"answer": node_id, "proof": proof(message.msg_id, asker_id)}
        await loop.sock_sendto(sock, encode_response(message.msg_id, answer), source)
    return bodies


async def ask(sock: socket.socket, address: tuple[str, int], sender: bytes) -> None:
    """Send a ping from `sender`'s ID (the node pings back to check it)."""
    await asyncio.get_running_loop().sock_sendto(
        sock, encode_request(b"\x07" * 20, "ping", [sender]), address
    )


async def ping(sock: socket.socket, address: tuple[str, int], sender: bytes) -> None:
    """Ping as `sender` and wait for the answer. The node handles datagrams in the order they
    reach its socket, so by then it has handled everything sent to it before."""
    loop = asyncio.get_running_loop()
    msg_id = b"\x08" * 20
    await loop.sock_sendto(sock, encode_request(msg_id, "ping", [sender]), address)
    for _ in range(10):  # skips the node's own requests (ping-backs) to this socket
        message = decode(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
        if message.kind != REQUEST and message.msg_id == msg_id:
            return
    raise AssertionError("no answer to the ping")


async def test_only_a_node_that_signs_for_its_id_enters_the_table() -> None:
    node = DHTNode(loopback_config())
    await node.start()
    honest = Identity.from_seed(b"\x01" * 32)
    victim = Identity.from_seed(b"\x02" * 32)
    socks = []
    try:
        for _ in range(3):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        good, impostor, silent = socks
        # an honest newcomer: asked for a proof, gives it, is in the table
        await ask(good, node.address, honest.id)
        [body] = await answer_ping_backs(
            good, honest.id, lambda msg_id, asker: list(prove_node(honest, msg_id, asker))
        )
        assert body == ["ping", [node.id, CHALLENGES, PROVE]]
        # an impostor claims the victim's ID; it holds only its own key
        await ask(impostor, node.address, victim.id)
        await answer_ping_backs(
            impostor, victim.id, lambda msg_id, asker: list(prove_node(honest, msg_id, asker))
        )
        # a stock-like node never answers the proof request
        await ask(silent, node.address, b"\x03" * 20)
        await ping(good, node.address, honest.id)  # everything above has been handled
        assert node.table is not None
        assert node.table.get(honest.id) is not None
        assert node.table.get(victim.id) is None
        assert node.stats.dropped["unproven"] == 1
        assert node.table.get(b"\x03" * 20) is None
        # a proven contact is not asked again
        await ping(good, node.address, honest.id)
        # one ping back to each stranger, none to the proven one
        assert node.stats.requests_out["ping"] == 3
    finally:
        for sock in socks:
            sock.close()
        await node.stop()


async def test_a_proof_must_be_fresh() -> None:
    """An answer carrying a proof made for another challenge is refused."""
    node = DHTNode(loopback_config())
    await node.start()
    someone = Identity.from_seed(b"\x05" * 32)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    try:
        await ask(sock, node.address, someone.id)
        old = list(prove_node(someone, b"\x00" * 20, node.id))
        await answer_ping_backs(sock, someone.id, lambda _msg_id, _asker: old)
        await ping(sock, node.address, someone.id)  # the stale proof has been handled
        assert node.table is not None
        assert node.table.get(someone.id) is None
        assert node.stats.dropped["unproven"] == 1
    finally:
        sock.close()
        await node.stop()


def spoofing_node_class() -> type[DHTNode]:
    """Nodes that answer find_node with made-up IDs right next to the target, all at their
    own address (they cannot sign for those IDs), as an attacker choosing positions would."""

    class SpoofingHandlers(RequestHandlers):
        def closest_as_list(
            self, key: bytes, exclude: bytes, family: int | None = None
        ) -> list[list[Any]]:
            target = int.from_bytes(key, "big")
            config = self.engine.config  # a simulated node binds the host and port it is given
            return [
                [(target ^ (i + 1)).to_bytes(20, "big"), config.host, config.port]
                for i in range(config.k)
            ]

    class SpoofingNode(DHTNode):
        handlers_class = SpoofingHandlers

    return SpoofingNode


@pytest.mark.parametrize("prove_ids", [True, False])
def test_made_up_ids_never_reach_tables_or_hold_records(prove_ids: bool) -> None:
    """With proofs, IDs a liar made up next to a target enter no table and the record lands on
    the five closest real nodes; without proofs (stock behaviour) the made-up IDs take those
    places (so the test can fail)."""

    async def main() -> tuple[int, int, int]:
        sim = Simulation(seed=31, config={"prove_ids": prove_ids})
        liars = {5, 17, 29, 41}
        sim.node_class = lambda n: spoofing_node_class() if n.index in liars else DHTNode
        await sim.grow(60)
        spoofed_in_tables = 0
        record = announce(sim, user_identity(31, 0), sim.nodes[1], ttl_ms=3600_000)
        origin = sim.nodes[2].node
        assert origin is not None
        stored = await origin.put(record)
        real = {n.identity.id for n in sim.nodes}
        for n in sim.live():
            if n.index in liars or n.node is None or n.node.table is None:
                continue
            spoofed_in_tables += sum(1 for c in n.node.table if c.id not in real)
        target = int.from_bytes(location(record.key), "big")
        closest = sorted(sim.live(), key=lambda n: int.from_bytes(n.identity.id, "big") ^ target)
        honest_holders = sum(
            1
            for n in closest[:5]
            if n.node is not None
            and n.node.store is not None
            and n.node.store.get(location(record.key), sim.now_ms()) is not None
        )
        # once a liar's address proved to be its own, its other made-up IDs are not even asked
        skipped = sum(
            n.node.stats.dropped["address_of_another"]
            for n in sim.live()
            if n.node is not None and n.node.protocol is not None
        )
        await sim.stop_all()
        assert stored >= 1
        return spoofed_in_tables, honest_holders, skipped

    spoofed, holders, skipped = run_virtual(main())
    if prove_ids:
        assert spoofed == 0
        assert holders == 5
        assert skipped > 0
    else:
        assert spoofed > 0
        assert holders < 5
