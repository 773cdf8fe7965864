"""``python -m node``: run a DHT node until SIGINT or SIGTERM (DESIGN §8)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from node.config import DEFAULT_PORT, NodeConfig
from node.keyfile import KeyFileError
from node.server import DHTNode

log = logging.getLogger("node")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) as a (host, port) pair; argparse-friendly errors."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port in {text!r} is not a number") from None
    if not 0 < port <= 65535:
        raise argparse.ArgumentTypeError(f"port in {text!r} is not in 1..65535")
    return host, port


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m node``."""
    parser = argparse.ArgumentParser(
        prog="python -m node",
        description="Run a Kademlia DHT node that stores signed, validated records.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"UDP port, 0 for any (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(platformdirs.user_data_dir("kadnode")),
        help="key and records live here (default: %(default)s)",
    )
    parser.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        type=parse_address,
        metavar="HOST:PORT",
        help="a node to join through; repeat for several",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    return parser


def resolve(addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Host names to IPv4 addresses (the node speaks IPv4 UDP)."""
    out = []
    for host, port in addresses:
        try:
            info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise SystemExit(f"cannot resolve bootstrap host {host!r}: {exc.strerror}") from exc
        out.append((str(info[0][4][0]), port))
    return out


async def run(config: NodeConfig) -> None:
    """Start the node, print its ID and address, wait for a signal, stop cleanly."""
    node = DHTNode(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await node.start()
    host, port = node.address
    print(f"node {node.id.hex()} listening on {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await node.stop()
        print("node stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = NodeConfig(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            bootstrap=tuple(resolve(args.bootstrap)),
        )
        asyncio.run(run(config))
    except (ValueError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot start the node: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
