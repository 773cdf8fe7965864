"""User metas (seed 003): a user's display name and small avatar, signed by the user's key.

A meta record lives at ``/meta/<uid>/`` with exactly one value; the newest signed meta wins.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from records.errors import InvalidRecord
from records.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    identity_id,
    signing_input,
    verify_signature,
)
from records.keys import meta_key, parse_id_path
from records.meta_pb2 import SignedUserMeta, UserMeta
from records.record_pb2 import Record, Value
from records.validation import (
    DEFAULT_CLOCK_SKEW_MS,
    Rank,
    check_lifetime,
    check_update_date,
    check_value_count,
    consolidate_single,
    encode_record,
    select_by_rank,
)

META_CONTEXT = b"dht-user-meta-v1"
MAX_META_TTL_MS = 7 * 24 * 3600 * 1000  # seed 003: metas are kept 3-7 days
DEFAULT_META_TTL_MS = MAX_META_TTL_MS
MAX_NAME_CHARS = 64
MAX_AVATAR_BYTES = 4096  # "small avatar": the record must fit one 8 KiB datagram


def make_meta_record(
    user: Identity,
    *,
    name: str,
    avatar: bytes = b"",
    now: int,
    ttl_ms: int = DEFAULT_META_TTL_MS,
) -> Record:
    """The signed meta record of `user` at `/meta/<uid>/`, valid for `ttl_ms` from `now`."""
    expiration = now + ttl_ms
    meta = UserMeta(
        uid=user.id,
        name=name,
        avatar=avatar,
        timestamp=now,
        public_key=user.public_key,
        expiration=expiration,
    ).SerializeToString(deterministic=True)
    signed = SignedUserMeta(meta=meta, signature=user.sign(signing_input(META_CONTEXT, meta)))
    record = Record(key=meta_key(user.id), updateDate=now, id1=user.id_hex)
    record.values.append(
        Value(
            id2=user.id_hex,
            creationDate=now,
            expirationDate=expiration,
            value=signed.SerializeToString(deterministic=True),
        )
    )
    return record


def parse_meta(data: bytes) -> tuple[SignedUserMeta, UserMeta]:
    """Parse a `SignedUserMeta` and its `UserMeta`; `InvalidRecord("malformed_value")` if bad."""
    envelope = SignedUserMeta()
    meta = UserMeta()
    try:
        envelope.ParseFromString(data)
        meta.ParseFromString(envelope.meta)
    except DecodeError as exc:
        raise InvalidRecord("malformed_value", f"meta does not parse: {exc}") from exc
    if len(meta.public_key) != PUBLIC_KEY_SIZE:
        raise InvalidRecord("malformed_value", f"public_key is {len(meta.public_key)} bytes")
    if len(envelope.signature) != SIGNATURE_SIZE:
        raise InvalidRecord("malformed_value", f"signature is {len(envelope.signature)} bytes")
    return envelope, meta


def _meta_rank(record: Record) -> Rank:
    # Validated metas have one value whose creationDate is the signed timestamp.
    created = record.values[0].creationDate if record.values else record.updateDate
    return (created, encode_record(record))


class MetaValidator:
    """Validator of the ``meta`` namespace: one value, signed by the key the uid is the hash of."""

    def __init__(
        self,
        *,
        max_ttl_ms: int = MAX_META_TTL_MS,
        clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
        max_name_chars: int = MAX_NAME_CHARS,
        max_avatar_bytes: int = MAX_AVATAR_BYTES,
    ) -> None:
        if max_ttl_ms > MAX_META_TTL_MS:
            raise ValueError("seed 003: a meta lives at most 7 days")
        self.max_ttl_ms = max_ttl_ms
        self.clock_skew_ms = clock_skew_ms
        self.max_name_chars = max_name_chars
        self.max_avatar_bytes = max_avatar_bytes

    def validate(self, key: str, record: Record, now: int) -> None:
        """Raise `InvalidRecord` unless the record holds one live meta signed by the path's uid."""
        uid = parse_id_path("meta", key)
        if record.id1 != uid:
            raise InvalidRecord("client_id_mismatch", f"id1 {record.id1!r} is not the path's uid")
        check_update_date(record, now, self.clock_skew_ms)
        check_value_count(record, 1)
        value = record.values[0]
        if value.id2 != uid:
            raise InvalidRecord("node_id_mismatch", "a meta value's id2 must be the uid")
        envelope, meta = parse_meta(value.value)
        if identity_id(meta.public_key).hex() != uid or meta.uid != bytes.fromhex(uid):
            raise InvalidRecord(
                "uid_mismatch", "the path's uid is not SHA-1 of the meta's key", forgery=True
            )
        if value.creationDate != meta.timestamp or value.expirationDate != meta.expiration:
            raise InvalidRecord(
                "unsigned_date_mismatch", "the value's dates differ from the signed ones"
            )
        check_lifetime(
            meta.timestamp,
            meta.expiration,
            now,
            max_ttl_ms=self.max_ttl_ms,
            clock_skew_ms=self.clock_skew_ms,
        )
        if len(meta.name) > self.max_name_chars:
            raise InvalidRecord(
                "name_too_long", f"name has {len(meta.name)} characters, max {self.max_name_chars}"
            )
        if len(meta.avatar) > self.max_avatar_bytes:
            raise InvalidRecord(
                "avatar_too_large",
                f"avatar is {len(meta.avatar)} bytes, max {self.max_avatar_bytes}",
            )
        signed = signing_input(META_CONTEXT, envelope.meta)
        if not verify_signature(meta.public_key, signed, envelope.signature):
            raise InvalidRecord(
                "bad_signature", "the meta's signature does not verify", forgery=True
            )

    def select(self, key: str, records: Sequence[Record]) -> int:
        """The newest signed meta (ties broken by canonical bytes)."""
        return select_by_rank(records, _meta_rank)

    def consolidate(self, key: str, records: Sequence[Record], now: int | None = None) -> Record:
        """The newest meta still alive at `now` (an empty record if none is)."""
        return consolidate_single(key, records, now, _meta_rank)
