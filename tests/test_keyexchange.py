"""The anonymous key exchange on the simulated network (seed 002)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from node.keyexchange import KeyExchange
from records.errors import KeyExchangeFailed
from records.rke import (
    GET_KEY,
    POST_KEY,
    SIGNAL,
    GetKeyStatus,
    PostKeyStatus,
    SignalStatus,
    encode_get_key,
    parse_response,
    request,
)
from simulations.clock import run_virtual
from simulations.harness import SimNode, Simulation

pytestmark = pytest.mark.timeout(60)


def exchange(node: SimNode) -> KeyExchange:
    assert node.node is not None
    service = node.node.service(KeyExchange)
    assert service is not None
    return service


def run_key_exchange(sim: Simulation, **settings: Any) -> dict[str, Any]:
    """Nodes started from now on run a `KeyExchange(**settings)`; change the returned dict to
    change what later nodes run."""
    current = dict(settings)
    sim.services = lambda _node: [KeyExchange(**current)]
    return current


async def network(count: int, **settings: Any) -> Simulation:
    sim = Simulation(seed=21)
    run_key_exchange(sim, **{"serve": True, "ttl": 120.0, **settings})
    await sim.grow(count)
    return sim


def test_a_32_byte_key_reaches_the_receiver_in_parts_no_server_sees_it_whole() -> None:
    async def main() -> tuple[bytes, bytes, list[tuple[str, int]]]:
        sim = await network(25)
        sender, receiver = sim.nodes[2], sim.nodes[17]
        posts: list[tuple[str, int]] = []  # (server host, part length) of every accepted post
        for node in sim.live():
            ke = exchange(node)
            original: Callable[[bytes, Any, float], int] = ke._post

            def recording(
                body: bytes,
                addr: Any,
                now: float,
                ke: KeyExchange = ke,
                original: Callable[[bytes, Any, float], int] = original,
                host: str = node.host,
            ) -> int:
                status = original(body, addr, now)
                if status == PostKeyStatus.SUCCESS:
                    posts.append((host, body[33]))
                return status

            ke._post = recording  # type: ignore[method-assign]
        key = await exchange(sender).send_key(receiver.address)
        got = await asyncio.wait_for(exchange(receiver).received.get(), 5)
        held_after = sum(len(exchange(n).parts_held) for n in sim.live())
        await sim.stop_all()
        assert held_after == 0  # every part was fetched, so forgotten
        return key, got, posts

    key, got, posts = run_virtual(main())
    assert len(key) == 32
    assert key[-1] == 0xFF
    assert got == key
    assert len(posts) >= 2
    assert sum(length for _, length in posts) == 32
    hosts = [host for host, _ in posts]
    assert len(set(hosts)) == len(hosts)  # each part on a different server
    assert all(length < 32 for _, length in posts)  # so no server ever held the whole key


def test_parts_expire_and_a_replayed_get_key_finds_nothing() -> None:
    async def main() -> tuple[object, ...]:
        sim = await network(20, ttl=30.0)
        client, server = exchange(sim.nodes[1]), sim.nodes[9]
        first = await client.post_part(b"\x01\x02\x03\x04", server.address)
        assert exchange(server).parts_held == {first: b"\x01\x02\x03\x04"}
        fetched = await client.get_part(first, server.address)
        # the same request again (same challenge, same hash): the part is gone
        replay = encode_get_key(b"\x07" * 16, first)
        answers: list[bytes] = []
        waiting = asyncio.get_running_loop().create_future()
        own = sim.nodes[1].node
        assert own is not None
        assert own.protocol is not None

        def capture(data: bytes, addr: Any, now: float) -> None:
            answers.append(data)
            if not waiting.done():
                waiting.set_result(None)

        client._on_response = capture  # type: ignore[method-assign]
        own.protocol.send_datagram(request(GET_KEY, replay), server.address)
        await asyncio.wait_for(waiting, 5)
        del client._on_response  # the class's own again
        second = await client.post_part(b"\x05\x06\x07\x08", server.address)
        await asyncio.sleep(31)  # past the TTL
        try:
            await client.get_part(second, server.address)
            expired: object = "still there"
        except KeyExchangeFailed as exc:
            expired = exc
        await sim.stop_all()
        return fetched, parse_response(answers[0])[1], expired

    fetched, replay_status, expired = run_virtual(main())
    assert fetched == b"\x01\x02\x03\x04"
    assert replay_status == GetKeyStatus.KEY_NOT_FOUND
    assert isinstance(expired, KeyExchangeFailed)
    assert "status 12" in str(expired)


def test_a_new_post_from_the_same_sender_replaces_the_previous_one() -> None:
    async def main() -> dict[bytes, bytes]:
        sim = await network(20)
        client, server = exchange(sim.nodes[1]), sim.nodes[5]
        await client.post_part(b"\xaa" * 8, server.address)
        second = await client.post_part(b"\xbb" * 8, server.address)
        held = exchange(server).parts_held
        await sim.stop_all()
        assert list(held) == [second]
        return held

    assert list(run_virtual(main()).values()) == [b"\xbb" * 8]


def test_status_codes_over_the_wire() -> None:
    async def main() -> dict[str, int]:
        sim = Simulation(seed=22)
        settings = run_key_exchange(sim, serve=False)
        await sim.grow(4)
        plain = sim.nodes[3]
        settings.update(serve=True, max_parts=1)
        full = sim.new_host()
        await sim.start(full, via=[sim.nodes[0]])
        asker = sim.nodes[1].node
        assert asker is not None
        assert asker.protocol is not None
        protocol = asker.protocol
        answers: dict[int, bytes] = {}
        arrived = asyncio.Event()

        def capture(data: bytes, addr: Any, now: float) -> None:
            answers[data[0] & 0x7F] = data
            arrived.set()

        exchange(sim.nodes[1])._on_response = capture  # type: ignore[method-assign]

        async def ask(command: int, body: bytes, where: SimNode) -> int:
            arrived.clear()
            protocol.send_datagram(request(command, body), where.address)
            await asyncio.wait_for(arrived.wait(), 5)
            return parse_response(answers[command])[1]

        def post(start: int, length: int, key_id: bytes = b"\x01" * 16) -> bytes:
            return b"\x09" * 16 + key_id + bytes([start, length]) + bytes(128) + b"\xe3\xe3"

        codes = {
            "offline_post": await ask(POST_KEY, post(0, 8), plain),
            "offline_get": await ask(GET_KEY, b"\x09" * 32 + b"\xe3\xe3", plain),
            "short_post": await ask(POST_KEY, b"\x09" * 20, full),
            "bad_length": await ask(POST_KEY, post(0, 7), full),
            "bad_start": await ask(POST_KEY, post(125, 8), full),
            "posted": await ask(POST_KEY, post(0, 8), full),
            "short_get": await ask(GET_KEY, b"\x09", full),
            "not_found": await ask(GET_KEY, b"\x09" * 32 + b"\xe3\xe3", full),
            "bad_signal": await ask(SIGNAL, b"\x09" * 18, full),
        }
        # a second sender while the one slot is taken: the server is full ("offline")
        other = sim.nodes[2].node
        assert other is not None
        assert other.protocol is not None
        exchange(sim.nodes[2])._on_response = capture  # type: ignore[method-assign]
        arrived.clear()
        other.protocol.send_datagram(request(POST_KEY, post(0, 8, b"\x02" * 16)), full.address)
        await asyncio.wait_for(arrived.wait(), 5)
        codes["full"] = parse_response(answers[POST_KEY])[1]
        await sim.stop_all()
        return codes

    codes = run_virtual(main())
    assert codes == {
        "offline_post": PostKeyStatus.OFFLINE,
        "offline_get": GetKeyStatus.OFFLINE,
        "short_post": PostKeyStatus.FAIL,
        "bad_length": PostKeyStatus.BAD_KEY_LENGTH,
        "bad_start": PostKeyStatus.BAD_KEY_START,
        "posted": PostKeyStatus.SUCCESS,
        "short_get": GetKeyStatus.FAIL,
        "not_found": GetKeyStatus.KEY_NOT_FOUND,
        "bad_signal": SignalStatus.FAIL,
        "full": PostKeyStatus.OFFLINE,
    }


def test_send_key_passes_over_nodes_without_the_role() -> None:
    async def main() -> tuple[bytes, bytes]:
        sim = Simulation(seed=23)
        settings = run_key_exchange(sim, serve=False)
        await sim.grow(10)
        settings["serve"] = True
        for _ in range(12):
            await sim.start(sim.new_host(), via=[sim.nodes[0]])
        sender, receiver = sim.nodes[0], sim.nodes[15]
        key = await exchange(sender).send_key(receiver.address)
        got = await asyncio.wait_for(exchange(receiver).received.get(), 5)
        await sim.stop_all()
        return key, got

    key, got = run_virtual(main())
    assert key == got


def test_keys_go_through_as_few_as_two_or_three_key_servers() -> None:
    async def main() -> tuple[list[bool], str]:
        sim = Simulation(seed=24)
        settings = run_key_exchange(sim, serve=False)
        await sim.grow(10)
        settings["serve"] = True
        for _ in range(3):
            await sim.start(sim.new_host(), via=[sim.nodes[0]])
        sender, receiver = exchange(sim.nodes[1]), sim.nodes[5]
        sent: list[bool] = []
        for _ in range(10):  # the 3 key servers are among the 12 nodes found
            key = await sender.send_key(receiver.address)
            sent.append(await asyncio.wait_for(exchange(receiver).received.get(), 5) == key)
        two = [n.address for n in sim.nodes[-2:]]
        key = await sender.send_key(receiver.address, servers=two)
        sent.append(await asyncio.wait_for(exchange(receiver).received.get(), 5) == key)
        try:
            await sender.send_key(receiver.address, servers=two[:1])
            refused = "sent through one key server"
        except KeyExchangeFailed as exc:
            refused = str(exc)
        await sim.stop_all()
        return sent, refused

    sent, refused = run_virtual(main())
    assert sent == [True] * 11
    assert refused == (
        "found 1 key server(s) among 1 nodes asked; a key exchange needs at least 2 besides "
        "the sender and the receiver"
    )


def test_a_key_handler_has_the_key_before_send_key_returns_and_parts_keep_their_limits() -> None:
    """What a directory server relies on: the key is in its handler's hands (not in the queue)
    when the sender learns it arrived; and a sender can ask for at least three parts of at
    most 16 bytes, so no key server holds more than half of the key."""

    async def main() -> tuple[list[bytes], list[bytes], list[list[int]], int]:
        sim = await network(16)
        sender, receiver = exchange(sim.nodes[2]), exchange(sim.nodes[11])
        handled: list[bytes] = []
        receiver.add_key_handler(handled.append)
        sizes: list[list[int]] = []
        original = sender.post_part
        current: list[int] = []

        async def recording(part: bytes, server: Any) -> bytes:
            current.append(len(part))
            return await original(part, server)

        sender.post_part = recording  # type: ignore[method-assign]
        sent = []
        for _ in range(20):
            current.clear()
            key = await sender.send_key(sim.nodes[11].address, min_parts=3, max_part=16)
            assert handled[-1] == key  # already handed over
            sent.append(key)
            sizes.append(list(current))
        receiver.remove_key_handler(handled.append)
        await sender.send_key(sim.nodes[11].address)
        queued = receiver.received.qsize()
        await sim.stop_all()
        return sent, handled, sizes, queued

    sent, handled, sizes, queued = run_virtual(main())
    assert handled == sent
    assert all(len(parts) >= 3 and max(parts) <= 16 and sum(parts) == 32 for parts in sizes)
    assert queued == 1  # without a handler, keys go to the queue again
