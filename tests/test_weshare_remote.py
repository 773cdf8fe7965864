"""Weshare over real exchange servers on 127.0.0.1 (issue 16): the same sync scenario on every
kind, several exchanges per domain (writes to each, reads from the nearest, fallback), racing
writers, a server that stops mid-sync, and credentials that never reach the disk in clear."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.weshare_pair import DOMAIN, PassThrough, open_pair, tree
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
from weshare import Exchange, ExchangeError, FolderExchange, ObjectNotFound, Weshare
from weshare.exchange import ExchangeFactory, default_kinds, open_exchange
from weshare.replicas import PROBE_EVERY, ExchangeSet

__all__ = ["exchange_config", "s3_server", "sftp_server"]  # fixtures, used by name


@pytest.mark.parametrize("exchange_config", KINDS, indirect=True)
@pytest.mark.timeout(60)
async def test_the_sync_scenario_on_every_kind(
    exchange_config: dict[str, Any], tmp_path: Path
) -> None:
    pair = await open_pair(tmp_path, [exchange_config])
    try:
        (pair.a / "notes.txt").write_text("first")
        (pair.a / "docs").mkdir()
        big = os.urandom(900_000)  # above the inline limit: travels as parts
        (pair.a / "docs" / "big.bin").write_bytes(big)
        await pair.sync_both()
        assert tree(pair.b) == {"notes.txt": b"first", "docs/big.bin": big}

        (pair.b / "notes.txt").write_text("second, by bob")
        await pair.bob.sync(DOMAIN)
        await pair.alice.sync(DOMAIN)
        assert (pair.a / "notes.txt").read_text() == "second, by bob"

        (pair.a / "docs" / "big.bin").rename(pair.a / "moved.bin")
        (pair.a / "notes.txt").unlink()
        (pair.b / "bob.txt").write_text("bob's")
        await pair.sync_both()
        assert tree(pair.b) == tree(pair.a) == {"moved.bin": big, "bob.txt": b"bob's"}
        assert pair.alice.forks(DOMAIN) == pair.bob.forks(DOMAIN) == ()
    finally:
        await pair.alice.close()
        await pair.bob.close()


# --- several exchanges --------------------------------------------------------------------


class Slow:
    """An exchange whose reads take `delay` seconds more; `broken` makes every call fail."""

    def __init__(self, inner: Exchange, delay: float) -> None:
        self.inner, self.delay, self.broken, self.reads = inner, delay, False, 0

    async def _gate(self) -> None:
        self.reads += 1
        if self.broken:
            raise ExchangeError("unreachable")
        await asyncio.sleep(self.delay)

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        if self.broken:
            raise ExchangeError("unreachable")
        return await self.inner.put_if_absent(name, data)

    async def get(self, name: str) -> bytes:
        await self._gate()
        return await self.inner.get(name)

    async def list(self, prefix: str, after: str = "") -> list[str]:
        await self._gate()
        return await self.inner.list(prefix, after)

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        return await self.inner.sweep(prefix, older_than_s)

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.timeout(30)
async def test_reads_go_to_the_nearest_exchange_and_fall_back(tmp_path: Path) -> None:
    far = Slow(FolderExchange(tmp_path / "far"), 0.02)
    near = Slow(FolderExchange(tmp_path / "near"), 0.0)
    exchanges = ExchangeSet([far, near])  # the far one is first: it decides writes
    assert await exchanges.put_if_absent("d/C.1", b"one")
    assert (tmp_path / "near" / "d" / "C.1").read_bytes() == b"one"  # written to each
    for _ in range(PROBE_EVERY * 4):
        assert await exchanges.get("d/C.1") == b"one"
    assert exchanges.nearest_first() == [1, 0]
    assert near.reads > far.reads > 1  # the far one is still measured now and then (round robin)
    near.broken = True
    assert await exchanges.get("d/C.1") == b"one"  # falls back
    assert await exchanges.list("d/C.") == ["d/C.1"]
    assert exchanges.nearest_first()[0] == 0
    far.broken = True
    with pytest.raises(ExchangeError):
        await exchanges.get("d/C.1")


@pytest.mark.timeout(30)
async def test_a_listing_holds_what_any_exchange_holds(tmp_path: Path) -> None:
    """A change that reached the first exchange only (its writer cut off from the other) is
    listed for a reader whose nearest exchange is the other. Listed from the nearest alone,
    it showed only once its writer copied it there, perhaps hours later: below the window
    that reader lists from by then (`listing_floor`), so it was never read."""
    far = Slow(FolderExchange(tmp_path / "far"), 0.02)
    near = Slow(FolderExchange(tmp_path / "near"), 0.0)
    exchanges = ExchangeSet([far, near])
    assert await exchanges.put_if_absent("d/C.1", b"one")
    assert await FolderExchange(tmp_path / "far").put_if_absent("d/C.2", b"the first only")
    for _ in range(3):
        assert await exchanges.get("d/C.1") == b"one"
    assert exchanges.nearest_first() == [1, 0]
    assert await exchanges.list("d/C.") == ["d/C.1", "d/C.2"]
    assert await exchanges.list("d/C.", after="d/C.1") == ["d/C.2"]
    assert await exchanges.get("d/C.2") == b"the first only"  # from the one that has it
    far.broken = True
    assert await exchanges.list("d/C.") == ["d/C.1"]  # one exchange answering is enough
    near.broken = True
    with pytest.raises(ExchangeError, match="unreachable"):
        await exchanges.list("d/C.")


@pytest.mark.timeout(30)
async def test_the_first_exchange_decides_racing_writes_and_the_others_copy_it(
    tmp_path: Path,
) -> None:
    sets = [
        ExchangeSet([FolderExchange(tmp_path / "one"), FolderExchange(tmp_path / "two")])
        for _ in range(8)
    ]
    wins = await asyncio.gather(
        *(s.put_if_absent("d/C.5", bytes([n]) * 50_000) for n, s in enumerate(sets))
    )
    assert sum(wins) == 1
    winner = bytes([wins.index(True)]) * 50_000
    assert (tmp_path / "one/d/C.5").read_bytes() == (tmp_path / "two/d/C.5").read_bytes() == winner
    # an object only the first holds (its writer stopped before the others) is copied on
    await FolderExchange(tmp_path / "one").put_if_absent("d/C.6", b"half replicated")
    assert not await sets[0].put_if_absent("d/C.6", b"mine")
    assert (tmp_path / "two/d/C.6").read_bytes() == b"half replicated"
    with pytest.raises(ObjectNotFound):
        await sets[0].get("d/C.404")


@pytest.mark.timeout(60)
async def test_a_domain_on_s3_and_sftp_reads_on_when_one_stops(
    s3_server: S3Server, sftp_server: SftpServer, tmp_path: Path
) -> None:
    pair = await open_pair(tmp_path, [s3_server.bucket(), sftp_server.config("/")])
    try:
        (pair.a / "a.txt").write_text("to both")
        big = os.urandom(400_000)
        (pair.a / "big.bin").write_bytes(big)
        await pair.alice.sync(DOMAIN)
        s3 = open_exchange(pair.alice._exchanges(DOMAIN)[0])
        try:
            on_s3 = await s3.list(f"{DOMAIN}/C.")
            on_s3_parts = await s3.list(f"{DOMAIN}/merkle/")
        finally:
            await s3.close()
        root = sftp_server.root / DOMAIN
        assert sorted(f"{DOMAIN}/{p.name}" for p in root.glob("C.*")) == on_s3
        assert sorted(f"{DOMAIN}/merkle/{p.name}" for p in root.glob("merkle/*")) == on_s3_parts

        await sftp_server.stop()
        await pair.bob.sync(DOMAIN)  # reads fall back on S3
        assert tree(pair.b) == {"a.txt": b"to both", "big.bin": big}
        (pair.a / "later.txt").write_text("while sftp is down")
        with pytest.raises(ExchangeError):
            await pair.alice.sync(DOMAIN)  # a write must reach every exchange
        await sftp_server.start()
        await pair.alice.sync(DOMAIN)  # resumes: the queued change goes to both
        await sftp_server.stop()
        await pair.bob.sync(DOMAIN)
        assert (pair.b / "later.txt").read_text() == "while sftp is down"
        await sftp_server.start()
        assert sorted(p.name for p in root.glob("C.*")) == sorted(
            n.rpartition("/")[2] for n in await _list(pair.alice, f"{DOMAIN}/C.")
        )
    finally:
        await pair.alice.close()
        await pair.bob.close()
    for state in (tmp_path / "alice-state", tmp_path / "bob-state"):
        for path in state.iterdir():  # the database, its WAL: no credential in clear
            data = path.read_bytes()
            assert S3_SECRET.encode() not in data, path
            assert SFTP_PASSWORD.encode() not in data, path


async def _list(client: Weshare, prefix: str) -> list[str]:
    exchange = open_exchange(client._exchanges(DOMAIN)[0])
    try:
        return await exchange.list(prefix)
    finally:
        await exchange.close()


# --- racing writers -----------------------------------------------------------------------


@pytest.mark.parametrize("exchange_config", ["s3", "sftp"], indirect=True)
@pytest.mark.timeout(90)
async def test_eight_writers_commit_at_the_same_moment(
    exchange_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every writer makes the very same change ids (one instance, one frozen clock), so every
    # commit races for one name on the exchange: only create-only puts keep them all
    monkeypatch.setattr("weshare.api.instance_of", lambda public: 0)
    frozen = 1_800_000_000_000
    clients = [Weshare(tmp_path / f"state-{n}", clock=lambda: frozen) for n in range(8)]
    for client in clients:
        await client.start()
    try:
        await clients[0].add_domain(DOMAIN, tmp_path / "files-0", "user0")
        await clients[0].add_exchange(DOMAIN, exchange_config)
        for n, client in enumerate(clients[1:], start=1):
            invite = await clients[0].invite(DOMAIN, client.get_public(), f"user{n}")
            await client.join(invite, tmp_path / f"files-{n}")
        for n in range(8):
            (tmp_path / f"files-{n}" / f"from-{n}.txt").write_text(f"written by {n}")
        reports = await asyncio.gather(*(client.sync(DOMAIN) for client in clients))
        assert [report.pushed for report in reports] == [1] * 8
        for client in clients:
            await client.sync(DOMAIN)
        expected = {f"from-{n}.txt": f"written by {n}".encode() for n in range(8)}
        for n, client in enumerate(clients):
            assert tree(tmp_path / f"files-{n}") == expected
            writers = {row.version.writer for row in client.log(DOMAIN)}
            assert len(writers) == 8  # eight change files, one per writer: none overwritten
            assert client.status(DOMAIN).refused == []
    finally:
        for client in clients:
            await client.close()


# --- a server that stops mid-sync -----------------------------------------------------------


class StopsBeforePut(PassThrough):
    """Passes calls through; when the second object whose name holds `at` is about to be put
    (or the first change file), runs `stop` (which stops the server the first time), then lets
    the put meet whatever server there is."""

    def __init__(self, inner: Exchange, stop: Callable[[], Awaitable[None]], at: str) -> None:
        super().__init__(inner)
        self.stop, self.at, self.seen = stop, at, 0

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        if self.at in name:
            self.seen += 1
            if self.seen == 2 or self.at == "/C.":
                await self.stop()
        return await self.inner.put_if_absent(name, data)


@pytest.mark.parametrize("at", ["/merkle/", "/C."], ids=["between-parts", "before-commit"])
@pytest.mark.parametrize("kind", ["s3", "sftp"])
@pytest.mark.timeout(60)
async def test_a_server_stopped_mid_sync_leaves_nothing_half_visible(
    kind: str, at: str, s3_server: S3Server, sftp_server: SftpServer, tmp_path: Path
) -> None:
    stopped: list[bool] = []

    async def stop() -> None:
        if stopped:
            return
        stopped.append(True)
        if kind == "s3":
            await asyncio.to_thread(s3_server.stop)
        else:
            await sftp_server.stop()

    async def start() -> None:
        if kind == "s3":
            await asyncio.to_thread(s3_server.start)
        else:
            await sftp_server.start()

    config = s3_server.bucket() if kind == "s3" else sftp_server.config("/")
    pair = await open_pair(tmp_path, [config])

    def factory(config: Mapping[str, Any]) -> Exchange:
        return StopsBeforePut(default_kinds()[kind](config), stop, at)

    kinds: dict[str, ExchangeFactory] = {**default_kinds(), kind: factory}
    writer = Weshare(tmp_path / "alice-state", kinds=kinds)
    await pair.alice.close()
    await writer.start()
    try:
        big = os.urandom(3_000_000)  # several parts
        (pair.a / "big.bin").write_bytes(big)
        (pair.a / "small.txt").write_text("small")
        with pytest.raises(ExchangeError):
            await writer.sync(DOMAIN)  # the server stops between two parts, or before the commit
        assert stopped
        await start()
        report = await pair.bob.sync(DOMAIN)
        assert report.pulled == 0
        assert tree(pair.b) == {}  # nothing of the change is visible
        await writer.sync(DOMAIN)  # resumes: what is missing goes up, the change last
        await pair.bob.sync(DOMAIN)
        assert tree(pair.b) == {"big.bin": big, "small.txt": b"small"}
    finally:
        await writer.close()
        await pair.bob.close()
