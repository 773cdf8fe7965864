"""Several exchanges of one domain behind the one `Exchange` interface (issue 16).

Every exchange holds the whole domain. Writes go to each; reads go to the nearest one that
answers (seed 004: "the closest exchange (round-robin latency is used) available"), and fall
back to the next nearest on failure; a listing is the union of every exchange that answers.

- **Which write wins** is decided by the first exchange of the domain's list (the same order
  for every user: the `exchanges` configuration): a name is created there first, then copied
  to the others. If it exists there already (another writer won, or our own earlier attempt),
  that object is what the others get, so every exchange holds the same bytes under a name.
  A write that fails on any exchange raises: the caller (a sync) stops, and its next run puts
  the same objects again, which repairs the exchanges that missed them.
- **Latency** is a moving average per exchange of the time its reads took. Reads go to the
  lowest; every `PROBE_EVERY`-th read goes to the others in turn (round robin) so that an
  exchange that got faster is noticed. An exchange that fails is tried last until it answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from weshare.errors import ExchangeError, ObjectNotFound
from weshare.exchange import Exchange

_T = TypeVar("_T")
PROBE_EVERY = 8  # one read in this many goes round-robin to another exchange
_SMOOTHING = 0.3  # weight of the newest sample in the moving average
_FAILED = 1e9  # the latency an exchange that failed counts as, until it answers again


class ExchangeSet:
    """The exchanges of one domain, in the domain's order, as one `Exchange`."""

    def __init__(
        self,
        exchanges: Sequence[Exchange],
        *,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not exchanges:
            raise ValueError("an exchange set needs at least one exchange")
        self.exchanges = list(exchanges)
        self.latency: list[float | None] = [None] * len(exchanges)  # seconds; None: unknown
        self._timer = timer
        self._reads = 0
        self._next_probe = 0

    def nearest_first(self) -> list[int]:
        """Indices of the exchanges, nearest (lowest latency) first; unknown ones before
        known ones, so each is measured once."""
        return sorted(
            range(len(self.exchanges)),
            key=lambda i: (self.latency[i] is not None, self.latency[i] or 0.0, i),
        )

    def _read_order(self) -> list[int]:
        order = self.nearest_first()
        self._reads += 1
        if len(order) > 1 and self._reads % PROBE_EVERY == 0:
            # round robin: measure another exchange now and then
            self._next_probe = self._next_probe % (len(order) - 1) + 1
            order.insert(0, order.pop(self._next_probe))
        return order

    def _sample(self, index: int, seconds: float) -> None:
        old = self.latency[index]
        if old is None or old >= _FAILED:
            self.latency[index] = seconds
        else:
            self.latency[index] = (1 - _SMOOTHING) * old + _SMOOTHING * seconds

    async def _read(self, work: Callable[[Exchange], Awaitable[_T]]) -> _T:
        """`work` on the nearest exchange that answers; `ObjectNotFound` only if every
        exchange that answered said so (one that missed a write may lack an object)."""
        errors: list[ExchangeError] = []
        missing: ObjectNotFound | None = None
        for index in self._read_order():
            start = self._timer()
            try:
                result = await work(self.exchanges[index])
            except ObjectNotFound as exc:
                self._sample(index, self._timer() - start)
                missing = exc
                continue
            except ExchangeError as exc:
                self.latency[index] = _FAILED
                errors.append(exc)
                continue
            self._sample(index, self._timer() - start)
            return result
        if missing is not None:
            raise missing
        raise ExchangeError("; ".join(str(e) for e in errors))

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        """Create `name` on the first exchange, then copy what it holds to the others."""
        first, *others = self.exchanges
        created = await first.put_if_absent(name, data)
        if not others:
            return created
        body: bytes | memoryview = data if created else await first.get(name)
        await _all(other.put_if_absent(name, body) for other in others)
        return created

    async def get(self, name: str) -> bytes:
        """From the nearest exchange that has it."""
        return await self._read(lambda exchange: exchange.get(name))

    async def list(self, prefix: str, after: str = "") -> list[str]:
        """Every name on any exchange that answers, in order; `ExchangeError` if none does.

        Not the nearest exchange's alone: one may lack a write (its writer was cut off from
        it), which then shows there only when its writer copies it over, maybe hours later,
        below the window a reader lists change files from by then (`listing_floor`): a reader
        listing only that exchange would never read it. A write reaches the first exchange
        before any other, so a listing that includes the first holds every name written."""

        async def one(index: int) -> list[str]:
            start = self._timer()
            try:
                names = await self.exchanges[index].list(prefix, after)
            except ExchangeError:
                self.latency[index] = _FAILED
                raise
            self._sample(index, self._timer() - start)
            return names

        results = await asyncio.gather(
            *(one(index) for index in range(len(self.exchanges))), return_exceptions=True
        )
        found: set[str] = set()
        errors: list[ExchangeError] = []
        for result in results:
            if isinstance(result, ExchangeError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found.update(result)
        if len(errors) == len(results):
            raise ExchangeError("; ".join(str(e) for e in errors))
        return sorted(found)

    async def delete(self, name: str) -> None:
        """From every exchange (raises after trying them all if one failed)."""
        await _all(exchange.delete(name) for exchange in self.exchanges)

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        """On every exchange (each may hold its own leftovers); the total removed (raises
        after trying them all if one failed)."""
        return sum(await _all(exchange.sweep(prefix, older_than_s) for exchange in self.exchanges))

    async def close(self) -> None:
        """Close every exchange."""
        for exchange in self.exchanges:
            await exchange.close()


async def copy_domain(source: Exchange, target: Exchange, domain: str) -> int:
    """Copy every object of `domain` that `target` lacks from `source` (a new exchange for a
    domain that lives elsewhere already, or one that missed writes), in write order: the
    anchor, the users, the parts, then the actions and changes that refer to them. Objects
    are signed (or checked by their id), so a copy needs no key. Returns how many were put."""
    copied = 0
    gate = asyncio.Semaphore(4)

    async def one(name: str) -> None:
        nonlocal copied
        async with gate:
            try:
                body = await source.get(name)
            except ObjectNotFound:
                return  # deleted meanwhile (truncation)
            if await target.put_if_absent(name, body):
                copied += 1

    for prefix in ("admins", "exchanges", "U.", "merkle/", "A.", "C."):
        names = await source.list(f"{domain}/{prefix}")
        have = set(await target.list(f"{domain}/{prefix}"))
        work = [one(name) for name in names if name not in have]
        results = await asyncio.gather(*work, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
    return copied


async def _all(calls: Iterable[Awaitable[_T]]) -> list[_T]:
    """Every call's result, run together; the first failure is raised once all have ended (a
    write or removal is tried on every exchange even if one fails)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [result for result in results if not isinstance(result, BaseException)]
