"""What every scenario shares: arguments, the workload (signed presence records of synthetic
users, each announced through a node), measuring gets, and writing results."""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node import NodeNotRunning
from records import Identity, Record, make_presence_record
from simulations.clock import run_virtual
from simulations.harness import GetSample, Percentiles, SimNode, Simulation, holds
from simulations.report import (
    Progress,
    Timeline,
    peak_rss_mb,
    plot_cdf,
    plot_histogram,
    plot_timeline,
    progress_bar,
    write_result,
)

MINUTE = 60.0
HOUR = 3600.0
GC_YOUNG = 50_000
"""The cycle collector's young generation during a scenario (Python's default is 700). A
lookup's objects outlived two young collections and were promoted, so full collections, each
a scan of every node's objects (1.2 s at 5,000 nodes), ran 33 times in a lookup run: 13 % of
its CPU, a share growing with the network. Nodes leave nothing cyclic behind, so collecting
less often keeps no more memory."""


def add_common_arguments(parser: argparse.ArgumentParser, *, nodes: int, keys: int) -> None:
    """Options every scenario takes."""
    parser.add_argument("--nodes", type=int, default=nodes, help=f"network size ({nodes})")
    parser.add_argument("--keys", type=int, default=keys, help=f"records to put ({keys})")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--loss", type=float, default=0.0, help="datagram loss rate (0)")
    parser.add_argument("--out", type=Path, help="write result.json and PNG plots here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_node_options(parser)
    parser.add_argument(
        "--no-proximity",
        action="store_true",
        help="lookups and buckets in XOR order only, no round trips considered (comparison)",
    )
    parser.add_argument(
        "--get-quorum",
        type=int,
        help="agreeing copies that end a get early; 0: never (default: the node's default)",
    )


def add_node_options(parser: argparse.ArgumentParser) -> None:
    """Options on how our nodes get, for comparisons: every scenario and ``bench-loopback``
    take them (`node_overrides`)."""
    parser.add_argument(
        "--get-paths", type=int, help="disjoint paths per get (default: the node's default)"
    )
    parser.add_argument(
        "--no-proofs",
        action="store_true",
        help="trust claimed node IDs, as stock kademlia does (for comparison)",
    )
    parser.add_argument(
        "--get-lagging",
        type=int,
        help="paths a get may leave walking in when the copies agree; 0: wait for every path "
        "(default: the node's default)",
    )
    parser.add_argument(
        "--get-alpha",
        type=int,
        help="requests in flight per path of a get (default: the node's default)",
    )


def node_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `NodeConfig` settings that `add_node_options`' options change; a value out of range
    is refused (`SystemExit`) before anything runs."""
    if args.get_paths is not None and args.get_paths < 1:
        raise SystemExit("--get-paths must be at least 1")
    if args.get_lagging is not None and args.get_lagging < 0:
        raise SystemExit("--get-lagging must not be negative")
    if args.get_alpha is not None and args.get_alpha < 1:
        raise SystemExit("--get-alpha must be at least 1")
    overrides: dict[str, Any] = {}
    if args.get_paths is not None:
        overrides["get_paths"] = args.get_paths
    if args.no_proofs:
        overrides["prove_ids"] = False
    if args.get_lagging is not None:
        overrides["get_lagging_paths"] = args.get_lagging
    if args.get_alpha is not None:
        overrides["get_alpha"] = args.get_alpha
    return overrides


def check_common(args: argparse.Namespace) -> None:
    """Refuse nonsense before starting a long run."""
    if args.nodes < 2:
        raise SystemExit("--nodes must be at least 2")
    if args.keys < 1:
        raise SystemExit("--keys must be at least 1")
    if not 0.0 <= args.loss < 1.0:
        raise SystemExit("--loss must be in [0, 1)")
    if args.get_quorum is not None and args.get_quorum < 0:
        raise SystemExit("--get-quorum must not be negative")


@dataclass
class Tracked:
    """A synthetic user's presence record and the node it announces through."""

    user: Identity
    origin: SimNode
    record: Record
    live: bool = True
    put_ms: float | None = None
    """Virtual milliseconds the last put took, if it stored the record anywhere."""
    put_acks: int = 0
    """Nodes that acknowledged the last put."""
    settled: Record | None = None
    """The newest version whose put has ended, failed or not (`record` until one has): what a
    get must find. While a newer version's put is still in flight a get may find either: a
    churn sample that fell in one counted the old copy it found as a failure."""

    @property
    def expected(self) -> Record:
        """The version a get started now must find (or a newer one)."""
        return self.settled or self.record


@dataclass
class Outcome:
    """What a scenario measured."""

    metrics: dict[str, Any]
    latencies: dict[str, list[float]] = field(default_factory=dict)
    """Get latencies (ms) by phase, for the CDF plot."""
    timeline: Timeline | None = None
    """Samples over time (success, copies held ...), with what was done when."""
    timeline_xlabel: str = "virtual minutes"
    """What the timeline's minutes count from."""
    messages: list[int] = field(default_factory=list)
    """Messages per lookup, for the histogram."""


def user_identity(seed: int, index: int) -> Identity:
    """The same synthetic user for the same seed and index."""
    return Identity.from_seed(hashlib.sha256(f"user-{seed}-{index}".encode()).digest())


def announce(sim: Simulation, user: Identity, origin: SimNode, ttl_ms: int) -> Record:
    """A fresh presence record: `user` reachable through `origin`, signed by both."""
    seed = hashlib.sha256(user.public_key + origin.identity.public_key).digest()
    return make_presence_record(
        user,
        origin.identity,
        handshake_key=seed,
        presence_key=hashlib.sha256(seed).digest(),
        now=sim.now_ms(),
        ttl_ms=ttl_ms,
    )


async def put_records(sim: Simulation, count: int, ttl_ms: int) -> list[Tracked]:
    """`count` users, each announced through a random running node (puts run concurrently)."""
    live = sim.live()
    tracked = []
    for index in range(count):
        origin = sim.rng.choice(live)
        user = user_identity(sim.seed, index)
        tracked.append(Tracked(user, origin, announce(sim, user, origin, ttl_ms)))
    await asyncio.gather(*(republish(t) for t in tracked))
    return tracked


async def republish(item: Tracked) -> None:
    """Put `item`'s record through its origin (failures are measured by later gets)."""
    node = item.origin.node
    if node is None or not node.running:
        return
    record = item.record
    loop = asyncio.get_running_loop()
    started = loop.time()
    item.put_ms, item.put_acks = None, 0
    try:
        item.put_acks = await node.put(record)
    except Exception:  # a put can fail under churn; the scenario measures gets, not puts
        return
    finally:
        if item.settled is None or holds(record, item.settled):
            item.settled = record  # an older put ending late does not take it back
    item.put_ms = (loop.time() - started) * 1000


def summarize_puts(items: Sequence[Tracked]) -> dict[str, float]:
    """Latency of the puts that stored anywhere, and how many nodes acknowledged them."""
    ms = Percentiles.of([t.put_ms for t in items if t.put_ms is not None])
    acks = Percentiles.of([t.put_acks for t in items])
    return {
        "put_ok": round(sum(t.put_ms is not None for t in items) / len(items), 5) if items else 0,
        "put_p50_ms": round(ms.p50, 1),
        "put_p95_ms": round(ms.p95, 1),
        "put_acks_p50": acks.p50,
        "put_acks_min": acks.values[0] if acks.values else 0,
    }


async def measure_gets(
    sim: Simulation, items: Sequence[Tracked], *, concurrency: int = 64
) -> list[GetSample]:
    """One get per item from a random running node, at most `concurrency` at a time; a get
    is ok if it finds the item's `Tracked.expected` version or a newer one."""
    semaphore = asyncio.Semaphore(concurrency)
    live = sim.live()
    vias = [sim.rng.choice(live) for _ in items]

    async def one(item: Tracked, via: SimNode) -> GetSample:
        async with semaphore:
            for _ in range(3):
                if not via.alive:
                    via = sim.rng.choice(sim.live())
                try:
                    return await sim.timed_get(via, item.record.key, item.expected)
                except NodeNotRunning:
                    continue  # the asking node left mid-get; that says nothing of the record
            return GetSample(ok=False, ms=0.0, messages=0, rounds=0)

    return list(await asyncio.gather(*(one(i, v) for i, v in zip(items, vias, strict=True))))


def summarize(samples: Sequence[GetSample], prefix: str = "") -> dict[str, float]:
    """get_ok, latency percentiles, messages and rounds of `samples` (DESIGN §8 names)."""
    if not samples:
        return {f"{prefix}get_ok": 0.0}
    ms = Percentiles.of([s.ms for s in samples])
    messages = Percentiles.of([s.messages for s in samples])
    rounds = Percentiles.of([s.rounds for s in samples])
    return {
        f"{prefix}gets": len(samples),
        f"{prefix}get_ok": round(sum(s.ok for s in samples) / len(samples), 5),
        f"{prefix}get_p50_ms": round(ms.p50, 1),
        f"{prefix}get_p95_ms": round(ms.p95, 1),
        f"{prefix}get_p99_ms": round(ms.p99, 1),
        f"{prefix}messages_p50": messages.p50,
        f"{prefix}messages_p95": messages.p95,
        f"{prefix}rounds_p50": rounds.p50,
        f"{prefix}rounds_p95": rounds.p95,
    }


async def grow(sim: Simulation, nodes: int, progress: Progress) -> None:
    """Start the network, showing progress."""
    progress.set_postfix_str("joining")
    await sim.grow(nodes, progress=progress.update)


def run_scenario(
    name: str,
    args: argparse.Namespace,
    body: Callable[[Simulation, Progress], Awaitable[Outcome]],
    *,
    total: float,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `body` on a fresh simulation in virtual time and report it.

    Returns the flat metrics printed as JSON; with ``--out`` also writes ``result.json`` (config,
    metrics, wall time, peak RSS) and the plots.
    """
    check_common(args)
    sim_config = {**(config or {}), **node_overrides(args)}
    if args.no_proximity:
        sim_config["proximity"] = False
    if args.get_quorum is not None:
        sim_config["get_quorum"] = args.get_quorum
    started = time.perf_counter()
    progress = progress_bar(total, name, quiet=args.quiet)

    node_settings: dict[str, Any] = {}

    async def main() -> Outcome:
        sim = Simulation(seed=args.seed, loss=args.loss, config=sim_config)
        node_settings.update(sim.node_settings())
        try:
            return await body(sim, progress)
        finally:
            await sim.stop_all()

    thresholds = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, *thresholds[1:])
    try:
        outcome = run_virtual(main())
    finally:
        gc.set_threshold(*thresholds)
        progress.close()
    wall = round(time.perf_counter() - started, 1)
    flat = {
        "scenario": name,
        "nodes": args.nodes,
        "keys": args.keys,
        "seed": args.seed,
        **outcome.metrics,
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.out is not None:
        arguments = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        result = {
            "scenario": name,
            "config": {"arguments": arguments, "node": node_settings, "node_overrides": sim_config},
            "metrics": outcome.metrics,
            "wall_s": wall,
            "peak_rss_mb": flat["peak_rss_mb"],
        }
        if outcome.timeline is not None:
            result["timeline"] = outcome.timeline.as_json()
        write_result(args.out, result)
        _plots(args.out, name, outcome)
    return flat


def _plots(out: Path, name: str, outcome: Outcome) -> None:
    if outcome.latencies:
        plot_cdf(
            out / "latency_cdf.png",
            outcome.latencies,
            "get latency (virtual ms)",
            f"{name}: get latency",
        )
    if outcome.timeline is not None:
        plot_timeline(
            out / "success_over_time.png",
            outcome.timeline,
            outcome.timeline_xlabel,
            f"{name}: over time",
        )
    if outcome.messages:
        plot_histogram(
            out / "messages_per_lookup.png",
            outcome.messages,
            "messages per lookup",
            f"{name}: messages per lookup",
        )
