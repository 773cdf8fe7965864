"""Chat inbox formats and the chat validator (seed 003), with no event loop."""

from __future__ import annotations

import hashlib

import pytest

from records import (
    ChatValidator,
    DecryptionFailed,
    InvalidRecord,
    Record,
    RecordTooLarge,
    Value,
    chat_key,
    default_validator,
    encode_record,
    inbox_keys,
    make_handshake,
    make_message,
    make_receipts,
    make_sent_copy,
)
from records.chat import (
    DAY_MS,
    HANDSHAKE_CONTEXT,
    INBOX_PAGES,
    MAX_ENTRIES_PER_PAGE,
    MAX_RECEIPT_IDS,
    MAX_RECEIPTS_PER_PAGE,
    MESSAGE_CONTEXT,
    RECEIPT_BYTES_PER_PAGE,
    RECEIPT_CONTEXT,
    conversation_key,
    decrypt_message,
    entry_id,
    next_receipt,
    page_of,
    parse_chat_key,
    parse_inbox_value,
    receipt_id2,
)
from records.chat_pb2 import ChatMessage, Handshake, Receipt, SignedInboxEntry
from records.identity import signing_input
from records.validation import MAX_RECORD_SIZE
from tests.records_factory import NOW, identity

ALICE = identity("alice")
BOB = identity("bob")
MALLORY = identity("mallory")
TEXT = "text/plain; charset=utf-8"


def nonce(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:24]


def nonces_on_page(sender: bytes, page: int, count: int) -> list[bytes]:
    """`count` distinct nonces whose entry ids (for `sender`) land on `page`."""
    found: list[bytes] = []
    i = 0
    while len(found) < count:
        n = nonce(f"n{i}")
        if page_of(entry_id(sender, n)) == page:
            found.append(n)
        i += 1
    return found


def message(
    text: bytes = b"hi bob", *, sender: str = "alice", label: str = "m1", now: int = NOW
) -> Record:
    return make_message(
        identity(sender), BOB.public_key, text, mime_type=TEXT, nonce=nonce(label), now=now
    )


def reason_of(record: Record, now: int = NOW) -> str:
    with pytest.raises(InvalidRecord) as info:
        default_validator().validate(record.key, record, now)
    return info.value.reason


def resign_message(record: Record, edit: ChatMessage, signer: object) -> Record:
    """`record` with its message replaced by `edit`, signed by `signer`."""
    body = edit.SerializeToString(deterministic=True)
    sig = signer.sign(signing_input(MESSAGE_CONTEXT, body))  # type: ignore[attr-defined]
    out = Record()
    out.CopyFrom(record)
    out.values[0].value = SignedInboxEntry(message=body, signature=sig).SerializeToString()
    out.values[0].id2 = edit.message_id.hex()
    return out


def test_keys_name_pages_of_the_uid() -> None:
    keys = inbox_keys(BOB.id)
    assert len(keys) == INBOX_PAGES
    assert keys[3] == f"/chat/{BOB.id_hex}/3/"
    assert parse_chat_key(keys[3]) == (BOB.id_hex, 3)
    for bad in ("/chat/xyz/1/", f"/chat/{BOB.id_hex}/", f"/chat/{BOB.id_hex}/16/", "/chat/a/b/c/"):
        with pytest.raises(InvalidRecord) as info:
            parse_chat_key(bad)
        assert info.value.reason == "bad_key"


def test_message_is_valid_and_readable_by_the_recipient_only() -> None:
    record = message(b"hello")
    default_validator().validate(record.key, record, NOW)
    parsed = parse_inbox_value(record.values[0].value)
    assert isinstance(parsed.body, ChatMessage)
    assert parsed.body.ciphertext.find(b"hello") == -1  # encrypted
    content = decrypt_message(parsed.body, conversation_key(BOB, ALICE.public_key))
    assert (content.mime_type, content.data) == (TEXT, b"hello")
    with pytest.raises(DecryptionFailed):
        decrypt_message(parsed.body, conversation_key(MALLORY, ALICE.public_key))


def test_message_tampering_is_refused_with_a_reason() -> None:
    record = message()
    parsed = parse_inbox_value(record.values[0].value)
    assert isinstance(parsed.body, ChatMessage)

    # wrong signature: one bit of the ciphertext flipped after signing
    flipped = Record()
    flipped.CopyFrom(record)
    envelope = SignedInboxEntry.FromString(flipped.values[0].value)
    edited = ChatMessage.FromString(envelope.message)
    edited.ciphertext = bytes([edited.ciphertext[0] ^ 1]) + edited.ciphertext[1:]
    envelope.message = edited.SerializeToString(deterministic=True)
    flipped.values[0].value = envelope.SerializeToString()
    assert reason_of(flipped) == "bad_signature"

    # wrong sender uid: Mallory signs a message that claims to come from Alice
    claim = ChatMessage()
    claim.CopyFrom(parsed.body)
    claim.sender_public_key = MALLORY.public_key
    assert reason_of(resign_message(record, claim, MALLORY)) == "sender_uid_mismatch"

    # a message for Bob moved into Mallory's inbox
    moved = Record()
    moved.CopyFrom(record)
    moved.key = chat_key(MALLORY.id, page_of(parsed.entry_id))
    moved.id1 = MALLORY.id_hex
    with pytest.raises(InvalidRecord) as info:
        default_validator().validate(moved.key, moved, NOW)
    assert info.value.reason == "recipient_mismatch"

    # another sender's id taken (Mallory reuses Alice's message id)
    steal = make_message(MALLORY, BOB.public_key, b"x", mime_type=TEXT, nonce=nonce("x"), now=NOW)
    stolen = ChatMessage.FromString(SignedInboxEntry.FromString(steal.values[0].value).message)
    stolen.message_id = parsed.entry_id
    assert reason_of(resign_message(steal, stolen, MALLORY)) in {"bad_entry_id", "wrong_page"}

    # unsigned dates stretched
    stretched = Record()
    stretched.CopyFrom(record)
    stretched.values[0].expirationDate += DAY_MS
    assert reason_of(stretched) == "unsigned_date_mismatch"


