"""conmon killed with SIGKILL under a running container. A container that writes to its log dies of the broken
pipe: its exit must be reported within the exit sweep (1 s here) as ContainerStatus EXITED with a reason, and as
a stopped event. A quiet container outlives its monitor: it stays RUNNING and StopContainer still ends it. Stop
and remove work afterwards and leave nothing behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.containers import ContainerEnv, Events, conmons_under, container_env
from support.network import PodEnv, runc_shim_installed, wait_until
from support.pods import run_container

from .conftest import traces

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

SWEEP = '[runtimes.runc]\nshim = "runc"\noptions = { exit_sweep_interval = 1 }\n'
CHATTY = "while echo tick; do /bin/busybox sleep 0.1; done; exit 3"  # ends when its log pipe breaks
QUIET = "exec /bin/busybox sleep 1000"


@pytest.fixture
def env(tmp_path: Path, pb: ModuleType) -> Iterator[ContainerEnv]:
    """A daemon whose runc handler sweeps for unreported exits every second, with busybox pulled."""
    with container_env(tmp_path, pb, SWEEP) as made:
        made.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=made.image)), timeout=60)
        yield made


def kill_conmon(env: ContainerEnv, container_id: str) -> None:
    """SIGKILL the conmon monitoring ``container_id`` (found by its ``-c <id>`` argument)."""
    [pid] = [pid for pid, cid in conmons_under(env.base).items() if cid == container_id]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: container_id not in conmons_under(env.base).values(), 5)


def status(env: ContainerEnv, container_id: str) -> Any:
    return env.runtime.ContainerStatus(env.pb.ContainerStatusRequest(container_id=container_id), timeout=5).status


def test_the_exit_after_conmon_was_killed_is_reported_and_cleaned_up(env: ContainerEnv, tmp_path: Path) -> None:
    pb, rt = env.pb, env.runtime
    pods = PodEnv(env.daemon, env.net, env.base, rt, pb)
    sandbox = pods.run(pods.config("monitorless", log_directory=str(tmp_path / "logs")))
    events = Events(env)
    try:
        chatty = run_container(rt, pb, sandbox, env.image, "chatty", CHATTY)
        quiet = run_container(rt, pb, sandbox, env.image, "quiet", QUIET)
        wait_until(lambda: events.of(quiet) == ["CONTAINER_CREATED_EVENT", "CONTAINER_STARTED_EVENT"], 10)
        killed = time.time_ns()
        kill_conmon(env, chatty)
        kill_conmon(env, quiet)

        ended = wait_until(lambda: status(env, chatty).state == pb.CONTAINER_EXITED and status(env, chatty), 5)
        assert killed < ended.finished_at <= time.time_ns()
        assert ended.exit_code != 0 and ended.reason, ended  # not reported as a success
        wait_until(lambda: "CONTAINER_STOPPED_EVENT" in events.of(chatty), 5)
        time.sleep(2.5)  # two sweeps: the quiet container runs on without its monitor, and is still reported so
        assert status(env, quiet).state == pb.CONTAINER_RUNNING
        assert "CONTAINER_STOPPED_EVENT" not in events.of(quiet)

        for container_id in (chatty, quiet):
            rt.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=1), timeout=30)
            assert status(env, container_id).state == pb.CONTAINER_EXITED
        assert events.of(quiet)[-1] == "CONTAINER_STOPPED_EVENT"
        for container_id in (chatty, quiet):
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)
        assert traces(env.base, env.net, [chatty, quiet]) == {}
        pods.stop(sandbox)
        pods.remove(sandbox)
        assert traces(env.base, env.net, [sandbox, chatty, quiet]) == {}
    finally:
        events.close()


def test_an_exit_lost_with_conmon_is_reported_as_unknown_with_a_message(env: ContainerEnv, tmp_path: Path) -> None:
    pb, rt = env.pb, env.runtime
    pods = PodEnv(env.daemon, env.net, env.base, rt, pb)
    sandbox = pods.run(pods.config("lost-exit", log_directory=str(tmp_path / "logs")))
    chatty = run_container(rt, pb, sandbox, env.image, "chatty", CHATTY)
    kill_conmon(env, chatty)
    ended = wait_until(lambda: status(env, chatty).state == pb.CONTAINER_EXITED and status(env, chatty), 5)
    pods.stop(sandbox)
    pods.remove(sandbox)
    assert ended.exit_code == 255  # the code is lost with conmon: crirt says so rather than guess
    assert (ended.reason, bool(ended.message)) == ("Unknown", True), ended
