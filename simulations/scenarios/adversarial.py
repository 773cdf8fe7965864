"""``adversarial``: a share of the nodes is malicious and colludes; can honest nodes still get
honest records, and is a forged record ever returned?

Malicious nodes (``--malicious``, a share of all nodes, spread through the network) answer every
find_node and find_value with only their fellow colluders closest to the target; acknowledge
stores but keep only the first version they see (so they serve stale copies); answer find_value
with that stale copy or a forged one (its signed bytes altered); and flood honest nodes with junk
stores. With ``--spoof`` they go further and answer with made-up IDs right next to the target,
at colluders' addresses (choosing their positions; proofs of ID stop this, ``--no-proofs``
shows what it does without them). The same network and workload run twice: gets over one
lookup path, then over ``--paths`` disjoint paths (S/Kademlia). Each record is put once, so
the first version colluders keep is the current one; with ``--update`` every user announces again
before the gets, and a stale copy no longer counts as found.

A joining node whose bootstrap node is malicious hears only of colluders, and so does one that
joins through such a node in turn: no lookup of its own can leave that view. The result counts
these *eclipsed* honest nodes (at least `ECLIPSED_SHARE` of their routing table colluders, when
the gets start) and splits each round's success between gets they made and the rest, so that
what the node's defences decide shows apart from what only more bootstrap nodes can.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import random
from typing import Any

from node import DHTNode
from node.engine.handlers import Contacts, Request, RequestHandlers
from node.routing import Address, family_of
from node.wire import encode_request
from records import DHTError, InvalidRecord, Record, decode_record, default_validator
from simulations.harness import GetSample, SimNode, Simulation
from simulations.report import Progress
from simulations.scenarios.common import (
    HOUR,
    MINUTE,
    Outcome,
    Tracked,
    add_common_arguments,
    announce,
    run_scenario,
    summarize,
    user_identity,
)

_TTL_MS = int(2 * HOUR * 1000)
ECLIPSED_SHARE = 0.9
"""An honest node with at least this share of colluders in its routing table counts as eclipsed."""


class Colluders:
    """What the malicious nodes know of each other: IDs and addresses, by ID."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.members: dict[int, tuple[bytes, Address]] = {}

    def join(self, node_id: bytes, address: Address) -> None:
        long_id = int.from_bytes(node_id, "big")
        bisect.insort(self.ids, long_id)
        self.members[long_id] = (node_id, address)

    def closest(self, target: int, count: int) -> list[list[Any]]:
        ranked = sorted(self.ids, key=lambda i: i ^ target)[:count]
        return [[self.members[i][0], *self.members[i][1]] for i in ranked]


