"""One sync of one domain, in seed 004's phases.

1. local discovery (`weshare.discovery`): what changed in the folder;
2. push: the changed files' parts, then one `C.x` per batch (`weshare.transfer`);
3. remote discovery: change files newer than those seen, into Log;
4. lineage and apply: `weshare.lineage.resolve` says which version belongs at which path
   (forks placed side by side), and the folder is brought to it.

Local edits are pushed before remote ones are applied, so a remote change never overwrites an
edit that is not safe on the exchange yet; a concurrent edit then shows up as a fork. Every
step is recorded in SQLite as it completes, and every step can run again: a killed sync is
finished by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from weshare.crypto import content_hash
from weshare.discovery import MARKER, TEMP_PREFIX, Discovered, discover, same_stat, walk
from weshare.errors import InvalidFile, UsageError, WeshareError
from weshare.formats import ChangeFile, FileChange
from weshare.lineage import Fork, Placement, Resolution, folders_of, ref_of, resolve
from weshare.parts import (
    INLINE_LIMIT,
    Part,
    decode_parts,
    diff_parts,
    encode_parts,
    split_bytes,
    split_file,
)
from weshare.state import DELETE, FORK, SYNC, FileRow, LogRow, State
from weshare.transfer import (
    LocalParts,
    Session,
    flush_outbox,
    new_change_name,
    pull,
    put_change,
    split_and_put,
    upload_parts,
    write_version,
)
from weshare.truncate import collect_fossils, sweep_leftovers

BATCH_INLINE_BYTES = 8 * 1024 * 1024  # inline data per change file
BATCH_ENTRIES = 4096
KEPT_BYTES = 64 * 1024 * 1024  # small files' content kept from discovery for the push


@dataclass(frozen=True)
class Kept:
    """A small file as discovery read it: its content, its part ids and the file's stat when
    it was read (the push sends these bytes without reading again if the Files row still
    describes them)."""

    data: bytes
    ids: list[bytes]
    info: os.stat_result


def read_small(path: Path, id_key: bytes) -> tuple[Kept | None, list[Part]]:
    """Blocking: split a file that was small when listed; if it still is, with its bytes as
    read (its stat taken from the open file), else without (it grew: not read into memory)."""
    with path.open("rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_size > INLINE_LIMIT:
            return None, split_file(path, id_key)
        data = handle.read()
    parts = split_bytes(data, id_key)
    return Kept(data, [part.id for part in parts], info), parts


@dataclass
class SyncReport:
    """What one sync did."""

    discovered: Discovered
    pushed: int = 0  # file changes committed
    pulled: int = 0  # versions read from the exchange
    written: int = 0  # local files written
    removed: int = 0  # local files removed
    forks: int = 0  # forks open afterwards
    uploaded: int = 0  # bytes put on the exchange
    downloaded: int = 0  # bytes read from the exchange
    deleted: int = 0  # old change files deleted (a truncation's grace period over)
    swept: int = 0  # temporary files killed writers left on the exchanges (a daily sweep)
    problems: list[str] = field(default_factory=list)  # files that could not be written
    moved: dict[str, str] = field(default_factory=dict)  # `Session.moved`


def current_resolution(session: Session) -> Resolution:
    """Where each version belongs, from every version in Log."""
    return resolve(session.state.versions(session.domain))


def _describes(row: FileRow, kept: Kept | None) -> bool:
    """True if `row` is the file `kept` was read from, as it was then."""
    return kept is not None and same_stat(row, kept.info) and content_hash(kept.ids) == row.hash


def _small_entry(
    folder: Path, row: FileRow, id_key: bytes, old: list[bytes], kept: Kept | None
) -> FileChange | None:
    """Blocking: the change of a deleted or inline-sized file: its content as this sync's
    discovery read it (`kept`) if the row describes those bytes, else read again and checked
    against what discovery hashed; None if it changed since (the next discovery sees it)."""
    origin = (row.version,) if row.version else ()
    if row.status == DELETE:
        return FileChange((), origin, (), changes=diff_parts(old, []))
    if not _describes(row, kept):
        try:
            kept, _ = read_small(folder / row.name, id_key)
        except FileNotFoundError:
            return None
        if not _describes(row, kept):
            return None
    assert kept is not None  # `_describes` said so
    ids = kept.ids
    return FileChange((row.name,), origin, tuple(ids), changes=diff_parts(old, ids), data=kept.data)


async def _large_entry(session: Session, row: FileRow, old: list[bytes]) -> FileChange | None:
    """Upload the parts of a large file, then its change; None if it changed meanwhile."""
    path = session.folder / row.name
    parts = decode_parts(row.merkle)
    try:
        complete = await upload_parts(session, path, parts)
        info = await asyncio.to_thread(os.stat, path)
    except FileNotFoundError:
        return None
    if not complete or not same_stat(row, info):
        return None  # changed while we read it: the next discovery sees the new content
    ids = [part.id for part in parts]
    origin = (row.version,) if row.version else ()
    return FileChange((row.name,), origin, tuple(ids), changes=diff_parts(old, ids))


def _small_entries(
    folder: Path, rows: list[FileRow], id_key: bytes, old: dict[str, list[bytes]],
    kept: dict[str, Kept],
) -> list[FileChange | None]:  # fmt: skip
    return [
        _small_entry(folder, row, id_key, old.get(row.version or "", []), kept.get(row.name))
        for row in rows
    ]


def _is_small(row: FileRow) -> bool:
    return row.status == DELETE or row.size <= INLINE_LIMIT


async def push(session: Session, kept: dict[str, Kept] | None = None) -> int:
    """Commit every file marked for push; returns how many file changes were committed.
    `kept`: small files as this sync's discovery read them, by name. Change files a killed sync
    queued went up before discovery (`sync_session`)."""
    state, domain = session.state, session.domain
    pending = state.pending_files(domain)
    if not pending:
        return 0
    origins = state.log(domain, [row.version for row in pending if row.version])
    old = {ref: row.part_ids for ref, row in origins.items()}
    session.progress.begin(sum(r.size for r in pending if r.status != DELETE), "upload", "B")
    made: list[tuple[FileChange, FileRow]] = []
    try:
        small = [row for row in pending if _is_small(row)]
        for start in range(0, len(small), BATCH_ENTRIES):
            rows = small[start : start + BATCH_ENTRIES]
            entries = await asyncio.to_thread(
                _small_entries, session.folder, rows, session.id_key, old, kept or {}
            )
            made += [(e, r) for e, r in zip(entries, rows, strict=True) if e is not None]
            session.progress.advance(sum(r.size for r in rows if r.status != DELETE))
        for row in pending:
            if not _is_small(row):
                entry = await _large_entry(session, row, old.get(row.version or "", []))
                if entry is not None:
                    made.append((entry, row))
        batch: list[tuple[FileChange, FileRow | None]] = []
        inline = 0
        for entry, row in made:
            batch.append((entry, row))
            inline += len(entry.data)
            if inline >= BATCH_INLINE_BYTES or len(batch) >= BATCH_ENTRIES:
                await commit(session, batch)
                batch, inline = [], 0
        if batch:
            await commit(session, batch)
    finally:
        session.progress.end()
    return len(made)


async def commit(session: Session, batch: list[tuple[FileChange, FileRow | None]]) -> str:
    """Queue one change file holding `batch`, point the Files rows (if any) at its versions,
    put it; returns its name."""
    state, domain = session.state, session.domain
    name = await new_change_name(session)
    change = ChangeFile(tuple(entry for entry, _ in batch))
    plaintext = change.encode()
    session.queued[name] = time.monotonic()
    with state.transaction():
        state.add_outbox(domain, name, plaintext)
        updated = []
        for index, (_, row) in enumerate(batch):
            if row is not None and row.status == DELETE:
                state.drop_file(domain, row.name)
            elif row is not None:
                updated.append(replace(row, push=False, version=ref_of(name, index)))
        state.put_files(domain, updated)
    await put_change(session, name, plaintext, change)
    return name


# --- apply ---------------------------------------------------------------------------------


def _local_parts(folder: Path, rows: dict[str, FileRow]) -> LocalParts:
    """Blocking: parts that local files hold as their rows say, by a walk of the folder
    (checked again when read: a file may have changed since)."""
    on_disk = walk(folder)
    local: LocalParts = {}
    for name, row in rows.items():
        info = on_disk.get(name)
        if info is None or not same_stat(row, info):
            continue
        path = folder / name
        for part in decode_parts(row.merkle):
            local.setdefault(part.id, (path, part.offset, part.length))
    return local


def _remove_empty_parents(folder: Path, path: Path) -> None:
    parent = path.parent
    while parent != folder and parent.is_relative_to(folder):
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _row_for(placement: Placement, info: os.stat_result, parts: list[Part]) -> FileRow:
    status = FORK if placement.conflict else SYNC
    return FileRow(placement.path, placement.version.hash, str(info.st_mtime_ns), info.st_size,
                   status, False, encode_parts(parts), placement.version.ref)  # fmt: skip


def _temp_beside(target: Path) -> Path:
    return target.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}"


def _discard(temp: Path) -> None:
    """Blocking: remove a temp file that may not be there, nor its folder (one that something
    in the way kept from being made): what failed is reported, not this."""
    with contextlib.suppress(OSError):
        temp.unlink()


def _current(path: Path) -> os.stat_result | None:
    """`path`'s stat now; None if it is not there (or cannot be looked at, as `walk` skips)."""
    try:
        return os.stat(path, follow_symlinks=False)
    except OSError:
        return None


