"""The shared folder itself: gone (moved, a drive not mounted) or remade empty, which must not
read as "every file was deleted" (a sync pushed that to every user before); and layouts that
would share what they must not (a state, another domain's folder, an exchange in the folder)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.weshare_pair import DOMAIN, Pair, pair, tree
from weshare import Weshare
from weshare.cli import main as cli_main
from weshare.discovery import MARKER
from weshare.errors import UsageError, WeshareError

__all__ = ["pair"]  # the fixture, used by name


async def _shared(pair: Pair) -> dict[str, bytes]:
    (pair.a / "x.txt").write_text("x")
    (pair.a / "d").mkdir()
    (pair.a / "d" / "y.txt").write_text("y")
    await pair.sync_both()
    assert (pair.a / MARKER).is_file()  # the first sync made it
    assert tree(pair.b) == {"x.txt": b"x", "d/y.txt": b"y"}
    return tree(pair.b)


async def test_a_folder_that_is_not_there_stops_the_sync_and_deletes_nothing(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = await _shared(pair)
    pair.a.rename(pair.tmp / "moved-away")
    with pytest.raises(WeshareError, match="the shared folder is not there"):
        await pair.alice.sync(DOMAIN)
    assert not pair.a.exists()  # not made again: the drive may just not be mounted
    await pair.bob.sync(DOMAIN)
    assert tree(pair.b) == shared

    await pair.alice.close()
    assert (
        await asyncio.to_thread(cli_main, ["--state", str(pair.tmp / "alice-state"), "sync"]) == 1
    )
    assert "the shared folder is not there" in capsys.readouterr().err

    (pair.tmp / "moved-away").rename(pair.a)  # put back: syncs as before
    async with Weshare(pair.tmp / "alice-state") as alice:
        assert (await alice.sync(DOMAIN)).problems == []


async def test_a_folder_made_again_empty_gets_every_file_again(pair: Pair) -> None:
    """A folder remade empty (or a drive's empty mount point) lacks the marker: it is a new
    copy, filled again; nothing is deleted for anyone. Then deletions travel as ever."""
    shared = await _shared(pair)
    shutil.rmtree(pair.a)
    pair.a.mkdir()
    report = await pair.alice.sync(DOMAIN)
    assert report.problems == [
        f"{MARKER} was missing from {pair.a}: taken for a new copy of the folder (a file it "
        "lacks is written again, not deleted)"
    ]
    assert (report.discovered.deleted, report.written) == (0, 2)
    assert tree(pair.a) == shared
    await pair.bob.sync(DOMAIN)
    assert tree(pair.b) == shared

    (pair.a / "x.txt").unlink()
    assert (await pair.alice.sync(DOMAIN)).problems == []
    await pair.bob.sync(DOMAIN)
    assert tree(pair.b) == {"d/y.txt": b"y"}


async def test_a_new_copy_pushes_what_it_holds_but_renames_and_deletes_nothing(
    pair: Pair,
) -> None:
    """A new copy holding other content (a backup restored, say): what differs goes up, a file
    under another name is a new file (taken for a rename, it would move the file for everyone),
    and what it lacks is written again."""
    await _shared(pair)
    shutil.rmtree(pair.a)
    pair.a.mkdir()
    (pair.a / "old-name.txt").write_text("x")  # x.txt's content under another name
    (pair.a / "d").mkdir()
    (pair.a / "d" / "y.txt").write_text("y, as the backup had it")
    report = await pair.alice.sync(DOMAIN)
    assert (report.discovered.renamed, report.discovered.deleted) == (0, 0)
    await pair.bob.sync(DOMAIN)
    assert (
        tree(pair.b)
        == tree(pair.a)
        == {
            "x.txt": b"x",
            "old-name.txt": b"x",
            "d/y.txt": b"y, as the backup had it",
        }
    )


async def test_a_weshare_state_in_the_shared_folder_is_never_shared(pair: Pair) -> None:
    """A state holds its identity's private key: one made inside a shared folder (by mistake,
    from another process) is left out, whole in a folder, its own files in the root."""
    async with Weshare(pair.a / "someone") as other, Weshare(pair.a) as root_state:
        assert other.get_public() != root_state.get_public()
    (pair.a / "note.txt").write_text("shared")
    report = await pair.alice.sync(DOMAIN)
    assert report.problems == [
        "./: the weshare state in it is not shared (a private key)",
        "someone/: not shared, it holds a weshare state (a private key)",
    ]
    await pair.bob.sync(DOMAIN)
    assert tree(pair.b) == {"note.txt": b"shared"}


async def test_layouts_that_would_share_what_they_must_not_are_refused(pair: Pair) -> None:
    with pytest.raises(UsageError, match="lies in it, or it in the exchange"):
        await pair.alice.add_exchange(DOMAIN, {"kind": "folder", "path": str(pair.a / "ex")})
    with pytest.raises(UsageError, match="overlaps"):
        await pair.alice.add_domain("other.weshare.test", pair.a / "inside")
    async with Weshare(pair.a / "state") as inside:
        with pytest.raises(UsageError, match=r"the state .* would be shared from it"):
            await inside.add_domain("other.weshare.test", pair.a)
    await pair.alice.add_domain("other.weshare.test", pair.tmp / "other")
    assert pair.alice.domains() == sorted([DOMAIN, "other.weshare.test"])

    # a state an older version let take such an exchange: every sync is refused
    in_folder = {"kind": "folder", "path": str(pair.a / "ex")}
    pair.alice._store_exchanges(DOMAIN, [*pair.alice._exchanges(DOMAIN), in_folder])
    with pytest.raises(UsageError, match="lies in it, or it in the exchange"):
        await pair.alice.sync(DOMAIN)


async def test_a_folder_another_domain_marked_is_not_synced(pair: Pair) -> None:
    """Two states sharing one folder in two domains would share each other's files."""
    await _shared(pair)
    async with Weshare(pair.tmp / "carol-state") as carol:
        await carol.add_domain("carol.weshare.test", pair.b)
        await carol.add_exchange(
            "carol.weshare.test", {"kind": "folder", "path": str(pair.tmp / "cx")}
        )
        with pytest.raises(WeshareError, match=f"is the shared folder of {DOMAIN}"):
            await carol.sync("carol.weshare.test")


async def test_syncing_every_domain_goes_on_past_one_whose_folder_is_gone(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "other.weshare.test"  # sorts before DOMAIN: synced first
    await pair.alice.add_domain(other, pair.tmp / "other")
    await pair.alice.add_exchange(other, {"kind": "folder", "path": str(pair.tmp / "ox")})
    await pair.alice.sync(other)
    shutil.rmtree(pair.tmp / "other")
    (pair.a / "x.txt").write_text("x")
    await pair.alice.close()
    args = ["--state", str(pair.tmp / "alice-state"), "sync"]
    assert await asyncio.to_thread(cli_main, args) == 1
    printed = capsys.readouterr()
    assert printed.err.startswith(f"error: {other}: {pair.tmp / 'other'}: the shared folder is not")
    assert f"{DOMAIN}: pushed 1 " in printed.out
    await pair.bob.sync(DOMAIN)
    assert tree(pair.b) == {"x.txt": b"x"}
