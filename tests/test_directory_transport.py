"""The directory over streams: real TCP on 127.0.0.1 (length-prefixed frames, limits), and the
simulator's in-memory streams (latency, partitions, virtual time)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from node import DHTNode
from node.directory.client import DirectoryClient
from node.directory.server import DirectoryConfig, DirectoryServer
from node.directory.transport import TcpStreamTransport, encode_frame
from records import Identity
from records.directory import (
    Condition,
    MailboxNumber,
    Operator,
    Profile,
    SearchKey,
    Status,
    Ticket,
    UpdateKey,
    mint_ticket,
)
from records.errors import DirectoryRefused, TransportError
from simulations.clock import run_virtual
from simulations.harness import Simulation
from simulations.streams import SimStreams
from tests.loopback import FixedClock, loopback_config
from tests.records_factory import NOW

pytestmark = pytest.mark.timeout(60)

AUTHORITIES = [Identity.from_seed(bytes([i + 7]) * 32) for i in range(3)]
OWNER = Identity.from_seed(b"drd-owner".ljust(32, b"\x00"))
MAILBOX = MailboxNumber(6, 3, 77)


def ticket(now: int, signers: int = 2) -> Ticket:
    return mint_ticket(
        AUTHORITIES[:signers], MAILBOX, OWNER.public_key, issued=now, expires=now + 86_400_000
    )


def directory_config(root: Path, *, inline_database: bool = False) -> DirectoryConfig:
    return DirectoryConfig(
        root=root,
        authorities=tuple(a.public_key for a in AUTHORITIES),
        threshold=2,
        inline_database=inline_database,
        clear_text=True,  # these tests are of the stream transport; sealed frames: test_drd_*
    )


async def test_loopback_tcp_update_search_and_limits(tmp_path: Path) -> None:
    node = DHTNode(loopback_config())
    await node.start()
    server = DirectoryServer(directory_config(tmp_path), node)
    await server.start()
    try:
        host, port = server.address
        assert host == "127.0.0.1"
        assert port == node.address[1]  # TCP at the node's (UDP) port number
        client = DirectoryClient(clock=FixedClock(NOW), timeout=5.0, clear_text=True)
        session = await client.open_session(server.address, OWNER, ticket(NOW))
        avatar = bytes(range(256)) * 99  # 25,344 bytes: far more than a datagram
        profile = Profile(display_name="Tcp Ann", avatar_name="a.bin", avatar=avatar)
        await client.update(session, profile, comment="over tcp")
        results = await client.search(
            server.address,
            [UpdateKey.MAILBOX, UpdateKey.AVATAR],
            [Condition(SearchKey.WHERE, UpdateKey.DISPLAY_NAME, Operator.EQUAL, "Tcp Ann")],
        )
        assert results.rows == ((MAILBOX.to_bytes(), avatar),)
        with pytest.raises(DirectoryRefused) as refused:
            await client.update(dataclasses.replace(session, key=bytes(16)), profile)
        assert refused.value.code == Status.NOT_AUTHORIZED

        # a frame announcing more than the limit ends the connection without an answer, at
        # once (not after the 30 s idle timeout, waiting for a gigabyte)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write((10**9).to_bytes(4, "big"))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        # one connection may carry several requests in turn
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(2):
            writer.write(encode_frame(b"\x63" + bytes(40)))
            await writer.drain()
            length = int.from_bytes(await reader.readexactly(4), "big")
            answer = await reader.readexactly(length)
            assert answer[1] == Status.INVALID_PARAMETER
        writer.close()
        await writer.wait_closed()
        # the client refuses to send an oversized frame
        small = DirectoryClient(
            TcpStreamTransport(max_frame_size=1000), clock=FixedClock(NOW), clear_text=True
        )
        with pytest.raises(TransportError):
            await small.update(session, profile)
    finally:
        await server.stop()
        await node.stop()
    with pytest.raises(TransportError):  # nobody listens any more
        await client.search((host, port), [UpdateKey.MAILBOX])


def test_simulated_streams_follow_latency_and_partitions(tmp_path: Path) -> None:
    async def main() -> None:
        sim = Simulation(seed=70)
        hosts = await sim.grow(3)
        streams = SimStreams(sim.network)
        node = hosts[0].node
        assert node is not None
        server = DirectoryServer(
            directory_config(tmp_path, inline_database=True),
            node,
            transport=streams.transport(hosts[0].host),
        )
        await server.start()
        client = DirectoryClient(
            streams.transport(hosts[1].host), clock=sim.clock, timeout=5.0, clear_text=True
        )
        loop = asyncio.get_running_loop()
        try:
            now = sim.now_ms()
            session = await client.open_session(server.address, OWNER, ticket(now))
            started = loop.time()
            await client.update(session, Profile(display_name="Sim"))
            elapsed = loop.time() - started
            assert elapsed == pytest.approx(sim.network.rtt(hosts[0].host, hosts[1].host))
            sim.network.partition([[hosts[0].host], [hosts[1].host, hosts[2].host]])
            started = loop.time()
            with pytest.raises(TransportError):
                await client.search(server.address, [UpdateKey.DISPLAY_NAME])
            assert loop.time() - started == pytest.approx(5.0)  # timed out, in virtual time
            sim.network.heal()
            results = await client.search(server.address, [UpdateKey.DISPLAY_NAME])
            assert results.rows == ((b"Sim",),)
            with pytest.raises(TransportError):
                await client.search((hosts[2].host, 9), [UpdateKey.DISPLAY_NAME])  # refused
        finally:
            await server.stop()
            await sim.stop_all()

    run_virtual(main())


async def closed_unanswered(reader: asyncio.StreamReader) -> bool:
    """True if the server closes the connection (or resets it) without answering."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def test_tcp_server_bounds_connections_and_idle_time() -> None:
    async def echo(frame: bytes, peer: tuple[str, int]) -> bytes:
        return frame

    transport = TcpStreamTransport(max_connections=2, idle_timeout=0.5)
    server = await transport.serve("127.0.0.1", 0, echo)
    try:
        assert await transport.request(server.address, b"ping", within=5) == b"ping"
        held = [await asyncio.open_connection(*server.address) for _ in range(2)]
        for _, writer in held:  # both are being served
            writer.write(encode_frame(b"x"))
            await writer.drain()
        for reader, _ in held:
            assert await reader.readexactly(5) == encode_frame(b"x")
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(encode_frame(b"x"))  # a third is turned away, unanswered
        await writer.drain()
        assert await closed_unanswered(reader)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        for reader, writer in held:  # idle ones are closed after the idle timeout
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
        assert server.dropped == 3
    finally:
        await server.close()


