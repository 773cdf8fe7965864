"""The sealed DRD across real processes on 127.0.0.1: a ``python -m node --directory`` server,
three ``--key-server`` nodes, and a client here that sends the server its session key through
the three, then updates and searches a mailbox. A recording proxy between client and server
holds every TCP byte they exchange: no profile field, ticket or session ID is in it. The
directory command line finds the mailbox the same way, through a node of its own."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from node import DHTNode, SystemClock
from node.directory.client import DirectoryClient
from node.directory.keys import KeyExchangeAgreement
from node.directory.transport import TcpStreamTransport, encode_frame, read_frame
from node.keyexchange import KeyExchange
from records import Identity
from records.directory import (
    CHALLENGE_SIZE,
    Command,
    MailboxNumber,
    Profile,
    QMailServer,
    SearchRequest,
    Status,
    UpdateKey,
    mint_ticket,
    request_frame,
)
from records.drd import TicketAuthorities
from records.drd_channel import SEALED
from tests.loopback import loopback_config
from tests.processes import LISTENING, Process, node_args

pytestmark = pytest.mark.timeout(90)

AUTHORITIES = [Identity.from_seed(bytes([i + 70]) * 32) for i in range(3)]
OWNER = Identity.from_seed(b"process-owner".ljust(32, b"\x00"))
MAILBOX = MailboxNumber(6, 2, 0xC0FFEE)
COMMENT = "moved in with the cat"
PROFILE = Profile(
    display_name="Wire Ann",
    description="reads no clear text",
    avatar_name="wire-ann.png",
    avatar=b"\x89PNG-wire" + bytes(range(200, 256)) * 30,
    qmail=((0, QMailServer(6, "10.3.2.1", 2626)),),
)


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 to `upstream` that keeps every byte, both ways."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.chunks: list[tuple[str, bytes]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    async def _pump(
        self, way: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                self.chunks.append((way, data))
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(
                self._pump("up", reader, up_writer), self._pump("down", up_reader, writer)
            )
            with contextlib.suppress(ConnectionError):
                await up_writer.wait_closed()
                await writer.wait_closed()
        finally:
            self._tasks.discard(task)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        async with asyncio.timeout(10):
            while self._tasks:  # connections end as their client closes them
                await asyncio.wait(set(self._tasks))
        await self._server.wait_closed()

    def frames(self, way: str) -> list[bytes]:
        """The length-prefixed frames sent one way (connections one after another)."""
        data = b"".join(chunk for w, chunk in self.chunks if w == way)
        out = []
        while data:
            length = int.from_bytes(data[:4], "big")
            out.append(data[4 : 4 + length])
            data = data[4 + length :]
        return out


@contextlib.asynccontextmanager
async def processes(tmp_path: Path, trusted: Path) -> AsyncIterator[tuple[int, int]]:
    """A directory node and three key servers joined through it: (node UDP port, directory
    TCP port)."""
    common = ("--directory-authorities", str(trusted), "--no-api")
    started: list[Process] = []
    try:
        directory = Process(
            *node_args(tmp_path / "d", "--directory", str(tmp_path / "drd"), *common)
        )
        started.append(directory)
        port = int(directory.expect(LISTENING).group(2))
        tcp = int(directory.expect(r"directory on 127\.0\.0\.1:(\d+)").group(1))
        for index in range(3):
            args = ("--key-server", "--bootstrap", f"127.0.0.1:{port}", *common)
            started.append(Process(*node_args(tmp_path / f"k{index}", *args)))
        for key_server in started[1:]:
            key_server.expect(LISTENING)
        yield port, tcp
        for process in started:
            process.terminate()
        for process in started:
            assert process.stop() == 0
    finally:
        for process in started:
            process.close()


async def directory_cli(*args: str) -> tuple[int | None, bytes, bytes]:
    """Run ``python -m node.directory ARGS``: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.directory",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, out, err


