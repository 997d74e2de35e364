"""Response encoding for the hot listing RPCs, which the kubelet calls every second.

A listing response is one repeated message field, and protobuf lets such a message be written as the
concatenation of its encoded items. Each item's encoding is cached, keyed by its id and checked by object
identity: the store hands out the same object until the record changes, so only changed objects are ever
re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crirt._gen.runtime.v1 import (
    Container,
    ListContainersResponse,
    ListPodSandboxResponse,
    PodSandbox,
    StreamContainersResponse,
    StreamPodSandboxesResponse,
)
from crirt.api.frontend import ResponseEncoder
from crirt.api.protoenc import encode
from crirt.commands.base import Result
from crirt.model.base import Model


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class CachedListEncoder:
    """Encodes a response whose only field is ``repeated Item <field> = N`` from cached item bytes."""

    def __init__(self, response_type: type, field: str, item_type: type) -> None:
        number = response_type._betterproto.meta_by_field_name[field].number  # type: ignore[attr-defined]
        self._tag = _varint(number << 3 | 2)
        self._field = field
        self._item_type = item_type
        self._cache: dict[str, tuple[Model, bytes]] = {}

    def __call__(self, result: Result) -> bytes:
        items: Sequence[Any] = getattr(result, self._field)
        cache = self._cache
        parts = []
        for item in items:
            hit = cache.get(item.id)
            if hit is None or hit[0] is not item:
                body = encode(item, self._item_type)
                hit = (item, self._tag + _varint(len(body)) + body)
                cache[item.id] = hit
            parts.append(hit[1])
        if len(cache) > 2 * len(items) + 64:  # forget removed objects now and then, not on every call
            live = {item.id for item in items}
            for key in [k for k in cache if k not in live]:
                del cache[key]
        return b"".join(parts)


def hot_path_encoders() -> dict[str, ResponseEncoder]:
    """Encoders for the RPCs that list containers and pod sandboxes."""
    return {
        "ListContainers": CachedListEncoder(ListContainersResponse, "containers", Container),
        "StreamContainers": CachedListEncoder(StreamContainersResponse, "containers", Container),
        "ListPodSandbox": CachedListEncoder(ListPodSandboxResponse, "items", PodSandbox),
        "StreamPodSandboxes": CachedListEncoder(StreamPodSandboxesResponse, "pod_sandboxes", PodSandbox),
    }
