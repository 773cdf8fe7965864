"""``bench-loopback``: our node and stock `kademlia` on the same workload, real UDP on 127.0.0.1.

For each implementation, in one process: start N nodes (each joining through a random earlier
one), put K records through random nodes, get each from a random node, then stop a share of the
nodes abruptly (sockets closed, nothing said) and get every record again. Latencies are wall
clock. Stock kademlia is slow enough under failures that its phases run under a time budget;
what did not finish in it is counted as failed and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kademlia.network import Server

from node import DHTNode, NodeConfig
from records import Identity, Record, encode_record, make_presence_record
from simulations.harness import Percentiles
from simulations.report import peak_rss_mb
from simulations.scenarios.common import add_node_options, node_overrides

HOST = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench-loopback``."""
    parser.add_argument("--nodes", type=int, default=500, help="nodes per implementation (500)")
    parser.add_argument("--keys", type=int, default=100, help="records to put (100)")
    parser.add_argument("--kill", type=float, default=0.2, help="share of nodes stopped (0.2)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument(
        "--impl",
        choices=["both", "ours", "stock"],
        default="both",
        help="which implementation(s) to run (both)",
    )
    parser.add_argument(
        "--stock-budget",
        type=float,
        default=120.0,
        help="wall seconds allowed per stock phase (120)",
    )
    add_node_options(parser)  # our nodes only


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``bench-loopback``; the result holds one entry per implementation."""
    if args.nodes < 2 or args.keys < 1 or not 0 < args.kill < 1:
        raise SystemExit("need --nodes >= 2, --keys >= 1 and 0 < --kill < 1")
    overrides = node_overrides(args)
    for name in ("rpcudp", "kademlia"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # stock logs every timeout at ERROR
    result: dict[str, Any] = {"benchmark": "bench-loopback"}
    if args.impl in ("both", "ours"):
        result["ours"] = asyncio.run(_run(OursAdapter(overrides), args, budget=None))
    if args.impl in ("both", "stock"):
        result["stock"] = asyncio.run(_run(StockAdapter(), args, budget=args.stock_budget))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


class OursAdapter:
    """Drives `DHTNode`s."""

    name = "ours"

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.nodes: list[DHTNode] = []
        self.overrides = overrides

    async def start(self, bootstrap: tuple[str, int] | None) -> tuple[str, int]:
        joined = (bootstrap,) if bootstrap else ()
        node = DHTNode(NodeConfig(host=HOST, port=0, bootstrap=joined, **self.overrides))
        await node.start()
        self.nodes.append(node)
        return node.address

    async def put(self, index: int, record: Record) -> bool:
        return await self.nodes[index].put(record) > 0

    async def get(self, index: int, record: Record) -> bool:
        return await self.nodes[index].get(record.key) == record

    async def stop(self, index: int) -> None:
        await self.nodes[index].stop()


class StockAdapter:
    """Drives stock `kademlia.network.Server`s with the record bytes as values."""

    name = "stock"

    def __init__(self) -> None:
        self.nodes: list[Server] = []

    async def start(self, bootstrap: tuple[str, int] | None) -> tuple[str, int]:
        server = Server()
        await server.listen(0, interface=HOST)
        self.nodes.append(server)
        if bootstrap:
            await server.bootstrap([bootstrap])
        sockname = server.transport.get_extra_info("sockname")
        return (sockname[0], sockname[1])

    async def put(self, index: int, record: Record) -> bool:
        return bool(await self.nodes[index].set(record.key, encode_record(record)))

    async def get(self, index: int, record: Record) -> bool:
        return bool(await self.nodes[index].get(record.key) == encode_record(record))

    async def stop(self, index: int) -> None:
        self.nodes[index].stop()


Adapter = OursAdapter | StockAdapter


async def _run(adapter: Adapter, args: argparse.Namespace, budget: float | None) -> dict[str, Any]:
    rng = random.Random(args.seed)
    started = time.perf_counter()
    addresses: list[tuple[str, int]] = []
    for _ in range(args.nodes):
        addresses.append(await adapter.start(rng.choice(addresses) if addresses else None))
    joined = time.perf_counter() - started
    now = int(time.time() * 1000)
    records = [_record(args.seed, i, rng.randrange(args.nodes), now) for i in range(args.keys)]

    puts_ok = await _within(budget, records, lambda r: adapter.put(rng.randrange(args.nodes), r))
    live = list(range(args.nodes))
    before = await _within(budget, records, lambda r: adapter.get(rng.choice(live), r))
    victims = rng.sample(live, int(args.nodes * args.kill))
    for index in victims:
        await adapter.stop(index)
    dead = set(victims)
    survivors = [i for i in live if i not in dead]
    after = await _within(budget, records, lambda r: adapter.get(rng.choice(survivors), r))
    for index in survivors:
        await adapter.stop(index)
    out = {
        "implementation": adapter.name,
        "nodes": args.nodes,
        "keys": args.keys,
        "killed": len(victims),
        "join_s": round(joined, 1),
        "puts_ok": sum(1 for ms in puts_ok if ms >= 0),
        **_summary(before, args.keys, ""),
        **_summary(after, args.keys, "after_"),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    return out


def _record(seed: int, index: int, host_index: int, now: int) -> Record:
    user = Identity.from_seed(hashlib.sha256(f"bench-user-{seed}-{index}".encode()).digest())
    node = Identity.from_seed(hashlib.sha256(f"bench-node-{seed}-{host_index}".encode()).digest())
    key = hashlib.sha256(user.public_key).digest()
    return make_presence_record(
        user, node, handshake_key=key, presence_key=key, now=now, ttl_ms=3600 * 1000
    )


async def _within(
    budget: float | None, records: Sequence[Record], operation: Callable[[Record], Awaitable[bool]]
) -> list[float]:
    """Run `operation` on each record in turn: its latency in ms, or -1 if it failed. With a
    `budget` (seconds), what has not finished when it runs out is left out."""
    results: list[float] = []

    async def each() -> None:
        for record in records:
            start = time.perf_counter()
            try:
                ok = await operation(record)
            except Exception:
                ok = False
            results.append((time.perf_counter() - start) * 1000 if ok else -1.0)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(each(), budget)
    return results


def _summary(latencies: list[float], expected: int, prefix: str) -> dict[str, Any]:
    ok = [ms for ms in latencies if ms >= 0]
    stats = Percentiles.of(ok)
    return {
        f"{prefix}get_ok": round(len(ok) / expected, 4),
        f"{prefix}get_p50_ms": round(stats.p50, 2),
        f"{prefix}get_p95_ms": round(stats.p95, 2),
        f"{prefix}gets_finished": len(latencies),
    }
