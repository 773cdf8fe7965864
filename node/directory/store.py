"""The directory's database (seed 000): the USER, SESSION, USER_MAILSERVER and MAILSERVER
tables, a private table for the "why I updated" comment, tombstones for deletions, and avatars
as files under ``ROOT/users/<14 hex>/`` (see `node.directory.avatars`; their file work runs off
the event loop).

Every statement is parameterised; the few SQL fragments built at run time come from fixed
tables in this module, never from request bytes. Each change is one ``BEGIN IMMEDIATE`` ...
``COMMIT`` transaction, so a crash leaves the old record or the new one, never a mix. An avatar
is written (temp file, then rename) to a name derived from its SHA-256 *before* the transaction
that points at it, and older avatar files go only after the commit: a crash at any point leaves
the database naming a file that exists (at worst an orphan file, removed by the next change).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.directory.avatars import USERS_DIR, AvatarFiles, Offload, in_thread
from node.directory.database import Database
from records.directory import (
    QMAIL_KEYS,
    TOMBSTONE_DIGEST,
    TRAILER,
    Condition,
    MailboxNumber,
    Operator,
    Profile,
    QMailServer,
    SearchKey,
    SearchRequest,
    SearchResults,
    SendingPrice,
    UpdateKey,
    encode_row,
    profile_digest,
)
from records.drd import DigestRow

DATABASE_FILE = "directory.sqlite3"
MAX_ROWS_SCANNED = 100_000
MAX_SESSIONS_PER_MAILBOX = 16
"""Open sessions kept per mailbox; opening another ends the oldest (an owner opening sessions
in a loop cannot grow the SESSION table without bound)."""

_SCHEMA = [
    # seed 000: USER. UserID is the 7-byte mailbox number as an integer. No empty fields: a
    # field is a non-empty value or NULL (absent). Version .. Ticket are ours.
    """CREATE TABLE IF NOT EXISTS USER (
        UserID INTEGER PRIMARY KEY,
        PublicAlias TEXT CHECK (PublicAlias IS NULL OR length(PublicAlias) > 0),
        PublicDescription TEXT CHECK (PublicDescription IS NULL OR length(PublicDescription) > 0),
        PathToAvatarFile TEXT CHECK (PathToAvatarFile IS NULL OR length(PathToAvatarFile) > 0),
        SendingPrice INTEGER,
        StartDateTime INTEGER NOT NULL,
        AvatarName TEXT CHECK (AvatarName IS NULL OR length(AvatarName) > 0),
        AvatarSHA256 BLOB,
        Version INTEGER NOT NULL,
        Digest BLOB NOT NULL,
        OwnerKey BLOB NOT NULL,
        Ticket BLOB NOT NULL,
        OwnerSignature BLOB NOT NULL)""",
    # seed 000: SESSION (the key is 16 bytes, so a BLOB rather than the seed's int)
    """CREATE TABLE IF NOT EXISTS SESSION (
        SessionKey BLOB PRIMARY KEY CHECK (length(SessionKey) = 16),
        UserID INTEGER NOT NULL,
        MinutesUntilTimeout INTEGER NOT NULL,
        StartDateTime INTEGER NOT NULL,
        OwnerKey BLOB NOT NULL,
        Ticket BLOB NOT NULL)""",
    # seed 000: MAILSERVER; QMailID is the 8-byte entry (coin ID, IPv4, port)
    """CREATE TABLE IF NOT EXISTS MAILSERVER (
        QMailID BLOB PRIMARY KEY CHECK (length(QMailID) = 8),
        PublicAlias TEXT CHECK (PublicAlias IS NULL OR length(PublicAlias) > 0),
        PublicDescription TEXT CHECK (PublicDescription IS NULL OR length(PublicDescription) > 0),
        FQDN TEXT NOT NULL CHECK (length(FQDN) > 0),
        flatFee REAL,
        FirstRegistrationDate INTEGER NOT NULL,
        LastUpdateData INTEGER NOT NULL)""",
    # seed 000: USER_MAILSERVER; Slot (QMail[0..31], keys 10..41) is ours
    """CREATE TABLE IF NOT EXISTS USER_MAILSERVER (
        UserID INTEGER NOT NULL REFERENCES USER(UserID) ON DELETE CASCADE,
        QMailID BLOB NOT NULL REFERENCES MAILSERVER(QMailID),
        Slot INTEGER NOT NULL CHECK (Slot BETWEEN 0 AND 31),
        PRIMARY KEY (UserID, Slot))""",
    # ours: the private comment (seed 000: the only thing in the DRD that is not public)
    """CREATE TABLE IF NOT EXISTS PRIVATE_COMMENT (
        UserID INTEGER PRIMARY KEY REFERENCES USER(UserID) ON DELETE CASCADE,
        Comment TEXT NOT NULL CHECK (length(Comment) > 0),
        Version INTEGER NOT NULL)""",
    # ours: deletions, kept a while so that servers that sync do not bring a record back
    """CREATE TABLE IF NOT EXISTS TOMBSTONE (
        UserID INTEGER PRIMARY KEY,
        Version INTEGER NOT NULL,
        OwnerKey BLOB NOT NULL,
        Ticket BLOB NOT NULL,
        OwnerSignature BLOB NOT NULL)""",
]

_TABLES = ("USER", "SESSION", "MAILSERVER", "USER_MAILSERVER", "PRIVATE_COMMENT", "TOMBSTONE")

_TEXT_SQL = {
    UpdateKey.DISPLAY_NAME: "U.PublicAlias",
    UpdateKey.DESCRIPTION: "U.PublicDescription",
    UpdateKey.AVATAR_NAME: "U.AvatarName",
}
_NUMBER_SQL = {UpdateKey.SENDING_PRICE: "U.SendingPrice", UpdateKey.MAILBOX: "U.UserID"}
_QMAIL_SQL = (
    "(SELECT UM.QMailID FROM USER_MAILSERVER UM WHERE UM.UserID = U.UserID AND UM.Slot = ?)"
)
_COMPARE_SQL = {
    Operator.NOT_EQUAL: "{col} != ?",
    Operator.EQUAL: "{col} = ?",
    Operator.GREATER: "{col} > ?",
    Operator.LESS: "{col} < ?",
    # instr, not LIKE: '%' and '_' in a search are the characters themselves
    Operator.CONTAINS: "instr({col}, ?) > 0",
    Operator.NOT_CONTAINS: "instr({col}, ?) = 0",
}
_RESULTS_OVERHEAD = 13 + len(TRAILER)
# SQLite integers are signed 64-bit, a where clause's number up to 2^64 - 1 (8 bytes). Stored
# numbers (mailbox: 7 bytes, price: 3) are far below 2^63 - 1, so comparing with the operand
# capped there gives the same answer, where binding the operand itself would overflow.
_SQL_INTEGER_MAX = (1 << 63) - 1  # results header (keys 0-3) and the trailer

_UPSERT_USER = (
    "INSERT INTO USER (UserID, PublicAlias, PublicDescription, PathToAvatarFile, SendingPrice,"
    " StartDateTime, AvatarName, AvatarSHA256, Version, Digest, OwnerKey, Ticket, OwnerSignature)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(UserID) DO UPDATE SET PublicAlias = excluded.PublicAlias,"
    " PublicDescription = excluded.PublicDescription,"
    " PathToAvatarFile = excluded.PathToAvatarFile,"
    " SendingPrice = excluded.SendingPrice, AvatarName = excluded.AvatarName,"
    " AvatarSHA256 = excluded.AvatarSHA256, Version = excluded.Version,"
    " Digest = excluded.Digest, OwnerKey = excluded.OwnerKey,"
    " Ticket = excluded.Ticket, OwnerSignature = excluded.OwnerSignature"
)
_UPSERT_MAILSERVER = (
    "INSERT INTO MAILSERVER (QMailID, FQDN, FirstRegistrationDate, LastUpdateData)"
    " VALUES (?, ?, ?, ?)"
    " ON CONFLICT(QMailID) DO UPDATE SET LastUpdateData = excluded.LastUpdateData"
)


@dataclass(frozen=True)
class StoredProfile:
    """A mailbox's record as held: the public profile and what authorised it."""

    mailbox: MailboxNumber
    profile: Profile
    version: int
    """Unix ms of the owner-authorised change this record is (the newest wins)."""
    created: int
    digest: bytes
    owner_key: bytes
    ticket: bytes
    signature: bytes
    """The owner's signature of (mailbox, version, digest)."""


