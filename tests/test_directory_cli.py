"""``python -m node --directory DIR`` serves the directory; ``python -m node.directory`` mints
authorities and tickets and updates, searches and deletes through it."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.directory.__main__ import main

pytestmark = pytest.mark.timeout(90)

DIRECTORY = re.compile(r"directory on 127\.0\.0\.1:(\d+)")


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    authorities = tmp_path / "authorities"
    assert (
        main(["mint-authorities", "--out", str(authorities), "--count", "5", "--threshold", "3"])
        == 0
    )
    owner_key = tmp_path / "owner.key"
    ticket = tmp_path / "ticket.bin"
    mailbox = "000634FC89A4E6"
    assert (
        main(
            [
                "mint-ticket",
                "--authorities",
                str(authorities),
                "--mailbox",
                mailbox,
                "--owner-key",
                str(owner_key),
                "--out",
                str(ticket),
            ]
        )
        == 0
    )
    weak = tmp_path / "weak.bin"
    assert (
        main(
            [
                "mint-ticket",
                "--authorities",
                str(authorities),
                "--mailbox",
                mailbox,
                "--owner-key",
                str(owner_key),
                "--out",
                str(weak),
                "--signers",
                "2",
            ]
        )
        == 0
    )
    root = tmp_path / "drd"
    root.mkdir()
    (root / "authorities.json").write_bytes((authorities / "authorities.json").read_bytes())
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "node"),
            "--no-api",
            "--directory",
            str(root),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = 0
        for _ in range(5):
            line = process.stdout.readline()
            if match := DIRECTORY.search(line):
                port = int(match.group(1))
                break
        assert port, "the node did not report its directory"
        server = f"127.0.0.1:{port}"
        avatar = tmp_path / "me.png"
        avatar.write_bytes(b"\x89PNG" + bytes(1000))
        capsys.readouterr()
        assert (
            main(
                [
                    "update",
                    "--server",
                    server,
                    "--owner-key",
                    str(owner_key),
                    "--ticket",
                    str(ticket),
                    "--name",
                    "Ann",
                    "--description",
                    "100% tea",
                    "--avatar",
                    str(avatar),
                    "--qmail",
                    "0:6:10.1.2.3:25",
                    "--comment",
                    "private!",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "update",
                    "--server",
                    server,
                    "--owner-key",
                    str(owner_key),
                    "--ticket",
                    str(weak),
                    "--name",
                    "Mallory",
                ]
            )
            == 1
        )
        capsys.readouterr()
        assert (
            main(
                [
                    "search",
                    "--server",
                    server,
                    "--columns",
                    "mailbox,name,avatar,qmail0",
                    "--where",
                    "description",
                    "contains",
                    "%",
                ]
            )
            == 0
        )
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert rows == [
            {
                "mailbox": mailbox.lower(),
                "name": "Ann",
                "avatar": {
                    "bytes": 1004,
                    "sha256": hashlib.sha256(avatar.read_bytes()).hexdigest(),
                },
                "qmail0": "6:10.1.2.3:25",
            }
        ]
        assert (
            main(
                [
                    "delete",
                    "--server",
                    server,
                    "--owner-key",
                    str(owner_key),
                    "--ticket",
                    str(ticket),
                ]
            )
            == 0
        )
        assert main(["search", "--server", server]) == 3  # nothing found
        assert list((root / "users").iterdir()) == []
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == 0


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ["update", "delete", "search", "mint-authorities", "mint-ticket"]:
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        assert command in capsys.readouterr().out
