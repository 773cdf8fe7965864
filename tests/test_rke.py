"""Key-exchange layouts (seed 002), byte for byte against the seed's samples, and every status
code path of the pure decoders."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from records.errors import RkeError
from records.rke import (
    GET_KEY,
    KEY_LENGTHS,
    POST_KEY,
    POST_KEY_SIZE,
    SIGNAL,
    PartLocation,
    PostKeyStatus,
    check_key,
    decode_get_key,
    decode_get_key_answer,
    decode_post_key,
    decode_signal,
    decode_signal_answer,
    encode_get_key,
    encode_get_key_answer,
    encode_post_key,
    encode_signal,
    encode_signal_answer,
    key_id_hash,
    parse_response,
    request,
    response,
    split_sizes,
)

CH = bytes(range(0xA0, 0xB0))
KEY_ID = bytes(range(0x10, 0x20))
KEY8 = bytes.fromhex("0102030405060708")


def from_sample(sample: str, fields: dict[str, list[int]]) -> bytes:
    """The bytes a seed sample draws: each two-letter code is replaced, in order, by the next
    byte of its field; hex pairs stand for themselves; '//' starts a comment."""
    out = bytearray()
    cursors = dict.fromkeys(fields, 0)
    for line in sample.strip().splitlines():
        for token in line.split("//")[0].split():
            if re.fullmatch(r"[0-9A-F]{2}", token):
                out.append(int(token, 16))
            else:
                out.append(fields[token][cursors[token]])
                cursors[token] += 1
    return bytes(out)


# seed 002, Post Key sample: an 8-byte key hidden in the padding (third row, fourth byte)
POST_KEY_SAMPLE = """
CH CH CH CH CH CH CH CH CH CH CH CH CH CH CH CH  //Challenge
ID ID ID ID ID ID ID ID ID ID ID ID ID ID ID ID //Key ID
KS
KL
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 KY KY KY KY KY KY KY KY 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
E3 E3  //Not Encrypted
"""


def test_post_key_matches_the_seed_sample() -> None:
    start = 35  # where the sample draws the key: 32 + 3
    expected = from_sample(
        POST_KEY_SAMPLE,
        {"CH": list(CH), "ID": list(KEY_ID), "KS": [start], "KL": [8], "KY": list(KEY8)},
    )
    assert len(expected) == POST_KEY_SIZE == 164
    assert encode_post_key(CH, KEY_ID, KEY8, start, bytes(128)) == expected
    post, status = decode_post_key(expected)
    assert status == PostKeyStatus.SUCCESS
    assert post is not None
    assert (post.challenge, post.key_id, post.part) == (CH, KEY_ID, KEY8)


def test_post_key_hides_the_part_in_random_padding() -> None:
    padding = hashlib.sha512(b"pad").digest() * 2
    body = encode_post_key(CH, KEY_ID, KEY8, 100, padding)
    assert body[34:134] == padding[:100]
    assert body[134:142] == KEY8
    assert body[142:162] == padding[108:]


@pytest.mark.parametrize("length", [0, 1, 3, 5, 12, 20, 41, 255])
def test_post_key_bad_length_is_status_6(length: int) -> None:
    body = bytearray(encode_post_key(CH, KEY_ID, KEY8, 0, bytes(128)))
    body[33] = length
    assert decode_post_key(bytes(body)) == (None, PostKeyStatus.BAD_KEY_LENGTH)


@pytest.mark.parametrize(("start", "length"), [(121, 8), (125, 4), (127, 8), (200, 4), (89, 40)])
def test_post_key_start_outside_the_padding_is_status_5(start: int, length: int) -> None:
    body = bytearray(encode_post_key(CH, KEY_ID, bytes(length), 0, bytes(128)))
    body[32] = start
    assert decode_post_key(bytes(body)) == (None, PostKeyStatus.BAD_KEY_START)
    # the last start that still fits is fine
    body[32] = 128 - length
    assert decode_post_key(bytes(body))[1] == PostKeyStatus.SUCCESS


def test_malformed_post_key_is_status_0() -> None:
    good = encode_post_key(CH, KEY_ID, KEY8, 0, bytes(128))
    for bad in (b"", good[:-1], good + b"\x00", good[:-2] + b"\x00\x00"):
        assert decode_post_key(bad) == (None, PostKeyStatus.FAIL)


def test_encoder_refuses_what_the_seed_forbids() -> None:
    with pytest.raises(RkeError, match="4, 8, 16"):
        encode_post_key(CH, KEY_ID, bytes(5), 0, bytes(128))
    with pytest.raises(RkeError, match="inside the padding"):
        encode_post_key(CH, KEY_ID, KEY8, 121, bytes(128))
    with pytest.raises(RkeError, match="16 bytes"):
        encode_post_key(CH[:8], KEY_ID, KEY8, 0, bytes(128))


GET_KEY_SAMPLE = """
CH CH CH CH CH CH CH CH CH CH CH CH CH CH CH CH
HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS //Hash of Key ID
E3 E3  //Not Encrypted
"""

GET_KEY_ANSWER_SAMPLE = """
ID ID ID ID ID ID ID ID ID ID ID ID ID ID ID ID //Key ID Hash
DN  SN SN SN SN //The encryption ID of the key sender
IP IP IP IP IP IP IP IP IP IP IP IP I4 I4 I4 I4
"""


def test_get_key_matches_the_seed_sample() -> None:
    key_hash = key_id_hash(KEY_ID)
    expected = from_sample(GET_KEY_SAMPLE, {"CH": list(CH), "HS": list(key_hash)})
    assert encode_get_key(CH, key_hash) == expected
    assert decode_get_key(expected) == (CH, key_hash)
    assert decode_get_key(expected[:-1]) is None
    assert decode_get_key(expected[:-2] + b"\x00\x00") is None


def test_get_key_answer_follows_the_seed_then_carries_the_part() -> None:
    key_hash = key_id_hash(KEY_ID)
    answer = encode_get_key_answer(key_hash, "192.0.2.7", KEY8)
    prefix = from_sample(
        GET_KEY_ANSWER_SAMPLE,
        {"ID": list(key_hash), "DN": [0], "SN": [0] * 4, "IP": [0] * 12, "I4": [192, 0, 2, 7]},
    )
    assert answer[: len(prefix)] == prefix
    assert answer[len(prefix) :] == bytes([8]) + KEY8 + b"\xe3\xe3"
    parsed = decode_get_key_answer(answer)
    assert (parsed.key_hash, parsed.sender_host, parsed.part) == (key_hash, "192.0.2.7", KEY8)
    with pytest.raises(RkeError):
        decode_get_key_answer(answer[:-3] + b"\xe3\xe3")


SIGNAL_SAMPLE = """
CH CH CH CH CH CH CH CH CH CH CH CH CH CH CH CH
NU
IP
HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS
IP IP IP IP 00 00 00 00 00 00 00 00 00 00 00 00  PT PT PT
IP
HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS
IP IP IP IP 00 00 00 00 00 00 00 00 00 00 00 00  PT PT PT
IP
HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS
IP IP IP IP 00 00 00 00 00 00 00 00 00 00 00 00  PT PT PT
IP
HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS HS
IP IP IP IP 00 00 00 00 00 00 00 00 00 00 00 00  PT PT PT
E3 E3 //Not Encrypted
"""


def test_signal_matches_the_seed_sample() -> None:
    locations = [
        PartLocation(key_id_hash(bytes([i]) * 16), f"198.51.100.{i + 1}", 8468 + i)
        for i in range(4)
    ]
    ip_fields: list[int] = []
    for loc in locations:  # each part: the version byte, then the four address bytes
        ip_fields += [4, *(int(x) for x in loc.host.split("."))]
    expected = from_sample(
        SIGNAL_SAMPLE,
        {
            "CH": list(CH),
            "NU": [4],
            "IP": ip_fields,
            "HS": [b for loc in locations for b in loc.key_hash],
            "PT": [b for loc in locations for b in loc.port.to_bytes(3, "big")],
        },
    )
    assert encode_signal(CH, locations) == expected
    assert decode_signal(expected) == (CH, locations)


def test_signal_answer_matches_the_seed_sample() -> None:
    # seed 002: "key parts 0, 1 and 3" used: FF FF 00 FF then zeros, then E3 E3: 18 bytes
    expected = bytes.fromhex("FFFF00FF" + "00" * 12 + "E3E3")
    assert encode_signal_answer([True, True, False, True]) == expected
    assert decode_signal_answer(expected, 4) == [True, True, False, True]


def test_malformed_signals_are_refused() -> None:
    good = encode_signal(CH, [PartLocation(bytes(16), "10.0.0.1", 1)])
    bad_count = good[:16] + b"\x00" + good[17:]
    bad_version = good[:17] + b"\x05" + good[18:]
    zero_port = good[:-5] + b"\x00\x00\x00" + good[-2:]
    for bad in (b"", good[:-1], bad_count, bad_version, zero_port, good + b"\x00"):
        assert decode_signal(bad) is None
    ipv6 = encode_signal(CH, [PartLocation(bytes(16), "2001:db8::1", 9)])
    assert decode_signal(ipv6) == (CH, [PartLocation(bytes(16), "2001:db8::1", 9)])


def test_framing() -> None:
    assert request(POST_KEY, b"x") == b"\x29x"
    datagram = response(GET_KEY, 12, CH)
    assert datagram[:2] == b"\xaa\x0c"
    assert parse_response(datagram) == (GET_KEY, 12, CH, b"\xe3\xe3")
    assert parse_response(response(SIGNAL, 1, b"short"))[2] == b"short" + bytes(11)
    with pytest.raises(RkeError):
        parse_response(b"\x29" + bytes(20))


def test_key_id_hash_is_16_bytes_and_personal() -> None:
    digest = key_id_hash(KEY_ID)
    assert len(digest) == 16
    assert digest == hashlib.blake2b(KEY_ID, digest_size=16, person=b"rke-key-id").digest()
    assert digest != hashlib.blake2b(KEY_ID, digest_size=16).digest()


def test_key_rules() -> None:
    check_key(bytes(15) + b"\xff")
    with pytest.raises(RkeError, match="at least 16"):
        check_key(bytes(11) + b"\xff")
    with pytest.raises(RkeError, match="0xFF"):
        check_key(bytes(16))


@given(st.integers(min_value=2, max_value=40), st.lists(st.integers(0, 5), max_size=20))
def test_split_sizes_are_allowed_and_never_whole(quarters: int, choices: list[int]) -> None:
    total = 4 * quarters
    sizes = split_sizes(total, choices)
    assert sum(sizes) == total
    assert all(s in KEY_LENGTHS for s in sizes)
    assert len(sizes) >= 2


@given(
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=1, max_value=3),
    st.lists(st.integers(0, 50), max_size=20),
)
def test_split_sizes_fit_the_servers_there_are(
    quarters: int, max_parts: int, min_parts: int, choices: list[int]
) -> None:
    total = 4 * quarters
    try:
        sizes = split_sizes(total, choices, max_parts=max_parts, min_parts=min_parts)
    except RkeError:
        # only when no count of parts in [min_parts, max_parts] adds up to total
        assert not any(
            sum(combo) == total
            for count in range(min_parts, min(max_parts, quarters) + 1)
            for combo in itertools.combinations_with_replacement(KEY_LENGTHS, count)
        )
        return
    assert sum(sizes) == total
    assert all(s in KEY_LENGTHS for s in sizes)
    assert min_parts <= len(sizes) <= max_parts


def test_a_32_byte_key_splits_over_two_or_three_servers_and_any_count_up_to_eight() -> None:
    counts = {len(split_sizes(32, [pick, 0, 1, 2, 3], max_parts=3)) for pick in range(10)}
    assert counts == {2, 3}
    counts = {len(split_sizes(32, [pick, 5, 4, 3, 2, 1])) for pick in range(20)}
    assert counts == set(range(2, 9))
    with pytest.raises(RkeError, match="do not split into 2 to 1 parts"):
        split_sizes(32, [], max_parts=1)


@given(st.binary(min_size=0, max_size=400))
def test_decoders_never_crash(data: bytes) -> None:
    # each either parses or says no in its documented way; nothing else may escape
    decode_post_key(data)
    decode_get_key(data)
    decode_signal(data)
    for strict in (
        lambda: decode_signal_answer(data, 4),
        lambda: decode_get_key_answer(data),
        lambda: parse_response(data),
    ):
        with contextlib.suppress(RkeError):
            strict()


@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=1, max_value=4),
    st.sampled_from(KEY_LENGTHS),
    st.lists(st.integers(0, 50), max_size=20),
)
def test_split_sizes_keep_every_part_within_the_size_limit(
    quarters: int, max_parts: int, min_parts: int, max_size: int, choices: list[int]
) -> None:
    total = 4 * quarters
    allowed = [s for s in KEY_LENGTHS if s <= max_size]
    try:
        sizes = split_sizes(
            total, choices, max_parts=max_parts, min_parts=min_parts, max_size=max_size
        )
    except RkeError:
        assert not any(
            sum(combo) == total
            for count in range(min_parts, min(max_parts, quarters) + 1)
            for combo in itertools.combinations_with_replacement(allowed, count)
        )
        return
    assert sum(sizes) == total
    assert all(s in allowed for s in sizes)
    assert min_parts <= len(sizes) <= max_parts


def test_a_32_byte_key_in_parts_of_at_most_16_bytes_leaves_each_server_half_of_it() -> None:
    splits = [split_sizes(32, [pick, 1, 2, 0, 1], max_size=16) for pick in range(20)]
    assert all(max(sizes) <= 16 for sizes in splits)
    assert {len(sizes) for sizes in splits} == set(range(2, 9))
    assert split_sizes(32, [0, 0], max_parts=2, max_size=16) == [16, 16]
    with pytest.raises(RkeError, match="3 parts of at most 8 bytes"):
        split_sizes(32, [], max_parts=3, max_size=8)
    with pytest.raises(RkeError, match="part size limit"):
        split_sizes(32, [], max_size=12)
