"""The routing table saved in the data dir (issue 20): what is written, what is read back,
and a file that cannot be read is ignored, not fatal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from node import DHTNode
from node.contacts import (
    CONTACTS_FILE,
    MAX_SAVED,
    decode_contacts,
    encode_contacts,
    load_contacts,
)
from node.routing import RoutingTables
from tests.loopback import loopback_config

pytestmark = pytest.mark.timeout(60)


def nid(n: int) -> bytes:
    return hashlib.sha1(str(n).encode()).digest()


def test_the_closest_contacts_are_saved_and_read_back() -> None:
    own = nid(-1)
    table = RoutingTables(own, k=20)
    for n in range(600):
        host = "::1" if n % 2 else "127.0.0.1"
        table.heard_from(nid(n), (host, 1000 + n), 0.0, verified=True)
    saved = decode_contacts(encode_contacts(table, own))
    assert 0 < len(saved) <= MAX_SAVED
    expected = sorted(table, key=lambda c: c.long_id ^ int.from_bytes(own, "big"))
    assert saved == [(c.id, c.address) for c in expected[:MAX_SAVED]]
    assert {":" in address[0] for _, address in saved} == {True, False}  # both families


@pytest.mark.parametrize(
    "contents",
    [b"", b"not json", b'{"version": 9}', b'{"version": 1, "contacts": [["00", "h", 1]]}'],
)
def test_a_file_that_cannot_be_read_is_ignored(tmp_path: Path, contents: bytes) -> None:
    path = tmp_path / CONTACTS_FILE
    path.write_bytes(contents)
    assert load_contacts(path) == []
    assert load_contacts(tmp_path / "absent.json") == []


async def test_a_node_saves_its_contacts_when_it_stops(tmp_path: Path) -> None:
    first = DHTNode(loopback_config())
    await first.start()
    try:
        node = DHTNode(loopback_config(data_dir=tmp_path, bootstrap=(first.address,)))
        async with node:
            pass
        saved = load_contacts(tmp_path / CONTACTS_FILE)
        assert saved == [(first.id, first.address)]
        assert (tmp_path / CONTACTS_FILE).stat().st_mode & 0o777 == 0o600
    finally:
        await first.stop()
