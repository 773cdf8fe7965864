"""DRD layouts (seed 000): byte-exact against the seed's example rows, round trips by hypothesis,
and every limit of the field tables."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from records import Identity
from records.directory import (
    MAX_AVATAR_SIZE,
    Command,
    Condition,
    DeleteRequest,
    MailboxNumber,
    OpenSession,
    Operator,
    Payment,
    Profile,
    QMailServer,
    SearchKey,
    SearchRequest,
    SearchResults,
    SendingPrice,
    Status,
    Ticket,
    UpdateKey,
    UpdateRequest,
    authorize_delete,
    authorize_update,
    avatar_hash,
    decode_entries,
    encode_entries,
    fields_digest,
    parse_response,
    profile_digest,
    public_fields,
    request_frame,
    response_frame,
    span,
    update_payload,
)
from records.errors import DirectoryError
from records.identity import verify_signature

pytestmark = pytest.mark.timeout(60)

CH = bytes(range(16))
SE = bytes(range(16, 32))

# seed 000, "Directory Search Results CBDF": three rows of columns 1, 2 and 6
SEED_ROWS = bytes.fromhex(
    "01 10 ca8d0787f2a84b4babf1ef9f3d118b16"
    "02 0F 4b4babfca8d0787f2a81ef9f3d118b"
    "06 03 1ef9f3"
    "01 0E 4babf1ef9f3d11ca8d0787f2a84b"
    "02 0E 81ef9f3d114b4babfca8d0787f2a"
    "06 02 1ef9"
    "01 10 ca8d0787f2a84b4babf1ef9f3d118b16"
    "02 0F 4b4babfca8d0787f2a81ef9f3d118b"
    "06 03 1ef9f3".replace(" ", "")
)


def test_seed_example_rows_decode_and_encode_byte_exact() -> None:
    entries = decode_entries(SEED_ROWS)
    assert [k for k, _ in entries] == [1, 2, 6] * 3
    assert entries[0][1] == bytes.fromhex("ca8d0787f2a84b4babf1ef9f3d118b16")
    assert [len(v) for _, v in entries] == [16, 15, 3, 14, 14, 2, 16, 15, 3]
    assert encode_entries(entries) == SEED_ROWS
    rows = tuple(tuple(v for _, v in entries[i : i + 3]) for i in range(0, 9, 3))
    results = SearchResults((1, 2, 6), rows)
    header = bytes.fromhex("00 01 04  01 02 0003  02 01 03  03 01 00".replace(" ", ""))
    assert results.encode() == header + SEED_ROWS
    assert SearchResults.decode(header + SEED_ROWS) == results


def test_mailbox_number_of_the_seeds_directory_example() -> None:
    mailbox = MailboxNumber.from_hex("000634FC89A4E6")  # seed 000: /users/000634FC89A4E6/
    assert mailbox == MailboxNumber(0x0006, 0x34, 0xFC89A4E6)
    assert mailbox.to_bytes() == bytes.fromhex("000634fc89a4e6")
    assert mailbox.hex == "000634fc89a4e6"
    assert int(mailbox) == 0x000634FC89A4E6
    for bad in ["000634FC89A4E", "000634FC89A4E6F", "000634FC89A4EG"]:
        with pytest.raises(DirectoryError):
            MailboxNumber.from_hex(bad)
    with pytest.raises(DirectoryError):
        MailboxNumber.from_bytes(bytes(6))
    with pytest.raises(DirectoryError):
        MailboxNumber(1 << 16, 0, 0)


def test_update_request_byte_layout() -> None:
    profile = Profile(
        display_name="Ann",
        sending_price=SendingPrice(6, 1),
        qmail=((0, QMailServer(6, "10.0.0.1", 80)), (31, QMailServer(6, "10.0.0.2", 443))),
    )
    body = UpdateRequest(CH, SE, profile, Payment(6, bytes(16)), comment="moved").encode()
    expected = (
        CH
        + SE
        + bytes.fromhex("00 01 08".replace(" ", ""))  # key 0: 8 pairs, itself included
        + bytes.fromhex("01 02 0006")  # payment coin code: CloudCoin
        + bytes.fromhex("02 10")
        + bytes(16)  # payment locker code
        + bytes.fromhex("03 03")
        + b"Ann"
        + bytes.fromhex("05 03 000601")  # sending price: coin 6, denomination 1
        + bytes.fromhex("0a 08 0006 0a000001 0050")  # QMail[0] (key 10)
        + bytes.fromhex("29 08 0006 0a000002 01bb")  # QMail[31] (key 41)
        + bytes([200, 5])
        + b"moved"  # our key 200: the private comment
        + b"\xe3\xe3"
    )
    assert body == expected
    assert UpdateRequest.decode(body) == UpdateRequest(
        CH, SE, profile, Payment(6, bytes(16)), "moved"
    )


def test_avatar_spans_repeated_entries() -> None:
    assert span(7, b"a" * 300) == [(7, b"a" * 255), (7, b"a" * 45)]
    assert span(7, b"a" * 510) == [(7, b"a" * 255), (7, b"a" * 255), (7, b"")]
    profile = Profile(avatar_name="me.png", avatar=bytes(MAX_AVATAR_SIZE))
    body = UpdateRequest(CH, SE, profile).encode()
    entries = decode_entries(body[32:-2])
    assert [k for k, _ in entries].count(7) == 101  # 100 full chunks and the closing one
    assert UpdateRequest.decode(body).profile == profile
    # a seed-literal client that ends a multiple of 255 with a full chunk is understood too
    literal = [(0, bytes([4])), (6, b"a.png"), (7, b"x" * 255), (7, b"y" * 255)]
    parsed = UpdateRequest.decode(CH + SE + encode_entries(literal) + b"\xe3\xe3")
    assert parsed.profile.avatar == b"x" * 255 + b"y" * 255
    with pytest.raises(DirectoryError):
        Profile(avatar_name="big", avatar=bytes(MAX_AVATAR_SIZE + 1))


def _update(entries: list[tuple[int, bytes]]) -> bytes:
    counted = [(0, bytes([len(entries) + 1])), *entries]
    return CH + SE + encode_entries(counted) + b"\xe3\xe3"


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([(3, b"")], "empty field"),
        ([(4, b"")], "empty field"),
        ([(3, b"x" * 255), (4, b"")], "empty field"),
        ([(3, b"\xff\xfe")], "not UTF-8"),
        ([(9, b"x")], "unknown key"),
        ([(8, bytes(7))], "mailbox is not an update field"),
        ([(42, bytes(8))], "unknown key (past QMail[31])"),
        ([(5, b"\x00\x06")], "wrong length"),
        ([(10, bytes(7))], "wrong length"),
        ([(1, b"\x00\x06"), (2, bytes(15)), (3, b"a")], "wrong length"),
        ([(1, b"\x00\x06"), (3, b"a")], "payment half missing"),
        ([(3, b"a"), (3, b"b")], "repeated key"),
        ([(6, b"a.png")], "avatar name without file"),
        ([(7, b"abc")], "avatar file without name"),
        ([], "no field at all"),
        ([(200, b"why")], "a comment alone"),
        ([(3, b"a"), (200, b"")], "empty comment"),
    ],
)
def test_bad_update_fields_are_invalid_parameters(
    entries: list[tuple[int, bytes]], why: str
) -> None:
    with pytest.raises(DirectoryError) as raised:
        UpdateRequest.decode(_update(entries))
    assert raised.value.status == Status.INVALID_PARAMETER, why


def test_text_limits() -> None:
    UpdateRequest.decode(_update([(3, "é".encode() * 127 + b"x")]))  # 255 bytes: allowed
    with pytest.raises(DirectoryError):
        Profile(display_name="x" * 256)
    with pytest.raises(DirectoryError):
        Profile(display_name="")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        CH + SE + b"\xe3\xe3",  # no key 0
        CH + SE + bytes.fromhex("0001 03 0301 61") + b"\xe3\xe3",  # key 0 says 3, there are 2
        CH + SE + bytes.fromhex("0001 02 0305 61") + b"\xe3\xe3",  # value cut short
        CH + SE + bytes.fromhex("0001 02 0301 61") + b"\xe3\xe4",  # bad trailer
        CH + bytes.fromhex("0001 02 0301 61") + b"\xe3\xe3",  # no session
    ],
)
def test_malformed_bodies_are_invalid_parameters(body: bytes) -> None:
    with pytest.raises(DirectoryError):
        UpdateRequest.decode(body)


def test_delete_layout() -> None:
    body = DeleteRequest(CH, SE).encode()
    assert body == CH + SE + b"\x00\x01\x01\xe3\xe3"
    assert DeleteRequest.decode(body) == DeleteRequest(CH, SE)
    with pytest.raises(DirectoryError):
        DeleteRequest.decode(_update([(3, b"a")]))


def test_search_request_byte_layout() -> None:
    request = SearchRequest(
        CH,
        SE,
        columns=(UpdateKey.MAILBOX, UpdateKey.DISPLAY_NAME),
        conditions=(
            Condition(SearchKey.WHERE, UpdateKey.DISPLAY_NAME, Operator.CONTAINS, "an"),
            Condition(SearchKey.OR, UpdateKey.SENDING_PRICE, Operator.GREATER, 0x0601),
        ),
        limit_kb=2,
        page=1,
    )
    body = request.encode()
    assert body == (
        CH
        + SE
        + bytes.fromhex("0001 06  0302 0803  0401 02  0501 01")
        + bytes.fromhex("0605 03 04 01")
        + b"an"  # where: key 3 contains (4), text (1)
        + bytes.fromhex("0805 05 02 00 0601")  # OR: key 5 greater than (2), number (0)
        + b"\xe3\xe3"
    )
    assert SearchRequest.decode(body) == request


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([(3, b"")], "no columns"),
        ([(3, bytes([200]))], "the private comment is no column"),
        ([(3, bytes([1]))], "payment is no column"),
        ([(3, b"\x03\x03")], "column twice"),
        ([(3, b"\x03"), (4, b"\x00")], "limit 0"),
        ([(3, b"\x03"), (4, b"\x00\x01")], "limit of two bytes"),
        ([(3, b"\x03"), (9, b"\x00")], "unknown key"),
        ([(3, b"\x03"), (6, b"\x03\x06\x01a")], "operator 6"),
        ([(3, b"\x03"), (6, b"\x03\x01\x00\x01")], "name compared as a number"),
        ([(3, b"\x03"), (6, b"\x05\x04\x00\x01")], "number with contains"),
        ([(3, b"\x03"), (6, b"\x07\x01\x01a")], "avatar is not searchable"),
        ([(3, b"\x03"), (6, b"\xc8\x01\x01a")], "the private comment is not searchable"),
        ([(3, b"\x03"), (6, b"\x03\x01\x01")], "no operand"),
        ([(3, b"\x03"), (7, b"\x03\x01\x01a")], "AND before WHERE"),
        ([(3, b"\x03"), (6, b"\x03\x01\x01a"), (6, b"\x03\x01\x01a")], "two WHEREs"),
        ([(3, b"\x03"), (6, b"\x05\x01\x00" + bytes(9))], "number of nine bytes"),
    ],
)
def test_bad_searches_are_invalid_parameters(entries: list[tuple[int, bytes]], why: str) -> None:
    with pytest.raises(DirectoryError) as raised:
        SearchRequest.decode(_update(entries))
    assert raised.value.status == Status.INVALID_PARAMETER, why


def test_results_with_absent_fields_and_spanning_avatars() -> None:
    columns = (UpdateKey.AVATAR,)
    rows: tuple[tuple[bytes | None, ...], ...] = ((b"a" * 510,), (None,), (b"b" * 3,))
    data = SearchResults(columns, rows).encode()
    assert SearchResults.decode(data) == SearchResults(columns, rows)
    with pytest.raises(DirectoryError):
        SearchResults((3,), ((b"",),)).encode()  # an empty field is never sent


def test_frames() -> None:
    assert request_frame(Command.UPDATE, b"xy") == b"\x02xy"
    frame = response_frame(Command.SEARCH, Status.DATABASE_RETURNED_ZERO_RECORDS, CH)
    assert frame == b"\x84\x09" + CH + b"\xe3\xe3"
    assert parse_response(frame) == (4, 9, CH, b"\xe3\xe3")
    assert [int(s) for s in Status] == [250, 153, 179, 198, 9, 10, 40, 41, 42, 43, 44]


def test_ticket_and_session_signatures() -> None:
    authorities = [Identity.from_seed(bytes([i]) * 32) for i in range(3)]
    owner = Identity.from_seed(b"o" * 32)
    mailbox = MailboxNumber(6, 1, 42)
    ticket = Ticket(mailbox, owner.public_key, 1000, 2000)
    signed = Ticket(
        mailbox,
        owner.public_key,
        1000,
        2000,
        tuple((a.public_key, a.sign(ticket.signing_payload())) for a in authorities[:2]),
    )
    assert Ticket.from_bytes(signed.to_bytes()) == signed
    keys = [a.public_key for a in authorities]
    assert signed.valid_signers(keys) == set(keys[:2])
    assert signed.valid_signers(keys[1:]) == {keys[1]}
    # a ticket naming another mailbox does not carry these signatures
    other = Ticket(MailboxNumber(6, 1, 43), owner.public_key, 1000, 2000, signed.signatures)
    assert other.valid_signers(keys) == set()
    request = OpenSession(CH, signed, 1500, owner.sign(OpenSession.payload(CH, mailbox, 1500)))
    assert OpenSession.decode(request.encode()) == request
    assert request.signature_ok()
    assert not OpenSession(CH, signed, 1501, request.signature).signature_ok()


# -- round trips -----------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=60).filter(lambda s: 0 < len(s.encode()) <= 255)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str(b) for b in n.to_bytes(4, "big")))
qmail = st.dictionaries(
    st.integers(0, 31),
    st.builds(QMailServer, st.integers(0, 0xFFFF), ipv4, st.integers(0, 0xFFFF)),
    max_size=4,
).map(lambda d: tuple(sorted(d.items())))


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    avatar = draw(st.none() | st.binary(min_size=1, max_size=800))
    fields = {
        "display_name": draw(st.none() | texts),
        "description": draw(st.none() | texts),
        "sending_price": draw(
            st.none() | st.builds(SendingPrice, st.integers(0, 0xFFFF), st.integers(0, 255))
        ),
        "avatar_name": None if avatar is None else draw(texts),
        "avatar": avatar,
        "qmail": draw(qmail),
    }
    if all(v in (None, ()) for v in fields.values()):
        fields["display_name"] = "x"
    return Profile(**fields)  # type: ignore[arg-type]


payments = st.none() | st.builds(
    Payment, st.integers(0, 0xFFFF), st.binary(min_size=16, max_size=16)
)


@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=255)), max_size=20))
def test_entries_round_trip(entries: list[tuple[int, bytes]]) -> None:
    assert decode_entries(encode_entries(entries)) == entries


@given(st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_mailbox_round_trip(coin: int, denomination: int, serial: int) -> None:
    mailbox = MailboxNumber(coin, denomination, serial)
    assert MailboxNumber.from_bytes(mailbox.to_bytes()) == mailbox
    assert MailboxNumber.from_hex(mailbox.hex.upper()) == mailbox


@given(profiles(), payments, st.none() | texts)
def test_update_round_trip(profile: Profile, payment: Payment | None, comment: str | None) -> None:
    request = UpdateRequest(CH, SE, profile, payment, comment)
    assert UpdateRequest.decode(request.encode()) == request


conditions = st.one_of(
    st.builds(
        lambda c, o, n: (c, o, n),
        st.sampled_from([5, 8, 10, 41]),
        st.sampled_from([0, 1, 2, 3]),
        st.integers(0, 2**64 - 1),
    ),
    st.builds(
        lambda c, o, t: (c, o, t),
        st.sampled_from([3, 4, 6]),
        st.sampled_from(list(range(6))),
        st.text(min_size=1, max_size=40),
    ),
)


@given(
    st.lists(st.sampled_from([3, 4, 5, 6, 7, 8, 10, 41]), min_size=1, unique=True),
    st.lists(conditions, max_size=4),
    st.integers(1, 255),
    st.integers(0, 255),
    payments,
    st.lists(st.sampled_from([SearchKey.AND, SearchKey.OR]), min_size=4, max_size=4),
)
def test_search_round_trip(
    columns: list[int],
    clauses: list[tuple[int, int, int | str]],
    limit: int,
    page: int,
    payment: Payment | None,
    joins: list[SearchKey],
) -> None:
    conds = tuple(
        Condition(SearchKey.WHERE if i == 0 else joins[i], c, Operator(o), v)
        for i, (c, o, v) in enumerate(clauses)
    )
    request = SearchRequest(CH, SE, tuple(columns), conds, limit, page, payment)
    assert SearchRequest.decode(request.encode()) == request


@given(
    st.lists(st.sampled_from([3, 4, 7, 8, 10]), min_size=1, max_size=4, unique=True).flatmap(
        lambda cols: st.tuples(
            st.just(tuple(cols)),
            st.lists(
                st.tuples(*[st.none() | st.binary(min_size=1, max_size=600) for _ in cols]),
                max_size=5,
            ),
        )
    )
)
def test_results_round_trip(case: tuple[tuple[int, ...], list[tuple[bytes | None, ...]]]) -> None:
    columns, rows = case
    # only the avatar may span entries; clip the others to one entry
    clipped = tuple(
        tuple(v if k == 7 or v is None else v[:255] for k, v in zip(columns, row, strict=True))
        for row in rows
    )
    results = SearchResults(columns, clipped)
    # the columns are read from the rows: an empty result (status 9 anyway) names none
    expected = results if clipped else SearchResults((), ())
    assert SearchResults.decode(results.encode()) == expected


@given(st.binary(max_size=200))
def test_decoders_only_raise_directory_errors(data: bytes) -> None:
    for decode in (UpdateRequest.decode, DeleteRequest.decode, SearchRequest.decode):
        with contextlib.suppress(DirectoryError):
            decode(CH + SE + data + b"\xe3\xe3")
    for parse in (SearchResults.decode, Ticket.from_bytes, OpenSession.decode):
        with contextlib.suppress(DirectoryError):
            parse(data)


def test_owner_authorization_keys_201_and_202() -> None:
    owner = Identity.from_seed(b"o" * 32)
    mailbox = MailboxNumber(6, 1, 42)
    profile = Profile(display_name="Ann", avatar_name="a", avatar=b"img")
    approval = authorize_update(owner, mailbox, profile, 0x0102030405060708)
    body = UpdateRequest(CH, SE, profile, authorization=approval).encode()
    tail = bytes.fromhex("c9 08 0102030405060708".replace(" ", "")) + bytes([202, 64])
    assert body[-2 - 66 - 10 : -2 - 64] == tail
    assert body[-66:-2] == approval.signature
    decoded = UpdateRequest.decode(body)
    assert decoded.authorization == approval
    digest = profile_digest(mailbox, profile)
    assert verify_signature(owner.public_key, update_payload(mailbox, approval.version, digest),
                            approval.signature)  # fmt: skip
    # the digest can be recomputed from the public fields and the avatar's hash alone
    assert digest == fields_digest(mailbox, public_fields(profile), avatar_hash(profile))
    gone = authorize_delete(owner, mailbox, 7)
    assert DeleteRequest.decode(DeleteRequest(CH, SE, None, gone).encode()).authorization == gone
    for bad in (
        [(201, bytes(8))],
        [(201, bytes(7)), (202, bytes(64))],
        [(201, b"\x80" + bytes(7)), (202, bytes(64))],
    ):
        with pytest.raises(DirectoryError):
            UpdateRequest.decode(_update([(3, b"a"), *bad]))
