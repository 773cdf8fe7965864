"""The routing table kept across restarts: ``DATA_DIR/contacts.json``.

A node saves its contacts (ID and address, closest to its own ID first) periodically and when
it stops; a restarted node pings them, so each proves its ID again before it re-enters the
table, and joins through those that answer, with no ``--bootstrap`` needed. The file is
rewritten atomically; one that cannot be read is ignored (the node joins as if new).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from node.atomicfile import replace_file
from node.routing import Address, Contact

log = logging.getLogger(__name__)

CONTACTS_FILE = "contacts.json"
MAX_SAVED = 256
"""Contacts saved at most (the closest to our ID): enough to rejoin, little to write."""
_VERSION = 1


def encode_contacts(contacts: Iterable[Contact], own_id: bytes) -> bytes:
    """The file's contents: the `MAX_SAVED` contacts closest to `own_id`."""
    own = int.from_bytes(own_id, "big")
    kept = sorted(contacts, key=lambda c: c.long_id ^ own)[:MAX_SAVED]
    document = {
        "version": _VERSION,
        "contacts": [[c.id.hex(), c.address[0], c.address[1]] for c in kept],
    }
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def decode_contacts(data: bytes) -> list[tuple[bytes, Address]]:
    """(ID, address) of each saved contact; `ValueError` if the contents are not ours."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        raise ValueError("not a contacts file of this version")
    out: list[tuple[bytes, Address]] = []
    for entry in document.get("contacts", [])[:MAX_SAVED]:
        node_id, host, port = entry
        if not (isinstance(host, str) and isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"bad contact {entry!r}")
        raw = bytes.fromhex(node_id)
        if len(raw) != 20:
            raise ValueError(f"bad node ID {node_id!r}")
        out.append((raw, (host, port)))
    return out


def save_contacts(path: Path, data: bytes) -> None:
    """Write the file (blocking: run it in a worker thread)."""
    replace_file(path, data, 0o600)


def load_contacts(path: Path) -> list[tuple[bytes, Address]]:
    """The contacts saved at `path`; none if there is no file or it cannot be read (said so
    in the log)."""
    try:
        return decode_contacts(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the saved contacts in %s: %s", path, exc)
        return []
