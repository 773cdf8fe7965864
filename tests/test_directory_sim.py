"""Three directory servers on the simulated network: a client registered with two updates one,
and every server converges by anti-entropy; a partition heals; a delete propagates; the DHT
entry is readable by any node; the private comment never leaves the server that received it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node.directory.client import ClientSession, DirectoryClient, lookup_entry
from node.directory.ownership import QuorumTicketVerifier
from node.directory.server import DirectoryConfig, DirectoryServer
from records import Identity, InvalidRecord, Record
from records.directory import (
    Command,
    MailboxNumber,
    Profile,
    QMailServer,
    UpdateKey,
    authorize_update,
    mint_ticket,
)
from records.drd import (
    DRD_SERVERS_KEY,
    TicketAuthorities,
    drd_key,
    entry_of,
    make_drd_servers_record,
    servers_of,
    sync_entry,
)
from records.errors import DirectoryError
from simulations.clock import run_virtual
from simulations.harness import SimNode, Simulation
from simulations.streams import SimStreams

pytestmark = pytest.mark.timeout(60)

AUTHORITIES = [Identity.from_seed(bytes([i + 30]) * 32) for i in range(5)]
OWNER = Identity.from_seed(b"sim-owner".ljust(32, b"\x00"))
MAILBOX = MailboxNumber(6, 4, 4242)
SYNC = 30.0
COMMENT = "my very private reason"


@dataclass
class DirectoryNet:
    sim: Simulation
    hosts: list[SimNode]
    streams: SimStreams
    servers: list[DirectoryServer]
    client: DirectoryClient
    frames: list[tuple[int, bytes, bytes]] = field(default_factory=list)

    async def login(self, index: int) -> ClientSession:
        now = self.sim.now_ms()
        ticket = mint_ticket(
            AUTHORITIES[:3], MAILBOX, OWNER.public_key, issued=now, expires=now + 86_400_000
        )
        return await self.client.open_session(self.servers[index].address, OWNER, ticket)

    async def held(self) -> list[tuple[int, Profile] | None]:
        out: list[tuple[int, Profile] | None] = []
        for server in self.servers:
            assert server.store is not None
            stored = await server.store.get(MAILBOX)
            out.append(None if stored is None else (stored.version, stored.profile))
        return out

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        await self.sim.stop_all()


async def directory_net(tmp_path: Path, seed: int, **settings: Any) -> DirectoryNet:
    # every node checks /drd/ tickets against these authorities, as the servers do
    trusted = TicketAuthorities(tuple(a.public_key for a in AUTHORITIES), 3)
    sim = Simulation(seed=seed, config={"drd_authorities": trusted})
    hosts = await sim.grow(10)
    streams = SimStreams(sim.network)
    # clear text: these tests read the frames servers exchange (sealed ones: test_drd_sealed.py)
    client = DirectoryClient(streams.transport(hosts[9].host), clear_text=True)
    net = DirectoryNet(sim, hosts, streams, [], client)
    net.client.clock = sim.clock
    streams.tap = lambda src, dst, request, answer: net.frames.append((request[0], request, answer))
    for index, host in enumerate(hosts[:3]):
        assert host.node is not None
        config = DirectoryConfig(
            root=tmp_path / f"server-{index}",
            authorities=tuple(a.public_key for a in AUTHORITIES),
            threshold=3,
            inline_database=True,
            sync_interval=SYNC,
            clear_text=True,
            **settings,
        )
        server = DirectoryServer(config, host.node, transport=streams.transport(host.host))
        await server.start()
        net.servers.append(server)
    await asyncio.sleep(5)  # the servers announce themselves
    return net


PROFILE = Profile(
    display_name="Sim Ann",
    description="registered twice",
    avatar_name="ann.png",
    avatar=b"\x89PNG" + bytes(range(256)) * 20,
    qmail=((0, QMailServer(6, "10.9.9.9", 25)),),
)


def test_update_on_one_server_reaches_all_three_and_the_dht(tmp_path: Path) -> None:
    async def main() -> None:
        net = await directory_net(tmp_path, 81)
        try:
            await net.login(0)  # registered with two servers ...
            session = await net.login(1)
            await net.client.update(session, PROFILE, comment=COMMENT)  # ... updates one
            assert (await net.held())[0] is None
            await asyncio.sleep(2 * SYNC + 5)
            held = await net.held()
            assert held[0] is not None
            assert held == [held[0]] * 3
            assert held[0][1] == PROFILE
            # every server answers a search with the same rows
            answers = []
            for server in net.servers:
                results = await net.client.search(
                    server.address, [UpdateKey.MAILBOX, UpdateKey.DISPLAY_NAME, UpdateKey.AVATAR]
                )
                answers.append(results.rows)
            assert answers == [((MAILBOX.to_bytes(), b"Sim Ann", PROFILE.avatar),)] * 3
            # the comment stays where it was given
            comments = [await s.store.comment(MAILBOX) for s in net.servers if s.store]
            assert comments == [None, COMMENT, None]
            # any node can get the public entry: fields and the avatar's hash, no comment
            reader = net.hosts[7].node
            assert reader is not None
            record = await reader.get(drd_key(MAILBOX))
            assert record is not None
            entry = entry_of(record)
            assert entry == await lookup_entry(reader, MAILBOX)
            trusted = QuorumTicketVerifier([a.public_key for a in AUTHORITIES], 3)
            assert entry == await lookup_entry(reader, MAILBOX, ticket_check=trusted.check)
            strangers = [Identity.from_seed(bytes([i + 60]) * 32).public_key for i in range(3)]
            other = QuorumTicketVerifier(strangers, 2)
            with pytest.raises(InvalidRecord):
                await lookup_entry(reader, MAILBOX, ticket_check=other.check)
            assert entry.version == held[0][0]
            assert entry.avatar_size == len(PROFILE.avatar or b"")
            secret = COMMENT.encode()
            assert secret not in record.SerializeToString()
            for command, request, answer in net.frames:
                if command != Command.UPDATE:
                    assert secret not in request
                assert secret not in answer
            assert {c for c, _, _ in net.frames} >= {Command.SYNC_DIGEST, Command.SYNC_PULL}
        finally:
            await net.stop()

    run_virtual(main())


def test_a_healed_partition_converges_and_a_delete_propagates(tmp_path: Path) -> None:
    async def main() -> None:
        net = await directory_net(tmp_path, 82)
        try:
            session0 = await net.login(0)
            session1 = await net.login(1)
            await net.client.update(session0, PROFILE)
            await asyncio.sleep(2 * SYNC + 5)
            first = await net.held()
            assert first == [first[0]] * 3
            # server 2 and a few nodes are cut off while the owner changes the record
            hosts = [h.host for h in net.hosts]
            net.sim.network.partition(
                [hosts[:2] + hosts[3:6] + hosts[8:], [hosts[2], hosts[6], hosts[7]]]
            )
            newer = Profile(display_name="Sim Ann, moved", description="new town")
            await net.client.update(session0, newer)
            await asyncio.sleep(3 * SYNC)
            during = await net.held()
            assert during[0] is not None
            assert during[0][1] == newer
            assert during[1] == during[0]
            assert during[2] == first[0]  # unreachable: still the old record
            net.sim.network.heal()
            await asyncio.sleep(3 * SYNC)
            healed = await net.held()
            assert healed == [during[0]] * 3
            # the owner deletes through the other server it registered with
            await net.client.delete(session1)
            await asyncio.sleep(3 * SYNC)
            assert await net.held() == [None, None, None]
            for server in net.servers:
                assert server.store is not None
                assert await server.store.tombstone(MAILBOX) is not None
                assert not (server.store.user_dir(MAILBOX)).exists()
            reader = net.hosts[5].node
            assert reader is not None
            record = await reader.get(drd_key(MAILBOX))
            assert record is not None
            assert entry_of(record).deleted
        finally:
            await net.stop()

    run_virtual(main())


def test_a_peer_cannot_sync_a_change_the_owner_did_not_sign(tmp_path: Path) -> None:
    async def main() -> None:
        net = await directory_net(tmp_path, 83)
        try:
            session = await net.login(0)
            await net.client.update(session, PROFILE)
            target = net.servers[1]
            assert target.sync is not None
            assert target.store is not None
            before = await target.store.table_rows()
            now = net.sim.now_ms()
            thief = Identity.from_seed(b"thief".ljust(32, b"\x00"))
            forged_profile = Profile(display_name="Mallory")
            ticket = mint_ticket(
                AUTHORITIES[:3], MAILBOX, OWNER.public_key, issued=now, expires=now + 10**7
            )
            forged = sync_entry(
                MAILBOX,
                version=now + 1,
                profile=forged_profile,
                ticket=ticket.to_bytes(),
                owner_signature=authorize_update(thief, MAILBOX, forged_profile, now + 1).signature,
            )
            with pytest.raises(DirectoryError):
                await target.sync.apply(forged, b"")
            # a ticket the thief made for itself, signed by authorities nobody trusts
            fakes = [Identity.from_seed(bytes([i + 90]) * 32) for i in range(3)]
            own = mint_ticket(fakes, MAILBOX, thief.public_key, issued=now, expires=now + 10**7)
            forged = sync_entry(
                MAILBOX,
                version=now + 1,
                profile=forged_profile,
                ticket=own.to_bytes(),
                owner_signature=authorize_update(thief, MAILBOX, forged_profile, now + 1).signature,
            )
            with pytest.raises(DirectoryError):
                await target.sync.apply(forged, b"")
            # signed by the owner, but dated a day ahead: it would freeze the record
            late = now + 86_400_000
            long = mint_ticket(
                AUTHORITIES[:3], MAILBOX, OWNER.public_key, issued=now, expires=now + 10**9
            )
            forged = sync_entry(
                MAILBOX,
                version=late,
                profile=forged_profile,
                ticket=long.to_bytes(),
                owner_signature=authorize_update(OWNER, MAILBOX, forged_profile, late).signature,
            )
            with pytest.raises(DirectoryError):
                await target.sync.apply(forged, b"")
            assert await target.store.table_rows() == before
        finally:
            await net.stop()

    run_virtual(main())


def test_a_server_away_longer_than_tombstones_last_does_not_bring_a_delete_back(
    tmp_path: Path,
) -> None:
    """Server 2 is cut off while the owner deletes the mailbox, and stays away until the other
    servers have forgotten the deletion's tombstone. Before, when it came back, its old record
    looked new to them: they pulled it and the deleted mailbox was back everywhere."""
    keep_ms = 5 * 60_000

    async def main() -> None:
        net = await directory_net(tmp_path, 84, tombstone_keep_ms=keep_ms)
        try:
            session = await net.login(0)
            await net.client.update(session, PROFILE)
            await asyncio.sleep(2 * SYNC + 5)
            first = await net.held()
            assert first[0] is not None
            assert first == [first[0]] * 3
            hosts = [h.host for h in net.hosts]
            net.sim.network.partition([hosts[:2] + hosts[3:], [hosts[2]]])
            await net.client.delete(session)
            await asyncio.sleep(2 * keep_ms / 1000)  # far longer than tombstones are kept
            assert await net.held() == [None, None, first[0]]
            for server in net.servers[:2]:
                assert server.store is not None
                assert await server.store.tombstone(MAILBOX) is None  # its ticket forgotten
                assert await server.store.floor(MAILBOX) is not None  # its version kept
            net.sim.network.heal()
            await asyncio.sleep(4 * SYNC)
            assert await net.held() == [None, None, None]
            away = net.servers[2]
            assert away.sync is not None
            assert away.sync.stats["floors_applied"] == 1  # the owner's deletion reached it
            for server in net.servers:
                results = await net.client.search(server.address, [UpdateKey.MAILBOX])
                assert results.rows == ()
                assert server.store is not None
                assert not server.store.user_dir(MAILBOX).exists()
            # the owner can still come back with a newer record, and it reaches everyone
            session = await net.login(2)
            await net.client.update(session, PROFILE)
            await asyncio.sleep(2 * SYNC + 5)
            again = await net.held()
            assert again[0] is not None
            assert again == [again[0]] * 3
        finally:
            await net.stop()

    run_virtual(main())


def test_fake_announcements_do_not_cut_servers_off_from_each_other(tmp_path: Path) -> None:
    """Anyone can announce a directory server, and /drd-servers/all/ keeps the newest 24. A
    node that keeps announcing 24 fakes, dated ahead, pushes the real servers out of it. Before,
    servers synced only with what it listed, so from then on no change travelled between them."""

    async def main() -> None:
        net = await directory_net(tmp_path, 85)
        attacker = net.hosts[5].node
        reader = net.hosts[7].node
        assert attacker is not None
        assert reader is not None
        fakes = [Identity.from_seed(bytes([i + 150]) * 32) for i in range(24)]

        async def flood() -> None:
            while True:
                now = net.sim.now_ms() + 4 * 60_000  # within the allowed clock skew
                record = Record(key=DRD_SERVERS_KEY, updateDate=now, id1=fakes[0].id_hex)
                for index, fake in enumerate(fakes):
                    host = net.hosts[3 + index % 6].host  # real hosts, no directory there
                    one = make_drd_servers_record(fake, host, 9000 + index, now=now)
                    record.values.extend(one.values)
                await attacker.put(record)
                await asyncio.sleep(60)

        session = await net.login(0)
        await net.client.update(session, PROFILE)
        await asyncio.sleep(3 * SYNC)
        first = await net.held()
        assert first[0] is not None
        assert first == [first[0]] * 3  # the servers found each other, then the flood starts
        flooding = asyncio.get_running_loop().create_task(flood())
        try:
            await asyncio.sleep(5)
            listed = await reader.get(DRD_SERVERS_KEY)
            assert listed is not None
            real = {s.node.identity.public_key for s in net.servers if s.node.identity}
            assert len(servers_of(listed)) == 24
            assert not {key for key, _, _ in servers_of(listed)} & real  # pushed out
            newer = Profile(display_name="Sim Ann, again", description="after the flood")
            await net.client.update(session, newer)
            await asyncio.sleep(3 * SYNC)
            held = await net.held()
            assert held[0] is not None
            assert held[0][1] == newer
            assert held == [held[0]] * 3
            for server in net.servers:
                peers = server.peer_table
                assert len(peers) <= 24
                others = {s.address for s in net.servers if s is not server}
                assert others <= set(peers.proven())
        finally:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)
            await net.stop()

    run_virtual(main())
