"""Anti-entropy between two directory servers' stores, in one process (frames handed over in
memory): how many requests a round takes, and what it brings over."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.directory.client import DirectoryClient
from node.directory.database import InlineDatabase
from node.directory.ownership import QuorumTicketVerifier
from node.directory.store import DirectoryStore
from node.directory.sync import DirectorySync
from node.directory.transport import MAX_FRAME_SIZE, Address, Handler
from records import Identity
from records.directory import Command, MailboxNumber, Profile, authorize_update, mint_ticket
from records.errors import TransportError

pytestmark = pytest.mark.timeout(60)

T0 = 1_767_225_600_000
AUTHORITIES = [Identity.from_seed(bytes([i + 140]) * 32) for i in range(3)]
OWNER = Identity.from_seed(b"batch-owner".ljust(32, b"\x00"))


class FixedClock:
    def now_ms(self) -> int:
        return T0


class Wire:
    """A `StreamTransport` that hands each request to a handler in this process, counting
    requests and refusing answers larger than a frame may be."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.handlers: dict[Address, Handler] = {}
        self.requests: Counter[int] = Counter()
        self.max_frame_size = max_frame_size

    async def serve(self, host: str, port: int, handler: Handler) -> None:
        raise NotImplementedError

    async def request(self, address: Address, frame: bytes, *, within: float) -> bytes:
        self.requests[frame[0]] += 1
        answer = await self.handlers[address](frame, ("client", 0))
        if len(answer) > self.max_frame_size:
            raise TransportError(f"answer of {len(answer)} bytes")
        return answer


@dataclass
class Server:
    store: DirectoryStore
    sync: DirectorySync


@pytest.fixture
async def pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Server, Server, Wire]]:
    # what is counted here is requests, not the disk: skip the avatar files' fsync
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    wire = Wire()
    verifier = QuorumTicketVerifier([a.public_key for a in AUTHORITIES], 2)
    servers = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        db = InlineDatabase.open(root / "db.sqlite3")
        await db.execute("PRAGMA synchronous=OFF")
        store = await DirectoryStore.open(db, root)
        client = DirectoryClient(wire, clock=FixedClock(), clear_text=True)  # type: ignore[arg-type]
        servers.append(Server(store, DirectorySync(store, verifier, client)))
    wire.handlers[("b", 1)] = lambda frame, _: servers[1].sync.handle(frame)
    yield servers[0], servers[1], wire
    for server in servers:
        await server.store.close()


async def fill(store: DirectoryStore, count: int, avatar_size: int) -> None:
    for serial in range(count):
        mailbox = MailboxNumber(6, 5, serial)
        profile = Profile(
            display_name=f"user {serial}",
            avatar_name="a.png",
            avatar=serial.to_bytes(4, "big") * (avatar_size // 4),
        )
        ticket = mint_ticket(
            AUTHORITIES[:2], mailbox, OWNER.public_key, issued=T0 - 1000, expires=T0 + 10**8
        )
        approval = authorize_update(OWNER, mailbox, profile, T0 - serial)
        assert await store.put(
            mailbox,
            profile,
            version=approval.version,
            owner_key=OWNER.public_key,
            ticket=ticket.to_bytes(),
            signature=approval.signature,
        )


async def test_a_round_pulls_records_in_batches(pair: tuple[Server, Server, Wire]) -> None:
    """300 records of 2 KB avatars (about 680 KB in all, more than one frame) reach an empty
    server in a handful of requests. Before, every record was one request: 301 in all."""
    a, b, wire = pair
    await fill(b.store, 300, 2048)
    assert await a.sync.sync_with(("b", 1)) == 300
    assert wire.requests[Command.SYNC_DIGEST] == 1
    assert wire.requests[Command.SYNC_PULL] <= 3, wire.requests
    print(f"one round, 300 records: {dict(wire.requests)} requests")
    assert await a.store.digest() == await b.store.digest()
    held = await a.store.get(MailboxNumber(6, 5, 299))
    assert held is not None
    assert held.profile.avatar == (299).to_bytes(4, "big") * 512
    # nothing newer: the next round is the digest alone
    wire.requests.clear()
    assert await a.sync.sync_with(("b", 1)) == 0
    assert wire.requests == Counter({Command.SYNC_DIGEST: 1})


async def test_a_batch_answer_fits_the_pullers_frame(pair: tuple[Server, Server, Wire]) -> None:
    """A puller whose frames are small still gets every record (fewer per answer)."""
    a, b, wire = pair
    wire.max_frame_size = 64 * 1024
    a.sync.max_answer_bytes = 64 * 1024  # what a's transport takes; b's is 512 KiB
    await fill(b.store, 40, 20_000)
    assert await a.sync.sync_with(("b", 1)) == 40
    assert await a.store.digest() == await b.store.digest()
