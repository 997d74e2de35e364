"""What a container sees and how it ends, on real runc through the CRI: the pod's localhost, memory limits and
the OOM killer, a read-only rootfs, users and groups, environment and working directory, argv, exit codes, and
an image whose layers umoci wrote."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.config_images import WORKDIR, publish_config_images
from support.images import push
from support.network import runc_shim_installed, wait_until
from support.umoci import GREETING, MOTD, OUTPUT, TAG, build

from .conftest import ContainerEnv

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

SH = ["/bin/sh", "-c"]
IDLE = "trap 'exit 0' TERM; /bin/busybox sleep 1000 & wait"
COUNTER = itertools.count()


@pytest.fixture(scope="module")
def images(env: ContainerEnv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The config images (``support.config_images``), pushed to the module's registry and pulled."""
    refs = publish_config_images(tmp_path_factory.mktemp("config-images"), env.image.split("/", 1)[0])
    for ref in refs.values():
        env.images.PullImage(env.pb.PullImageRequest(image=env.pb.ImageSpec(image=ref)), timeout=60)
    return refs


class Pods:
    """Pods and containers made by one test, removed by id at its end."""

    def __init__(self, env: ContainerEnv, logs: Path) -> None:
        self.env, self.pb, self.rt, self.logs = env, env.pb, env.runtime, logs
        self.sandboxes: list[str] = []
        self.containers: list[str] = []

    def pod(self, *, pid: str = "CONTAINER") -> str:
        """A ready pod on the test network; ``pid``: the pod's PID namespace mode (POD runs an infra container)."""
        pb = self.pb
        name = f"behaviour-{next(COUNTER)}"
        linux = pb.LinuxPodSandboxConfig()
        linux.security_context.namespace_options.CopyFrom(
            pb.NamespaceOption(network=pb.POD, pid=getattr(pb, pid), ipc=pb.POD))
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-test", uid=f"uid-{name}"),
            hostname=name, log_directory=str(self.logs / name), linux=linux)
        sandbox_id = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
        self.sandboxes.append(sandbox_id)
        return sandbox_id

    def create(self, sandbox_id: str, name: str, *, image: str = "", command: list[str] | None = None,
               args: list[str] | None = None, envs: dict[str, str] | None = None, working_dir: str = "",
               mounts: list[Any] | None = None, context: Any = None, resources: Any = None,
               log_path: str = "") -> str:
        pb = self.pb
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image or self.env.image),
            command=command or [], args=args or [], working_dir=working_dir, log_path=log_path or f"{name}/0.log",
            envs=[pb.KeyValue(key=k, value=v.encode()) for k, v in (envs or {}).items()], mounts=mounts or [])
        if context is not None:
            config.linux.security_context.CopyFrom(context)
        if resources is not None:
            config.linux.resources.CopyFrom(resources)
        container_id = self.rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                               timeout=30).container_id
        self.containers.append(container_id)
        return container_id

    def run(self, sandbox_id: str, name: str, script: str = "", **kw: Any) -> str:
        """Create and start a container (``script``: its command is ``sh -c script``)."""
        if script:
            kw["command"] = [*SH, script]
        container_id = self.create(sandbox_id, name, **kw)
        self.rt.StartContainer(self.pb.StartContainerRequest(container_id=container_id), timeout=30)
        return container_id

    def status(self, container_id: str) -> Any:
        return self.rt.ContainerStatus(self.pb.ContainerStatusRequest(container_id=container_id), timeout=10).status

    def exited(self, container_id: str, timeout: float = 20) -> Any:
        """The container's status once it has exited."""
        return wait_until(lambda: (s := self.status(container_id)).state == self.pb.CONTAINER_EXITED and s, timeout)

    def stdout(self, container_id: str) -> str:
        """What the container wrote to stdout, from its CRI log (partial lines joined)."""
        text = ""
        for line in Path(self.status(container_id).log_path).read_text().splitlines():
            _, stream, tag, content = [*line.split(" ", 3), ""][:4]
            if stream == "stdout":
                text += content + ("\n" if tag == "F" else "")
        return text

    def sh(self, container_id: str, script: str, timeout: int = 10) -> Any:
        """ExecSync ``sh -c script`` in the container."""
        request = self.pb.ExecSyncRequest(container_id=container_id, cmd=[*SH, script], timeout=timeout)
        return self.rt.ExecSync(request, timeout=timeout + 10)

    def remove_all(self) -> None:
        try:
            for container_id in self.containers:
                self.rt.RemoveContainer(self.pb.RemoveContainerRequest(container_id=container_id), timeout=30)
        finally:
            self.remove_pods()

    def remove_pods(self) -> None:
        for sandbox_id in self.sandboxes:
            self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
            self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)


