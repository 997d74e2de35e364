"""Constrained scalar and container types shared by every CRI mirror model.

Integers are checked against the exact range of their proto type, so a value that
could not be put on the wire is rejected as soon as a model is built. Strings, bytes,
lists and maps are bounded so a hostile request cannot make the runtime hold
arbitrarily large structures.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import Field, StringConstraints

MAX_TEXT_CHARS = 1024 * 1024
MAX_BYTES = 16 * 1024 * 1024
MAX_ITEMS = 100_000
MAX_ID_CHARS = 1024

Int32 = Annotated[int, Field(strict=True, ge=-(2**31), le=2**31 - 1)]
UInt32 = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]
Int64 = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
UInt64 = Annotated[int, Field(strict=True, ge=0, le=2**64 - 1)]
Double = Annotated[float, Field(strict=True)]

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
Bytes = Annotated[bytes, Field(max_length=MAX_BYTES)]
RequiredId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\s\x00]+$")]
"""An identifier an RPC cannot do without: non-empty, no whitespace or NUL."""

T = TypeVar("T")

BoundedList = Annotated[list[T], Field(max_length=MAX_ITEMS)]
StrMap = Annotated[dict[Text, Text], Field(max_length=MAX_ITEMS)]
