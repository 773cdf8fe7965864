"""The directory server's sealed channels: one per key its node received by the key exchange,
found by channel ID (`records.drd_channel`), bounded in number and in time.

A channel lives `lifetime_ms` from its key's arrival (searches and sync need no session); once
a DRD session is opened over it, it lives exactly as long as that session, and only that
session may be used over it (seed 000 step 5: the session is made with the key of the key
exchange). Keys are held in memory only: a restarted server has none, and clients agree new
ones (they are told 41, unknown channel).

Sans-I/O: time is passed in (`now`, Unix ms).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from records.directory import Status
from records.drd_channel import KEY_SIZE, ChannelKeys, ServerChannel, refusal, request_header
from records.errors import FrameRefused

log = logging.getLogger(__name__)

DEFAULT_MAX_CHANNELS = 4096


@dataclass
class Channel:
    """One channel: its server end, when it ends, and the session opened over it."""

    ends: ServerChannel
    expires: int
    """Unix ms after which the channel (and its keys) are forgotten."""
    session: bytes | None = None
    """The DRD session opened over this channel (the only one usable over it)."""

    def bind(self, session: bytes, expires: int) -> None:
        """`session` was opened over this channel, until `expires`: the channel's keys end
        with it."""
        self.session = session
        self.expires = expires


class ChannelTable:
    """Channels by ID: at most `max_channels`, each forgotten when it expires.

    When full, a new key pushes out the oldest channel without a session (one a client is
    still setting up, or a stranger's flood), and only if there is none the oldest channel."""

    def __init__(self, *, lifetime_ms: int, max_channels: int = DEFAULT_MAX_CHANNELS) -> None:
        if lifetime_ms <= 0 or max_channels < 1:
            raise ValueError("a channel lives a positive time; at least one channel")
        self.lifetime_ms = lifetime_ms
        self.max_channels = max_channels
        self.stats: Counter[str] = Counter()
        self._channels: OrderedDict[bytes, Channel] = OrderedDict()  # oldest key first

    def __len__(self) -> int:
        return len(self._channels)

    def add_key(self, key: bytes, now: int) -> Channel | None:
        """Open the channel of `key` (a key reassembled by the key exchange); None, counted,
        for a key that is not a channel key."""
        if len(key) != KEY_SIZE:
            self.stats["keys_refused"] += 1
            return None
        keys = ChannelKeys.derive(key)
        self._expire(now)
        if keys.channel_id not in self._channels and len(self._channels) >= self.max_channels:
            self._evict()
        channel = Channel(ServerChannel(keys), now + self.lifetime_ms)
        self._channels[keys.channel_id] = channel  # the same key again starts afresh
        self.stats["keys_taken"] += 1
        return channel

    def get(self, channel_id: bytes, now: int) -> Channel | None:
        """The live channel of `channel_id`, if any (an expired one is forgotten)."""
        channel = self._channels.get(channel_id)
        if channel is not None and channel.expires <= now:
            del self._channels[channel_id]
            self.stats["expired"] += 1
            return None
        return channel

    async def answer(
        self,
        frame: bytes,
        now: int,
        dispatch: Callable[[bytes, Channel], Awaitable[bytes]],
    ) -> bytes:
        """Open the sealed request `frame`, answer its clear request with `dispatch`, seal the
        answer. A frame that is not a request of a live channel, authentic and newer than the
        last one taken is refused in clear (41, 42 or 43), counted, and changes nothing."""
        counter = 0
        try:
            channel_id, counter = request_header(frame)
            channel = self.get(channel_id, now)
            if channel is None:
                raise FrameRefused("unknown or expired channel", Status.UNKNOWN_CHANNEL)
            counter, clear = channel.ends.open(frame)
        except FrameRefused as exc:
            self.stats[f"frames_refused.{exc.status}"] += 1
            log.debug("sealed frame refused: %s", exc)
            return refusal(counter, Status(exc.status))
        self.stats["frames"] += 1
        return channel.ends.seal(counter, await dispatch(clear, channel))

    def _expire(self, now: int) -> None:
        for channel_id in [c for c, ch in self._channels.items() if ch.expires <= now]:
            del self._channels[channel_id]
            self.stats["expired"] += 1

    def _evict(self) -> None:
        victim = next((c for c, ch in self._channels.items() if ch.session is None), None)
        if victim is None:
            victim = next(iter(self._channels))
        del self._channels[victim]
        self.stats["evicted"] += 1
