"""A file and a folder with one name: one user replaces a file by a folder of its name or the
other way round, or two users make one of each at once. Every reader lays out the same tree in
one sync, nothing is lost, and nothing is written through what is in the way."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.weshare_pair import DOMAIN, Pair, pair, tree
from weshare.cli import _print_report
from weshare.cli import main as cli_main

__all__ = ["pair"]  # the fixture, used by name

SIZES = {"inline": 100, "in-parts": 700_000}  # above the 64 KiB inline limit: parts


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_a_file_replaced_by_a_folder_of_its_name_arrives(pair: Pair, size: int) -> None:
    (pair.a / "x").write_text("a file")
    await pair.sync_both()
    (pair.a / "x").unlink()
    (pair.a / "x").mkdir()
    (pair.a / "x" / "y").write_bytes(os.urandom(size))
    await pair.alice.sync(DOMAIN)

    report = await pair.bob.sync(DOMAIN)  # bob's file x was in the way of x/y
    assert report.problems == []
    assert tree(pair.b) == tree(pair.a)
    assert (report.written, report.removed) == (1, 1)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_a_folder_replaced_by_a_file_of_its_name_arrives(pair: Pair, size: int) -> None:
    (pair.a / "x" / "deeper").mkdir(parents=True)
    (pair.a / "x" / "deeper" / "y").write_text("in a folder")
    await pair.sync_both()
    shutil.rmtree(pair.a / "x")
    (pair.a / "x").write_bytes(os.urandom(size))
    await pair.alice.sync(DOMAIN)

    report = await pair.bob.sync(DOMAIN)  # bob's folder x held x/deeper/y
    assert report.problems == []
    assert tree(pair.b) == tree(pair.a)
    # the next sync has nothing to do: it must not be needed to finish this one
    assert (await pair.bob.sync(DOMAIN)).written == 0
    assert tree(pair.b) == tree(pair.a)


async def test_a_file_and_a_folder_made_at_once_with_one_name_keep_both(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    (pair.a / "x").write_text("alice's file")
    (pair.b / "x").mkdir()
    (pair.b / "x" / "y").write_text("bob's file in bob's folder")
    await pair.alice.sync(DOMAIN)
    to_bob = await pair.bob.sync(DOMAIN)
    to_alice = await pair.alice.sync(DOMAIN)

    resolution = pair.alice.resolution(DOMAIN)
    name = resolution.moved["x"]
    assert name.startswith("x.sync-conflict-")
    expected = {"x/y": b"bob's file in bob's folder", name: b"alice's file"}
    assert tree(pair.a) == tree(pair.b) == expected
    assert to_bob.moved == to_alice.moved == {"x": name}
    assert to_alice.problems == to_bob.problems == []
    assert pair.alice.forks(DOMAIN) == pair.bob.forks(DOMAIN) == ()  # no fork: both live on

    _print_report(DOMAIN, to_alice)
    assert f"x: written as {name}, as other files need x as a folder" in capsys.readouterr().out
    state = str(pair.tmp / "alice-state")
    assert await asyncio.to_thread(cli_main, ["--state", state, "forks", DOMAIN]) == 0
    assert f"x: at {name}, as other files need x as a folder" in capsys.readouterr().out

    # once no file lies in the folder, the file takes its name again, on both sides
    shutil.rmtree(pair.b / "x")
    await pair.bob.sync(DOMAIN)
    await pair.alice.sync(DOMAIN)
    assert tree(pair.a) == tree(pair.b) == {"x": b"alice's file"}


async def test_an_edit_of_a_file_another_user_made_a_folder_is_kept_beside_it(
    pair: Pair,
) -> None:
    (pair.a / "d").write_text("first")
    await pair.sync_both()
    (pair.a / "d").unlink()
    (pair.a / "d").mkdir()
    (pair.a / "d" / "e.txt").write_text("alice's")
    (pair.b / "d").write_text("bob's edit")
    await pair.alice.sync(DOMAIN)
    await pair.bob.sync(DOMAIN)
    await pair.alice.sync(DOMAIN)

    name = pair.bob.resolution(DOMAIN).moved["d"]
    assert tree(pair.a) == tree(pair.b) == {"d/e.txt": b"alice's", name: b"bob's edit"}
    assert len(pair.alice.forks(DOMAIN)) == 1  # bob's edit against alice's deletion of "d"


async def test_a_folder_that_holds_no_file_makes_way_for_a_file(pair: Pair) -> None:
    (pair.b / "x" / "empty").mkdir(parents=True)  # bob's, but in no version: only files are
    (pair.a / "x").write_text("alice's file")
    await pair.alice.sync(DOMAIN)
    report = await pair.bob.sync(DOMAIN)
    assert report.problems == []
    assert tree(pair.b) == {"x": b"alice's file"}


async def test_nothing_is_written_through_a_link_in_the_way(pair: Pair, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (pair.b / "d").symlink_to(outside, target_is_directory=True)  # never shared: a link
    (pair.a / "d").mkdir()
    (pair.a / "d" / "e.txt").write_text("alice's")
    await pair.alice.sync(DOMAIN)

    report = await pair.bob.sync(DOMAIN)
    assert report.problems == ["d/e.txt: not written, d is a link, not a folder"]
    assert list(outside.iterdir()) == []
    assert (await pair.bob.sync(DOMAIN)).problems == report.problems  # not settled: said again

    (pair.b / "d").unlink()
    assert (await pair.bob.sync(DOMAIN)).problems == []
    assert tree(pair.b) == {"d/e.txt": b"alice's"}
