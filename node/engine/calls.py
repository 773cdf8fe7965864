"""Calls in flight: message IDs, deadlines, timeouts with backoff, and a queue when too many.

No clock here: every method takes `now` (seconds, the engine's monotonic time).

A node keeps at most `max_in_flight` requests in flight; more wait in a queue and go out as
answers come in (congestion control: a burst of lookups is slowed, not lost to full socket
buffers). The queue is bounded too (`max_queued`): past it a call fails at once.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from node.routing import Address

OnReply = Callable[[bool, Any], None]
_MAX_EXPIRED = 256


@dataclass(slots=True)
class Call:
    """One request we sent (or are about to send)."""

    msg_id: bytes
    name: str
    data: bytes
    address: Address
    node_id: bytes | None
    prove: bool
    on_reply: OnReply
    on_stall: Callable[[], None] | None = None
    sent_at: float = math.nan
    timeout_at: float = math.inf
    stall_at: float = math.inf


@dataclass(frozen=True, slots=True)
class Expired:
    """What a late answer to a timed-out call needs (not its callbacks)."""

    address: Address
    sent_at: float
    node_id: bytes | None
    prove: bool


class CallTable:
    """Calls in flight by message ID, their deadlines on 1 ms ticks, and the queue."""

    def __init__(self, max_in_flight: int, max_queued: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.in_flight: dict[bytes, Call] = {}
        self.queue: deque[Call] = deque()
        # (when, seq, msg_id): one heap instead of a timer per call
        self._deadlines: list[tuple[float, int, bytes]] = []
        self._seq = 0
        # calls that timed out lately: a late answer still shows the peer alive and its RTT
        self.expired: OrderedDict[bytes, Expired] = OrderedDict()

    def __len__(self) -> int:
        return len(self.in_flight) + len(self.queue)

    def has_room(self) -> bool:
        """True if one more call may be made (sent or queued)."""
        return len(self) < self.max_in_flight + self.max_queued

    def can_send(self) -> bool:
        """True if a call may go out now rather than wait in the queue."""
        return len(self.in_flight) < self.max_in_flight

    def start(self, call: Call, now: float, timeout: float, expected: float) -> None:
        """`call` goes out at `now`: it times out after `timeout`, stalls after `expected`."""
        call.sent_at = now
        call.timeout_at = now + timeout
        self.in_flight[call.msg_id] = call
        self._add_deadline(call.timeout_at, call.msg_id)
        if call.on_stall is not None and expected < timeout:
            call.stall_at = now + expected
            self._add_deadline(call.stall_at, call.msg_id)

    def answered(self, msg_id: bytes) -> Call | Expired | None:
        """Take the call `msg_id` answers: in flight, lately expired, or None."""
        call = self.in_flight.pop(msg_id, None)
        if call is not None:
            return call
        return self.expired.pop(msg_id, None)

    def peek(self, msg_id: bytes) -> Call | Expired | None:
        """The call `msg_id` would answer, left in place."""
        return self.in_flight.get(msg_id) or self.expired.get(msg_id)

    def next_deadline(self) -> float | None:
        """The earliest deadline (a timeout or a stall) of a call still in flight."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][2] not in self.in_flight:
            heapq.heappop(deadlines)  # answered already
        return deadlines[0][0] if deadlines else None

    def due(self, now: float) -> Iterator[tuple[str, Call]]:
        """``("timeout", call)`` and ``("stall", call)`` events due at `now`; a timed-out call
        leaves the table (kept in `expired` for a late answer)."""
        deadlines = self._deadlines
        now += 1e-6
        while deadlines and deadlines[0][0] <= now:
            _, _, msg_id = heapq.heappop(deadlines)
            call = self.in_flight.get(msg_id)
            if call is None:
                continue  # answered already
            if call.timeout_at <= now:
                del self.in_flight[msg_id]
                self.expired[msg_id] = Expired(call.address, call.sent_at, call.node_id, call.prove)
                if len(self.expired) > _MAX_EXPIRED:
                    self.expired.popitem(last=False)
                yield "timeout", call
            elif call.on_stall is not None and call.stall_at <= now:
                yield "stall", call

    def clear(self) -> list[Call]:
        """Forget everything; returns the calls that were waiting (in flight or queued)."""
        calls = [*self.in_flight.values(), *self.queue]
        self.in_flight.clear()
        self.queue.clear()
        self._deadlines.clear()
        self.expired.clear()
        return calls

    def _add_deadline(self, when: float, msg_id: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (_tick(when), self._seq, msg_id))


def _tick(when: float) -> float:
    """`when` rounded up to the next millisecond: one wake-up serves every deadline in it."""
    return math.ceil(when * 1000.0) / 1000.0
