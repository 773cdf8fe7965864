"""Three `python -m node` processes: a record put through the first is got through the third,
and a holder killed with SIGKILL and restarted on its data dir still serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node import DHTNode, SystemClock
from node.wire import decode, encode_request
from records import decode_record, location
from tests.loopback import loopback_config
from tests.records_factory import presence

pytestmark = pytest.mark.timeout(90)

LISTENING = re.compile(rb"node ([0-9a-f]{40}) listening on 127\.0\.0\.1:(\d+)")


class NodeProcess:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.id = ""

    async def start(self, port: int = 0, bootstrap: tuple[int, ...] = ()) -> None:
        args = [
            sys.executable,
            "-m",
            "node",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(self.data_dir),
            "--api-port",
            "0",  # each node its own control API
            "--log-level",
            "WARNING",
        ]
        for other in bootstrap:
            args += ["--bootstrap", f"127.0.0.1:{other}"]
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        match = LISTENING.search(line)
        assert match, f"unexpected first line: {line!r}"
        self.id, self.port = match.group(1).decode(), int(match.group(2))

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no chance to clean up
        await self.proc.wait()

    async def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.returncode is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), 20)
        code = await self.proc.wait()
        assert b"node stopped" in rest
        return code


@contextlib.asynccontextmanager
async def client(bootstrap_port: int) -> AsyncIterator[DHTNode]:
    node = DHTNode(loopback_config(bootstrap=(("127.0.0.1", bootstrap_port),), clock=SystemClock()))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def find_value(port: int, key: bytes) -> object:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    try:
        await loop.sock_sendto(
            sock,
            encode_request(b"\x05" * 20, "find_value", [b"\x02" * 20, key]),
            ("127.0.0.1", port),
        )
        return decode(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)).body
    finally:
        sock.close()


async def test_three_processes_survive_sigkill(tmp_path: Path) -> None:
    nodes = [NodeProcess(tmp_path / f"node{i}") for i in range(3)]
    try:
        await nodes[0].start()
        await nodes[1].start(bootstrap=(nodes[0].port,))
        await nodes[2].start(bootstrap=(nodes[1].port, nodes[0].port))

        # The processes run on the real clock, so the record is dated now.
        record = presence(now=SystemClock().now_ms(), ttl_ms=3600 * 1000)
        async with client(nodes[0].port) as first:
            assert await first.put(record) >= 3
        async with client(nodes[2].port) as third:
            assert await third.get(record.key) == record

        holder = nodes[1]
        await holder.kill()
        port = holder.port
        await holder.start(port=port)
        assert holder.port == port
        answer = await find_value(port, location(record.key))
        assert isinstance(answer, dict)
        assert decode_record(answer["value"]) == record
        for node in nodes:
            assert await node.stop() == 0
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.returncode is None:
                node.proc.kill()
                await node.proc.wait()


async def test_a_restarted_node_rejoins_through_its_saved_contacts(tmp_path: Path) -> None:
    """A node stopped and started again with no --bootstrap rejoins through the contacts it
    saved (each proves its ID again) and serves a get of a record put while it was away."""
    nodes = [NodeProcess(tmp_path / f"node{i}") for i in range(4)]
    try:
        await nodes[0].start()
        for i in (1, 2):
            await nodes[i].start(bootstrap=(nodes[0].port,))
        await nodes[3].start(bootstrap=(nodes[0].port, nodes[1].port))
        assert await nodes[3].stop() == 0
        saved = json.loads((tmp_path / "node3" / "contacts.json").read_text())
        assert len(saved["contacts"]) == 3
        record = presence(now=SystemClock().now_ms(), ttl_ms=3600 * 1000)
        async with client(nodes[0].port) as writer:
            assert await writer.put(record) >= 3  # while node 3 is away: it does not hold it
        loop = asyncio.get_running_loop()
        restarted = loop.time()
        await nodes[3].start(port=nodes[3].port)  # no --bootstrap
        got = None
        for _ in range(20):  # bounded: each attempt is a fresh client through node 3 only
            async with client(nodes[3].port) as reader:
                got = await reader.get(record.key)
            if got is not None:
                break
        elapsed = loop.time() - restarted
        assert got == record
        assert elapsed < 10, f"rejoined and served the get after {elapsed:.1f} s"
        print(f"restarted node served the get {elapsed:.2f} s after it was started again")
        for node in nodes:
            assert await node.stop() == 0
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.returncode is None:
                node.proc.kill()
                await node.proc.wait()
