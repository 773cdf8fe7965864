"""Exchanges: passive storage that runs no code of ours (seed 004), behind one small interface.

An exchange stores named, write-once objects. Names are ``<domain>/<file>`` (``demo/C.0…42``,
``demo/merkle/<id>.mrk``). Writers never overwrite (`put_if_absent`), so several users write to
one exchange at once without a lock; an object is visible whole or not at all.

This module has the interface, the local (or network-mounted) folder exchange and the mapping of
kinds to factories. SFTP (`weshare.sftp`), S3 and Azure Blob (`weshare.objectstore`) implement
the same protocol; `weshare.replicas` puts several exchanges of one domain behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from weshare.errors import ExchangeError, ObjectNotFound, UsageError


class Exchange(Protocol):
    """What weshare needs from a storage service. Every method may raise `ExchangeError`."""

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        """Store `data` as `name` unless an object of that name exists (then change nothing).
        True if this call created it. Atomic: readers never see part of `data`. The caller
        reuses `data`'s buffer once this returns: never keep it."""
        ...

    async def get(self, name: str) -> bytes:
        """The object's bytes; `ObjectNotFound` if there is none."""
        ...

    async def list(self, prefix: str, after: str = "") -> list[str]:
        """Names that start with `prefix` and sort after `after`, ascending."""
        ...

    async def delete(self, name: str) -> None:
        """Remove the object if it is there (truncation, issue 16)."""
        ...

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        """Remove what writers killed midway left under `prefix` (a folder, ``demo/``, and the
        folders in it) more than `older_than_s` seconds ago: temporary files of a put that
        never finished (no put takes that long). Returns how many; 0 for stores whose puts
        leave nothing behind (S3, Azure)."""
        ...

    async def close(self) -> None:
        """Release connections; the exchange is not used afterwards."""
        ...


_TEMP_PREFIX = ".tmp-"


