"""Nothing on an exchange is trusted: tampered, wrongly signed, outsider and replayed files are
refused, and the users and files stay as they were."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from records import Identity
from tests.weshare_pair import DOMAIN, Pair, pair, tree
from weshare import InvalidFile, Weshare
from weshare.crypto import encrypt, part_id_key, sign_file
from weshare.formats import ChangeFile, FileChange, Keyring, UserEntry, UsersFile
from weshare.ids import SnowflakeIds, object_name, parse_object_name
from weshare.membership import make_invite, open_invite
from weshare.parts import split_bytes

__all__ = ["pair"]  # the fixture, used by name


def _objects(pair: Pair, prefix: str) -> list[Path]:
    return sorted((pair.exchange / DOMAIN).glob(f"{prefix}*"))


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def _keyring(pair: Pair) -> Keyring:
    value = pair.alice.state.get_config(DOMAIN, "keyring")
    assert value is not None
    return Keyring.decode(bytes.fromhex(value))


def _forge_change(pair: Pair, writer: Identity, path: str, content: bytes) -> Path:
    """A well-formed, well-encrypted change file signed by `writer`."""
    ring = _keyring(pair)
    ids = tuple(p.id for p in split_bytes(content, part_id_key(ring.keys[min(ring.keys)])))
    name = f"{DOMAIN}/{_next_name(pair, 'C')}"
    key_id, key = ring.current
    plaintext = ChangeFile((FileChange((path,), (), ids, data=content),)).encode()
    target = pair.exchange / name
    target.write_bytes(sign_file(writer, name, encrypt(key_id, key, name, plaintext)))
    return target


@pytest.mark.parametrize("where", ["content", "signer key", "signature"])
async def test_a_flipped_bit_in_a_change_file_is_refused(pair: Pair, where: str) -> None:
    (pair.a / "x.txt").write_text("genuine")
    await pair.alice.sync(DOMAIN)
    change = _objects(pair, "C.")[-1]
    at = {"content": 40, "signer key": -70, "signature": -5}[where]
    _flip(change, at)
    await pair.bob.sync(DOMAIN)
    assert not (pair.b / "x.txt").exists()
    refused = pair.bob.status(DOMAIN).refused
    assert [name for name, _ in refused] == [change.name]
    assert "bad signature" in refused[0][1]


async def test_a_change_with_another_users_key_but_not_their_signature_is_refused(
    pair: Pair,
) -> None:
    (pair.a / "x.txt").write_text("genuine")
    await pair.alice.sync(DOMAIN)
    change = _objects(pair, "C.")[-1]
    data = change.read_bytes()
    # claim bob wrote it: his public key in place of alice's, alice's signature kept
    change.write_bytes(data[:-96] + pair.bob.identity.public_key + data[-64:])
    await pair.bob.sync(DOMAIN)
    assert not (pair.b / "x.txt").exists()
    assert "bad signature" in pair.bob.status(DOMAIN).refused[0][1]


async def test_a_change_signed_by_someone_who_is_not_a_user_is_refused(pair: Pair) -> None:
    await pair.bob.sync(DOMAIN)
    outsider = Identity.from_seed(b"o" * 32)  # holds a leaked domain key, but is no user
    forged = _forge_change(pair, outsider, "evil.txt", b"malware")
    await pair.bob.sync(DOMAIN)
    assert not (pair.b / "evil.txt").exists()
    assert pair.bob.status(DOMAIN).refused == [(forged.name, f"{forged.name}: signed by someone "
                                                "who was not a user at that point")]  # fmt: skip
    # the same bytes signed by a user are accepted: the refusal was about the signer
    _forge_change(pair, pair.alice.identity, "fine.txt", b"ok")
    await pair.bob.sync(DOMAIN)
    assert (pair.b / "fine.txt").read_bytes() == b"ok"


async def test_a_tampered_part_never_lands_in_a_file(pair: Pair) -> None:
    (pair.a / "big.bin").write_bytes(bytes(range(256)) * 4000)
    await pair.alice.sync(DOMAIN)
    part = sorted((pair.exchange / DOMAIN / "merkle").glob("*.mrk"))[0]
    _flip(part, 30)
    report = await pair.bob.sync(DOMAIN)
    assert not (pair.b / "big.bin").exists()
    assert len(report.problems) == 1
    assert "decryption failed" in report.problems[0]


async def test_a_file_that_could_not_be_written_is_written_by_a_later_sync(pair: Pair) -> None:
    """A sync that finds nothing new still applies when the last apply left a problem."""
    (pair.a / "big.bin").write_bytes(bytes(range(256)) * 4000)
    await pair.alice.sync(DOMAIN)
    part = sorted((pair.exchange / DOMAIN / "merkle").glob("*.mrk"))[0]
    good = part.read_bytes()
    _flip(part, 30)
    assert len((await pair.bob.sync(DOMAIN)).problems) == 1
    part.write_bytes(good)  # the exchange is repaired; nothing else changed anywhere
    report = await pair.bob.sync(DOMAIN)
    assert (report.problems, report.pulled, report.written) == ([], 0, 1)
    assert (pair.b / "big.bin").read_bytes() == bytes(range(256)) * 4000


async def test_a_replayed_old_users_file_is_refused(pair: Pair, tmp_path: Path) -> None:
    await pair.bob.sync(DOMAIN)
    users = _objects(pair, "U.")
    assert len(users) == 2  # the founding one (alice) and the one that added bob
    before = pair.bob.state.members(DOMAIN)
    # the first U.x, without bob, copied under a newer name to remove him
    replay = pair.exchange / DOMAIN / _next_name(pair, "U")
    replay.write_bytes(users[0].read_bytes())
    await pair.bob.sync(DOMAIN)
    assert pair.bob.state.members(DOMAIN) == before
    assert any(name == replay.name and "bad signature" in why
               for name, why in pair.bob.status(DOMAIN).refused)  # fmt: skip


def _next_name(pair: Pair, prefix: str) -> str:
    newest = max(
        (parse_object_name(prefix, p.name) or 0 for p in _objects(pair, prefix)), default=0
    )
    return object_name(prefix, SnowflakeIds(1).next(time.time_ns() // 1_000_000, newest))


async def _write_users(pair: Pair, signer: Identity, users: UsersFile) -> str:
    name = f"{DOMAIN}/{_next_name(pair, 'U')}"
    (pair.exchange / name).write_bytes(sign_file(signer, name, users.encode()))
    return name.rpartition("/")[2]


async def test_users_files_from_a_follower_or_off_the_chain_are_refused(pair: Pair) -> None:
    await pair.bob.sync(DOMAIN)
    users = _objects(pair, "U.")
    current = parse_object_name("U", users[-1].name) or 0
    carol = Identity.from_seed(b"c" * 32)
    entry = UserEntry(carol.public_key, 1, b"", "carol")
    old = UsersFile.decode(users[-1].read_bytes()[:-96])
    by_follower = UsersFile(current, (*old.users, entry))
    name = await _write_users(pair, pair.bob.identity, by_follower)
    await pair.alice.sync(DOMAIN)
    assert carol.public_key not in pair.alice.state.members(DOMAIN)
    assert (name, f"{DOMAIN}/{name}: not signed by an admin") in pair.alice.status(DOMAIN).refused

    stale = UsersFile(0, old.users[:1])  # signed by the admin, but follows the first U.x
    name = await _write_users(pair, pair.alice.identity, stale)
    await pair.bob.sync(DOMAIN)
    assert pair.bob.identity.public_key in pair.bob.state.members(DOMAIN)
    assert (name, f"{DOMAIN}/{name}: does not follow the current U.x") in pair.bob.status(
        DOMAIN
    ).refused


def test_an_invite_opens_only_for_its_receiver_and_only_untampered() -> None:
    admin, bob, eve = (Identity.from_seed(bytes([n]) * 32) for n in (1, 2, 3))
    invite = make_invite(admin, bob.public_key, {"domain": "d", "exchanges": []})
    opened = open_invite(bob, invite)
    assert opened.admin == admin.public_key
    assert opened.config["domain"] == "d"
    with pytest.raises(InvalidFile):
        open_invite(eve, invite)
    flipped = bytearray(invite)
    flipped[60] ^= 1
    with pytest.raises(InvalidFile):
        open_invite(bob, bytes(flipped))


async def test_nothing_is_applied_twice_or_lost_after_refusals(pair: Pair) -> None:
    (pair.a / "a.txt").write_text("a")
    await pair.sync_both()
    _forge_change(pair, Identity.from_seed(b"z" * 32), "b.txt", b"b")
    (pair.a / "c.txt").write_text("c")
    await pair.sync_both()
    assert tree(pair.b) == {"a.txt": b"a", "c.txt": b"c"}


async def test_inline_data_that_does_not_match_its_hashes_is_refused(pair: Pair) -> None:
    await pair.bob.sync(DOMAIN)
    ring = _keyring(pair)
    name = f"{DOMAIN}/{_next_name(pair, 'C')}"
    ids = tuple(p.id for p in split_bytes(b"the real text", part_id_key(ring.keys[min(ring.keys)])))
    lying = ChangeFile((FileChange(("x.txt",), (), ids, data=b"something else"),)).encode()
    key_id, key = ring.current
    body = sign_file(pair.alice.identity, name, encrypt(key_id, key, name, lying))
    (pair.exchange / name).write_bytes(body)  # a user's change, but its data lies
    await pair.bob.sync(DOMAIN)
    assert not (pair.b / "x.txt").exists()
    assert "inline data does not match" in pair.bob.status(DOMAIN).refused[0][1]


async def test_a_part_whose_content_does_not_match_its_id_is_refused(pair: Pair) -> None:
    (pair.a / "big.bin").write_bytes(bytes(range(256)) * 4000)
    await pair.alice.sync(DOMAIN)
    ring = _keyring(pair)
    key_id, key = ring.current
    part = sorted((pair.exchange / DOMAIN / "merkle").glob("*.mrk"))[0]
    name = f"{DOMAIN}/merkle/{part.name}"
    part.chmod(0o644)
    part.write_bytes(encrypt(key_id, key, name, b"swapped by a user who holds the key"))
    report = await pair.bob.sync(DOMAIN)
    assert not (pair.b / "big.bin").exists()
    assert "does not match its id" in report.problems[0]


async def test_a_domain_laid_out_by_someone_else_is_not_trusted(pair: Pair, tmp_path: Path) -> None:
    async with Weshare(tmp_path / "mallory-state") as mallory, Weshare(tmp_path / "carol") as carol:
        # mallory makes a domain of the same name on her own exchange and invites carol to it,
        # naming alice (whom carol trusts) as the admin: alice's key is public, her signature not
        await mallory.add_domain(DOMAIN, tmp_path / "mallory-files")
        await mallory.add_exchange(DOMAIN, {"kind": "folder", "path": str(tmp_path / "fake")})
        await mallory.invite(DOMAIN, carol.get_public(), "carol")
        forged = make_invite(
            mallory.identity, carol.identity.public_key,
            {"admins": [pair.alice.get_public()], "domain": DOMAIN,
             "exchanges": [{"kind": "folder", "path": str(tmp_path / "fake")}]},
        )  # fmt: skip
        await carol.join(forged, tmp_path / "carol-files")
        with pytest.raises(InvalidFile, match="not signed by the admin we trust"):
            await carol.sync(DOMAIN)
