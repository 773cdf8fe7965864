"""Snowflake ids for `U.x`, `C.x` and `A.x` (seed 004: "x is a snowflake id").

An id is Twitter's layout (41 bits of milliseconds since `EPOCH_MS`, 10 bits of instance, 12 of
sequence), built with `snowflake-id`. Names write it as 19 decimal digits so that the exchange's
lexicographic listing is id order. A writer makes each new id strictly above every id it has
made or seen on the exchange, so a writer whose clock lags still sorts after what it read.
"""

from __future__ import annotations

from snowflake import MAX_INSTANCE, Snowflake

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z; 41 bits of ms from it last until 2093
_DIGITS = 19
MAX_ID = 1 << 63  # snowflake ids are 63 bits (41 time, 10 instance, 12 sequence)


def object_name(prefix: str, snowflake_id: int) -> str:
    """``"C.0000000000000000042"`` for prefix ``"C"`` and id 42."""
    return f"{prefix}.{snowflake_id:0{_DIGITS}d}"


def parse_object_name(prefix: str, name: str) -> int | None:
    """The id in `name` if it is ``<prefix>.<19 digits>`` and fits a snowflake's 63 bits, else
    None (19 digits go beyond: such a name on an exchange crashed every pull that met it, as
    SQLite holds 64-bit signed integers)."""
    head = prefix + "."
    digits = name[len(head) :]
    if not name.startswith(head) or len(digits) != _DIGITS:
        return None
    if not (digits.isascii() and digits.isdigit()):  # not "²" and the like, which int() refuses
        return None
    value = int(digits)
    return value if value < MAX_ID else None


def id_time_ms(snowflake_id: int) -> int:
    """The Unix time (ms) an id was made at, as its writer's clock said."""
    return int(Snowflake.parse(snowflake_id, EPOCH_MS).milliseconds)


def first_id_at(unix_ms: int) -> int:
    """The lowest id made at Unix time `unix_ms` (the inverse of `id_time_ms`; 0 before the
    epoch): ids carry their milliseconds in the top bits."""
    return max(0, unix_ms - EPOCH_MS) << 22


def instance_of(public_key: bytes) -> int:
    """The 10-bit instance field for a writer: the top bits of its public key."""
    return int.from_bytes(public_key[:2], "big") & int(MAX_INSTANCE)


class SnowflakeIds:
    """Strictly increasing snowflake ids for one writer; time is passed in."""

    def __init__(self, instance: int, last: int = 0) -> None:
        self._instance = instance
        self._last = last

    def next(self, now_ms: int, floor: int = 0) -> int:
        """A new id above `floor` (the newest id seen) and above every id made before."""
        made = Snowflake(
            timestamp=max(0, now_ms - EPOCH_MS), instance=self._instance, epoch=EPOCH_MS
        )
        self._last = max(int(made.value), self._last + 1, floor + 1)
        return self._last
