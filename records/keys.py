"""Record paths and their DHT locations (DESIGN §2).

A record's key is a path ``/<namespace>/<id>/...``; the first segment picks the validator and the
record is stored at ``location(path)``, the SHA-1 of the path's UTF-8 bytes.
"""

from __future__ import annotations

import hashlib

from records.errors import InvalidRecord
from records.identity import is_hex_id

MAX_KEY_LENGTH = 256


def location(path: str) -> bytes:
    """The 20-byte DHT location of a record path: SHA-1 of its UTF-8 bytes."""
    return hashlib.sha1(path.encode("utf-8")).digest()


def namespace_of(key: str) -> str:
    """The namespace (first path segment) of a record key; `InvalidRecord("bad_key")` if none."""
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRecord("bad_key", f"key is {len(key)} characters, more than {MAX_KEY_LENGTH}")
    if not key.startswith("/"):
        raise InvalidRecord("bad_key", f"key {key!r} does not start with '/'")
    namespace, slash, _ = key[1:].partition("/")
    if not namespace or not slash:
        raise InvalidRecord("bad_key", f"key {key!r} is not of the form /<namespace>/<id>/")
    return namespace


def id_path(namespace: str, hex_id: str) -> str:
    """The path ``/<namespace>/<hex_id>/``; `hex_id` must be a 40-digit lowercase hex ID."""
    if not is_hex_id(hex_id):
        raise ValueError(f"{hex_id!r} is not a 40-digit lowercase hex ID")
    return f"/{namespace}/{hex_id}/"


def parse_id_path(namespace: str, key: str) -> str:
    """The hex ID of a key that must be exactly ``/<namespace>/<40 hex>/``, else `bad_key`."""
    prefix = f"/{namespace}/"
    hex_id = key[len(prefix) : -1]
    if not (key.startswith(prefix) and key.endswith("/") and is_hex_id(hex_id)):
        raise InvalidRecord(
            "bad_key", f"key {key!r} is not of the form {prefix}<40 lowercase hex digits>/"
        )
    return hex_id


def presence_key(uid: bytes | str) -> str:
    """``/presence/<uid>/``: where a user's devices announce themselves."""
    return id_path("presence", uid if isinstance(uid, str) else uid.hex())


def meta_key(uid: bytes | str) -> str:
    """``/meta/<uid>/``: where a user's signed meta (name, avatar) lives."""
    return id_path("meta", uid if isinstance(uid, str) else uid.hex())
