"""Which directory servers a server syncs with: at most `MAX_PEERS`, proven ones first.

Anyone can announce a directory server at ``/drd-servers/all/``, and that record keeps only the
newest 24 announcements, so a flood of fresh fake ones pushes real servers out of it. What a
fake cannot do is hand over entries that carry valid tickets: only real directory servers hold
owner-approved, ticketed records. A peer from which this server has verified such an entry
(pulled, or spot-checked, by `DirectorySync`) is *proven* and kept, announced or not, until it
has failed `FORGET_AFTER_FAILURES` rounds in a row; announced peers not proven yet fill the
free places and are tried a few per round (`UNPROVEN_PER_ROUND`), so fakes cost a round little.

Pure bookkeeping: no I/O, no clock (rounds are counted by the caller's calls).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.directory.transport import Address

MAX_PEERS = 24  # as many as /drd-servers/all/ holds (records.drd.MAX_SERVERS)
UNPROVEN_PER_ROUND = 4
FORGET_AFTER_FAILURES = 1440
"""Rounds in a row a proven peer may fail before it is dropped (a day at one a minute)."""


@dataclass
class _Peer:
    proven: bool = False
    tried: int = -1
    """The round it was last tried in (-1: never)."""
    failures: int = 0
    """Rounds failed in a row."""


class PeerTable:
    """The peers of one directory server (see the module docstring)."""

    def __init__(
        self,
        *,
        max_peers: int = MAX_PEERS,
        unproven_per_round: int = UNPROVEN_PER_ROUND,
        forget_after_failures: int = FORGET_AFTER_FAILURES,
    ) -> None:
        self.max_peers = max_peers
        self.unproven_per_round = unproven_per_round
        self.forget_after_failures = forget_after_failures
        self._peers: dict[Address, _Peer] = {}
        self._round = 0

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, address: object) -> bool:
        return address in self._peers

    def proven(self) -> list[Address]:
        """The peers that handed over valid, ticketed entries."""
        return [address for address, peer in self._peers.items() if peer.proven]

    def announced(self, addresses: Iterable[Address]) -> None:
        """Take this round's announced servers. Unproven peers no longer announced go; a new
        one takes a free place, or the place of an unproven peer already tried (the one tried
        longest ago), never a proven peer's."""
        current = list(dict.fromkeys(addresses))
        listed = set(current)
        for address in [a for a, p in self._peers.items() if not p.proven and a not in listed]:
            del self._peers[address]
        for address in current:
            if address in self._peers:
                continue
            if len(self._peers) >= self.max_peers and not self._evict_tried_unproven():
                break
            self._peers[address] = _Peer()

    def _evict_tried_unproven(self) -> bool:
        tried = [(p.tried, a) for a, p in self._peers.items() if not p.proven and p.tried >= 0]
        if not tried:
            return False
        del self._peers[min(tried)[1]]
        return True

    def this_round(self) -> list[Address]:
        """The peers to sync with now: every proven one, then up to `unproven_per_round` of
        the others, those tried longest ago (or never) first."""
        self._round += 1
        proven = self.proven()
        others = sorted((p.tried, a) for a, p in self._peers.items() if not p.proven)[
            : self.unproven_per_round
        ]
        chosen = proven + [address for _, address in others]
        for address in chosen:
            self._peers[address].tried = self._round
        return chosen

    def prove(self, address: Address) -> None:
        """`address` (a peer of this table) handed over an entry whose owner approval and
        ticket verified."""
        if address in self._peers:
            self._peers[address].proven = True

    def succeeded(self, address: Address) -> None:
        """A round with `address` went through."""
        if address in self._peers:
            self._peers[address].failures = 0

    def failed(self, address: Address) -> None:
        """A round with `address` failed (unreachable, or it answered nonsense)."""
        peer = self._peers.get(address)
        if peer is None:
            return
        peer.failures += 1
        if peer.proven and peer.failures >= self.forget_after_failures:
            del self._peers[address]
