"""In-memory stream transport on a `SimNetwork`: the directory's request frames travel with the
network's latency, vanish across partitions and to or from crashed hosts (the caller then times
out, as over TCP), and run on the virtual clock. Implements `node.directory.transport`'s
`StreamTransport` for one host."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from node.directory.transport import MAX_FRAME_SIZE, Address, Handler
from node.tasks import cancel_and_wait
from records.errors import TransportError
from simulations.network import SimNetwork


class SimStreamServer:
    """A listener registered on the network; handler runs are tasks it owns."""

    def __init__(self, streams: SimStreams, address: Address, handler: Handler) -> None:
        self._streams = streams
        self._address = address
        self.handler = handler
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> Address:
        """Where it listens."""
        return self._address

    async def close(self) -> None:
        """Unregister and end handler runs in progress."""
        self._streams.listeners.pop(self._address, None)
        await cancel_and_wait(self.tasks)


class SimStreams:
    """The listeners of one `SimNetwork`; `transport(host)` gives a host its transport."""

    def __init__(self, network: SimNetwork, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.network = network
        self.max_frame_size = max_frame_size
        self.listeners: dict[Address, SimStreamServer] = {}
        self.tap: Callable[[Address, Address, bytes, bytes], None] | None = None
        """Called with (source, destination, request, answer) for every exchange (tests)."""

    def transport(self, host: str) -> SimStreamTransport:
        """The stream transport of `host`."""
        return SimStreamTransport(self, host)


class SimStreamTransport:
    """`StreamTransport` for one host of a `SimNetwork`."""

    def __init__(self, streams: SimStreams, host: str) -> None:
        self._streams = streams
        self.host = host

    async def serve(self, host: str, port: int, handler: Handler) -> SimStreamServer:
        """Listen on (host, port) of the simulated network."""
        address = (host, port)
        if address in self._streams.listeners:
            raise OSError(f"stream address {address} already in use")
        server = SimStreamServer(self._streams, address, handler)
        self._streams.listeners[address] = server
        return server

    async def _travel(self, destination: str) -> None:
        network = self._streams.network
        await asyncio.sleep(network.rtt(self.host, destination) / 2)
        if not network.reachable(self.host, destination):
            await asyncio.Event().wait()  # lost: only the caller's timeout ends this

    async def request(self, address: Address, frame: bytes, *, within: float) -> bytes:
        """Deliver `frame` after half a round trip, run the handler, return its answer after
        the other half; `TransportError` if refused, unreachable or too slow."""
        if len(frame) > self._streams.max_frame_size:
            raise TransportError(f"frame of {len(frame)} bytes is too big")
        current = asyncio.current_task()
        assert current is not None
        try:
            async with asyncio.timeout(within):
                await self._travel(address[0])
                server = self._streams.listeners.get(address)
                if server is None:
                    raise TransportError(f"{address[0]}:{address[1]} refused the connection")
                task: asyncio.Task[bytes] = asyncio.get_running_loop().create_task(
                    server.handler(frame, (self.host, 0))
                )
                server.tasks.add(task)
                task.add_done_callback(server.tasks.discard)
                try:
                    # a caller that gives up does not stop the server's work (as over TCP)
                    answer = await asyncio.shield(task)
                except asyncio.CancelledError:
                    if current.cancelling():
                        raise  # the caller's own cancellation or timeout
                    raise TransportError(f"{address[0]}:{address[1]} went away") from None
                await self._travel(address[0])
                if self._streams.tap is not None:
                    self._streams.tap((self.host, 0), address, frame, answer)
        except TimeoutError:
            raise TransportError(f"no answer from {address[0]}:{address[1]}") from None
        return answer
