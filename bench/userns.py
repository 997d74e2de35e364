"""RunPodSandbox with a user namespace (``hostUsers: false``) against without one, on crirt.

crirt is started fresh on private directories under /var/tmp (runc, as the root of a pod's user namespace, must
pass through them: 0711) with its own bridge network (``bench/sandbox.py``'s ``measure`` set-up). ``--pods``
kubelet-style pods are run one after another, alternately with and without a user namespace (mode POD, one uid
and one gid mapping of 65536 ids from ``--host-id``), each RunPodSandbox timed, then all are removed.

Run as root: ``python bench/userns.py [--pods 20] [--host-id 200000]``. Prints the medians and p90s and the
ratio; the target (issue 15) is a user namespace costing <= 1.3x.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import peer  # noqa: E402 - sibling scripts and the tests' network helper, not packages
import sandbox  # noqa: E402
from support.network import BridgeNetwork  # noqa: E402

IDS = 65536


def with_userns(pb: ModuleType, config: Any, host_id: int) -> Any:
    """``config`` with the pod user namespace the kubelet asks for when ``hostUsers: false``."""
    mapping = pb.IDMapping(host_id=host_id, container_id=0, length=IDS)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(
        pb.UserNamespace(mode=pb.POD, uids=[mapping], gids=[mapping]))
    return config


def run(base: Path, pb: ModuleType, pb_grpc: ModuleType, pods: int, host_id: int) -> dict[str, list[float]]:
    net = BridgeNetwork(base / "crirt" / "cni")
    net.write()
    times: dict[str, list[float]] = {"plain": [], "userns": []}
    try:
        with peer.crirt(base / "crirt", []) as endpoint, grpc.insecure_channel(endpoint) as channel:
            stub = pb_grpc.RuntimeServiceStub(channel)
            for warm in (sandbox.pod_config(pb, -1, pb.CONTAINER),
                         with_userns(pb, sandbox.pod_config(pb, -2, pb.CONTAINER), host_id)):
                sandbox.timed_run(stub, pb, warm)
            sandbox.remove_all(stub, pb)
            for i in range(pods):
                config = sandbox.pod_config(pb, i, pb.CONTAINER)
                kind = "userns" if i % 2 else "plain"
                if kind == "userns":
                    config = with_userns(pb, config, host_id)
                times[kind].append(sandbox.timed_run(stub, pb, config))
            sandbox.remove_all(stub, pb)
    finally:
        net.cleanup(base / "crirt" / "state")
        peer.unmount_under(base)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--host-id", type=int, default=200000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="crirt-bench-userns-", dir="/var/tmp"))
    base.chmod(0o711)
    try:
        pb, pb_grpc = peer.compile_stubs(base / "stubs")
        times = run(base, pb, pb_grpc, args.pods, args.host_id)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    medians = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    for kind, values in times.items():
        print(f"{kind:7} pods {len(values):3d}  p50 {medians[kind]:7.1f} ms  "
              f"p90 {sandbox.percentile(values, 0.9) * 1000:7.1f} ms")
    ratio = medians["userns"] / medians["plain"]
    print(f"user namespace / plain p50: {ratio:.2f}x (target <= 1.3x) {'ok' if ratio <= 1.3 else 'MISSED'}")


if __name__ == "__main__":
    main()
