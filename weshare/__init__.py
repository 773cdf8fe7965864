"""Weshare (seed 004): signed, encrypted, add-only file sharing over passive exchanges.

A group of users (a *domain*) shares a folder through *exchanges*: storage that runs no code of
ours (a local or network folder, SFTP, S3, Azure Blob; several per domain). Nothing on an
exchange is trusted: access control is encryption, authorship is signatures, and writers never
overwrite.
See `docs/weshare.md` for the formats and `python -m weshare --help` for the command line.
"""

from weshare.api import DomainStatus, Weshare
from weshare.errors import (
    ExchangeError,
    InvalidFile,
    KeyNotHeld,
    ObjectNotFound,
    StateInUse,
    UsageError,
    WeshareError,
)
from weshare.exchange import Exchange, FolderExchange, default_kinds, open_exchange
from weshare.formats import Truncation
from weshare.lineage import Fork, Version
from weshare.replicas import ExchangeSet
from weshare.sync import SyncReport
from weshare.transfer import Progress

__all__ = [
    "DomainStatus",
    "Exchange",
    "ExchangeError",
    "ExchangeSet",
    "FolderExchange",
    "Fork",
    "InvalidFile",
    "KeyNotHeld",
    "ObjectNotFound",
    "Progress",
    "StateInUse",
    "SyncReport",
    "Truncation",
    "UsageError",
    "Version",
    "Weshare",
    "WeshareError",
    "default_kinds",
    "open_exchange",
]
