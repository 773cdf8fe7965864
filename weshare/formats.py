"""Byte layouts of weshare's files (seed 004), as pure encode/decode pairs.

Every integer is big-endian. `version` is a u16 holding "1.0" as major in the high byte and minor
in the low byte (0x0100). A string is a u32 byte count and UTF-8; a byte string the same with raw
bytes; a list a u32 count and its items. Decoding is strict: anything that does not re-encode to
the same bytes (trailing bytes, unknown version, non-canonical JSON, bad xor hash) raises
`InvalidFile`, so `encode(decode(b)) == b` for every accepted `b`. `docs/weshare.md` draws each
layout; signatures and encryption wrap these bytes (see `weshare.crypto`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

from weshare.errors import InvalidFile
from weshare.ids import parse_object_name

VERSION = 0x0100  # seed 004: "all files have a version id, which is 1.0" (major.minor in a u16)
PUBLIC_KEY_SIZE = 32  # ed25519 (the seed's table says 128 bits; an ed25519 key is 256)
HASH_SIZE = 32  # seed 004: xorHash and part hashes are 256 bits
KEY_SIZE = 32  # AES-256

_T = TypeVar("_T")


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_CHANGE = struct.Struct(">HIII")  # a Change: kind u16, start, end, count u32


class _Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u16(self, value: int) -> _Writer:
        self._parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> _Writer:
        self._parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> _Writer:
        self._parts.append(_U64.pack(value))
        return self

    def raw(self, data: bytes) -> _Writer:
        self._parts.append(bytes(data))
        return self

    def blob(self, data: bytes) -> _Writer:
        return self.u32(len(data)).raw(data)

    def text(self, value: str) -> _Writer:
        return self.blob(value.encode("utf-8"))

    def texts(self, values: tuple[str, ...]) -> _Writer:
        self.u32(len(values))
        for value in values:
            self.text(value)
        return self

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._what = what

    def _skip(self, size: int) -> int:
        """Where the next `size` bytes start; moves past them."""
        at = self._at
        if at + size > len(self._data):
            raise InvalidFile(f"{self._what}: truncated")
        self._at = at + size
        return at

    def raw(self, size: int) -> bytes:
        at = self._skip(size)
        return bytes(self._data[at : at + size])

    def u16(self) -> int:
        value: int = _U16.unpack_from(self._data, self._skip(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack_from(self._data, self._skip(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack_from(self._data, self._skip(8))[0]
        return value

    def fields(self, layout: struct.Struct) -> tuple[int, ...]:
        """Integers laid out as `layout` says, read in one go."""
        return layout.unpack_from(self._data, self._skip(layout.size))

    def blob(self) -> bytes:
        return self.raw(self.u32())

    def text(self) -> str:
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidFile(f"{self._what}: a string is not UTF-8") from exc

    def items(self, read: Callable[[], _T]) -> tuple[_T, ...]:
        return tuple(read() for _ in range(self.u32()))

    def version(self) -> None:
        found = self.u16()
        if found != VERSION:
            raise InvalidFile(f"{self._what}: unknown version 0x{found:04x}")

    def rest(self) -> bytes:
        return self.raw(len(self._data) - self._at)

    def end(self) -> None:
        if self._at != len(self._data):
            raise InvalidFile(f"{self._what}: {len(self._data) - self._at} trailing bytes")


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that weshare writes: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _parse_json(data: bytes, what: str) -> Any:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidFile(f"{what}: not JSON") from exc
    if canonical_json(value) != data:
        raise InvalidFile(f"{what}: JSON not in canonical form")
    return value


def is_safe_path(path: str) -> bool:
    """True for a relative POSIX path inside a domain's folder: no empty, `.` or `..` segment,
    no leading `/`, no NUL or backslash. Names from the exchange are untrusted."""
    if not path or "\x00" in path or "\\" in path or len(path.encode()) > 8192:
        return False  # seed 004: Files.name is VARCHAR(8192)
    framed = f"/{path}/"  # a segment is what lies between two slashes
    return "//" not in framed and "/./" not in framed and "/../" not in framed


# --- invite ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invite:
    """seed 004 "Invite": version u16, admin public key, exchange configuration as JSON.

    `config` holds ``{"admins": [hex key, ...], "domain": name, "exchanges": [config, ...]}``."""

    admin: bytes
    config: Mapping[str, Any]

    def encode(self) -> bytes:
        if len(self.admin) != PUBLIC_KEY_SIZE:
            raise ValueError("admin key must be 32 bytes")
        return _Writer().u16(VERSION).raw(self.admin).raw(canonical_json(self.config)).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Invite:
        reader = _Reader(data, "invite")
        reader.version()
        admin = reader.raw(PUBLIC_KEY_SIZE)
        config = _parse_json(reader.rest(), "invite")
        if not isinstance(config, dict):
            raise InvalidFile("invite: config is not a JSON object")
        return cls(admin, config)


# --- U.x, admins, keyring -------------------------------------------------------------------

FLAG_ADMIN = 0x0001  # seed 004 says flags are reserved; we use bit 0 for "admin" (docs/weshare.md)


@dataclass(frozen=True)
class UserEntry:
    """One user in a `U.x`: seed 004's public, flags, aes (the domain keyring sealed to this user),
    name and name2."""

    public: bytes
    flags: int
    aes: bytes
    name: str
    name2: str = ""

    @property
    def is_admin(self) -> bool:
        return bool(self.flags & FLAG_ADMIN)


@dataclass(frozen=True)
class UsersFile:
    """`U.x`: the users of a domain from this file on. `previous` is the snowflake id of the `U.x`
    it replaces (0 for the first), so an old file cannot be replayed as the newest."""

    previous: int
    users: tuple[UserEntry, ...]

    def encode(self) -> bytes:
        writer = _Writer().u16(VERSION).u64(self.previous).u32(len(self.users))
        for user in self.users:
            if len(user.public) != PUBLIC_KEY_SIZE:
                raise ValueError("a user's key must be 32 bytes")
            writer.raw(user.public).u16(user.flags).blob(user.aes).text(user.name).text(user.name2)
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> UsersFile:
        reader = _Reader(data, "U.x")
        reader.version()
        previous = reader.u64()

        def user() -> UserEntry:
            entry = UserEntry(
                reader.raw(PUBLIC_KEY_SIZE),
                reader.u16(),
                reader.blob(),
                reader.text(),
                reader.text(),
            )
            if entry.flags & ~FLAG_ADMIN:
                raise InvalidFile("U.x: reserved flag bits set")  # seed 004: reserved, must be 0
            return entry

        users = reader.items(user)
        reader.end()
        if len({u.public for u in users}) != len(users):
            raise InvalidFile("U.x: a user is listed twice")
        return cls(previous, users)


@dataclass(frozen=True)
class AdminsFile:
    """`admins`: written once when a domain is created on an exchange; the founding admins whose
    signature the first `U.x` must carry."""

    domain: str
    admins: tuple[bytes, ...]

    def encode(self) -> bytes:
        writer = _Writer().u16(VERSION).text(self.domain).u32(len(self.admins))
        for admin in self.admins:
            writer.raw(admin)
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> AdminsFile:
        reader = _Reader(data, "admins")
        reader.version()
        domain = reader.text()
        admins = reader.items(lambda: reader.raw(PUBLIC_KEY_SIZE))
        reader.end()
        return cls(domain, admins)


@dataclass(frozen=True)
class Keyring:
    """The domain keys a user holds, by key id; sealed to each user as `UserEntry.aes`. The newest
    (highest id) encrypts new files; older ones stay to read old files (rekeying, issue 16)."""

    keys: Mapping[int, bytes]

    @property
    def current(self) -> tuple[int, bytes]:
        key_id = max(self.keys)
        return key_id, self.keys[key_id]

    def encode(self) -> bytes:
        writer = _Writer().u16(VERSION).u32(len(self.keys))
        for key_id in sorted(self.keys):
            if len(self.keys[key_id]) != KEY_SIZE:
                raise ValueError("a domain key is 32 bytes")
            writer.u64(key_id).raw(self.keys[key_id])
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Keyring:
        reader = _Reader(data, "keyring")
        reader.version()
        pairs = reader.items(lambda: (reader.u64(), reader.raw(KEY_SIZE)))
        reader.end()
        ids = [key_id for key_id, _ in pairs]
        if not ids or ids != sorted(set(ids)):
            raise InvalidFile("keyring: key ids empty, repeated or out of order")
        return cls(dict(pairs))


@dataclass(frozen=True)
class ExchangesFile:
    """`exchanges`: the exchange configurations of a domain as JSON (encrypted: they may hold
    credentials)."""

    configs: tuple[Mapping[str, Any], ...]

    def encode(self) -> bytes:
        return _Writer().u16(VERSION).raw(canonical_json(list(self.configs))).bytes()

    @classmethod
    def decode(cls, data: bytes) -> ExchangesFile:
        reader = _Reader(data, "exchanges")
        reader.version()
        configs = _parse_json(reader.rest(), "exchanges")
        if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
            raise InvalidFile("exchanges: not a list of JSON objects")
        return cls(tuple(configs))


# --- C.x ------------------------------------------------------------------------------------


class ChangeType(IntEnum):
    """seed 004 Change.type: create, replace, delete, insert."""

    CREATE = 1
    REPLACE = 2
    DELETE = 3
    INSERT = 4


@dataclass(frozen=True)
class Change:
    """One edit of the origin's part list: parts ``[start, end)`` of the origin are replaced by
    the next `count` parts of the new `hashes` (CREATE: the whole file; DELETE: count 0)."""

    kind: ChangeType
    start: int
    end: int
    count: int


def xor_hash(hashes: tuple[bytes, ...]) -> bytes:
    """seed 004 xorHash: the XOR of all part hashes (32 zero bytes for none)."""
    value = 0
    for digest in hashes:
        value ^= int.from_bytes(digest, "big")
    return value.to_bytes(HASH_SIZE, "big")


@dataclass(frozen=True)
class FileChange:
    """One file's change inside a `C.x`, with seed 004's header fields.

    `names` is the file's path after the change (empty: the file is deleted); `origin` the
    versions it follows, as ``"C.<x>/<entry>"`` (empty: a new file; two or more: a choice that
    ends a fork); `hashes` the keyed ids of the new content's parts; `data` the whole content when
    it is small enough to travel inline, else empty and the parts are `merkle/<id>.mrk`."""

    names: tuple[str, ...]
    origin: tuple[str, ...]
    hashes: tuple[bytes, ...]
    message: str = ""
    changes: tuple[Change, ...] = ()
    data: bytes = b""

    @property
    def path(self) -> str | None:
        """The path after this change, or None when it deletes the file."""
        return self.names[0] if self.names else None

    def _header(self) -> bytes:
        writer = _Writer().texts(self.names).texts(self.origin).raw(xor_hash(self.hashes))
        writer.u32(len(self.hashes))
        for digest in self.hashes:
            if len(digest) != HASH_SIZE:
                raise ValueError("a part hash is 32 bytes")
            writer.raw(digest)
        writer.text(self.message).u32(len(self.changes))
        for change in self.changes:
            writer.raw(_CHANGE.pack(change.kind, change.start, change.end, change.count))
        return writer.bytes()

    def encode_into(self, writer: _Writer) -> None:
        header = self._header()
        writer.u32(len(header)).raw(header).blob(self.data)  # seed 004: headerSize, header, data

    @classmethod
    def decode_from(cls, reader: _Reader) -> FileChange:
        header = _Reader(reader.raw(reader.u32()), "C.x header")
        names = header.items(header.text)
        if len(names) > 1 or not all(is_safe_path(name) for name in names):
            raise InvalidFile("C.x: a change names at most one safe relative path")
        origin = header.items(header.text)
        xor = header.raw(HASH_SIZE)
        hashes = header.items(lambda: header.raw(HASH_SIZE))
        if xor != xor_hash(hashes):
            raise InvalidFile("C.x: xorHash does not match the part hashes")
        message = header.text()

        def change() -> Change:
            kind, start, end, count = header.fields(_CHANGE)
            if kind not in ChangeType._value2member_map_:
                raise InvalidFile(f"C.x: unknown change type {kind}")
            return Change(ChangeType(kind), start, end, count)

        changes = header.items(change)
        header.end()
        return cls(names, origin, hashes, message, changes, reader.blob())


@dataclass(frozen=True)
class ChangeFile:
    """`C.x` (before encryption): a version, then one or more file changes, each a seed 004 header
    (headerSize, names, origin, xorHash, hashes, message, changes) and its data. Several files'
    changes share one `C.x` so that a thousand small files are one upload, not a thousand."""

    entries: tuple[FileChange, ...]

    def encode(self) -> bytes:
        writer = _Writer().u16(VERSION).u32(len(self.entries))
        for entry in self.entries:
            entry.encode_into(writer)
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> ChangeFile:
        reader = _Reader(data, "C.x")
        reader.version()
        entries = reader.items(lambda: FileChange.decode_from(reader))
        reader.end()
        return cls(entries)


# --- A.x ------------------------------------------------------------------------------------


class ActionType(IntEnum):
    """Kinds of `A.x` actions (seed 004: truncate; see `weshare.truncate`)."""

    TRUNCATE = 1


@dataclass(frozen=True)
class ActionFile:
    """`A.x` (before encryption): an action a user asks of the others (seed 004), e.g. truncate.
    `arguments` are the action's own bytes (canonical JSON for truncate)."""

    kind: int
    arguments: bytes

    def encode(self) -> bytes:
        return _Writer().u16(VERSION).u16(self.kind).blob(self.arguments).bytes()

    @classmethod
    def decode(cls, data: bytes) -> ActionFile:
        reader = _Reader(data, "A.x")
        reader.version()
        action = cls(reader.u16(), reader.blob())
        reader.end()
        return action


