"""A crirt daemon on a private bridge network, and a local registry serving a runnable busybox image (made by
``support.containers.container_env``, shared with other test directories)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
from support.containers import ContainerEnv, container_env

__all__ = ["ContainerEnv", "container_env"]  # the tests here import them from this module


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[ContainerEnv]:
    """One registry, daemon and network per module; the module checks that nothing is left running. Every stats
    call measures the writable layers anew, so the tests see what a container just wrote."""
    with container_env(tmp_path_factory.mktemp("containers"), pb, "[stats]\nfs_usage_interval = 0\n") as made:
        yield made
