"""``lookup``: a steady network; get latency, rounds and messages per lookup."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from simulations.harness import Simulation
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
        metrics["datagrams"] = sim.network.counters["sent"]
        return Outcome(
            metrics=metrics,
            latencies={"get": [s.ms for s in samples]},
            messages=[s.messages for s in samples],
        )

    return run_scenario("lookup", args, body, total=args.nodes + args.gets)
