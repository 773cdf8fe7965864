"""Sealed DRD frames (seed 000 step 5, "encryption type 6"): AES-256-GCM under a key agreed
through the anonymous key exchange (seed 002), with a counter per direction.

**Keys.** The client makes a fresh 32-byte key (seed 002: its last byte is 0xFF) and sends it to
the directory server's node in parts through the key exchange; no key server holds more than a
part. Both sides then derive, with HKDF-SHA256 (``info`` `KDF_INFO`), 80 bytes: a 16-byte
*channel ID*, the 32-byte AES-256 key of requests (client to server) and the 32-byte key of
answers (server to client). The channel ID is how a server finds the key a request is sealed
under: it is a one-way function of the whole key, so it names the key without telling anything
of it, and no key server, holding a part, can compute it or link it to its part. It travels in
clear in every request; the DRD session (SE), the tickets, the profile fields, searches and
results travel only inside the ciphertext.

**Request frame** (inside the stream's 4-byte length framing)::

    E6 | channel ID (16) | counter (8, big-endian, from 1) | AES-256-GCM(request key,
        nonce = counter (8) + 4 zero bytes, aad = the 25 bytes before) of the clear DRD request
        frame (command, body), then the 16-byte tag

**Answer frame**::

    E6 | status (1) | counter (8) | sealed clear DRD response frame + tag    (status 250)
    E6 | status (1) | counter (8)                                            (41, 42, 43)

An answer is sealed under the answer key with the counter of the request it answers, the nonce
built alike, and as associated data its 10 header bytes then the channel ID; so an answer
cannot be moved to another channel or another request. A refusal (41 unknown channel, 42 not
authentic, 43 replayed) is clear: it carries nothing secret, and forging one only denies
service, which anyone on the path can do anyway.

**Counters.** The client numbers its requests 1, 2, 3...; the server takes a request only if it
is authentic and its counter is above the last one taken on the channel, so a replayed or
reordered request is refused (43) and changes nothing; a request that fails to authenticate (a
flipped bit, a frame of another channel under this channel's ID) is refused (42) and does not
move the counter. The client takes an answer only if it is authentic and carries the counter of
the request in flight. Separate keys per direction keep the nonces of the two directions apart.

Pure: no sockets, clock or randomness; the key comes in from the key exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from records.directory import Status
from records.errors import DirectoryError, DirectoryRefused, FrameRefused

SEALED = 0xE6  # seed 000 step 5: "Clients use encryption type 6"; no DRD command starts so
KEY_SIZE = 32  # seed 000 step 2: "a shared AES 256 bit ... key"
CHANNEL_ID_SIZE = 16
COUNTER_SIZE = 8
TAG_SIZE = 16
REQUEST_HEADER_SIZE = 1 + CHANNEL_ID_SIZE + COUNTER_SIZE
ANSWER_HEADER_SIZE = 1 + 1 + COUNTER_SIZE
MAX_COUNTER = (1 << 64) - 1
KDF_INFO = b"kadnode drd channel v1"


@dataclass(frozen=True)
class ChannelKeys:
    """What both ends derive from the agreed key: the channel ID and one key per direction."""

    channel_id: bytes
    request_key: bytes
    answer_key: bytes

    @classmethod
    def derive(cls, key: bytes) -> ChannelKeys:
        """HKDF-SHA256 of the agreed 32-byte `key`; `DirectoryError` for another size."""
        if len(key) != KEY_SIZE:
            raise DirectoryError(f"a channel key is {KEY_SIZE} bytes, got {len(key)}")
        out = HKDF(
            algorithm=hashes.SHA256(),
            length=CHANNEL_ID_SIZE + 2 * KEY_SIZE,
            salt=None,
            info=KDF_INFO,
        ).derive(key)
        return cls(out[:CHANNEL_ID_SIZE], out[16:48], out[48:80])


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(COUNTER_SIZE, "big") + bytes(4)


def request_header(data: bytes) -> tuple[bytes, int]:
    """(channel ID, counter) of a sealed request; `FrameRefused` (42) if it is not one."""
    if len(data) < REQUEST_HEADER_SIZE + TAG_SIZE or data[0] != SEALED:
        raise FrameRefused("not a sealed request frame", Status.FRAME_NOT_AUTHENTIC)
    counter = int.from_bytes(data[1 + CHANNEL_ID_SIZE : REQUEST_HEADER_SIZE], "big")
    return data[1 : 1 + CHANNEL_ID_SIZE], counter


def refusal(counter: int, status: Status) -> bytes:
    """A clear answer refusing a sealed request (41, 42 or 43)."""
    if status == Status.SUCCESS:
        raise ValueError("a refusal is not a success")
    return bytes([SEALED, status]) + min(counter, MAX_COUNTER).to_bytes(COUNTER_SIZE, "big")


class ClientChannel:
    """The client's end: seals requests, opens the answers to them."""

    def __init__(self, keys: ChannelKeys) -> None:
        self.keys = keys
        self.sent = 0
        """Counter of the last request sealed."""
        self._requests = AESGCM(keys.request_key)
        self._answers = AESGCM(keys.answer_key)

    @property
    def channel_id(self) -> bytes:
        """The channel's ID, in clear in every request."""
        return self.keys.channel_id

    def seal(self, frame: bytes) -> tuple[int, bytes]:
        """(counter, sealed request) of the clear request `frame`."""
        if self.sent >= MAX_COUNTER:
            raise DirectoryError("the channel's counter is spent: agree a new key")
        self.sent += 1
        header = bytes([SEALED]) + self.keys.channel_id + self.sent.to_bytes(COUNTER_SIZE, "big")
        return self.sent, header + self._requests.encrypt(_nonce(self.sent), frame, header)

    def open(self, counter: int, data: bytes) -> bytes:
        """The clear response frame of the answer `data` to request `counter`. Raises
        `DirectoryRefused` with the server's status (`code`) if it refused the request, or
        `FrameRefused` (42) if the answer is not an authentic answer to that request."""
        if len(data) < ANSWER_HEADER_SIZE or data[0] != SEALED:
            raise FrameRefused("not a sealed answer", Status.FRAME_NOT_AUTHENTIC)
        status = data[1]
        if int.from_bytes(data[2:ANSWER_HEADER_SIZE], "big") != counter:
            raise FrameRefused("an answer to another request", Status.FRAME_NOT_AUTHENTIC)
        if status != Status.SUCCESS:
            if len(data) != ANSWER_HEADER_SIZE:
                raise FrameRefused("a refusal with a body", Status.FRAME_NOT_AUTHENTIC)
            try:
                name = Status(status).name
            except ValueError:
                name = "UNKNOWN"
            raise DirectoryRefused(f"the server refused the frame with {status} ({name})", status)
        header = data[:ANSWER_HEADER_SIZE]
        try:
            return self._answers.decrypt(
                _nonce(counter), data[ANSWER_HEADER_SIZE:], header + self.keys.channel_id
            )
        except InvalidTag:
            raise FrameRefused("the answer is not authentic", Status.FRAME_NOT_AUTHENTIC) from None


