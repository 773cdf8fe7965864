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
            "--directory-clear-text",  # the sealed frames: tests/test_drd_processes.py
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
                    "--clear-text",
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
                    "--clear-text",
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
                    "--clear-text",
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
                    "--clear-text",
                    "--owner-key",
                    str(owner_key),
                    "--ticket",
                    str(ticket),
                ]
            )
            == 0
        )
        assert main(["search", "--server", server, "--clear-text"]) == 3  # nothing found
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


def test_bad_input_gives_clear_errors_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ["--server", "127.0.0.1:9"]
    for argv, words in [
        (["search", *server, "--columns", "mailbox,bogus"], "bogus"),
        (["search", *server, "--where", "price", "eq", "abc"], "not a number"),
        (["search", *server, "--where", "mailbox", "eq", "0006ZZ"], "mailbox"),
        (["search", *server, "--where", "price", "eq", str(1 << 64)], "2^64"),
        (["search", *server, "--where", "name", "eq", ""], "--where"),
        (["search", *server, "--where", "name", "about", "x"], "op one of"),
        (["update", *server, "--owner-key", "k", "--ticket", "t", "--qmail", "1:2"], "SLOT"),
        (["search", "--server", "nohost"], "HOST:PORT"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
        assert words in capsys.readouterr().err, argv

    authorities = tmp_path / "auth"
    assert (
        main(["mint-authorities", "--out", str(authorities), "--count", "3", "--threshold", "2"])
        == 0
    )
    capsys.readouterr()
    key = tmp_path / "owner.key"
    ticket = tmp_path / "t.bin"
    mint = ["mint-ticket", "--authorities", str(authorities), "--owner-key", str(key)]
    assert main([*mint, "--mailbox", "000634FC89A4", "--out", str(ticket)]) == 2
    assert "14 hex digits" in capsys.readouterr().err
    assert not key.exists()  # nothing written for a malformed mailbox
    assert not ticket.exists()
    (tmp_path / "bad.json").write_text("{}")
    bad = ["--authorities", str(tmp_path / "nowhere"), "--owner-key", str(key)]
    assert main(["mint-ticket", *bad, "--mailbox", "000634FC89A4E6", "--out", str(ticket)]) == 2
    assert "error:" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "authorities.json").write_text("{}")
    bad = ["--authorities", str(tmp_path / "empty"), "--owner-key", str(key)]
    assert main(["mint-ticket", *bad, "--mailbox", "000634FC89A4E6", "--out", str(ticket)]) == 2
    assert "not an authorities file" in capsys.readouterr().err
    for missing in (
        ["--owner-key", str(key), "--ticket", str(tmp_path / "none.ticket")],
        ["--owner-key", str(tmp_path / "none.key"), "--ticket", str(ticket)],
    ):
        assert main(["update", *server, *missing, "--name", "A"]) == 2
        assert "error:" in capsys.readouterr().err


def test_search_operands_as_a_user_writes_them() -> None:
    from node.directory.__main__ import build_parser
    from records.directory import MailboxNumber, QMailServer, SendingPrice

    argv = ["search", "--server", "127.0.0.1:9", "--where", "mailbox", "eq", "000634FC89A4E6"]
    argv += ["--or", "price", "gt", "6:2", "--and", "qmail0", "eq", "6:10.0.0.1:25"]
    argv += ["--or", "mailbox", "lt", "0x10", "--columns", "name,avatar"]
    args = build_parser().parse_args(argv)
    operands = [c.operand for c in args.clauses]
    assert operands == [
        int(MailboxNumber.from_hex("000634FC89A4E6")),
        int.from_bytes(SendingPrice(6, 2).to_bytes(), "big"),
        int.from_bytes(QMailServer(6, "10.0.0.1", 25).to_bytes(), "big"),
        16,
    ]
    assert args.columns == [3, 7]
