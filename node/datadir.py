"""The data directory's lock: one node per data directory.

Two nodes on one data dir would share a key (so an ID) and a records database, and the second
would overwrite the first one's ``api.json``. A node therefore holds an OS file lock
(``flock``) on ``DATA_DIR/node.lock`` from `DHTNode.start` until `DHTNode.stop`; the kernel
releases it when the process dies, even by ``kill -9``, so no stale lock is ever left behind.
The file holds the holder's pid, for the message another node gets.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from node.errors import DataDirInUse

LOCK_FILE = "node.lock"


class DataDirLock:
    """An exclusive lock on a data directory, held until `release()`."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path) -> DataDirLock:
        """Lock `directory` (which must exist); `DataDirInUse` if another node holds it."""
        path = directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise DataDirInUse(
                f"data dir {directory} is in use by pid {holder} (another node runs on it; "
                "give each node its own --data-dir)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(directory, fd)

    @property
    def held(self) -> bool:
        """True until `release()`."""
        return self._fd is not None

    def release(self) -> None:
        """Let another node use the directory (the file stays: removing it could let two
        nodes lock two different files of the same name)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock
