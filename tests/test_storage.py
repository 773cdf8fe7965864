"""RecordStore: only valid records, merged on arrival, quota, expiry, persistence."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from pathlib import Path

import pytest

from node import DHTNode
from node.errors import StorageError, StoreFull
from node.storage import MemoryBackend, RecordStore, SqliteBackend
from records import InvalidRecord, default_validator, encode_record, location
from tests.loopback import loopback_config
from tests.records_factory import HOUR, NOW, presence


def store(backend: object = None, max_bytes: int = 1 << 20) -> RecordStore:
    return RecordStore(default_validator(), max_bytes=max_bytes, backend=backend)  # type: ignore[arg-type]


def test_accept_valid_and_refuse_invalid() -> None:
    s = store()
    record = presence()
    loc = location(record.key)
    accepted = s.accept(loc, record, NOW)
    assert accepted.changed
    assert s.get(loc, NOW) is accepted.entry
    bad = presence()
    bad.values[0].value = bad.values[0].value[:-1] + bytes([bad.values[0].value[-1] ^ 1])
    with pytest.raises(InvalidRecord):
        s.accept(loc, bad, NOW)
    with pytest.raises(InvalidRecord) as info:
        s.accept(location("/presence/other/"), record, NOW)
    assert info.value.reason == "location_mismatch"


def test_merge_keeps_newest_and_every_device() -> None:
    s = store()
    old, new = presence(node="phone", now=NOW), presence(node="phone", now=NOW + 10)
    laptop = presence(node="laptop")
    loc = location(old.key)
    s.accept(loc, new, NOW + 10)
    replay = s.accept(loc, old, NOW + 10)
    assert not replay.changed  # an older copy never replaces a newer one
    s.accept(loc, laptop, NOW + 10)
    held = s.get(loc, NOW + 10)
    assert held is not None
    assert len(held.record.values) == 2
    assert max(v.creationDate for v in held.record.values) == NOW + 10


def test_quota() -> None:
    record = presence()
    s = store(max_bytes=len(encode_record(record)) - 1)
    with pytest.raises(StoreFull):
        s.accept(location(record.key), record, NOW)
    assert len(s) == 0
    assert s.bytes_used == 0


def test_expired_values_pruned_and_records_swept() -> None:
    s = store()
    short = presence(node="short", ttl_ms=1000)
    long = presence(node="long", ttl_ms=HOUR)
    loc = location(short.key)
    s.accept(loc, short, NOW)
    s.accept(loc, long, NOW)
    held = s.get(loc, NOW + 1000)
    assert held is not None
    assert [v.expirationDate for v in held.record.values] == [NOW + HOUR]
    assert s.sweep(NOW + HOUR) is None  # no backend: nothing to await
    assert s.get(loc, NOW + HOUR) is None
    assert len(s) == 0
    assert s.bytes_used == 0
    with pytest.raises(InvalidRecord) as info:
        s.accept(loc, short, NOW + 5000)
    assert info.value.reason == "expired"


async def test_sqlite_backend_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite3"
    first = store(SqliteBackend(path))
    await first.open(NOW)
    record = presence()
    loc = location(record.key)
    accepted = first.accept(loc, record, NOW, origin=True)
    assert accepted.write is not None
    await accepted.write
    await first.close()

    second = store(SqliteBackend(path))
    assert await second.open(NOW + 1) == 1
    held = second.get(loc, NOW + 1)
    assert held is not None
    assert held.record == record
    assert held.origin
    await second.close()

    # records expired while the node was down are dropped on load
    third = store(SqliteBackend(path))
    assert await third.open(NOW + HOUR) == 0
    await third.close()


async def test_memory_backend_keeps_records_across_restarts() -> None:
    backend = MemoryBackend()
    first = store(backend)
    await first.open(NOW)
    record = presence()
    write = first.accept(location(record.key), record, NOW).write
    assert write is not None
    await write
    second = store(backend)
    assert await second.open(NOW) == 1


def test_a_stale_sender_is_not_counted_as_holding_the_newest() -> None:
    s = store()
    old, new = presence(now=NOW), presence(now=NOW + 10)
    loc = location(old.key)
    s.accept(loc, new, NOW + 10, source=b"a" * 20)
    s.accept(loc, old, NOW + 10, source=b"b" * 20)  # b sent an older copy
    held = s.get(loc, NOW + 10)
    assert held is not None
    assert held.holders == {b"a" * 20}


async def test_disown_stops_republishing_only_the_refused_version() -> None:
    backend = MemoryBackend()
    s = store(backend)
    old, new = presence(node="phone", now=NOW), presence(node="phone", now=NOW + 10)
    loc = location(old.key)
    s.accept(loc, old, NOW, origin=True, persist=False)
    refused = encode_record(old)
    s.accept(loc, new, NOW + 10, origin=True, persist=False)
    assert s.disown(loc, refused) is None  # a newer version was put since: keep republishing
    entry = s.get(loc, NOW + 10)
    assert entry is not None
    assert entry.origin
    work = s.disown(loc, entry.data)
    assert work is not None
    await work
    assert not entry.origin
    assert backend.saved[loc] == (entry.data, False)  # a restart does not republish it either


def damage(path: Path, how: str) -> None:
    """Leave a broken records database at `path`."""
    path.parent.mkdir(parents=True)
    if how == "garbage":
        path.write_bytes(random.Random(1).randbytes(5000))
    elif how == "truncated":  # a database as SqliteBackend writes it, cut to a third
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(
                "CREATE TABLE records (location BLOB PRIMARY KEY, data BLOB NOT NULL,"
                " expires INTEGER NOT NULL, origin INTEGER NOT NULL)"
            )
            db.executemany(
                "INSERT INTO records VALUES (?, ?, ?, 0)",
                [(bytes([i]) * 20, bytes(600), NOW) for i in range(100)],
            )
            db.commit()
        with path.open("r+b") as handle:
            handle.truncate(path.stat().st_size // 3)
    else:  # a directory where the file should be: SQLite cannot open it, as in a read-only dir
        path.mkdir()


@pytest.mark.parametrize(
    ("how", "advice"),
    [
        ("garbage", "move it aside"),
        ("truncated", "move it aside"),
        ("unopenable", "must be readable and writable"),
    ],
)
async def test_a_broken_records_database_is_named_with_what_to_do(
    tmp_path: Path, how: str, advice: str
) -> None:
    path = tmp_path / "node" / "records.sqlite3"
    damage(path, how)
    node = DHTNode(loopback_config(data_dir=path.parent))
    with pytest.raises(StorageError) as info:
        await node.start()
    assert str(path) in str(info.value)
    assert advice in str(info.value)
    assert not node.running  # and nothing left open (the fixture checks descriptors)