@pytest.fixture
def pods(env: ContainerEnv, tmp_path: Path) -> Iterator[Pods]:
    env.images.PullImage(env.pb.PullImageRequest(image=env.pb.ImageSpec(image=env.image)), timeout=60)
    made = Pods(env, tmp_path / "logs")
    yield made
    made.remove_all()
    listed = env.runtime.ListContainers(env.pb.ListContainersRequest(), timeout=10).containers
    assert not {c.id for c in listed} & set(made.containers)


def error_of(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# ---- 1. the pod's containers share localhost ---------------------------------------------------------------------

SERVE = "mkdir /tmp/www && echo pong > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"
FETCH = "until wget -q -O - http://127.0.0.1:8080/; do sleep 0.1; done"


def test_containers_of_a_pod_talk_over_localhost(pods: Pods) -> None:
    pod = pods.pod()
    pods.run(pod, "server", SERVE)  # listens on the loopback address only
    client = pods.run(pod, "client", FETCH)
    done = pods.exited(client)
    assert (done.exit_code, done.reason, pods.stdout(client)) == (0, "Completed", "pong\n")

    outsider = pods.run(pods.pod(), "outsider", IDLE)  # another pod: its own loopback, nobody listening
    reply = pods.sh(outsider, "wget -q -O - http://127.0.0.1:8080/")  # (busybox wget -T crashes when refused)
    assert reply.exit_code != 0 and b"refused" in reply.stderr, reply


# ---- 2. memory limit and the OOM killer ------------------------------------------------------------------------

HOG = "x=$(yes | head -c 200000000); echo survived"
"""The shell keeps a command substitution's output in its own memory: 200 MB of "y" lines."""


def test_memory_limit_and_oom_kill(pods: Pods) -> None:
    pb = pods.pb
    limit = 32 << 20
    hog = pods.run(pods.pod(), "hog", HOG, resources=pb.LinuxContainerResources(memory_limit_in_bytes=limit))
    done = pods.exited(hog, 30)
    assert (done.exit_code, done.reason) == (137, "OOMKilled")
    assert "survived" not in pods.stdout(hog)
    assert done.resources.linux.memory_limit_in_bytes == limit


def test_a_container_within_its_limit_is_not_oom_killed(pods: Pods) -> None:
    pb = pods.pb
    fits = pods.run(pods.pod(), "fits", "x=$(yes | head -c 2000000); echo survived",
                    resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20))
    done = pods.exited(fits)
    assert (done.exit_code, done.reason, pods.stdout(fits)) == (0, "Completed", "survived\n")


# ---- 3. read-only rootfs ---------------------------------------------------------------------------------------

def test_read_only_rootfs(pods: Pods, tmp_path: Path) -> None:
    pb = pods.pb
    volume, readonly = tmp_path / "volume", tmp_path / "readonly"
    volume.mkdir()
    readonly.mkdir()
    mounts = [pb.Mount(container_path="/data", host_path=str(volume)),
              pb.Mount(container_path="/ro", host_path=str(readonly), readonly=True)]
    pod = pods.pod()
    locked = pods.run(pod, "locked", IDLE, mounts=mounts,
                      context=pb.LinuxContainerSecurityContext(readonly_rootfs=True))
    for path in ("/file", "/tmp/file", "/etc/hosts", "/ro/file"):
        reply = pods.sh(locked, f"echo x > {path}")
        assert reply.exit_code != 0 and b"Read-only file system" in reply.stderr, (path, reply)
    reply = pods.sh(locked, "echo volume > /data/file && echo shm > /dev/shm/file && cat /dev/shm/file && "
                            "stat -f -c %T /dev/shm")
    assert (reply.exit_code, reply.stdout) == (0, b"shm\ntmpfs\n"), reply
    assert (volume / "file").read_text() == "volume\n"
    assert not list(readonly.iterdir())

    writable = pods.run(pod, "writable", IDLE)  # the same image without the flag: / is writable
    reply = pods.sh(writable, "echo x > /file && echo x > /tmp/file && cat /file")
    assert (reply.exit_code, reply.stdout) == (0, b"x\n"), reply


# ---- 4. users and groups -----------------------------------------------------------------------------------------

