"""DRD entries in the DHT (seed 000, DESIGN §6): ``/drd/<14 hex>/`` and ``/drd-servers/all/``.

A directory server publishes, for each mailbox it holds, one signed `DirectoryEntry`: the public
fields (never the private comment), the avatar's SHA-256 (the file stays on the servers), the
owner's ticket and the owner's signature over the change, so any node can check that the owner
approved it; and the server's signature over the whole. The newest owner-authorised change wins
(`select`): version, then a deletion over an update, then the latest publication, then bytes.

Whether a ticket's signers are real authorities needs the authority keys: `DrdValidator` takes
an optional `ticket_check`, a `TicketAuthorities.check` (nodes pass the set their configuration
ships or names, directory servers theirs); without it, everything but the quorum is checked.

``/drd-servers/all/`` is multi-valued like presence: one signed announcement per server (the
value's ``id2`` is the SHA-1 of the server's key), the newest per server kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from records.directory import (
    MAILBOX_SIZE,
    MAX_AVATAR_SIZE,
    QMAIL_KEYS,
    MailboxNumber,
    Profile,
    Status,
    Ticket,
    UpdateKey,
    avatar_hash,
    decode_entries,
    delete_payload,
    fields_digest,
    profile_from_entries,
    public_fields,
    span,
    update_payload,
)
from records.directory_pb2 import (
    DirectoryEntry,
    DirectoryServerAnnouncement,
    SignedDirectoryEntry,
    SignedDirectoryServerAnnouncement,
)
from records.errors import DirectoryError, InvalidRecord, NotApproved
from records.identity import PUBLIC_KEY_SIZE, Identity, identity_id, signing_input, verify_signature
from records.record_pb2 import Record, Value
from records.validation import (
    DEFAULT_CLOCK_SKEW_MS,
    Rank,
    check_lifetime,
    check_update_date,
    check_value_count,
    consolidate_single,
    consolidate_values,
    encode_record,
    record_rank,
    select_by_rank,
)

ENTRY_CONTEXT = b"drd-entry-v1"
SERVER_CONTEXT = b"drd-server-v1"
DRD_SERVERS_KEY = "/drd-servers/all/"
MAX_ENTRY_TTL_MS = 7 * 24 * 3600 * 1000
DEFAULT_ENTRY_TTL_MS = 24 * 3600 * 1000
MAX_SERVER_TTL_MS = 24 * 3600 * 1000
DEFAULT_SERVER_TTL_MS = 3600 * 1000
MAX_SERVERS = 24  # one value is ~200 bytes: 24 fit the 8 KiB record
_PUBLIC_KEYS = frozenset(
    {
        UpdateKey.DISPLAY_NAME,
        UpdateKey.DESCRIPTION,
        UpdateKey.SENDING_PRICE,
        UpdateKey.AVATAR_NAME,
        *QMAIL_KEYS,
    }
)

TicketCheck = Callable[[Ticket, int], None]
"""Raises `DirectoryError` unless the ticket was good at the given time (Unix ms)."""


@dataclass(frozen=True)
class TicketAuthorities:
    """The ticket authorities trusted (stand-ins for RAIDA's, seed 000 workflow step 4): their
    ed25519 public keys, and how many of them must sign a ticket (k of n, as RAIDA's 13 of
    25). The JSON form is the authorities file ``mint-authorities`` writes."""

    keys: tuple[bytes, ...]
    threshold: int
    clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS

    def __post_init__(self) -> None:
        keys = tuple(dict.fromkeys(self.keys))  # each authority counts once
        if any(len(k) != PUBLIC_KEY_SIZE for k in keys):
            raise ValueError("authority keys are 32-byte ed25519 public keys")
        if not 1 <= self.threshold <= len(keys):
            raise ValueError(f"threshold {self.threshold} is not in 1..{len(keys)} authorities")
        object.__setattr__(self, "keys", keys)

    def check(self, ticket: Ticket, now: int) -> None:
        """Raise `DirectoryError` (status 40) unless at least `threshold` of the authorities
        signed `ticket` and it is neither future-dated nor expired at `now`."""
        if ticket.issued > now + self.clock_skew_ms:
            raise DirectoryError("ticket issued in the future", Status.NOT_AUTHORIZED)
        if ticket.expires <= now:
            raise DirectoryError("ticket expired", Status.NOT_AUTHORIZED)
        signers = ticket.valid_signers(self.keys)
        if len(signers) < self.threshold:
            raise DirectoryError(
                f"ticket signed by {len(signers)} authorities, {self.threshold} needed",
                Status.NOT_AUTHORIZED,
            )

    def to_json(self) -> str:
        """``{"threshold": k, "authorities": ["<64 hex>", ...]}``."""
        keys = [key.hex() for key in self.keys]
        return json.dumps({"threshold": self.threshold, "authorities": keys}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> TicketAuthorities:
        """Parse an authorities file; `ValueError` (naming the authorities) if it is not one."""
        try:
            data = json.loads(text)
            return cls(tuple(bytes.fromhex(k) for k in data["authorities"]), int(data["threshold"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an authorities file: missing or bad {exc}") from exc


def drd_key(mailbox: MailboxNumber) -> str:
    """``/drd/<14 lowercase hex>/``."""
    return f"/drd/{mailbox.hex}/"


def parse_drd_key(key: str) -> MailboxNumber:
    """The mailbox of a ``/drd/<14 lowercase hex>/`` key; `InvalidRecord("bad_key")` else."""
    hex_id = key[len("/drd/") : -1]
    if not (
        key.startswith("/drd/")
        and key.endswith("/")
        and len(hex_id) == 2 * MAILBOX_SIZE
        and all(c in "0123456789abcdef" for c in hex_id)
    ):
        raise InvalidRecord("bad_key", f"key {key!r} is not /drd/<14 lowercase hex digits>/")
    return MailboxNumber.from_hex(hex_id)


# -- construction ----------------------------------------------------------------------------


def make_drd_record(
    server: Identity,
    mailbox: MailboxNumber,
    *,
    version: int,
    profile: Profile | None,
    ticket: bytes,
    owner_signature: bytes,
    host: str,
    port: int,
    now: int,
    ttl_ms: int = DEFAULT_ENTRY_TTL_MS,
) -> Record:
    """The record `server` publishes for `mailbox`: `profile` (None: deleted) at `version`,
    approved by `owner_signature`, valid `ttl_ms` from `now`."""
    entry = DirectoryEntry(
        mailbox=mailbox.to_bytes(),
        version=version,
        deleted=profile is None,
        ticket=ticket,
        owner_signature=owner_signature,
        server_key=server.public_key,
        server_host=host,
        server_port=port,
        published=now,
        expiration=now + ttl_ms,
    )
    if profile is not None:
        entry.fields = public_fields(profile)
        entry.avatar_sha256 = avatar_hash(profile)
        entry.avatar_size = len(profile.avatar or b"")
    data = entry.SerializeToString(deterministic=True)
    signed = SignedDirectoryEntry(
        entry=data, signature=server.sign(signing_input(ENTRY_CONTEXT, data))
    )
    record = Record(key=drd_key(mailbox), updateDate=now, id1=mailbox.hex)
    record.values.append(
        Value(
            id2=mailbox.hex,
            creationDate=now,
            expirationDate=now + ttl_ms,
            value=signed.SerializeToString(deterministic=True),
        )
    )
    return record


def make_drd_servers_record(
    server: Identity,
    host: str,
    port: int,
    *,
    now: int,
    ttl_ms: int = DEFAULT_SERVER_TTL_MS,
    node_port: int = 0,
) -> Record:
    """`server`'s announcement at ``/drd-servers/all/``: its directory listens at host:port
    (TCP), its node at host:`node_port` (UDP; 0: the same port number), where DRD clients send
    it keys."""
    announcement = DirectoryServerAnnouncement(
        server_key=server.public_key,
        host=host,
        port=port,
        timestamp=now,
        expiration=now + ttl_ms,
        node_port=node_port,
    ).SerializeToString(deterministic=True)
    signed = SignedDirectoryServerAnnouncement(
        announcement=announcement,
        signature=server.sign(signing_input(SERVER_CONTEXT, announcement)),
    )
    record = Record(key=DRD_SERVERS_KEY, updateDate=now, id1=server.id_hex)
    record.values.append(
        Value(
            id2=server.id_hex,
            creationDate=now,
            expirationDate=now + ttl_ms,
            value=signed.SerializeToString(deterministic=True),
        )
    )
    return record


# -- parsing ---------------------------------------------------------------------------------


def parse_entry(data: bytes) -> tuple[SignedDirectoryEntry, DirectoryEntry]:
    """Parse a value of a ``/drd/`` record; `InvalidRecord("malformed_value")` if bad."""
    signed, entry = SignedDirectoryEntry(), DirectoryEntry()
    try:
        signed.ParseFromString(data)
        entry.ParseFromString(signed.entry)
    except DecodeError as exc:
        raise InvalidRecord("malformed_value", f"DRD entry does not parse: {exc}") from exc
    return signed, entry


def entry_of(record: Record) -> DirectoryEntry:
    """The entry of a (validated) ``/drd/`` record."""
    return parse_entry(record.values[0].value)[1]


def parse_server(
    data: bytes,
) -> tuple[SignedDirectoryServerAnnouncement, DirectoryServerAnnouncement]:
    """Parse a value of ``/drd-servers/all/``; `InvalidRecord("malformed_value")` if bad."""
    signed, announcement = SignedDirectoryServerAnnouncement(), DirectoryServerAnnouncement()
    try:
        signed.ParseFromString(data)
        announcement.ParseFromString(signed.announcement)
    except DecodeError as exc:
        raise InvalidRecord(
            "malformed_value", f"server announcement does not parse: {exc}"
        ) from exc
    return signed, announcement


def _check_fields(entry: DirectoryEntry) -> None:
    if entry.deleted:
        if entry.fields or entry.avatar_sha256 or entry.avatar_size:
            raise InvalidRecord("malformed_value", "a deletion carries no fields")
        return
    try:
        entries = decode_entries(entry.fields)
    except DirectoryError as exc:
        raise InvalidRecord("malformed_value", str(exc)) from exc
    keys = [k for k, _ in entries]
    if not keys or len(set(keys)) != len(keys) or any(k not in _PUBLIC_KEYS for k in keys):
        raise InvalidRecord("malformed_value", "fields must be distinct public keys, at least one")
    if any(not value for _, value in entries):
        raise InvalidRecord("empty_field", "seed 000: no empty fields")
    has_name = UpdateKey.AVATAR_NAME in keys
    if has_name != (len(entry.avatar_sha256) == 32) or (has_name != (entry.avatar_size > 0)):
        raise InvalidRecord("malformed_value", "avatar name, hash and size come together")
    if entry.avatar_size > MAX_AVATAR_SIZE:  # seed 000: avatar file up to 255x100 bytes
        raise InvalidRecord("malformed_value", f"avatar of {entry.avatar_size} bytes")
    # every field within the seed's limits (lengths, UTF-8, ranges), in the canonical order the
    # servers publish, as a directory server would accept it (the avatar file stays behind)
    try:
        stand_in = span(UpdateKey.AVATAR, b"\x00") if has_name else []
        profile = profile_from_entries([*entries, *stand_in])
    except DirectoryError as exc:
        raise InvalidRecord("malformed_value", f"a field breaks seed 000's limits: {exc}") from exc
    if public_fields(profile) != entry.fields:
        raise InvalidRecord("malformed_value", "fields are not in canonical order")


def _entry_rank(record: Record) -> Rank:
    if not record.values:
        return (record.updateDate, encode_record(record))
    entry = entry_of(record)
    # one integer keeps Rank's shape: version, then deletion over update, then publication
    return ((entry.version << 1 | entry.deleted) << 64 | entry.published, encode_record(record))


class DrdValidator:
    """Validator of the ``drd`` namespace (see the module docstring)."""

    def __init__(
        self,
        *,
        ticket_check: TicketCheck | None = None,
        max_ttl_ms: int = MAX_ENTRY_TTL_MS,
        clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
    ) -> None:
        self.ticket_check = ticket_check
        self.max_ttl_ms = max_ttl_ms
        self.clock_skew_ms = clock_skew_ms

    def validate(self, key: str, record: Record, now: int) -> None:
        """Raise `InvalidRecord` unless the record holds one live entry for the key's mailbox,
        signed by its server and approved by the mailbox's ticketed owner."""
        mailbox = parse_drd_key(key)
        if record.id1 != mailbox.hex:
            raise InvalidRecord("client_id_mismatch", "id1 is not the path's mailbox")
        check_update_date(record, now, self.clock_skew_ms)
        check_value_count(record, 1)
        value = record.values[0]
        if value.id2 != mailbox.hex:
            raise InvalidRecord("node_id_mismatch", "a DRD value's id2 must be the mailbox")
        signed, entry = parse_entry(value.value)
        if entry.mailbox != mailbox.to_bytes():
            raise InvalidRecord("mailbox_mismatch", "the entry names another mailbox")
        if value.creationDate != entry.published or value.expirationDate != entry.expiration:
            raise InvalidRecord(
                "unsigned_date_mismatch", "the value's dates differ from the signed ones"
            )
        check_lifetime(
            entry.published,
            entry.expiration,
            now,
            max_ttl_ms=self.max_ttl_ms,
            clock_skew_ms=self.clock_skew_ms,
        )
        if entry.version > entry.published + self.clock_skew_ms:
            raise InvalidRecord("future_dated", "the change is dated after its publication")
        if len(entry.server_key) != PUBLIC_KEY_SIZE or not verify_signature(
            entry.server_key, signing_input(ENTRY_CONTEXT, signed.entry), signed.signature
        ):
            raise InvalidRecord(
                "bad_server_signature", "the server's signature does not verify", forgery=True
            )
        _check_fields(entry)
        try:
            _, ticket = check_owner_approval(entry)
        except NotApproved as exc:
            raise InvalidRecord(exc.reason, str(exc)) from exc
        if self.ticket_check is not None:
            try:
                self.ticket_check(ticket, entry.version)  # owned when the change was made
            except DirectoryError as exc:
                raise InvalidRecord("bad_ticket", str(exc)) from exc

    def select(self, key: str, records: Sequence[Record]) -> int:
        """The newest owner-authorised change (see the module docstring)."""
        return select_by_rank(records, _entry_rank)

    def consolidate(self, key: str, records: Sequence[Record], now: int | None = None) -> Record:
        """The best entry still alive at `now` (an empty record if none is)."""
        return consolidate_single(key, records, now, _entry_rank)


class DrdServersValidator:
    """Validator of ``/drd-servers/all/``: one announcement per server, each self-signed."""

    def __init__(
        self,
        *,
        max_servers: int = MAX_SERVERS,
        max_ttl_ms: int = MAX_SERVER_TTL_MS,
        clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
    ) -> None:
        self.max_servers = max_servers
        self.max_ttl_ms = max_ttl_ms
        self.clock_skew_ms = clock_skew_ms

    def validate(self, key: str, record: Record, now: int) -> None:
        """Raise `InvalidRecord` unless every value is a live announcement signed by the server
        whose key's SHA-1 is the value's id2."""
        if key != DRD_SERVERS_KEY:
            raise InvalidRecord("bad_key", f"directory servers announce at {DRD_SERVERS_KEY}")
        check_update_date(record, now, self.clock_skew_ms)
        check_value_count(record, self.max_servers)
        for value in record.values:
            signed, announcement = parse_server(value.value)
            if len(announcement.server_key) != PUBLIC_KEY_SIZE:
                raise InvalidRecord("malformed_value", "a server key is 32 bytes")
            if identity_id(announcement.server_key).hex() != value.id2:
                raise InvalidRecord(
                    "node_id_mismatch", "id2 is not SHA-1 of the server key", forgery=True
                )
            if (
                value.creationDate != announcement.timestamp
                or value.expirationDate != announcement.expiration
            ):
                raise InvalidRecord("unsigned_date_mismatch", "dates differ from the signed ones")
            check_lifetime(
                announcement.timestamp,
                announcement.expiration,
                now,
                max_ttl_ms=self.max_ttl_ms,
                clock_skew_ms=self.clock_skew_ms,
            )
            if not 0 < announcement.port < 1 << 16 or not announcement.host:
                raise InvalidRecord("malformed_value", "an announcement names host and port")
            if announcement.node_port >= 1 << 16:
                raise InvalidRecord("malformed_value", "an announcement's node port is a port")
            if not verify_signature(
                announcement.server_key,
                signing_input(SERVER_CONTEXT, signed.announcement),
                signed.signature,
            ):
                raise InvalidRecord(
                    "bad_signature", "the server's signature does not verify", forgery=True
                )

    def select(self, key: str, records: Sequence[Record]) -> int:
        """The most recently updated record (ties broken by canonical bytes)."""
        return select_by_rank(records, record_rank)

    def consolidate(self, key: str, records: Sequence[Record], now: int | None = None) -> Record:
        """One value per server, the newest, expired ones dropped."""
        return consolidate_values(key, records, now, self.max_servers)


def servers_of(record: Record) -> list[tuple[bytes, str, int]]:
    """(server key, host, port) of each announcement in a validated ``/drd-servers/`` record."""
    out = []
    for value in record.values:
        _, announcement = parse_server(value.value)
        out.append((announcement.server_key, announcement.host, announcement.port))
    return out


def node_addresses(record: Record) -> dict[tuple[str, int], tuple[str, int]]:
    """For each directory (host, TCP port) announced in a validated ``/drd-servers/`` record,
    the (host, UDP port) of its node, where its session keys are sent."""
    out = {}
    for value in record.values:
        _, announcement = parse_server(value.value)
        node_port = announcement.node_port or announcement.port
        out[(announcement.host, announcement.port)] = (announcement.host, node_port)
    return out


# -- sync between directory servers ----------------------------------------------------------
#
# Ours (the seed only says "DRD servers may synchronize themselves"). Over the directory's
# stream port, with the request/response framing of `records.directory`:
#
# * SYNC_DIGEST: challenge (16), after (7: a mailbox number), E3 E3 -> up to `DIGEST_PAGE`
#   rows of mailbox (7), version (8), digest (32), in mailbox order after `after`, then E3 E3;
#   a page shorter than `DIGEST_PAGE` is the last.
# * SYNC_PULL: challenge (16), largest answer the puller takes (4), count (2), that many
#   mailboxes (7 each, 1 to `MAX_PULL_BATCH`), E3 E3 -> one item per mailbox asked for, in
#   order, for as many of them as fit that answer size (at least one; the puller asks again for
#   the rest), then E3 E3. An item is: entry length (4), an unsigned `DirectoryEntry` (fields,
#   avatar hash, ticket, owner signature; no comment: there is no field for it; length 0: the
#   peer holds nothing for that mailbox), avatar length (4), the avatar file.
#
# The receiver believes nothing a peer says: it checks the ticket and the owner's signature
# as for any change, so a peer can offer only changes owners made.
#
# Version floors: a server keeps a deletion's tombstone (with its ticket) for a while, then only
# the mailbox's floor: the version, the owner's key and signature of the deletion (digest rows
# show it as `FLOOR_DIGEST`). No change at or below a floor is taken again, whoever offers it.
# A floor proves nothing to a server that holds nothing (there is no ticket), but it does to one
# still holding an older record approved by that same owner key (a server that was away): the
# owner who approved that record later signed its deletion, so the record goes
# (`floor_entry`, `check_floor`).

DIGEST_ROW = MAILBOX_SIZE + 8 + 32
DIGEST_PAGE = 4096
MAX_PULL_BATCH = 256
"""Mailboxes one SYNC_PULL asks for (a request of 1.8 KB)."""
PULL_ITEM_OVERHEAD = 8
"""Bytes of an item besides its entry and avatar (the two lengths)."""
_TRAILER = b"\xe3\xe3"

DigestRow = tuple[MailboxNumber, int, bytes]
PulledItem = tuple[bytes, bytes]
"""(marshaled entry, avatar) of one SYNC_PULL item; an empty entry: nothing held."""


def encode_digest_request(challenge: bytes, after: MailboxNumber | None) -> bytes:
    """A SYNC_DIGEST body: rows after `after` (None: from the start)."""
    start = after.to_bytes() if after is not None else b"\xff" * MAILBOX_SIZE
    return challenge + start + _TRAILER


def decode_digest_request(body: bytes) -> MailboxNumber | None:
    """The `after` of a SYNC_DIGEST body; `DirectoryError` if malformed."""
    if len(body) != 16 + MAILBOX_SIZE + 2 or body[-2:] != _TRAILER:
        raise DirectoryError("a digest request is challenge, mailbox, E3 E3")
    raw = body[16 : 16 + MAILBOX_SIZE]
    return None if raw == b"\xff" * MAILBOX_SIZE else MailboxNumber.from_bytes(raw)


def encode_digest(rows: Sequence[DigestRow]) -> bytes:
    """A SYNC_DIGEST answer body."""
    out = bytearray()
    for mailbox, version, digest in rows:
        if len(digest) != 32:
            raise DirectoryError("a digest is 32 bytes")
        out += mailbox.to_bytes() + version.to_bytes(8, "big") + digest
    return bytes(out) + _TRAILER


def decode_digest(body: bytes) -> list[DigestRow]:
    """Rows of a SYNC_DIGEST answer body."""
    if body[-2:] != _TRAILER or (len(body) - 2) % DIGEST_ROW:
        raise DirectoryError("a digest is rows of 47 bytes, then E3 E3")
    rows = []
    for offset in range(0, len(body) - 2, DIGEST_ROW):
        row = body[offset : offset + DIGEST_ROW]
        version = int.from_bytes(row[7:15], "big")
        rows.append((MailboxNumber.from_bytes(row[:7]), version, row[15:]))
    return rows


def encode_pull_request(
    challenge: bytes, mailboxes: Sequence[MailboxNumber], max_answer: int
) -> bytes:
    """A SYNC_PULL body asking for `mailboxes`, answered in at most `max_answer` bytes."""
    if not 1 <= len(mailboxes) <= MAX_PULL_BATCH:
        raise DirectoryError(f"a pull asks for 1 to {MAX_PULL_BATCH} mailboxes")
    head = challenge + max_answer.to_bytes(4, "big") + len(mailboxes).to_bytes(2, "big")
    return head + b"".join(m.to_bytes() for m in mailboxes) + _TRAILER


def decode_pull_request(body: bytes) -> tuple[list[MailboxNumber], int]:
    """(mailboxes, largest answer in bytes) of a SYNC_PULL body; `DirectoryError` if bad."""
    if len(body) < 16 + 6 + 2 or body[-2:] != _TRAILER:
        raise DirectoryError("a pull request is challenge, size, count, mailboxes, E3 E3")
    max_answer = int.from_bytes(body[16:20], "big")
    count = int.from_bytes(body[20:22], "big")
    if not 1 <= count <= MAX_PULL_BATCH or len(body) != 16 + 6 + count * MAILBOX_SIZE + 2:
        raise DirectoryError(f"a pull asks for 1 to {MAX_PULL_BATCH} mailboxes, 7 bytes each")
    raw = body[22:-2]
    mailboxes = [MailboxNumber.from_bytes(raw[i : i + MAILBOX_SIZE]) for i in range(0, len(raw), 7)]
    return mailboxes, max_answer


def encode_pull_item(entry: DirectoryEntry | None, avatar: bytes = b"") -> bytes:
    """One item of a SYNC_PULL answer (None: nothing held for the mailbox asked for)."""
    data = b"" if entry is None else entry.SerializeToString(deterministic=True)
    return len(data).to_bytes(4, "big") + data + len(avatar).to_bytes(4, "big") + avatar


def encode_pull(items: Sequence[bytes]) -> bytes:
    """A SYNC_PULL answer body of encoded items."""
    return b"".join(items) + _TRAILER


def decode_pull(body: bytes) -> list[PulledItem]:
    """The items of a SYNC_PULL answer body, entries still marshaled (each is parsed, and
    refused, on its own: `parse_pulled`); `DirectoryError` if the framing is wrong."""
    if body[-2:] != _TRAILER:
        raise DirectoryError("a pull answer is items, then E3 E3")
    items: list[PulledItem] = []
    offset, end = 0, len(body) - 2
    while offset < end:
        parts = []
        for _ in range(2):
            if offset + 4 > end:
                raise DirectoryError("a pull answer item is cut short")
            length = int.from_bytes(body[offset : offset + 4], "big")
            if offset + 4 + length > end:
                raise DirectoryError("a pull answer item's length is wrong")
            parts.append(body[offset + 4 : offset + 4 + length])
            offset += 4 + length
        items.append((parts[0], parts[1]))
    return items


def parse_pulled(data: bytes) -> DirectoryEntry:
    """The entry of a pulled item; `DirectoryError` if it does not parse."""
    entry = DirectoryEntry()
    try:
        entry.ParseFromString(data)
    except DecodeError as exc:
        raise DirectoryError(f"pulled entry does not parse: {exc}") from exc
    return entry


def sync_entry(
    mailbox: MailboxNumber,
    *,
    version: int,
    profile: Profile | None,
    ticket: bytes,
    owner_signature: bytes,
) -> DirectoryEntry:
    """The unsigned entry a server hands a syncing peer (no server fields, no comment)."""
    entry = DirectoryEntry(
        mailbox=mailbox.to_bytes(),
        version=version,
        deleted=profile is None,
        ticket=ticket,
        owner_signature=owner_signature,
    )
    if profile is not None:
        entry.fields = public_fields(profile)
        entry.avatar_sha256 = avatar_hash(profile)
        entry.avatar_size = len(profile.avatar or b"")
    return entry


def floor_entry(
    mailbox: MailboxNumber, *, version: int, owner_key: bytes, owner_signature: bytes
) -> DirectoryEntry:
    """The unsigned entry a server hands a syncing peer for a version floor (no ticket)."""
    return DirectoryEntry(
        mailbox=mailbox.to_bytes(),
        version=version,
        deleted=True,
        owner_key=owner_key,
        owner_signature=owner_signature,
    )


def is_floor(entry: DirectoryEntry) -> bool:
    """Whether a pulled entry is a version floor (a deletion that carries no ticket)."""
    return entry.deleted and not entry.ticket


def check_floor(entry: DirectoryEntry) -> MailboxNumber:
    """The mailbox of a floor entry whose owner key signed the deletion; `NotApproved` (status
    40) otherwise. Whether that key is the mailbox's owner is the caller's to know."""
    mailbox = MailboxNumber.from_bytes(entry.mailbox)
    if entry.fields or entry.avatar_sha256 or entry.avatar_size:
        raise NotApproved("bad_owner_signature", "a floor carries no fields")
    if len(entry.owner_key) != PUBLIC_KEY_SIZE or not verify_signature(
        entry.owner_key, delete_payload(mailbox, entry.version), entry.owner_signature
    ):
        raise NotApproved("bad_owner_signature", "the floor's owner did not sign the deletion")
    return mailbox


def profile_of(entry: DirectoryEntry, avatar: bytes) -> Profile:
    """Rebuild the profile of a synced entry; `DirectoryError` if the avatar does not match."""
    entries = decode_entries(entry.fields)
    if entry.avatar_sha256:
        if hashlib.sha256(avatar).digest() != entry.avatar_sha256:
            raise DirectoryError("the avatar does not match its hash")
        entries += span(UpdateKey.AVATAR, avatar)
    elif avatar:
        raise DirectoryError("an avatar without a hash")
    return profile_from_entries(entries)


def check_owner_approval(entry: DirectoryEntry) -> tuple[MailboxNumber, Ticket]:
    """The mailbox and ticket of an entry whose owner signature verifies (the ticket's quorum
    is the caller's to check); `NotApproved` (status 40) otherwise."""
    mailbox = MailboxNumber.from_bytes(entry.mailbox)
    try:
        ticket = Ticket.from_bytes(entry.ticket)
    except DirectoryError as exc:
        raise NotApproved("bad_ticket", str(exc)) from exc
    if ticket.mailbox != mailbox:
        raise NotApproved("bad_ticket", "the ticket names another mailbox")
    if entry.deleted:
        payload = delete_payload(mailbox, entry.version)
    else:
        digest = fields_digest(mailbox, entry.fields, entry.avatar_sha256)
        payload = update_payload(mailbox, entry.version, digest)
    if not verify_signature(ticket.owner_key, payload, entry.owner_signature):
        raise NotApproved("bad_owner_signature", "the owner did not approve this change")
    return mailbox, ticket
