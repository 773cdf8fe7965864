"""Anonymous key exchange (seed 002): Post Key (41), Get Key (42) and Signal (43), byte-exact.

The seed fixes each body; framing on the wire is ours (the seed leaves it out):

* a request is one UDP datagram: the command code (1 byte) then the seed's request body;
* a response is ``0x80 | command`` (1 byte), the status code (1 byte), the request's 16-byte
  challenge (so a client can match the answer to its request, and a third party cannot forge
  one without having seen the request), then the seed's response body.

Requests start with 41, 42 or 43 and responses with 0xA9, 0xAA or 0xAB, so a node can serve them
on its DHT port: DHT datagrams start with 0x00 or 0x01.

**Hash of key ID.** Parts are stored and fetched by a 16-byte hash of their 16-byte key ID:
BLAKE2b with a 16-byte digest and the personalization ``b"rke-key-id"``. BLAKE2b produces a
16-byte digest natively (no truncation of a longer hash), it is in Python's standard library,
and the personalization keeps this hash apart from every other use of BLAKE2b, so a key ID's
hash says nothing useful elsewhere. A receiver told the hash (by Signal) can fetch the part
without ever learning the key ID, and the 128-bit preimage resistance keeps the hash from
revealing it.

This module is pure: no sockets, no clock, no randomness except what callers pass in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
from dataclasses import dataclass
from enum import IntEnum

from records.errors import RkeError

# seed 002: command codes
POST_KEY = 41
GET_KEY = 42
SIGNAL = 43
COMMANDS = (POST_KEY, GET_KEY, SIGNAL)
RESPONSE_FLAG = 0x80

TRAILER = b"\xe3\xe3"  # seed 002: every body ends with E3 E3 ("Not Encrypted")
CHALLENGE_SIZE = 16
KEY_ID_SIZE = 16
HASH_SIZE = 16
PADDING_SIZE = 128
# seed 002: "Length of key. Must be 4, 8, 16, 24, 32 or 40. Other numbers are invalid"
KEY_LENGTHS = (4, 8, 16, 24, 32, 40)
POST_KEY_SIZE = CHALLENGE_SIZE + KEY_ID_SIZE + 1 + 1 + PADDING_SIZE + 2  # seed 002: 164 bytes
GET_KEY_SIZE = CHALLENGE_SIZE + HASH_SIZE + 2
SIGNAL_PART_SIZE = 1 + HASH_SIZE + 16 + 3  # version, hash, address (16), port (3 in the seed)
MAX_SIGNAL_PARTS = 16  # seed 002: the Signal response has 16 bytes, one per part
SIGNAL_RESPONSE_SIZE = MAX_SIGNAL_PARTS + 2  # seed 002: "a fixed 18 bytes"
MIN_KEY_SIZE = 16  # seed 002: "a key that is at least 128 bits (16 bytes)"
# seed 002: the client "will then devide the key into" parts "posted to different RKE servers":
# at least two parts, so at least two key servers besides the sender and the receiver
MIN_PARTS = 2
KEY_LAST_BYTE = 0xFF  # seed 002: "The last byte of this key will be 0xFF"


class PostKeyStatus(IntEnum):
    """Seed 002, Post Key response status codes."""

    FAIL = 0
    SUCCESS = 1
    CLIENT_IP_ZERO = 3
    RECEIVER_IP_ZERO = 4
    BAD_KEY_START = 5
    BAD_KEY_LENGTH = 6
    COIN_OVERUSED = 7
    OFFLINE = 8


class GetKeyStatus(IntEnum):
    """Seed 002, Get Key response status codes (the seed lists 10 twice; Offline keeps 10)."""

    FAIL = 0
    SUCCESS = 1
    AUTH_REQUIRED = 2
    AUTH_BAD_USER = 3
    AUTH_BAD_PASSWORD = 4
    ANONYMOUS_NOT_PERMITTED = 5
    SENDER_NOT_FOUND = 6
    SAME_AN_PN = 7
    BLOCKED_SENDER = 8
    BLOCKED_RECEIVER = 9
    OFFLINE = 10
    KEY_NOT_FOUND = 12


class SignalStatus(IntEnum):
    """Signal's outcome (the seed gives Signal a 16-byte bitfield and no status table)."""

    FAIL = 0
    SUCCESS = 1


