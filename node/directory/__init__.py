"""DRD directory servers (seed 000): mailbox profiles in SQLite, served with the seed's CBDF
update and search services and status codes, to the mailboxes' proven owners only."""

from node.directory.database import AiosqliteDatabase, Database, InlineDatabase
from node.directory.ownership import (
    LockerPayments,
    NoCharge,
    OwnershipVerifier,
    PaymentVerifier,
    QuorumTicketVerifier,
)
from node.directory.service import DirectoryService
from node.directory.store import DirectoryStore, StoredProfile

__all__ = [
    "AiosqliteDatabase",
    "Database",
    "DirectoryService",
    "DirectoryStore",
    "InlineDatabase",
    "LockerPayments",
    "NoCharge",
    "OwnershipVerifier",
    "PaymentVerifier",
    "QuorumTicketVerifier",
    "StoredProfile",
]