def malicious_node_class(colluders: Colluders, seed: int, spoof: bool = False) -> type[DHTNode]:
    """A `DHTNode` whose protocol lies as the module docstring says."""
    rng = random.Random(f"malice-{seed}")

    class MaliciousHandlers(RequestHandlers):
        def closest_as_list(
            self, key: bytes, exclude: bytes, family: int | None = None
        ) -> list[list[Any]]:
            target = int.from_bytes(key, "big")
            fellows = colluders.closest(target, self.engine.config.k)
            if not spoof:
                return fellows
            return [
                [(target ^ (i + 1)).to_bytes(20, "big"), host, port]
                for i, (_, host, port) in enumerate(fellows)
            ]

        def find_value(self, request: Request) -> Any:
            key = request.args[1]
            nodes = self.closest_as_list(key, request.args[0], family_of(request.addr))
            engine = self.engine
            held = engine.store.get(key, engine.clock.now_ms())
            if held is None:
                return Contacts(None, nodes)
            data = held.data
            if rng.random() < 0.5:  # a forgery: the signed bytes altered
                at = len(data) - 1 - rng.randrange(64)
                data = data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1 :]
            return Contacts(data, nodes)

        def store(self, request: Request) -> Any:
            _, key, value = request.args
            store, now = self.engine.store, self.engine.clock.now_ms()
            if store.get(key, now) is None and isinstance(value, bytes):
                # keep the first version only: later ones are "stored" and dropped; junk ignored
                with contextlib.suppress(DHTError):
                    store.accept(key, decode_record(value), now, persist=False)
            return True

    class MaliciousNode(DHTNode):
        handlers_class = MaliciousHandlers

        async def start(self) -> None:
            await super().start()
            colluders.join(self.id, self.address)

    return MaliciousNode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``adversarial``."""
    add_common_arguments(parser, nodes=2000, keys=200)
    parser.add_argument(
        "--malicious", type=float, default=0.2, help="share of malicious nodes (0.2)"
    )
    parser.add_argument("--paths", type=int, default=3, help="disjoint paths for gets (3)")
    parser.add_argument("--gets", type=int, default=1000, help="gets per round (1000)")
    parser.add_argument(
        "--spoof", action="store_true", help="malicious nodes also answer with made-up IDs"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1,
        help="random nodes each joining node bootstraps through (1); a node whose only "
        "bootstrap node is malicious is eclipsed",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="every user announces again a minute after its first put: colluders, who keep "
        "the first version, then serve stale copies, and a get counts as ok only with the "
        "second",
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``adversarial``."""
    if not 0 <= args.malicious < 1 or args.paths < 1 or args.gets < 1 or args.bootstrap < 1:
        raise SystemExit("need 0 <= --malicious < 1, --paths >= 1, --gets >= 1, --bootstrap >= 1")

    async def body(sim: Simulation, progress: Progress) -> Outcome:
        colluders = Colluders()
        evil_class = malicious_node_class(colluders, args.seed, spoof=args.spoof)
        evil: set[int] = set()
        chooser = random.Random(f"who-is-evil-{args.seed}")
        for index in range(args.nodes):
            if index > 0 and chooser.random() < args.malicious:
                evil.add(index)
        sim.node_class = lambda n: evil_class if n.index in evil else DHTNode
        progress.set_postfix_str("joining")
        await sim.grow(args.nodes, progress=progress.update, via=args.bootstrap)
        honest = [n for n in sim.live() if n.index not in evil]
        flood = asyncio.get_running_loop().create_task(_flood(sim, evil, honest))
        try:
            await asyncio.sleep(5 * MINUTE)
            tracked = await _put_honestly(sim, honest, args.keys)
            await asyncio.sleep(MINUTE)
            if args.update:
                await _update_honestly(sim, tracked)
                await asyncio.sleep(MINUTE)
            metrics: dict[str, Any] = {
                "malicious_nodes": len(evil),
                "paths": args.paths,
                "spoof": args.spoof,
                "bootstrap_via": args.bootstrap,
                "updated": args.update,
                "proofs": not args.no_proofs,
            }
            evil_ids = {n.identity.id for n in sim.nodes if n.index in evil}
            shares = {n.index: _colluder_share(n, evil_ids) for n in honest}
            eclipsed = {index for index, share in shares.items() if share >= ECLIPSED_SHARE}
            metrics["honest_nodes_eclipsed"] = len(eclipsed)
            metrics["honest_table_colluder_share"] = round(
                sum(shares.values()) / max(1, len(shares)), 3
            )
            latencies: dict[str, list[float]] = {}
            for paths, label in ((1, "1path_"), (args.paths, f"{args.paths}paths_")):
                for n in sim.live():
                    node = n.running_node
                    node.config = _with_paths(node, paths)
                items = [sim.rng.choice(tracked) for _ in range(args.gets)]
                samples, origins, forged = await _gets(sim, honest, items)
                metrics.update(summarize(samples, label))
                for part, inside in (("eclipsed", True), ("not_eclipsed", False)):
                    ok = [
                        s.ok
                        for s, o in zip(samples, origins, strict=True)
                        if (o in eclipsed) == inside
                    ]
                    metrics[f"{label}gets_from_{part}"] = len(ok)
                    metrics[f"{label}get_ok_from_{part}"] = (
                        round(sum(ok) / len(ok), 5) if ok else None
                    )
                metrics[f"{label}forged_returned"] = forged
                latencies[f"{paths} path(s)"] = [s.ms for s in samples]
                progress.update(args.gets)
        finally:
            flood.cancel()
            await asyncio.gather(flood, return_exceptions=True)
        dropped = sum(n.node.stats.dropped["rate_limited"] for n in honest if n.node is not None)
        metrics["flood_stores_throttled"] = dropped
        real = {n.identity.id for n in sim.nodes}
        metrics["made_up_ids_in_honest_tables"] = sum(
            1
            for n in honest
            if n.node is not None and n.node.table is not None
            for c in n.node.table
            if c.id not in real
        )
        return Outcome(metrics=metrics, latencies=latencies)

    return run_scenario("adversarial", args, body, total=args.nodes + 2 * args.gets)