@dataclass(frozen=True)
class Tombstone:
    """A deleted mailbox, remembered until `version` + the configured keep time."""

    mailbox: MailboxNumber
    version: int
    owner_key: bytes
    ticket: bytes
    signature: bytes


@dataclass(frozen=True)
class Session:
    """An open session (seed 000 SESSION): whose mailbox, until when."""

    key: bytes
    mailbox: MailboxNumber
    owner_key: bytes
    ticket: bytes
    expires: int


@dataclass(frozen=True)
class _Approval:
    """What authorises a change: the owner's version and signature, under a ticket."""

    version: int
    owner_key: bytes
    ticket: bytes
    signature: bytes


class DirectoryStore:
    """Profiles, sessions, comments and tombstones in SQLite; avatars as files under `root`."""

    def __init__(self, db: Database, root: Path, *, offload: Offload = in_thread) -> None:
        self._db = db
        self.root = root
        self.avatars = AvatarFiles(root)
        self._offload = offload
        self._lock = asyncio.Lock()  # one unit of work at a time on the one connection
        # One change (avatar file, transaction, pruning of old files) at a time: otherwise a
        # change committing first prunes the avatar file another is about to commit to.
        self._change = asyncio.Lock()

    @classmethod
    async def open(
        cls, db: Database, root: Path, *, offload: Offload = in_thread
    ) -> DirectoryStore:
        """Create the tables if needed; avatars go under ``root/users``, their file work
        through `offload` (a worker thread by default)."""
        store = cls(db, root, offload=offload)
        (root / USERS_DIR).mkdir(parents=True, exist_ok=True)
        for statement in _SCHEMA:
            await db.execute(statement)
        return store

    async def close(self) -> None:
        """Close the database."""
        async with self._lock:
            await self._db.close()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Database]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # also after a failed COMMIT, which may leave the transaction open
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")
                raise

    def user_dir(self, mailbox: MailboxNumber) -> Path:
        """``root/users/<14 hex>/`` (seed 000's directory layout)."""
        return self.avatars.user_dir(mailbox)

    # -- sessions --------------------------------------------------------------------------

    async def open_session(
        self,
        key: bytes,
        mailbox: MailboxNumber,
        owner_key: bytes,
        ticket: bytes,
        *,
        minutes: int,
        now: int,
    ) -> None:
        """Record a session of `minutes` from `now` (seed 000 SESSION)."""
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM SESSION WHERE StartDateTime + MinutesUntilTimeout * 60000 <= ?", (now,)
            )
            await db.execute(
                "INSERT INTO SESSION (SessionKey, UserID, MinutesUntilTimeout, StartDateTime,"
                " OwnerKey, Ticket) VALUES (?, ?, ?, ?, ?, ?)",
                (key, int(mailbox), minutes, now, owner_key, ticket),
            )
            await db.execute(
                "DELETE FROM SESSION WHERE UserID = ? AND rowid NOT IN (SELECT rowid FROM SESSION"
                " WHERE UserID = ? ORDER BY StartDateTime DESC, rowid DESC LIMIT ?)",
                (int(mailbox), int(mailbox), MAX_SESSIONS_PER_MAILBOX),
            )

    async def session(self, key: bytes, now: int) -> Session | None:
        """The live session `key`, or None (unknown or expired)."""
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT UserID, OwnerKey, Ticket, StartDateTime + MinutesUntilTimeout * 60000"
                " FROM SESSION WHERE SessionKey = ?",
                (key,),
            )
        if not rows or rows[0][3] <= now:
            return None
        user, owner, ticket, expires = rows[0]
        return Session(key, _mailbox(user), owner, ticket, expires)

    # -- records ---------------------------------------------------------------------------

    async def version_of(self, mailbox: MailboxNumber) -> tuple[int, bytes] | None:
        """(version, digest) of the record or tombstone held for `mailbox`, if any."""
        async with self._lock:
            return await self._version_of(int(mailbox))

    async def _version_of(self, user: int) -> tuple[int, bytes] | None:
        rows = await self._db.fetchall(
            "SELECT Version, Digest FROM USER WHERE UserID = ? UNION ALL "
            "SELECT Version, ? FROM TOMBSTONE WHERE UserID = ?",
            (user, TOMBSTONE_DIGEST, user),
        )
        return max((int(v), bytes(d)) for v, d in rows) if rows else None

    async def put(
        self,
        mailbox: MailboxNumber,
        profile: Profile,
        *,
        version: int,
        owner_key: bytes,
        ticket: bytes,
        signature: bytes,
        comment: str | None = None,
        created: int | None = None,
    ) -> bool:
        """Store `profile` as `mailbox`'s whole record if (version, digest) is newer than what
        is held (record or tombstone). Returns whether it was stored."""
        approval = _Approval(version, owner_key, ticket, signature)
        async with self._change:
            return await self._put(mailbox, profile, approval, comment, created)

    async def _put(
        self,
        mailbox: MailboxNumber,
        profile: Profile,
        approval: _Approval,
        comment: str | None,
        created: int | None,
    ) -> bool:
        """The avatar file first, then one transaction, then the files it no longer names."""
        user = int(mailbox)
        digest = profile_digest(mailbox, profile)
        avatar_sha = None if profile.avatar is None else _sha256(profile.avatar)
        avatar_path = None
        if profile.avatar is not None and avatar_sha is not None:
            avatar_path = await self._offload(
                self.avatars.write, mailbox, profile.avatar, avatar_sha
            )
        stored = False
        try:
            async with self._transaction() as db:
                held = await self._version_of(user)
                if held is not None and held >= (approval.version, digest):
                    return False
                await _write_user(
                    db, user, profile, digest, approval, avatar_path, avatar_sha, created
                )
                await db.execute("DELETE FROM TOMBSTONE WHERE UserID = ?", (user,))
                await _write_mailservers(db, user, profile.qmail, approval.version)
                await _write_comment(db, user, comment, approval.version)
            stored = True  # committed
        finally:
            if stored:
                await self._offload(self.avatars.prune, mailbox, avatar_path)
            elif avatar_path is not None:
                await self._drop_unreferenced_avatar(user, mailbox, avatar_path)
        return True

    async def _drop_unreferenced_avatar(self, user: int, mailbox: MailboxNumber, path: str) -> None:
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT PathToAvatarFile FROM USER WHERE UserID = ?", (user,)
            )
        keep = rows[0][0] if rows else None
        if keep != path:
            await self._offload(self.avatars.prune, mailbox, keep)

    async def delete(
        self,
        mailbox: MailboxNumber,
        *,
        version: int,
        owner_key: bytes,
        ticket: bytes,
        signature: bytes,
    ) -> bool:
        """Delete the whole record (seed 000) and leave a tombstone at `version`, if that is
        newer than what is held. Returns whether anything changed."""
        approval = _Approval(version, owner_key, ticket, signature)
        async with self._change:
            return await self._delete(mailbox, approval)

    async def _delete(self, mailbox: MailboxNumber, approval: _Approval) -> bool:
        user = int(mailbox)
        async with self._transaction() as db:
            held = await self._version_of(user)
            if held is not None and held >= (approval.version, TOMBSTONE_DIGEST):
                return False
            await db.execute("DELETE FROM USER WHERE UserID = ?", (user,))
            await db.execute(
                "INSERT INTO TOMBSTONE (UserID, Version, OwnerKey, Ticket, OwnerSignature)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(UserID) DO UPDATE SET"
                " Version = excluded.Version, OwnerKey = excluded.OwnerKey,"
                " Ticket = excluded.Ticket, OwnerSignature = excluded.OwnerSignature",
                (user, approval.version, approval.owner_key, approval.ticket, approval.signature),
            )
        await self._offload(self.avatars.prune, mailbox, None)
        return True

    async def drop_tombstones(self, older_than: int) -> int:
        """Forget deletions whose version is before `older_than` (ms)."""
        async with self._transaction() as db:
            return await db.execute("DELETE FROM TOMBSTONE WHERE Version < ?", (older_than,))

    async def get(self, mailbox: MailboxNumber) -> StoredProfile | None:
        """The record held for `mailbox` (avatar read from its file), or None."""
        async with self._lock:
            return await self._get(int(mailbox))

    async def _get(self, user: int) -> StoredProfile | None:
        rows = await self._db.fetchall(
            "SELECT PublicAlias, PublicDescription, PathToAvatarFile, SendingPrice,"
            " StartDateTime, AvatarName, Version, Digest, OwnerKey, Ticket, OwnerSignature"
            " FROM USER WHERE UserID = ?",
            (user,),
        )
        if not rows:
            return None
        name, description, path, price, created, avatar_name, version, digest = rows[0][:8]
        owner, ticket, signature = rows[0][8:]
        servers = await self._db.fetchall(
            "SELECT Slot, QMailID FROM USER_MAILSERVER WHERE UserID = ? ORDER BY Slot", (user,)
        )
        # read while the lock is held: no change can prune the file the row names meanwhile
        avatar = None if path is None else await self._offload(self.avatars.read, path)
        profile = Profile(
            display_name=name,
            description=description,
            sending_price=(
                None if price is None else SendingPrice.from_bytes(price.to_bytes(3, "big"))
            ),
            avatar_name=avatar_name,
            avatar=avatar,
            qmail=tuple((slot, QMailServer.from_bytes(qid)) for slot, qid in servers),
        )
        return StoredProfile(
            _mailbox(user),
            profile,
            version,
            created,
            bytes(digest),
            bytes(owner),
            bytes(ticket),
            bytes(signature),
        )

    async def tombstone(self, mailbox: MailboxNumber) -> Tombstone | None:
        """The deletion remembered for `mailbox`, if any."""
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT Version, OwnerKey, Ticket, OwnerSignature FROM TOMBSTONE WHERE UserID = ?",
                (int(mailbox),),
            )
        if not rows:
            return None
        version, owner, ticket, signature = rows[0]
        return Tombstone(mailbox, version, bytes(owner), bytes(ticket), bytes(signature))

    async def comment(self, mailbox: MailboxNumber) -> str | None:
        """The private comment of the last update of `mailbox` (never published)."""
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT Comment FROM PRIVATE_COMMENT WHERE UserID = ?", (int(mailbox),)
            )
        return str(rows[0][0]) if rows else None

    async def digest(self) -> dict[MailboxNumber, tuple[int, bytes]]:
        """(version, digest) of every record and tombstone held (for anti-entropy)."""
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT UserID, Version, Digest FROM USER UNION ALL "
                "SELECT UserID, Version, ? FROM TOMBSTONE",
                (TOMBSTONE_DIGEST,),
            )
        out: dict[MailboxNumber, tuple[int, bytes]] = {}
        for user, version, digest in rows:
            mailbox = _mailbox(user)
            rank = (int(version), bytes(digest))
            if mailbox not in out or rank > out[mailbox]:
                out[mailbox] = rank
        return out

    async def digest_page(self, after: MailboxNumber | None, limit: int) -> list[DigestRow]:
        """Up to `limit` (mailbox, version, digest) rows of records and tombstones, in mailbox
        order, after `after` (None: from the first)."""
        start = -1 if after is None else int(after)
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT UserID, Version, Digest FROM USER WHERE UserID > ? UNION ALL "
                "SELECT UserID, Version, ? FROM TOMBSTONE WHERE UserID > ? "
                "ORDER BY 1 LIMIT ?",
                (start, TOMBSTONE_DIGEST, start, limit),
            )
        return [(_mailbox(user), int(version), bytes(digest)) for user, version, digest in rows]

    async def mailboxes(self) -> list[MailboxNumber]:
        """Every mailbox with a record or a tombstone."""
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT UserID FROM USER UNION SELECT UserID FROM TOMBSTONE ORDER BY 1"
            )
        return [_mailbox(user) for (user,) in rows]

    async def table_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, sorted (for inspection and tests)."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        async with self._lock:
            for table in _TABLES:
                rows = await self._db.fetchall(f"SELECT * FROM {table}")  # fixed names
                out[table] = sorted(rows, key=repr)
        return out

    async def count(self) -> int:
        """How many records are held."""
        async with self._lock:
            rows = await self._db.fetchall("SELECT count(*) FROM USER")
        return int(rows[0][0])

    # -- search ----------------------------------------------------------------------------

    async def search(self, request: SearchRequest) -> SearchResults:
        """The page `request.page` of matching records, pages being as many whole rows as fit
        `request.limit_kb` KB (at least one row each), rows ordered by mailbox number.

        Raises `sqlite3.Error` if the database fails (status 10)."""
        where, params = _where_sql(request.conditions)
        async with self._lock:
            ids = await self._db.fetchall(
                f"SELECT U.UserID FROM USER U WHERE {where} ORDER BY U.UserID LIMIT ?",
                (*params, MAX_ROWS_SCANNED),
            )
            budget = request.limit_kb * 1024 - _RESULTS_OVERHEAD
            page, used = 0, 0
            rows: list[tuple[bytes | None, ...]] = []
            for (user,) in ids:
                row = await self._row(user, request.columns)
                size = len(encode_row(request.columns, row))
                if rows and (used + size > budget or len(rows) == 0xFFFF):
                    if page == request.page:
                        break
                    page, used, rows = page + 1, 0, []
                rows.append(row)
                used += size
        if page != request.page:
            rows = []
        return SearchResults(request.columns, tuple(rows))

    async def _row(self, user: int, columns: tuple[int, ...]) -> tuple[bytes | None, ...]:
        """One result row; the avatar file is read only if it is a requested column."""
        fields = await self._db.fetchall(
            "SELECT PublicAlias, PublicDescription, SendingPrice, AvatarName, PathToAvatarFile"
            " FROM USER WHERE UserID = ?",
            (user,),
        )
        name, description, price, avatar_name, path = fields[0]
        slots: dict[int, bytes] = {}
        if any(c in QMAIL_KEYS for c in columns):
            for slot, qmail_id in await self._db.fetchall(
                "SELECT Slot, QMailID FROM USER_MAILSERVER WHERE UserID = ?", (user,)
            ):
                slots[UpdateKey.QMAIL_FIRST + slot] = bytes(qmail_id)
        row: list[bytes | None] = []
        for column in columns:
            if column == UpdateKey.MAILBOX:
                row.append(int(user).to_bytes(7, "big"))
            elif column == UpdateKey.DISPLAY_NAME:
                row.append(_utf8(name))
            elif column == UpdateKey.DESCRIPTION:
                row.append(_utf8(description))
            elif column == UpdateKey.AVATAR_NAME:
                row.append(_utf8(avatar_name))
            elif column == UpdateKey.SENDING_PRICE:
                row.append(None if price is None else int(price).to_bytes(3, "big"))
            elif column == UpdateKey.AVATAR:
                # read while the lock is held: no change can prune the file meanwhile
                row.append(None if path is None else await self._offload(self.avatars.read, path))
            else:
                row.append(slots.get(column))
        return tuple(row)