@dataclass(frozen=True)
class Truncation:
    """The arguments of a truncate `A.x` (canonical JSON)."""

    bases: tuple[str, ...]  # the base's change files
    fossils: tuple[str, ...]  # the change files it replaces, deleted after `not_before`
    not_before: int  # Unix ms

    def encode(self) -> bytes:
        """Canonical JSON."""
        return canonical_json(
            {
                "bases": list(self.bases),
                "fossils": list(self.fossils),
                "not_before": self.not_before,
            }
        )

    @classmethod
    def decode(cls, action: ActionFile, action_id: int) -> Truncation:
        """Checked: change file names only, every fossil older than every base, bases older
        than the action."""
        if action.kind != ActionType.TRUNCATE:
            raise InvalidFile(f"A.x: unknown action {action.kind}")
        value = _parse_json(action.arguments, "A.x")
        if not isinstance(value, dict) or set(value) != {"bases", "fossils", "not_before"}:
            raise InvalidFile("A.x: truncate needs bases, fossils and not_before")
        bases, fossils, not_before = value["bases"], value["fossils"], value["not_before"]
        if not isinstance(not_before, int) or not isinstance(bases, list) or not bases:
            raise InvalidFile("A.x: truncate arguments of the wrong type")
        if not isinstance(fossils, list):
            raise InvalidFile("A.x: truncate arguments of the wrong type")
        base_ids = [_change_id(name) for name in bases]
        fossil_ids = [_change_id(name) for name in fossils]
        if max(base_ids) >= action_id or (fossil_ids and max(fossil_ids) >= min(base_ids)):
            raise InvalidFile("A.x: truncate may only delete changes older than its base")
        return cls(tuple(bases), tuple(fossils), not_before)


def _change_id(name: object) -> int:
    found = parse_object_name("C", name) if isinstance(name, str) else None
    if found is None:
        raise InvalidFile("A.x: truncate names something that is not a change file")
    return found
