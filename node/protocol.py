"""The asyncio side of the RPC engine: a thin `DatagramProtocol` that moves bytes.

`EngineProtocol` feeds each datagram to the `Engine` with the loop's time, sends what the
engine hands back, runs the disk writes stores wait on, and wakes the engine at its next
deadline with one loop timer. Every protocol rule lives in `node.engine`; the simulator drives
this same adapter over its simulated transport.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from typing import Any

from node.engine import Engine, PendingWrite
from node.engine.calls import OnReply
from node.routing import Address, Contact
from node.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Reply = tuple[bool, Any]


class EngineProtocol(asyncio.DatagramProtocol):
    """Connects an `Engine` to a datagram transport and the event loop."""

    def __init__(self, engine: Engine, *, receive_buffer: int = 0) -> None:
        self.engine = engine
        self.transport: asyncio.DatagramTransport | None = None
        self.receive_buffer = receive_buffer
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._writes: set[asyncio.Task[None]] = set()
        self._ipv6 = False  # the socket is IPv6 (IPv4 peers appear IPv4-mapped)

    # -- asyncio.DatagramProtocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; ask the kernel for a larger receive buffer (a burst of answers
        overflowed the default 208 KiB on a busy host); tell the engine which address
        families the socket reaches (an IPv4 socket IPv4, a dual-stack IPv6 socket both)."""
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is None:  # a simulated transport: its address says its family
            sockname = transport.get_extra_info("sockname")
            if sockname:
                self.engine.table.families = frozenset({6 if ":" in sockname[0] else 4})
            return
        if self.receive_buffer:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            except OSError as exc:
                log.warning("could not enlarge the receive buffer: %s", exc)
        if sock.family == socket.AF_INET6:
            self._ipv6 = True
            v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            self.engine.table.families = frozenset({6} if v6only else {4, 6})
        else:
            self.engine.table.families = frozenset({4})

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """One datagram in: the engine handles it, then its output goes out. A (host, port)
        source is passed on as it came: contacts and proofs keep it, and a copy per datagram
        was kept many times over (8 KB per node in a 2,000-node simulation)."""
        host = addr[0]
        if self._ipv6 and host.startswith("::ffff:") and "." in host:
            addr = (host[7:], addr[1])  # an IPv4 peer reaching a dual-stack socket: kept as IPv4
        elif len(addr) != 2:
            addr = (host, addr[1])  # an IPv6 socket's (host, port, flowinfo, scope_id)
        self.engine.datagram_received(data, addr, self._loop.time())
        self.flush()

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for something we sent (e.g. port unreachable): the peer times out."""
        self.engine.stats.dropped["icmp_error"] += 1

    # -- moving the engine's output --------------------------------------------------------

    def flush(self) -> None:
        """Send what the engine wants sent, start the writes it waits on, set its timer."""
        engine = self.engine
        transport = self.transport
        out = engine.datagrams_to_send()
        if transport is not None and not transport.is_closing():
            for data, addr in out:
                if self._ipv6 and ":" not in addr[0]:
                    addr = ("::ffff:" + addr[0], addr[1])  # IPv4 through a dual-stack socket
                try:
                    transport.sendto(data, addr)
                except OSError as exc:  # e.g. no route to that family: the call times out
                    engine.stats.dropped[f"send_error.{exc.errno}"] += 1
        for write in engine.writes_to_run():
            task = self._loop.create_task(self._run_write(write))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        if engine.timer_moved:
            self._set_timer()

    def _set_timer(self) -> None:
        """Wake the engine at its next deadline (an earlier timer, if set, stays: waking early
        costs a look at the deadlines, nothing more)."""
        engine = self.engine
        engine.timer_moved = False
        at = engine.get_timer()
        if at is not None and at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.engine.handle_timer(self._loop.time())
        self.flush()
        self._set_timer()

    async def _run_write(self, write: PendingWrite) -> None:
        try:
            await write.work
        except Exception:
            log.exception("could not persist a record from %s", write.request.addr)
            ok = False
        else:
            ok = True
        self.engine.write_finished(write, ok, self._loop.time())
        self.flush()

    async def close(self) -> None:
        """Fail every call in flight, wait for the disk writes, close the transport."""
        self.engine.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        await cancel_and_wait(self._writes)
        if self.transport is not None:
            self.transport.close()

    # -- calls -----------------------------------------------------------------------------

    def request(
        self,
        address: Address,
        name: str,
        args: list[Any],
        node_id: bytes | None,
        on_reply: OnReply,
        on_stall: Any = None,
    ) -> bool:
        """`Engine.call` at the loop's time; see there."""
        sent = self.engine.call(address, name, args, node_id, on_reply, self._loop.time(), on_stall)
        self.flush()
        return sent

    def call(
        self, address: Address, name: str, args: list[Any], node_id: bytes | None = None
    ) -> asyncio.Future[Reply]:
        """`request` as a future of ``(True, answer)`` or ``(False, None)``."""
        future: asyncio.Future[Reply] = self._loop.create_future()

        def resolve(ok: bool, body: Any) -> None:
            if not future.done():
                future.set_result((ok, body))

        self.request(address, name, args, node_id, resolve)
        return future

    def ping_contact(self, contact: Contact) -> asyncio.Future[Reply]:
        """Ping a contact (the routing table hears of the outcome)."""
        return self.call(contact.address, "ping", [self.engine.own_id], contact.id)

    def ping_address(self, address: Address) -> asyncio.Future[Reply]:
        """Ping an address whose node ID we may not know (bootstrap)."""
        return self.call(address, "ping", [self.engine.own_id])

    def store_at(
        self, address: Address, node_id: bytes, key: bytes, data: bytes
    ) -> asyncio.Future[Reply]:
        """A store request of record bytes `data` at location `key`."""
        return self.call(address, "store", [self.engine.own_id, key, data], node_id)

    def record_changed(self, loc: bytes) -> None:
        """The record at `loc` changed in the store: the engine tells its subscribers."""
        self.engine.record_changed(loc, self._loop.time())
        self.flush()

    def send_datagram(self, data: bytes, addr: Address) -> None:
        """Send raw bytes from the node's port (services sharing it)."""
        self.engine.send(data, addr)
        self.flush()

    def timeout_for(self, node_id: bytes | None) -> float:
        """The engine's current timeout for a request to `node_id`."""
        return self.engine.estimates(node_id)[0]
