"""Identities: IDs from keys, signatures, and key files only their owner can read."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import nacl.signing
import pytest

from node.keyfile import load_identity, load_or_create_identity, save_identity
from records import Identity, location
from records.errors import InvalidKeyFile, KeyFileError
from records.identity import verify_signature


def test_id_is_sha1_of_public_key() -> None:
    me = Identity.from_seed(bytes(range(32)))
    assert len(me.public_key) == 32
    assert me.id == hashlib.sha1(me.public_key).digest()
    assert me.id_hex == me.id.hex()
    assert me.id_hex.islower()


def test_from_seed_is_deterministic_and_checks_length() -> None:
    assert Identity.from_seed(bytes(32)) == Identity.from_seed(bytes(32))
    assert Identity.from_seed(bytes(32)) != Identity.generate()
    with pytest.raises(ValueError, match="32 bytes"):
        Identity.from_seed(bytes(31))


def test_sign_and_verify() -> None:
    me = Identity.generate()
    sig = me.sign(b"hello")
    assert verify_signature(me.public_key, b"hello", sig)
    assert not verify_signature(me.public_key, b"hellO", sig)
    assert not verify_signature(Identity.generate().public_key, b"hello", sig)
    assert not verify_signature(me.public_key, b"hello", sig[:63])


def test_a_large_message_gets_the_signature_libsodium_makes() -> None:
    """Large messages are signed through OpenSSL: the very same (deterministic) signature."""
    me = Identity.from_seed(bytes(range(32)))
    for size in (64 * 1024 - 1, 64 * 1024, 1_000_003):
        data = os.urandom(size)
        sig = me.sign(data)
        assert sig == nacl.signing.SigningKey(bytes(range(32))).sign(data).signature
        assert verify_signature(me.public_key, data, sig)
        assert not verify_signature(me.public_key, data[:-1] + bytes([data[-1] ^ 1]), sig)


def test_repr_never_shows_the_secret() -> None:
    me = Identity.from_seed(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(me)
    assert me.id_hex in repr(me)


def test_location_is_sha1_of_path() -> None:
    assert location("/meta/x/") == hashlib.sha1(b"/meta/x/").digest()


def test_key_file_round_trip_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    me = Identity.generate()
    save_identity(me, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path) == me
    assert load_or_create_identity(path) == me


def test_load_or_create_makes_one_key(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "node.key"
    first = load_or_create_identity(path)
    assert load_or_create_identity(path) == first
    assert not list(path.parent.glob(".*tmp"))


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_identity(Identity.generate(), path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(path)


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    for content in (
        b"",
        b"garbage",
        b"kadnode-ed25519-seed-v1\nzz\n",
        b"kadnode-ed25519-seed-v1\n00\n",
    ):
        path.write_bytes(content)
        os.chmod(path, 0o600)
        with pytest.raises(KeyFileError):
            load_identity(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_identity(tmp_path / "missing.key")
    with pytest.raises(InvalidKeyFile):
        Identity.from_bytes(b"nope")
