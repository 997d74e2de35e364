"""Protobuf wire encoding straight from crirt's pydantic results, without building betterproto messages first.

The generated classes are kept as the schema: each message class's field numbers and types (betterproto2's
metadata) become a small encoding plan, cached per class, that reads the same-named attributes of a model and
writes the wire format (proto3: default values are left out, repeated numbers are packed, a set message field
is written even when empty). Building the betterproto objects and serializing them cost about ten times as
much, which showed as event-loop stalls of 100 ms and more on a node's ListPodSandboxStats.
"""

from __future__ import annotations

import struct
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

import betterproto2

from crirt.api.convert import field_types

Writer = Callable[[bytearray, Any], None]


def _unwrap(hint: Any) -> Any:
    """``X`` of a type hint ``X | None``; the hint itself otherwise."""
    if typing.get_origin(hint) is types.UnionType:
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not types.NoneType]
        return inner
    return hint

VARINT, FIXED64, LENGTH = 0, 1, 2
_DOUBLE = struct.Struct("<d")


def _varint(out: bytearray, value: int) -> None:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives: ten bytes of two's complement
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _key(number: int, wire_type: int) -> bytes:
    out = bytearray()
    _varint(out, number << 3 | wire_type)
    return bytes(out)


def _length_delimited(out: bytearray, key: bytes, body: bytes | bytearray) -> None:
    out += key
    _varint(out, len(body))
    out += body


def _scalar_writer(proto_type: str, key_of: Callable[[int], bytes], number: int) -> Writer:
    """Writes one non-default scalar value of ``proto_type``."""
    if proto_type in ("int32", "int64", "uint32", "uint64", "enum"):
        key = key_of(VARINT)

        def write_int(out: bytearray, value: Any) -> None:
            if value:
                out += key
                _varint(out, int(value))
        return write_int
    if proto_type == "bool":
        key = key_of(VARINT)

        def write_bool(out: bytearray, value: Any) -> None:
            if value:
                out += key
                out.append(1)
        return write_bool
    if proto_type == "string":
        key = key_of(LENGTH)

        def write_string(out: bytearray, value: Any) -> None:
            if value:
                _length_delimited(out, key, value.encode())
        return write_string
    if proto_type == "bytes":
        key = key_of(LENGTH)

        def write_bytes(out: bytearray, value: Any) -> None:
            if value:
                _length_delimited(out, key, value)
        return write_bytes
    if proto_type == "double":
        key = key_of(FIXED64)

        def write_double(out: bytearray, value: Any) -> None:
            if value:
                out += key
                out += _DOUBLE.pack(value)
        return write_double
    raise TypeError(f"field {number}: protobuf type {proto_type!r} has no encoder")


def _field_writer(meta: Any, hint: Any) -> Writer:
    """Writes one field (all its values, for a repeated or map field) given the model's attribute value."""
    number = meta.number

    def key_of(wire_type: int) -> bytes:
        return _key(number, wire_type)

    if meta.proto_type == "map":
        key_meta, value_meta = meta.map_meta
        if (key_meta.proto_type, value_meta.proto_type) != ("string", "string"):
            raise TypeError(f"field {number}: only map<string, string> has an encoder (the CRI has no other)")
        entry_key, key_key, value_key = key_of(LENGTH), _key(1, LENGTH), _key(2, LENGTH)

        def write_map(out: bytearray, value: Any) -> None:
            for k, v in (value or {}).items():
                entry = bytearray()  # key and value are written even when empty, as Go and betterproto do
                _length_delimited(entry, key_key, k.encode())
                _length_delimited(entry, value_key, v.encode())
                _length_delimited(out, entry_key, entry)
        return write_map
    if meta.proto_type == "message":
        item_hint = typing.get_args(_unwrap(hint))[0] if meta.repeated else _unwrap(hint)
        write_message = _message_writer(number, item_hint)
        if not meta.repeated:
            return write_message

        def write_messages(out: bytearray, value: Any) -> None:
            for item in value or ():
                write_message(out, item)
        return write_messages
    if meta.repeated and meta.proto_type in ("string", "bytes"):
        key = key_of(LENGTH)

        def write_strings(out: bytearray, value: Any) -> None:
            for item in value or ():  # written even when empty: a repeated element has no default
                _length_delimited(out, key, item.encode() if isinstance(item, str) else item)
        return write_strings
    if meta.repeated:  # proto3 packs repeated numbers
        key = key_of(LENGTH)

        def write_packed(out: bytearray, value: Any) -> None:
            if value:
                body = bytearray()
                for item in value:
                    _varint(body, int(item))
                _length_delimited(out, key, body)
        return write_packed
    return _scalar_writer(meta.proto_type, key_of, number)


def _message_writer(number: int, message_type: Any) -> Writer:
    """Writes a (non-None) nested message as field ``number``."""
    key = _key(number, LENGTH)

    def write(out: bytearray, value: Any) -> None:
        if value is not None:
            _length_delimited(out, key, encode(value, message_type))
    return write


@cache
def _plan(message_type: type[betterproto2.Message]) -> tuple[tuple[str, Writer], ...]:
    """(attribute name, writer) of every field of ``message_type``, in field-number order."""
    metas = message_type._betterproto.meta_by_field_name  # type: ignore[attr-defined]
    hints = field_types(message_type)
    ordered = sorted(metas.items(), key=lambda item: item[1].number)
    return tuple((name, _field_writer(meta, hints[name])) for name, meta in ordered)


def encode(model: Any, message_type: type[betterproto2.Message]) -> bytes:
    """The wire bytes of ``message_type`` with the values of ``model``'s same-named attributes."""
    out = bytearray()
    for name, write in _plan(message_type):
        write(out, getattr(model, name))
    return bytes(out)
