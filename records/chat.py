"""Chat inboxes (seed 003): handshakes, end-to-end encrypted messages and receipts.

A user's inbox is `INBOX_PAGES` records ``/chat/<uid>/<page>/``: one DHT record holds at most
8 KiB, so the inbox is split into pages and an entry lives on the page its id picks
(`page_of`). Each page is multi-valued, one `Value` per id (`Value.id2`):

- a **handshake** or a **message**, signed by its sender; the id is derived from the sender's uid,
  a random nonce and the recipient's devices it names (`entry_id`), so nobody can take another
  sender's id; `id2` is it in hex;
- a **receipt**, signed by the inbox's owner, that acknowledges a batch of up to
  `MAX_RECEIPT_IDS` entries of its page, each listed with its expiration; `id2` is
  ``receipt-`` and a hash of the signed receipt (`receipt_id2`), so it never names an entry and
  only the owner can make one.

**Many devices** (seed 003's "Message Syncing", which the seed leaves empty). Every device of a
user holds the user's identity, so every device can read and sign for the user; a device is
named by its *tag*, the first 8 bytes of the id of the node it announces itself through
(`device_tag`; a user's devices are the values of ``/presence/<uid>/``). A sender lists the tags
of the recipient's devices announced when it sends (`recipient_devices`, at most
`MAX_ENTRY_DEVICES`, bound into the entry id). A receipt acknowledges ids *for every device*
(`Receipt.entry_ids`: what the last device to read an entry writes, and all a one-device user
ever writes) or *for one device* (`Receipt.device` and `device_entry_ids`). An entry is
acknowledged, and merging drops it on every holder, once a receipt lists it for every device,
or each device it names has listed it (an entry naming none: once any receipt lists it). A
listed id is kept until its entry would have expired, so a replayed copy of an acknowledged
entry is refused (``acknowledged``); an entry only some of its devices read is kept. What one
device sends goes, besides, as an encrypted copy (`make_sent_copy`) into the user's own inbox
for the user's other devices.

Merging keeps, per id2, the newest value (then the canonical bytes); drops what expired; drops
each receipt *dominated* by another one (newer, and making every acknowledgement of it that
has not yet expired: each id it lists for every device listed so too, each id it lists for its
device listed for every device or for the same device), and drops each acknowledged entry.
Dominance is a strict partial order, so "the maximal receipts of the union" is idempotent,
commutative and associative, and the maximal receipts acknowledge all that the receipts do. A
device acknowledges by writing one new receipt per page (`make_receipts`) that lists for every
device the ids the page's receipts list so and those it is the last to read, and for itself
the rest of what it has read: it dominates its older receipts (and those of devices whose reads
are all complete), so a page holds about one receipt per device.

Bounds are enforced when a holder admits a new copy (`ChatValidator.admit`): a page holds
`MAX_ENTRIES_PER_PAGE` entries and `MAX_RECEIPTS_PER_PAGE` receipts of at most
`RECEIPT_BYTES_PER_PAGE` bytes together; a full page refuses more (``inbox_full``,
``receipts_full``) and never evicts. One receipt lists up to `MAX_RECEIPT_IDS` (84) ids, so a
page acknowledges that many entries within their lifetime of 3 to 7 days when each is listed
once (one device; or several, the last to read each entry listing it for all), 1344 for the 16
pages of an inbox; an id listed by several devices for themselves (read while another device
was away) costs 22 bytes in each of their receipts. Measured: a receipt listing 84 ids is 2023
bytes (2039 with some listed for one device), and a page with 6 of the largest messages (1000
bytes each) and that receipt is at most 8160 bytes of the 8192 a record may have.

Messages are encrypted with XChaCha20-Poly1305 under a key both users derive by X25519 from
their identities (`conversation_key`): every device of a user holds the user's identity, so
every device can read them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import nacl.bindings
import nacl.exceptions
from google.protobuf.message import DecodeError

from records.chat_pb2 import (
    ChatContent,
    ChatMessage,
    Handshake,
    Receipt,
    SentCopy,
    SignedInboxEntry,
)
from records.errors import DecryptionFailed, InvalidRecord, RecordTooLarge
from records.identity import (
    ID_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    identity_id,
    is_hex_id,
    signing_input,
    verify_signature,
)
from records.record_pb2 import Record, Value
from records.validation import (
    DEFAULT_CLOCK_SKEW_MS,
    MAX_RECORD_SIZE,
    check_lifetime,
    check_update_date,
    check_value_count,
    merged_record,
    record_rank,
    select_by_rank,
)

HANDSHAKE_CONTEXT = b"chat-handshake-v1"
MESSAGE_CONTEXT = b"chat-message-v1"
RECEIPT_CONTEXT = b"chat-receipt-v2"
_RECEIPT_ID_CONTEXT = b"chat-receipt-id-v2"
RECEIPT_ID2_PREFIX = "receipt-"
_ENTRY_ID_CONTEXT = b"chat-entry-id-v1"
_KEY_PERSON = b"kadnode-chat-v1"  # BLAKE2b personalization of the conversation key

DAY_MS = 24 * 3600 * 1000
MIN_ENTRY_TTL_MS = 3 * DAY_MS  # seed 003: messages are kept for a TTL of 3-7 days
MAX_ENTRY_TTL_MS = 7 * DAY_MS
DEFAULT_ENTRY_TTL_MS = MIN_ENTRY_TTL_MS

INBOX_PAGES = 16
"""Records an inbox is split into (a power of two below 256, so `page_of` is uniform)."""
ENTRY_ID_SIZE = 16
NONCE_SIZE = 24  # XChaCha20-Poly1305
MAX_ENTRIES_PER_PAGE = 6
"""Handshakes and messages a page holds before it refuses more (``inbox_full``)."""
MAX_ENTRY_VALUE_SIZE = 1000
"""Serialized size of one handshake or message `Value` (about 690 bytes of content)."""
MAX_RECEIPTS_PER_PAGE = 8
"""Receipts a page holds (about one per device acknowledging at once) before ``receipts_full``;
the page's receipt bytes (`RECEIPT_BYTES_PER_PAGE`) bound them as well."""
DEVICE_TAG_SIZE = 8
"""Bytes of a device tag (`device_tag`)."""
MAX_ENTRY_DEVICES = 16
"""Recipient devices an entry names: as many as a presence record holds (16)."""
_RECORD_OVERHEAD = 128  # key, id1, updateDate and framing of a page record
RECEIPT_BYTES_PER_PAGE = (
    MAX_RECORD_SIZE - _RECORD_OVERHEAD - MAX_ENTRIES_PER_PAGE * (MAX_ENTRY_VALUE_SIZE + 3)
)
"""Serialized size of a page's receipt values together (3 bytes of framing each included)."""
# a receipt Value but its ids: id2, dates, key, signature (172 measured), and a device tag with
# the framing of a second list (16 more measured, with both lists long)
_RECEIPT_BASE_SIZE = 188
_RECEIPT_ID_SIZE = 22  # one more listed id: 16 bytes and a packed 6-byte expiration
MAX_RECEIPT_IDS = (RECEIPT_BYTES_PER_PAGE - 3 - _RECEIPT_BASE_SIZE) // _RECEIPT_ID_SIZE
"""Entry ids one receipt lists: as many as fit the page's receipt bytes."""
MAX_RECEIPT_VALUE_SIZE = RECEIPT_BYTES_PER_PAGE - 3

