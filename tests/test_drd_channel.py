"""The sealed-frame layer of the DRD (`records.drd_channel`) and the server's channel table
with plain bytes: no loop, no socket. Each refusal has its status, and a refused frame leaves
the channel as it was."""

from __future__ import annotations

import pytest

from node.directory.channels import ChannelTable
from records.directory import Status
from records.drd_channel import (
    ANSWER_HEADER_SIZE,
    REQUEST_HEADER_SIZE,
    SEALED,
    TAG_SIZE,
    ChannelKeys,
    ClientChannel,
    ServerChannel,
    refusal,
    request_header,
)
from records.errors import DirectoryError, DirectoryRefused, FrameRefused

KEY = bytes(range(31)) + b"\xff"
OTHER_KEY = bytes(range(1, 32)) + b"\xff"
REQUEST = b"\x02" + b"C" * 16 + b"S" * 16 + b"profile: Ann, likes tea" + b"\xe3\xe3"
ANSWER = b"\x82\xfa" + b"C" * 16 + b"\xe3\xe3"


def pair(key: bytes = KEY) -> tuple[ClientChannel, ServerChannel]:
    keys = ChannelKeys.derive(key)
    return ClientChannel(keys), ServerChannel(keys)


def refused(server: ServerChannel, data: bytes) -> int:
    with pytest.raises(FrameRefused) as caught:
        server.open(data)
    return caught.value.status


def test_keys_are_derived_alike_and_differ_per_direction_and_key() -> None:
    keys = ChannelKeys.derive(KEY)
    assert keys == ChannelKeys.derive(KEY)
    assert len(keys.channel_id) == 16
    assert len(keys.request_key) == len(keys.answer_key) == 32
    assert keys.request_key != keys.answer_key
    assert keys.channel_id not in KEY
    assert keys.request_key != KEY
    other = ChannelKeys.derive(OTHER_KEY)
    assert {other.channel_id, other.request_key} & {keys.channel_id, keys.request_key} == set()
    with pytest.raises(DirectoryError):
        ChannelKeys.derive(KEY[:16])


def test_a_request_and_its_answer_round_trip_and_hide_the_clear_frame() -> None:
    client, server = pair()
    for expected in (1, 2, 3):
        counter, sealed = client.seal(REQUEST)
        assert counter == expected
        assert sealed[0] == SEALED
        assert request_header(sealed) == (client.channel_id, counter)
        assert len(sealed) == REQUEST_HEADER_SIZE + len(REQUEST) + TAG_SIZE
        assert b"Ann" not in sealed
        assert b"S" * 16 not in sealed
        assert server.open(sealed) == (counter, REQUEST)
        answer = server.seal(counter, ANSWER)
        assert answer[:2] == bytes([SEALED, Status.SUCCESS])
        assert len(answer) == ANSWER_HEADER_SIZE + len(ANSWER) + TAG_SIZE
        assert client.open(counter, answer) == ANSWER
    assert server.received == 3


def test_a_replayed_or_reordered_request_is_refused_43_and_changes_nothing() -> None:
    client, server = pair()
    _, first = client.seal(REQUEST)
    _, second = client.seal(REQUEST)
    assert server.open(first)[0] == 1
    assert refused(server, first) == Status.FRAME_REPLAYED  # replayed
    assert server.open(second)[0] == 2
    assert refused(server, first) == Status.FRAME_REPLAYED  # older than the last taken
    assert refused(server, second) == Status.FRAME_REPLAYED
    assert server.received == 2
    _, third = client.seal(REQUEST)
    _, fourth = client.seal(REQUEST)
    assert server.open(fourth)[0] == 4  # a lost request does not stall the channel ...
    assert refused(server, third) == Status.FRAME_REPLAYED  # ... but it cannot come late


def test_every_flipped_bit_is_refused_42_and_leaves_the_counter() -> None:
    client, server = pair()
    _, sealed = client.seal(REQUEST)
    for index in range(len(sealed)):
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[index] ^= bit
            assert refused(server, bytes(tampered)) == Status.FRAME_NOT_AUTHENTIC, index
    assert server.received == 0
    assert server.open(sealed) == (1, REQUEST)  # the genuine frame still goes through


def test_a_frame_of_another_channel_is_refused_42() -> None:
    client, server = pair()
    stranger, _ = pair(OTHER_KEY)
    _, foreign = stranger.seal(REQUEST)
    assert refused(server, foreign) == Status.FRAME_NOT_AUTHENTIC  # another channel's ID
    relabelled = foreign[:1] + client.channel_id + foreign[1 + 16 :]
    assert refused(server, relabelled) == Status.FRAME_NOT_AUTHENTIC  # under this one's ID
    assert refused(server, b"\xe6" + bytes(10)) == Status.FRAME_NOT_AUTHENTIC  # too short
    assert refused(server, REQUEST) == Status.FRAME_NOT_AUTHENTIC  # clear text
    assert server.received == 0


def test_the_client_takes_only_the_authentic_answer_to_its_request() -> None:
    client, server = pair()
    counter, sealed = client.seal(REQUEST)
    server.open(sealed)
    answer = server.seal(counter, ANSWER)
    with pytest.raises(FrameRefused) as caught:
        client.open(counter + 1, answer)  # an answer to another request
    assert caught.value.status == Status.FRAME_NOT_AUTHENTIC
    tampered = bytearray(answer)
    tampered[-1] ^= 1
    with pytest.raises(FrameRefused):
        client.open(counter, bytes(tampered))
    other_client, other_server = pair(OTHER_KEY)
    other_server.open(other_client.seal(REQUEST)[1])
    with pytest.raises(FrameRefused):  # another channel's answer, same counter
        client.open(counter, other_server.seal(counter, ANSWER))
    for status in (Status.UNKNOWN_CHANNEL, Status.FRAME_NOT_AUTHENTIC, Status.FRAME_REPLAYED):
        with pytest.raises(DirectoryRefused) as said:
            client.open(counter, refusal(counter, status))
        assert said.value.code == status
    with pytest.raises(FrameRefused) as caught:  # a refusal of another request is not ours
        client.open(counter, refusal(counter + 1, Status.FRAME_REPLAYED))
    assert caught.value.status == Status.FRAME_NOT_AUTHENTIC
    with pytest.raises(ValueError, match="not a success"):
        refusal(counter, Status.SUCCESS)
    assert client.open(counter, answer) == ANSWER


def test_the_channel_table_is_bounded_in_number_and_time() -> None:
    table = ChannelTable(lifetime_ms=1000, max_channels=3)
    keys = [bytes([i]) * 31 + b"\xff" for i in range(5)]
    ids = [ChannelKeys.derive(k).channel_id for k in keys]
    assert table.add_key(b"short" * 4, now=0) is None  # not a channel key
    first = table.add_key(keys[0], now=0)
    assert first is not None
    first.bind(b"S" * 16, expires=5000)  # a session: its channel lives as long as it
    table.add_key(keys[1], now=10)
    table.add_key(keys[2], now=20)
    table.add_key(keys[3], now=30)  # full: the oldest channel without a session goes
    assert table.get(ids[1], now=40) is None
    assert table.get(ids[0], now=40) is first
    assert len(table) == 3
    assert table.get(ids[2], now=1020) is None  # a channel without a session: 1000 ms
    assert table.get(ids[0], now=4999) is first
    assert table.get(ids[0], now=5000) is None  # the session ended, and the keys with it
    assert table.stats["evicted"] == 1
    assert table.stats["keys_refused"] == 1
