"""Moving one domain's bytes to and from an exchange: push (parts, then the committing `C.x`),
pull (new `C.x` into Log) and fetching a version's content.

Write order (restic's rule): parts first, the `C.x` that refers to them last, so a reader never
sees a change whose data is missing. A `C.x` is queued in Outbox (plaintext, with its name) in
the same transaction that points the Files rows at it, then put; a rerun after a kill puts the
queued file again, and finds it already there if the first put went through.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeVar

from records.identity import Identity
from weshare.crypto import (
    ENCRYPTED_OVERHEAD,
    content_hash,
    decrypt,
    decrypt_into,
    encrypt,
    encrypt_into,
    legacy_part_id,
    legacy_part_id_key,
    open_signed,
    part_id,
    part_id_key,
    part_matches,
    sign_file,
)
from weshare.errors import InvalidFile, KeyNotHeld, ObjectNotFound
from weshare.exchange import Exchange
from weshare.formats import ActionFile, ChangeFile, Keyring, Truncation
from weshare.ids import SnowflakeIds, first_id_at, object_name, parse_object_name
from weshare.lineage import Version, parse_alias, ref_of
from weshare.parts import MAX_PART, Part, cut_stream, split_bytes
from weshare.state import WAITING, LogRow, State

_T = TypeVar("_T")
LISTING_WINDOW_MS = 10 * 60 * 1000  # re-list this far below the newest listed before (skew)
NOT_A_USER = "was not a user at that point"  # the end of a refusal's reason
REQUEUE_AFTER_S = 150.0  # a change this process queued this long ago goes up under a fresh id
AHEAD_MS = 365 * 24 * 3600 * 1000  # no id of ours goes this far ahead of our clock
PARALLEL_TRANSFERS = 4


class Progress(Protocol):
    """Where a long transfer reports how far it got (the CLI draws a bar)."""

    def begin(self, total: int, what: str, unit: str) -> None:
        """A transfer of `total` `unit`s (bytes "B", or parts) starts."""

    def advance(self, amount: int) -> None:
        """`amount` more units are done."""

    def end(self) -> None:
        """The transfer is over."""


class NoProgress:
    """Reports nothing."""

    def begin(self, total: int, what: str, unit: str) -> None:
        """Nothing."""

    def advance(self, amount: int) -> None:
        """Nothing."""

    def end(self) -> None:
        """Nothing."""


@dataclass
class Session:
    """Everything one sync of one domain works with."""

    domain: str
    folder: Path
    identity: Identity
    state: State
    exchange: Exchange
    keyring: Keyring
    ids: SnowflakeIds
    clock: Callable[[], int]
    progress: Progress = field(default_factory=NoProgress)
    refresh: Callable[[], Awaitable[Keyring | None]] | None = None
    """Reads the `U.x` files put since the last read (users, keys); returns our keyring."""
    queued: dict[str, float] = field(default_factory=dict)
    """Change files this process queued: name -> `time.monotonic()` then (`flush_outbox`)."""
    uploaded: int = 0
    downloaded: int = 0
    problems: list[str] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)
    """Files this sync wrote beside their path, which other files need as a folder: where
    each went, by its path (`Resolution.moved`)."""

    @cached_property
    def id_key(self) -> bytes:
        """The part-id key: from the domain's first key, so ids stay the same across rekeys."""
        return part_id_key(self.keyring.keys[min(self.keyring.keys)])

    @cached_property
    def id_keys(self) -> tuple[bytes, bytes]:
        """`id_key` and the key of part ids made before they were BLAKE3, for `part_matches`."""
        return self.id_key, legacy_part_id_key(self.keyring.keys[min(self.keyring.keys)])

    def full(self, name: str) -> str:
        """The exchange object name of a domain file."""
        return f"{self.domain}/{name}"


async def run_all(work: list[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run coroutines together; if one fails, cancel the others and raise its error as is
    (not wrapped in an ExceptionGroup, so callers catch `ExchangeError` and the like)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one) for one in work]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


