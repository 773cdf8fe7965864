"""Exchanges: create-only, atomic puts; listing; the interface's errors. The folder exchange
alone, then every kind (folder, S3, SFTP, Azure) against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.weshare_servers import (
    KINDS,
    S3_SECRET,
    SFTP_PASSWORD,
    S3Server,
    SftpServer,
    exchange_config,
    s3_server,
    sftp_server,
)
from weshare import (
    Exchange,
    ExchangeError,
    FolderExchange,
    ObjectNotFound,
    UsageError,
    open_exchange,
)

__all__ = ["exchange_config", "s3_server", "sftp_server"]  # fixtures, used by name


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


# --- every kind, on a real server on 127.0.0.1 (issue 16) -----------------------------------


@pytest.fixture
async def exchange(exchange_config: dict[str, Any]) -> AsyncIterator[Exchange]:
    opened = open_exchange(exchange_config)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize("exchange_config", KINDS, indirect=True)
@pytest.mark.timeout(30)
async def test_every_kind_keeps_the_interface(exchange: Exchange) -> None:
    assert await exchange.put_if_absent("d/C.1", b"first")
    assert not await exchange.put_if_absent("d/C.1", b"second")  # create-only
    assert await exchange.get("d/C.1") == b"first"
    with pytest.raises(ObjectNotFound):
        await exchange.get("d/C.9")
    for name in ("d/C.3", "d/C.2", "d/U.1", "d/merkle/ab.mrk", "d/admins", "e/C.9", "d/adminsx"):
        assert await exchange.put_if_absent(name, memoryview(b"x" * 10))
    assert await exchange.list("d/C.") == ["d/C.1", "d/C.2", "d/C.3"]
    assert await exchange.list("d/C.", after="d/C.1") == ["d/C.2", "d/C.3"]
    assert await exchange.list("d/U.") == ["d/U.1"]
    assert await exchange.list("d/merkle/") == ["d/merkle/ab.mrk"]
    assert await exchange.list("d/admins") == ["d/admins", "d/adminsx"]  # the name itself too
    assert await exchange.list("d/") == [
        "d/C.1",
        "d/C.2",
        "d/C.3",
        "d/U.1",
        "d/admins",
        "d/adminsx",
    ]
    assert await exchange.list("nothing/C.") == []
    await exchange.delete("d/C.2")
    await exchange.delete("d/C.2")  # deleting what is gone is fine
    assert await exchange.list("d/C.") == ["d/C.1", "d/C.3"]


@pytest.mark.parametrize("exchange_config", KINDS, indirect=True)
@pytest.mark.timeout(30)
async def test_every_kind_sweeps_what_killed_puts_left_and_nothing_else(
    exchange: Exchange, exchange_config: dict[str, Any], tmp_path: Path
) -> None:
    """A put cut off between its temporary file and its link (a killed writer, a lost SFTP
    connection) leaves the temporary file: a sweep removes those older than it is told, and
    never an object or a younger temporary file (a put may be running). S3 and Azure puts
    leave nothing."""
    for name in ("d/C.1", "d/merkle/ab.mrk", "e/C.1"):
        assert await exchange.put_if_absent(name, b"object")
    disk = {"folder": Path(exchange_config.get("path", "")), "sftp": tmp_path / "sftp-root"}
    root = disk.get(exchange_config["kind"])
    if root is not None:
        day_ago = time.time() - 86_400
        for name in ("d/.tmp-old", "d/merkle/.tmp-old", "d/.tmp-new", "e/.tmp-old"):
            (root / name).write_bytes(b"half an object")
        for name in ("d/.tmp-old", "d/merkle/.tmp-old", "e/.tmp-old"):
            os.utime(root / name, (day_ago, day_ago))
    assert await exchange.sweep("d/", 3600) == (2 if root is not None else 0)
    if root is not None:
        left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert left == ["d/.tmp-new", "d/C.1", "d/merkle/ab.mrk", "e/.tmp-old", "e/C.1"]
    assert await exchange.get("d/merkle/ab.mrk") == b"object"
    assert await exchange.sweep("d/", 3600) == 0
    assert await exchange.sweep("nothing/", 3600) == 0


@pytest.mark.parametrize("exchange_config", KINDS, indirect=True)
@pytest.mark.timeout(30)
async def test_every_kind_makes_one_winner_of_racing_creates(
    exchange_config: dict[str, Any],
) -> None:
    exchanges = [open_exchange(exchange_config) for _ in range(8)]
    try:
        body = 300_000
        wins = await asyncio.gather(
            *(ex.put_if_absent("d/C.7", bytes([n]) * body) for n, ex in enumerate(exchanges))
        )
        assert sum(wins) == 1
        assert await exchanges[0].get("d/C.7") == bytes([wins.index(True)]) * body
        assert await exchanges[0].list("d/") == ["d/C.7"]  # no temporary object shows
    finally:
        for ex in exchanges:
            await ex.close()


@pytest.mark.timeout(30)
async def test_a_stopped_server_fails_fast_and_names_no_secret(
    s3_server: S3Server, sftp_server: SftpServer
) -> None:
    s3 = s3_server.bucket()
    s3["endpoint"] = f"http://127.0.0.1:{_closed_port()}"
    sftp = sftp_server.config()
    await sftp_server.stop()
    for config in (s3, sftp):
        exchange = open_exchange(config)
        try:
            with pytest.raises(ExchangeError) as raised:
                await exchange.get("d/C.1")
        finally:
            await exchange.close()
        assert S3_SECRET not in str(raised.value)
        assert SFTP_PASSWORD not in str(raised.value)
        assert SFTP_PASSWORD not in repr(exchange)
        assert S3_SECRET not in repr(exchange)


@pytest.mark.timeout(30)
async def test_sftp_refuses_a_server_with_another_host_key(sftp_server: SftpServer) -> None:
    import asyncssh

    config = sftp_server.config()
    other = asyncssh.generate_private_key("ssh-ed25519")
    config["host_key"] = other.export_public_key("openssh").decode()
    exchange = open_exchange(config)
    try:
        with pytest.raises(ExchangeError):
            await exchange.list("d/")
    finally:
        await exchange.close()


def test_configurations_are_checked() -> None:
    with pytest.raises(UsageError, match="bucket"):
        open_exchange({"kind": "s3"})
    with pytest.raises(UsageError, match="host"):
        open_exchange({"kind": "sftp", "password": "x"})
    with pytest.raises(UsageError, match="container"):
        open_exchange({"kind": "azure", "account": "a"})


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
