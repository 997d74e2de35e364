"""Running and stopping a pod's infra container (``pid: POD`` pods) through the pod's runtime handler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from crirt.errors import CrirtError, FailedPrecondition, NotFound
from crirt.model.sandbox import PodSandboxConfig
from crirt.oci.infra import infra_cgroups_path, infra_spec, own_oom_score_adj
from crirt.oci.spec import pod_namespace_options
from crirt.oci.userns import plan_user_namespace
from crirt.shim.contract import CreateTask, Shim, TaskState
from crirt.shim.registry import ShimRegistry

KILL_WAIT = 10.0
"""Seconds to wait for the infra process to die after SIGKILL before deleting it anyway."""


def cri_annotations(sandbox_id: str, config: PodSandboxConfig) -> dict[str, str]:
    """The annotations sandbox-aware runtimes (gVisor, Kata) read to recognise a pod's sandbox container."""
    meta = config.metadata
    return {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": sandbox_id,
        "io.kubernetes.cri.sandbox-name": meta.name if meta else "",
        "io.kubernetes.cri.sandbox-namespace": meta.namespace if meta else "",
        "io.kubernetes.cri.sandbox-uid": meta.uid if meta else "",
        "io.kubernetes.cri.sandbox-log-directory": config.log_directory,
    }


@dataclass
class InfraRunner:
    """Writes the infra container's bundle and drives it through the handler's shim."""

    registry: ShimRegistry
    binary: Path
    cgroup_driver: str

    def check_prerequisites(self) -> None:
        """FAILED_PRECONDITION when this node cannot run an infra container at all."""
        if not self.binary.is_file():
            raise FailedPrecondition(f"pods with a shared PID namespace (pid: POD) need the infra binary "
                                     f"{self.binary} (Debian package catatonit; [sandboxes] infra_binary)")
        if self.cgroup_driver == "systemd" and not Path("/run/systemd/system").is_dir():
            raise FailedPrecondition("cgroup_driver is systemd, but systemd is not running on this node: "
                                     "use cgroup_driver = \"cgroupfs\"")

    async def start(self, shim: Shim, sandbox_id: str, config: PodSandboxConfig, bundle: Path,
                    join: dict[str, Path], cgroup_parent: str) -> int:
        """Create and start the infra container; returns its pid."""
        context = config.linux.security_context if config.linux else None
        uid = context.run_as_user.value if context and context.run_as_user else 0
        gid = context.run_as_group.value if context and context.run_as_group else 0
        annotations = cri_annotations(sandbox_id, config)
        userns = plan_user_namespace(pod_namespace_options(config), "linux.security_context.namespace_options")
        spec = infra_spec(sandbox_id=sandbox_id, binary=self.binary, join=join,
                          cgroups_path=infra_cgroups_path(self.cgroup_driver, cgroup_parent, sandbox_id),
                          own_oom_score_adj=own_oom_score_adj(), uid=uid, gid=gid, annotations=annotations,
                          user_mappings=userns.oci_mappings() if userns else None)
        (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
        if userns is not None:  # runc makes the mount points in it as the pod's root
            os.chown(bundle / "rootfs", *userns.root)
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        await shim.create(CreateTask(id=sandbox_id, sandbox_id=sandbox_id, bundle=bundle, annotations=annotations))
        state = await shim.start(sandbox_id)
        return getattr(state, "pid", 0) or 0

    async def stop(self, handler: str, sandbox_id: str) -> None:
        """SIGKILL the infra container (it holds nothing worth a grace period), wait briefly, delete it.
        A task that is already gone is fine."""
        shim = self.registry.resolve(handler)
        try:
            await shim.kill(sandbox_id, signal.SIGKILL, all_processes=True)
        except NotFound:
            pass
        else:
            with contextlib.suppress(NotFound, TimeoutError):
                await asyncio.wait_for(shim.wait(sandbox_id), KILL_WAIT)
        await shim.delete(sandbox_id)

    async def state(self, handler: str, sandbox_id: str) -> TaskState | None:
        """The infra container's state as its runtime reports it; ``status="unknown"`` when the handler is
        unavailable or cannot tell, None when the runtime does not know the container."""
        try:
            shim = self.registry.resolve(handler)
        except CrirtError:
            return TaskState(id=sandbox_id, status="unknown")
        try:
            return await shim.state(sandbox_id)
        except NotFound:
            return None
        except Exception:
            return TaskState(id=sandbox_id, status="unknown")
