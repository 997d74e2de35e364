"""AppArmor: only where the node runs it."""

from __future__ import annotations

from typing import Any

import pytest

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.model.container import LinuxContainerSecurityContext
from crirt.oci.apparmor import apparmor_profile


def profile(enabled: bool = True, default: str | None = "crirt-default", **fields: Any) -> str | None:
    return apparmor_profile(LinuxContainerSecurityContext.model_validate(fields), enabled=enabled, default=default)


def test_with_apparmor() -> None:
    assert profile() == "crirt-default"  # nothing said: RuntimeDefault
    assert profile(apparmor={"profile_type": 0}) == "crirt-default"
    assert profile(apparmor={"profile_type": 1}) is None
    assert profile(apparmor={"profile_type": 2, "localhost_ref": "my-profile"}) == "my-profile"
    assert profile(apparmor_profile="localhost/k8s-nginx") == "k8s-nginx"
    assert profile(apparmor_profile="unconfined") is None
    assert profile(privileged=True, apparmor={"profile_type": 2, "localhost_ref": "p"}) is None
    assert profile(default=None) is None


def test_without_apparmor() -> None:
    assert profile(enabled=False) is None
    assert profile(enabled=False, apparmor={"profile_type": 1}) is None
    with pytest.raises(FailedPrecondition, match="AppArmor is not enabled on this node, cannot apply the profile 'p'"):
        profile(enabled=False, apparmor={"profile_type": 2, "localhost_ref": "p"})


def test_bad_requests() -> None:
    with pytest.raises(InvalidArgument, match=r"apparmor\.localhost_ref: a Localhost AppArmor profile needs"):
        profile(apparmor={"profile_type": 2})
    with pytest.raises(InvalidArgument, match=r"apparmor_profile: 'p' is not runtime/default"):
        profile(apparmor_profile="p")
