"""Wire-identity check between crirt's copies of the shim v2 protos and the upstream ones.

crirt keeps the containerd task API, the types it uses, the runc shim's options and ttrpc's envelope under
``protos/containerd`` and ``protos/ttrpc`` with its own comments. This test compiles each of them and its
upstream reference (``<shared>/containerd-shim-api`` and ``<shared>/ttrpc``) and requires the two
FileDescriptorProtos to be byte-for-byte equal once source info is stripped and the file names (which differ
only by crirt's ``containerd/`` directory) are mapped to upstream's.
"""

from __future__ import annotations

import difflib
import importlib.resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format
from grpc_tools import protoc
from support.shared import shared_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTOS = REPO_ROOT / "protos"

# crirt's file name -> (reference directory under shared/, reference file name)
FILES = {
    "containerd/runtime/task/v2/shim.proto": ("containerd-shim-api", "runtime/task/v2/shim.proto"),
    "containerd/types/mount.proto": ("containerd-shim-api", "types/mount.proto"),
    "containerd/types/task/task.proto": ("containerd-shim-api", "types/task/task.proto"),
    "containerd/types/runc/options/oci.proto": ("containerd-shim-api", "types/runc-options-oci.proto"),
    "ttrpc/request.proto": ("ttrpc", "request.proto"),
}
RENAMES = {ours: ref for ours, (_, ref) in FILES.items()}


def _compile(includes: list[Path], name: str, out: Path) -> descriptor_pb2.FileDescriptorProto:
    """Compile ``name`` found on ``includes``; return its descriptor without source info."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = ["grpc_tools.protoc", *(f"-I{d}" for d in includes), f"-I{well_known}", f"--descriptor_set_out={out}",
            name]
    assert protoc.main(args) == 0, f"protoc failed for {name} on {includes}"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    (fd,) = [f for f in fds.file if f.name == name]
    fd.ClearField("source_code_info")
    return fd


@pytest.mark.parametrize("ours_name", sorted(FILES))
def test_proto_is_wire_identical_to_upstream(ours_name: str, tmp_path: Path) -> None:
    ref_dir, ref_name = FILES[ours_name]
    ref_root = shared_dir() / ref_dir
    if not (ref_root / ref_name).is_file():
        pytest.fail(f"upstream reference {ref_root / ref_name} not found; set CRIRT_SHARED_DIR", pytrace=False)
    ours = _compile([PROTOS], ours_name, tmp_path / "ours.pb")
    ours.name = RENAMES[ours.name]
    ours.dependency[:] = [RENAMES.get(dep, dep) for dep in ours.dependency]
    # ttrpc's request.proto imports google/rpc/status.proto, which upstream takes from googleapis.
    ref = _compile([ref_root, PROTOS], ref_name, tmp_path / "ref.pb")
    if ours.SerializeToString(deterministic=True) != ref.SerializeToString(deterministic=True):
        diff = difflib.unified_diff(text_format.MessageToString(ref).splitlines(),
                                    text_format.MessageToString(ours).splitlines(), "upstream", "crirt", lineterm="")
        pytest.fail(f"{ours_name} differs from upstream {ref_name}:\n" + "\n".join(diff), pytrace=False)


def test_task_service_has_every_rpc(tmp_path: Path) -> None:
    fd = _compile([PROTOS], "containerd/runtime/task/v2/shim.proto", tmp_path / "shim.pb")
    assert [m.name for m in fd.service[0].method] == [
        "State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint", "Kill", "Exec", "ResizePty",
        "CloseIO", "Update", "Wait", "Stats", "Connect", "Shutdown"]
