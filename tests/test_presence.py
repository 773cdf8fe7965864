"""Presence records: the valid one is accepted, each kind of forgery refused with its reason."""

from __future__ import annotations

import hashlib

import pytest

from records import (
    AnnouncementMessage,
    Identity,
    InvalidRecord,
    PresenceValidator,
    Record,
    RecordTooLarge,
    Value,
    default_validator,
    make_put_record,
    presence_key,
)
from records.identity import signing_input
from records.presence import ANNOUNCEMENT_CONTEXT
from records.presence_pb2 import SignedAnnouncement
from tests.records_factory import HOUR, NOW, identity, presence, x25519

CLIENT = identity("alice")
NODE = identity("node-1")
KEY = presence_key(CLIENT.id)


def announcement(
    *,
    client: Identity = CLIENT,
    node: Identity = NODE,
    client_signer: Identity | None = None,
    node_signer: Identity | None = None,
    created: int = NOW,
    expiration: int = NOW + HOUR,
    fingerprint: bytes | None = None,
) -> bytes:
    """A signed announcement with any field or signer overridden."""
    message = AnnouncementMessage(
        node_identity=node.public_key,
        client_identity=client.public_key,
        handshake_key=x25519("node"),
        fingerprint=fingerprint or hashlib.sha256(node.public_key).digest(),
        expiration=expiration,
        presence_key=x25519("client"),
        created=created,
    ).SerializeToString()
    signed = signing_input(ANNOUNCEMENT_CONTEXT, message)
    return SignedAnnouncement(
        message=message,
        client_signature=(client_signer or client).sign(signed),
        node_signature=(node_signer or node).sign(signed),
    ).SerializeToString()


def record_of(
    signed: bytes,
    *,
    key: str = KEY,
    id1: str = CLIENT.id_hex,
    id2: str = NODE.id_hex,
    created: int = NOW,
    expiration: int = NOW + HOUR,
) -> Record:
    record = make_put_record(key, id1, id2, signed, expiration, created)
    record.values[0].creationDate = created
    return record


def refusal(record: Record, now: int = NOW) -> str:
    with pytest.raises(InvalidRecord) as info:
        default_validator().validate(record.key, record, now)
    assert info.value.message  # every refusal explains itself
    return info.value.reason


def test_valid_record_is_accepted() -> None:
    record = presence()
    default_validator().validate(record.key, record, NOW)
    default_validator().validate(record.key, record, NOW + HOUR - 1)


def test_forged_client_signature() -> None:
    signed = announcement(client_signer=identity("mallory"))
    assert refusal(record_of(signed)) == "bad_client_signature"


def test_forged_node_signature() -> None:
    signed = announcement(node_signer=identity("mallory"))
    assert refusal(record_of(signed)) == "bad_node_signature"


def test_keys_swapped() -> None:
    signed = announcement(client=NODE, node=CLIENT)
    assert refusal(record_of(signed)) == "identities_swapped"


def test_one_flipped_bit_in_message() -> None:
    envelope = SignedAnnouncement.FromString(announcement())
    message = bytearray(envelope.message)
    at = bytes(message).index(x25519("client"))  # inside the presence key
    message[at + 5] ^= 0x10
    envelope.message = bytes(message)
    assert refusal(record_of(envelope.SerializeToString())) == "bad_signatures"


def test_truncated_bytes() -> None:
    signed = announcement()
    assert refusal(record_of(signed[: len(signed) - 10])) == "malformed_value"
    assert refusal(record_of(signed[:40])) == "malformed_value"


def test_uid_in_path_not_matching_the_key() -> None:
    other = identity("bob")
    record = record_of(announcement(), key=presence_key(other.id), id1=other.id_hex)
    assert refusal(record) == "uid_mismatch"


def test_id1_not_matching_the_path() -> None:
    record = record_of(announcement(), id1=identity("bob").id_hex)
    assert refusal(record) == "client_id_mismatch"


def test_id2_not_matching_the_node() -> None:
    record = record_of(announcement(), id2=identity("node-2").id_hex)
    assert refusal(record) == "node_id_mismatch"


def test_fingerprint_mismatch() -> None:
    record = record_of(announcement(fingerprint=hashlib.sha256(b"other").digest()))
    assert refusal(record) == "fingerprint_mismatch"


def test_unsigned_dates_cannot_be_changed() -> None:
    record = record_of(announcement())
    record.values[0].expirationDate += HOUR
    assert refusal(record) == "unsigned_date_mismatch"
    record = record_of(announcement())
    record.values[0].creationDate += 1
    assert refusal(record) == "unsigned_date_mismatch"


def test_expired() -> None:
    assert refusal(presence(), now=NOW + HOUR) == "expired"


