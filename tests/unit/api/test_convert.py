"""Round trips between betterproto2 messages and the pydantic commands/results, and error summaries."""

from __future__ import annotations

import betterproto2
import pytest
from pydantic import ValidationError

import crirt._gen.runtime.v1 as gen
from crirt.api.convert import describe_validation_error, to_command, to_message
from crirt.commands import ALL_COMMANDS
from crirt.commands.base import Model
from crirt.commands.containers import ContainerStatusResult, ListContainersResult
from crirt.commands.runtime import GetContainerEventsResult
from crirt.model.enums import ContainerState, Signal


def image(ref: str) -> gen.ImageSpec:
    return gen.ImageSpec(image=ref, annotations={"io.kubernetes.cri.image": "1"}, user_specified_image=ref)


def sandbox_config() -> gen.PodSandboxConfig:
    return gen.PodSandboxConfig(
        metadata=gen.PodSandboxMetadata(name="web-0", uid="5b0c6f1e", namespace="default", attempt=1),
        hostname="web-0",
        log_directory="/var/log/pods/default_web-0_5b0c6f1e",
        dns_config=gen.DnsConfig(servers=["10.96.0.10"], searches=["svc.cluster.local"], options=["ndots:5"]),
        port_mappings=[
            gen.PortMapping(protocol=gen.Protocol.UDP, container_port=53, host_port=5353, host_ip="0.0.0.0"),
            gen.PortMapping(container_port=80),
        ],
        labels={"app": "web", "io.kubernetes.pod.name": "web-0"},
        annotations={"kubernetes.io/config.seen": "2024-01-01T00:00:00Z"},
        linux=gen.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/burstable/pod5b0c6f1e",
            security_context=gen.LinuxSandboxSecurityContext(
                namespace_options=gen.NamespaceOption(
                    network=gen.NamespaceMode.NODE,
                    pid=gen.NamespaceMode.CONTAINER,
                    userns_options=gen.UserNamespace(
                        mode=gen.NamespaceMode.POD,
                        uids=[gen.IdMapping(host_id=100000, container_id=0, length=65536)],
                        gids=[gen.IdMapping(host_id=100000, container_id=0, length=65536)],
                    ),
                ),
                run_as_user=gen.Int64Value(value=0),
                supplemental_groups=[1000, 2000],
                supplemental_groups_policy=gen.SupplementalGroupsPolicy.Strict,
                seccomp=gen.SecurityProfile(profile_type=gen.SecurityProfileProfileType.RuntimeDefault),
            ),
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
            overhead=gen.LinuxContainerResources(memory_limit_in_bytes=1 << 20),
        ),
    )


def create_container_request() -> gen.CreateContainerRequest:
    return gen.CreateContainerRequest(
        pod_sandbox_id="f3b2a1",
        config=gen.ContainerConfig(
            metadata=gen.ContainerMetadata(name="nginx", attempt=3),
            image=image("docker.io/library/nginx:1.27"),
            command=["/docker-entrypoint.sh"],
            args=["nginx", "-g", "daemon off;"],
            working_dir="/",
            envs=[gen.KeyValue(key="PATH", value=b"/usr/bin"), gen.KeyValue(key="BIN", value=b"\x00\xff")],
            mounts=[
                gen.Mount(
                    container_path="/etc/hosts",
                    host_path="/var/lib/kubelet/pods/x/etc-hosts",
                    readonly=True,
                    selinux_relabel=True,
                    propagation=gen.MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
                    uid_mappings=[gen.IdMapping(host_id=1000, container_id=0, length=1)],
                    recursive_read_only=True,
                ),
                gen.Mount(
                    container_path="/data", image=image("registry.local/data:v1"), image_sub_path="sub"
                ),
            ],
            devices=[gen.Device(container_path="/dev/fuse", host_path="/dev/fuse", permissions="rwm")],
            labels={"io.kubernetes.container.name": "nginx"},
            annotations={"io.kubernetes.container.restartCount": "3"},
            log_path="nginx/3.log",
            stdin=True,
            stdin_once=True,
            tty=True,
            linux=gen.LinuxContainerConfig(
                resources=gen.LinuxContainerResources(
                    cpu_period=100000,
                    cpu_quota=-1,
                    cpu_shares=2,
                    memory_limit_in_bytes=(1 << 63) - 1,
                    oom_score_adj=-997,
                    cpuset_cpus="0-3",
                    hugepage_limits=[gen.HugepageLimit(page_size="2MB", limit=(1 << 64) - 1)],
                    unified={"memory.high": "max"},
                ),
                security_context=gen.LinuxContainerSecurityContext(
                    capabilities=gen.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["ALL"]),
                    privileged=False,
                    namespace_options=gen.NamespaceOption(pid=gen.NamespaceMode.TARGET, target_id="abc"),
                    selinux_options=gen.SeLinuxOption(user="system_u", type="container_t", level="s0:c1,c2"),
                    run_as_user=gen.Int64Value(value=1000),
                    run_as_group=gen.Int64Value(),
                    readonly_rootfs=True,
                    supplemental_groups=[-1, 0, 65534],
                    no_new_privs=True,
                    masked_paths=["/proc/kcore"],
                    readonly_paths=["/proc/sys"],
                    seccomp=gen.SecurityProfile(
                        profile_type=gen.SecurityProfileProfileType.Localhost, localhost_ref="profiles/a.json"
                    ),
                    apparmor=gen.SecurityProfile(profile_type=gen.SecurityProfileProfileType.Unconfined),
                ),
            ),
            CDI_devices=[gen.CdiDevice(name="vendor.com/gpu=0")],
            stop_signal=gen.Signal.SIGRTMAXMINUS1,
        ),
        sandbox_config=sandbox_config(),
    )


