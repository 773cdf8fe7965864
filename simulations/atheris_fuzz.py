"""Coverage-guided fuzzing of the datagram handler with atheris (libFuzzer), if installed.

    pip install atheris
    python -m simulations.atheris_fuzz -max_total_time=60

Every input is fed to a live node's `datagram_received` and to the record decoder and
validator; an exception escaping either is a finding (libFuzzer stops and saves the input).
libFuzzer options (``-runs=N``, ``-max_total_time=S``, a corpus directory) pass through.
"""

from __future__ import annotations

import asyncio
import sys

try:
    import atheris
except ImportError:  # not a dependency: it needs a compiler to install
    sys.exit("atheris is not installed: pip install atheris")

with atheris.instrument_imports():
    from node.server import DHTNode
    from records import InvalidRecord, decode_record, default_validator
    from simulations.clock import VirtualTimeLoop
    from simulations.harness import Simulation

NOW = 1_767_225_600_000


def main() -> None:
    """Start a small simulated network, then hand control to libFuzzer."""
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    sim = Simulation(seed=1)
    loop.run_until_complete(sim.grow(4))
    node: DHTNode | None = sim.nodes[0].node
    assert node is not None
    assert node.protocol is not None
    protocol = node.protocol
    validator = default_validator()

    def one_input(data: bytes) -> None:
        protocol.datagram_received(data, ("127.5.5.5", 4242))
        try:
            record = decode_record(data)
            validator.validate(record.key, record, NOW)
        except InvalidRecord:
            pass

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