# Bounding each value and the receipts' bytes keeps a full page under the size limit.
assert (
    MAX_ENTRIES_PER_PAGE * (MAX_ENTRY_VALUE_SIZE + 3) + RECEIPT_BYTES_PER_PAGE + _RECORD_OVERHEAD
    <= MAX_RECORD_SIZE
)

EntryKind = Literal["handshake", "message", "receipt"]
_CONTEXTS: dict[str, bytes] = {
    "handshake": HANDSHAKE_CONTEXT,
    "message": MESSAGE_CONTEXT,
    "receipt": RECEIPT_CONTEXT,
}


# -- paths and ids ----------------------------------------------------------------------------


def entry_id(sender_uid: bytes, nonce: bytes, recipient_devices: bytes = b"") -> bytes:
    """The 16-byte id of a handshake or message: a hash of its sender's uid, its nonce and the
    recipient's devices it names (concatenated tags; none: the id entries had before devices),
    so a sender cannot reuse (and so replace) another sender's entry, and every version of an
    entry names the same devices (which keeps merging order-independent)."""
    data = _ENTRY_ID_CONTEXT + b"\x00" + sender_uid + nonce + recipient_devices
    return hashlib.sha256(data).digest()[:ENTRY_ID_SIZE]


def device_tag(node_id: bytes) -> bytes:
    """The 8-byte tag naming a device of a user: the start of the id of the node the device
    announces itself through (its ``/presence/<uid>/`` value's `id2`)."""
    if len(node_id) != ID_SIZE:
        raise ValueError(f"a node id is {ID_SIZE} bytes")
    return node_id[:DEVICE_TAG_SIZE]


def _device_list(devices: Iterable[bytes]) -> bytes:
    """Tags as an entry carries them: distinct, ascending, concatenated."""
    tags = sorted(set(devices))
    if any(len(tag) != DEVICE_TAG_SIZE for tag in tags):
        raise ValueError(f"a device tag is {DEVICE_TAG_SIZE} bytes")
    if len(tags) > MAX_ENTRY_DEVICES:
        raise ValueError(f"an entry names at most {MAX_ENTRY_DEVICES} devices")
    return b"".join(tags)


def page_of(entry: bytes) -> int:
    """The inbox page an entry id lives on."""
    return entry[0] % INBOX_PAGES


def chat_key(uid: bytes | str, page: int) -> str:
    """``/chat/<uid>/<page>/``: one page of a user's inbox."""
    hex_uid = uid if isinstance(uid, str) else uid.hex()
    if not is_hex_id(hex_uid):
        raise ValueError(f"{hex_uid!r} is not a 40-digit lowercase hex ID")
    if not 0 <= page < INBOX_PAGES:
        raise ValueError(f"page {page} is not in 0..{INBOX_PAGES - 1}")
    return f"/chat/{hex_uid}/{page}/"


def inbox_keys(uid: bytes | str) -> list[str]:
    """Every page of `uid`'s inbox."""
    return [chat_key(uid, page) for page in range(INBOX_PAGES)]


def parse_chat_key(key: str) -> tuple[str, int]:
    """(hex uid, page) of ``/chat/<uid>/<page>/``; `InvalidRecord("bad_key")` otherwise."""
    parts = key.split("/")
    ok = (
        len(parts) == 5
        and parts[0] == ""
        and parts[1] == "chat"
        and parts[4] == ""
        and is_hex_id(parts[2])
        and parts[3].isdigit()
        and str(int(parts[3])) == parts[3]
        and int(parts[3]) < INBOX_PAGES
    )
    if not ok:
        raise InvalidRecord(
            "bad_key", f"key {key!r} is not of the form /chat/<uid>/<page 0-{INBOX_PAGES - 1}>/"
        )
    return parts[2], int(parts[3])


