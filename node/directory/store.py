"""The directory's database (seed 000): the USER, SESSION, USER_MAILSERVER and MAILSERVER
tables, a private table for the "why I updated" comment, tombstones for deletions and, once a
tombstone's time is up, the version floor it leaves (never forgotten: about 110 bytes a
mailbox, so a server that was away longer cannot bring a deleted record back), and avatars as
files under ``ROOT/users/<14 hex>/`` (see `node.directory.avatars`; their file work runs off
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.directory.avatars import USERS_DIR, AvatarFiles, Offload, in_thread
from node.directory.database import Database
from node.directory.search import Match, Pager, chunk_query, matches
from records.directory import (
    FLOOR_DIGEST,
    TOMBSTONE_DIGEST,
    MailboxNumber,
    Profile,
    QMailServer,
    Row,
    SearchRequest,
    SearchResults,
    SendingPrice,
    UpdateKey,
    profile_digest,
    supersedes,
)
from records.drd import DigestRow

DATABASE_FILE = "directory.sqlite3"
Charge = Callable[[], Awaitable[None]]
"""Takes payment for a change, or raises to refuse it (see `DirectoryStore.put`)."""
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
    # ours: what a tombstone leaves when its ticket is dropped: the newest deletion's version
    # (no change at or below it is taken again) and the owner's signature of it
    """CREATE TABLE IF NOT EXISTS VERSION_FLOOR (
        UserID INTEGER PRIMARY KEY,
        Version INTEGER NOT NULL,
        OwnerKey BLOB NOT NULL,
        OwnerSignature BLOB NOT NULL)""",
]

_TABLES = (
    "USER",
    "SESSION",
    "MAILSERVER",
    "USER_MAILSERVER",
    "PRIVATE_COMMENT",
    "TOMBSTONE",
    "VERSION_FLOOR",
)
# (mailbox, version, digest) of every record, tombstone and floor (a mailbox is in one of them)
_RANKS = (
    "SELECT UserID, Version, Digest FROM USER WHERE UserID > ?1 UNION ALL "
    "SELECT UserID, Version, ?2 FROM TOMBSTONE WHERE UserID > ?1 UNION ALL "
    "SELECT UserID, Version, ?3 FROM VERSION_FLOOR WHERE UserID > ?1"
)

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
class VersionFloor:
    """A deletion whose tombstone was dropped: no change at or below `version` is taken."""

    mailbox: MailboxNumber
    version: int
    owner_key: bytes
    signature: bytes
    """The owner's signature of the deletion (`records.directory.delete_payload`)."""


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
        """(version, digest) of the record, tombstone or floor held for `mailbox`, if any."""
        async with self._lock:
            return await self._version_of(int(mailbox))

    async def _version_of(self, user: int) -> tuple[int, bytes] | None:
        rows = await self._db.fetchall(
            "SELECT Version, Digest FROM USER WHERE UserID = ?1 UNION ALL "
            "SELECT Version, ?2 FROM TOMBSTONE WHERE UserID = ?1 UNION ALL "
            "SELECT Version, ?3 FROM VERSION_FLOOR WHERE UserID = ?1",
            (user, TOMBSTONE_DIGEST, FLOOR_DIGEST),
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
        charge: Charge | None = None,
    ) -> bool:
        """Store `profile` as `mailbox`'s whole record if (version, digest) is newer than what
        is held (record, tombstone or floor). Returns whether it was stored.

        `charge` is awaited once the change is known to be newer and before anything is
        written, while every other change of this store waits: a payment taken there cannot be
        overtaken by a newer change. If it raises, nothing is written."""
        approval = _Approval(version, owner_key, ticket, signature)
        async with self._change:
            return await self._put(mailbox, profile, approval, comment, created, charge)

    async def _put(
        self,
        mailbox: MailboxNumber,
        profile: Profile,
        approval: _Approval,
        comment: str | None,
        created: int | None,
        charge: Charge | None,
    ) -> bool:
        """The version check and the payment, the avatar file, then one transaction, then the
        files it no longer names."""
        user = int(mailbox)
        digest = profile_digest(mailbox, profile)
        if not await self._is_newer(user, (approval.version, digest)):
            return False
        if charge is not None:
            await charge()
        avatar_sha: bytes | None = None
        avatar_path: str | None = None
        if profile.avatar is not None:
            avatar_sha = _sha256(profile.avatar)
            avatar_path = await self._offload(
                self.avatars.write, mailbox, profile.avatar, avatar_sha
            )
        stored = False
        try:
            async with self._transaction() as db:
                await _write_user(
                    db, user, profile, digest, approval, avatar_path, avatar_sha, created
                )
                await _clear_deletion(db, user)
                await _write_mailservers(db, user, profile.qmail, approval.version)
                await _write_comment(db, user, comment, approval.version)
            stored = True  # committed
        finally:
            if stored:
                await self._offload(self.avatars.prune, mailbox, avatar_path)
            elif avatar_path is not None:
                await self._drop_unreferenced_avatar(user, mailbox, avatar_path)
        return True

    async def _is_newer(self, user: int, rank: tuple[int, bytes]) -> bool:
        """Whether a change ranked `rank` supersedes what is held (the caller holds `_change`,
        so no other change can come between this answer and its transaction)."""
        async with self._lock:
            held = await self._version_of(user)
        return supersedes(rank, held)

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
        charge: Charge | None = None,
    ) -> bool:
        """Delete the whole record (seed 000) and leave a tombstone at `version`, if that is
        newer than what is held. Returns whether anything changed. `charge` as for `put`."""
        approval = _Approval(version, owner_key, ticket, signature)
        async with self._change:
            return await self._delete(mailbox, approval, charge)

    async def _delete(
        self, mailbox: MailboxNumber, approval: _Approval, charge: Charge | None
    ) -> bool:
        user = int(mailbox)
        if not await self._is_newer(user, (approval.version, TOMBSTONE_DIGEST)):
            return False
        if charge is not None:
            await charge()
        async with self._transaction() as db:
            await db.execute("DELETE FROM USER WHERE UserID = ?", (user,))
            await _clear_deletion(db, user)
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
        """Drop the tombstones of deletions whose version is before `older_than` (ms), with
        their tickets; each leaves its mailbox's version floor. Returns how many went."""
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO VERSION_FLOOR (UserID, Version, OwnerKey, OwnerSignature)"
                " SELECT UserID, Version, OwnerKey, OwnerSignature FROM TOMBSTONE"
                " WHERE Version < ?",
                (older_than,),
            )
            return await db.execute("DELETE FROM TOMBSTONE WHERE Version < ?", (older_than,))

    async def apply_floor(self, floor: VersionFloor) -> bool:
        """Delete the record held for the floor's mailbox if it is older than the floor and
        was approved by the same owner key (who has since signed its deletion: the caller
        checked that signature), leaving the floor. Returns whether the record went."""
        user = int(floor.mailbox)
        async with self._change:
            async with self._transaction() as db:
                rows = await db.fetchall(
                    "SELECT Version, OwnerKey FROM USER WHERE UserID = ?", (user,)
                )
                # a deletion wins a tie with an update of the same millisecond
                if not rows or rows[0][0] > floor.version or bytes(rows[0][1]) != floor.owner_key:
                    return False
                await db.execute("DELETE FROM USER WHERE UserID = ?", (user,))
                await db.execute(
                    "INSERT INTO VERSION_FLOOR (UserID, Version, OwnerKey, OwnerSignature)"
                    " VALUES (?, ?, ?, ?)",
                    (user, floor.version, floor.owner_key, floor.signature),
                )
            await self._offload(self.avatars.prune, floor.mailbox, None)
        return True

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

    async def floor(self, mailbox: MailboxNumber) -> VersionFloor | None:
        """The version floor a forgotten deletion left for `mailbox`, if any."""
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT Version, OwnerKey, OwnerSignature FROM VERSION_FLOOR WHERE UserID = ?",
                (int(mailbox),),
            )
        if not rows:
            return None
        version, owner, signature = rows[0]
        return VersionFloor(mailbox, int(version), bytes(owner), bytes(signature))

    async def comment(self, mailbox: MailboxNumber) -> str | None:
        """The private comment of the last update of `mailbox` (never published)."""
        async with self._lock:
            rows = await self._db.fetchall(
                "SELECT Comment FROM PRIVATE_COMMENT WHERE UserID = ?", (int(mailbox),)
            )
        return str(rows[0][0]) if rows else None

    async def digest(self) -> dict[MailboxNumber, tuple[int, bytes]]:
        """(version, digest) of every record, tombstone and floor held (for anti-entropy)."""
        async with self._lock:
            rows = await self._db.fetchall(_RANKS, (-1, TOMBSTONE_DIGEST, FLOOR_DIGEST))
        out: dict[MailboxNumber, tuple[int, bytes]] = {}
        for user, version, digest in rows:
            mailbox = _mailbox(user)
            rank = (int(version), bytes(digest))
            if mailbox not in out or rank > out[mailbox]:
                out[mailbox] = rank
        return out

    async def digest_page(self, after: MailboxNumber | None, limit: int) -> list[DigestRow]:
        """Up to `limit` (mailbox, version, digest) rows of records, tombstones and floors, in
        mailbox order, after `after` (None: from the first)."""
        start = -1 if after is None else int(after)
        async with self._lock:
            rows = await self._db.fetchall(
                f"{_RANKS} ORDER BY 1 LIMIT ?4", (start, TOMBSTONE_DIGEST, FLOOR_DIGEST, limit)
            )
        return [(_mailbox(user), int(version), bytes(digest)) for user, version, digest in rows]

    async def mailboxes(self) -> list[MailboxNumber]:
        """Every mailbox with a record or a tombstone (what there is to publish)."""
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

        Records are read by key, a chunk per query (see `node.directory.search`); the lock is
        held for one chunk at a time, and avatar files are sized or read off the loop, only if
        the avatar is a requested column. Raises `sqlite3.Error` if the database fails, or
        `OSError` if an avatar file does (status 10)."""
        sql, params = chunk_query(request)
        pager = Pager(request)
        rows: list[Row] = []
        while not pager.done:
            async with self._lock:
                found = matches(await self._db.fetchall(sql, params))
                rows += await self._page_rows(pager, found)
            if len(found) < params[-1]:
                break
            params[0] = found[-1].user  # the next chunk starts after this one's last record
        return SearchResults(request.columns, tuple(rows))

    async def _page_rows(self, pager: Pager, found: list[Match]) -> list[Row]:
        """Walk one chunk; the rows on the page asked for, their avatars read (lock held, so
        no change prunes a file a row names meanwhile)."""
        wants_avatar = UpdateKey.AVATAR in pager.columns
        sizes: list[int | None] = [None] * len(found)
        if wants_avatar:
            sizes = await self._offload(self.avatars.sizes, [m.path for m in found])
        kept: list[Match] = []
        for match, size in zip(found, sizes, strict=True):
            if pager.done:
                break
            if pager.take(pager.size(match, size)):
                kept.append(match)
        avatars: list[bytes | None] = [None] * len(kept)
        if wants_avatar and kept:
            avatars = await self._offload(self.avatars.read_all, [m.path for m in kept])
        return [m.row(pager.columns, avatar) for m, avatar in zip(kept, avatars, strict=True)]


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


async def _clear_deletion(db: Database, user: int) -> None:
    """A newer change replaces the mailbox's tombstone or floor (its version is above it)."""
    await db.execute("DELETE FROM TOMBSTONE WHERE UserID = ?", (user,))
    await db.execute("DELETE FROM VERSION_FLOOR WHERE UserID = ?", (user,))


async def _write_comment(db: Database, user: int, comment: str | None, version: int) -> None:
    """The private comment explains the last update only (seed 000: the one private field)."""
    await db.execute("DELETE FROM PRIVATE_COMMENT WHERE UserID = ?", (user,))
    if comment:
        await db.execute(
            "INSERT INTO PRIVATE_COMMENT (UserID, Comment, Version) VALUES (?, ?, ?)",
            (user, comment, version),
        )


def _mailbox(user: int) -> MailboxNumber:
    return MailboxNumber.from_bytes(int(user).to_bytes(7, "big"))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
