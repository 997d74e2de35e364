"""Regenerate crirt's gRPC bindings (betterproto2 + async grpclib servers) from protos/.

Usage: python tools/genproto.py [OUT_DIR]   (default: crirt/_gen, replaced whole)
The output is committed and never edited by hand; tests/unit/test_generated.py checks it is fresh.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "protos"
PROTO_FILES = [
    "runtime/v1/api.proto",
    "google/rpc/status.proto",
    "ttrpc/request.proto",
    "containerd/types/mount.proto",
    "containerd/types/task/task.proto",
    "containerd/types/runc/options/oci.proto",
    "containerd/runtime/task/v2/shim.proto",
    "containerd/runtimeoptions/v1/api.proto",
    "containerd/events/task.proto",
    "containerd/services/events/ttrpc/v1/events.proto",
]
PLUGIN_OPTIONS = "client_generation=async,server_generation=async,google_protobuf_descriptors"


def generate(out_dir: Path) -> None:
    """Run protoc with the betterproto2 plugin into out_dir (which must be empty or absent)."""
    bindir = Path(sys.executable).parent
    plugin = bindir / "protoc-gen-python_betterproto2"
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env_path = f"{bindir}:{Path('/usr/bin')}:{Path('/bin')}"  # the plugin formats with ruff from the venv
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--plugin=protoc-gen-python_betterproto2={plugin}",
            f"--python_betterproto2_out={out_dir}",
            f"--python_betterproto2_opt={PLUGIN_OPTIONS}",
            *(str(PROTO_DIR / name) for name in PROTO_FILES),
        ],
        check=True,
        cwd=out_dir,  # the plugin formats with ruff: keep the project's ruff settings out of it
        env={"PATH": env_path},
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "crirt" / "_gen"
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "gen"
        generate(fresh)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(fresh, target)
    print(f"generated {target}")


if __name__ == "__main__":
    main()
