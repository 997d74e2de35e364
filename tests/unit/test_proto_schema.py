"""Wire-identity check between crirt's CRI schema and the upstream cri-api one.

``protos/runtime/v1/api.proto`` is crirt's own copy of the CRI ``runtime.v1``
schema (own comments, identical wire format).  This test compiles it and the
upstream reference (cri-api v0.36.3, kept in ``<shared>/cri-api/api.proto``)
with grpcio-tools and requires the two FileDescriptorProtos to be byte-for-byte
equal once source info (comments, line numbers) is stripped.

The reference is located by ``support.shared.shared_dir`` (``$CRIRT_SHARED_DIR``,
else ``shared/`` beside the checkout or beside the repository it was cloned
from).  If it cannot be found the test fails: a missing reference must never
turn into a silent pass.
"""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from support.shared import shared_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
OURS = REPO_ROOT / "protos" / "runtime" / "v1" / "api.proto"
PROTO_NAME = "runtime/v1/api.proto"
EXPECTED_RPC_COUNT = 41


def _reference_proto() -> Path:
    ref = shared_dir() / "cri-api" / "api.proto"
    if not ref.is_file():
        pytest.fail(
            f"upstream CRI reference schema not found at {ref}; set CRIRT_SHARED_DIR "
            "to the directory containing cri-api/api.proto (cri-api v0.36.3)",
            pytrace=False,
        )
    return ref