def _with_paths(node: DHTNode, paths: int) -> Any:
    return dataclasses.replace(node.config, get_paths=paths)


async def _put_honestly(sim: Simulation, honest: list[SimNode], count: int) -> list[Tracked]:
    tracked = []
    for index in range(count):
        origin = sim.rng.choice(honest)
        user = user_identity(sim.seed, index)
        tracked.append(Tracked(user, origin, announce(sim, user, origin, _TTL_MS)))
    await _put_all(tracked)
    return tracked


async def _update_honestly(sim: Simulation, tracked: list[Tracked]) -> None:
    """Each user announces again through the same node: a newer version of its record, which
    colluders holding the first one drop."""
    for item in tracked:
        item.record = announce(sim, item.user, item.origin, _TTL_MS)
    await _put_all(tracked)


async def _put_all(tracked: list[Tracked]) -> None:
    async def put(item: Tracked) -> None:
        node = item.origin.running_node
        with contextlib.suppress(DHTError):  # a failed put shows in the gets
            await node.put(item.record)

    await asyncio.gather(*(put(t) for t in tracked))


def _colluder_share(sim_node: SimNode, evil_ids: set[bytes]) -> float:
    """The share of colluders among the contacts of `sim_node`'s routing table (0 if empty)."""
    table = sim_node.running_node.table
    contacts = [c.id for c in table] if table is not None else []
    return sum(c in evil_ids for c in contacts) / len(contacts) if contacts else 0.0


async def _gets(
    sim: Simulation, honest: list[SimNode], items: list[Tracked]
) -> tuple[list[GetSample], list[int], int]:
    """Gets from honest nodes: the samples, the index of the node each was made from, and how
    many returned records were not valid (forgeries)."""
    validator = default_validator()
    forged = 0
    semaphore = asyncio.Semaphore(64)

    async def one(item: Tracked) -> tuple[GetSample, int]:
        nonlocal forged
        origin = sim.rng.choice(honest)
        node = origin.running_node
        async with semaphore:
            loop = asyncio.get_running_loop()
            start = loop.time()
            record, lookup = await node.get_with_lookup(item.record.key)
            elapsed = (loop.time() - start) * 1000
        if record is not None:
            try:
                validator.validate(record.key, record, sim.now_ms())
            except InvalidRecord:
                forged += 1
        ok = record is not None and _current(record, item.record)
        sample = GetSample(ok=ok, ms=elapsed, messages=lookup.messages, rounds=lookup.rounds)
        return sample, origin.index

    done = await asyncio.gather(*(one(i) for i in items))
    return [sample for sample, _ in done], [origin for _, origin in done], forged


def _current(got: Record, expect: Record) -> bool:
    have = {v.id2: v.value for v in got.values}
    return all(have.get(v.id2) == v.value for v in expect.values)


async def _flood(sim: Simulation, evil: set[int], honest: list[SimNode]) -> None:
    """Ten malicious nodes each send 40 junk stores a second (twice the per-source allowance)
    to one honest node of their choosing."""
    rng = random.Random(f"flood-{sim.seed}")
    flooders = sorted(evil)[:10]
    targets = {index: rng.choice(honest).address for index in flooders}
    while True:
        await asyncio.sleep(1)
        for index in flooders:
            node = sim.nodes[index].node
            if node is None or node.protocol is None:
                continue
            junk = [node.id, rng.randbytes(20), b"\x00junk"]
            for _ in range(40):
                request = encode_request(rng.randbytes(20), "store", junk)
                node.protocol.send_datagram(request, targets[index])
