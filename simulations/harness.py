"""A population of real `DHTNode`s on a `SimNetwork` and a virtual clock.

`Simulation` starts nodes, joins them, crashes and restarts them (on the same in-memory store),
and measures gets and lookups in virtual milliseconds. Everything random draws from generators
seeded by `seed`, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node import DHTNode, LoopClock, MemoryBackend, NodeConfig, Service
from records import Identity, Record
from simulations.network import SIM_PORT, SimNetwork

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: virtual time 0
_PER_NODE_SETTINGS = frozenset(
    {
        "host",
        "port",
        "data_dir",
        "bootstrap",
        "identity",
        "seed",
        "clock",
        "validator",
        "transport_factory",
        "backend",
        "randbytes",
    }
)


@dataclass
class SimNode:
    """One simulated host: its identity, address and store survive crashes."""

    index: int
    identity: Identity
    host: str
    backend: MemoryBackend
    node: DHTNode | None = None
    crashed: bool = False
    """Stopped by `Simulation.crash` (it may be restarted on its store)."""

    @property
    def alive(self) -> bool:
        """True while the node runs."""
        return self.node is not None and self.node.running

    @property
    def address(self) -> tuple[str, int]:
        """Where the node listens."""
        return (self.host, SIM_PORT)

    @property
    def running_node(self) -> DHTNode:
        """The node, which must have been started (and not crashed)."""
        if self.node is None:
            raise RuntimeError(f"simulated host {self.index} has no node running")
        return self.node


@dataclass
class GetSample:
    """One measured get."""

    ok: bool
    ms: float
    messages: int
    rounds: int


@dataclass
class Percentiles:
    """Summary of a list of numbers."""

    count: int = 0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    mean: float = 0.0
    values: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        """Nearest-rank percentiles of `values`."""
        ordered = sorted(values)
        if not ordered:
            return cls()

        def rank(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]

        return cls(
            count=len(ordered),
            p50=rank(0.50),
            p95=rank(0.95),
            p99=rank(0.99),
            mean=sum(ordered) / len(ordered),
            values=ordered,
        )

    def as_dict(self, digits: int = 1) -> dict[str, float]:
        """Rounded summary for result.json."""
        return {
            "count": self.count,
            "p50": round(self.p50, digits),
            "p95": round(self.p95, digits),
            "p99": round(self.p99, digits),
            "mean": round(self.mean, digits),
        }


class Simulation:
    """Real nodes on a simulated network, all in this process and event loop."""

    def __init__(
        self,
        *,
        seed: int,
        loss: float = 0.0,
        config: dict[str, Any] | None = None,
        network: SimNetwork | None = None,
    ) -> None:
        self.seed = seed
        self.network = network or SimNetwork(seed=seed, loss=loss)
        self.rng = random.Random(f"simulation-{seed}")
        self.config_overrides = dict(config or {})
        self.nodes: list[SimNode] = []
        self._running: dict[int, SimNode] = {}  # by index, in start order
        self.node_class: Callable[[SimNode], type[DHTNode]] = lambda _: DHTNode
        """Which node class a host runs (a scenario may make some misbehave)."""
        self.services: Callable[[SimNode], Sequence[Service]] = lambda _: ()
        """The services (plugins) a host's node runs, made anew at each start."""
        self._clock: LoopClock | None = None
        self._randbytes = random.Random(f"randbytes-{seed}").randbytes
        """Message IDs and secrets of every node: one generator rather than one per node
        (2.5 KB each); the run stays repeatable, as the loop runs the nodes in a fixed order."""

    @property
    def clock(self) -> LoopClock:
        """Wall time (ms) following the virtual loop, starting at `EPOCH_MS`."""
        if self._clock is None:
            loop = asyncio.get_running_loop()
            self._clock = LoopClock(loop, EPOCH_MS + int(loop.time() * 1000))
        return self._clock

    def now_ms(self) -> int:
        """Current simulated Unix time in ms."""
        return self.clock.now_ms()

    def live(self) -> list[SimNode]:
        """Nodes currently running."""
        # `SimNode.alive`, inlined: scenarios pick a random live node per get and per lookup
        return [n for n in self._running.values() if n.node is not None and n.node.running]

    def new_host(self) -> SimNode:
        """A new host with a deterministic identity (not started)."""
        index = len(self.nodes)
        seed = hashlib.sha256(f"sim-node-{self.seed}-{index}".encode()).digest()
        sim_node = SimNode(
            index, Identity.from_seed(seed), self.network.new_host(), MemoryBackend()
        )
        self.nodes.append(sim_node)
        return sim_node

    def node_settings(self) -> dict[str, Any]:
        """The settings every node runs with (`NodeConfig`'s defaults and `config_overrides`),
        for a report; what differs per node (address, identity, bootstrap, seed) and injected
        objects (clock, transport, storage, validator) are left out."""
        config = dataclasses.replace(NodeConfig(), **self.config_overrides)
        settings = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name not in _PER_NODE_SETTINGS
        }
        authorities = config.drd_authorities
        settings["drd_authorities"] = (
            None
            if authorities is None
            else {"threshold": authorities.threshold, "keys": [k.hex() for k in authorities.keys]}
        )
        return settings

    def node_config(self, sim_node: SimNode, bootstrap: Sequence[tuple[str, int]]) -> NodeConfig:
        """The config a simulated node runs with."""
        seed = self.rng.getrandbits(64)
        base = NodeConfig(
            host=sim_node.host,
            port=SIM_PORT,
            identity=sim_node.identity,
            bootstrap=tuple(bootstrap),
            seed=seed,
            randbytes=self._randbytes,
            clock=self.clock,
            transport_factory=self.network.create_endpoint,
            backend=sim_node.backend,
        )
        return dataclasses.replace(base, **self.config_overrides)

    async def start(self, sim_node: SimNode, via: Sequence[SimNode] = ()) -> DHTNode:
        """Start (or restart) `sim_node`, joining through `via`."""
        if sim_node.alive:
            raise RuntimeError(f"node {sim_node.index} is already running")
        self.network.recover(sim_node.host)
        config = self.node_config(sim_node, [v.address for v in via])
        node = self.node_class(sim_node)(config, services=self.services(sim_node))
        sim_node.node = node
        sim_node.crashed = False
        self._running[sim_node.index] = sim_node
        await node.start()
        return node

    async def crash(self, sim_node: SimNode) -> None:
        """Silently kill `sim_node`: its traffic vanishes, its tasks stop, its store is kept."""
        self.network.crash(sim_node.host)
        sim_node.crashed = True
        self._running.pop(sim_node.index, None)
        if sim_node.node is not None:
            node, sim_node.node = sim_node.node, None  # a stopped node's memory is not kept
            await node.stop()

    async def grow(
        self, count: int, *, progress: Callable[[int], None] | None = None, via: int = 1
    ) -> list[SimNode]:
        """Add `count` nodes, joining in waves, each through `via` random running nodes."""
        added: list[SimNode] = []
        if not self.live():
            first = self.new_host()
            await self.start(first)
            added.append(first)
            if progress:
                progress(1)
        while len(added) < count:
            live = self.live()
            wave = min(count - len(added), max(1, len(live) // 2), 200)
            batch = [self.new_host() for _ in range(wave)]
            await asyncio.gather(
                *(self.start(n, via=self.rng.sample(live, min(via, len(live)))) for n in batch)
            )
            added.extend(batch)
            if progress:
                progress(len(batch))
        return added

    async def stop_all(self) -> None:
        """Stop every running node."""
        await asyncio.gather(*(n.node.stop() for n in self.live() if n.node is not None))

    async def timed_get(self, via: SimNode, key: str, expect: Record | None) -> GetSample:
        """A get through `via`, its virtual latency and whether it returned `expect`'s values."""
        node = via.running_node
        loop = asyncio.get_running_loop()
        start = loop.time()
        record, result = await node.get_with_lookup(key)
        elapsed_ms = (loop.time() - start) * 1000
        ok = record is not None if expect is None else holds(record, expect)
        return GetSample(ok=ok, ms=elapsed_ms, messages=result.messages, rounds=result.rounds)


def holds(got: Record | None, expect: Record) -> bool:
    """True if `got` carries every value of `expect` (or a newer one for the same id2)."""
    if got is None:
        return False
    have = {v.id2: v.creationDate for v in got.values}
    return all(have.get(v.id2, -1) >= v.creationDate for v in expect.values)