def _current_file(path: Path) -> os.stat_result | None:
    """`_current`, for a regular file only (what `walk` counts as a file)."""
    info = _current(path)
    return info if info is not None and stat.S_ISREG(info.st_mode) else None


def _obstacles(folder: Path, placements: Iterable[Placement]) -> dict[str, str]:
    """Blocking: what keeps each of `placements` from being written, by its path: a folder it
    lies in that is not a folder (a file, or a link: nothing is written through one), or
    anything but a file at its own path (a folder); placements with nothing in the way are
    left out."""
    found: dict[str, str] = {}
    folders: dict[str, str | None] = {}  # what is wrong with each folder looked at
    for placement in placements:
        path = placement.path
        for parent in folders_of(path):
            if parent not in folders:
                info = _current(folder / parent)
                folders[parent] = (
                    f"{parent} is {_kind(info)}, not a folder"
                    if info is not None and not stat.S_ISDIR(info.st_mode)
                    else None
                )
            if (wrong := folders[parent]) is not None:
                found[path] = wrong
                break
        else:
            info = _current(folder / path)
            if info is not None and not stat.S_ISREG(info.st_mode):
                found[path] = f"{_kind(info)} is in its place"
    return found


def _kind(info: os.stat_result) -> str:
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a link" if stat.S_ISLNK(mode) else "neither a file nor a folder"


