"""DRD, the Distributed Resource Directory (seed 000): mailbox numbers, the CBDF codec, the
update / delete / search request layouts, search results, tickets and status codes.

Pure: no sockets, files or clock; time arrives as ``now`` (Unix ms).

**CBDF.** A CBDF file is a run of entries ``key (1 byte), length (1 byte), value`` — the seed's
example rows (``01 10 ca8d...``) show exactly this. Key 0, "number of key-value pairs", comes
first and counts every entry of the file including itself (requests) or of the header (results,
whose rows can outnumber one byte). A value longer than one entry allows (only the avatar, key
7, "255x100") spans repeated entries of that key: every chunk but the last is 255 bytes and the
last is shorter, an empty final chunk closing a value whose length is a multiple of 255, so a
spanning value is self-delimiting even where the same key follows (search rows). A decoder also
accepts a final full chunk followed by another key or the end.

**Keys not in the seed** (our additions, outside the seed's codes 0-7 and 10-41):
``8`` the mailbox number (a result column and a where-clause field: without it a search could
not say whom it found), ``200`` the private "why I updated" comment (seed 000: "everything in
the DRD is public information except the user's comment"; never a result column), and in
updates and deletes ``201`` the change's version (u64 Unix ms) and ``202`` the owner's ed25519
signature of it (`update_payload` / `delete_payload`), so that any server or DHT node can check
that the mailbox's owner approved a change, and the newest approved change wins everywhere.

**Seed ambiguities resolved.** The update table lists ``12-40 | QMail[2-40]`` and
``41 | QMail[31]``: keys 10..41 are QMail[0..31], 32 slots. Key 5 is three bytes (coin type u16,
denomination u8). The results table's keys 1-3 reappear as column keys in the rows, so the
header ends at key 3 (the rows marker) and every later entry is row data, ``columns per row``
columns per row; an absent field is a zero-length entry (fields are never stored empty, so it
cannot be mistaken for one).

**Framing** (ours; the seed leaves it out): a request is ``command (1 byte)`` then the seed's
body (challenge, session, CBDF, E3 E3); a response is ``0x80 | command``, the status (1 byte),
the request's challenge, then the body. Sessions are opened with a ticket (``OPEN_SESSION``);
delete is its own command with the update layout (payment keys only).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from records.errors import DirectoryError
from records.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    signing_input,
    verify_signature,
)

# -- constants -------------------------------------------------------------------------------

CLOUDCOIN_COIN_ID = 0x0006  # seed 000: "The coin ID for CloudCoin is 0x0006"
MAILBOX_SIZE = 7  # seed 000: two byte coin ID, 1 byte denomination, 4 byte serial number
CHALLENGE_SIZE = 16  # seed 000: CH x16
SESSION_SIZE = 16  # seed 000: SE x16
TRAILER = b"\xe3\xe3"  # seed 000: every body ends with E3 E3
MAX_ENTRY_VALUE = 255  # seed 000: the length of an entry is one byte
MAX_AVATAR_CHUNKS = 100  # seed 000: avatar file "255x100"
MAX_AVATAR_SIZE = MAX_ENTRY_VALUE * MAX_AVATAR_CHUNKS
MAX_TEXT_SIZE = 255  # seed 000: display name and description "max 255"
QMAIL_SLOTS = 32  # seed 000: keys 10..41
QMAIL_SIZE = 8  # seed 000: CT CT IP IP IP IP PT PT
DEFAULT_LIMIT_KB = 64
RESPONSE_FLAG = 0x80


class Command(IntEnum):
    """The first byte of a request on the directory's stream port (ours: the seed has none)."""

    OPEN_SESSION = 1
    UPDATE = 2
    DELETE = 3
    SEARCH = 4
    SYNC_DIGEST = 16
    SYNC_PULL = 17


class Status(IntEnum):
    """Seed 000's status codes, plus ours (`NOT_AUTHORIZED`, and 41-44 of the sealed frames)."""

    SUCCESS = 250  # seed 000: STATUS_SUCCESS
    FEW_COINS_IN_LOCKER = 153  # seed 000: ERROR_FEW_COINS_IN_LOCKER
    LOCKER_EMPTY_OR_NOT_EXISTS = 179  # seed 000: ERROR_LOCKER_EMPTY_OR_NOT_EXISTS
    INVALID_PARAMETER = 198  # seed 000: ERROR_INVALID_PARAMETER
    DATABASE_RETURNED_ZERO_RECORDS = 9  # seed 000: ERROR_DATABASE_RETURNED_ZERO_RECORDS
    DATABASE_REPORTED_AN_ERROR = 10  # seed 000: ERROR_DATABASE_REPORTED_AN_ERROR
    NOT_AUTHORIZED = 40  # ours: bad ticket, unknown or expired session
    # ours, the sealed-frame layer (`records.drd_channel`), answered in clear:
    UNKNOWN_CHANNEL = 41  # no key for this channel (never agreed, expired): agree a new one
    FRAME_NOT_AUTHENTIC = 42  # the frame does not decrypt under the channel's key
    FRAME_REPLAYED = 43  # the frame's counter is not above the last one accepted
    ENCRYPTION_REQUIRED = 44  # a clear-text request to a server that takes sealed frames only


