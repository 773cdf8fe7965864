"""Ed25519 identities for users and nodes (DESIGN §2).

An identity's ID is the SHA-1 of its 32-byte public key: 20 bytes, a position in the 160-bit
Kademlia key space that its holder cannot choose. IDs are written as lowercase hex.

This module does no I/O: `Identity.to_bytes`/`Identity.from_bytes` give the key file's contents;
reading and writing the file (owner-only permissions) is `node.keyfile`'s job.
"""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from records.errors import InvalidKeyFile

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
ID_SIZE = 20
_FILE_HEADER = b"kadnode-ed25519-seed-v1\n"
# Messages from this size on are signed through OpenSSL (`cryptography`): the same signature
# (ed25519 is deterministic), but its SHA-512 is faster and it copies nothing: a 4.2 MB message
# took 7.7 ms against libsodium's 18.8 ms here. Short messages (records) stay with libsodium,
# faster for them (16 us against 24).
_LARGE_MESSAGE = 64 * 1024


def identity_id(public_key: bytes) -> bytes:
    """The 20-byte ID of an ed25519 public key: SHA-1 of its 32 bytes."""
    return hashlib.sha1(public_key).digest()


def is_hex_id(text: str) -> bool:
    """True if `text` is a 40-digit lowercase hex ID."""
    return len(text) == 2 * ID_SIZE and all(c in "0123456789abcdef" for c in text)


def signing_input(context: bytes, payload: bytes) -> bytes:
    """What is actually signed: a context label, a NUL, then the payload.

    The label (``b"dht-announcement-v1"``, ``b"dht-user-meta-v1"`` ...) keeps a signature made for
    one kind of message from being accepted as another whose bytes happen to parse the same.
    """
    return context + b"\x00" + payload


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True if `signature` is a valid detached ed25519 signature of `data` by `public_key`."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + data, public_key)
    except nacl.exceptions.BadSignatureError:
        return False
    except (nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False  # not a point on the curve, and the like
    return True


class Identity:
    """An ed25519 key pair with its derived ID.

    >>> me = Identity.from_seed(bytes(32))
    >>> len(me.public_key), len(me.id), len(me.sign(b"x"))
    (32, 20, 64)
    """

    __slots__ = ("_large_key", "_signing_key", "id", "public_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self._large_key: Ed25519PrivateKey | None = None
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.id: bytes = identity_id(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A new random identity."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose private key is the 32-byte `seed` (deterministic)."""
        if len(seed) != 32:
            raise ValueError(f"an ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def id_hex(self) -> str:
        """The ID as 40 lowercase hex digits."""
        return self.id.hex()

    def sign(self, data: bytes) -> bytes:
        """A 64-byte detached ed25519 signature of `data`."""
        if len(data) < _LARGE_MESSAGE:
            return self._signing_key.sign(data).signature
        if self._large_key is None:
            self._large_key = Ed25519PrivateKey.from_private_bytes(bytes(self._signing_key))
        return self._large_key.sign(data)

    @property
    def x25519_public_key(self) -> bytes:
        """The X25519 public key that goes with this ed25519 key (RFC 7748 birational map):
        a node's handshake key, a client's presence key."""
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.public_key)

    def x25519_private_key(self) -> bytes:
        """The X25519 private key matching `x25519_public_key` (secret)."""
        return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
            bytes(self._signing_key) + self.public_key
        )

    def to_bytes(self) -> bytes:
        """The key file's contents (secret: the private seed, in hex)."""
        return _FILE_HEADER + bytes(self._signing_key).hex().encode("ascii") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        """Parse what `to_bytes` wrote; raises `InvalidKeyFile` on anything else."""
        if not data.startswith(_FILE_HEADER):
            raise InvalidKeyFile("not a kadnode identity file (bad header)")
        body = data[len(_FILE_HEADER) :].strip()
        try:
            seed = bytes.fromhex(body.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidKeyFile("identity file body is not hex") from exc
        if len(seed) != 32:
            raise InvalidKeyFile(f"identity seed is {len(seed)} bytes, expected 32")
        return cls.from_seed(seed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return hmac.compare_digest(bytes(self._signing_key), bytes(other._signing_key))

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __repr__(self) -> str:
        return f"Identity(id={self.id_hex})"  # never the secret


NODE_PROOF_CONTEXT = b"dht-node-proof-v1"


def node_proof_input(challenge: bytes, asker_id: bytes, prover_id: bytes) -> bytes:
    """What a node signs to prove it holds the key behind `prover_id` (issue 10, S/Kademlia):
    the asker's fresh random `challenge` (its request's message ID) and both IDs, so the answer
    is good for this request, this asker and this identity only."""
    return signing_input(NODE_PROOF_CONTEXT, challenge + asker_id + prover_id)


def prove_node(identity: Identity, challenge: bytes, asker_id: bytes) -> tuple[bytes, bytes]:
    """``(public_key, signature)``: `identity`'s answer to `asker_id`'s `challenge`."""
    return identity.public_key, identity.sign(node_proof_input(challenge, asker_id, identity.id))


def check_node_proof(
    node_id: bytes, public_key: bytes, signature: bytes, challenge: bytes, asker_id: bytes
) -> bool:
    """True if `public_key` hashes to `node_id` and `signature` answers `challenge` from
    `asker_id` (see `prove_node`)."""
    return identity_id(public_key) == node_id and verify_signature(
        public_key, node_proof_input(challenge, asker_id, node_id), signature
    )
