"""The demo's core: a line-based chat session over a `ChatClient` (what ``python -m node.chat``
runs, without the terminal and the node set-up, so tests can drive it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from node.chat.client import ChatClient, InboxEntry
from node.errors import PutFailed
from node.tasks import cancel_and_wait
from records import DHTError
from records.identity import is_hex_id

HELP = """commands:
  /to UID      talk to the user with this uid (looks them up, sends a handshake)
  /who UID     show a user's name and devices
  /me          show your uid
  /quit        leave (so does end of input)
  anything else is sent to the current peer"""


class ChatSession:
    """Reads commands and messages from `lines`, writes what happens to `out`; incoming entries
    are acknowledged, then printed, as they arrive. Whoever writes first becomes the peer when there
    is none yet."""

    def __init__(
        self, client: ChatClient, out: Callable[[str], None], peer: bytes | None = None
    ) -> None:
        self.client = client
        self.out = out
        self.peer = peer
        self.names: dict[bytes, str] = {}

    async def run(self, lines: AsyncIterator[str]) -> None:
        """Until `lines` ends or says ``/quit``."""
        receiver = asyncio.get_running_loop().create_task(self._receive())
        try:
            if self.peer is not None:
                await self._handle(f"/to {self.peer.hex()}")
            async for raw in lines:
                line = raw.strip()
                if line == "/quit":
                    break
                if line:
                    await self._handle(line)
        finally:
            await cancel_and_wait([receiver])

    async def _handle(self, line: str) -> None:
        command, _, argument = line.partition(" ")
        try:
            if command in ("/to", "/who"):
                uid = parse_uid(argument.strip())
                if uid is None:
                    self.out(f"! {argument.strip()!r} is not a uid (40 hex digits)")
                elif command == "/to":
                    await self._talk_to(uid)
                else:
                    await self._show(uid)
            elif command == "/me":
                self.out(f"* you are {self.client.identity.id_hex}")
            elif command.startswith("/"):
                self.out(HELP)
            elif self.peer is None:
                self.out("! nobody to talk to yet: /to UID")
            else:
                sent = await self.client.send(self.peer, line)
                self.out(f"> sent ({sent.stored} nodes hold it)")
        except PutFailed as exc:
            self.out(f"! not delivered: {exc}")
        except DHTError as exc:
            self.out(f"! {exc}")

    async def _show(self, uid: bytes) -> None:
        contact = await self.client.lookup(uid)
        name = contact.profile.name if contact.profile else "(no meta)"
        self.names[uid] = name
        self.out(f"* {uid.hex()} is {name}, {len(contact.devices)} device(s) online")

    async def _talk_to(self, uid: bytes) -> None:
        await self._show(uid)
        await self.client.handshake(uid)
        self.peer = uid
        self.out(f"* talking to {self.names.get(uid, uid.hex())}")

    async def _receive(self) -> None:
        async for entry in self.client.messages():
            await self.client.acknowledge([entry])
            await self._print(entry)

    async def _print(self, entry: InboxEntry) -> None:
        peer = entry.recipient if entry.copy_of else entry.sender
        if peer not in self.names:
            with contextlib.suppress(DHTError):
                contact = await self.client.lookup(peer)
                if contact.profile is not None:
                    self.names[peer] = contact.profile.name
        who = self.names.get(peer, peer.hex()[:8])
        if entry.copy_of:  # what this user sent from another device
            if entry.kind == "handshake":
                self.out(f"* you wrote to {who} ({peer.hex()}) from another device")
            else:
                self.out(f"[you -> {who}] {entry.text}")
            return
        if entry.kind == "handshake":
            self.out(f"* {who} ({entry.sender.hex()}) wants to talk")
        else:
            self.out(f"[{who}] {entry.text}")
        if self.peer is None:
            self.peer = entry.sender
            self.out(f"* talking to {who}")


def parse_uid(text: str) -> bytes | None:
    """A uid typed by a person (40 hex digits, either case), or None."""
    return bytes.fromhex(text) if is_hex_id(text.lower()) else None
