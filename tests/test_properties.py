"""Laws of select and consolidate, and codec round-trips, checked with hypothesis."""

from __future__ import annotations

import functools
import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from records import (
    ChatValidator,
    Identity,
    PresenceValidator,
    Record,
    Value,
    decode_record,
    default_validator,
    encode_record,
    make_message,
    make_receipts,
    presence_key,
)
from records.chat import MIN_ENTRY_TTL_MS, entry_id, next_receipt, page_of, parse_inbox_value
from records.presence import parse_announcement
from tests.records_factory import HOUR, NOW, identity, meta, presence

KEY = presence_key(identity("alice").id)
NODES = [f"node-{i}" for i in range(5)]


@functools.cache
def presence_pool() -> list[Record]:
    return [
        presence(node=node, now=NOW + step * 1000, ttl_ms=(step + 1) * 2000)
        for node in NODES
        for step in range(4)
    ]


@functools.cache
def meta_pool() -> list[Record]:
    return [meta(name=f"n{i}", now=NOW + i // 2, ttl_ms=HOUR) for i in range(6)]


presence_records = st.sampled_from(presence_pool())
record_lists = st.lists(presence_records, min_size=1, max_size=6)
nows = st.one_of(st.none(), st.integers(min_value=NOW, max_value=NOW + 12_000))
validators = st.sampled_from([PresenceValidator(), PresenceValidator(max_devices=2)])


@given(st.data(), validators, record_lists, nows)
def test_consolidate_is_commutative(
    data: st.DataObject, v: PresenceValidator, records: list[Record], now: int | None
) -> None:
    shuffled = data.draw(st.permutations(records))
    assert v.consolidate(KEY, records, now) == v.consolidate(KEY, shuffled, now)


@given(validators, record_lists, nows)
def test_consolidate_is_idempotent(
    v: PresenceValidator, records: list[Record], now: int | None
) -> None:
    once = v.consolidate(KEY, records, now)
    assert v.consolidate(KEY, [once], now) == once
    assert v.consolidate(KEY, [once, once], now) == once
    assert v.consolidate(KEY, records + records, now) == once


@given(validators, record_lists, record_lists, record_lists, nows)
def test_consolidate_is_associative(
    v: PresenceValidator, a: list[Record], b: list[Record], c: list[Record], now: int | None
) -> None:
    def merge(*groups: Record) -> Record:
        return v.consolidate(KEY, list(groups), now)

    left = merge(merge(*a, *b), *c)
    right = merge(*a, merge(*b, *c))
    assert left == right == merge(*a, *b, *c)


@settings(max_examples=50)
@given(record_lists)
def test_consolidated_records_stay_valid(records: list[Record]) -> None:
    merged = default_validator().consolidate(KEY, records, NOW)
    if merged.values:
        default_validator().validate(KEY, merged, NOW)


@given(st.data(), st.lists(st.sampled_from(meta_pool()), min_size=1, max_size=6))
def test_select_winner_is_order_independent(data: st.DataObject, records: list[Record]) -> None:
    v = default_validator()
    key = records[0].key
    shuffled = data.draw(st.permutations(records))
    assert records[v.select(key, records)] == shuffled[v.select(key, shuffled)]


@given(st.data(), record_lists)
def test_presence_select_is_order_independent(data: st.DataObject, records: list[Record]) -> None:
    v = default_validator()
    shuffled = data.draw(st.permutations(records))
    assert records[v.select(KEY, records)] == shuffled[v.select(KEY, shuffled)]


values = st.builds(
    Value,
    id2=st.text(max_size=50),
    creationDate=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    expirationDate=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    value=st.binary(max_size=300),
)


@given(
    st.text(max_size=100),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=50),
    st.lists(values, max_size=5),
)
def test_record_codec_round_trips(key: str, update: int, id1: str, vals: list[Value]) -> None:
    record = Record(key=key, updateDate=update, id1=id1)
    record.values.extend(vals)
    data = encode_record(record)
    assert decode_record(data, max_size=len(data)) == record
    assert encode_record(decode_record(data, max_size=len(data))) == data


@given(st.binary(min_size=32, max_size=32))
def test_identity_file_round_trips(seed: bytes) -> None:
    me = Identity.from_seed(seed)
    assert Identity.from_bytes(me.to_bytes()) == me


@settings(max_examples=20)
@given(st.sampled_from(NODES), st.integers(min_value=0, max_value=10**6))
def test_announcement_round_trips(node: str, offset: int) -> None:
    record = presence(node=node, now=NOW + offset)
    envelope, message = parse_announcement(record.values[0].value)
    assert envelope.SerializeToString(deterministic=True) == record.values[0].value
    assert message.created == NOW + offset
    assert message.node_identity == identity(node).public_key


@functools.cache
def chat_pool() -> list[Record]:
    """Entries and receipts of one inbox page: two versions of one message, receipts (two
    versions of one), expirations a second apart so a `now` can drop some; and batch receipts
    of two devices: each device's newer one lists the ids of its older one and more, and the
    two devices' receipts do not dominate each other (some only while an id is unexpired)."""
    alice, bob = identity("alice"), identity("bob")
    nonces: list[bytes] = []
    i = 0
    while len(nonces) < 4:
        n = hashlib.sha256(f"law-{i}".encode()).digest()[:24]
        if page_of(entry_id(alice.id, n)) == 0:
            nonces.append(n)
        i += 1
    pool = [
        make_message(
            alice,
            bob.public_key,
            b"hi",
            mime_type="text/plain",
            nonce=n,
            now=NOW + version * 1000,
            ttl_ms=MIN_ENTRY_TTL_MS + k * 1000,
        )
        for k, n in enumerate(nonces)
        for version in range(2)
    ]
    exp = [NOW + MIN_ENTRY_TTL_MS + k * 1000 for k in range(len(nonces))]
    ids = [entry_id(alice.id, n) for n in nonces]
    batches = [
        ([0], 4000),  # device 1
        ([0, 1], 6000),  # device 1 again: dominates its first
        ([2], 5500),  # device 2
        ([1, 2, 3], 7000),  # device 2 again: dominates its first; device 1's only once 0 expired
        ([0, 3], 6500),
    ]
    for listed, at in batches:
        pool.append(make_receipts(bob, [(ids[k], exp[k]) for k in listed], NOW + at))
    for k, n in enumerate(nonces[:2]):
        eid = entry_id(alice.id, n)
        for version in range(2 - k):
            pool.append(
                make_receipts(bob, [(eid, NOW + MIN_ENTRY_TTL_MS + k * 1000)], NOW + 5000 + version)
            )
    return pool + device_pool()


PHONE, LAPTOP = b"\x01" * 8, b"\x02" * 8


def device_pool() -> list[Record]:
    """Issue 17: messages naming Bob's phone and laptop (two versions of one), and receipts of
    each device for itself, older and newer, some listing ids for every device: which ones
    replace which, and which entries go, depends on all of them together."""
    alice, bob = identity("alice"), identity("bob")
    devices = PHONE + LAPTOP
    nonces: list[bytes] = []
    i = 0
    while len(nonces) < 3:
        n = hashlib.sha256(f"device-law-{i}".encode()).digest()[:24]
        if page_of(entry_id(alice.id, n, devices)) == 0:
            nonces.append(n)
        i += 1
    ttl = [MIN_ENTRY_TTL_MS + k * 1000 for k in range(3)]
    pool = [
        make_message(
            alice,
            bob.public_key,
            b"hi",
            mime_type="text/plain",
            nonce=n,
            now=NOW + version * 1000,
            ttl_ms=ttl[k],
            recipient_devices=[PHONE, LAPTOP],
        )
        for k, n in enumerate(nonces)
        for version in range(2 if k == 0 else 1)
    ]
    ids = [(entry_id(alice.id, n, devices), NOW + ttl[k]) for k, n in enumerate(nonces)]
    receipts = [  # (for every device, device, for that device, at)
        ([], PHONE, [0], 4100),
        ([], PHONE, [0, 1], 6100),  # replaces the phone's first
        ([], LAPTOP, [1], 5600),
        ([0], LAPTOP, [1, 2], 7100),  # replaces the laptop's first, and the phone's first
        ([2], PHONE, [0, 1], 6600),
    ]
    for everyone, device, own, at in receipts:
        pool.append(
            make_receipts(
                bob,
                [ids[k] for k in everyone],
                NOW + at,
                device=device,
                device_acknowledged=[ids[k] for k in own],
            )
        )
    return pool


chat_lists = st.lists(st.sampled_from(chat_pool()), min_size=1, max_size=6)
chat_nows = st.one_of(
    st.none(),
    st.integers(min_value=NOW + MIN_ENTRY_TTL_MS - 1000, max_value=NOW + MIN_ENTRY_TTL_MS + 3000),
)


@given(st.data(), chat_lists, chat_nows)
def test_chat_consolidate_is_commutative(
    data: st.DataObject, records: list[Record], now: int | None
) -> None:
    v, key = ChatValidator(), records[0].key
    shuffled = data.draw(st.permutations(records))
    assert v.consolidate(key, records, now) == v.consolidate(key, shuffled, now)


@given(chat_lists, chat_nows)
def test_chat_consolidate_is_idempotent(records: list[Record], now: int | None) -> None:
    v, key = ChatValidator(), records[0].key
    once = v.consolidate(key, records, now)
    assert v.consolidate(key, [once], now) == once
    assert v.consolidate(key, [once, once], now) == once
    assert v.consolidate(key, records + records, now) == once


@given(chat_lists, chat_lists, chat_lists, chat_nows)
def test_chat_consolidate_is_associative(
    a: list[Record], b: list[Record], c: list[Record], now: int | None
) -> None:
    v, key = ChatValidator(), a[0].key

    def merge(*groups: Record) -> Record:
        return v.consolidate(key, list(groups), now)

    left = merge(merge(*a, *b), *c)
    right = merge(*a, merge(*b, *c))
    assert left == right == merge(*a, *b, *c)


@settings(max_examples=50)
@given(chat_lists)
def test_chat_consolidated_records_stay_valid_and_acknowledged_entries_stay_gone(
    records: list[Record],
) -> None:
    key = records[0].key
    at = NOW + 6000
    merged = default_validator().consolidate(key, records, at)
    default_validator().validate(key, merged, at)

    def listed(values: list[Value]) -> set[bytes]:
        return {
            eid
            for v in values
            for eid, expiration in parse_inbox_value(v.value).acknowledged
            if expiration > at
        }

    acknowledged = listed([v for r in records for v in r.values])
    # every live id any receipt lists for every device is still listed, and no such entry held
    assert acknowledged <= listed(list(merged.values))
    assert not acknowledged & {
        parse_inbox_value(v.value).entry_id
        for v in merged.values
        if parse_inbox_value(v.value).kind != "receipt"
    }


def acknowledgements(values: list[Value], at: int) -> set[tuple[bytes, bytes]]:
    """(entry id, device) pairs the receipts among `values` acknowledge at `at` (b"*": every
    device)."""
    pairs: set[tuple[bytes, bytes]] = set()
    for value in values:
        parsed = parse_inbox_value(value.value)
        pairs |= {(eid, b"*") for eid, exp in parsed.acknowledged if exp > at}
        pairs |= {(eid, parsed.device) for eid, exp in parsed.device_acknowledged if exp > at}
    return pairs


@settings(max_examples=50)
@given(chat_lists, st.integers(min_value=NOW + 8000, max_value=NOW + MIN_ENTRY_TTL_MS + 3000))
def test_chat_consolidate_keeps_an_entry_until_each_of_its_devices_acknowledged_it(
    records: list[Record], at: int
) -> None:
    """Issue 17: merging drops exactly the entries a receipt lists for every device, or each
    device they name listed (naming none: any receipt lists), and keeps every acknowledgement
    any receipt made."""
    key = records[0].key
    merged = default_validator().consolidate(key, records, at)
    if merged.values:  # (at `at`, everything may have expired)
        default_validator().validate(key, merged, at)
    given_values = [v for r in records for v in r.values]
    made = acknowledgements(given_values, at)
    kept = acknowledgements(list(merged.values), at)
    for eid, device in made:
        assert (eid, b"*") in kept or (eid, device) in kept

    def done(eid: bytes, devices: tuple[bytes, ...]) -> bool:
        if (eid, b"*") in made:
            return True
        if not devices:
            return any(listed == eid for listed, _ in made)
        return all((eid, device) in made for device in devices)

    live = {
        parse_inbox_value(v.value).entry_id: parse_inbox_value(v.value).devices
        for v in given_values
        if parse_inbox_value(v.value).kind != "receipt" and v.expirationDate > at
    }
    held = {
        parse_inbox_value(v.value).entry_id
        for v in merged.values
        if parse_inbox_value(v.value).kind != "receipt"
    }
    assert held == {eid for eid, devices in live.items() if not done(eid, devices)}


@functools.cache
def device_messages() -> tuple[Record, ...]:
    """Three messages on page 0 of Bob's inbox, each naming his phone and laptop."""
    return tuple(
        r for r in device_pool() if parse_inbox_value(r.values[0].value).kind == "message"
    )[1:]  # (the pool holds two versions of the first)


reads = st.lists(
    st.tuples(
        st.sampled_from([PHONE, LAPTOP]),  # which device reads
        st.sets(st.integers(0, 2), min_size=1),  # which of the three messages
        st.integers(0, 100),  # how stale the page it saw is (an index into what holders had)
    ),
    max_size=6,
)


@settings(max_examples=60)
@given(reads, st.randoms(use_true_random=False))
def test_devices_reading_from_stale_pages_drop_exactly_what_both_read(
    steps: list[tuple[bytes, set[int], int]], rng: random.Random
) -> None:
    """Issue 17: the phone and the laptop read messages from whatever version of the page they
    got (a stale one, as concurrent devices do), each writing `next_receipt`; holders merge the
    receipts in any order. A message goes exactly when both have read it, and stays for the one
    that has not; nothing a device acknowledged is forgotten."""
    bob = identity("bob")
    v = ChatValidator()
    messages = device_messages()
    key = messages[0].key
    versions = [v.consolidate(key, list(messages), NOW)]  # the page as holders had it, in turn
    receipts: list[Record] = []
    read_by: dict[bytes, set[bytes]] = {PHONE: set(), LAPTOP: set()}
    for k, (device, chosen, stale) in enumerate(steps):
        seen = versions[stale % len(versions)]
        read = []
        for i in sorted(chosen):
            value = messages[i].values[0]
            eid = bytes.fromhex(value.id2)
            read.append((eid, value.expirationDate, (PHONE, LAPTOP)))
            read_by[device].add(eid)
        plan = next_receipt(bob, seen, device, read, NOW + 100 + k)
        assert plan.record is not None or plan.already == {eid for eid, _, _ in read}
        if plan.record is not None:
            receipts.append(plan.record)
            versions.append(v.consolidate(key, [versions[-1], plan.record], NOW + 100 + k))
    shuffled = list(messages) + receipts
    rng.shuffle(shuffled)
    final = v.consolidate(key, shuffled, NOW + 1000)
    assert final == versions[-1]  # the order receipts arrive in changes nothing
    held = {
        parse_inbox_value(x.value).entry_id
        for x in final.values
        if parse_inbox_value(x.value).kind == "message"
    }
    every = {bytes.fromhex(m.values[0].id2) for m in messages}
    assert held == every - (read_by[PHONE] & read_by[LAPTOP])
    mine = acknowledgements(list(final.values), NOW + 1000)
    for device, ids in read_by.items():
        assert all((eid, b"*") in mine or (eid, device) in mine for eid in ids)
