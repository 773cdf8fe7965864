"""Real ``python -m node`` (and ``node.chat``) processes on 127.0.0.1 for tests of what only
shows across processes: every wait is on a line of output or a process exit, with a deadline."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

LISTENING = re.compile(r"node ([0-9a-f]{40}) listening on 127\.0\.0\.1:(\d+)")
API = re.compile(r"control API on 127\.0\.0\.1:(\d+)")


class Process:
    """A child process whose stdout and stderr are read line by line, with deadlines."""

    def __init__(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> None:
        self.args = [sys.executable, *args]
        self.proc = subprocess.Popen(
            self.args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._pipes = {"stdout": self.proc.stdout, "stderr": self.proc.stderr}
        self._partial = {"stdout": b"", "stderr": b""}
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._read = {"stdout": 0, "stderr": 0}  # lines already handed to `expect`
        self._terminated = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self, deadline: float) -> bool:
        """Read what is available (waiting until `deadline`); False once both pipes are shut."""
        open_pipes = {name: pipe for name, pipe in self._pipes.items() if not pipe.closed}
        if not open_pipes:
            return False
        with selectors.DefaultSelector() as selector:
            for name, pipe in open_pipes.items():
                selector.register(pipe, selectors.EVENT_READ, name)
            events = selector.select(max(0.0, deadline - time.monotonic()))
        for key, _ in events:
            name = key.data
            chunk = os.read(self._pipes[name].fileno(), 65536)
            if not chunk:
                self._pipes[name].close()
                if self._partial[name]:
                    self.lines[name].append(self._partial[name].decode(errors="replace"))
                    self._partial[name] = b""
                continue
            *complete, self._partial[name] = (self._partial[name] + chunk).split(b"\n")
            self.lines[name].extend(line.decode(errors="replace") for line in complete)
        return True

    def expect(
        self, pattern: str | re.Pattern[str], timeout: float = 20.0, stream: str = "stdout"
    ) -> re.Match[str]:
        """The next line of `stream` matching `pattern`; fails after `timeout` seconds or at
        end of output, showing what the process wrote."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines[stream]
            while self._read[stream] < len(lines):
                line = lines[self._read[stream]]
                self._read[stream] += 1
                if match := regex.search(line):
                    return match
            if time.monotonic() >= deadline or not self._pump(deadline):
                raise AssertionError(
                    f"no line matching {regex.pattern!r} on {stream} of {self.args[1:]}; "
                    f"it wrote {self.lines}"
                )

    def wait(self, timeout: float = 20.0) -> int:
        """The exit code, reading all output meanwhile; fails if it runs past `timeout`."""
        deadline = time.monotonic() + timeout
        while self._pump(deadline) and time.monotonic() < deadline:
            pass
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.args[1:]} still runs after {timeout} s") from None

    def terminate(self) -> None:
        """Send SIGTERM once (`stop` then waits for it): stopping several nodes at once."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code (SIGKILL if it does not stop in time)."""
        self.terminate()
        try:
            return self.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Kill it if it still runs; close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in self._pipes.values():
            pipe.close()


def node_args(data_dir: Path, *options: str) -> list[str]:
    """``-m node`` on 127.0.0.1, any free UDP and API port, logging warnings only, then
    `options` (a later option overrides these)."""
    return [
        *("-m", "node", "--host", "127.0.0.1", "--port", "0", "--api-port", "0"),
        *("--data-dir", str(data_dir), "--log-level", "WARNING", *options),
    ]


def start_node(data_dir: Path, *options: str) -> tuple[Process, str]:
    """``python -m node`` (`node_args`) with `options`; returns the process (its start-up lines
    read up to the API line) and its control API address."""
    node = Process(*node_args(data_dir, *options))
    try:
        node.expect(LISTENING)
        api = node.expect(API)
    except BaseException:
        node.close()
        raise
    return node, f"127.0.0.1:{api.group(1)}"


def run_to_end(*args: str, timeout: float = 20.0) -> tuple[int, Process]:
    """Run ``python ARGS`` until it exits: its exit code, and the process (its `lines`)."""
    process = Process(*args)
    try:
        return process.wait(timeout), process
    finally:
        process.close()


def ctl(
    *args: str, timeout: float = 30.0, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m node ARGS`` (``ctl ...`` or node options, then ``ctl ...``) to its end."""
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        input=stdin.decode() if stdin is not None else None,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