def _compile(include_dir: Path, out: Path) -> descriptor_pb2.FileDescriptorProto:
    """Compile ``include_dir/runtime/v1/api.proto`` and return its descriptor."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{include_dir}",
        f"-I{well_known}",
        f"--descriptor_set_out={out}",
        PROTO_NAME,
    ]
    rc = protoc.main(args)
    assert rc == 0, f"protoc failed (rc={rc}) for {include_dir / PROTO_NAME}"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    files = [f for f in fds.file if f.name == PROTO_NAME]
    assert len(files) == 1, [f.name for f in fds.file]
    fd = files[0]
    fd.ClearField("source_code_info")
    return fd


def _field_sig(f: descriptor_pb2.FieldDescriptorProto) -> tuple:
    return (
        f.name,
        f.number,
        descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
        descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
        f.type_name,
        f.json_name,
        f.oneof_index if f.HasField("oneof_index") else None,
        f.proto3_optional,
        f.options.SerializeToString(deterministic=True),
    )


def _rpc_sig(m: descriptor_pb2.MethodDescriptorProto) -> tuple:
    return (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)


def _walk_messages(prefix: str, msgs) -> list[tuple[str, descriptor_pb2.DescriptorProto]]:
    out = []
    for m in msgs:
        name = f"{prefix}.{m.name}"
        out.append((name, m))
        out.extend(_walk_messages(name, m.nested_type))
    return out


def _walk_enums(
    fd: descriptor_pb2.FileDescriptorProto,
) -> list[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    out = [(f".{fd.package}.{e.name}", e) for e in fd.enum_type]
    for mname, m in _walk_messages(f".{fd.package}", fd.message_type):
        out.extend((f"{mname}.{e.name}", e) for e in m.enum_type)
    return out


def _first_difference(
    ours: descriptor_pb2.FileDescriptorProto, ref: descriptor_pb2.FileDescriptorProto
) -> str | None:
    """Return a human-readable description of the first structural difference."""
    for attr in ("syntax", "package"):
        if getattr(ours, attr) != getattr(ref, attr):
            return f"{attr}: ours={getattr(ours, attr)!r} ref={getattr(ref, attr)!r}"
    if ours.options != ref.options:
        return f"file options differ: ours={ours.options} ref={ref.options}"
    if list(ours.dependency) != list(ref.dependency):
        return f"imports differ: ours={list(ours.dependency)} ref={list(ref.dependency)}"

    # Services and RPCs.
    o_svcs = [s.name for s in ours.service]
    r_svcs = [s.name for s in ref.service]
    if o_svcs != r_svcs:
        return f"services differ: ours={o_svcs} ref={r_svcs}"
    for os_, rs in zip(ours.service, ref.service):
        o_rpcs = [m.name for m in os_.method]
        r_rpcs = [m.name for m in rs.method]
        if o_rpcs != r_rpcs:
            for i in range(max(len(o_rpcs), len(r_rpcs))):
                a = o_rpcs[i] if i < len(o_rpcs) else None
                b = r_rpcs[i] if i < len(r_rpcs) else None
                if a != b:
                    return f"service {rs.name}: RPC #{i} differs: ours={a} ref={b}"
        for om, rm in zip(os_.method, rs.method):
            if _rpc_sig(om) != _rpc_sig(rm):
                return f"RPC {rs.name}.{rm.name} differs:\n ours={_rpc_sig(om)}\n ref ={_rpc_sig(rm)}"
            if om != rm:
                return f"RPC {rs.name}.{rm.name} differs (options?)"
        if os_ != rs:
            return f"service {rs.name} differs (options?)"

    # Messages (including nested), in declaration order.
    o_msgs = _walk_messages(f".{ours.package}", ours.message_type)
    r_msgs = _walk_messages(f".{ref.package}", ref.message_type)
    o_names = [n for n, _ in o_msgs]
    r_names = [n for n, _ in r_msgs]
    if o_names != r_names:
        for i, (a, b) in enumerate(zip(o_names, r_names)):
            if a != b:
                return f"message #{i} differs: ours={a} ref={b}"
        return f"message count differs: ours={len(o_names)} ref={len(r_names)}"
    for (name, om), (_, rm) in zip(o_msgs, r_msgs):
        o_fields = [_field_sig(f) for f in om.field]
        r_fields = [_field_sig(f) for f in rm.field]
        if o_fields != r_fields:
            for i in range(max(len(o_fields), len(r_fields))):
                a = o_fields[i] if i < len(o_fields) else None
                b = r_fields[i] if i < len(r_fields) else None
                if a != b:
                    return f"message {name}: field #{i} differs:\n ours={a}\n ref ={b}"
        if [o.name for o in om.oneof_decl] != [o.name for o in rm.oneof_decl]:
            return f"message {name}: oneofs differ"
        if om != rm:
            return f"message {name} differs (options/reserved ranges?):\n ours={om}\n ref ={rm}"

    # Enums (top-level and nested).
    o_enums = _walk_enums(ours)
    r_enums = _walk_enums(ref)
    if [n for n, _ in o_enums] != [n for n, _ in r_enums]:
        return f"enum list differs:\n ours={[n for n, _ in o_enums]}\n ref ={[n for n, _ in r_enums]}"
    for (name, oe), (_, re_) in zip(o_enums, r_enums):
        o_vals = [(v.name, v.number) for v in oe.value]
        r_vals = [(v.name, v.number) for v in re_.value]
        if o_vals != r_vals:
            for i in range(max(len(o_vals), len(r_vals))):
                a = o_vals[i] if i < len(o_vals) else None
                b = r_vals[i] if i < len(r_vals) else None
                if a != b:
                    return f"enum {name}: value #{i} differs: ours={a} ref={b}"
        if oe != re_:
            return f"enum {name} differs (options?)"
    return None


@pytest.fixture(scope="module")
def descriptors(
    tmp_path_factory,
) -> tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.FileDescriptorProto]:
    ref_src = _reference_proto()
    assert OURS.is_file(), f"crirt schema missing: {OURS}"
    tmp = tmp_path_factory.mktemp("proto_schema")

    ref_root = tmp / "ref"
    (ref_root / "runtime" / "v1").mkdir(parents=True)
    shutil.copyfile(ref_src, ref_root / PROTO_NAME)

    ours = _compile(REPO_ROOT / "protos", tmp / "ours.pb")
    ref = _compile(ref_root, tmp / "ref.pb")
    return ours, ref


def test_schema_is_wire_identical_to_reference(descriptors) -> None:
    ours, ref = descriptors
    diff = _first_difference(ours, ref)
    assert diff is None, f"crirt schema differs from cri-api reference: {diff}"
    assert ours.SerializeToString(deterministic=True) == ref.SerializeToString(deterministic=True), (
        "serialized FileDescriptorProtos differ although no structural difference was found"
    )


def test_rpc_count(descriptors) -> None:
    ours, ref = descriptors
    assert [s.name for s in ours.service] == ["RuntimeService", "ImageService"]
    assert sum(len(s.method) for s in ours.service) == EXPECTED_RPC_COUNT
    assert sum(len(s.method) for s in ref.service) == EXPECTED_RPC_COUNT
