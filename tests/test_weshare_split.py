"""Putting a large file's parts while discovery cuts it (`split_and_put`): parts listed in file
order whatever order the puts finish in, each object holding exactly its part, a part repeated
in the file put once, a failed put surfacing as the exchange's error with nothing left
hanging."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import pytest

from tests.weshare_pair import DOMAIN, Pair, PassThrough, pair, tree
from weshare.crypto import decrypt, legacy_part_id, legacy_part_id_key, part_id
from weshare.errors import ExchangeError, ObjectNotFound
from weshare.exchange import Exchange
from weshare.parts import Part, split_file
from weshare.transfer import PARALLEL_TRANSFERS, Session, part_name, split_and_put

__all__ = ["pair"]  # the fixture, used by name


class UnevenExchange(PassThrough):
    """Puts that finish out of order (a seeded random delay each), and optionally fail from
    the `fail_at`th part on."""

    def __init__(self, inner: Exchange, fail_at: int = 0) -> None:
        super().__init__(inner)
        self.fail_at = fail_at
        self.rng = random.Random(7)
        self.part_puts = 0

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        if name.endswith(".mrk"):
            self.part_puts += 1
            if self.fail_at and self.part_puts >= self.fail_at:
                raise ExchangeError(f"the exchange went away at {name}")
            await asyncio.sleep(self.rng.random() / 100)
        return await self.inner.put_if_absent(name, data)


async def _split(session: Session, path: Path) -> list[Part]:
    return await asyncio.to_thread(split_and_put, session, asyncio.get_running_loop(), path)


async def test_parts_are_listed_in_file_order_and_each_object_holds_its_part(pair: Pair) -> None:
    block = random.Random(1).randbytes(4 * 1024 * 1024)
    data = block + random.Random(2).randbytes(4 * 1024 * 1024) + block  # repeats: put once
    path = pair.a / "big.bin"
    path.write_bytes(data)
    async with pair.alice._session(DOMAIN) as session:
        uneven = UnevenExchange(session.exchange)
        parts = await _split(replace(session, exchange=uneven), path)
        assert parts == split_file(path, session.id_key)  # the same cuts, ids, in file order
        assert len(parts) > 2 * PARALLEL_TRANSFERS  # more parts than buffers: they are reused
        ids = {part.id for part in parts}
        assert uneven.part_puts == len(ids) < len(parts)  # a repeated part is put once
        assert session.state.known_parts(DOMAIN, list(ids)) == ids
        for part in parts:
            name = session.full(part_name(part.id))
            plain = decrypt(session.keyring.keys, name, await session.exchange.get(name))
            assert plain == data[part.offset : part.offset + part.length]
            assert part_id(session.id_key, plain) == part.id
    await pair.bob.sync(DOMAIN)  # alice's sync finds every part up: bob gets the file
    await pair.alice.sync(DOMAIN)
    await pair.bob.sync(DOMAIN)
    assert tree(pair.b) == {"big.bin": data}


@pytest.mark.timeout(60)
async def test_a_failed_put_raises_its_error_and_leaves_nothing_hanging(pair: Pair) -> None:
    data = random.Random(3).randbytes(8 * 1024 * 1024)
    path = pair.a / "big.bin"
    path.write_bytes(data)
    async with pair.alice._session(DOMAIN) as session:
        failing = UnevenExchange(session.exchange, fail_at=3)
        with pytest.raises(ExchangeError, match="went away"):
            await _split(replace(session, exchange=failing), path)
        everything = [part.id for part in split_file(path, session.id_key)]
        known = session.state.known_parts(DOMAIN, everything)
        assert len(known) == 2  # the two parts that were put, and only those
        assert all((pair.exchange / DOMAIN / part_name(i)).exists() for i in known)
    await pair.alice.sync(DOMAIN)  # the next sync puts the rest and commits
    await pair.bob.sync(DOMAIN)
    assert tree(pair.b) == {"big.bin": data}


async def test_a_domain_written_with_the_first_part_ids_is_still_read(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part ids were HMAC-SHA256 before they were BLAKE3: what alice wrote then (inline small
    files, a large file's parts) is still read, and her next edits (BLAKE3) follow it."""
    rng = random.Random(11)
    small, large = rng.randbytes(3000), rng.randbytes(6 * 1024 * 1024)
    (pair.a / "small.txt").write_bytes(small)
    (pair.a / "large.bin").write_bytes(large)
    with monkeypatch.context() as old_writer:
        old_writer.setattr("weshare.transfer.part_id_key", legacy_part_id_key)
        old_writer.setattr("weshare.transfer.part_id", legacy_part_id)
        old_writer.setattr("weshare.parts.part_id", legacy_part_id)
        await pair.alice.sync(DOMAIN)
    async with pair.alice._session(DOMAIN) as session:  # the parts went up by their old ids
        legacy_key = legacy_part_id_key(session.keyring.keys[min(session.keyring.keys)])
        cuts = split_file(pair.a / "large.bin", session.id_key)
        assert len(cuts) > 2
        for cut in cuts:
            old_id = legacy_part_id(legacy_key, large[cut.offset : cut.offset + cut.length])
            assert await session.exchange.get(session.full(part_name(old_id)))
            with pytest.raises(ObjectNotFound):
                await session.exchange.get(session.full(part_name(cut.id)))
    report = await pair.bob.sync(DOMAIN)
    assert report.problems == []
    assert tree(pair.b) == {"large.bin": large, "small.txt": small}
    (pair.a / "large.bin").write_bytes(large + b"appended")
    (pair.a / "small.txt").write_bytes(small[:100])
    await pair.alice.sync(DOMAIN)
    report = await pair.bob.sync(DOMAIN)
    assert report.problems == []
    assert tree(pair.b) == {"large.bin": large + b"appended", "small.txt": small[:100]}