def key_id_hash(key_id: bytes) -> bytes:
    """The 16-byte hash of a 16-byte key ID (BLAKE2b-128, personalized; see the module doc)."""
    if len(key_id) != KEY_ID_SIZE:
        raise RkeError(f"a key ID is {KEY_ID_SIZE} bytes, got {len(key_id)}")
    return hashlib.blake2b(key_id, digest_size=HASH_SIZE, person=b"rke-key-id").digest()


def _address_bytes(host: str) -> tuple[int, bytes]:
    """(IP version, 16 bytes): IPv4 as its 4 bytes then 12 zero bytes, as the seed's Signal."""
    address = ipaddress.ip_address(host)
    if address.version == 4:
        return 4, address.packed + bytes(12)
    return 6, address.packed


def _host_of(version: int, raw: bytes) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    if version == 6:
        return str(ipaddress.IPv6Address(raw))
    raise RkeError(f"IP version {version} is neither 4 nor 6")


# -- Post Key --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostKey:
    """A Post Key request: the key part is `padding[key_start : key_start + key_length]`."""

    challenge: bytes
    key_id: bytes
    key_start: int
    key_length: int
    padding: bytes

    @property
    def part(self) -> bytes:
        """The key part hidden in the padding."""
        return self.padding[self.key_start : self.key_start + self.key_length]


def encode_post_key(
    challenge: bytes, key_id: bytes, part: bytes, key_start: int, padding: bytes
) -> bytes:
    """The 164-byte Post Key body: `part` written into the 128 random `padding` bytes at
    `key_start`. Raises `RkeError` for sizes the seed does not allow."""
    if len(challenge) != CHALLENGE_SIZE or len(key_id) != KEY_ID_SIZE:
        raise RkeError("the challenge and the key ID are 16 bytes each")
    if len(part) not in KEY_LENGTHS:
        raise RkeError(f"a key part is 4, 8, 16, 24, 32 or 40 bytes, got {len(part)}")
    if len(padding) != PADDING_SIZE:
        raise RkeError(f"the padding is {PADDING_SIZE} random bytes")
    if not 0 <= key_start <= PADDING_SIZE - len(part):
        raise RkeError(f"key start {key_start} does not leave the part inside the padding")
    hidden = padding[:key_start] + part + padding[key_start + len(part) :]
    return challenge + key_id + bytes([key_start, len(part)]) + hidden + TRAILER


def decode_post_key(body: bytes) -> tuple[PostKey | None, PostKeyStatus]:
    """Parse a Post Key body: (request, SUCCESS) or (None, the status to answer with)."""
    if len(body) != POST_KEY_SIZE or body[-2:] != TRAILER:
        return None, PostKeyStatus.FAIL
    challenge, key_id = body[:16], body[16:32]
    key_start, key_length = body[32], body[33]
    if key_length not in KEY_LENGTHS:  # seed 002: other lengths are invalid (status 6)
        return None, PostKeyStatus.BAD_KEY_LENGTH
    if key_start + key_length > PADDING_SIZE:  # the part must lie inside the padding (status 5)
        return None, PostKeyStatus.BAD_KEY_START
    return PostKey(challenge, key_id, key_start, key_length, body[34:162]), PostKeyStatus.SUCCESS


# -- Get Key ---------------------------------------------------------------------------------


def encode_get_key(challenge: bytes, key_hash: bytes) -> bytes:
    """The 34-byte Get Key body."""
    if len(challenge) != CHALLENGE_SIZE or len(key_hash) != HASH_SIZE:
        raise RkeError("the challenge and the key hash are 16 bytes each")
    return challenge + key_hash + TRAILER


def decode_get_key(body: bytes) -> tuple[bytes, bytes] | None:
    """(challenge, key hash) of a Get Key body, or None if malformed."""
    if len(body) != GET_KEY_SIZE or body[-2:] != TRAILER:
        return None
    return body[:16], body[16:32]


@dataclass(frozen=True)
class KeyPart:
    """A Get Key answer: the part and who posted it."""

    key_hash: bytes
    sender_host: str
    part: bytes