class ServerChannel:
    """The server's end: opens requests (refusing replays), seals the answers."""

    def __init__(self, keys: ChannelKeys) -> None:
        self.keys = keys
        self.received = 0
        """Counter of the last request taken."""
        self._requests = AESGCM(keys.request_key)
        self._answers = AESGCM(keys.answer_key)

    def open(self, data: bytes) -> tuple[int, bytes]:
        """(counter, clear request frame) of the sealed request `data`. `FrameRefused`: 42 if
        it is not authentic under this channel, 43 if its counter is not above the last taken;
        either way the channel is unchanged."""
        channel_id, counter = request_header(data)
        if channel_id != self.keys.channel_id:
            raise FrameRefused("a frame of another channel", Status.FRAME_NOT_AUTHENTIC)
        header = data[:REQUEST_HEADER_SIZE]
        try:
            frame = self._requests.decrypt(_nonce(counter), data[REQUEST_HEADER_SIZE:], header)
        except InvalidTag:
            raise FrameRefused("the frame is not authentic", Status.FRAME_NOT_AUTHENTIC) from None
        if counter <= self.received:
            raise FrameRefused(
                f"frame {counter} replayed or reordered (last taken {self.received})",
                Status.FRAME_REPLAYED,
            )
        self.received = counter
        return counter, frame

    def seal(self, counter: int, frame: bytes) -> bytes:
        """The sealed answer carrying the clear response `frame` to request `counter`."""
        header = bytes([SEALED, Status.SUCCESS]) + counter.to_bytes(COUNTER_SIZE, "big")
        return header + self._answers.encrypt(_nonce(counter), frame, header + self.keys.channel_id)
