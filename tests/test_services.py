"""Services are plugins: the node attaches, starts and closes them with its own lifecycle, and
routes their datagrams through its budgets (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import DHTNode
from node.directory.client import DirectoryClient
from node.directory.server import DirectoryServer
from records.drd import TicketAuthorities
from tests.loopback import FixedClock, loopback_config
from tests.records_factory import NOW
from tests.test_directory_transport import AUTHORITIES, OWNER, directory_config, ticket

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A service that writes down what the node did to it, and when."""

    def __init__(self, log: list[str], kind: int = 0x70) -> None:
        self.log = log
        self.kind = kind
        self.node: DHTNode | None = None

    def attach(self, node: DHTNode) -> None:
        self.node = node
        self.log.append(f"attach bound={node.transport is not None}")
        node.register_datagrams(f"recorder{self.kind}", [self.kind], lambda *_: None)

    async def start(self) -> None:
        assert self.node is not None
        self.log.append(f"start running={self.node.running}")

    async def close(self) -> None:
        assert self.node is not None
        self.log.append(f"close running={self.node.engine is not None}")


async def test_the_node_attaches_starts_and_closes_its_services_in_order() -> None:
    log: list[str] = []
    first, second = Recorder(log, 0x70), Recorder(log, 0x71)
    node = DHTNode(loopback_config(), services=[first, second])
    node.add_service(Recorder(log, 0x72))
    async with node:
        assert node.service(Recorder) is first
        log.append("running")
        with pytest.raises(RuntimeError, match="before the node starts"):
            node.add_service(Recorder(log))
    assert log == [
        "attach bound=False",
        "attach bound=False",
        "attach bound=False",
        "start running=True",
        "start running=True",
        "start running=True",
        "running",
        "close running=True",
        "close running=True",
        "close running=True",
    ]


async def test_two_services_cannot_claim_one_datagram_kind() -> None:
    """The node does not start; what was attached is closed again."""
    log: list[str] = []
    node = DHTNode(loopback_config(), services=[Recorder(log), Recorder(log)])
    with pytest.raises(ValueError, match="taken"):
        await node.start()
    assert not node.running
    assert log == ["attach bound=False", "attach bound=False", "close running=True"]


async def test_a_directory_runs_as_a_plugin_of_its_node(tmp_path: Path) -> None:
    authorities = TicketAuthorities(tuple(a.public_key for a in AUTHORITIES), 2)
    node = DHTNode(loopback_config(drd_authorities=authorities))
    directory = DirectoryServer(directory_config(tmp_path), node)
    node.add_service(directory)
    elsewhere = DHTNode(loopback_config())
    with pytest.raises(ValueError, match="made for"):
        DirectoryServer(directory_config(tmp_path), elsewhere).attach(node)
    async with node:
        client = DirectoryClient(clock=FixedClock(NOW), timeout=5.0, clear_text=True)
        session = await client.open_session(directory.address, OWNER, ticket(NOW))
        assert session
    assert directory.store is None  # closed with the node
