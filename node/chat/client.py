"""`ChatClient`: one device of a chat user, over a running `DHTNode` (seed 003, DESIGN §6).

Every device of a user runs its own node (its own node identity) and a `ChatClient` with the
same user `Identity`: the uid is SHA-1 of the user's ed25519 key, and the key that decrypts the
user's messages is derived from that identity, so every device reads every message. A device is
named by the tag of its node's id (`records.chat.device_tag`): what is sent to the user stays
in the inbox until each device announced when it was sent has acknowledged it, and what one
device sends reaches the user's other devices as a copy in the user's own inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from node.chat.state import ChatState
from node.errors import LookupFailed, NodeNotRunning, PutFailed
from node.routing import Address
from node.server import DHTNode
from node.subscriptions import Subscription
from node.tasks import cancel_and_wait
from records import (
    DHTError,
    Identity,
    InvalidRecord,
    Record,
    client_announcement,
    encode_record,
    identity_id,
    inbox_keys,
    location,
    make_handshake,
    make_message,
    make_meta_record,
    make_sent_copy,
    meta_key,
    presence_key,
)
from records.chat import (
    DEFAULT_ENTRY_TTL_MS,
    MAX_ENTRY_DEVICES,
    MAX_ENTRY_TTL_MS,
    MIN_ENTRY_TTL_MS,
    NONCE_SIZE,
    InboxValue,
    chat_key,
    conversation_key,
    decrypt_message,
    device_tag,
    next_receipt,
    page_of,
    parse_inbox_value,
)
from records.chat_pb2 import ChatMessage, Handshake, SentCopy
from records.errors import DecryptionFailed, MessageTooLarge, NetworkError, NoHandshake, UnknownUser
from records.identity import ID_SIZE, PUBLIC_KEY_SIZE
from records.meta import DEFAULT_META_TTL_MS, MAX_META_TTL_MS, parse_meta
from records.presence import DEFAULT_PRESENCE_TTL_MS, parse_announcement

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
_RETRY_AFTER = 60.0  # seconds before a failed refresh of the meta or presence is tried again
_DEVICES_MAX_AGE_MS = 60_000  # how long a user's announced devices are reused between sends


def _require_uid(uid: bytes) -> None:
    """`ValueError` unless `uid` is a 20-byte uid (a hex string or a wrong length is a bug in
    the caller, not an unknown user)."""
    if not isinstance(uid, bytes) or len(uid) != ID_SIZE:
        raise ValueError(f"a uid is {ID_SIZE} bytes, not {uid!r}")


@dataclass(frozen=True, slots=True)
class Profile:
    """A user's published meta: display name and small avatar, signed by the user."""

    uid: bytes
    name: str
    avatar: bytes
    public_key: bytes
    """The user's ed25519 public key (its SHA-1 is `uid`)."""
    updated: int
    """When the meta was signed (Unix ms)."""
    expires: int


@dataclass(frozen=True, slots=True)
class Device:
    """One live device of a user: the node it announced itself through."""

    node_id: bytes
    handshake_key: bytes
    """The node's X25519 key."""
    presence_key: bytes
    """The user's X25519 key as this device announced it."""
    expires: int