class UpdateKey(IntEnum):
    """Key codes of the Directory Update CBDF (seed 000), with our 8 and 200."""

    COUNT = 0
    PAYMENT_COIN = 1
    PAYMENT_LOCKER = 2
    DISPLAY_NAME = 3
    DESCRIPTION = 4
    SENDING_PRICE = 5
    AVATAR_NAME = 6
    AVATAR = 7
    MAILBOX = 8  # ours: a result column / where field, never sent in an update
    QMAIL_FIRST = 10
    QMAIL_LAST = 41
    COMMENT = 200  # ours: the private "why I updated" comment
    VERSION = 201  # ours: the owner's timestamp of the change (u64 ms), signed
    OWNER_SIGNATURE = 202  # ours: the owner's signature of the change (64 bytes)


class SearchKey(IntEnum):
    """Key codes of the Directory Search CBDF (seed 000)."""

    COUNT = 0
    PAYMENT_COIN = 1
    PAYMENT_LOCKER = 2
    COLUMNS = 3
    LIMIT_KB = 4
    PAGE = 5
    WHERE = 6
    AND = 7
    OR = 8


class ResultKey(IntEnum):
    """Fixed keys of the Directory Search Results CBDF (seed 000)."""

    COUNT = 0
    ROWS = 1
    COLUMNS = 2
    ROWS_MARKER = 3


class Operator(IntEnum):
    """Where-clause comparison operators (seed 000: 0..5)."""

    NOT_EQUAL = 0
    EQUAL = 1
    GREATER = 2
    LESS = 3
    CONTAINS = 4
    NOT_CONTAINS = 5


QMAIL_KEYS = range(UpdateKey.QMAIL_FIRST, UpdateKey.QMAIL_LAST + 1)
TEXT_COLUMNS = frozenset({UpdateKey.DISPLAY_NAME, UpdateKey.DESCRIPTION, UpdateKey.AVATAR_NAME})
NUMBER_COLUMNS = frozenset({UpdateKey.SENDING_PRICE, UpdateKey.MAILBOX, *QMAIL_KEYS})
# Columns a search may return (key 200, the private comment, is never one).
RESULT_COLUMNS = frozenset({*TEXT_COLUMNS, *NUMBER_COLUMNS, UpdateKey.AVATAR})
SPANNING_KEYS = frozenset({UpdateKey.AVATAR})


