"""Phase 1 of a sync (seed 004 "Local discovery"): what changed in the local folder.

Blocking (walks the folder, hashes files, writes SQLite): run it with `asyncio.to_thread`.

A file whose size and modification time match its Files row is taken as unchanged. Otherwise
it is split into parts and hashed; a new path whose hash equals a vanished tracked file is a
rename (seed: "the hash is calculated so to check for rename cases"); a vanished file nobody
renamed is a deletion, unless the remote side wants nothing at that path any more (a sync
killed after removing it, before dropping its row): then its row goes and nothing is pushed. A
file that already holds what the remote side wants at that path (a sync killed after writing
it, before recording it) is adopted, not pushed back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from weshare.crypto import content_hash
from weshare.formats import is_safe_path
from weshare.lineage import Placement
from weshare.parts import Part, encode_parts, split_file
from weshare.state import (
    CREATE,
    DELETE,
    FORK,
    LOCK_FILE,
    STATE_FILES,
    SYNC,
    UPDATE,
    FileRow,
    State,
)

TEMP_PREFIX = ".weshare-tmp-"  # files being written by a sync; never shared
MARKER = ".weshare-folder"
"""A file every sync keeps in the root of a shared folder (never shared): a folder found without
it, once it had one, is a new copy (restored, remade, or a drive's empty mount point), whose
missing files are not deletions (`weshare.sync.check_folder`)."""


@dataclass
class Skipped:
    """What a walk left out (`walk`): the folders it could not list, by path with a trailing
    slash ("" for the root; what lies in them is not known to be gone), with why; and what is
    never shared, each as a line for the user."""

    unlisted: dict[str, str] = field(default_factory=dict)
    unshared: list[str] = field(default_factory=list)


def walk(
    folder: Path, *, clean: bool = False, skipped: Skipped | None = None
) -> dict[str, os.stat_result]:
    """Regular files under `folder` by relative POSIX path (symlinks, temp files and the root's
    `MARKER` skipped; symlinked folders are not followed). Put in `skipped`: a folder that
    cannot be listed; a folder that holds a weshare state (its lock file: the state holds a
    private key; in `folder` itself only the state's files are left out); a file whose name is
    not UTF-8 or not a safe path (`is_safe_path`). With `clean`, temp files a killed sync left
    behind are removed."""
    skipped = Skipped() if skipped is None else skipped
    found: dict[str, os.stat_result] = {}
    folders = [(os.fspath(folder), "")]
    while folders:
        directory, prefix = folders.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            skipped.unlisted[prefix] = exc.strerror or str(exc)
            continue
        if any(entry.name == LOCK_FILE for entry in entries):
            if prefix:
                skipped.unshared.append(
                    f"{_shown(prefix)}: not shared, it holds a weshare state (a private key)"
                )
                continue
            # in the root, the state's own files go and the rest is listed: skipping it all
            # would take every file for deleted
            skipped.unshared.append("./: the weshare state in it is not shared (a private key)")
            entries = [entry for entry in entries if entry.name not in STATE_FILES]
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append((entry.path, f"{prefix}{entry.name}/"))
            elif not prefix and entry.name == MARKER:
                continue
            elif entry.name.startswith(TEMP_PREFIX):
                if clean:
                    os.unlink(entry.path)
            elif entry.is_file(follow_symlinks=False):
                relative = prefix + entry.name
                why = _unshareable(relative)
                if why is not None:
                    skipped.unshared.append(f"{_shown(relative)}: not shared, {why}")
                    continue
                try:
                    found[relative] = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since it was listed
    return found


def _unshareable(path: str) -> str | None:
    """Why a local file's relative `path` cannot be a name in the domain, or None."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return "its name is not UTF-8"
    return None if is_safe_path(path) else "its name has a backslash, or is too long"


def _shown(path: str) -> str:
    """`path` printable, bytes that are not UTF-8 as escapes."""
    return os.fsencode(path).decode(errors="backslashreplace")


def same_stat(row: FileRow, info: os.stat_result) -> bool:
    """True when the file looks as it did when `row` was written."""
    return row.modtime == str(info.st_mtime_ns) and row.size == info.st_size


@dataclass
class Discovered:
    """Counts of what local discovery found."""

    created: int = 0
    updated: int = 0
    renamed: int = 0
    deleted: int = 0
    adopted: int = 0
    as_recorded: bool = False
    """The folder held exactly the files Files records, as recorded (fork copies included),
    and nothing else: discovery changed nothing."""
    unread: list[str] = field(default_factory=list)
    """Files and folders that could not be read or listed (no permission, an I/O error), with
    why: left as Files records them (a tracked file is not taken for deleted), the others
    synced all the same."""


def discover(
    state: State,
    domain: str,
    folder: Path,
    id_key: bytes,
    placements: Callable[[], dict[str, Placement]],
    split: Callable[[Path, int], list[Part]] | None = None,
    *,
    new_copy: bool = False,
) -> Discovered:
    """Compare the folder with Files and mark what must be pushed (Files.push). `placements()`
    says where the remote side wants each version (asked only if a changed file's content is
    that of a version in Log, or a tracked file is gone: only then can the answer matter).
    `split(path, size)` cuts and hashes a new or changed file (by default `split_file`; a sync
    also puts a large file's parts on the exchange as it goes). With `new_copy` the folder is
    a new copy of the domain's: a tracked file it lacks is forgotten (the apply writes it
    again), neither deleted nor renamed."""
    rows = state.files(domain)
    skipped = Skipped()
    on_disk = walk(folder, clean=True, skipped=skipped)
    found = Discovered()
    found.unread += [
        f"{_shown(prefix) or './'}: not listed, {why}" for prefix, why in skipped.unlisted.items()
    ]
    found.unread += skipped.unshared
    updates: list[FileRow] = []
    fresh: list[FileRow] = []
    logged: set[str] | None = None  # the content hash of every version in Log, when needed
    for path, info in sorted(on_disk.items()):
        row = rows.get(path)
        if row is not None and (row.status == FORK or same_stat(row, info)):
            continue  # a fork's copy is not pushed; an unchanged file is not hashed
        try:
            parts = (
                split(folder / path, info.st_size) if split else split_file(folder / path, id_key)
            )
        except OSError as exc:
            if exc.filename != os.fspath(folder / path):
                raise  # not about this file (an exchange's, say)
            if not isinstance(exc, FileNotFoundError):  # gone since the walk: seen next time
                found.unread.append(f"{path}: not read, {exc.strerror or exc}")
            continue
        digest = content_hash([part.id for part in parts])
        seen = FileRow(path, digest, str(info.st_mtime_ns), info.st_size, CREATE, True,
                       encode_parts(parts), None)  # fmt: skip
        if row is not None and row.hash == digest:
            updates.append(replace(row, modtime=seen.modtime, size=seen.size))
            continue
        if logged is None:
            logged = state.version_hashes(domain)
        # a placement holds a version of Log: content no version has is in none of them, so
        # a new file's content (the usual case) needs no resolution of every version
        placement = placements().get(path) if digest in logged else None
        if placement is not None and placement.version.hash == digest:
            status = FORK if placement.conflict else SYNC
            updates.append(replace(seen, status=status, push=False, version=placement.version.ref))
            found.adopted += 1
        elif row is not None:
            status = CREATE if row.status == CREATE else UPDATE
            updates.append(replace(seen, status=status, version=row.version))
            found.updated += 1
        else:
            fresh.append(seen)

    unseen = tuple(skipped.unlisted)  # what lies in a folder not listed is not known gone
    vanished = {
        name: row
        for name, row in rows.items()
        if name not in on_disk and row.status not in (FORK, DELETE) and not name.startswith(unseen)
    }
    dropped: list[str] = []
    if new_copy:
        dropped += vanished
        vanished = {}
    by_hash: dict[str, list[FileRow]] = {}
    for row in vanished.values():
        if row.version is not None:
            by_hash.setdefault(row.hash, []).append(row)
    for new in fresh:
        olds = by_hash.get(new.hash)
        if olds:
            old = olds.pop()
            del vanished[old.name]
            dropped.append(old.name)
            updates.append(replace(new, status=UPDATE, version=old.version))
            found.renamed += 1
        else:
            updates.append(new)
            found.created += 1
    for row in vanished.values():
        if row.version is None:
            dropped.append(row.name)  # made and removed before it was ever pushed
        elif row.name not in placements():
            # the remote side wants nothing at this path any more (deleted or moved there): an
            # apply killed after removing the file but before dropping its row, or a user who
            # did the same; a deletion pushed would only make a fork with the remote change
            dropped.append(row.name)
            found.adopted += 1
        else:
            updates.append(replace(row, status=DELETE, push=True))
            found.deleted += 1

    if not updates and not dropped:
        found.as_recorded = all(
            name in on_disk and same_stat(row, on_disk[name])
            for name, row in rows.items()
            if row.status == FORK  # others differing from the folder were updates
        )
        return found
    with state.transaction():
        for name in dropped:
            state.drop_file(domain, name)
        state.put_files(domain, updates)
    return found
