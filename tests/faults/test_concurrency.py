"""Concurrency invariants: a hypothesis state machine whose every step fires a batch of 2-6 CRI calls at once
from a thread pool (RunPodSandbox, CreateContainer, StartContainer, StopContainer, RemoveContainer,
StopPodSandbox, RemovePodSandbox, ExecSync, ContainerStatus, PodSandboxStatus) at overlapping pods and
containers, named by full ids, short prefixes, ids already removed or ids never made. A call that loses a race may
fail with the code the docs give for it (NOT_FOUND, FAILED_PRECONDITION, ...), never INTERNAL or UNKNOWN; after
each batch the listings must agree with the statuses, and once everything is removed nothing may be left on the
host. One daemon (runc, a bridge network) serves the whole module."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from support.containers import ContainerEnv, conmons_under, container_env
from support.network import PodEnv, runc_shim_installed

from .conftest import traces

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

SETTINGS = settings(max_examples=8, stateful_step_count=10, deadline=None, database=None,
                    phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])
"""Bounded for CI on 2 cores: at most 8 runs of 3 + 10 + 1 batches (about 90 in 15 s). No shrinking: a replay
against the daemon does not race the same way, so shrinking would mostly rerun passing steps; the failing example
is printed as found."""

CALL_TIMEOUT = 60.0
MAX_PODS = 3
MAX_CONTAINERS = 6
OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ACCEPTED: dict[str, set[grpc.StatusCode]] = {
    "RunPodSandbox": {OK},
    "CreateContainer": {OK, NOT_FOUND, PRECONDITION},  # the pod is gone / stopped
    "StartContainer": {OK, NOT_FOUND, PRECONDITION},  # gone / not CREATED any more
    "StopContainer": {OK},  # idempotent, unknown ids included
    "RemoveContainer": {OK},
    "StopPodSandbox": {OK},
    "RemovePodSandbox": {OK},
    "ExecSync": {OK, NOT_FOUND, PRECONDITION},  # gone / not running
    "ContainerStatus": {OK, NOT_FOUND},
    "PodSandboxStatus": {OK, NOT_FOUND},
}
"""The codes a call may end with when another call races it (docs/containers.md, docs/sandboxes.md); a short
prefix may also be ambiguous (INVALID_ARGUMENT)."""
POD_RPCS = ("CreateContainer", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus")
CONTAINER_RPCS = ("StartContainer", "StopContainer", "RemoveContainer", "ExecSync", "ContainerStatus")
TARGET_KINDS = ("known", "known", "known", "known", "prefix", "gone", "unknown")
INDEX = st.integers(0, 63)
BATCH_SIZE = st.integers(2, 6)


@dataclass(frozen=True)
class Call:
    """One CRI call of a batch: the RPC, the id it names (a pod's for pod RPCs) and the stop timeout."""

    rpc: str
    target: str = ""
    timeout: int = 0

    def __repr__(self) -> str:
        timeout = f", timeout={self.timeout}" if self.rpc == "StopContainer" else ""
        return f"{self.rpc}({self.target[:12]}{timeout})"


@dataclass
class Outcome:
    """What a call ended with: its code, the error's details and the reply (None on an error)."""

    call: Call
    code: grpc.StatusCode
    details: str
    reply: Any


def unknown_id(seed: int) -> str:
    """A full-length id no pod or container has."""
    return hashlib.sha256(f"unknown-{seed}".encode()).hexdigest()


def raced(calls: list[Call], container: str, pod: str,
          by: tuple[str, ...] = ("StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox")) -> bool:
    """Whether a call of ``calls`` of a kind in ``by`` names the container or its pod."""
    return any(same(c.target, pod if c.rpc in POD_RPCS else container) for c in calls if c.rpc in by)


def same(one: str, other: str) -> bool:
    """Whether two ids, full or prefixes, may name the same pod or container."""
    return bool(one and other) and (one.startswith(other) or other.startswith(one))


class Lifecycle(RuleBasedStateMachine):
    """Pods and containers of one daemon, driven by concurrent batches; the model is what the daemon listed after
    the last batch (calls that race make any finer prediction wrong), plus every id it ever showed."""

    def __init__(self, env: ContainerEnv, logs: Path, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self.env, self.pb, self.rt, self.pool = env, env.pb, env.runtime, pool
        self.pods = PodEnv(env.daemon, env.net, env.base, env.runtime, env.pb)
        self.logs = logs
        self.pod_states: dict[str, int] = {}
        self.container_states: dict[str, int] = {}
        self.container_pod: dict[str, str] = {}
        self.seen: list[str] = []
        self.removed_pods: set[str] = set()
        self.batches = 0

    # ---- calls ------------------------------------------------------------------------------------------

    def _request(self, call: Call) -> tuple[Callable[..., Any], Any]:
        """The stub method and request of ``call``."""
        pb, rt = self.pb, self.rt
        if call.rpc == "RunPodSandbox":
            config = self.pods.config(f"race-{secrets.token_hex(4)}", log_directory=str(self.logs))
            return rt.RunPodSandbox, pb.RunPodSandboxRequest(config=config)
        if call.rpc == "CreateContainer":
            config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=f"c-{secrets.token_hex(4)}"),
                                        image=pb.ImageSpec(image=self.env.image),
                                        command=["/bin/busybox", "sleep", "1000"])
            return rt.CreateContainer, pb.CreateContainerRequest(pod_sandbox_id=call.target, config=config)
        if call.rpc == "StopContainer":
            return rt.StopContainer, pb.StopContainerRequest(container_id=call.target, timeout=call.timeout)
        if call.rpc == "ExecSync":
            return rt.ExecSync, pb.ExecSyncRequest(container_id=call.target, cmd=["/bin/busybox", "true"], timeout=20)
        field = "pod_sandbox_id" if call.rpc in POD_RPCS else "container_id"
        return getattr(rt, call.rpc), getattr(pb, f"{call.rpc}Request")(**{field: call.target})

    def _fire(self, call: Call, barrier: threading.Barrier) -> Outcome:
        """Make ``call`` once every call of the batch is ready to go."""
        method, request = self._request(call)
        barrier.wait(10)
        try:
            return Outcome(call, OK, "", method(request, timeout=CALL_TIMEOUT))
        except grpc.RpcError as error:
            return Outcome(call, error.code(), error.details() or "", None)

    def batch(self, calls: list[Call]) -> list[Outcome]:
        """Fire ``calls`` together; check each ended with an accepted code; refresh the model from the listings."""
        barrier = threading.Barrier(len(calls))
        outcomes = list(self.pool.map(lambda call: self._fire(call, barrier), calls))
        for outcome in outcomes:
            accepted = ACCEPTED[outcome.call.rpc]
            if len(outcome.call.target) < 64:  # a short prefix may match two ids
                accepted = accepted | {grpc.StatusCode.INVALID_ARGUMENT}
            assert outcome.code in accepted, (outcome.call, outcome.code, outcome.details, calls)
        before_pods, before_containers = dict(self.pod_states), dict(self.container_states)
        self._refresh()
        self._check_outcomes(outcomes, calls, before_pods, before_containers)
        self.batches += 1
        return outcomes

    def _refresh(self) -> None:
        """The model becomes what the daemon lists; pods that disappeared count as removed."""
        pods = {p.id: p.state for p in self.rt.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=10).items}
        containers = self.rt.ListContainers(self.pb.ListContainersRequest(), timeout=10).containers
        self.removed_pods |= set(self.pod_states) - set(pods)
        self.pod_states = pods
        self.container_states = {c.id: c.state for c in containers}
        self.container_pod.update({c.id: c.pod_sandbox_id for c in containers})
        self.seen += [i for i in [*pods, *self.container_states] if i not in self.seen]

    def _check_outcomes(self, outcomes: list[Outcome], calls: list[Call], before_pods: dict[str, int],
                        before_containers: dict[str, int]) -> None:
        """What a successful call did must still show after the batch, unless another call of it may undo it."""
        pb = self.pb
        for outcome in outcomes:
            call, reply = outcome.call, outcome.reply
            if outcome.code != OK:
                continue
            if call.rpc == "RunPodSandbox":
                self.seen.append(reply.pod_sandbox_id)
                assert reply.pod_sandbox_id in self.pod_states, ("a pod run in the batch is not listed", calls)
            elif call.rpc == "CreateContainer":
                self.seen.append(reply.container_id)
                assert reply.container_id in self.container_states or \
                    raced(calls, reply.container_id, call.target, ("RemoveContainer", "RemovePodSandbox")), \
                    ("a container created in the batch is not listed", calls)
            elif call.rpc == "StopPodSandbox" and call.target in before_pods:
                assert self.pod_states.get(call.target, pb.SANDBOX_NOTREADY) == pb.SANDBOX_NOTREADY, \
                    ("a pod stopped in the batch is READY", calls)
            elif call.rpc in ("RemovePodSandbox", "RemoveContainer") and call.target in {**before_pods,
                                                                                      **before_containers}:
                assert call.target not in {**self.pod_states, **self.container_states}, \
                    ("removed in the batch but still listed", call, calls)
            elif call.rpc == "StopContainer" and before_containers.get(call.target) == pb.CONTAINER_RUNNING:
                assert self.container_states.get(call.target, pb.CONTAINER_EXITED) == pb.CONTAINER_EXITED, \
                    ("a running container stopped in the batch is not EXITED", calls)
            elif call.rpc == "ExecSync" and not raced(calls, call.target, self._pod_of(call.target)):
                assert reply.exit_code == 0, (reply, calls)

    def _pod_of(self, container: str) -> str:
        """The pod of the container ``container`` (a full id or a prefix) names, "" when unknown."""
        return next((pod for full, pod in self.container_pod.items() if same(full, container)), "")

    # ---- drawing calls ------------------------------------------------------------------------------------
    # What is drawn never depends on the daemon's state (races make it differ between runs of the same choices,
    # which hypothesis refuses): an index is drawn and taken modulo the ids there are.

    def _target(self, data: st.DataObject, ids: list[str]) -> str:
        """An id for a call: mostly a known one, sometimes its 6-character prefix, a removed id or an unknown one."""
        kind = data.draw(st.sampled_from(TARGET_KINDS))
        index = data.draw(INDEX)
        gone = [i for i in self.seen if i not in self.pod_states and i not in self.container_states]
        if kind in ("known", "prefix") and ids:
            return ids[index % len(ids)][:6 if kind == "prefix" else None]
        if kind == "gone" and gone:
            return gone[index % len(gone)]
        return unknown_id(index)

    def _member(self, data: st.DataObject, ids: list[str]) -> str:
        """One of ``ids`` (an unknown id when there is none)."""
        index = data.draw(INDEX)
        return ids[index % len(ids)] if ids else unknown_id(index)

    def _call(self, data: st.DataObject, rpc: str, target: str) -> Call:
        """``rpc`` at ``target``; a stop gets a timeout of 0 or 1 s. No new pods or containers beyond the bounds:
        those calls become status calls."""
        timeout = data.draw(st.sampled_from([0, 1]))
        if rpc == "RunPodSandbox" and len(self.pod_states) >= MAX_PODS:
            rpc = "PodSandboxStatus"
        if rpc == "CreateContainer" and len(self.container_states) >= MAX_CONTAINERS:
            rpc = "PodSandboxStatus"
        return Call(rpc, "" if rpc == "RunPodSandbox" else target, timeout if rpc == "StopContainer" else 0)

    # ---- rules ----------------------------------------------------------------------------------------------

    @initialize()
    def a_running_container(self) -> None:
        """Start from one pod with one running container."""
        [run] = self.batch([Call("RunPodSandbox")])
        [create] = self.batch([Call("CreateContainer", run.reply.pod_sandbox_id)])
        self.batch([Call("StartContainer", create.reply.container_id)])

    @rule(data=st.data(), size=BATCH_SIZE)
    def mixed(self, data: st.DataObject, size: int) -> None:
        """Any calls at any known (or unknown) pods and containers."""
        calls = []
        for _ in range(size):
            rpc = data.draw(st.sampled_from(["RunPodSandbox", *POD_RPCS, *CONTAINER_RPCS]))
            ids = list(self.pod_states) if rpc in POD_RPCS else list(self.container_states)
            calls.append(self._call(data, rpc, self._target(data, ids)))
        self.batch(calls)

    @rule(data=st.data(), size=BATCH_SIZE)
    def on_one_container(self, data: st.DataObject, size: int) -> None:
        """Calls all naming one container or its pod."""
        container = self._member(data, list(self.container_states))
        pod = self.container_pod.get(container, container)
        calls = []
        for _ in range(size):
            rpc = data.draw(st.sampled_from([*CONTAINER_RPCS, "StopPodSandbox", "RemovePodSandbox"]))
            calls.append(self._call(data, rpc, pod if rpc in POD_RPCS else container))
        self.batch(calls)

    @rule(data=st.data(), size=BATCH_SIZE)
    def on_one_pod(self, data: st.DataObject, size: int) -> None:
        """Calls naming one pod or its containers: creates and starts racing the pod's stop and removal."""
        pod = self._member(data, list(self.pod_states))
        containers = [c for c in self.container_states if self.container_pod[c] == pod]
        calls = []
        for _ in range(size):
            rpc = data.draw(st.sampled_from([*POD_RPCS, "StartContainer", "StopContainer"]))
            container = self._member(data, containers)
            calls.append(self._call(data, rpc, pod if rpc in POD_RPCS else container))
        self.batch(calls)

    # ---- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def listings_agree_with_statuses(self) -> None:
        """Each listed pod and container has the state its status call reports, and no container is listed
        twice or under two state filters."""
        pb, rt = self.pb, self.rt
        containers = rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers
        assert len({c.id for c in containers}) == len(containers), containers
        by_filter = {state: {c.id for c in rt.ListContainers(pb.ListContainersRequest(
            filter=pb.ContainerFilter(state=pb.ContainerStateValue(state=state))), timeout=10).containers}
            for state in (pb.CONTAINER_CREATED, pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED, pb.CONTAINER_UNKNOWN)}
        for container in containers:
            status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=container.id), timeout=10).status
            assert status.state == container.state, (container.id, status.state, container.state)
            assert [s for s, ids in by_filter.items() if container.id in ids] == [container.state], container.id
        pods = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
        for pod in pods:
            status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=10).status
            assert status.state == pod.state, (pod.id, status.state, pod.state)

    @invariant()
    def containers_belong_to_listed_pods(self) -> None:
        """Every listed container's pod is listed; the containers of a removed pod are gone."""
        for container_id, pod in self.container_pod.items():
            if container_id in self.container_states:
                assert pod in self.pod_states, f"container {container_id} is listed, its pod {pod} is not"
            if pod in self.removed_pods:
                with pytest.raises(grpc.RpcError) as info:
                    self.rt.ContainerStatus(self.pb.ContainerStatusRequest(container_id=container_id), timeout=10)
                assert info.value.code() == NOT_FOUND, info.value

    @invariant()
    def nothing_runs_in_a_stopped_pod(self) -> None:
        """Once StopPodSandbox finished (the pod is NOTREADY) none of its containers is RUNNING."""
        running = [c for c, s in self.container_states.items() if s == self.pb.CONTAINER_RUNNING
                   and self.pod_states.get(self.container_pod[c]) == self.pb.SANDBOX_NOTREADY]
        assert not running, f"RUNNING in a NOTREADY pod: {running}"

    def teardown(self) -> None:
        """Remove everything; nothing of it may be left: processes, mounts, files, addresses."""
        if self.pod_states:
            self.batch([Call("RemovePodSandbox", pod) for pod in self.pod_states])
        assert self.pod_states == {} and self.container_states == {}, (self.pod_states, self.container_states)
        assert conmons_under(self.env.base) == {}
        assert traces(self.env.base, self.env.net, self.seen) == {}
        assert self.env.net.allocations() == []


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[ContainerEnv]:
    """One daemon for the module, with busybox pulled."""
    with container_env(tmp_path_factory.mktemp("concurrency"), pb, "") as made:
        made.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=made.image)), timeout=60)
        yield made


