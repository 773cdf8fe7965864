"""Lineage resolution (pure): heads, forks, conflict copies, choices that end forks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weshare.errors import InvalidFile
from weshare.lineage import (
    NAME_MAX,
    Fork,
    Placement,
    Resolution,
    Version,
    alias_of,
    conflict_name,
    parse_alias,
    resolve,
)

A, B = b"\xaa" * 32, b"\xbb" * 32


def v(ref: str, path: str | None, *origin: str, writer: bytes = A, h: str = "") -> Version:
    change_id = int(ref.split(".")[1].split("/")[0]) << 22
    return Version(ref, change_id, writer, path, origin, h or ref)


def test_a_chain_has_one_head_and_no_fork() -> None:
    result = resolve([v("C.1/0", "f"), v("C.2/0", "f", "C.1/0"), v("C.3/0", "g", "C.2/0")])
    assert list(result.placements) == ["g"]
    assert result.forks == ()
    assert result.placements["g"].version.ref == "C.3/0"


def test_two_edits_of_one_version_fork_and_the_newer_takes_the_path() -> None:
    older, newer = v("C.2/0", "f", "C.1/0", writer=A), v("C.3/0", "f", "C.1/0", writer=B)
    result = resolve([v("C.1/0", "f"), older, newer])
    assert result.placements["f"].version == newer
    copy = conflict_name("f", older)
    assert result.placements[copy].version == older
    assert result.placements[copy].conflict
    assert copy.startswith("f.sync-conflict-")
    assert copy.endswith("-aaaaaaa")
    assert [h.ref for h in result.forks[0].heads] == ["C.3/0", "C.2/0"]


def test_copies_that_would_share_a_name_are_told_apart() -> None:
    """One writer's two versions of a path within a second, both losing to a third: each gets
    a copy of its own (``-2`` after the writer), and `places` says where each head is."""
    first, second = v("C.2/0", "f.txt", "C.1/0"), v("C.2/1", "f.txt", "C.1/0")
    winner = v("C.3/0", "f.txt", "C.1/0", writer=B)
    result = resolve([v("C.1/0", "f.txt"), first, second, winner])
    name = conflict_name("f.txt", first)
    assert conflict_name("f.txt", second) == name  # the clash
    places = result.places()
    assert places == {"C.3/0": "f.txt", "C.2/1": name, "C.2/0": name[:-4] + "-2.txt"}
    assert set(places.values()) == set(result.placements)


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("d/" + "n" * 250 + ".txt", ".txt"),
        ("é" * 125 + ".md", ".md"),  # two bytes each: cut between characters, never inside
        ("n" * 10 + "." + "e" * 200, ""),  # an extension that alone is long goes too
    ],
)
def test_a_conflict_copy_of_a_long_name_fits_in_a_name(path: str, kept: str) -> None:
    name = conflict_name(path, v("C.1/0", path))
    last = name.rpartition("/")[2]
    assert len(last.encode()) <= NAME_MAX
    assert ".sync-conflict-" in last
    assert last.endswith(kept)
    assert name.startswith(path.rpartition("/")[0])
    assert path.rpartition("/")[2].startswith(last.partition(".sync-conflict-")[0])
    assert conflict_name("short.txt", v("C.1/0", "x")).startswith("short.sync-conflict-")


def test_an_alias_comes_first_and_the_versions_it_descends_from_follow() -> None:
    old = Version(f"C.{1 << 22:019d}/3", 1 << 22, A, "f", (), "h")
    alias = alias_of(old)
    later = 5 << 22
    assert parse_alias((alias,), later) == (old.ref, old.change_id, A)
    assert parse_alias((alias, "C.1/0", "C.2/0"), later) == (old.ref, old.change_id, A)
    assert parse_alias(("C.1/0", alias), later) is None  # not a base entry
    assert parse_alias((), later) is None
    with pytest.raises(InvalidFile):
        parse_alias((alias, alias), later)  # one alias per entry
    with pytest.raises(InvalidFile):
        parse_alias((alias,), 1 << 22)  # an alias stands for an older change than its base
    with pytest.raises(InvalidFile):
        parse_alias(("=C.1/0/zz",), later)


def test_versions_that_follow_one_unseen_version_are_one_lineage() -> None:
    """A base holds a head, not the older version a concurrent change followed: through that
    version, held or not, both are heads of one lineage."""
    head, concurrent = v("C.3/0", "f", "C.1/0", "C.2/0"), v("C.4/0", "g", "C.1/0", writer=B)
    with_old = resolve([v("C.1/0", "f"), v("C.2/0", "f", "C.1/0"), head, concurrent])
    without = resolve([head, concurrent])
    assert [[h.ref for h in f.heads] for f in without.forks] == [["C.4/0", "C.3/0"]]
    assert without.forks == with_old.forks
    assert without.places() == with_old.places()


def test_a_choice_that_follows_both_heads_ends_the_fork() -> None:
    versions = [v("C.1/0", "f"), v("C.2/0", "f", "C.1/0"), v("C.3/0", "f", "C.1/0")]
    chosen = v("C.4/0", "f", "C.2/0", "C.3/0", h="C.2/0")
    result = resolve([*versions, chosen])
    assert result.forks == ()
    assert list(result.placements) == ["f"]
    assert result.placements["f"].version == chosen


def test_modify_beats_delete() -> None:
    deleted, edited = v("C.3/0", None, "C.1/0"), v("C.2/0", "f", "C.1/0")
    result = resolve([v("C.1/0", "f"), deleted, edited])
    assert result.placements["f"].version == edited
    assert len(result.forks) == 1


def test_a_deletion_alone_removes_the_file() -> None:
    assert resolve([v("C.1/0", "f"), v("C.2/0", None, "C.1/0")]).placements == {}


def test_two_new_files_with_one_name_are_a_fork() -> None:
    result = resolve([v("C.1/0", "f", writer=A), v("C.2/0", "f", writer=B)])
    assert len(result.forks) == 1
    assert len(result.placements) == 2


def test_renaming_one_of_two_same_named_files_ends_that_fork() -> None:
    result = resolve([v("C.1/0", "f"), v("C.2/0", "f", writer=B), v("C.3/0", "g", "C.1/0")])
    assert result.forks == ()
    assert set(result.placements) == {"f", "g"}


@given(st.permutations([v("C.1/0", "f"), v("C.2/0", "f", "C.1/0"), v("C.3/0", "f", "C.1/0"),
                        v("C.4/0", "h", writer=B), v("C.5/0", None, "C.4/0")]))  # fmt: skip
def test_resolution_does_not_depend_on_order(versions: list[Version]) -> None:
    assert resolve(versions) == resolve(sorted(versions, key=lambda x: x.ref))


def _reference_resolve(versions: list[Version]) -> Resolution:
    """`resolve` written plainly (every group sorted, every head united with its path's first):
    the oracle for the faster one."""
    by_ref = {version.ref: version for version in versions}
    parent: dict[str, str] = {}

    def find(ref: str) -> str:
        while parent.get(ref, ref) != ref:
            ref = parent[ref]
        return ref

    def union(a: str, b: str) -> None:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)

    followed = set()
    for version in by_ref.values():
        for origin in version.origin:
            if origin in by_ref:
                followed.add(origin)
            union(version.ref, origin)
    heads = [version for ref, version in by_ref.items() if ref not in followed]
    first_on_path: dict[str, str] = {}
    for head in heads:
        if head.path is not None:
            union(head.ref, first_on_path.setdefault(head.path, head.ref))
    grouped: dict[str, list[Version]] = {}
    for head in heads:
        grouped.setdefault(find(head.ref), []).append(head)
    placements: dict[str, Placement] = {}
    forks = []
    losers = []
    for members in sorted(grouped.values(), key=lambda m: min(v.ref for v in m)):
        ordered = tuple(
            sorted(members, key=lambda v: (v.path is not None, v.change_id, v.ref), reverse=True)
        )
        if len(ordered) > 1:
            forks.append(Fork(ordered))
        winner, *others = ordered
        if winner.path is None:
            continue
        placements[winner.path] = Placement(winner.path, winner, conflict=False)
        losers += [other for other in others if other.path is not None]
    for other in losers:
        assert other.path is not None
        names = (conflict_name(other.path, other, copy) for copy in range(1, len(placements) + 2))
        name = next(name for name in names if name not in placements)
        placements[name] = Placement(name, other, conflict=True)
    folders = [
        path for path in sorted(placements) if any(p.startswith(f"{path}/") for p in placements)
    ]
    moved = {}
    for path in folders:
        placement = placements.pop(path)
        names = (conflict_name(path, placement.version, copy) for copy in range(1, 99))
        name = next(
            name
            for name in names
            if name not in placements and not any(p.startswith(f"{name}/") for p in placements)
        )
        placements[name] = Placement(name, placement.version, placement.conflict)
        moved[path] = name
    return Resolution(placements, tuple(forks), moved)


@st.composite
def _histories(draw: st.DrawFn) -> list[Version]:
    """Versions of a few paths, each following none, one or several earlier ones (or a
    version never seen), by two writers."""
    versions: list[Version] = []
    for index in range(draw(st.integers(0, 30))):
        earlier = [version.ref for version in versions] + ["C.999/0"]
        origin = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True))
        path = draw(st.sampled_from(["f", "g", "d", "d/h.txt", "d/h.txt/i", None]))
        writer = draw(st.sampled_from([A, B]))
        versions.append(v(f"C.{index + 1}/{draw(st.integers(0, 2))}", path, *origin, writer=writer))
    return versions


@given(_histories())
def test_every_live_head_is_laid_out_once(versions: list[Version]) -> None:
    """A head that is not a deletion has a place of its own, whatever names collide (one
    writer's versions of a path within a second, a file named like a conflict copy)."""
    result = resolve(versions)
    followed = {origin for version in versions for origin in version.origin}
    live_heads = {
        version.ref for version in versions if version.ref not in followed and version.path
    }
    laid_out = [placement.version.ref for placement in result.placements.values()]
    assert sorted(laid_out) == sorted(live_heads)


@given(_histories())
def test_no_file_is_placed_where_another_needs_a_folder(versions: list[Version]) -> None:
    """The tree can be laid out: no placement's path is a folder another one lies in."""
    paths = resolve(versions).placements
    assert not [path for path in paths if any(other.startswith(f"{path}/") for other in paths)]


@given(_histories())
def test_resolution_is_the_plain_one(versions: list[Version]) -> None:
    fast, plain = resolve(versions), _reference_resolve(versions)
    assert list(fast.placements.items()) == list(plain.placements.items())
    assert fast.forks == plain.forks
    assert fast.moved == plain.moved


def test_a_file_where_another_version_needs_a_folder_is_placed_beside_it() -> None:
    """One user's file "d" and another's "d/e.txt" (or "d" replaced by a folder): the folder
    keeps the name, the file goes beside it as a file like any other (no fork), and takes its
    name again once nothing lies in that folder."""
    file, inside = v("C.1/0", "d"), v("C.2/0", "d/e.txt", writer=B)
    result = resolve([file, inside])
    name = conflict_name("d", file)
    assert result.placements == {
        "d/e.txt": Placement("d/e.txt", inside, conflict=False),
        name: Placement(name, file, conflict=False),
    }
    assert result.moved == {"d": name}
    assert result.forks == ()
    assert result.places() == {"C.1/0": name, "C.2/0": "d/e.txt"}

    back = resolve([file, inside, v("C.3/0", None, "C.2/0", writer=B)])
    assert back.placements == {"d": Placement("d", file, conflict=False)}
    assert back.moved == {}


def test_files_in_folders_that_are_files_too_are_each_placed_beside_theirs() -> None:
    result = resolve([v("C.1/0", "x"), v("C.2/0", "x/y"), v("C.3/0", "x/y/z")])
    assert set(result.moved) == {"x", "x/y"}
    assert set(result.placements) == {"x/y/z", *result.moved.values()}
    assert result.moved["x/y"].startswith("x/y.sync-conflict-")
