"""critest v1.36.0 against crirt with the gVisor handler (``--runtime-handler=runsc``) in mirror mode.

Every spec must pass except those in ``HOST_LIMITED`` (the runc run's) and ``GVISOR_LIMITED``: what gVisor
(runsc 20221219) does not offer by design, each with its reason; docs/gvisor.md lists them too. The ginkgo
JSON report is kept in ``tests/.artifacts/critest-runsc-report.json``. The run takes about 7 minutes on 2
cores.
"""

from __future__ import annotations

import os
import shutil

import pytest

from .conftest import CriEnv
from .critest_run import EXPECTED_SKIPS, left_behind, run_critest
from .test_critest import HOST_LIMITED

NS = "[k8s.io] Security Context NamespaceOption runtime should support "
BUCKET = "[k8s.io] Security Context bucket runtime should support "
SECCOMP = "[k8s.io] Security Context SeccompProfilePath "
SYSCTLS = "[k8s.io] PodSandbox runtime should support sysctls should support "
PROPAGATION = "[k8s.io] Container Mount Propagation runtime should support mount propagation mount with "
GVISOR_LIMITED: dict[str, str] = {
    NS + "HostIpc is true": "System V IPC lives in the sentry: the node's shared memory segments are not visible",
    NS + "HostIpc is false": "ipcs reads /proc/sysvipc/shm, which gVisor's /proc does not have",
    NS + "HostNetwork is true": "the check looks for a port of the node in the container's netstat, which reads "
                                "gVisor's /proc/net: it lists the sandbox's own sockets only",
    BUCKET + "Privileged is true": "brctl addbr: gVisor implements no bridge ioctls (SIOCBRADDBR), even for a "
                                   "privileged container",
    BUCKET + "adding capability": "brctl addbr: gVisor implements no bridge ioctls (SIOCBRADDBR), whatever the "
                                  "capabilities",
    BUCKET + "dropping capability": "ping expects 'permission denied' without CAP_NET_RAW; gVisor has no raw "
                                    "sockets at all ('Address family not supported'): without runsc --net-raw, "
                                    "and with it too in --network=host mode (the gvisor plugin's net_raw option "
                                    "helps with network = 'sandbox' only)",
    BUCKET + "MaskedPaths": "runsc 20221219 does not apply the spec's maskedPaths",
    BUCKET + "ReadonlyPaths": "runsc 20221219 does not apply the spec's readonlyPaths",
    SECCOMP + "should support seccomp localhost profile on the container":
        "runsc applies no OCI seccomp profile to a container that joins a sandbox, even with --oci-seccomp "
        "(the gvisor plugin's oci_seccomp option; tried: the flag reaches runsc-sandbox, chmod still succeeds)",
    SECCOMP + "should support seccomp default on the container":
        "gVisor's /proc/self/status shows 'Seccomp: 0' (the sentry's own filter is not the process's)",
    SECCOMP + "runtime should support an seccomp profile that blocks setting hostname with SYS_ADMIN":
        "runsc applies no OCI seccomp profile to a container that joins a sandbox, even with --oci-seccomp",
    "[k8s.io] Security Context NoNewPrivs should allow privilege escalation when false":
        "runsc 20221219 does not honour set-user-ID bits of the image's files",
    SYSCTLS + "safe sysctls": "gVisor's /proc/sys has no kernel.shm_rmid_forced",
    SYSCTLS + "unsafe sysctls": "gVisor's /proc/sys has no fs.mqueue.msg_max",
    "[k8s.io] Container Mount Readonly runtime should support readonly mounts should support non-recursive "
    "readonly mounts": "the gofer serves a bind mount as one tree: a read-only bind makes the node's mounts "
                       "under it read-only too",
    PROPAGATION + "'rshared' should support propagation from host to container and vice versa":
        "mounts made in the sandbox never reach the node: crirt refuses PROPAGATION_BIDIRECTIONAL "
        "(INVALID_ARGUMENT), runsc would refuse an rshared root",
    "[k8s.io] Container OOM runtime should output OOMKilled reason should terminate with exitCode 137 and "
    "reason OOMKilled": "a container's memory limit is not applied: the sandbox runs in the pod's infra cgroup, "
                        "and one container is never OOM-killed alone",
}
GVISOR_SKIPS = {
    **EXPECTED_SKIPS,
    "[k8s.io] Container Mount Readonly runtime should support readonly mounts should support recursive ":
        "recursive read-only mounts: the handler reports recursive_read_only_mounts = false (runsc 20221219 "
        "has no rro)",
    "[k8s.io] Container Mount Readonly runtime should support readonly mounts should reject a recursive ":
        "recursive read-only mounts: the handler reports recursive_read_only_mounts = false (runsc 20221219 "
        "has no rro)",
    "[k8s.io] Security Context UserNamespaces ": "the gvisor handler reports user_namespaces = false (crirt's "
                                                "user namespaces are prepared for runc)",
}
OPT_IN = "CRIRT_CRITEST_RUNSC"
"""Not in CI yet: an assertion of critest's attach/port-forward spec sometimes fires after that spec ended and
fails whichever spec runs then (2 of 4 runs with runsc); set this variable to 1 to run it."""

pytestmark = [pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc is not installed"),
              pytest.mark.skipif(os.environ.get(OPT_IN) != "1",
                                 reason=f"intermittent cross-spec assertion with runsc: set {OPT_IN}=1 to run")]


@pytest.mark.timeout(3600)
def test_critest_gvisor(cri_env: CriEnv) -> None:
    run_critest(cri_env, "critest-runsc", HOST_LIMITED | GVISOR_LIMITED, ("--runtime-handler=runsc",),
                GVISOR_SKIPS).check()
    left = left_behind(cri_env)
    assert not left, "\n".join(left)  # no runsc sandbox, gofer, conmon or holder, no mount or netns pin
