"""The `Validator` interface (seed 001) and the pieces every namespace validator shares.

Seed 001's Go interface is ``Validate`` / ``Select`` / ``Consolidate``; here time is an argument
(`now`, Unix ms) so validation stays pure and a simulation can run it on a virtual clock.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from google.protobuf.message import DecodeError

from records.errors import InvalidRecord, RecordTooLarge
from records.keys import namespace_of
from records.record_pb2 import Record, Value

# DESIGN §4: a datagram is at most 8 KiB, so a serialized record is too.
MAX_RECORD_SIZE = 8192
DEFAULT_CLOCK_SKEW_MS = 5 * 60 * 1000

Rank = tuple[int, bytes]


class Validator(Protocol):
    """Checks records of one namespace (or, dispatching, of all)."""

    def validate(self, key: str, record: Record, now: int) -> None:
        """Raise `InvalidRecord` (with a `reason`) unless `record` is valid at `now` for `key`."""
        ...

    def select(self, key: str, records: Sequence[Record]) -> int:
        """Index of the best of `records` (all valid); the same winner for any order."""
        ...

    def consolidate(self, key: str, records: Sequence[Record], now: int | None = None) -> Record:
        """Merge valid `records` into one; with `now`, values expired at `now` are dropped.

        The result may have no values left (everything expired): the caller then drops it.
        """
        ...


@runtime_checkable
class Admission(Protocol):
    """A validator that can refuse a valid record because of what is already held.

    Merging must stay order-independent, so rules that depend on what came first (a full
    multi-valued record refuses newcomers instead of evicting; an acknowledged chat entry may not
    come back) are checked by a holder before it merges, in `admit`.
    """

    def admit(self, key: str, held: Record, incoming: Record, now: int) -> None:
        """Raise `InvalidRecord` if `incoming` may not be merged into the `held` record."""
        ...


def check_admission(
    validator: Validator, key: str, held: Record, incoming: Record, now: int
) -> None:
    """Run `validator`'s `admit` (see `Admission`) if it has one; validators without it admit
    every valid record."""
    if isinstance(validator, Admission):
        validator.admit(key, held, incoming, now)


def encode_record(record: Record) -> bytes:
    """The record's canonical bytes (deterministic serialization)."""
    return record.SerializeToString(deterministic=True)


def decode_record(data: bytes, max_size: int = MAX_RECORD_SIZE) -> Record:
    """Parse record bytes from the wire: `RecordTooLarge` or `InvalidRecord("malformed_record")`."""
    if len(data) > max_size:
        raise RecordTooLarge(len(data), max_size)
    record = Record()
    try:
        record.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidRecord("malformed_record", f"record bytes do not parse: {exc}") from exc
    return record


def without_expired(record: Record, now: int) -> Record:
    """`record` minus the values expired at `now` (the same object if none is).

    Values are signed one by one, so dropping some leaves the others valid. Holders and getters
    prune before validating, since `validate` refuses a record with any expired value.
    """
    if all(v.expirationDate > now for v in record.values):
        return record
    pruned = Record(key=record.key, updateDate=record.updateDate, id1=record.id1)
    pruned.values.extend(v for v in record.values if v.expirationDate > now)
    return pruned


def check_lifetime(
    created: int, expiration: int, now: int, *, max_ttl_ms: int, clock_skew_ms: int
) -> None:
    """The time rules every signed value obeys: not future-dated, not expired, TTL bounded."""
    if created > now + clock_skew_ms:
        raise InvalidRecord(
            "future_dated", f"created at {created}, more than {clock_skew_ms} ms after now ({now})"
        )
    if expiration <= now:
        raise InvalidRecord("expired", f"expired at {expiration}, now is {now}")
    if expiration - created > max_ttl_ms:
        raise InvalidRecord(
            "ttl_too_long",
            f"lives {expiration - created} ms, more than the {max_ttl_ms} ms allowed",
        )


def check_update_date(record: Record, now: int, clock_skew_ms: int) -> None:
    """Record.updateDate may not lie in the future (beyond the allowed clock skew)."""
    if record.updateDate > now + clock_skew_ms:
        raise InvalidRecord(
            "future_dated",
            f"updateDate {record.updateDate} is more than {clock_skew_ms} ms after now ({now})",
        )


def check_value_count(record: Record, max_values: int) -> None:
    """At least one value, at most `max_values`, and no sub-key (`id2`) twice."""
    count = len(record.values)
    if count == 0:
        raise InvalidRecord("no_values", "the record holds no values")
    if count > max_values:
        raise InvalidRecord("too_many_values", f"{count} values, more than {max_values} allowed")
    if len({v.id2 for v in record.values}) != count:
        raise InvalidRecord("duplicate_value", "two values share one id2")


def value_rank(value: Value) -> Rank:
    """Newest first, then by canonical bytes, so every node ranks values alike."""
    return (value.creationDate, value.SerializeToString(deterministic=True))


def record_rank(record: Record) -> Rank:
    """A record's rank for `select`: its update date, then its canonical bytes."""
    return (record.updateDate, encode_record(record))


def select_by_rank(records: Sequence[Record], rank: Callable[[Record], Rank]) -> int:
    """Index of the first record of highest `rank`. Raises `ValueError` on an empty sequence.

    Equal ranks mean equal canonical bytes (ranks end with them), so the winner's content does not
    depend on the order of `records`.
    """
    if not records:
        raise ValueError("select needs at least one record")
    ranks = [rank(r) for r in records]
    return ranks.index(max(ranks))


