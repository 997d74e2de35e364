"""The tar reader and the layer unpacker: parity with tarfile, overlay whiteouts, and hostile archives."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.images import LayerTar

from crirt.errors import FailedPrecondition, ResourceExhausted
from crirt.images.tarstream import TarReader, parse_pax
from crirt.images.unpack import disk_usage, entry_parts, unpack

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="device nodes, owners and trusted.* xattrs need root")


def chunks(data: bytes, size: int = 777) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def run(tar: bytes, root: Path, max_entries: int = 1000, size: int = 777) -> int:
    root.mkdir(exist_ok=True)
    return unpack(TarReader(chunks(tar, size)), str(root), max_entries, "test layer")


def listing(root: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """path -> (mode, uid, gid, mtime, link target or content) for everything under root."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            info = os.lstat(path)
            body = os.readlink(path) if path.is_symlink() else (path.read_bytes().hex()[:40] if path.is_file() else "")
            out[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid, int(info.st_mtime), body)
    return out


@ROOT_ONLY
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_same_tree_as_tarfile(tmp_path: Path, fmt: int) -> None:
    buffer = io.BytesIO()
    long_dir = "d" * 60 + "/" + "e" * 60 if fmt != tarfile.USTAR_FORMAT else "short"
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, kind, data, extra in [
            ("dir", tarfile.DIRTYPE, b"", {"mode": 0o750, "uid": 7, "gid": 8}),
            (f"dir/{long_dir}", tarfile.DIRTYPE, b"", {}),
            (f"dir/{long_dir}/{'f' * 120 if fmt != tarfile.USTAR_FORMAT else 'f'}", tarfile.REGTYPE, b"x" * 5000,
             {"mode": 0o6755}),
            ("dir/empty", tarfile.REGTYPE, b"", {"mtime": 12345}),
            ("dir/link", tarfile.SYMTYPE, b"", {"linkname": "../somewhere/" + "l" * 110
                                               if fmt != tarfile.USTAR_FORMAT else "x"}),
            ("dir/hard", tarfile.LNKTYPE, b"", {"linkname": "dir/empty"}),
            ("dir/null", tarfile.CHRTYPE, b"", {"devmajor": 1, "devminor": 3}),
            ("dir/disk", tarfile.BLKTYPE, b"", {"devmajor": 7, "devminor": 0}),
            ("dir/pipe", tarfile.FIFOTYPE, b"", {}),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime = kind, len(data), extra.pop("mtime", 1_600_000_000)
            info.mode = extra.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)
    data = buffer.getvalue()
    count = run(data, tmp_path / "ours", size=333)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "theirs", numeric_owner=True)
        assert count == len(tar.getmembers())
    ours, theirs = listing(tmp_path / "ours"), listing(tmp_path / "theirs")
    symlinks = {k for k, v in ours.items() if stat.S_ISLNK(v[0])}
    assert {k: v for k, v in ours.items() if k not in symlinks} == {k: v for k, v in theirs.items()
                                                                   if k not in symlinks}
    assert {k: ours[k][4] for k in symlinks} == {k: theirs[k][4] for k in symlinks}
    assert os.lstat(tmp_path / "ours/dir/hard").st_ino == os.lstat(tmp_path / "ours/dir/empty").st_ino


@ROOT_ONLY
def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    layer = (LayerTar().dir("etc").whiteout("etc/passwd").opaque("var").file("var/kept", b"k")
             .file("mine", b"m").whiteout("mine").dir("sub").file("sub/x", b"x").whiteout("sub")
             .file(".wh..wh.plnk", b"").whiteout("gone").dir("gone").file("gone/new", b"n"))
    run(layer.bytes(), tmp_path)
    whiteout = os.lstat(tmp_path / "etc/passwd")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(tmp_path / "var", "trusted.overlay.opaque") == b"y"
    assert (tmp_path / "var/kept").read_bytes() == b"k"
    assert (tmp_path / "mine").read_bytes() == b"m"  # a whiteout hides lower layers only, not its own layer
    assert os.getxattr(tmp_path / "sub", "trusted.overlay.opaque") == b"y" and (tmp_path / "sub/x").exists()
    assert os.getxattr(tmp_path / "gone", "trusted.overlay.opaque") == b"y"  # removed, then made again
    assert not list(tmp_path.rglob(".wh.*"))


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    layer = (LayerTar().file("a", b"file").dir("a").file("a/b", b"inner").file("a", b"file again")
             .symlink("s", "x").file("s", b"now a file").dir("d").dir("d", mode=0o700))
    run(layer.bytes(), tmp_path)
    assert (tmp_path / "a").read_bytes() == b"file again" and (tmp_path / "s").read_bytes() == b"now a file"
    assert stat.S_IMODE(os.lstat(tmp_path / "d").st_mode) == 0o700