# -- encryption -------------------------------------------------------------------------------


def conversation_key(own: Identity, peer_public_key: bytes) -> bytes:
    """The 32-byte XChaCha20-Poly1305 key two users share: BLAKE2b of their X25519 shared
    secret (keys from their ed25519 identities) and both X25519 public keys. Either side gets
    the same key. Raises `DecryptionFailed` for a public key that is not a usable point."""
    try:
        peer_x25519 = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(peer_public_key)
        shared = nacl.bindings.crypto_scalarmult(own.x25519_private_key(), peer_x25519)
    except (nacl.exceptions.CryptoError, ValueError, RuntimeError) as exc:
        raise DecryptionFailed(f"no key agreement with that public key: {exc}") from exc
    if shared == bytes(32):
        raise DecryptionFailed("the peer's key is a low-order point")
    low, high = sorted((own.x25519_public_key, peer_x25519))
    return hashlib.blake2b(shared + low + high, digest_size=32, person=_KEY_PERSON).digest()


def _x25519_of(ed25519_public_key: bytes) -> bytes | None:
    """The X25519 key that goes with an ed25519 public key (None if it is not a curve point)."""
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key)
    except (nacl.exceptions.CryptoError, ValueError, RuntimeError):
        return None


def _associated_data(message: ChatMessage) -> bytes:
    # Binds the ciphertext to who sent it, to whom, under which id and dates.
    return (
        MESSAGE_CONTEXT
        + message.sender_uid
        + message.recipient_uid
        + message.message_id
        + message.timestamp.to_bytes(8, "big", signed=True)
        + message.expiration.to_bytes(8, "big", signed=True)
    )


def decrypt_message(message: ChatMessage, key: bytes) -> ChatContent:
    """The content of `message` under the conversation `key`; `DecryptionFailed` if it does not
    authenticate or parse."""
    try:
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            message.ciphertext, _associated_data(message), message.nonce, key
        )
        return ChatContent.FromString(plain)
    except (nacl.exceptions.CryptoError, DecodeError, ValueError) as exc:
        raise DecryptionFailed(f"message {message.message_id.hex()} does not decrypt") from exc


# -- construction -----------------------------------------------------------------------------


def _sign(author: Identity, kind: EntryKind, body: bytes) -> bytes:
    signature = author.sign(signing_input(_CONTEXTS[kind], body))
    envelope = SignedInboxEntry(signature=signature)
    setattr(envelope, kind, body)
    return envelope.SerializeToString(deterministic=True)


def _page_record(uid: bytes, entries: Iterable[tuple[bytes, int, int, bytes]], now: int) -> Record:
    """A page record of `uid`'s inbox holding (id, created, expires, signed bytes) values, all
    of which must live on the same page."""
    values = sorted(entries)
    pages = {page_of(e[0]) for e in values}
    if len(pages) != 1:
        raise ValueError("a page record holds entries of exactly one page")
    record = Record(key=chat_key(uid, pages.pop()), updateDate=now, id1=uid.hex())
    record.values.extend(
        Value(id2=eid.hex(), creationDate=created, expirationDate=expires, value=signed)
        for eid, created, expires, signed in values
    )
    return record


def _check_ttl(ttl_ms: int) -> None:
    if not MIN_ENTRY_TTL_MS <= ttl_ms <= MAX_ENTRY_TTL_MS:
        raise ValueError("seed 003: messages are kept 3 to 7 days")


def make_handshake(
    sender: Identity,
    recipient_uid: bytes,
    *,
    nonce: bytes,
    now: int,
    ttl_ms: int = DEFAULT_ENTRY_TTL_MS,
    recipient_devices: Iterable[bytes] = (),
) -> Record:
    """A record putting `sender`'s signed handshake into `recipient_uid`'s inbox.

    `nonce` is 24 random bytes (the caller draws them: this module does no I/O).
    `recipient_devices` are the tags of the recipient's devices that must each acknowledge it
    before holders drop it (none: the first acknowledgement does)."""
    _check_ttl(ttl_ms)
    if len(nonce) != NONCE_SIZE or len(recipient_uid) != ID_SIZE:
        raise ValueError("a nonce is 24 bytes and a uid 20")
    devices = _device_list(recipient_devices)
    hid = entry_id(sender.id, nonce, devices)
    body = Handshake(
        sender_uid=sender.id,
        sender_public_key=sender.public_key,
        recipient_uid=recipient_uid,
        x25519_key=sender.x25519_public_key,
        handshake_id=hid,
        nonce=nonce,
        timestamp=now,
        expiration=now + ttl_ms,
        recipient_devices=devices,
    ).SerializeToString(deterministic=True)
    signed = _sign(sender, "handshake", body)
    return _page_record(recipient_uid, [(hid, now, now + ttl_ms, signed)], now)


def make_message(
    sender: Identity,
    recipient_public_key: bytes,
    data: bytes,
    *,
    mime_type: str,
    nonce: bytes,
    now: int,
    ttl_ms: int = DEFAULT_ENTRY_TTL_MS,
    recipient_devices: Iterable[bytes] = (),
) -> Record:
    """A record putting an encrypted message from `sender` into the inbox of the user whose
    ed25519 key is `recipient_public_key`, signed by `sender`. `recipient_devices` as for
    `make_handshake`.

    Raises `RecordTooLarge` (``value_too_large``) if the message does not fit one inbox entry."""
    content = ChatContent(mime_type=mime_type, data=data)
    return _message_record(
        sender, recipient_public_key, content, nonce, now, ttl_ms, _device_list(recipient_devices)
    )


