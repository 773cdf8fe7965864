"""``python -m node`` and ``python -m node ctl`` as a user runs them: real processes on
127.0.0.1, every wait bounded by a deadline on output or exit."""

from __future__ import annotations

import hashlib
import json
import shlex
import socket
import time
from pathlib import Path

import pytest

from node.__main__ import build_parser
from tests.processes import LISTENING, Process, ctl, node_args, run_to_end, start_node

pytestmark = pytest.mark.timeout(90)


def errors(process: Process) -> list[str]:
    return [line for line in process.lines["stderr"] if line.strip()]


def test_a_second_node_on_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    first, _ = start_node(data_dir)
    try:
        node_id = LISTENING.search(first.lines["stdout"][0])
        assert node_id is not None
        code, second = run_to_end(*node_args(data_dir))
        assert code == 1
        assert errors(second) == [
            f"error: data dir {data_dir} is in use by pid {first.pid} (another node runs on it; "
            "give each node its own --data-dir)"
        ]
        # the first node's api.json is untouched: ctl still reaches the first node
        status = ctl("--data-dir", str(data_dir), "ctl", "--json", "status")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["id"] == node_id.group(1)
    finally:
        assert first.stop() == 0


def test_a_control_api_port_in_use_is_refused(tmp_path: Path) -> None:
    first, api = start_node(tmp_path / "first")
    try:
        port = api.rsplit(":", 1)[1]
        code, second = run_to_end(*node_args(tmp_path / "second", "--api-port", port))
        assert code == 1
        assert errors(second)[-1] == (
            f"error: cannot start the node: control API address {api} is in use or not this "
            "machine's (another node's API? give each node its own --api-port)"
        )
    finally:
        assert first.stop() == 0


def test_a_corrupt_records_database_is_one_line_naming_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    (data_dir / "records.sqlite3").write_bytes(b"not SQLite" * 500)
    code, node = run_to_end(*node_args(data_dir))
    assert code == 1
    path = data_dir / "records.sqlite3"
    assert errors(node) == [
        f"error: {path} is not a readable records database (file is not a database): move it "
        f"aside (mv {path} {path}.broken) and start again; the node then starts with an empty "
        "store and gets records back from the network"
    ]


FAILING_SCRIPT = """
import asyncio, sys
from pathlib import Path
from node import DHTNode, NodeConfig

async def main() -> None:
    node = DHTNode(NodeConfig(host="127.0.0.1", port=0, data_dir=Path(sys.argv[1])))
    await node.start()
    raise RuntimeError("the script failed before stop()")

asyncio.run(main())
"""


def test_a_library_script_that_raises_before_stop_still_exits(tmp_path: Path) -> None:
    code, script = run_to_end("-c", FAILING_SCRIPT, str(tmp_path / "node"))
    assert code == 1  # it used to hang for good on the records database's thread
    assert errors(script)[-1] == "RuntimeError: the script failed before stop()"


def test_ctl_on_a_data_dir_without_a_node_names_the_dir(tmp_path: Path) -> None:
    empty = tmp_path / "typo"
    empty.mkdir()
    result = ctl("--data-dir", str(empty), "ctl", "status")
    assert result.returncode == 3
    assert result.stderr == (
        f"error: no node's control API in {empty}: {empty / 'api.json'} does not exist (is a "
        f"node running with --data-dir {empty}? else give --api HOST:PORT)\n"
    )


