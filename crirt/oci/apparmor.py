"""``process.apparmorProfile``, only where the node runs AppArmor."""

from __future__ import annotations

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.model.container import LinuxContainerSecurityContext
from crirt.model.enums import SecurityProfileType

SC = "config.linux.security_context"


def apparmor_choice(context: LinuxContainerSecurityContext) -> tuple[SecurityProfileType, str]:
    """The profile type and, for Localhost, the profile's name. ``apparmor`` wins over the deprecated
    ``apparmor_profile`` (``runtime/default``, ``unconfined``, ``localhost/<name>``); neither set is
    RuntimeDefault, as the CRI defines it."""
    if context.apparmor is not None:
        kind, name = context.apparmor.profile_type, context.apparmor.localhost_ref
        field = f"{SC}.apparmor.localhost_ref"
    else:
        value, field = context.apparmor_profile, f"{SC}.apparmor_profile"
        if value in ("", "runtime/default"):
            return SecurityProfileType.RuntimeDefault, ""
        if value == "unconfined":
            return SecurityProfileType.Unconfined, ""
        if not value.startswith("localhost/"):
            raise InvalidArgument(f"{field}: {value!r} is not runtime/default, unconfined or localhost/<profile>")
        kind, name = SecurityProfileType.Localhost, value.removeprefix("localhost/")
    if kind == SecurityProfileType.Localhost and not name:
        raise InvalidArgument(f"{field}: a Localhost AppArmor profile needs a profile name")
    return kind, name


def apparmor_profile(context: LinuxContainerSecurityContext, *, enabled: bool, default: str | None) -> str | None:
    """The profile to confine the container with, None for none.

    Privileged and Unconfined containers get none. RuntimeDefault is ``default``, the profile the caller has
    loaded for the purpose (None: none is, so the container runs unconfined). Localhost is the named profile.
    Where AppArmor is off, RuntimeDefault means nothing and a Localhost profile is FAILED_PRECONDITION, as in
    containerd."""
    if context.privileged:
        return None
    kind, name = apparmor_choice(context)
    if kind == SecurityProfileType.Unconfined:
        return None
    if not enabled:
        if kind == SecurityProfileType.Localhost:
            raise FailedPrecondition(f"{SC}.apparmor: AppArmor is not enabled on this node, cannot apply the "
                                     f"profile {name!r}")
        return None
    return name if kind == SecurityProfileType.Localhost else default
