"""The directory store's own work: avatar files off the event loop, searches that page by key
with one query a chunk instead of one (or two) per row.

Each test runs on both database drivers (aiosqlite, and the inline one the simulator uses)."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from node.directory.database import AiosqliteDatabase, Database, InlineDatabase, Params
from node.directory.store import DATABASE_FILE, DirectoryStore
from records.directory import (
    Condition,
    MailboxNumber,
    Operator,
    Profile,
    QMailServer,
    SearchKey,
    SearchRequest,
    UpdateKey,
)

pytestmark = pytest.mark.timeout(30)

KW: dict[str, Any] = {"owner_key": b"k" * 32, "ticket": b"t", "signature": b"s"}


class CountingDatabase:
    """Wraps a `Database`, counting the queries it runs."""

    def __init__(self, inner: Database) -> None:
        self.inner = inner
        self.queries = 0

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self.inner.execute(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        self.queries += 1
        return await self.inner.fetchall(sql, params)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture(params=["aiosqlite", "inline"])
async def counted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[DirectoryStore, CountingDatabase]]:
    path = tmp_path / DATABASE_FILE
    inner: Database = (
        await AiosqliteDatabase.open(path)
        if request.param == "aiosqlite"
        else InlineDatabase.open(path)
    )
    db = CountingDatabase(inner)
    store = await DirectoryStore.open(db, tmp_path)
    yield store, db
    await store.close()


def profile(serial: int) -> Profile:
    return Profile(
        display_name=f"user {serial}",
        description="likes tea" if serial % 2 else "likes coffee",
        avatar_name="a.png",
        avatar=bytes([serial % 256]) * (300 + serial),
        qmail=((0, QMailServer(6, "10.0.0.1", 25)), (3, QMailServer(6, "10.0.0.2", serial + 1))),
    )


async def test_avatar_files_are_written_and_read_off_the_event_loop(
    counted: tuple[DirectoryStore, CountingDatabase], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = counted
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int]] = []
    real_fsync, real_read, real_unlink = os.fsync, Path.read_bytes, Path.unlink

    def fsync(fd: int) -> None:
        seen.append(("write", threading.get_ident()))
        real_fsync(fd)

    def read_bytes(path: Path) -> bytes:
        seen.append(("read", threading.get_ident()))
        return real_read(path)

    def unlink(path: Path, missing_ok: bool = False) -> None:
        seen.append(("remove", threading.get_ident()))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(Path, "unlink", unlink)
    mailbox = MailboxNumber(6, 1, 1)
    assert await store.put(mailbox, profile(1), version=10, **KW)
    assert await store.put(mailbox, profile(2), version=11, **KW)  # replaces the old file
    stored = await store.get(mailbox)
    assert stored is not None
    assert stored.profile.avatar == profile(2).avatar
    results = await store.search(SearchRequest(bytes(16), bytes(16), (UpdateKey.AVATAR,)))
    assert results.rows == ((profile(2).avatar,),)
    assert {kind for kind, _ in seen} == {"write", "read", "remove"}
    assert [kind for kind, thread in seen if thread == loop_thread] == []


async def test_search_pages_by_key_with_one_query_per_chunk(
    counted: tuple[DirectoryStore, CountingDatabase],
) -> None:
    """Before, a search ran one query for the matching ids and then one or two per row (its
    fields, its QMail servers), all holding the store's lock."""
    store, db = counted
    for serial in range(60):
        assert await store.put(MailboxNumber(6, 1, serial), profile(serial), version=10, **KW)
    columns = (UpdateKey.MAILBOX, UpdateKey.DISPLAY_NAME, UpdateKey.AVATAR, 13)
    tea = Condition(SearchKey.WHERE, UpdateKey.DESCRIPTION, Operator.CONTAINS, "tea")
    pages = []
    for page in range(4):
        db.queries = 0
        request = SearchRequest(bytes(16), bytes(16), columns, (tea,), limit_kb=4, page=page)
        results = await store.search(request)
        assert db.queries <= 2, f"page {page}: {db.queries} queries"
        pages.append(results.rows)
    rows = [row for page in pages for row in page]
    odd = [serial for serial in range(60) if serial % 2]
    assert [row[0] for row in rows] == [MailboxNumber(6, 1, s).to_bytes() for s in odd]
    assert rows[0] == (
        MailboxNumber(6, 1, 1).to_bytes(),
        b"user 1",
        profile(1).avatar,
        QMailServer(6, "10.0.0.2", 2).to_bytes(),
    )
    assert all(pages[:3])
    assert len(pages[0]) > 1


async def test_pages_do_not_depend_on_the_chunk_size(
    counted: tuple[DirectoryStore, CountingDatabase], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows and page breaks are the same whether a page spans one chunk or many."""
    from node.directory import search

    store, _ = counted
    for serial in range(25):
        assert await store.put(MailboxNumber(6, 2, serial), profile(serial), version=10, **KW)
    columns = (UpdateKey.MAILBOX, UpdateKey.AVATAR, 10)

    async def pages() -> list[tuple[Any, ...]]:
        out = []
        for page in range(5):
            request = SearchRequest(bytes(16), bytes(16), columns, limit_kb=2, page=page)
            out.append((await store.search(request)).rows)
        return out

    whole = await pages()
    monkeypatch.setattr(search, "CHUNK_ROWS", 3)
    assert await pages() == whole
    assert [row[0] for page in whole for row in page] == [
        MailboxNumber(6, 2, s).to_bytes() for s in range(25)
    ]
    assert all(len(page) > 1 for page in whole)