IDS = "echo $(id -u) $(id -g) / $(id -G) / $(id -un)"
USER_CASES = {
    # case: (image, security context fields, expected "uid gid / groups / name")
    "image-default-root": ("plain", {}, "0 0 / 0 / root"),
    "image-user-name": ("user-name", {}, "1000 1000 / 1000 2000 3000 / app"),
    "image-user-name-group": ("user-name-group", {}, "1000 4000 / 4000 2000 3000 / app"),
    "image-user-uid": ("user-uid", {}, "1000 1000 / 1000 2000 3000 / app"),
    "image-uid-without-passwd-entry": ("user-unknown-uid", {}, "4321 0 / 0 / 4321"),
    "request-uid-over-image-user": ("user-name", {"run_as_user": 1001}, "1001 1001 / 1001 3000 / other"),
    "request-username-and-group": ("plain", {"run_as_username": "other", "run_as_group": 2000},
                                   "1001 2000 / 2000 3000 / other"),
    "request-unknown-uid-and-group": ("plain", {"run_as_user": 5000, "run_as_group": 6000}, "5000 6000 / 6000 / 5000"),
    "request-supplemental-groups": ("user-name", {"supplemental_groups": [7000, 2000]},
                                    "1000 1000 / 1000 2000 3000 7000 / app"),
    "request-strict-policy": ("user-name", {"supplemental_groups": [7000], "supplemental_groups_policy": "Strict"},
                              "1000 1000 / 1000 7000 / app"),
    # critest's SupplementalGroupsPolicy specs: run_as_user (not the image's User) of a member of image groups
    "request-uid-merge-policy": ("plain", {"run_as_user": 1000, "supplemental_groups": [1234],
                                           "supplemental_groups_policy": "Merge"},
                                 "1000 1000 / 1000 1234 2000 3000 / app"),
    "request-uid-strict-policy": ("plain", {"run_as_user": 1000, "supplemental_groups": [1234],
                                            "supplemental_groups_policy": "Strict"},
                                  "1000 1000 / 1000 1234 / app"),
}


def security_context(pb: Any, fields: dict[str, Any]) -> Any:
    context = pb.LinuxContainerSecurityContext()
    for key, value in fields.items():
        if key in ("run_as_user", "run_as_group"):
            getattr(context, key).value = value
        elif key == "supplemental_groups":
            context.supplemental_groups.extend(value)
        elif key == "supplemental_groups_policy":
            context.supplemental_groups_policy = getattr(pb.SupplementalGroupsPolicy, value)
        else:
            setattr(context, key, value)
    return context


@pytest.mark.parametrize("case", USER_CASES)
def test_user_and_groups(pods: Pods, images: dict[str, str], case: str) -> None:
    image, fields, expected = USER_CASES[case]
    container = pods.run(pods.pod(), "who", f"{IDS}; {IDLE}", image=images[image],
                         context=security_context(pods.pb, fields))
    line = wait_until(lambda: pods.stdout(container), 10)
    assert line == expected + "\n"  # `id -G` prints the primary group first
    assert pods.sh(container, IDS).stdout.decode() == line  # an exec runs as the container's user
    ids, groups, _ = expected.split(" / ")
    user = pods.status(container).user.linux
    assert [user.uid, user.gid] == [int(n) for n in ids.split()]
    assert list(user.supplemental_groups) == sorted(int(n) for n in groups.split())


def test_unknown_user_names_are_refused(pods: Pods, images: dict[str, str]) -> None:
    pb = pods.pb
    pod = pods.pod()
    error = error_of(lambda: pods.create(pod, "ghost", image=images["plain"], command=["true"],
                                         context=security_context(pb, {"run_as_username": "ghost"})))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'ghost'" in error.details()
    assert "run_as_username" in error.details()
    listed = pods.rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    assert not [c for c in listed if c.pod_sandbox_id == pod]


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_a_log_path_outside_the_log_directory_is_refused(pods: Pods, tmp_path: Path, where: str) -> None:
    pod = pods.pod()
    stray = tmp_path / "stray.log" if where == "absolute" else pods.logs / "stray.log"  # pods.logs/<pod name>/..
    log_path = str(stray) if where == "absolute" else "../stray.log"
    error = error_of(lambda: pods.create(pod, "stray", command=[*SH, "true"], log_path=log_path))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "config.log_path" in error.details()
    assert not stray.exists()
    listed = pods.rt.ListContainers(pods.pb.ListContainersRequest(), timeout=10).containers
    assert not [c for c in listed if c.pod_sandbox_id == pod]  # nothing half-made


