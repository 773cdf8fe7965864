"""Truncation (issue 16, seed 004 `A.x`): old changes merged into a base; the old change files
deleted only after a grace period and never one that the truncating user had not read (a
concurrent writer's); every reader, old or new, sees the same files and no fork."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import weshare.transfer
from tests.weshare_pair import DOMAIN, open_pair, tree
from tests.weshare_servers import KINDS, exchange_config, s3_server, sftp_server
from weshare import FolderExchange, Weshare
from weshare.crypto import encrypted_key_id, open_signed
from weshare.exchange import open_exchange
from weshare.formats import Keyring

__all__ = ["exchange_config", "s3_server", "sftp_server"]  # fixtures, used by name

GRACE_MS = 60_000


@pytest.mark.parametrize("exchange_config", KINDS, indirect=True)
@pytest.mark.timeout(60)
async def test_truncate_merges_old_changes_and_deletes_them_after_a_grace_period(
    exchange_config: dict[str, Any], tmp_path: Path
) -> None:
    now = [1_800_000_000_000]

    def tick() -> None:
        now[0] += 2_000

    def alice_clock() -> int:
        return now[0]

    def bob_clock() -> int:  # a second behind: his change sorts below alice's base
        return now[0] - 1_000

    pair = await open_pair(tmp_path, [exchange_config], (alice_clock, bob_clock))
    exchange = open_exchange(exchange_config)
    carol: Weshare | None = None

    async def changes() -> list[str]:
        return [n.rpartition("/")[2] for n in await exchange.list(f"{DOMAIN}/C.")]

    try:
        big = os.urandom(300_000)
        (pair.a / "a.txt").write_text("one")
        (pair.a / "big.bin").write_bytes(big)
        (pair.a / "gone.txt").write_text("deleted later")
        await pair.alice.sync(DOMAIN)
        tick()
        await pair.bob.sync(DOMAIN)
        (pair.b / "a.txt").write_text("two")
        await pair.bob.sync(DOMAIN)
        tick()
        (pair.a / "gone.txt").unlink()
        await pair.alice.sync(DOMAIN)
        tick()
        before = await changes()

        action = await pair.alice.truncate(DOMAIN, grace_ms=GRACE_MS)
        assert sorted(action.fossils) == before

        # bob commits at the same moment, below alice's base, unseen by her truncation: he
        # listed the exchange just before her base went up (a race), so his change id goes
        # above what was there then only
        async def listed_before_the_base(session: Any) -> int:
            return max(int(name.partition(".")[2]) for name in before)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(weshare.transfer, "newest_listed", listed_before_the_base)
            (pair.b / "b.txt").write_text("bob, concurrent")
            await pair.bob.sync(DOMAIN)
        concurrent = [n for n in await changes() if n not in before and n not in action.bases]
        assert len(concurrent) == 1
        assert concurrent[0] < min(action.bases)

        tick()  # within the grace period: nothing is deleted, whoever syncs
        assert (await pair.bob.sync(DOMAIN)).deleted == 0
        assert (await pair.alice.sync(DOMAIN)).deleted == 0
        assert set(before) <= set(await changes())

        now[0] += GRACE_MS
        assert (await pair.alice.sync(DOMAIN)).deleted == len(before)
        assert sorted(await changes()) == sorted([*action.bases, *concurrent])
        await pair.bob.sync(DOMAIN)  # the fossils are gone already: nothing to do

        carol = Weshare(tmp_path / "carol-state", clock=alice_clock)
        await carol.start()
        invite = await pair.alice.invite(DOMAIN, carol.get_public(), "carol")
        await carol.join(invite, tmp_path / "carol")
        await carol.sync(DOMAIN)  # reads only the base and what came after it
        expected = {"a.txt": b"two", "big.bin": big, "b.txt": b"bob, concurrent"}
        assert tree(pair.a) == tree(pair.b) == tree(tmp_path / "carol") == expected

        # an edit that follows a version whose change file is gone still follows it
        tick()
        (pair.b / "a.txt").write_text("three")
        await pair.bob.sync(DOMAIN)
        for client in (pair.alice, carol):
            await client.sync(DOMAIN)
        assert (pair.a / "a.txt").read_text() == (tmp_path / "carol/a.txt").read_text() == "three"
        for client in (pair.alice, pair.bob, carol):
            assert client.forks(DOMAIN) == ()
            assert client.status(DOMAIN).refused == []
    finally:
        await exchange.close()
        await pair.alice.close()
        await pair.bob.close()
        if carol is not None:
            await carol.close()


@pytest.mark.timeout(30)
async def test_a_reader_of_the_base_sees_the_fork_a_concurrent_rename_makes(tmp_path: Path) -> None:
    """Bob renames f.txt to g.txt from v1 while alice edits it to v2 and truncates (v1 is not
    a head: the base holds only v2). A reader that gets v2 from the base must still see that
    bob's g.txt and v2 descend from v1: the same fork as the readers that read v1."""
    pair = await open_pair(tmp_path)
    carol = Weshare(tmp_path / "carol-state")
    try:
        (pair.a / "f.txt").write_text("v1")
        await pair.sync_both()
        (pair.a / "f.txt").write_text("v2 by alice")
        (pair.b / "f.txt").rename(pair.b / "g.txt")  # bob has not seen v2
        await pair.alice.sync(DOMAIN)
        await pair.alice.truncate(DOMAIN, grace_ms=0)
        assert (await pair.alice.sync(DOMAIN)).deleted > 0  # v1's change file is gone
        await pair.bob.sync(DOMAIN)
        await pair.alice.sync(DOMAIN)
        await carol.start()
        await carol.join(
            await pair.alice.invite(DOMAIN, carol.get_public(), "carol"), tmp_path / "c"
        )
        await carol.sync(DOMAIN)
        trees = [tree(folder) for folder in (pair.a, pair.b, tmp_path / "c")]
        assert trees[0] == trees[1] == trees[2]
        assert sorted(trees[0].values()) == [b"v1", b"v2 by alice"]  # both kept: a fork
        heads = [[h.ref for h in f.heads] for f in carol.forks(DOMAIN)]
        assert len(heads) == 1
        assert heads == [[h.ref for h in f.heads] for f in pair.alice.forks(DOMAIN)]
    finally:
        await pair.alice.close()
        await pair.bob.close()
        await carol.close()


