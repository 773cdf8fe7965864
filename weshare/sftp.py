"""The SFTP exchange (issue 16), through `asyncssh`.

A create-only put writes a hidden temporary file (opened with ``O_EXCL``), then makes the
object's name a hard link to it (OpenSSH's ``hardlink@openssh.com``; the server's ``link``
refuses an existing name) and removes the temporary name; on a server without that extension
it falls back to SFTP v3 ``rename``, which does not overwrite either (never ``posix-rename``,
which does). So an object is never overwritten and never seen half written.

Configuration (credentials travel only encrypted, see `weshare.credentials`)::

    {"kind": "sftp", "host": H, "port": 22, "username": U, "password": P or
     "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----...", "host_key": "ssh-ed25519 AAAA...",
     "path": "/srv/weshare" (the exchange's root folder on the server), "timeout_s": 30}

`host_key` is required: the server's public host key, checked at every connection (there is
no "trust on first use"). No ssh-agent, ``~/.ssh`` key or ``~/.ssh/config`` is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import stat
import time
from collections.abc import Mapping
from typing import Any

import asyncssh

from weshare.credentials import scrub
from weshare.errors import ExchangeError, ObjectNotFound, UsageError

_TEMP_PREFIX = ".tmp-"
_CREATE_NEW = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL  # O_EXCL


class SftpExchange:
    """An exchange in a folder of an SFTP server. One SSH connection, opened on first use,
    carries every request (asyncssh pipelines them)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._host = _text(config, "host")
        self._port = int(config.get("port", 22))
        self._username = _text(config, "username")
        self._password = config.get("password") or None
        self._private_key = config.get("private_key") or None
        if self._password is None and self._private_key is None:
            raise UsageError('an sftp exchange needs "password" or "private_key"')
        try:
            self._host_key = asyncssh.import_public_key(_text(config, "host_key"))
            self._client_key = (
                asyncssh.import_private_key(self._private_key, config.get("passphrase"))
                if self._private_key
                else None
            )
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise UsageError(f"sftp exchange: bad key: {exc}") from None
        self._root = str(config.get("path") or ".")
        self._timeout = float(config.get("timeout_s", 30))
        self._secrets = tuple(
            s for s in (self._password, self._private_key, config.get("passphrase")) if s
        )
        self._connection: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SftpExchange({self._username}@{self._host}:{self._port}{self._root})"

    def _error(self, exc: BaseException) -> ExchangeError:
        what = f"sftp {self._host}:{self._port}: {type(exc).__name__}: {exc}"
        return ExchangeError(scrub(what, self._secrets))

    async def _client(self) -> asyncssh.SFTPClient:
        async with self._connecting:
            if self._sftp is None:
                connection = await asyncio.wait_for(
                    asyncssh.connect(
                        self._host, self._port, username=self._username,
                        password=self._password,
                        client_keys=[self._client_key] if self._client_key else None,
                        known_hosts=([self._host_key], [], []), agent_path=None, config=[],
                        connect_timeout=self._timeout,
                    ),
                    self._timeout,
                )  # fmt: skip
                try:
                    self._sftp = await asyncio.wait_for(
                        connection.start_sftp_client(), self._timeout
                    )
                except BaseException:
                    connection.close()
                    raise
                self._connection = connection
            return self._sftp

    async def _drop(self) -> None:
        """Forget a broken connection, so that the next call connects again."""
        connection, self._connection, self._sftp = self._connection, None, None
        if connection is not None:
            connection.abort()
            await connection.wait_closed()

    def _path(self, name: str) -> str:
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
            raise ExchangeError(f"bad object name {name!r}")
        return posixpath.join(self._root, name)

    async def _run(self, work: Any) -> Any:
        """Await `work` (a coroutine over the SFTP client) with the timeout; errors become
        `ExchangeError` (credentials scrubbed) and a lost connection is dropped."""
        try:
            return await asyncio.wait_for(work, self._timeout)
        except (ExchangeError, ObjectNotFound):
            raise
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            await self._drop()
            raise self._error(exc) from None

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        """See `weshare.exchange.Exchange.put_if_absent`."""
        target = self._path(name)
        return bool(await self._run(self._put(target, bytes(data))))

    async def _put(self, target: str, data: bytes) -> bool:
        sftp = await self._client()
        folder = posixpath.dirname(target)
        temp = posixpath.join(folder, f"{_TEMP_PREFIX}{secrets.token_hex(8)}")
        try:
            handle = await sftp.open(temp, _CREATE_NEW, encoding=None)
        except asyncssh.SFTPNoSuchFile:  # the object's folder does not exist yet
            await sftp.makedirs(folder, exist_ok=True)
            handle = await sftp.open(temp, _CREATE_NEW, encoding=None)
        try:
            async with handle:
                await handle.write(data)
            try:
                await sftp.link(temp, target)  # create-only: the server's link(2) refuses
            except asyncssh.SFTPOpUnsupported:
                await sftp.rename(temp, target)  # SFTP v3 rename: does not overwrite either
                return True
            except asyncssh.SFTPError:
                if await sftp.exists(target):
                    return False
                raise
            return True
        except asyncssh.SFTPError:
            if await sftp.exists(target):
                return False
            raise
        finally:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):  # renamed into place
                await sftp.remove(temp)

    async def get(self, name: str) -> bytes:
        """See `weshare.exchange.Exchange.get`."""
        path = self._path(name)

        async def read() -> bytes:
            sftp = await self._client()
            try:
                async with sftp.open(path, "rb", encoding=None) as handle:
                    data: bytes = await handle.read()
                    return data
            except asyncssh.SFTPNoSuchFile:
                raise ObjectNotFound(name) from None

        data: bytes = await self._run(read())
        return data

    async def list(self, prefix: str, after: str = "") -> list[str]:
        """See `weshare.exchange.Exchange.list`. Lists one folder level."""
        folder, _, start = prefix.rpartition("/")
        base = self._path(folder) if folder else self._root
        head = f"{folder}/" if folder else ""

        async def names() -> list[str]:
            sftp = await self._client()
            try:
                entries = await sftp.readdir(base)
            except asyncssh.SFTPNoSuchFile:
                return []
            names = [(str(entry.filename), entry.attrs) for entry in entries]
            return [
                head + name
                for name, attrs in names
                if name.startswith(start)
                and not name.startswith((_TEMP_PREFIX, "."))
                and not stat.S_ISDIR(attrs.permissions or 0)  # objects only, as the folder's
            ]

        found: list[str] = await self._run(names())
        return sorted(name for name in found if name > after)

    async def delete(self, name: str) -> None:
        """See `weshare.exchange.Exchange.delete`."""
        path = self._path(name)

        async def remove() -> None:
            sftp = await self._client()
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(path)

        await self._run(remove())

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        """See `weshare.exchange.Exchange.sweep`: temporary files of puts whose connection
        was lost (or whose writer was killed) before the link."""

        async def remove_stale() -> int:
            sftp = await self._client()
            cutoff = time.time() - older_than_s
            removed = 0
            folders = [self._path(prefix.rstrip("/"))]
            while folders:  # bounded: the tree under the domain's folder
                folder = folders.pop()
                try:
                    entries = await sftp.readdir(folder)
                except asyncssh.SFTPNoSuchFile:
                    continue
                for entry in entries:
                    name, attrs = str(entry.filename), entry.attrs
                    if name in (".", ".."):
                        continue
                    if stat.S_ISDIR(attrs.permissions or 0):
                        folders.append(posixpath.join(folder, name))
                    elif name.startswith(_TEMP_PREFIX) and (attrs.mtime or cutoff) < cutoff:
                        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                            await sftp.remove(posixpath.join(folder, name))
                            removed += 1
            return removed

        removed: int = await self._run(remove_stale())
        return removed

    async def close(self) -> None:
        """Close the SSH connection."""
        connection, self._connection, self._sftp = self._connection, None, None
        if connection is not None:
            connection.close()
            await connection.wait_closed()


def _text(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f'an sftp exchange needs "{key}" (a string)')
    return value


def open_sftp(config: Mapping[str, Any]) -> SftpExchange:
    """The SFTP exchange `config` describes (see the module's docstring)."""
    return SftpExchange(config)
