"""A client's local state in SQLite (seed 004 "Local": tables Config, Log, Files, Merkle).

Blocking: callers on an event loop run these methods through `asyncio.to_thread`; one sync at a
time uses a `State` (the `Weshare` lock), so one connection serves every thread. Every method
that changes several rows does it in one transaction, so a killed sync leaves either all of a
step or none of it.

Tables beyond the seed's: `Members` (users of the current `U.x`), `Epochs` (the users of every
`U.x` accepted, to judge a change by who were users when it was made), `Objects` (remote files
already read or refused), `Writers` (highest change seen per writer) and `Outbox` (a change file
between "decided" and "on the exchange", so a rerun puts the very same bytes).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weshare.errors import StateInUse
from weshare.formats import HASH_SIZE, ActionFile, ActionType, Truncation
from weshare.lineage import Version

DATABASE = "weshare.db"
LOCK_FILE = "weshare.lock"
STATE_FILES = frozenset(
    {LOCK_FILE, DATABASE, *(f"{DATABASE}-{end}" for end in ("wal", "shm", "journal"))}
)
"""The files of a state directory (the identity's private key is in the database)."""
_WAL_PAGES = 16384  # checkpoint the write-ahead log when it holds this many pages

_SCHEMA = """
CREATE TABLE IF NOT EXISTS Config (
    domain VARCHAR(128), key VARCHAR(64) NOT NULL, value TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS config_key ON Config (ifnull(domain, ''), key);
CREATE TABLE IF NOT EXISTS Log (
    domain VARCHAR(128) NOT NULL, name VARCHAR(8192), hash CHAR(64) NOT NULL,
    change VARCHAR(32) NOT NULL, change_id INTEGER NOT NULL, writer CHAR(64) NOT NULL,
    origin TEXT NOT NULL, parts BLOB NOT NULL, data BLOB, message TEXT NOT NULL,
    PRIMARY KEY (domain, change));
CREATE TABLE IF NOT EXISTS Files (
    domain VARCHAR(128) NOT NULL, name VARCHAR(8192) NOT NULL, hash CHAR(64) NOT NULL,
    modtime TEXT NOT NULL, size INTEGER NOT NULL, status CHAR(16) NOT NULL,
    push BOOL NOT NULL, merkle BLOB NOT NULL, version VARCHAR(32),
    PRIMARY KEY (domain, name));
CREATE TABLE IF NOT EXISTS Merkle (
    domain VARCHAR(128) NOT NULL, part BLOB NOT NULL, PRIMARY KEY (domain, part));
CREATE TABLE IF NOT EXISTS Members (
    domain VARCHAR(128) NOT NULL, public CHAR(64) NOT NULL, flags INTEGER NOT NULL,
    name TEXT NOT NULL, name2 TEXT NOT NULL, PRIMARY KEY (domain, public));
CREATE TABLE IF NOT EXISTS Objects (
    domain VARCHAR(128) NOT NULL, name TEXT NOT NULL, refused TEXT,
    PRIMARY KEY (domain, name));
CREATE TABLE IF NOT EXISTS Writers (
    domain VARCHAR(128) NOT NULL, writer CHAR(64) NOT NULL, last_change INTEGER NOT NULL,
    PRIMARY KEY (domain, writer));
CREATE TABLE IF NOT EXISTS Epochs (
    domain VARCHAR(128) NOT NULL, users_id INTEGER NOT NULL, public CHAR(64) NOT NULL,
    PRIMARY KEY (domain, users_id, public));
CREATE TABLE IF NOT EXISTS Truncations (
    domain VARCHAR(128) NOT NULL, name TEXT NOT NULL, arguments BLOB NOT NULL,
    not_before INTEGER NOT NULL, done BOOL NOT NULL, PRIMARY KEY (domain, name));
CREATE TABLE IF NOT EXISTS Outbox (
    domain VARCHAR(128) NOT NULL, name TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (domain, name));
CREATE TABLE IF NOT EXISTS Generation (n INTEGER NOT NULL);
INSERT INTO Generation (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM Generation);
"""
# Every write to Log or Files counts in Generation, in the same transaction as the write: a
# sync that finds the count where its last complete apply left it knows the folder's versions
# and their Files rows are as that apply left them (`State.generation`).
_SCHEMA += "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table.lower()}_{event.lower()} AFTER {event} ON {table} "
    "BEGIN UPDATE Generation SET n = n + 1; END;\n"
    for table in ("Log", "Files")
    for event in ("INSERT", "UPDATE", "DELETE")
)

