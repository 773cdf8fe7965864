"""Putting a large file's parts on the exchange while the file is cut (discovery, phase 1).

One thread reads the file once and cuts it (FastCDC); each part is copied out of the cutter's
buffer into a slot of its own, and two worker threads compute its keyed id and, unless Merkle
knows it, encrypt it from that same slot; the exchange writes it meanwhile. HMAC-SHA256
(hashlib) and AES-GCM (cryptography) release the GIL on large buffers, so cutting, hashing,
encrypting and writing use both cores instead of one after the other: on the 2-core machine
of `python -m weshare.bench` hashing and encrypting were two thirds of the time the discovery
thread spent on a 256 MiB file.

The bytes encrypted are the very bytes whose id was computed (the slot), so an object never
holds other bytes than its name says, even if the file is being written meanwhile; parts are
listed in file order whatever order the workers finish in.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import threading
from pathlib import Path

from weshare.crypto import ENCRYPTED_OVERHEAD, encrypt_into, part_id
from weshare.parts import MAX_PART, Part, cut_stream
from weshare.transfer import Session, part_name

HASHING_THREADS = 2  # the machine's cores: one more would only queue behind them
HASHED_AHEAD = 2  # parts being hashed while the next are cut
SLOTS = 6  # parts in flight in all (hashed, encrypted or written): 6 x 4 MiB of buffers

_Slot = tuple[bytearray, bytearray]  # a part's plaintext, its encrypted object


class PartPipeline:
    """Cuts files and puts their parts on the exchange, for one sync. Blocking `split` runs
    on discovery's thread while `loop` (which runs the exchange) is free; `close` stops the
    worker threads (idle by then: `split` returns once its work is done). Buffers are made
    once and reused for every file."""

    def __init__(self, session: Session, loop: asyncio.AbstractEventLoop) -> None:
        self._session = session
        self._loop = loop
        self._slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._made = False  # the slots are made by the first large file, if any
        self._workers = concurrent.futures.ThreadPoolExecutor(
            HASHING_THREADS, thread_name_prefix="weshare-hash"
        )

    def close(self) -> None:
        """Stop the worker threads (after the work they were given)."""
        self._workers.shutdown(wait=True)

    def __enter__(self) -> PartPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def split(self, path: Path) -> list[Part]:
        """Blocking: the parts of the file at `path`, each put on the exchange unless Merkle
        knows it. Returns once every object is written (parts before the change file that lists
        them); raises the first write's error."""
        if not self._made:
            for _ in range(SLOTS):
                self._slots.put((bytearray(MAX_PART), bytearray(MAX_PART + ENCRYPTED_OVERHEAD)))
            self._made = True
        return _FilePut(self._session, self._loop, self._workers, self._slots).run(path)


class _FilePut:
    """The parts of one file on their way to the exchange."""

    def __init__(
        self,
        session: Session,
        loop: asyncio.AbstractEventLoop,
        workers: concurrent.futures.ThreadPoolExecutor,
        slots: queue.SimpleQueue[_Slot],
    ) -> None:
        self.session, self.loop, self.workers, self.slots = session, loop, workers, slots
        self.parts: list[Part] = []
        self.queued: set[bytes] = set()
        self.put: list[bytes] = []  # appended on the loop's thread
        self.sealing: list[concurrent.futures.Future[None]] = []
        self.writes: list[concurrent.futures.Future[None]] = []  # appended by the workers
        self.lock = threading.Lock()  # guards `writes`
        self.failed = threading.Event()

    def run(self, path: Path) -> list[Part]:
        hashing: collections.deque[tuple[int, memoryview, _Slot, concurrent.futures.Future[bytes]]]
        hashing = collections.deque()
        try:
            with path.open("rb") as handle:
                for offset, data in cut_stream(handle):
                    slot = self.slots.get()  # blocks while SLOTS parts are in flight
                    if self.failed.is_set():
                        self.slots.put(slot)
                        break  # that write's error is raised below
                    plain = memoryview(slot[0])[: len(data)]  # FastCDC cuts <= MAX_PART
                    plain[:] = data  # out of the cutter's buffer, which the next cut reuses
                    job = self.workers.submit(part_id, self.session.id_key, plain)
                    hashing.append((offset, plain, slot, job))
                    while hashing and (hashing[0][3].done() or len(hashing) >= HASHED_AHEAD):
                        self._settle(*hashing.popleft())
                while hashing and not self.failed.is_set():
                    self._settle(*hashing.popleft())
        finally:
            for _, _, slot, job in hashing:  # stopped early: these are never sealed
                concurrent.futures.wait([job])
                self.slots.put(slot)
            concurrent.futures.wait(self.sealing)  # every write is scheduled once they are done
            with self.lock:
                writes = list(self.writes)
            concurrent.futures.wait(writes)
            self.session.state.add_parts(self.session.domain, self.put)
        for future in [*self.sealing, *writes]:
            future.result()
        return self.parts

    def _settle(
        self, offset: int, plain: memoryview, slot: _Slot, job: concurrent.futures.Future[bytes]
    ) -> None:
        """Part `plain` is hashed: list it, and have it encrypted and put unless Merkle knows
        it (or this file already holds it)."""
        state, domain = self.session.state, self.session.domain
        digest = job.result()
        self.parts.append(Part(digest, offset, len(plain)))
        if digest in self.queued or state.known_parts(domain, [digest]):
            self.slots.put(slot)
            return
        self.queued.add(digest)
        self.sealing.append(self.workers.submit(self._seal, digest, plain, slot))

    def _seal(self, digest: bytes, plain: memoryview, slot: _Slot) -> None:
        """A worker: encrypt the part from its slot and hand the object to the exchange."""
        try:
            key_id, key = self.session.keyring.current
            name = self.session.full(part_name(digest))
            body = encrypt_into(key_id, key, name, plain, slot[1])
            work = self._write(name, body, slot, digest)
            write = asyncio.run_coroutine_threadsafe(work, self.loop)
        except BaseException:
            self.failed.set()
            self.slots.put(slot)
            raise
        with self.lock:
            self.writes.append(write)

    async def _write(self, name: str, body: memoryview, slot: _Slot, digest: bytes) -> None:
        try:
            if await self.session.exchange.put_if_absent(name, body):
                self.session.uploaded += len(body)
            self.put.append(digest)
        except BaseException:
            self.failed.set()
            raise
        finally:
            self.slots.put(slot)