async def _write_user(
    db: Database,
    user: int,
    profile: Profile,
    digest: bytes,
    approval: _Approval,
    avatar_path: str | None,
    avatar_sha: bytes | None,
    created: int | None,
) -> None:
    """The USER row (seed 000), inserted or replaced whole."""
    price = profile.sending_price
    await db.execute(
        _UPSERT_USER,
        (
            user,
            profile.display_name,
            profile.description,
            avatar_path,
            None if price is None else int.from_bytes(price.to_bytes(), "big"),
            approval.version if created is None else created,
            profile.avatar_name,
            avatar_sha,
            approval.version,
            digest,
            approval.owner_key,
            approval.ticket,
            approval.signature,
        ),
    )


async def _write_mailservers(
    db: Database, user: int, qmail: tuple[tuple[int, QMailServer], ...], version: int
) -> None:
    """The record's QMail servers (seed 000: MAILSERVER and USER_MAILSERVER), replaced whole."""
    await db.execute("DELETE FROM USER_MAILSERVER WHERE UserID = ?", (user,))
    for slot, server in qmail:
        qmail_id = server.to_bytes()
        await db.execute(
            _UPSERT_MAILSERVER, (qmail_id, f"{server.host}:{server.port}", version, version)
        )
        await db.execute(
            "INSERT INTO USER_MAILSERVER (UserID, QMailID, Slot) VALUES (?, ?, ?)",
            (user, qmail_id, slot),
        )


