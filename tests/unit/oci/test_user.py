"""The container's user, resolved from the request and the image's /etc/passwd and /etc/group contents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crirt.errors import InvalidArgument
from crirt.model.container import LinuxContainerSecurityContext
from crirt.oci.user import ResolvedUser, parse_group, parse_passwd, read_image_file, resolve_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment

nginx:x:101:101:nginx user:/nonexistent:/bin/false
app:x:1000:1000::/home/app:/bin/sh
broken:x:notanumber:1::/:/bin/sh
+nisuser::::::
"""
GROUP = """root:x:0:
daemon:x:1:
nginx:x:101:
app:x:1000:
audio:x:29:app,nginx
video:x:44:app
staff:x:50: app , other
bad:x:nope:app
"""


def context(**fields: object) -> LinuxContainerSecurityContext:
    return LinuxContainerSecurityContext.model_validate(fields)


def resolve(image_user: str = "", passwd: str | None = PASSWD, group: str | None = GROUP, **fields: object):
    return resolve_user(context(**fields), image_user, passwd, group)


def test_parsers_skip_comments_nis_and_malformed_lines() -> None:
    assert [u.name for u in parse_passwd(PASSWD)] == ["root", "daemon", "nginx", "app"]
    assert parse_passwd(PASSWD)[2].uid == 101 and parse_passwd(PASSWD)[2].gid == 101
    groups = {g.name: g for g in parse_group(GROUP)}
    assert "bad" not in groups
    assert groups["audio"].members == ("app", "nginx") and groups["staff"].members == ("app", "other")


def test_no_user_anywhere_is_root_with_root_group() -> None:
    assert resolve() == ResolvedUser(uid=0, gid=0, additional_gids=(0,))
    assert resolve(passwd=None, group=None) == ResolvedUser(0, 0, (0,))


def test_image_user_forms() -> None:
    assert resolve("app") == ResolvedUser(1000, 1000, (29, 44, 50, 1000))
    assert resolve("1000") == ResolvedUser(1000, 1000, (29, 44, 50, 1000))  # numeric, found in passwd
    assert resolve("4242") == ResolvedUser(4242, 0, (0,))  # numeric, unknown: gid 0, no groups
    assert resolve("4242:4343") == ResolvedUser(4242, 4343, (4343,))
    assert resolve("app:video") == ResolvedUser(1000, 44, (29, 44, 50))
    assert resolve("nginx:7") == ResolvedUser(101, 7, (7, 29))
    assert resolve("1000:audio").gid == 29


def test_run_as_user_overrides_the_image_and_takes_gid_from_passwd() -> None:
    assert resolve("nginx", run_as_user={"value": 1000}) == ResolvedUser(1000, 1000, (29, 44, 50, 1000))
    assert resolve("nginx", run_as_user={"value": 0}) == ResolvedUser(0, 0, (0,))
    assert resolve("", run_as_user={"value": 1234}, run_as_group={"value": 5678}) == ResolvedUser(1234, 5678, (5678,))


def test_the_image_group_is_kept_when_the_kubelet_copies_the_image_user() -> None:
    # image "1001:2002"; the kubelet sends run_as_user=1001 (the group part is lost on its way)
    assert resolve("1001:2002", run_as_user={"value": 1001}) == ResolvedUser(1001, 2002, (2002,))
    assert resolve("nginx:video", run_as_username="nginx").gid == 44
    # another user: the image's group does not apply
    assert resolve("1001:2002", run_as_user={"value": 1000}).gid == 1000
    # an explicit run_as_group wins
    assert resolve("1001:2002", run_as_user={"value": 1001}, run_as_group={"value": 3}).gid == 3


def test_run_as_username_must_exist_in_the_image() -> None:
    assert resolve(run_as_username="nginx") == ResolvedUser(101, 101, (29, 101))
    with pytest.raises(InvalidArgument, match=r"config\.linux\.security_context\.run_as_username: user 'foo' "
                                              r"not found in the image's /etc/passwd"):
        resolve(run_as_username="foo")
    with pytest.raises(InvalidArgument, match="the image has no /etc/passwd"):
        resolve(run_as_username="app", passwd=None)


def test_unknown_names_in_the_image_user_are_errors_naming_it() -> None:
    with pytest.raises(InvalidArgument, match=r"image config User 'ghost': user 'ghost' not found"):
        resolve("ghost")
    with pytest.raises(InvalidArgument, match=r"image config User 'app:wheel': group 'wheel' not found"):
        resolve("app:wheel")
    with pytest.raises(InvalidArgument, match="the image has no /etc/group"):
        resolve("app:audio", group=None)


def test_run_as_group_needs_a_user_and_user_fields_are_exclusive() -> None:
    with pytest.raises(InvalidArgument, match=r"run_as_group: set without run_as_user or run_as_username"):
        resolve(run_as_group={"value": 10})
    with pytest.raises(InvalidArgument, match="both set"):
        resolve(run_as_user={"value": 1}, run_as_username="app")
    assert resolve(run_as_username="app", run_as_group={"value": 10}).gid == 10


def test_ids_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"run_as_user: -1 is not a valid id"):
        resolve(run_as_user={"value": -1})
    with pytest.raises(InvalidArgument, match=r"supplemental_groups\[1\]: 4294967295"):
        resolve(supplemental_groups=[1, 2**32 - 1])
    with pytest.raises(InvalidArgument, match="image config User '99999999999'"):
        resolve("99999999999")


def test_supplemental_groups_merge_or_strict() -> None:
    merged = resolve("app", supplemental_groups=[5000, 29])
    assert merged.additional_gids == (29, 44, 50, 1000, 5000)
    strict = resolve("app", supplemental_groups=[5000], supplemental_groups_policy=1)
    assert strict.additional_gids == (1000, 5000)  # the primary group and the request's, not /etc/group's


def test_read_image_file_stays_inside_the_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "real").mkdir()
    (rootfs / "real" / "passwd").write_text("app:x:1:1::/:/bin/sh\n")
    outside = tmp_path / "secret"
    outside.write_text("host secret\n")
    os.symlink("/real/passwd", rootfs / "etc" / "passwd")  # absolute: resolved against the rootfs
    os.symlink("../../../secret", rootfs / "etc" / "group")  # climbs above /: stays at the rootfs's /
    os.symlink("loop", rootfs / "etc" / "loop")
    assert read_image_file(rootfs, "/etc/passwd") == "app:x:1:1::/:/bin/sh\n"
    assert read_image_file(rootfs, "/etc/group") is None  # rootfs/secret does not exist; the host's is not read
    assert read_image_file(rootfs, "/etc/shadow") is None
    with pytest.raises(InvalidArgument, match="too many symbolic links"):
        read_image_file(rootfs, "/etc/loop")
    (rootfs / "secret").write_text("the image's own\n")
    assert read_image_file(rootfs, "/etc/group") == "the image's own\n"


@given(st.text(alphabet=st.sampled_from(":x0123456789abc,\n#+- "), max_size=300))
def test_parsers_never_fail_on_arbitrary_files(text: str) -> None:
    assert all(entry.uid >= 0 for entry in parse_passwd(text))
    assert all(entry.gid >= 0 for entry in parse_group(text))
    try:
        resolved = resolve(image_user="a:b", passwd=text, group=text)
    except InvalidArgument:
        return
    assert resolved.gid in resolved.additional_gids
