"""``fuzz``: hostile datagrams at a live node; counts what escapes (must be nothing).

Datagrams come from a seeded generator mixing random bytes, mutated valid requests (bit flips,
truncations, extensions), well-framed requests with arguments of every wrong type and size,
store requests carrying mutated records (so the validators run), responses nobody asked for,
and key-exchange datagrams; sources rotate over many addresses to grow per-source state. The
target is a real `DHTNode` on the simulated network, fed through `datagram_received` exactly as
a socket would.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import traceback
from collections import Counter
from typing import Any

import msgpack

from records import encode_record, location
from simulations.clock import run_virtual
from simulations.harness import Simulation
from simulations.report import peak_rss_mb, progress_bar
from simulations.scenarios.common import announce, user_identity

RPC_NAMES = ["ping", "store", "find_node", "find_value", "stun", "delete", "", "x" * 300]


class DatagramFuzzer:
    """Hostile datagrams from one seeded generator."""

    def __init__(self, seed: int, valid_records: list[bytes]) -> None:
        self.rng = random.Random(seed)
        self.records = valid_records

    def _obj(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return rng.randbytes(rng.choice([0, 1, 19, 20, 21, 32, rng.randrange(2000)]))
        if kind == 1:
            return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-(10**9), 10**9)])
        if kind == 2:
            return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(40)))
        if kind == 3:
            return rng.choice([None, True, False])
        if kind == 4:
            return rng.random() * 1e9
        if kind == 5:
            return rng.randbytes(20)
        if kind == 6:
            return [self._obj(depth + 1) for _ in range(rng.randrange(6))]
        if kind == 7:
            return {str(i): self._obj(depth + 1) for i in range(rng.randrange(4))}
        return [[rng.randbytes(20), "127.0.0.1", rng.randrange(70000)] for _ in range(25)]

    def _mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(4)
            if op == 0 and buf:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            elif op == 1 and buf:
                del buf[rng.randrange(len(buf)) :]
            elif op == 2:
                buf += rng.randbytes(rng.randrange(64))
            elif buf:
                at = rng.randrange(len(buf))
                buf[at : at + 1] = rng.randbytes(rng.randrange(8))
        return bytes(buf)

    def _request(self, name: Any, args: Any) -> bytes:
        body: bytes = msgpack.packb([name, args], use_bin_type=True)
        return b"\x00" + self.rng.randbytes(20) + body

    def datagram(self) -> bytes:
        """One hostile datagram."""
        rng = self.rng
        strategy = rng.randrange(8)
        if strategy == 0:
            return rng.randbytes(rng.choice([0, 1, 20, 21, 22, rng.randrange(10_000)]))
        if strategy == 1:
            name = rng.choice(RPC_NAMES) if rng.random() < 0.9 else self._obj()
            return self._request(name, [self._obj() for _ in range(rng.randrange(5))])
        if strategy == 2:
            record = rng.choice(self.records)
            data = self._mutate(record) if rng.random() < 0.8 else record
            key = location(f"/presence/{rng.randbytes(20).hex()}/") if rng.random() < 0.3 else None
            return self._request("store", [rng.randbytes(20), key or rng.randbytes(20), data])
        if strategy == 3:
            valid = self._request(
                rng.choice(["ping", "find_node", "find_value"]),
                [rng.randbytes(20), rng.randbytes(20)],
            )
            return self._mutate(valid)
        if strategy == 4:
            body: bytes = msgpack.packb(self._obj(), use_bin_type=True)
            return b"\x01" + rng.randbytes(20) + body
        if strategy == 5:
            return bytes([rng.choice([41, 42, 43])]) + rng.randbytes(
                rng.choice([0, 16, 34, 164, 300])
            )
        if strategy == 6:
            return bytes([rng.choice([0xA9, 0xAA, 0xAB])]) + rng.randbytes(rng.randrange(60))
        return self._request(
            "find_value", [rng.randbytes(20), location(f"/meta/{rng.randbytes(20).hex()}/")]
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fuzz``."""
    parser.add_argument("--count", type=int, default=100_000, help="datagrams (100000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--sources", type=int, default=50_000, help="distinct source addresses")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``fuzz``."""
    if args.count < 1 or args.sources < 1:
        raise SystemExit("--count and --sources must be positive")
    return run_virtual(_fuzz(args.count, args.seed, args.sources, args.quiet))


async def _fuzz(count: int, seed: int, sources: int, quiet: bool) -> dict[str, Any]:
    sim = Simulation(seed=seed)
    await sim.grow(8)
    target, peer = sim.nodes[0], sim.nodes[1]
    target_node = target.running_node
    protocol = target_node.protocol
    assert protocol is not None
    records = [
        encode_record(announce(sim, user_identity(seed, i), sim.nodes[i % 8], 3600_000))
        for i in range(20)
    ]
    fuzzer = DatagramFuzzer(seed, records)
    crashes: Counter[str] = Counter()
    example = ""
    bar = progress_bar(count, "fuzz", quiet=quiet)
    started = time.perf_counter()
    for i in range(count):
        data = fuzzer.datagram()
        n = fuzzer.rng.randrange(sources)
        source = (f"127.{200 + n % 50}.{(n >> 8) & 255}.{n & 255}", 1 + n % 60000)
        try:
            protocol.datagram_received(data, source)
        except Exception as exc:  # the point of the run: nothing may escape
            crashes[type(exc).__name__] += 1
            example = example or traceback.format_exc()
        if i % 1000 == 999:
            await asyncio.sleep(0.001)  # let timers, writes and answers run
            bar.update(1000)
    bar.close()
    wall = time.perf_counter() - started
    # the node still works: a peer's ping is answered
    node = peer.running_node
    assert node.protocol is not None
    ok, answer = await node.protocol.call(target.address, "ping", [node.id], target.identity.id)
    table, store = target_node.table, target_node.store
    stats = target_node.stats
    result = {
        "benchmark": "fuzz",
        "datagrams": count,
        "crashes": sum(crashes.values()),
        "crash_types": dict(crashes),
        "handler_errors": stats.dropped.get("handler_error", 0),
        "alive_after": bool(ok and answer == target.identity.id),
        "dropped": dict(sorted(stats.dropped.items())),
        "refused": dict(sorted(stats.refused.items())),
        "requests_answered": dict(sorted(stats.requests_in.items())),
        "routing_table_size": len(table) if table is not None else 0,
        "records_held": len(store) if store is not None else 0,
        "record_bytes_held": store.bytes_used if store is not None else 0,
        "datagrams_per_s": round(count / wall),
        "wall_s": round(wall, 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    if example:
        result["first_crash"] = example[-2000:]
    await sim.stop_all()
    return result
