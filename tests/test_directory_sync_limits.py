"""What a malicious or broken peer can do to a syncing directory server: nothing unbounded.

A peer answers digests and pulls however it likes; the server pulling from it must stay within
bounded memory and time (rows in order, a bounded number of pages and refusals per round) and
store only what owners approved (never a deleted record brought back, never another mailbox's
entry in place of the one asked for)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node.directory import sync as sync_module
from node.directory.database import InlineDatabase
from node.directory.ownership import QuorumTicketVerifier
from node.directory.store import DirectoryStore
from node.directory.sync import DirectorySync
from records import Identity
from records.directory import (
    FLOOR_DIGEST,
    Command,
    MailboxNumber,
    Profile,
    Status,
    authorize_delete,
    authorize_update,
    mint_ticket,
)
from records.drd import (
    DIGEST_PAGE,
    MAX_PULL_BATCH,
    decode_digest_request,
    decode_pull_request,
    encode_digest,
    encode_pull,
    encode_pull_item,
    floor_entry,
    sync_entry,
)
from records.errors import DirectoryError

pytestmark = pytest.mark.timeout(30)

T0 = 1_767_225_600_000
AUTHORITIES = [Identity.from_seed(bytes([i + 120]) * 32) for i in range(3)]
OWNER = Identity.from_seed(b"sync-owner".ljust(32, b"\x00"))
MAILBOX = MailboxNumber(6, 9, 9)
DIGEST = b"\x01" * 32


class FixedClock:
    def now_ms(self) -> int:
        return T0


@dataclass
class FakePeer:
    """Stands in for `DirectoryClient`: answers with whatever the test's functions say."""

    digest: Callable[[MailboxNumber | None], bytes]
    pull: Callable[[MailboxNumber], bytes] = lambda _: encode_pull_item(None)
    """One pull item per mailbox asked for (default: nothing held)."""
    clock: FixedClock = field(default_factory=FixedClock)
    calls: list[int] = field(default_factory=list)

    def challenge(self) -> bytes:
        return bytes(16)

    async def call(self, server: object, command: Command, body: bytes) -> tuple[int, bytes]:
        self.calls.append(command)
        if command == Command.SYNC_DIGEST:
            return Status.SUCCESS, self.digest(decode_digest_request(body))
        mailboxes, _ = decode_pull_request(body)
        return Status.SUCCESS, encode_pull([self.pull(mailbox) for mailbox in mailboxes])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DirectoryStore]:
    store = await DirectoryStore.open(InlineDatabase.open(tmp_path / "db.sqlite3"), tmp_path)
    yield store
    await store.close()


def syncer(store: DirectoryStore, peer: FakePeer) -> DirectorySync:
    verifier = QuorumTicketVerifier([a.public_key for a in AUTHORITIES], 2)
    return DirectorySync(store, verifier, peer)  # type: ignore[arg-type]


def rows(start: int, count: int) -> list[tuple[MailboxNumber, int, bytes]]:
    return [(MailboxNumber(6, 1, start + i), T0, DIGEST) for i in range(count)]


async def test_a_peer_repeating_a_full_digest_page_is_refused(
    store: DirectoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "MAX_REFUSED_PULLS", 10**9)
    peer = FakePeer(lambda after: encode_digest(rows(0, DIGEST_PAGE)))
    with pytest.raises(DirectoryError):
        await syncer(store, peer).sync_with(("peer", 1))
    assert peer.calls.count(Command.SYNC_DIGEST) <= 2
    assert await store.count() == 0


async def test_an_endless_digest_is_cut_off(
    store: DirectoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "MAX_DIGEST_PAGES", 3)
    monkeypatch.setattr(sync_module, "MAX_REFUSED_PULLS", 10**9)

    def endless(after: MailboxNumber | None) -> bytes:
        start = 0 if after is None else after.serial + 1
        return encode_digest(rows(start, DIGEST_PAGE))

    peer = FakePeer(endless)
    await syncer(store, peer).sync_with(("peer", 1))
    assert peer.calls.count(Command.SYNC_DIGEST) == 3  # not forever
    assert await store.count() == 0


