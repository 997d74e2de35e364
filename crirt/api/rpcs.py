"""The table of CRI RPCs, read from the generated service bases: path, name, shape and message types."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from grpclib.const import Cardinality

from crirt._gen.runtime.v1 import ImageServiceBase, RuntimeServiceBase


@dataclass(frozen=True)
class Rpc:
    """One CRI RPC as the generated bindings declare it."""

    path: str
    service: str
    name: str
    streaming: bool
    request_type: type
    response_type: type


@cache
def cri_rpcs() -> tuple[Rpc, ...]:
    """Every RPC of RuntimeService and ImageService (41 in runtime.v1)."""
    rpcs = []
    for base in (RuntimeServiceBase, ImageServiceBase):
        for path, handler in base().__mapping__().items():
            service, name = path.lstrip("/").split("/")
            rpcs.append(Rpc(
                path=path,
                service=service.rsplit(".", 1)[1],
                name=name,
                streaming=handler.cardinality is Cardinality.UNARY_STREAM,
                request_type=handler.request_type,
                response_type=handler.reply_type,
            ))
    return tuple(rpcs)
