"""A file the sync may not read, a folder it may not list, a name it cannot share: the sync says so
and shares everything else (across a real `python -m weshare` process that obeys file permissions
where those matter)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.weshare_pair import DOMAIN, open_pair, tree
from weshare import Weshare


def _obeying_permissions() -> list[str]:
    """The command prefix under which a process cannot read a file with mode 000: none for a
    user; for root (which reads anything), `setpriv` without the capabilities that allow it."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root reads every file, and setpriv (to give that up) is not installed")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.timeout(120)
async def test_an_unreadable_file_is_reported_and_every_other_one_synced(tmp_path: Path) -> None:
    prefix = _obeying_permissions()
    pair = await open_pair(tmp_path)
    locked = [pair.a / "tracked.txt", pair.a / "new.txt", pair.a / "big.bin"]
    try:
        (pair.a / "tracked.txt").write_text("first")
        await pair.alice.sync(DOMAIN)
        await pair.alice.close()
        (pair.a / "tracked.txt").write_text("edited, then made unreadable")
        (pair.a / "new.txt").write_text("secret")
        (pair.a / "big.bin").write_bytes(os.urandom(300_000))  # in parts: read another way
        (pair.a / "fine.txt").write_text("fine")
        for path in locked:
            path.chmod(0)
        command = [
            *prefix,
            sys.executable,
            "-m",
            "weshare",
            "--state",
            str(pair.tmp / "alice-state"),
        ]
        sync = await asyncio.create_subprocess_exec(
            *command, "sync", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(sync.communicate(), 60)
        assert sync.returncode == 0, err.decode()
        assert err.decode().splitlines() == [
            f"  problem: {name}: not read, Permission denied"
            for name in ("big.bin", "new.txt", "tracked.txt")
        ]
        assert "pushed 1 (new 1, changed 0, renamed 0, deleted 0)" in out.decode()

        await pair.bob.sync(DOMAIN)  # the tracked file is not taken for deleted
        assert tree(pair.b) == {"fine.txt": b"fine", "tracked.txt": b"first"}

        for path in locked:
            path.chmod(0o644)
        async with Weshare(pair.tmp / "alice-state") as alice:
            assert (await alice.sync(DOMAIN)).problems == []
        await pair.bob.sync(DOMAIN)
        assert tree(pair.b) == tree(pair.a)
    finally:
        for path in locked:
            path.chmod(0o644)
        await pair.alice.close()
        await pair.bob.close()


@pytest.mark.timeout(120)
async def test_a_folder_that_cannot_be_listed_is_reported_and_not_taken_for_deleted(
    tmp_path: Path,
) -> None:
    prefix = _obeying_permissions()
    pair = await open_pair(tmp_path)
    try:
        (pair.a / "d").mkdir()
        (pair.a / "d" / "x.txt").write_text("x")
        (pair.a / "e.txt").write_text("e")
        await pair.alice.sync(DOMAIN)
        await pair.alice.close()
        await pair.bob.sync(DOMAIN)
        (pair.a / "d").chmod(0)
        (pair.a / "e.txt").write_text("e, edited")
        state = str(pair.tmp / "alice-state")
        sync = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-m", "weshare", "--state", state, "sync",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(sync.communicate(), 60)
        assert sync.returncode == 0, err.decode()
        assert err.decode().splitlines() == ["  problem: d/: not listed, Permission denied"]
        assert "pushed 1 (new 0, changed 1, renamed 0, deleted 0)" in out.decode()
        await pair.bob.sync(DOMAIN)
        assert tree(pair.b) == {"d/x.txt": b"x", "e.txt": b"e, edited"}
    finally:
        (pair.a / "d").chmod(0o755)
        await pair.alice.close()
        await pair.bob.close()


async def test_a_file_whose_name_cannot_be_shared_is_reported_and_the_rest_synced(
    tmp_path: Path,
) -> None:
    """A name that is not UTF-8 (an old archive's Latin-1, say) crashed every sync; one with a
    backslash was left out without a word."""
    pair = await open_pair(tmp_path)
    try:
        for name in (b"caf\xe9.txt", b"back\\slash.txt"):
            (pair.a / os.fsdecode(name)).write_bytes(b"not shareable")
        (pair.a / "fine.txt").write_text("fine")
        report = await pair.alice.sync(DOMAIN)
        assert sorted(report.problems) == [
            "back\\slash.txt: not shared, its name has a backslash, or is too long",
            "caf\\xe9.txt: not shared, its name is not UTF-8",
        ]
        await pair.bob.sync(DOMAIN)
        assert tree(pair.b) == {"fine.txt": b"fine"}
    finally:
        await pair.alice.close()
        await pair.bob.close()