async def test_a_peer_offering_only_refusals_is_left_early(store: DirectoryStore) -> None:
    """Every offered change is newer but none can be pulled: the round ends after a bounded
    number of refusals instead of asking for all of them."""
    peer = FakePeer(lambda after: encode_digest(rows(0, 1000) if after is None else []))
    peer.pull = lambda mailbox: b"\x00\x00\x00\x02\x08\x01" + bytes(4)  # entry does not parse
    sync = syncer(store, peer)
    assert await sync.sync_with(("peer", 1)) == 0
    assert peer.calls.count(Command.SYNC_PULL) <= sync_module.MAX_REFUSED_PULLS + 1
    assert sync.stats["peers_given_up"] == 1
    assert sync.stats["refused"] <= sync_module.MAX_REFUSED_PULLS + MAX_PULL_BATCH


@pytest.mark.parametrize("answer", ["none", "too_many", "cut_short"])
async def test_a_pull_answered_with_nothing_usable_is_refused(
    store: DirectoryStore, answer: str
) -> None:
    """A peer answering a pull with no items, more items than asked, or broken framing gets
    every change of that pull counted refused; the round goes on, bounded."""
    peer = FakePeer(lambda after: encode_digest(rows(0, 10) if after is None else []))

    async def call(server: object, command: Command, body: bytes) -> tuple[int, bytes]:
        peer.calls.append(command)
        if command == Command.SYNC_DIGEST:
            return Status.SUCCESS, peer.digest(decode_digest_request(body))
        mailboxes, _ = decode_pull_request(body)
        if answer == "none":
            return Status.SUCCESS, encode_pull([])
        if answer == "too_many":
            return Status.SUCCESS, encode_pull([encode_pull_item(None)] * (len(mailboxes) + 1))
        return Status.SUCCESS, encode_pull([encode_pull_item(None)])[:-4] + b"\xe3\xe3"

    peer.call = call  # type: ignore[method-assign]
    sync = syncer(store, peer)
    assert await sync.sync_with(("peer", 1)) == 0
    assert sync.stats["refused"] == 10
    assert peer.calls.count(Command.SYNC_PULL) == 1
    assert await store.count() == 0


def _ticket() -> bytes:
    ticket = mint_ticket(AUTHORITIES[:2], MAILBOX, OWNER.public_key, issued=T0, expires=T0 + 10**9)
    return ticket.to_bytes()


async def test_a_deleted_record_is_not_brought_back_by_a_peer(store: DirectoryStore) -> None:
    old = Profile(display_name="old")
    version = T0 - 10_000
    entry = sync_entry(
        MAILBOX,
        version=version,
        profile=old,
        ticket=_ticket(),
        owner_signature=authorize_update(OWNER, MAILBOX, old, version).signature,
    )
    sync = syncer(store, FakePeer(lambda after: b"\xe3\xe3"))
    assert await sync.apply(entry, b"")
    gone = sync_entry(
        MAILBOX,
        version=version + 1,
        profile=None,
        ticket=_ticket(),
        owner_signature=authorize_delete(OWNER, MAILBOX, version + 1).signature,
    )
    assert await sync.apply(gone, b"")
    before = await store.table_rows()
    # a peer that still holds the old record offers it again: it is older than the deletion
    stale = encode_digest([(MAILBOX, version, DIGEST)])
    peer = FakePeer(lambda after: stale, lambda mailbox: encode_pull_item(entry))
    assert await syncer(store, peer).sync_with(("peer", 1)) == 0
    assert not await sync.apply(entry, b"")
    assert await store.get(MAILBOX) is None
    assert await store.table_rows() == before