def make_sent_copy(
    sender: Identity,
    original: Record,
    recipient_public_key: bytes,
    *,
    device: bytes,
    other_devices: Iterable[bytes],
    nonce: bytes,
    now: int,
) -> Record:
    """Seed 003 "Message Syncing": a record putting into `sender`'s own inbox an encrypted copy
    of `original` (a handshake or message `make_handshake` / `make_message` made, to the user
    whose key is `recipient_public_key`), for `sender`'s `other_devices`; `device` is the tag of
    the device that sent it. It lives as long as the original.

    Raises `RecordTooLarge` if the copy does not fit one inbox entry."""
    value = original.values[0]
    parsed = parse_inbox_value(value.value)
    body = parsed.body
    if isinstance(body, Receipt) or len(original.values) != 1:
        raise ValueError("a sent copy is of one handshake or message")
    if body.recipient_uid != identity_id(recipient_public_key):
        raise ValueError("the original went to another user")
    if len(device) != DEVICE_TAG_SIZE:
        raise ValueError(f"a device tag is {DEVICE_TAG_SIZE} bytes")
    if isinstance(body, ChatMessage):
        content = decrypt_message(body, conversation_key(sender, recipient_public_key))
    else:
        content = ChatContent()
    content.sent.CopyFrom(
        SentCopy(
            recipient_public_key=recipient_public_key,
            entry_id=parsed.entry_id,
            handshake=isinstance(body, Handshake),
            device=device,
        )
    )
    ttl_ms = parsed.expiration - parsed.timestamp
    others = _device_list(other_devices)
    return _message_record(sender, sender.public_key, content, nonce, now, ttl_ms, others)


def _message_record(
    sender: Identity,
    recipient_public_key: bytes,
    content: ChatContent,
    nonce: bytes,
    now: int,
    ttl_ms: int,
    devices: bytes,
) -> Record:
    _check_ttl(ttl_ms)
    if len(nonce) != NONCE_SIZE or len(recipient_public_key) != PUBLIC_KEY_SIZE:
        raise ValueError("a nonce is 24 bytes and a public key 32")
    recipient_uid = identity_id(recipient_public_key)
    message = ChatMessage(
        sender_uid=sender.id,
        sender_public_key=sender.public_key,
        recipient_uid=recipient_uid,
        message_id=entry_id(sender.id, nonce, devices),
        nonce=nonce,
        timestamp=now,
        expiration=now + ttl_ms,
        recipient_devices=devices,
    )
    plain = content.SerializeToString(deterministic=True)
    key = conversation_key(sender, recipient_public_key)
    message.ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plain, _associated_data(message), nonce, key
    )
    signed = _sign(sender, "message", message.SerializeToString(deterministic=True))
    record = _page_record(
        recipient_uid, [(message.message_id, now, message.expiration, signed)], now
    )
    size = record.values[0].ByteSize()
    if size > MAX_ENTRY_VALUE_SIZE:
        raise RecordTooLarge(size, MAX_ENTRY_VALUE_SIZE, "value")
    return record


def receipt_id2(receipt_bytes: bytes) -> str:
    """The `Value.id2` of a receipt: ``receipt-`` and a hash of its marshaled `Receipt`, so it
    never equals an entry's id (hex) and is fixed by what the owner signed."""
    digest = hashlib.sha256(_RECEIPT_ID_CONTEXT + b"\x00" + receipt_bytes).digest()
    return RECEIPT_ID2_PREFIX + digest[:ENTRY_ID_SIZE].hex()


def _id_list(acknowledged: Iterable[tuple[bytes, int]]) -> dict[bytes, int]:
    expirations: dict[bytes, int] = {}
    for eid, expiration in acknowledged:
        if len(eid) != ENTRY_ID_SIZE:
            raise ValueError("an entry id is 16 bytes")
        expirations[eid] = max(expiration, expirations.get(eid, expiration))
    return expirations


def make_receipts(
    recipient: Identity,
    acknowledged: Iterable[tuple[bytes, int]],
    now: int,
    *,
    device: bytes = b"",
    device_acknowledged: Iterable[tuple[bytes, int]] = (),
) -> Record:
    """A page record of `recipient`'s own inbox holding ONE signed receipt: for every device,
    of every (entry id, entry expiration) in `acknowledged`; for the device tagged `device`
    alone, of those in `device_acknowledged` (an id in both counts for every device). Every id
    must live on the same page, and there are 1 to `MAX_RECEIPT_IDS` of them. To replace the
    receipts a page holds, list their unexpired ids too and use a `now` newer than theirs (see
    `ChatClient.acknowledge`)."""
    everyone = _id_list(acknowledged)
    own = {eid: exp for eid, exp in _id_list(device_acknowledged).items() if eid not in everyone}
    if own and len(device) != DEVICE_TAG_SIZE:
        raise ValueError(f"ids acknowledged by one device need its {DEVICE_TAG_SIZE}-byte tag")
    if not 1 <= len(everyone) + len(own) <= MAX_RECEIPT_IDS:
        raise ValueError(f"a receipt lists 1 to {MAX_RECEIPT_IDS} entry ids")
    pages = {page_of(eid) for eid in [*everyone, *own]}
    if len(pages) != 1:
        raise ValueError("a receipt lists entries of exactly one page")
    ids, own_ids = sorted(everyone), sorted(own)
    body = Receipt(
        recipient_public_key=recipient.public_key,
        timestamp=now,
        entry_ids=b"".join(ids),
        expirations=[everyone[eid] for eid in ids],
        device=device if own else b"",
        device_entry_ids=b"".join(own_ids),
        device_expirations=[own[eid] for eid in own_ids],
    ).SerializeToString(deterministic=True)
    expires = max([*everyone.values(), *own.values()])
    record = Record(key=chat_key(recipient.id, pages.pop()), updateDate=now, id1=recipient.id.hex())
    record.values.append(
        Value(
            id2=receipt_id2(body),
            creationDate=now,
            expirationDate=expires,
            value=_sign(recipient, "receipt", body),
        )
    )
    return record


