"""Real exchange servers on 127.0.0.1 for the weshare tests, started by the tests themselves.

- S3: moto's `ThreadedMotoServer` (a real HTTP server that enforces ``If-None-Match: *``), one
  per test session; each test gets a bucket of its own.
- SFTP: an `asyncssh` server in the test's own event loop, chrooted to a temporary folder,
  with a password and a fresh host key; it can be stopped (every connection cut) and started
  again on the same port.
- Azure Blob: `azurite` when it is on PATH; otherwise the Azure tests are skipped, saying so.

`exchange_config` is parametrized over every kind, so one scenario runs on each.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from weshare.errors import ObjectNotFound

S3_KEY_ID = "weshare-test-key-id"
S3_SECRET = "s3-secret-never-in-clear-0123456789"
SFTP_USER = "weshare"
SFTP_PASSWORD = "sftp-password-never-in-clear-987654"
AZURITE_ACCOUNT = "devstoreaccount1"
# azurite's well-known development key (public, documented by Microsoft)
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
KINDS = ["folder", "s3", "sftp", "azure"]


class S3Server:
    """moto's threaded server on 127.0.0.1; stop and start keep the buckets (moto's state lives
    in this process) and the port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._make = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = self._make(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def _client(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET, region_name="us-east-1",
        )  # fmt: skip

    def bucket(self) -> dict[str, Any]:
        """A new bucket, and the exchange configuration that reaches it."""
        name = f"weshare-{uuid.uuid4().hex[:12]}"
        client = self._client()
        client.create_bucket(Bucket=name)
        client.close()
        return {
            "kind": "s3", "bucket": name, "endpoint": self.endpoint, "region": "us-east-1",
            "access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET, "timeout_s": 5,
            "retries": 1,
        }  # fmt: skip

    def drop(self, bucket: str) -> None:
        """Delete `bucket` and its objects (moto keeps an object over 5 MiB in a temporary
        file, open until the object goes)."""
        client = self._client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)
        client.close()


def _start_obstore_runtime(config: dict[str, Any]) -> None:
    """obstore starts one tokio runtime (threads, an epoll and an eventfd) for the process on
    first use and keeps it: start it here, before any test counts its descriptors."""
    from weshare.objectstore import open_s3

    async def warm_up() -> None:
        exchange = open_s3(config)
        with contextlib.suppress(ObjectNotFound):
            await exchange.get("warm-up")

    # on a thread of its own: this fixture may be first asked for inside a running loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, warm_up()).result()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    _start_obstore_runtime(server.bucket())
    try:
        yield server
    finally:
        server.stop()


class _Server(asyncssh.SSHServer):
    def __init__(self, owner: SftpServer) -> None:
        self._owner = owner

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._owner.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.connections = {c for c in self._owner.connections if not c.is_closed()}

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == SFTP_USER and password == SFTP_PASSWORD


class SftpServer:
    """An asyncssh SFTP server on 127.0.0.1, serving `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = 0
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    async def start(self) -> None:
        def sftp(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
            return asyncssh.SFTPServer(chan, chroot=bytes(self.root))

        self._acceptor = await asyncssh.listen(
            "127.0.0.1", self.port, server_host_keys=[self.key],
            server_factory=lambda: _Server(self), sftp_factory=sftp, allow_scp=False,
        )  # fmt: skip
        self.port = self._acceptor.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every connection (a server that went away)."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self.connections):
            conn.abort()
            await conn.wait_closed()
        self.connections.clear()

    def config(self, path: str = "/") -> dict[str, Any]:
        return {
            "kind": "sftp", "host": "127.0.0.1", "port": self.port, "username": SFTP_USER,
            "password": SFTP_PASSWORD,
            "host_key": self.key.export_public_key("openssh").decode().strip(),
            "path": path, "timeout_s": 5,
        }  # fmt: skip


@pytest.fixture
async def sftp_server(tmp_path: Path) -> AsyncIterator[SftpServer]:
    root = tmp_path / "sftp-root"
    root.mkdir()
    server = SftpServer(root)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _azure_create_container(endpoint: str, container: str) -> None:
    """PUT a container on azurite, signed with Shared Key (no Azure SDK needed)."""
    date = formatdate(usegmt=True)
    version = "2021-08-06"
    canonical = (
        "PUT\n\n\n\n\n\n\n\n\n\n\n\n"
        f"x-ms-date:{date}\nx-ms-version:{version}\n"
        f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    )
    digest = hmac.digest(base64.b64decode(AZURITE_KEY), canonical.encode(), hashlib.sha256)
    request = urllib.request.Request(
        f"{endpoint}/{container}?restype=container", method="PUT",
        headers={
            "x-ms-date": date, "x-ms-version": version, "Content-Length": "0",
            "Authorization": f"SharedKey {AZURITE_ACCOUNT}:{base64.b64encode(digest).decode()}",
        },
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5):
        pass


@contextlib.contextmanager
def azurite(tmp_path: Path) -> Iterator[str]:
    """An azurite blob server on 127.0.0.1 (skip the test if azurite is not installed)."""
    program = shutil.which("azurite-blob") or shutil.which("azurite")
    if program is None:
        pytest.skip("azurite is not on PATH (npm install -g azurite): Azure Blob not tested here")
    port = _free_port()
    scratch = tmp_path / "azurite"
    scratch.mkdir()
    process = subprocess.Popen(
        [program, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(scratch),
         "--silent", "--skipApiVersionCheck", "--disableTelemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:  # bounded: until it accepts connections or 20 s pass
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("azurite did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    finally:
        process.kill()  # node may take long to stop on SIGTERM; nothing of it needs keeping
        process.wait(10)


@pytest.fixture
async def exchange_config(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server, sftp_server: SftpServer
) -> AsyncIterator[dict[str, Any]]:
    """An empty exchange of the kind the test is parametrized with (`KINDS`). (The S3 server is
    asked for by every kind: a session fixture asked for by name starts before the test's
    descriptors are counted, one asked for later would count as a leak; the SFTP server is an
    async fixture, which cannot be asked for from inside another.)"""
    kind = request.param
    if kind == "folder":
        yield {"kind": "folder", "path": str(tmp_path / "exchange")}
    elif kind == "s3":
        config = s3_server.bucket()
        yield config
        await asyncio.to_thread(s3_server.drop, config["bucket"])
    elif kind == "sftp":
        yield sftp_server.config("/")
    else:
        with azurite(tmp_path) as endpoint:
            container = f"weshare-{uuid.uuid4().hex[:12]}"
            await asyncio.to_thread(_azure_create_container, endpoint, container)
            yield {
                "kind": "azure", "account": AZURITE_ACCOUNT, "container": container,
                "access_key": AZURITE_KEY, "endpoint": endpoint, "timeout_s": 5, "retries": 1,
            }  # fmt: skip
