"""The control API, driven through ``python -m node ctl`` in a subprocess, and the metrics
endpoint, against nodes running in this test's event loop on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from node import DHTNode, SystemClock
from node.api import ControlServer
from node.keyfile import save_identity
from node.metrics import MetricsServer
from records import encode_record, make_meta_record, meta_key, presence_key
from tests.loopback import loopback_network
from tests.records_factory import identity

pytestmark = pytest.mark.timeout(120)


async def ctl(api: str, *args: str, stdin: bytes | None = None) -> tuple[int, Any, str]:
    """Run ``python -m node ctl --api API --json ARGS``: (exit code, parsed JSON, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node",
        "ctl",
        "--api",
        api,
        "--json",
        "--timeout",
        "20",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return proc.returncode or 0, lines[-1] if len(lines) == 1 else lines, err.decode()


def network(count: int) -> contextlib.AbstractAsyncContextManager[list[DHTNode]]:
    """`count` nodes on the real clock (records made by ctl are dated now)."""
    return loopback_network(count, clock=SystemClock())


@contextlib.asynccontextmanager
async def control_api(node: DHTNode) -> AsyncIterator[str]:
    """`node`'s control API on a free port while the block runs: its HOST:PORT."""
    server = ControlServer(node, port=0)
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop()


async def test_every_method_through_the_cli(tmp_path: Path) -> None:
    shutdown = asyncio.Event()
    async with network(6) as nodes:
        server = ControlServer(nodes[0], port=0, on_shutdown=shutdown.set)
        port = await server.start()
        api = f"127.0.0.1:{port}"
        try:
            code, status, _ = await ctl(api, "status")
            assert code == 0
            assert status["id"] == nodes[0].id.hex()
            assert status["routing_table_size"] == 5

            code, peers, _ = await ctl(api, "peers")
            assert code == 0
            assert len(peers["peers"]) == 5

            key = tmp_path / "alice.key"
            code, made, _ = await ctl(api, "keygen", str(key))
            assert code == 0
            uid = made["uid"]
            code, _, err = await ctl(api, "keygen", str(key))
            assert code == 2
            assert "exists" in err

            code, announced, _ = await ctl(api, "announce", "--key", str(key))
            assert code == 0
            assert announced["stored"] >= 3
            avatar = tmp_path / "a.png"
            avatar.write_bytes(b"\x89PNG" * 10)
            code, meta, _ = await ctl(
                api, "meta", "--key", str(key), "--name", "Alice", "--avatar", str(avatar)
            )
            assert code == 0
            assert meta["key"] == meta_key(uid)

            code, found, _ = await ctl(api, "lookup", uid)
            assert code == 0
            assert found["name"] == "Alice"
            assert found["avatar_size"] == 40
            assert [d["node"] for d in found["devices"]] == [nodes[0].id.hex()]

            code, got, _ = await ctl(api, "get", presence_key(uid))
            assert code == 0
            assert got["record"]["id1"] == uid
            code, missing, _ = await ctl(api, "get", presence_key(identity("nobody").id))
            assert code == 1
            assert missing["found"] is False

            bob = make_meta_record(
                identity("bob"), name="Bob", now=SystemClock().now_ms(), ttl_ms=3600_000
            )
            code, stored, _ = await ctl(api, "put", "-", stdin=encode_record(bob))
            assert code == 0
            assert stored["stored"] >= 3
            assert await nodes[4].get(bob.key) == bob

            code, _, _ = await ctl(api, "shutdown")
            assert code == 0
            await asyncio.wait_for(shutdown.wait(), 5)
        finally:
            await server.stop()


async def test_bad_requests_get_invalid_argument_with_the_reason(tmp_path: Path) -> None:
    async with network(3) as nodes:
        server = ControlServer(nodes[0], port=0)
        api = f"127.0.0.1:{await server.start()}"
        try:
            forged = make_meta_record(
                identity("bob"), name="Bob", now=SystemClock().now_ms(), ttl_ms=3600_000
            )
            forged.values[0].value = forged.values[0].value[:-1] + bytes(
                [forged.values[0].value[-1] ^ 1]
            )
            bad = tmp_path / "forged.bin"
            bad.write_bytes(encode_record(forged))
            code, answer, err = await ctl(api, "put", str(bad))
            assert code == 2
            assert "bad_signature" in err
            assert answer["error"].startswith("INVALID_ARGUMENT: bad_signature")
            code, answer, _ = await ctl(api, "get", "/nowhere/x/")
            assert code == 2
            assert "unknown_namespace" in answer["error"]
            code, answer, _ = await ctl(api, "lookup", "not-a-uid")
            assert "INVALID_ARGUMENT: bad_uid" in answer["error"]
            junk = tmp_path / "junk.bin"
            junk.write_bytes(b"\xff\x00junk")
            code, answer, _ = await ctl(api, "put", str(junk))
            assert "INVALID_ARGUMENT: malformed_record" in answer["error"]
        finally:
            await server.stop()


async def test_ctl_says_clearly_when_no_node_runs() -> None:
    code, answer, err = await ctl("127.0.0.1:9", "status")
    assert code == 3
    assert "no node answers" in answer["error"]
    assert "no node answers at 127.0.0.1:9" in err


async def test_listen_receives_a_value_put_by_another_node() -> None:
    async with network(5) as nodes:
        server = ControlServer(nodes[0], port=0)
        api = f"127.0.0.1:{await server.start()}"
        try:
            first = make_meta_record(
                identity("carol"), name="Carol", now=SystemClock().now_ms(), ttl_ms=3600_000
            )
            await nodes[3].put(first)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "node",
                "ctl",
                "--api",
                api,
                "--json",
                "listen",
                first.key,
                "--count",
                "2",
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None
            # the current version comes first ...
            event = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            assert event["record"]["updateDate"] == first.updateDate
            second = make_meta_record(
                identity("carol"), name="Carol 2", now=SystemClock().now_ms() + 1, ttl_ms=3600_000
            )
            await nodes[4].put(second)  # a different node, not the one listened to
            # ... then the new one, pushed to the listener
            event = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            assert event["record"]["updateDate"] == second.updateDate
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            await server.stop()


async def test_api_refuses_a_public_address_unless_allowed() -> None:
    async with network(1) as nodes:
        with pytest.raises(ValueError, match="allow_remote"):
            ControlServer(nodes[0], host="0.0.0.0")


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    return body.decode()


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_move_after_traffic() -> None:
    async with network(4) as nodes:
        metrics = MetricsServer(nodes[0], port=0)
        port = await metrics.start()
        try:
            before = await scrape(port)
            record = make_meta_record(
                identity("dave"), name="Dave", now=SystemClock().now_ms(), ttl_ms=3600_000
            )
            await nodes[0].put(record)
            await nodes[0].get(record.key)
            after = await scrape(port)
            for name in ("dht_rpc_requests_sent_total", "dht_lookup_seconds_count"):
                assert metric(after, name) > metric(before, name), name
            assert metric(after, "dht_records_held") >= 1
            assert metric(after, "dht_routing_table_size") == 3
            assert "dht_datagrams_dropped_total" in after or "dht_datagrams_dropped" in after
        finally:
            await metrics.stop()


async def test_node_process_serves_api_metrics_and_json_logs(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--api-port",
        "0",
        "--metrics-port",
        "0",
        "--log-format",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(3)]
        assert lines[0].startswith("node ")
        assert lines[1].startswith("control API on 127.0.0.1:")
        metrics_port = int(lines[2].rsplit(":", 1)[1].split("/")[0])
        assert "dht_routing_table_size" in await scrape(metrics_port)
        # ctl finds the API through the data dir
        status = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node",
            "--data-dir",
            str(data_dir),
            "ctl",
            "--json",
            "status",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(status.communicate(), 30)
        assert json.loads(out)["id"] == lines[0].split()[1]
        stop = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node",
            "--data-dir",
            str(data_dir),
            "ctl",
            "shutdown",
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(stop.wait(), 30) == 0
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        logs = (await proc.stderr.read()).decode().splitlines()
        events = [json.loads(line) for line in logs]  # every line is one JSON object
        assert any(e["msg"].startswith("node started id=") for e in events)
        assert all(set(e) >= {"ts", "level", "logger", "msg"} for e in events)
        key = (data_dir / "node.key").read_text().split()[-1]
        assert all(key not in line for line in logs)  # the secret key is never logged
        assert not (data_dir / "api.json").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_second_api_on_a_port_in_use_is_refused() -> None:
    async with network(1) as nodes:
        first = ControlServer(nodes[0], port=0)
        port = await first.start()
        try:
            with pytest.raises(OSError, match=f"control API address 127.0.0.1:{port} is in use"):
                await ControlServer(nodes[0], port=port).start()
        finally:
            await first.stop()


async def ctl_text(api: str, *args: str) -> tuple[int, str, str]:
    """Run ``python -m node ctl --api API ARGS`` for people: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node",
        "ctl",
        "--api",
        api,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_lone_node_stores_on_itself_and_counts_itself_among_holders(
    tmp_path: Path,
) -> None:
    alice = identity("alice")
    key = tmp_path / "alice.key"
    save_identity(alice, key)
    async with network(1) as nodes, control_api(nodes[0]) as api:
        code, out, err = await ctl_text(api, "announce", "--key", str(key))
        assert (code, err) == (0, "")
        assert out == (
            f"{alice.id_hex} announced through {nodes[0].id.hex()}; "
            "stored on this node only (no peers yet)\n"
        )
        code, out, err = await ctl_text(api, "meta", "--key", str(key), "--name", "Alice")
        assert (code, err) == (0, "")
        assert out == f"meta of {alice.id_hex} stored on this node only (no peers yet)\n"
        assert await nodes[0].get(meta_key(alice.id_hex)) is not None
    async with network(3) as nodes, control_api(nodes[0]) as api:
        code, stored, _ = await ctl(api, "announce", "--key", str(key))
        assert code == 0
        assert (stored["stored"], stored["others"]) == (3, 2)  # the origin and both others


async def test_ctl_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone (as head does after its lines): writes fail
    try:
        async with network(1) as nodes, control_api(nodes[0]) as api:
            for args in (["--api", api, "status"], ["keygen", str(tmp_path / "k.key")]):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "node",
                    "ctl",
                    *args,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=write_end,
                    stderr=asyncio.subprocess.PIPE,
                )
                _, err = await asyncio.wait_for(proc.communicate(), 30)
                assert (proc.returncode, err.decode()) == (0, ""), args
    finally:
        os.close(write_end)


async def test_listen_says_it_waits() -> None:
    async with network(2) as nodes, control_api(nodes[0]) as api:
        record = make_meta_record(
            identity("erin"), name="Erin", now=SystemClock().now_ms(), ttl_ms=3600_000
        )
        await nodes[1].put(record)
        code, out, err = await ctl_text(api, "listen", record.key, "--count", "1")
        assert code == 0
        assert err == f"waiting for new versions of {record.key} (exits after 1)\n"
        assert out.startswith(record.key)


async def test_a_uid_in_uppercase_is_looked_up() -> None:
    frank = identity("frank")
    async with network(2) as nodes, control_api(nodes[0]) as api:
        await nodes[1].put(
            make_meta_record(frank, name="Frank", now=SystemClock().now_ms(), ttl_ms=3600_000)
        )
        code, found, err = await ctl(api, "lookup", frank.id_hex.upper())
        assert (code, err) == (0, "")
        assert (found["uid"], found["name"]) == (frank.id_hex, "Frank")