# -- mailbox numbers -------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class MailboxNumber:
    """A mailbox number: coin ID (u16), denomination (u8), serial number (u32), big-endian.

    >>> MailboxNumber.from_hex("000634FC89A4E6")
    MailboxNumber(coin_id=6, denomination=52, serial=4236878054)
    >>> MailboxNumber(6, 0x34, 0xFC89A4E6).hex
    '000634fc89a4e6'
    """

    coin_id: int
    denomination: int
    serial: int

    def __post_init__(self) -> None:
        if not (
            0 <= self.coin_id < 1 << 16
            and 0 <= self.denomination < 256
            and 0 <= self.serial < 2**32
        ):
            raise DirectoryError(f"mailbox number out of range: {self!r}")

    def to_bytes(self) -> bytes:
        """The seven bytes (seed 000)."""
        return (
            self.coin_id.to_bytes(2, "big")
            + bytes([self.denomination])
            + self.serial.to_bytes(4, "big")
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> MailboxNumber:
        """Parse seven bytes; `DirectoryError` otherwise."""
        if len(data) != MAILBOX_SIZE:
            raise DirectoryError(f"a mailbox number is 7 bytes, got {len(data)}")
        return cls(int.from_bytes(data[:2], "big"), data[2], int.from_bytes(data[3:], "big"))

    @property
    def hex(self) -> str:
        """14 lowercase hex digits (DESIGN §2 writes IDs in lowercase; the seed's directory
        example is upper case, which `from_hex` also reads)."""
        return self.to_bytes().hex()

    @classmethod
    def from_hex(cls, text: str) -> MailboxNumber:
        """Parse 14 hex digits (either case)."""
        if len(text) != 2 * MAILBOX_SIZE or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise DirectoryError(f"{text!r} is not 14 hex digits")
        return cls.from_bytes(bytes.fromhex(text))

    def __int__(self) -> int:
        return int.from_bytes(self.to_bytes(), "big")

    def __str__(self) -> str:
        return self.hex


# -- CBDF entries ----------------------------------------------------------------------------

Entry = tuple[int, bytes]


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """Entries as ``key, length, value`` bytes; `DirectoryError` if a key or value is too big."""
    out = bytearray()
    for key, value in entries:
        if not 0 <= key <= 255:
            raise DirectoryError(f"key code {key} is not one byte")
        if len(value) > MAX_ENTRY_VALUE:
            raise DirectoryError(f"entry {key} holds {len(value)} bytes, more than 255")
        out.append(key)
        out.append(len(value))
        out += value
    return bytes(out)


def decode_entries(data: bytes) -> list[Entry]:
    """The entries of CBDF bytes; `DirectoryError` if the last one is cut short."""
    entries: list[Entry] = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise DirectoryError("CBDF entry header cut short")
        key, length = data[offset], data[offset + 1]
        end = offset + 2 + length
        if end > len(data):
            raise DirectoryError(f"CBDF entry {key} says {length} bytes, fewer remain")
        entries.append((key, data[offset + 2 : end]))
        offset = end
    return entries


def span(key: int, value: bytes) -> list[Entry]:
    """`value` as entries of `key`: 255-byte chunks, the last shorter (maybe empty)."""
    chunks = [value[i : i + MAX_ENTRY_VALUE] for i in range(0, len(value), MAX_ENTRY_VALUE)]
    if not chunks or len(chunks[-1]) == MAX_ENTRY_VALUE:
        chunks.append(b"")
    return [(key, chunk) for chunk in chunks]


def _unspan(entries: Sequence[Entry], start: int) -> tuple[bytes, int]:
    """The value spanning entries from `start` (all of one key) and the index after it."""
    key = entries[start][0]
    parts = []
    index = start
    while index < len(entries) and entries[index][0] == key:
        chunk = entries[index][1]
        parts.append(chunk)
        index += 1
        if len(chunk) < MAX_ENTRY_VALUE:
            break
    return b"".join(parts), index


def with_count(entries: Sequence[Entry]) -> list[Entry]:
    """`entries` behind the key-0 entry that counts them all, itself included."""
    count = len(entries) + 1
    if count > 255:
        raise DirectoryError(f"{count} key-value pairs do not fit key 0's one byte")
    return [(0, bytes([count])), *entries]


def _check_count(entries: Sequence[Entry], expected: int) -> None:
    if not entries or entries[0][0] != 0 or len(entries[0][1]) != 1:
        raise DirectoryError("a CBDF starts with key 0, the number of key-value pairs (1 byte)")
    if entries[0][1][0] != expected:
        raise DirectoryError(f"key 0 says {entries[0][1][0]} pairs, found {expected}")


# -- field types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QMailServer:
    """A QMail server entry (seed 000: ``CT CT IP IP IP IP PT PT``: coin ID, IPv4, port)."""

    coin_id: int
    host: str
    port: int

    def to_bytes(self) -> bytes:
        """The eight bytes."""
        try:
            packed = ipaddress.IPv4Address(self.host).packed
        except ValueError as exc:
            raise DirectoryError(f"QMail host {self.host!r} is not an IPv4 address") from exc
        if not (0 <= self.coin_id < 1 << 16 and 0 <= self.port < 1 << 16):
            raise DirectoryError("QMail coin ID and port are two bytes each")
        return self.coin_id.to_bytes(2, "big") + packed + self.port.to_bytes(2, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> QMailServer:
        """Parse eight bytes."""
        if len(data) != QMAIL_SIZE:
            raise DirectoryError(f"a QMail entry is 8 bytes, got {len(data)}")
        host = str(ipaddress.IPv4Address(data[2:6]))
        return cls(int.from_bytes(data[:2], "big"), host, int.from_bytes(data[6:], "big"))


@dataclass(frozen=True)
class SendingPrice:
    """What senders must pay the receiver (seed 000 key 5: coin type u16, denomination u8)."""

    coin_id: int
    denomination: int

    def to_bytes(self) -> bytes:
        """The three bytes."""
        if not (0 <= self.coin_id < 1 << 16 and 0 <= self.denomination < 256):
            raise DirectoryError("sending price is a two-byte coin and a one-byte denomination")
        return self.coin_id.to_bytes(2, "big") + bytes([self.denomination])

    @classmethod
    def from_bytes(cls, data: bytes) -> SendingPrice:
        """Parse three bytes."""
        if len(data) != 3:
            raise DirectoryError(f"sending price is 3 bytes, got {len(data)}")
        return cls(int.from_bytes(data[:2], "big"), data[2])


@dataclass(frozen=True)
class Payment:
    """Payment fields of a request (seed 000 keys 1 and 2)."""

    coin_code: int
    locker: bytes

    def entries(self) -> list[Entry]:
        """Keys 1 and 2."""
        if not 0 <= self.coin_code < 1 << 16 or len(self.locker) != 16:
            raise DirectoryError("payment is a two-byte coin code and a 16-byte locker code")
        return [(1, self.coin_code.to_bytes(2, "big")), (2, self.locker)]


def _text(value: bytes, what: str) -> str:
    if not value:
        raise DirectoryError(f"{what} is empty")  # seed 000: no empty fields
    if len(value) > MAX_TEXT_SIZE:
        raise DirectoryError(f"{what} is {len(value)} bytes, max 255")  # seed 000: max 255
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DirectoryError(f"{what} is not UTF-8") from exc  # seed 000: UTF-8 strings


def _text_bytes(text: str, what: str) -> bytes:
    data = text.encode("utf-8")
    _text(data, what)
    return data


@dataclass(frozen=True)
class Profile:
    """A mailbox's public profile: every field optional, none empty (seed 000)."""

    display_name: str | None = None
    description: str | None = None
    sending_price: SendingPrice | None = None
    avatar_name: str | None = None
    avatar: bytes | None = None
    qmail: tuple[tuple[int, QMailServer], ...] = ()
    """(slot 0..31, server) pairs in slot order."""

    def __post_init__(self) -> None:
        if (self.avatar_name is None) != (self.avatar is None):
            raise DirectoryError("avatar name (key 6) and avatar file (key 7) come together")
        if self.avatar is not None and not 0 < len(self.avatar) <= MAX_AVATAR_SIZE:
            # seed 000: avatar file up to 255x100 bytes; no empty fields
            raise DirectoryError(f"avatar is {len(self.avatar)} bytes, 1..{MAX_AVATAR_SIZE}")
        slots = [slot for slot, _ in self.qmail]
        if slots != sorted(set(slots)) or any(not 0 <= s < QMAIL_SLOTS for s in slots):
            raise DirectoryError("QMail slots are distinct, in order, 0..31")
        if self.is_empty:
            raise DirectoryError("a profile needs at least one field")

    @property
    def is_empty(self) -> bool:
        """True if no field is set."""
        return not self.entries()

    def entries(self) -> list[Entry]:
        """The public fields as CBDF entries, in key order (the canonical encoding)."""
        out: list[Entry] = []
        if self.display_name is not None:
            out.append((UpdateKey.DISPLAY_NAME, _text_bytes(self.display_name, "display name")))
        if self.description is not None:
            out.append((UpdateKey.DESCRIPTION, _text_bytes(self.description, "description")))
        if self.sending_price is not None:
            out.append((UpdateKey.SENDING_PRICE, self.sending_price.to_bytes()))
        if self.avatar_name is not None and self.avatar is not None:
            out.append((UpdateKey.AVATAR_NAME, _text_bytes(self.avatar_name, "avatar name")))
            out.extend(span(UpdateKey.AVATAR, self.avatar))
        out.extend((UpdateKey.QMAIL_FIRST + slot, s.to_bytes()) for slot, s in self.qmail)
        return out


def profile_from_entries(entries: Sequence[Entry]) -> Profile:
    """A profile from public field entries (keys 3-7, 10-41), each at most once."""
    fields: dict[int, bytes] = {}
    index = 0
    while index < len(entries):
        key, value = entries[index]
        if key in fields:
            raise DirectoryError(f"key {key} appears twice")
        if key in SPANNING_KEYS:
            value, index = _unspan(entries, index)
        else:
            index += 1
        if key not in (3, 4, 5, 6, 7, *QMAIL_KEYS):
            raise DirectoryError(f"unknown key code {key}")
        fields[key] = value
    name = fields.get(UpdateKey.DISPLAY_NAME)
    description = fields.get(UpdateKey.DESCRIPTION)
    price = fields.get(UpdateKey.SENDING_PRICE)
    avatar_name = fields.get(UpdateKey.AVATAR_NAME)
    qmail = []
    for key in QMAIL_KEYS:
        if key in fields:
            qmail.append((key - UpdateKey.QMAIL_FIRST, QMailServer.from_bytes(fields[key])))
    return Profile(
        display_name=None if name is None else _text(name, "display name"),
        description=None if description is None else _text(description, "description"),
        sending_price=None if price is None else SendingPrice.from_bytes(price),
        avatar_name=None if avatar_name is None else _text(avatar_name, "avatar name"),
        avatar=fields.get(UpdateKey.AVATAR),
        qmail=tuple(qmail),
    )


# -- requests --------------------------------------------------------------------------------


def _split_body(body: bytes) -> tuple[bytes, bytes, list[Entry]]:
    if len(body) < CHALLENGE_SIZE + SESSION_SIZE + 2 or body[-2:] != TRAILER:
        raise DirectoryError("a request is challenge, session, CBDF, E3 E3")
    entries = decode_entries(body[32:-2])
    _check_count(entries, len(entries))
    return body[:16], body[16:32], entries[1:]


def _payment(fields: dict[int, bytes]) -> Payment | None:
    coin, locker = fields.get(1), fields.get(2)
    if coin is None and locker is None:
        return None
    if coin is None or locker is None or len(coin) != 2 or len(locker) != 16:
        # seed 000: key 1 is 2 bytes, key 2 is 16 bytes
        raise DirectoryError("payment needs key 1 (2 bytes) and key 2 (16 bytes)")
    return Payment(int.from_bytes(coin, "big"), locker)


@dataclass(frozen=True)
class Authorization:
    """The owner's approval of one change: its version (Unix ms, the newest change wins) and an
    ed25519 signature by the ticket's owner key over `update_payload` or `delete_payload`."""

    version: int
    signature: bytes

    def entries(self) -> list[Entry]:
        """Keys 201 and 202."""
        if not 0 <= self.version < 1 << 63 or len(self.signature) != SIGNATURE_SIZE:
            raise DirectoryError("a version is 8 bytes and a signature 64")
        return [
            (UpdateKey.VERSION, self.version.to_bytes(8, "big")),
            (UpdateKey.OWNER_SIGNATURE, self.signature),
        ]


def _authorization(fields: dict[int, bytes]) -> Authorization | None:
    version, signature = fields.get(UpdateKey.VERSION), fields.get(UpdateKey.OWNER_SIGNATURE)
    if version is None and signature is None:
        return None
    if version is None or signature is None or len(version) != 8 or len(signature) != 64:
        raise DirectoryError("authorization needs key 201 (8 bytes) and key 202 (64 bytes)")
    if version[0] & 0x80:
        raise DirectoryError("a version is at most 2^63 - 1")
    return Authorization(int.from_bytes(version, "big"), signature)


def _check_ids(challenge: bytes, session: bytes) -> None:
    if len(challenge) != CHALLENGE_SIZE or len(session) != SESSION_SIZE:
        raise DirectoryError("challenge and session are 16 bytes each")


@dataclass(frozen=True)
class UpdateRequest:
    """Insert or update a mailbox's whole record (seed 000, "Insert Update Delete DRD")."""

    challenge: bytes
    session: bytes
    profile: Profile
    payment: Payment | None = None
    comment: str | None = None
    """The private "why I updated" comment (our key 200); never published."""
    authorization: Authorization | None = None
    """The owner's signed version of this change (our keys 201, 202); servers require it."""

    def encode(self) -> bytes:
        """The request body."""
        _check_ids(self.challenge, self.session)
        entries = list(self.payment.entries()) if self.payment else []
        entries += self.profile.entries()
        if self.comment is not None:
            entries.append((UpdateKey.COMMENT, _text_bytes(self.comment, "comment")))
        if self.authorization is not None:
            entries += self.authorization.entries()
        return self.challenge + self.session + encode_entries(with_count(entries)) + TRAILER

    @classmethod
    def decode(cls, body: bytes) -> UpdateRequest:
        """Parse an update body; `DirectoryError` (status 198) on any fault."""
        challenge, session, entries = _split_body(body)
        head: dict[int, bytes] = {}
        public: list[Entry] = []
        comment: str | None = None
        for key, value in entries:
            if key in (1, 2, UpdateKey.VERSION, UpdateKey.OWNER_SIGNATURE):
                if key in head:
                    raise DirectoryError(f"key {key} appears twice")
                head[key] = value
            elif key == UpdateKey.COMMENT:
                if comment is not None:
                    raise DirectoryError("key 200 appears twice")
                comment = _text(value, "comment")
            elif key == 0:
                raise DirectoryError("key 0 appears twice")
            else:
                public.append((key, value))
        profile = profile_from_entries(public)
        return cls(challenge, session, profile, _payment(head), comment, _authorization(head))


@dataclass(frozen=True)
class DeleteRequest:
    """Delete a mailbox's whole record (seed 000: "delete their entire record"); the update
    layout carrying only key 0 and the payment keys."""

    challenge: bytes
    session: bytes
    payment: Payment | None = None
    authorization: Authorization | None = None
    """The owner's signed version of the deletion (our keys 201, 202); servers require it."""

    def encode(self) -> bytes:
        """The request body."""
        _check_ids(self.challenge, self.session)
        entries = list(self.payment.entries()) if self.payment else []
        if self.authorization is not None:
            entries += self.authorization.entries()
        return self.challenge + self.session + encode_entries(with_count(entries)) + TRAILER

    @classmethod
    def decode(cls, body: bytes) -> DeleteRequest:
        """Parse a delete body."""
        challenge, session, entries = _split_body(body)
        head: dict[int, bytes] = {}
        for key, value in entries:
            if key not in (1, 2, UpdateKey.VERSION, UpdateKey.OWNER_SIGNATURE) or key in head:
                raise DirectoryError(f"a delete carries keys 1, 2, 201 and 202 once, not {key}")
            head[key] = value
        return cls(challenge, session, _payment(head), _authorization(head))


@dataclass(frozen=True)
class Condition:
    """One where clause (seed 000 keys 6, 7, 8): field, operator, number or text operand."""

    join: SearchKey
    """`SearchKey.WHERE` (first), `SearchKey.AND` or `SearchKey.OR`."""
    column: int
    operator: Operator
    operand: int | str

    def to_bytes(self) -> bytes:
        """Directory key, operator, number (0) / text (1), operand."""
        if self.column in NUMBER_COLUMNS and isinstance(self.operand, int):
            if self.operand < 0 or self.operand >= 1 << 64:
                raise DirectoryError("a number operand is 0..2^64-1")
            size = max(1, (self.operand.bit_length() + 7) // 8)
            return bytes([self.column, self.operator, 0]) + self.operand.to_bytes(size, "big")
        if self.column in TEXT_COLUMNS and isinstance(self.operand, str):
            text = self.operand.encode("utf-8")
            if not 0 < len(text) <= MAX_ENTRY_VALUE - 3:
                raise DirectoryError("a text operand is 1..252 bytes")
            return bytes([self.column, self.operator, 1]) + text
        raise DirectoryError(f"column {self.column} cannot be compared with {self.operand!r}")

    @classmethod
    def from_bytes(cls, join: SearchKey, data: bytes) -> Condition:
        """Parse a where-clause value."""
        if len(data) < 4:
            raise DirectoryError("a where clause is key, operator, type and an operand")
        column, op, kind, operand = data[0], data[1], data[2], data[3:]
        if op > Operator.NOT_CONTAINS:
            raise DirectoryError(f"operator {op} is not 0..5")
        operator = Operator(op)
        if kind == 0 and column in NUMBER_COLUMNS:
            if len(operand) > 8:
                raise DirectoryError("a number operand is at most 8 bytes")
            if operator in (Operator.CONTAINS, Operator.NOT_CONTAINS):
                raise DirectoryError("contains applies to text fields")
            return cls(join, column, operator, int.from_bytes(operand, "big"))
        if kind == 1 and column in TEXT_COLUMNS:
            return cls(join, column, operator, _text(operand, "text operand"))
        raise DirectoryError(f"field {column} cannot be compared as type {kind}")


@dataclass(frozen=True)
class SearchRequest:
    """Search the directory (seed 000, "Search Directory")."""

    challenge: bytes
    session: bytes
    columns: tuple[int, ...]
    conditions: tuple[Condition, ...] = ()
    limit_kb: int = DEFAULT_LIMIT_KB
    page: int = 0
    payment: Payment | None = None

    def __post_init__(self) -> None:
        if not self.columns or len(set(self.columns)) != len(self.columns):
            raise DirectoryError("a search returns at least one column, each once")
        if any(c not in RESULT_COLUMNS for c in self.columns):
            raise DirectoryError(f"columns {self.columns} include one a search cannot return")
        if not 1 <= self.limit_kb <= 255 or not 0 <= self.page <= 255:
            raise DirectoryError("limit is 1..255 KB and page 0..255 (one byte each)")
        for index, condition in enumerate(self.conditions):
            first = condition.join == SearchKey.WHERE
            if first != (index == 0) or condition.join not in (6, 7, 8):
                raise DirectoryError("the where clause (key 6) comes first, then AND / OR")

    def encode(self) -> bytes:
        """The request body."""
        _check_ids(self.challenge, self.session)
        entries = list(self.payment.entries()) if self.payment else []
        entries.append((SearchKey.COLUMNS, bytes(self.columns)))
        entries.append((SearchKey.LIMIT_KB, bytes([self.limit_kb])))
        entries.append((SearchKey.PAGE, bytes([self.page])))
        entries += [(c.join, c.to_bytes()) for c in self.conditions]
        return self.challenge + self.session + encode_entries(with_count(entries)) + TRAILER

    @classmethod
    def decode(cls, body: bytes) -> SearchRequest:
        """Parse a search body; `DirectoryError` (status 198) on any fault."""
        challenge, session, entries = _split_body(body)
        single: dict[int, bytes] = {}
        conditions: list[Condition] = []
        for key, value in entries:
            if key in (1, 2, 3, 4, 5):
                if key in single:
                    raise DirectoryError(f"key {key} appears twice")
                single[key] = value
            elif key in (6, 7, 8):
                conditions.append(Condition.from_bytes(SearchKey(key), value))
            else:
                raise DirectoryError(f"unknown search key code {key}")
        for key in (4, 5):
            if key in single and len(single[key]) != 1:
                raise DirectoryError(f"key {key} is one byte")  # seed 000: limit, page: 1 byte
        return cls(
            challenge,
            session,
            tuple(single.get(3, b"")),
            tuple(conditions),
            single[4][0] if 4 in single else DEFAULT_LIMIT_KB,
            single[5][0] if 5 in single else 0,
            _payment(single),
        )


# -- search results --------------------------------------------------------------------------

Row = tuple[bytes | None, ...]


def encode_row(columns: Sequence[int], row: Row) -> bytes:
    """One result row's entries (an absent field is a zero-length entry)."""
    entries: list[Entry] = []
    for key, value in zip(columns, row, strict=True):
        if value is not None and not value:
            raise DirectoryError(f"field {key} is empty")  # seed 000: no empty fields
        if key in SPANNING_KEYS and value is not None:
            entries.extend(span(key, value))
        else:
            entries.append((key, value or b""))
    return encode_entries(entries)


@dataclass(frozen=True)
class SearchResults:
    """The Directory Search Results CBDF (seed 000): a header, then rows of columns."""

    columns: tuple[int, ...]
    rows: tuple[Row, ...] = field(default=())

    def encode(self) -> bytes:
        """The results CBDF (without the trailer)."""
        if len(self.rows) > 0xFFFF or len(self.columns) > 255:
            # seed 000: up to 65,535 rows, up to 255 columns per row
            raise DirectoryError("too many rows or columns")
        header = with_count(
            [
                (ResultKey.ROWS, len(self.rows).to_bytes(2, "big")),
                (ResultKey.COLUMNS, bytes([len(self.columns)])),
                (ResultKey.ROWS_MARKER, b"\x00"),
            ]
        )
        rows = b"".join(encode_row(self.columns, row) for row in self.rows)
        return encode_entries(header) + rows

    @classmethod
    def decode(cls, data: bytes) -> SearchResults:
        """Parse a results CBDF."""
        entries = decode_entries(data)
        if len(entries) < 4 or [k for k, _ in entries[:4]] != [0, 1, 2, 3]:
            raise DirectoryError("results start with keys 0, 1, 2, 3")
        _check_count(entries[:4], 4)
        if len(entries[1][1]) != 2 or len(entries[2][1]) != 1 or len(entries[3][1]) != 1:
            raise DirectoryError("results header fields have the wrong length")
        row_count = int.from_bytes(entries[1][1], "big")
        width = entries[2][1][0]
        rows: list[Row] = []
        columns: list[int] = []
        index = 4
        for row_index in range(row_count):
            row: list[bytes | None] = []
            for column in range(width):
                if index >= len(entries):
                    raise DirectoryError("results end inside a row")
                key = entries[index][0]
                if row_index == 0:
                    columns.append(key)
                elif key != columns[column]:
                    raise DirectoryError("a row's columns differ from the first row's")
                if key in SPANNING_KEYS:
                    value, index = _unspan(entries, index)
                else:
                    value, index = entries[index][1], index + 1
                row.append(value or None)
            rows.append(tuple(row))
        if index != len(entries):
            raise DirectoryError("entries after the last row")
        return cls(tuple(columns), tuple(rows))


# -- responses -------------------------------------------------------------------------------


def request_frame(command: Command, body: bytes) -> bytes:
    """A request: command byte then body."""
    return bytes([command]) + body


def response_frame(command: int, status: Status, challenge: bytes, body: bytes = TRAILER) -> bytes:
    """A response: ``0x80 | command``, status, the request's challenge, body (seed: E3 E3)."""
    return bytes([RESPONSE_FLAG | command, status]) + challenge + body


def parse_response(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(command, status, challenge, body) of a response frame."""
    if len(data) < 2 + CHALLENGE_SIZE + 2 or not data[0] & RESPONSE_FLAG:
        raise DirectoryError("not a directory response")
    return data[0] & 0x7F, data[1], data[2:18], data[18:]


# -- tickets (ownership) ---------------------------------------------------------------------

TICKET_CONTEXT = b"drd-ticket-v1"
SESSION_CONTEXT = b"drd-open-session-v1"
TICKET_VERSION = 1
MAX_TICKET_SIGNATURES = 25  # RAIDA has 25 servers
_TICKET_BODY = 1 + MAILBOX_SIZE + PUBLIC_KEY_SIZE + 8 + 8


@dataclass(frozen=True)
class Ticket:
    """Proof that `owner_key` owns `mailbox` until `expires`, signed by ticket authorities.

    Stands in for the seed's RAIDA tickets (which cannot be reached from here). Layout: version
    (1), mailbox (7), owner ed25519 key (32), issued ms (8), expires ms (8), signature count
    (1), then per signature the authority's key (32) and its signature (64) over
    ``signing_input(b"drd-ticket-v1", the first 56 bytes)``.
    """

    mailbox: MailboxNumber
    owner_key: bytes
    issued: int
    expires: int
    signatures: tuple[tuple[bytes, bytes], ...] = ()

    def body(self) -> bytes:
        """The signed part."""
        if len(self.owner_key) != PUBLIC_KEY_SIZE:
            raise DirectoryError("the owner key is 32 bytes")
        return (
            bytes([TICKET_VERSION])
            + self.mailbox.to_bytes()
            + self.owner_key
            + self.issued.to_bytes(8, "big")
            + self.expires.to_bytes(8, "big")
        )

    def signing_payload(self) -> bytes:
        """What each authority signs."""
        return signing_input(TICKET_CONTEXT, self.body())

    def to_bytes(self) -> bytes:
        """The ticket's bytes."""
        if len(self.signatures) > MAX_TICKET_SIGNATURES:
            raise DirectoryError("too many signatures")
        out = self.body() + bytes([len(self.signatures)])
        for key, sig in self.signatures:
            out += key + sig
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> Ticket:
        """Parse a ticket (signatures are not checked here)."""
        if len(data) < _TICKET_BODY + 1 or data[0] != TICKET_VERSION:
            raise DirectoryError("not a version-1 ticket", Status.NOT_AUTHORIZED)
        count = data[_TICKET_BODY]
        if count > MAX_TICKET_SIGNATURES or len(data) != _TICKET_BODY + 1 + count * 96:
            raise DirectoryError("ticket signatures malformed", Status.NOT_AUTHORIZED)
        signatures = tuple(
            (data[o : o + 32], data[o + 32 : o + 96])
            for o in range(_TICKET_BODY + 1, len(data), 96)
        )
        return cls(
            MailboxNumber.from_bytes(data[1:8]),
            data[8:40],
            int.from_bytes(data[40:48], "big"),
            int.from_bytes(data[48:56], "big"),
            signatures,
        )

    def valid_signers(self, authorities: Iterable[bytes]) -> set[bytes]:
        """The configured authorities whose signature on this ticket verifies."""
        allowed = set(authorities)
        payload = self.signing_payload()
        return {
            key
            for key, sig in self.signatures
            if key in allowed and len(sig) == SIGNATURE_SIZE and verify_signature(key, payload, sig)
        }


@dataclass(frozen=True)
class OpenSession:
    """Open a session (ours; the seed's Create Session lives in another document): a ticket and
    the owner's signature over ``challenge || mailbox || timestamp``, proving the ticket's key
    is held by the sender (a ticket seen by someone else is no use to them)."""

    challenge: bytes
    ticket: Ticket
    timestamp: int
    signature: bytes

    @staticmethod
    def payload(challenge: bytes, mailbox: MailboxNumber, timestamp: int) -> bytes:
        """What the owner signs."""
        return signing_input(
            SESSION_CONTEXT, challenge + mailbox.to_bytes() + timestamp.to_bytes(8, "big")
        )

    def signature_ok(self) -> bool:
        """True if the owner's signature verifies."""
        data = self.payload(self.challenge, self.ticket.mailbox, self.timestamp)
        return verify_signature(self.ticket.owner_key, data, self.signature)

    def encode(self) -> bytes:
        """Challenge (16), timestamp (8), signature (64), ticket length (2), ticket, E3 E3."""
        ticket = self.ticket.to_bytes()
        return (
            self.challenge
            + self.timestamp.to_bytes(8, "big")
            + self.signature
            + len(ticket).to_bytes(2, "big")
            + ticket
            + TRAILER
        )

    @classmethod
    def decode(cls, body: bytes) -> OpenSession:
        """Parse an open-session body."""
        head = CHALLENGE_SIZE + 8 + SIGNATURE_SIZE + 2
        if len(body) < head + 2 or body[-2:] != TRAILER:
            raise DirectoryError("open-session body too short or without trailer")
        length = int.from_bytes(body[head - 2 : head], "big")
        if len(body) != head + length + 2:
            raise DirectoryError("open-session ticket length is wrong")
        return cls(
            body[:16],
            Ticket.from_bytes(body[head : head + length]),
            int.from_bytes(body[16:24], "big"),
            body[24:88],
        )


# -- versions --------------------------------------------------------------------------------

TOMBSTONE_DIGEST = b"\xff" * 32  # a delete wins a tie with an update of the same millisecond
FLOOR_DIGEST = b"\xff" * 31 + b"\xfe"
"""Digest of a version floor: a deletion whose ticket is no longer kept (it ranks as a deletion
against any update, just below the tombstone it was)."""

Rank = tuple[int, bytes]
"""(version, digest) of a record, tombstone or floor: the newer wins."""


def supersedes(change: Rank, held: Rank | None) -> bool:
    """Whether a change ranked `change` replaces what is held: the newer version wins, a
    deletion wins a tie (`TOMBSTONE_DIGEST`), and nothing at or below a version floor is
    taken, not even the deletion that left it."""
    if held is None:
        return True
    if held[1] == FLOOR_DIGEST:
        return change[0] > held[0]
    return change > held


def public_fields(profile: Profile) -> bytes:
    """The profile's public entries without the avatar file (key 7): what the DHT carries."""
    return encode_entries(e for e in profile.entries() if e[0] != UpdateKey.AVATAR)


def avatar_hash(profile: Profile) -> bytes:
    """SHA-256 of the avatar file, or empty if there is none."""
    return b"" if profile.avatar is None else hashlib.sha256(profile.avatar).digest()


def fields_digest(mailbox: MailboxNumber, fields: bytes, avatar_sha256: bytes) -> bytes:
    """SHA-256 over the mailbox, the public fields (without the avatar file) and the avatar's
    hash, so a holder of the fields and the hash alone (a DHT node) can recompute it."""
    return hashlib.sha256(mailbox.to_bytes() + fields + avatar_sha256).digest()


def profile_digest(mailbox: MailboxNumber, profile: Profile) -> bytes:
    """The digest of a profile's public content (never the comment); see `fields_digest`."""
    return fields_digest(mailbox, public_fields(profile), avatar_hash(profile))


UPDATE_CONTEXT = b"drd-update-v1"
DELETE_CONTEXT = b"drd-delete-v1"


def update_payload(mailbox: MailboxNumber, version: int, digest: bytes) -> bytes:
    """What an owner signs to approve a record: mailbox, version, content digest."""
    return signing_input(UPDATE_CONTEXT, mailbox.to_bytes() + version.to_bytes(8, "big") + digest)


def delete_payload(mailbox: MailboxNumber, version: int) -> bytes:
    """What an owner signs to approve deleting the record."""
    return signing_input(DELETE_CONTEXT, mailbox.to_bytes() + version.to_bytes(8, "big"))


def authorize_update(
    owner: Identity, mailbox: MailboxNumber, profile: Profile, version: int
) -> Authorization:
    """The owner's approval of `profile` as `mailbox`'s record at `version`."""
    digest = profile_digest(mailbox, profile)
    return Authorization(version, owner.sign(update_payload(mailbox, version, digest)))


def authorize_delete(owner: Identity, mailbox: MailboxNumber, version: int) -> Authorization:
    """The owner's approval of deleting `mailbox`'s record at `version`."""
    return Authorization(version, owner.sign(delete_payload(mailbox, version)))


def mint_ticket(
    authorities: Sequence[Identity],
    mailbox: MailboxNumber,
    owner_key: bytes,
    *,
    issued: int,
    expires: int,
) -> Ticket:
    """A ticket for `mailbox` and `owner_key`, signed by each of `authorities` (test
    authorities stand in for RAIDA's)."""
    unsigned = Ticket(mailbox, owner_key, issued, expires)
    payload = unsigned.signing_payload()
    signatures = tuple((a.public_key, a.sign(payload)) for a in authorities)
    return Ticket(mailbox, owner_key, issued, expires, signatures)


def open_session_request(
    owner: Identity, ticket: Ticket, challenge: bytes, timestamp: int
) -> OpenSession:
    """An `OpenSession` request signed by `owner` (the key the ticket names)."""
    payload = OpenSession.payload(challenge, ticket.mailbox, timestamp)
    return OpenSession(challenge, ticket, timestamp, owner.sign(payload))
