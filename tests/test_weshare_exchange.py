"""The folder exchange: create-only, atomic puts; listing; the interface's errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from weshare import ExchangeError, FolderExchange, ObjectNotFound, UsageError, open_exchange


async def test_put_if_absent_never_overwrites(tmp_path: Path) -> None:
    exchange = FolderExchange(tmp_path)
    assert await exchange.put_if_absent("d/C.1", b"first")
    assert not await exchange.put_if_absent("d/C.1", b"second")
    assert await exchange.get("d/C.1") == b"first"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["C.1"]  # no temp file left


async def test_racing_writers_of_one_name_make_exactly_one_winner(tmp_path: Path) -> None:
    exchanges = [FolderExchange(tmp_path) for _ in range(16)]
    wins = await asyncio.gather(
        *(ex.put_if_absent("d/C.7", bytes([n]) * 100_000) for n, ex in enumerate(exchanges))
    )
    assert sum(wins) == 1
    winner = wins.index(True)
    assert await exchanges[0].get("d/C.7") == bytes([winner]) * 100_000  # whole, and the winner's


async def test_list_by_prefix_after_a_name_in_order(tmp_path: Path) -> None:
    exchange = FolderExchange(tmp_path)
    for name in ("d/C.3", "d/C.1", "d/U.1", "d/C.2", "d/merkle/ab.mrk", "e/C.9"):
        await exchange.put_if_absent(name, b"x")
    (tmp_path / "d" / ".tmp-half-written").write_bytes(b"partial")
    assert await exchange.list("d/C.") == ["d/C.1", "d/C.2", "d/C.3"]
    assert await exchange.list("d/C.", after="d/C.1") == ["d/C.2", "d/C.3"]
    assert await exchange.list("d/merkle/") == ["d/merkle/ab.mrk"]
    assert await exchange.list("nothing/C.") == []


async def test_missing_objects_bad_names_and_delete(tmp_path: Path) -> None:
    exchange = FolderExchange(tmp_path)
    with pytest.raises(ObjectNotFound):
        await exchange.get("d/C.1")
    for bad in ("../escape", "/abs", "d//x", ""):
        with pytest.raises(ExchangeError):
            await exchange.put_if_absent(bad, b"x")
    await exchange.put_if_absent("d/A.1", b"x")
    await exchange.delete("d/A.1")
    await exchange.delete("d/A.1")  # deleting what is gone is fine
    assert await exchange.list("d/") == []


def test_open_exchange_knows_kinds() -> None:
    assert isinstance(open_exchange({"kind": "folder", "path": "x"}), FolderExchange)
    with pytest.raises(UsageError, match="unknown exchange kind"):
        open_exchange({"kind": "ftp"})
    with pytest.raises(UsageError, match="path"):
        open_exchange({"kind": "folder"})
