"""Pure, synchronous core of the DHT: identities, record formats, construction and validation.

Nothing here touches sockets, files, clocks or an event loop; time comes in as `now` (Unix ms).
"""

from records.chat import (
    ChatValidator,
    DecryptionFailed,
    chat_key,
    inbox_keys,
    make_handshake,
    make_message,
    make_receipts,
)
from records.errors import DHTError, InvalidRecord, RecordTooLarge
from records.identity import (
    Identity,
    check_node_proof,
    identity_id,
    prove_node,
    verify_signature,
)
from records.keys import location, meta_key, namespace_of, presence_key
from records.meta import MetaValidator, make_meta_record
from records.meta_pb2 import SignedUserMeta, UserMeta
from records.presence import (
    PresenceValidator,
    client_announcement,
    countersign,
    make_announcement,
    make_presence_record,
    make_put_record,
)
from records.presence_pb2 import AnnouncementMessage, SignedAnnouncement
from records.record_pb2 import Record, Value
from records.registry import default_validator, default_validators
from records.validation import (
    MAX_RECORD_SIZE,
    Admission,
    NamespacedValidator,
    Validator,
    check_admission,
    decode_record,
    encode_record,
    without_expired,
)

__all__ = [
    "MAX_RECORD_SIZE",
    "Admission",
    "AnnouncementMessage",
    "ChatValidator",
    "DHTError",
    "DecryptionFailed",
    "Identity",
    "InvalidRecord",
    "MetaValidator",
    "NamespacedValidator",
    "PresenceValidator",
    "Record",
    "RecordTooLarge",
    "SignedAnnouncement",
    "SignedUserMeta",
    "UserMeta",
    "Validator",
    "Value",
    "chat_key",
    "check_admission",
    "check_node_proof",
    "client_announcement",
    "countersign",
    "decode_record",
    "default_validator",
    "default_validators",
    "encode_record",
    "identity_id",
    "inbox_keys",
    "location",
    "make_announcement",
    "make_handshake",
    "make_message",
    "make_meta_record",
    "make_presence_record",
    "make_put_record",
    "make_receipts",
    "meta_key",
    "namespace_of",
    "presence_key",
    "prove_node",
    "verify_signature",
    "without_expired",
]