# ---- 5. environment, working directory, argv ------------------------------------------------------------------

ENV = 'echo "$FROM_IMAGE|$SHARED|$FROM_REQUEST|$EMPTY_IN_IMAGE|$PATH|$HOSTNAME|$(env | grep -c ^SHARED=)"; pwd'


def test_env_and_working_dir_from_the_image_and_the_request(pods: Pods, images: dict[str, str]) -> None:
    pod = pods.pod()
    hostname = pods.rt.PodSandboxStatus(pods.pb.PodSandboxStatusRequest(pod_sandbox_id=pod),
                                        timeout=10).status.metadata.name
    image_only = pods.run(pod, "image-only", ENV, image=images["config"])
    merged = pods.run(pod, "merged", f"{ENV}; {IDLE}", image=images["config"], working_dir="/tmp",
                      envs={"SHARED": "request", "FROM_REQUEST": "request", "EMPTY_IN_IMAGE": "set"})
    assert pods.stdout(pods.exited(image_only).id) == f"image|image|||/bin|{hostname}|1\n{WORKDIR}\n"
    expected = f"image|request|request|set|/bin|{hostname}|1\n/tmp\n"
    assert wait_until(lambda: pods.stdout(merged), 10) == expected
    reply = pods.sh(merged, ENV)  # an exec gets the container's environment and working directory
    assert (reply.exit_code, reply.stdout.decode()) == (0, expected)
    elsewhere = pods.run(pod, "elsewhere", "pwd", working_dir="/not/in/the/image")  # made by the runtime
    assert pods.stdout(pods.exited(elsewhere).id) == "/not/in/the/image\n"


ARGV_CASES = {
    # case: (image, command, args, expected stdout)
    "entrypoint-and-cmd": ("config", [], [], "ep cmd1 cmd2"),
    "args-replace-cmd": ("config", [], ["a1", "a2"], "ep a1 a2"),
    "command-replaces-entrypoint-and-cmd": ("config", ["/bin/busybox", "echo", "c"], [], "c"),
    "command-and-args": ("config", ["/bin/busybox", "echo", "c"], ["a1"], "c a1"),
    "args-without-entrypoint": ("plain", [], ["/bin/busybox", "echo", "just", "args"], "just args"),
    "empty-entrypoint-runs-cmd": ("empty-entrypoint", [], [], "cmd only"),
}


@pytest.mark.parametrize("case", ARGV_CASES)
def test_command_and_args_against_entrypoint_and_cmd(pods: Pods, images: dict[str, str], case: str) -> None:
    image, command, args, expected = ARGV_CASES[case]
    container = pods.run(pods.pod(), "argv", image=images[image], command=command, args=args)
    done = pods.exited(container)
    assert (done.exit_code, pods.stdout(container)) == (0, expected + "\n")


def test_a_missing_executable_is_refused_and_leaves_nothing(pods: Pods) -> None:
    pod = pods.pod()
    error = error_of(lambda: pods.create(pod, "missing", command=["/no/such/binary"]))
    assert "/no/such/binary" in error.details(), error
    listed = pods.rt.ListContainers(pods.pb.ListContainersRequest(), timeout=10).containers
    assert not [c for c in listed if c.pod_sandbox_id == pod]
    pods.run(pod, "missing", "true")  # the name is free again


# ---- 6. exit codes and reasons -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("script", "code", "reason"), [
    ("exit 0", 0, "Completed"),
    ("echo out; exit 42", 42, "Error"),
    ("exit 255", 255, "Error"),
    ("kill -USR1 $$", 128 + 10, "Error"),  # killed by a signal (pid POD: the shell is not its namespace's init)
    ("kill -KILL $$", 128 + 9, "Error"),
])
def test_exit_codes_and_reasons(pods: Pods, script: str, code: int, reason: str) -> None:
    container = pods.run(pods.pod(pid="POD"), "ends", script)
    done = pods.exited(container)
    assert (done.exit_code, done.reason) == (code, reason)
    assert done.started_at > done.created_at > 0 and done.finished_at > done.created_at


def test_a_container_that_ends_at_once_did_not_finish_before_it_started(pods: Pods) -> None:
    pod = pods.pod()
    for attempt in range(5):
        done = pods.exited(pods.run(pod, f"quick-{attempt}", "exit 0"))
        assert done.finished_at >= done.started_at, (done.started_at, done.finished_at)


