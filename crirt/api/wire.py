"""A strict check of protobuf wire bytes against a betterproto2 message class, run before decoding.

betterproto2's pure-Python decoder accepts some malformed input (a length that runs past the end, invalid
UTF-8 in some paths, wire types that do not match the field). This walks the bytes once and rejects
anything a conforming protobuf parser would, naming the field path, so the client gets INVALID_ARGUMENT.
"""

from __future__ import annotations

from functools import cache

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
MAX_DEPTH = 64

_SCALAR_WIRE: dict[str, int] = {
    **dict.fromkeys(("int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "enum"), VARINT),
    **dict.fromkeys(("fixed64", "sfixed64", "double"), I64),
    **dict.fromkeys(("fixed32", "sfixed32", "float"), I32),
    **dict.fromkeys(("string", "bytes", "message", "map"), LEN),
}


class WireError(ValueError):
    """Bytes that are not a valid encoding of the expected message; ``field`` is the dotted path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field or 'message'}: {reason}")
        self.field = field
        self.reason = reason


@cache
def _fields(cls: type) -> dict[int, tuple[str, str, bool, type | None]]:
    """number -> (name, proto_type, repeated, nested message class or None) for a betterproto2 class."""
    meta = cls._betterproto  # type: ignore[attr-defined]
    table: dict[int, tuple[str, str, bool, type | None]] = {}
    for name, fm in meta.meta_by_field_name.items():
        nested = meta.cls_by_field.get(name) if fm.proto_type in ("message", "map") else None
        table[fm.number] = (name, fm.proto_type, fm.repeated or fm.proto_type == "map", nested)
    return table


def _varint(data: memoryview, pos: int, end: int, where: str) -> tuple[int, int]:
    result = shift = 0
    for i in range(10):
        if pos >= end:
            raise WireError(where, "truncated varint")
        byte = data[pos]
        pos += 1
        if i == 9 and byte > 1:
            raise WireError(where, "varint longer than 64 bits")
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise WireError(where, "varint longer than 10 bytes")


def check_message(data: bytes | memoryview, cls: type, path: str = "", depth: int = 0) -> None:
    """Raise WireError unless ``data`` is a well-formed encoding of message class ``cls``."""
    if depth > MAX_DEPTH:
        raise WireError(path, f"messages nested deeper than {MAX_DEPTH}")
    view = data if isinstance(data, memoryview) else memoryview(data)
    _check_range(view, 0, len(view), cls, path, depth)


def _check_range(view: memoryview, pos: int, end: int, cls: type, path: str, depth: int) -> None:
    fields = _fields(cls)
    while pos < end:
        tag, pos = _varint(view, pos, end, path)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise WireError(path, "field number 0 is not allowed")
        name, proto_type, repeated, nested = fields.get(number, (f"<unknown field {number}>", "", False, None))
        where = f"{path}.{name}" if path else name
        if wire == VARINT:
            _, pos = _varint(view, pos, end, where)
        elif wire in (I64, I32):
            pos += 8 if wire == I64 else 4
            if pos > end:
                raise WireError(where, "truncated fixed-width value")
        elif wire == LEN:
            length, pos = _varint(view, pos, end, where)
            if length > end - pos:
                raise WireError(where, f"length {length} runs past the end of the message")
            body = view[pos : pos + length]
            pos += length
            if proto_type:
                _check_len_field(body, proto_type, repeated, nested, where, depth)
            continue
        else:
            raise WireError(where, f"wire type {wire} is not used by proto3")
        if proto_type and _SCALAR_WIRE[proto_type] != wire:
            raise WireError(where, f"wire type {wire} does not match field type {proto_type}")


def _check_len_field(body: memoryview, proto_type: str, repeated: bool, nested: type | None,
                     where: str, depth: int) -> None:
    if proto_type == "string":
        try:
            str(body, "utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(where, f"invalid UTF-8 at byte {exc.start}") from None
    elif proto_type in ("message", "map"):
        assert nested is not None
        check_message(body, nested, where, depth + 1)
    elif proto_type != "bytes":
        if not repeated:
            raise WireError(where, f"wire type 2 does not match field type {proto_type}")
        _check_packed(body, proto_type, where)


def _check_packed(body: memoryview, proto_type: str, where: str) -> None:
    wire = _SCALAR_WIRE[proto_type]
    if wire == VARINT:
        pos = 0
        while pos < len(body):
            _, pos = _varint(body, pos, len(body), where)
    elif len(body) % (8 if wire == I64 else 4):
        raise WireError(where, "packed fixed-width values of the wrong total length")
