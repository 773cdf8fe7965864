"""Lineages and forks (seed 004 "Lineage", "Beauty Context"): pure functions over versions.

Each file change is a *version* that names the versions it follows (`origin`). A version no
other version follows is a *head*. Versions linked by origins form a file's lineage; heads of one
lineage, or live heads of different lineages that claim the same path, form a *group*. A group
with more than one head is a fork: two users changed the same file without seeing each other's
change. Both versions are kept: the preferred head (live before deleted, then newest id) takes the
path, every other live head is placed beside it as a Syncthing-style conflict copy
``<stem>.sync-conflict-<date>-<time>-<writer>.<ext>``. A later version that follows all heads
(`choose`) ends the fork.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from posixpath import splitext

from weshare.errors import InvalidFile
from weshare.ids import id_time_ms


@dataclass(frozen=True)
class Version:
    """What resolution needs to know of one file change."""

    ref: str  # "C.<x>/<entry index>"
    change_id: int
    writer: bytes
    path: str | None  # None: this version deletes the file
    origin: tuple[str, ...]
    hash: str


@dataclass(frozen=True)
class Placement:
    """A version that should be on disk at `path`; `conflict` for a fork's losing copy."""

    path: str
    version: Version
    conflict: bool


@dataclass(frozen=True)
class Fork:
    """A group with several heads; `heads[0]` is the one placed at the path."""

    heads: tuple[Version, ...]

    @property
    def path(self) -> str:
        """The path the fork is about (its preferred live head's, or any head's)."""
        for head in self.heads:
            if head.path is not None:
                return head.path
        return ""


@dataclass(frozen=True)
class Resolution:
    """The desired local tree and the open forks."""

    placements: dict[str, Placement]
    forks: tuple[Fork, ...]
    moved: dict[str, str] = field(default_factory=dict)
    """Files moved aside because another version needs their path as a folder: where each
    is placed, by the path its version names (see `resolve`)."""

    def places(self) -> dict[str, str]:
        """Where each version laid out is (its path, or its conflict copy's), by ref."""
        return {placement.version.ref: path for path, placement in self.placements.items()}


ALIAS_PREFIX = "="  # an origin that says "this entry is that version" (a truncation's base)
_ALIAS = re.compile(r"^=(C\.(\d{19})/(\d{1,9}))/([0-9a-f]{64})$")


def alias_of(version: Version) -> str:
    """The origin of a base entry that stands for `version` (see `weshare.truncate`):
    ``=C.<x>/<n>/<writer hex>``."""
    return f"{ALIAS_PREFIX}{version.ref}/{version.writer.hex()}"


def parse_alias(origin: tuple[str, ...], base_id: int) -> tuple[str, int, bytes] | None:
    """``(ref, change id, writer)`` if `origin` starts with an alias (a base entry: the
    versions it descends from follow), else None. `InvalidFile` for a malformed alias, one
    that does not stand for an older change than its base, or a second alias."""
    if not origin or not origin[0].startswith(ALIAS_PREFIX):
        return None
    if any(other.startswith(ALIAS_PREFIX) for other in origin[1:]):
        raise InvalidFile("C.x: one alias per entry")
    match = _ALIAS.match(origin[0])
    if match is None:
        raise InvalidFile("C.x: malformed alias")
    change_id = int(match.group(2))
    if change_id >= base_id:
        raise InvalidFile("C.x: an alias must stand for an older change than its base")
    return match.group(1), change_id, bytes.fromhex(match.group(4))


def ref_of(change_name: str, index: int) -> str:
    """The reference of entry `index` in change file `change_name`."""
    return f"{change_name}/{index}"


NAME_MAX = 255
"""Bytes in one name on the file systems a folder may live on (ext4, XFS, APFS; NTFS: 255
UTF-16 units, no fewer)."""


def conflict_name(path: str, version: Version, copy: int = 1) -> str:
    """Where a fork's losing live version is placed (Syncthing's conflict naming). A `copy`
    above 1 tells apart copies that would otherwise share a name (versions of one path by one
    writer within one second). A name that would grow past `NAME_MAX` bytes loses the end of
    its stem (whole characters), and its extension too if that alone is long: a copy no file
    system can hold was never written."""
    stem, ext = splitext(path)
    when = datetime.fromtimestamp(id_time_ms(version.change_id) / 1000, UTC)
    counter = f"-{copy}" if copy > 1 else ""
    marker = f".sync-conflict-{when:%Y%m%d-%H%M%S}-{version.writer.hex()[:7]}{counter}"
    folder, slash, base = stem.rpartition("/")
    if len(f"{base}{marker}{ext}".encode()) > NAME_MAX:
        if len(f"{marker}{ext}".encode()) > NAME_MAX // 2:
            base, ext = base + ext, ""
        room = NAME_MAX - len(f"{marker}{ext}".encode())
        base = base.encode()[:room].decode(errors="ignore")
    return f"{folder}{slash}{base}{marker}{ext}"