class FolderExchange:
    """An exchange in a local or network-mounted folder.

    `put_if_absent` writes a hidden temporary file, then `link`s it to its name: link refuses an
    existing target (like ``O_EXCL``), so no object is ever overwritten and none is seen half
    written. With `durable` each object is fsynced before it is linked (off by default: a local
    folder shares the writer's crash fate, and fsync per object costs ~4 ms here). Puts write
    one at a time: files created side by side in one folder slowed each other (436 objects of
    600 KB here: 0.33 s CPU, 0.36 s wall from one thread; 0.45 s and 0.47-0.50 s from 2 or 4)."""

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        self.root = root
        self.durable = durable
        self._writing = threading.Lock()

    def _path(self, name: str) -> Path:
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
            raise ExchangeError(f"bad object name {name!r}")
        return self.root / name

    def _put(self, name: str, data: bytes | memoryview) -> bool:
        with self._writing:
            return self._put_one(name, data)

    def _put_one(self, name: str, data: bytes | memoryview) -> bool:
        target = self._path(name)
        temp = target.parent / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # the object's folder does not exist yet
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            try:
                os.link(temp, target)  # create-only: fails if the name exists
            except FileExistsError:
                return False
            return True
        finally:
            temp.unlink(missing_ok=True)

    def _get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(name) from exc

    def _list(self, prefix: str, after: str) -> list[str]:
        folder, _, start = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        try:
            with os.scandir(base) as scan:
                entries = [
                    entry.name
                    for entry in scan
                    if entry.name.startswith(start) and not entry.is_dir(follow_symlinks=False)
                ]  # objects only: a folder (``merkle/``) is a name prefix, not an object
        except FileNotFoundError:
            return []
        head = f"{folder}/" if folder else ""
        names = (head + entry for entry in entries if not entry.startswith(_TEMP_PREFIX))
        return sorted(name for name in names if name > after)

    def _delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def _sweep(self, prefix: str, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for folder, _, names in os.walk(self._path(prefix.rstrip("/"))):
            for name in names:
                if name.startswith(_TEMP_PREFIX):
                    path = os.path.join(folder, name)
                    with contextlib.suppress(FileNotFoundError):
                        if os.stat(path, follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
        return removed

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        """See `Exchange.put_if_absent`."""
        return await asyncio.to_thread(self._wrap, self._put, name, data)

    async def get(self, name: str) -> bytes:
        """See `Exchange.get`."""
        return await asyncio.to_thread(self._wrap, self._get, name)

    async def list(self, prefix: str, after: str = "") -> list[str]:
        """See `Exchange.list`. Lists one folder level: `prefix` up to its last ``/`` names it."""
        return await asyncio.to_thread(self._wrap, self._list, prefix, after)

    async def delete(self, name: str) -> None:
        """See `Exchange.delete`."""
        await asyncio.to_thread(self._wrap, self._delete, name)

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        """See `Exchange.sweep`: the temporary files `put_if_absent` writes first."""
        removed: int = await asyncio.to_thread(self._wrap, self._sweep, prefix, older_than_s)
        return removed

    async def close(self) -> None:
        """Nothing to release."""

    @staticmethod
    def _wrap(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except ExchangeError:
            raise
        except OSError as exc:
            raise ExchangeError(f"folder exchange: {exc}") from exc


ExchangeFactory = Callable[[Mapping[str, Any]], Exchange]


def _folder(config: Mapping[str, Any]) -> Exchange:
    path = config.get("path")
    if not isinstance(path, str) or not path:
        raise UsageError('a folder exchange needs "path"')
    return FolderExchange(Path(path), durable=bool(config.get("durable", False)))


def _s3(config: Mapping[str, Any]) -> Exchange:
    from weshare.objectstore import open_s3  # obstore is loaded only when used

    return open_s3(config)


def _azure(config: Mapping[str, Any]) -> Exchange:
    from weshare.objectstore import open_azure

    return open_azure(config)


def _sftp(config: Mapping[str, Any]) -> Exchange:
    from weshare.sftp import open_sftp  # asyncssh is loaded only when used

    return open_sftp(config)


def default_kinds() -> dict[str, ExchangeFactory]:
    """The exchange kinds this version knows: ``folder`` (``{"kind": "folder", "path": DIR}``),
    ``s3``, ``azure`` (`weshare.objectstore`) and ``sftp`` (`weshare.sftp`)."""
    return {"folder": _folder, "s3": _s3, "azure": _azure, "sftp": _sftp}


def open_exchange(
    config: Mapping[str, Any], kinds: Mapping[str, ExchangeFactory] | None = None
) -> Exchange:
    """The exchange a configuration describes (``config["kind"]`` picks the factory)."""
    kinds = default_kinds() if kinds is None else kinds
    kind = config.get("kind")
    factory = kinds.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise UsageError(f"unknown exchange kind {kind!r} (known: {', '.join(sorted(kinds))})")
    return factory(config)


def normalize_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration as stored and shared: a folder's path made absolute."""
    normalized = dict(config)
    if normalized.get("kind") == "folder" and isinstance(normalized.get("path"), str):
        normalized["path"] = str(Path(normalized["path"]).resolve())
    return normalized


def describe(config: Mapping[str, Any]) -> str:
    """Where an exchange is, for people: its kind and location, never a credential."""
    kind = config.get("kind")
    if kind == "folder":
        where = str(config.get("path", ""))
    elif kind == "s3":
        where = f"bucket {config.get('bucket')}" + (
            f" at {config['endpoint']}" if config.get("endpoint") else ""
        )
    elif kind == "azure":
        where = f"container {config.get('container')} of account {config.get('account')}"
    elif kind == "sftp":
        where = (
            f"{config.get('username')}@{config.get('host')}:{config.get('port', 22)}"
            f"{config.get('path', '')}"
        )
    else:
        where = "?"
    return f"{kind}: {where}"
