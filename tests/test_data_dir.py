"""The data directory: one node at a time holds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import DataDirInUse, DHTNode
from tests.loopback import loopback_config


async def test_a_second_node_on_the_same_data_dir_is_refused_until_the_first_stops(
    tmp_path: Path,
) -> None:
    first = DHTNode(loopback_config(data_dir=tmp_path))
    second = DHTNode(loopback_config(data_dir=tmp_path))
    await first.start()
    try:
        with pytest.raises(DataDirInUse, match=f"data dir {tmp_path} is in use by pid "):
            await second.start()
        assert not second.running
    finally:
        await first.stop()
    await second.start()  # the lock went with the first node
    try:
        assert second.id == first.id  # the same key file
    finally:
        await second.stop()
