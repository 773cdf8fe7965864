"""Membership changes (issue 16): an admin adds and removes users; a removal brings a new domain
key for the others; changes are judged by who were users when they were made; followers
cannot change the users."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import weshare.membership
import weshare.sync
import weshare.transfer
from tests.weshare_pair import DOMAIN, Pair, pair, tree
from weshare import Exchange, FolderExchange, InvalidFile, UsageError, Weshare
from weshare.crypto import decrypt, encrypted_key_id, open_signed, sign_file
from weshare.exchange import ExchangeFactory
from weshare.formats import Keyring, UserEntry, UsersFile
from weshare.ids import object_name, parse_object_name

__all__ = ["pair"]  # the fixture, used by name


class HidesUsersAfter:
    """A folder exchange that lists no `U.x` above `cutoff`: a client that has not seen a
    removal yet (or pretends not to)."""

    def __init__(self, inner: Exchange, cutoff: str) -> None:
        self.inner, self.cutoff = inner, cutoff

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        return await self.inner.put_if_absent(name, data)

    async def get(self, name: str) -> bytes:
        return await self.inner.get(name)

    async def list(self, prefix: str, after: str = "") -> list[str]:
        names = await self.inner.list(prefix, after)
        return [n for n in names if "/U." not in n or n.rpartition("/")[2] <= self.cutoff]

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        return await self.inner.sweep(prefix, older_than_s)

    async def close(self) -> None:
        await self.inner.close()


def _stale_kinds(cutoff: str) -> dict[str, ExchangeFactory]:
    def factory(config: Mapping[str, Any]) -> Exchange:
        return HidesUsersAfter(FolderExchange(Path(config["path"])), cutoff)

    return {"folder": factory}


async def _add(pair: Pair, name: str) -> Weshare:
    client = Weshare(pair.tmp / f"{name}-state")
    await client.start()
    invite = await pair.alice.invite(DOMAIN, client.get_public(), name)
    await client.join(invite, pair.tmp / name)
    return client


def _newest(pair: Pair, prefix: str) -> Path:
    return sorted((pair.exchange / DOMAIN).glob(f"{prefix}*"))[-1]


@pytest.mark.timeout(60)
async def test_a_removed_user_reads_nothing_new_and_is_ignored(pair: Pair) -> None:
    carol = await _add(pair, "carol")
    dave: Weshare | None = None
    try:
        (pair.b / "bob-before.txt").write_text("bob, while a user")
        await pair.bob.sync(DOMAIN)
        await pair.alice.sync(DOMAIN)
        users_before = _newest(pair, "U.").name
        key_before = Keyring.decode(
            bytes.fromhex(pair.bob.state.get_config(DOMAIN, "keyring") or "")
        )

        await pair.alice.remove_user(DOMAIN, pair.bob.get_public())
        assert pair.bob.identity.public_key not in pair.alice.status(DOMAIN).members
        (pair.a / "secret.txt").write_text("after bob left")
        await pair.alice.sync(DOMAIN)
        change = _newest(pair, "C.")

        # a client of bob's that has not seen the removal still writes with the old key...
        await pair.bob.close()
        stale = Weshare(pair.tmp / "bob-state", kinds=_stale_kinds(users_before))
        await stale.start()
        try:
            (pair.b / "bob-after.txt").write_text("bob, removed")
            assert (await stale.sync(DOMAIN)).pushed == 1
        finally:
            await stale.close()
        # bob's client can read nothing committed after the removal
        bob = Weshare(pair.tmp / "bob-state")
        await bob.start()
        try:
            with pytest.raises(UsageError, match="not a user"):
                await bob.sync(DOMAIN)
        finally:
            await bob.close()
        content, _ = open_signed(f"{DOMAIN}/{change.name}", change.read_bytes())
        assert encrypted_key_id(content) not in key_before.keys  # a key bob never had
        with pytest.raises(InvalidFile, match="unknown key"):
            decrypt(key_before.keys, f"{DOMAIN}/{change.name}", content)
        assert not (pair.b / "secret.txt").exists()

        # ...and everyone else ignores it; what bob wrote while a user stays
        await pair.alice.sync(DOMAIN)
        # carol reads it before she sees the removal: accepted then, dropped once she does
        await carol.close()
        carol = Weshare(pair.tmp / "carol-state", kinds=_stale_kinds(users_before))
        await carol.start()
        await carol.sync(DOMAIN)
        assert (pair.tmp / "carol" / "bob-after.txt").exists()
        await carol.close()
        carol = Weshare(pair.tmp / "carol-state")
        await carol.start()
        await carol.sync(DOMAIN)
        dave = await _add(pair, "dave")  # joins after the removal, reads everything anew
        await dave.sync(DOMAIN)
        expected = {"bob-before.txt": b"bob, while a user", "secret.txt": b"after bob left"}
        assert tree(pair.a) == tree(pair.tmp / "carol") == tree(pair.tmp / "dave") == expected
        bob_after = _newest(pair, "C.").name
        for client in (pair.alice, carol, dave):
            refused = dict(client.status(DOMAIN).refused)
            assert "not a user at that point" in refused[bob_after]
    finally:
        await carol.close()
        if dave is not None:
            await dave.close()


@contextlib.asynccontextmanager
async def _carol_joins_during_the_next_push(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    """While in it, the next sync's push (bob's: after it read the users, before it reads the
    changes) first invites carol, who joins and pushes carol.txt; her client is closed on the
    way out."""
    real_push = weshare.sync.push
    joined: list[Weshare] = []

    async def carol_joins_meanwhile(session: Any, *args: Any) -> int:
        if not joined:
            joined.append(await _add(pair, "carol"))
            (pair.tmp / "carol" / "carol.txt").write_text("carol's first file")
            assert (await joined[0].sync(DOMAIN)).pushed == 1
        return await real_push(session, *args)

    monkeypatch.setattr(weshare.sync, "push", carol_joins_meanwhile)
    try:
        yield
    finally:
        for client in joined:
            await client.close()


async def _bob_reads_carol(pair: Pair) -> None:
    await pair.bob.sync(DOMAIN)
    assert tree(pair.b) == {"carol.txt": b"carol's first file"}
    assert not pair.bob.status(DOMAIN).refused


@pytest.mark.timeout(30)
async def test_a_user_who_joins_and_writes_during_a_sync_is_read(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Carol is invited, joins and pushes while bob's sync runs (after it read the users,
    before it reads the changes). Judged by the users bob knew when his sync began, her
    change was refused as "not a user at that point", and the refusal was kept: bob never
    read it."""
    async with _carol_joins_during_the_next_push(pair, monkeypatch):
        await pair.bob.sync(DOMAIN)
        monkeypatch.undo()
        await _bob_reads_carol(pair)


