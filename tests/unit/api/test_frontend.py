"""Mapping of domain errors to gRPC status codes."""

from __future__ import annotations

from grpclib.const import Status

from crirt import errors
from crirt.api.frontend import _status_of


class MissingLayer(errors.NotFound):
    """A subclass some module might define."""


def test_each_domain_error_has_its_status_and_subclasses_inherit_it() -> None:
    assert _status_of(errors.InvalidArgument("x")) is Status.INVALID_ARGUMENT
    assert _status_of(errors.AlreadyExists("x")) is Status.ALREADY_EXISTS
    assert _status_of(MissingLayer("x")) is Status.NOT_FOUND
    assert _status_of(errors.CrirtError("runtime said no")) is Status.UNKNOWN
