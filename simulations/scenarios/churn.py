"""``churn``: nodes leave (silently) and join as Poisson processes while users keep announcing;
how many live records can be got, sampled over time.

Sessions are exponential with median ``--session`` minutes, so each node leaves at rate
ln 2 / session; joins come at the same total rate, keeping the size steady. Half the joins are
returning nodes (same identity and store), half are new. A record is live while the node its
user announces through runs (and it has not expired); users re-announce every hour, and as soon
as their node comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
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

RECORD_TTL = 2 * HOUR
REANNOUNCE_EVERY = HOUR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``churn``."""
    add_common_arguments(parser, nodes=1000, keys=200)
    parser.add_argument("--hours", type=float, default=1.0, help="virtual hours of churn (1)")
    parser.add_argument(
        "--session", type=float, default=60.0, help="median session length in minutes (60)"
    )
    parser.add_argument(
        "--sample-every", type=float, default=5.0, help="virtual minutes between samples (5)"
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``churn``."""
    if args.hours <= 0 or args.session <= 0 or args.sample_every <= 0:
        raise SystemExit("--hours, --session and --sample-every must be positive")
    samples_total = int(args.hours * 60 / args.sample_every)

    async def body(sim: Simulation, progress: Progress) -> Outcome:
        loop = asyncio.get_running_loop()
        started_wall = time.perf_counter()
        await grow(sim, args.nodes, progress)
        grown_wall = time.perf_counter()
        grown_datagrams = sim.network.counters["sent"]
        await asyncio.sleep(5 * MINUTE)
        tracked = await put_records(sim, args.keys, ttl_ms=int(RECORD_TTL * 1000))
        start = loop.time()
        end = start + args.hours * HOUR
        counts = {"departures": 0, "joins": 0, "returns": 0}
        joins: set[asyncio.Task[None]] = set()

        async def join() -> None:
            departed = [n for n in sim.nodes if n.crashed]
            live = sim.live()
            if departed and sim.rng.random() < 0.5:
                node = sim.rng.choice(departed)
                counts["returns"] += 1
            else:
                node = sim.new_host()
            counts["joins"] += 1
            await sim.start(node, via=[sim.rng.choice(live)])
            # a device coming back online announces its users again, as an app would
            back = [t for t in tracked if t.origin is node]
            for item in back:
                item.record = announce(sim, item.user, item.origin, int(RECORD_TTL * 1000))
            await asyncio.gather(*(republish(i) for i in back))

        async def churn() -> None:
            rate = args.nodes * math.log(2) / (args.session * MINUTE)  # departures per second
            while True:
                await asyncio.sleep(sim.rng.expovariate(2 * rate))
                if loop.time() >= end:
                    return
                if sim.rng.random() < 0.5:
                    live = sim.live()
                    if len(live) > 2:
                        counts["departures"] += 1
                        await sim.crash(sim.rng.choice(live))
                else:
                    task = loop.create_task(join())
                    joins.add(task)
                    task.add_done_callback(joins.discard)

        async def reannounce() -> None:
            while True:
                await asyncio.sleep(REANNOUNCE_EVERY)
                fresh = []
                for item in tracked:
                    if item.origin.alive:
                        item.record = announce(sim, item.user, item.origin, int(RECORD_TTL * 1000))
                        fresh.append(item)
                await asyncio.gather(*(republish(i) for i in fresh))

        driver = loop.create_task(churn())
        refresher = loop.create_task(reannounce())
        xs: list[float] = []
        ok_series: list[float] = []
        all_samples: list[GetSample] = []
        try:
            for _ in range(samples_total):
                await asyncio.sleep(args.sample_every * MINUTE)
                now_ms = sim.now_ms()
                live_items: list[Tracked] = [
                    t
                    for t in tracked
                    if t.origin.alive and t.record.values[0].expirationDate > now_ms
                ]
                samples = await measure_gets(sim, live_items)
                all_samples.extend(samples)
                ok = sum(s.ok for s in samples) / len(samples) if samples else 1.0
                xs.append(round((loop.time() - start) / MINUTE, 1))
                ok_series.append(round(ok, 5))
                progress.update(1)
                progress.set_postfix_str(f"ok={ok:.4f} live={len(sim.live())}")
        finally:
            for task in (driver, refresher, *joins):
                task.cancel()
            await asyncio.gather(driver, refresher, *joins, return_exceptions=True)
        metrics = {
            **summarize(all_samples),
            "min_sample_ok": min(ok_series) if ok_series else 0.0,
            "samples": len(ok_series),
            "live_nodes_end": len(sim.live()),
            "datagrams_join": grown_datagrams,
            "datagrams_churn": sim.network.counters["sent"] - grown_datagrams,
            "wall_join_s": round(grown_wall - started_wall, 1),
            **counts,
        }
        return Outcome(
            metrics=metrics,
            latencies={"get": [s.ms for s in all_samples]},
            timeline=Timeline(xs, {"live records got": ("fraction of gets", ok_series)}),
            timeline_xlabel="virtual minutes since the churn began",
            messages=[s.messages for s in all_samples],
        )

    return run_scenario("churn", args, body, total=args.nodes + samples_total)
