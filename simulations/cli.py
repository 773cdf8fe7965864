"""``python -m simulations``: scenarios and benchmarks on the simulated network.

Each entry names a module with ``add_arguments(parser)`` and ``main(args) -> dict``; the dict is
printed as one JSON line (and written to ``--out DIR/result.json`` where a scenario supports it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# name -> (module, one-line description)
ENTRIES: dict[str, tuple[str, str]] = {
    "lookup": (
        "simulations.scenarios.lookup",
        "steady state: get latency percentiles, rounds and messages per lookup",
    ),
    "churn": (
        "simulations.scenarios.churn",
        "Poisson joins and silent departures; live records retrievable over time",
    ),
    "mass-failure": (
        "simulations.scenarios.mass_failure",
        "a share of nodes dies at once, silently; gets before and after",
    ),
    "partition": (
        "simulations.scenarios.partition",
        "split the network, update records on each side, heal, measure convergence",
    ),
    "expiry": (
        "simulations.scenarios.expiry",
        "days of virtual time: dead records vanish, live ones stay through republish",
    ),
    "adversarial": (
        "simulations.scenarios.adversarial",
        "a share of colluding malicious nodes; gets over one path vs. disjoint paths",
    ),
    "chat-idle": (
        "simulations.scenarios.chat_idle",
        "idle chat devices: datagrams per device per hour, polling vs push; push delivery",
    ),
    "fuzz": (
        "simulations.fuzz",
        "hostile datagrams at a live node: crashes (must be 0), memory, drops by reason",
    ),
    "bench-loopback": (
        "simulations.bench_loopback",
        "our node vs. stock kademlia on real loopback UDP, before and after killing nodes",
    ),
    "bench-drd": (
        "simulations.bench_drd",
        "DRD updates per second over sealed sessions vs. clear text, real 127.0.0.1",
    ),
    "bench-validate": (
        "simulations.bench_validate",
        "presence records validated per second vs. two raw ed25519 verifications",
    ),
}


class _Entry(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> dict[str, object]: ...


def _load(name: str) -> _Entry:
    return cast(_Entry, importlib.import_module(ENTRIES[name][0]))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per scenario or benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations",
        description="Scenarios and benchmarks for the DHT, mostly on an in-process network.",
    )
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    sub = parser.add_subparsers(dest="scenario", metavar="SCENARIO")
    for name, (_, description) in ENTRIES.items():
        _load(name).add_arguments(sub.add_parser(name, help=description, description=description))
    return parser


def run(argv: Sequence[str]) -> dict[str, object]:
    """Run the scenario named by `argv` (as on the command line) and return its result."""
    args = build_parser().parse_args(argv)
    if args.scenario is None:
        raise SystemExit("no scenario given; see --list")
    return _load(args.scenario).main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one scenario and print its result as JSON."""
    args = build_parser().parse_args(argv)
    if args.list or args.scenario is None:
        for name, (_, description) in ENTRIES.items():
            print(f"{name:16} {description}")
        return 0 if args.list else 2
    result = _load(args.scenario).main(args)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
