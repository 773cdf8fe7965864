"""Routing table: buckets, replacement cache, ping-before-evict, closest contacts."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from node.routing import RoutingTable


def nid(n: int) -> bytes:
    return hashlib.sha1(str(n).encode()).digest()


def addr(n: int) -> tuple[str, int]:
    return ("127.0.0.1", 10000 + n)


OWN = nid(-1)


def test_heard_from_adds_and_refreshes() -> None:
    table = RoutingTable(OWN, k=4)
    assert table.heard_from(nid(1), addr(1), 1.0, verified=True) is None
    assert len(table) == 1
    contact = table.get(nid(1))
    assert contact is not None
    assert contact.address == addr(1)
    table.heard_from(nid(1), addr(1), 5.0, verified=False)
    assert contact.last_seen == 5.0
    # never adds itself
    table.heard_from(OWN, addr(0), 1.0, verified=True)
    assert table.get(OWN) is None


def test_unverified_message_cannot_move_a_contact() -> None:
    table = RoutingTable(OWN, k=4)
    table.heard_from(nid(1), addr(1), 1.0, verified=True)
    table.heard_from(nid(1), addr(2), 2.0, verified=False)
    assert table.get(nid(1)).address == addr(1)  # type: ignore[union-attr]
    table.heard_from(nid(1), addr(2), 3.0, verified=True)
    assert table.get(nid(1)).address == addr(2)  # type: ignore[union-attr]


def fill_far_bucket(table: RoutingTable, count: int) -> list[bytes]:
    """IDs that all land in the bucket far from OWN (top bit differs)."""
    own_top = OWN[0] >> 7
    ids: list[bytes] = []
    n = 0
    while len(ids) < count:
        candidate = nid(n)
        if candidate[0] >> 7 != own_top:
            ids.append(candidate)
        n += 1
    return ids


def test_full_bucket_parks_newcomers_and_pings_the_quiet_head() -> None:
    table = RoutingTable(OWN, k=3, ping_interval=60.0)
    far = fill_far_bucket(table, 6)
    # fill the own bucket's sibling: first splits happen as needed
    for i, node_id in enumerate(far[:3]):
        table.heard_from(node_id, addr(i), 0.0, verified=True)
    # a newcomer to the full far bucket: parked; the head was seen at t=0, now t=10 < 60
    assert table.heard_from(far[3], addr(3), 10.0, verified=True) is None
    assert table.get(far[3]) is None
    # later the head has been quiet long enough: ping it (once)
    head = table.heard_from(far[4], addr(4), 100.0, verified=True)
    assert head is not None
    assert head.id == far[0]
    assert table.heard_from(far[5], addr(5), 101.0, verified=True) is None  # already pinging
    # the head answers: it stays, newcomers remain parked
    table.heard_from(far[0], addr(0), 102.0, verified=True)
    assert table.get(far[0]) is not None
    assert table.get(far[4]) is None


def test_contact_replaced_only_after_repeated_failures() -> None:
    table = RoutingTable(OWN, k=3, stale_after=3, drop_after=5)
    far = fill_far_bucket(table, 4)
    for i, node_id in enumerate(far[:3]):
        table.heard_from(node_id, addr(i), 0.0, verified=True)
    table.heard_from(far[3], addr(3), 1.0, verified=True)  # parked as replacement
    assert not table.failed(far[0])
    assert not table.failed(far[0])
    assert table.get(far[0]) is not None
    assert table.failed(far[0])  # third failure, a replacement is waiting
    assert table.get(far[0]) is None
    assert table.get(far[3]) is not None


def test_contact_without_replacement_dropped_after_drop_after() -> None:
    table = RoutingTable(OWN, k=3, stale_after=2, drop_after=4)
    table.heard_from(nid(1), addr(1), 0.0, verified=True)
    for _ in range(3):
        assert not table.failed(nid(1))
    assert table.failed(nid(1))
    assert table.get(nid(1)) is None


def test_success_resets_failures() -> None:
    table = RoutingTable(OWN, k=3, stale_after=2, drop_after=2)
    table.heard_from(nid(1), addr(1), 0.0, verified=True)
    table.failed(nid(1))
    table.heard_from(nid(1), addr(1), 1.0, verified=True)
    assert not table.failed(nid(1))
    assert table.get(nid(1)) is not None


def test_good_only_skips_failing_contacts() -> None:
    table = RoutingTable(OWN, k=20)
    for i in range(5):
        table.heard_from(nid(i), addr(i), 0.0, verified=True)
    table.failed(nid(2))
    target = int.from_bytes(nid(2), "big")
    assert nid(2) in [c.id for c in table.closest(target, 5)]
    assert nid(2) not in [c.id for c in table.closest(target, 5, good_only=True)]
    assert nid(3) not in [c.id for c in table.closest(target, 5, exclude=nid(3))]


@given(
    st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=300, unique=True),
    st.integers(min_value=0, max_value=2**160 - 1),
    st.integers(min_value=1, max_value=30),
)
def test_closest_matches_brute_force(ns: list[int], target: int, count: int) -> None:
    table = RoutingTable(OWN, k=8)
    for n in ns:
        table.heard_from(nid(n), addr(n % 50000), 0.0, verified=True)
    members = list(table)
    expected = sorted(members, key=lambda c: c.long_id ^ target)[:count]
    assert [c.id for c in table.closest(target, count)] == [c.id for c in expected]
    # buckets tile the ID space and respect k
    assert sum(b.size for b in table.buckets) == 2**160
    assert all(len(b.contacts) <= 8 for b in table.buckets)


def test_room_and_known_addresses_decide_who_is_asked_for_a_proof() -> None:
    table = RoutingTable(OWN, k=3)
    own = int.from_bytes(OWN, "big")

    def at(distance: int) -> bytes:
        return (own ^ distance).to_bytes(20, "big")

    far = at(1 << 159)
    for i, distance in enumerate((2, 3, 4)):
        table.heard_from(at(distance), ("127.0.0.1", 2000 + i), 0.0, verified=True)
    assert table.has_room_for(far)  # its bucket (the far half) is empty
    assert not table.has_room_for(OWN)
    assert table.known_at(at(2), ("127.0.0.1", 2000))
    assert not table.known_at(at(2), ("127.0.0.1", 2001))  # the same ID elsewhere is not proven


def full_far_bucket(table: RoutingTable, rtts: list[float]) -> list[bytes]:
    """Fill the far bucket (top bit unlike OWN's, never split) with members of those RTTs."""
    far = fill_far_bucket(table, len(rtts) + 4)
    for i, (node_id, rtt) in enumerate(zip(far, rtts, strict=False)):
        table.heard_from(node_id, addr(i), 0.0, verified=True, rtt=rtt)
    return far


def test_a_much_faster_newcomer_takes_the_slowest_members_place() -> None:
    table = RoutingTable(OWN, k=3, proximity=True)
    far = full_far_bucket(table, [0.100, 0.250, 0.120])
    # only a little faster than the slowest (not <= half of 250 ms): parked, as before
    table.heard_from(far[3], addr(3), 1.0, verified=True, rtt=0.200)
    assert table.get(far[3]) is None
    # much faster: in, and the slowest member waits in the replacement cache
    table.heard_from(far[4], addr(4), 2.0, verified=True, rtt=0.020)
    assert table.get(far[4]) is not None
    assert table.get(far[1]) is None
    assert table.known_at(far[1], addr(1))  # parked, not forgotten
    # so it comes back first if a member fails for good
    for _ in range(table.stale_after):
        table.failed(far[0])
    assert table.get(far[1]) is not None
    # a contact's estimate is kept from the answers it gave
    newcomer = table.get(far[4])
    assert newcomer is not None
    assert newcomer.srtt == 0.020


def test_proximity_never_replaces_on_unverified_or_unmeasured_contacts() -> None:
    for proximity, verified, rtt in ((False, True, 0.001), (True, False, None), (True, True, None)):
        table = RoutingTable(OWN, k=3, proximity=proximity)
        far = full_far_bucket(table, [0.100, 0.250, 0.120])
        table.heard_from(far[3], addr(3), 1.0, verified=verified, rtt=rtt)
        assert table.get(far[3]) is None
        assert all(table.get(node_id) is not None for node_id in far[:3])
