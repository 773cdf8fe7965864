"""DirectoryServer: the directory role of a node (``python -m node --directory DIR``).

It owns the database and avatar folder under ``DIR``, the request handler, and a stream
listener on the node's host at the node's port number (TCP beside the node's UDP). It is
composed with a `DHTNode` rather than built into it: the node knows nothing of directories.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import Clock
from node.directory.database import AiosqliteDatabase, Database, InlineDatabase
from node.directory.ownership import OwnershipVerifier, PaymentVerifier, QuorumTicketVerifier
from node.directory.service import DEFAULT_SESSION_MINUTES, DirectoryService
from node.directory.store import DATABASE_FILE, DirectoryStore
from node.directory.transport import (
    MAX_FRAME_SIZE,
    Address,
    StreamServer,
    StreamTransport,
    TcpStreamTransport,
)
from node.errors import NodeNotRunning
from node.server import DHTNode
from node.tasks import cancel_and_wait
from records.directory import MailboxNumber

log = logging.getLogger(__name__)

AUTHORITIES_FILE = "authorities.json"


@dataclass(frozen=True)
class DirectoryConfig:
    """Everything a `DirectoryServer` can be told."""

    root: Path
    """The directory's folder: ``directory.sqlite3`` and ``users/<14 hex>/`` avatars."""
    authorities: tuple[bytes, ...] = ()
    """Ed25519 public keys of the ticket authorities (stand-ins for RAIDA)."""
    threshold: int = 1
    """How many of `authorities` must sign a ticket (k of n)."""
    port: int | None = None
    """TCP port to listen on; None: the node's own port number."""
    session_minutes: int = DEFAULT_SESSION_MINUTES
    """Minutes a session lasts (seed 000 SESSION.MinutesUntilTimeout)."""
    tombstone_keep_ms: int = 30 * 24 * 3600 * 1000
    """How long a deletion is remembered so that syncing servers do not bring it back."""
    inline_database: bool = False
    """Run SQLite on the event loop's thread (the simulator's virtual clock needs this)."""
    max_frame_size: int = MAX_FRAME_SIZE
    """Largest request or response frame."""

    def __post_init__(self) -> None:
        if not isinstance(self.root, Path):
            object.__setattr__(self, "root", Path(self.root))


def load_authorities(path: Path) -> tuple[tuple[bytes, ...], int]:
    """(public keys, threshold) from an authorities file, as ``mint-authorities`` writes it:
    ``{"threshold": k, "authorities": ["<64 hex>", ...]}``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    keys = tuple(bytes.fromhex(k) for k in data["authorities"])
    return keys, int(data["threshold"])


class DirectoryServer:
    """A node's directory role: store, handler and stream listener, started and stopped as one."""

    def __init__(
        self,
        config: DirectoryConfig,
        node: DHTNode,
        *,
        transport: StreamTransport | None = None,
        ownership: OwnershipVerifier | None = None,
        payments: PaymentVerifier | None = None,
        clock: Clock | None = None,
    ) -> None:
        if ownership is None:
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
        self._listener: StreamServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> Address:
        """Where the directory listens (host, TCP port)."""
        if self._listener is None:
            raise NodeNotRunning("the directory is not running")
        return self._listener.address

    async def start(self) -> None:
        """Open the database and listen; the node must be running."""
        self.config.root.mkdir(parents=True, exist_ok=True)
        path = self.config.root / DATABASE_FILE
        db: Database = (
            InlineDatabase.open(path)
            if self.config.inline_database
            else await AiosqliteDatabase.open(path)
        )
        self.store = await DirectoryStore.open(db, self.config.root)
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
        log.info("directory serving %s on %s:%d", self.config.root, *self._listener.address)

    async def stop(self) -> None:
        """Stop listening, end owned tasks, close the database."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await cancel_and_wait(self._tasks)
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def __aenter__(self) -> DirectoryServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, frame: bytes, peer: Address) -> bytes:
        assert self.service is not None
        return await self.service.handle(frame)

    async def _changed(self, mailbox: MailboxNumber) -> None:
        """A record changed here (publication and sync hook)."""
        log.debug("directory record %s changed", mailbox)
