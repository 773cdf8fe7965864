"""RecordStore: validated, consolidated records in memory, written through to a backend.

Only records that pass the validator are kept; a record arriving for a location already held is
merged with the held one by the validator's `consolidate`, so an older copy never replaces a
newer one. With a `SqliteBackend` each accepted store is committed (SQLite WAL) before the store
is acknowledged, so an acknowledged record survives ``kill -9``; a restarted node reloads and
re-validates what it held.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from node.errors import StorageError, StoreFull
from records import InvalidRecord, Record, Validator, decode_record, encode_record, location
from records.validation import check_admission, without_expired

log = logging.getLogger(__name__)
T = TypeVar("T")


class RecordBackend(Protocol):
    """Where a `RecordStore` persists records."""

    async def open(self) -> None:
        """Prepare for use."""
        ...

    async def load(self) -> list[tuple[bytes, bool]]:
        """Every saved record: (record bytes, put through this node)."""
        ...

    async def save(self, loc: bytes, data: bytes, expires: int, origin: bool) -> None:
        """Durably save one record, replacing any at `loc`."""
        ...

    async def delete(self, locs: Sequence[bytes]) -> None:
        """Forget the records at `locs`."""
        ...

    async def close(self) -> None:
        """Release resources; pending saves are complete when this returns."""
        ...


class MemoryBackend:
    """Keeps "persisted" records in a dict: a node restarted in the same process (a simulated
    crash and restart) finds what it held. Nothing reaches the disk."""

    def __init__(self) -> None:
        self.saved: dict[bytes, tuple[bytes, bool]] = {}

    async def open(self) -> None:
        """Nothing to prepare."""

    async def load(self) -> list[tuple[bytes, bool]]:
        """Every saved record."""
        return list(self.saved.values())

    async def save(self, loc: bytes, data: bytes, expires: int, origin: bool) -> None:
        """Keep `data` at `loc`."""
        self.saved[loc] = (data, origin)

    async def delete(self, locs: Sequence[bytes]) -> None:
        """Forget `locs`."""
        for loc in locs:
            self.saved.pop(loc, None)

    async def close(self) -> None:
        """Nothing to release."""


class SqliteBackend:
    """Records in one SQLite file (WAL journal).

    SQLite's blocking calls run one at a time on a worker thread the backend owns (a one-thread
    executor), off the event loop. That thread never keeps the process alive: a program that
    ends without `close()` (a script that raised between `DHTNode.start` and `stop`) still
    exits, as the idle thread ends with the interpreter. (aiosqlite's worker thread kept such a
    process running for good.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None  # used on the worker thread only
        self._worker: ThreadPoolExecutor | None = None

    async def _run(self, work: Callable[[], T]) -> T:
        if self._worker is None:
            raise RuntimeError("SqliteBackend used before open() or after close()")
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    async def open(self) -> None:
        """Open (creating) the database file and its table; `StorageError` if the file cannot
        be opened or is not a records database."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records-sqlite")
        try:
            await self._run(self._connect)
        except BaseException as exc:
            # after _connect, even if this task was cancelled while it ran
            worker, self._worker = self._worker, None
            worker.submit(self._close_db)
            worker.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from exc
            raise

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL loses nothing when the process dies (kill -9); only a power
        # failure can take back the last commits.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS records ("
            " location BLOB PRIMARY KEY, data BLOB NOT NULL,"
            " expires INTEGER NOT NULL, origin INTEGER NOT NULL)"
        )
        db.commit()

    def _error(self, exc: sqlite3.Error) -> StorageError:
        """What to tell the operator about `exc`, naming the file and what to do."""
        if isinstance(exc, sqlite3.OperationalError):  # cannot open, read-only, I/O error
            return StorageError(
                f"cannot use the records database {self.path} ({exc}): the data dir and its "
                "files must be readable and writable by this user"
            )
        return StorageError(  # not a database, or a damaged one (truncated, overwritten)
            f"{self.path} is not a readable records database ({exc}): move it aside "
            f"(mv {self.path} {self.path}.broken) and start again; the node then starts with "
            "an empty store and gets records back from the network"
        )

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("SqliteBackend used before open() or after close()")
        return self._db

    async def load(self) -> list[tuple[bytes, bool]]:
        """Every saved record; `StorageError` if the file is damaged."""
        try:
            return await self._run(self._load)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _load(self) -> list[tuple[bytes, bool]]:
        rows = self._conn().execute("SELECT data, origin FROM records").fetchall()
        return [(bytes(data), bool(origin)) for data, origin in rows]

    async def save(self, loc: bytes, data: bytes, expires: int, origin: bool) -> None:
        """Insert or replace one record and commit."""
        await self._run(functools.partial(self._save, loc, data, expires, origin))

    def _save(self, loc: bytes, data: bytes, expires: int, origin: bool) -> None:
        db = self._conn()
        db.execute(
            "INSERT OR REPLACE INTO records (location, data, expires, origin) VALUES (?, ?, ?, ?)",
            (loc, data, expires, int(origin)),
        )
        db.commit()

    async def delete(self, locs: Sequence[bytes]) -> None:
        """Delete records and commit."""
        if locs:
            await self._run(functools.partial(self._delete, list(locs)))

    def _delete(self, locs: list[bytes]) -> None:
        db = self._conn()
        db.executemany("DELETE FROM records WHERE location = ?", [(loc,) for loc in locs])
        db.commit()

    async def close(self) -> None:
        """Close the connection (it commits nothing pending: every save committed already)
        and end the worker thread."""
        if self._worker is None:
            return
        try:
            await self._run(self._close_db)
        finally:
            worker, self._worker = self._worker, None
            worker.shutdown(wait=False)  # idle now: its thread ends at once

    def _close_db(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()


@dataclass(slots=True)
class StoredRecord:
    """One record held by the store."""

    record: Record
    data: bytes
    """Canonical bytes of `record`."""
    expires: int
    """When the last value expires (Unix ms)."""
    next_expiry: int
    """When the first value expires: the sweep rewrites the record then."""
    origin: bool = False
    """Put through this node, which therefore republishes it."""
    holders: set[bytes] = field(default_factory=set)
    """IDs of nodes known to hold exactly this version (replication skips them)."""
    published: bool = False
    """For an originated record: some node acknowledged storing this version."""


@dataclass(slots=True)
class Accepted:
    """The outcome of `RecordStore.accept`."""

    entry: StoredRecord
    changed: bool
    """False when the store already held this record or a newer one."""
    write: Awaitable[None] | None
    """Awaited before acknowledging, when the store persists."""


class RecordStore:
    """Validated records by DHT location, with a byte quota and optional persistence."""

    def __init__(
        self, validator: Validator, *, max_bytes: int, backend: RecordBackend | None = None
    ) -> None:
        self.validator = validator
        self.max_bytes = max_bytes
        self.backend = backend
        self._entries: dict[bytes, StoredRecord] = {}
        self._pruned: dict[bytes, None] = {}  # pruned in memory since the last sweep
        self._listeners: dict[bytes, list[Callable[[StoredRecord], None]]] = {}
        self.on_change: Callable[[bytes], None] | None = None
        """Called with the location whenever a record held changes (the node pushes it to
        the record's subscribers)."""
        self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def listen(self, loc: bytes, callback: Callable[[StoredRecord], None]) -> Callable[[], None]:
        """Call `callback` with the new entry whenever the record at `loc` changes; returns a
        function that stops it."""
        self._listeners.setdefault(loc, []).append(callback)

        def stop() -> None:
            callbacks = self._listeners.get(loc, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._listeners.pop(loc, None)

        return stop

    def __iter__(self) -> Iterator[tuple[bytes, StoredRecord]]:
        return iter(list(self._entries.items()))

    async def open(self, now: int) -> int:
        """Open the backend and load what it holds (re-validated at `now`); returns the count."""
        if self.backend is None:
            return 0
        await self.backend.open()
        try:
            saved = await self.backend.load()
        except BaseException:
            await self.backend.close()  # else its thread and file stay open
            raise
        dropped: list[bytes] = []
        for data, origin in saved:
            try:
                record = decode_record(data)
            except InvalidRecord as exc:
                log.warning("unreadable record in the store, left in place: %s", exc)
                continue
            loc = location(record.key)
            try:
                self.accept(loc, record, now, origin=origin, persist=False)
            except (InvalidRecord, StoreFull) as exc:
                log.info("dropping stored record %s: %s", record.key, exc)
                dropped.append(loc)
        if dropped:
            await self.backend.delete(dropped)
        return len(self._entries)

    async def close(self) -> None:
        """Close the backend."""
        if self.backend is not None:
            await self.backend.close()

    def get(self, loc: bytes, now: int) -> StoredRecord | None:
        """The record at `loc` if one is held with a value still alive at `now`."""
        entry = self._entries.get(loc)
        if entry is None or entry.expires <= now:
            return None
        if entry.next_expiry <= now:
            self._prune(loc, entry, now)
            self._pruned[loc] = None
        return entry

    def holds_exactly(self, loc: bytes, data: bytes, now: int, source: bytes | None) -> bool:
        """True if the record held at `loc` is, byte for byte, `data`: a store of it changes
        nothing, and is acknowledged without checking its signatures again. They were checked
        when it came in, and a record that was valid stays so until its values expire, which
        `get` prunes (the time rules only refuse what is dated in the future or has expired).
        `source`, the sender, is noted as holding this version. Most stores are such copies
        (republished or replicated to a holder): 15,474 of 19,588 in `churn --nodes 1000
        --hours 0.5`, each checked again before (two ed25519 verifications for a presence)."""
        entry = self.get(loc, now)
        if entry is None or entry.data != data:
            return False
        self._unchanged(loc, entry, source, origin=False, persist=False)
        return True

    def accept(
        self,
        loc: bytes,
        record: Record,
        now: int,
        *,
        origin: bool = False,
        source: bytes | None = None,
        persist: bool = True,
        validated: bool = False,
    ) -> Accepted:
        """Validate `record` and merge it into what is held at `loc`; `validated`: the caller
        has just had the validator check this very record (its signatures are not checked
        again; expiry, location and admission are).

        Raises `InvalidRecord` (with its reason) for a record the validator refuses or one sent
        to the wrong location, and `StoreFull` when the byte quota would be exceeded.
        """
        record = self._validated(loc, record, now, checked=validated)
        held = self._entries.get(loc)
        if held is not None:
            check_admission(self.validator, record.key, held.record, record, now)
        merged = self.validator.consolidate(
            record.key, [held.record, record] if held else [record], now
        )
        data = encode_record(merged)
        # the sender holds our version only if it sent exactly that
        holder = source if source is not None and encode_record(record) == data else None
        if held is not None and data == held.data:
            return self._unchanged(loc, held, holder, origin, persist)
        entry = self._install(loc, held, merged, data, origin)
        if holder is not None:
            entry.holders.add(holder)
        if self.on_change is not None:
            self.on_change(loc)
        for callback in list(self._listeners.get(loc, ())):
            callback(entry)
        return Accepted(entry, True, self._save(loc, entry) if persist else None)

    def _validated(self, loc: bytes, record: Record, now: int, *, checked: bool) -> Record:
        """`record` without its expired values, checked by the validator (unless `checked`)
        and for `loc`."""
        pruned = without_expired(record, now)
        if record.values and not pruned.values:
            raise InvalidRecord("expired", "every value has expired")
        if not checked:
            self.validator.validate(pruned.key, pruned, now)
        if location(pruned.key) != loc:
            raise InvalidRecord(
                "location_mismatch", "the record's key does not hash to this location"
            )
        return pruned

    def _unchanged(
        self, loc: bytes, held: StoredRecord, holder: bytes | None, origin: bool, persist: bool
    ) -> Accepted:
        """The store already held this version: note who holds it and whether we own it."""
        if holder is not None:
            held.holders.add(holder)
        if origin and not held.origin:
            held.origin = True
            return Accepted(held, False, self._save(loc, held) if persist else None)
        return Accepted(held, False, None)

    def _install(
        self, loc: bytes, held: StoredRecord | None, merged: Record, data: bytes, origin: bool
    ) -> StoredRecord:
        """Hold `merged` (canonical bytes `data`) at `loc` instead of `held`, within quota."""
        old_size = len(held.data) if held else 0
        if self.bytes_used - old_size + len(data) > self.max_bytes:
            raise StoreFull(f"holding {len(data)} more bytes would exceed {self.max_bytes}")
        expirations = [v.expirationDate for v in merged.values]
        entry = StoredRecord(
            record=merged,
            data=data,
            expires=max(expirations),
            next_expiry=min(expirations),
            origin=origin or (held is not None and held.origin),
        )
        self._entries[loc] = entry
        self.bytes_used += len(data) - old_size
        return entry

    def disown(self, loc: bytes, data: bytes) -> Awaitable[None] | None:
        """Stop republishing the record at `loc` if it is still the version `data` (which its
        holders refuse for good); it is held and served until it expires. Returns the
        backend's work, if any."""
        entry = self._entries.get(loc)
        if entry is None or not entry.origin or entry.data != data:
            return None
        entry.origin = False
        return self._save(loc, entry)

    def _save(self, loc: bytes, entry: StoredRecord) -> Awaitable[None] | None:
        if self.backend is None:
            return None
        return self.backend.save(loc, entry.data, entry.expires, entry.origin)

    def _prune(self, loc: bytes, entry: StoredRecord, now: int) -> None:
        """Drop `entry`'s values expired at `now` (it must keep at least one)."""
        merged = self.validator.consolidate(entry.record.key, [entry.record], now)
        data = encode_record(merged)
        expirations = [v.expirationDate for v in merged.values]
        self.bytes_used += len(data) - len(entry.data)
        entry.record, entry.data = merged, data
        entry.expires, entry.next_expiry = max(expirations), min(expirations)
        entry.holders.clear()

    def sweep(self, now: int) -> Awaitable[None] | None:
        """Drop values expired at `now` (and records left empty); returns the backend's work."""
        gone: list[bytes] = []
        rewrites = dict(self._pruned)
        self._pruned.clear()
        for loc, entry in list(self._entries.items()):
            if entry.next_expiry > now:
                continue
            if entry.expires <= now:
                del self._entries[loc]
                self.bytes_used -= len(entry.data)
                gone.append(loc)
                rewrites.pop(loc, None)
                continue
            self._prune(loc, entry, now)
            rewrites[loc] = None
        if self.backend is None or not (gone or rewrites):
            return None
        return self._persist_sweep(
            gone, [(loc, self._entries[loc]) for loc in rewrites if loc in self._entries]
        )

    async def _persist_sweep(
        self, gone: list[bytes], rewrites: list[tuple[bytes, StoredRecord]]
    ) -> None:
        assert self.backend is not None
        await self.backend.delete(gone)
        for loc, entry in rewrites:
            await self.backend.save(loc, entry.data, entry.expires, entry.origin)
