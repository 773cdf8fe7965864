"""``python -m node``: run a DHT node until SIGINT or SIGTERM (DESIGN §8); ``python -m node
ctl ...`` drives a running one (see `node.ctl`)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import json
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from shlex import quote
from typing import NoReturn

from node import ctl
from node.api import DEFAULT_API_PORT, ControlServer, is_loopback
from node.authorities import SHIPPED_AUTHORITIES
from node.config import DEFAULT_PORT, NodeConfig
from node.directory.server import AUTHORITIES_FILE, DirectoryConfig, DirectoryServer
from node.keyexchange import KeyExchange
from node.logs import configure_logging
from node.metrics import MetricsServer
from node.server import DHTNode
from records import DHTError
from records.drd import TicketAuthorities
from records.errors import KeyFileError

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


class OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``error: ...`` line pointing at --help
    (argparse prints the whole usage first); its sub-command parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: MESSAGE (see PROG --help)`` to stderr and exit with 2."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m node``."""
    parser = OneLineErrors(
        prog="python -m node",
        allow_abbrev=False,  # else ctl's --api would be taken for a prefix of --api-host
        description="Run a Kademlia DHT node that stores signed, validated records, "
        "or drive a running one with 'ctl'.",
        epilog="The node's options go before 'ctl': python -m node [OPTIONS] ctl [CTL OPTIONS] "
        f"ACTION [ACTION OPTIONS]. {ctl.OPTIONS_WHERE} 'python -m node ctl --help' lists the "
        "actions.",
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
        default=ctl.DEFAULT_DATA_DIR,
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
        "--api-host", default="127.0.0.1", help="control API address (default 127.0.0.1)"
    )
    parser.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        help=f"control API TCP port, 0 for any (default {DEFAULT_API_PORT})",
    )
    parser.add_argument("--no-api", action="store_true", help="do not serve the control API")
    parser.add_argument(
        "--api-allow-remote",
        action="store_true",
        help="allow the control API on a non-loopback address (whoever reaches it controls "
        "the node)",
    )
    parser.add_argument(
        "--mode",
        choices=("server", "client", "auto"),
        default="server",
        help="server (default): answer queries, sit in routing tables; client: a node others "
        "cannot reach (behind NAT): ask and store through others, answer nothing, enter no "
        "routing table; auto: start as a client, turn server once peers reach it unasked",
    )
    parser.add_argument(
        "--client",
        dest="mode",
        action="store_const",
        const="client",
        help="the same as --mode client",
    )
    parser.add_argument(
        "--key-server",
        action="store_true",
        help="also serve the anonymous key exchange (Post Key / Get Key) on the node's UDP port",
    )
    parser.add_argument(
        "--key-ttl", type=float, default=300.0, help="seconds a posted key part is kept (300)"
    )
    parser.add_argument(
        "--directory",
        type=Path,
        metavar="DIR",
        help="also serve the DRD directory (seed 000) from DIR, over TCP at the node's port",
    )
    parser.add_argument(
        "--directory-authorities",
        type=Path,
        metavar="FILE",
        help="the ticket authorities every /drd/ entry's ticket is checked against (a file "
        "from 'python -m node.directory mint-authorities'; default: DIR/authorities.json "
        "with --directory if there is one, else the set shipped with the node)",
    )
    parser.add_argument(
        "--directory-clear-text",
        action="store_true",
        help="serve the directory in clear text instead of sealed frames (for tests only: "
        "profiles, tickets and sessions are then readable on the path)",
    )
    parser.add_argument(
        "--directory-public-host",
        metavar="HOST",
        help="the address other directory servers reach this one at (announced in the DHT; "
        "default: --host)",
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="metrics address (default 127.0.0.1)"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log lines as key=value text or JSON (default text)",
    )
    sub = parser.add_subparsers(dest="command", metavar="ctl")
    ctl.add_arguments(
        sub.add_parser(
            "ctl",
            help="drive a running node through its control API",
            description="Drive a running node through its control API.",
        )
    )
    return parser


def resolve(addresses: Sequence[tuple[str, int]], local_host: str) -> list[tuple[str, int]]:
    """Host names to addresses the node can reach: IPv4 for a node bound to an IPv4 address,
    IPv6 for one bound to an IPv6 address, either for one bound to ``::`` (dual-stack)."""
    if ":" not in local_host:
        families = [socket.AF_INET]
    elif ipaddress.ip_address(local_host).is_unspecified:
        families = [socket.AF_INET, socket.AF_INET6]
    else:
        families = [socket.AF_INET6]
    out = []
    for host, port in addresses:
        try:
            info = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve bootstrap host {host!r}: {exc.strerror}") from exc
        usable = sorted((i for i in info if i[0] in families), key=lambda i: families.index(i[0]))
        if not usable:
            kind = " or ".join("IPv4" if f == socket.AF_INET else "IPv6" for f in families)
            raise ValueError(f"bootstrap host {host!r} has no {kind} address (--host {local_host})")
        out.append((str(usable[0][4][0]), port))
    return out