@pytest.mark.timeout(30)
async def test_changes_refused_before_the_users_were_read_are_judged_again_once(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state kept by a version whose pull judged changes by the users read when the sync
    began refused a new user's first change for good; the first pull of this version reads
    it again."""
    real_pull = weshare.transfer.pull

    async def pull_as_before(session: Any) -> int:
        session.refresh = None  # the users as read when the sync began
        return await real_pull(session)

    async with _carol_joins_during_the_next_push(pair, monkeypatch):
        monkeypatch.setattr("weshare.sync.pull", pull_as_before)
        await pair.bob.sync(DOMAIN)
        monkeypatch.undo()
        assert "not a user at that point" in dict(pair.bob.status(DOMAIN).refused).popitem()[1]
        pair.bob.state.set_config(DOMAIN, "judged again", "")  # as that version left it
        await _bob_reads_carol(pair)


@pytest.mark.timeout(30)
async def test_a_removal_that_lost_a_race_with_another_device_says_so(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice on two devices (a copied state): the second invites carol while the first, which
    has just read the users, removes bob. Both `U.x` follow the same one; every reader
    accepts the first and refuses the second, so bob stayed a user with the key while the
    first device reported the removal done."""
    await pair.alice.close()
    shutil.copytree(pair.tmp / "alice-state", pair.tmp / "alice-phone")
    laptop, phone = Weshare(pair.tmp / "alice-state"), Weshare(pair.tmp / "alice-phone")
    await laptop.start()
    await phone.start()
    carol = Weshare(pair.tmp / "carol-state")
    await carol.start()
    real_refresh = weshare.membership.refresh_members
    invites: list[bytes] = []

    async def phone_invites_meanwhile(*args: Any) -> Any:
        keyring = await real_refresh(*args)
        if not invites:
            invites.append(b"")
            invites[0] = await phone.invite(DOMAIN, carol.get_public(), "carol")
        return keyring

    try:
        monkeypatch.setattr("weshare.api.refresh_members", phone_invites_meanwhile)
        with pytest.raises(UsageError, match=r"another U\.x was written at the same moment"):
            await laptop.remove_user(DOMAIN, pair.bob.get_public())
        monkeypatch.undo()
        assert pair.bob.identity.public_key in laptop.status(DOMAIN).members  # not in force
        await laptop.remove_user(DOMAIN, pair.bob.get_public())  # again, after the invite
        await carol.join(invites[0], pair.tmp / "carol")
        for client in (laptop, phone, carol):
            await client.sync(DOMAIN)
            members = client.status(DOMAIN).members
            assert pair.bob.identity.public_key not in members
            assert carol.identity.public_key in members
    finally:
        for client in (laptop, phone, carol):
            await client.close()


@pytest.mark.timeout(30)
async def test_a_follower_cannot_add_or_remove_users(pair: Pair) -> None:
    with pytest.raises(UsageError, match="only an admin"):
        await pair.bob.invite(DOMAIN, "ab" * 32, "mallory")
    with pytest.raises(UsageError, match="only an admin"):
        await pair.bob.remove_user(DOMAIN, pair.alice.get_public())
    # bob writes the U.x himself, bypassing his client: every reader refuses it
    current = pair.bob.state.get_config(DOMAIN, "users")
    assert current is not None
    ring = Keyring.decode(bytes.fromhex(pair.bob.state.get_config(DOMAIN, "keyring") or ""))
    mallory = Weshare(pair.tmp / "mallory-state")
    await mallory.start()
    try:
        users = [
            UserEntry(key, flags, b"", first, second)
            for key, (flags, first, second) in pair.bob.state.members(DOMAIN).items()
        ]
        users.append(UserEntry(mallory.identity.public_key, 1, b"", "mallory"))
        previous = parse_object_name("U", current) or 0
        name = f"{DOMAIN}/{object_name('U', previous + 1_000_000)}"
        forged = sign_file(pair.bob.identity, name, UsersFile(previous, tuple(users)).encode())
        (pair.exchange / name).write_bytes(forged)
        await pair.sync_both()
        for client in (pair.alice, pair.bob):
            assert mallory.identity.public_key not in client.status(DOMAIN).members
            refused = dict(client.status(DOMAIN).refused)
            assert refused[name.rpartition("/")[2]].endswith("not signed by an admin")
        assert ring.keys  # bob kept his key: he is still a user
    finally:
        await mallory.close()


@pytest.mark.timeout(30)
async def test_rekey_gives_everyone_a_new_key_for_new_changes(pair: Pair) -> None:
    (pair.a / "old.txt").write_text("old key")
    await pair.sync_both()
    old = _newest(pair, "C.")
    await pair.alice.rekey(DOMAIN)
    (pair.a / "new.txt").write_text("new key")
    await pair.sync_both()
    new = _newest(pair, "C.")

    def key_id(path: Path) -> int:
        return encrypted_key_id(open_signed(f"{DOMAIN}/{path.name}", path.read_bytes())[0])

    assert key_id(new) > key_id(old)
    assert tree(pair.b) == {"old.txt": b"old key", "new.txt": b"new key"}
    with pytest.raises(UsageError, match="only an admin of the domain can change the domain key"):
        await pair.bob.rekey(DOMAIN)
    (pair.a / "later.txt").write_text("not pulled by a refused rekey")
    await pair.alice.sync(DOMAIN)
    with pytest.raises(UsageError, match="can change the domain key"):  # before its sync
        await pair.bob.rekey(DOMAIN, everything=True)
    assert not (pair.b / "later.txt").exists()
