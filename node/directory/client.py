"""A typed client of directory servers: open a session with a ticket, update, delete, search.

Every request and answer travels sealed (`records.drd_channel`) under a key agreed with the
server through the key exchange (`node.directory.keys`), seed 000's workflow:

1. the server's node takes keys from its `KeyExchange` (`DirectoryServer`);
2. `KeyAgreement.agree` sends it a fresh 32-byte key in parts through key servers;
3. and 4. the mailbox and its ticket (`records.directory.mint_ticket`, RAIDA's get_ticket);
5. `open_session` opens a channel of its own with that key and sends the ticket over it
   ("encryption type 6"); the session's updates and deletes use that channel, whose keys end
   with the session. Searches (and sync between servers) use one channel per server.

`clear_text=True` sends clear frames instead: for tests only (servers refuse them unless they
run with `DirectoryConfig.clear_text`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from node.config import Clock, SystemClock
from node.directory.keys import KeyAgreement
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
from records.drd_channel import ChannelKeys, ClientChannel
from records.errors import DirectoryError, DirectoryRefused, UsageError

DEFAULT_TIMEOUT = 10.0


class SealedChannel:
    """A client's channel to one server: its end of the frames, one request at a time (the
    server refuses a request numbered below one it took)."""

    def __init__(self, key: bytes) -> None:
        self.ends = ClientChannel(ChannelKeys.derive(key))
        self.lock = asyncio.Lock()


@dataclass(frozen=True)
class ClientSession:
    """A session opened on one server for one mailbox by its owner (over `channel`, unless
    in clear text)."""

    server: Address
    key: bytes
    owner: Identity
    mailbox: MailboxNumber
    channel: SealedChannel | None = field(default=None, compare=False, repr=False)


class DirectoryClient:
    """Talks to directory servers over a `StreamTransport` (TCP by default), sealed under keys
    from `keys` (e.g. `KeyExchangeAgreement(node)`), or in clear with `clear_text` (tests)."""

    def __init__(
        self,
        transport: StreamTransport | None = None,
        *,
        clock: Clock | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        token: Callable[[int], bytes] = os.urandom,
        keys: KeyAgreement | None = None,
        clear_text: bool = False,
    ) -> None:
        self.transport: StreamTransport = transport or TcpStreamTransport()
        self.clock: Clock = clock or SystemClock()
        self.timeout = timeout
        self.token = token
        self.keys = keys
        self.clear_text = clear_text
        self._channels: dict[Address, SealedChannel] = {}  # shared ones, by server

    async def new_channel(self, server: Address) -> SealedChannel:
        """A channel under a new key agreed with `server` (seed 000 step 2)."""
        if self.keys is None:
            raise UsageError(
                "a DRD client needs a key agreement (keys=KeyExchangeAgreement(node)); "
                "clear_text=True is for tests"
            )
        return SealedChannel(await self.keys.agree(server))

    async def _shared(self, server: Address) -> SealedChannel:
        channel = self._channels.get(server)
        if channel is None:
            channel = self._channels[server] = await self.new_channel(server)
        return channel

    async def _sealed(self, server: Address, channel: SealedChannel, frame: bytes) -> bytes:
        async with channel.lock:
            counter, sealed = channel.ends.seal(frame)
            answer = await self.transport.request(server, sealed, within=self.timeout)
            return channel.ends.open(counter, answer)

    async def _exchange(
        self, server: Address, frame: bytes, channel: SealedChannel | None
    ) -> bytes:
        """Send `frame` and return the clear answer: in clear, over `channel`, or over the
        channel shared for `server` (agreed anew once if the server no longer knows it)."""
        if self.clear_text:
            return await self.transport.request(server, frame, within=self.timeout)
        if channel is not None:
            return await self._sealed(server, channel, frame)
        shared = await self._shared(server)
        try:
            return await self._sealed(server, shared, frame)
        except DirectoryRefused as exc:
            if exc.code != Status.UNKNOWN_CHANNEL:
                raise
            if self._channels.get(server) is shared:  # expired, or the server restarted
                del self._channels[server]
            return await self._sealed(server, await self._shared(server), frame)

    def challenge(self) -> bytes:
        """A fresh 16-byte challenge."""
        return self.token(CHALLENGE_SIZE)

    async def call(
        self,
        server: Address,
        command: Command,
        body: bytes,
        *,
        channel: SealedChannel | None = None,
    ) -> tuple[int, bytes]:
        """Send one request (over `channel`, or the channel shared for `server`); (status,
        response body). Raises `TransportError` if unanswered, `KeyExchangeFailed` if no key
        could be agreed, `DirectoryRefused` if the server refused the sealed frame (its status
        is the `code`) and `DirectoryError` if the answer is not an authentic response to it."""
        answer = await self._exchange(server, request_frame(command, body), channel)
        answered, status, challenge, rest = parse_response(answer)
        if answered != command or challenge != body[:CHALLENGE_SIZE]:
            raise DirectoryError("the answer does not match the request")
        return status, rest

    async def _expect(
        self,
        server: Address,
        command: Command,
        body: bytes,
        channel: SealedChannel | None = None,
    ) -> bytes:
        status, rest = await self.call(server, command, body, channel=channel)
        if status != Status.SUCCESS:
            raise refused(command, status)
        return rest

    async def open_session(self, server: Address, owner: Identity, ticket: Ticket) -> ClientSession:
        """Present `ticket` (proving `owner` holds the key it names) over a channel of its own,
        under a key agreed for it (seed 000 step 5); returns the session."""
        channel = None if self.clear_text else await self.new_channel(server)
        request = open_session_request(owner, ticket, self.challenge(), self.clock.now_ms())
        rest = await self._expect(server, Command.OPEN_SESSION, request.encode(), channel)
        if len(rest) != 18:
            raise DirectoryError("an open-session answer is a 16-byte session and E3 E3")
        return ClientSession(server, rest[:16], owner, ticket.mailbox, channel)

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
        await self._expect(session.server, Command.UPDATE, request.encode(), session.channel)

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
        await self._expect(session.server, Command.DELETE, request.encode(), session.channel)

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
