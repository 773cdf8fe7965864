"""Bans: nodes (by ID) or addresses caught forging, shunned for a while.

Only objective forgery earns a ban: a record whose signature does not verify or whose key does
not match the identity it claims (`InvalidRecord.forgery`), or an ID proof whose signature is
not valid for the key it presents. Stale copies, clock skew (``future_dated``) and a local
policy stricter than the sender's are refused without a ban: honest peers do those. A ban
expires, so an address later handed to someone else, or a key that was stolen and replaced,
is not shunned for ever.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from node.routing import Address

BanKey = bytes | Address


@dataclass(frozen=True, slots=True)
class Ban:
    """Why and until when (engine time, seconds) something is banned."""

    reason: str
    until: float


class BanList:
    """Banned node IDs and addresses, each for `ttl` seconds, at most `max_entries`."""

    def __init__(self, ttl: float, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._bans: OrderedDict[BanKey, Ban] = OrderedDict()  # soonest expiry first

    def __contains__(self, key: object) -> bool:
        """True if `key` is banned (expired bans leave at the next `purge`)."""
        return key in self._bans

    def __len__(self) -> int:
        return len(self._bans)

    def ban(self, key: BanKey, reason: str, now: float) -> None:
        """Ban `key` until ``now + ttl`` (a second ban restarts the clock)."""
        self._bans.pop(key, None)
        self._bans[key] = Ban(reason, now + self.ttl)
        while len(self._bans) > self.max_entries:
            self._bans.popitem(last=False)

    def get(self, key: BanKey) -> Ban | None:
        """The ban on `key`, if any."""
        return self._bans.get(key)

    def purge(self, now: float) -> None:
        """Lift the bans that have expired at `now`."""
        bans = self._bans
        while bans:
            key, ban = next(iter(bans.items()))
            if ban.until > now:
                return
            del bans[key]

    def next_expiry(self) -> float | None:
        """When the oldest ban expires."""
        return next(iter(self._bans.values())).until if self._bans else None
