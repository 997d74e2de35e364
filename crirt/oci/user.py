"""Who a container's first process runs as: uid, gid and supplementary groups.

Resolved from the request (``run_as_user``, ``run_as_username``, ``run_as_group``, ``supplemental_groups`` and
their policy) and the image's ``User`` against the CONTENTS of the image's ``/etc/passwd`` and ``/etc/group``,
so the resolution is a pure function; ``read_image_file`` reads those files from a rootfs without letting a
symlink in the image lead outside it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from crirt.errors import InvalidArgument
from crirt.model.container import LinuxContainerSecurityContext
from crirt.model.enums import SupplementalGroupsPolicy

SC = "config.linux.security_context"
NUMERIC = re.compile(r"^[0-9]+$")
MAX_ID = 2**32 - 2
"""The largest usable uid/gid: (uid_t)-1 means "no change" to the kernel."""
MAX_SYMLINKS = 40
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PasswdEntry:
    """One line of /etc/passwd: what resolution needs of it."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    """One line of /etc/group."""

    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedUser:
    """The OCI ``process.user``: ``additional_gids`` is sorted and includes the primary gid (as containerd's,
    so ``id -G`` shows it)."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]


def _fields(text: str, count: int) -> list[list[str]]:
    """The colon-separated lines with at least ``count`` fields; comments, blanks and NIS lines skipped."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", "+", "-")):
            continue
        parts = line.split(":")
        if len(parts) >= count:
            rows.append(parts)
    return rows


def parse_passwd(text: str) -> list[PasswdEntry]:
    """The well-formed entries of an /etc/passwd; malformed lines are ignored, as libc does."""
    return [PasswdEntry(p[0], int(p[2]), int(p[3])) for p in _fields(text, 7)
            if NUMERIC.match(p[2]) and NUMERIC.match(p[3])]


def parse_group(text: str) -> list[GroupEntry]:
    """The well-formed entries of an /etc/group."""
    return [GroupEntry(p[0], int(p[2]), tuple(m.strip() for m in p[3].split(",") if m.strip()))
            for p in _fields(text, 4) if NUMERIC.match(p[2])]


def _check_id(value: int, field: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{field}: {value} is not a valid id (0 to {MAX_ID})")
    return value


def _missing(kind: str, name: str, field: str, file: str, present: bool) -> InvalidArgument:
    why = f"not found in the image's {file}" if present else f"not found: the image has no {file}"
    return InvalidArgument(f"{field}: {kind} {name!r} {why}")


def resolve_user(
    context: LinuxContainerSecurityContext | None,
    image_user: str,
    passwd: str | None,
    group: str | None,
) -> ResolvedUser:
    """Resolve the container's user (containerd's rules, ``docker run --user`` forms).

    The request wins over the image: ``run_as_username`` (must exist in the image's passwd) or ``run_as_user``
    (any uid), with ``run_as_group`` if given. Otherwise the image's ``User``: ``""`` (root), ``name``, ``uid``,
    ``uid:gid``, ``name:group`` and mixes. Without a group the primary gid comes from the user's passwd entry
    (0 when a numeric uid has none). The kubelet copies the image's user into ``run_as_user``/``run_as_username``
    when the pod sets none, dropping its group part, so when the requested user is the image's own, the image's
    group is kept. ``passwd``/``group`` are the file contents, None when the image has no such file.

    Supplementary groups: the primary gid, the groups of /etc/group listing the user as a member (policy Merge
    only), and ``supplemental_groups``."""
    ctx = context or LinuxContainerSecurityContext()
    uid_asked = ctx.run_as_user.value if ctx.run_as_user is not None else None
    gid_asked = ctx.run_as_group.value if ctx.run_as_group is not None else None
    if uid_asked is not None and ctx.run_as_username:
        raise InvalidArgument(f"{SC}: run_as_user and run_as_username are both set; give only one")
    if gid_asked is not None and uid_asked is None and not ctx.run_as_username:
        raise InvalidArgument(f"{SC}.run_as_group: set without run_as_user or run_as_username")
    users = parse_passwd(passwd) if passwd is not None else []
    groups = parse_group(group) if group is not None else []

    image_user_part, _, image_group_part = image_user.partition(":")
    image_field = f"image config User {image_user!r}"
    if uid_asked is not None:
        user_part, user_field = str(_check_id(uid_asked, f"{SC}.run_as_user")), f"{SC}.run_as_user"
    elif ctx.run_as_username:
        user_part, user_field = ctx.run_as_username, f"{SC}.run_as_username"
    else:
        user_part, user_field = image_user_part, image_field
    if gid_asked is not None:
        group_part, group_field = str(_check_id(gid_asked, f"{SC}.run_as_group")), f"{SC}.run_as_group"
    elif user_part == image_user_part:
        group_part, group_field = image_group_part, image_field
    else:
        group_part, group_field = "", image_field

    entry: PasswdEntry | None
    if NUMERIC.match(user_part or "0"):
        uid = _check_id(int(user_part or "0"), user_field)
        entry = next((u for u in users if u.uid == uid), None)
    else:
        entry = next((u for u in users if u.name == user_part), None)
        if entry is None:
            raise _missing("user", user_part, user_field, "/etc/passwd", passwd is not None)
        uid = entry.uid
    if not group_part:
        gid = entry.gid if entry else 0
    elif NUMERIC.match(group_part):
        gid = _check_id(int(group_part), group_field)
    else:
        found = next((g for g in groups if g.name == group_part), None)
        if found is None:
            raise _missing("group", group_part, group_field, "/etc/group", group is not None)
        gid = found.gid

    gids = {gid}
    if ctx.supplemental_groups_policy == SupplementalGroupsPolicy.Merge and entry is not None:
        gids.update(g.gid for g in groups if entry.name in g.members)
    for index, extra in enumerate(ctx.supplemental_groups):
        gids.add(_check_id(extra, f"{SC}.supplemental_groups[{index}]"))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=tuple(sorted(gids)))


def read_image_file(rootfs: Path, path: str) -> str | None:
    """The text of ``path`` (e.g. ``/etc/passwd``) inside ``rootfs``, None when it does not exist.

    Symlinks are followed as the container would see them: an absolute target and any ``..`` resolve against
    the rootfs, never above it (an image is untrusted input). Files over 4 MiB are refused."""
    current = ""
    pending = [p for p in path.split("/") if p]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            current = current.rsplit("/", 1)[0]
            continue
        candidate = f"{current}/{part}"
        host = Path(str(rootfs) + candidate)
        if host.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise InvalidArgument(f"image file {path}: too many symbolic links")
            target = os.readlink(host)
            if target.startswith("/"):
                current = ""
            pending = [p for p in target.split("/") if p] + pending
            continue
        current = candidate
    host = Path(str(rootfs) + current)
    if not host.is_file():
        return None
    if host.stat().st_size > MAX_FILE_BYTES:
        raise InvalidArgument(f"image file {path}: larger than {MAX_FILE_BYTES} bytes")
    return host.read_bytes().decode("utf-8", errors="replace")
