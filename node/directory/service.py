"""The directory's request handler: one request frame in, one response frame out.

Order of checks, so that a refused request changes nothing: the layout (198), then the session
(40, ours), then payment (153 / 179, seed 000), then the database (250, or 10 if it fails; a
search that finds nothing is 9). A bad parameter is answered before any payment is taken.

Over a sealed channel (`node.directory.channels`), a session opened over it is the only one
usable over it, and the channel's keys end with that session.

A change is paid for inside the store's change (`DirectoryStore.put`'s `charge`): once the store
has found it newer than what it holds, with every other change waiting, so a newer change cannot
slip in between payment and write; if the write still fails, the payment is given back, as for a
search the database fails.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable

from node.config import Clock
from node.directory.channels import Channel
from node.directory.ownership import NoCharge, OwnershipVerifier, PaymentVerifier
from node.directory.store import Charge, DirectoryStore, Session
from records.directory import (
    CHALLENGE_SIZE,
    SESSION_SIZE,
    TRAILER,
    Authorization,
    Command,
    DeleteRequest,
    MailboxNumber,
    OpenSession,
    Payment,
    SearchRequest,
    Status,
    Ticket,
    UpdateRequest,
    delete_payload,
    profile_digest,
    response_frame,
    update_payload,
)
from records.errors import DirectoryError
from records.identity import verify_signature

log = logging.getLogger(__name__)

DEFAULT_SESSION_MINUTES = 30
DEFAULT_CLOCK_SKEW_MS = 5 * 60 * 1000
MAX_REMEMBERED_CHALLENGES = 10_000

OnChange = Callable[[MailboxNumber], Awaitable[None]]
"""Called after a record changed (to publish it, to tell peers)."""


class DirectoryService:
    """Serves OPEN_SESSION, UPDATE, DELETE and SEARCH frames against a `DirectoryStore`."""

    def __init__(
        self,
        store: DirectoryStore,
        ownership: OwnershipVerifier,
        clock: Clock,
        *,
        payments: PaymentVerifier | None = None,
        session_minutes: int = DEFAULT_SESSION_MINUTES,
        clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
        token: Callable[[int], bytes] = os.urandom,
        on_change: OnChange | None = None,
    ) -> None:
        if session_minutes < 1:
            raise ValueError("sessions last at least a minute")
        self.store = store
        self.ownership = ownership
        self.payments: PaymentVerifier = payments or NoCharge()
        self.clock = clock
        self.session_minutes = session_minutes
        self.clock_skew_ms = clock_skew_ms
        self.token = token
        self.on_change = on_change
        self.stats: Counter[str] = Counter()
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # open-session challenges, by expiry

    async def handle(self, frame: bytes, channel: Channel | None = None) -> bytes:
        """Answer one request frame (command byte, then the body), which came over `channel`
        (None: in clear, for tests)."""
        if not frame:
            return self._answer(0, Status.INVALID_PARAMETER, bytes(CHALLENGE_SIZE))
        command, body = frame[0], frame[1:]
        challenge = body[:CHALLENGE_SIZE].ljust(CHALLENGE_SIZE, b"\x00")
        try:
            if command == Command.OPEN_SESSION:
                status, answer = await self._open_session(body, channel)
            elif command == Command.UPDATE:
                status, answer = await self._update(body, channel), TRAILER
            elif command == Command.DELETE:
                status, answer = await self._delete(body, channel), TRAILER
            elif command == Command.SEARCH:
                status, answer = await self._search(body)
            else:
                status, answer = Status.INVALID_PARAMETER, TRAILER
        except DirectoryError as exc:
            log.debug("directory request %d refused: %s", command, exc)
            status, answer = Status(exc.status), TRAILER
        except (sqlite3.Error, OSError):
            # seed 000: ERROR_DATABASE_REPORTED_AN_ERROR; avatar files are part of the database
            log.exception("directory database failed")
            status, answer = Status.DATABASE_REPORTED_AN_ERROR, TRAILER
        return self._answer(command, status, challenge, answer)

    def _answer(
        self, command: int, status: Status, challenge: bytes, body: bytes = TRAILER
    ) -> bytes:
        self.stats[f"answers.{command}.{int(status)}"] += 1
        return response_frame(command & 0x7F, status, challenge, body)

    async def _session(self, key: bytes, channel: Channel | None) -> Session:
        now = self.clock.now_ms()
        if channel is not None and channel.session != key:
            raise DirectoryError("a session opened over another channel", Status.NOT_AUTHORIZED)
        session = await self.store.session(key, now)
        if session is None:
            raise DirectoryError("unknown or expired session", Status.NOT_AUTHORIZED)
        # a session counts whole minutes (seed 000 SESSION); it ends with its ticket even so
        if Ticket.from_bytes(session.ticket).expires <= now:
            raise DirectoryError("the session's ticket expired", Status.NOT_AUTHORIZED)
        return session

    async def _open_session(self, body: bytes, channel: Channel | None) -> tuple[Status, bytes]:
        request = OpenSession.decode(body)
        now = self.clock.now_ms()
        if abs(request.timestamp - now) > self.clock_skew_ms:
            raise DirectoryError("open-session timestamp too far from now", Status.NOT_AUTHORIZED)
        if not request.signature_ok():
            raise DirectoryError("owner signature does not verify", Status.NOT_AUTHORIZED)
        self._forget_challenges(now)
        if request.challenge in self._seen:
            raise DirectoryError("open-session request replayed", Status.NOT_AUTHORIZED)
        await self.ownership.verify(request.ticket, now)
        self._seen[request.challenge] = request.timestamp + self.clock_skew_ms
        if len(self._seen) > MAX_REMEMBERED_CHALLENGES:
            self._seen.popitem(last=False)
        key = self.token(SESSION_SIZE)
        # a session ends with the ticket that opened it, if that comes first
        minutes = max(1, min(self.session_minutes, (request.ticket.expires - now) // 60_000))
        await self.store.open_session(
            key,
            request.ticket.mailbox,
            request.ticket.owner_key,
            request.ticket.to_bytes(),
            minutes=minutes,
            now=now,
        )
        if channel is not None:  # seed 000 step 5: the key of the key exchange ends with it
            channel.bind(key, now + minutes * 60_000)
        return Status.SUCCESS, key + TRAILER

    def _forget_challenges(self, now: int) -> None:
        for challenge, expires in list(self._seen.items()):
            if expires < now:
                del self._seen[challenge]

    def _authorized(self, authorization: Authorization | None) -> Authorization:
        """The owner's approval must be present and dated near now (its signature is checked
        against the session's owner key by the caller)."""
        if authorization is None:
            raise DirectoryError("an update or delete carries the owner's version and signature")
        if abs(authorization.version - self.clock.now_ms()) > self.clock_skew_ms:
            raise DirectoryError("the change's version is too far from now")
        return authorization

    async def _update(self, body: bytes, channel: Channel | None) -> Status:
        request = UpdateRequest.decode(body)
        session = await self._session(request.session, channel)
        approval = self._authorized(request.authorization)
        digest = profile_digest(session.mailbox, request.profile)
        payload = update_payload(session.mailbox, approval.version, digest)
        if not verify_signature(session.owner_key, payload, approval.signature):
            raise DirectoryError("the owner's signature does not verify", Status.NOT_AUTHORIZED)

        def put(charge: Charge) -> Awaitable[bool]:
            return self.store.put(
                session.mailbox,
                request.profile,
                version=approval.version,
                owner_key=session.owner_key,
                ticket=session.ticket,
                signature=approval.signature,
                comment=request.comment,
                charge=charge,
            )

        if not await self._paid(Command.UPDATE, session.mailbox, request.payment, put):
            raise DirectoryError("a newer version is held")  # nothing changes, nothing paid: 198
        await self._changed(session.mailbox)
        return Status.SUCCESS

    async def _delete(self, body: bytes, channel: Channel | None) -> Status:
        request = DeleteRequest.decode(body)
        session = await self._session(request.session, channel)
        approval = self._authorized(request.authorization)
        payload = delete_payload(session.mailbox, approval.version)
        if not verify_signature(session.owner_key, payload, approval.signature):
            raise DirectoryError("the owner's signature does not verify", Status.NOT_AUTHORIZED)
        if await self.store.get(session.mailbox) is None:
            return Status.DATABASE_RETURNED_ZERO_RECORDS

        def delete(charge: Charge) -> Awaitable[bool]:
            return self.store.delete(
                session.mailbox,
                version=approval.version,
                owner_key=session.owner_key,
                ticket=session.ticket,
                signature=approval.signature,
                charge=charge,
            )

        if not await self._paid(Command.DELETE, session.mailbox, request.payment, delete):
            raise DirectoryError("a newer version is held")
        await self._changed(session.mailbox)
        return Status.SUCCESS

    async def _paid(
        self,
        command: Command,
        mailbox: MailboxNumber,
        payment: Payment | None,
        change: Callable[[Charge], Awaitable[bool]],
    ) -> bool:
        """Run `change`, which takes payment through the `Charge` it is given (or raises
        `DirectoryError` with the payment's 153 / 179); give the payment back if the change
        then fails or is not made."""
        charged = False

        async def charge() -> None:
            nonlocal charged
            status = await self.payments.charge(command, mailbox, payment)
            if status != Status.SUCCESS:
                raise DirectoryError(f"payment refused with {int(status)}", status)
            charged = True

        try:
            changed = await change(charge)
        except BaseException:
            if charged:
                await self._refund(command, mailbox, payment)
            raise
        if charged and not changed:
            await self._refund(command, mailbox, payment)
        return changed

    async def _refund(
        self, command: Command, mailbox: MailboxNumber | None, payment: Payment | None
    ) -> None:
        try:
            await self.payments.refund(command, mailbox, payment)
        except Exception:
            log.exception("giving back the payment of a failed request %d failed", command)
        else:
            self.stats["refunds"] += 1

    async def _search(self, body: bytes) -> tuple[Status, bytes]:
        # Searches read public information: the session field is carried (seed 000's layout)
        # but not required.
        request = SearchRequest.decode(body)
        paid = await self.payments.charge(Command.SEARCH, None, request.payment)
        if paid != Status.SUCCESS:
            return paid, TRAILER
        try:
            results = await self.store.search(request)
        except (sqlite3.Error, OSError):
            await self._refund(Command.SEARCH, None, request.payment)
            raise
        if not results.rows:
            return Status.DATABASE_RETURNED_ZERO_RECORDS, TRAILER
        return Status.SUCCESS, results.encode() + TRAILER

    async def _changed(self, mailbox: MailboxNumber) -> None:
        if self.on_change is not None:
            try:
                await self.on_change(mailbox)
            except Exception:
                log.exception("publishing the change of %s failed", mailbox)