@dataclass(frozen=True, slots=True)
class NextReceipt:
    """What a device writes to acknowledge entries of one page (`next_receipt`)."""

    record: Record | None
    """The receipt to put (None when there is nothing new to list, or no room)."""
    already: frozenset[bytes]
    """Ids the page's receipts already acknowledge for this device (or for every device)."""
    fresh: frozenset[bytes]
    """Ids `record` acknowledges anew."""


def next_receipt(
    recipient: Identity,
    page: Record | None,
    device: bytes,
    read: Iterable[tuple[bytes, int, Sequence[bytes]]],
    now: int,
) -> NextReceipt:
    """The receipt `recipient`'s device tagged `device` writes after reading `read` ((entry id,
    expiration, the devices the entry names)) on `page` (the page as just got).

    Seed 003 "Message Syncing": it lists for every device the unexpired ids the page's receipts
    list so, and each entry read that every device it names has now read (or naming none);
    and for `device` alone the unexpired ids its own receipts list and the other entries read.
    It is newer than every receipt on the page, so it replaces its device's older receipts and
    those of other devices whose every read is complete. Ids beyond `MAX_RECEIPT_IDS` are left
    for a later receipt."""
    everyone: dict[bytes, int] = {}
    own: dict[bytes, int] = {}
    readers: dict[bytes, set[bytes]] = {}
    newest = now - 1
    for value in page.values if page is not None else ():
        parsed = _parsed(value)
        if parsed is None or parsed.kind != "receipt":
            continue
        newest = max(newest, parsed.timestamp)
        everyone.update((eid, exp) for eid, exp in parsed.acknowledged if exp > now)
        for eid, exp in parsed.device_acknowledged:
            if exp > now:
                readers.setdefault(eid, set()).add(parsed.device)
                if parsed.device == device:
                    own[eid] = exp
    known = everyone.keys() | own.keys()
    already = frozenset(eid for eid, _, _ in read if eid in known)
    fresh: dict[bytes, tuple[int, Sequence[bytes]]] = {}
    for eid, expiration, devices in read:
        if eid not in known and len(known) + len(fresh) < MAX_RECEIPT_IDS:
            fresh[eid] = (expiration, devices)
    if not fresh:
        return NextReceipt(None, already, frozenset())
    for eid, (expiration, devices) in fresh.items():
        if set(devices) <= readers.get(eid, set()) | {device}:
            everyone[eid] = expiration  # the last of its devices to read it: done for all
        else:
            own[eid] = expiration
    record = make_receipts(
        recipient,
        everyone.items(),
        max(now, newest + 1),  # newer than every receipt it replaces, even if our clock is behind
        device=device,
        device_acknowledged=[(eid, exp) for eid, exp in own.items() if eid not in everyone],
    )
    return NextReceipt(record, already, frozenset(fresh))


# -- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxValue:
    """One parsed (not yet verified) inbox value."""

    kind: EntryKind
    entry_id: bytes
    author_key: bytes
    """ed25519 key that signed it: the sender's, or for a receipt the recipient's."""
    timestamp: int
    expiration: int
    body: Handshake | ChatMessage | Receipt
    signed_bytes: bytes
    signature: bytes
    acknowledged: tuple[tuple[bytes, int], ...] = ()
    """For a receipt: the (entry id, entry expiration) it lists for every device, ids
    ascending."""
    devices: tuple[bytes, ...] = ()
    """For a handshake or message: the tags of the recipient's devices that must acknowledge it
    (none: any one)."""
    device: bytes = b""
    """For a receipt: the tag of the device `device_acknowledged` is for."""
    device_acknowledged: tuple[tuple[bytes, int], ...] = ()
    """For a receipt: the (entry id, entry expiration) it lists for `device` alone."""

    @property
    def id2(self) -> str:
        """The `Value.id2` this value must be stored under."""
        if self.kind == "receipt":
            return receipt_id2(self.signed_bytes)
        return self.entry_id.hex()

    @property
    def listed(self) -> tuple[tuple[bytes, int], ...]:
        """For a receipt: every (entry id, expiration) it lists, for every device or its own."""
        return self.acknowledged + self.device_acknowledged


def _split_ids(data: bytes, expirations: Sequence[int]) -> tuple[tuple[bytes, int], ...]:
    """(id, expiration) pairs of a receipt list: ascending 16-byte ids, one expiration each."""
    ids = [data[i : i + ENTRY_ID_SIZE] for i in range(0, len(data), ENTRY_ID_SIZE)]
    if (
        len(data) % ENTRY_ID_SIZE
        or len(ids) != len(expirations)
        or any(a >= b for a, b in itertools.pairwise(ids))
    ):
        raise InvalidRecord(
            "malformed_value", "a receipt lists ascending 16-byte ids, one expiration each"
        )
    return tuple(zip(ids, expirations, strict=True))


