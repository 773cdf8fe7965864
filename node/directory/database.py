"""The SQL seam of the directory: one small async interface over an SQLite connection.

`AiosqliteDatabase` runs statements on aiosqlite's worker thread (the server's default).
`InlineDatabase` runs them on the event loop's thread with the standard ``sqlite3`` module: the
simulator's virtual-time loop jumps its clock while a thread works (see `simulations.clock`),
so code under simulation must not wait on threads. Both are opened in autocommit mode; the store
brackets each unit of work in ``BEGIN IMMEDIATE`` / ``COMMIT`` itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

Params = Sequence[Any]


class Database(Protocol):
    """An SQLite connection, statement by statement. Every statement takes parameters."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run one query; returns its rows."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...


class AiosqliteDatabase:
    """`Database` over aiosqlite (a worker thread per connection)."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._conn = connection

    @classmethod
    async def open(cls, path: Path | str) -> AiosqliteDatabase:
        """Open (create) the database file at `path` in WAL mode."""
        connection = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await connection.execute("PRAGMA journal_mode=WAL")
            await connection.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            await connection.close()  # e.g. not a database: end its thread, free the file
            raise
        return cls(connection)

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        cursor = await self._conn.execute(sql, tuple(params))
        count = cursor.rowcount
        await cursor.close()
        return count

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run one query; returns its rows."""
        rows = await self._conn.execute_fetchall(sql, tuple(params))
        return [tuple(row) for row in rows]

    async def close(self) -> None:
        """Close the connection (and end its thread)."""
        await self._conn.close()


class InlineDatabase:
    """`Database` on the caller's thread (for the virtual-time simulator)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection

    @classmethod
    def open(cls, path: Path | str) -> InlineDatabase:
        """Open (create) the database at `path` (``":memory:"`` for none on disk)."""
        connection = sqlite3.connect(str(path), isolation_level=None)
        try:
            connection.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            connection.close()
            raise
        return cls(connection)

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        return self._conn.execute(sql, tuple(params)).rowcount

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run one query; returns its rows."""
        return [tuple(row) for row in self._conn.execute(sql, tuple(params)).fetchall()]

    async def close(self) -> None:
        """Close the connection."""
        self._conn.close()
