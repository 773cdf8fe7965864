"""DirectoryServer: the directory role of a node (``python -m node --directory DIR``).

It owns the database and avatar folder under ``DIR``, the request handler, and a stream
listener on the node's host at the node's port number (TCP beside the node's UDP). It is
composed with a `DHTNode` rather than built into it: the node knows nothing of directories.

Every request and answer is sealed (`records.drd_channel`) under a key a client sent the node
by the key exchange: the server takes the keys its node's `KeyExchange` reassembles (seed 000
step 1) into its `ChannelTable`; clear frames are answered 44 unless the server runs with
`DirectoryConfig.clear_text` (tests). Sync with other servers goes through the same channels:
this server is then the client, agreeing keys with its peers' nodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import Clock
from node.directory.avatars import in_thread, inline
from node.directory.channels import DEFAULT_MAX_CHANNELS, Channel, ChannelTable
from node.directory.client import DirectoryClient
from node.directory.database import AiosqliteDatabase, Database, InlineDatabase
from node.directory.keys import DEFAULT_KEY_PARTS, KeyAgreement, KeyExchangeAgreement
from node.directory.ownership import OwnershipVerifier, PaymentVerifier, QuorumTicketVerifier
from node.directory.peers import PeerTable
from node.directory.service import DEFAULT_SESSION_MINUTES, DirectoryService
from node.directory.store import DATABASE_FILE, DirectoryStore
from node.directory.sync import DirectorySync
from node.directory.transport import (
    MAX_FRAME_SIZE,
    Address,
    StreamServer,
    StreamTransport,
    TcpStreamTransport,
)
from node.errors import NodeNotRunning, PutFailed
from node.keyexchange import KeyExchange
from node.server import DHTNode
from node.tasks import cancel_and_wait
from records import Identity, InvalidRecord, Record
from records.directory import CHALLENGE_SIZE, Command, MailboxNumber, Status, response_frame
from records.drd import (
    DRD_SERVERS_KEY,
    TicketAuthorities,
    make_drd_record,
    make_drd_servers_record,
    node_addresses,
    servers_of,
)
from records.drd_channel import SEALED
from records.errors import DirectoryError, TransportError, UsageError

log = logging.getLogger(__name__)

AUTHORITIES_FILE = "authorities.json"


@dataclass(frozen=True)
class DirectoryConfig:
    """Everything a `DirectoryServer` can be told."""

    root: Path
    """The directory's folder: ``directory.sqlite3`` and ``users/<14 hex>/`` avatars."""
    authorities: tuple[bytes, ...] = ()
    """Ed25519 public keys of the ticket authorities (stand-ins for RAIDA); none: the node's
    (`NodeConfig.drd_authorities`)."""
    threshold: int = 1
    """How many of `authorities` must sign a ticket (k of n)."""
    port: int | None = None
    """TCP port to listen on; None: the node's own port number."""
    session_minutes: int = DEFAULT_SESSION_MINUTES
    """Minutes a session lasts (seed 000 SESSION.MinutesUntilTimeout)."""
    tombstone_keep_ms: int = 30 * 24 * 3600 * 1000
    """How long a deletion's tombstone (with its ticket, published in the DHT) is kept; after
    that only the mailbox's version floor stays, for good, so no server brings it back."""
    inline_database: bool = False
    """Run SQLite and the avatar files on the event loop's thread (the simulator's virtual
    clock needs this); otherwise both run on worker threads."""
    max_frame_size: int = MAX_FRAME_SIZE
    """Largest request or response frame."""
    public_host: str | None = None
    """The host other servers and clients reach this directory at (announced in the DHT);
    None: the node's bound host."""
    sync_interval: float = 60.0
    """Seconds between anti-entropy rounds with the other servers."""
    announce_interval: float = 20 * 60.0
    """Seconds between announcements at /drd-servers/all/ (they live an hour)."""
    republish_interval: float = 6 * 3600.0
    """Seconds between re-signing every /drd/ entry (they live a day)."""
    request_timeout: float = 10.0
    """Seconds a sync request may take."""
    clear_text: bool = False
    """Serve and send DRD frames in clear instead of sealed: for tests only (profiles, tickets
    and sessions then travel readable by anyone on the path)."""
    max_channels: int = DEFAULT_MAX_CHANNELS
    """Sealed channels held at once (each from a key received by the key exchange)."""
    key_parts: int = DEFAULT_KEY_PARTS
    """Key servers the keys of this server's sync requests are split over, at least."""

    def __post_init__(self) -> None:
        if not isinstance(self.root, Path):
            object.__setattr__(self, "root", Path(self.root))


def load_authorities(path: Path) -> tuple[tuple[bytes, ...], int]:
    """(public keys, threshold) from an authorities file, as ``mint-authorities`` writes it:
    ``{"threshold": k, "authorities": ["<64 hex>", ...]}``; `ValueError` if it is not one."""
    try:
        trusted = TicketAuthorities.from_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is {exc}") from exc
    return trusted.keys, trusted.threshold


