"""The routing table: k-buckets over the 160-bit XOR metric (Kademlia paper §2.2, §2.4).

Differences from `kademlia.routing`, each for a measured reason (shared/KADEMLIA-NOTES.md):
contacts are replaced only after repeated failures, with ping-before-evict and a replacement
cache for full buckets; the replacement cache is not mistaken for membership; finding the closest
contacts visits buckets in XOR order instead of walking the whole table; and time comes from the
caller (the event loop's clock), never from `time.monotonic()`.

Proximity neighbour selection: a full bucket that cannot split takes a newcomer that answered
much faster than its slowest member (`faster_than`), and parks that member in the replacement
cache instead; liveness is still kept by ping-before-evict and the failure counts.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator

ID_BITS = 160
_ALL_IDS = (1 << ID_BITS) - 1
Address = tuple[str, int]
PNS_FACTOR = 0.5
"""A newcomer displaces a member of a full bucket only if its round trip is at most this share
of the member's (a clear gain, not jitter)."""


class RttEstimator:
    """Smoothed round-trip time and its variation (RFC 6298), in seconds."""

    __slots__ = ("rttvar", "srtt")

    def __init__(self) -> None:
        self.srtt = 0.0  # 0.0: no sample yet
        self.rttvar = 0.0

    def observe_rtt(self, sample: float) -> None:
        """Fold a round-trip sample into the estimate."""
        if self.srtt == 0.0:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample


