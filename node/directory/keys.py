"""How a DRD client agrees a session key with a directory server (seed 000 steps 1-2): a
fresh 32-byte key sent to the server's node in parts through key servers found in the DHT,
with the anonymous key exchange (seed 002, `node.keyexchange`).

The server's node is found at the UDP address its announcement at ``/drd-servers/all/`` names
(`records.drd.node_addresses`), by default the directory's own host and port number (the
directory listens on TCP at its node's UDP port number).

Key servers are those the client's own DHT view shows it (`KeyExchange.find_servers`), not a
list the server's announcement gives: anyone can announce a directory at any address, and a
forged announcement naming key servers that work together would hand them every part.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from node.keyexchange import KeyExchange
from records.drd import DRD_SERVERS_KEY, node_addresses
from records.drd_channel import KEY_SIZE
from records.errors import InvalidRecord, KeyExchangeFailed, NetworkError

if TYPE_CHECKING:
    from node.server import DHTNode

log = logging.getLogger(__name__)

Address = tuple[str, int]

DEFAULT_KEY_PARTS = 2
"""Key servers a session key is split over at least (seed 002: at least two parts)."""
MAX_KEY_PART = 16
"""Bytes of the 32-byte key one key server gets at most: each misses at least half of it."""


class KeyAgreement(Protocol):
    """Gives a DRD client a key the directory server holds too (a plug-in: tests may give
    keys to a server directly)."""

    async def agree(self, server: Address) -> bytes:
        """A fresh 32-byte key that the directory at `server` (host, TCP port) holds once this
        returns; `KeyExchangeFailed` if it cannot be sent."""
        ...


class KeyExchangeAgreement:
    """`KeyAgreement` through the anonymous key exchange of `node` (its `KeyExchange`)."""

    def __init__(
        self,
        node: DHTNode,
        *,
        min_parts: int = DEFAULT_KEY_PARTS,
        max_part: int = MAX_KEY_PART,
    ) -> None:
        self.node = node
        self.min_parts = min_parts
        self.max_part = max_part
        self._nodes: dict[Address, Address] = {}
        self._looked_up: set[Address] = set()

    def learn(self, addresses: Mapping[Address, Address]) -> None:
        """Remember where the nodes of directories are: directory (host, TCP port) -> node
        (host, UDP port), as `records.drd.node_addresses` reads them from announcements."""
        self._nodes.update(addresses)

    async def node_address(self, server: Address) -> Address:
        """Where to send the directory at `server` its key: its node, as announced (looked up
        once per directory), else the same host and port number."""
        if server not in self._nodes and server not in self._looked_up:
            self._looked_up.add(server)
            try:
                record = await self.node.get(DRD_SERVERS_KEY)
            except (NetworkError, InvalidRecord) as exc:
                log.debug("no announcements of directories: %s", exc)
            else:
                if record is not None:
                    self.learn(node_addresses(record))
        return self._nodes.get(server, server)

    async def agree(self, server: Address) -> bytes:
        """Seed 000 step 2: send the directory at `server` a new key through the key exchange
        (at least `min_parts` parts of at most `max_part` bytes, each to another key server)."""
        exchange = self.node.service(KeyExchange)
        if exchange is None:
            raise KeyExchangeFailed("the client's node runs no KeyExchange")
        receiver = await self.node_address(server)
        key = exchange.new_key(KEY_SIZE)
        return await exchange.send_key(
            receiver, key, min_parts=self.min_parts, max_part=self.max_part
        )
