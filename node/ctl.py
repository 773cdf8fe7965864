"""``python -m node ctl``: drive a running node through its control API.

Human-readable output by default, ``--json`` for scripts (one JSON object per line, one per
event for ``listen``). Exit codes: 0 ok, 1 the node refused or failed, 2 bad usage, 3 no node
answering at the API address.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import platformdirs
from google.protobuf.message import Message

from node import control_pb2 as pb
from node import control_pb2_grpc as pb_grpc
from node.keyfile import load_identity, load_or_create_identity
from records import (
    DHTError,
    Record,
    client_announcement,
    decode_record,
    encode_record,
    make_meta_record,
)
from records.errors import KeyFileError

API_FILE = "api.json"
DEFAULT_DATA_DIR = Path(platformdirs.user_data_dir("kadnode"))
"""Where ``python -m node`` keeps its key and records unless told ``--data-dir``."""
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_NODE = 0, 1, 2, 3


class CtlError(Exception):
    """Something to tell the user, with the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


OPTIONS_WHERE = (
    "ctl's options (--api, --data-dir, --json, --timeout) go before or after the action: "
    "'ctl status --json' and 'ctl --json status' are the same; the node's own options "
    "(--host, --port ...) are not for ctl."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ctl`` sub-commands; ctl's own options are taken before or after the action."""
    parser.epilog = OPTIONS_WHERE
    _add_options(parser, with_defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_options(common, with_defaults=False)
    _add_actions(parser, common)


def _add_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """ctl's options. After the action they have no defaults (argparse.SUPPRESS), so that one
    given before the action is not reset; --data-dir has its default in python -m node's
    parser, where it may also be given (before 'ctl')."""

    def default(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    parser.add_argument(
        "--api",
        metavar="HOST:PORT",
        default=default(None),
        help="control API address (default: the one the node wrote in DATA_DIR/api.json)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"the node's data dir, where it wrote api.json (default: {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    parser.add_argument(
        "--timeout", type=float, default=default(30.0), help="seconds per call (30)"
    )


def _add_actions(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser(
        "status", parents=[common], help="ID, address, routing table, records held, counters"
    )
    get = sub.add_parser("get", parents=[common], help="the record at a path")
    get.add_argument("path")
    get.add_argument("--out", type=Path, help="also write the record's bytes here")
    put = sub.add_parser(
        "put", parents=[common], help="put a serialized record from a file ('-': stdin)"
    )
    put.add_argument("file")
    announce = sub.add_parser(
        "announce", parents=[common], help="announce a user as reachable through the node"
    )
    announce.add_argument("--key", type=Path, required=True, help="the user's key file")
    announce.add_argument("--ttl", type=int, default=3600, help="seconds (3600)")
    meta = sub.add_parser("meta", parents=[common], help="publish a user's name and avatar")
    meta.add_argument("--key", type=Path, required=True, help="the user's key file")
    meta.add_argument("--name", required=True)
    meta.add_argument("--avatar", type=Path, help="a small image file")
    meta.add_argument("--ttl", type=int, default=3 * 24 * 3600, help="seconds (3 days)")
    lookup = sub.add_parser("lookup", parents=[common], help="a user's meta and devices by UID")
    lookup.add_argument("uid")
    listen = sub.add_parser(
        "listen", parents=[common], help="print each new version of a record until Ctrl-C"
    )
    listen.add_argument("path")
    listen.add_argument("--count", type=int, help="exit after this many events")
    sub.add_parser("peers", parents=[common], help="the routing table")
    sub.add_parser("shutdown", parents=[common], help="stop the node")
    keygen = sub.add_parser(
        "keygen", parents=[common], help="create a user key file (owner-only) and print its UID"
    )
    keygen.add_argument("file", type=Path)


def api_address(args: argparse.Namespace) -> str:
    """Where to reach the API: --api, else what the node wrote in its data dir. Never a
    default address: a mistyped data dir would drive (or shut down) whatever node has it."""
    if args.api:
        return str(args.api)
    data_dir = Path(args.data_dir)
    api_file = data_dir / API_FILE
    try:
        info = json.loads(api_file.read_text(encoding="utf-8"))
        return f"{info['host']}:{info['port']}"
    except FileNotFoundError:
        raise CtlError(
            f"no node's control API in {data_dir}: {api_file} does not exist (is a node "
            f"running with --data-dir {data_dir}? else give --api HOST:PORT)",
            EXIT_NO_NODE,
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CtlError(
            f"cannot read {api_file} ({exc}); give --api HOST:PORT", EXIT_NO_NODE
        ) from None


def main(args: argparse.Namespace) -> int:
    """Run one ``ctl`` action; returns the exit code."""
    try:
        return _run(args, Output(args.json))
    except BrokenPipeError:
        # The reader stopped early (ctl ... | head): that ends ctl quietly. What is left to
        # write (print's buffer, flushed at exit) goes nowhere, else exit would fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK


def _run(args: argparse.Namespace, out: Output) -> int:
    try:
        if args.action == "keygen":
            return keygen(args.file, out)
        address = api_address(args)
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=min(args.timeout, 3.0))
            except grpc.FutureTimeoutError:
                raise CtlError(
                    f"no node answers at {address}: is it running? (start one with python -m node)",
                    EXIT_NO_NODE,
                ) from None
            stub = pb_grpc.ControlStub(channel)
            return ACTIONS[args.action](stub, args, out)
    except CtlError as exc:
        out.error(str(exc))
        return exc.code
    except grpc.RpcError as exc:
        code = exc.code()
        out.error(f"{code.name}: {exc.details()}")
        return EXIT_USAGE if code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


class Output:
    """Prints results as text or JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: dict[str, Any], text: str) -> None:
        print(json.dumps(data, sort_keys=True) if self.as_json else text, flush=True)

    def note(self, message: str) -> None:
        """A remark for people, on stderr (stdout stays the results)."""
        print(message, file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        if self.as_json:
            print(json.dumps({"error": message}), flush=True)
        print(f"error: {message}", file=sys.stderr, flush=True)


def record_json(record: Record) -> dict[str, Any]:
    """A record as JSON-friendly data (value bytes in base64)."""
    return {
        "key": record.key,
        "updateDate": record.updateDate,
        "id1": record.id1,
        "values": [
            {
                "id2": v.id2,
                "creationDate": v.creationDate,
                "expirationDate": v.expirationDate,
                "value": base64.b64encode(v.value).decode("ascii"),
            }
            for v in record.values
        ],
    }


def record_text(record: Record) -> str:
    """A record, briefly, for people."""
    lines = [f"{record.key}  (id1 {record.id1}, updated {_when(record.updateDate)})"]
    for v in record.values:
        lines.append(
            f"  {v.id2}  created {_when(v.creationDate)}  expires {_when(v.expirationDate)}"
            f"  {len(v.value)} bytes"
        )
    return "\n".join(lines)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def _call(method: Callable[..., Any], request: Message, args: argparse.Namespace) -> Any:
    return method(request, timeout=args.timeout)


def status(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    reply: pb.StatusReply = _call(stub.Status, pb.StatusRequest(), args)
    counters = {c.name: c.value for c in reply.counters}
    data = {
        "id": reply.id,
        "address": f"{reply.host}:{reply.port}",
        "routing_table_size": reply.routing_table_size,
        "records_held": reply.records_held,
        "bytes_held": reply.bytes_held,
        "counters": counters,
    }
    text = "\n".join(
        [
            f"node      {reply.id}",
            f"address   {reply.host}:{reply.port}",
            f"contacts  {reply.routing_table_size}",
            f"records   {reply.records_held} ({reply.bytes_held} bytes)",
            *(f"  {name:32} {value}" for name, value in counters.items()),
        ]
    )
    out.emit(data, text)
    return EXIT_OK


def get(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    reply: pb.GetReply = _call(stub.Get, pb.GetRequest(path=args.path), args)
    if not reply.found:
        out.emit({"found": False, "path": args.path}, f"no record at {args.path}")
        return EXIT_FAILED
    record = decode_record(reply.record)
    if args.out is not None:
        args.out.write_bytes(reply.record)
    out.emit({"found": True, "record": record_json(record)}, record_text(record))
    return EXIT_OK


def put(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE) from exc
    reply: pb.PutReply = _call(stub.Put, pb.PutRequest(record=data), args)
    out.emit(
        {"stored": reply.stored, "others": reply.others, "key": reply.key},
        f"{stored_text(reply)}: {reply.key}",
    )
    return EXIT_OK


def stored_text(reply: pb.PutReply) -> str:
    """Where a put record is held, for people."""
    if reply.others == 0:
        return "stored on this node only (no peers yet)"
    return f"stored on {reply.stored} nodes"


def _user(path: Path) -> Any:
    try:
        return load_identity(path)
    except KeyFileError as exc:
        raise CtlError(
            f"{exc} (make one with: python -m node ctl keygen {path})", EXIT_USAGE
        ) from exc


def announce(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    user = _user(args.key)
    node: pb.StatusReply = _call(stub.Status, pb.StatusRequest(), args)
    now = int(time.time() * 1000)
    message, signature = client_announcement(
        user,
        node.public_key,
        handshake_key=node.handshake_key,
        presence_key=user.x25519_public_key,
        expiration=now + args.ttl * 1000,
        now=now,
    )
    request = pb.AnnounceRequest(message=message, client_signature=signature)
    reply: pb.PutReply = _call(stub.Announce, request, args)
    out.emit(
        {"stored": reply.stored, "others": reply.others, "uid": user.id_hex, "node": node.id},
        f"{user.id_hex} announced through {node.id}; {stored_text(reply)}",
    )
    return EXIT_OK


def meta(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    user = _user(args.key)
    try:
        avatar = args.avatar.read_bytes() if args.avatar is not None else b""
    except OSError as exc:
        raise CtlError(f"cannot read {args.avatar}: {exc.strerror}", EXIT_USAGE) from exc
    record = make_meta_record(
        user, name=args.name, avatar=avatar, now=int(time.time() * 1000), ttl_ms=args.ttl * 1000
    )
    reply: pb.PutReply = _call(stub.PublishMeta, pb.PutRequest(record=encode_record(record)), args)
    out.emit(
        {"stored": reply.stored, "others": reply.others, "uid": user.id_hex, "key": reply.key},
        f"meta of {user.id_hex} {stored_text(reply)}",
    )
    return EXIT_OK


def lookup(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    uid = args.uid.lower()  # the node takes either case; shown as IDs are written
    reply: pb.LookupReply = _call(stub.Lookup, pb.LookupRequest(uid=uid), args)
    devices = [
        {
            "node": d.node_id,
            "expiration": d.expiration,
            "presence_key": d.presence_key.hex(),
            "handshake_key": d.handshake_key.hex(),
        }
        for d in reply.devices
    ]
    data = {
        "uid": uid,
        "has_meta": reply.has_meta,
        "name": reply.name,
        "avatar_size": reply.avatar_size,
        "meta_timestamp": reply.meta_timestamp,
        "devices": devices,
    }
    lines = [f"user {uid}"]
    lines.append(
        f"  name {reply.name!r} (avatar {reply.avatar_size} bytes)"
        if reply.has_meta
        else "  no meta"
    )
    lines += [f"  device via {d.node_id} until {_when(d.expiration)}" for d in reply.devices]
    if not devices:
        lines.append("  no devices online")
    out.emit(data, "\n".join(lines))
    return EXIT_OK if reply.has_meta or devices else EXIT_FAILED


def listen(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    events: Iterator[pb.ListenEvent] = stub.Listen(pb.ListenRequest(path=args.path))
    until = f"exits after {args.count}" if args.count is not None else "Ctrl-C to stop"
    out.note(f"waiting for new versions of {args.path} ({until})")
    for seen, event in enumerate(events, start=1):
        record = decode_record(event.record)
        out.emit({"record": record_json(record)}, record_text(record))
        if args.count is not None and seen >= args.count:
            events.cancel()  # type: ignore[attr-defined]
            break
    return EXIT_OK


def peers(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    reply: pb.PeersReply = _call(stub.Peers, pb.PeersRequest(), args)
    rows = [
        {"id": p.id, "address": f"{p.host}:{p.port}", "failures": p.failures, "rtt_ms": p.rtt_ms}
        for p in reply.peers
    ]
    text = "\n".join(
        [f"{len(rows)} contacts"]
        + [
            f"  {r['id']}  {r['address']:21}  rtt {r['rtt_ms']:.1f} ms  failures {r['failures']}"
            for r in rows
        ]
    )
    out.emit({"peers": rows}, text)
    return EXIT_OK


def shutdown(stub: pb_grpc.ControlStub, args: argparse.Namespace, out: Output) -> int:
    _call(stub.Shutdown, pb.ShutdownRequest(), args)
    out.emit({"shutdown": True}, "node is stopping")
    return EXIT_OK


def keygen(path: Path, out: Output) -> int:
    if path.exists():
        raise CtlError(f"{path} exists; not overwriting a key", EXIT_USAGE)
    try:
        user = load_or_create_identity(path)
    except (OSError, DHTError) as exc:
        raise CtlError(f"cannot create {path}: {exc}", EXIT_FAILED) from exc
    out.emit({"uid": user.id_hex, "file": str(path)}, f"uid {user.id_hex} (key in {path})")
    return EXIT_OK


ACTIONS: dict[str, Callable[[pb_grpc.ControlStub, argparse.Namespace, Output], int]] = {
    "status": status,
    "get": get,
    "put": put,
    "announce": announce,
    "meta": meta,
    "lookup": lookup,
    "listen": listen,
    "peers": peers,
    "shutdown": shutdown,
}