@dataclass(frozen=True, slots=True)
class Contact:
    """What `ChatClient.lookup` finds about a uid."""

    uid: bytes
    profile: Profile | None
    devices: tuple[Device, ...]


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A handshake or message in this user's inbox, verified and (for messages) decrypted."""

    kind: Literal["handshake", "message"]
    entry_id: bytes
    sender: bytes
    """The sender's uid."""
    sender_public_key: bytes
    timestamp: int
    """When the sender made it (Unix ms, the sender's clock)."""
    expiration: int
    mime_type: str = ""
    data: bytes = b""
    """The decrypted content (empty for a handshake)."""
    recipient: bytes = b""
    """Whom it was sent to: this user, or for a copy of what another device of this user sent
    (`copy_of` set) the user it went to."""
    devices: tuple[bytes, ...] = ()
    """Tags of this user's devices the sender named: it stays in the inbox until each of them
    has acknowledged it (none named: until one device does)."""
    copy_of: bytes = b""
    """For a copy of what another device of this user sent: the original's id in `recipient`'s
    inbox (`sender` is then this user)."""

    @property
    def text(self) -> str:
        """`data` as text (undecodable bytes replaced)."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Sent:
    """A handshake or message put into a recipient's inbox."""

    entry_id: bytes
    recipient: bytes
    key: str
    """The inbox page it went to."""
    expiration: int
    stored: int
    """How many nodes acknowledged storing it (0 if the recipient had already read it and the
    holders refused the copy as ``acknowledged``)."""
    devices: tuple[bytes, ...] = ()
    """Tags of the recipient's devices announced when it was sent: each must acknowledge it."""
    copied: int = 0
    """How many nodes stored the copy for this user's other devices (0 if it has none)."""