def test_concurrent_lifecycle_calls_keep_the_invariants(env: ContainerEnv, tmp_path: Path) -> None:
    machines: list[Lifecycle] = []

    def machine() -> Lifecycle:
        machines.append(Lifecycle(env, tmp_path / "logs", pool))
        return machines[-1]

    with ThreadPoolExecutor(max_workers=6) as pool:
        run_state_machine_as_test(machine, settings=SETTINGS)  # type: ignore[arg-type]
    batches = sum(m.batches for m in machines)
    print(f"{len(machines)} runs of the state machine, {batches} batches")
    assert len(machines) >= SETTINGS.max_examples and batches > 3 * len(machines)  # more than the initial pod


EXEC_RACE_TRIES = 20


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The code a CRI call (or the result of a call's future) ends with."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return OK


def pod_with_container(env: ContainerEnv, logs: Path) -> tuple[str, str]:
    """A pod (one of ``Lifecycle``'s) with one container created in it, not started: their ids."""
    pb, rt = env.pb, env.runtime
    pods = PodEnv(env.daemon, env.net, env.base, rt, pb)
    pod = pods.run(pods.config(f"regression-{secrets.token_hex(3)}", log_directory=str(logs)))
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image=env.image),
                                command=["/bin/busybox", "sleep", "1000"])
    container = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod, config=config),
                                   timeout=CALL_TIMEOUT).container_id
    return pod, container