def _split_devices(data: bytes) -> tuple[bytes, ...]:
    """The tags an entry names: ascending 8-byte tags, at most `MAX_ENTRY_DEVICES`."""
    tags = [data[i : i + DEVICE_TAG_SIZE] for i in range(0, len(data), DEVICE_TAG_SIZE)]
    if (
        len(data) % DEVICE_TAG_SIZE
        or len(tags) > MAX_ENTRY_DEVICES
        or any(a >= b for a, b in itertools.pairwise(tags))
    ):
        raise InvalidRecord(
            "malformed_value",
            f"an entry names at most {MAX_ENTRY_DEVICES} ascending {DEVICE_TAG_SIZE}-byte devices",
        )
    return tuple(tags)


def _parse_receipt(envelope: SignedInboxEntry) -> InboxValue:
    body = Receipt.FromString(envelope.receipt)
    everyone = _split_ids(body.entry_ids, body.expirations)
    own = _split_ids(body.device_entry_ids, body.device_expirations)
    if not everyone and not own:
        raise InvalidRecord("malformed_value", "a receipt lists at least one id")
    if {eid for eid, _ in everyone} & {eid for eid, _ in own}:
        raise InvalidRecord("malformed_value", "a receipt lists an id for every device and one")
    if len(body.device) != (DEVICE_TAG_SIZE if own else 0):
        raise InvalidRecord(
            "malformed_value", "a receipt names a device exactly when it lists ids for one"
        )
    digest = hashlib.sha256(_RECEIPT_ID_CONTEXT + b"\x00" + envelope.receipt).digest()
    return InboxValue(
        "receipt", digest[:ENTRY_ID_SIZE], body.recipient_public_key, body.timestamp,
        max(exp for _, exp in everyone + own), body, envelope.receipt, envelope.signature,
        everyone, (), body.device, own,
    )  # fmt: skip


def parse_inbox_value(data: bytes) -> InboxValue:
    """Parse a `SignedInboxEntry`; `InvalidRecord("malformed_value")` if it is not one."""
    envelope = SignedInboxEntry()
    body: Handshake | ChatMessage
    try:
        envelope.ParseFromString(data)
        kind = envelope.WhichOneof("entry")
        if kind == "handshake":
            body = Handshake.FromString(envelope.handshake)
            parsed = InboxValue(
                "handshake", body.handshake_id, body.sender_public_key, body.timestamp,
                body.expiration, body, envelope.handshake, envelope.signature,
                devices=_split_devices(body.recipient_devices),
            )  # fmt: skip
            sizes = {
                "sender_uid": (len(body.sender_uid), ID_SIZE),
                "recipient_uid": (len(body.recipient_uid), ID_SIZE),
                "x25519_key": (len(body.x25519_key), PUBLIC_KEY_SIZE),
                "nonce": (len(body.nonce), NONCE_SIZE),
            }
        elif kind == "message":
            body = ChatMessage.FromString(envelope.message)
            parsed = InboxValue(
                "message", body.message_id, body.sender_public_key, body.timestamp,
                body.expiration, body, envelope.message, envelope.signature,
                devices=_split_devices(body.recipient_devices),
            )  # fmt: skip
            sizes = {
                "sender_uid": (len(body.sender_uid), ID_SIZE),
                "recipient_uid": (len(body.recipient_uid), ID_SIZE),
                "nonce": (len(body.nonce), NONCE_SIZE),
            }
        elif kind == "receipt":
            parsed = _parse_receipt(envelope)
            sizes = {}
        else:
            raise InvalidRecord("malformed_value", "the inbox entry is empty")
    except DecodeError as exc:
        raise InvalidRecord("malformed_value", f"inbox entry does not parse: {exc}") from exc
    sizes["author key"] = (len(parsed.author_key), PUBLIC_KEY_SIZE)
    sizes["entry id"] = (len(parsed.entry_id), ENTRY_ID_SIZE)
    sizes["signature"] = (len(parsed.signature), SIGNATURE_SIZE)
    for field, (size, expected) in sizes.items():
        if size != expected:
            raise InvalidRecord("malformed_value", f"{field} is {size} bytes, expected {expected}")
    return parsed


def _parsed(value: Value) -> InboxValue | None:
    """`value` parsed, or None if it does not parse (merging keeps such a value as an entry
    naming no device; validation refuses it)."""
    try:
        return parse_inbox_value(value.value)
    except InvalidRecord:
        return None


@dataclass(frozen=True, slots=True)
class _Acknowledgements:
    """What one receipt acknowledges (hex ids, live ones only when merging at a `now`)."""

    everyone: frozenset[str]
    """Ids acknowledged for every device."""
    device: bytes
    own: frozenset[str]
    """Ids acknowledged by `device` alone."""

    @classmethod
    def of(cls, receipt: InboxValue, now: int | None) -> _Acknowledgements:
        def live(pairs: Iterable[tuple[bytes, int]]) -> frozenset[str]:
            return frozenset(eid.hex() for eid, exp in pairs if now is None or exp > now)

        return cls(live(receipt.acknowledged), receipt.device, live(receipt.device_acknowledged))

    def implied_by(self, other: _Acknowledgements) -> bool:
        """True if `other` makes every acknowledgement this one makes: an id this one lists for
        every device, `other` lists so; one it lists for its device, `other` lists for every
        device or for the same device."""
        if not self.everyone <= other.everyone:
            return False
        rest = self.own - other.everyone
        return not rest or (other.device == self.device and rest <= other.own)


