"""argv, environment, working directory and capabilities of a container's process."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.model.container import ContainerConfig, LinuxContainerSecurityContext
from crirt.oci.process import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    capabilities,
    capability_names,
    process_args,
    process_env,
    working_dir,
)

HELD = frozenset(ALL_CAPABILITIES) - {"CAP_SYS_RESOURCE"}  # what crirt holds on the test machine's kind of node


def config(**fields: Any) -> ContainerConfig:
    return ContainerConfig.model_validate({"metadata": {"name": "c"}, **fields})


IMAGE = {"Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx", "-g", "daemon off;"]}


@pytest.mark.parametrize(("fields", "image", "argv"), [
    ({}, IMAGE, ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]),
    ({"args": ["sh"]}, IMAGE, ["/docker-entrypoint.sh", "sh"]),  # args replace Cmd
    ({"command": ["/bin/sh"]}, IMAGE, ["/bin/sh"]),  # command replaces Entrypoint, and Cmd is ignored
    ({"command": ["/bin/sh"], "args": ["-c", "true"]}, IMAGE, ["/bin/sh", "-c", "true"]),
    ({}, {"Cmd": ["sh"]}, ["sh"]),
    ({}, {"Entrypoint": [""], "Cmd": ["sh"]}, ["sh"]),  # ENTRYPOINT [""] means none
    ({"args": ["x"]}, {"Entrypoint": None, "Cmd": None}, ["x"]),
])
def test_argv_follows_the_cri_rules(fields: dict[str, Any], image: dict[str, Any], argv: list[str]) -> None:
    assert process_args(config(**fields), image) == argv


def test_argv_errors() -> None:
    with pytest.raises(InvalidArgument, match=r"config\.command: no command given"):
        process_args(config(), {})
    with pytest.raises(InvalidArgument, match=r"config\.args\[1\]: contains a NUL"):
        process_args(config(args=["a", "b\x00"]), {})


def test_env_merges_path_hostname_image_and_request_in_place() -> None:
    image = {"Env": ["PATH=/opt/bin:/usr/bin", "LANG=C", "NGINX_VERSION=1.25"]}
    envs = [{"key": "LANG", "value": b"en_US.UTF-8"}, {"key": "FOO", "value": "bär".encode()},
            {"key": "EMPTY", "value": b""}]
    env = process_env(config(envs=envs), image, "web-0")
    assert env == ["PATH=/opt/bin:/usr/bin", "HOSTNAME=web-0", "LANG=en_US.UTF-8", "NGINX_VERSION=1.25",
                   "FOO=bär", "EMPTY="]


def test_env_defaults_and_errors() -> None:
    assert process_env(config(), {}, "") == [DEFAULT_PATH]
    assert process_env(config(envs=[{"key": "PATH", "value": b"/x"}]), {}, "h") == ["PATH=/x", "HOSTNAME=h"]
    with pytest.raises(InvalidArgument, match=r"config\.envs\[0\]\.key: 'A=B'"):
        process_env(config(envs=[{"key": "A=B", "value": b""}]), {}, "")
    with pytest.raises(InvalidArgument, match=r"config\.envs\[0\]\.key: ''"):
        process_env(config(envs=[{"key": "", "value": b"x"}]), {}, "")
    with pytest.raises(InvalidArgument, match=r"config\.envs\[1\]\.value: BIN is not valid UTF-8"):
        process_env(config(envs=[{"key": "OK", "value": b"1"}, {"key": "BIN", "value": b"\xff"}]), {}, "")


def test_working_dir() -> None:
    assert working_dir(config(), {}) == "/"
    assert working_dir(config(), {"WorkingDir": "/usr/share/nginx"}) == "/usr/share/nginx"
    assert working_dir(config(working_dir="/data"), {"WorkingDir": "/app"}) == "/data"
    with pytest.raises(InvalidArgument, match=r"config\.working_dir: 'data' is not an absolute path"):
        working_dir(config(working_dir="data"), {})
    with pytest.raises(InvalidArgument, match="image config WorkingDir: 'app'"):
        working_dir(config(), {"WorkingDir": "app"})


def caps(held: frozenset[str] = HELD, **fields: Any) -> dict[str, list[str]]:
    return capabilities(LinuxContainerSecurityContext.model_validate(fields), held)


def test_capability_mask_decoding() -> None:
    assert capability_names(0x000001FFFEFFFFFF) == HELD  # CapEff of root without CAP_SYS_RESOURCE
    assert capability_names(1 << 21) == {"CAP_SYS_ADMIN"}
    assert capability_names(1 << 63) == frozenset()


def test_default_capabilities_are_dockers_14() -> None:
    sets = caps()
    assert len(DEFAULT_CAPABILITIES) == 14
    assert set(sets["bounding"]) == DEFAULT_CAPABILITIES
    assert sets["bounding"] == sets["effective"] == sets["permitted"]
    assert sets["inheritable"] == [] and sets["ambient"] == []
    assert sets["bounding"][0] == "CAP_CHOWN"  # ordered by number
    assert "CAP_MKNOD" not in caps(held=HELD - {"CAP_MKNOD"})["bounding"]  # a default crirt lacks is left out


def test_add_and_drop_with_or_without_prefix_and_case() -> None:
    sets = caps(capabilities={"add_capabilities": ["net_admin", "CAP_SYS_TIME"], "drop_capabilities": ["MKNOD"]})
    assert {"CAP_NET_ADMIN", "CAP_SYS_TIME"} <= set(sets["bounding"])
    assert "CAP_MKNOD" not in sets["bounding"] and sets["inheritable"] == []


def test_all_in_add_or_drop() -> None:
    assert set(caps(capabilities={"add_capabilities": ["ALL"]})["bounding"]) == HELD
    everything_but = caps(capabilities={"add_capabilities": ["all"], "drop_capabilities": ["CHOWN"]})
    assert set(everything_but["bounding"]) == HELD - {"CAP_CHOWN"}
    only = caps(capabilities={"add_capabilities": ["NET_BIND_SERVICE"], "drop_capabilities": ["ALL"]})
    assert only["bounding"] == ["CAP_NET_BIND_SERVICE"] == only["effective"]


def test_ambient_capabilities_go_to_every_set_unless_dropped() -> None:
    sets = caps(capabilities={"drop_capabilities": ["ALL"], "add_ambient_capabilities": ["NET_BIND_SERVICE"]})
    assert all(sets[name] == ["CAP_NET_BIND_SERVICE"] for name in sets)
    dropped = caps(capabilities={"add_ambient_capabilities": ["NET_RAW"], "drop_capabilities": ["NET_RAW"]})
    assert "CAP_NET_RAW" not in dropped["bounding"] and dropped["ambient"] == []
    with pytest.raises(InvalidArgument, match="ALL is not accepted"):
        caps(capabilities={"add_ambient_capabilities": ["ALL"]})


def test_unknown_or_unheld_capabilities() -> None:
    with pytest.raises(InvalidArgument, match=r"add_capabilities\[1\]: unknown capability 'FLY'"):
        caps(capabilities={"add_capabilities": ["NET_ADMIN", "FLY"]})
    with pytest.raises(FailedPrecondition, match="crirt does not hold CAP_SYS_RESOURCE"):
        caps(capabilities={"add_capabilities": ["SYS_RESOURCE"]})
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        caps(capabilities={"add_ambient_capabilities": ["SYS_RESOURCE"]})


def test_privileged_gets_every_capability_crirt_holds() -> None:
    sets = caps(privileged=True, capabilities={"drop_capabilities": ["ALL"]})
    assert set(sets["bounding"]) == HELD and "CAP_SYS_RESOURCE" not in sets["bounding"]
    assert sets["effective"] == sets["permitted"] == sets["bounding"] and sets["ambient"] == []


@given(image_env=st.lists(st.from_regex(r"[A-Z]{1,3}=[a-z]{0,3}", fullmatch=True), max_size=8),
       request_env=st.dictionaries(st.from_regex(r"[A-Z]{1,3}", fullmatch=True), st.text("abc", max_size=3),
                                   max_size=8))
def test_env_has_one_entry_per_name_and_the_request_wins(image_env: list[str], request_env: dict[str, str]) -> None:
    envs = [{"key": key, "value": value.encode()} for key, value in request_env.items()]
    env = process_env(config(envs=envs), {"Env": image_env}, "h")
    names = [item.split("=", 1)[0] for item in env]
    assert len(names) == len(set(names)) and names[0] == "PATH"
    assert all(f"{key}={value}" in env for key, value in request_env.items())