def test_lifetime_is_three_to_seven_days() -> None:
    with pytest.raises(ValueError, match="3 to 7 days"):
        make_handshake(ALICE, BOB.id, nonce=nonce("h"), now=NOW, ttl_ms=DAY_MS)
    long = make_handshake(ALICE, BOB.id, nonce=nonce("h"), now=NOW, ttl_ms=7 * DAY_MS)
    default_validator().validate(long.key, long, NOW)
    record = message()
    assert reason_of(record, NOW + 3 * DAY_MS) == "expired"
    assert reason_of(record, NOW - 3600_000) == "future_dated"


def test_receipt_replaces_its_entry_and_refuses_the_replay() -> None:
    v = ChatValidator()
    record = message()
    value = record.values[0]
    receipt = make_receipts(BOB, [(bytes.fromhex(value.id2), value.expirationDate)], NOW + 1000)
    default_validator().validate(receipt.key, receipt, NOW + 1000)
    merged = v.consolidate(record.key, [record, receipt], NOW + 1000)
    assert [parse_inbox_value(x.value).kind for x in merged.values] == ["receipt"]
    with pytest.raises(InvalidRecord) as info:
        v.admit(record.key, merged, record, NOW + 2000)
    assert info.value.reason == "acknowledged"
    # the receipt lives until the message would have expired, then both are gone
    assert v.consolidate(record.key, [merged, record], value.expirationDate).values == []

    forged = make_receipts(MALLORY, [(bytes.fromhex(value.id2), value.expirationDate)], NOW)
    forged.key, forged.id1 = record.key, BOB.id_hex
    assert reason_of(forged) == "not_recipient"


def test_full_page_refuses_more_and_keeps_what_it_holds() -> None:
    v = ChatValidator()
    records = [
        make_message(ALICE, BOB.public_key, f"m{i}".encode(), mime_type=TEXT, nonce=n, now=NOW)
        for i, n in enumerate(nonces_on_page(ALICE.id, 5, MAX_ENTRIES_PER_PAGE + 1))
    ]
    held = records[0]
    for record in records[1:-1]:
        v.admit(record.key, held, record, NOW)
        held = v.consolidate(record.key, [held, record], NOW)
    with pytest.raises(InvalidRecord) as info:
        v.admit(held.key, held, records[-1], NOW)
    assert info.value.reason == "inbox_full"
    assert len(held.values) == MAX_ENTRIES_PER_PAGE
    default_validator().validate(held.key, held, NOW)
    # receipts make room: one acknowledged entry lets the refused one in
    first = held.values[0]
    receipt = make_receipts(BOB, [(bytes.fromhex(first.id2), first.expirationDate)], NOW)
    held = v.consolidate(held.key, [held, receipt], NOW)
    v.admit(held.key, held, records[-1], NOW)
    # a full page plus a full set of receipts still fits one record
    assert len(encode_record(held)) + RECEIPT_BYTES_PER_PAGE <= MAX_RECORD_SIZE


def test_oversized_message_is_refused_at_the_sender() -> None:
    with pytest.raises(RecordTooLarge):
        message(b"x" * 800)
    message(b"x" * 690)


def test_value_with_a_foreign_id2_is_refused() -> None:
    record = message()
    record.values[0].id2 = "00" * 16
    assert reason_of(record) == "id_mismatch"
    empty = Record(key=record.key, updateDate=NOW, id1=BOB.id_hex)
    empty.values.append(Value(id2="00" * 16, creationDate=NOW, expirationDate=NOW + 1, value=b""))
    assert reason_of(empty) == "malformed_value"


def test_handshake_must_carry_the_senders_own_x25519_key() -> None:
    record = make_handshake(ALICE, BOB.id, nonce=nonce("h"), now=NOW)
    default_validator().validate(record.key, record, NOW)
    envelope = SignedInboxEntry.FromString(record.values[0].value)
    body = Handshake.FromString(envelope.handshake)
    body.x25519_key = MALLORY.x25519_public_key
    raw = body.SerializeToString(deterministic=True)
    record.values[0].value = SignedInboxEntry(
        handshake=raw, signature=ALICE.sign(signing_input(HANDSHAKE_CONTEXT, raw))
    ).SerializeToString()
    assert reason_of(record) == "x25519_key_mismatch"