class _Coverage:
    """The acknowledgements of a page's receipts together, and the rule for dropping an entry."""

    def __init__(self, receipts: Iterable[_Acknowledgements]) -> None:
        self.everyone: set[str] = set()
        self.by_device: dict[bytes, set[str]] = {}
        for acks in receipts:
            self.everyone |= acks.everyone
            if acks.own:
                self.by_device.setdefault(acks.device, set()).update(acks.own)
        self.listed = self.everyone.union(*self.by_device.values())

    def acknowledged(self, id2: str, devices: Sequence[bytes]) -> bool:
        """Seed 003 "Message Syncing": an entry is acknowledged (holders drop it and refuse it
        back) once a receipt lists it for every device, or each device it names has listed it
        (naming none, once any receipt lists it)."""
        # seed 003 "Message Syncing" (issue 17): every device named, or a receipt for all
        if id2 in self.everyone:
            return True
        if not devices:
            return id2 in self.listed
        return all(id2 in self.by_device.get(tag, ()) for tag in devices)


def _merge_parts(values: Iterable[Value], now: int | None) -> tuple[list[Value], set[str]]:
    """The merged values (see `_merge`) and the id2s of the entries dropped as acknowledged."""
    best: dict[str, tuple[tuple[int, bytes], Value]] = {}
    for value in values:
        if now is not None and value.expirationDate <= now:
            continue
        rank = (value.creationDate, value.SerializeToString(deterministic=True))
        held = best.get(value.id2)
        if held is None or rank > held[0]:
            best[value.id2] = (rank, value)
    receipts: list[tuple[tuple[int, bytes], _Acknowledgements, Value]] = []
    entries: list[tuple[Value, tuple[bytes, ...]]] = []
    for rank, value in best.values():
        parsed = _parsed(value)
        if parsed is not None and parsed.kind == "receipt":
            receipts.append((rank, _Acknowledgements.of(parsed, now), value))
        else:
            entries.append((value, parsed.devices if parsed is not None else ()))
    maximal = [
        (acks, value)
        for rank, acks, value in receipts
        if not any(other > rank and acks.implied_by(by) for other, by, _ in receipts)
    ]
    coverage = _Coverage(acks for acks, _ in maximal)
    kept = [value for _, value in maximal]
    dropped: set[str] = set()
    for value, devices in entries:
        if coverage.acknowledged(value.id2, devices):
            dropped.add(value.id2)
        else:
            kept.append(value)
    return sorted(kept, key=lambda value: value.id2), dropped


def _merge(values: Iterable[Value], now: int | None) -> list[Value]:
    """The newest value per id2 (then the canonical bytes), expired values dropped; then the
    receipts dominated by another one dropped, and the acknowledged entries; sorted by id2.

    Receipt `a` is dominated by `b` when `b` is newer (creation date, then canonical bytes) and
    makes every acknowledgement of `a` live at `now` (`_Acknowledgements.implied_by`): a strict
    partial order, so keeping the maximal receipts of the union is idempotent, commutative and
    associative, and the kept receipts acknowledge all that every receipt does (each dropped
    one is dominated by a kept one). An entry's devices are part of its id, so whether it is
    acknowledged does not depend on which version of it is kept."""
    return _merge_parts(values, now)[0]


def _counts(values: Iterable[Value]) -> tuple[int, int, int]:
    """(handshakes and messages, receipts, serialized bytes of the receipts) among `values`."""
    receipts = entries = receipt_bytes = 0
    for value in values:
        parsed = _parsed(value)
        if parsed is None or parsed.kind != "receipt":
            entries += 1
        else:
            receipts += 1
            receipt_bytes += value.ByteSize() + 3  # and its framing in the record
    return entries, receipts, receipt_bytes


def _check_entry(
    uid: str, author_uid: bytes, parsed: InboxValue, body: Handshake | ChatMessage
) -> None:
    """A handshake or message (`body`): lifetime floor, addressed to this inbox, signed by the
    sender it names, its id derived from sender and nonce, a handshake's key the sender's."""
    if parsed.expiration - parsed.timestamp < MIN_ENTRY_TTL_MS:
        raise InvalidRecord(
            "ttl_too_short", "seed 003: handshakes and messages live at least 3 days"
        )
    if body.recipient_uid.hex() != uid:
        raise InvalidRecord("recipient_mismatch", "the entry is addressed to another uid")
    if body.sender_uid != author_uid:
        raise InvalidRecord(
            "sender_uid_mismatch",
            "the sender uid is not SHA-1 of the sender's key",
            forgery=True,
        )
    if entry_id(body.sender_uid, body.nonce, body.recipient_devices) != parsed.entry_id:
        raise InvalidRecord(
            "bad_entry_id", "the id is not derived from sender, nonce and recipient devices"
        )
    if isinstance(body, Handshake) and body.x25519_key != _x25519_of(body.sender_public_key):
        raise InvalidRecord(
            "x25519_key_mismatch",
            "the handshake key is not the sender's identity key",
            forgery=True,
        )