def merge_values(values: Iterable[Value], now: int | None, max_values: int) -> list[Value]:
    """One value per `id2` (the newest wins), expired ones dropped, at most `max_values` kept.

    When more than `max_values` remain, the newest are kept. The result is sorted by `id2`. The
    merge is idempotent, commutative and associative, so holders converge whatever order copies
    arrive in.
    """
    best: dict[str, tuple[Rank, Value]] = {}
    for value in values:
        if now is not None and value.expirationDate <= now:
            continue
        rank = value_rank(value)
        held = best.get(value.id2)
        if held is None or rank > held[0]:
            best[value.id2] = (rank, value)
    kept = sorted(best.values(), key=lambda item: item[0], reverse=True)[:max_values]
    return [value for _, value in sorted(kept, key=lambda item: item[1].id2)]


def merged_record(key: str, records: Sequence[Record], values: Iterable[Value]) -> Record:
    """The record `consolidate` returns: `values` at `key`, dated as the newest of `records`
    (and the least `id1`, so every holder builds the same bytes)."""
    if not records:
        raise ValueError("consolidate needs at least one record")
    merged = Record(
        key=key,
        updateDate=max(r.updateDate for r in records),
        id1=min(r.id1 for r in records),
    )
    merged.values.extend(values)
    return merged


@dataclass(frozen=True)
class Merge:
    """What a getter makes of the valid copies it collected (see `merge_copies`)."""

    record: Record | None
    """Every copy merged; None if nothing is left alive."""
    data: bytes | None
    """Its canonical bytes if the merge is itself a valid record, to write back to holders
    that lack it; None if it is not (copies that diverged may together hold more than one
    record may: the union goes to the reader, never onto the wire)."""
    refused: str | None = None
    """Why the merge is not written back."""


def merge_copies(
    validator: Validator,
    key: str,
    copies: Sequence[Record],
    now: int,
    *,
    known_valid: Container[bytes] = (),
) -> Merge:
    """Consolidate valid `copies` of the record at `key` and check the result before anyone
    writes it back: within `MAX_RECORD_SIZE` and valid on its own. A result whose encoding is
    in `known_valid` (bytes the validator passed just now: the copies agreed) is not checked
    again."""
    if not copies:
        return Merge(None, None)
    merged = validator.consolidate(key, copies, now)
    if not merged.values:
        return Merge(None, None)
    data = encode_record(merged)
    try:
        if len(data) > MAX_RECORD_SIZE:
            raise RecordTooLarge(len(data), MAX_RECORD_SIZE)
        if data not in known_valid:
            validator.validate(key, merged, now)
    except InvalidRecord as exc:
        return Merge(merged, None, exc.reason)
    return Merge(merged, data)


def consolidate_values(
    key: str, records: Sequence[Record], now: int | None, max_values: int
) -> Record:
    """The merged record of a multi-valued namespace (see `merge_values`)."""
    values = merge_values((v for r in records for v in r.values), now, max_values)
    return merged_record(key, records, values)


def consolidate_single(
    key: str, records: Sequence[Record], now: int | None, rank: Callable[[Record], Rank]
) -> Record:
    """The merged record of a single-valued namespace: the best by `rank` among those still
    alive at `now` (a record without values if none is)."""
    live = [r for r in records if now is None or all(v.expirationDate > now for v in r.values)]
    if not live:
        return merged_record(key, records, ())  # raises on no records at all
    winner = Record()
    winner.CopyFrom(live[select_by_rank(live, rank)])
    return winner


class NamespacedValidator:
    """Dispatches on a key's namespace (its first path segment); unknown namespaces are refused.

    It also applies the rules shared by all namespaces: the serialized size limit and that the
    record's own `key` field is the key it is stored under.
    """

    def __init__(
        self, validators: Mapping[str, Validator], max_record_size: int = MAX_RECORD_SIZE
    ) -> None:
        self._validators = dict(validators)
        self.max_record_size = max_record_size

    @property
    def namespaces(self) -> frozenset[str]:
        """The namespaces this validator accepts."""
        return frozenset(self._validators)

    def with_namespace(self, namespace: str, validator: Validator) -> NamespacedValidator:
        """A copy that checks records of `namespace` with `validator` (a plugin's namespace,
        or a stricter validator for a known one); this one is unchanged."""
        validators = dict(self._validators)
        validators[namespace] = validator
        return NamespacedValidator(validators, self.max_record_size)

    def validator_for(self, key: str) -> Validator:
        """The validator of `key`'s namespace; `InvalidRecord` if the namespace is unknown."""
        namespace = namespace_of(key)
        try:
            return self._validators[namespace]
        except KeyError:
            raise InvalidRecord(
                "unknown_namespace", f"no validator for namespace {namespace!r}"
            ) from None

    def validate(self, key: str, record: Record, now: int) -> None:
        """Size, key and namespace checks, then the namespace's own validation."""
        size = record.ByteSize()
        if size > self.max_record_size:
            raise RecordTooLarge(size, self.max_record_size)
        validator = self.validator_for(key)
        if record.key != key:
            raise InvalidRecord(
                "key_mismatch", f"record says key {record.key!r}, stored at {key!r}"
            )
        validator.validate(key, record, now)

    def admit(self, key: str, held: Record, incoming: Record, now: int) -> None:
        """The namespace's admission rules for merging `incoming` into `held`, if it has any."""
        check_admission(self.validator_for(key), key, held, incoming, now)

    def select(self, key: str, records: Sequence[Record]) -> int:
        """The best record, as the namespace's validator decides."""
        return self.validator_for(key).select(key, records)

    def consolidate(self, key: str, records: Sequence[Record], now: int | None = None) -> Record:
        """The merged record, as the namespace's validator decides."""
        return self.validator_for(key).consolidate(key, records, now)
