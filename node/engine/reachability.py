"""Is this node reachable? AutoNAT-style evidence for ``mode = "auto"``.

A node that starts as a client (behind NAT, for all it knows) asks a few peers to have a third
node of theirs ping it (`probe`, then `dial`). A request from an address this node sent nothing
to lately (a NAT's mapping toward it would have lapsed: `NAT_WINDOW`) could only have come
through if the node is reachable: once `needed` distinct peers have reached it so, unasked, it
turns server. No clock here: callers pass `now`.
"""

from __future__ import annotations

from collections import OrderedDict

from node.routing import Address

_MAX_ASKED = 4096
NAT_WINDOW = 120.0
"""Seconds after we sent to an address during which its datagrams may be a NAT's answers."""


class Reachability:
    """Addresses we sent to, and distinct hosts that reached us without being asked."""

    def __init__(self, needed: int) -> None:
        self.needed = needed
        self._asked: OrderedDict[Address, float] = OrderedDict()
        self._reached: set[Address] = set()

    @property
    def reachable(self) -> bool:
        """True once `needed` distinct peers reached us unasked."""
        return len(self._reached) >= self.needed

    def asked(self, address: Address, now: float) -> None:
        """We sent something to `address` at `now` (a NAT would now let its answers in)."""
        self._asked[address] = now
        self._asked.move_to_end(address)
        if len(self._asked) > _MAX_ASKED:
            self._asked.popitem(last=False)

    def heard(self, address: Address, now: float) -> bool:
        """A request came from `address` at `now`; True if that makes us reachable."""
        sent = self._asked.get(address)
        if (sent is None or now - sent > NAT_WINDOW) and len(self._reached) < self.needed:
            self._reached.add(address)
        return self.reachable