class ChatValidator:
    """Validator of the ``chat`` namespace (``/chat/<uid>/<page>/``).

    A handshake or message must be signed by its sender, whose uid is the SHA-1 of the key that
    signed, addressed to the path's uid, on the page its id picks (its id derived from sender,
    nonce and the recipient devices it names), and live 3 to 7 days; a receipt must be signed
    by the path's uid and list only ids of the path's page. A page holds
    at most `max_entries` handshakes and messages and `max_receipts` receipts of at most
    `RECEIPT_BYTES_PER_PAGE` bytes together; `admit` refuses what would overflow it and copies
    of acknowledged entries.
    """

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES_PER_PAGE,
        max_receipts: int = MAX_RECEIPTS_PER_PAGE,
        clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
    ) -> None:
        if max_entries < 1 or max_receipts < 1:
            raise ValueError("a page must hold at least one entry and one receipt")
        if (
            max_entries * (MAX_ENTRY_VALUE_SIZE + 3) + RECEIPT_BYTES_PER_PAGE + _RECORD_OVERHEAD
            > MAX_RECORD_SIZE
        ):
            raise ValueError("a full page would not fit one record")
        self.max_entries = max_entries
        self.max_receipts = max_receipts
        self.clock_skew_ms = clock_skew_ms

    def validate(self, key: str, record: Record, now: int) -> None:
        """Raise `InvalidRecord` unless every value is a valid, live, correctly signed entry of
        this page and the page is within its bounds."""
        uid, page = parse_chat_key(key)
        if record.id1 != uid:
            raise InvalidRecord("client_id_mismatch", f"id1 {record.id1!r} is not the path's uid")
        check_update_date(record, now, self.clock_skew_ms)
        check_value_count(record, self.max_entries + self.max_receipts)
        for value in record.values:
            self._validate_value(uid, page, value, now)
        self._check_bounds(*_counts(record.values))

    def _check_bounds(self, entries: int, receipts: int, receipt_bytes: int) -> None:
        if entries > self.max_entries:
            raise InvalidRecord(
                "inbox_full", f"{entries} entries on one page, at most {self.max_entries}"
            )
        if receipts > self.max_receipts:
            raise InvalidRecord(
                "receipts_full", f"{receipts} receipts on one page, at most {self.max_receipts}"
            )
        if receipt_bytes > RECEIPT_BYTES_PER_PAGE:
            raise InvalidRecord(
                "receipts_full",
                f"{receipt_bytes} bytes of receipts on one page, at most {RECEIPT_BYTES_PER_PAGE}",
            )

    def _validate_value(self, uid: str, page: int, value: Value, now: int) -> EntryKind:
        """Check one value: its framing and page, its dates, who wrote it, its signature."""
        parsed = parse_inbox_value(value.value)
        self._check_framing(page, value, parsed)
        check_lifetime(
            parsed.timestamp,
            parsed.expiration,
            now,
            max_ttl_ms=MAX_ENTRY_TTL_MS,  # seed 003: kept 3-7 days
            clock_skew_ms=self.clock_skew_ms,
        )
        author_uid = identity_id(parsed.author_key)
        if not isinstance(parsed.body, Receipt):
            _check_entry(uid, author_uid, parsed, parsed.body)
        elif author_uid.hex() != uid:
            raise InvalidRecord(
                "not_recipient", "a receipt must be signed by the inbox's owner", forgery=True
            )
        signed = signing_input(_CONTEXTS[parsed.kind], parsed.signed_bytes)
        if not verify_signature(parsed.author_key, signed, parsed.signature):
            raise InvalidRecord(
                "bad_signature", f"the {parsed.kind}'s signature does not verify", forgery=True
            )
        return parsed.kind

    @staticmethod
    def _check_framing(page: int, value: Value, parsed: InboxValue) -> None:
        """Size, id2, page and the unsigned dates of a value agree with what it carries."""
        size = value.ByteSize()
        limit = MAX_RECEIPT_VALUE_SIZE if parsed.kind == "receipt" else MAX_ENTRY_VALUE_SIZE
        if size > limit:
            raise RecordTooLarge(size, limit, "value")
        if value.id2 != parsed.id2:
            raise InvalidRecord("id_mismatch", "id2 is not the entry's (or the receipt's) id")
        for eid in [eid for eid, _ in parsed.listed] or [parsed.entry_id]:
            if page_of(eid) != page:
                raise InvalidRecord(
                    "wrong_page", f"entry {eid.hex()} belongs on page {page_of(eid)}"
                )
        if len(parsed.listed) > MAX_RECEIPT_IDS:
            raise InvalidRecord(
                "receipts_full", f"a receipt lists at most {MAX_RECEIPT_IDS} entry ids"
            )
        if value.creationDate != parsed.timestamp or value.expirationDate != parsed.expiration:
            raise InvalidRecord(
                "unsigned_date_mismatch", "the value's dates differ from the signed ones"
            )

    def select(self, key: str, records: Sequence[Record]) -> int:
        """The most recently updated record (ties broken by canonical bytes)."""
        return select_by_rank(records, record_rank)

    def consolidate(self, key: str, records: Sequence[Record], now: int | None = None) -> Record:
        """One value per id2 (the newest), expired values dropped, receipts dominated by a newer
        one making all their live acknowledgements dropped, and the acknowledged entries (by
        each device they name) dropped. Bounds are not applied here (that would make the merge
        depend on order); `admit` keeps every held page within them."""
        return merged_record(key, records, _merge((v for r in records for v in r.values), now))

    def admit(self, key: str, held: Record, incoming: Record, now: int) -> None:
        """Refuse `incoming` (valid on its own) if it only brings back entries acknowledged on
        the `held` page (``acknowledged``, final: a replay, or a stale copy of the page) or if
        merging it would overflow the page (``inbox_full``, ``receipts_full``): a full page
        keeps what it holds. An entry some of its devices have not acknowledged yet is not
        refused: the page keeps it for them.

        A copy that also carries something new is merged: the receipts still win over the
        acknowledged entries in it. (A sender's node holds all it sent to one page as one
        record, so refusing that whole copy would lose a new message next to a read one.)"""
        merged, dropped = _merge_parts([*held.values, *incoming.values], now)
        replayed = [v.id2 for v in incoming.values if v.id2 in dropped]
        if replayed and merged == _merge(held.values, now):
            raise InvalidRecord(
                "acknowledged", f"entry {replayed[0]} was acknowledged by its recipient", final=True
            )
        self._check_bounds(*_counts(merged))
