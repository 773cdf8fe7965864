"""Ending the tasks an object owns (STYLE 9: whoever creates a task cancels and awaits it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until every one has finished (their errors are dropped: they
    were cancelled on purpose)."""
    owned = list(tasks)  # the owner's set shrinks as tasks finish
    for task in owned:
        task.cancel()
    if owned:
        await asyncio.gather(*owned, return_exceptions=True)
