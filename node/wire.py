"""rpcudp's datagram framing, kept byte for byte so stock `kademlia` nodes can talk to ours.

A datagram is one message: a kind byte (``0x00`` request, ``0x01`` response), a 20-byte message
ID, then a msgpack body: ``[name, [args...]]`` for a request, the result for a response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from node.errors import ProtocolError
from records import MAX_RECORD_SIZE

REQUEST = 0x00
RESPONSE = 0x01
MSG_ID_SIZE = 20
HEADER_SIZE = 1 + MSG_ID_SIZE
# DESIGN §4: a record is at most 8 KiB; a datagram also carries the RPC name, IDs and framing.
MAX_DATAGRAM_SIZE = MAX_RECORD_SIZE + 512


@dataclass(slots=True)
class Message:
    """A decoded datagram."""

    kind: int
    msg_id: bytes
    body: Any


def encode_request(msg_id: bytes, name: str, args: list[Any]) -> bytes:
    """A request datagram; `ProtocolError("oversized")` if it would exceed the datagram limit."""
    data: bytes = b"\x00" + msg_id + msgpack.packb([name, args], use_bin_type=True)
    if len(data) > MAX_DATAGRAM_SIZE:
        raise ProtocolError("oversized", f"{name} request is {len(data)} bytes")
    return data


def encode_response(msg_id: bytes, result: Any) -> bytes:
    """A response datagram."""
    data: bytes = b"\x01" + msg_id + msgpack.packb(result, use_bin_type=True)
    return data


def decode(data: bytes) -> Message:
    """Parse a datagram; `ProtocolError` names why one is dropped."""
    if len(data) > MAX_DATAGRAM_SIZE:
        raise ProtocolError("oversized", f"{len(data)} bytes")
    if len(data) <= HEADER_SIZE:
        raise ProtocolError("truncated", f"{len(data)} bytes")
    kind = data[0]
    if kind not in (REQUEST, RESPONSE):
        raise ProtocolError("unknown_kind", f"kind byte {kind:#x}")
    try:
        body = msgpack.unpackb(data[HEADER_SIZE:], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError("malformed", type(exc).__name__) from exc
    return Message(kind, data[1:HEADER_SIZE], body)
