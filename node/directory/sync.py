"""Anti-entropy between directory servers (seed 000: "DRD servers may synchronize
themselves"): each server periodically asks each peer found at ``/drd-servers/all/`` for its
digest (mailbox -> version, content digest) and pulls every record or deletion newer than its
own. A pulled change is checked like any change (the owner's signature, the ticket's quorum),
so a peer can offer nothing an owner did not approve; the newest change wins on every server
alike. Deletions travel as tombstones, forgotten after `tombstone_keep_ms`. Private comments
never travel: the sync layouts have no field for them (see `records.drd`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from node.directory.client import DirectoryClient
from node.directory.ownership import OwnershipVerifier
from node.directory.store import DirectoryStore
from node.directory.transport import Address
from records.directory import (
    CHALLENGE_SIZE,
    TRAILER,
    Command,
    DirectoryError,
    MailboxNumber,
    Status,
    public_fields,
    response_frame,
)
from records.directory_pb2 import DirectoryEntry
from records.drd import (
    DIGEST_PAGE,
    check_owner_approval,
    decode_digest,
    decode_digest_request,
    decode_pull,
    decode_pull_request,
    encode_digest,
    encode_digest_request,
    encode_pull,
    encode_pull_request,
    profile_of,
    sync_entry,
)

log = logging.getLogger(__name__)

OnChange = Callable[[MailboxNumber], Awaitable[None]]

MAX_DIGEST_PAGES = 256
"""Digest pages read from one peer in one round (1,048,576 mailboxes); a peer cannot keep a
server reading forever."""
MAX_REFUSED_PULLS = 256
"""Offered changes that could not be pulled (or were refused) before a round with a peer ends."""


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
    ) -> None:
        self.clock_skew_ms = clock_skew_ms
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
            mailbox = decode_pull_request(body)
            stored = await self.store.get(mailbox)
            if stored is not None:
                entry = sync_entry(
                    mailbox,
                    version=stored.version,
                    profile=stored.profile,
                    ticket=stored.ticket,
                    owner_signature=stored.signature,
                )
                avatar = stored.profile.avatar or b""
            else:
                gone = await self.store.tombstone(mailbox)
                if gone is None:
                    return response_frame(command, Status.DATABASE_RETURNED_ZERO_RECORDS, challenge)
                entry = sync_entry(
                    mailbox,
                    version=gone.version,
                    profile=None,
                    ticket=gone.ticket,
                    owner_signature=gone.signature,
                )
                avatar = b""
            return response_frame(command, Status.SUCCESS, challenge, encode_pull(entry, avatar))
        except DirectoryError as exc:
            return response_frame(command, exc.status, challenge, TRAILER)

    # -- pulling ---------------------------------------------------------------------------

    async def sync_with(self, peer: Address) -> int:
        """Pull from `peer` every change newer than ours; returns how many were applied.
        Raises `TransportError` or `DirectoryError` if the peer cannot be read.

        The peer is not trusted to be finite: its digest is read page by page (rows in
        strictly increasing mailbox order, at most `MAX_DIGEST_PAGES` pages a round) and
        compared as it comes, and a peer whose offers keep failing is left after
        `MAX_REFUSED_PULLS` of them, so memory and time per round stay bounded."""
        ours = await self.store.digest()
        applied = refused = 0
        after: MailboxNumber | None = None
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
                if held is not None and held >= (version, digest):
                    continue
                try:
                    if await self._pull(peer, mailbox):
                        applied += 1
                        continue
                except DirectoryError as exc:
                    self.stats["refused"] += 1
                    log.warning("refused %s from %s:%d: %s", mailbox, *peer, exc)
                refused += 1
                if refused > MAX_REFUSED_PULLS:
                    self.stats["peers_given_up"] += 1
                    log.warning("%s:%d offers changes it cannot give; left this round", *peer)
                    self.stats["applied"] += applied
                    return applied
            if len(page) < DIGEST_PAGE:
                break
        else:
            self.stats["digests_cut_off"] += 1
            log.warning(
                "%s:%d digest longer than %d pages; rest next round", *peer, MAX_DIGEST_PAGES
            )
        self.stats["applied"] += applied
        return applied

    async def _pull(self, peer: Address, mailbox: MailboxNumber) -> bool:
        status, body = await self.client.call(
            peer, Command.SYNC_PULL, encode_pull_request(self.client.challenge(), mailbox)
        )
        if status != Status.SUCCESS:
            return False
        entry, avatar = decode_pull(body)
        if entry.mailbox != mailbox.to_bytes():
            raise DirectoryError("the peer sent another mailbox")
        return await self.apply(entry, avatar)

    async def apply(self, entry: DirectoryEntry, avatar: bytes) -> bool:
        """Store a change from a peer if the owner approved it and it is newer than ours."""
        mailbox, ticket = check_owner_approval(entry)
        if entry.version > self.client.clock.now_ms() + self.clock_skew_ms:
            raise DirectoryError("a change dated in the future")  # it would freeze the record
        await self.ownership.verify(ticket, entry.version)  # owned when the change was made
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
