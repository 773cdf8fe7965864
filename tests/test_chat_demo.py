"""The chat demo: its session core between two users on real loopback UDP, and its CLI."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.chat import ChatClient
from node.chat.__main__ import build_parser, main
from node.chat.session import ChatSession, parse_uid
from tests.loopback import loopback_network
from tests.processes import Process
from tests.records_factory import identity

pytestmark = pytest.mark.timeout(60)


@pytest.mark.usefixtures("no_leaked_tasks")
async def test_two_users_chat_through_the_session_core() -> None:
    alice, bob = identity("alice"), identity("bob")
    alice_out: list[str] = []
    bob_out: list[str] = []
    alice_heard, bob_heard = asyncio.Event(), asyncio.Event()

    def alice_print(line: str) -> None:
        alice_out.append(line)
        if line == "[bob] hello alice":
            alice_heard.set()

    def bob_print(line: str) -> None:
        bob_out.append(line)
        if line == "[alice] hi bob":
            bob_heard.set()

    async def alice_lines() -> AsyncIterator[str]:
        await alice_heard.wait()  # Bob's handshake made him Alice's peer
        yield "hi bob"
        await bob_heard.wait()
        yield "/quit"

    async def bob_lines() -> AsyncIterator[str]:
        yield "/me"
        yield "hello alice"
        await bob_heard.wait()

    async with loopback_network(6) as nodes:
        a = ChatClient(nodes[1], alice, name="alice", max_poll=0.2)
        b = ChatClient(nodes[2], bob, name="bob", max_poll=0.2)
        async with a, b:
            try:
                await asyncio.wait_for(
                    asyncio.gather(
                        ChatSession(a, alice_print).run(alice_lines()),
                        ChatSession(b, bob_print, peer=alice.id).run(bob_lines()),
                    ),
                    30,
                )
            except TimeoutError:
                pytest.fail(f"the chat stalled: alice saw {alice_out}, bob saw {bob_out}")
        # what each user saw
        assert f"* bob ({bob.id_hex}) wants to talk" in alice_out
        assert "[bob] hello alice" in alice_out
        assert f"* you are {bob.id_hex}" in bob_out
        assert f"* {alice.id_hex} is alice, 1 device(s) online" in bob_out
        assert "[alice] hi bob" in bob_out
        # everything read was acknowledged: both inboxes are empty
        assert await a.inbox() == []
        assert await b.inbox() == []


def test_help_documents_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--name", "--bootstrap", "--to", "--local-nodes", "/to UID"):
        assert option in text


def test_bad_peer_uid_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--name", "x", "--to", "not-a-uid"]) == 2
    assert "uid" in capsys.readouterr().err


def test_without_a_reachable_peer_the_demo_says_how_to_get_one(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unused:
        unused.bind(("127.0.0.1", 0))  # nothing answers on this port while it is held
        dead = f"127.0.0.1:{unused.getsockname()[1]}"
        alone = Process("-m", "node.chat", "--name", "a", "--data-dir", str(tmp_path / "alone"))
        stranded = Process(
            "-m",
            "node.chat",
            "--name",
            "b",
            "--data-dir",
            str(tmp_path / "stranded"),
            "--bootstrap",
            dead,
        )
        try:
            assert alone.wait() == 1
            assert stranded.wait() == 1
        finally:
            alone.close()
            stranded.close()
    assert alone.lines["stderr"] == [
        "error: no other node to keep your meta and messages: pass --local-nodes N to run N "
        "helper nodes here (the first user does), or --bootstrap HOST:PORT to join a running node"
    ]
    assert stranded.lines["stderr"] == [
        f"error: no node answered at {dead}: give --bootstrap HOST:PORT of a running node, "
        "or --local-nodes N to run N helper nodes here"
    ]


def test_a_uid_is_taken_in_either_case(capsys: pytest.CaptureFixture[str]) -> None:
    bob = identity("bob")
    assert parse_uid(bob.id_hex.upper()) == bob.id
    assert parse_uid(f"{bob.id_hex[:20]}{bob.id_hex[20:].upper()}") == bob.id
    assert parse_uid(bob.id_hex[:-1]) is None
    assert main(["--name", "x", "--to", "xyz"]) == 2
    assert capsys.readouterr().err == "error: --to 'xyz' is not a uid (40 hex digits)\n"
