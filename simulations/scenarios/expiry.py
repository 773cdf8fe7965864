"""``expiry``: days of virtual time. Users who keep announcing stay retrievable; records of
users who stopped vanish from every node once they expire."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from records import location
from simulations.harness import Simulation
from simulations.report import Progress, Timeline
from simulations.scenarios.common import (
    HOUR,
    Outcome,
    add_common_arguments,
    announce,
    grow,
    measure_gets,
    put_records,
    republish,
    run_scenario,
    summarize,
)

RECORD_TTL = 6 * HOUR
REANNOUNCE_EVERY = 3 * HOUR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``expiry``."""
    add_common_arguments(parser, nodes=200, keys=100)
    parser.add_argument("--days", type=float, default=3.0, help="virtual days (3)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``expiry``."""
    if args.days <= 0:
        raise SystemExit("--days must be positive")
    hours = int(args.days * 24)

    async def body(sim: Simulation, progress: Progress) -> Outcome:
        loop = asyncio.get_running_loop()
        await grow(sim, args.nodes, progress)
        tracked = await put_records(sim, args.keys, ttl_ms=int(RECORD_TTL * 1000))
        staying = tracked[: len(tracked) // 2]
        leaving = tracked[len(tracked) // 2 :]  # these users never announce again
        last_expiry = max(t.record.values[0].expirationDate for t in leaving)
        start = loop.time()
        start_ms = sim.now_ms()
        next_announce = start + REANNOUNCE_EVERY
        xs: list[float] = []
        live_ok: list[float] = []
        dead_held: list[float] = []
        all_live = []
        dead_got_after_expiry = 0
        for hour in range(1, hours + 1):
            await asyncio.sleep(start + hour * HOUR - loop.time())
            if loop.time() >= next_announce:
                for item in staying:
                    item.record = announce(sim, item.user, item.origin, int(RECORD_TTL * 1000))
                await asyncio.gather(*(republish(i) for i in staying))
                next_announce += REANNOUNCE_EVERY
            samples = await measure_gets(sim, staying)
            all_live.extend(samples)
            now = sim.now_ms()
            holders = sum(
                1
                for n in sim.live()
                for t in leaving
                if n.node is not None
                and n.node.store is not None
                and n.node.store.get(location(t.record.key), now) is not None
            )
            if now > last_expiry:
                dead = await measure_gets(sim, leaving)
                dead_got_after_expiry += sum(s.ok for s in dead)
            xs.append(hour * 60.0)
            live_ok.append(round(sum(s.ok for s in samples) / len(samples), 5))
            dead_held.append(float(holders))
            progress.update(1)
            progress.set_postfix_str(f"hour {hour} live_ok={live_ok[-1]:.4f} dead={holders}")
        stored_dead = sum(
            1
            for n in sim.live()
            for t in leaving
            if n.node is not None
            and n.node.store is not None
            and location(t.record.key) in dict(iter(n.node.store))
        )
        metrics = {
            **summarize(all_live),
            "min_sample_live_ok": min(live_ok),
            "dead_copies_alive_end": dead_held[-1],
            "dead_records_stored_end": stored_dead,
            "dead_gets_answered_after_expiry": dead_got_after_expiry,
            "hours": hours,
        }
        return Outcome(
            metrics=metrics,
            latencies={"live gets": [s.ms for s in all_live]},
            timeline=Timeline(
                xs,
                {
                    "live records got": ("fraction of gets", live_ok),
                    "copies of dead records": ("held by live nodes", dead_held),
                },
                {
                    "half the users stop announcing": 0.0,
                    "their records expire": round((last_expiry - start_ms) / 60_000, 1),
                },
            ),
            timeline_xlabel="virtual minutes since the records were put",
        )

    return run_scenario("expiry", args, body, total=args.nodes + hours)
