"""What a malicious or broken peer can do to a syncing directory server: nothing unbounded.

A peer answers digests and pulls however it likes; the server pulling from it must stay within
bounded memory and time (rows in order, a bounded number of pages and refusals per round) and
store only what owners approved (never a deleted record brought back, never another mailbox's
entry in place of the one asked for)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.directory import sync as sync_module
from node.directory.database import InlineDatabase
from node.directory.ownership import QuorumTicketVerifier
from node.directory.store import DirectoryStore
from node.directory.sync import DirectorySync
from records import Identity
from records.directory import (
    Command,
    DirectoryError,
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
    sync_entry,
)

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
