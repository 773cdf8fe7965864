"""`python -m weshare` as real subprocesses: the two-user flow of the README, help, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.weshare_pair import tree
from tests.weshare_servers import KINDS, exchange_config, s3_server, sftp_server
from weshare.cli import main
from weshare.discovery import MARKER

__all__ = ["exchange_config", "s3_server", "sftp_server"]  # fixtures, used by name

COMMANDS = ["init", "public", "add-exchange", "invite", "remove", "rekey", "truncate", "join",
            "sync", "status", "log", "forks", "choose"]  # fmt: skip


def weshare(cwd: Path, *args: str, code: int = 0) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "weshare", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return done.stdout


def test_two_users_share_through_a_folder_exchange(tmp_path: Path) -> None:
    weshare(tmp_path, "--state", "alice", "init", "demo", "--folder", "alice-files",
            "--name", "alice")  # fmt: skip
    weshare(tmp_path, "--state", "alice", "add-exchange", "demo",
            '{"kind": "folder", "path": "exchange"}')  # fmt: skip
    bob_key = weshare(tmp_path, "--state", "bob", "public").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", bob_key)
    weshare(tmp_path, "--state", "alice", "invite", "demo", bob_key, "--name", "bob",
            "--out", "invite.txt")  # fmt: skip
    weshare(tmp_path, "--state", "bob", "join", "invite.txt", "--folder", "bob-files")

    (tmp_path / "alice-files" / "hello.txt").write_text("hello from alice\n")
    weshare(tmp_path, "--state", "alice", "sync")
    out = weshare(tmp_path, "--state", "bob", "sync", "demo")
    assert "wrote 1" in out
    assert (tmp_path / "bob-files" / "hello.txt").read_text() == "hello from alice\n"

    (tmp_path / "alice-files" / "hello.txt").write_text("alice's version\n")
    (tmp_path / "bob-files" / "hello.txt").write_text("bob's version\n")
    weshare(tmp_path, "--state", "alice", "sync")
    weshare(tmp_path, "--state", "bob", "sync")
    again = weshare(tmp_path, "--state", "bob", "sync", "demo")  # nothing changed since
    assert "wrote 0, removed 0, forks 1," in again
    copy = next(p for p in (tmp_path / "bob-files").iterdir() if ".sync-conflict-" in p.name)
    copy.unlink()  # a fork's copy is not pushed: the apply lays it out again
    assert "wrote 1, removed 0, forks 1," in weshare(tmp_path, "--state", "bob", "sync", "demo")
    assert copy.exists()
    forks = weshare(tmp_path, "--state", "bob", "forks", "demo")
    refs = re.findall(r"(C\.\d{19}/\d+) .*alice", forks)
    assert forks.startswith("hello.txt:"), forks
    assert len(refs) == 1, forks
    assert f"at {copy.name}" in forks  # where the losing head is laid out
    weshare(tmp_path, "--state", "bob", "choose", "demo", refs[0])
    weshare(tmp_path, "--state", "alice", "sync")
    for side in ("alice-files", "bob-files"):
        assert sorted(p.name for p in (tmp_path / side).iterdir()) == [MARKER, "hello.txt"]
        assert (tmp_path / side / "hello.txt").read_text() == "alice's version\n"
    assert "no forks" in weshare(tmp_path, "--state", "alice", "forks", "demo")
    log = weshare(tmp_path, "--state", "alice", "log", "demo")
    assert len(log.splitlines()) == 4
    assert "bob" in log.splitlines()[-1]
    status = weshare(tmp_path, "--state", "alice", "status", "demo")
    assert "user bob" in status
    assert "admin" in status


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"python -m weshare {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "no.such.domain"],
        ["init", "Bad_Domain!", "--folder", "x"],
        ["add-exchange", "demo", "{not json"],
        ["invite", "demo", "abcd", "--name", "x"],
        ["join", "missing-invite.txt", "--folder", "x"],
        ["choose"],
        ["frobnicate"],
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    if args[0] in ("add-exchange", "invite"):
        assert main(["--state", str(tmp_path / "s"), "init", "demo", "--folder",
                     str(tmp_path / "f")]) == 0  # fmt: skip
        capsys.readouterr()
    try:
        code = main(["--state", str(tmp_path / "s"), *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err


def test_a_bad_invite_file_exits_2_as_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "invite.txt").write_text("weshare-invite-v1:AAAA\n")
    done = subprocess.run(
        [sys.executable, "-m", "weshare", "--state", "s", "join", "invite.txt", "--folder", "f"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ")


def test_a_state_that_cannot_be_made_exits_1_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["--state", str(tmp_path / "a-file" / "state"), "init"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: [Errno 20] Not a directory: '{tmp_path / 'a-file' / 'state'}'\n"


def test_membership_and_truncation_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> str:
        assert main(["--state", str(tmp_path / args[0]), *args[1:]]) == 0
        return capsys.readouterr().out

    run("alice", "init", "demo", "--folder", str(tmp_path / "alice-files"))
    config = tmp_path / "exchange.json"  # from a file: no credential on the command line
    config.write_text(f'{{"kind": "folder", "path": "{tmp_path / "exchange"}"}}')
    run("alice", "add-exchange", "demo", f"@{config}")
    bob = run("bob", "public").strip()
    run("alice", "invite", "demo", bob, "--name", "bob", "--out", str(tmp_path / "invite.txt"))
    run("bob", "join", str(tmp_path / "invite.txt"), "--folder", str(tmp_path / "bob-files"))
    (tmp_path / "alice-files" / "a.txt").write_text("a")
    run("alice", "sync")
    assert "removed" in run("alice", "remove", "demo", bob)
    assert "written again" in run("alice", "rekey", "demo", "--all", "--grace-hours", "0")
    assert "merged" in run("alice", "truncate", "demo", "--grace-hours", "0")
    assert "deleted" in run("alice", "sync")
    status = run("alice", "status", "demo")
    assert f"exchange folder: {tmp_path / 'exchange'}" in status
    assert bob[:7] not in status
    assert main(["--state", str(tmp_path / "bob"), "sync", "demo"]) == 2  # not a user any more


async def _run(cwd: Path, *args: str) -> str:
    """`python -m weshare ARGS` without blocking the loop (the SFTP server runs in it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "weshare", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, (args, out, err)
    return out.decode()


async def _killed_until_it_ends(cwd: Path, state: str, *command: str) -> int:
    """Run `python -m weshare --state STATE COMMAND` (default: sync), killed (SIGKILL: no
    cleanup of any kind) after 0.25 s, then 15 % later each time, until a run ends by itself;
    returns how many were killed. Bounded: after 30 kills the last run is not killed. The
    processes get a temporary folder of their own: one killed while a library's import runs a
    compiler (`ctypes.util.find_library`, on asyncssh's import) leaves that compiler's
    temporary files behind."""
    command = command or ("sync",)
    killed = 0
    temp = cwd / "process-temp"
    temp.mkdir(exist_ok=True)
    for attempt in range(30):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "weshare", "--state", state, *command, cwd=cwd,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(temp)},
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(process.communicate(), 0.25 * 1.15**attempt)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):  # it may end just then
                process.kill()
            if await process.wait() == 0:
                return killed
            killed += 1
            continue
        # a truncation that went through just before its kill leaves nothing to truncate
        assert process.returncode == 0 or b"nothing to truncate" in err, err
        return killed
    await _run(cwd, "--state", state, *command)
    return killed


