"""The directory's store and request handler: every status code path, owners only, nothing
stored by a refused request, SQL-looking text kept literally, avatars as files, crash safety.

Each test runs on both database drivers (aiosqlite, and the inline one the simulator uses)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node.directory.database import AiosqliteDatabase, Database, InlineDatabase, Params
from node.directory.ownership import LockerPayments, QuorumTicketVerifier
from node.directory.service import DirectoryService
from node.directory.store import DATABASE_FILE, DirectoryStore
from records import Identity
from records.directory import (
    CLOUDCOIN_COIN_ID,
    Command,
    Condition,
    DeleteRequest,
    MailboxNumber,
    Operator,
    Payment,
    Profile,
    QMailServer,
    SearchKey,
    SearchRequest,
    SearchResults,
    SendingPrice,
    Status,
    UpdateKey,
    UpdateRequest,
    authorize_delete,
    authorize_update,
    encode_entries,
    fields_digest,
    mint_ticket,
    open_session_request,
    parse_response,
    request_frame,
    update_payload,
)

pytestmark = pytest.mark.timeout(30)

T0 = 1_767_225_600_000
AUTHORITIES = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(5)]
OWNER = Identity.from_seed(b"owner".ljust(32, b"\x00"))
MAILBOX = MailboxNumber(CLOUDCOIN_COIN_ID, 1, 1000)
ALL_COLUMNS = (8, 3, 4, 5, 6, 7, 10, 11, 41)


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def now_ms(self) -> int:
        return self.now


class FailingDatabase:
    """Wraps a `Database`; raises `sqlite3.OperationalError` on statements containing `marker`."""

    def __init__(self, inner: Database) -> None:
        self.inner = inner
        self.marker: str | None = None

    def _check(self, sql: str) -> None:
        if self.marker is not None and self.marker in sql:
            raise sqlite3.OperationalError(f"injected failure at {self.marker!r}")

    async def execute(self, sql: str, params: Params = ()) -> int:
        self._check(sql)
        return await self.inner.execute(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        self._check(sql)
        return await self.inner.fetchall(sql, params)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Directory:
    store: DirectoryStore
    service: DirectoryService
    clock: FakeClock
    db: FailingDatabase
    root: Path
    counter: int = 0
    owners: dict[bytes, tuple[Identity, MailboxNumber]] = field(default_factory=dict)

    def challenge(self) -> bytes:
        self.counter += 1
        return self.counter.to_bytes(16, "big")

    async def call(self, command: Command, body: bytes) -> tuple[int, bytes]:
        answer = await self.service.handle(request_frame(command, body))
        cmd, status, challenge, rest = parse_response(answer)
        assert cmd == command
        assert challenge == body[:16]
        return status, rest

    async def login(
        self, owner: Identity = OWNER, mailbox: MailboxNumber = MAILBOX, signers: int = 3
    ) -> bytes:
        ticket = mint_ticket(
            AUTHORITIES[:signers], mailbox, owner.public_key, issued=T0, expires=T0 + 86_400_000
        )
        request = open_session_request(owner, ticket, self.challenge(), self.clock.now)
        status, body = await self.call(Command.OPEN_SESSION, request.encode())
        assert status == Status.SUCCESS
        self.owners[body[:16]] = (owner, mailbox)
        return body[:16]

    def version(self) -> int:
        """Now, made distinct per call (well within the allowed clock skew)."""
        self.counter += 1
        return self.clock.now + self.counter

    async def update(
        self,
        session: bytes,
        profile: Profile,
        comment: str | None = None,
        *,
        version: int | None = None,
        signer: Identity | None = None,
        **kw: Any,
    ) -> int:
        owner, mailbox = self.owners.get(session, (OWNER, MAILBOX))
        approval = authorize_update(
            signer or owner, mailbox, profile, self.version() if version is None else version
        )
        request = UpdateRequest(
            self.challenge(), session, profile, comment=comment, authorization=approval, **kw
        )
        status, _ = await self.call(Command.UPDATE, request.encode())
        return status

    async def delete(
        self, session: bytes, *, version: int | None = None, signer: Identity | None = None
    ) -> int:
        owner, mailbox = self.owners.get(session, (OWNER, MAILBOX))
        approval = authorize_delete(
            signer or owner, mailbox, self.version() if version is None else version
        )
        request = DeleteRequest(self.challenge(), session, authorization=approval)
        status, _ = await self.call(Command.DELETE, request.encode())
        return status

    async def search(self, *conditions: Condition, **kw: Any) -> tuple[int, SearchResults | None]:
        kw.setdefault("columns", ALL_COLUMNS)
        request = SearchRequest(self.challenge(), bytes(16), conditions=conditions, **kw)
        status, body = await self.call(Command.SEARCH, request.encode())
        if status != Status.SUCCESS:
            assert body == b"\xe3\xe3"
            return status, None
        return status, SearchResults.decode(body[:-2])


@pytest.fixture(params=["aiosqlite", "inline"])
async def directory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Directory]:
    path = tmp_path / DATABASE_FILE
    inner: Database = (
        await AiosqliteDatabase.open(path)
        if request.param == "aiosqlite"
        else InlineDatabase.open(path)
    )
    db = FailingDatabase(inner)
    store = await DirectoryStore.open(db, tmp_path)
    clock = FakeClock()
    verifier = QuorumTicketVerifier([a.public_key for a in AUTHORITIES], threshold=3)
    tokens = iter(range(1, 1_000_000))
    service = DirectoryService(
        store, verifier, clock, token=lambda n: next(tokens).to_bytes(n, "big")
    )
    yield Directory(store, service, clock, db, tmp_path)
    await store.close()


def ann(**kw: Any) -> Profile:
    fields: dict[str, Any] = {
        "display_name": "Ann",
        "description": "likes tea",
        "sending_price": SendingPrice(6, 2),
        "avatar_name": "ann.png",
        "avatar": b"\x89PNG" + bytes(600),
        "qmail": ((0, QMailServer(6, "10.0.0.1", 80)),),
    }
    fields.update(kw)
    return Profile(**fields)


# -- owners only -----------------------------------------------------------------------------


async def test_owner_updates_and_reads_back(directory: Directory) -> None:
    session = await directory.login()
    assert await directory.update(session, ann(), comment="new phone") == Status.SUCCESS
    stored = await directory.store.get(MAILBOX)
    assert stored is not None
    assert stored.profile == ann()
    assert stored.owner_key == OWNER.public_key
    assert await directory.store.comment(MAILBOX) == "new phone"
    avatar_files = list((directory.root / "users" / MAILBOX.hex).iterdir())
    assert [f.read_bytes() for f in avatar_files] == [ann().avatar]


@pytest.mark.parametrize(
    "case", ["too_few_signers", "expired", "future", "wrong_owner", "stale_timestamp", "replay"]
)
async def test_open_session_refused_without_a_valid_ticket(directory: Directory, case: str) -> None:
    clock = directory.clock
    signers, issued, expires, signer = 3, T0, T0 + 3_600_000, OWNER
    if case == "too_few_signers":
        signers = 2  # the server wants 3 of 5
    elif case == "expired":
        expires = T0
    elif case == "future":
        issued = T0 + 3_600_000
    elif case == "wrong_owner":
        signer = Identity.from_seed(b"thief".ljust(32, b"\x00"))
    ticket = mint_ticket(
        AUTHORITIES[:signers], MAILBOX, OWNER.public_key, issued=issued, expires=expires
    )
    stamp = clock.now - 3_600_000 if case == "stale_timestamp" else clock.now
    request = open_session_request(signer, ticket, directory.challenge(), stamp)
    if case == "replay":
        status, _ = await directory.call(Command.OPEN_SESSION, request.encode())
        assert status == Status.SUCCESS
    status, body = await directory.call(Command.OPEN_SESSION, request.encode())
    assert status == Status.NOT_AUTHORIZED
    assert body == b"\xe3\xe3"
    rows = await directory.store.table_rows()
    assert len(rows["SESSION"]) == (1 if case == "replay" else 0)


async def test_update_without_a_valid_session_changes_nothing(directory: Directory) -> None:
    session = await directory.login()
    assert await directory.update(session, ann()) == Status.SUCCESS
    before = await directory.store.table_rows()
    assert await directory.update(b"\x99" * 16, ann(display_name="Mallory")) == 40
    directory.clock.now += 31 * 60_000  # sessions last 30 minutes
    assert await directory.update(session, ann(display_name="Late")) == 40
    assert await directory.delete(session) == 40
    assert await directory.store.table_rows() == before


async def test_a_session_only_reaches_its_own_mailbox(directory: Directory) -> None:
    other = MailboxNumber(6, 1, 2000)
    mine = await directory.login()
    theirs = await directory.login(Identity.from_seed(b"x" * 32), other)
    assert await directory.update(mine, ann()) == Status.SUCCESS
    assert await directory.update(theirs, ann(display_name="Bob")) == Status.SUCCESS
    a, b = await directory.store.get(MAILBOX), await directory.store.get(other)
    assert a is not None
    assert a.profile.display_name == "Ann"
    assert b is not None
    assert b.profile.display_name == "Bob"


# -- 198: bad parameters store nothing -------------------------------------------------------


@pytest.mark.parametrize(
    "entries",
    [
        [(3, b"")],  # empty field
        [(3, b"Ann"), (4, b"")],  # empty field beside a good one
        [(3, b"Ann"), (9, b"x")],  # unknown key
        [(3, b"Ann"), (200, b"")],  # empty comment
        [(5, b"\x00\x06")],  # wrong length
        [(3, b"Ann"), (10, bytes(9))],  # wrong length
        [(1, b"\x00\x06"), (2, bytes(3)), (3, b"Ann")],  # wrong length
        [(7, b"avatar without a name")],
    ],
)
async def test_bad_parameters_give_198_and_leave_the_database_unchanged(
    directory: Directory, entries: list[tuple[int, bytes]]
) -> None:
    session = await directory.login()
    assert await directory.update(session, ann(), comment="first") == Status.SUCCESS
    before = await directory.store.table_rows()
    files_before = sorted(p.name for p in (directory.root / "users").rglob("*"))
    body = (
        directory.challenge()
        + session
        + encode_entries([(0, bytes([len(entries) + 1])), *entries])
        + b"\xe3\xe3"
    )
    status, answer = await directory.call(Command.UPDATE, body)
    assert (status, answer) == (Status.INVALID_PARAMETER, b"\xe3\xe3")
    assert await directory.store.table_rows() == before
    assert sorted(p.name for p in (directory.root / "users").rglob("*")) == files_before


async def test_unknown_command_and_empty_frame_give_198(directory: Directory) -> None:
    for frame in [b"", b"\x63" + bytes(40), b"\x02"]:
        answer = await directory.service.handle(frame)
        assert answer[1] == Status.INVALID_PARAMETER


# -- payment: 153 and 179 --------------------------------------------------------------------


async def test_payment_statuses(directory: Directory) -> None:
    full, poor, empty = b"F" * 16, b"P" * 16, b"E" * 16
    payments = LockerPayments({Command.UPDATE: 2, Command.SEARCH: 1}, {full: 5, poor: 1, empty: 0})
    directory.service.payments = payments
    session = await directory.login()
    before = await directory.store.table_rows()
    assert await directory.update(session, ann()) == Status.LOCKER_EMPTY_OR_NOT_EXISTS
    pay = Payment(CLOUDCOIN_COIN_ID, b"N" * 16)
    assert await directory.update(session, ann(), payment=pay) == 179  # no such locker
    pay = Payment(CLOUDCOIN_COIN_ID, empty)
    assert await directory.update(session, ann(), payment=pay) == 179  # empty locker
    pay = Payment(CLOUDCOIN_COIN_ID, poor)
    assert await directory.update(session, ann(), payment=pay) == Status.FEW_COINS_IN_LOCKER
    assert await directory.store.table_rows() == before
    # a bad parameter is refused before anything is charged
    body = directory.challenge() + session + encode_entries([(0, b"\x04"), (1, b"\x00\x06"),
        (2, full), (3, b"")]) + b"\xe3\xe3"  # fmt: skip
    assert (await directory.call(Command.UPDATE, body))[0] == Status.INVALID_PARAMETER
    assert payments.lockers[full] == 5
    pay = Payment(CLOUDCOIN_COIN_ID, full)
    assert await directory.update(session, ann(), payment=pay) == Status.SUCCESS
    assert payments.lockers[full] == 3
    assert (await directory.search())[0] == Status.LOCKER_EMPTY_OR_NOT_EXISTS
    status, results = await directory.search(payment=Payment(CLOUDCOIN_COIN_ID, poor))
    assert status == Status.SUCCESS
    assert results is not None
    assert (await directory.search(payment=Payment(CLOUDCOIN_COIN_ID, poor)))[0] == 179


# -- search: 250, 9, 10 ----------------------------------------------------------------------


async def populate(directory: Directory) -> list[MailboxNumber]:
    people = [
        ("Ann", "likes tea", 0x000601, "10.0.0.1"),
        ("Bob", "100% cotton", 0x000602, "10.0.0.2"),
        ("Robert'); DROP TABLE USER;--", "x' OR '1'='1", 0x000603, "10.0.0.3"),
        ("Carol_", "tea and cake", 0x000604, "10.0.0.4"),
    ]
    boxes = []
    for index, (name, description, price, host) in enumerate(people):
        box = MailboxNumber(6, 1, 100 + index)
        session = await directory.login(Identity.from_seed(bytes([index + 50]) * 32), box)
        profile = Profile(
            display_name=name,
            description=description,
            sending_price=SendingPrice.from_bytes(price.to_bytes(3, "big")),
            qmail=((1, QMailServer(6, host, 25)),),
        )
        assert await directory.update(session, profile, comment=f"secret-{index}") == 250
        boxes.append(box)
    return boxes


def names(results: SearchResults | None) -> list[str]:
    assert results is not None
    return [row[1].decode() for row in results.rows if row[1] is not None]


def where(
    column: int, op: Operator, operand: int | str, join: SearchKey = SearchKey.WHERE
) -> Condition:
    return Condition(join, column, op, operand)


async def test_search_operators_on_text_and_numbers(directory: Directory) -> None:
    boxes = await populate(directory)
    everyone = ["Ann", "Bob", "Robert'); DROP TABLE USER;--", "Carol_"]
    _, results = await directory.search()
    assert names(results) == everyone
    cases: list[tuple[list[Condition], list[str]]] = [
        ([where(3, Operator.EQUAL, "Bob")], ["Bob"]),
        ([where(3, Operator.NOT_EQUAL, "Bob")], ["Ann", "Robert'); DROP TABLE USER;--", "Carol_"]),
        ([where(3, Operator.GREATER, "Bz")], ["Robert'); DROP TABLE USER;--", "Carol_"]),
        ([where(3, Operator.LESS, "B")], ["Ann"]),
        ([where(4, Operator.CONTAINS, "tea")], ["Ann", "Carol_"]),
        ([where(4, Operator.NOT_CONTAINS, "tea")], ["Bob", "Robert'); DROP TABLE USER;--"]),
        ([where(5, Operator.EQUAL, 0x000602)], ["Bob"]),
        (
            [where(5, Operator.NOT_EQUAL, 0x000602)],
            ["Ann", "Robert'); DROP TABLE USER;--", "Carol_"],
        ),
        ([where(5, Operator.GREATER, 0x000602)], ["Robert'); DROP TABLE USER;--", "Carol_"]),
        ([where(5, Operator.LESS, 0x000602)], ["Ann"]),
        ([where(8, Operator.EQUAL, int(boxes[3]))], ["Carol_"]),
        (
            [
                where(
                    11,
                    Operator.EQUAL,
                    int.from_bytes(QMailServer(6, "10.0.0.2", 25).to_bytes(), "big"),
                )
            ],
            ["Bob"],
        ),
        (
            [
                where(
                    10,
                    Operator.EQUAL,
                    int.from_bytes(QMailServer(6, "10.0.0.2", 25).to_bytes(), "big"),
                )
            ],
            [],
        ),
        (
            [
                where(4, Operator.CONTAINS, "tea"),
                where(5, Operator.GREATER, 0x000601, SearchKey.AND),
            ],
            ["Carol_"],
        ),
        (
            [where(3, Operator.EQUAL, "Ann"), where(3, Operator.EQUAL, "Bob", SearchKey.OR)],
            ["Ann", "Bob"],
        ),
        (  # left to right: (Ann OR Bob) AND price > 1
            [
                where(3, Operator.EQUAL, "Ann"),
                where(3, Operator.EQUAL, "Bob", SearchKey.OR),
                where(5, Operator.GREATER, 0x000601, SearchKey.AND),
            ],
            ["Bob"],
        ),
    ]
    for conditions, expected in cases:
        status, results = await directory.search(*conditions)
        if expected:
            assert status == Status.SUCCESS, conditions
            assert names(results) == expected, conditions
        else:
            assert status == Status.DATABASE_RETURNED_ZERO_RECORDS, conditions


async def test_sql_looking_strings_are_stored_and_found_literally(directory: Directory) -> None:
    await populate(directory)
    for text, expected in [
        ("'); DROP TABLE USER;--", ["Robert'); DROP TABLE USER;--"]),
        ("%", []),  # LIKE's wildcard is only itself
        ("_", ["Carol_"]),
        ("' OR '1'='1", []),
    ]:
        status, results = await directory.search(where(3, Operator.CONTAINS, text))
        if expected:
            assert names(results) == expected
        else:
            assert status == Status.DATABASE_RETURNED_ZERO_RECORDS
    status, results = await directory.search(where(4, Operator.CONTAINS, "%"))
    assert names(results) == ["Bob"]
    status, results = await directory.search(where(4, Operator.EQUAL, "x' OR '1'='1"))
    assert names(results) == ["Robert'); DROP TABLE USER;--"]
    assert await directory.store.count() == 4


async def test_search_returns_the_requested_columns_never_the_comment(directory: Directory) -> None:
    boxes = await populate(directory)
    session = await directory.login(OWNER, MAILBOX)
    assert await directory.update(session, ann(), comment="secret-avatar") == 250
    request = SearchRequest(directory.challenge(), bytes(16), columns=ALL_COLUMNS)
    answer = await directory.service.handle(request_frame(Command.SEARCH, request.encode()))
    assert b"secret-" not in answer
    results = SearchResults.decode(parse_response(answer)[3][:-2])
    assert results.columns == ALL_COLUMNS
    by_box = {MailboxNumber.from_bytes(row[0] or b""): row for row in results.rows}
    assert set(by_box) == {*boxes, MAILBOX}
    row = by_box[MAILBOX]
    assert row[ALL_COLUMNS.index(7)] == ann().avatar  # the avatar spans entries
    assert row[ALL_COLUMNS.index(41)] is None  # an absent field
    _, results2 = await directory.search(columns=(UpdateKey.DISPLAY_NAME,))
    assert results2 is not None
    assert results2.columns == (3,)


async def test_search_size_limit_and_pages(directory: Directory) -> None:
    for index in range(12):
        box = MailboxNumber(6, 2, index)
        session = await directory.login(Identity.from_seed(bytes([index + 100]) * 32), box)
        assert await directory.update(session, Profile(description=f"{index:02}" * 120)) == 250
    seen: list[bytes] = []
    for page in range(10):
        status, results = await directory.search(columns=(8, 4), limit_kb=1, page=page)
        if status == Status.DATABASE_RETURNED_ZERO_RECORDS:
            break
        assert results is not None
        assert len(results.encode()) + 2 <= 1024
        assert len(results.rows) == 4  # 4 rows of 251 bytes fit one KB
        seen += [row[0] or b"" for row in results.rows]
    assert page == 3
    assert seen == [MailboxNumber(6, 2, i).to_bytes() for i in range(12)]


async def test_database_error_gives_10(directory: Directory) -> None:
    await populate(directory)
    directory.db.marker = "SELECT U.UserID"
    assert (await directory.search())[0] == Status.DATABASE_REPORTED_AN_ERROR
    directory.db.marker = "INSERT INTO USER "
    session = await directory.login()
    assert await directory.update(session, ann()) == Status.DATABASE_REPORTED_AN_ERROR


# -- delete, avatars, crash safety -----------------------------------------------------------


async def test_delete_removes_the_whole_record(directory: Directory) -> None:
    session = await directory.login()
    assert await directory.update(session, ann(), comment="hello") == 250
    assert await directory.delete(session) == Status.SUCCESS
    assert await directory.store.get(MAILBOX) is None
    assert await directory.store.comment(MAILBOX) is None
    assert not (directory.root / "users" / MAILBOX.hex).exists()
    rows = await directory.store.table_rows()
    assert rows["USER_MAILSERVER"] == []
    assert rows["PRIVATE_COMMENT"] == []
    assert [r[0] for r in rows["TOMBSTONE"]] == [int(MAILBOX)]
    assert (await directory.search())[0] == Status.DATABASE_RETURNED_ZERO_RECORDS
    assert await directory.delete(session) == Status.DATABASE_RETURNED_ZERO_RECORDS
    # a later update brings the mailbox back
    directory.clock.now += 1
    assert await directory.update(session, ann(display_name="Ann again")) == 250
    assert (await directory.store.table_rows())["TOMBSTONE"] == []


async def test_update_replaces_the_whole_record_and_the_old_avatar(directory: Directory) -> None:
    session = await directory.login()
    assert await directory.update(session, ann(), comment="one") == 250
    directory.clock.now += 1000
    newer = Profile(display_name="Ann B", avatar_name="b.png", avatar=b"B" * 300)
    assert await directory.update(session, newer) == 250
    stored = await directory.store.get(MAILBOX)
    assert stored is not None
    assert stored.profile == newer
    assert await directory.store.comment(MAILBOX) is None  # the comment was the last update's
    files = list((directory.root / "users" / MAILBOX.hex).iterdir())
    assert [f.read_bytes() for f in files] == [b"B" * 300]


@pytest.mark.parametrize(
    "marker", ["INSERT INTO USER_MAILSERVER", "INSERT INTO PRIVATE_COMMENT", "COMMIT"]
)
async def test_a_failure_inside_an_update_keeps_the_old_record(
    directory: Directory, marker: str
) -> None:
    session = await directory.login()
    assert await directory.update(session, ann(), comment="one") == 250
    before = await directory.store.table_rows()
    directory.db.marker = marker
    changed = ann(
        display_name="Half", avatar=b"new avatar", qmail=((3, QMailServer(6, "1.2.3.4", 5)),)
    )
    assert await directory.update(session, changed, comment="two") == 10
    directory.db.marker = None
    assert await directory.store.table_rows() == before
    stored = await directory.store.get(MAILBOX)
    assert stored is not None
    assert stored.profile == ann()
    files = list((directory.root / "users" / MAILBOX.hex).iterdir())
    assert [f.read_bytes() for f in files] == [ann().avatar]


async def test_versions_decide_and_tombstones_win_ties(directory: Directory) -> None:
    store = directory.store
    kw: dict[str, Any] = {"owner_key": OWNER.public_key, "ticket": b"t", "signature": b"s"}
    assert await store.put(MAILBOX, ann(), version=10, **kw)
    assert not await store.put(MAILBOX, ann(display_name="Old"), version=9, **kw)
    assert await store.delete(MAILBOX, version=10, **kw)  # same ms: the delete wins
    assert not await store.put(MAILBOX, ann(display_name="Z"), version=10, **kw)
    assert await store.put(MAILBOX, ann(display_name="New"), version=11, **kw)
    assert await store.drop_tombstones(older_than=100) == 0
    stored = await store.get(MAILBOX)
    assert stored is not None
    assert stored.profile.display_name == "New"


async def test_changes_need_the_owners_signed_version(directory: Directory) -> None:
    session = await directory.login()
    assert await directory.update(session, ann(), version=T0 + 10) == Status.SUCCESS
    before = await directory.store.table_rows()
    thief = Identity.from_seed(b"thief".ljust(32, b"\x00"))
    # signed by a key other than the ticket's: not authorised
    assert await directory.update(session, ann(display_name="X"), signer=thief) == 40
    assert await directory.delete(session, signer=thief) == 40
    # an older or equal version, or one far from now: invalid, nothing stored
    assert await directory.update(session, ann(display_name="Old"), version=T0 + 5) == 198
    assert await directory.delete(session, version=T0 + 5) == 198
    assert await directory.update(session, ann(display_name="F"), version=T0 + 3_600_000) == 198
    # no version or signature at all
    request = UpdateRequest(directory.challenge(), session, ann(display_name="None"))
    assert (await directory.call(Command.UPDATE, request.encode()))[0] == 198
    assert await directory.store.table_rows() == before
    stored = await directory.store.get(MAILBOX)
    assert stored is not None
    assert stored.version == T0 + 10
    assert stored.signature != b""


async def test_number_operands_beyond_sqlite_integers(directory: Directory) -> None:
    """A where clause's number is up to 8 bytes; SQLite's integers stop at 2^63 - 1. The
    largest operands still compare as numbers (the server neither fails nor drops the
    connection)."""
    await populate(directory)
    everyone = ["Ann", "Bob", "Robert'); DROP TABLE USER;--", "Carol_"]
    top = (1 << 64) - 1
    for column in (UpdateKey.MAILBOX, UpdateKey.SENDING_PRICE):
        for op, expected in [
            (Operator.LESS, everyone),
            (Operator.NOT_EQUAL, everyone),
            (Operator.GREATER, []),
            (Operator.EQUAL, []),
        ]:
            for operand in (top, 1 << 63, (1 << 63) - 1):
                status, results = await directory.search(where(column, op, operand))
                if expected:
                    assert status == Status.SUCCESS, (column, op, operand)
                    assert names(results) == expected
                else:
                    assert status == Status.DATABASE_RETURNED_ZERO_RECORDS, (column, op, operand)


async def test_a_missing_avatar_file_gives_10(directory: Directory) -> None:
    session = await directory.login()
    assert await directory.update(session, ann()) == Status.SUCCESS
    for path in (directory.root / "users" / MAILBOX.hex).iterdir():
        path.unlink()
    status, _ = await directory.search(columns=(UpdateKey.AVATAR,))
    assert status == Status.DATABASE_REPORTED_AN_ERROR


@pytest.mark.parametrize(
    ("entries", "lenient"),
    [
        ([(3, b"")], []),  # empty field
        ([(3, b"Ann"), (4, b"")], [(3, b"Ann")]),  # empty field beside a good one
        ([(3, b"Ann"), (9, b"x")], [(3, b"Ann")]),  # unknown key
        ([(3, b"Ann"), (200, b"")], [(3, b"Ann")]),  # empty comment
        ([(3, b"Ann"), (3, b"Bob")], [(3, b"Bob")]),  # a key twice
        ([(5, b"\x00\x06")], [(5, b"\x00\x06")]),  # wrong length
        ([(3, b"Ann"), (10, bytes(9))], [(3, b"Ann"), (10, bytes(9))]),  # wrong length
        ([(3, b"Ann"), (10, bytes(9))], [(3, b"Ann")]),
        ([(1, b"\x00\x06"), (2, bytes(3)), (3, b"Ann")], [(3, b"Ann")]),  # wrong length
        ([(3, b"\xff\xfe")], [(3, b"\xff\xfe")]),  # not UTF-8
        ([(3, b"Ann"), (201, bytes(7))], [(3, b"Ann")]),  # a version is 8 bytes
    ],
)
async def test_bad_parameters_give_198_even_when_the_owner_signed_them(
    directory: Directory, entries: list[tuple[int, bytes]], lenient: list[tuple[int, bytes]]
) -> None:
    """The 198 cases above carry no owner signature, so they would be refused even if the
    bad field were read leniently. Here the owner signed what a lenient server would store
    (the bad field dropped, or kept as sent): still 198, still nothing stored."""
    session = await directory.login()
    assert await directory.update(session, ann(), comment="first") == Status.SUCCESS
    before = await directory.store.table_rows()
    files_before = sorted(p.name for p in (directory.root / "users").rglob("*"))
    version = directory.version()
    digest = fields_digest(MAILBOX, encode_entries(lenient), b"")
    signature = OWNER.sign(update_payload(MAILBOX, version, digest))
    signed = [*entries]
    if not any(key == 201 for key, _ in entries):
        signed.append((201, version.to_bytes(8, "big")))
    signed.append((202, signature))
    body = (
        directory.challenge()
        + session
        + encode_entries([(0, bytes([len(signed) + 1])), *signed])
        + b"\xe3\xe3"
    )
    status, answer = await directory.call(Command.UPDATE, body)
    assert (status, answer) == (Status.INVALID_PARAMETER, b"\xe3\xe3")
    assert await directory.store.table_rows() == before
    assert sorted(p.name for p in (directory.root / "users").rglob("*")) == files_before


async def test_a_stale_update_or_delete_is_refused_before_payment(directory: Directory) -> None:
    locker = b"L" * 16
    payments = LockerPayments({Command.UPDATE: 1, Command.DELETE: 1}, {locker: 5})
    directory.service.payments = payments
    pay = Payment(CLOUDCOIN_COIN_ID, locker)
    session = await directory.login()
    assert await directory.update(session, ann(), version=T0 + 10, payment=pay) == 250
    assert payments.lockers[locker] == 4
    before = await directory.store.table_rows()
    assert (
        await directory.update(session, ann(display_name="Old"), version=T0 + 5, payment=pay) == 198
    )
    request = DeleteRequest(
        directory.challenge(), session, pay, authorize_delete(OWNER, MAILBOX, T0 + 5)
    )
    assert (await directory.call(Command.DELETE, request.encode()))[0] == 198
    assert payments.lockers[locker] == 4  # nothing charged for a refused change
    assert await directory.store.table_rows() == before


class GatedPayments(LockerPayments):
    """Lockers whose every charge waits until the test lets it through (a slow payment
    service: RAIDA answering over the network)."""

    def __init__(self, prices: dict[Command, int], lockers: dict[bytes, int]) -> None:
        super().__init__(prices, lockers)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def charge(
        self, command: Command, mailbox: MailboxNumber | None, payment: Payment | None
    ) -> Status:
        self.entered.set()
        await self.release.wait()
        return await super().charge(command, mailbox, payment)


async def paid_delete(directory: Directory, session: bytes, pay: Payment, version: int) -> int:
    approval = authorize_delete(OWNER, MAILBOX, version)
    request = DeleteRequest(directory.challenge(), session, pay, approval)
    return (await directory.call(Command.DELETE, request.encode()))[0]


@pytest.mark.parametrize("command", [Command.UPDATE, Command.DELETE])
async def test_no_payment_is_taken_for_a_change_refused_in_a_race(
    directory: Directory, command: Command
) -> None:
    """A newer change of the mailbox (synced from another server) lands while the payment of
    a client's change is under way. Before, the client's change passed the version check,
    paid, and was then refused as older: 198, and the locker emptied all the same."""
    locker = b"R" * 16
    kw: dict[str, Any] = {"owner_key": OWNER.public_key, "ticket": b"t", "signature": b"s"}
    session = await directory.login()
    if command == Command.DELETE:
        assert await directory.update(session, ann()) == Status.SUCCESS
    payments = GatedPayments({Command.UPDATE: 1, Command.DELETE: 1}, {locker: 5})
    directory.service.payments = payments
    pay = Payment(CLOUDCOIN_COIN_ID, locker)
    version = directory.version()
    if command == Command.UPDATE:
        change = directory.update(session, ann(display_name="Mine"), version=version, payment=pay)
    else:
        change = paid_delete(directory, session, pay, version)
    client = asyncio.create_task(change)
    await payments.entered.wait()
    synced = asyncio.create_task(
        directory.store.put(MAILBOX, ann(display_name="Newer"), version=version + 1, **kw)
    )
    await asyncio.wait({synced}, timeout=0.1)  # as far as it can get while the payment runs
    payments.release.set()
    status = await client
    await synced
    stored = await directory.store.get(MAILBOX)
    assert stored is not None
    assert stored.profile.display_name == "Newer"  # the newest change wins in any order
    assert status in (Status.SUCCESS, Status.INVALID_PARAMETER)
    paid = payments.lockers[locker] == 4
    assert paid == (status == Status.SUCCESS), (status, payments.lockers)


@pytest.mark.parametrize(
    ("command", "marker"),
    [(Command.UPDATE, "INSERT INTO USER "), (Command.DELETE, "INSERT INTO TOMBSTONE")],
)
async def test_payment_is_given_back_when_the_change_fails_after_it(
    directory: Directory, command: Command, marker: str
) -> None:
    locker = b"F" * 16
    session = await directory.login()
    assert await directory.update(session, ann()) == Status.SUCCESS
    payments = LockerPayments({Command.UPDATE: 2, Command.DELETE: 2, Command.SEARCH: 1})
    payments.lockers[locker] = 5
    directory.service.payments = payments
    pay = Payment(CLOUDCOIN_COIN_ID, locker)
    before = await directory.store.table_rows()
    directory.db.marker = marker
    if command == Command.UPDATE:
        status = await directory.update(session, ann(display_name="X"), payment=pay)
    else:
        status = await paid_delete(directory, session, pay, directory.version())
    assert status == Status.DATABASE_REPORTED_AN_ERROR
    directory.db.marker = "FROM USER U"  # the search's query
    assert (await directory.search(payment=pay))[0] == Status.DATABASE_REPORTED_AN_ERROR
    directory.db.marker = None
    assert payments.lockers[locker] == 5  # nothing kept for a change (or search) not made
    assert await directory.store.table_rows() == before


async def test_concurrent_changes_keep_the_stored_avatar(directory: Directory) -> None:
    """Two changes of one mailbox at once (a client's update and a synced one): whichever
    wins, the database never names an avatar file the other one removed."""

    store = directory.store
    kw: dict[str, Any] = {"owner_key": OWNER.public_key, "ticket": b"t", "signature": b"s"}
    for round_ in range(5):
        base = 100 * (round_ + 1)
        profiles = [ann(avatar=bytes([round_, i]) * 50) for i in range(3)]
        await asyncio.gather(
            *(store.put(MAILBOX, p, version=base + i, **kw) for i, p in enumerate(profiles)),
            store.put(MAILBOX, ann(avatar=b"late" * 9), version=base - 50, **kw),
        )
        stored = await store.get(MAILBOX)  # reads the avatar file the database names
        assert stored is not None
        assert stored.version == base + 2
        assert stored.profile.avatar == profiles[2].avatar
        files = list(store.user_dir(MAILBOX).iterdir())
        assert [f.read_bytes() for f in files] == [profiles[2].avatar]
    await asyncio.gather(
        store.delete(MAILBOX, version=10_000, **kw),
        store.put(MAILBOX, ann(avatar=b"after" * 9), version=10_001, **kw),
    )
    stored = await store.get(MAILBOX)
    assert stored is not None
    assert stored.profile.avatar == b"after" * 9


async def test_a_session_ends_with_its_ticket(directory: Directory) -> None:
    """Sessions count whole minutes; one opened with a ticket that has 30 s left still ends
    when the ticket does."""
    ticket = mint_ticket(
        AUTHORITIES[:3], MAILBOX, OWNER.public_key, issued=T0 - 1000, expires=T0 + 30_000
    )
    request = open_session_request(OWNER, ticket, directory.challenge(), directory.clock.now)
    status, body = await directory.call(Command.OPEN_SESSION, request.encode())
    assert status == Status.SUCCESS
    session = body[:16]
    assert await directory.update(session, ann()) == Status.SUCCESS
    before = await directory.store.table_rows()
    directory.clock.now += 31_000
    assert await directory.update(session, ann(display_name="After")) == Status.NOT_AUTHORIZED
    assert await directory.delete(session) == Status.NOT_AUTHORIZED
    assert await directory.store.table_rows() == before


async def test_avatar_names_never_reach_the_file_system(directory: Directory) -> None:
    """The avatar's name (key 6) is only a field: the file is ``users/<14 hex>/`` plus the
    content's hash, whatever the name says."""
    session = await directory.login()
    for name in ["../../../escape.png", "/etc/passwd", "..", "a/../../b", "C:\\x\\..\\y"]:
        profile = ann(avatar_name=name, avatar=name.encode() * 3)
        assert await directory.update(session, profile) == Status.SUCCESS
        stored = await directory.store.get(MAILBOX)
        assert stored is not None
        assert stored.profile.avatar_name == name
        files = [p for p in directory.root.rglob("*") if p.is_file() and p.name != DATABASE_FILE]
        files = [p for p in files if not p.name.startswith(DATABASE_FILE)]  # -wal, -shm
        assert [p.relative_to(directory.root).parent for p in files] == [
            Path("users") / MAILBOX.hex
        ]
        assert files[0].read_bytes() == name.encode() * 3
    outside = directory.root.parent
    assert not [p for p in outside.rglob("*") if p.name in ("escape.png", "passwd", "b", "y")]


async def test_sessions_per_mailbox_are_bounded(directory: Directory) -> None:
    from node.directory.store import MAX_SESSIONS_PER_MAILBOX

    sessions = [await directory.login() for _ in range(MAX_SESSIONS_PER_MAILBOX + 5)]
    rows = (await directory.store.table_rows())["SESSION"]
    assert len(rows) == MAX_SESSIONS_PER_MAILBOX
    assert await directory.update(sessions[0], ann()) == Status.NOT_AUTHORIZED  # the oldest
    assert await directory.update(sessions[-1], ann()) == Status.SUCCESS
    other = await directory.login(Identity.from_seed(b"y" * 32), MailboxNumber(6, 1, 7))
    assert await directory.update(other, ann()) == Status.SUCCESS  # others are not affected
