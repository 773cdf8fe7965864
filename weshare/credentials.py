"""Exchange credentials: kept out of logs, error messages and clear-text files.

An exchange configuration (``{"kind": "s3", ..., "secret_access_key": ...}``) travels only
encrypted: in the domain's `exchanges` file (domain key), in invites (sealed to the receiver)
and in the local state, where `seal_local` encrypts it (AES-256-GCM) under a key derived from
the user's identity (HKDF-SHA256), so the SQLite file holds no credential in clear text.
What is shown to people (`status`, errors) goes through `redact` and `scrub`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from records.identity import Identity
from weshare.errors import InvalidFile

# fields of an exchange configuration that are secrets (every kind's)
SECRET_FIELDS = frozenset(
    {"secret_access_key", "session_token", "access_key", "password", "private_key", "passphrase"}
)
_LOCAL_PREFIX = "sealed-v1:"
_NONCE = 12


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with every secret field's value replaced by ``"***"``."""
    return {key: "***" if key in SECRET_FIELDS else value for key, value in config.items()}


def secrets_of(configs: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The secret values in `configs` (to scrub from messages)."""
    return tuple(
        value
        for config in configs
        for key, value in config.items()
        if key in SECRET_FIELDS and isinstance(value, str) and value
    )


def scrub(message: str, secrets: Iterable[str]) -> str:
    """`message` with every occurrence of a secret replaced by ``"***"`` (a library's error
    may quote a URL or a request that carries one)."""
    for secret in secrets:
        if len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


def _local_key(identity: Identity) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"weshare local state v1").derive(
        identity.to_bytes()
    )


def seal_local(identity: Identity, value: Any) -> str:
    """JSON `value` encrypted for this user's own state (text, to store in Config)."""
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(_local_key(identity)).encrypt(nonce, json.dumps(value).encode(), b"config")
    return _LOCAL_PREFIX + (nonce + sealed).hex()


def open_local(identity: Identity, text: str) -> Any:
    """The value `seal_local` sealed (a value stored in clear by an older version is read as
    is, and sealed on its next write)."""
    if not text.startswith(_LOCAL_PREFIX):
        return json.loads(text)
    data = bytes.fromhex(text[len(_LOCAL_PREFIX) :])
    try:
        plain = AESGCM(_local_key(identity)).decrypt(data[:_NONCE], data[_NONCE:], b"config")
    except InvalidTag as exc:
        raise InvalidFile("local state: sealed value does not open with this identity") from exc
    return json.loads(plain)
