"""Two weshare users on one folder exchange, for tests: the `pair` fixture and helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weshare import Exchange, Weshare
from weshare.api import system_clock
from weshare.discovery import MARKER
from weshare.exchange import ExchangeFactory, default_kinds

DOMAIN = "team.weshare.test"


class Killed(Exception):
    """Stands for the process dying at that point."""


class PassThrough:
    """An exchange that passes every call to `inner`: tests subclass it to fail or delay some."""

    def __init__(self, inner: Exchange) -> None:
        self.inner = inner

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        return await self.inner.put_if_absent(name, data)

    async def get(self, name: str) -> bytes:
        return await self.inner.get(name)

    async def list(self, prefix: str, after: str = "") -> list[str]:
        return await self.inner.list(prefix, after)

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        return await self.inner.sweep(prefix, older_than_s)

    async def close(self) -> None:
        await self.inner.close()


class FaultyExchange(PassThrough):
    """A folder exchange that 'dies' once at a chosen point: before putting an object whose name
    contains `before_put`, after putting one containing `after_put`, or on the `fail_get`th get
    of a part."""

    def __init__(
        self,
        inner: Exchange,
        *,
        before_put: str = "",
        after_put: str = "",
        fail_get: int = 0,
    ) -> None:
        super().__init__(inner)
        self.before_put, self.after_put, self.fail_get = before_put, after_put, fail_get
        self.part_gets = 0
        self.puts: list[str] = []

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        if self.before_put and self.before_put in name:
            raise Killed(f"before {name}")
        created = await self.inner.put_if_absent(name, data)
        self.puts.append(name)
        if self.after_put and self.after_put in name:
            raise Killed(f"after {name}")
        return created

    async def get(self, name: str) -> bytes:
        if name.endswith(".mrk"):
            self.part_gets += 1
            if self.part_gets == self.fail_get:
                raise Killed(f"reading {name}")
        return await self.inner.get(name)


def faulty_kinds(**faults: Any) -> dict[str, ExchangeFactory]:
    """Every exchange kind, each wrapped in a `FaultyExchange` with `faults`."""

    def wrapping(make: ExchangeFactory) -> ExchangeFactory:
        return lambda config: FaultyExchange(make(config), **faults)

    return {kind: wrapping(make) for kind, make in default_kinds().items()}


@dataclass
class Pair:
    alice: Weshare
    bob: Weshare
    a: Path  # alice's folder
    b: Path  # bob's folder
    exchange: Path
    tmp: Path

    async def sync_both(self) -> None:
        await self.alice.sync(DOMAIN)
        await self.bob.sync(DOMAIN)
        await self.alice.sync(DOMAIN)


async def open_pair(
    tmp_path: Path,
    configs: list[dict[str, Any]] | None = None,
    clocks: tuple[Callable[[], int], Callable[[], int]] = (system_clock, system_clock),
) -> Pair:
    """Alice founds the domain on the exchanges `configs` (default: a folder exchange at
    ``tmp_path/exchange``) and invites Bob, who joins. Close both clients after."""
    if configs is None:
        configs = [{"kind": "folder", "path": str(tmp_path / "exchange")}]
    alice = Weshare(tmp_path / "alice-state", clock=clocks[0])
    bob = Weshare(tmp_path / "bob-state", clock=clocks[1])
    await alice.start()
    await bob.start()
    try:
        await alice.add_domain(DOMAIN, tmp_path / "alice", "alice")
        for config in configs:
            await alice.add_exchange(DOMAIN, config)
        invite = await alice.invite(DOMAIN, bob.get_public(), "bob")
        assert await bob.join(invite, tmp_path / "bob", "bob") == DOMAIN
    except BaseException:
        await alice.close()
        await bob.close()
        raise
    return Pair(alice, bob, tmp_path / "alice", tmp_path / "bob", tmp_path / "exchange", tmp_path)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    opened = await open_pair(tmp_path)
    try:
        yield opened
    finally:
        await opened.alice.close()
        await opened.bob.close()


def tree(folder: Path) -> dict[str, bytes]:
    """The shared files under `folder` (not the sync's own `MARKER`), by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path != folder / MARKER
    }