def test_ctl_options_go_before_or_after_the_action(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    node, _ = start_node(data_dir)
    try:
        listening = LISTENING.search(node.lines["stdout"][0])
        assert listening is not None
        node_id = listening.group(1)
        after = ctl("ctl", "status", "--json", "--data-dir", str(data_dir))
        assert after.returncode == 0, after.stderr
        assert json.loads(after.stdout)["id"] == node_id
        before = ctl("ctl", "--data-dir", str(data_dir), "status")
        assert before.returncode == 0, before.stderr
        assert before.stdout.startswith(f"node      {node_id}\n")
    finally:
        assert node.stop() == 0


def test_help_says_where_options_go(capsys: pytest.CaptureFixture[str]) -> None:
    texts = []
    for argv in (["--help"], ["ctl", "--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        texts.append(" ".join(capsys.readouterr().out.split()))  # argparse wraps lines
    assert "The node's options go before 'ctl'" in texts[0]
    for text in texts:
        assert "ctl's options (--api, --data-dir, --json, --timeout) go before or after" in text


def test_a_node_whose_bootstrap_node_starts_later_joins_it(tmp_path: Path) -> None:
    # The README's recipe started at once: the second node is up before the first, and a
    # third joins the second, so the second has a contact but not its bootstrap node.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as placeholder:
        placeholder.bind(("127.0.0.1", 0))  # the first node's port; silent until it starts
        first_port = placeholder.getsockname()[1]
        second, _ = start_node(
            tmp_path / "n2", "--bootstrap", f"127.0.0.1:{first_port}", "--log-level", "INFO"
        )
    nodes = [second]
    try:
        second_port = LISTENING.search(second.lines["stdout"][0]).group(2)  # type: ignore[union-attr]
        third, _ = start_node(tmp_path / "n3", "--bootstrap", f"127.0.0.1:{second_port}")
        nodes.append(third)
        first, first_api = start_node(tmp_path / "n1", "--port", str(first_port))
        nodes.append(first)
        second.expect(r"bootstrap answered=1 contacts=2", timeout=30, stream="stderr")
        deadline = time.monotonic() + 20
        while (peers := first_peers(first_api)) < 1 and time.monotonic() < deadline:
            pass  # each ctl call takes a while; bounded by the deadline
        assert peers >= 1  # the first node met the second
    finally:
        for node in nodes:
            node.terminate()
        assert [node.stop() for node in nodes] == [0] * len(nodes)


def first_peers(api: str) -> int:
    status = ctl("ctl", "--api", api, "--json", "status")
    assert status.returncode == 0, status.stderr
    return int(json.loads(status.stdout)["routing_table_size"])


@pytest.mark.parametrize(
    ("argv", "start", "prog"),
    [
        (["--port", "x"], "error: argument --port: invalid int value: 'x'", "python -m node"),
        (["ctl", "status", "--bogus"], "error: unrecognized arguments: --bogus", "python -m node"),
        (
            ["ctl", "frobnicate"],
            "error: argument ACTION: invalid choice: 'frobnicate'",
            "python -m node ctl",
        ),
    ],
)
def test_a_usage_error_is_one_error_line(
    argv: list[str], start: str, prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(start)
    assert err.endswith(f" (see {prog} --help)\n")
    assert err.count("\n") == 1


def test_a_udp_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        code, node = run_to_end(*node_args(tmp_path / "node", "--port", str(port)))
        assert code == 1
    assert errors(node) == [
        f"error: cannot start the node: UDP address 127.0.0.1:{port} is in use (another "
        "node's? give each its own --port)"
    ]


def test_the_start_up_lines_say_how_to_join_and_drive_the_node(tmp_path: Path) -> None:
    data_dir = tmp_path / "my node"
    node, _ = start_node(data_dir)
    try:
        listening = LISTENING.search(node.lines["stdout"][0])
        assert listening is not None
        node.expect(rf"^others join it with: --bootstrap 127\.0\.0\.1:{listening.group(2)}$")
        drive = node.expect(r"^drive it with: python -m (node ctl .*) ACTION \((.*); see")
        assert drive.group(2).split(", ")[0] == "status"
        command = shlex.split(drive.group(1))  # as a user pastes it, with an action
        status = ctl(*command[1:], "status")
        assert command[:2] == ["node", "ctl"]
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"node      {listening.group(1)}\n")
    finally:
        assert node.stop() == 0


def test_ctl_listen_hears_a_record_announced_through_another_node_within_a_second(
    tmp_path: Path,
) -> None:
    """Push across processes (issue 17): the listening node, not one of the record's holders,
    subscribes at them, and they notify it when another node stores a new version; nothing
    polls (the fallback read comes minutes later)."""
    nodes: list[tuple[Process, str, int]] = []  # (process, API address, distance to the key)
    listen: Process | None = None
    try:
        keygen = ctl("ctl", "keygen", str(tmp_path / "alice.key"))
        assert keygen.returncode == 0, keygen.stderr
        uid = keygen.stdout.split()[1]
        path = f"/presence/{uid}/"
        target = int.from_bytes(hashlib.sha1(path.encode()).digest(), "big")
        bootstrap: list[str] = []
        for i in range(8):
            node, api = start_node(tmp_path / f"n{i}", *bootstrap)
            found = LISTENING.search(node.lines["stdout"][0])
            assert found is not None
            nodes.append((node, api, int(found.group(1), 16) ^ target))
            bootstrap = bootstrap or ["--bootstrap", f"127.0.0.1:{found.group(2)}"]
        by_distance = sorted(nodes, key=lambda n: n[2])
        listener_api, announcer_api = by_distance[-1][1], by_distance[0][1]  # far, and a holder
        announce = ("ctl", "--api", announcer_api, "announce", "--key", str(tmp_path / "alice.key"))
        assert ctl(*announce).returncode == 0
        listen = Process("-m", "node", "ctl", "--api", listener_api, "--json", "listen", path)
        listen.expect(r'"record"')  # the current version: the listener is subscribed by now
        done = ctl(*announce)
        assert done.returncode == 0, done.stderr
        announced = time.monotonic()
        listen.expect(r'"record"', timeout=5)  # the new version, pushed
        elapsed = time.monotonic() - announced
        assert elapsed < 1.0, f"heard {elapsed:.2f} s after the announce returned"
    finally:
        if listen is not None:
            listen.close()
        for node, _, _ in nodes:
            node.terminate()
        for node, _, _ in nodes:
            node.stop()
