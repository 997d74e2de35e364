"""crictl v1.36.0 against crirt: one pod's whole life the way an operator drives it, checking what crictl prints
(its JSON output where it has ``-o json``). The image comes from the mirror-mode registry under its upstream name."""

from __future__ import annotations

import json
import secrets
import subprocess
from typing import Any

import pytest

from .conftest import CRI_TOOLS, CriEnv, Mirror

IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"


def crictl(env: CriEnv, *args: str, timeout: float = 60) -> str:
    """Run crictl with the daemon's endpoints and an empty config; its stdout (an AssertionError if it failed)."""
    result = subprocess.run([str(CRI_TOOLS / "crictl"), *env.endpoint_args(), *args], capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"crictl {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result.stdout


def crictl_json(env: CriEnv, command: str, *args: str) -> Any:
    """``crictl <command> -o json <args>`` parsed (crictl's flags go before the ids)."""
    return json.loads(crictl(env, command, "-o", "json", *args))


@pytest.fixture
def configs(cri_env: CriEnv) -> tuple[str, str]:
    """A pod config and a container config file for ``runp`` and ``create``, with names of this test."""
    name = f"crictl-{secrets.token_hex(3)}"
    pod = {"metadata": {"name": name, "namespace": "crictl", "uid": f"uid-{name}", "attempt": 0},
           "log_directory": str(cri_env.base / "logs" / name), "linux": {}}
    container = {"metadata": {"name": "shell"}, "image": {"image": IMAGE},
                 "command": ["sh", "-c", "echo started from crictl; exec sleep 3600"], "log_path": "shell.log",
                 "labels": {"walkthrough": name}, "linux": {}}
    pod_file, container_file = cri_env.base / f"{name}-pod.json", cri_env.base / f"{name}-container.json"
    pod_file.write_text(json.dumps(pod))
    container_file.write_text(json.dumps(container))
    return str(pod_file), str(container_file)


def test_version_and_info(cri_env: CriEnv) -> None:
    version = dict(line.split(":", 1) for line in crictl(cri_env, "version").splitlines())
    assert version["RuntimeName"].strip() == "crirt" and version["RuntimeApiVersion"].strip() == "v1"
    info = crictl_json(cri_env, "info")
    conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert conditions.get("RuntimeReady") is True, info["status"]


def test_pod_walkthrough(cri_env: CriEnv, mirror: Mirror, configs: tuple[str, str]) -> None:
    pod_file, container_file = configs
    assert "Image is up to date" in crictl(cri_env, "pull", IMAGE)
    listed = crictl_json(cri_env, "images")["images"]
    image = next(i for i in listed if IMAGE in i["repoTags"])
    assert image["id"] == mirror.ids[IMAGE]
    repository, tag = IMAGE.rsplit(":", 1)
    assert [repository, tag, mirror.ids[IMAGE][7:20]] in [line.split()[:3] for line in crictl(cri_env, "images")
                                                        .splitlines()]
    assert crictl(cri_env, "images", "--quiet").split().count(mirror.ids[IMAGE]) == 1

    pod = crictl(cri_env, "runp", pod_file).strip()
    container = crictl(cri_env, "create", pod, container_file, pod_file).strip()
    assert crictl_json(cri_env, "inspect", container)["status"]["state"] == "CONTAINER_CREATED"
    assert crictl(cri_env, "start", container).strip() == container

    running = crictl_json(cri_env, "ps", "--pod", pod)["containers"]
    assert [(c["id"], c["state"], c["imageId"]) for c in running] == [(container, "CONTAINER_RUNNING",
                                                                        mirror.ids[IMAGE])]
    assert running[0]["imageRef"].startswith(f"{repository}@sha256:")  # the legacy field: a repo digest
    assert crictl(cri_env, "ps", "--quiet", "--label", f"walkthrough={running[0]['labels']['walkthrough']}").split() \
        == [container]
    status = crictl_json(cri_env, "inspect", container)
    assert status["status"]["state"] == "CONTAINER_RUNNING" and status["status"]["image"]["image"] == IMAGE
    assert status["status"]["logPath"].endswith("shell.log")

    assert crictl(cri_env, "exec", container, "sh", "-c", "echo $((6 * 7)); id -u") == "42\n0\n"
    assert crictl(cri_env, "exec", "--sync", container, "cat", "/etc/hostname").strip()
    assert "started from crictl" in crictl(cri_env, "logs", container)

    crictl(cri_env, "stop", "--timeout", "2", container)
    stopped = crictl_json(cri_env, "inspect", container)["status"]
    assert stopped["state"] == "CONTAINER_EXITED" and stopped["exitCode"] in (137, 143)  # KILL or TERM
    crictl(cri_env, "rm", container)
    assert crictl_json(cri_env, "ps", "--all", "--pod", pod)["containers"] == []

    crictl(cri_env, "stopp", pod)
    assert crictl_json(cri_env, "inspectp", pod)["status"]["state"] == "SANDBOX_NOTREADY"
    crictl(cri_env, "rmp", pod)
    assert crictl_json(cri_env, "pods", "--id", pod)["items"] == []
