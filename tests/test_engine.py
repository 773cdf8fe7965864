"""The sans-I/O RPC engine, driven with plain bytes and numbers: no event loop, no socket, no
clock. Each test moves datagrams between engines by hand and passes the time in."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from node import NodeConfig
from node.engine import Engine
from node.engine.limits import TokenBuckets
from node.engine.proofs import CHALLENGES, OWNER_TTL, PROVE
from node.keyexchange import REQUEST_LIMITS, request_cost
from node.routing import Address, RoutingTables
from node.storage import RecordStore
from node.wire import MAX_DATAGRAM_SIZE, decode, encode_request, encode_response
from records import (
    ChatValidator,
    Identity,
    InvalidRecord,
    Record,
    default_validator,
    encode_record,
    location,
    make_message,
    make_receipts,
)
from records.chat import MAX_ENTRIES_PER_PAGE, MAX_RECEIPT_IDS, NONCE_SIZE, page_of
from records.errors import ProtocolError, RecordTooLarge
from records.identity import prove_node
from records.rke import SIGNAL
from records.validation import MAX_RECORD_SIZE, merge_copies
from tests.loopback import FixedClock
from tests.records_factory import HOUR, NOW, meta

pytestmark = pytest.mark.timeout(60)


def counter_bytes(name: str) -> Callable[[int], bytes]:
    """Distinct, repeatable "random" bytes (message IDs) for an engine."""
    count = itertools.count()
    return lambda size: hashlib.sha256(f"{name}-{next(count)}".encode()).digest()[:size]


class Peer:
    """An engine at an address, with its own identity, table and store."""

    def __init__(self, name: str, address: Address, **config: Any) -> None:
        self.identity = Identity.from_seed(hashlib.sha256(name.encode()).digest())
        self.address = address
        self.config = NodeConfig(host=address[0], port=address[1], **config)
        self.table = RoutingTables(self.identity.id, k=self.config.k)
        self.store = RecordStore(default_validator(), max_bytes=self.config.max_store_bytes)
        self.engine = Engine(
            identity=self.identity,
            table=self.table,
            store=self.store,
            config=self.config,
            clock=FixedClock(),
            randbytes=counter_bytes(name),
        )

    @property
    def id(self) -> bytes:
        return self.identity.id

    def out(self) -> list[tuple[bytes, Address]]:
        return self.engine.datagrams_to_send()

    def listeners_of(self, loc: bytes, now: float) -> list[Address]:
        return [listener.address for listener in self.engine.listeners.of(loc, now)]


def deliver(src: Peer, dst: Peer, now: float, *, source: Address | None = None) -> int:
    """Hand every datagram `src` wants to send to `dst` (others are dropped); returns how many."""
    count = 0
    for data, addr in src.out():
        if addr == dst.address:
            dst.engine.datagram_received(data, source or src.address, now)
            count += 1
    return count


class Replies:
    """Collects on_reply calls."""

    def __init__(self) -> None:
        self.got: list[tuple[bool, Any]] = []

    def __call__(self, ok: bool, body: Any) -> None:
        self.got.append((ok, body))


def pair(**config: Any) -> tuple[Peer, Peer]:
    return Peer("a", ("127.0.0.1", 1001), **config), Peer("b", ("127.0.0.1", 1002), **config)


def test_a_call_and_its_answer() -> None:
    a, b = pair()
    replies = Replies()
    assert a.engine.call(b.address, "ping", [a.id], None, replies, 0.0)
    assert a.engine.get_timer() == pytest.approx(a.config.initial_timeout)
    [(data, addr)] = a.out()
    request = decode(data)
    assert addr == b.address
    # a stranger proves its ID; we take a challenge in the answer
    assert request.body == ["ping", [a.id, CHALLENGES, PROVE]]
    b.engine.datagram_received(data, a.address, 0.010)
    [answer] = b.out()  # b answers, with a challenge for a to prove its own ID
    assert answer[1] == a.address
    assert set(decode(answer[0]).body) == {"answer", "proof", "challenge"}
    a.engine.datagram_received(answer[0], b.address, 0.020)
    assert replies.got == [(True, b.id)]
    [(proof, to)] = a.out()  # a answers the challenge: one datagram, and b knows a
    assert to == b.address
    assert decode(proof).kind == 1
    b.engine.datagram_received(proof, a.address, 0.030)
    assert b.table.get(a.id) is not None
    contact = a.table.get(b.id)
    assert contact is not None
    assert contact.srtt == pytest.approx(0.020)
    assert a.engine.get_timer() is None  # nothing left waiting
    assert a.engine.stats.requests_out["ping"] == 1
    assert b.engine.stats.requests_in["ping"] == 1


def test_a_late_answer_is_counted_and_keeps_the_peer_but_reaches_no_caller() -> None:
    a, b = pair()
    replies = Replies()
    a.engine.call(b.address, "ping", [a.id], None, replies, 0.0)
    deliver(a, b, 0.5)
    a.engine.handle_timer(a.config.initial_timeout)
    assert replies.got == [(False, None)]
    assert a.engine.stats.timeouts == 1
    deliver(b, a, 1.5)  # the answer, late
    assert replies.got == [(False, None)]  # the caller heard once
    assert a.engine.stats.late_answers == 1
    assert a.table.get(b.id) is not None  # but it proved its ID and is alive


def test_an_answer_from_another_address_is_dropped() -> None:
    a, b = pair()
    replies = Replies()
    a.engine.call(b.address, "ping", [a.id], None, replies, 0.0)
    deliver(a, b, 0.01)
    spoofed = [(data, addr) for data, addr in b.out()]
    for data, addr in spoofed:
        if addr == a.address:
            a.engine.datagram_received(data, ("127.0.0.1", 6666), 0.02)
    assert a.engine.stats.dropped["wrong_source"] == 1
    assert replies.got == []  # still waiting for the real one
    for data, addr in spoofed:
        if addr == a.address:
            a.engine.datagram_received(data, b.address, 0.03)
    assert replies.got == [(True, b.id)]


def test_a_timeout_doubles_the_next_one_to_that_address_until_it_answers() -> None:
    a, b = pair(initial_timeout=0.5, max_timeout=3.0)
    now = 0.0
    timeouts = []
    for _ in range(4):
        a.engine.call(b.address, "ping", [a.id], None, Replies(), now)
        a.out()  # lost
        deadline = a.engine.get_timer()
        assert deadline is not None
        timeouts.append(round(deadline - now, 3))
        now = deadline
        a.engine.handle_timer(now)
    assert timeouts == [0.5, 1.0, 2.0, 3.0]  # RTO backoff, capped at max_timeout
    replies = Replies()
    a.engine.call(b.address, "ping", [a.id], None, replies, now)
    deliver(a, b, now + 0.01)
    deliver(b, a, now + 0.02)
    assert replies.got == [(True, b.id)]
    a.engine.call(b.address, "ping", [a.id], b.id, Replies(), now + 1)
    deadline = a.engine.get_timer()
    assert deadline is not None
    assert deadline - (now + 1) == pytest.approx(a.config.min_timeout, abs=0.002)  # reset


def test_calls_over_the_in_flight_limit_wait_and_past_the_queue_fail_at_once() -> None:
    a, b = pair(max_calls_in_flight=2, max_outstanding_calls=1)
    replies = [Replies() for _ in range(4)]
    for r in replies:
        a.engine.call(b.address, "stun", [], None, r, 0.0)
    assert len(a.out()) == 2  # two in flight, one queued
    assert replies[3].got == [(False, None)]  # the queue is full: failed at once
    assert a.engine.stats.dropped["too_many_calls"] == 1
    assert a.engine.stats.queued_calls == 1
    # an answer frees a slot: the queued call goes out then, timed from then
    a.engine.call(b.address, "stun", [], None, Replies(), 0.0)  # refused too
    first = a.engine.calls.in_flight[next(iter(a.engine.calls.in_flight))]
    a.engine.datagram_received(encode_response(first.msg_id, ["x", 1]), b.address, 0.3)
    [(data, _)] = a.out()
    assert decode(data).body == ["stun", [CHALLENGES]]
    assert a.engine.calls.in_flight[decode(data).msg_id].sent_at == 0.3


def proof_answer(msg_id: bytes, answer: Any, proof: list[bytes]) -> bytes:
    return encode_response(msg_id, {"answer": answer, "proof": proof})


def test_a_proof_that_fails_keeps_the_peer_out_and_a_forged_one_bans_its_address() -> None:
    a = Peer("a", ("127.0.0.1", 1001))
    claimed = Identity.from_seed(b"\x01" * 32)
    other = Identity.from_seed(b"\x02" * 32)
    cases = (("stale", True), ("other", False), ("garbage", True))
    for port, (proof_of, expect_ban) in enumerate(cases, start=7000):
        address = ("127.0.0.9", port)
        replies = Replies()
        a.engine.call(address, "find_node", [a.id, b"\x00" * 20], claimed.id, replies, 0.0)
        [(data, _)] = a.out()
        msg_id = decode(data).msg_id
        if proof_of == "stale":  # the right key, another challenge
            proof = list(prove_node(claimed, b"\x00" * 20, a.id))
        elif proof_of == "other":  # a valid proof of another ID (the address changed hands)
            proof = list(prove_node(other, msg_id, a.id))
        else:
            proof = [claimed.public_key, b"\x00" * 64]
        a.engine.datagram_received(proof_answer(msg_id, [], proof), address, 0.1)
        assert replies.got == [(False, None)]
        assert a.table.get(claimed.id) is None
        assert (address in a.engine.bans) is expect_ban, proof_of
    assert a.engine.stats.dropped["unproven"] == 3
    assert a.engine.stats.bans["forged_proof"] == 2
    # the address that proved to be another node's is not asked for the claimed ID again
    address = ("127.0.0.9", 7001)
    replies = Replies()
    assert not a.engine.call(address, "find_node", [a.id, b"\x00" * 20], claimed.id, replies, 1)
    assert a.engine.stats.dropped["address_of_another"] == 1


def test_a_ban_keeps_a_node_out_until_it_expires() -> None:
    a, b = pair(ban_seconds=100.0)
    a.engine.ban(b.id, "bad_signature", 10.0)
    replies = Replies()
    assert not a.engine.call(b.address, "ping", [a.id], b.id, replies, 20.0)
    assert replies.got == [(False, None)]
    assert a.engine.stats.dropped["banned"] == 1
    # its requests are answered, but it does not enter the table
    b.engine.call(a.address, "ping", [b.id], a.id, Replies(), 20.0)
    deliver(b, a, 20.0)
    assert [decode(d).kind for d, _ in a.out()] == [1]  # the answer, no ping back
    assert a.table.get(b.id) is None
    assert a.engine.get_timer() == 110.0  # wakes up to lift it
    a.engine.handle_timer(110.0)
    assert b.id not in a.engine.bans
    assert a.engine.call(b.address, "ping", [a.id], b.id, Replies(), 111.0)
    assert a.engine.stats.bans == {"bad_signature": 1}


def test_only_forgery_earns_a_ban() -> None:
    """Clock skew and stricter local rules are refusals, not forgery."""
    record = meta()
    validator = default_validator()
    with pytest.raises(InvalidRecord) as skewed:
        validator.validate(record.key, record, NOW - 3600_000)  # our clock is an hour behind
    assert skewed.value.reason == "future_dated"
    assert not skewed.value.forgery
    forged = Record()
    forged.CopyFrom(record)
    forged.values[0].value = forged.values[0].value[:-1] + bytes([forged.values[0].value[-1] ^ 1])
    with pytest.raises(InvalidRecord) as bad:
        validator.validate(forged.key, forged, NOW)
    assert bad.value.forgery


def request_from(peer: Peer, dst: Peer, name: str, args: list[Any], now: float) -> Any:
    """Send a raw request from `peer`'s address; the answer's body, or None if none came."""
    msg_id = peer.engine.randbytes(20)
    dst.engine.datagram_received(encode_request(msg_id, name, args), peer.address, now)
    for data, addr in dst.out():
        message = decode(data)
        if addr == peer.address and message.msg_id == msg_id:
            return message.body
    return None


def test_store_limits_per_source_and_for_everyone() -> None:
    a = Peer("a", ("127.0.0.1", 1001), store_burst=3, stores_per_source_per_s=1.0, stores_per_s=4)
    senders = [Peer(f"s{i}", ("127.0.0.1", 2000 + i)) for i in range(2)]
    record = encode_record(meta())
    loc = location(meta().key)
    answers = [
        request_from(s, a, "store", [s.id, loc, record], 0.0) for s in senders for _ in range(4)
    ]
    assert answers[:3] == [True] * 3  # the first sender's burst
    assert answers[3] == [False, "rate_limited"]  # its own budget is spent
    assert answers[4] == True  # noqa: E712 - the second sender: a fourth store in all
    assert answers[5:] == [[False, "rate_limited"]] * 3  # the shared budget is spent
    # a store the shared budget refused still cost its sender a token
    assert a.engine.stats.dropped["rate_limited"] == 2
    assert a.engine.stats.dropped["rate_limited_global"] == 2
    # a second later each source may store again
    assert request_from(senders[0], a, "store", [senders[0].id, loc, record], 1.0) is True


def test_a_store_of_the_copy_held_is_acknowledged_without_checking_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = Peer("a", ("127.0.0.1", 1001))
    s1, s2 = Peer("s1", ("127.0.0.1", 2001)), Peer("s2", ("127.0.0.1", 2002))
    validator = a.store.validator
    checked: list[str] = []

    def validate(key: str, record: Any, now: int) -> None:
        checked.append(key)
        type(validator).validate(validator, key, record, now)

    monkeypatch.setattr(validator, "validate", validate)
    record, newer = meta(), meta(name="Alice B.", now=NOW + 1)
    loc = location(record.key)
    assert request_from(s1, a, "store", [s1.id, loc, encode_record(record)], 0.0) is True
    assert checked == [record.key]
    # the same bytes again: acknowledged, the sender noted as a holder, nothing checked
    assert request_from(s2, a, "store", [s2.id, loc, encode_record(record)], 0.0) is True
    assert checked == [record.key]
    held = a.store.get(loc, NOW)
    assert held is not None
    assert held.holders == {s1.id, s2.id}
    # other bytes (a newer version) are checked, and replace it
    a.engine.clock.now = NOW + 1  # type: ignore[attr-defined]
    assert request_from(s1, a, "store", [s1.id, loc, encode_record(newer)], 1.0) is True
    assert checked == [record.key] * 2
    held = a.store.get(loc, NOW + 1)
    assert held is not None
    assert held.data == encode_record(newer)
    # once every value has expired nothing is held: the same bytes are refused as expired
    a.engine.clock.now = NOW + 2 * HOUR  # type: ignore[attr-defined]
    expired = request_from(s2, a, "store", [s2.id, loc, encode_record(newer)], 2.0)
    assert expired == [False, "expired"]


def test_lookup_limits_per_source_and_for_everyone() -> None:
    a = Peer("a", ("127.0.0.1", 1001), lookup_burst=2, lookups_per_source_per_s=1, lookups_per_s=3)
    s1, s2 = Peer("s1", ("127.0.0.1", 2001)), Peer("s2", ("127.0.0.1", 2002))
    answered = [
        request_from(s, a, "find_node", [s.id, b"\x01" * 20], 0.0) is not None
        for s in (s1, s1, s1, s2, s2)
    ]
    assert answered == [True, True, False, True, False]
    assert a.engine.stats.dropped["rate_limited_lookup"] == 1
    assert a.engine.stats.dropped["rate_limited_global"] == 1


def test_ipv6_sources_are_limited_per_64_prefix() -> None:
    a = Peer("a", ("::1", 1001), lookup_burst=2, lookups_per_source_per_s=1, lookups_per_s=100)
    neighbours = [Peer(f"n{i}", (f"2001:db8:1:2::{i + 1}", 3000)) for i in range(3)]
    elsewhere = Peer("far", ("2001:db8:1:3::1", 3000))
    answered = [
        request_from(p, a, "ping", [p.id], 0.0) is not None for p in [*neighbours, elsewhere]
    ]
    assert answered == [True, True, False, True]


def test_service_datagrams_pay_their_cost_from_the_shared_budgets() -> None:
    """A Signal flood (each naming 16 parts: 16 Get Keys to servers the sender chose) is cut
    down to what the sender's budget pays for, and every drop is counted."""
    a = Peer("a", ("127.0.0.1", 1001))
    handled: list[bytes] = []
    a.engine.services.register(
        "rke",
        [SIGNAL],
        lambda data, addr, now: handled.append(data),
        limits=REQUEST_LIMITS,
        cost=request_cost,
    )
    signal = bytes([SIGNAL]) + b"\x07" * 16 + bytes([16]) + b"\x00" * (16 * 36) + b"\xe3\xe3"
    for _ in range(2000):
        a.engine.datagram_received(signal, ("127.0.0.1", 4444), 0.0)
    per_signal = request_cost(signal)
    assert per_signal == 17
    assert len(handled) == int(REQUEST_LIMITS.per_source_burst // per_signal) == 2
    assert a.engine.stats.dropped["rate_limited_rke"] == 1998
    # ten seconds later the sender has paid for at most ten seconds' worth more
    for _ in range(2000):
        a.engine.datagram_received(signal, ("127.0.0.1", 4444), 10.0)
    assert len(handled) <= 2 + int(10 * REQUEST_LIMITS.per_source_rate // per_signal) + 1
    # and its lookups share the same budget: the service's datagrams spent it
    a.engine.services.register("flood", [0x70], lambda *_: None)
    for _ in range(a.config.lookup_burst):
        a.engine.datagram_received(b"\x70junk", ("127.0.0.1", 5555), 20.0)
    s = Peer("s", ("127.0.0.1", 5555))
    assert request_from(s, a, "ping", [s.id], 20.0) is None
    assert a.engine.stats.dropped["rate_limited_lookup"] >= 1


def test_every_datagram_we_build_fits_the_budget() -> None:
    a, b = pair()
    with pytest.raises(ProtocolError, match="oversized"):
        a.engine.call(b.address, "store", [a.id, b"\x00" * 20, b"x" * 9000], b.id, Replies(), 0)
    with pytest.raises(ProtocolError, match="oversized"):
        a.engine.send(b"\x70" + b"x" * MAX_DATAGRAM_SIZE, b.address)


def full_page(now: int = NOW) -> Record:
    """The largest record a holder serves: an inbox page with six messages of the largest size
    and a receipt listing as many ids as it may."""
    alice = Identity.from_seed(b"\x0a" * 32)
    bob = Identity.from_seed(b"\x0b" * 32)
    validator = ChatValidator()
    messages: list[Record] = []
    nonce = 0
    while len(messages) < MAX_ENTRIES_PER_PAGE + MAX_RECEIPT_IDS:
        nonce += 1
        n = nonce.to_bytes(NONCE_SIZE, "big")
        probe = make_message(alice, bob.public_key, b"", mime_type="t", nonce=n, now=now)
        if page_of(bytes.fromhex(probe.values[0].id2)) != 3:
            continue
        size = 900 if len(messages) < MAX_ENTRIES_PER_PAGE else 0
        while True:
            try:
                message = make_message(
                    alice, bob.public_key, b"x" * size, mime_type="t", nonce=n, now=now
                )
                break
            except RecordTooLarge:
                size -= 10
        messages.append(message)
    page = validator.consolidate(messages[0].key, messages[:MAX_ENTRIES_PER_PAGE], now)
    acked = [
        (bytes.fromhex(m.values[0].id2), m.values[0].expirationDate)
        for m in messages[MAX_ENTRIES_PER_PAGE:]
    ]
    receipt = make_receipts(bob, acked, now)
    page = validator.consolidate(page.key, [page, receipt], now)
    default_validator().validate(page.key, page, now)
    return page


@pytest.mark.parametrize(
    "host", ["255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"], ids=["ipv4", "ipv6"]
)
def test_a_record_of_the_largest_size_is_served_and_fetched_whole(host: str) -> None:
    page = full_page()
    data = encode_record(page)
    assert len(data) > 8000
    local = "::1" if ":" in host else "127.0.0.1"  # an asker learns contacts of its own family
    a, b = Peer("a", (local, 1001)), Peer("b", (local, 1002))
    loc = location(page.key)
    assert b.store.accept(loc, page, NOW).changed
    for i in range(b.config.k):  # b knows k contacts with the longest addresses
        node_id = hashlib.sha1(f"contact-{i}".encode()).digest()
        b.table.heard_from(node_id, (host, 65535 - i), 0.0, verified=True)
    replies = Replies()
    a.engine.call(b.address, "find_value", [a.id, loc], None, replies, 0.0)  # with a proof
    [(request, _)] = a.out()
    b.engine.datagram_received(request, a.address, 0.01)
    answer = next(d for d, addr in b.out() if addr == a.address)
    assert len(answer) <= MAX_DATAGRAM_SIZE
    a.engine.datagram_received(answer, b.address, 0.02)
    [(ok, body)] = replies.got
    assert ok
    assert body["value"] == data
    assert 0 < len(body["nodes"]) < b.config.k  # the farthest contacts made room


def test_a_diverged_merge_is_returned_whole_but_never_written_back() -> None:
    """Two groups of holders with different valid full pages: their union exceeds a page's
    bounds, so it goes to the reader and is written to nobody."""
    alice = Identity.from_seed(b"\x0a" * 32)
    bob = Identity.from_seed(b"\x0b" * 32)
    messages: list[Record] = []
    nonce = 0
    while len(messages) < 2 * MAX_ENTRIES_PER_PAGE:
        nonce += 1
        m = make_message(
            alice, bob.public_key, b"hi", mime_type="t", nonce=nonce.to_bytes(24, "big"), now=NOW
        )
        if page_of(bytes.fromhex(m.values[0].id2)) == 5:
            messages.append(m)
    validator = default_validator()
    key = messages[0].key
    first = validator.consolidate(key, messages[:MAX_ENTRIES_PER_PAGE], NOW)
    second = validator.consolidate(key, messages[MAX_ENTRIES_PER_PAGE:], NOW)
    for copy in (first, second):
        validator.validate(key, copy, NOW)
    merge = merge_copies(validator, key, [first, second], NOW)
    assert merge.record is not None
    assert len(merge.record.values) == 2 * MAX_ENTRIES_PER_PAGE
    assert merge.data is None
    # 12 values fit the 6 entries + 8 receipts a page may hold (issue 17), not its 6 entries
    assert merge.refused == "inbox_full"
    same = merge_copies(validator, key, [first, first], NOW)
    assert same.data == encode_record(first)
    assert len(same.data) <= MAX_RECORD_SIZE


def test_a_refusal_for_good_says_so_in_a_field() -> None:
    """A store that no retry will get in (an entry its recipient acknowledged) is refused with
    a third field, `final`; ordinary refusals have two."""
    a = Peer("a", ("127.0.0.1", 1001))
    sender = Peer("s", ("127.0.0.1", 2001))
    alice = Identity.from_seed(b"\x0a" * 32)
    bob = Identity.from_seed(b"\x0b" * 32)
    message = make_message(alice, bob.public_key, b"hi", mime_type="t", nonce=b"\x01" * 24, now=NOW)
    value = message.values[0]
    receipt = make_receipts(bob, [(bytes.fromhex(value.id2), value.expirationDate)], NOW)
    loc = location(message.key)
    assert request_from(sender, a, "store", [sender.id, loc, encode_record(receipt)], 0) is True
    again = request_from(sender, a, "store", [sender.id, loc, encode_record(message)], 0)
    assert again == [False, "acknowledged", True]
    junk = request_from(sender, a, "store", [sender.id, loc, b"\xff\xfe"], 0.0)
    assert junk == [False, "malformed_record"]
    assert a.engine.stats.refused == {"acknowledged": 1, "malformed_record": 1}


def test_unknown_and_malformed_datagrams_are_counted() -> None:
    a = Peer("a", ("127.0.0.1", 1001))
    junk = {
        "truncated": b"\x00",
        "unknown_rpc": encode_request(b"\x01" * 20, "delete", []),
        "bad_arguments": encode_request(b"\x01" * 20, "ping", [b"short"]),
        "malformed": b"\x00" + b"\x01" * 20 + msgpack.packb({"a": 1}),
        "unexpected_response": encode_response(b"\x02" * 20, True),
    }
    for data in junk.values():
        a.engine.datagram_received(data, ("127.0.0.1", 9), 0.0)
    assert a.out() == []
    assert {reason: a.engine.stats.dropped[reason] for reason in junk} == dict.fromkeys(junk, 1)


def listen(peer: Peer, holder: Peer, loc: bytes, cookie: bytes, now: float) -> Any:
    return request_from(peer, holder, "listen", [peer.id, loc, cookie, 60], now)


def test_a_subscription_needs_the_holders_cookie_and_is_pushed_changes() -> None:
    holder = Peer("h", ("127.0.0.1", 1001))
    sub = Peer("s", ("127.0.0.1", 2001))
    record = meta()
    loc = location(record.key)
    first = listen(sub, holder, loc, b"", 0.0)
    assert set(first) == {"cookie"}  # not subscribed yet: prove you receive at your address
    assert len(holder.engine.listeners) == 0
    assert listen(sub, holder, loc, b"\x00" * 16, 0.0) == first  # a made-up cookie: the same
    answer = listen(sub, holder, loc, first["cookie"], 0.1)
    assert answer == {"ok": 60, "summary": []}
    # a change of the record: one notification, a summary and no values
    holder.store.accept(loc, record, NOW)
    holder.engine.record_changed(loc, 1.0)
    [(data, addr)] = holder.out()
    message = decode(data)
    assert addr == sub.address
    assert message.body[0] == "notify"
    _, got_loc, summary = message.body[1][:3]
    value = record.values[0]
    assert (got_loc, summary) == (loc, [[value.id2, value.creationDate, value.expirationDate]])
    assert len(data) < 200
    # a subscriber that no longer listens says so, and the subscription ends
    holder.engine.datagram_received(encode_response(message.msg_id, False), sub.address, 1.1)
    assert len(holder.engine.listeners) == 0


def test_subscriptions_are_capped_per_key_and_per_source_and_expire() -> None:
    holder = Peer("h", ("127.0.0.1", 1001), max_listeners_per_key=2, max_listeners_per_source=3)
    loc_a, loc_b = b"\x0a" * 20, b"\x0b" * 20
    subs = [Peer(f"s{i}", ("10.0.0.1", 3000 + i)) for i in range(4)]  # one source: 10.0.0.1
    refusals = []
    for sub, loc in zip(subs, [loc_a, loc_a, loc_a, loc_b], strict=True):
        cookie = listen(sub, holder, loc, b"", 0.0)["cookie"]
        refusals.append(listen(sub, holder, loc, cookie, 0.0))
    assert refusals[:2] == [{"ok": 60, "summary": []}] * 2
    assert refusals[2] == [False, "listeners_full_key"]
    assert refusals[3] == {"ok": 60, "summary": []}  # another key, third from this source
    more = Peer("s9", ("10.0.0.1", 3999))
    cookie = listen(more, holder, b"\x0c" * 20, b"", 0.0)["cookie"]
    assert listen(more, holder, b"\x0c" * 20, cookie, 0.0) == [False, "listeners_full_source"]
    dropped = holder.engine.stats.dropped
    assert (dropped["listeners_full_key"], dropped["listeners_full_source"]) == (1, 1)
    assert len(holder.listeners_of(loc_a, 30.0)) == 2
    assert holder.listeners_of(loc_a, 61.0) == []  # not renewed: gone


def test_a_client_answers_only_its_notifications_and_marks_its_requests() -> None:
    client = Peer("c", ("127.0.0.1", 1001), mode="client")
    server = Peer("s", ("127.0.0.1", 1002))
    assert request_from(server, client, "ping", [server.id], 0.0) is None
    assert client.engine.stats.dropped["client_mode"] == 1
    client.engine.call(server.address, "find_node", [client.id, b"\x01" * 20], None, Replies(), 0)
    [(data, _)] = client.out()
    assert decode(data).body[1][-3:] == ["client", CHALLENGES, "prove"]
    server.engine.datagram_received(data, client.address, 0.01)
    answers = server.out()
    assert [addr for _, addr in answers] == [client.address]  # answered, and no ping back
    assert server.table.get(client.id) is None
    client.engine.datagram_received(answers[0][0], server.address, 0.02)
    assert client.table.get(server.id) is not None  # the client keeps its own contacts
    # a notification of a location it listens to is the one request a client answers
    heard: list[bytes] = []

    def on_notify(loc: bytes, summary: list[list[Any]], node: bytes, addr: Address) -> bool:
        heard.append(loc)
        return True

    client.engine.on_notify = on_notify
    notified = request_from(server, client, "notify", [server.id, b"\x07" * 20, []], 1.0)
    assert notified is True
    assert heard == [b"\x07" * 20]


# -- what the engine keeps per peer: what no longer changes anything is dropped ---------------


def test_a_rate_limit_keeps_only_the_sources_whose_bucket_is_not_full() -> None:
    """A source not seen has a full bucket: one that filled up again is forgotten, so the
    limits take memory for the sources of the last seconds, not for every source ever."""
    buckets = TokenBuckets(rate=10.0, burst=5)
    for i in range(1000):  # each spends a token, refilled 0.1 s later
        assert buckets.allow(f"10.0.{i // 256}.{i % 256}", i * 0.2)
    assert len(buckets) == 1
    # the limit holds all the same: a burst, then the rate
    assert [buckets.allow("10.1.0.1", 300.0) for _ in range(6)] == [True] * 5 + [False]
    assert buckets.allow("10.2.0.1", 300.05)  # another source: 10.1.0.1 is kept (not full)
    assert not buckets.allow("10.1.0.1", 300.05)
    assert buckets.allow("10.1.0.1", 300.1)
    assert len(buckets) == 2


def test_the_owner_of_an_address_is_dropped_once_it_no_longer_counts() -> None:
    """For `OWNER_TTL` after a node proved an address is its own, nobody else is asked there
    for a proof of another ID; then its entry is dropped, so a node keeps the owners of the
    last minutes, not of every address that ever proved."""
    a = Peer("a", ("127.0.0.1", 1001))
    peers = [Peer(f"p{i}", ("127.0.0.1", 2000 + i)) for i in range(20)]

    def prove(peer: Peer, now: float) -> None:
        a.engine.call(peer.address, "ping", [a.id], peer.id, Replies(), now)
        deliver(a, peer, now)
        deliver(peer, a, now + 0.01)

    for i, peer in enumerate(peers):
        prove(peer, float(i))
    assert a.engine.proofs.owners == 20
    stranger = Identity.from_seed(b"\x03" * 32).id
    first = peers[0].address
    args = [a.id, b"\x00" * 20]
    assert not a.engine.call(first, "find_node", args, stranger, Replies(), OWNER_TTL - 1)
    assert a.engine.stats.dropped["address_of_another"] == 1
    prove(Peer("late", ("127.0.0.1", 3000)), OWNER_TTL + 10.5)  # those of 0.01 .. 10.01 lapse
    assert a.engine.proofs.owners == 10
    assert a.engine.call(first, "find_node", args, stranger, Replies(), OWNER_TTL + 11)


def test_proofs_are_kept_for_the_nodes_used_most_recently() -> None:
    """A node that proved its ID lately is asked without a proof; past `proven_cache_size`
    the one used least recently must prove itself again."""
    a = Peer("a", ("127.0.0.1", 1001), proven_cache_size=2)
    a.table.heard_from = lambda *_, **__: None  # type: ignore[method-assign]
    peers = [Peer(f"q{i}", ("127.0.0.1", 2000 + i)) for i in range(3)]

    def prove(peer: Peer, now: float) -> None:
        a.engine.call(peer.address, "ping", [a.id], peer.id, Replies(), now)
        deliver(a, peer, now)
        deliver(peer, a, now + 0.01)  # the table keeps none: known by their proofs alone
        a.out()  # our answer to its challenge

    def asked_for_a_proof(peer: Peer, now: float) -> bool:
        a.engine.call(peer.address, "find_node", [a.id, b"\x00" * 20], peer.id, Replies(), now)
        [(data, _)] = a.out()
        return bool(decode(data).body[1][-1] == PROVE)

    prove(peers[0], 0.0)
    prove(peers[1], 1.0)
    assert not asked_for_a_proof(peers[0], 2.0)  # used: now the most recent
    prove(peers[2], 3.0)  # the third: peers[1], used least recently, is forgotten
    assert [asked_for_a_proof(p, 4.0) for p in peers] == [False, True, False]


def test_a_proven_contact_is_kept_by_the_table_alone() -> None:
    """A peer that proved its ID and entered the routing table is not kept in the proof book
    too (the table says it is proven while it holds it there: most proven peers are contacts,
    and both held each of them); once the table lets it go, it must prove itself again."""
    a, b = pair()
    a.engine.call(b.address, "ping", [a.id], b.id, Replies(), 0.0)
    deliver(a, b, 0.0)
    deliver(b, a, 0.01)
    a.out()  # our answer to its challenge
    assert a.table.get(b.id) is not None
    assert a.engine.proofs.kept == 0

    def asked_for_a_proof(now: float) -> bool:
        a.engine.call(b.address, "find_node", [a.id, b"\x00" * 20], b.id, Replies(), now)
        [(data, _)] = a.out()
        return bool(decode(data).body[1][-1] == PROVE)

    assert not asked_for_a_proof(1.0)
    a.table.remove(b.id)
    assert asked_for_a_proof(2.0)


def test_a_proven_node_that_enters_the_table_by_asking_leaves_the_proof_book() -> None:
    """The same when the table takes the node later, from a request it sends us."""
    a, b = pair()
    a.table.heard_from = lambda *_, **__: None  # type: ignore[method-assign]
    a.engine.call(b.address, "ping", [a.id], b.id, Replies(), 0.0)
    deliver(a, b, 0.0)
    deliver(b, a, 0.01)  # proved, but the table kept it not
    a.out()
    assert a.engine.proofs.kept == 1
    del a.table.heard_from  # the table takes nodes again
    b.engine.call(a.address, "ping", [b.id], a.id, Replies(), 1.0)
    deliver(b, a, 1.0)
    assert a.table.get(b.id) is not None
    assert a.engine.proofs.kept == 0
