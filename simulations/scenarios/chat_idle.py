"""``chat-idle``: what an idle online chat device costs the network, polling vs push.

Every device is a node running a `ChatClient` that waits for messages that never come. Half
of them poll as chat clients did before push (the whole inbox, 16 gets, every second at first,
backing off to once a minute); the other half run `ChatClient.messages()` (subscriptions at the
holders of their 16 inbox pages, pushes, a full read every few hours). Nodes running no chat at
all are the control group: what a node costs anyway (maintenance) is subtracted. The measure is
datagrams sent or received per device per hour, after a warm-up; a message then sent to each
push device measures delivery (from the put to the entry coming out of `messages()`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from node.chat import ChatClient
from simulations.harness import SimNode, Simulation
from simulations.report import Progress
from simulations.scenarios.common import (
    HOUR,
    MINUTE,
    Outcome,
    add_common_arguments,
    grow,
    run_scenario,
    user_identity,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``chat-idle``."""
    add_common_arguments(parser, nodes=300, keys=1)
    parser.add_argument("--devices", type=int, default=10, help="devices per group (10)")
    parser.add_argument("--hours", type=float, default=1.0, help="virtual hours measured (1)")
    parser.add_argument("--warmup", type=float, default=10.0, help="virtual minutes before (10)")


async def poll_like_before(client: ChatClient) -> None:
    """The inbox loop of chat clients before push: read everything, back off to a minute."""
    interval = 1.0
    while True:  # cancelled by the scenario
        with contextlib.suppress(Exception):
            await client.inbox()
        interval = min(2 * interval, 60.0)
        await asyncio.sleep(interval)


async def read_forever(client: ChatClient, arrived: list[float]) -> None:
    """`messages()`: note when each entry comes out (virtual seconds)."""
    loop = asyncio.get_running_loop()
    async for _ in client.messages():
        arrived.append(loop.time())


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``chat-idle``."""
    if args.devices < 1 or args.hours <= 0 or args.warmup < 0:
        raise SystemExit("need --devices >= 1, --hours > 0, --warmup >= 0")

    async def body(sim: Simulation, progress: Progress) -> Outcome:
        await grow(sim, args.nodes, progress)
        live = sim.live()
        hosts = sim.rng.sample(live, 3 * args.devices + 1)
        polling, pushing, control = (
            hosts[: args.devices],
            hosts[args.devices : 2 * args.devices],
            hosts[2 * args.devices : 3 * args.devices],
        )
        sender_host = hosts[-1]

        def client(host: SimNode, n: int) -> ChatClient:
            return ChatClient(host.running_node, user_identity(args.seed, n), name=f"user{n}")

        clients = [client(h, i) for i, h in enumerate(polling + pushing)]
        sender = client(sender_host, 10_000)
        tasks: list[asyncio.Task[None]] = []
        arrivals: list[list[float]] = [[] for _ in pushing]
        try:
            for c in [*clients, sender]:
                await c.start()
            for c in clients[: args.devices]:
                tasks.append(asyncio.create_task(poll_like_before(c)))
            for c, arrived in zip(clients[args.devices :], arrivals, strict=True):
                tasks.append(asyncio.create_task(read_forever(c, arrived)))
            progress.set_postfix_str("warm-up")
            await asyncio.sleep(args.warmup * MINUTE)
            sim.network.count_per_host()
            progress.set_postfix_str("idle")
            await asyncio.sleep(args.hours * HOUR)
            per_host = sim.network.per_host
            assert per_host is not None

            def per_hour(group: list[SimNode]) -> float:
                total: int = sum(per_host[h.host] for h in group)
                return total / len(group) / float(args.hours)

            base = per_hour(control)
            poll_cost = per_hour(polling) - base
            push_cost = per_hour(pushing) - base
            progress.set_postfix_str("delivering")
            delays, puts = await deliver(sender, clients[args.devices :], arrivals)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in [*clients, sender]:
                await c.close()
        delays.sort()
        puts.sort()
        return Outcome(
            metrics={
                "devices": args.devices,
                "datagrams_per_device_hour_polling": round(poll_cost),
                "datagrams_per_device_hour_push": round(push_cost),
                "datagrams_per_device_hour_node_alone": round(base),
                "push_saves": round(poll_cost / push_cost, 1) if push_cost > 0 else None,
                "delivery_p50_ms": _ms(delays, 0.50),
                "delivery_p95_ms": _ms(delays, 0.95),
                "put_p50_ms": _ms(puts, 0.50),
                "delivered": len(delays),
            }
        )

    return run_scenario("chat-idle", args, body, total=args.nodes)


def _ms(ordered: list[float], q: float) -> int | None:
    """The `q` quantile of sorted seconds, in ms."""
    if not ordered:
        return None
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def deliver(
    sender: ChatClient, receivers: list[ChatClient], arrivals: list[list[float]]
) -> tuple[list[float], list[float]]:
    """A handshake and a message from `sender` to each receiver: seconds from the start of each
    message's `send` to its coming out of the receiver's `messages()`, and how long each send
    (its put) took (virtual)."""
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    puts: list[float] = []
    for receiver, arrived in zip(receivers, arrivals, strict=True):
        await sender.handshake(receiver.uid)
        await asyncio.sleep(5)
        before = len(arrived)
        sent = loop.time()
        await sender.send(receiver.uid, "hello")
        puts.append(loop.time() - sent)
        for _ in range(600):  # bounded: a tenth of a second each, a minute at most
            if len(arrived) > before:
                delays.append(arrived[before] - sent)
                break
            await asyncio.sleep(0.1)
    return delays, puts
