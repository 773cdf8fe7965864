"""``mass-failure``: a share of the nodes dies at once, silently; gets before and right after."""

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
    """Options of ``mass-failure``."""
    add_common_arguments(parser, nodes=1000, keys=500)
    parser.add_argument("--kill", type=float, default=0.2, help="share of nodes to kill (0.2)")
    parser.add_argument("--settle", type=float, default=10.0, help="virtual minutes before (10)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``mass-failure``."""
    if not 0.0 < args.kill < 1.0:
        raise SystemExit("--kill must be in (0, 1)")

    async def body(sim: Simulation, progress: Progress) -> Outcome:
        await grow(sim, args.nodes, progress)
        await asyncio.sleep(args.settle * MINUTE)
        tracked = await put_records(sim, args.keys, ttl_ms=int(2 * HOUR * 1000))
        progress.set_postfix_str("before")
        before = await measure_gets(sim, tracked)
        progress.update(args.keys)
        live = sim.live()
        victims = sim.rng.sample(live, int(len(live) * args.kill))
        progress.set_postfix_str(f"killing {len(victims)}")
        await asyncio.gather(*(sim.crash(v) for v in victims))
        progress.set_postfix_str("after")
        after = await measure_gets(sim, tracked)
        progress.update(args.keys)
        metrics = {**summarize(before), **summarize(after, "after_"), "killed": len(victims)}
        if metrics.get("get_p95_ms"):
            metrics["after_p95_ratio"] = round(
                metrics["after_get_p95_ms"] / metrics["get_p95_ms"], 3
            )
        return Outcome(
            metrics=metrics,
            latencies={"before": [s.ms for s in before], "after": [s.ms for s in after]},
            messages=[s.messages for s in before + after],
        )

    return run_scenario("mass-failure", args, body, total=args.nodes + 2 * args.keys)
