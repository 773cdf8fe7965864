"""The local control API: a gRPC service (proto/node/control.proto) over a running `DHTNode`.

It listens on 127.0.0.1 by default; `ControlServer` refuses any other address unless told
`allow_remote=True`, since whoever reaches it can make the node put records and shut down.
Errors map to gRPC codes: a record the validator refuses is ``INVALID_ARGUMENT`` with the
validator's reason first in the details (``"bad_signature: ..."``); a put no other node
acknowledged although the node knows some, or a node not running, is ``UNAVAILABLE``. A put on a
node that knows no other node yet succeeds: the node holds the record and republishes it as
peers come (``PutReply.others`` is 0). ``PutReply.stored`` counts the node itself.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from node import control_pb2 as pb
from node import control_pb2_grpc as pb_grpc
from node.errors import NodeNotRunning, PutFailed
from node.server import DHTNode
from records import (
    DHTError,
    InvalidRecord,
    Record,
    countersign,
    decode_record,
    encode_record,
    location,
    meta_key,
    presence_key,
)
from records.errors import NetworkError
from records.identity import is_hex_id
from records.keys import namespace_of
from records.meta import parse_meta
from records.presence import parse_announcement

log = logging.getLogger(__name__)

DEFAULT_API_PORT = 8469
T = TypeVar("T")


class ControlService(pb_grpc.ControlServicer):
    """The gRPC methods, each a thin layer over `DHTNode`."""

    def __init__(self, node: DHTNode, on_shutdown: Callable[[], None]) -> None:
        self.node = node
        self.on_shutdown = on_shutdown

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusReply:
        """Identity, address, table and store sizes, traffic counters."""
        return await _answer(context, self._status())

    async def _status(self) -> pb.StatusReply:
        node = self.node
        identity = node.identity
        if identity is None or node.table is None or node.store is None:
            raise NodeNotRunning("the node is not running")
        host, port = node.address
        stats = node.stats
        counters = [
            pb.Counter(name=f"requests_in.{k}", value=v) for k, v in stats.requests_in.items()
        ]
        counters += [
            pb.Counter(name=f"requests_out.{k}", value=v) for k, v in stats.requests_out.items()
        ]
        counters += [pb.Counter(name=f"dropped.{k}", value=v) for k, v in stats.dropped.items()]
        counters += [pb.Counter(name=f"refused.{k}", value=v) for k, v in stats.refused.items()]
        counters.append(pb.Counter(name="timeouts", value=stats.timeouts))
        counters.append(pb.Counter(name="lookups", value=stats.lookup_seconds.count))
        return pb.StatusReply(
            id=identity.id_hex,
            host=host,
            port=port,
            routing_table_size=len(node.table),
            records_held=len(node.store),
            bytes_held=node.store.bytes_used,
            counters=sorted(counters, key=lambda c: c.name),
            public_key=identity.public_key,
            handshake_key=identity.x25519_public_key,
        )

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutReply:
        """Validate and put a serialized record."""
        return await _answer(context, self._put(request.record, namespace=None))

    async def PublishMeta(self, request: pb.PutRequest, context: Any) -> pb.PutReply:
        """Put a user's signed meta record."""
        return await _answer(context, self._put(request.record, namespace="meta"))

    async def _put(self, data: bytes, namespace: str | None) -> pb.PutReply:
        record = decode_record(data)
        if namespace is not None and namespace_of(record.key) != namespace:
            raise InvalidRecord("wrong_namespace", f"expected a /{namespace}/ record")
        return await self._store(record)

    async def _store(self, record: Record) -> pb.PutReply:
        """Put `record` and count its holders, this node included. A node that knows no other
        node yet holds it (and republishes it once peers come): that is a success."""
        try:
            others = await self.node.put(record)
        except PutFailed as exc:
            if not self._holds(record):
                raise
            if set(exc.reasons) != {"no_peers"}:
                raise PutFailed(f"{exc}; this node holds it and retries while it runs") from exc
            return pb.PutReply(stored=1, others=0, key=record.key)
        held = 1 if self._holds(record) else 0  # not if its own store is full
        return pb.PutReply(stored=others + held, others=others, key=record.key)

    def _holds(self, record: Record) -> bool:
        store = self.node.store
        now = self.node.clock.now_ms()
        return store is not None and store.get(location(record.key), now) is not None

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetReply:
        """The record at a path."""
        return await _answer(context, self._get(request.path))

    async def _get(self, path: str) -> pb.GetReply:
        record = await self.node.get(path)
        if record is None:
            return pb.GetReply(found=False)
        return pb.GetReply(found=True, record=encode_record(record))

    async def Announce(self, request: pb.AnnounceRequest, context: Any) -> pb.PutReply:
        """Countersign and put a client's announcement."""
        return await _answer(context, self._announce(request))

    async def _announce(self, request: pb.AnnounceRequest) -> pb.PutReply:
        identity = self.node.identity
        if identity is None or not self.node.running:
            raise NodeNotRunning("the node is not running")
        # as DHTNode.announce, but counting holders as Put does
        record = countersign(request.message, request.client_signature, identity)
        return await self._store(record)

    async def Lookup(self, request: pb.LookupRequest, context: Any) -> pb.LookupReply:
        """A user's meta and devices."""
        return await _answer(context, self._lookup(request.uid))

    async def _lookup(self, text: str) -> pb.LookupReply:
        uid = text.lower()  # IDs are written in lowercase (DESIGN §2); people may type either
        if not is_hex_id(uid):
            raise InvalidRecord("bad_uid", f"{text!r} is not a UID (40 hex digits)")
        meta, presence = await asyncio.gather(
            self.node.get(meta_key(uid)), self.node.get(presence_key(uid))
        )
        reply = pb.LookupReply()
        if meta is not None and meta.values:
            _, user_meta = parse_meta(meta.values[0].value)
            reply.has_meta = True
            reply.name = user_meta.name
            reply.avatar_size = len(user_meta.avatar)
            reply.meta_timestamp = user_meta.timestamp
        for value in _values(presence):
            _, message = parse_announcement(value.value)
            reply.devices.append(
                pb.Device(
                    node_id=value.id2,
                    expiration=value.expirationDate,
                    presence_key=message.presence_key,
                    handshake_key=message.handshake_key,
                )
            )
        return reply

    async def Listen(
        self, request: pb.ListenRequest, context: Any
    ) -> AsyncIterator[pb.ListenEvent]:
        """Stream every new version of the record at a path."""
        try:
            async for record in self.node.watch(request.path):
                yield pb.ListenEvent(record=encode_record(record))
        except (InvalidRecord, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(exc))
        except DHTError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    async def Peers(self, request: pb.PeersRequest, context: Any) -> pb.PeersReply:
        """The routing table, nearest first."""
        return await _answer(context, self._peers())

    async def _peers(self) -> pb.PeersReply:
        node = self.node
        table = node.table
        if table is None or not node.running:
            raise NodeNotRunning("the node is not running")
        own = int.from_bytes(node.id, "big")
        return pb.PeersReply(
            peers=[
                pb.Peer(
                    id=c.id.hex(),
                    host=c.address[0],
                    port=c.address[1],
                    failures=c.failures,
                    rtt_ms=round(c.srtt * 1000, 3),
                )
                for c in table.closest(own, len(table))
            ]
        )

    async def Shutdown(self, request: pb.ShutdownRequest, context: Any) -> pb.ShutdownReply:
        """Ask the node's process to stop."""
        log.info("shutdown requested through the control API")
        self.on_shutdown()
        return pb.ShutdownReply()