def test_a_created_container_is_not_started_in_a_stopped_pod(env: ContainerEnv, tmp_path: Path) -> None:
    pb, rt = env.pb, env.runtime
    pod, container = pod_with_container(env, tmp_path / "logs")
    try:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT)
        assert code_of(lambda: rt.StartContainer(pb.StartContainerRequest(container_id=container),
                                                 timeout=CALL_TIMEOUT)) == PRECONDITION
        status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=container), timeout=10).status
        assert status.state == pb.CONTAINER_CREATED
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT)
    assert traces(env.base, env.net, [pod, container]) == {}


def test_an_exec_racing_a_stop_is_not_unknown(env: ContainerEnv, tmp_path: Path) -> None:
    pb, rt = env.pb, env.runtime
    codes = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(EXEC_RACE_TRIES):
            pod, container = pod_with_container(env, tmp_path / "logs")
            try:
                rt.StartContainer(pb.StartContainerRequest(container_id=container), timeout=CALL_TIMEOUT)
                stop = pool.submit(rt.StopContainer, pb.StopContainerRequest(container_id=container, timeout=0),
                                   timeout=CALL_TIMEOUT)
                execs = [pool.submit(rt.ExecSync, pb.ExecSyncRequest(
                    container_id=container, cmd=["/bin/busybox", "true"], timeout=20), timeout=CALL_TIMEOUT)
                    for _ in range(3)]
                stop.result()
                codes += [code_of(future.result) for future in execs]
            finally:
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT)
            if grpc.StatusCode.UNKNOWN in codes:
                break
    assert set(codes) <= {OK, PRECONDITION, NOT_FOUND}, codes