def test_a_new_message_beside_an_acknowledged_one_is_merged_not_refused() -> None:
    v = ChatValidator()
    first, second = (
        make_message(ALICE, BOB.public_key, text, mime_type=TEXT, nonce=n, now=NOW)
        for text, n in zip((b"read", b"new"), nonces_on_page(ALICE.id, 2, 2), strict=True)
    )
    read = first.values[0]
    receipt = make_receipts(BOB, [(bytes.fromhex(read.id2), read.expirationDate)], NOW + 1000)
    held = v.consolidate(first.key, [first, receipt], NOW + 1000)
    # the sender's node keeps everything it sent to one page as one record, and sends that
    senders_copy = v.consolidate(first.key, [first, second], NOW + 1000)
    v.admit(held.key, held, senders_copy, NOW + 2000)
    merged = v.consolidate(held.key, [held, senders_copy], NOW + 2000)
    kinds = {x.id2: parse_inbox_value(x.value).kind for x in merged.values}
    assert kinds == {receipt.values[0].id2: "receipt", second.values[0].id2: "message"}
    assert parse_inbox_value(receipt.values[0].value).acknowledged == (
        (bytes.fromhex(read.id2), read.expirationDate),
    )
    # once the page holds all of it, the same copy brings nothing back: a replay
    with pytest.raises(InvalidRecord) as info:
        v.admit(merged.key, merged, senders_copy, NOW + 3000)
    assert info.value.reason == "acknowledged"


def test_signed_lifetime_must_be_three_to_seven_days() -> None:
    record = message()
    body = ChatMessage.FromString(SignedInboxEntry.FromString(record.values[0].value).message)
    cases = [
        (3 * DAY_MS - 1, "ttl_too_short"),
        (7 * DAY_MS + 1, "ttl_too_long"),
        (3 * DAY_MS, None),
        (7 * DAY_MS, None),
    ]
    for ttl, reason in cases:
        edit = ChatMessage()
        edit.CopyFrom(body)
        edit.expiration = body.timestamp + ttl
        signed = resign_message(record, edit, ALICE)
        signed.values[0].expirationDate = edit.expiration  # the value's dates follow the signed
        if reason is None:
            default_validator().validate(signed.key, signed, NOW)
        else:
            assert reason_of(signed) == reason
    # the unsigned dates cannot stand in for the signed ones
    stretched = Record()
    stretched.CopyFrom(record)
    stretched.values[0].expirationDate = NOW + 2 * DAY_MS
    assert reason_of(stretched) == "unsigned_date_mismatch"


def test_entries_are_bound_to_their_page_inbox_and_id() -> None:
    record = message()
    parsed = parse_inbox_value(record.values[0].value)
    other = (page_of(parsed.entry_id) + 1) % INBOX_PAGES
    moved = Record()
    moved.CopyFrom(record)
    moved.key = chat_key(BOB.id, other)
    assert reason_of(moved) == "wrong_page"
    renamed = Record()
    renamed.CopyFrom(record)
    renamed.id1 = MALLORY.id_hex
    assert reason_of(renamed) == "client_id_mismatch"
    # Mallory takes Alice's message id on the page it belongs to
    steal = make_message(MALLORY, BOB.public_key, b"x", mime_type=TEXT, nonce=nonce("x"), now=NOW)
    stolen = ChatMessage.FromString(SignedInboxEntry.FromString(steal.values[0].value).message)
    stolen.message_id = parsed.entry_id
    taken = resign_message(steal, stolen, MALLORY)
    taken.key = record.key
    assert reason_of(taken) == "bad_entry_id"


def ids_on_page(page: int, count: int, start: int = 0) -> list[bytes]:
    """`count` distinct (fake) entry ids on `page`."""
    return [
        bytes([page + 16 * (k % 16)]) + k.to_bytes(15, "big") for k in range(start, start + count)
    ]


def signed_receipt(signer: object, body: Receipt, page: int, owner: bytes = BOB.id) -> Record:
    """A page record of `owner`'s inbox with `body` as a receipt signed by `signer`, built by
    hand (`make_receipts` refuses to build what holders refuse)."""
    raw = body.SerializeToString(deterministic=True)
    sig = signer.sign(signing_input(RECEIPT_CONTEXT, raw))  # type: ignore[attr-defined]
    record = Record(key=chat_key(owner, page), updateDate=body.timestamp, id1=owner.hex())
    record.values.append(
        Value(
            id2=receipt_id2(raw),
            creationDate=body.timestamp,
            expirationDate=max(body.expirations),
            value=SignedInboxEntry(receipt=raw, signature=sig).SerializeToString(),
        )
    )
    return record


