"""Weshare file formats: byte-exact round trips (hypothesis), strict decoding, envelopes."""

from __future__ import annotations

import io
import random
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from records import Identity
from weshare.crypto import (
    ENCRYPTED_OVERHEAD,
    decrypt,
    decrypt_into,
    encrypt,
    encrypt_into,
    open_sealed,
    open_signed,
    part_id,
    seal_to,
    sign_file,
)
from weshare.errors import InvalidFile
from weshare.formats import (
    FLAG_ADMIN,
    ActionFile,
    AdminsFile,
    Change,
    ChangeFile,
    ChangeType,
    ExchangesFile,
    FileChange,
    Invite,
    Keyring,
    UserEntry,
    UsersFile,
    is_safe_path,
)
from weshare.parts import (
    MAX_PART,
    MIN_PART,
    Part,
    _chunker,
    apply_changes,
    cut_stream,
    decode_parts,
    diff_parts,
    encode_parts,
    split_bytes,
    split_file,
)

keys32 = st.binary(min_size=32, max_size=32)
texts = st.text(max_size=12)
segments = st.text(alphabet=string.ascii_letters + string.digits + "-_. é", min_size=1, max_size=8)
paths = st.lists(segments.filter(lambda s: s not in (".", "..")), min_size=1, max_size=3).map(
    "/".join
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)

users = st.builds(
    UserEntry,
    public=keys32,
    flags=st.sampled_from([0, FLAG_ADMIN]),
    aes=st.binary(max_size=100),
    name=texts,
    name2=texts,
)
users_files = st.builds(
    UsersFile,
    previous=u64,
    users=st.lists(users, max_size=4, unique_by=lambda u: u.public).map(tuple),
)
changes = st.builds(Change, kind=st.sampled_from(list(ChangeType)), start=u32, end=u32, count=u32)
file_changes = st.builds(
    FileChange,
    names=st.lists(paths, max_size=1).map(tuple),
    origin=st.lists(texts, max_size=3).map(tuple),
    hashes=st.lists(keys32, max_size=4).map(tuple),
    message=texts,
    changes=st.lists(changes, max_size=3).map(tuple),
    data=st.binary(max_size=64),
)
change_files = st.builds(ChangeFile, entries=st.lists(file_changes, max_size=4).map(tuple))
keyrings = st.dictionaries(u64, keys32, min_size=1, max_size=3).map(Keyring)

ALL_FORMATS = [
    (st.builds(Invite, admin=keys32, config=json_objects), Invite),
    (users_files, UsersFile),
    (
        st.builds(AdminsFile, domain=texts, admins=st.lists(keys32, max_size=3).map(tuple)),
        AdminsFile,
    ),
    (keyrings, Keyring),
    (
        st.builds(ExchangesFile, configs=st.lists(json_objects, max_size=3).map(tuple)),
        ExchangesFile,
    ),
    (change_files, ChangeFile),
    (
        st.builds(ActionFile, kind=st.integers(0, 65535), arguments=st.binary(max_size=40)),
        ActionFile,
    ),
]


@pytest.mark.parametrize(
    ("strategy", "kind"), ALL_FORMATS, ids=lambda v: getattr(v, "__name__", "")
)
def test_every_format_round_trips_byte_exact(
    strategy: st.SearchStrategy[object], kind: type
) -> None:
    @given(strategy)
    def check(value: object) -> None:
        data = value.encode()  # type: ignore[attr-defined]
        decoded = kind.decode(data)  # type: ignore[attr-defined]
        assert decoded == value
        assert decoded.encode() == data  # byte-exact both ways
        assert data[:2] == b"\x01\x00"  # seed 004: version 1.0
        with pytest.raises(InvalidFile):
            kind.decode(data + b"\x00")  # type: ignore[attr-defined]
        with pytest.raises(InvalidFile):
            kind.decode(data[:-1] if len(data) > 2 else b"\x01")  # type: ignore[attr-defined]

    check()


@given(st.binary(max_size=200))
def test_decoders_refuse_garbage_with_invalid_file_only(data: bytes) -> None:
    for _, kind in ALL_FORMATS:
        try:
            value = kind.decode(data)  # type: ignore[attr-defined]
        except InvalidFile:
            continue
        assert value.encode() == data


def test_change_file_layout_is_the_seeds_header_then_data() -> None:
    entry = FileChange(("a.txt",), ("C.1/0",), (b"\x11" * 32,), "hi", (), b"xyz")
    data = ChangeFile((entry,)).encode()
    assert data[:2] == b"\x01\x00"  # version
    assert data[2:6] == b"\x00\x00\x00\x01"  # one file change
    header_size = int.from_bytes(data[6:10], "big")
    header = data[10 : 10 + header_size]
    assert header.startswith(b"\x00\x00\x00\x01\x00\x00\x00\x05a.txt")  # names
    assert b"\x11" * 32 in header  # xorHash of one hash is that hash
    assert data[10 + header_size :] == b"\x00\x00\x00\x03xyz"  # data after the header


def test_bad_xor_hash_and_unsafe_paths_are_refused() -> None:
    good = ChangeFile((FileChange(("a",), (), (b"\x01" * 32,)),)).encode()
    xor_at = good.index(b"\x01" * 32)
    with pytest.raises(InvalidFile, match="xorHash"):
        ChangeFile.decode(good[:xor_at] + b"\x02" + good[xor_at + 1 :])
    for unsafe in ("../x", "/etc/passwd", "a//b", "a/./b", ""):
        assert not is_safe_path(unsafe)
        entry = FileChange((unsafe,), (), ())
        with pytest.raises(InvalidFile, match="safe relative path"):
            ChangeFile.decode(ChangeFile((entry,)).encode())


