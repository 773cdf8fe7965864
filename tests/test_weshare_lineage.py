"""Lineage resolution (pure): heads, forks, conflict copies, choices that end forks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from weshare.lineage import Version, conflict_name, resolve

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