async def _write_comment(db: Database, user: int, comment: str | None, version: int) -> None:
    """The private comment explains the last update only (seed 000: the one private field)."""
    await db.execute("DELETE FROM PRIVATE_COMMENT WHERE UserID = ?", (user,))
    if comment:
        await db.execute(
            "INSERT INTO PRIVATE_COMMENT (UserID, Comment, Version) VALUES (?, ?, ?)",
            (user, comment, version),
        )


def _utf8(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8")


def _where_sql(conditions: tuple[Condition, ...]) -> tuple[str, list[Any]]:
    """SQL for the where / AND / OR clauses, left to right (``(a AND b) OR c``), and its
    parameters. Column and operator SQL come from this module's fixed tables."""
    if not conditions:
        return "1", []
    expression = ""
    params: list[Any] = []
    for condition in conditions:
        column_params: list[Any] = []
        if condition.column in _TEXT_SQL:
            column = _TEXT_SQL[UpdateKey(condition.column)]
            operand: Any = condition.operand
        elif condition.column in QMAIL_KEYS:
            column = _QMAIL_SQL
            column_params = [condition.column - UpdateKey.QMAIL_FIRST]
            operand = int(condition.operand).to_bytes(8, "big")  # QMailID blobs: memcmp order
        else:
            column = _NUMBER_SQL[UpdateKey(condition.column)]
            operand = min(int(condition.operand), _SQL_INTEGER_MAX)
        clause = _COMPARE_SQL[condition.operator].format(col=column)
        clause_params = [*column_params, operand]
        if condition.join == SearchKey.WHERE:
            expression = f"({clause})"
        else:
            joiner = "AND" if condition.join == SearchKey.AND else "OR"
            expression = f"({expression} {joiner} {clause})"
        params += clause_params
    return expression, params


def _mailbox(user: int) -> MailboxNumber:
    return MailboxNumber.from_bytes(int(user).to_bytes(7, "big"))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
