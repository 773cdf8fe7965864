"""``lookup``: a steady network; get latency, rounds and messages per get, and the same for
plain node lookups (find_node, what a put or a join does), reported as ``lookup_*``: a get may
take several disjoint paths (``get_paths``), a node lookup takes one. Puts (a lookup, then
stores on the `replicas` closest) are timed too (``put_*``)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from node import NodeNotRunning
from simulations.harness import Percentiles, Simulation
from simulations.report import Progress
from simulations.scenarios.common import (
    HOUR,
    MINUTE,
    Outcome,
    add_common_arguments,
    grow,
    measure_gets,
    put_records,
    run_scenario,
    summarize,
    summarize_puts,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lookup``."""
    add_common_arguments(parser, nodes=1000, keys=200)
    parser.add_argument("--gets", type=int, default=1000, help="gets to measure (1000)")
    parser.add_argument("--settle", type=float, default=10.0, help="virtual minutes before (10)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``lookup``."""
    if args.gets < 1 or args.settle < 0:
        raise SystemExit("--gets must be positive and --settle not negative")

    async def body(sim: Simulation, progress: Progress) -> Outcome:
        await grow(sim, args.nodes, progress)
        progress.set_postfix_str("settling")
        await asyncio.sleep(args.settle * MINUTE)
        tracked = await put_records(sim, args.keys, ttl_ms=int(2 * HOUR * 1000))
        progress.set_postfix_str("measuring")
        items = [sim.rng.choice(tracked) for _ in range(args.gets)]
        samples = await measure_gets(sim, items)
        progress.update(args.gets)
        metrics = summarize(samples)
        metrics.update(summarize_puts(tracked))
        metrics.update(await measure_node_lookups(sim, args.gets))
        metrics["datagrams"] = sim.network.counters["sent"]
        return Outcome(
            metrics=metrics,
            latencies={"get": [s.ms for s in samples]},
            messages=[s.messages for s in samples],
        )

    return run_scenario("lookup", args, body, total=args.nodes + args.gets)


async def measure_node_lookups(sim: Simulation, count: int) -> dict[str, float]:
    """`count` find_node lookups of random targets from random nodes: messages and rounds."""
    semaphore = asyncio.Semaphore(64)
    messages: list[float] = []
    rounds: list[float] = []
    live = sim.live()  # once: a list of every node per lookup cost O(nodes) each

    async def one() -> None:
        via = sim.rng.choice(live)
        target = sim.rng.randbytes(20)
        async with semaphore:
            if via.node is None:
                return
            try:
                result = await via.node.lookup_nodes(target)
            except NodeNotRunning:
                return
        messages.append(result.messages)
        rounds.append(result.rounds)

    await asyncio.gather(*(one() for _ in range(count)))
    m, r = Percentiles.of(messages), Percentiles.of(rounds)
    return {
        "lookups": len(messages),
        "lookup_messages_p50": m.p50,
        "lookup_messages_p95": m.p95,
        "lookup_rounds_p50": r.p50,
        "lookup_rounds_p95": r.p95,
    }