def encode_get_key_answer(key_hash: bytes, sender_host: str, part: bytes) -> bytes:
    """The Get Key response body: the seed's key-ID hash (16), sender ID DN SN (5 bytes; zero:
    there are no coin IDs here) and sender IP (16: IPv4 in the last 4, as the seed's I4 I4 I4
    I4), then — not in the seed, which forgets it — the part's length and the part."""
    version, raw = _address_bytes(sender_host)
    ip16 = raw if version == 6 else bytes(12) + raw[:4]
    return key_hash + bytes(5) + ip16 + bytes([len(part)]) + part + TRAILER


def decode_get_key_answer(body: bytes) -> KeyPart:
    """Parse a Get Key response body; `RkeError` if malformed."""
    if len(body) < 16 + 5 + 16 + 1 + 2 or body[-2:] != TRAILER:
        raise RkeError("Get Key answer too short or without trailer")
    length = body[37]
    part = body[38 : 38 + length]
    if length not in KEY_LENGTHS or len(part) != length or len(body) != 38 + length + 2:
        raise RkeError("Get Key answer with a bad part length")
    ip16 = body[21:37]
    host = (
        str(ipaddress.IPv4Address(ip16[12:]))
        if ip16[:12] == bytes(12)
        else str(ipaddress.IPv6Address(ip16))
    )
    return KeyPart(body[:16], host, part)


# -- Signal ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartLocation:
    """Where one key part waits: its key-ID hash and the key server's address."""

    key_hash: bytes
    host: str
    port: int


def encode_signal(challenge: bytes, parts: list[PartLocation]) -> bytes:
    """The Signal body: challenge, NU, then per part IP version, hash, address (IPv4 then 12
    zero bytes) and port in three bytes, as the seed's sample shows; then E3 E3."""
    if len(challenge) != CHALLENGE_SIZE:
        raise RkeError("the challenge is 16 bytes")
    if not 1 <= len(parts) <= MAX_SIGNAL_PARTS:
        raise RkeError(f"a signal names 1 to {MAX_SIGNAL_PARTS} parts")
    out = bytearray(challenge)
    out.append(len(parts))
    for location in parts:
        if len(location.key_hash) != HASH_SIZE or not 0 < location.port < 1 << 16:
            raise RkeError("a part location needs a 16-byte hash and a port")
        version, raw = _address_bytes(location.host)
        out.append(version)
        out += location.key_hash + raw + location.port.to_bytes(3, "big")
    out += TRAILER
    return bytes(out)


def decode_signal(body: bytes) -> tuple[bytes, list[PartLocation]] | None:
    """(challenge, part locations) of a Signal body, or None if malformed."""
    if len(body) < CHALLENGE_SIZE + 1 + 2 or body[-2:] != TRAILER:
        return None
    count = body[16]
    if not 1 <= count <= MAX_SIGNAL_PARTS or len(body) != 17 + count * SIGNAL_PART_SIZE + 2:
        return None
    parts = []
    for i in range(count):
        at = 17 + i * SIGNAL_PART_SIZE
        version = body[at]
        try:
            host = _host_of(version, body[at + 17 : at + 33])
        except RkeError:
            return None
        port = int.from_bytes(body[at + 33 : at + 36], "big")
        if not 0 < port < 1 << 16:
            return None
        parts.append(PartLocation(body[at + 1 : at + 17], host, port))
    return body[:16], parts


def encode_signal_answer(used: list[bool]) -> bytes:
    """The 18-byte Signal response body: FF for each part used, 00 otherwise, then E3 E3."""
    if len(used) > MAX_SIGNAL_PARTS:
        raise RkeError("at most 16 parts")
    flags = bytes(0xFF if u else 0x00 for u in used).ljust(MAX_SIGNAL_PARTS, b"\x00")
    return flags + TRAILER


def decode_signal_answer(body: bytes, count: int) -> list[bool]:
    """Which of the first `count` parts the receiver used."""
    if len(body) != SIGNAL_RESPONSE_SIZE or body[-2:] != TRAILER:
        raise RkeError("a Signal answer is 18 bytes ending in E3 E3")
    return [body[i] == 0xFF for i in range(count)]


# -- framing ---------------------------------------------------------------------------------


