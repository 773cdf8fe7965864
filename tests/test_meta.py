"""Meta records: signed by the uid's key, at most 7 days, newest wins."""

from __future__ import annotations

import pytest

from records import (
    InvalidRecord,
    MetaValidator,
    Record,
    default_validator,
    make_meta_record,
    meta_key,
)
from records.meta_pb2 import SignedUserMeta, UserMeta
from tests.records_factory import HOUR, NOW, identity, meta

DAY = 24 * HOUR


def refusal(record: Record, now: int = NOW) -> str:
    with pytest.raises(InvalidRecord) as info:
        default_validator().validate(record.key, record, now)
    return info.value.reason


def resign(record: Record, edit: str, value: object) -> Record:
    """The record with one field of its signed meta changed, signature left as it was."""
    envelope = SignedUserMeta.FromString(record.values[0].value)
    inner = UserMeta.FromString(envelope.meta)
    setattr(inner, edit, value)
    envelope.meta = inner.SerializeToString()
    out = Record()
    out.CopyFrom(record)
    out.values[0].value = envelope.SerializeToString()
    return out


def test_valid_meta_is_accepted() -> None:
    record = meta()
    default_validator().validate(record.key, record, NOW)
    assert record.key == meta_key(identity("alice").id)


def test_meta_signed_by_another_key_is_refused() -> None:
    alice, mallory = identity("alice"), identity("mallory")
    forged = make_meta_record(mallory, name="Alice", now=NOW, ttl_ms=HOUR)
    forged.key = meta_key(alice.id)
    forged.id1 = alice.id_hex
    forged.values[0].id2 = alice.id_hex
    assert refusal(forged) == "uid_mismatch"


def test_tampered_meta_is_refused() -> None:
    assert refusal(resign(meta(), "name", "Mallory")) == "bad_signature"


def test_meta_ttl_at_most_seven_days() -> None:
    default_validator().validate(meta(ttl_ms=7 * DAY).key, meta(ttl_ms=7 * DAY), NOW)
    assert refusal(meta(ttl_ms=7 * DAY + 1)) == "ttl_too_long"
    with pytest.raises(ValueError, match="7 days"):
        MetaValidator(max_ttl_ms=8 * DAY)


def test_meta_limits() -> None:
    assert refusal(meta(name="x" * 65)) == "name_too_long"
    big = make_meta_record(identity("alice"), name="A", avatar=b"\0" * 5000, now=NOW, ttl_ms=HOUR)
    assert refusal(big) == "avatar_too_large"
    two = meta()
    two.values.append(two.values[0])
    assert refusal(two) == "too_many_values"


def test_meta_expired_and_future() -> None:
    assert refusal(meta(), now=NOW + HOUR) == "expired"
    assert refusal(meta(now=NOW + HOUR)) == "future_dated"


def test_select_newest_meta_no_rollback() -> None:
    old, new = meta(name="Old", now=NOW), meta(name="New", now=NOW + 1)
    v = default_validator()
    assert v.select(old.key, [old, new]) == 1
    assert v.consolidate(old.key, [new, old], now=NOW) == new
    assert v.consolidate(old.key, [old, new], now=NOW) == new


def test_consolidate_drops_expired_meta() -> None:
    short = meta(name="Short", now=NOW + 1, ttl_ms=10)
    long = meta(name="Long", now=NOW, ttl_ms=HOUR)
    v = default_validator()
    assert v.consolidate(long.key, [short, long], now=NOW + 100) == long
    assert len(v.consolidate(long.key, [short], now=NOW + 100).values) == 0
