"""Filter rules shared by the listing RPCs, as containerd and CRI-O apply them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

STREAM_BATCH = 500
"""Items per message of the Stream* RPCs: well under the 16 MiB limit for any realistic object."""


def id_matches(wanted: str, actual: str) -> bool:
    """An id filter matches the full id or a prefix of it (crictl passes truncated ids)."""
    return not wanted or actual.startswith(wanted)


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every key of the selector must be present with the same value."""
    return all(labels.get(key) == value for key, value in selector.items())


def batches(items: Sequence[T], size: int = STREAM_BATCH) -> Iterator[Sequence[T]]:
    """Split items into lists of at most ``size`` (at least one list, possibly empty: the CRI wants one)."""
    if not items:
        yield items
    for start in range(0, len(items), size):
        yield items[start : start + size]
