"""The grpclib codec crirt serves with: it passes pre-encoded bytes through untouched.

Handlers of hot RPCs build their responses from cached per-object encodings; this codec lets those bytes
reach the wire without being decoded or re-encoded. Ordinary messages (betterproto2 or protobuf, as used
by the health and reflection services) are encoded the usual way.
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.base import CodecBase


class Encoded(bytes):
    """A message that is already in protobuf wire form."""


class PassThroughCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return message.SerializeToString()  # betterproto2 and protobuf messages both provide it

    def decode(self, data: bytes, message_type: Any) -> Any:
        return message_type.FromString(data)