def _values(record: Record | None) -> list[Any]:
    return list(record.values) if record is not None else []


def _details(exc: Exception) -> str:
    if isinstance(exc, InvalidRecord):
        return f"{exc.reason}: {exc.message}"
    return str(exc)


async def _answer(context: Any, work: Awaitable[T]) -> T:
    """Run `work`, turning the project's errors into gRPC status codes."""
    try:
        return await work
    except (InvalidRecord, ValueError) as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(exc))
    except (NetworkError, NodeNotRunning) as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    except DHTError as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    raise AssertionError("context.abort returns only by raising")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControlServer:
    """Serves `ControlService` for one node; `start()` returns the bound port."""

    def __init__(
        self,
        node: DHTNode,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_API_PORT,
        allow_remote: bool = False,
        on_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"the control API would listen on {host}, reachable from other machines; "
                "pass allow_remote (--api-allow-remote) if that is meant"
            )
        self.node = node
        self.host = host
        self.port = port
        self._service = ControlService(node, on_shutdown)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Start serving; returns the port actually bound. `OSError` if the address is in use
        (or not this machine's)."""
        # gRPC sets SO_REUSEPORT by default: a second node would then share the port with the
        # first, and ctl's calls (shutdown too) would go to either of them. The port is tried
        # with a plain socket first: a failed gRPC server keeps gRPC's pollers open.
        if self.port != 0:
            _check_free(self.host, self.port)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_ControlServicer_to_server(self._service, server)
        try:
            bound: int = server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError:  # grpcio raises where older versions returned 0
            bound = 0
        if bound == 0:
            await server.stop(None)
            raise _in_use(self.host, self.port)
        await server.start()
        self._server = server
        self.port = bound
        log.info("control API listening on %s:%d", self.host, bound)
        return bound

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving (open streams get `grace` seconds)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)


def _check_free(host: str, port: int) -> None:
    """Raise `_in_use` unless a TCP socket can bind `host:port` (without SO_REUSEPORT, so a
    socket listening there, with or without it, makes the bind fail)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"control API host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # as gRPC does: a port left in TIME_WAIT by a node that just stopped is free to use
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            raise _in_use(host, port) from None


def _in_use(host: str, port: int) -> OSError:
    return OSError(
        errno.EADDRINUSE,
        f"control API address {host}:{port} is in use or not this machine's "
        "(another node's API? give each node its own --api-port)",
    )