WAITING = "waiting for its key: "  # Objects.refused of a file whose key we do not hold yet

# seed 004 Files.status; DELETE and FORK are ours: a deletion waiting to be pushed, a fork's copy
CREATE, UPDATE, SYNC, DELETE, FORK = "CREATE", "UPDATE", "SYNC", "DELETE", "FORK"


@dataclass(frozen=True)
class FileRow:
    """A row of Files: what we last knew of a local file."""

    name: str
    hash: str
    modtime: str  # st_mtime_ns, as text
    size: int
    status: str
    push: bool
    merkle: bytes
    version: str | None


@dataclass(frozen=True)
class LogRow:
    """A row of Log: one version of a file, as read from a change file."""

    version: Version
    parts: bytes  # the part ids, 32 bytes each
    data: bytes | None  # the content, when it travelled inline
    message: str

    @property
    def part_ids(self) -> list[bytes]:
        """The part ids, in order."""
        return [self.parts[i : i + HASH_SIZE] for i in range(0, len(self.parts), HASH_SIZE)]


def _lock(path: Path) -> int:
    """An exclusive `flock` on `path`, which then holds our pid (for the message another process
    gets); `StateInUse` if another holds it. The kernel releases it when the process dies, even
    by ``kill -9``: no stale lock is left behind. (The node's data dir lock, `node.datadir`, is
    the same idea; weshare does not import the DHT package.)"""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise StateInUse(
            f"the state in {path.parent} is in use by pid {holder} (a sync may still be "
            "running; try again when it ends)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


class State:
    """The SQLite database of one client (all its domains), locked for this client while open."""

    def __init__(self, path: Path, *, exclusive: bool = True) -> None:
        """Open (or create) the database at `path`; `exclusive` (a client that writes) locks
        it, a reader (`status` while a sync runs) does not."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(path.parent / LOCK_FILE) if exclusive else None
        try:
            path.touch(mode=0o600, exist_ok=True)  # it holds the private key (seed 004)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except BaseException:
            self._unlock()
            raise
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A sync writes megabytes at once (inline content in Outbox and Log). Measured on 1,000
        # small files (4 MB): with SQLite's defaults a checkpoint (two fsyncs) followed nearly
        # every commit and deleting an Outbox row rewrote its pages with zeros; its 18 commits
        # took 0.37 s, 0.10 s with these. Zeroing deleted rows protects nothing here: the same
        # plaintext sits in the user's folder.
        self._db.execute("PRAGMA secure_delete=FAST")
        self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")  # 64 MiB of 4 KiB pages
        self._db.execute(f"PRAGMA journal_size_limit={_WAL_PAGES * 4096}")
        self._db.execute("PRAGMA cache_size=-65536")  # KiB: a batch's pages stay in memory
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database and let another process open it."""
        self._db.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            os.close(lock)  # the only descriptor of the lock file: releases the flock

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work: the writes made inside it land together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- Config ---

    def get_config(self, domain: str | None, key: str) -> str | None:
        """A configuration value (global when `domain` is None)."""
        row = self._db.execute(
            "SELECT value FROM Config WHERE ifnull(domain, '') = ? AND key = ?", (domain or "", key)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_config(self, domain: str | None, key: str, value: str) -> None:
        """Set a configuration value."""
        self._db.execute(
            "INSERT INTO Config (domain, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (ifnull(domain, ''), key) DO UPDATE SET value = excluded.value",
            (domain, key, value),
        )

    def generation(self) -> int:
        """How many writes Log and Files have seen (counted by triggers, never decreasing)."""
        return int(self._db.execute("SELECT n FROM Generation").fetchone()[0])

    def settled(self, domain: str) -> tuple[int, int] | None:
        """(`generation`, open forks) when the domain's last apply completed with no problem."""
        value = self.get_config(domain, "settled")
        if value is None:
            return None
        generation, forks = value.split()
        return int(generation), int(forks)

    def set_settled(self, domain: str, forks: int) -> None:
        """Record that an apply just completed with no problem, leaving `forks` open."""
        self.set_config(domain, "settled", f"{self.generation()} {forks}")

    def domains(self) -> list[str]:
        """Every domain this client belongs to."""
        rows = self._db.execute("SELECT domain FROM Config WHERE key = 'folder' ORDER BY domain")
        return [str(row[0]) for row in rows]

    # --- Files ---

    _FILE_COLUMNS = "name, hash, modtime, size, status, push, merkle, version"

    def files(self, domain: str) -> dict[str, FileRow]:
        """Every Files row of a domain, by name."""
        rows = self._db.execute(
            f"SELECT {self._FILE_COLUMNS} FROM Files WHERE domain = ?", (domain,)
        )
        return {
            row[0]: FileRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7])
            for row in rows
        }

    def pending_files(self, domain: str) -> list[FileRow]:
        """The Files rows marked for push, by name."""
        rows = self._db.execute(
            f"SELECT {self._FILE_COLUMNS} FROM Files WHERE domain = ? AND push ORDER BY name",
            (domain,),
        )
        return [FileRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7]) for r in rows]

    def put_files(self, domain: str, rows: Iterable[FileRow]) -> None:
        """Insert or replace Files rows."""
        self._db.executemany(
            "INSERT OR REPLACE INTO Files (domain, name, hash, modtime, size, status, push, "
            "merkle, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(domain, row.name, row.hash, row.modtime, row.size, row.status, row.push,
              row.merkle, row.version) for row in rows],
        )  # fmt: skip

    def drop_file(self, domain: str, name: str) -> None:
        """Forget a Files row."""
        self._db.execute("DELETE FROM Files WHERE domain = ? AND name = ?", (domain, name))

    # --- Log ---

    _VERSION_COLUMNS = "change, change_id, writer, name, origin, hash"

    @staticmethod
    def _version(r: Sequence[Any]) -> Version:
        origin = () if r[4] == "[]" else tuple(json.loads(r[4]))  # most versions: a new file
        return Version(r[0], r[1], bytes.fromhex(r[2]), r[3], origin, r[5])

    def versions(self, domain: str) -> list[Version]:
        """Every version of the domain (without content), oldest change first."""
        rows = self._db.execute(
            f"SELECT {self._VERSION_COLUMNS} FROM Log WHERE domain = ? ORDER BY change_id, change",
            (domain,),
        )
        return [self._version(r) for r in rows]

    def version_hashes(self, domain: str) -> set[str]:
        """The content hash (Log.hash) of every version of the domain."""
        rows = self._db.execute("SELECT DISTINCT hash FROM Log WHERE domain = ?", (domain,))
        return {str(row[0]) for row in rows}

    def log(self, domain: str, refs: Sequence[str] | None = None) -> dict[str, LogRow]:
        """Versions with their content, by reference: those in `refs`, or all (oldest first)."""
        query = f"SELECT {self._VERSION_COLUMNS}, parts, data, message FROM Log WHERE domain = ?"
        if refs is None:
            rows = list(self._db.execute(query + " ORDER BY change_id, change", (domain,)))
        else:
            rows = self._where_in(query + " AND change", domain, refs)
        return {r[0]: LogRow(self._version(r), r[6], r[7], r[8]) for r in rows}

    def add_log(self, domain: str, rows: Iterable[LogRow]) -> None:
        """Record versions."""
        self._db.executemany(
            "INSERT OR IGNORE INTO Log (domain, name, hash, change, change_id, writer, origin, "
            "parts, data, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(domain, r.version.path, r.version.hash, r.version.ref, r.version.change_id,
              r.version.writer.hex(), json.dumps(r.version.origin), r.parts, r.data, r.message)
             for r in rows],
        )  # fmt: skip

    # --- Merkle: parts known to be on the exchange ---

    def _where_in(self, query: str, domain: str, values: Sequence[Any]) -> list[Any]:
        """Rows of ``query + " IN (...)"`` (its parameters: the domain, then `values`), run in
        batches that stay under SQLite's limit on parameters."""
        rows: list[Any] = []
        for start in range(0, len(values), 500):
            batch = list(values[start : start + 500])
            marks = ",".join("?" * len(batch))
            rows += self._db.execute(f"{query} IN ({marks})", (domain, *batch))
        return rows

    def known_parts(self, domain: str, parts: Sequence[bytes]) -> set[bytes]:
        """Which of `parts` are known to be on the exchange already."""
        query = "SELECT part FROM Merkle WHERE domain = ? AND part"
        return {bytes(row[0]) for row in self._where_in(query, domain, parts)}

    def add_parts(self, domain: str, parts: Sequence[bytes]) -> None:
        """Remember that `parts` are on the exchange."""
        with self.transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO Merkle (domain, part) VALUES (?, ?)",
                [(domain, part) for part in parts],
            )

    # --- Members, Objects, Writers, Outbox ---

    def members(self, domain: str) -> dict[bytes, tuple[int, str, str]]:
        """The current users: public key -> (flags, name, name2)."""
        rows = self._db.execute(
            "SELECT public, flags, name, name2 FROM Members WHERE domain = ?", (domain,)
        )
        return {bytes.fromhex(r[0]): (r[1], r[2], r[3]) for r in rows}

    def set_members(self, domain: str, members: dict[bytes, tuple[int, str, str]]) -> None:
        """Replace the users of a domain."""
        self._db.execute("DELETE FROM Members WHERE domain = ?", (domain,))
        self._db.executemany(
            "INSERT INTO Members (domain, public, flags, name, name2) VALUES (?, ?, ?, ?, ?)",
            [(domain, key.hex(), *info) for key, info in members.items()],
        )

    def add_epoch(self, domain: str, users_id: int, publics: Iterable[bytes]) -> None:
        """Remember who the users were from `U.<users_id>` on."""
        self._db.executemany(
            "INSERT OR IGNORE INTO Epochs (domain, users_id, public) VALUES (?, ?, ?)",
            [(domain, users_id, public.hex()) for public in publics],
        )

    def revoke_after(self, domain: str, users_id: int, users: set[bytes]) -> None:
        """Drop the versions of changes made after `U.<users_id>` by someone it does not list
        (read before it was seen); their change files count as refused."""
        rows = self._db.execute(
            "SELECT DISTINCT change_id, writer FROM Log WHERE domain = ? AND change_id > ?",
            (domain, users_id),
        ).fetchall()
        for change_id, writer in rows:
            if bytes.fromhex(writer) in users:
                continue
            name = f"C.{change_id:019d}"
            self._db.execute(
                "DELETE FROM Log WHERE domain = ? AND change_id = ? AND writer = ?",
                (domain, change_id, writer),
            )
            self.mark_object(domain, name, "signed by someone who was not a user at that point")

    def members_at(self, domain: str, snowflake_id: int) -> set[bytes]:
        """The users when id `snowflake_id` was made: those of the newest `U.x` below it (the
        current users if no history was kept, as by an older version)."""
        row = self._db.execute(
            "SELECT max(users_id) FROM Epochs WHERE domain = ? AND users_id < ?",
            (domain, snowflake_id),
        ).fetchone()
        if row is None or row[0] is None:
            any_epoch = self._db.execute(
                "SELECT 1 FROM Epochs WHERE domain = ? LIMIT 1", (domain,)
            ).fetchone()
            return set() if any_epoch else set(self.members(domain))
        rows = self._db.execute(
            "SELECT public FROM Epochs WHERE domain = ? AND users_id = ?", (domain, row[0])
        )
        return {bytes.fromhex(r[0]) for r in rows}

    def seen(self, domain: str, names: Sequence[str]) -> set[str]:
        """Which of the remote `names` were already read or refused."""
        query = "SELECT name FROM Objects WHERE domain = ? AND name"
        return {str(row[0]) for row in self._where_in(query, domain, names)}

    def mark_object(self, domain: str, name: str, refused: str | None) -> None:
        """Remember a remote file as read (`refused` None) or refused with a reason."""
        self._db.execute(
            "INSERT OR REPLACE INTO Objects (domain, name, refused) VALUES (?, ?, ?)",
            (domain, name, refused),
        )

    def newest_object(self, domain: str, prefix: str) -> str:
        """The greatest remote name with `prefix` read and accepted ('' if none); refused ones
        do not count, so junk with a huge id cannot move where listing starts."""
        row = self._db.execute(
            "SELECT max(name) FROM Objects WHERE domain = ? AND name LIKE ? AND refused IS NULL",
            (domain, prefix + "%"),
        ).fetchone()
        return str(row[0]) if row and row[0] is not None else ""

    def waiting(self, domain: str, prefix: str) -> list[str]:
        """Remote files with `prefix` put aside until we hold their key (see `WAITING`)."""
        return self.refused_as(domain, prefix, WAITING + "%")

    def refused_as(self, domain: str, prefix: str, reason: str) -> list[str]:
        """Remote files with `prefix` refused with a reason LIKE `reason`, in order."""
        rows = self._db.execute(
            "SELECT name FROM Objects WHERE domain = ? AND name LIKE ? AND refused LIKE ? "
            "ORDER BY name",
            (domain, prefix + "%", reason),
        )
        return [str(r[0]) for r in rows]

    def accepted(self, domain: str, prefix: str, names: Sequence[str] | None = None) -> list[str]:
        """Remote files with `prefix` read and accepted (those among `names`), in order."""
        if names is not None:
            query = "SELECT name FROM Objects WHERE domain = ? AND refused IS NULL AND name"
            return sorted(str(r[0]) for r in self._where_in(query, domain, names))
        rows = self._db.execute(
            "SELECT name FROM Objects WHERE domain = ? AND name LIKE ? AND refused IS NULL "
            "ORDER BY name",
            (domain, prefix + "%"),
        )
        return [str(r[0]) for r in rows]

    def add_truncation(self, domain: str, name: str, action: Truncation) -> None:
        """Remember a truncate action (`A.x` `name`) whose fossils are to be deleted."""
        self._db.execute(
            "INSERT OR IGNORE INTO Truncations (domain, name, arguments, not_before, done) "
            "VALUES (?, ?, ?, ?, 0)",
            (domain, name, action.encode(), action.not_before),
        )

    def truncations(self, domain: str) -> list[tuple[str, Truncation]]:
        """Truncate actions whose fossils are not all deleted yet, oldest first."""
        rows = self._db.execute(
            "SELECT name, arguments FROM Truncations WHERE domain = ? AND NOT done ORDER BY name",
            (domain,),
        )
        return [
            (str(r[0]), Truncation.decode(ActionFile(ActionType.TRUNCATE, bytes(r[1])), 1 << 63))
            for r in rows
        ]

    def finish_truncation(self, domain: str, name: str) -> None:
        """Every fossil of truncate action `name` is deleted."""
        self._db.execute(
            "UPDATE Truncations SET done = 1 WHERE domain = ? AND name = ?", (domain, name)
        )

    def refused(self, domain: str) -> list[tuple[str, str]]:
        """Remote files refused, with the reason."""
        rows = self._db.execute(
            "SELECT name, refused FROM Objects WHERE domain = ? AND refused IS NOT NULL "
            "ORDER BY name",
            (domain,),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def saw_writer(self, domain: str, writer: bytes, change_id: int) -> None:
        """Raise a writer's highest change seen."""
        self._db.execute(
            "INSERT INTO Writers (domain, writer, last_change) VALUES (?, ?, ?) "
            "ON CONFLICT (domain, writer) DO UPDATE SET "
            "last_change = max(last_change, excluded.last_change)",
            (domain, writer.hex(), change_id),
        )

    def writers(self, domain: str) -> dict[bytes, int]:
        """Highest change id seen per writer."""
        rows = self._db.execute(
            "SELECT writer, last_change FROM Writers WHERE domain = ?", (domain,)
        )
        return {bytes.fromhex(r[0]): int(r[1]) for r in rows}

    def outbox(self, domain: str) -> list[tuple[str, bytes]]:
        """Change files decided but maybe not yet on the exchange."""
        rows = self._db.execute(
            "SELECT name, body FROM Outbox WHERE domain = ? ORDER BY name", (domain,)
        )
        return [(str(r[0]), bytes(r[1])) for r in rows]

    def newest_queued(self, domain: str) -> str:
        """The greatest name in Outbox ('' if none)."""
        row = self._db.execute("SELECT max(name) FROM Outbox WHERE domain = ?", (domain,))
        value = row.fetchone()[0]
        return "" if value is None else str(value)

    def add_outbox(self, domain: str, name: str, body: bytes) -> None:
        """Queue a change file."""
        self._db.execute(
            "INSERT INTO Outbox (domain, name, body) VALUES (?, ?, ?)", (domain, name, body)
        )

    def drop_outbox(self, domain: str, name: str) -> None:
        """A queued change file is on the exchange."""
        self._db.execute("DELETE FROM Outbox WHERE domain = ? AND name = ?", (domain, name))

    def rename_change(self, domain: str, old: str, new: str) -> None:
        """A queued change file must take another name (its id was taken by another writer):
        move the outbox entry and the Files rows that point at its versions."""
        with self.transaction():
            self._db.execute(
                "UPDATE Outbox SET name = ? WHERE domain = ? AND name = ?", (new, domain, old)
            )
            self._db.execute(
                "UPDATE Files SET version = ? || substr(version, ?) "
                "WHERE domain = ? AND version LIKE ?",
                (new, len(old) + 1, domain, old + "/%"),
            )
