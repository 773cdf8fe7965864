"""The testnet for apps (issue 17 item 5): `simulations.testnet.Testnet` and the `testnet`
fixture of `simulations.pytest_plugin` (enabled in conftest.py), on virtual time.

The first test is the README's example, verbatim (`test_the_readme_example_is_this_file`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.chat import ChatClient
from records import presence_key
from simulations.clock import LeakedTasks, VirtualTimeLoop, run_virtual
from simulations.testnet import Testnet

pytestmark = pytest.mark.timeout(60)


# -- the README's example ---------------------------------------------------------------------


async def test_bob_reads_what_alice_sent_while_he_was_offline(testnet: Testnet) -> None:
    alice, bob = testnet.user("alice"), testnet.user("bob")
    bobs_phone = await testnet.add_node()
    async with ChatClient(bobs_phone, bob, name="Bob"):  # Bob publishes his name and device
        pass
    await testnet.take_offline(bobs_phone)
    alices_phone = await testnet.add_node()
    nonces = testnet.random_bytes("alice")  # seeded: the run repeats exactly
    async with ChatClient(alices_phone, alice, name="Alice", random_bytes=nonces) as a:
        await a.handshake(bob.id)
        await a.send(bob.id, "see you tomorrow")
    await asyncio.sleep(6 * 3600)  # six hours of virtual time, in about a second
    bobs_phone = await testnet.bring_back(bobs_phone)
    async with ChatClient(bobs_phone, bob) as b:
        texts = [e.text for e in await b.inbox() if e.kind == "message"]
    assert texts == ["see you tomorrow"]


# -- the fixture ------------------------------------------------------------------------------


def test_the_readme_example_is_this_file() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("async def test_bob_reads_what_alice_sent_while_he_was_offline")
    example = readme[start : readme.index("```", start)]
    assert example in Path(__file__).read_text(encoding="utf-8")


@pytest.mark.testnet(size=5, seed=3)
async def test_the_fixture_runs_the_test_on_the_networks_virtual_clock(testnet: Testnet) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    assert len(testnet.nodes) == testnet.size == 5
    assert testnet.seed == 3
    start, now = loop.time(), testnet.now_ms()
    await asyncio.sleep(3 * 3600)
    assert loop.time() - start == 3 * 3600
    assert testnet.now_ms() - now == 3 * 3600 * 1000
    assert all(node.running for node in testnet.nodes)


@pytest.mark.virtual_time
async def test_the_marker_gives_a_virtual_clock_without_a_network() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(3600)
    assert isinstance(loop, VirtualTimeLoop)
    assert loop.time() - start == 3600


async def test_other_async_tests_keep_their_usual_loop() -> None:
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)


# -- Testnet itself ---------------------------------------------------------------------------


def test_a_testnet_repeats_for_a_seed_and_keeps_a_node_taken_offline() -> None:
    async def main(seed: int) -> tuple[list[bytes], bool, bool]:
        async with Testnet(8, seed=seed) as net:
            ids = [node.id for node in net.nodes]
            alice = net.user("alice")
            device = await net.add_node()
            async with ChatClient(device, alice, name="Alice", random_bytes=net.random_bytes("a")):
                pass
            reader = net.nodes[0]
            assert await reader.get(presence_key(alice.id)) is not None
            await net.take_offline(device)
            assert not device.running
            assert device not in net.nodes
            back = await net.bring_back(device)
            assert back.running
            assert back.id == device.id
            assert back.store is not None
            held = back.store.get(bytes(20), net.now_ms()) is None  # (nothing at a made-up key)
            ran = all(node.running for node in net.nodes)
        return ids, held, ran and not any(node.running for node in net.nodes)

    first = run_virtual(main(5))
    assert first == run_virtual(main(5))
    assert first[0] != run_virtual(main(6))[0]
    assert first[1:] == (True, True)


def test_a_testnet_needs_virtual_time_and_stops_its_nodes() -> None:
    async def on_a_real_loop() -> None:
        async with Testnet(2):
            pass

    with pytest.raises(RuntimeError, match="virtual time"):
        asyncio.run(on_a_real_loop())

    async def left_running() -> None:
        net = Testnet(3)
        await net.start()  # and never closed

    with pytest.raises(LeakedTasks):
        run_virtual(left_running())
    with pytest.raises(ValueError, match="at least one"):
        Testnet(0)
