"""SimNetwork: an in-process datagram network for real `DHTNode`s (DESIGN §5).

`SimNetwork.create_endpoint` has the shape of ``loop.create_datagram_endpoint``, so a node given
it as its `transport_factory` runs unchanged; datagrams carry the same bytes as UDP. Each host sits
at a seeded random point on a unit square; the round trip between two hosts grows with their
distance from `rtt_min` to `rtt_max` (mean near 100 ms with the defaults), with jitter per
datagram. Loss, partitions and silent crashes drop datagrams without a word, as a real network
would. Addresses are fake loopback addresses; nothing touches the operating system's network.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

Address = tuple[str, int]
SIM_PORT = 8468
_DIAGONAL = math.sqrt(2)


class SimTransport(asyncio.DatagramTransport):
    """One endpoint on a `SimNetwork`."""

    def __init__(
        self, network: SimNetwork, address: Address, protocol: asyncio.DatagramProtocol
    ) -> None:
        super().__init__()
        self._network = network
        self._address = address
        self._protocol = protocol
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Hand a datagram to the network (it may be delayed, lost or dropped)."""
        if not self._closing:
            self._network.send(self, bytes(data), addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname`` and ``peername`` as a UDP socket would give them."""
        if name == "sockname":
            return self._address
        return default

    def is_closing(self) -> bool:
        """True once closed."""
        return self._closing

    def close(self) -> None:
        """Leave the network; datagrams still in flight to this endpoint are dropped."""
        if not self._closing:
            self._closing = True
            self._network.detach(self)
            self._protocol.connection_lost(None)

    def abort(self) -> None:
        """Same as `close`."""
        self.close()

    def deliver(self, data: bytes, source: Address) -> None:
        """Called by the network when a datagram arrives."""
        if not self._closing:
            self._protocol.datagram_received(data, source)

    @property
    def address(self) -> Address:
        """Where this endpoint is bound."""
        return self._address


class SimNetwork:
    """The simulated network: latency model, loss, partitions, crashes."""

    def __init__(
        self,
        *,
        seed: int = 0,
        loss: float = 0.0,
        rtt_min: float = 0.010,
        rtt_max: float = 0.300,
        jitter: float = 0.1,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        if not 0.0 < rtt_min <= rtt_max:
            raise ValueError("need 0 < rtt_min <= rtt_max")
        self._rng = random.Random(seed)
        self.loss = loss
        self.rtt_min = rtt_min
        self.rtt_max = rtt_max
        self.jitter = jitter
        self._endpoints: dict[Address, SimTransport] = {}
        self._positions: dict[str, complex] = {}
        self._groups: dict[str, int] | None = None
        self._down: set[str] = set()
        # hosts behind a NAT: (their mapping lifetime, when each remote address was last sent to)
        self._nat: dict[str, tuple[float, dict[Address, float]]] = {}
        self._hosts = 0
        self.counters: Counter[str] = Counter()
        self.per_host: Counter[str] | None = None
        """Datagrams sent or received, by host, when a scenario asks for it (`count_per_host`)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        # Datagrams in flight by arrival tick (1 ms), each tick's in the order sent, and a heap
        # of the ticks: one heap push per tick rather than per datagram, and one loop timer for
        # the earliest instead of an event-loop timer per datagram.
        self._in_flight: dict[float, list[tuple[SimTransport, bytes, Address]]] = {}
        self._ticks: list[float] = []
        self._wakeup_at = math.inf

    # -- addresses and endpoints -----------------------------------------------------------

    def new_host(self) -> str:
        """A fresh host address (127.x.y.z, never used on a real socket) placed on the map."""
        self._hosts += 1
        n = self._hosts
        host = f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        self._positions[host] = complex(self._rng.random(), self._rng.random())
        return host

    async def create_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Address | None = None,
        **_: Any,
    ) -> tuple[SimTransport, asyncio.DatagramProtocol]:
        """Bind like ``loop.create_datagram_endpoint``: port 0 picks port 8468 (hosts differ)."""
        self._loop = asyncio.get_running_loop()
        host, port = local_addr if local_addr is not None else (self.new_host(), 0)
        if host not in self._positions:
            raise OSError(f"{host} is not a host of this simulated network")
        address = (host, port or SIM_PORT)
        if address in self._endpoints:
            raise OSError(f"address {address} already in use")
        protocol = protocol_factory()
        transport = SimTransport(self, address, protocol)
        self._endpoints[address] = transport
        protocol.connection_made(transport)
        return transport, protocol

    def detach(self, transport: SimTransport) -> None:
        """Forget a closed endpoint."""
        if self._endpoints.get(transport.address) is transport:
            del self._endpoints[transport.address]

    # -- faults ----------------------------------------------------------------------------

    def crash(self, host: str) -> None:
        """From now on, datagrams from or to `host` vanish (a silent crash)."""
        self._down.add(host)

    def recover(self, host: str) -> None:
        """`host` can send and receive again."""
        self._down.discard(host)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Hosts in different groups cannot reach each other (hosts in no group reach nobody)."""
        self._groups = {host: index for index, group in enumerate(groups) for host in group}

    def count_per_host(self) -> None:
        """From now on count the datagrams each host sends and receives (`per_host`)."""
        self.per_host = Counter()

    def behind_nat(self, host: str, mapping_lifetime: float = 60.0) -> None:
        """Put `host` behind a NAT with endpoint-dependent filtering: a datagram from a remote
        address reaches it only within `mapping_lifetime` seconds of the host sending to that
        address (an unsolicited one is dropped: ``dropped_nat``)."""
        self._nat[host] = (mapping_lifetime, {})

    def heal(self) -> None:
        """End the partition."""
        self._groups = None

    def reachable(self, a: str, b: str) -> bool:
        """True if traffic between hosts `a` and `b` gets through (neither is down, no
        partition between them); loss aside."""
        if a in self._down or b in self._down:
            return False
        return self._groups is None or self._groups.get(a, -1) == self._groups.get(b, -2)

    # -- delivery --------------------------------------------------------------------------

    def rtt(self, a: str, b: str) -> float:
        """The base round-trip time between two hosts (seconds), before jitter."""
        distance = abs(self._positions[a] - self._positions[b]) / _DIAGONAL
        return self.rtt_min + (self.rtt_max - self.rtt_min) * distance

    def send(self, source: SimTransport, data: bytes, dest: Address) -> None:
        """Schedule delivery of `data` from `source` to `dest`, or drop it."""
        counters = self.counters
        counters["sent"] += 1
        src_host, dst_host = source.address[0], dest[0]
        down = self._down
        if self.per_host is not None:
            self.per_host[src_host] += 1
        if down and (src_host in down or dst_host in down):
            counters["dropped_down"] += 1
            return
        if self._groups is not None and self._groups.get(src_host, -1) != self._groups.get(
            dst_host, -2
        ):
            counters["dropped_partition"] += 1
            return
        target = self._endpoints.get(dest)
        positions = self._positions
        if target is None or dst_host not in positions:
            counters["dropped_no_endpoint"] += 1
            return
        loop = self._loop
        assert loop is not None
        if self._nat:
            if (nat := self._nat.get(src_host)) is not None:
                nat[1][dest] = loop.time()  # the mapping opens (or stays open) toward dest
            if (nat := self._nat.get(dst_host)) is not None:
                opened = nat[1].get(source.address)
                if opened is None or loop.time() - opened > nat[0]:
                    counters["dropped_nat"] += 1
                    return
        rng = self._rng
        if self.loss and rng.random() < self.loss:
            counters["dropped_loss"] += 1
            return
        # `rtt`, inlined: this runs once per datagram
        rtt = self.rtt_min + (self.rtt_max - self.rtt_min) * (
            abs(positions[src_host] - positions[dst_host]) / _DIAGONAL
        )
        delay = rtt / 2 * (1.0 + self.jitter * (2 * rng.random() - 1))
        # Arrivals fall on 1 ms ticks, so one wake-up delivers every datagram due in that tick.
        arrival = math.ceil((loop.time() + delay) * 1000.0) / 1000.0
        batch = self._in_flight.get(arrival)
        if batch is None:
            self._in_flight[arrival] = [(target, data, source.address)]
            heapq.heappush(self._ticks, arrival)
        else:
            batch.append((target, data, source.address))
        if arrival < self._wakeup_at:
            self._wakeup_at = arrival
            loop.call_at(arrival, self._deliver_due)

    def _deliver_due(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time() + 1e-6
        ticks = self._ticks
        in_flight = self._in_flight
        down = self._down
        counters = self.counters
        per_host = self.per_host
        while ticks and ticks[0] <= now:
            # taken out before delivering: a datagram sent meanwhile for this tick starts a new
            # batch, delivered after this one (as it was sent after)
            batch = in_flight.pop(heapq.heappop(ticks))
            delivered = 0
            for target, data, source in batch:
                if down and target.address[0] in down:
                    counters["dropped_down"] += 1
                    continue
                delivered += 1
                if per_host is not None:
                    per_host[target.address[0]] += 1
                target.deliver(data, source)
            counters["delivered"] += delivered
        if ticks:
            if ticks[0] < self._wakeup_at or self._wakeup_at <= now:
                self._wakeup_at = ticks[0]
                loop.call_at(self._wakeup_at, self._deliver_due)
        else:
            self._wakeup_at = math.inf
