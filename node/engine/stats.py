"""Counters a node keeps about its traffic (exported by the control API and as metrics)."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds (seconds) of the lookup latency histogram's buckets.
LOOKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyHistogram:
    """Counts of observations per bucket (the cumulative form is made when exported)."""

    bounds: tuple[float, ...] = LOOKUP_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LOOKUP_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)


@dataclass
class NodeStats:
    """Counters a node keeps about its traffic."""

    dropped: Counter[str] = field(default_factory=Counter)
    """Datagrams dropped (or calls not made), by reason."""
    requests_in: Counter[str] = field(default_factory=Counter)
    """Requests answered, by RPC name (or service name)."""
    requests_out: Counter[str] = field(default_factory=Counter)
    """Requests sent, by RPC name."""
    refused: Counter[str] = field(default_factory=Counter)
    """Records refused by our store, by reason."""
    bans: Counter[str] = field(default_factory=Counter)
    """Nodes or addresses banned, by the forgery that earned it."""
    timeouts: int = 0
    """Requests we sent that got no answer in time."""
    late_answers: int = 0
    """Answers that arrived after their request had timed out."""
    queued_calls: int = 0
    """Requests that waited for a free slot before being sent (congestion control)."""
    lookup_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)
    """How long lookups took."""
