"""``python -m node.chat``: a terminal chat over the DHT, one command per user (or device).

    python -m node.chat --name alice --port 9000 --local-nodes 4
    python -m node.chat --name bob --bootstrap 127.0.0.1:9000 --to <alice's uid>

Each run starts a DHT node (plus, with ``--local-nodes``, a few helper nodes in the same process,
so two commands make a small network), publishes the user's meta, announces the device, then reads
lines from stdin: ``/to UID`` picks the peer, other lines are sent to it; incoming messages are
printed and acknowledged. The user key lives in ``DATA_DIR/user.key``: copy it into another data
directory to run a second device of the same user.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import platformdirs

from node.__main__ import OneLineErrors, os_error_text, parse_address, resolve
from node.chat.client import ChatClient
from node.chat.session import HELP, ChatSession, parse_uid
from node.config import NodeConfig
from node.errors import PutFailed
from node.keyfile import load_or_create_identity
from node.server import DHTNode
from node.tasks import cancel_and_wait
from records import DHTError
from records.errors import KeyFileError

USER_KEY_FILE = "user.key"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m node.chat``."""
    parser = OneLineErrors(
        prog="python -m node.chat",
        description="Chat over the DHT: end-to-end encrypted messages that wait in the "
        "recipient's inbox while they are offline (seed 003).",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="your display name (published in your meta)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="user key, node key, records and chat state "
        "(default: the user data dir of kadnode-chat/NAME)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="UDP port, 0 for any (default 0)")
    parser.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        type=parse_address,
        metavar="HOST:PORT",
        help="a node to join through; repeat for several",
    )
    parser.add_argument(
        "--local-nodes",
        type=int,
        default=0,
        metavar="N",
        help="also run N helper nodes in this process, so a first user makes a network (0)",
    )
    parser.add_argument("--to", metavar="UID", help="the uid of the user to talk to")
    parser.add_argument(
        "--poll",
        type=float,
        default=6 * 3600.0,
        help="seconds between two reads of the whole inbox (21600); pushes bring messages "
        "in between",
    )
    parser.add_argument("--verbose", action="store_true", help="log the node's work to stderr")
    return parser


async def stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except ValueError:  # a regular file: the selector cannot wait on it, nor need to
        for line in sys.stdin:
            yield line
        return
    while line := await reader.readline():
        yield line.decode("utf-8", errors="replace")


async def run(args: argparse.Namespace, data_dir: Path) -> None:
    """Start the nodes and the client, run the session until stdin ends or a signal."""
    user = load_or_create_identity(data_dir / USER_KEY_FILE)
    helpers: list[DHTNode] = []
    node = DHTNode(
        NodeConfig(
            host=args.host,
            port=args.port,
            data_dir=data_dir / "node",
            bootstrap=tuple(resolve(args.bootstrap, args.host)),
        )
    )
    await node.start()
    try:
        for i in range(args.local_nodes):
            helper = DHTNode(
                NodeConfig(
                    host=args.host,
                    port=0,
                    data_dir=data_dir / f"helper-{i}",
                    bootstrap=(node.address,),
                )
            )
            await helper.start()
            helpers.append(helper)
        if helpers:
            await node.bootstrap([h.address for h in helpers])
        if node.table is None or not len(node.table):
            raise NoPeers(_no_peers(args.bootstrap))
        host, port = node.address
        print(f"{args.name}: uid {user.id_hex}", flush=True)
        print(f"node listening on {host}:{port} (others join with --bootstrap {host}:{port})")
        client = ChatClient(node, user, name=args.name, state_dir=data_dir, max_poll=args.poll)
        peer = parse_uid(args.to) if args.to else None
        session = ChatSession(client, lambda line: print(line, flush=True), peer)
        async with client:
            print("type /to UID to pick whom to talk to, /quit to leave", flush=True)
            body = asyncio.ensure_future(session.run(stdin_lines()))
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait([body, waiter], return_when=asyncio.FIRST_COMPLETED)
            await cancel_and_wait([body, waiter])
    finally:
        for helper in helpers:
            await helper.stop()
        await node.stop()


class NoPeers(Exception):
    """No other node answered: there is nowhere to keep the user's meta and messages."""


def _no_peers(bootstrap: Sequence[tuple[str, int]]) -> str:
    if bootstrap:
        where = ", ".join(f"{host}:{port}" for host, port in bootstrap)
        return (
            f"no node answered at {where}: give --bootstrap HOST:PORT of a running node, "
            "or --local-nodes N to run N helper nodes here"
        )
    return (
        "no other node to keep your meta and messages: pass --local-nodes N to run N helper "
        "nodes here (the first user does), or --bootstrap HOST:PORT to join a running node"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if args.to is not None and parse_uid(args.to) is None:
        print(f"error: --to {args.to!r} is not a uid (40 hex digits)", file=sys.stderr)
        return 2
    if args.local_nodes < 0:
        print(f"error: --local-nodes {args.local_nodes} cannot be negative", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, stream=sys.stderr)
    data_dir = args.data_dir or Path(platformdirs.user_data_dir("kadnode-chat")) / args.name
    try:
        asyncio.run(run(args, data_dir))
    except (KeyFileError, ValueError) as exc:  # a bad key file, a bootstrap host unknown
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NoPeers as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except PutFailed as exc:  # peers, but none stored the user's meta or presence
        print(f"error: cannot publish your meta and device: {exc}", file=sys.stderr)
        return 1
    except DHTError as exc:  # the data dir is in use, a broken records database ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot start: {os_error_text(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
