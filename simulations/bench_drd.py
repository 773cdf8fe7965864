"""``bench-drd``: DRD updates per second over sealed sessions vs. clear text, in the same run,
on real TCP and UDP on 127.0.0.1.

One process runs key servers (nodes with ``KeyExchange(serve=True)``), two directory servers on
nodes of their own, alike but for one thing (one sealed, the default; one in clear text, as
tests may run it), and a client node. The client opens `--sessions` sessions on each server
(sealed ones: a key agreed through the key exchange for each, seed 000 steps 1-5), then sends
`--updates` updates to each server, one in flight per session, all sessions at once. Rounds
alternate clear and sealed, so that both see the same machine; each side's best round counts.
Session set-up (key agreement and open session) is measured apart: it is paid once a session.
An update's round trip is mostly the server's SQLite commit; to show what sealing itself costs,
the frame layer alone (seal, open, seal the answer, open it: `records.drd_channel`) is timed on
an update-sized frame too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from node import DHTNode, NodeConfig
from node.directory.client import ClientSession, DirectoryClient
from node.directory.keys import KeyExchangeAgreement
from node.directory.server import DirectoryConfig, DirectoryServer
from node.keyexchange import KeyExchange
from records import Identity
from records.directory import MailboxNumber, Profile, mint_ticket
from records.drd import TicketAuthorities
from records.drd_channel import ChannelKeys, ClientChannel, ServerChannel
from simulations.harness import Percentiles

HOST = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench-drd``."""
    parser.add_argument("--sessions", type=int, default=8, help="sessions per server (8)")
    parser.add_argument("--updates", type=int, default=400, help="updates per round (400)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (3)")
    parser.add_argument("--key-servers", type=int, default=4, help="key-server nodes (4)")
    parser.add_argument(
        "--key-parts", type=int, default=3, help="key servers each session key goes through (3)"
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``bench-drd``."""
    if args.sessions < 1 or args.updates < 1 or args.rounds < 1:
        raise SystemExit("--sessions, --updates and --rounds are at least 1")
    if args.key_servers < args.key_parts:
        raise SystemExit("--key-servers must be at least --key-parts")
    # each update is also published into the DHT, where this small network's per-source
    # budget refuses most of them: the same on both sides, and not what is measured here
    logging.getLogger("node").setLevel(logging.ERROR)
    return asyncio.run(_run(args))


@contextlib.asynccontextmanager
async def _nodes(count: int, trusted: TicketAuthorities) -> AsyncIterator[list[DHTNode]]:
    """`count` nodes on 127.0.0.1, joined through the first; the first two are the directory
    nodes, the last the client, the others key servers."""
    nodes: list[DHTNode] = []
    try:
        for index in range(count):
            serve = 2 <= index < count - 1
            bootstrap = (nodes[0].address,) if nodes else ()
            config = NodeConfig(host=HOST, port=0, bootstrap=bootstrap, drd_authorities=trusted)
            node = DHTNode(config, services=[KeyExchange(serve=serve)])
            await node.start()
            nodes.append(node)
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.stop()


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    authorities = [Identity.generate() for _ in range(3)]
    trusted = TicketAuthorities(tuple(a.public_key for a in authorities), 2)
    with tempfile.TemporaryDirectory(prefix="bench-drd-") as tmp:
        async with _nodes(args.key_servers + 3, trusted) as nodes:
            servers = {}
            for name, node in (("sealed", nodes[0]), ("clear", nodes[1])):
                config = DirectoryConfig(
                    root=Path(tmp) / name,
                    authorities=trusted.keys,
                    threshold=2,
                    clear_text=name == "clear",
                    sync_interval=3600.0,
                )
                server = DirectoryServer(config, node)
                await server.start()
                servers[name] = server
            try:
                return await _measure(args, nodes[-1], servers, authorities)
            finally:
                for server in servers.values():
                    await server.stop()


async def _measure(
    args: argparse.Namespace,
    client_node: DHTNode,
    servers: dict[str, DirectoryServer],
    authorities: list[Identity],
) -> dict[str, Any]:
    keys = KeyExchangeAgreement(client_node, min_parts=args.key_parts)
    clients = {
        "sealed": DirectoryClient(keys=keys, timeout=30.0),
        "clear": DirectoryClient(clear_text=True, timeout=30.0),
    }
    now = client_node.clock.now_ms()
    owners = [Identity.generate() for _ in range(args.sessions)]
    sessions: dict[str, list[ClientSession]] = {}
    set_up: dict[str, list[float]] = {}
    for side, client in clients.items():
        sessions[side], set_up[side] = [], []
        for index, owner in enumerate(owners):
            mailbox = MailboxNumber(6, 1, index + (0 if side == "sealed" else 1 << 20))
            ticket = mint_ticket(
                authorities[:2], mailbox, owner.public_key, issued=now, expires=now + 86_400_000
            )
            started = time.perf_counter()
            sessions[side].append(await client.open_session(servers[side].address, owner, ticket))
            set_up[side].append((time.perf_counter() - started) * 1000)
    rates: dict[str, list[float]] = {"clear": [], "sealed": []}
    for round_ in range(args.rounds):
        for side in ("clear", "sealed"):
            rates[side].append(await _round(clients[side], sessions[side], args.updates, round_))
    best = {side: max(values) for side, values in rates.items()}
    return {
        "nodes": len(servers) + args.key_servers + 1,
        "sessions": args.sessions,
        "updates_per_round": args.updates,
        "rounds": args.rounds,
        "key_parts": args.key_parts,
        "clear_updates_per_s": round(best["clear"], 1),
        "sealed_updates_per_s": round(best["sealed"], 1),
        "sealed_vs_clear": round(best["sealed"] / best["clear"], 3),
        "rounds_updates_per_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "session_set_up_ms": {side: Percentiles.of(ms).as_dict() for side, ms in set_up.items()},
        "frame_layer_round_trips_per_s": round(_frame_layer(), 0),
        "frames_sealed": servers["sealed"].stats["frames"],
        "frames_refused": sum(
            count for key, count in servers["sealed"].stats.items() if "refused" in key
        ),
    }


async def _round(
    client: DirectoryClient, sessions: list[ClientSession], updates: int, round_: int
) -> float:
    """Updates per second: `updates` spread over `sessions`, one in flight per session."""
    share = [updates // len(sessions) + (i < updates % len(sessions)) for i in range(len(sessions))]
    base = client.clock.now_ms()

    async def run(index: int, session: ClientSession) -> None:
        profile = Profile(display_name=f"bench {index}", description="x" * 120)
        for n in range(share[index]):
            version = base + round_ * 100_000 + n  # strictly newer each time
            await client.update(
                session, replace(profile, description=f"round {round_} update {n}"), version=version
            )

    started = time.perf_counter()
    await asyncio.gather(*(run(i, s) for i, s in enumerate(sessions)))
    return updates / (time.perf_counter() - started)


def _frame_layer(frame_size: int = 700, seconds: float = 0.5) -> float:
    """Sealed request-and-answer round trips per second of the frame layer alone."""
    keys = ChannelKeys.derive(bytes(31) + b"\xff")
    client, server = ClientChannel(keys), ServerChannel(keys)
    request, answer = bytes(frame_size), bytes(20)
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(100):
            counter, sealed = client.seal(request)
            server.open(sealed)
            client.open(counter, server.seal(counter, answer))
        done += 100
    return done / elapsed
