"""How long to wait for an answer: RFC 6298's RTO per peer, backed off after timeouts.

No clock here: callers pass what they measured.
"""

from __future__ import annotations

from collections import OrderedDict

from node.config import NodeConfig
from node.routing import Address, Contact, RttSpread

_MAX_BACKOFF = 3  # a peer's timeout doubles after each timeout, up to 8 times its RTO
_MAX_BACKOFF_PEERS = 4096


class Timeouts:
    """Timeouts and expected round trips for requests, within the config's bounds."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.spread = RttSpread()
        """Round trips to all peers lately (for a peer not measured yet)."""
        self._backoff: OrderedDict[Address, int] = OrderedDict()

    def answered(self, address: Address, rtt: float) -> None:
        """An answer came from `address` after `rtt` seconds: its backoff ends."""
        self.spread.observe(rtt)
        self._backoff.pop(address, None)

    def timed_out(self, address: Address) -> None:
        """A request to `address` timed out: the next one waits twice as long (up to 8x)."""
        backoff = self._backoff
        backoff[address] = min(_MAX_BACKOFF, backoff.pop(address, 0) + 1)
        if len(backoff) > _MAX_BACKOFF_PEERS:
            backoff.popitem(last=False)

    def estimates(self, contact: Contact | None, address: Address | None) -> tuple[float, float]:
        """(timeout, expected round trip) for a request to `contact` (if known) at `address`.

        The timeout is the RTO of the peer's measured round trips (RFC 6298), or for a peer not
        measured yet twice the recent 90th percentile over all peers, doubled for each timeout
        in a row at that address (up to 8x); always within [min_timeout, max_timeout]. Past
        the expected round trip (at least `min_expected_rtt`) a lookup stops waiting."""
        cfg = self.config
        if contact is not None and contact.srtt:
            timeout, expected = contact.srtt + 4 * contact.rttvar, contact.srtt + 2 * contact.rttvar
        elif self.spread.known:
            timeout, expected = 2 * self.spread.slow, self.spread.slow
        else:
            # Nothing measured yet (a node that has only been asked, never asked): wait the
            # cautious initial timeout, but let a lookup move on early (40 ms by default: at
            # half that, joins sent 8 % more datagrams for nothing)
            timeout, expected = cfg.initial_timeout, 4 * cfg.min_expected_rtt
        if address is not None and (doublings := self._backoff.get(address)):
            timeout *= 1 << doublings
        timeout = min(cfg.max_timeout, max(cfg.min_timeout, timeout))
        return timeout, min(timeout, max(cfg.min_expected_rtt, expected))