@pytest.mark.timeout(30)
async def test_rekey_all_before_any_change_only_gives_a_new_key(tmp_path: Path) -> None:
    """Nothing to write again is no error (it was "nothing to truncate", raised after the new
    key was already out); the next changes use the new key."""
    pair = await open_pair(tmp_path)
    try:
        before = max(_keyring(pair.alice).keys)
        await pair.alice.rekey(DOMAIN, everything=True, grace_ms=0)
        assert max(_keyring(pair.alice).keys) > before
        (pair.a / "after.txt").write_text("under the new key")
        await pair.sync_both()
        assert tree(pair.b) == {"after.txt": b"under the new key"}
        assert max(_keyring(pair.bob).keys) == max(_keyring(pair.alice).keys)
    finally:
        await pair.alice.close()
        await pair.bob.close()


def _keyring(client: Weshare) -> Keyring:
    return Keyring.decode(bytes.fromhex(client.state.get_config(DOMAIN, "keyring") or ""))


@pytest.mark.timeout(30)
async def test_rekey_all_writes_every_change_again_under_the_new_key(tmp_path: Path) -> None:
    pair = await open_pair(tmp_path)
    try:
        (pair.a / "small.txt").write_text("small, inline")
        await pair.sync_both()
        (pair.b / "small.txt").write_text("edited by bob")
        await pair.bob.sync(DOMAIN)
        await pair.alice.rekey(DOMAIN, everything=True, grace_ms=0)
        await pair.sync_both()  # the grace period is over at once: the old files go
        exchange = FolderExchange(pair.exchange)
        names = await exchange.list(f"{DOMAIN}/C.")
        ring = Keyring.decode(bytes.fromhex(pair.bob.state.get_config(DOMAIN, "keyring") or ""))
        newest_key = max(ring.keys)
        for name in names:
            content, _ = open_signed(name, await exchange.get(name))
            assert encrypted_key_id(content) == newest_key
        assert tree(pair.a) == tree(pair.b) == {"small.txt": b"edited by bob"}
        assert pair.alice.forks(DOMAIN) == pair.bob.forks(DOMAIN) == ()
    finally:
        await pair.alice.close()
        await pair.bob.close()
