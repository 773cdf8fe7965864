"""``bench-validate``: presence records validated per second vs. raw signature checks.

A presence record costs two ed25519 verifications plus parsing and hashing; this measures how
close full validation gets to the bare cost of the two verifications, in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable

import nacl.signing

from records import Identity, Record, default_validator, make_presence_record
from records.identity import signing_input
from records.presence import ANNOUNCEMENT_CONTEXT, parse_announcement

NOW = 1_750_000_000_000


def _identity(label: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(label.encode()).digest())


def build_records(count: int) -> list[Record]:
    """`count` distinct valid presence records (distinct clients and nodes)."""
    return [
        make_presence_record(
            _identity(f"client-{i}"),
            _identity(f"node-{i}"),
            handshake_key=hashlib.sha256(b"hk%d" % i).digest(),
            presence_key=hashlib.sha256(b"pk%d" % i).digest(),
            now=NOW,
        )
        for i in range(count)
    ]


def _rate(work: Callable[[], int], seconds: float) -> float:
    """Units of `work` per second over at least `seconds` of repeated calls."""
    done = 0
    start = time.perf_counter()
    while True:
        done += work()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def run(count: int, seconds: float, rounds: int) -> dict[str, object]:
    """Measure both rates, alternating `rounds` times; report the best of each."""
    records = build_records(count)
    validator = default_validator()
    checks = []
    for record in records:
        envelope, message = parse_announcement(record.values[0].value)
        signed = signing_input(ANNOUNCEMENT_CONTEXT, envelope.message)
        checks.append(
            (
                nacl.signing.VerifyKey(message.client_identity),
                nacl.signing.VerifyKey(message.node_identity),
                signed,
                envelope.client_signature,
                envelope.node_signature,
            )
        )

    def validate_all() -> int:
        for record in records:
            validator.validate(record.key, record, NOW)
        return len(records)

    def verify_all() -> int:
        for client_key, node_key, signed, client_sig, node_sig in checks:
            client_key.verify(signed, client_sig)
            node_key.verify(signed, node_sig)
        return len(checks)

    validated = verified = 0.0
    for _ in range(rounds):
        verified = max(verified, _rate(verify_all, seconds))
        validated = max(validated, _rate(validate_all, seconds))
    return {
        "benchmark": "bench-validate",
        "records": count,
        "rounds": rounds,
        "validated_per_s": round(validated, 1),
        "two_verifies_per_s": round(verified, 1),
        "ratio": round(validated / verified, 3),
        "target_ratio": 0.6,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench-validate``."""
    parser.add_argument("--records", type=int, default=200, help="distinct records (200)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per round (1.0)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, best kept (3)")


def main(args: argparse.Namespace) -> dict[str, object]:
    """Run ``bench-validate`` from parsed arguments."""
    if args.records < 1 or args.seconds <= 0 or args.rounds < 1:
        raise SystemExit("bench-validate: --records, --seconds and --rounds must be positive")
    return run(args.records, args.seconds, args.rounds)