class RttSpread:
    """Round trips to all peers lately: what to expect from a peer not measured yet.

    One smoothed estimate over every peer is pulled toward whichever peers answered last (a
    node near its neighbours would time out everyone far away); a window of recent samples
    tracks the spread instead.
    """

    __slots__ = ("_p50", "_p90", "_samples", "_since", "size")

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._samples = array("d")  # 8 bytes a sample; a list of floats takes 32
        self._since = 0  # samples since the percentiles were computed
        self._p50 = self._p90 = 0.0

    def observe(self, sample: float) -> None:
        """Add one round-trip sample (seconds)."""
        samples = self._samples
        if len(samples) < self.size:
            samples.append(sample)
        else:
            samples[self._since % self.size] = sample
        self._since += 1
        if len(samples) < 8 or self._since % 16 == 0 or len(samples) <= 16:
            ordered = sorted(samples)
            self._p50 = ordered[len(ordered) // 2]
            self._p90 = ordered[min(len(ordered) - 1, (len(ordered) * 9) // 10)]

    @property
    def known(self) -> bool:
        """True once there are enough samples to go by."""
        return len(self._samples) >= 8

    @property
    def typical(self) -> float:
        """The median recent round trip."""
        return self._p50

    @property
    def slow(self) -> float:
        """The 90th percentile of recent round trips."""
        return self._p90


class Contact(RttEstimator):
    """A node we know: its ID, address, failure count and measured round-trip time."""

    __slots__ = ("address", "failures", "id", "last_seen", "long_id", "pinging")

    def __init__(self, node_id: bytes, address: Address, now: float) -> None:
        super().__init__()
        self.id = node_id
        self.long_id = int.from_bytes(node_id, "big")
        self.address = address
        self.failures = 0
        self.last_seen = now
        self.pinging = False

    def __repr__(self) -> str:
        return f"Contact({self.id.hex()[:12]}, {self.address[0]}:{self.address[1]})"


class Bucket:
    """Contacts whose IDs share the bucket's prefix, least recently seen first.

    Buckets order by their lowest ID (`lo`), which also breaks ties when sorting."""

    __slots__ = ("contacts", "depth", "last_lookup", "lo", "mask", "replacements", "size")

    def __init__(self, lo: int, depth: int, now: float) -> None:
        self.lo = lo
        self.depth = depth
        self.size = 1 << (ID_BITS - depth)
        self.mask = _ALL_IDS - (self.size - 1)  # keeps the `depth` bits of the prefix
        self.contacts: dict[bytes, Contact] = {}
        self.replacements: dict[bytes, Contact] = {}
        self.last_lookup = now

    def __lt__(self, other: Bucket) -> bool:
        return self.lo < other.lo

    def covers(self, long_id: int) -> bool:
        """True if `long_id` falls in this bucket's range."""
        return self.lo <= long_id < self.lo + self.size

    def distance_floor(self, target: int) -> int:
        """The smallest XOR distance from `target` to any ID in this bucket's range."""
        return (self.lo ^ target) & self.mask


class RoutingTable:
    """k-buckets around `own_id`; only the bucket holding `own_id` splits (paper §2.4)."""

    def __init__(
        self,
        own_id: bytes,
        *,
        k: int = 20,
        stale_after: int = 3,
        drop_after: int = 5,
        ping_interval: float = 60.0,
        now: float = 0.0,
        proximity: bool = False,
    ) -> None:
        self.own_id = own_id
        self.own_long_id = int.from_bytes(own_id, "big")
        self.k = k
        self.stale_after = stale_after
        self.drop_after = drop_after
        self.ping_interval = ping_interval
        self.proximity = proximity
        """Proximity neighbour selection (module docstring)."""
        self.buckets: list[Bucket] = [Bucket(0, 0, now)]
        self._los: list[int] = [0]  # each bucket's lowest ID, for bisect

    def __len__(self) -> int:
        return sum(len(b.contacts) for b in self.buckets)

    def __iter__(self) -> Iterator[Contact]:
        for bucket in self.buckets:
            yield from bucket.contacts.values()

    def bucket_for(self, long_id: int) -> Bucket:
        """The bucket whose range holds `long_id`."""
        if not 0 <= long_id <= _ALL_IDS:
            raise ValueError(f"ID {long_id:#x} is outside the 160-bit space")
        return self.buckets[bisect.bisect_right(self._los, long_id) - 1]

    def get(self, node_id: bytes) -> Contact | None:
        """The contact with `node_id`, if it is in a bucket (not the replacement cache)."""
        buckets = self.buckets
        if len(buckets) == 1:  # never split (an address family we hear nothing of): no search
            return buckets[0].contacts.get(node_id)
        return self.bucket_for(int.from_bytes(node_id, "big")).contacts.get(node_id)

    def heard_from(
        self,
        node_id: bytes,
        address: Address,
        now: float,
        *,
        verified: bool,
        rtt: float | None = None,
    ) -> Contact | None:
        """Record that `node_id` at `address` is alive; maybe add it.

        `verified` means the message answered one of our requests sent to `address`; unverified
        (a request's source address) never moves a known contact to a new address. `rtt` is
        the round trip that answer took (contacts and replacements keep an estimate). Returns
        a contact to ping when the bucket is full and its least recently seen member has been
        quiet for `ping_interval` (ping-before-evict); the caller reports the outcome with
        `heard_from` or `failed`.
        """
        if node_id == self.own_id:
            return None
        long_id = int.from_bytes(node_id, "big")
        bucket = self.bucket_for(long_id)
        known = bucket.contacts.get(node_id)
        if known is not None:
            if known.address != address and not verified:
                return None
            if verified:
                # an answer from a member shows the bucket's range is reachable: as good as a
                # lookup into it for the purpose of refreshing (paper §2.3)
                bucket.last_lookup = now
            known.address = address
            known.failures = 0
            known.last_seen = now
            known.pinging = False
            if rtt is not None:
                known.observe_rtt(rtt)
            del bucket.contacts[node_id]  # move to the tail: most recently seen
            bucket.contacts[node_id] = known
            return None
        contact = bucket.replacements.pop(node_id, None)
        if contact is None:
            contact = Contact(node_id, address, now)
        elif verified:
            contact.address = address
        contact.last_seen = now
        if rtt is not None and contact.address == address:
            contact.observe_rtt(rtt)
        while len(bucket.contacts) >= self.k and bucket.covers(self.own_long_id):
            if bucket.depth >= ID_BITS:
                break
            self._split(bucket, now)
            bucket = self.bucket_for(long_id)
        if len(bucket.contacts) < self.k:
            bucket.contacts[node_id] = contact
            return None
        stale = next((c for c in bucket.contacts.values() if c.failures >= self.stale_after), None)
        if stale is not None:
            del bucket.contacts[stale.id]
            bucket.contacts[node_id] = contact
            return None
        slow = self.faster_than(bucket, contact) if verified and self.proximity else None
        if slow is not None:
            del bucket.contacts[slow.id]
            bucket.contacts[node_id] = contact
            contact = slow  # parked: it takes a place again if a member fails
            node_id = slow.id
        bucket.replacements[node_id] = contact
        while len(bucket.replacements) > self.k:
            del bucket.replacements[next(iter(bucket.replacements))]
        head = next(iter(bucket.contacts.values()))
        if not head.pinging and now - head.last_seen >= self.ping_interval:
            head.pinging = True
            return head
        return None

    @staticmethod
    def faster_than(bucket: Bucket, newcomer: Contact) -> Contact | None:
        """The member of `bucket` that `newcomer` should displace (proximity neighbour
        selection): the one with the longest measured round trip, if the newcomer's is at most
        `PNS_FACTOR` of it. Members not measured yet, or being pinged, are left alone."""
        if not newcomer.srtt:
            return None
        slowest: Contact | None = None
        for member in bucket.contacts.values():
            if (
                member.srtt
                and not member.pinging
                and (slowest is None or member.srtt > slowest.srtt)
            ):
                slowest = member
        if slowest is not None and newcomer.srtt <= PNS_FACTOR * slowest.srtt:
            return slowest
        return None

    def known_at(self, node_id: bytes, address: Address) -> bool:
        """True if `node_id` is a contact or a replacement at `address`."""
        bucket = self.bucket_for(int.from_bytes(node_id, "big"))
        contact = bucket.contacts.get(node_id) or bucket.replacements.get(node_id)
        return contact is not None and contact.address == address

    def has_room_for(self, node_id: bytes) -> bool:
        """True if `heard_from` would make `node_id` a contact now, not a replacement (its bucket
        has room, can split, or holds a stale contact)."""
        if node_id == self.own_id:
            return False
        bucket = self.bucket_for(int.from_bytes(node_id, "big"))
        return (
            len(bucket.contacts) < self.k
            or (bucket.covers(self.own_long_id) and bucket.depth < ID_BITS)
            or any(c.failures >= self.stale_after for c in bucket.contacts.values())
        )

    def failed(self, node_id: bytes) -> bool:
        """Count a failed request to `node_id`; True if it was removed from its bucket.

        A contact is replaced after `stale_after` consecutive failures when a replacement is
        waiting, and dropped after `drop_after` even if none is.
        """
        bucket = self.bucket_for(int.from_bytes(node_id, "big"))
        contact = bucket.contacts.get(node_id)
        if contact is None:
            bucket.replacements.pop(node_id, None)
            return False
        contact.failures += 1
        contact.pinging = False
        if contact.failures >= self.drop_after or (
            contact.failures >= self.stale_after and bucket.replacements
        ):
            del bucket.contacts[node_id]
            if bucket.replacements:
                newest = next(reversed(bucket.replacements))
                bucket.contacts[newest] = bucket.replacements.pop(newest)
            return True
        return False

    def remove(self, node_id: bytes) -> None:
        """Forget `node_id` entirely."""
        bucket = self.bucket_for(int.from_bytes(node_id, "big"))
        bucket.contacts.pop(node_id, None)
        bucket.replacements.pop(node_id, None)

    def closest(
        self, target: int, count: int, *, exclude: bytes | None = None, good_only: bool = False
    ) -> list[Contact]:
        """Up to `count` contacts nearest `target` by XOR distance, nearest first.

        Buckets are prefix-aligned ranges, so their members' distances to `target` fall in
        disjoint intervals: visiting buckets by `distance_floor` visits contacts in distance order,
        bucket by bucket, and stops as soon as `count` are found. `good_only` skips contacts whose
        last request failed.
        """
        found: list[Contact] = []
        # `distance_floor`, inlined (this runs for every find answered and every lookup)
        ordered = sorted([((b.lo ^ target) & b.mask, b) for b in self.buckets if b.contacts])
        for _, bucket in ordered:
            # keyed by distance, which is unique (IDs are): the keys sort in C
            members = {
                c.long_id ^ target: c
                for c in bucket.contacts.values()
                if c.id != exclude and not (good_only and c.failures)
            }
            found.extend([members[d] for d in sorted(members)])
            if len(found) >= count:
                return found[:count]
        return found

    def mark_lookup(self, target: int, now: float) -> None:
        """Note a lookup into `target`'s bucket, so it need not be refreshed (paper §2.3)."""
        self.bucket_for(target).last_lookup = now

    def stale_buckets(self, now: float, interval: float) -> list[Bucket]:
        """Non-empty buckets with no lookup in the last `interval` seconds."""
        return [b for b in self.buckets if b.contacts and now - b.last_lookup >= interval]

    def _split(self, bucket: Bucket, now: float) -> None:
        index = self.buckets.index(bucket)
        low = Bucket(bucket.lo, bucket.depth + 1, now)
        high = Bucket(bucket.lo + low.size, bucket.depth + 1, now)
        low.last_lookup = high.last_lookup = bucket.last_lookup
        for contacts, attr in (
            (bucket.contacts, "contacts"),
            (bucket.replacements, "replacements"),
        ):
            for node_id, contact in contacts.items():
                half = low if contact.long_id < high.lo else high
                getattr(half, attr)[node_id] = contact
        for half in (low, high):
            while len(half.contacts) < self.k and half.replacements:
                newest = next(reversed(half.replacements))
                half.contacts[newest] = half.replacements.pop(newest)
        self.buckets[index : index + 1] = [low, high]
        self._los[index : index + 1] = [low.lo, high.lo]


def family_of(address: Address) -> int:
    """4 or 6: the IP version of `address`'s host (as the node stores it: IPv4-mapped IPv6
    addresses are written as plain IPv4)."""
    return 6 if ":" in address[0] else 4


class RoutingTables:
    """One node ID, one routing table per address family (BEP 32): IPv4 contacts in one,
    IPv6 in the other, so a node that reaches only one family never fills its buckets with
    contacts it cannot reach. `families` says which it can reach (set when the socket is
    bound: an IPv4 socket reaches 4, a dual-stack IPv6 one both).

    It has the interface of `RoutingTable`; methods that take an address use its family's
    table, the others look in both."""

    def __init__(
        self,
        own_id: bytes,
        *,
        k: int = 20,
        stale_after: int = 3,
        drop_after: int = 5,
        now: float = 0.0,
        proximity: bool = False,
    ) -> None:
        self.own_id = own_id
        self.own_long_id = int.from_bytes(own_id, "big")
        self.k = k
        self.by_family = {
            family: RoutingTable(
                own_id,
                k=k,
                stale_after=stale_after,
                drop_after=drop_after,
                now=now,
                proximity=proximity,
            )
            for family in (4, 6)
        }
        self.families: frozenset[int] = frozenset({4, 6})
        """The address families this node can reach."""

    def __len__(self) -> int:
        return sum(len(t) for t in self.by_family.values())

    def __iter__(self) -> Iterator[Contact]:
        for table in self.by_family.values():
            yield from table

    @property
    def buckets(self) -> list[Bucket]:
        """The buckets of the tables this node can reach."""
        return [b for f in sorted(self.families) for b in self.by_family[f].buckets]

    def reachable(self, address: Address) -> bool:
        """True if this node can send to `address`."""
        return family_of(address) in self.families

    def get(self, node_id: bytes, family: int | None = None) -> Contact | None:
        """The contact with `node_id` in `family`'s table (by default: either, IPv4 first)."""
        if family is not None:
            return self.by_family[family].get(node_id)
        found = self.by_family[4].get(node_id)
        if found is None and 6 in self.families:  # only a reachable family's table fills
            found = self.by_family[6].get(node_id)
        return found

    def heard_from(
        self,
        node_id: bytes,
        address: Address,
        now: float,
        *,
        verified: bool,
        rtt: float | None = None,
    ) -> Contact | None:
        """`RoutingTable.heard_from` in `address`'s family's table (nothing if unreachable)."""
        if not self.reachable(address):
            return None
        return self.by_family[family_of(address)].heard_from(
            node_id, address, now, verified=verified, rtt=rtt
        )

    def known_at(self, node_id: bytes, address: Address) -> bool:
        """True if `node_id` is a contact or a replacement at `address`."""
        return self.by_family[6 if ":" in address[0] else 4].known_at(node_id, address)

    def has_room_for(self, node_id: bytes, address: Address) -> bool:
        """True if `node_id`, met at `address`, would be a contact now (not a replacement)."""
        return self.reachable(address) and self.by_family[family_of(address)].has_room_for(node_id)

    def failed(self, node_id: bytes, address: Address | None = None) -> bool:
        """Count a failed request to `node_id` (at `address`: in that family's table only)."""
        if address is not None:
            return self.by_family[family_of(address)].failed(node_id)
        return any([t.failed(node_id) for t in self.by_family.values()])

    def remove(self, node_id: bytes) -> None:
        """Forget `node_id` in both tables."""
        for table in self.by_family.values():
            table.remove(node_id)

    def closest(
        self,
        target: int,
        count: int,
        *,
        exclude: bytes | None = None,
        good_only: bool = False,
        family: int | None = None,
    ) -> list[Contact]:
        """The `count` contacts nearest `target`: from `family`'s table, or from every table
        this node can reach (a node in both appears once, at its IPv4 address)."""
        families = [family] if family is not None else sorted(self.families)
        results = [
            found
            for f in families
            if (
                found := self.by_family[f].closest(
                    target, count, exclude=exclude, good_only=good_only
                )
            )
        ]
        if len(results) <= 1:  # one family holds contacts (the usual case): sorted already
            return results[0] if results else []
        merged: dict[bytes, Contact] = {}
        for found in results:
            for contact in found:
                merged.setdefault(contact.id, contact)
        return sorted(merged.values(), key=lambda c: c.long_id ^ target)[:count]

    def mark_lookup(self, target: int, now: float) -> None:
        """Note a lookup into `target`'s buckets."""
        for f in self.families:
            self.by_family[f].mark_lookup(target, now)

    def stale_buckets(self, now: float, interval: float) -> list[Bucket]:
        """Buckets of the reachable tables with no lookup for `interval` seconds."""
        return [
            b for f in sorted(self.families) for b in self.by_family[f].stale_buckets(now, interval)
        ]