def test_a_page_holds_a_bounded_number_of_receipts() -> None:
    page = 4
    expiration = NOW + 3 * DAY_MS
    ids = ids_on_page(page, MAX_RECEIPT_IDS + 1)
    # one receipt lists at most MAX_RECEIPT_IDS ids
    full = make_receipts(BOB, [(i, expiration) for i in ids[:-1]], NOW)
    default_validator().validate(full.key, full, NOW)
    with pytest.raises(ValueError, match="1 to"):
        make_receipts(BOB, [(i, expiration) for i in ids], NOW)
    body = Receipt(
        recipient_public_key=BOB.public_key,
        timestamp=NOW,
        entry_ids=b"".join(sorted(ids)),
        expirations=[expiration] * len(ids),
    )
    assert reason_of(signed_receipt(BOB, body, page)) in {"receipts_full", "value_too_large"}
    # at most MAX_RECEIPTS_PER_PAGE receipts that do not replace each other (disjoint ids)
    v = ChatValidator()
    held = make_receipts(BOB, [(ids[0], expiration)], NOW)
    for k in range(1, MAX_RECEIPTS_PER_PAGE):
        one = make_receipts(BOB, [(ids[k], expiration)], NOW + k)
        v.admit(held.key, held, one, NOW + k)
        held = v.consolidate(held.key, [held, one], NOW + k)
    assert len(held.values) == MAX_RECEIPTS_PER_PAGE
    default_validator().validate(held.key, held, NOW + 10)
    one_more = make_receipts(BOB, [(ids[-1], expiration)], NOW + 10)
    with pytest.raises(InvalidRecord) as info:
        v.admit(held.key, held, one_more, NOW + 10)
    assert info.value.reason == "receipts_full"
    # and at most RECEIPT_BYTES_PER_PAGE bytes of them: two long lists that do not replace
    # each other do not fit
    half = MAX_RECEIPT_IDS // 2
    first = make_receipts(BOB, [(i, expiration) for i in ids[:half]], NOW)
    second = make_receipts(BOB, [(i, expiration) for i in ids[half : 2 * half]], NOW + 1)
    with pytest.raises(InvalidRecord) as info:
        v.admit(first.key, first, second, NOW + 1)
    assert info.value.reason == "receipts_full"
    assert reason_of(v.consolidate(first.key, [first, second], NOW + 1), NOW + 1) == (
        "receipts_full"
    )
    # a receipt listing both (newer) replaces them, so it is admitted
    both = make_receipts(BOB, [(i, expiration) for i in ids[: 2 * half]], NOW + 2)
    v.admit(full.key, first, both, NOW + 2)
    assert v.consolidate(first.key, [first, second, both], NOW + 2).values == both.values


def test_signatures_are_separated_by_kind() -> None:
    record = message()
    envelope = SignedInboxEntry.FromString(record.values[0].value)
    for context in (HANDSHAKE_CONTEXT, RECEIPT_CONTEXT, b""):
        resigned = Record()
        resigned.CopyFrom(record)
        resigned.values[0].value = SignedInboxEntry(
            message=envelope.message, signature=ALICE.sign(signing_input(context, envelope.message))
        ).SerializeToString()
        assert reason_of(resigned) == "bad_signature"
    handshake = make_handshake(ALICE, BOB.id, nonce=nonce("h"), now=NOW)
    body = SignedInboxEntry.FromString(handshake.values[0].value).handshake
    handshake.values[0].value = SignedInboxEntry(
        handshake=body, signature=ALICE.sign(signing_input(MESSAGE_CONTEXT, body))
    ).SerializeToString()
    assert reason_of(handshake) == "bad_signature"
    # a receipt's signature is not a message's: the same bytes under the receipt kind fail
    as_receipt = Record()
    as_receipt.CopyFrom(record)
    as_receipt.values[0].value = SignedInboxEntry(
        receipt=envelope.message, signature=envelope.signature
    ).SerializeToString()
    with pytest.raises(InvalidRecord):
        default_validator().validate(as_receipt.key, as_receipt, NOW)


def test_a_receipt_outranks_even_a_newer_copy_of_its_entry() -> None:
    v = ChatValidator()
    record = message(label="again")
    value = record.values[0]
    receipt = make_receipts(BOB, [(bytes.fromhex(value.id2), value.expirationDate)], NOW + 1000)
    later = message(label="again", now=NOW + 5000)  # the sender re-sends it under the same id
    assert later.values[0].id2 == value.id2
    for records in ([receipt, later], [later, receipt]):
        merged = v.consolidate(record.key, records, NOW + 6000)
        assert [parse_inbox_value(x.value).kind for x in merged.values] == ["receipt"]
    with pytest.raises(InvalidRecord) as info:
        v.admit(receipt.key, receipt, later, NOW + 6000)
    assert info.value.reason == "acknowledged"


def page_messages(page: int, count: int, now: int = NOW) -> list[Record]:
    """`count` messages from Alice to Bob whose ids land on `page`."""
    return [
        make_message(ALICE, BOB.public_key, f"m{i}".encode(), mime_type=TEXT, nonce=n, now=now)
        for i, n in enumerate(nonces_on_page(ALICE.id, page, count))
    ]


def acked(record: Record) -> list[tuple[bytes, int]]:
    return [(bytes.fromhex(v.id2), v.expirationDate) for v in record.values]


def test_one_receipt_acknowledges_a_batch_and_refuses_every_replay() -> None:
    v = ChatValidator()
    messages = page_messages(6, 5)
    receipt = make_receipts(BOB, [e for m in messages for e in acked(m)], NOW + 1000)
    assert len(receipt.values) == 1
    assert receipt.values[0].id2.startswith("receipt-")
    default_validator().validate(receipt.key, receipt, NOW + 1000)
    held = v.consolidate(receipt.key, [*messages, receipt], NOW + 1000)
    assert held.values == receipt.values
    for m in messages:
        with pytest.raises(InvalidRecord) as info:
            v.admit(held.key, held, m, NOW + 2000)
        assert info.value.reason == "acknowledged"
    # the receipt lives until the last listed entry would have expired
    expiration = max(m.values[0].expirationDate for m in messages)
    assert receipt.values[0].expirationDate == expiration
    assert v.consolidate(held.key, [held, *messages], expiration).values == []


