"""The directory's request handler: one request frame in, one response frame out.

Order of checks, so that a refused request changes nothing: the layout (198), then the session
(40, ours), then payment (153 / 179, seed 000), then the database (250, or 10 if it fails; a
search that finds nothing is 9). A bad parameter is answered before any payment is taken.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable

from node.config import Clock
from node.directory.ownership import NoCharge, OwnershipVerifier, PaymentVerifier
from node.directory.store import DirectoryStore, Session
from records.directory import (
    CHALLENGE_SIZE,
    SESSION_SIZE,
    TOMBSTONE_DIGEST,
    TRAILER,
    Authorization,
    Command,
    DeleteRequest,
    DirectoryError,
    MailboxNumber,
    OpenSession,
    SearchRequest,
    Status,
    Ticket,
    UpdateRequest,
    delete_payload,
    profile_digest,
    response_frame,
    update_payload,
)
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

    async def handle(self, frame: bytes) -> bytes:
        """Answer one request frame (command byte, then the body)."""
        if not frame:
            return self._answer(0, Status.INVALID_PARAMETER, bytes(CHALLENGE_SIZE))
        command, body = frame[0], frame[1:]
        challenge = body[:CHALLENGE_SIZE].ljust(CHALLENGE_SIZE, b"\x00")
        try:
            if command == Command.OPEN_SESSION:
                status, answer = await self._open_session(body)
            elif command == Command.UPDATE:
                status, answer = await self._update(body), TRAILER
            elif command == Command.DELETE:
                status, answer = await self._delete(body), TRAILER
            elif command == Command.SEARCH:
                status, answer = await self._search(body)
            else:
                status, answer = Status.INVALID_PARAMETER, TRAILER
        except DirectoryError as exc:
            log.debug("directory request %d refused: %s", command, exc)
            status, answer = exc.status, TRAILER
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

    async def _session(self, key: bytes) -> Session:
        now = self.clock.now_ms()
        session = await self.store.session(key, now)
        if session is None:
            raise DirectoryError("unknown or expired session", Status.NOT_AUTHORIZED)
        # a session counts whole minutes (seed 000 SESSION); it ends with its ticket even so
        if Ticket.from_bytes(session.ticket).expires <= now:
            raise DirectoryError("the session's ticket expired", Status.NOT_AUTHORIZED)
        return session

    async def _open_session(self, body: bytes) -> tuple[Status, bytes]:
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

    async def _update(self, body: bytes) -> Status:
        request = UpdateRequest.decode(body)
        session = await self._session(request.session)
        approval = self._authorized(request.authorization)
        digest = profile_digest(session.mailbox, request.profile)
        payload = update_payload(session.mailbox, approval.version, digest)
        if not verify_signature(session.owner_key, payload, approval.signature):
            raise DirectoryError("the owner's signature does not verify", Status.NOT_AUTHORIZED)
        held = await self.store.version_of(session.mailbox)
        if held is not None and held >= (approval.version, digest):
            raise DirectoryError("a newer version is held")  # nothing changes: 198
        paid = await self.payments.charge(Command.UPDATE, session.mailbox, request.payment)
        if paid != Status.SUCCESS:
            return paid
        stored = await self.store.put(
            session.mailbox,
            request.profile,
            version=approval.version,
            owner_key=session.owner_key,
            ticket=session.ticket,
            signature=approval.signature,
            comment=request.comment,
        )
        if not stored:  # a newer version arrived meanwhile
            raise DirectoryError("a newer version is held")
        await self._changed(session.mailbox)
        return Status.SUCCESS

    async def _delete(self, body: bytes) -> Status:
        request = DeleteRequest.decode(body)
        session = await self._session(request.session)
        approval = self._authorized(request.authorization)
        payload = delete_payload(session.mailbox, approval.version)
        if not verify_signature(session.owner_key, payload, approval.signature):
            raise DirectoryError("the owner's signature does not verify", Status.NOT_AUTHORIZED)
        if await self.store.get(session.mailbox) is None:
            return Status.DATABASE_RETURNED_ZERO_RECORDS
        held = await self.store.version_of(session.mailbox)
        if held is not None and held >= (approval.version, TOMBSTONE_DIGEST):
            raise DirectoryError("a newer version is held")
        paid = await self.payments.charge(Command.DELETE, session.mailbox, request.payment)
        if paid != Status.SUCCESS:
            return paid
        deleted = await self.store.delete(
            session.mailbox,
            version=approval.version,
            owner_key=session.owner_key,
            ticket=session.ticket,
            signature=approval.signature,
        )
        if not deleted:
            raise DirectoryError("a newer version is held")
        await self._changed(session.mailbox)
        return Status.SUCCESS

    async def _search(self, body: bytes) -> tuple[Status, bytes]:
        # Searches read public information: the session field is carried (seed 000's layout)
        # but not required.
        request = SearchRequest.decode(body)
        paid = await self.payments.charge(Command.SEARCH, None, request.payment)
        if paid != Status.SUCCESS:
            return paid, TRAILER
        results = await self.store.search(request)
        if not results.rows:
            return Status.DATABASE_RETURNED_ZERO_RECORDS, TRAILER
        return Status.SUCCESS, results.encode() + TRAILER

    async def _changed(self, mailbox: MailboxNumber) -> None:
        if self.on_change is not None:
            try:
                await self.on_change(mailbox)
            except Exception:
                log.exception("publishing the change of %s failed", mailbox)
