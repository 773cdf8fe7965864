"""The stream seam of the directory: request/response frames over TCP (an avatar exceeds a
datagram), or over the simulator's in-memory streams.

Framing: a 4-byte big-endian length, then that many bytes; a frame above `max_frame_size` ends
the connection. A connection carries any number of request/response pairs in turn; the client
here opens one per request. Reads and writes are bounded by timeouts, so a silent or slow peer
ties up nothing for long. TCP and UDP ports are separate spaces: the directory listens on TCP at
the node's UDP port number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from node.tasks import cancel_and_wait
from records.errors import TransportError

log = logging.getLogger(__name__)

Address = tuple[str, int]
Handler = Callable[[bytes, Address], Coroutine[Any, Any, bytes]]
"""Answers one request frame from a peer."""

MAX_FRAME_SIZE = 512 * 1024
"""Largest frame (an update with a 25.5 KB avatar, a 255 KB page of results, a sync batch)."""
LENGTH_SIZE = 4
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 256


class StreamServer(Protocol):
    """A listening endpoint."""

    @property
    def address(self) -> Address:
        """Where it listens."""
        ...

    async def close(self) -> None:
        """Stop listening and end every connection and handler in progress."""
        ...


class StreamTransport(Protocol):
    """Serves and sends request frames."""

    async def serve(self, host: str, port: int, handler: Handler) -> StreamServer:
        """Listen on (host, port), answering each request frame with `handler`."""
        ...

    async def request(self, address: Address, frame: bytes, *, within: float) -> bytes:
        """Send `frame` to `address` and return the answer; `TransportError` on failure."""
        ...


def encode_frame(payload: bytes, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Length prefix and payload."""
    if len(payload) > max_frame_size:
        raise TransportError(f"frame of {len(payload)} bytes exceeds {max_frame_size}")
    return len(payload).to_bytes(LENGTH_SIZE, "big") + payload


async def read_frame(reader: asyncio.StreamReader, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """One frame; `TransportError` if it is too big, `asyncio.IncompleteReadError` at EOF."""
    length = int.from_bytes(await reader.readexactly(LENGTH_SIZE), "big")
    if length > max_frame_size:
        raise TransportError(f"peer announced a frame of {length} bytes, max {max_frame_size}")
    return await reader.readexactly(length)


class TcpStreamServer:
    """A TCP listener serving length-prefixed request frames."""

    def __init__(
        self, handler: Handler, max_frame_size: int, idle_timeout: float, max_connections: int
    ) -> None:
        self._handler = handler
        self._max = max_frame_size
        self._idle = idle_timeout
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dropped = 0
        """Connections ended for a bad frame, a timeout or a failed handler."""
        self.failed = 0
        """Requests whose handler raised (a bug: every request should get an answer)."""

    async def _start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host, port)

    @property
    def address(self) -> Address:
        """The (host, port) bound."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return (host, port)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername") or ("?", 0)
        if len(self._tasks) >= self._max_connections:
            self.dropped += 1  # full: memory stays bounded whatever the peers do
            writer.close()
            return
        self._tasks.add(task)
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle):
                        frame = await read_frame(reader, self._max)
                except asyncio.IncompleteReadError:
                    return  # the client is done
                answer = await self._handler(frame, (peer[0], peer[1]))
                async with asyncio.timeout(self._idle):
                    writer.write(encode_frame(answer, self._max))
                    await writer.drain()
        except (TimeoutError, TransportError, ConnectionError) as exc:
            self.dropped += 1
            log.debug("directory connection from %s dropped: %s", peer, exc)
        except Exception:
            # a handler's bug must not escape into the event loop's handler; counted, logged
            self.dropped += 1
            self.failed += 1
            log.exception("directory request from %s failed", peer)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop listening, end connections."""
        if self._server is not None:
            self._server.close()
            await cancel_and_wait(self._tasks)
            await self._server.wait_closed()
            self._server = None


class TcpStreamTransport:
    """`StreamTransport` over asyncio TCP."""

    def __init__(
        self,
        *,
        max_frame_size: int = MAX_FRAME_SIZE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.max_frame_size = max_frame_size
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections

    async def serve(self, host: str, port: int, handler: Handler) -> TcpStreamServer:
        """Listen on TCP (host, port)."""
        server = TcpStreamServer(
            handler, self.max_frame_size, self.idle_timeout, self.max_connections
        )
        await server._start(host, port)
        return server

    async def request(self, address: Address, frame: bytes, *, within: float) -> bytes:
        """One request over a fresh connection."""
        data = encode_frame(frame, self.max_frame_size)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(within):
                reader, writer = await asyncio.open_connection(address[0], address[1])
                writer.write(data)
                await writer.drain()
                return await read_frame(reader, self.max_frame_size)
        except TimeoutError:
            raise TransportError(f"no answer from {address[0]}:{address[1]}") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise TransportError(f"{address[0]}:{address[1]}: {exc}") from exc
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