class DirectoryServer:
    """A node's directory role: store, handler and stream listener, started and stopped as one.

    Run it by hand (`start` / `stop`, or ``async with``) beside a running node, or as a plugin
    of its node (``node.add_service(server)`` before ``node.start()``): the node then starts it
    once it has joined and stops it before it stops itself."""

    def __init__(
        self,
        config: DirectoryConfig,
        node: DHTNode,
        *,
        transport: StreamTransport | None = None,
        ownership: OwnershipVerifier | None = None,
        payments: PaymentVerifier | None = None,
        clock: Clock | None = None,
        keys: KeyAgreement | None = None,
    ) -> None:
        trusted = node.config.drd_authorities
        if ownership is None and not config.authorities and trusted is not None:
            ownership = QuorumTicketVerifier(trusted.keys, trusted.threshold)
        elif ownership is None:
            ownership = QuorumTicketVerifier(config.authorities, config.threshold)
        self.config = config
        self.node = node
        self.transport: StreamTransport = transport or TcpStreamTransport(
            max_frame_size=config.max_frame_size
        )
        self.ownership = ownership
        self.payments = payments
        self.clock: Clock = clock or node.clock
        self.store: DirectoryStore | None = None
        self.service: DirectoryService | None = None
        self.sync: DirectorySync | None = None
        self.peer_table = PeerTable()
        """The servers this one syncs with (at most 24, proven ones kept first)."""
        self.channels = ChannelTable(
            lifetime_ms=config.session_minutes * 60_000, max_channels=config.max_channels
        )
        """Sealed channels, by the keys the node received."""
        self.keys: KeyAgreement = keys or KeyExchangeAgreement(node, min_parts=config.key_parts)
        """How this server agrees keys with its peers for sync."""
        self.stats: Counter[str] = self.channels.stats
        """Sealed frames taken and refused (by status), clear ones refused, keys taken."""
        self._exchange: KeyExchange | None = None
        self._listener: StreamServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> Address:
        """Where the directory listens (host, TCP port)."""
        if self._listener is None:
            raise NodeNotRunning("the directory is not running")
        return self._listener.address

    async def start(self) -> None:
        """Open the database and listen; the node must be running, with a `KeyExchange`
        (unless in clear text)."""
        if not self.config.clear_text:
            self._exchange = self.node.service(KeyExchange)
            if self._exchange is None:
                raise UsageError(
                    "a directory server takes its session keys from its node's KeyExchange: "
                    "run the node with one (python -m node does), or clear_text for tests"
                )
        self.config.root.mkdir(parents=True, exist_ok=True)
        path = self.config.root / DATABASE_FILE
        db: Database = (
            InlineDatabase.open(path)
            if self.config.inline_database
            else await AiosqliteDatabase.open(path)
        )
        try:
            offload = inline if self.config.inline_database else in_thread
            self.store = await DirectoryStore.open(db, self.config.root, offload=offload)
        except BaseException:
            await db.close()  # e.g. not a database: no connection (or its thread) left behind
            raise
        self.service = DirectoryService(
            self.store,
            self.ownership,
            self.clock,
            payments=self.payments,
            session_minutes=self.config.session_minutes,
            on_change=self._changed,
        )
        host, node_port = self.node.address
        port = self.config.port if self.config.port is not None else node_port
        try:
            self._listener = await self.transport.serve(host, port, self._handle)
        except BaseException:
            await self.store.close()
            raise
        if self._exchange is not None:
            self._exchange.add_key_handler(self._take_key)
        client = DirectoryClient(
            self.transport,
            clock=self.clock,
            timeout=self.config.request_timeout,
            keys=self.keys,
            clear_text=self.config.clear_text,
        )
        self.sync = DirectorySync(
            self.store,
            self.ownership,
            client,
            on_change=self._changed,
            max_answer_bytes=self.config.max_frame_size,
            on_verified=self.peer_table.prove,
        )
        self._spawn(self._maintain())
        log.info("directory serving %s on %s:%d", self.config.root, *self._listener.address)

    async def stop(self) -> None:
        """Stop listening, end owned tasks, close the database."""
        listener, self._listener = self._listener, None
        if self._exchange is not None:
            self._exchange.remove_key_handler(self._take_key)
            self._exchange = None
        await cancel_and_wait(self._tasks)
        if listener is not None:
            await listener.close()
        if self.store is not None:
            await self.store.close()
            self.store = None

    def attach(self, node: DHTNode) -> None:
        """As a plugin: the node is the one this server was made for; nothing to register (its
        records are checked by the node's validator, its traffic is TCP)."""
        if node is not self.node:
            raise ValueError("a directory server is attached to the node it was made for")

    async def close(self) -> None:
        """As a plugin: `stop`."""
        await self.stop()

    async def __aenter__(self) -> DirectoryServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _take_key(self, key: bytes) -> None:
        """A key the node reassembled: the channel of a client (seed 000 step 2)."""
        self.channels.add_key(key, self.clock.now_ms())

    async def _handle(self, frame: bytes, peer: Address) -> bytes:
        if frame[:1] == bytes([SEALED]):
            return await self.channels.answer(frame, self.clock.now_ms(), self._dispatch)
        if not self.config.clear_text:
            self.stats["clear_refused"] += 1
            command = frame[0] & 0x7F if frame else 0
            challenge = frame[1 : 1 + CHALLENGE_SIZE].ljust(CHALLENGE_SIZE, b"\x00")
            return response_frame(command, Status.ENCRYPTION_REQUIRED, challenge)
        return await self._dispatch(frame, None)

    async def _dispatch(self, frame: bytes, channel: Channel | None) -> bytes:
        assert self.service is not None
        assert self.sync is not None
        if frame and frame[0] in (Command.SYNC_DIGEST, Command.SYNC_PULL):
            return await self.sync.handle(frame)
        return await self.service.handle(frame, channel)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._listener is None:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _changed(self, mailbox: MailboxNumber) -> None:
        """A record changed here: publish it (in the background; the client has its answer)."""
        self._spawn(self.publish(mailbox))

    def _identity(self) -> Identity:
        if self.node.identity is None:
            raise NodeNotRunning("the node's identity is loaded by its start()")
        return self.node.identity

    # -- DHT -------------------------------------------------------------------------------

    @property
    def public_address(self) -> Address:
        """The (host, port) announced to others."""
        host, port = self.address
        return (self.config.public_host or host, port)

    async def entry_record(self, mailbox: MailboxNumber) -> Record | None:
        """The signed /drd/ record of what this server holds for `mailbox` (None: nothing)."""
        assert self.store is not None
        host, port = self.public_address
        now = self.clock.now_ms()
        identity = self._identity()
        stored = await self.store.get(mailbox)
        if stored is not None:
            return make_drd_record(
                identity,
                mailbox,
                version=stored.version,
                profile=stored.profile,
                ticket=stored.ticket,
                owner_signature=stored.signature,
                host=host,
                port=port,
                now=now,
            )
        gone = await self.store.tombstone(mailbox)
        if gone is None:
            return None
        return make_drd_record(
            identity,
            mailbox,
            version=gone.version,
            profile=None,
            ticket=gone.ticket,
            owner_signature=gone.signature,
            host=host,
            port=port,
            now=now,
        )

    async def publish(self, mailbox: MailboxNumber) -> bool:
        """Put the /drd/ entry of `mailbox` into the DHT; False if no node stored it."""
        record = await self.entry_record(mailbox)
        if record is None:
            return False
        try:
            await self.node.put(record)
        except (PutFailed, InvalidRecord) as exc:
            log.warning("publishing %s failed: %s", mailbox, exc)
            return False
        return True

    async def announce(self) -> bool:
        """Put this server's announcement at /drd-servers/all/."""
        host, port = self.public_address
        node_port = self.node.address[1]
        record = make_drd_servers_record(
            self._identity(),
            host,
            port,
            now=self.clock.now_ms(),
            node_port=0 if node_port == port else node_port,
        )
        try:
            await self.node.put(record)
        except (PutFailed, InvalidRecord) as exc:
            log.warning("announcing the directory failed: %s", exc)
            return False
        return True

    async def peers(self) -> list[Address]:
        """Directory servers announced at /drd-servers/all/, this one excluded."""
        record = await self.node.get(DRD_SERVERS_KEY)
        if record is None:
            return []
        if isinstance(self.keys, KeyExchangeAgreement):
            self.keys.learn(node_addresses(record))  # where to send their keys
        own = self._identity().public_key
        return [
            (host, port)
            for key, host, port in servers_of(record)
            if key != own and (host, port) != self.public_address
        ]

    async def sync_round(self) -> int:
        """One anti-entropy round with this round's peers (`PeerTable`: every proven one,
        a few announced ones not proven yet); returns changes applied."""
        assert self.sync is not None
        assert self.store is not None
        self.peer_table.announced(await self.peers())
        proven = set(self.peer_table.proven())
        applied = 0
        for peer in self.peer_table.this_round():
            try:
                applied += await self.sync.sync_with(peer, prove=peer not in proven)
            except (TransportError, DirectoryError) as exc:
                self.peer_table.failed(peer)
                log.info("sync with %s:%d failed: %s", *peer, exc)
            else:
                self.peer_table.succeeded(peer)
        await self.store.drop_tombstones(self.clock.now_ms() - self.config.tombstone_keep_ms)
        return applied

    async def republish(self) -> None:
        """Re-sign and put every entry held (they expire after a day)."""
        assert self.store is not None
        for mailbox in await self.store.mailboxes():
            await self.publish(mailbox)

    async def _maintain(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        jobs: list[tuple[float, Callable[[], Awaitable[Any]]]] = [
            (cfg.announce_interval, self.announce),
            (cfg.sync_interval, self.sync_round),
            (cfg.republish_interval, self.republish),
        ]
        due = [loop.time(), loop.time() + cfg.sync_interval, loop.time() + cfg.republish_interval]
        while True:
            soonest = min(range(len(jobs)), key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[soonest] - loop.time()))
            interval, job = jobs[soonest]
            due[soonest] = loop.time() + interval
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("directory job %s failed", getattr(job, "__name__", job))
