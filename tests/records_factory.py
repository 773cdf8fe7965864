"""Deterministic identities and records for tests."""

from __future__ import annotations

import hashlib

from records import Identity, Record, make_meta_record, make_presence_record

NOW = 1_750_000_000_000  # a fixed "now", Unix ms
HOUR = 3600 * 1000


def identity(name: str) -> Identity:
    """The same identity for the same name, in every run."""
    return Identity.from_seed(hashlib.sha256(name.encode()).digest())


def x25519(name: str) -> bytes:
    """A stand-in 32-byte X25519 public key (validators check length and signatures only)."""
    return hashlib.sha256(b"x25519:" + name.encode()).digest()


def presence(
    client: str = "alice",
    node: str = "node-1",
    *,
    now: int = NOW,
    ttl_ms: int = HOUR,
) -> Record:
    """A valid presence record of `client` through `node`."""
    return make_presence_record(
        identity(client),
        identity(node),
        handshake_key=x25519(node),
        presence_key=x25519(client),
        now=now,
        ttl_ms=ttl_ms,
    )


def meta(user: str = "alice", name: str = "Alice", *, now: int = NOW, ttl_ms: int = HOUR) -> Record:
    """A valid meta record of `user`."""
    return make_meta_record(identity(user), name=name, avatar=b"\x89PNG", now=now, ttl_ms=ttl_ms)
