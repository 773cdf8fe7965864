"""Proven node IDs (S/Kademlia): who proved which ID from which address, and checking proofs.

A request to a node whose ID is not proven yet carries one extra last argument, ``"prove"``;
the answer is then ``{"answer": result, "proof": [public_key, signature]}`` (see
`records.prove_node`; the challenge is the request's random message ID). Stock rpcudp cannot
take the extra argument, so a stock node never answers it and never enters our routing table.
"""

from __future__ import annotations

from typing import Any

from node.routing import Address, RoutingTables
from records import identity_id
from records.identity import check_node_proof

PROVE = "prove"
PROVABLE = frozenset({"ping", "find_node", "find_value"})
CHALLENGES = "ch"
"""A request's argument (before `PROVE`) saying the sender takes a challenge in the answer:
a stranger's first request is then answered with ``"challenge"``, a random message ID the
stranger answers, in one datagram, as if it had been pinged for a proof (the ping-back's
request saved)."""
_WRAPPER_KEYS = frozenset({"answer", "proof", "challenge"})
# After an address proved to be one node's, a lookup does not ask it for another ID for this
# long (a liar's made-up IDs cost one request, not twenty); then a restarted node with a new
# key may sit there.
OWNER_TTL = 600.0
MAX_PING_BACKS = 256


def proof_parts(body: Any) -> tuple[Any, bytes, bytes] | None:
    """``(answer, public key, signature)`` of an answer wrapped with a proof, if well formed."""
    if not (isinstance(body, dict) and "proof" in body and body.keys() <= _WRAPPER_KEYS):
        return None
    proof = body["proof"]
    if not (
        isinstance(proof, list) and len(proof) == 2 and all(isinstance(p, bytes) for p in proof)
    ):
        return None
    return body["answer"], proof[0], proof[1]


def wrap_proof(answer: Any, public_key: bytes, signature: bytes) -> dict[str, Any]:
    """The answer to a request that asked for a proof."""
    return {"answer": answer, "proof": [public_key, signature]}


def wrap_answer(answer: Any, proof: tuple[bytes, bytes] | None, challenge: bytes | None) -> Any:
    """`answer`, with our proof if the request asked for one and a challenge for the asker
    if we want its proof (`CHALLENGES`); a bare answer (stock framing) if neither."""
    if proof is None and challenge is None:
        return answer
    wrapped: dict[str, Any] = {"answer": answer}
    if proof is not None:
        wrapped["proof"] = [proof[0], proof[1]]
    if challenge is not None:
        wrapped["challenge"] = challenge
    return wrapped


def split_challenge(body: Any) -> tuple[Any, bytes | None]:
    """``(answer as if unchallenged, challenge)`` of an answer that carries a challenge;
    ``(body, None)`` for any other answer."""
    if not (isinstance(body, dict) and "challenge" in body and body.keys() <= _WRAPPER_KEYS):
        return body, None
    challenge = body["challenge"]
    if not (isinstance(challenge, bytes) and len(challenge) == 20 and "answer" in body):
        return body, None
    if "proof" in body:
        return {"answer": body["answer"], "proof": body["proof"]}, challenge
    return body["answer"], challenge


class ProofBook:
    """What this node knows of proofs: proven IDs by address and the other way round."""

    def __init__(self, own_id: bytes, cache_size: int) -> None:
        self.own_id = own_id
        self.cache_size = cache_size
        # Nodes that proved their IDs lately and are not in the routing table (which answers
        # for its own), by ID: the address they proved it from.
        self._proven_at: dict[bytes, Address] = {}
        # Which node proved within `OWNER_TTL` that it holds an address, and when.
        self._owners: dict[Address, tuple[bytes, float]] = {}
        # Both are least recently used first, kept in order by inserting again: plain dicts,
        # as an OrderedDict takes 48 bytes more an entry (7 KB a node in a simulation).
        self.ping_backs: set[bytes] = set()
        """Unproven nodes that asked us something, being pinged for a proof."""

    @property
    def kept(self) -> int:
        """How many nodes are known as proven by this book alone (not by the table)."""
        return len(self._proven_at)

    @property
    def owners(self) -> int:
        """How many addresses are kept with the node that proved it holds them."""
        return len(self._owners)

    def proven(self, node_id: bytes, address: Address, table: RoutingTables) -> bool:
        """True if `node_id` has proved its ID from `address`: it is in the routing table at
        that address, or proved it lately and has not entered the table since (a node that
        leaves the table proves itself again)."""
        proven_at = self._proven_at
        if proven_at.get(node_id) == address:
            proven_at[node_id] = proven_at.pop(node_id)  # the most recently used
            return True
        return table.known_at(node_id, address)

    def remember(self, node_id: bytes, address: Address, now: float) -> None:
        """`node_id` just proved its ID from `address`."""
        proven_at, owners = self._proven_at, self._owners
        proven_at.pop(node_id, None)
        proven_at[node_id] = address
        if len(proven_at) > self.cache_size:
            del proven_at[next(iter(proven_at))]
        owners.pop(address, None)
        owners[address] = (node_id, now)
        while owners:  # oldest first; past `OWNER_TTL` an owner no longer counts
            oldest = next(iter(owners))
            if len(owners) <= self.cache_size and now - owners[oldest][1] < OWNER_TTL:
                break
            del owners[oldest]

    def leave_to_table(self, node_id: bytes, address: Address, table: RoutingTables) -> None:
        """If the routing table holds `node_id` at `address`, drop it here: the table answers
        `proven` for it while it holds it (most proven peers are contacts; both kept each of
        them)."""
        if node_id in self._proven_at and table.known_at(node_id, address):
            del self._proven_at[node_id]

    def held_by_another(self, address: Address, node_id: bytes | None, now: float) -> bool:
        """True if another node proved within `OWNER_TTL` that `address` is its own."""
        owner = self._owners.get(address)
        return (
            owner is not None
            and node_id is not None
            and owner[0] != node_id
            and now - owner[1] < OWNER_TTL
        )

    def unwrap(self, msg_id: bytes, body: Any, node_id: bytes | None) -> tuple[Any, bytes | None]:
        """``(answer, proven node ID)`` of an answer that had to carry a proof, or
        ``(None, None)`` if the proof is missing or wrong. A call to a bare address (bootstrap)
        learns the ID its key proves."""
        parts = proof_parts(body)
        if parts is None:
            return None, None
        answer, public_key, signature = parts
        if node_id is None:
            node_id = identity_id(public_key)
        if not check_node_proof(node_id, public_key, signature, msg_id, self.own_id):
            return None, None
        return answer, node_id

    def failed_proof(self, msg_id: bytes, body: Any, address: Address, now: float) -> bool:
        """An answer failed to prove the ID we asked for. If it proves its sender's own ID
        instead (an address that changed hands), remember whose address it is. True if it
        carries a proof valid for no key at all: a forgery, which nobody honest sends."""
        parts = proof_parts(body)
        if parts is None:
            return False
        _, public_key, signature = parts
        owner = identity_id(public_key)
        if check_node_proof(owner, public_key, signature, msg_id, self.own_id):
            self.remember(owner, address, now)
            return False
        return True
