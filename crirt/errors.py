"""Domain errors. Handlers raise these; the gRPC front end maps each class to its status code."""

from __future__ import annotations


class CrirtError(Exception):
    """Base of errors whose message is meant for the client."""


class InvalidArgument(CrirtError):
    """The request is malformed or names something in a way crirt cannot accept."""


class NotFound(CrirtError):
    """The request names an object that does not exist."""


class AlreadyExists(CrirtError):
    """The request would create an object whose name or id is taken."""


class FailedPrecondition(CrirtError):
    """The object exists but is not in a state that allows the request."""


class ResourceExhausted(CrirtError):
    """A size or count limit was hit."""


class Unimplemented(CrirtError):
    """crirt does not (yet) implement this request."""


class Unavailable(CrirtError):
    """crirt cannot serve the request right now (e.g. it is shutting down)."""


class DeadlineExceeded(CrirtError):
    """An operation with its own time limit (such as ExecSync's timeout) ran out of time."""
