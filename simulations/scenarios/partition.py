"""``partition``: the network splits in two, users update their records on their own side, the
split heals; how fast does every node see the newest records again?"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from simulations.harness import GetSample, Simulation
from simulations.report import Progress, Timeline
from simulations.scenarios.common import (
    HOUR,
    MINUTE,
    Outcome,
    Tracked,
    add_common_arguments,
    announce,
    grow,
    measure_gets,
    put_records,
    republish,
    run_scenario,
    summarize,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``partition``."""
    add_common_arguments(parser, nodes=500, keys=200)
    parser.add_argument(
        "--split", type=float, default=30.0, help="virtual minutes the partition lasts (30)"
    )
    parser.add_argument(
        "--after", type=float, default=60.0, help="virtual minutes measured after healing (60)"
    )
    parser.add_argument(
        "--sample-every",
        type=float,
        default=5.0,
        help="virtual minutes between samples after healing (5)",
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``partition``."""
    if args.split <= 0 or args.after <= 0 or args.sample_every <= 0:
        raise SystemExit("--split, --after and --sample-every must be positive")
    samples_total = int(args.after / args.sample_every)

    async def body(sim: Simulation, progress: Progress) -> Outcome:
        loop = asyncio.get_running_loop()
        await grow(sim, args.nodes, progress)
        await asyncio.sleep(5 * MINUTE)
        ttl_ms = int(4 * HOUR * 1000)
        tracked = await put_records(sim, args.keys, ttl_ms=ttl_ms)
        measured_before = loop.time()
        before = await measure_gets(sim, tracked)

        hosts = [n.host for n in sim.nodes]
        sim.rng.shuffle(hosts)
        side_a = set(hosts[: len(hosts) // 2])
        split_at = loop.time()
        sim.network.partition([side_a, set(hosts[len(hosts) // 2 :])])
        progress.set_postfix_str("partitioned")

        def minute(at: float) -> float:
            # to the 6 ms: gets before the split may take well under a second
            return round((at - split_at) / MINUTE, 4)

        await asyncio.sleep(MINUTE)
        # Every user announces again on its own side: version 2 exists on one side only.
        for item in tracked:
            item.record = announce(sim, item.user, item.origin, ttl_ms)
        await asyncio.gather(*(republish(i) for i in tracked))
        measured_during = loop.time()
        during = await _same_side_gets(sim, tracked, side_a)
        await asyncio.sleep(max(0.0, args.split * MINUTE - 2 * MINUTE))

        sim.network.heal()
        healed_at = loop.time()
        # before the split, version 1 is the newest; during it, version 2 on the user's side
        xs = [minute(measured_before), minute(measured_during)]
        newest = [_share_ok(before), _share_ok(during)]
        converged_at = None
        for _ in range(samples_total):
            await asyncio.sleep(args.sample_every * MINUTE)
            measured = loop.time()
            ok = _share_ok(await measure_gets(sim, tracked))
            xs.append(minute(measured))
            newest.append(ok)
            if converged_at is None and ok >= 0.999:
                converged_at = round((measured - healed_at) / MINUTE, 1)
            progress.update(1)
            progress.set_postfix_str(f"newest={ok:.4f}")
        metrics = {
            **summarize(before),
            **summarize(during, "during_"),
            "after_heal_newest_final": newest[-1] if samples_total else 0.0,
            "converged_after_min": converged_at,
        }
        return Outcome(
            metrics=metrics,
            latencies={"before": [s.ms for s in before], "partitioned": [s.ms for s in during]},
            timeline=Timeline(
                xs,
                {"gets returning the newest record": ("fraction of gets", newest)},
                {"split": 0.0, "heal": minute(healed_at)},
            ),
            timeline_xlabel="virtual minutes since the split",
        )

    return run_scenario("partition", args, body, total=args.nodes + samples_total)


def _share_ok(samples: list[GetSample]) -> float:
    return round(sum(s.ok for s in samples) / len(samples), 5) if samples else 0.0


async def _same_side_gets(sim: Simulation, tracked: list[Tracked], side_a: set[str]) -> list[Any]:
    """Gets during the split, each from a node on its user's side."""
    samples = []
    for item in tracked:
        side = [n for n in sim.live() if (n.host in side_a) == (item.origin.host in side_a)]
        via = sim.rng.choice(side)
        samples.append(sim.timed_get(via, item.record.key, item.record))
    return list(await asyncio.gather(*samples))
