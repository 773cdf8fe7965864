"""Subscriptions held for others (`listen`): who wants to hear when the record at a location
changes, until when. Bounded per location, per source and in all; drops are counted.

A subscription is taken only from an address that proved it receives there: the first
`listen` from an address is answered with a cookie (an HMAC of the address and location under
a secret of ours, good for this hour and the next), which the subscriber sends back; so nobody
can make us push notifications at an address that did not ask for them. No clock here: every
method takes `now` (seconds).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from node.engine.limits import source_of
from node.routing import Address

COOKIE_SIZE = 16
_EPOCH = 3600.0  # a cookie is good for the hour it was made in and the next


@dataclass(slots=True)
class Listener:
    """One subscription: the subscriber's node ID and address, and when it lapses."""

    node_id: bytes
    address: Address
    expires: float


class Listeners:
    """Subscriptions by location; see the module docstring."""

    def __init__(
        self, secret: bytes, *, max_per_key: int, max_per_source: int, max_total: int
    ) -> None:
        self._secret = secret
        self.max_per_key = max_per_key
        self.max_per_source = max_per_source
        self.max_total = max_total
        self._by_loc: dict[bytes, dict[Address, Listener]] = {}
        self._by_source: dict[str, int] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def cookie(self, address: Address, loc: bytes, now: float) -> bytes:
        """The cookie a subscriber at `address` sends back for `loc`."""
        return self._mac(address, loc, int(now // _EPOCH))

    def cookie_ok(self, cookie: bytes, address: Address, loc: bytes, now: float) -> bool:
        """True if `cookie` is ours for `address` and `loc`, made this hour or the last."""
        epoch = int(now // _EPOCH)
        return any(
            hmac.compare_digest(cookie, self._mac(address, loc, e)) for e in (epoch, epoch - 1)
        )

    def _mac(self, address: Address, loc: bytes, epoch: int) -> bytes:
        message = f"{address[0]}|{address[1]}|{epoch}|".encode() + loc
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:COOKIE_SIZE]

    def add(
        self, loc: bytes, node_id: bytes, address: Address, ttl: float, now: float
    ) -> str | None:
        """Keep (or renew) `address`'s subscription to `loc` for `ttl` seconds; the reason it
        is refused (``listeners_full_key`` / ``_source`` / ``_total``) or None."""
        listeners = self._by_loc.get(loc)
        known = listeners.get(address) if listeners is not None else None
        if known is not None:
            known.expires = now + ttl
            known.node_id = node_id
            return None
        self._expire(loc, now)
        listeners = self._by_loc.get(loc)
        if listeners is not None and len(listeners) >= self.max_per_key:
            return "listeners_full_key"
        source = source_of(address)
        if self._by_source.get(source, 0) >= self.max_per_source:
            return "listeners_full_source"
        if self._total >= self.max_total:
            return "listeners_full_total"
        self._by_loc.setdefault(loc, {})[address] = Listener(node_id, address, now + ttl)
        self._by_source[source] = self._by_source.get(source, 0) + 1
        self._total += 1
        return None

    def remove(self, loc: bytes, address: Address) -> None:
        """Forget `address`'s subscription to `loc` (it said it no longer listens)."""
        listeners = self._by_loc.get(loc)
        if listeners is not None and listeners.pop(address, None) is not None:
            self._forget(loc, listeners, address)

    def of(self, loc: bytes, now: float) -> list[Listener]:
        """The live subscriptions to `loc`."""
        self._expire(loc, now)
        return list(self._by_loc.get(loc, {}).values())

    def expire_all(self, now: float) -> None:
        """Drop every lapsed subscription (run now and then: `of` drops them one location at
        a time)."""
        for loc in list(self._by_loc):
            self._expire(loc, now)

    def _expire(self, loc: bytes, now: float) -> None:
        listeners = self._by_loc.get(loc)
        if listeners is None:
            return
        for address, listener in list(listeners.items()):
            if listener.expires <= now:
                del listeners[address]
                self._forget(loc, listeners, address)

    def _forget(self, loc: bytes, listeners: dict[Address, Listener], address: Address) -> None:
        self._total -= 1
        source = source_of(address)
        count = self._by_source.get(source, 0) - 1
        if count > 0:
            self._by_source[source] = count
        else:
            self._by_source.pop(source, None)
        if not listeners:
            del self._by_loc[loc]