def test_a_receipt_for_another_page_or_by_someone_else_is_refused() -> None:
    ids = [bytes.fromhex(m.values[0].id2) for m in page_messages(3, 2)]
    expiration = NOW + 3 * DAY_MS
    good = make_receipts(BOB, [(i, expiration) for i in ids], NOW)
    default_validator().validate(good.key, good, NOW)
    moved = Record()
    moved.CopyFrom(good)
    moved.key = chat_key(BOB.id, 4)
    assert reason_of(moved) == "wrong_page"
    with pytest.raises(ValueError, match="one page"):
        make_receipts(BOB, [(ids[0], expiration), (ids_on_page(4, 1)[0], expiration)], NOW)
    mixed = Receipt(
        recipient_public_key=BOB.public_key,
        timestamp=NOW,
        entry_ids=b"".join(sorted([ids[0], ids_on_page(4, 1)[0]])),
        expirations=[expiration, expiration],
    )
    assert reason_of(signed_receipt(BOB, mixed, 3)) == "wrong_page"
    # Mallory's receipt for Bob's inbox, signed by her or claiming Bob's key
    forged = make_receipts(MALLORY, [(i, expiration) for i in ids], NOW)
    forged.key, forged.id1 = good.key, BOB.id_hex
    assert reason_of(forged) == "not_recipient"
    claim = Receipt.FromString(SignedInboxEntry.FromString(good.values[0].value).receipt)
    claim.entry_ids = b"".join(sorted([*ids, ids_on_page(3, 1, start=100)[0]]))
    claim.expirations.append(expiration)
    assert reason_of(signed_receipt(MALLORY, claim, 3)) == "bad_signature"
    # the id2 is bound to the signed receipt: another one's id2 is refused
    renamed = Record()
    renamed.CopyFrom(good)
    renamed.values[0].id2 = "receipt-" + "00" * 16
    assert reason_of(renamed) == "id_mismatch"
    renamed.values[0].id2 = ids[0].hex()
    assert reason_of(renamed) == "id_mismatch"


def test_a_dominated_receipt_is_dropped_and_two_devices_receipts_are_kept() -> None:
    v = ChatValidator()
    ids = ids_on_page(9, 4)
    soon, late = NOW + 3 * DAY_MS, NOW + 4 * DAY_MS
    old = make_receipts(BOB, [(ids[0], soon), (ids[1], late)], NOW)
    newer = make_receipts(BOB, [(ids[0], soon), (ids[1], late), (ids[2], late)], NOW + 10)
    for records in ([old, newer], [newer, old]):
        assert v.consolidate(old.key, records, NOW + 20).values == newer.values
    v.admit(old.key, old, newer, NOW + 20)  # and it is admitted over the old one
    # a newer receipt listing fewer ids does not replace an older, longer one
    subset = make_receipts(BOB, [(ids[1], late)], NOW + 20)
    assert len(v.consolidate(old.key, [newer, subset], NOW + 30).values) == 2
    # two devices acknowledging at once: neither lists all of the other's ids, both kept
    device1 = make_receipts(BOB, [(ids[0], soon), (ids[1], late)], NOW + 30)
    device2 = make_receipts(BOB, [(ids[1], late), (ids[3], late)], NOW + 31)
    both = v.consolidate(old.key, [device1, device2], NOW + 40)
    assert both.values == sorted([*device1.values, *device2.values], key=lambda x: x.id2)
    default_validator().validate(both.key, both, NOW + 40)
    # once ids[0] expired, device2's newer receipt lists every live id of device1's
    assert v.consolidate(old.key, [device1, device2], soon).values == device2.values
    # the next acknowledgement lists the union and replaces both
    union = make_receipts(BOB, [(ids[0], soon), (ids[1], late), (ids[3], late)], NOW + 50)
    assert v.consolidate(old.key, [both, union], NOW + 60).values == union.values


def test_a_full_page_of_entries_and_receipts_fits_one_record() -> None:
    v = ChatValidator()
    messages = page_messages(2, MAX_ENTRIES_PER_PAGE + MAX_RECEIPT_IDS)
    held = v.consolidate(messages[0].key, messages[:MAX_ENTRIES_PER_PAGE], NOW)
    receipt = make_receipts(
        BOB, [e for m in messages[MAX_ENTRIES_PER_PAGE:] for e in acked(m)], NOW + 1
    )
    v.admit(held.key, held, receipt, NOW + 1)
    full = v.consolidate(held.key, [held, receipt], NOW + 1)
    default_validator().validate(full.key, full, NOW + 1)
    assert len(full.values) == MAX_ENTRIES_PER_PAGE + 1
    assert len(encode_record(full)) <= MAX_RECORD_SIZE
    assert MAX_RECEIPT_IDS >= 80


# -- many devices (seed 003 "Message Syncing", issue 17) --------------------------------------

PHONE, LAPTOP, TABLET = b"\x01" * 8, b"\x02" * 8, b"\x03" * 8


def to_devices(
    devices: list[bytes], page: int = 8, count: int = 1, sender: object = ALICE
) -> list[Record]:
    """`count` messages to Bob on `page` naming Bob's `devices`."""
    out: list[Record] = []
    i = 0
    while len(out) < count:
        n = nonce(f"dev{i}")
        i += 1
        record = make_message(
            sender,  # type: ignore[arg-type]
            BOB.public_key,
            b"hi",
            mime_type=TEXT,
            nonce=n,
            now=NOW,
            recipient_devices=devices,
        )
        if page_of(bytes.fromhex(record.values[0].id2)) == page:
            out.append(record)
    return out


