"""Rate limits: token buckets per source and for everyone together.

A source is what one sender cannot multiply cheaply: an IPv4 address, an IPv6 /64 (one host
is usually handed a whole /64), or on loopback, where many nodes share one address, an address
and port.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from node.routing import Address


class TokenBuckets:
    """Token buckets by key, with a bounded number of keys (least recently used evicted).

    A bucket that has filled up again is forgotten (a source not seen has a full bucket):
    only the sources heard from in the last ``burst / rate`` seconds take memory, not every
    source ever heard from."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        # (tokens, when) by source, least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many sources have a bucket that is not full (or was not full when last seen)."""
        return len(self._buckets)

    def allow(self, source: str, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens from `source`'s bucket if it has them (True), else take none."""
        buckets = self._buckets
        tokens, last = buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= cost
        # The least recently used buckets that are full by now are as good as absent. Past
        # the first that is not full, every bucket was used within `burst / rate` seconds.
        while buckets:
            oldest_tokens, oldest_last = next(iter(buckets.values()))
            if oldest_tokens + max(0.0, now - oldest_last) * self.rate < self.burst:
                break
            buckets.popitem(last=False)
        buckets[source] = (tokens - cost if allowed else tokens, now)
        if len(buckets) > self.max_sources:
            buckets.popitem(last=False)
        return allowed


@dataclass(frozen=True)
class Limits:
    """A budget: so many per second per source (with a burst) and so many for everyone."""

    per_source_rate: float
    per_source_burst: float
    rate: float

    def buckets(self) -> tuple[TokenBuckets, TokenBuckets]:
        """(per source, global): the global bucket holds a second's worth."""
        return (
            TokenBuckets(self.per_source_rate, self.per_source_burst),
            TokenBuckets(self.rate, max(1.0, self.rate), 1),
        )


class Budget:
    """One `Limits` applied: `allow` names why a datagram is refused, or returns None.

    `reason` is the drop counter of a source over its own budget; one over the shared budget
    counts as ``rate_limited_global``."""

    def __init__(self, reason: str, limits: Limits) -> None:
        self.reason = reason
        self._per_source, self._everyone = limits.buckets()

    def allow(self, source: str, now: float, cost: float = 1.0) -> str | None:
        """None if `source` may spend `cost` tokens now, else the drop reason."""
        if not self._per_source.allow(source, now, cost):
            return self.reason
        if not self._everyone.allow("*", now, cost):
            return "rate_limited_global"
        return None


def source_of(addr: Address) -> str:
    """What rate limits count by (see the module docstring)."""
    host = addr[0]
    if ":" not in host:  # IPv4, the common case: no parsing
        return f"{host}:{addr[1]}" if host.startswith("127.") else host
    source = _ipv6_source(host)
    return f"{host}:{addr[1]}" if source is None else source


@functools.lru_cache(maxsize=4096)
def _ipv6_source(host: str) -> str | None:
    """The /64 an IPv6 address is counted by (an IPv4-mapped one: its IPv4 address); None
    for loopback, counted by address and port."""
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = ip.ipv4_mapped
    if ip.is_loopback or (mapped is not None and mapped.is_loopback):
        return None
    if mapped is not None:
        return str(mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