@pytest.mark.timeout(300)
@pytest.mark.parametrize("exchange_config", KINDS, indirect=True)
async def test_syncs_killed_at_any_moment_lose_nothing(
    tmp_path: Path, exchange_config: dict[str, Any]
) -> None:
    """Real processes killed with SIGKILL at growing delays (files half written, SQLite
    transactions cut, change files queued, requests cut), each sync rerun until it ends by
    itself; then both folders hold exactly what the users made: creates, edits on each side,
    deletions, renames; and a truncation, then a rekey of everything, killed the same way
    change nothing the users see. Through each kind of exchange."""
    (tmp_path / "exchange.json").write_text(json.dumps(exchange_config))
    await _run(tmp_path, "--state", "alice", "init", "demo", "--folder", "a", "--name", "alice")
    await _run(tmp_path, "--state", "alice", "add-exchange", "demo", "@exchange.json")
    bob_key = (await _run(tmp_path, "--state", "bob", "public")).strip()
    await _run(tmp_path, "--state", "alice", "invite", "demo", bob_key, "--name", "bob",
               "--out", "invite.txt")  # fmt: skip
    await _run(tmp_path, "--state", "bob", "join", "invite.txt", "--folder", "b")
    rng = random.Random(7)
    made: dict[str, bytes] = {}
    for n in range(1500):
        made[f"d{n % 9}/f{n}.txt"] = rng.randbytes(rng.randint(1, 8000))
    for n in range(6):
        made[f"big{n}.bin"] = rng.randbytes(4 * 1024 * 1024)

    def lay_out(folder: Path, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)

    lay_out(tmp_path / "a", made)
    kills = await _killed_until_it_ends(tmp_path, "alice")
    kills += await _killed_until_it_ends(tmp_path, "bob")
    assert tree(tmp_path / "b") == made

    alice_edits = {f"d{n % 9}/f{n}.txt": b"alice %d" % n for n in range(0, 300)}
    alice_edits["big0.bin"] = made["big0.bin"][:1000] + b"alice" + made["big0.bin"][1000:]
    bob_edits = {f"d{n % 9}/f{n}.txt": b"bob %d" % n for n in range(300, 600)}
    bob_edits["big1.bin"] = rng.randbytes(3 * 1024 * 1024)
    lay_out(tmp_path / "a", alice_edits)
    lay_out(tmp_path / "b", bob_edits)
    deleted = [f"d{n % 9}/f{n}.txt" for n in range(600, 700)] + ["big2.bin"]
    for name in deleted:
        (tmp_path / "a" / name).unlink()
    renamed = {f"d{n % 9}/f{n}.txt": f"moved/f{n}.txt" for n in range(700, 800)}
    (tmp_path / "b" / "moved").mkdir()
    for old, new in renamed.items():
        (tmp_path / "b" / old).rename(tmp_path / "b" / new)
    for state in ("alice", "bob", "alice"):
        kills += await _killed_until_it_ends(tmp_path, state)

    expected = {**made, **alice_edits, **bob_edits}
    for name in deleted:
        del expected[name]
    for old, new in renamed.items():
        expected[new] = expected.pop(old)
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == dict(sorted(expected.items()))
    assert "no forks" in await _run(tmp_path, "--state", "alice", "forks", "demo")

    # a truncation killed midway (old change files deleted at once), then syncs: the folders
    # and the (absence of) forks stay as they were, for both
    truncate = ("truncate", "demo", "--grace-hours", "0")
    kills += await _killed_until_it_ends(tmp_path, "alice", *truncate)
    for state in ("bob", "alice", "bob"):
        kills += await _killed_until_it_ends(tmp_path, state)
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == dict(sorted(expected.items()))
    for state in ("alice", "bob"):
        assert "no forks" in await _run(tmp_path, "--state", state, "forks", "demo")

    # a rekey that writes everything again, killed the same way (a rerun makes one more key):
    # nothing changes for either user, and what alice writes next reaches bob
    rekey = ("rekey", "demo", "--all", "--grace-hours", "0")
    kills += await _killed_until_it_ends(tmp_path, "alice", *rekey)
    expected["after-rekey.txt"] = b"under the newest key"
    lay_out(tmp_path / "a", {"after-rekey.txt": expected["after-rekey.txt"]})
    for state in ("alice", "bob", "alice", "bob"):
        kills += await _killed_until_it_ends(tmp_path, state)
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == dict(sorted(expected.items()))
    for state in ("alice", "bob"):
        assert "no forks" in await _run(tmp_path, "--state", state, "forks", "demo")
    assert kills >= 5  # the kills landed in the commands, not after them
