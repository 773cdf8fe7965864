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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one scenario and print its result as JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list or args.scenario is None:
        for name, (_, description) in ENTRIES.items():
            print(f"{name:16} {description}")
        return 0 if args.list else 2
    result = _load(args.scenario).main(args)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