async def test_a_slow_frame_is_cut_off_and_a_failing_handler_ends_only_its_connection() -> None:
    """A client dribbling a frame a byte at a time cannot hold a connection (or its buffer)
    past the idle timeout; a handler that raises ends that connection, not the server."""

    async def answer(frame: bytes, peer: tuple[str, int]) -> bytes:
        if frame == b"boom":
            raise RuntimeError("handler bug")
        return frame

    transport = TcpStreamTransport(idle_timeout=0.5)
    server = await transport.serve("127.0.0.1", 0, answer)
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        started = loop.time()
        writer.write((1000).to_bytes(4, "big"))
        closed = False
        for _ in range(40):  # 4 s of one byte every 0.1 s, far past the 0.5 s deadline
            if reader.at_eof() or writer.is_closing():
                closed = True
                break
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            with contextlib.suppress(TimeoutError, ConnectionError):
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed = True
                    break
        assert closed
        assert loop.time() - started < 2.0
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert server.dropped == 1

        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(encode_frame(b"boom"))
        await writer.drain()
        assert await closed_unanswered(reader)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert server.failed == 1
        assert await transport.request(server.address, b"still here", within=5) == b"still here"
    finally:
        await server.close()


async def test_a_directory_that_cannot_open_its_database_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    (tmp_path / "directory.sqlite3").write_bytes(b"not a database" * 100)
    node = DHTNode(loopback_config())
    await node.start()
    try:
        server = DirectoryServer(directory_config(tmp_path), node)
        with pytest.raises(sqlite3.DatabaseError):
            await server.start()
        await server.stop()
    finally:
        await node.stop()