def request(command: int, body: bytes) -> bytes:
    """A request datagram."""
    return bytes([command]) + body


def response(command: int, status: int, challenge: bytes, body: bytes = TRAILER) -> bytes:
    """A response datagram: flagged command, status, the request's challenge, body."""
    return bytes([RESPONSE_FLAG | command, status]) + challenge.ljust(16, b"\x00")[:16] + body


def parse_response(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(command, status, challenge, body) of a response datagram; `RkeError` if too short."""
    if len(data) < 2 + CHALLENGE_SIZE or data[0] & RESPONSE_FLAG == 0:
        raise RkeError("not a key-exchange response")
    return data[0] & ~RESPONSE_FLAG, data[1], data[2:18], data[18:]


# -- keys ------------------------------------------------------------------------------------


def check_key(key: bytes) -> None:
    """A key must be at least 16 bytes, end with 0xFF (seed 002) and split into allowed parts."""
    if len(key) < MIN_KEY_SIZE:
        raise RkeError(f"a key is at least {MIN_KEY_SIZE} bytes")
    if key[-1] != KEY_LAST_BYTE:
        raise RkeError("the last byte of a key must be 0xFF")
    if len(key) % 4:
        raise RkeError("a key splits into parts of 4 to 40 bytes, so its length is a multiple of 4")


def split_sizes(
    total: int,
    choices: list[int],
    *,
    max_parts: int = MAX_SIGNAL_PARTS,
    min_parts: int = MIN_PARTS,
    max_size: int = max(KEY_LENGTHS),
) -> list[int]:
    """Part sizes, each allowed by the seed, summing to `total`: between `min_parts` (by default
    two, so no part is the whole key) and `max_parts` of them (as many as there are key servers
    to take them), picked with the caller's random `choices` (indexes, consumed in order; cycled
    if short): the first picks how many parts, the others their sizes.

    No part is longer than `max_size` (one of the allowed sizes), so that a key server holding
    one part misses at least the rest of the key.

    `RkeError` if no such split exists (too few parts allowed for `total` bytes)."""
    if max_size not in KEY_LENGTHS:
        raise RkeError(f"a part size limit is one of {KEY_LENGTHS}, not {max_size}")
    allowed = tuple(s for s in KEY_LENGTHS if s <= max_size)
    if total < 4 or total % 4:
        raise RkeError(f"a split needs a multiple of 4 bytes, not {total}")
    if total > max_size * max_parts:
        raise RkeError(f"{total} bytes do not fit in {max_parts} parts of at most {max_size} bytes")
    fewest = _fewest_parts(total, allowed)  # by size in units of 4 bytes
    least = max(min_parts, fewest[-1])
    most = min(max_parts, total // 4)
    if least > most:
        raise RkeError(
            f"{total} bytes do not split into {min_parts} to {max_parts} parts of "
            f"{', '.join(map(str, allowed))} bytes"
        )

    def splits(size: int, parts: int) -> bool:
        """`size` bytes split into exactly `parts` allowed sizes (every count from the fewest
        to all 4-byte parts is possible: any part but a 4 splits into two smaller ones, each
        no longer than it: 8 = 4 + 4, 16 = 8 + 8, 24 = 16 + 8, 32 = 16 + 16, 40 = 24 + 16)."""
        if parts == 0:
            return size == 0
        return size > 0 and fewest[size // 4] <= parts <= size // 4

    picks = itertools.cycle(choices or [0])
    count = least + next(picks) % (most - least + 1)
    sizes: list[int] = []
    remaining = total
    for left in range(count - 1, -1, -1):  # parts still to pick after this one
        options = [s for s in allowed if s <= remaining and splits(remaining - s, left)]
        pick = options[next(picks) % len(options)]
        sizes.append(pick)
        remaining -= pick
    return sizes


def _fewest_parts(total: int, sizes: tuple[int, ...] = KEY_LENGTHS) -> list[int]:
    """For every size from 0 to `total` bytes in steps of 4 (index: size // 4), the fewest
    part sizes of `sizes` summing to it."""
    fewest = [0]
    for units in range(1, total // 4 + 1):
        fewest.append(1 + min(fewest[units - s // 4] for s in sizes if s // 4 <= units))
    return fewest
