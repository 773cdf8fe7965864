"""The DRD over sealed channels on the simulated network: keys agreed through the key exchange
(seed 000 steps 1-5), every frame between clients and servers and between servers sealed;
tampered, replayed and foreign frames refused with their status, changing nothing; channels
ending with their sessions."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node.directory.client import ClientSession, DirectoryClient
from node.directory.keys import KeyExchangeAgreement
from node.directory.server import DirectoryConfig, DirectoryServer
from node.keyexchange import KeyExchange
from records import Identity
from records.directory import (
    Command,
    MailboxNumber,
    Profile,
    QMailServer,
    Status,
    Ticket,
    UpdateKey,
    UpdateRequest,
    authorize_update,
    mint_ticket,
    request_frame,
)
from records.drd import TicketAuthorities
from records.drd_channel import SEALED
from records.errors import DirectoryRefused
from simulations.clock import run_virtual
from simulations.harness import SimNode, Simulation
from simulations.streams import SimStreams

pytestmark = pytest.mark.timeout(60)

AUTHORITIES = [Identity.from_seed(bytes([i + 40]) * 32) for i in range(5)]
OWNER = Identity.from_seed(b"sealed-owner".ljust(32, b"\x00"))
MAILBOX = MailboxNumber(6, 4, 0x5EA1ED)
SYNC = 30.0
COMMENT = "why: a sealed secret"
PROFILE = Profile(
    display_name="Sealed Ann",
    description="only inside the ciphertext",
    avatar_name="sealed-ann.png",
    avatar=b"\x89PNG-sealed" + bytes(range(256)) * 8,
    qmail=((0, QMailServer(6, "10.7.7.7", 2525)),),
)
MALLORY = Profile(display_name="Mallory was here")

Frame = tuple[str, bytes, bytes]  # source host, request, answer


@dataclass
class SealedNet:
    sim: Simulation
    hosts: list[SimNode]
    streams: SimStreams
    servers: list[DirectoryServer]
    client: DirectoryClient
    agreement: KeyExchangeAgreement
    frames: list[Frame] = field(default_factory=list)

    def ticket(self) -> Ticket:
        now = self.sim.now_ms()
        return mint_ticket(
            AUTHORITIES[:3], MAILBOX, OWNER.public_key, issued=now, expires=now + 86_400_000
        )

    async def login(self, index: int) -> ClientSession:
        return await self.client.open_session(self.servers[index].address, OWNER, self.ticket())

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        await self.sim.stop_all()


async def sealed_net(tmp_path: Path, seed: int, servers: int = 3, **settings: Any) -> SealedNet:
    trusted = TicketAuthorities(tuple(a.public_key for a in AUTHORITIES), 3)
    sim = Simulation(seed=seed, config={"drd_authorities": trusted})
    sim.services = lambda _: [KeyExchange(serve=True, ttl=120.0)]  # every node a key server
    hosts = await sim.grow(12)
    streams = SimStreams(sim.network)
    client_node = hosts[11].node
    assert client_node is not None
    agreement = KeyExchangeAgreement(client_node, min_parts=3)
    client = DirectoryClient(streams.transport(hosts[11].host), clock=sim.clock, keys=agreement)
    net = SealedNet(sim, hosts, streams, [], client, agreement)
    streams.tap = lambda src, dst, request, answer: net.frames.append((src[0], request, answer))
    for index, host in enumerate(hosts[:servers]):
        assert host.node is not None
        config = DirectoryConfig(
            root=tmp_path / f"server-{index}",
            authorities=tuple(a.public_key for a in AUTHORITIES),
            threshold=3,
            inline_database=True,
            sync_interval=SYNC,
            **settings,
        )
        server = DirectoryServer(config, host.node, transport=streams.transport(host.host))
        await server.start()
        net.servers.append(server)
    await asyncio.sleep(5)  # the servers announce themselves
    return net


def test_sealed_updates_searches_and_sync_show_no_secret_on_the_wire(tmp_path: Path) -> None:
    async def main() -> tuple[list[Frame], list[bytes], list[Any], set[str]]:
        net = await sealed_net(tmp_path, 91)
        try:
            session = await net.login(1)
            await net.client.update(session, PROFILE, comment=COMMENT)
            await asyncio.sleep(2 * SYNC + 5)  # servers 0 and 2 pull it, sealed too
            held = []
            for server in net.servers:
                assert server.store is not None
                stored = await server.store.get(MAILBOX)
                held.append(None if stored is None else stored.profile)
            rows = []
            for server in net.servers:
                results = await net.client.search(
                    server.address, [UpdateKey.MAILBOX, UpdateKey.DISPLAY_NAME]
                )
                rows.append(results.rows)
            assert rows == [((MAILBOX.to_bytes(), b"Sealed Ann"),)] * 3
            assert held == [PROFILE] * 3
            secrets = [
                session.key,  # the session ID (SE)
                net.ticket().to_bytes()[:40],  # the ticket: its mailbox, owner key, dates ...
                OWNER.public_key,
                MAILBOX.to_bytes(),
                COMMENT.encode(),
                *(f.encode() for f in (PROFILE.display_name, PROFILE.description) if f),
                (PROFILE.avatar_name or "").encode(),
                (PROFILE.avatar or b"")[:32],
                QMailServer(6, "10.7.7.7", 2525).to_bytes(),
            ]
            tickets = []
            for server in net.servers:
                assert server.store is not None
                stored = await server.store.get(MAILBOX)
                assert stored is not None
                tickets.append(stored.ticket)
            stats = [s.stats for s in net.servers]
            hosts = {h.host for h in net.hosts[:3]}
            return net.frames, [*secrets, *tickets], stats, hosts
        finally:
            await net.stop()

    frames, secrets, stats, servers = run_virtual(main())
    sync = [f for f in frames if f[0] in servers]
    assert len(sync) >= 6  # the servers' digests and pulls, to each other
    for _, request, answer in frames:
        assert request[0] == SEALED
        assert answer[:2] == bytes([SEALED, Status.SUCCESS])
        for secret in secrets:
            assert secret not in request
            assert secret not in answer
    assert all(s["clear_refused"] == 0 for s in stats)
    assert sum(s["frames"] for s in stats) == len(frames)


def update_body(session: ClientSession, profile: Profile, version: int) -> bytes:
    approval = authorize_update(OWNER, MAILBOX, profile, version)
    request = UpdateRequest(b"\x01" * 16, session.key, profile, None, None, approval)
    return request_frame(Command.UPDATE, request.encode())


def test_replayed_tampered_and_foreign_frames_are_refused_with_their_status(
    tmp_path: Path,
) -> None:
    async def main() -> dict[str, Any]:
        net = await sealed_net(tmp_path, 92, servers=1)
        server = net.servers[0]
        assert server.store is not None
        wire = net.streams.transport(net.hosts[11].host)

        async def send(frame: bytes) -> bytes:
            return await wire.request(server.address, frame, within=5.0)

        try:
            first = await net.login(0)
            await net.client.update(first, PROFILE)
            sent_update = net.frames[-1][1]
            other = await net.login(0)  # another session, over a channel of its own
            assert first.channel is not None
            assert other.channel is not None
            before = await server.store.table_rows()
            out: dict[str, Any] = {}
            version = net.sim.now_ms()
            # a captured update, sent again
            out["replayed"] = await send(sent_update)
            # a new update (newer, another profile), one bit flipped
            _, sealed = first.channel.ends.seal(update_body(first, MALLORY, version))
            tampered = bytearray(sealed)
            tampered[-20] ^= 0x04
            out["flipped"] = await send(bytes(tampered))
            # the other session's update under the first session's channel ID
            _, foreign = other.channel.ends.seal(update_body(other, MALLORY, version))
            out["foreign"] = await send(foreign[:1] + first.channel.ends.channel_id + foreign[17:])
            # the other session's ID over the first session's channel, sealed as it should be
            try:
                await net.client.update(dataclasses.replace(other, channel=first.channel), MALLORY)
            except DirectoryRefused as exc:
                out["session_of_another_channel"] = exc.code
            # a channel the server never had a key for; and clear text
            out["unknown"] = await send(bytes([SEALED]) + bytes(range(16)) + sealed[17:])
            out["clear"] = await send(update_body(first, MALLORY, version))
            out["changed"] = await server.store.table_rows() != before
            out["stats"] = dict(server.stats)
            # the channels still work for what is genuine
            await net.client.update(first, dataclasses.replace(PROFILE, description="still mine"))
            stored = await server.store.get(MAILBOX)
            assert stored is not None
            out["after"] = stored.profile.description
            return out
        finally:
            await net.stop()

    out = run_virtual(main())
    assert out["replayed"][:2] == bytes([SEALED, Status.FRAME_REPLAYED])
    assert out["flipped"][:2] == bytes([SEALED, Status.FRAME_NOT_AUTHENTIC])
    assert out["foreign"][:2] == bytes([SEALED, Status.FRAME_NOT_AUTHENTIC])
    assert out["session_of_another_channel"] == Status.NOT_AUTHORIZED
    assert out["unknown"][:2] == bytes([SEALED, Status.UNKNOWN_CHANNEL])
    assert out["clear"][0] == 0x80 | Command.UPDATE
    assert out["clear"][1] == Status.ENCRYPTION_REQUIRED
    for answer in (out["replayed"], out["flipped"], out["foreign"], out["unknown"]):
        assert len(answer) == 10  # refusals carry nothing but the status and counter
    assert out["changed"] is False
    assert out["after"] == "still mine"
    stats = out["stats"]
    assert stats[f"frames_refused.{Status.FRAME_REPLAYED}"] == 1
    assert stats[f"frames_refused.{Status.FRAME_NOT_AUTHENTIC}"] == 2
    assert stats[f"frames_refused.{Status.UNKNOWN_CHANNEL}"] == 1
    assert stats["clear_refused"] == 1


def test_a_sessions_keys_end_with_the_session(tmp_path: Path) -> None:
    async def main() -> tuple[int, tuple[Any, ...], int]:
        net = await sealed_net(tmp_path, 93, servers=1, session_minutes=1)
        server = net.servers[0]
        try:
            session = await net.login(0)
            await net.client.update(session, PROFILE)
            found = await net.client.search(server.address, [UpdateKey.DISPLAY_NAME])
            assert found.rows == ((b"Sealed Ann",),)
            await asyncio.sleep(61)
            code = 0
            try:
                await net.client.update(session, MALLORY)
            except DirectoryRefused as exc:
                code = exc.code
            # the search channel is agreed anew, once, without the caller noticing
            again = await net.client.search(server.address, [UpdateKey.DISPLAY_NAME])
            return code, again.rows, server.channels.stats["expired"]
        finally:
            await net.stop()

    code, rows, expired = run_virtual(main())
    assert code == Status.UNKNOWN_CHANNEL  # the keys went with the session
    assert rows == ((b"Sealed Ann",),)
    assert expired >= 2
