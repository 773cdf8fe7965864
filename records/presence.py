"""Presence announcements (seed 001): "user X is reachable through node Y", signed by both.

A presence record lives at ``/presence/<uid>/``; `id1` is the client's ID, and each `Value` is one
device: `id2` is the hosting node's ID and `value` a `SignedAnnouncement`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from records.errors import InvalidRecord, RecordTooLarge
from records.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    identity_id,
    signing_input,
    verify_signature,
)
from records.keys import parse_id_path
from records.keys import presence_key as presence_path
from records.presence_pb2 import AnnouncementMessage, SignedAnnouncement
from records.record_pb2 import Record, Value
from records.validation import (
    DEFAULT_CLOCK_SKEW_MS,
    MAX_RECORD_SIZE,
    check_lifetime,
    check_update_date,
    check_value_count,
    consolidate_values,
    record_rank,
    select_by_rank,
)

ANNOUNCEMENT_CONTEXT = b"dht-announcement-v1"
DEFAULT_MAX_DEVICES = 16
DEFAULT_PRESENCE_TTL_MS = 24 * 3600 * 1000
MAX_PRESENCE_VALUE_SIZE = 480  # a real announcement Value is about 400 bytes
_RECORD_OVERHEAD = 128  # key, id1, updateDate and framing of a presence record


def client_announcement(
    client: Identity,
    node_public_key: bytes,
    *,
    handshake_key: bytes,
    presence_key: bytes,
    expiration: int,
    now: int,
) -> tuple[bytes, bytes]:
    """The client's half of an announcement: (marshaled `AnnouncementMessage`, client signature).

    The node named by `node_public_key` adds its signature with `countersign`. `handshake_key`
    (the node's) and `presence_key` (the client's) are 32-byte X25519 public keys; `expiration`
    and `now` are Unix ms.
    """
    for name, key in (
        ("node_public_key", node_public_key),
        ("handshake_key", handshake_key),
        ("presence_key", presence_key),
    ):
        if len(key) != PUBLIC_KEY_SIZE:
            raise ValueError(f"{name} must be 32 bytes, got {len(key)}")
    message = AnnouncementMessage(
        node_identity=node_public_key,
        client_identity=client.public_key,
        handshake_key=handshake_key,
        fingerprint=hashlib.sha256(node_public_key).digest(),
        expiration=expiration,
        presence_key=presence_key,
        created=now,
    ).SerializeToString(deterministic=True)
    return message, client.sign(signing_input(ANNOUNCEMENT_CONTEXT, message))


def countersign(message: bytes, client_signature: bytes, node: Identity) -> Record:
    """The node's half: check the client's signature and that the message names `node`, sign it,
    and wrap it in a record ready to put. Raises `InvalidRecord` if the client's half is bad."""
    try:
        parsed = AnnouncementMessage.FromString(message)
    except DecodeError as exc:
        raise InvalidRecord("malformed_value", f"announcement does not parse: {exc}") from exc
    if parsed.node_identity != node.public_key:
        raise InvalidRecord("node_id_mismatch", "the announcement names another node")
    signed = signing_input(ANNOUNCEMENT_CONTEXT, message)
    if not verify_signature(parsed.client_identity, signed, client_signature):
        raise InvalidRecord(
            "bad_client_signature", "the client's signature does not verify", forgery=True
        )
    envelope = SignedAnnouncement(
        message=message, client_signature=client_signature, node_signature=node.sign(signed)
    ).SerializeToString(deterministic=True)
    uid = identity_id(parsed.client_identity)
    return make_put_record(
        presence_path(uid), uid.hex(), node.id_hex, envelope, parsed.expiration, parsed.created
    )


def make_announcement(
    client: Identity,
    node: Identity,
    *,
    handshake_key: bytes,
    presence_key: bytes,
    expiration: int,
    now: int,
) -> bytes:
    """A marshaled `SignedAnnouncement` that `client` is reachable through `node`, both halves
    made here (`client_announcement` then `countersign` when they live in different places)."""
    message, client_signature = client_announcement(
        client,
        node.public_key,
        handshake_key=handshake_key,
        presence_key=presence_key,
        expiration=expiration,
        now=now,
    )
    signed = signing_input(ANNOUNCEMENT_CONTEXT, message)
    return SignedAnnouncement(
        message=message, client_signature=client_signature, node_signature=node.sign(signed)
    ).SerializeToString(deterministic=True)


def make_put_record(
    path: str,
    id1: str | bytes,
    id2: str | bytes,
    signed_message: bytes,
    expire_time: int,
    now: int,
) -> Record:
    """A record ready to be put, mirroring seed 001's ``MakePutRecord``.

    `id1`/`id2` are the client's and node's identity strings (lowercase hex IDs; bytes are taken
    as their UTF-8 text, as the seed's ``byte(pki.Identity.String())``). `now` becomes both the
    record's `updateDate` and the value's `creationDate`.
    """
    client = id1.decode("utf-8") if isinstance(id1, bytes) else id1
    node = id2.decode("utf-8") if isinstance(id2, bytes) else id2
    record = Record(key=path, updateDate=now, id1=client)
    record.values.append(
        Value(id2=node, creationDate=now, expirationDate=expire_time, value=signed_message)
    )
    return record


def make_presence_record(
    client: Identity,
    node: Identity,
    *,
    handshake_key: bytes,
    presence_key: bytes,
    now: int,
    ttl_ms: int = DEFAULT_PRESENCE_TTL_MS,
) -> Record:
    """A complete presence record: `client` is reachable through `node` for `ttl_ms` from `now`."""
    expiration = now + ttl_ms
    announcement = make_announcement(
        client,
        node,
        handshake_key=handshake_key,
        presence_key=presence_key,
        expiration=expiration,
        now=now,
    )
    return make_put_record(
        presence_path(client.id), client.id_hex, node.id_hex, announcement, expiration, now
    )


