"""The pure parts of the conmon driver and of the cgroup stats reader (the real runs are in shims/runc-shim)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crirt.errors import InvalidArgument, Unimplemented
from crirt.shim import ExecProcess, Shim, ShimContext, Stdio
from crirt.shim.cgroups import (
    CgroupMount,
    CgroupStats,
    controller_dirs,
    memory_figures,
    parse_flat_keyed,
    parse_limit,
    parse_mountinfo,
    parse_proc_cgroup,
)
from crirt.shim.conmon import (
    ContainerFiles,
    RuntimeFailure,
    check_id,
    conmon_argv,
    exec_conmon_argv,
    is_conmon_of,
    looks_missing,
    parse_exec_report,
    parse_exit_code,
    parse_state,
    parse_sync_message,
    resize_message,
    runtime_error_text,
)

FILES = ContainerFiles(Path("/run/crirt/shims/runc"), "abc")


def argv(stdio: Stdio | None = None, systemd_cgroup: bool = False) -> list[str]:
    return conmon_argv(conmon=Path("/usr/bin/conmon"), runtime=Path("/usr/sbin/runc"),
                       runtime_args=["--root=/run/r", "--debug"], files=FILES, bundle=Path("/b"),
                       stdio=stdio or Stdio(), systemd_cgroup=systemd_cgroup)


def test_conmon_argv_names_every_file_and_passes_the_global_runtime_flags() -> None:
    assert argv(Stdio(log_path=Path("/var/log/pods/c.log"))) == [
        "/usr/bin/conmon", "--api-version", "1", "-c", "abc", "-u", "abc", "-n", "abc",
        "-r", "/usr/sbin/runc", "-b", "/b",
        "-p", "/run/crirt/shims/runc/containers/abc/pid", "-P", "/run/crirt/shims/runc/containers/abc/conmon.pid",
        "--persist-dir", "/run/crirt/shims/runc/containers/abc",
        "--exit-dir", "/run/crirt/shims/runc/exits", "--socket-dir-path", "/run/crirt/shims/runc/sockets",
        "-l", "k8s-file:/var/log/pods/c.log", "--runtime-arg=--root=/run/r", "--runtime-arg=--debug",
    ]


def test_conmon_argv_stdio_flags() -> None:
    assert argv()[argv().index("-l") + 1] == "none"
    assert argv(Stdio(terminal=True))[-1] == "--terminal"
    assert argv(Stdio(stdin=True))[-2:] == ["--stdin", "--leave-stdin-open"]
    assert argv(Stdio(stdin=True, stdin_once=True))[-1] == "--stdin"
    assert "--systemd-cgroup" in argv(systemd_cgroup=True) and "--systemd-cgroup" not in argv()


def test_exec_conmon_argv_waits_for_the_process_itself_and_hands_it_the_callers_stdio() -> None:
    exec_dir = FILES.exec_dir("e1")
    assert exec_conmon_argv(conmon=Path("/usr/bin/conmon"), runtime=Path("/usr/bin/runsc"),
                            runtime_args=["--root=/run/r"], container_id="abc", exec_dir=exec_dir,
                            exec_args=["--internal-pid-file", "/x"]) == [
        "/usr/bin/conmon", "--api-version", "1", "--sync", "--exec", "-c", "abc", "-u", "e1",
        "-r", "/usr/bin/runsc", "-p", f"{exec_dir}/pid", "--exec-process-spec", f"{exec_dir}/process.json",
        "-l", "passthrough", "--log-level", "error",
        "--runtime-arg=--root=/run/r", "--runtime-opt=--internal-pid-file", "--runtime-opt=/x",
    ]


def test_exec_reports() -> None:
    assert parse_exec_report(b'{"data": 4242}\n{"data": 7}\n') == (4242, 7)
    assert parse_exec_report(b'{"data": 4242}\n{"data": 0}\n') == (4242, 0)
    assert parse_exec_report(b'{"data": 4242}\n') == (4242, None)  # conmon died before the process ended
    assert parse_exec_report(b"") == (None, None)  # the runtime could not start the process
    assert parse_exec_report(b'{"data": -1, "message": "exec failed"}\n') == (None, None)


def test_container_files_layout() -> None:
    assert FILES.exit == Path("/run/crirt/shims/runc/exits/abc")
    assert FILES.attach == Path("/run/crirt/shims/runc/sockets/abc/attach")
    assert FILES.oom == FILES.dir / "oom" and FILES.exec_dir("e1") == FILES.dir / "exec" / "e1"


@pytest.mark.parametrize("value", ["", "../x", "a/b", "-rf", "x" * 129, "a b", ".hidden"])
def test_ids_that_could_escape_or_confuse_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        check_id(value)


def test_ids_in_use_are_accepted() -> None:
    assert check_id("0" * 64) == "0" * 64
    assert check_id("pod_1.container-2") == "pod_1.container-2"


def test_sync_messages() -> None:
    assert parse_sync_message(b'{"data": 4242}\n') == (4242, "")
    assert parse_sync_message(b'{"data": -1, "message": "bad rootfs"}\n') == (-1, "bad rootfs")
    with pytest.raises(RuntimeFailure, match="unreadable"):
        parse_sync_message(b"garbage")


def test_runtime_error_text_extracts_messages() -> None:
    logrus = 'time="2026-01-01T00:00:00Z" level=error msg="runc create failed: exec: \\"x\\": not found"\n'
    assert runtime_error_text(logrus) == 'runc create failed: exec: "x": not found'
    assert runtime_error_text('{"level":"error","msg":"container does not exist","time":"t"}\n') == \
        "container does not exist"
    assert runtime_error_text("crun: error opening file\n\nsecond line\n") == "crun: error opening file; second line"
    assert runtime_error_text("x" * 5000, limit=100) == "x" * 97 + "..."
    assert runtime_error_text("") == ""


def test_missing_container_wordings() -> None:
    assert looks_missing("container does not exist")
    assert looks_missing("error opening file `/run/crun/x/status`: No such file or directory")
    assert not looks_missing("container not running")


def test_state_and_exit_parsing() -> None:
    state = parse_state('{"ociVersion": "1.0.2-dev", "id": "c1", "pid": 27932, "status": "running", '
                        '"bundle": "/b", "rootfs": "/b/rootfs", "created": "2026-11-26T17:03:35Z", "owner": ""}')
    assert (state.id, state.status, state.pid) == ("c1", "running", 27932)
    assert parse_state('{"id": "c1", "pid": 0, "status": "stopped"}').pid == 0
    assert parse_exit_code("137") == 137 and parse_exit_code("0\n") == 0


def test_conmon_identity_guards_pid_reuse() -> None:
    cmdline = b"/usr/bin/conmon\0--api-version\0" + b"1\0-c\0abc\0-u\0abc\0"
    assert is_conmon_of(cmdline, "abc")
    assert not is_conmon_of(cmdline, "ab")
    assert not is_conmon_of(b"/bin/sleep\0-c\0abc\0", "abc")
    assert not is_conmon_of(b"", "abc")


def test_resize_message_is_height_then_width() -> None:
    assert resize_message(width=132, height=40) == b"1 40 132\n"


HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - ext4 /dev/sda rw
"""

