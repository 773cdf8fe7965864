"""Eight `python -m node` processes hold a user's inbox, one message on each of its 16 pages; a
fresh node reading the 16 pages at once (as `ChatClient.inbox()` does) finds all 16, run after
run, and no datagram is lost to a full socket receive buffer (issue 14, defect 6)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from node import DHTNode, SystemClock
from records import Identity, Record, inbox_keys, make_message
from records.chat import INBOX_PAGES, NONCE_SIZE, page_of
from tests.loopback import loopback_config
from tests.test_multiprocess import LISTENING

pytestmark = pytest.mark.timeout(240)

PROCESSES = 8
RUNS = 20


async def start_node(
    data_dir: Path, bootstrap: list[int]
) -> tuple[asyncio.subprocess.Process, int]:
    args = [sys.executable, "-m", "node", "--host", "127.0.0.1", "--port", "0", "--no-api"]
    args += ["--data-dir", str(data_dir), "--log-level", "WARNING"]
    for port in bootstrap:
        args += ["--bootstrap", f"127.0.0.1:{port}"]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    match = LISTENING.search(line)
    assert match, f"unexpected first line: {line!r}"
    return proc, int(match.group(2))


def one_message_per_page(sender: Identity, recipient: Identity, now: int) -> list[Record]:
    """A message from `sender` on each page of `recipient`'s inbox."""
    by_page: dict[int, Record] = {}
    nonce = 0
    while len(by_page) < INBOX_PAGES:  # bounded: each nonce lands on a uniform page
        nonce += 1
        record = make_message(
            sender,
            recipient.public_key,
            f"hello {nonce}".encode(),
            mime_type="text/plain",
            nonce=nonce.to_bytes(NONCE_SIZE, "big"),
            now=now,
        )
        by_page.setdefault(page_of(bytes.fromhex(record.values[0].id2)), record)
    return [by_page[page] for page in range(INBOX_PAGES)]


def receive_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped at the UDP sockets bound to `ports` on 127.0.0.1 (the
    last column of /proc/net/udp)."""
    drops = 0
    with open("/proc/net/udp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) in ports:
                drops += int(fields[-1])
    return drops


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="needs Linux's /proc/net/udp")
async def test_a_fresh_node_reads_all_16_pages_at_once_every_time(tmp_path: Path) -> None:
    procs: list[asyncio.subprocess.Process] = []
    ports: list[int] = []
    try:
        for i in range(PROCESSES):
            proc, port = await start_node(tmp_path / f"n{i}", ports[-3:])
            procs.append(proc)
            ports.append(port)
        alice = Identity.from_seed(b"\x0a" * 32)
        bob = Identity.from_seed(b"\x0b" * 32)
        records = one_message_per_page(alice, bob, SystemClock().now_ms())
        config = loopback_config(bootstrap=(("127.0.0.1", ports[0]),), clock=SystemClock())
        async with DHTNode(config) as writer:
            stored = await asyncio.gather(*(writer.put(r) for r in records))
        assert min(stored) >= 3
        found_per_run = []
        for run in range(RUNS):
            bootstrap = (("127.0.0.1", ports[run % PROCESSES]),)
            async with DHTNode(loopback_config(bootstrap=bootstrap, clock=SystemClock())) as fresh:
                pages = await asyncio.gather(*(fresh.get(key) for key in inbox_keys(bob.id)))
                timeouts = fresh.stats.timeouts
                drops = receive_drops({*ports, fresh.address[1]})
            found = sum(
                1
                for page, record in zip(pages, records, strict=True)
                if page is not None and record.values[0] in page.values
            )
            found_per_run.append((found, timeouts, drops))
        assert [found for found, _, _ in found_per_run] == [INBOX_PAGES] * RUNS, found_per_run
        assert all(drops == 0 for _, _, drops in found_per_run), found_per_run
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 20)
