"""Record bytes from the wire: size limit and malformed input."""

from __future__ import annotations

import pytest

from records import MAX_RECORD_SIZE, InvalidRecord, RecordTooLarge, decode_record, encode_record
from records.keys import namespace_of
from tests.records_factory import presence


def test_decode_refuses_oversized_bytes() -> None:
    with pytest.raises(RecordTooLarge) as info:
        decode_record(b"\x00" * (MAX_RECORD_SIZE + 1))
    assert info.value.reason == "too_large"
    assert info.value.size == MAX_RECORD_SIZE + 1


def test_decode_refuses_malformed_bytes() -> None:
    data = encode_record(presence())
    for bad in (data[:-7], b"\xff\xff\xff\xff", b"\x0a\x05ab"):
        with pytest.raises(InvalidRecord) as info:
            decode_record(bad)
        assert info.value.reason == "malformed_record"


def test_decode_round_trip() -> None:
    record = presence()
    assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize("key", ["", "x", "/", "//", "/ns", "/" + "a" * 300 + "/x/"])
def test_bad_key_shapes(key: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        namespace_of(key)
    assert info.value.reason == "bad_key"