async def test_a_sealed_session_over_three_key_servers_leaves_nothing_readable_on_the_wire(
    tmp_path: Path,
) -> None:
    trusted = TicketAuthorities(tuple(a.public_key for a in AUTHORITIES), 2)
    authorities = tmp_path / "authorities.json"
    authorities.write_text(trusted.to_json(), encoding="utf-8")
    async with processes(tmp_path, authorities) as (port, tcp):
        assert tcp == port  # the directory listens on TCP at its node's UDP port number
        config = loopback_config(
            bootstrap=(("127.0.0.1", port),), clock=SystemClock(), drd_authorities=trusted
        )
        node = DHTNode(config, services=[KeyExchange()])
        proxy = RecordingProxy(("127.0.0.1", tcp))
        await node.start()
        await proxy.start()
        try:
            exchange = node.service(KeyExchange)
            assert exchange is not None
            servers_used: list[set[tuple[str, int]]] = []
            post_part = exchange.post_part

            async def posting(part: bytes, server: tuple[str, int]) -> bytes:
                servers_used[-1].add(server)
                return await post_part(part, server)

            exchange.post_part = posting  # type: ignore[method-assign]
            agreement = KeyExchangeAgreement(node, min_parts=3)
            agreement.learn({proxy.address: ("127.0.0.1", port)})  # its key goes to the node
            agree = agreement.agree

            async def counted(server: tuple[str, int]) -> bytes:
                servers_used.append(set())
                return await agree(server)

            agreement.agree = counted  # type: ignore[method-assign]
            client = DirectoryClient(TcpStreamTransport(), keys=agreement, timeout=10.0)
            now = SystemClock().now_ms()
            ticket = mint_ticket(
                AUTHORITIES[:2], MAILBOX, OWNER.public_key, issued=now, expires=now + 3_600_000
            )
            session = await client.open_session(proxy.address, OWNER, ticket)
            await client.update(session, PROFILE, comment=COMMENT)
            found = await client.search(
                proxy.address, [UpdateKey.MAILBOX, UpdateKey.DISPLAY_NAME, UpdateKey.AVATAR]
            )
            assert found.rows == ((MAILBOX.to_bytes(), b"Wire Ann", PROFILE.avatar),)

            # clear text is refused (the server runs sealed by default)
            request = SearchRequest(b"\x05" * CHALLENGE_SIZE, bytes(16), (UpdateKey.MAILBOX,))
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(encode_frame(request_frame(Command.SEARCH, request.encode())))
            await writer.drain()
            clear_answer = await asyncio.wait_for(read_frame(reader), 10)
            writer.close()
            await writer.wait_closed()

            # python -m node.directory: its own node finds key servers and sends the key
            server = ("--server", f"127.0.0.1:{port}")
            cli = await directory_cli("search", *server, "--host", "127.0.0.1")
            clear_cli = await directory_cli("search", *server, "--clear-text")
        finally:
            await proxy.close()
            await node.stop()

    assert len(servers_used) == 2  # a key for the session, one for searches
    assert all(len(used) >= 3 for used in servers_used)  # each over three key servers
    assert clear_answer[1] == Status.ENCRYPTION_REQUIRED
    assert cli[0] == 0, cli
    assert b'"name": "Wire Ann"' in cli[1]
    assert clear_cli[0] == 1
    assert b"status 44" in clear_cli[2]  # refused: encryption required
    up, down = proxy.frames("up"), proxy.frames("down")
    assert len(up) == len(down) == 4  # open session, update, search; the clear search
    for frame in up[:3] + down[:3]:
        assert frame[0] == SEALED
    secrets = {
        "session id": session.key,
        "ticket": ticket.to_bytes(),
        "ticket body": ticket.to_bytes()[:48],
        "owner key": OWNER.public_key,
        "mailbox": MAILBOX.to_bytes(),
        "name": b"Wire Ann",
        "description": b"reads no clear text",
        "avatar name": b"wire-ann.png",
        "avatar": (PROFILE.avatar or b"")[:24],
        "qmail": QMailServer(6, "10.3.2.1", 2626).to_bytes(),
        "comment": COMMENT.encode(),
    }
    sealed = b"".join(up[:3] + down[:3])  # every byte but the 4-byte lengths
    for name, secret in secrets.items():
        assert secret not in sealed, name