async def test_a_pull_answered_with_another_mailbox_is_refused(store: DirectoryStore) -> None:
    other = MailboxNumber(6, 9, 10)
    profile = Profile(display_name="other")
    ticket = mint_ticket(AUTHORITIES[:2], other, OWNER.public_key, issued=T0, expires=T0 + 10**9)
    entry = sync_entry(
        other,
        version=T0,
        profile=profile,
        ticket=ticket.to_bytes(),
        owner_signature=authorize_update(OWNER, other, profile, T0).signature,
    )
    peer = FakePeer(
        lambda after: encode_digest([(MAILBOX, T0, DIGEST)] if after is None else []),
        lambda mailbox: encode_pull_item(entry),
    )
    sync = syncer(store, peer)
    assert await sync.sync_with(("peer", 1)) == 0
    assert sync.stats["refused"] == 1
    assert await store.count() == 0


async def test_fields_out_of_canonical_order_are_refused(store: DirectoryStore) -> None:
    """The owner signed these exact field bytes; stored in another order, the server would
    later publish fields whose digest the owner never signed."""
    from records.directory import encode_entries, fields_digest, update_payload

    fields = encode_entries([(4, b"desc"), (3, b"name")])  # key order is 3, 4
    signature = OWNER.sign(update_payload(MAILBOX, T0, fields_digest(MAILBOX, fields, b"")))
    entry = sync_entry(
        MAILBOX, version=T0, profile=None, ticket=_ticket(), owner_signature=signature
    )
    entry.deleted = False
    entry.fields = fields
    with pytest.raises(DirectoryError):
        await syncer(store, FakePeer(lambda after: b"\xe3\xe3")).apply(entry, b"")
    assert await store.count() == 0


async def _held_record(store: DirectoryStore, version: int) -> None:
    old = Profile(display_name="old")
    entry = sync_entry(
        MAILBOX,
        version=version,
        profile=old,
        ticket=_ticket(),
        owner_signature=authorize_update(OWNER, MAILBOX, old, version).signature,
    )
    assert await syncer(store, FakePeer(lambda after: b"\xe3\xe3")).apply(entry, b"")


@pytest.mark.parametrize("signer", ["stranger", "forged", "owner_but_older"])
async def test_a_floor_removes_only_an_older_record_of_its_own_owner(
    store: DirectoryStore, signer: str
) -> None:
    """A version floor carries no ticket, so it proves only that its key signed a deletion: it
    may remove a record that key approved (older than the floor), nothing else."""
    version = T0 - 10_000
    await _held_record(store, version)
    before = await store.table_rows()
    stranger = Identity.from_seed(b"stranger".ljust(32, b"\x00"))
    floor_version = version - 1 if signer == "owner_but_older" else version + 5
    who = stranger if signer == "stranger" else OWNER
    signature = authorize_delete(who, MAILBOX, floor_version).signature
    if signer == "forged":
        signature = authorize_delete(stranger, MAILBOX, floor_version).signature
    floor = floor_entry(
        MAILBOX,
        version=floor_version,
        owner_key=who.public_key if signer != "forged" else OWNER.public_key,
        owner_signature=signature,
    )
    offered = encode_digest([(MAILBOX, floor_version, FLOOR_DIGEST)])
    peer = FakePeer(lambda after: offered, lambda mailbox: encode_pull_item(floor))
    sync = syncer(store, peer)
    assert await sync.sync_with(("peer", 1)) == 0
    assert await store.table_rows() == before
    assert await store.get(MAILBOX) is not None


async def test_a_floor_of_the_owner_removes_an_older_record_and_stays(
    store: DirectoryStore,
) -> None:
    version = T0 - 10_000
    await _held_record(store, version)
    signature = authorize_delete(OWNER, MAILBOX, version + 5).signature
    floor = floor_entry(
        MAILBOX, version=version + 5, owner_key=OWNER.public_key, owner_signature=signature
    )
    offered = encode_digest([(MAILBOX, version + 5, FLOOR_DIGEST)])
    peer = FakePeer(lambda after: offered, lambda mailbox: encode_pull_item(floor))
    assert await syncer(store, peer).sync_with(("peer", 1)) == 1
    assert await store.get(MAILBOX) is None
    assert await store.version_of(MAILBOX) == (version + 5, FLOOR_DIGEST)
    # the same record offered again (by the peer that was away) is older than the floor
    await _held_record_refused(store, version)


