"""Avatar files of the directory (seed 000: ``users/<mailbox>/.avatar.png``).

An avatar is written atomically (temp file, fsync, rename) to a name derived from its SHA-256,
never from the name the user gave it, *before* the transaction that points at it; older files go
after that transaction commits. Every method here blocks on the file system: the store runs them
through an `Offload`, on a worker thread by default (`in_thread`), or on the loop's thread under
the simulator, whose virtual clock does not wait for threads (`inline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from records.directory import MailboxNumber

USERS_DIR = "users"
AVATAR_PREFIX = ".avatar-"  # seed 000's example: users/<mailbox>/.avatar.png
_TEMP_PREFIX = ".tmp-"

T = TypeVar("T")


class Offload(Protocol):
    """Runs a blocking function where it cannot stall the event loop, and awaits its result."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        """``fn(*args)``, awaited."""
        ...


async def in_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Run `fn` on the default executor's threads (the server's default)."""
    return await asyncio.to_thread(fn, *args)


async def inline(fn: Callable[..., T], /, *args: Any) -> T:
    """Run `fn` right here, on the loop's thread (for the virtual-time simulator)."""
    return fn(*args)


class AvatarFiles:
    """The avatar files under ``root/users/<14 hex>/``; paths are kept relative to `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def user_dir(self, mailbox: MailboxNumber) -> Path:
        """``root/users/<14 hex>/`` (seed 000's directory layout)."""
        return self.root / USERS_DIR / mailbox.hex

    def write(self, mailbox: MailboxNumber, avatar: bytes, sha: bytes) -> str:
        """Write the avatar atomically under its hash; returns its path relative to `root`."""
        folder = self.user_dir(mailbox)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{AVATAR_PREFIX}{sha.hex()}"
        if not final.exists():
            temp = folder / f"{_TEMP_PREFIX}{sha.hex()}"
            with open(temp, "wb") as out:
                out.write(avatar)
                out.flush()
                os.fsync(out.fileno())
            temp.replace(final)
        return str(final.relative_to(self.root))

    def prune(self, mailbox: MailboxNumber, keep: str | None) -> None:
        """Remove the mailbox's avatar files but `keep` (None: all, and the folder if empty)."""
        folder = self.user_dir(mailbox)
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            if path.name.startswith((AVATAR_PREFIX, _TEMP_PREFIX)) and (
                keep is None or str(path.relative_to(self.root)) != keep
            ):
                path.unlink(missing_ok=True)
        if keep is None:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty (seed 000 lets other files live there)

    def read(self, path: str) -> bytes:
        """The avatar at `path` (relative to `root`)."""
        return (self.root / path).read_bytes()

    def read_all(self, paths: Sequence[str | None]) -> list[bytes | None]:
        """The avatars at `paths` (None stays None), in one trip off the loop."""
        return [None if path is None else self.read(path) for path in paths]

    def sizes(self, paths: Sequence[str | None]) -> list[int | None]:
        """The sizes of the avatars at `paths` (None stays None), without reading them."""
        return [None if path is None else (self.root / path).stat().st_size for path in paths]
