"""crirt's log output: plain text or one JSON object a line, each record tagged with the RPC it belongs to.

The front end starts every CRI call with ``start_request`` (a short random request id and the RPC name) and
``bind``s the ids the call names (pod, container, image); a handler binds the ids it creates (RunPodSandbox's
new pod id). The values live in a context variable, so everything logged while serving the call carries them,
including background tasks the call spawns (asyncio copies the context into each task). A filter on crirt's
handler stamps them on each record; the formatters print them.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from crirt.commands.base import Command
from crirt.model.common import ImageSpec

LogFormat = Literal["text", "json"]
CONTEXT_KEYS = ("request_id", "rpc", "pod", "container", "image")
"""The context fields, in the order they are printed."""
TEXT_ID_LENGTH = 12
"""Pod and container ids are cut to this many characters in text logs (JSON logs keep them whole)."""
CHATTY_LOGGERS = ("hpack", "h2")
"""Libraries whose debug output is per-frame noise: never below info."""

_context: ContextVar[Mapping[str, str]] = ContextVar("crirt_log_context",
                                                   default=MappingProxyType({}))


def start_request(rpc: str) -> str:
    """Begin the log context of one CRI call in the current task; returns its new request id."""
    request_id = secrets.token_hex(4)
    _context.set({"request_id": request_id, "rpc": rpc})
    return request_id


def bind(**ids: str) -> None:
    """Add ids (``pod``, ``container``, ``image``) to the current log context; empty values are ignored."""
    _context.set({**_context.get(), **{key: value for key, value in ids.items() if value}})


def context() -> Mapping[str, str]:
    """The log context of the current task (empty outside a CRI call)."""
    return _context.get()


def ids_of(command: Command) -> dict[str, str]:
    """The pod, container and image a command names, from its CRI fields (``pod_sandbox_id``,
    ``container_id``, an ``image`` spec of its own or of its container ``config``)."""
    ids = {"pod": getattr(command, "pod_sandbox_id", ""), "container": getattr(command, "container_id", "")}
    spec = getattr(command, "image", None) or getattr(getattr(command, "config", None), "image", None)
    if isinstance(spec, ImageSpec):
        ids["image"] = spec.image
    return {key: value for key, value in ids.items() if isinstance(value, str) and value}


class ContextFilter(logging.Filter):
    """Stamps the current log context on each record (``record.crirt``), so formatters need no context."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.crirt = dict(_context.get())
        return True


def _fields(record: logging.LogRecord) -> Mapping[str, str]:
    return getattr(record, "crirt", None) or {}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [req=… rpc pod=… container=… image=…]: message``; the brackets only within a call."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(crirt_tags)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        tags = []
        for key in CONTEXT_KEYS:
            value = fields.get(key)
            if value is None:
                continue
            if key == "request_id":
                tags.append(f"req={value}")
            elif key == "rpc":
                tags.append(value)
            else:
                tags.append(f"{key}={value[:TEXT_ID_LENGTH] if key != 'image' else value}")
        record.crirt_tags = f" [{' '.join(tags)}]" if tags else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message, the context fields that are
    set, and ``error`` (the traceback) when the record carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = _fields(record)
        entry.update((key, fields[key]) for key in CONTEXT_KEYS if key in fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _CrirtHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """crirt's own stderr handler, told apart from others (pytest's) so ``configure`` can redo it."""


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter of ``log_format``."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: LogFormat) -> None:
    """Log to stderr at ``level`` in ``log_format``; called at start and again on each reload."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _CrirtHandler)), None)
    if handler is None:
        handler = _CrirtHandler(sys.stderr)
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    handler.setFormatter(formatter(log_format))
    root.setLevel(level.upper())
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(max(logging.INFO, root.level))