async def _held_record_refused(store: DirectoryStore, version: int) -> None:
    old = Profile(display_name="old")
    entry = sync_entry(
        MAILBOX,
        version=version,
        profile=old,
        ticket=_ticket(),
        owner_signature=authorize_update(OWNER, MAILBOX, old, version).signature,
    )
    assert not await syncer(store, FakePeer(lambda after: b"\xe3\xe3")).apply(entry, b"")


async def test_a_floor_offered_for_nothing_held_is_not_pulled(store: DirectoryStore) -> None:
    """A server holding nothing for a mailbox cannot check a floor (no ticket) and does not
    ask for it, round after round."""
    offered = encode_digest([(MAILBOX, T0, FLOOR_DIGEST)])
    peer = FakePeer(lambda after: offered)
    assert await syncer(store, peer).sync_with(("peer", 1)) == 0
    assert peer.calls == [Command.SYNC_DIGEST]


async def test_forgotten_tombstones_leave_floors(store: DirectoryStore) -> None:
    kw: dict[str, Any] = {"owner_key": OWNER.public_key, "ticket": b"t", "signature": b"s"}
    assert await store.put(MAILBOX, Profile(display_name="a"), version=10, **kw)
    assert await store.delete(MAILBOX, version=20, **kw)
    assert await store.drop_tombstones(older_than=100) == 1
    assert await store.tombstone(MAILBOX) is None
    assert await store.floor(MAILBOX) is not None
    assert await store.digest() == {MAILBOX: (20, FLOOR_DIGEST)}
    for version in (10, 19, 20):
        assert not await store.put(MAILBOX, Profile(display_name="back"), version=version, **kw)
        assert not await store.delete(MAILBOX, version=version, **kw)
    assert await store.put(MAILBOX, Profile(display_name="new"), version=21, **kw)
    assert await store.floor(MAILBOX) is None  # the newer record holds the version now
    assert await store.digest_page(None, 10) == [(MAILBOX, 21, (await store.digest())[MAILBOX][1])]


@pytest.mark.parametrize("tickets", ["real", "self_made"])
async def test_a_peer_is_proven_only_by_an_entry_with_a_valid_ticket(
    store: DirectoryStore, tickets: str
) -> None:
    """A peer in step with us has nothing to pull: asked to prove itself, it is sent for one
    entry both hold. A fake serving entries under tickets its own 'authorities' signed (the
    digest copied from a real server) proves nothing."""
    version = T0 - 10_000
    await _held_record(store, version)
    (_, held_digest) = (await store.digest())[MAILBOX]
    old = Profile(display_name="old")
    ticket = _ticket()
    if tickets == "self_made":
        fakes = [Identity.from_seed(bytes([i + 200]) * 32) for i in range(2)]
        made = mint_ticket(fakes, MAILBOX, OWNER.public_key, issued=T0, expires=T0 + 10**9)
        ticket = made.to_bytes()
    entry = sync_entry(
        MAILBOX,
        version=version,
        profile=old,
        ticket=ticket,
        owner_signature=authorize_update(OWNER, MAILBOX, old, version).signature,
    )
    offered = encode_digest([(MAILBOX, version, held_digest)])
    peer = FakePeer(lambda after: offered, lambda mailbox: encode_pull_item(entry))
    sync = syncer(store, peer)
    proven: list[object] = []
    sync.on_verified = proven.append
    assert await sync.sync_with(("peer", 1)) == 0
    assert proven == []  # not asked to prove itself: no extra request
    assert peer.calls == [Command.SYNC_DIGEST]
    assert await sync.sync_with(("peer", 1), prove=True) == 0
    assert proven == ([("peer", 1)] if tickets == "real" else [])