class ChatClient:
    """One device of the user `identity`, chatting through `node` (which must be started).

    ``async with ChatClient(node, me, name="alice") as chat:`` publishes the meta, announces this
    device and keeps both fresh until the block ends; `inbox`, `messages`, `send`, `handshake`,
    `lookup` and `acknowledge` work with or without it. `state_dir` keeps which entries this
    device has already yielded and whom it has shaken hands with, so a restart neither repeats
    nor loses entries; without it that memory lasts as long as the object.

    `random_bytes` draws the 24-byte nonces of handshakes and messages (they also pick the
    entry ids and so the inbox pages). Keep the default, `os.urandom`, outside tests: a
    simulation passes a seeded generator so that a run repeats exactly.
    """

    def __init__(
        self,
        node: DHTNode,
        identity: Identity,
        *,
        name: str | None = None,
        avatar: bytes = b"",
        state_dir: Path | None = None,
        entry_ttl_ms: int = DEFAULT_ENTRY_TTL_MS,
        meta_ttl_ms: int = DEFAULT_META_TTL_MS,
        presence_ttl_ms: int = DEFAULT_PRESENCE_TTL_MS,
        max_poll: float = 6 * 3600.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not max_poll > 0:
            raise ValueError("max_poll must be positive")
        if not MIN_ENTRY_TTL_MS <= entry_ttl_ms <= MAX_ENTRY_TTL_MS:
            raise ValueError("seed 003: handshakes and messages are kept 3 to 7 days")
        if not 0 < meta_ttl_ms <= MAX_META_TTL_MS:
            raise ValueError("seed 003: a meta lives at most 7 days")
        self.node = node
        self.identity = identity
        self.name = name
        self.avatar = avatar
        self.entry_ttl_ms = entry_ttl_ms
        self.meta_ttl_ms = meta_ttl_ms
        self.presence_ttl_ms = presence_ttl_ms
        self.max_poll = max_poll
        """Seconds between two reads of the whole inbox by `messages` (pushes and the
        summaries of subscription renewals bring changes in between)."""
        self._random_bytes = random_bytes
        self.undecryptable = 0
        """Inbox entries skipped because they did not decrypt or verify."""
        self._state = ChatState(state_dir / f"chat-{identity.id_hex}.json" if state_dir else None)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._devices: dict[bytes, tuple[int, tuple[bytes, ...]]] = {}

    @property
    def uid(self) -> bytes:
        """This user's 20-byte uid."""
        return self.identity.id

    @property
    def device(self) -> bytes:
        """This device's 8-byte tag: the start of its node's id (the node must be started)."""
        return device_tag(self.node.id)

    def _now(self) -> int:
        return self.node.clock.now_ms()

    # -- lifetime -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Publish the meta (if a name is set), announce this device, and keep both fresh."""
        if self._tasks:
            raise RuntimeError("chat client already started")
        if self.name is not None:
            await self.publish_meta(self.name, self.avatar)
        await self.announce_device()
        self._spawn(self._refresh())

    async def close(self) -> None:
        """Stop refreshing; the node keeps running (it belongs to the caller)."""
        await cancel_and_wait(self._tasks)

    async def __aenter__(self) -> ChatClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self) -> None:
        """Re-sign the meta and the presence at half their lifetimes, before they expire."""
        loop = asyncio.get_running_loop()
        meta_every = self.meta_ttl_ms / 2000
        presence_every = self.presence_ttl_ms / 2000
        next_meta = loop.time() + meta_every
        next_presence = loop.time() + presence_every
        while True:
            await asyncio.sleep(max(0.0, min(next_meta, next_presence) - loop.time()))
            try:
                if loop.time() >= next_meta:
                    next_meta = loop.time() + meta_every
                    if self.name is not None:
                        await self.publish_meta(self.name, self.avatar)
                if loop.time() >= next_presence:
                    next_presence = loop.time() + presence_every
                    await self.announce_device()
            except NodeNotRunning:
                return  # the node stopped under us; nothing left to refresh through
            except DHTError as exc:
                log.warning("refreshing meta or presence failed (retried in a minute): %s", exc)
                retry = loop.time() + _RETRY_AFTER
                next_meta, next_presence = min(next_meta, retry), min(next_presence, retry)
            next_meta = max(next_meta, loop.time() + 1.0)
            next_presence = max(next_presence, loop.time() + 1.0)

    # -- meta and devices ---------------------------------------------------------------------

    async def publish_meta(self, name: str, avatar: bytes = b"") -> int:
        """Sign and publish this user's meta (name, small avatar); it is then refreshed by the
        running client. Returns how many nodes stored it."""
        self.name, self.avatar = name, avatar
        record = make_meta_record(
            self.identity, name=name, avatar=avatar, now=self._now(), ttl_ms=self.meta_ttl_ms
        )
        return await self.node.put(record)

    async def announce_device(self) -> int:
        """Announce that this user is reachable through this device's node (a presence record
        signed by the user and countersigned by the node). Returns how many nodes stored it."""
        node_identity = self.node.identity
        if node_identity is None:
            raise NodeNotRunning("start the node before announcing a device")
        now = self._now()
        message, signature = client_announcement(
            self.identity,
            node_identity.public_key,
            handshake_key=node_identity.x25519_public_key,
            presence_key=self.identity.x25519_public_key,
            expiration=now + self.presence_ttl_ms,
            now=now,
        )
        return await self.node.announce(message, signature)

    async def lookup(self, uid: bytes) -> Contact:
        """The meta and live devices of `uid`; `UnknownUser` if neither is published."""
        _require_uid(uid)
        meta_record, presence_record = await asyncio.gather(
            self.node.get(meta_key(uid)), self.node.get(presence_key(uid))
        )
        profile = None
        if meta_record is not None and meta_record.values:
            value = meta_record.values[0]
            _, meta = parse_meta(value.value)
            profile = Profile(
                uid, meta.name, meta.avatar, meta.public_key, meta.timestamp, meta.expiration
            )
            self._state.add_peer(uid, meta.public_key)
        devices = []
        for value in presence_record.values if presence_record is not None else ():
            _, announcement = parse_announcement(value.value)
            devices.append(
                Device(
                    identity_id(announcement.node_identity),
                    announcement.handshake_key,
                    announcement.presence_key,
                    announcement.expiration,
                )
            )
            if identity_id(announcement.client_identity) == uid:
                self._state.add_peer(uid, announcement.client_identity)
        if profile is None and not devices:
            raise UnknownUser(f"nothing is published for uid {uid.hex()}")
        return Contact(uid, profile, tuple(devices))

    # -- sending ------------------------------------------------------------------------------

    async def handshake(self, uid: bytes) -> Sent:
        """Send a signed handshake to `uid` (seed 003), after looking the user up to learn the
        key its messages are encrypted to. Raises `UnknownUser` if `uid` publishes nothing.
        This user's other devices get a copy, so they can write to `uid` too."""
        _require_uid(uid)
        if self._state.peer_key(uid) is None:
            await self.lookup(uid)
        peer = self._state.peer_key(uid)
        if peer is None:
            raise UnknownUser(f"uid {uid.hex()} publishes no public key")
        devices, siblings = await self._devices_for(uid)
        now = self._now()
        record = make_handshake(
            self.identity,
            uid,
            nonce=self._random_bytes(NONCE_SIZE),
            now=now,
            ttl_ms=self.entry_ttl_ms,
            recipient_devices=devices,
        )
        sent = await self._put_entry(uid, record, self._sent_copy(record, peer, siblings, now))
        self._state.add_handshake(uid)
        return sent

    async def send(self, uid: bytes, content: str | bytes, *, mime_type: str = TEXT) -> Sent:
        """Encrypt `content` for `uid` (every device of that user can read it), sign it and put
        it into their inbox; it stays there until each of their devices announced now has
        acknowledged it. This user's other devices get a copy in this user's own inbox. Raises
        `NoHandshake` before any handshake with `uid`, `MessageTooLarge` if it (or the copy)
        does not fit an inbox entry, and `PutFailed` (with the holders' reasons, such as
        ``inbox_full``) if no node stored it."""
        _require_uid(uid)
        peer = self._state.peer_key(uid)
        if peer is None or not self._state.has_handshake(uid):
            raise NoHandshake(f"no handshake with {uid.hex()} yet")
        data = content.encode("utf-8") if isinstance(content, str) else content
        devices, siblings = await self._devices_for(uid)
        now = self._now()
        try:
            record = make_message(
                self.identity,
                peer,
                data,
                mime_type=mime_type,
                nonce=self._random_bytes(NONCE_SIZE),
                now=now,
                ttl_ms=self.entry_ttl_ms,
                recipient_devices=devices,
            )
            copy = self._sent_copy(record, peer, siblings, now)
        except InvalidRecord as exc:  # RecordTooLarge
            raise MessageTooLarge(str(exc)) from exc
        return await self._put_entry(uid, record, copy)

    async def _devices_for(self, uid: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        """(tags of `uid`'s announced devices, tags of this user's other announced devices)."""
        devices, own = await asyncio.gather(self._devices_of(uid), self._devices_of(self.uid))
        siblings = () if uid == self.uid else tuple(t for t in own if t != self.device)
        return devices, siblings

    async def _devices_of(self, uid: bytes) -> tuple[bytes, ...]:
        """Tags of the devices `uid` has announced (``/presence/<uid>/``), at most
        `MAX_ENTRY_DEVICES` (those announced longest), reused for a minute."""
        now = self._now()
        cached = self._devices.get(uid)
        if cached is not None and now - cached[0] < _DEVICES_MAX_AGE_MS:
            return cached[1]
        record = await self.node.get(presence_key(uid))
        values = sorted(
            record.values if record is not None else (), key=lambda v: -v.expirationDate
        )
        tags = tuple(sorted({device_tag(bytes.fromhex(v.id2)) for v in values[:MAX_ENTRY_DEVICES]}))
        self._devices[uid] = (now, tags)
        return tags

    def _sent_copy(
        self, record: Record, peer: bytes, siblings: Sequence[bytes], now: int
    ) -> Record | None:
        """The copy of `record` for this user's other devices `siblings` (None if none)."""
        if not siblings:
            return None
        return make_sent_copy(
            self.identity,
            record,
            peer,
            device=self.device,
            other_devices=siblings,
            nonce=self._random_bytes(NONCE_SIZE),
            now=now,
        )

    async def _put_entry(self, uid: bytes, record: Record, copy: Record | None = None) -> Sent:
        try:
            stored = await self.node.put(record)
        except PutFailed as exc:
            # The recipient can read an entry from the first holder (this node, even) and
            # acknowledge it before the other holders are reached: then it is delivered.
            if set(exc.reasons) != {"acknowledged"}:
                raise
            stored = 0
        copied = 0
        if copy is not None:  # only once the original is out: never a copy of what failed
            try:
                copied = await self.node.put(copy)
            except (PutFailed, InvalidRecord) as exc:
                log.warning("the copy for this user's other devices was not stored: %s", exc)
        value = record.values[0]
        devices = parse_inbox_value(value.value).devices
        return Sent(
            bytes.fromhex(value.id2), uid, record.key, value.expirationDate, stored, devices, copied
        )

    async def delivered(self, sent: Iterable[Sent]) -> set[bytes]:
        """Ids of the `sent` entries their recipient has acknowledged (on at least one of their
        devices). Reading the pages also replaces this node's own copy of an acknowledged entry
        with the receipt."""
        by_key: dict[str, list[bytes]] = {}
        for item in sent:
            by_key.setdefault(item.key, []).append(item.entry_id)
        records = await asyncio.gather(*(self.node.get(key) for key in by_key))
        done: set[bytes] = set()
        for ids, record in zip(by_key.values(), records, strict=True):
            acknowledged = {
                eid
                for v in (record.values if record is not None else ())
                for eid, _ in parse_inbox_value(v.value).listed
            }
            done.update(i for i in ids if i in acknowledged)
        return done

    # -- receiving ----------------------------------------------------------------------------

    async def inbox(self) -> list[InboxEntry]:
        """Every handshake and message in this user's inbox that this device has not yet
        acknowledged, verified and decrypted, oldest first (all pages are read at once); with
        the copies of what this user's other devices sent (`InboxEntry.copy_of`).

        Raises `LookupFailed` if a page found empty could not be asked of enough of its
        holders, even on a second try: an empty page is then not known to be empty."""
        keys = inbox_keys(self.uid)
        results = list(await asyncio.gather(*(self.node.get_result(key) for key in keys)))
        retry = [i for i, r in enumerate(results) if r.record is None and not r.complete]
        for i, again in zip(
            retry,
            await asyncio.gather(*(self.node.get_result(keys[i]) for i in retry)),
            strict=True,
        ):
            if again.record is None and not again.complete:
                raise LookupFailed(f"could not read inbox page {keys[i]}: too few holders answered")
            results[i] = again
        entries = [e for r in results for e in self._page_entries(r.record)]
        # a handshake before the messages of the same millisecond
        entries.sort(key=lambda e: (e.timestamp, e.kind != "handshake", e.entry_id))
        return entries

    def _page_entries(self, record: Record | None) -> list[InboxEntry]:
        """The entries of one inbox page this device has not acknowledged, unsorted."""
        values = record.values if record is not None else ()
        parsed = [parse_inbox_value(value.value) for value in values]
        mine = {  # what this device acknowledged: the page keeps it for the other devices
            eid for p in parsed if p.device == self.device for eid, _ in p.device_acknowledged
        }
        opened = (self._open(value) for value in parsed if value.entry_id not in mine)
        return [entry for entry in opened if entry is not None]

    def _open(self, parsed: InboxValue) -> InboxEntry | None:
        """A verified inbox value as an entry (None for receipts, what does not decrypt and
        the copies this device sent)."""
        body = parsed.body  # the node validated it: signature, uid, dates
        if isinstance(body, Handshake):
            if identity_id(body.sender_public_key) == body.sender_uid:
                self._state.add_peer(body.sender_uid, body.sender_public_key)
                self._state.add_handshake(body.sender_uid)
            return InboxEntry(
                "handshake",
                parsed.entry_id,
                body.sender_uid,
                body.sender_public_key,
                body.timestamp,
                body.expiration,
                recipient=body.recipient_uid,
                devices=parsed.devices,
            )
        if not isinstance(body, ChatMessage):
            return None
        try:
            key = conversation_key(self.identity, body.sender_public_key)
            content = decrypt_message(body, key)
        except DecryptionFailed as exc:
            self.undecryptable += 1
            log.info("skipping an inbox entry: %s", exc)
            return None
        entry = InboxEntry(
            "message",
            parsed.entry_id,
            body.sender_uid,
            body.sender_public_key,
            body.timestamp,
            body.expiration,
            content.mime_type,
            content.data,
            recipient=body.recipient_uid,
            devices=parsed.devices,
        )
        # only this user's own devices can sign a message from this user to this user
        if content.HasField("sent") and body.sender_uid == body.recipient_uid == self.uid:
            return self._open_copy(entry, content.sent)
        return entry

    def _open_copy(self, entry: InboxEntry, sent: SentCopy) -> InboxEntry | None:
        """A copy of what another device of this user sent, as the entry it stands for (None
        if this device sent it, or it is malformed)."""
        peer = sent.recipient_public_key
        if sent.device == self.device or len(peer) != PUBLIC_KEY_SIZE:
            return None
        peer_uid = identity_id(peer)
        self._state.add_peer(peer_uid, peer)  # another device wrote to them: so can this one
        self._state.add_handshake(peer_uid)
        kind: Literal["handshake", "message"] = "handshake" if sent.handshake else "message"
        return dataclasses.replace(entry, kind=kind, recipient=peer_uid, copy_of=sent.entry_id)

    async def acknowledge(self, entries: Sequence[InboxEntry]) -> int:
        """Store signed receipts for `entries`, acknowledged by this device: once each device
        an entry names has acknowledged it (this one being the last, or naming none), every
        holder drops it and refuses it back; until then the page keeps it for the others.
        Returns how many entries were acknowledged (a page whose receipts already list
        `MAX_RECEIPT_IDS` live entries, or no node reachable, leaves that page's entries for a
        later call).

        One receipt per page (`records.chat.next_receipt`) lists the ids of the receipts the
        page holds (not yet expired) and the new ones, and is newer than them: holders then
        keep it in their place."""
        by_page: dict[int, list[InboxEntry]] = {}
        for entry in entries:
            by_page.setdefault(page_of(entry.entry_id), []).append(entry)
        now = self._now()

        async def one(page: int, items: list[InboxEntry]) -> list[InboxEntry]:
            try:
                held = await self.node.get(chat_key(self.uid, page))
            except LookupFailed as exc:
                log.warning("receipts for page %d not stored: %s", page, exc)
                return []
            read = [(e.entry_id, e.expiration, e.devices) for e in items]
            plan = next_receipt(self.identity, held, self.device, read, now)
            already = [e for e in items if e.entry_id in plan.already]
            if plan.record is None:
                return already
            try:
                await self.node.put(plan.record)
            except (PutFailed, InvalidRecord) as exc:
                log.warning("receipts for %s not stored: %s", plan.record.key, exc)
                return already
            await self._repair(plan.record.key)
            return [*already, *(e for e in items if e.entry_id in plan.fresh)]

        done = await asyncio.gather(*(one(p, items) for p, items in by_page.items()))
        # only what was acknowledged: `messages` still yields the rest (once)
        self._state.mark_seen((e.entry_id, e.expiration) for items in done for e in items)
        await self._state.save_async(now)
        return sum(len(items) for items in done)

    async def _repair(self, key: str) -> None:
        """Write the merged page to every node that answered with another version, not just the
        `replicas` closest a get repairs: nodes that held the page while closer ones were away
        would keep acknowledged entries until they expire."""
        record, result = await self.node.get_with_lookup(key, thorough=True)
        protocol = self.node.protocol
        if record is None or protocol is None:
            return
        data = encode_record(record)
        loc = location(key)
        stale = [p for p in result.holders if p.value != data]
        await asyncio.gather(*(protocol.store_at(p.address, p.id, loc, data) for p in stale))

    async def messages(self) -> AsyncGenerator[InboxEntry, None]:
        """Each new inbox entry once, as it arrives (across restarts with a `state_dir`).

        The device subscribes to its 16 inbox pages at their closest holders (see
        `DHTNode.subscribe`): a holder pushes a notification when a page changes, and only that
        page is fetched, from that holder (through a get if it does not answer); a page this
        device's own node stores wakes it too. The whole inbox is read at the start and then
        every `max_poll` seconds, in case every push was lost."""
        loop = asyncio.get_running_loop()
        dirty: dict[str, tuple[bytes, Address] | None] = {}
        known: dict[str, set[tuple[str, int]]] = {}  # per page: (id2, date) already read
        wake = asyncio.Event()

        def changed(sub: Subscription, holder: bytes | None, addr: Address | None) -> None:
            summary = sub.holders[holder].summary if holder in sub.holders else None
            seen = known.get(sub.path, set())
            if summary is not None and {(v[0], v[1]) for v in summary} <= seen:
                return  # the holder has nothing this device has not read
            dirty[sub.path] = (holder, addr) if holder is not None and addr is not None else None
            wake.set()

        def stored(path: str) -> Callable[[Any], None]:
            def wake_for(_entry: Any) -> None:
                dirty[path] = None
                wake.set()

            return wake_for

        keys = inbox_keys(self.uid)
        subs = [self.node.subscribe(key, changed) for key in keys]
        store = self.node.store
        stops = [store.listen(location(k), stored(k)) for k in keys] if store is not None else []
        full_read_due = -math.inf
        try:
            while True:
                wake.clear()
                if loop.time() >= full_read_due:
                    dirty.clear()
                    full_read_due = loop.time() + self.max_poll
                    pages = await self._read_pages(dict.fromkeys(keys))
                else:
                    pages = await self._read_pages(dict(dirty))
                    for path in pages:
                        dirty.pop(path, None)
                entries = self._entries_of(pages, known)
                for entry in (e for e in entries if not self._state.seen(e.entry_id)):
                    self._state.mark_seen([(entry.entry_id, entry.expiration)])
                    await self._state.save_async(self._now())
                    yield entry
                if dirty:
                    continue  # changed while this read was under way
                # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that
                # arrives as the event is set, and the iterator would never end
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, full_read_due - loop.time())):
                        await wake.wait()
        finally:
            for stop in stops:
                stop()
            for sub in subs:
                sub.close()

    async def _read_pages(
        self, pages: dict[str, tuple[bytes, Address] | None]
    ) -> dict[str, Record | None]:
        """The records of inbox `pages`: from the holder that said it changed, if one did and it
        answers with a valid copy, else through a get (a page that cannot be read is left out
        and read again at the next full read)."""

        async def one(path: str, holder: tuple[bytes, Address] | None) -> Record | None:
            if holder is not None:
                record = await self.node.fetch_from(path, *holder)
                if record is not None:
                    return record
            try:
                return (await self.node.get_result(path)).record
            except NetworkError as exc:
                log.info("inbox page %s not read: %s", path, exc)
                return None

        paths = list(pages)
        records = await asyncio.gather(*(one(p, pages[p]) for p in paths))
        return dict(zip(paths, records, strict=True))

    def _entries_of(
        self, pages: dict[str, Record | None], known: dict[str, set[tuple[str, int]]]
    ) -> list[InboxEntry]:
        """The verified, decrypted entries of `pages`, oldest first; `known` learns what each
        page held."""
        entries = []
        for path, record in pages.items():
            if record is None:
                continue
            known[path] = {(v.id2, v.creationDate) for v in record.values}
            entries.extend(self._page_entries(record))
        entries.sort(key=lambda e: (e.timestamp, e.kind != "handshake", e.entry_id))
        return entries
