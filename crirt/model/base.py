"""The base of every pydantic model crirt's core exchanges: CRI mirrors, commands, results, records."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Immutable and strict about unknown keys; a changed object is a new object (see crirt.store)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