def kinds(record: Record) -> list[str]:
    return [parse_inbox_value(v.value).kind for v in record.values]


def device_receipt(device: bytes, records: list[Record], now: int) -> Record:
    """Bob's `device` acknowledging `records` for itself alone."""
    acks = [e for r in records for e in acked(r)]
    return make_receipts(BOB, [], now, device=device, device_acknowledged=acks)


def test_a_message_stays_until_every_device_it_names_acknowledged_it() -> None:
    v = ChatValidator()
    (record,) = to_devices([PHONE, LAPTOP])
    default_validator().validate(record.key, record, NOW)
    assert parse_inbox_value(record.values[0].value).devices == (PHONE, LAPTOP)
    # the phone reads it: the page keeps it for the laptop, and a copy of it is no replay
    phone = device_receipt(PHONE, [record], NOW + 1000)
    default_validator().validate(phone.key, phone, NOW + 1000)
    held = v.consolidate(record.key, [record, phone], NOW + 1000)
    assert sorted(kinds(held)) == ["message", "receipt"]
    v.admit(held.key, held, record, NOW + 2000)
    # a receipt of a device the message does not name changes nothing either
    tablet = device_receipt(TABLET, [record], NOW + 1500)
    assert "message" in kinds(v.consolidate(record.key, [held, tablet], NOW + 2000))
    # the laptop reads it: every named device has, so every holder drops it for good
    laptop = device_receipt(LAPTOP, [record], NOW + 3000)
    for records in ([held, laptop], [laptop, record, phone]):
        assert kinds(v.consolidate(record.key, records, NOW + 3000)) == ["receipt", "receipt"]
    done = v.consolidate(record.key, [held, laptop], NOW + 3000)
    with pytest.raises(InvalidRecord) as info:
        v.admit(done.key, done, record, NOW + 4000)
    assert (info.value.reason, info.value.final) == ("acknowledged", True)
    # as when the last device to read it lists it for every device
    last = make_receipts(BOB, acked(record), NOW + 3000)
    assert kinds(v.consolidate(record.key, [held, last], NOW + 3000)) == ["receipt"]


def test_a_one_device_user_acknowledges_as_before() -> None:
    v = ChatValidator()
    (record,) = to_devices([PHONE])
    receipt = make_receipts(BOB, acked(record), NOW + 1000)  # the last (only) device to read it
    body = Receipt.FromString(SignedInboxEntry.FromString(receipt.values[0].value).receipt)
    assert (body.device, body.device_entry_ids) == (b"", b"")  # the receipt format before
    held = v.consolidate(record.key, [record, receipt], NOW + 1000)
    assert kinds(held) == ["receipt"]
    with pytest.raises(InvalidRecord) as info:
        v.admit(held.key, held, record, NOW + 2000)
    assert info.value.reason == "acknowledged"
    # an entry naming no device (as every entry before devices) goes with any device's receipt
    (legacy,) = to_devices([])
    one = device_receipt(PHONE, [legacy], NOW + 1000)
    assert kinds(v.consolidate(legacy.key, [legacy, one], NOW + 1000)) == ["receipt"]


def test_entry_ids_bind_the_devices_an_entry_names() -> None:
    (legacy,) = to_devices([])
    body = ChatMessage.FromString(SignedInboxEntry.FromString(legacy.values[0].value).message)
    # an entry naming no device has the id entries always had: sender and nonce
    assert body.message_id == entry_id(ALICE.id, body.nonce)
    (named,) = to_devices([LAPTOP, PHONE])  # given in any order, carried ascending
    body = ChatMessage.FromString(SignedInboxEntry.FromString(named.values[0].value).message)
    assert body.recipient_devices == PHONE + LAPTOP
    assert body.message_id == entry_id(ALICE.id, body.nonce, PHONE + LAPTOP)
    # the sender re-signs it naming fewer devices under the same id: refused
    fewer = ChatMessage()
    fewer.CopyFrom(body)
    fewer.recipient_devices = PHONE
    assert reason_of(resign_message(named, fewer, ALICE)) == "bad_entry_id"
    for bad in (
        LAPTOP + PHONE,
        PHONE + PHONE,
        PHONE[:7],
        b"".join(bytes([k]) * 8 for k in range(17)),
    ):
        edit = ChatMessage()
        edit.CopyFrom(body)
        edit.recipient_devices = bad
        assert reason_of(resign_message(named, edit, ALICE)) == "malformed_value"
    with pytest.raises(ValueError, match="at most 16"):
        to_devices([bytes([k]) * 8 for k in range(17)])
    handshake = make_handshake(ALICE, BOB.id, nonce=nonce("h"), now=NOW, recipient_devices=[PHONE])
    default_validator().validate(handshake.key, handshake, NOW)
    assert parse_inbox_value(handshake.values[0].value).devices == (PHONE,)


