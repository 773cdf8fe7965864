"""pytest support for testing apps against a `Testnet` (issue 17): the `testnet` fixture and the
`virtual_time` marker.

Enable it in the project's top-level ``conftest.py``::

    pytest_plugins = ["simulations.pytest_plugin"]

then write ``async`` tests as usual (pytest-asyncio >= 1.4 runs them)::

    @pytest.mark.testnet(size=16, seed=1)  # optional: Testnet's arguments
    async def test_my_app(testnet: Testnet) -> None:
        node = await testnet.add_node()
        await asyncio.sleep(6 * 3600)  # six hours of virtual time, in about a second

Why a loop factory: the nodes must run on the same event loop as the test, and that loop must
be a `VirtualTimeLoop` (its clock jumps to the next timer instead of sleeping). pytest-asyncio
makes each test's loop; through its ``pytest_asyncio_loop_factories`` hook this plugin asks it
for a `VirtualTimeLoop` for each test that uses the `testnet` fixture or carries
``@pytest.mark.virtual_time``, and for the loop it would make anyway for every other test. So
the test, its async fixtures and the network share one virtual clock, and ``asyncio.sleep``,
timeouts and the nodes' timers all follow it. (The plugin is opt-in rather than a ``pytest11``
entry point because that hook decides the loop of every async test in the suite.)

A virtual-time test must not wait on real I/O (sockets, subprocesses): nothing would ever wake it,
and the loop says so (``deadlock``) after two seconds of wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import pytest_asyncio

from simulations.clock import VirtualTimeLoop
from simulations.testnet import Testnet

VIRTUAL_TIME = "virtual_time"
"""The name of the loop factory (and of the marker) for tests on virtual time."""


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers."""
    config.addinivalue_line(
        "markers", f"{VIRTUAL_TIME}: run this async test on a virtual-time event loop"
    )
    config.addinivalue_line(
        "markers", "testnet(size=16, seed=0, loss=0.0, config=None): the testnet fixture's network"
    )


def _default_loop() -> asyncio.AbstractEventLoop:
    # what pytest-asyncio makes when no factory is given: a loop of the current policy
    return asyncio.get_event_loop_policy().new_event_loop()


def needs_virtual_time(item: pytest.Item) -> bool:
    """True for a test that uses the `testnet` fixture or is marked ``virtual_time``."""
    fixtures = getattr(item, "fixturenames", ())
    return item.get_closest_marker(VIRTUAL_TIME) is not None or "testnet" in fixtures


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """A `VirtualTimeLoop` for the tests that need one, the usual loop for the others."""
    if needs_virtual_time(item):
        return {VIRTUAL_TIME: VirtualTimeLoop}
    return {"asyncio": _default_loop}


@pytest_asyncio.fixture
async def testnet(request: pytest.FixtureRequest) -> AsyncIterator[Testnet]:
    """A started `Testnet` on the test's virtual clock, closed after the test; its arguments
    come from ``@pytest.mark.testnet(...)`` (default: 16 nodes, seed 0)."""
    if not isinstance(asyncio.get_running_loop(), VirtualTimeLoop):
        raise pytest.UsageError(
            "the testnet fixture needs pytest-asyncio >= 1.4 (its loop factories hook) and "
            'pytest_plugins = ["simulations.pytest_plugin"] in the top-level conftest.py'
        )
    marker = request.node.get_closest_marker("testnet")
    options = dict(marker.kwargs) if marker is not None else {}
    async with Testnet(**options) as net:
        yield net
