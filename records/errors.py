"""The project's one error hierarchy: every error we raise on purpose derives from `DHTError`.

As in h11, an error says whose fault it is:

- `UsageError`: local misuse, the caller's to fix (a stopped node, a record that does not
  validate, one too large to store).
- `PeerError`: junk a peer sent. The node drops and counts it; it never reaches a caller of
  `get`, `put` or a service.
- `NetworkError`: the network did not do what was asked (no node stored a put, a lookup could
  not ask enough nodes, a key exchange failed). Retrying later may work.

Every service's errors are here too (key exchange, chat, directory), so that a caller can catch
by fault (`UsageError`, `PeerError`, `NetworkError`) or by service.
"""

from __future__ import annotations


class DHTError(Exception):
    """Base of every error this project raises on purpose."""


class UsageError(DHTError):
    """Local misuse: what the caller asked cannot be done as asked."""


class PeerError(DHTError):
    """A peer sent something we cannot use (dropped and counted, never raised to callers)."""


class NetworkError(DHTError):
    """The network did not do what was asked; trying again later may work."""


class InvalidRecord(UsageError):
    """A record was refused by a validator.

    `reason` is a short, stable, machine-readable token (``"expired"``, ``"bad_client_signature"``
    ...) that callers may match on and count; the message explains it to a human. Raised to a
    caller, the record was the caller's own (a put); a peer's invalid record is counted instead.

    `forgery` marks the reasons nobody honest produces (a signature that does not verify, a
    key that does not match the identity it claims): only they get a peer banned. `final`
    marks a refusal no retry of the same record overcomes (the holder keeps something that
    supersedes it for good, e.g. a receipt for a chat entry): an originator stops
    republishing a record every answering holder refuses so.
    """

    def __init__(
        self, reason: str, message: str = "", *, forgery: bool = False, final: bool = False
    ) -> None:
        self.reason = reason
        self.message = message or reason.replace("_", " ")
        self.forgery = forgery
        self.final = final
        super().__init__(f"{reason}: {self.message}")


class RecordTooLarge(InvalidRecord):
    """A serialized record (or one of its values) exceeds the size limit."""

    def __init__(self, size: int, limit: int, what: str = "record") -> None:
        reason = "too_large" if what == "record" else f"{what}_too_large"
        super().__init__(
            reason, f"serialized {what} is {size} bytes, more than the {limit} allowed"
        )
        self.size = size
        self.limit = limit


class NodeNotRunning(UsageError):
    """The node was used before `start()` or after `stop()`."""


class ProtocolError(PeerError):
    """A datagram could not be decoded (or one we built would not fit); `reason` is the drop
    counter's name."""

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}" if message else reason)


class PutFailed(NetworkError):
    """No other node acknowledged a store; `reasons` counts what the refusing nodes said
    (``timeout`` for one that did not answer; ``no_peers`` when the node knew no other node to
    ask). The putting node itself still holds the record (unless its own store is full) and
    republishes it while it runs, so the record spreads once peers answer."""

    def __init__(self, message: str, reasons: dict[str, int] | None = None) -> None:
        self.reasons = dict(reasons or {})
        detail = ", ".join(f"{reason} x{count}" for reason, count in sorted(self.reasons.items()))
        super().__init__(f"{message} ({detail})" if detail else message)


class LookupFailed(NetworkError):
    """A get found nothing, but too few of the closest nodes answered to say that nothing is
    there (`answered` of `wanted`)."""

    def __init__(self, message: str, answered: int = 0, wanted: int = 0) -> None:
        self.answered = answered
        self.wanted = wanted
        super().__init__(message)


class DataDirInUse(UsageError):
    """Another node (in this process or another) holds the data directory's lock."""


class StorageError(DHTError):
    """The records database in the data directory cannot be opened or read; the message names
    the file and what to do."""


class StoreFull(DHTError):
    """The local store's byte quota would be exceeded."""

    reason = "store_full"
    final = False


# -- identities and key files ---------------------------------------------------------------


class InvalidKeyFile(UsageError):
    """Key file contents are not a key this program wrote."""


class KeyFileError(UsageError):
    """A key file is missing, unreadable, malformed or readable by others."""


# -- the anonymous key exchange (seed 002) ---------------------------------------------------


class RkeError(PeerError):
    """A key-exchange datagram or key that does not follow the layouts."""


class KeyExchangeFailed(NetworkError):
    """A key could not be posted, signalled or collected."""


# -- chat (seed 003) -------------------------------------------------------------------------


class DecryptionFailed(PeerError):
    """A message's ciphertext did not decrypt (wrong key, or tampered with)."""


class ChatError(DHTError):
    """Base of the errors the chat client raises for a request it cannot carry out."""


class UnknownUser(ChatError, NetworkError):
    """No meta and no device is published for this uid."""


class NoHandshake(ChatError, UsageError):
    """A message needs a handshake first: send one with `ChatClient.handshake` (or receive one)."""


class MessageTooLarge(ChatError, UsageError):
    """The message does not fit one inbox entry (about 690 bytes of content)."""


# -- the directory (seed 000) ----------------------------------------------------------------

_INVALID_PARAMETER = 198  # seed 000: ERROR_INVALID_PARAMETER (records.directory.Status)
_NOT_AUTHORIZED = 40  # ours (records.directory.Status.NOT_AUTHORIZED)


class DirectoryError(PeerError):
    """A DRD message, field or ticket that breaks the layouts; `status` is what to answer
    (a `records.directory.Status`)."""

    def __init__(self, message: str, status: int = _INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.status = status


class NotApproved(DirectoryError):
    """An entry's ticket or owner signature does not hold; `reason` says which
    (``bad_ticket`` or ``bad_owner_signature``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, _NOT_AUTHORIZED)
        self.reason = reason


class DirectoryRefused(DirectoryError, NetworkError):
    """A directory server answered with a status other than success (`code`)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class TransportError(NetworkError):
    """A request could not be delivered or answered (refused, timed out, broken, too big)."""


class FrameRefused(DirectoryError):
    """A sealed DRD frame (`records.drd_channel`) that cannot be taken: unknown channel, not
    authentic (tampered with, or sealed under another channel's key) or replayed; `status` is
    the refusal to answer with (41, 42, 43)."""
