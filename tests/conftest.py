"""Shared test settings and leak checks.

Every test fails if it leaves a file descriptor (socket, file) open or a new file in the
temporary directory; every async test also fails if it leaves a task running.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings

# the testnet fixture and virtual-time async tests, as an app's suite would enable them
pytest_plugins = ["simulations.pytest_plugin"]

settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config: pytest.Config) -> None:
    """Give this test run a temporary directory of its own (child processes too), so the check
    for files left behind sees only what our tests made, not other programs sharing /tmp."""
    private = tempfile.mkdtemp(prefix="kadnode-tests-")
    config.stash[_PRIVATE_TEMP] = (private, tempfile.tempdir, os.environ.get("TMPDIR"))
    tempfile.tempdir = private
    os.environ["TMPDIR"] = private


def pytest_unconfigure(config: pytest.Config) -> None:
    """Restore the temporary directory and remove ours."""
    if _PRIVATE_TEMP not in config.stash:
        return
    private, previous, previous_env = config.stash[_PRIVATE_TEMP]
    tempfile.tempdir = previous
    if previous_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous_env
    shutil.rmtree(private, ignore_errors=True)


_PRIVATE_TEMP = pytest.StashKey[tuple[str, str | None, str | None]]()


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _temp_entries() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if not name.startswith("pytest-")}


@pytest.fixture(autouse=True)
def no_leaked_fds_or_temp_files() -> Iterator[None]:
    """Fail a test that leaves descriptors open or files behind in the temp directory."""
    fds_before = _open_fds()
    temp_before = _temp_entries()
    yield
    gc.collect()  # objects that close their descriptors when collected (gRPC's) go first
    leaked_fds = _open_fds() - fds_before - _event_loop_fds()
    leaked = {
        fd: what
        for fd in leaked_fds
        # libraries may cache a data file open for good (matplotlib's font)
        if (what := _describe(fd)) is not None and "/site-packages/" not in what
    }
    assert not leaked, f"test leaked file descriptors: {leaked}"
    new_temp = _temp_entries() - temp_before
    assert not new_temp, f"test left files in {tempfile.gettempdir()}: {sorted(new_temp)}"


def _event_loop_fds() -> set[int]:
    """Descriptors owned by open event loops (pytest-asyncio keeps one between tests)."""
    fds: set[int] = set()
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.BaseEventLoop) and not obj.is_closed():
            for name in ("_ssock", "_csock"):
                sock = getattr(obj, name, None)
                if sock is not None:
                    fds.add(sock.fileno())
            selector = getattr(obj, "_selector", None)
            if selector is not None and hasattr(selector, "fileno"):
                fds.add(selector.fileno())
    return fds


def _describe(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None  # closed meanwhile


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves a task running (on the test's own event loop)."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not current]
    assert not leaked, f"test leaked tasks: {leaked}"


@pytest.fixture(autouse=True)
def _task_leak_check(request: pytest.FixtureRequest) -> None:
    """Apply `no_leaked_tasks` to every coroutine test (a marker added at collection would
    come too late: pytest has fixed each test's fixtures by then). Tests that run their own
    loop (`run_virtual`) are checked by it: it fails on tasks left behind."""
    function = getattr(request.node, "function", None)
    if function is not None and asyncio.iscoroutinefunction(function):
        request.getfixturevalue("no_leaked_tasks")