HYBRID_PROC_CGROUP = """\
9:name=systemd:/crirt/c1
8:pids:/crirt/c1
4:memory:/outer/crirt/c1
2:cpu,cpuacct:/crirt/c1
0::/crirt/c1
"""


def test_mountinfo_finds_v1_and_v2_hierarchies() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [(m.version, str(m.mount_point)) for m in mounts] == [
        (1, "/sys/fs/cgroup/cpu,cpuacct"), (1, "/sys/fs/cgroup/memory"), (1, "/sys/fs/cgroup/pids"),
        (1, "/sys/fs/cgroup/systemd"), (2, "/sys/fs/cgroup/unified")]
    assert mounts[0].controllers == {"cpu", "cpuacct"}
    v2 = parse_mountinfo("29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
    assert v2 == [CgroupMount(2, Path("/sys/fs/cgroup"), "/", frozenset())]


def test_proc_cgroup_and_controller_dirs_on_a_hybrid_host() -> None:
    proc = parse_proc_cgroup(HYBRID_PROC_CGROUP)
    assert proc["cpuacct"] == proc["cpu"] == "/crirt/c1" and proc["memory"] == "/outer/crirt/c1"
    assert controller_dirs(proc, parse_mountinfo(HYBRID_MOUNTINFO)) == {
        "": Path("/sys/fs/cgroup/unified/crirt/c1"),
        "memory": Path("/sys/fs/cgroup/memory/outer/crirt/c1"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct/crirt/c1"),
        "pids": Path("/sys/fs/cgroup/pids/crirt/c1"),
    }


def test_controller_dirs_on_v2_and_inside_a_mount_with_a_root() -> None:
    v2 = [CgroupMount(2, Path("/sys/fs/cgroup"), "/", frozenset())]
    assert controller_dirs({"": "/kubepods/pod1/c1"}, v2) == {"": Path("/sys/fs/cgroup/kubepods/pod1/c1")}
    nested = [CgroupMount(2, Path("/sys/fs/cgroup"), "/kubepods", frozenset())]
    assert controller_dirs({"": "/kubepods/c1"}, nested) == {"": Path("/sys/fs/cgroup/c1")}


def test_flat_keyed_files_and_limits() -> None:
    assert parse_flat_keyed("usage_usec 1500\nuser_usec 1000\nweird line\n") == {"usage_usec": 1500,
                                                                                  "user_usec": 1000}
    assert parse_limit("max\n") is None
    assert parse_limit("9223372036854771712\n") is None
    assert parse_limit("33554432\n") == 32 << 20


def test_memory_figures_v1_and_v2() -> None:
    v1 = memory_figures(1, 10_000, 50_000, {"total_inactive_file": 3_000, "total_rss": 4_000, "inactive_file": 1,
                                            "total_pgfault": 7, "total_pgmajfault": 1})
    assert v1 == {"usage_bytes": 10_000, "working_set_bytes": 7_000, "rss_bytes": 4_000,
                  "available_bytes": 43_000, "page_faults": 7, "major_page_faults": 1}
    v2 = memory_figures(2, 10_000, None, {"inactive_file": 12_000, "anon": 5_000, "pgfault": 9, "pgmajfault": 0})
    assert v2 == {"usage_bytes": 10_000, "working_set_bytes": 0, "rss_bytes": 5_000, "available_bytes": None,
                  "page_faults": 9, "major_page_faults": 0}


def test_stats_dict_leaves_out_what_could_not_be_read() -> None:
    assert CgroupStats(timestamp=1, usage_bytes=5, process_count=2).as_dict() == {
        "timestamp": 1, "memory": {"usage_bytes": 5}, "process": {"process_count": 2}}


def test_a_plugin_without_the_optional_methods_answers_unimplemented() -> None:
    """``exec_sync`` and ``exec_interactive`` were added to the contract with defaults, so plugins written
    before them still load."""

    async def unused(*args: object) -> None:
        raise NotImplementedError

    class OldShim(Shim):
        api_version = "2.0"
        features = create = start = kill = wait = delete = state = attach = resize = update = stats = unused

    old = OldShim(ShimContext(handler="h", root=Path("/r"), state=Path("/s")), {})
    with pytest.raises(Unimplemented, match="OldShim"):
        asyncio.run(old.exec_sync("c", ExecProcess(exec_id="e", process={}), None))
    with pytest.raises(Unimplemented, match="OldShim does not support interactive exec"):
        asyncio.run(old.exec_interactive("c", ExecProcess(exec_id="e", process={})))