def test_receipts_list_ids_for_every_device_or_for_one() -> None:
    records = to_devices([PHONE, LAPTOP], page=10, count=3)
    ids = [acked(r)[0] for r in records]
    mixed = make_receipts(BOB, ids[:1], NOW, device=PHONE, device_acknowledged=ids[1:])
    default_validator().validate(mixed.key, mixed, NOW)
    parsed = parse_inbox_value(mixed.values[0].value)
    assert (parsed.acknowledged, parsed.device, parsed.device_acknowledged) == (
        tuple(ids[:1]),
        PHONE,
        tuple(sorted(ids[1:])),
    )
    # an id listed both ways counts for every device
    both = make_receipts(BOB, ids[:1], NOW, device=PHONE, device_acknowledged=ids[:1])
    assert parse_inbox_value(both.values[0].value).device_acknowledged == ()
    with pytest.raises(ValueError, match="tag"):
        make_receipts(BOB, [], NOW, device=b"", device_acknowledged=ids)
    # hand-made receipts that break the format are refused
    base = Receipt(
        recipient_public_key=BOB.public_key,
        timestamp=NOW,
        entry_ids=ids[0][0],
        expirations=[ids[0][1]],
        device=PHONE,
        device_entry_ids=ids[1][0],
        device_expirations=[ids[1][1]],
    )
    good = signed_receipt(BOB, base, 10)
    default_validator().validate(good.key, good, NOW)
    for field, value in (
        ("device", b""),  # ids for one device but no device
        ("device", PHONE[:4]),
        ("device_entry_ids", ids[0][0]),  # the same id both ways
        ("device_expirations", []),
    ):
        bad = Receipt()
        bad.CopyFrom(base)
        if field == "device_expirations":
            del bad.device_expirations[:]
        else:
            setattr(bad, field, value)
        assert reason_of(signed_receipt(BOB, bad, 10)) == "malformed_value", field
    idle_device = Receipt()  # a device named, but no id listed for it
    idle_device.CopyFrom(base)
    idle_device.device_entry_ids = b""
    del idle_device.device_expirations[:]
    assert reason_of(signed_receipt(BOB, idle_device, 10)) == "malformed_value"


def test_a_receipt_is_replaced_by_a_newer_one_making_all_its_acknowledgements() -> None:
    v = ChatValidator()
    records = to_devices([PHONE, LAPTOP], page=12, count=3)
    a, b, c = (acked(r)[0] for r in records)
    phone = make_receipts(BOB, [], NOW, device=PHONE, device_acknowledged=[a, b])
    # the phone's newer receipt listing more replaces its older one
    phone2 = make_receipts(BOB, [], NOW + 10, device=PHONE, device_acknowledged=[a, b, c])
    assert v.consolidate(phone.key, [phone, phone2], NOW + 20).values == phone2.values
    # the laptop's receipt listing a and b only for itself does not replace the phone's
    laptop = make_receipts(BOB, [], NOW + 20, device=LAPTOP, device_acknowledged=[a, b])
    assert len(v.consolidate(phone.key, [phone, laptop], NOW + 30).values) == 2
    # listing them for every device (the laptop read them last) does
    last = make_receipts(BOB, [a, b], NOW + 20, device=LAPTOP, device_acknowledged=[c])
    assert v.consolidate(phone.key, [phone, last], NOW + 30).values == last.values
    # but not a phone receipt with an id the laptop has not listed for every device
    assert len(v.consolidate(phone.key, [phone2, last], NOW + 30).values) == 2
    # an older receipt never replaces a newer one
    early = make_receipts(BOB, [a, b, c], NOW - 10)
    assert len(v.consolidate(phone.key, [phone2, early], NOW + 30).values) == 2


def test_a_sent_copy_reaches_the_senders_other_devices_only() -> None:
    original = make_message(
        ALICE, BOB.public_key, b"hello", mime_type=TEXT, nonce=nonce("o"), now=NOW,
        recipient_devices=[PHONE],
    )  # fmt: skip
    copy = make_sent_copy(
        ALICE, original, BOB.public_key, device=LAPTOP, other_devices=[TABLET],
        nonce=nonce("c"), now=NOW + 5,
    )  # fmt: skip
    assert copy.key.startswith(f"/chat/{ALICE.id_hex}/")  # in Alice's own inbox
    default_validator().validate(copy.key, copy, NOW + 5)
    parsed = parse_inbox_value(copy.values[0].value)
    assert isinstance(parsed.body, ChatMessage)
    assert parsed.devices == (TABLET,)
    sent = original.values[0]
    assert parsed.expiration - parsed.timestamp == sent.expirationDate - sent.creationDate
    content = decrypt_message(parsed.body, conversation_key(ALICE, ALICE.public_key))
    assert (content.mime_type, content.data) == (TEXT, b"hello")
    assert content.sent.recipient_public_key == BOB.public_key
    assert content.sent.entry_id.hex() == original.values[0].id2
    assert (content.sent.device, content.sent.handshake) == (LAPTOP, False)
    with pytest.raises(DecryptionFailed):  # nobody else reads to whom Alice wrote
        decrypt_message(parsed.body, conversation_key(BOB, ALICE.public_key))
    handshake = make_handshake(ALICE, BOB.id, nonce=nonce("hs"), now=NOW)
    hcopy = make_sent_copy(
        ALICE, handshake, BOB.public_key, device=LAPTOP, other_devices=[TABLET],
        nonce=nonce("hc"), now=NOW,
    )  # fmt: skip
    hbody = parse_inbox_value(hcopy.values[0].value).body
    assert isinstance(hbody, ChatMessage)
    assert decrypt_message(hbody, conversation_key(ALICE, ALICE.public_key)).sent.handshake
    with pytest.raises(ValueError, match="another user"):
        make_sent_copy(
            ALICE, original, MALLORY.public_key, device=LAPTOP, other_devices=[TABLET],
            nonce=nonce("c"), now=NOW,
        )  # fmt: skip


