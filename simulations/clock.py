"""An event loop on virtual time: when nothing is ready to run, the clock jumps to the next
timer instead of sleeping, so hours of simulated network run in seconds.

Everything scheduled through the loop (``call_later``, ``asyncio.sleep``, timeouts) follows the
virtual clock; the node reads wall time from a `node.LoopClock` over this loop. Threads are not
simulated: code under simulation must not wait on real I/O.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# How long (wall seconds) to wait for real I/O when no virtual timer is pending, before deciding
# the simulation is stuck.
_IDLE_WALL_WAIT = 2.0


class _VirtualSelector(selectors.BaseSelector):
    """Polls the real selector without blocking; a wait becomes a jump of the virtual clock."""

    def __init__(self, loop_clock: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = loop_clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready:
            return ready
        if timeout == 0:
            return []
        if self._clock.executor_jobs:
            # work in a thread (`run_in_executor`, `asyncio.to_thread`) takes no virtual time:
            # wait for it to finish before time moves on
            return self._real.select(_IDLE_WALL_WAIT)
        if timeout is None:
            # No timer at all: only real I/O (a thread finishing) could wake us.
            ready = self._real.select(_IDLE_WALL_WAIT)
            if not ready:
                raise RuntimeError("virtual-time loop is idle with nothing scheduled: deadlock")
            return ready
        if timeout > 0:
            self._clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose `time()` is virtual and jumps over idle periods."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = start
        self.executor_jobs = 0
        """Calls running in the executor, which the virtual clock waits for."""
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        """The virtual time in seconds."""
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward."""
        self._virtual_now += seconds

    def run_in_executor(  # type: ignore[override]  # typeshed's TypeVarTuple signature
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Run `func` in a thread as usual; the virtual clock waits for it (a file write in a
        thread takes no virtual time, as if it were instant)."""
        future = super().run_in_executor(executor, func, *args)
        self.executor_jobs += 1
        future.add_done_callback(self._job_done)
        return future

    def _job_done(self, _future: asyncio.Future[Any]) -> None:
        self.executor_jobs -= 1


class LeakedTasks(RuntimeError):
    """`run_virtual`'s coroutine returned while tasks it started were still running."""


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run `main` to completion on a fresh `VirtualTimeLoop`.

    Every task must have ended by the time `main` returns (STYLE 9: an owner ends what it
    started): leftover tasks are cancelled, then `LeakedTasks` names them."""
    loop = VirtualTimeLoop(start)
    leaked: list[asyncio.Task[Any]] = []
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(main)
        loop.run_until_complete(asyncio.sleep(0))  # tasks that were ending as main returned
        leaked = [t for t in asyncio.all_tasks(loop) if not t.done()]
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    if leaked:
        raise LeakedTasks(f"tasks left running: {leaked}")
    return result