def test_reserved_user_flags_are_refused() -> None:
    data = UsersFile(0, (UserEntry(b"k" * 32, 0x8000, b"", "x"),)).encode()
    with pytest.raises(InvalidFile, match="reserved"):
        UsersFile.decode(data)


@given(st.binary(max_size=300), paths)
def test_signed_files_round_trip_and_bind_their_name(content: bytes, name: str) -> None:
    me = Identity.from_seed(b"\x07" * 32)
    signed = sign_file(me, name, content)
    assert signed[: len(content)] == content
    assert signed[len(content) : len(content) + 32] == me.public_key  # seed: key, then signature
    assert open_signed(name, signed) == (content, me.public_key)
    with pytest.raises(InvalidFile, match="bad signature"):
        open_signed(name + "x", signed)


@given(st.binary(max_size=300), u64, keys32, st.binary(min_size=12, max_size=12))
def test_encryption_round_trips_byte_exact(
    data: bytes, key_id: int, key: bytes, nonce: bytes
) -> None:
    sealed = encrypt(key_id, key, "d/C.1", data, nonce)
    assert sealed == encrypt(key_id, key, "d/C.1", data, nonce)
    assert decrypt({key_id: key}, "d/C.1", sealed) == data
    with pytest.raises(InvalidFile):
        decrypt({key_id: key}, "d/C.2", sealed)  # the name is authenticated
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(InvalidFile):
        decrypt({key_id: key}, "d/C.1", bytes(flipped))


@given(st.binary(max_size=300), u64, keys32)
def test_encryption_into_a_reused_buffer_is_the_same_envelope(
    data: bytes, key_id: int, key: bytes
) -> None:
    buffer = bytearray(b"\xff" * (len(data) + ENCRYPTED_OVERHEAD + 7))  # larger, not clean
    sealed = bytes(encrypt_into(key_id, key, "d/m.mrk", data, buffer))
    assert len(sealed) == len(data) + ENCRYPTED_OVERHEAD
    assert decrypt({key_id: key}, "d/m.mrk", sealed) == data
    out = bytearray(b"\xee" * (len(data) + 3))
    assert bytes(decrypt_into({key_id: key}, "d/m.mrk", sealed, out)) == data
    with pytest.raises(InvalidFile):
        decrypt_into({key_id: key}, "d/other.mrk", sealed, out)  # the name is authenticated


def test_sealed_keyring_opens_only_for_its_user() -> None:
    alice, bob = Identity.from_seed(b"a" * 32), Identity.from_seed(b"b" * 32)
    ring = Keyring({5: b"k" * 32})
    sealed = seal_to(alice.public_key, ring.encode())
    assert Keyring.decode(open_sealed(alice, sealed)) == ring
    with pytest.raises(InvalidFile):
        open_sealed(bob, sealed)


@given(st.lists(st.tuples(keys32, st.integers(1, 2**40)), max_size=6))
def test_part_lists_round_trip(pairs: list[tuple[bytes, int]]) -> None:
    parts, offset = [], 0
    for digest, length in pairs:
        parts.append(Part(digest, offset, length))
        offset += length
    assert decode_parts(encode_parts(parts)) == parts


@given(
    st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), max_size=10),
    st.lists(st.sampled_from([b"a", b"b", b"c", b"e"]), max_size=10),
)
def test_changes_turn_the_origin_into_the_new_part_list(old: list[bytes], new: list[bytes]) -> None:
    changes = diff_parts(old, new)
    assert apply_changes(old, changes, new)
    encoded = ChangeFile((FileChange((), (), (), changes=changes),)).encode()
    assert ChangeFile.decode(encoded).entries[0].changes == changes


@pytest.mark.parametrize(
    ("size", "expected"),
    [  # BLAKE3's published test vectors (keyed_hash, first 32 bytes)
        (0, "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"),
        (1024, "75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4"),
    ],
)
def test_part_ids_are_keyed_blake3(size: int, expected: str) -> None:
    key = b"whats the Elvish word for friend"
    data = bytes(i % 251 for i in range(size))
    assert part_id(key, data).hex() == expected
    assert part_id(key, memoryview(data)).hex() == expected
    assert part_id(bytes(32), data).hex() != expected  # another key, another id


@given(st.binary(max_size=2048) | st.sampled_from([b"x" * MIN_PART, b"y" * (MIN_PART + 1)]))
def test_small_data_is_one_part_as_fastcdc_cuts_it(data: bytes) -> None:
    key = b"k" * 32
    fastcdc = [Part(part_id(key, c.data), c.offset, c.length) for c in _chunker().cut_buf(data)]
    assert split_bytes(data, key) == fastcdc


@pytest.mark.parametrize("size", [0, 1, MIN_PART, MIN_PART + 1, 3 * MAX_PART + 12_345])
def test_a_file_read_as_a_stream_is_cut_where_the_whole_file_is(size: int, tmp_path: Path) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    key = b"k" * 32
    streamed = [Part(part_id(key, view), offset, len(view)) for offset, view in
                cut_stream(io.BytesIO(data))]  # fmt: skip
    assert streamed == split_file(path, key) == split_bytes(data, key)
