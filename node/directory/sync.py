"""Anti-entropy between directory servers (seed 000: "DRD servers may synchronize
themselves"): each server periodically asks each peer found at ``/drd-servers/all/`` for its
digest (mailbox -> version, content digest) and pulls every record or deletion newer than its
own, up to `MAX_PULL_BATCH` of them a request (as many as fit a frame come back). A pulled
change is checked like any change (the owner's signature, the ticket's quorum), so a peer can
offer nothing an owner did not approve; the newest change wins on every server alike.
Deletions travel as tombstones, kept `tombstone_keep_ms`, then as version floors: a floor makes
the servers that know it refuse anything older for good, and removes the older record of a
server that was away if the same owner key approved that record (see `records.drd`). Private
comments never travel: the sync layouts have no field for them (see `records.drd`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from node.directory.client import DirectoryClient
from node.directory.ownership import OwnershipVerifier
from node.directory.store import DirectoryStore, VersionFloor
from node.directory.transport import MAX_FRAME_SIZE, Address
from records.directory import (
    CHALLENGE_SIZE,
    FLOOR_DIGEST,
    TOMBSTONE_DIGEST,
    TRAILER,
    Command,
    MailboxNumber,
    Rank,
    Status,
    Ticket,
    public_fields,
    response_frame,
    supersedes,
)
from records.directory_pb2 import DirectoryEntry
from records.drd import (
    DIGEST_PAGE,
    MAX_PULL_BATCH,
    check_floor,
    check_owner_approval,
    decode_digest,
    decode_digest_request,
    decode_pull,
    decode_pull_request,
    encode_digest,
    encode_digest_request,
    encode_pull,
    encode_pull_item,
    encode_pull_request,
    floor_entry,
    is_floor,
    parse_pulled,
    profile_of,
    sync_entry,
)
from records.errors import DirectoryError

log = logging.getLogger(__name__)

OnChange = Callable[[MailboxNumber], Awaitable[None]]
OnVerified = Callable[[Address], None]
"""Told of a peer that handed over an entry whose owner approval and ticket verified."""

MAX_DIGEST_PAGES = 256
"""Digest pages read from one peer in one round (1,048,576 mailboxes); a peer cannot keep a
server reading forever."""
MAX_REFUSED_PULLS = 256
"""Offered changes that could not be pulled (or were refused) before a round with a peer ends."""
_ANSWER_OVERHEAD = 2 + 16 + 2  # response frame: command, status, challenge; the trailer


class DirectorySync:
    """Both sides of anti-entropy for one server: answering peers, and pulling from them."""

    def __init__(
        self,
        store: DirectoryStore,
        ownership: OwnershipVerifier,
        client: DirectoryClient,
        *,
        on_change: OnChange | None = None,
        clock_skew_ms: int = 5 * 60 * 1000,
        max_answer_bytes: int = MAX_FRAME_SIZE,
        on_verified: OnVerified | None = None,
    ) -> None:
        self.on_verified = on_verified
        self.clock_skew_ms = clock_skew_ms
        self.max_answer_bytes = max_answer_bytes
        """Largest frame this server sends or takes (its transport's limit)."""
        self.store = store
        self.ownership = ownership
        self.client = client
        self.on_change = on_change
        self.stats: Counter[str] = Counter()

    # -- answering -------------------------------------------------------------------------

    async def handle(self, frame: bytes) -> bytes:
        """Answer a SYNC_DIGEST or SYNC_PULL frame."""
        command, body = frame[0], frame[1:]
        challenge = body[:CHALLENGE_SIZE].ljust(CHALLENGE_SIZE, b"\x00")
        try:
            if command == Command.SYNC_DIGEST:
                after = decode_digest_request(body)
                rows = await self.store.digest_page(after, DIGEST_PAGE)
                return response_frame(command, Status.SUCCESS, challenge, encode_digest(rows))
            mailboxes, max_answer = decode_pull_request(body)
            budget = min(max_answer, self.max_answer_bytes) - _ANSWER_OVERHEAD
            items: list[bytes] = []
            used = 0
            for mailbox in mailboxes:
                item = await self._item(mailbox)
                if items and used + len(item) > budget:
                    break  # the puller asks again for the rest
                items.append(item)
                used += len(item)
            return response_frame(command, Status.SUCCESS, challenge, encode_pull(items))
        except DirectoryError as exc:
            return response_frame(command, Status(exc.status), challenge, TRAILER)

    async def _item(self, mailbox: MailboxNumber) -> bytes:
        """The pull item of what is held for `mailbox`: record, deletion or nothing."""
        stored = await self.store.get(mailbox)
        if stored is not None:
            entry = sync_entry(
                mailbox,
                version=stored.version,
                profile=stored.profile,
                ticket=stored.ticket,
                owner_signature=stored.signature,
            )
            return encode_pull_item(entry, stored.profile.avatar or b"")
        gone = await self.store.tombstone(mailbox)
        if gone is not None:
            entry = sync_entry(
                mailbox,
                version=gone.version,
                profile=None,
                ticket=gone.ticket,
                owner_signature=gone.signature,
            )
            return encode_pull_item(entry)
        floor = await self.store.floor(mailbox)
        if floor is not None:
            entry = floor_entry(
                mailbox,
                version=floor.version,
                owner_key=floor.owner_key,
                owner_signature=floor.signature,
            )
            return encode_pull_item(entry)
        return encode_pull_item(None)

    # -- pulling ---------------------------------------------------------------------------

    async def sync_with(self, peer: Address, *, prove: bool = False) -> int:
        """Pull from `peer` every change newer than ours; returns how many were applied.
        Raises `TransportError` or `DirectoryError` if the peer cannot be read. A pulled entry
        that verifies proves the peer holds real, ticketed records (`on_verified`); with
        `prove`, a round that pulled none asks for one entry both hold, only to check it.

        The peer is not trusted to be finite: its digest is read page by page (rows in
        strictly increasing mailbox order, at most `MAX_DIGEST_PAGES` pages a round) and
        compared as it comes, what is newer pulled `MAX_PULL_BATCH` at a time, and a peer
        whose offers keep failing is left after `MAX_REFUSED_PULLS` of them, so memory and
        time per round stay bounded."""
        ours = await self.store.digest()
        tally = _Tally()
        after: MailboxNumber | None = None
        wanted: list[MailboxNumber] = []
        for _ in range(MAX_DIGEST_PAGES):
            status, body = await self.client.call(
                peer, Command.SYNC_DIGEST, encode_digest_request(self.client.challenge(), after)
            )
            if status != Status.SUCCESS:
                raise DirectoryError(f"peer answered the digest with {status}")
            page = decode_digest(body)
            if len(page) > DIGEST_PAGE:
                raise DirectoryError(f"peer sent {len(page)} digest rows, a page is {DIGEST_PAGE}")
            for mailbox, version, digest in page:
                if after is not None and mailbox <= after:
                    raise DirectoryError("peer's digest rows are not in increasing order")
                after = mailbox
                held = ours.get(mailbox)
                if _wanted(held, (version, digest)):
                    wanted.append(mailbox)
                elif tally.sample is None and digest != FLOOR_DIGEST and held == (version, digest):
                    tally.sample = mailbox  # held alike here and there: a spot check
                if len(wanted) == MAX_PULL_BATCH:
                    await self._pull(peer, wanted, tally)
                    wanted = []
                    if tally.refused > MAX_REFUSED_PULLS:
                        return self._give_up(peer, tally)
            if len(page) < DIGEST_PAGE:
                break
        else:
            self.stats["digests_cut_off"] += 1
            log.warning(
                "%s:%d digest longer than %d pages; rest next round", *peer, MAX_DIGEST_PAGES
            )
        if wanted:
            await self._pull(peer, wanted, tally)
            if tally.refused > MAX_REFUSED_PULLS:
                return self._give_up(peer, tally)
        if prove and not tally.verified and tally.sample is not None:
            await self._spot_check(peer, tally.sample, tally)
        if tally.verified and self.on_verified is not None:
            self.on_verified(peer)
        self.stats["applied"] += tally.applied
        return tally.applied

    def _give_up(self, peer: Address, tally: _Tally) -> int:
        self.stats["peers_given_up"] += 1
        log.warning("%s:%d offers changes it cannot give; left this round", *peer)
        self.stats["applied"] += tally.applied
        return tally.applied

    async def _pull(self, peer: Address, mailboxes: list[MailboxNumber], tally: _Tally) -> None:
        """Pull `mailboxes` (at most `MAX_PULL_BATCH`), as many requests as the answers'
        size needs; every item applied or counted refused."""
        rest = mailboxes
        while rest:
            request = encode_pull_request(self.client.challenge(), rest, self.max_answer_bytes)
            try:
                status, body = await self.client.call(peer, Command.SYNC_PULL, request)
                items = decode_pull(body) if status == Status.SUCCESS else []
                if not items or len(items) > len(rest):
                    raise DirectoryError(f"peer answered a pull of {len(rest)} with {status}")
            except DirectoryError as exc:
                self.stats["refused"] += len(rest)
                tally.refused += len(rest)
                log.warning("pull of %d from %s:%d failed: %s", len(rest), *peer, exc)
                return
            for mailbox, (data, avatar) in zip(rest, items, strict=False):
                try:
                    if data and await self._apply_pulled(mailbox, data, avatar, tally):
                        tally.applied += 1
                        continue
                except DirectoryError as exc:
                    self.stats["refused"] += 1
                    log.warning("refused %s from %s:%d: %s", mailbox, *peer, exc)
                tally.refused += 1
            rest = rest[len(items) :]

    async def _apply_pulled(
        self, mailbox: MailboxNumber, data: bytes, avatar: bytes, tally: _Tally
    ) -> bool:
        entry = parse_pulled(data)
        if entry.mailbox != mailbox.to_bytes():
            raise DirectoryError("the peer sent another mailbox")
        changed = await self.apply(entry, avatar)
        tally.verified |= not is_floor(entry)  # it raised otherwise
        return changed

    async def _spot_check(self, peer: Address, mailbox: MailboxNumber, tally: _Tally) -> None:
        """Ask `peer` for one entry both hold, to check its owner approval and ticket."""
        request = encode_pull_request(self.client.challenge(), [mailbox], self.max_answer_bytes)
        try:
            status, body = await self.client.call(peer, Command.SYNC_PULL, request)
            items = decode_pull(body) if status == Status.SUCCESS else []
            if len(items) != 1 or not items[0][0]:
                raise DirectoryError(f"peer answered a spot check with {status}")
            entry = parse_pulled(items[0][0])
            if entry.mailbox != mailbox.to_bytes() or is_floor(entry):
                raise DirectoryError("the peer sent another entry")
            await self._verify(entry)
        except DirectoryError as exc:
            self.stats["spot_checks_failed"] += 1
            log.info("spot check of %s at %s:%d failed: %s", mailbox, *peer, exc)
            return
        tally.verified = True

    async def _verify(self, entry: DirectoryEntry) -> tuple[MailboxNumber, Ticket]:
        """The mailbox and ticket of an entry its owner approved, under a ticket the
        authorities signed, dated no later than now; `DirectoryError` otherwise."""
        mailbox, ticket = check_owner_approval(entry)
        if entry.version > self.client.clock.now_ms() + self.clock_skew_ms:
            raise DirectoryError("a change dated in the future")  # it would freeze the record
        await self.ownership.verify(ticket, entry.version)  # owned when the change was made
        return mailbox, ticket

    async def apply(self, entry: DirectoryEntry, avatar: bytes) -> bool:
        """Store a change from a peer if the owner approved it and it is newer than ours."""
        if is_floor(entry):
            return await self._apply_floor(entry)
        mailbox, ticket = await self._verify(entry)
        if entry.deleted:
            changed = await self.store.delete(
                mailbox,
                version=entry.version,
                owner_key=ticket.owner_key,
                ticket=entry.ticket,
                signature=entry.owner_signature,
            )
        else:
            profile = profile_of(entry, avatar)
            if public_fields(profile) != entry.fields:
                raise DirectoryError("the fields are not in canonical order")
            changed = await self.store.put(
                mailbox,
                profile,
                version=entry.version,
                owner_key=ticket.owner_key,
                ticket=entry.ticket,
                signature=entry.owner_signature,
            )
        if changed and self.on_change is not None:
            await self.on_change(mailbox)
        return changed

    async def _apply_floor(self, entry: DirectoryEntry) -> bool:
        """A version floor: it removes only an older record of ours that its owner key had
        approved (the only proof a floor can give without its ticket)."""
        mailbox = check_floor(entry)
        if entry.version > self.client.clock.now_ms() + self.clock_skew_ms:
            raise DirectoryError("a deletion dated in the future")
        floor = VersionFloor(mailbox, entry.version, entry.owner_key, entry.owner_signature)
        changed = await self.store.apply_floor(floor)
        if changed:
            self.stats["floors_applied"] += 1
            if self.on_change is not None:
                await self.on_change(mailbox)
        return changed


class _Tally:
    """What one round with a peer has applied, refused and verified so far."""

    def __init__(self) -> None:
        self.applied = 0
        self.refused = 0
        self.verified = False
        """An entry from the peer verified (owner approval and ticket)."""
        self.sample: MailboxNumber | None = None
        """A mailbox both hold alike, for a spot check."""


def _wanted(held: Rank | None, offered: Rank) -> bool:
    """Whether a peer's digest row is worth pulling, given what is held for the mailbox."""
    if offered[1] == FLOOR_DIGEST:
        # a floor carries no ticket: it can only take away an older record of ours
        return (
            held is not None and held[1] not in (TOMBSTONE_DIGEST, FLOOR_DIGEST) and held < offered
        )
    return supersedes(offered, held)
