"""``python -m node``: run a DHT node (the node itself lands with the node issue)."""

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m node", description="Run a Kademlia DHT node.")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (0.0.0.0)")
    parser.add_argument("--port", type=int, default=8468, help="UDP port (8468)")
    parser.add_argument("--data-dir", help="where the node keeps its key and records")
    parser.add_argument("--bootstrap", action="append", metavar="HOST:PORT", default=[])
    parser.parse_args()
    print("the DHT node is not implemented yet; see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