async def run(config: NodeConfig, args: argparse.Namespace) -> None:
    """Start the node (and its API and metrics), print its ID and address, wait for a signal or
    a shutdown request, stop cleanly."""
    node = DHTNode(config, services=[KeyExchange(serve=args.key_server, ttl=args.key_ttl)])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    api: ControlServer | None = None
    metrics: MetricsServer | None = None
    api_file = config.data_dir / ctl.API_FILE if config.data_dir is not None else None
    directory: DirectoryServer | None = None
    if args.directory is not None:  # a plugin: started once the node has joined, stopped with it
        directory = DirectoryServer(_directory_config(args), node)
        node.add_service(directory)
    try:
        await node.start()
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise _udp_bind_error(exc, config.host, config.port) from exc
    try:
        if not args.no_api:
            api = ControlServer(
                node,
                host=args.api_host,
                port=args.api_port,
                allow_remote=args.api_allow_remote,
                on_shutdown=stop.set,
            )
            api_port = await api.start()
            if api_file is not None:
                _write_api_file(api_file, args.api_host, api_port)
        if args.metrics_port is not None:
            metrics = MetricsServer(node, host=args.metrics_host, port=args.metrics_port)
            await metrics.start()
        host, port = node.address
        print(f"node {node.id.hex()} listening on {_host_port((host, port))}", flush=True)
        if api is not None:
            print(f"control API on {args.api_host}:{api.port}", flush=True)
        if directory is not None:
            print(f"directory on {_host_port(directory.address)}", flush=True)
        if metrics is not None:
            print(f"metrics on http://{args.metrics_host}:{metrics.port}/metrics", flush=True)
        for line in start_up_hints(args, node.address, api is not None):
            print(line, flush=True)
        await stop.wait()
    finally:
        log.info("stopping")
        if api is not None:
            await api.stop()
            if api_file is not None:
                api_file.unlink(missing_ok=True)
        if metrics is not None:
            await metrics.stop()
        await node.stop()
        print("node stopped", flush=True)


def _udp_bind_error(exc: OSError, host: str, port: int) -> OSError:
    """`exc` from binding the node's UDP socket, naming the address."""
    if exc.errno == errno.EADDRINUSE:
        what = f"UDP address {host}:{port} is in use (another node's? give each its own --port)"
    else:
        what = f"cannot bind UDP {host}:{port}: {exc.strerror or exc}"
    return OSError(exc.errno, what)


def start_up_hints(args: argparse.Namespace, address: tuple[str, int], api: bool) -> list[str]:
    """How others join this node, and how to drive it with ctl (printed once it runs)."""
    host, port = address
    if ipaddress.ip_address(host).is_unspecified:
        join = f"others join it with: --bootstrap HOST:{port} (HOST: this machine's address)"
    else:
        join = f"others join it with: --bootstrap {_host_port(address)}"
    if not api:
        return [join, "no control API (--no-api): ctl cannot drive this node"]
    data_dir = (
        "" if args.data_dir == ctl.DEFAULT_DATA_DIR else f" --data-dir {quote(str(args.data_dir))}"
    )
    actions = ", ".join(ctl.ACTIONS)
    return [
        join,
        f"drive it with: python -m node ctl{data_dir} ACTION ({actions}; "
        "see python -m node ctl --help)",
    ]


def _drd_authorities(args: argparse.Namespace) -> TicketAuthorities:
    """The ticket authorities named on the command line, else DIR/authorities.json of
    --directory, else the set shipped with the node (`node.authorities`)."""
    path = args.directory_authorities
    if path is None and args.directory is not None:
        path = args.directory / AUTHORITIES_FILE
        if not path.exists():
            path = None
    if path is None:
        return SHIPPED_AUTHORITIES
    try:
        return TicketAuthorities.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read directory authorities from {path}: {exc}") from exc


def _directory_config(args: argparse.Namespace) -> DirectoryConfig:
    """The directory role's settings from the command line (its ticket authorities are the
    node's, `_drd_authorities`)."""
    return DirectoryConfig(
        root=args.directory,
        public_host=args.directory_public_host,
        clear_text=args.directory_clear_text,
    )


def _host_port(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_api_file(path: Path, host: str, port: int) -> None:
    """Tell `ctl` where the API is (written atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"host": host, "port": port}), encoding="utf-8")
    tmp.replace(path)


def os_error_text(exc: OSError) -> str:
    """An OSError for people: the file it concerns (if any) and what went wrong, no errno."""
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename is not None else what


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if args.command == "ctl":
        return ctl.main(args)
    configure_logging(args.log_level, args.log_format)
    try:
        config = NodeConfig(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            bootstrap=tuple(resolve(args.bootstrap, args.host)),
            drd_authorities=_drd_authorities(args),
            mode=args.mode,
        )
        if not args.no_api and not args.api_allow_remote and not is_loopback(args.api_host):
            raise ValueError(
                f"--api-host {args.api_host} is reachable from other machines; "
                "add --api-allow-remote if that is meant"
            )
        asyncio.run(run(config, args))
    except (ValueError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DHTError as exc:  # e.g. the data dir is in use
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot start the node: {os_error_text(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