def test_stop_kills_a_container_that_ignores_the_stop_signal(pods: Pods) -> None:
    pb = pods.pb
    stubborn = pods.run(pods.pod(), "stubborn", "trap '' TERM; /bin/busybox sleep 1000 & wait")
    pods.rt.StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1), timeout=30)
    done = pods.status(stubborn)
    assert (done.state, done.exit_code, done.reason) == (pb.CONTAINER_EXITED, 137, "Error")


def test_stop_pod_sandbox_kills_at_once_while_stop_container_keeps_its_grace(pods: Pods) -> None:
    """The kubelet gives each container its grace period through StopContainer; StopPodSandbox then kills what
    still runs with SIGKILL at once (containerd's timeout 0), so a container that would exit 0 on SIGTERM
    ends with 137 there, and with 0 under StopContainer."""
    pb = pods.pb
    pod = pods.pod()
    graceful = pods.run(pod, "graceful", IDLE)
    pods.rt.StopContainer(pb.StopContainerRequest(container_id=graceful, timeout=30), timeout=60)
    assert (pods.status(graceful).exit_code, pods.status(graceful).reason) == (0, "Completed")
    killed = pods.run(pod, "killed", IDLE)
    pods.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    done = pods.status(killed)
    assert (done.state, done.exit_code, done.reason) == (pb.CONTAINER_EXITED, 137, "Error")


# ---- 7. ExecSync ------------------------------------------------------------------------------------------------

def test_exec_sync_timeout_kills_the_process_and_signals_give_128_plus_n(pods: Pods) -> None:
    container = pods.run(pods.pod(), "execs", IDLE)
    error = error_of(lambda: pods.sh(container, "echo started > /tmp/mark; exec /bin/busybox sleep 77", timeout=1))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert pods.sh(container, "cat /tmp/mark").stdout == b"started\n"  # it did run
    reply = pods.sh(container, "ps -o args")
    assert reply.exit_code == 0 and b"sleep 1000" in reply.stdout and b"sleep 77" not in reply.stdout, reply
    assert pods.sh(container, "kill -TERM $$").exit_code == 128 + 15
    assert pods.status(container).state == pods.pb.CONTAINER_RUNNING


def test_exec_sync_answers_when_the_process_exits_though_a_background_child_holds_its_output(pods: Pods) -> None:
    """kubernetes#92057: a probe that leaves a child behind holding stdout is answered at its exit, not at the
    timeout, with the real exit code and all it wrote; the child keeps running in the container."""
    container = pods.run(pods.pod(), "prober", IDLE)
    began = time.monotonic()
    reply = pods.sh(container, "echo ok; /bin/busybox sleep 100 &", timeout=10)
    assert time.monotonic() - began < 2
    assert (reply.exit_code, reply.stdout, reply.stderr) == (0, b"ok\n", b"")
    script = "/bin/busybox head -c 200000 /dev/zero; echo bye >&2; (/bin/busybox sleep 1; echo late) & exit 3"
    reply = pods.sh(container, script, timeout=10)
    assert (reply.exit_code, reply.stdout, reply.stderr) == (3, bytes(200_000), b"bye\n")
    assert b"sleep 100" in pods.sh(container, "ps -o args").stdout


# ---- 8. an image built by umoci ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def umoci_image(env: ContainerEnv, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``support.umoci``'s image (layers ending without end-of-archive blocks, a root named "/"), pushed, pulled."""
    reference = f"{env.image.split('/', 1)[0]}/umoci/busybox:1"
    push(build(tmp_path_factory.mktemp("umoci")), TAG, reference)
    env.images.PullImage(env.pb.PullImageRequest(image=env.pb.ImageSpec(image=reference)), timeout=60)
    return reference


def test_an_image_built_by_umoci_runs(pods: Pods, umoci_image: str) -> None:
    pod = pods.pod()
    default = pods.run(pod, "umoci", image=umoci_image)  # the image's Entrypoint and Cmd
    done = pods.exited(default)
    assert (done.exit_code, done.reason, pods.stdout(default)) == (0, "Completed", OUTPUT)
    failing = pods.run(pod, "umoci-fails", image=umoci_image,
                       args=["sh", "-c", "cat /etc/motd /etc/greeting; ls /etc/old /etc/group; exit 3"])
    done = pods.exited(failing)
    assert (done.exit_code, done.reason) == (3, "Error")
    assert pods.stdout(failing) == (MOTD + GREETING).decode()  # and the whiteouts hide /etc/old and /etc/group
