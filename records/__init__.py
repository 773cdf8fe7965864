"""Pure, synchronous core of the DHT: identities, record formats, construction and validation.

Nothing here touches sockets, files, clocks or an event loop; time comes in as `now` (Unix ms).
This package exports what applications use; the building blocks behind it (codecs, proofs,
admission rules, generated protobuf classes) live in its modules (`records.identity`,
`records.validation`, `records.chat`, `records.directory`, ...).
"""

from records.chat import (
    ChatValidator,
    chat_key,
    inbox_keys,
    make_handshake,
    make_message,
    make_receipts,
    make_sent_copy,
)
from records.directory import MailboxNumber, Profile
from records.drd import (
    DrdServersValidator,
    DrdValidator,
    TicketAuthorities,
    drd_key,
    make_drd_record,
)
from records.errors import (
    DecryptionFailed,
    DHTError,
    DirectoryError,
    InvalidRecord,
    NetworkError,
    PeerError,
    RecordTooLarge,
    UsageError,
)
from records.identity import Identity, identity_id
from records.keys import location, meta_key, presence_key
from records.meta import MetaValidator, make_meta_record
from records.presence import (
    PresenceValidator,
    client_announcement,
    countersign,
    make_announcement,
    make_presence_record,
    make_put_record,
)
from records.presence_pb2 import AnnouncementMessage
from records.record_pb2 import Record, Value
from records.registry import default_validator, default_validators
from records.validation import (
    MAX_RECORD_SIZE,
    NamespacedValidator,
    Validator,
    decode_record,
    encode_record,
)

__all__ = [
    "MAX_RECORD_SIZE",
    "AnnouncementMessage",
    "ChatValidator",
    "DHTError",
    "DecryptionFailed",
    "DirectoryError",
    "DrdServersValidator",
    "DrdValidator",
    "Identity",
    "InvalidRecord",
    "MailboxNumber",
    "MetaValidator",
    "NamespacedValidator",
    "NetworkError",
    "PeerError",
    "PresenceValidator",
    "Profile",
    "Record",
    "RecordTooLarge",
    "TicketAuthorities",
    "UsageError",
    "Validator",
    "Value",
    "chat_key",
    "client_announcement",
    "countersign",
    "decode_record",
    "default_validator",
    "default_validators",
    "drd_key",
    "encode_record",
    "identity_id",
    "inbox_keys",
    "location",
    "make_announcement",
    "make_drd_record",
    "make_handshake",
    "make_message",
    "make_meta_record",
    "make_presence_record",
    "make_put_record",
    "make_receipts",
    "make_sent_copy",
    "meta_key",
    "presence_key",
]