def parse_announcement(data: bytes) -> tuple[SignedAnnouncement, AnnouncementMessage]:
    """Parse a `SignedAnnouncement` and its message; `InvalidRecord("malformed_value")` if bad."""
    envelope = SignedAnnouncement()
    message = AnnouncementMessage()
    try:
        envelope.ParseFromString(data)
        message.ParseFromString(envelope.message)
    except DecodeError as exc:
        raise InvalidRecord("malformed_value", f"announcement does not parse: {exc}") from exc
    sizes = {
        "node_identity": len(message.node_identity),
        "client_identity": len(message.client_identity),
        "handshake_key": len(message.handshake_key),
        "presence_key": len(message.presence_key),
        "fingerprint": len(message.fingerprint),
    }
    for field, size in sizes.items():
        if size != PUBLIC_KEY_SIZE:
            raise InvalidRecord("malformed_value", f"{field} is {size} bytes, expected 32")
    for field, sig in (("client", envelope.client_signature), ("node", envelope.node_signature)):
        if len(sig) != SIGNATURE_SIZE:
            raise InvalidRecord(
                "malformed_value", f"{field} signature is {len(sig)} bytes, expected 64"
            )
    return envelope, message


class PresenceValidator:
    """Validator of the ``presence`` namespace.

    Every value must be an announcement signed by the client whose ID is in the path and by the
    node named in `id2`, consistent (fingerprint, dates), alive at `now` and not too long-lived.
    """

    def __init__(
        self,
        *,
        max_devices: int = DEFAULT_MAX_DEVICES,
        max_ttl_ms: int = DEFAULT_PRESENCE_TTL_MS,
        clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
        max_value_size: int = MAX_PRESENCE_VALUE_SIZE,
    ) -> None:
        if max_devices < 1:
            raise ValueError("max_devices must be at least 1")
        # Bounding each value keeps a full record under the size limit, so consolidation only ever
        # has to count values (and stays associative).
        if max_devices * (max_value_size + 3) + _RECORD_OVERHEAD > MAX_RECORD_SIZE:
            raise ValueError(
                f"{max_devices} values of {max_value_size} bytes cannot fit in {MAX_RECORD_SIZE}"
            )
        self.max_devices = max_devices
        self.max_ttl_ms = max_ttl_ms
        self.clock_skew_ms = clock_skew_ms
        self.max_value_size = max_value_size

    def validate(self, key: str, record: Record, now: int) -> None:
        """Raise `InvalidRecord` unless every value is a valid, live, double-signed announcement."""
        uid = parse_id_path("presence", key)
        if record.id1 != uid:
            raise InvalidRecord("client_id_mismatch", f"id1 {record.id1!r} is not the path's uid")
        check_update_date(record, now, self.clock_skew_ms)
        check_value_count(record, self.max_devices)
        for value in record.values:
            self._validate_value(uid, value, now)

    def _validate_value(self, uid: str, value: Value, now: int) -> None:
        size = value.ByteSize()
        if size > self.max_value_size:
            raise RecordTooLarge(size, self.max_value_size, "value")
        envelope, message = parse_announcement(value.value)
        client_id = identity_id(message.client_identity).hex()
        node_id = identity_id(message.node_identity).hex()
        if client_id != uid:
            if client_id == value.id2 and node_id == uid:
                raise InvalidRecord(
                    "identities_swapped", "the client and node identities are swapped"
                )
            raise InvalidRecord(
                "uid_mismatch", "the path's uid is not SHA-1 of the client key", forgery=True
            )
        if node_id != value.id2:
            raise InvalidRecord(
                "node_id_mismatch", "id2 is not SHA-1 of the node identity key", forgery=True
            )
        if message.fingerprint != hashlib.sha256(message.node_identity).digest():
            raise InvalidRecord(
                "fingerprint_mismatch", "fingerprint is not SHA-256 of the node key"
            )
        if value.creationDate != message.created or value.expirationDate != message.expiration:
            raise InvalidRecord(
                "unsigned_date_mismatch", "the value's dates differ from the signed ones"
            )
        check_lifetime(
            message.created,
            message.expiration,
            now,
            max_ttl_ms=self.max_ttl_ms,
            clock_skew_ms=self.clock_skew_ms,
        )
        signed = signing_input(ANNOUNCEMENT_CONTEXT, envelope.message)
        client_ok = verify_signature(message.client_identity, signed, envelope.client_signature)
        node_ok = verify_signature(message.node_identity, signed, envelope.node_signature)
        if not (client_ok or node_ok):
            raise InvalidRecord(
                "bad_signatures", "neither signature matches the message", forgery=True
            )
        if not client_ok:
            raise InvalidRecord(
                "bad_client_signature", "the client's signature does not verify", forgery=True
            )
        if not node_ok:
            raise InvalidRecord(
                "bad_node_signature", "the node's signature does not verify", forgery=True
            )

    def select(self, key: str, records: Sequence[Record]) -> int:
        """The most recently updated record (ties broken by canonical bytes)."""
        return select_by_rank(records, record_rank)

    def consolidate(self, key: str, records: Sequence[Record], now: int | None = None) -> Record:
        """One value per device (`id2`), the newest signed one wins; expired ones dropped."""
        return consolidate_values(key, records, now, self.max_devices)
