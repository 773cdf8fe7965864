"""DRD entries in the DHT: construction, validation (owner-approved, server-signed, ticketed),
`select` (the newest owner-authorised change, whatever the order), and /drd-servers/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.directory.ownership import QuorumTicketVerifier
from records import InvalidRecord, Record, default_validator
from records.directory import (
    MAX_TEXT_SIZE,
    MailboxNumber,
    Profile,
    QMailServer,
    SendingPrice,
    authorize_delete,
    authorize_update,
    mint_ticket,
)
from records.directory_pb2 import SignedDirectoryEntry
from records.drd import (
    DRD_SERVERS_KEY,
    DrdValidator,
    drd_key,
    entry_of,
    make_drd_record,
    make_drd_servers_record,
    servers_of,
)
from records.identity import Identity
from records.validation import MAX_RECORD_SIZE, NamespacedValidator

pytestmark = pytest.mark.timeout(60)

NOW = 1_767_225_600_000
AUTHORITIES = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(25)]
OWNER = Identity.from_seed(b"o" * 32)
SERVER = Identity.from_seed(b"s" * 32)
MAILBOX = MailboxNumber(6, 1, 99)
TICKET = mint_ticket(
    AUTHORITIES[:13], MAILBOX, OWNER.public_key, issued=NOW - 1000, expires=NOW + 86_400_000
)
PROFILE = Profile(display_name="Ann", avatar_name="a.png", avatar=b"A" * 5000)


def entry(
    profile: Profile | None = PROFILE,
    version: int = NOW,
    *,
    server: Identity = SERVER,
    owner: Identity = OWNER,
    now: int = NOW,
    mailbox: MailboxNumber = MAILBOX,
) -> Record:
    approval = (
        authorize_delete(owner, mailbox, version)
        if profile is None
        else authorize_update(owner, mailbox, profile, version)
    )
    return make_drd_record(
        server,
        mailbox,
        version=version,
        profile=profile,
        ticket=TICKET.to_bytes(),
        owner_signature=approval.signature,
        host="10.0.0.1",
        port=8468,
        now=now,
    )


def test_a_published_entry_validates_and_carries_no_avatar() -> None:
    record = entry()
    default_validator().validate(record.key, record, NOW)
    assert record.key == f"/drd/{MAILBOX.hex}/"
    found = entry_of(record)
    assert found.avatar_size == 5000
    assert b"A" * 100 not in record.SerializeToString()
    deleted = entry(None, NOW + 1)
    default_validator().validate(deleted.key, deleted, NOW)


def test_the_largest_entry_fits_the_record_limit() -> None:
    big = Profile(
        display_name="n" * MAX_TEXT_SIZE,
        description="d" * MAX_TEXT_SIZE,
        sending_price=SendingPrice(6, 1),
        avatar_name="a" * MAX_TEXT_SIZE,
        avatar=b"x" * 25_500,
        qmail=tuple((slot, QMailServer(6, "10.0.0.1", 25)) for slot in range(32)),
    )
    many = mint_ticket(AUTHORITIES, MAILBOX, OWNER.public_key, issued=NOW, expires=NOW + 1000)
    approval = authorize_update(OWNER, MAILBOX, big, NOW)
    record = make_drd_record(
        SERVER,
        MAILBOX,
        version=NOW,
        profile=big,
        ticket=many.to_bytes(),
        owner_signature=approval.signature,
        host="255.255.255.255",
        port=65535,
        now=NOW,
    )
    assert record.ByteSize() <= MAX_RECORD_SIZE
    default_validator().validate(record.key, record, NOW)


def tampered(record: Record, change: str) -> Record:
    copy = Record()
    copy.CopyFrom(record)
    signed = SignedDirectoryEntry()
    signed.ParseFromString(copy.values[0].value)
    if change == "server_signature":
        signed.signature = bytes(64)
    copy.values[0].value = signed.SerializeToString()
    return copy


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: tampered(entry(), "server_signature"), "bad_server_signature"),
        (  # a server publishing fields the owner never approved
            lambda: make_drd_record(
                SERVER,
                MAILBOX,
                version=NOW,
                profile=Profile(display_name="Mallory"),
                ticket=TICKET.to_bytes(),
                owner_signature=authorize_update(OWNER, MAILBOX, PROFILE, NOW).signature,
                host="h",
                port=1,
                now=NOW,
            ),
            "bad_owner_signature",
        ),
        (lambda: entry(owner=Identity.from_seed(b"t" * 32)), "bad_owner_signature"),
        (lambda: entry(None, NOW, owner=Identity.from_seed(b"t" * 32)), "bad_owner_signature"),
        (lambda: entry(mailbox=MailboxNumber(6, 1, 100)), "bad_ticket"),
        (lambda: entry(now=NOW - 8 * 86_400_000), "expired"),
        (lambda: entry(version=NOW + 3_600_000), "future_dated"),
    ],
)
def test_forged_entries_are_refused(make: object, reason: str) -> None:
    record = make()  # type: ignore[operator]
    with pytest.raises(InvalidRecord) as refused:
        default_validator().validate(record.key, record, NOW)
    assert refused.value.reason == reason


def test_with_the_authorities_a_self_made_ticket_is_refused() -> None:
    verifier = QuorumTicketVerifier([a.public_key for a in AUTHORITIES], 13)
    strict = NamespacedValidator({"drd": DrdValidator(ticket_check=verifier.check)})
    strict.validate(entry().key, entry(), NOW)
    fakes = [Identity.from_seed(bytes([i + 100]) * 32) for i in range(13)]
    fake = mint_ticket(fakes, MAILBOX, OWNER.public_key, issued=NOW, expires=NOW + 1000)
    approval = authorize_update(OWNER, MAILBOX, PROFILE, NOW)
    record = make_drd_record(
        SERVER,
        MAILBOX,
        version=NOW,
        profile=PROFILE,
        ticket=fake.to_bytes(),
        owner_signature=approval.signature,
        host="h",
        port=1,
        now=NOW,
    )
    default_validator().validate(record.key, record, NOW)  # no authority keys: not checkable
    with pytest.raises(InvalidRecord) as refused:
        strict.validate(record.key, record, NOW)
    assert refused.value.reason == "bad_ticket"


versions = st.lists(
    st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 2), st.integers(0, 2)),
    min_size=1,
    max_size=6,
)


@given(versions, st.randoms(use_true_random=False))
def test_select_picks_the_newest_change_in_any_order(
    cases: list[tuple[int, bool, int, int]], rng: object
) -> None:
    servers = [Identity.from_seed(bytes([i + 50]) * 32) for i in range(3)]
    records = [
        entry(
            None if deleted else Profile(display_name=f"v{v}"),
            NOW + v,
            server=servers[s],
            now=NOW + 10 + p,
        )
        for v, deleted, s, p in cases
    ]
    validator = default_validator()
    best = records[validator.select(records[0].key, records)]
    shuffled = list(records)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert shuffled[validator.select(records[0].key, shuffled)] == best
    top = max(v for v, *_ in cases)
    found = entry_of(best)
    assert found.version == NOW + top
    assert found.deleted == any(d for v, d, *_ in cases if v == top)  # a deletion wins a tie


def test_directory_servers_announce_one_value_each() -> None:
    validator = default_validator()
    a = make_drd_servers_record(SERVER, "10.0.0.1", 8468, now=NOW)
    b = make_drd_servers_record(OWNER, "10.0.0.2", 9000, now=NOW + 5)
    a_new = make_drd_servers_record(SERVER, "10.0.0.9", 8468, now=NOW + 9)
    for record in (a, b, a_new):
        validator.validate(DRD_SERVERS_KEY, record, NOW + 10)
    merged = validator.consolidate(DRD_SERVERS_KEY, [a, b, a_new], NOW + 10)
    validator.validate(DRD_SERVERS_KEY, merged, NOW + 10)
    assert sorted(servers_of(merged)) == sorted(
        [(SERVER.public_key, "10.0.0.9", 8468), (OWNER.public_key, "10.0.0.2", 9000)]
    )
    forged = Record()
    forged.CopyFrom(a)
    forged.values[0].id2 = OWNER.id_hex
    with pytest.raises(InvalidRecord):
        validator.validate(DRD_SERVERS_KEY, forged, NOW)
    with pytest.raises(InvalidRecord):
        validator.validate(drd_key(MAILBOX), a, NOW)


def with_fields(fields: bytes, avatar_sha256: bytes = b"", avatar_size: int = 0) -> Record:
    """A /drd/ record, owner-approved and server-signed, whose fields are these raw bytes."""
    from records.directory import fields_digest, update_payload
    from records.directory_pb2 import DirectoryEntry
    from records.drd import ENTRY_CONTEXT
    from records.identity import signing_input

    record = entry(Profile(display_name="x"))
    signed = SignedDirectoryEntry()
    signed.ParseFromString(record.values[0].value)
    raw = DirectoryEntry()
    raw.ParseFromString(signed.entry)
    raw.fields, raw.avatar_sha256, raw.avatar_size = fields, avatar_sha256, avatar_size
    digest = fields_digest(MAILBOX, fields, avatar_sha256)
    raw.owner_signature = OWNER.sign(update_payload(MAILBOX, raw.version, digest))
    signed.entry = raw.SerializeToString(deterministic=True)
    signed.signature = SERVER.sign(signing_input(ENTRY_CONTEXT, signed.entry))
    record.values[0].value = signed.SerializeToString(deterministic=True)
    return record


@pytest.mark.parametrize(
    ("fields", "avatar"),
    [
        ([(3, b"\xff\xfe")], None),  # not UTF-8
        ([(5, b"\x00\x06")], None),  # a price is 3 bytes
        ([(10, bytes(9))], None),  # a QMail server is 8
        ([(4, b"desc"), (3, b"name")], None),  # not the order servers publish
        ([(3, b"name"), (6, b"a.png")], 25_501),  # seed 000: avatar up to 255x100 bytes
    ],
)
def test_entries_with_fields_beyond_the_seeds_limits_are_refused(
    fields: list[tuple[int, bytes]], avatar: int | None
) -> None:
    from records.directory import encode_entries

    good = with_fields(encode_entries([(3, b"name"), (6, b"a.png")]), b"h" * 32, 25_500)
    default_validator().validate(good.key, good, NOW)
    record = with_fields(encode_entries(fields), b"h" * 32 if avatar else b"", avatar or 0)
    with pytest.raises(InvalidRecord) as refused:
        default_validator().validate(record.key, record, NOW)
    assert refused.value.reason == "malformed_value"


def test_a_plain_node_given_the_authorities_refuses_a_self_made_ticket(tmp_path: Path) -> None:
    """``python -m node --directory-authorities FILE`` without ``--directory``: the node's
    validator checks /drd/ tickets against the authorities."""
    from node import DHTNode, NodeConfig
    from node.__main__ import _drd_authorities, build_parser

    path = tmp_path / "authorities.json"
    path.write_text(
        json.dumps({"threshold": 13, "authorities": [a.public_key.hex() for a in AUTHORITIES]})
    )
    # no authorities named: the set shipped with the node, which did not sign this ticket
    default = DHTNode(NodeConfig(drd_authorities=_drd_authorities(build_parser().parse_args([]))))
    with pytest.raises(InvalidRecord, match="13 needed"):
        default.validator.validate(entry().key, entry(), NOW)
    named = _drd_authorities(build_parser().parse_args(["--directory-authorities", str(path)]))
    validator = DHTNode(NodeConfig(drd_authorities=named)).validator
    validator.validate(entry().key, entry(), NOW)
    fakes = [Identity.from_seed(bytes([i + 100]) * 32) for i in range(13)]
    fake = mint_ticket(fakes, MAILBOX, OWNER.public_key, issued=NOW, expires=NOW + 1000)
    record = make_drd_record(
        SERVER,
        MAILBOX,
        version=NOW,
        profile=PROFILE,
        ticket=fake.to_bytes(),
        owner_signature=authorize_update(OWNER, MAILBOX, PROFILE, NOW).signature,
        host="h",
        port=1,
        now=NOW,
    )
    with pytest.raises(InvalidRecord) as refused:
        validator.validate(record.key, record, NOW)
    assert refused.value.reason == "bad_ticket"