class _Groups:
    """Union-find over version refs."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, ref: str) -> str:
        root = ref
        while self._parent.get(root, root) != root:
            root = self._parent[root]
        while ref != root:  # path compression
            self._parent[ref], ref = root, self._parent.get(ref, ref)
        return root

    def union(self, a: str, b: str) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self._parent[max(root_a, root_b)] = min(root_a, root_b)


def _preference(version: Version) -> tuple[bool, int, str]:
    # FIELD-NOTES (Syncthing): a modify beats a delete; then the newer change wins the path
    return (version.path is not None, version.change_id, version.ref)


def _lowest_ref(members: list[Version]) -> str:
    return members[0].ref if len(members) == 1 else min(v.ref for v in members)


def resolve(versions: Iterable[Version]) -> Resolution:
    """The placements and forks that `versions` (every version seen) lead to."""
    by_ref = {version.ref: version for version in versions}
    groups = _Groups()
    followed: set[str] = set()
    for version in by_ref.values():
        for origin in version.origin:
            if origin in by_ref:
                followed.add(origin)
            # an origin not seen (truncated away, or not read yet) still links its followers:
            # every reader groups the same versions whichever old ones it holds
            groups.union(version.ref, origin)
    heads = [version for ref, version in by_ref.items() if ref not in followed]
    first_on_path: dict[str, str] = {}
    for head in heads:
        if head.path is not None:
            first = first_on_path.setdefault(head.path, head.ref)
            if first != head.ref:
                groups.union(head.ref, first)
    grouped: dict[str, list[Version]] = {}
    for head in heads:
        grouped.setdefault(groups.find(head.ref), []).append(head)

    placements: dict[str, Placement] = {}
    forks: list[Fork] = []
    losers: list[tuple[str, Version]] = []
    # most groups are one head (a file nobody edited concurrently): no sorting for those
    for members in sorted(grouped.values(), key=_lowest_ref):
        if len(members) == 1:
            ordered: tuple[Version, ...] = (members[0],)
        else:
            ordered = tuple(sorted(members, key=_preference, reverse=True))
            forks.append(Fork(ordered))
        winner, *others = ordered
        if winner.path is None:
            continue  # deleted (every head of the group is a deletion)
        placements[winner.path] = Placement(winner.path, winner, conflict=False)
        losers += [(other.path, other) for other in others if other.path is not None]
    # every live head is laid out: a conflict copy never takes a path another version has
    for path, other in losers:
        copy = 1
        name = conflict_name(path, other)
        while name in placements:  # bounded: each turn tries a name not tried before
            copy += 1
            name = conflict_name(path, other, copy)
        placements[name] = Placement(name, other, conflict=True)
    return Resolution(placements, tuple(forks), _move_files_out_of_folders(placements))


def folders_of(path: str) -> Iterable[str]:
    """The folders `path` lies in, below the shared folder: ``a/b/c`` is in ``a`` and ``a/b``."""
    at = path.find("/")
    while at != -1:
        yield path[:at]
        at = path.find("/", at + 1)


def _move_files_out_of_folders(placements: dict[str, Placement]) -> dict[str, str]:
    """Move aside every file placed at a path that other placements need as a folder (one user
    replaced a file by a folder of the same name, or two made one of each at once): the folder
    keeps the name, the file goes beside it under a conflict name, a file like any other (an
    edit or a rename of it is a change that follows its version). Nothing is lost, every
    reader lays out the same tree, and once no version lies in that folder any more the file
    takes its path again. Returns where each moved file went, by its path."""
    folders = {folder for path in placements for folder in folders_of(path)}
    clashing = sorted(path for path in placements if path in folders)
    moved: dict[str, str] = {}
    for path in clashing:
        placement = placements.pop(path)
        copy = 1
        name = conflict_name(path, placement.version)
        while name in placements or name in folders:  # bounded, as for a fork's copies
            copy += 1
            name = conflict_name(path, placement.version, copy)
        placements[name] = replace(placement, path=name)
        moved[path] = name
    return moved
