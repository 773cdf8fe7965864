"""Which servers a directory server syncs with: at most 24, proven ones kept first, fakes
tried a few a round."""

from __future__ import annotations

from node.directory.peers import MAX_PEERS, UNPROVEN_PER_ROUND, PeerTable
from node.directory.transport import Address


def fakes(count: int, start: int = 0) -> list[Address]:
    return [(f"10.0.{i // 250}.{i % 250}", 9000) for i in range(start, start + count)]


REAL = [("192.0.2.1", 8468), ("192.0.2.2", 8468)]


def test_at_most_24_whatever_is_announced() -> None:
    table = PeerTable()
    table.announced(fakes(100))
    assert len(table) == MAX_PEERS


def test_proven_peers_stay_when_fakes_crowd_them_out_of_the_announcements() -> None:
    table = PeerTable()
    table.announced(REAL)
    for peer in table.this_round():
        table.prove(peer)
    # the DHT now lists 24 fakes and not the real servers
    for _ in range(10):
        table.announced(fakes(MAX_PEERS))
        chosen = table.this_round()
        assert chosen[:2] == REAL  # every round, first
        assert len(chosen) == 2 + UNPROVEN_PER_ROUND
        assert len(table) == MAX_PEERS
    assert table.proven() == REAL


def test_unproven_peers_take_turns() -> None:
    table = PeerTable()
    table.announced(fakes(12))
    tried: set[Address] = set()
    for _ in range(3):
        tried.update(table.this_round())
    assert tried == set(fakes(12))


def test_a_new_server_gets_the_place_of_a_fake_that_had_its_turn() -> None:
    table = PeerTable()
    table.announced(fakes(MAX_PEERS))
    table.this_round()  # four fakes tried, none proven
    table.announced([*fakes(MAX_PEERS), REAL[0]])
    assert REAL[0] in table
    assert len(table) == MAX_PEERS
    rounds = MAX_PEERS // UNPROVEN_PER_ROUND
    assert any(REAL[0] in table.this_round() for _ in range(rounds))  # its turn comes


def test_unproven_peers_no_longer_announced_go_proven_ones_only_after_long_failure() -> None:
    table = PeerTable(forget_after_failures=3)
    table.announced([*REAL, *fakes(3)])
    table.prove(REAL[0])
    table.announced([])
    assert table.proven() == [REAL[0]]
    assert len(table) == 1
    table.failed(REAL[0])
    table.failed(REAL[0])
    table.succeeded(REAL[0])  # back: the count starts over
    table.failed(REAL[0])
    table.failed(REAL[0])
    assert REAL[0] in table
    table.failed(REAL[0])
    assert REAL[0] not in table
