"""Generic conversion between betterproto2 CRI messages and the pydantic commands/results.

Both sides use the proto field names, so conversion walks the fields by name: a request
becomes plain Python data validated into its command, and a result is rebuilt into the
response message, finding each nested message or enum class from the generated type hints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import IntEnum
from functools import cache
from typing import Any, TypeVar

import betterproto2
from pydantic import BaseModel, ValidationError

from crirt.model.base import Model

T = TypeVar("T", bound=Model)
M = TypeVar("M", bound=betterproto2.Message)

MAX_ERRORS_SHOWN = 5
MAX_PATH_PART_CHARS = 64


def _to_plain(message: betterproto2.Message) -> dict[str, Any]:
    """Turn a message into a dict of plain Python values, keyed by proto field name.

    Unset message fields are left out instead of passed as None: the model default (None)
    applies to optional ones, and a required one is reported as "Field required".
    """
    values = {field.name: getattr(message, field.name) for field in dataclasses.fields(message)}
    return {name: _plain_value(value) for name, value in values.items() if value is not None}


def _plain_value(value: Any) -> Any:
    """Turn one field value into plain Python: messages to dicts, enums to ints, containers copied."""
    if isinstance(value, betterproto2.Message):
        return _to_plain(value)
    if isinstance(value, IntEnum):
        return int(value)
    if isinstance(value, list):
        return [_plain_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain_value(item) for key, item in value.items()}
    return value


def to_command(message: betterproto2.Message, command_type: type[T]) -> T:
    """Validate a request message into its command (or any message into its mirror model).

    Raises pydantic's ValidationError when the message breaks the model's constraints.
    """
    return command_type.model_validate(_to_plain(message))


@cache
def field_types(message_type: type[betterproto2.Message]) -> dict[str, Any]:
    """The resolved type hint of every field of a generated message class."""
    hints = typing.get_type_hints(message_type)
    return {field.name: hints[field.name] for field in dataclasses.fields(message_type)}


def _message_value(value: Any, hint: Any) -> Any:
    """Turn one model field value into what the message field of type ``hint`` holds."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        return [_message_value(item, item_hint) for item in value]
    if origin is dict:
        _, item_hint = typing.get_args(hint)
        return {key: _message_value(item, item_hint) for key, item in value.items()}
    if origin is types.UnionType:
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not types.NoneType]
        return _message_value(value, inner)
    if isinstance(hint, type) and issubclass(hint, betterproto2.Message):
        return to_message(value, hint)
    if isinstance(hint, type) and issubclass(hint, betterproto2.Enum):
        return hint(int(value))
    return value


def to_message(model: BaseModel, message_type: type[M]) -> M:
    """Build a message of ``message_type`` from a model with the same field names."""
    return message_type(
        **{
            name: _message_value(getattr(model, name), hint)
            for name, hint in field_types(message_type).items()
        }
    )


def describe_validation_error(exc: ValidationError) -> str:
    """Summarize a validation error on one short line, e.g. ``config.metadata.name: Field required``.

    Only the first few errors are spelled out, and long path parts (map keys) are cut, so a
    hostile request cannot turn the error message into a copy of itself.
    """
    errors = exc.errors(include_url=False, include_input=False)
    parts = [
        f"{_location(error['loc'])}: {error['msg']}" if error["loc"] else error["msg"]
        for error in errors[:MAX_ERRORS_SHOWN]
    ]
    if len(errors) > MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more")
    return "; ".join(parts)


def _location(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a dotted field path, list indexes in brackets."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("["):
            path += part
        else:
            name = part if len(part) <= MAX_PATH_PART_CHARS else part[: MAX_PATH_PART_CHARS - 3] + "..."
            path += f".{name}" if path else name
    return path