def test_future_dated() -> None:
    later = NOW + 10 * 60 * 1000
    record = record_of(
        announcement(created=later, expiration=later + HOUR), created=later, expiration=later + HOUR
    )
    assert refusal(record) == "future_dated"
    # inside the allowed clock skew (5 min) it is fine
    soon = NOW + 60 * 1000
    ok = record_of(
        announcement(created=soon, expiration=soon + HOUR), created=soon, expiration=soon + HOUR
    )
    default_validator().validate(ok.key, ok, NOW)


def test_future_update_date() -> None:
    record = presence()
    record.updateDate = NOW + 3600 * 1000
    assert refusal(record) == "future_dated"


def test_ttl_too_long() -> None:
    record = presence(ttl_ms=25 * HOUR)
    assert refusal(record) == "ttl_too_long"
    # the limit is configurable
    PresenceValidator(max_ttl_ms=48 * HOUR).validate(record.key, record, NOW)


def test_oversized() -> None:
    record = presence()
    record.values[0].value += b"\x00" * 9000
    with pytest.raises(RecordTooLarge) as info:
        default_validator().validate(record.key, record, NOW)
    assert info.value.reason == "too_large"


def test_oversized_value() -> None:
    record = presence()
    record.values[0].value += b"\x7a\x80\x01" + b"\x00" * 128  # unknown field 15, 128 bytes
    assert refusal(record) == "value_too_large"


def test_too_many_values() -> None:
    record = presence(node="node-0")
    for i in range(1, 17):
        record.values.append(presence(node=f"node-{i}").values[0])
    assert len(record.values) == 17
    assert refusal(record) == "too_many_values"
    record = presence(node="node-0")
    record.values.append(presence(node="node-1").values[0])
    with pytest.raises(InvalidRecord) as info:
        PresenceValidator(max_devices=1).validate(record.key, record, NOW)
    assert info.value.reason == "too_many_values"


def test_duplicate_and_missing_values() -> None:
    record = presence()
    record.values.append(record.values[0])
    assert refusal(record) == "duplicate_value"
    empty = presence()
    del empty.values[:]
    assert refusal(empty) == "no_values"


def test_unknown_namespace() -> None:
    record = presence()
    record.key = "/weshare/" + CLIENT.id_hex + "/"
    assert refusal(record) == "unknown_namespace"


def test_bad_keys() -> None:
    for key in ("presence", "/presence", "/presence/XYZ/", f"/presence/{CLIENT.id_hex.upper()}/"):
        record = presence()
        record.key = key
        assert refusal(record) == "bad_key", key


def test_record_key_must_match_the_stored_key() -> None:
    record = presence()
    with pytest.raises(InvalidRecord) as info:
        default_validator().validate(presence_key(identity("bob").id), record, NOW)
    assert info.value.reason == "key_mismatch"


def test_invalid_limits_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="cannot fit"):
        PresenceValidator(max_devices=100)
    with pytest.raises(ValueError, match="at least 1"):
        PresenceValidator(max_devices=0)


def test_consolidate_keeps_one_value_per_device_newest_wins() -> None:
    v = default_validator()
    old = presence(node="phone", now=NOW)
    new = presence(node="phone", now=NOW + 1000)
    laptop = presence(node="laptop", now=NOW + 500)
    merged = v.consolidate(KEY, [new, laptop, old], now=NOW + 2000)
    assert [val.creationDate for val in merged.values if val.id2 == identity("phone").id_hex] == [
        NOW + 1000
    ]
    assert len(merged.values) == 2
    assert merged.updateDate == NOW + 1000
    v.validate(KEY, merged, NOW + 2000)
    # no roll-back: replaying the old announcement changes nothing
    assert v.consolidate(KEY, [merged, old], now=NOW + 2000) == merged


def test_consolidate_drops_expired_and_bounds_devices() -> None:
    short = presence(node="short", ttl_ms=1000)
    long = presence(node="long")
    merged = PresenceValidator().consolidate(KEY, [short, long], now=NOW + 1000)
    assert [val.id2 for val in merged.values] == [identity("long").id_hex]
    many = [presence(node=f"n{i}", now=NOW + i) for i in range(5)]
    kept = PresenceValidator(max_devices=3).consolidate(KEY, many, now=NOW)
    assert sorted(val.creationDate for val in kept.values) == [NOW + 2, NOW + 3, NOW + 4]


def test_select_prefers_newest() -> None:
    older, newer = presence(now=NOW), presence(now=NOW + 5)
    assert default_validator().select(KEY, [older, newer]) == 1
    assert default_validator().select(KEY, [newer, older]) == 0
    with pytest.raises(ValueError, match="at least one"):
        default_validator().select(KEY, [])


def test_value_with_garbage_is_malformed() -> None:
    record = presence()
    record.values[0].CopyFrom(
        Value(id2=NODE.id_hex, creationDate=NOW, expirationDate=NOW + HOUR, value=b"\xff\xff\xff")
    )
    assert refusal(record) == "malformed_value"