def _remove_empty_trees(folder: Path, placements: Iterable[Placement]) -> None:
    """Blocking: remove each folder at the path of one of `placements` that holds no file,
    deepest first (one that does, or gets one meanwhile, stays: `rmdir` checks)."""
    for placement in placements:
        path = folder / placement.path
        if not path.is_dir() or path.is_symlink():
            continue
        for inside, _, _ in os.walk(path, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(inside)


def _move_into_place(temp: Path, target: Path, row: FileRow | None) -> os.stat_result | None:
    """Blocking: rename the finished `temp` over `target`, unless the user changed `target`
    since the apply looked (a download takes a while): a file that is not there, or that still
    looks as its Files `row` says (that version is in the Log), is safe to replace; any other
    is an edit the next sync pushes, so `temp` goes and None comes back. The stat returned is
    the temp file's, taken before the rename: an edit right after it still shows."""
    now = _current(target)
    if now is not None and (row is None or not same_stat(row, now)):
        temp.unlink()
        return None
    info = os.stat(temp)
    os.replace(temp, target)
    return info


def _write_inline(folder: Path, placements: list[Placement], log: dict[str, LogRow],
                  rows: dict[str, FileRow], id_key: bytes) -> list[FileRow | str]:  # fmt: skip
    """Blocking: write small versions whose content travelled inline (temp file, then rename).
    A row per file written, or the problem that stopped it; nothing for a file the user
    changed meanwhile (`_move_into_place`). The parts are the version's own: the pull checked
    that the data splits into them."""
    done: list[FileRow | str] = []
    folders: set[Path] = set()
    for placement in placements:
        row = log[placement.version.ref]
        data = row.data or b""
        ids = row.part_ids
        parts = [Part(ids[0], 0, len(data))] if len(ids) == 1 else split_bytes(data, id_key)
        target = folder / placement.path
        temp = _temp_beside(target)
        try:
            if target.parent not in folders:
                target.parent.mkdir(parents=True, exist_ok=True)
                folders.add(target.parent)
            temp.write_bytes(data)
            info = _move_into_place(temp, target, rows.get(placement.path))
            if info is not None:
                done.append(_row_for(placement, info, parts))
        except OSError as exc:
            _discard(temp)
            done.append(f"{placement.path}: {exc}")
    return done


async def _write_large(
    session: Session, placement: Placement, row: LogRow, local: LocalParts, held: FileRow | None
) -> FileRow | None:
    """Write a version in parts to a temp file, then move it to its path (`_move_into_place`,
    `held` the path's Files row); None if the user changed the file meanwhile."""
    target = session.folder / placement.path
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    temp = _temp_beside(target)
    try:
        parts = await write_version(session, row, temp, local)
        info = await asyncio.to_thread(_move_into_place, temp, target, held)
    finally:
        await asyncio.to_thread(_discard, temp)
    return None if info is None else _row_for(placement, info, parts)


def _holds(row: FileRow | None, placement: Placement) -> bool:
    """True if `row` records its file as holding `placement` already, nothing to push."""
    return (
        row is not None
        and not row.push
        and row.version == placement.version.ref
        and row.hash == placement.version.hash
        and row.status == (FORK if placement.conflict else SYNC)
    )


def _to_check(resolution: Resolution, rows: dict[str, FileRow]) -> set[str]:
    """The paths an apply may have to write or remove: placements their rows do not record as
    held, rows no placement wants, and every fork copy (one deleted is laid out again). A row
    that holds its placement is left alone without looking at the folder: had its file
    changed or gone before discovery, discovery would have marked it to push (so it would not
    hold); if it changed or went since, the next discovery pushes that (a file deleted during
    a sync is not brought back)."""
    placements = resolution.placements
    paths = {path for path, wanted in placements.items() if not _holds(rows.get(path), wanted)}
    paths.update(name for name, row in rows.items() if name not in placements or row.status == FORK)
    return paths


def _stat_files(folder: Path, paths: Iterable[str]) -> dict[str, os.stat_result]:
    """Blocking: `walk`'s view of `paths` alone (regular files only; absent ones left out)."""
    return {path: info for path in paths if (info := _current_file(folder / path)) is not None}


def _plan(
    session: Session, resolution: Resolution, rows: dict[str, FileRow],
    on_disk: dict[str, os.stat_result], paths: set[str],
) -> list[Placement]:  # fmt: skip
    """The placements to write among `paths` (`_to_check`); rows already holding their version
    are brought up to date."""
    state, domain = session.state, session.domain
    to_write: list[Placement] = []
    current: list[FileRow] = []
    placements = resolution.placements
    with state.transaction():
        for path in sorted(paths & placements.keys()):
            placement = placements[path]
            row, info = rows.get(path), on_disk.get(path)
            if row is not None and row.push:
                continue  # a local change waits for the next push
            if info is not None and (row is None or not same_stat(row, info)):
                continue  # a local file we have not discovered yet: never clobber it
            if row is not None and row.hash == placement.version.hash and info is not None:
                status = FORK if placement.conflict else SYNC
                if row.version != placement.version.ref or row.status != status:
                    current.append(replace(row, version=placement.version.ref, status=status))
                continue
            to_write.append(placement)
        state.put_files(domain, current)
    return to_write


async def apply(session: Session, resolution: Resolution) -> tuple[int, int]:
    """Bring the folder to `resolution`: write what is missing or older, remove what no version
    wants any more. Never overwrites a file with local changes not pushed yet. Returns
    (written, removed)."""
    state, domain, folder = session.state, session.domain, session.folder
    rows = state.files(domain)
    paths = _to_check(resolution, rows)
    on_disk = await asyncio.to_thread(_stat_files, folder, paths)
    to_write = _plan(session, resolution, rows, on_disk, paths)
    log = state.log(domain, [placement.version.ref for placement in to_write])
    blocked = await asyncio.to_thread(_obstacles, folder, to_write)
    session.progress.begin(sum(_pieces(log[p.version.ref]) for p in to_write), "download", "part")
    try:
        written = await _write(session, [p for p in to_write if p.path not in blocked], log, rows)
        removed = await asyncio.to_thread(_remove_unwanted, session, resolution, rows)
        if blocked:
            # the files just removed may have been in the way: a file where a folder goes now,
            # or the last files of a folder where a file goes; a folder that holds no file is
            # in no version (only files are shared): it makes way too
            later = [p for p in to_write if p.path in blocked]
            await asyncio.to_thread(_remove_empty_trees, folder, later)
            still = await asyncio.to_thread(_obstacles, folder, later)
            session.problems += [f"{path}: not written, {why}" for path, why in still.items()]
            written += await _write(session, [p for p in later if p.path not in still], log, rows)
    finally:
        session.progress.end()
    done = set(written)
    session.moved.update((path, name) for path, name in resolution.moved.items() if name in done)
    return len(written), removed


async def _write(
    session: Session, to_write: list[Placement], log: dict[str, LogRow], rows: dict[str, FileRow]
) -> list[str]:
    """Write the files of `to_write` (nothing in their way), record each in Files, and the
    problems that kept any from being written; returns the paths written."""
    state, domain, folder = session.state, session.domain, session.folder
    small = [p for p in to_write if log[p.version.ref].data is not None]
    large = [p for p in to_write if log[p.version.ref].data is None]
    written: list[FileRow | str] = []
    try:
        for start in range(0, len(small), BATCH_ENTRIES):
            chunk = small[start : start + BATCH_ENTRIES]
            written += await asyncio.to_thread(
                _write_inline, folder, chunk, log, rows, session.id_key
            )
            session.progress.advance(len(chunk))
        if large:
            local = await asyncio.to_thread(_local_parts, folder, rows)
        for placement in large:
            try:
                version = log[placement.version.ref]
                done = await _write_large(
                    session, placement, version, local, rows.get(placement.path)
                )
                if done is not None:
                    written.append(done)
            except (InvalidFile, OSError) as exc:
                written.append(f"{placement.path}: {exc}")
    finally:
        with state.transaction():
            state.put_files(domain, (done for done in written if isinstance(done, FileRow)))
    session.problems += [done for done in written if isinstance(done, str)]
    return [done.name for done in written if isinstance(done, FileRow)]


def _pieces(row: LogRow) -> int:
    """Progress units of writing `row`: one for a file whose content came inline, else its
    parts."""
    return 1 if row.data is not None else len(row.part_ids)


def _remove_unwanted(session: Session, resolution: Resolution, rows: dict[str, FileRow]) -> int:
    """Blocking: remove the files no version wants any more, each only if it still looks as
    its row says when it is removed (an edit made during the sync is pushed by the next)."""
    state, domain, folder = session.state, session.domain, session.folder
    removed = 0
    for name, row in rows.items():
        if name in resolution.placements or row.push or row.version is None:
            continue
        info = _current_file(folder / name)
        if info is not None and same_stat(row, info):
            (folder / name).unlink(missing_ok=True)
            _remove_empty_parents(folder, folder / name)
            removed += 1
        elif info is not None and row.status != FORK:
            continue  # edited since discovery: the next sync pushes it, its lineage decides
        with state.transaction():
            state.drop_file(domain, name)  # an edited fork copy stays as a new local file
    return removed


async def sync_session(session: Session) -> SyncReport:
    """Run the four phases once."""
    loop = asyncio.get_running_loop()

    @functools.cache
    def placements() -> dict[str, Placement]:
        return current_resolution(session).placements  # only when a local file changed or went

    kept: dict[str, Kept] = {}
    kept_bytes = 0

    def split(path: Path, size: int) -> list[Part]:
        # a large file's parts go up while it is hashed (one read); small ones travel inline,
        # their bytes kept for the push (up to KEPT_BYTES: the push reads the others again)
        nonlocal kept_bytes
        if size > INLINE_LIMIT:
            return split_and_put(session, loop, path)
        read, parts = read_small(path, session.id_key)
        if read is not None and kept_bytes + len(read.data) <= KEPT_BYTES:
            kept[path.relative_to(session.folder).as_posix()] = read
            kept_bytes += len(read.data)
        return parts

    new_copy = await asyncio.to_thread(check_folder, session.state, session.domain, session.folder)
    # Change files a killed sync queued go up first: discovery compares the folder with what
    # the Log says the remote side wants, and our own queued changes are part of that (a file
    # renamed back to where a queued rename took it from was adopted as in place, then the
    # rename went up and the pushed deletion of its new name lost the content).
    await flush_outbox(session)
    found = await asyncio.to_thread(
        functools.partial(discover, new_copy=new_copy),
        session.state, session.domain, session.folder, session.id_key, placements, split,
    )  # fmt: skip
    if new_copy:
        session.problems.append(
            f"{MARKER} was missing from {session.folder}: taken for a new copy of the folder (a "
            "file it lacks is written again, not deleted)"
        )
        await asyncio.to_thread(mark_folder, session.folder, session.domain)
    session.problems += found.unread
    report = SyncReport(found)
    report.pushed = await push(session, kept)
    kept.clear()
    report.pulled = await pull(session)
    report.deleted = await collect_fossils(session)
    report.swept = await sweep_leftovers(session)
    state = session.state
    settled = state.settled(session.domain)
    if found.as_recorded and settled is not None and settled[0] == state.generation():
        # nothing in the folder, Log or Files has changed since an apply completed: applying
        # again would find every file in place (resolving every version and walking the
        # folder again: most of a sync that finds nothing to do)
        report.forks = settled[1]
    else:
        problems = len(session.problems)
        resolution = current_resolution(session)
        report.written, report.removed = await apply(session, resolution)
        report.forks = len(resolution.forks)
        if len(session.problems) == problems:
            state.set_settled(session.domain, report.forks)
    report.uploaded, report.downloaded = session.uploaded, session.downloaded
    report.problems = list(session.problems)
    report.moved = dict(session.moved)
    return report


def check_folder(state: State, domain: str, folder: Path) -> bool:
    """Blocking: before a sync, make sure `folder` is the domain's shared folder as the last
    sync left it; True if it is a new copy (see `MARKER`). A folder that is not there (moved,
    deleted, or on a drive not mounted) stops the sync: taken as empty, it deleted every file
    for every user; so does one whose marker names another domain (two domains in one folder
    would share each other's files). One without its marker, once it had one, is a new copy:
    its missing files are written again, not deleted. The first sync of a state that never
    made the marker (a new domain, or a state kept by an older version) makes it."""
    if not folder.is_dir():
        raise WeshareError(
            f"{folder}: the shared folder is not there (moved, or on a drive not mounted?); "
            "nothing was synced. Put it back, or make it again (empty) to get every file again"
        )
    marker = folder / MARKER
    if marker.is_file():
        owner = marker.read_text(errors="replace").strip()
        if owner not in ("", domain):
            raise WeshareError(
                f"{folder} is the shared folder of {owner} (see its {MARKER}); nothing was "
                "synced: each domain needs a folder of its own"
            )
        return False
    if state.get_config(domain, "marker") is None:
        mark_folder(folder, domain)
        state.set_config(domain, "marker", MARKER)
        return False
    return True


def mark_folder(folder: Path, domain: str) -> None:
    """Blocking: write `folder`'s `MARKER`, naming the domain it is shared in."""
    (folder / MARKER).write_text(f"{domain}\n")


def find_fork(resolution: Resolution, ref: str) -> Fork:
    """The open fork that has `ref` among its heads."""
    for fork in resolution.forks:
        if any(head.ref == ref for head in fork.heads):
            return fork
    raise UsageError(f"{ref} is not a head of an open fork (see `forks`)")


async def choose(session: Session, ref: str, message: str = "") -> str:
    """End the fork that has head `ref`: a signed change that follows every head of the fork and
    keeps `ref`'s content (seed 004 "Beauty Context": a user picks his favourite version).
    Returns the new version's reference."""
    fork = find_fork(current_resolution(session), ref)
    chosen = session.state.log(session.domain, [ref])[ref]
    names = (chosen.version.path,) if chosen.version.path is not None else ()
    parts = chosen.part_ids
    origin = tuple(sorted(head.ref for head in fork.heads))
    entry = FileChange(
        names, origin, tuple(parts), message or f"chose {ref}", diff_parts([], parts),
        chosen.data or b"",
    )  # fmt: skip
    return ref_of(await commit(session, [(entry, None)]), 0)
