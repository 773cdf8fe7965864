"""Hypothesis-driven fuzzing of the datagram handler and the record decoder: nothing escapes,
nothing unexpected is stored, and the node keeps answering."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from records import Identity, InvalidRecord, decode_record, default_validator, encode_record
from records.chat import make_handshake, make_message
from records.drd import make_drd_servers_record
from simulations.clock import run_virtual
from simulations.fuzz import DatagramFuzzer
from simulations.harness import Simulation
from simulations.scenarios.common import announce, user_identity
from tests.records_factory import NOW, meta, presence

pytestmark = pytest.mark.timeout(120)

leaves = st.one_of(
    st.binary(max_size=64),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=20),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
)
objects = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
framed = st.builds(
    lambda kind, msg_id, body: bytes([kind]) + msg_id + msgpack.packb(body, use_bin_type=True),
    st.sampled_from([0, 1]),
    st.binary(min_size=20, max_size=20),
    st.one_of(
        objects,
        st.tuples(
            st.sampled_from(["ping", "store", "find_node", "find_value", "stun", "?"]),
            st.lists(objects, max_size=4),
        ).map(list),
    ),
)
datagrams = st.one_of(st.binary(max_size=9000), framed)


def test_datagram_handler_survives_anything() -> None:
    async def main() -> tuple[int, bool]:
        sim = Simulation(seed=31)
        await sim.grow(4)
        node = sim.nodes[0].node
        peer = sim.nodes[1].node
        assert node is not None
        assert node.protocol is not None
        assert peer is not None
        assert peer.protocol is not None
        protocol = node.protocol
        seen = 0

        @settings(max_examples=1500, suppress_health_check=list(HealthCheck), deadline=None)
        @given(datagrams, st.integers(min_value=1, max_value=65535))
        def feed(data: bytes, port: int) -> None:
            nonlocal seen
            protocol.datagram_received(data, ("127.1.2.3", port))  # must not raise
            seen += 1

        feed()
        # and the mutation fuzzer of the benchmark, a little of it
        records = [
            encode_record(announce(sim, user_identity(31, i), sim.nodes[1], 3600_000))
            for i in range(5)
        ]
        fuzzer = DatagramFuzzer(31, records)
        for i in range(5000):
            protocol.datagram_received(fuzzer.datagram(), (f"127.3.{i % 250}.1", 1000 + i))
        ok, answer = await peer.protocol.call(sim.nodes[0].address, "ping", [peer.id])
        errors = node.stats.dropped.get("handler_error", 0)
        await sim.stop_all()
        assert seen > 0
        return errors, bool(ok and answer == node.id)

    errors, alive = run_virtual(main())
    assert errors == 0
    assert alive


@given(st.binary(max_size=9000))
def test_record_decoder_only_raises_invalid_record(data: bytes) -> None:
    try:
        record = decode_record(data)
        default_validator().validate(record.key, record, NOW)
    except InvalidRecord:
        pass


ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
VALID_RECORDS = {
    "presence": lambda: presence(),
    "meta": lambda: meta(),
    "chat handshake": lambda: make_handshake(ALICE, BOB.id, nonce=b"n" * 24, now=NOW),
    "chat message": lambda: make_message(
        ALICE, BOB.public_key, b"hello", mime_type="text/plain", nonce=b"m" * 24, now=NOW
    ),
    "drd server": lambda: make_drd_servers_record(ALICE, "127.0.0.1", 8468, now=NOW),
}


@pytest.mark.parametrize("kind", sorted(VALID_RECORDS))
@settings(max_examples=300)
@given(data=st.data())
def test_mutated_records_are_never_accepted(kind: str, data: st.DataObject) -> None:
    """Flip bits anywhere in a valid record of any namespace: the result is refused or equal in
    meaning."""
    original = VALID_RECORDS[kind]()
    default_validator().validate(original.key, original, NOW)  # the starting point is valid
    raw = bytearray(encode_record(original))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    try:
        record = decode_record(bytes(raw))
        default_validator().validate(record.key, record, NOW)
    except InvalidRecord:
        return
    # accepted: then every signed byte is intact (only unsigned framing could differ)
    assert _signed_parts(record) == _signed_parts(original)


def _signed_parts(record: Any) -> list[tuple[str, bytes]]:
    return [(v.id2, v.value) for v in record.values]