@ROOT_ONLY
def test_absolute_names_are_relative_to_the_layer_root_and_root_entries_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    root.mkdir(mode=0o755)
    before = os.lstat(root)
    layer = (LayerTar().dir("/", mode=0o700, uid=5).dir("./", mode=0o777).dir("/bin")
             .file("/bin/busybox", b"bb", mode=0o755).symlink("/bin/sh", "/bin/busybox")
             .hardlink("/bin/hard", "/bin/busybox", mode=0o755).file("//etc/./passwd", b"root")
             .whiteout("/etc/shadow"))
    assert run(layer.bytes(), root) == 8
    assert (root / "bin/busybox").read_bytes() == b"bb" and (root / "etc/passwd").read_bytes() == b"root"
    assert os.readlink(root / "bin/sh") == "/bin/busybox"  # symlink targets are kept as written
    assert os.lstat(root / "bin/hard").st_ino == os.lstat(root / "bin/busybox").st_ino
    assert stat.S_ISCHR(os.lstat(root / "etc/shadow").st_mode)
    after = os.lstat(root)  # like containerd, the root entries change nothing
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer"]


HOSTILE = {
    "dotdot": (LayerTar().file("../escaped", b"x"), "contains '..'"),
    "nested dotdot": (LayerTar().dir("a").file("a/../../escaped", b"x"), "contains '..'"),
    "absolute dotdot": (LayerTar().file("/../escaped", b"x"), "contains '..'"),
    "write through symlink": (LayerTar().symlink("link", "..").file("link/escaped", b"x"),
                              "goes through the symlink 'link'"),
    "dir through symlink": (LayerTar().symlink("link", "/").dir("link/escaped"), "goes through the symlink"),
    "whiteout through symlink": (LayerTar().symlink("link", "..").whiteout("link/escaped"),
                                 "goes through the symlink"),
    "hardlink outside": (LayerTar().hardlink("h", "../escaped"), "contains '..'"),
    "hardlink absolute": (LayerTar().hardlink("h", "/etc/hostname"), "'etc', which this layer does not contain"),
    "hardlink absolute dotdot": (LayerTar().file("f", b"x").hardlink("h", "/../../f"), "contains '..'"),
    "hardlink to nothing": (LayerTar().hardlink("h", "nothing"), "does not contain"),
    "hardlink through symlink": (LayerTar().symlink("l", "/etc").hardlink("h", "l/hostname"),
                                 "goes through the symlink 'l'"),
    "hardlink to a directory": (LayerTar().dir("d").hardlink("h", "d"), "points at a directory"),
    "overlay xattr": (LayerTar().file("f", b"", xattrs={"trusted.overlay.opaque": "y"}), "overlayfs attributes"),
    "file over root": (LayerTar().file(".", b"x"), "layer's root"),
    "empty whiteout": (LayerTar().file(".wh.", b""), "names no file"),
    "parent is a file": (LayerTar().file("f", b"x").file("f/g", b"y"), "needs 'f' to be a directory"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_entries_are_refused_and_nothing_escapes(tmp_path: Path, case: str) -> None:
    layer, message = HOSTILE[case]
    root = tmp_path / "a" / "b" / "layer"
    root.mkdir(parents=True)
    with pytest.raises(FailedPrecondition, match=message):
        run(layer.bytes(), root)
    assert not (tmp_path / "a" / "b" / "escaped").exists() and not (tmp_path / "a" / "escaped").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and sorted(os.listdir(tmp_path / "a")) == ["b"]


def test_entry_cap(tmp_path: Path) -> None:
    layer = LayerTar()
    for number in range(11):
        layer.file(f"f{number}", b"")
    with pytest.raises(ResourceExhausted, match="more than 10 entries"):
        run(layer.bytes(), tmp_path, max_entries=10)


def test_malformed_archives(tmp_path: Path) -> None:
    good = LayerTar().file("f", b"x" * 2000).bytes()
    broken_sum = bytearray(good)
    broken_sum[0] ^= 1
    cases = {
        "checksum mismatch": bytes(broken_sum),
        "sparse": _with_type(good, b"S"),
        "unsupported tar entry type": _with_type(good, b"V"),
    }
    for message, data in cases.items():
        target = tmp_path / message.replace(" ", "-")
        with pytest.raises(FailedPrecondition, match=message):
            run(data, target)


def _gnu_long_name(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo(name))
    return buffer.getvalue()


_FILE = LayerTar().file("f", b"x" * 2000).dir("d").bytes()  # f: header at 0, data 512-2512, padding to 2560
_PAX = LayerTar().file("p", b"", xattrs={"user.k": "v"}).bytes()  # pax header 0-1024, then p's header
_LONG = _gnu_long_name("l" * 150)  # GNU long name header 0-1024, then the entry's header

# Where Go's archive/tar (so containerd) ends an archive cleanly: at the end-of-archive blocks, at a member
# boundary, or anywhere in the last member's padding (missing padding is how umoci ends some layers).
ENDINGS = {
    "end-of-archive blocks": (_FILE, ["d", "f"]),
    "one zero block": (_FILE[:3072 + 512], ["d", "f"]),
    "member boundary": (_FILE[:3072], ["d", "f"]),
    "after the data, without padding": (_FILE[:2512], ["f"]),
    "inside the padding": (_FILE[:2520], ["f"]),
    "empty stream": (b"", []),
}
TRUNCATIONS = {
    "inside a file's data": (_FILE[:1200], r"inside the data of entry 'f' \(1312 of 2000 bytes missing\)"),
    "inside a header": (_FILE[:2560 + 100], r"inside a header \(100 of 512 bytes\)"),
    "inside the first header": (_FILE[:511], r"inside a header \(511 of 512 bytes\)"),
    "inside a pax header": (_PAX[:515], r"inside a pax header \(\d+ of \d+ bytes missing\)"),
    "after a pax header": (_PAX[:1024], "after a pax header, before the entry it describes"),
    "after a GNU long name": (_LONG[:1024], "after a GNU long name, before the entry it describes"),
}


@pytest.mark.parametrize("size", [1, 100, 777, 1 << 20])
@pytest.mark.parametrize("case", list(ENDINGS))
def test_where_an_archive_may_end(tmp_path: Path, case: str, size: int) -> None:
    data, names = ENDINGS[case]
    assert run(data, tmp_path / "layer", size=size) == len(names)
    assert sorted(os.listdir(tmp_path / "layer")) == names
    if "f" in names:
        assert (tmp_path / "layer/f").read_bytes() == b"x" * 2000


@pytest.mark.parametrize("size", [1, 777])
@pytest.mark.parametrize("case", list(TRUNCATIONS))
def test_truncated_archives_are_refused(tmp_path: Path, case: str, size: int) -> None:
    data, message = TRUNCATIONS[case]
    with pytest.raises(FailedPrecondition, match=message):
        run(data, tmp_path / "layer", size=size)


def test_truncated_data_is_noticed_when_the_caller_skips_it() -> None:
    reader = TarReader(chunks(_FILE[:1200]))
    entries = reader.entries()
    assert next(entries).name == "f"
    with pytest.raises(FailedPrecondition, match="inside the data of entry 'f'"):
        next(entries)


def _with_type(tar: bytes, kind: bytes) -> bytes:
    header = bytearray(tar[:512])
    header[156:157] = kind
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header) + tar[512:]


def test_pax_records() -> None:
    assert parse_pax(b"15 path=a/b/cd\n") == {"path": b"a/b/cd"}
    assert parse_pax(b"27 SCHILY.xattr.user.k=\x00\xff\n\n") == {"SCHILY.xattr.user.k": b"\x00\xff\n"}
    for bad in (b"15 path=a/b/c\n", b"x path=y\n", b"99 path=short\n", b"9 pathx\n"):
        with pytest.raises(FailedPrecondition):
            parse_pax(bad)


def test_entry_parts() -> None:
    assert entry_parts("./a//b/./c/") == ("a", "b", "c")
    assert entry_parts("/bin/sh") == entry_parts("//bin/./sh") == ("bin", "sh")
    assert entry_parts("./") == entry_parts("/") == entry_parts(".") == ()
    for name in ("..", "/..", "/../etc/passwd", "a/../b"):
        with pytest.raises(FailedPrecondition, match=r"contains '\.\.'"):
            entry_parts(name)


def test_disk_usage_counts_hardlinks_once(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10000)
    os.link(tmp_path / "f", tmp_path / "g")
    used, inodes = disk_usage(str(tmp_path))
    assert inodes == 2 and used >= 10000
