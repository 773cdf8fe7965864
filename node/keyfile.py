"""Identity key files: the one place an `Identity` touches the disk.

The file holds the private seed, so it is created readable and writable by its owner only
(mode 0600), written atomically (temp file, fsync, rename), and refused on load if anyone else
could read it, as ssh does with private keys.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from node.atomicfile import replace_file
from records import DHTError, Identity
from records.errors import KeyFileError


def save_identity(identity: Identity, path: str | os.PathLike[str]) -> None:
    """Write `identity` to `path` (mode 0600), replacing any file there atomically."""
    replace_file(Path(path), identity.to_bytes(), 0o600)


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read the identity at `path`; `KeyFileError` if it is absent, malformed or not private."""
    target = Path(path)
    try:
        mode = target.stat().st_mode
        data = target.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read identity file {target}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"identity file {target} is accessible by others (mode {stat.filemode(mode)}); "
            f"run: chmod 600 {target}"
        )
    try:
        return Identity.from_bytes(data)
    except DHTError as exc:
        raise KeyFileError(f"identity file {target}: {exc}") from exc


def load_or_create_identity(path: str | os.PathLike[str]) -> Identity:
    """The identity at `path`, generating and saving a new one if there is no file yet."""
    target = Path(path)
    if target.exists():
        return load_identity(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    identity = Identity.generate()
    save_identity(identity, target)
    return identity
