"""The serialized bytes carry seed 001's field numbers and wire types, read by hand."""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from records import Record, Value, encode_record

VARINT, LEN = 0, 2


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, payload) for each field, by plain tag parsing."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
            out.append((number, wire_type, value))
        elif wire_type == LEN:
            length, pos = read_varint(data, pos)
            out.append((number, wire_type, data[pos : pos + length]))
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
    return out


def test_record_and_value_use_seed_field_numbers() -> None:
    record = Record(key="/presence/ab/", updateDate=1234567, id1="client")
    record.values.append(Value(id2="node", creationDate=11, expirationDate=22, value=b"\x01\x02"))
    record.values.append(Value(id2="node2", creationDate=33, expirationDate=44, value=b"\x03"))

    top = fields(encode_record(record))
    assert top[:3] == [(1, LEN, b"/presence/ab/"), (2, VARINT, 1234567), (3, LEN, b"client")]
    values = [payload for number, wire_type, payload in top[3:] if number == 4]
    assert all(wire_type == LEN for number, wire_type, _ in top[3:])
    assert len(values) == 2

    first = values[0]
    assert isinstance(first, bytes)
    assert fields(first) == [
        (1, LEN, b"node"),
        (3, VARINT, 11),
        (4, VARINT, 22),
        (5, LEN, b"\x01\x02"),
    ]


def test_value_field_two_is_reserved() -> None:
    # seed 001: Value has no field 2; the descriptor reserves it.
    descriptor = Value.DESCRIPTOR
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(descriptor.file.serialized_pb)
    (value_proto,) = [m for m in file_proto.message_type if m.name == "Value"]
    assert [(r.start, r.end) for r in value_proto.reserved_range] == [(2, 3)]
    assert set(descriptor.fields_by_number) == {1, 3, 4, 5}
    assert [(f.name, f.number) for f in descriptor.fields] == [
        ("id2", 1),
        ("creationDate", 3),
        ("expirationDate", 4),
        ("value", 5),
    ]
    assert [(f.name, f.number) for f in Record.DESCRIPTOR.fields] == [
        ("key", 1),
        ("updateDate", 2),
        ("id1", 3),
        ("values", 4),
    ]


def test_negative_dates_use_int64_varints() -> None:
    record = Record(updateDate=-1)
    assert fields(encode_record(record)) == [(2, VARINT, 2**64 - 1)]