def container(container_id: str, state: gen.ContainerState) -> gen.Container:
    return gen.Container(
        id=container_id,
        pod_sandbox_id="f3b2a1",
        metadata=gen.ContainerMetadata(name=container_id),
        image=image("docker.io/library/nginx:1.27"),
        image_ref="sha256:aa",
        state=state,
        created_at=1_700_000_000_000_000_000,
        labels={"app": "web"},
        annotations={"a": ""},
        image_id="sha256:aa",
    )


ROUND_TRIPS: list[tuple[betterproto2.Message, type[Model]]] = [
    (create_container_request(), ALL_COMMANDS["CreateContainer"]),
    (
        gen.RunPodSandboxRequest(config=sandbox_config(), runtime_handler="runc"),
        ALL_COMMANDS["RunPodSandbox"],
    ),
    (
        gen.ListContainersResponse(
            containers=[
                container("c1", gen.ContainerState.CONTAINER_RUNNING),
                container("c2", gen.ContainerState.CONTAINER_CREATED),
                gen.Container(),
            ]
        ),
        ListContainersResult,
    ),
    (
        gen.ContainerEventResponse(
            container_id="c1",
            container_event_type=gen.ContainerEventType.CONTAINER_STOPPED_EVENT,
            created_at=42,
            pod_sandbox_status=gen.PodSandboxStatus(
                id="f3b2a1",
                state=gen.PodSandboxState.SANDBOX_NOTREADY,
                network=gen.PodSandboxNetworkStatus(ip="10.0.0.2", additional_ips=[gen.PodIp(ip="fd00::2")]),
            ),
            containers_statuses=[gen.ContainerStatus(id="c1", exit_code=-1, stop_signal=gen.Signal.SIGKILL)],
        ),
        GetContainerEventsResult,
    ),
]


@pytest.mark.parametrize(
    ("message", "model_type"), ROUND_TRIPS, ids=[type(m).__name__ for m, _ in ROUND_TRIPS]
)
def test_round_trip(message: betterproto2.Message, model_type: type[Model]):
    received = type(message).parse(bytes(message))
    model = to_command(received, model_type)
    assert isinstance(model, model_type)
    back = to_message(model, type(message))
    assert back == message
    assert bytes(back) == bytes(message)


def test_command_values_are_plain_python():
    command = to_command(create_container_request(), ALL_COMMANDS["CreateContainer"])
    assert command.config.stop_signal is Signal.SIGRTMAXMINUS1
    assert type(command.config.stop_signal) is Signal
    assert command.config.envs[1].value == b"\x00\xff"
    assert command.config.linux.security_context.run_as_group is not None
    assert command.config.linux.security_context.run_as_group.value == 0
    assert command.sandbox_config.linux.security_context.namespace_options.pid == 1


def test_result_to_response_fills_defaults():
    assert to_message(ContainerStatusResult(), gen.ContainerStatusResponse) == gen.ContainerStatusResponse()
    response = to_message(
        ListContainersResult(containers=[{"id": "c1", "state": ContainerState.CONTAINER_EXITED}]),
        gen.ListContainersResponse,
    )
    assert response.containers[0].state is gen.ContainerState.CONTAINER_EXITED
    assert response.containers[0].metadata is None


def describe(message: betterproto2.Message, rpc: str) -> str:
    with pytest.raises(ValidationError) as caught:
        to_command(message, ALL_COMMANDS[rpc])
    return describe_validation_error(caught.value)


def test_describe_names_nested_fields():
    message = gen.CreateContainerRequest(config=gen.ContainerConfig(metadata=gen.ContainerMetadata()))
    assert describe(message, "CreateContainer") == (
        "pod_sandbox_id: String should have at least 1 character; "
        "config.metadata.name: String should have at least 1 character"
    )


def test_describe_missing_required_message():
    assert (
        describe(gen.CreateContainerRequest(pod_sandbox_id="p1"), "CreateContainer")
        == "config: Field required"
    )
    assert describe(gen.PullImageRequest(), "PullImage") == "image: Field required"


def test_describe_list_indexes_and_unknown_enums():
    wire = bytes(gen.Mount(propagation=gen.MountPropagation(7)))
    message = gen.CreateContainerRequest(
        pod_sandbox_id="p1",
        config=gen.ContainerConfig(
            metadata=gen.ContainerMetadata(name="c"), mounts=[gen.Mount(), gen.Mount.parse(wire)]
        ),
    )
    assert describe(message, "CreateContainer") == "config.mounts[1].propagation: Input should be 0, 1 or 2"


def test_describe_model_level_errors_and_caps_length():
    message = gen.ExecRequest(container_id="c1", cmd=["sh"], tty=True, stdout=True, stderr=True)
    assert describe(message, "Exec") == "Value error, tty and stderr cannot both be true"
    bad_mounts = [gen.Mount(propagation=gen.MountPropagation(9))] * 8
    huge_key = "k" * 2_000_000
    message = gen.CreateContainerRequest(
        pod_sandbox_id="p1",
        config=gen.ContainerConfig(
            metadata=gen.ContainerMetadata(name="c"), mounts=bad_mounts, labels={huge_key: "v"}
        ),
    )
    summary = describe(message, "CreateContainer")
    assert summary.endswith("; and 4 more")
    assert len(summary) < 1000


def test_describe_cuts_long_map_keys():
    message = gen.CreateContainerRequest(
        pod_sandbox_id="p1",
        config=gen.ContainerConfig(metadata=gen.ContainerMetadata(name="c"), labels={"k" * 2_000_000: "v"}),
    )
    assert describe(message, "CreateContainer") == (
        f"config.labels.{'k' * 61}...[key]: String should have at most 1048576 characters"
    )