class Buffers:
    """Part-sized buffers, reused: allocating a fresh one per part costs more here (page
    faults) than encrypting or hashing it. Used from the event loop only; a buffer whose
    owner was cancelled while a thread may still use it is never handed back."""

    def __init__(self, size: int = MAX_PART + ENCRYPTED_OVERHEAD) -> None:
        self.size = size
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        """A buffer of at least `size` bytes (a one-off one if `size` is above the pool's)."""
        if size > self.size:
            return bytearray(size)
        return self._free.pop() if self._free else bytearray(self.size)

    def give(self, *buffers: bytearray) -> None:
        """Buffers no one uses any more."""
        self._free += (b for b in buffers if len(b) == self.size)


def part_name(part: bytes) -> str:
    """seed 004: parts live in the domain's `merkle/` folder, named by their 256-bit id."""
    return f"merkle/{part.hex()}.mrk"


# --- push ---------------------------------------------------------------------------------


def _read_part(
    path: Path, part: Part, id_keys: tuple[bytes, bytes], out: bytearray
) -> memoryview | None:
    """Blocking: part `part` of the file at `path`, read into `out`; None if those bytes are not
    the part any more (the file changed since it was split) or the file is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        view = memoryview(out)[: part.length]
        if os.preadv(fd, [view], part.offset) != part.length:
            return None
    finally:
        os.close(fd)
    return view if part_matches(*id_keys, view, part.id) else None


def _seal_part(
    session: Session, path: Path, part: Part, plain: bytearray, sealed: bytearray
) -> memoryview | None:
    """Blocking: the encrypted object of part `part` of `path`, in `sealed` (None as for
    `_read_part`). The bytes encrypted are the bytes whose id was just checked, so an object
    never holds other content than its name says, even if the file is being written."""
    view = _read_part(path, part, session.id_keys, plain)
    if view is None:
        return None
    key_id, key = session.keyring.current
    return encrypt_into(key_id, key, session.full(part_name(part.id)), view, sealed)


async def upload_parts(session: Session, path: Path, parts: list[Part]) -> bool:
    """Put the parts of `path` that the exchange may lack (not in Merkle), a few at a time.
    False if the file no longer holds `parts` (changed since discovery; nothing wrong is put)."""
    state, domain = session.state, session.domain
    unique = {part.id: part for part in parts}
    missing = [unique[i] for i in unique.keys() - state.known_parts(domain, list(unique))]
    session.progress.advance(sum(part.length for part in parts) - sum(p.length for p in missing))
    if not missing:
        return True
    gate = asyncio.Semaphore(PARALLEL_TRANSFERS)
    buffers = Buffers()
    put: list[bytes] = []

    async def one(part: Part) -> None:
        async with gate:
            plain = buffers.take(part.length)
            sealed = buffers.take(part.length + ENCRYPTED_OVERHEAD)
            body = await asyncio.to_thread(_seal_part, session, path, part, plain, sealed)
            if body is not None:
                if await session.exchange.put_if_absent(session.full(part_name(part.id)), body):
                    session.uploaded += len(body)
                put.append(part.id)
            buffers.give(plain, sealed)
        session.progress.advance(part.length)

    try:
        await run_all([one(part) for part in missing])
    finally:
        state.add_parts(domain, put)
    return len(put) == len(missing)


def split_and_put(session: Session, loop: asyncio.AbstractEventLoop, path: Path) -> list[Part]:
    """Blocking (discovery's thread; `loop` runs the exchange): the parts of the file at `path`,
    each put on the exchange as soon as it is cut and hashed, unless Merkle knows it. The file
    is read once and each byte hashed once; what is encrypted is the very buffer that was
    hashed, so an object never holds other bytes than its id says even if the file is being
    written. Objects are written on other threads meanwhile; the push then finds every part
    on the exchange already (parts before the change file that lists them, as ever)."""
    state, domain = session.state, session.domain
    key_id, key = session.keyring.current
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for _ in range(PARALLEL_TRANSFERS * 2):  # at most this many objects waiting to be written
        free.put(bytearray(MAX_PART + ENCRYPTED_OVERHEAD))
    parts: list[Part] = []
    queued: set[bytes] = set()
    put: list[bytes] = []
    pending: list[concurrent.futures.Future[None]] = []
    failed = threading.Event()

    async def write(name: str, body: memoryview, sealed: bytearray, part: bytes) -> None:
        try:
            if await session.exchange.put_if_absent(name, body):
                session.uploaded += len(body)
            put.append(part)
        except BaseException:
            failed.set()
            raise
        finally:
            free.put(sealed)

    try:
        with path.open("rb") as handle:
            for offset, data in cut_stream(handle):
                part = Part(part_id(session.id_key, data), offset, len(data))
                parts.append(part)
                if part.id in queued or state.known_parts(domain, [part.id]):
                    continue
                queued.add(part.id)
                sealed = free.get()
                if failed.is_set():
                    break  # that write's error is raised below
                name = session.full(part_name(part.id))
                body = encrypt_into(key_id, key, name, data, sealed)  # FastCDC cuts <= MAX_PART
                work = write(name, body, sealed, part.id)
                pending.append(asyncio.run_coroutine_threadsafe(work, loop))
    finally:
        concurrent.futures.wait(pending)
        state.add_parts(domain, put)
    for future in pending:
        future.result()
    return parts


async def put_change(
    session: Session, name: str, plaintext: bytes, change: ChangeFile | None = None
) -> None:
    """Put a queued change file under `name` (or find it there from an earlier attempt), then
    take it off the Outbox. If another writer took the name, move to a fresh id. `change` is
    `plaintext` decoded, when the caller has it."""
    for _ in range(32):  # bounded: each retry takes an id above every change listed
        full = session.full(name)
        key_id, key = session.keyring.current
        body = sign_file(session.identity, full, encrypt(key_id, key, full, plaintext))
        if await session.exchange.put_if_absent(full, body):
            session.uploaded += len(body)
            break
        try:
            content, signer = open_signed(full, await session.exchange.get(full))
            ours = signer == session.identity.public_key and (
                decrypt(session.keyring.keys, full, content) == plaintext
            )
        except InvalidFile:
            ours = False
        if ours:
            break  # our own earlier attempt went through before a kill
        # another writer took the name (our own key on another device, or in another process,
        # makes the same ids in the same millisecond: what it put there is not this change):
        # move above every change listed now (racing writers that lost together do not all
        # try the next id, and lose again, one by one), junk names aside (a listing of its own
        # here once went above a name holding the last id there is, to a name no reader parses)
        fresh = await new_change_name(session, above=parse_object_name("C", name) or 0)
        session.state.rename_change(session.domain, name, fresh)
        session.queued[fresh] = time.monotonic()
        name = fresh
    else:
        raise InvalidFile("could not find a free change id")
    # We wrote it: record it as read, as the pull would (reading it back checks our own
    # signature and hashes again). A kill before this transaction leaves it queued: the rerun
    # finds it ours on the exchange and records it then. Not a user any more: the pull reads
    # it back and refuses it, as everyone else does.
    state, domain, public = session.state, session.domain, session.identity.public_key
    with state.transaction():
        if public in state.members_at(domain, parse_object_name("C", name) or 0):
            rows = change_rows(name, change or ChangeFile.decode(plaintext), public)
            state.add_log(domain, rows)
            state.mark_object(domain, name, None)
            if rows:
                state.saw_writer(domain, public, rows[0].version.change_id)
        state.drop_outbox(domain, name)


async def flush_outbox(session: Session) -> None:
    """Put change files that a killed (or cut off) sync queued but may not have put.

    One not on the exchange goes up under a fresh id, unless this process queued it less
    than `REQUEUE_AFTER_S` ago. Readers list change files from `LISTING_WINDOW_MS` below the
    newest they listed, so one put under its old id after a pause (the next sync may come
    hours after the failed one, and a writer whose clock lags made an id from the newest it
    saw then) fell below that window for every reader that had listed newer changes
    meanwhile, and they never read it. One this process queued a moment ago keeps its name:
    a put that timed out here may still land on the server, and the same change under two
    names would be two versions. (A killed process's last put has landed or never will by
    the time another process starts.)"""
    now = time.monotonic()
    for name, plaintext in session.state.outbox(session.domain):
        recent = now - session.queued.get(name, -math.inf) < REQUEUE_AFTER_S
        if not recent and not await _on_exchange(session, name):
            fresh = await new_change_name(session)
            session.state.rename_change(session.domain, name, fresh)
            name = fresh
        await put_change(session, name, plaintext)


async def _on_exchange(session: Session, name: str) -> bool:
    try:
        await session.exchange.get(session.full(name))
    except ObjectNotFound:
        return False
    return True


def next_change_name(session: Session, prefix: str = "C", floor: int = 0) -> str:
    """A name for a new change (or action) file, above every change seen on the exchange (and
    `floor`), above the current `U.x`, so that it is judged by the users we know of, and above
    every change queued here (a killed process queued it: this one's ids start afresh, and
    with a clock behind the exchange's ids it made that very name again)."""
    state, domain = session.state, session.domain
    newest = parse_object_name("C", state.newest_object(domain, "C.")) or 0
    queued = parse_object_name("C", state.newest_queued(domain)) or 0
    users = parse_object_name("U", state.get_config(domain, "users") or "") or 0
    # a user's change stamped decades ahead (a clock that wrong, or malice) is not followed
    # there: ids would run out (63 bits)
    above = min(max(newest, queued, users, floor), _ahead(session.clock()))
    return object_name(prefix, session.ids.next(session.clock(), above))


async def new_change_name(session: Session, above: int = 0) -> str:
    """A name for a change file about to be put: above every change listed on the exchange now
    (`newest_listed`), above id `above`, and above what `next_change_name` goes above."""
    return next_change_name(session, floor=max(above, await newest_listed(session)))


def _ahead(now_ms: int) -> int:
    """The id made `AHEAD_MS` after `now_ms`."""
    return first_id_at(now_ms + AHEAD_MS)


async def newest_listed(session: Session) -> int:
    """The newest change id on the exchange now (listed from the window readers list from):
    a change about to be put goes above it (`new_change_name`). Above only the newest one read, a
    writer whose clock lags far behind, pushing a while after its last pull, made an id that
    readers who had read newer changes meanwhile listed past, and they never read it."""
    # a name stamped more than a year ahead of our clock is junk (an untrusted exchange may
    # hold any name, and it has not been read: no user may have signed it), or a clock that
    # wrong: going above it would throw our ids that far ahead, or past the last id there is.
    # A writer's clock days ahead is followed: its readers list from there.
    ceiling = _ahead(session.clock())
    listed = (parse_object_name("C", n) or 0 for n in await _listed(session, "C"))
    return max((x for x in listed if x <= ceiling), default=0)


# --- pull ---------------------------------------------------------------------------------


def _open_from_user(
    session: Session, name: str, data: bytes, members: set[bytes]
) -> tuple[bytes, bytes]:
    """``(plaintext, signer)`` of a signed, encrypted domain file: signed for this name by a
    user of the domain, decrypted with a domain key."""
    full = session.full(name)
    content, signer = open_signed(full, data)
    if signer not in members:  # issue 16: judged by the users when its id was made
        raise InvalidFile(f"{name}: signed by someone who {NOT_A_USER}")
    return decrypt(session.keyring.keys, full, content), signer


def change_rows(name: str, change: ChangeFile, signer: bytes) -> list[LogRow]:
    """The Log rows of change file `name` (checked by `read_change`; a malformed alias raises
    `InvalidFile`)."""
    change_id = parse_object_name("C", name) or 0
    rows = []
    for index, entry in enumerate(change.entries):
        inline = bool(entry.data) or not entry.hashes
        alias = parse_alias(entry.origin, change_id)
        if alias is not None:  # a truncation's base: the version it stands for, as it was
            ref, version_id, writer = alias  # and the versions it descends from
            version = Version(
                ref, version_id, writer, entry.path, entry.origin[1:], content_hash(entry.hashes)
            )
        else:
            version = Version(
                ref_of(name, index), change_id, signer, entry.path, entry.origin,
                content_hash(entry.hashes),
            )  # fmt: skip
        rows.append(
            LogRow(version, b"".join(entry.hashes), entry.data if inline else None, entry.message)
        )
    return rows


def read_change(session: Session, name: str, data: bytes, members: set[bytes]) -> list[LogRow]:
    """The versions in change file `name`, checked: from a user (`_open_from_user`), well
    formed, inline data matching its part hashes."""
    plaintext, signer = _open_from_user(session, name, data, members)
    change = ChangeFile.decode(plaintext)
    for entry in change.entries:
        inline = bool(entry.data) or not entry.hashes
        if inline and not _inline_matches(session, entry.data, entry.hashes):
            raise InvalidFile(f"{name}: inline data does not match its part hashes")
    return change_rows(name, change, signer)


def _inline_matches(session: Session, data: bytes, hashes: tuple[bytes, ...]) -> bool:
    """True if `data` splits into parts whose ids are `hashes`: BLAKE3 ids, or all of them as
    they were made before BLAKE3 (a writer makes one kind only)."""
    parts = split_bytes(data, session.id_key)
    if tuple(p.id for p in parts) == hashes:
        return True
    legacy_key = session.id_keys[1]
    view = memoryview(data)
    legacy = (legacy_part_id(legacy_key, view[p.offset : p.offset + p.length]) for p in parts)
    return len(parts) == len(hashes) and tuple(legacy) == hashes


def read_action(session: Session, name: str, data: bytes, members: set[bytes]) -> ActionFile:
    """An action file, checked like a change file. Acting on it is issue 16's (truncate)."""
    return ActionFile.decode(_open_from_user(session, name, data, members)[0])


def listing_floor(newest: int, now_ms: int) -> int:
    """Where to start listing change files: `LISTING_WINDOW_MS` below `newest` (the newest
    accepted one the last listing held, no higher than our clock then: `_mark_listed`), so a
    writer whose clock is a little behind is still
    found; a newest id stamped in the future (a writer's clock far ahead) counts as now, so it
    cannot hide everyone else's changes."""
    ceiling = first_id_at(now_ms + LISTING_WINDOW_MS)
    return max(0, min(newest, ceiling) - (LISTING_WINDOW_MS << 22))


def _listing_mark(state: State, domain: str, prefix: str) -> int:
    """The newest accepted `prefix` file the last complete pull listed (0: none yet). Listing
    resumes below it, not below the newest file read: a sync pushes before it pulls, and
    below its own fresh change, a user back after a while skipped every change made in
    the meantime more than the window before it."""
    return parse_object_name(prefix, state.get_config(domain, f"listed {prefix}") or "") or 0


async def _listed(session: Session, prefix: str) -> list[str]:
    """The names of the `prefix` files on the exchange from the listing window up."""
    newest = _listing_mark(session.state, session.domain, prefix)
    floor = listing_floor(newest, session.clock())
    after = session.full(object_name(prefix, floor)) if newest else ""
    listed = await session.exchange.list(session.full(f"{prefix}."), after=after)
    names = [n.rpartition("/")[2] for n in listed]
    return [n for n in names if parse_object_name(prefix, n) is not None]


def _unseen(state: State, domain: str, names: list[str]) -> list[str]:
    seen = state.seen(domain, names)
    return [n for n in names if n not in seen]


def _mark_listed(state: State, domain: str, prefix: str, names: list[str], at_ms: int) -> None:
    """After a pull that listed `names` at `at_ms` (our clock) and read them: the newest of
    them accepted is where the next listing resumes (refused ones do not count: junk with a
    huge id cannot move it), but no higher than `at_ms`. A change stamped ahead of that (its
    writer's clock over a year ahead) would put the next listing above changes made meanwhile by
    clocks that are right, which it would never list."""
    accepted = state.accepted(domain, f"{prefix}.", names)
    if not accepted:
        return
    newest = min(parse_object_name(prefix, accepted[-1]) or 0, first_id_at(at_ms))
    if newest > _listing_mark(state, domain, prefix):
        state.set_config(domain, f"listed {prefix}", object_name(prefix, newest))


async def pull(session: Session) -> int:
    """Read every change file not read yet into Log; refuse (and remember) bad ones. Returns
    the number of versions recorded."""
    state, domain = session.state, session.domain
    recorded = 0
    listed_at = session.clock()
    listed_changes, listed_actions = await _listed(session, "C"), await _listed(session, "A")
    changes = _unseen(state, domain, listed_changes)
    actions = _unseen(state, domain, listed_actions)
    # The users are read again after the listing: a user added while this sync ran (it read
    # them when it began) may have written a change listed now, and judged by the users of
    # before, it was refused for good ("not a user at that point"). A U.x goes up before any
    # change its new users make (they need its key), so the users read now cover every
    # change listed before.
    if session.refresh is not None:
        session.keyring = await session.refresh() or session.keyring
    # Once per state: changes refused so by a version that judged them before reading the
    # users (see above) are judged again; those that were right to refuse are refused again.
    again = (
        []
        if state.get_config(domain, "judged again")
        else state.refused_as(domain, "C.", f"%{NOT_A_USER}")
    )
    for name in changes + state.waiting(domain, "C.") + again:
        try:
            data = await session.exchange.get(session.full(name))
        except ObjectNotFound:
            continue  # removed since the listing (truncation): nothing to read
        session.downloaded += len(data)
        try:
            members = state.members_at(domain, parse_object_name("C", name) or 0)
            rows = await asyncio.to_thread(read_change, session, name, data, members)
        except KeyNotHeld as exc:  # tried again on every pull: a later U.x may bring the key
            with state.transaction():
                state.mark_object(domain, name, f"{WAITING}{exc.reason}")
            continue
        except InvalidFile as exc:
            with state.transaction():
                state.mark_object(domain, name, exc.reason)
            continue
        with state.transaction():
            state.add_log(domain, rows)
            state.mark_object(domain, name, None)
            if rows:
                state.saw_writer(domain, rows[0].version.writer, rows[0].version.change_id)
        recorded += len(rows)
    for name in actions:
        try:
            data = await session.exchange.get(session.full(name))
        except ObjectNotFound:
            continue
        truncation = None
        try:
            action_id = parse_object_name("A", name) or 0
            members = state.members_at(domain, action_id)
            action = await asyncio.to_thread(read_action, session, name, data, members)
            truncation = Truncation.decode(action, action_id)
            reason = None
        except InvalidFile as exc:
            reason = exc.reason
        with state.transaction():
            state.mark_object(domain, name, reason)
            if truncation is not None:
                state.add_truncation(domain, name, truncation)
    with state.transaction():
        _mark_listed(state, domain, "C", listed_changes, listed_at)
        _mark_listed(state, domain, "A", listed_actions, listed_at)
        state.set_config(domain, "judged again", "1")
    return recorded


# --- fetching a version's content ----------------------------------------------------------


LocalParts = dict[bytes, tuple[Path, int, int]]  # part id -> (file, offset, length)


def _read_local(
    id_keys: tuple[bytes, bytes], source: tuple[Path, int, int], part: bytes, out: bytearray
) -> memoryview | None:
    path, offset, length = source
    try:  # checked by its id: the file may have changed since
        return _read_part(path, Part(part, offset, length), id_keys, out)
    except OSError:
        return None


def _open_part(session: Session, part: bytes, data: bytes, out: bytearray) -> memoryview:
    name = session.full(part_name(part))
    plain = decrypt_into(session.keyring.keys, name, data, out)
    if not part_matches(*session.id_keys, plain, part):
        raise InvalidFile(f"{name}: content does not match its id")
    return plain


def _write_at(path: Path, offset: int, data: memoryview) -> None:
    """Blocking: write `data` at `offset` of the file at `path` (opened for this write only, so
    a write whose task was cancelled can never land in another file through a reused fd)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written
    finally:
        os.close(fd)


@dataclass
class _Fetched:
    """A part on its way into a file: its length, and either a local source or its object."""

    length: int
    source: tuple[Path, int, int] | None = None
    body: bytes | None = None


def _place(session: Session, part: bytes, fetched: _Fetched, out: bytearray, temp: Path,
           offset: int, writing: threading.Lock) -> bool:  # fmt: skip
    """Blocking: check part `part` (a local copy by its id; an object decrypted, then by its
    id) and write it at `offset` of `temp`, holding `writing`. False if the local copy is not
    the part any more. Parts are checked side by side but written to a file one at a time: the
    kernel serializes writes to one file anyway, and its waiters spin (a 256 MiB pull here:
    1.0-1.1 s of system CPU with writes side by side, 0.7 s taking turns)."""
    if fetched.body is not None:
        plain = _open_part(session, part, fetched.body, out)
    elif fetched.source is not None:
        found = _read_local(session.id_keys, fetched.source, part, out)
        if found is None:
            return False
        plain = found
    else:
        return False
    with writing:
        _write_at(temp, offset, plain)
    return True


async def _get_part(session: Session, part: bytes) -> _Fetched:
    name = session.full(part_name(part))
    try:
        body = await session.exchange.get(name)
    except ObjectNotFound as exc:
        raise InvalidFile(f"part {part.hex()} is missing on the exchange") from exc
    session.downloaded += len(body)
    if len(body) < ENCRYPTED_OVERHEAD:
        raise InvalidFile(f"{name}: too short")
    return _Fetched(len(body) - ENCRYPTED_OVERHEAD, body=body)


async def _fetch_part(session: Session, part: bytes, local: LocalParts) -> _Fetched:
    """Where `part`'s bytes come from: a local file that holds it (checked when read), else
    its object on the exchange."""
    source = local.get(part)
    if source is not None:
        return _Fetched(source[2], source=source)
    return await _get_part(session, part)


async def write_version(session: Session, row: LogRow, temp: Path, local: LocalParts) -> list[Part]:
    """Write version `row`, whose content is in parts, to `temp` (the caller renames it into
    place); returns its parts. Parts come from local files that hold them when possible (checked
    by their id), else from the exchange. Objects are fetched a few ahead, in order (a part's
    offset is the sum of the lengths before it); each is decrypted and checked on a thread of
    its own while the next ones arrive, then written at its offset (one write at a time)."""
    ids = row.part_ids
    parts: list[Part] = []
    offset = 0
    buffers = Buffers()
    gate = asyncio.Semaphore(PARALLEL_TRANSFERS)
    writing = threading.Lock()
    fd = await asyncio.to_thread(os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)

    async def place(part: bytes, fetched: _Fetched, at: int) -> None:
        try:
            out = buffers.take(fetched.length)
            if not await asyncio.to_thread(_place, session, part, fetched, out, temp, at, writing):
                remote = await _get_part(session, part)  # the local copy changed meanwhile
                if remote.length != fetched.length:  # the same id is the same bytes
                    raise InvalidFile(f"part {part.hex()}: not the length its id had here")
                await asyncio.to_thread(_place, session, part, remote, out, temp, at, writing)
            buffers.give(out)
        finally:
            gate.release()
        session.progress.advance(1)

    try:
        async with asyncio.TaskGroup() as group:
            ahead = collections.deque(
                group.create_task(_fetch_part(session, part, local))
                for part in ids[: PARALLEL_TRANSFERS * 2]
            )
            for index, part in enumerate(ids):
                fetched = await ahead.popleft()
                if index + len(ahead) + 1 < len(ids):
                    following = ids[index + len(ahead) + 1]
                    ahead.append(group.create_task(_fetch_part(session, following, local)))
                await gate.acquire()
                group.create_task(place(part, fetched, offset))
                parts.append(Part(part, offset, fetched.length))
                offset += fetched.length
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return parts
