"""What one chat device remembers between runs: entries already yielded, and its peers' keys.

Kept in a small JSON file (written to a temporary file, synced, then renamed over the old one, so
a crash leaves the old or the new state, never half of one). Entry ids are forgotten once the
entries they name have expired: by then no holder can serve them again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path

from node.atomicfile import replace_file


class ChatState:
    """Seen entry ids (with their expirations), peers' ed25519 keys, and handshakes made or
    received; persisted to `path` by `save` when a path is given."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: dict[str, int] = {}
        self._peers: dict[str, str] = {}
        self._handshakes: set[str] = set()
        self._saving = asyncio.Lock()
        if path is not None and path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            self._seen = {str(k): int(v) for k, v in data.get("seen", {}).items()}
            self._peers = {str(k): str(v) for k, v in data.get("peers", {}).items()}
            self._handshakes = {str(u) for u in data.get("handshakes", [])}

    def seen(self, entry_id: bytes) -> bool:
        """True if this device already yielded (or acknowledged) `entry_id`."""
        return entry_id.hex() in self._seen

    def mark_seen(self, entries: Iterable[tuple[bytes, int]]) -> None:
        """Remember (entry id, expiration) pairs as yielded."""
        for entry_id, expiration in entries:
            self._seen[entry_id.hex()] = expiration

    def add_peer(self, uid: bytes, public_key: bytes) -> None:
        """Remember `uid`'s ed25519 public key (the caller checked SHA-1(key) == uid)."""
        self._peers[uid.hex()] = public_key.hex()

    def peer_key(self, uid: bytes) -> bytes | None:
        """`uid`'s public key, if known."""
        key = self._peers.get(uid.hex())
        return bytes.fromhex(key) if key is not None else None

    def add_handshake(self, uid: bytes) -> None:
        """Remember that a handshake with `uid` was sent or received."""
        self._handshakes.add(uid.hex())

    def has_handshake(self, uid: bytes) -> bool:
        """True once a handshake with `uid` was sent or received."""
        return uid.hex() in self._handshakes

    def save(self, now: int) -> None:
        """Forget ids of entries expired at `now`, then write the file (if any), blocking."""
        data = self._snapshot(now)
        if data is not None:
            self._write(data)

    async def save_async(self, now: int) -> None:
        """`save`, with the file written (and synced) in a worker thread, off the event loop;
        saves complete in the order they were asked for."""
        data = self._snapshot(now)
        if data is not None:
            async with self._saving:
                await asyncio.to_thread(self._write, data)

    def _snapshot(self, now: int) -> str | None:
        self._seen = {k: v for k, v in self._seen.items() if v > now}
        if self.path is None:
            return None
        data = {
            "seen": self._seen,
            "peers": self._peers,
            "handshakes": sorted(self._handshakes),
        }
        return json.dumps(data, sort_keys=True)

    def _write(self, data: str) -> None:
        assert self.path is not None
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # a crash (even of the machine) leaves the old file or the new one, never half of one
        replace_file(self.path, data.encode("utf-8"))