def test_a_full_page_with_receipts_of_several_devices_fits_one_record() -> None:
    v = ChatValidator()
    devices = [bytes([k]) * 8 for k in range(1, 5)]
    entries = to_devices(devices, page=2, count=MAX_ENTRIES_PER_PAGE)
    held = v.consolidate(entries[0].key, entries, NOW)
    # each device acknowledged ids for itself alone: as many as the page's receipt bytes allow
    expiration = NOW + 3 * DAY_MS
    read = [(i, expiration) for i in ids_on_page(2, MAX_RECEIPT_IDS)]
    per_device = (RECEIPT_BYTES_PER_PAGE - len(devices) * 204) // 22 // len(devices)
    for k, device in enumerate(devices):
        receipt = make_receipts(
            BOB, [], NOW + k, device=device, device_acknowledged=read[:per_device]
        )
        v.admit(held.key, held, receipt, NOW + k)
        held = v.consolidate(held.key, [held, receipt], NOW + k)
    default_validator().validate(held.key, held, NOW + 10)
    assert kinds(held).count("receipt") == len(devices)
    assert kinds(held).count("message") == MAX_ENTRIES_PER_PAGE
    assert len(encode_record(held)) <= MAX_RECORD_SIZE
    # one receipt of 84 ids, half for every device and half for one, fits the receipt bytes
    half = MAX_RECEIPT_IDS // 2
    split = make_receipts(BOB, read[:half], NOW, device=PHONE, device_acknowledged=read[half:])
    assert len(parse_inbox_value(split.values[0].value).listed) == MAX_RECEIPT_IDS == 84
    assert split.values[0].ByteSize() + 3 <= RECEIPT_BYTES_PER_PAGE


def test_the_next_receipt_lists_for_every_device_what_the_last_device_read() -> None:
    v = ChatValidator()
    records = to_devices([PHONE, LAPTOP], page=14, count=2)
    first, second = (acked(r)[0] for r in records)
    read = [(eid, exp, (PHONE, LAPTOP)) for eid, exp in (first, second)]
    page = v.consolidate(records[0].key, records, NOW)
    # the phone reads both: it lists them for itself, and the page keeps them for the laptop
    by_phone = next_receipt(BOB, page, PHONE, read, NOW + 10)
    assert by_phone.record is not None
    assert (by_phone.already, by_phone.fresh) == (frozenset(), frozenset({first[0], second[0]}))
    receipt = parse_inbox_value(by_phone.record.values[0].value)
    assert (receipt.acknowledged, receipt.device) == ((), PHONE)
    page = v.consolidate(page.key, [page, by_phone.record], NOW + 10)
    assert sorted(kinds(page)) == ["message", "message", "receipt"]
    # reading them again writes nothing
    again = next_receipt(BOB, page, PHONE, read, NOW + 20)
    assert again.record is None
    assert again.already == frozenset({first[0], second[0]})
    # the laptop reads the first: it is the last to, so it lists it for every device, and
    # carries nothing of the phone's (the second is still the phone's alone)
    by_laptop = next_receipt(BOB, page, LAPTOP, read[:1], NOW + 5)
    assert by_laptop.record is not None
    laptops = parse_inbox_value(by_laptop.record.values[0].value)
    assert laptops.acknowledged == (first,)
    assert laptops.timestamp == NOW + 11  # newer than the phone's receipt, its clock behind
    page = v.consolidate(page.key, [page, by_laptop.record], NOW + 30)
    assert sorted(kinds(page)) == ["message", "receipt", "receipt"]
    # then the second: its receipt lists both for every device and replaces the phone's
    last = next_receipt(BOB, page, LAPTOP, read, NOW + 40)
    assert last.record is not None
    assert (last.already, last.fresh) == (frozenset({first[0]}), frozenset({second[0]}))
    page = v.consolidate(page.key, [page, last.record], NOW + 40)
    assert page.values == last.record.values
    assert parse_inbox_value(page.values[0].value).acknowledged == tuple(sorted([first, second]))
    # a one-device user (or an entry naming no device): listed for every device at once
    alone = next_receipt(BOB, None, PHONE, [(first[0], first[1], ())], NOW)
    assert alone.record is not None
    assert parse_inbox_value(alone.record.values[0].value).acknowledged == (first,)


def test_the_next_receipt_leaves_what_does_not_fit_for_later() -> None:
    expiration = NOW + 3 * DAY_MS
    ids = ids_on_page(6, MAX_RECEIPT_IDS + 5)
    full = make_receipts(BOB, [(i, expiration) for i in ids[:MAX_RECEIPT_IDS]], NOW)
    plan = next_receipt(BOB, full, PHONE, [(i, expiration, ()) for i in ids[-5:]], NOW + 1)
    assert (plan.record, plan.already, plan.fresh) == (None, frozenset(), frozenset())
    some = make_receipts(BOB, [(i, expiration) for i in ids[: MAX_RECEIPT_IDS - 2]], NOW)
    plan = next_receipt(BOB, some, PHONE, [(i, expiration, ()) for i in ids[-5:]], NOW + 1)
    assert plan.record is not None
    assert plan.fresh == set(ids[-5:-3])
    assert len(parse_inbox_value(plan.record.values[0].value).listed) == MAX_RECEIPT_IDS
