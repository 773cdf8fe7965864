"""Content-defined parts (seed 004 "Hashsplit"): FastCDC cut points, keyed ids.

An edit changes only the parts around it, so only those are uploaded again. An average part of
512 KiB keeps a 256 MiB file to about 430 objects (each object costs a file creation or a
request on the exchange) while a 100-byte insertion still uploads about 0.27 % of it (measured by
`python -m weshare.bench`; FIELD-NOTES: one to three parts change per small edit).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import BinaryIO

from pyfastcdc import FastCDC

from weshare.crypto import part_id
from weshare.formats import Change, ChangeType

AVERAGE_PART = 512 * 1024
MIN_PART = 128 * 1024
MAX_PART = 2 * 1024 * 1024
INLINE_LIMIT = 64 * 1024  # files up to this size travel inside their C.x, not as parts
_PART_RECORD = struct.Struct(">32sQ")


@dataclass(frozen=True)
class Part:
    """A part of a file version: its keyed id and where it sits."""

    id: bytes
    offset: int
    length: int


def _chunker() -> FastCDC:
    return FastCDC(AVERAGE_PART, min_size=MIN_PART, max_size=MAX_PART)


def split_bytes(data: bytes | memoryview, id_key: bytes) -> list[Part]:
    """The parts of `data`, with their ids under `id_key`."""
    if len(data) <= MIN_PART:  # FastCDC never cuts below the minimum: one part (none if empty)
        return [Part(part_id(id_key, data), 0, len(data))] if data else []
    return [
        Part(part_id(id_key, chunk.data), chunk.offset, chunk.length)
        for chunk in _chunker().cut_buf(data)
    ]


def split_file(path: Path, id_key: bytes) -> list[Part]:
    """The parts of the file at `path` (pyfastcdc reads a large one through mmap)."""
    size = path.stat().st_size
    if size <= MAX_PART:
        return split_bytes(path.read_bytes(), id_key)
    return [
        Part(part_id(id_key, chunk.data), chunk.offset, chunk.length)
        for chunk in _chunker().cut_file(path)
    ]


def cut_stream(handle: BinaryIO) -> Iterator[tuple[int, memoryview]]:
    """``(offset, bytes)`` of each part of an open file, read once into a private buffer (the
    same cuts as `split_file`). A view is valid only until the next one is taken: unlike a
    memory map, it cannot change under a reader while another process writes the file."""
    for chunk in _chunker().cut_stream(handle):
        yield chunk.offset, chunk.data


def encode_parts(parts: list[Part]) -> bytes:
    """Files.merkle: each part's id and length, in order (offsets follow from the lengths)."""
    return b"".join(_PART_RECORD.pack(part.id, part.length) for part in parts)


def decode_parts(blob: bytes) -> list[Part]:
    """The inverse of `encode_parts`."""
    parts: list[Part] = []
    offset = 0
    for digest, length in _PART_RECORD.iter_unpack(blob):
        parts.append(Part(digest, offset, length))
        offset += length
    return parts


def diff_parts(old: list[bytes], new: list[bytes]) -> tuple[Change, ...]:
    """seed 004 "changes against the origin file": the edits that turn part list `old` into
    `new` (difflib's opcodes over part ids)."""
    if not old:
        return (Change(ChangeType.CREATE, 0, 0, len(new)),) if new else ()
    kinds = {
        "replace": ChangeType.REPLACE,
        "delete": ChangeType.DELETE,
        "insert": ChangeType.INSERT,
    }
    matcher = SequenceMatcher(None, old, new, autojunk=False)
    return tuple(
        Change(kinds[tag], start, end, new_end - new_start)
        for tag, start, end, new_start, new_end in matcher.get_opcodes()
        if tag != "equal"
    )


def apply_changes(old: list[bytes], changes: tuple[Change, ...], new: list[bytes]) -> bool:
    """True if `changes` turn `old` into `new` (what `diff_parts` promises)."""
    rebuilt: list[bytes] = []
    at = taken = 0
    for change in changes:
        if change.start < at or change.end < change.start or change.end > len(old):
            return False
        rebuilt += old[at : change.start]
        taken += change.start - at
        rebuilt += new[taken : taken + change.count]
        taken += change.count
        at = change.end
    rebuilt += old[at:]
    return rebuilt == new
