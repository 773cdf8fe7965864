"""`Testnet`: a small in-process network of real `DHTNode`s to test an app against (issue 17).

hyperdht's ``createTestnet`` is the model: a few lines give an app's tests a working network, with
no sockets and no waiting. The nodes run on `SimNetwork` (simulated datagrams: latency, loss,
crashes) and the event loop's virtual clock (`simulations.clock`), so a test can sleep for days
in seconds of wall time, and a run repeats exactly for a given seed::

    from simulations.clock import run_virtual
    from simulations.testnet import Testnet

    async def main() -> None:
        async with Testnet(16, seed=1) as net:
            node = await net.add_node()  # one more node, e.g. a user's device
            ...

    run_virtual(main())

In pytest, the `testnet` fixture of `simulations.pytest_plugin` does the same for an ``async``
test (see there). A `Testnet` must run on a `VirtualTimeLoop`: on an ordinary loop, an hour of
simulated network would take an hour.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Mapping
from typing import Any

from node import DHTNode
from records import Identity
from simulations.clock import VirtualTimeLoop
from simulations.harness import SimNode, Simulation

DEFAULT_SIZE = 16
"""Nodes a `Testnet` starts with: enough for the 5 replicas of every record and some to spare."""


class Testnet:
    """`size` DHT nodes joined into one simulated network, started by ``async with`` (or
    `start`) and all stopped at its end (or `close`).

    `seed` fixes everything random (node identities, latencies, `user`, `random_bytes`);
    `loss` is the share of datagrams the network drops; `config` overrides `NodeConfig`
    settings of every node (for instance slower maintenance for runs of many virtual days:
    ``{"republish_interval": 6 * 3600.0}``).
    """

    __test__ = False  # not a test class, whatever pytest makes of its name

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        *,
        seed: int = 0,
        loss: float = 0.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a testnet has at least one node")
        self.size = size
        self.seed = seed
        self.simulation = Simulation(seed=seed, loss=loss, config=dict(config or {}))
        """The simulation underneath, for what this class does not wrap (partitions, stats)."""
        self._hosts: dict[bytes, SimNode] = {}
        self._rng = random.Random(f"testnet-{seed}")

    async def __aenter__(self) -> Testnet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the `size` nodes and join them to each other."""
        if not isinstance(asyncio.get_running_loop(), VirtualTimeLoop):
            raise RuntimeError(
                "a Testnet runs on virtual time: run it under simulations.clock.run_virtual, "
                "or use the testnet fixture of simulations.pytest_plugin"
            )
        if self._hosts:
            raise RuntimeError("the testnet is already started")
        for host in await self.simulation.grow(self.size):
            self._hosts[host.identity.id] = host

    async def close(self) -> None:
        """Stop every node (those added and those brought back too)."""
        await self.simulation.stop_all()

    @property
    def nodes(self) -> list[DHTNode]:
        """The nodes running now, in the order they started."""
        return [host.node for host in self.simulation.live() if host.node is not None]

    @property
    def bootstrap(self) -> list[tuple[str, int]]:
        """Addresses of the first nodes, to join another node through
        (``NodeConfig(bootstrap=...)``)."""
        return [host.address for host in self.simulation.live()[:3]]

    async def add_node(self) -> DHTNode:
        """Start one more node, joined through running ones, and return it (for instance the
        node a user's device runs)."""
        host = self.simulation.new_host()
        self._hosts[host.identity.id] = host
        return await self.simulation.start(host, via=self._via())

    async def take_offline(self, node: DHTNode) -> None:
        """Crash `node` silently: its datagrams vanish and it stops, but what it stored is kept
        for `bring_back`."""
        await self.simulation.crash(self._host(node))

    async def bring_back(self, node: DHTNode) -> DHTNode:
        """Restart a node taken offline, with the same identity, address and stored records;
        returns the new `DHTNode` (a client over the old one must be made anew over it)."""
        return await self.simulation.start(self._host(node), via=self._via())

    def now_ms(self) -> int:
        """The network's current (virtual) Unix time in milliseconds, as every node's clock."""
        return self.simulation.now_ms()

    def user(self, name: str) -> Identity:
        """The identity of a user called `name`: the same for the same seed and name."""
        digest = hashlib.sha256(f"testnet-{self.seed}-user-{name}".encode()).digest()
        return Identity.from_seed(digest)

    def random_bytes(self, label: str) -> Callable[[int], bytes]:
        """Seeded random bytes (for ``ChatClient(random_bytes=...)``), so the entry ids, and with
        them the nodes that hold each entry, repeat run after run."""
        return random.Random(f"testnet-{self.seed}-bytes-{label}").randbytes

    def _host(self, node: DHTNode) -> SimNode:
        host = self._hosts.get(node.id)
        if host is None:
            raise ValueError("that node is not one of this testnet's")
        return host

    def _via(self) -> list[SimNode]:
        live = self.simulation.live()
        if not live:
            raise RuntimeError("no node of the testnet is running to join through")
        return self._rng.sample(live, min(3, len(live)))
