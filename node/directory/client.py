"""A typed client of directory servers: open a session with a ticket, update, delete, search."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node.config import Clock, SystemClock
from node.directory.transport import Address, StreamTransport, TcpStreamTransport
from node.server import DHTNode
from records import Identity
from records.directory import (
    CHALLENGE_SIZE,
    Command,
    Condition,
    DeleteRequest,
    MailboxNumber,
    Payment,
    Profile,
    SearchRequest,
    SearchResults,
    Status,
    Ticket,
    UpdateRequest,
    authorize_delete,
    authorize_update,
    open_session_request,
    parse_response,
    request_frame,
)
from records.directory_pb2 import DirectoryEntry
from records.drd import DrdValidator, TicketCheck, drd_key, entry_of
from records.errors import DirectoryError, DirectoryRefused

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClientSession:
    """A session opened on one server for one mailbox by its owner."""

    server: Address
    key: bytes
    owner: Identity
    mailbox: MailboxNumber


class DirectoryClient:
    """Talks to directory servers over a `StreamTransport` (TCP by default)."""

    def __init__(
        self,
        transport: StreamTransport | None = None,
        *,
        clock: Clock | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        token: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.transport: StreamTransport = transport or TcpStreamTransport()
        self.clock: Clock = clock or SystemClock()
        self.timeout = timeout
        self.token = token

    def challenge(self) -> bytes:
        """A fresh 16-byte challenge."""
        return self.token(CHALLENGE_SIZE)

    async def call(self, server: Address, command: Command, body: bytes) -> tuple[int, bytes]:
        """Send one request; (status, response body). Raises `TransportError` if unanswered
        and `DirectoryError` if the answer is not a response to it."""
        answer = await self.transport.request(
            server, request_frame(command, body), within=self.timeout
        )
        answered, status, challenge, rest = parse_response(answer)
        if answered != command or challenge != body[:CHALLENGE_SIZE]:
            raise DirectoryError("the answer does not match the request")
        return status, rest

    async def _expect(self, server: Address, command: Command, body: bytes) -> bytes:
        status, rest = await self.call(server, command, body)
        if status != Status.SUCCESS:
            raise refused(command, status)
        return rest

    async def open_session(self, server: Address, owner: Identity, ticket: Ticket) -> ClientSession:
        """Present `ticket` (proving `owner` holds the key it names); returns the session."""
        request = open_session_request(owner, ticket, self.challenge(), self.clock.now_ms())
        rest = await self._expect(server, Command.OPEN_SESSION, request.encode())
        if len(rest) != 18:
            raise DirectoryError("an open-session answer is a 16-byte session and E3 E3")
        return ClientSession(server, rest[:16], owner, ticket.mailbox)

    async def update(
        self,
        session: ClientSession,
        profile: Profile,
        *,
        comment: str | None = None,
        payment: Payment | None = None,
        version: int | None = None,
    ) -> None:
        """Replace the session's mailbox record with `profile`, signed by the owner at
        `version` (default now; give every server the same to register one change with
        several). `DirectoryRefused` if refused."""
        version = self.clock.now_ms() if version is None else version
        approval = authorize_update(session.owner, session.mailbox, profile, version)
        request = UpdateRequest(self.challenge(), session.key, profile, payment, comment, approval)
        await self._expect(session.server, Command.UPDATE, request.encode())

    async def delete(
        self,
        session: ClientSession,
        *,
        payment: Payment | None = None,
        version: int | None = None,
    ) -> None:
        """Delete the session's mailbox record."""
        version = self.clock.now_ms() if version is None else version
        approval = authorize_delete(session.owner, session.mailbox, version)
        request = DeleteRequest(self.challenge(), session.key, payment, approval)
        await self._expect(session.server, Command.DELETE, request.encode())

    async def search(
        self,
        server: Address,
        columns: Sequence[int],
        conditions: Sequence[Condition] = (),
        *,
        limit_kb: int = 64,
        page: int = 0,
        payment: Payment | None = None,
        session: bytes = bytes(16),
    ) -> SearchResults:
        """One page of matching records (no rows if none match)."""
        request = SearchRequest(
            self.challenge(), session, tuple(columns), tuple(conditions), limit_kb, page, payment
        )
        status, rest = await self.call(server, Command.SEARCH, request.encode())
        if status == Status.DATABASE_RETURNED_ZERO_RECORDS:
            return SearchResults(tuple(columns), ())
        if status != Status.SUCCESS:
            raise refused(Command.SEARCH, status)
        if rest[-2:] != b"\xe3\xe3":
            raise DirectoryError("search results without the E3 E3 trailer")
        return SearchResults.decode(rest[:-2])


async def lookup_entry(
    node: DHTNode, mailbox: MailboxNumber, *, ticket_check: TicketCheck | None = None
) -> DirectoryEntry | None:
    """The published `DirectoryEntry` of `mailbox` (public fields, avatar hash, who holds it),
    got through any DHT node; None if none is published. Deleted mailboxes come back with
    ``deleted`` set.

    A node without the ticket authorities' keys cannot tell their tickets from self-made ones;
    pass `ticket_check` (e.g. `QuorumTicketVerifier.check`) to have the entry refused with
    `InvalidRecord("bad_ticket")` unless a quorum of them signed its ticket."""
    key = drd_key(mailbox)
    record = await node.get(key)
    if record is None or not record.values:
        return None
    if ticket_check is not None:
        DrdValidator(ticket_check=ticket_check).validate(key, record, node.clock.now_ms())
    return entry_of(record)


def refused(command: Command, status: int) -> DirectoryRefused:
    """The error for a server's answer `status` (not success) to `command`."""
    try:
        name = Status(status).name
    except ValueError:
        name = "UNKNOWN"
    return DirectoryRefused(f"{command.name} refused with status {status} ({name})", status)
