"""A strict, streaming reader of the tar archives that image layers are.

It understands what image tools write (ustar, POSIX pax with ``x``/``g`` headers, GNU long names and base-256
numbers) and refuses the rest (sparse files, multi-volume archives) with a message. Header checksums are
verified and every length is bounded, so a hostile archive can neither make the reader hold much memory nor
send it into a slow path. The reader pulls decompressed chunks from an iterator; file data is handed out
in the chunks it arrived in, without copying it into a buffer first.

The end of the archive is accepted where Go's archive/tar (so containerd) accepts it: at the end-of-archive
blocks, or when the stream simply ends at a member boundary or inside the last member's padding (umoci
writes such layers). A stream that ends inside a header, inside a member's data, or between a pax or GNU
long-name header and the member it describes is truncated, and refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from crirt.errors import FailedPrecondition

BLOCK = 512
MAX_PAX_SIZE = 1024 * 1024
MAX_NAME_BYTES = 4096
REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO = "0", "1", "2", "3", "4", "5", "6"
_REGULAR_ALIASES = {"\0": REGULAR, "7": REGULAR}  # old-style regular files and contiguous files
_TYPES = {REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO}
_PAX_INT_KEYS = ("size", "uid", "gid")


@dataclass(slots=True)
class TarEntry:
    """One member of the archive; ``name`` and ``linkname`` are decoded with surrogateescape."""

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstring(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _number(raw: bytes, what: str) -> int:
    """An octal ASCII field, or GNU base-256 when the first byte has its high bit set."""
    if raw and raw[0] & 0x80:
        value = int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
        return value - (1 << (8 * len(raw) - 1)) if raw[0] & 0x40 else value
    text = raw.replace(b"\0", b" ").strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise FailedPrecondition(f"bad {what} field {raw!r} in tar header") from None


def _time_ns(text: str) -> int:
    """A pax time: decimal seconds with an optional fraction, possibly negative."""
    negative = text.startswith("-")
    whole, _, fraction = text.lstrip("-").partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise FailedPrecondition(f"bad pax time {text!r}")
    ns = int(whole) * 10**9 + int((fraction + "000000000")[:9])
    return -ns if negative else ns


def parse_pax(data: bytes) -> dict[str, bytes]:
    """Records ``"<len> <key>=<value>\\n"``; values stay bytes (xattr values are binary)."""
    records: dict[str, bytes] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position, position + 20)
        if space < 0 or not data[position:space].isdigit():
            raise FailedPrecondition("malformed pax extended header")
        length = int(data[position:space])
        end = position + length
        if length <= space - position + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise FailedPrecondition("malformed pax record length")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals:
            raise FailedPrecondition("pax record without '='")
        records[_decode(key)] = value
        position = end
    return records


class TarReader:
    """Iterate over ``entries()``; during each step ``data()`` yields the current entry's bytes.

    Data the caller does not read is skipped when the next entry is requested."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")
        self._what = ""  # what the current data is, for messages: "the data of entry 'x'", "a pax header"
        self._size = 0
        self._data_left = 0  # unread data of the current entry (or of a pax/GNU header's payload)
        self._padding = 0  # the bytes after it up to the next block boundary (not checked)

    def _fill(self, wanted: int) -> bool:
        """Make at least ``wanted`` bytes available in the buffer; False at the end of the stream."""
        parts: list[bytes | memoryview] = [self._buffer] if self._buffer else []
        have = len(self._buffer)
        while have < wanted:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        if len(parts) == 1:
            self._buffer = memoryview(parts[0])
        elif parts:
            self._buffer = memoryview(b"".join(parts))
        return have >= wanted

    def _truncated(self, missing: int) -> NoReturn:
        raise FailedPrecondition(f"tar archive truncated inside {self._what} ({missing} of {self._size} bytes "
                                 "missing)")

    def data(self) -> Iterator[memoryview]:
        """The unread bytes of the current entry, in the pieces they arrive in."""
        while self._data_left:
            if not self._buffer and not self._fill(1):
                self._truncated(self._data_left)
            step = min(self._data_left, len(self._buffer))
            piece = self._buffer[:step]
            self._buffer = self._buffer[step:]
            self._data_left -= step
            yield piece

    def _skip_padding(self) -> bool:
        """Skip the current entry's padding; False if the stream ends first (which ends the archive)."""
        while self._padding:
            if not self._buffer and not self._fill(1):
                return False
            step = min(self._padding, len(self._buffer))
            self._buffer = self._buffer[step:]
            self._padding -= step
        return True

    def _start(self, what: str, size: int) -> None:
        """``size`` bytes of ``what`` come next, then padding up to the next block."""
        self._what, self._size, self._data_left, self._padding = what, size, size, -size % BLOCK

    def _payload(self, size: int, limit: int, what: str) -> bytes:
        if size > limit:
            raise FailedPrecondition(f"{what} of {size} bytes exceeds the {limit}-byte limit")
        self._start(f"a {what}", size)
        return b"".join(self.data())

    def _header(self, described: str | None) -> bytes | None:
        """The next header block, or None where the archive may end (``described``: a pending pax/GNU header)."""
        for _ in self.data():  # data the caller left unread
            pass
        at_end = not self._skip_padding() or (not self._buffer and not self._fill(1))
        if at_end and described is not None:
            raise FailedPrecondition(f"tar archive truncated after a {described}, before the entry it describes")
        if at_end:
            return None
        if len(self._buffer) < BLOCK and not self._fill(BLOCK):
            raise FailedPrecondition(f"tar archive truncated inside a header ({len(self._buffer)} of {BLOCK} "
                                     "bytes)")
        header = bytes(self._buffer[:BLOCK])
        self._buffer = self._buffer[BLOCK:]
        return header

    def entries(self) -> Iterator[TarEntry]:
        """Each member in archive order, with pax and GNU long-name headers already applied."""
        global_pax: dict[str, bytes] = {}
        local_pax: dict[str, bytes] = {}
        long_name = long_link = None
        described: str | None = None  # the pax or GNU header waiting for its entry
        while True:
            header = self._header(described)
            if header is None or header == b"\0" * BLOCK:
                return
            self._check_sum(header)
            kind = _REGULAR_ALIASES.get(chr(header[156]), chr(header[156]))
            size = _number(header[124:136], "size")
            if size < 0:
                raise FailedPrecondition("negative size in tar header")
            if kind == "x":
                local_pax.update(parse_pax(self._payload(size, MAX_PAX_SIZE, "pax header")))
                described = "pax header"
                continue
            if kind == "g":
                global_pax.update(parse_pax(self._payload(size, MAX_PAX_SIZE, "pax global header")))
                continue
            if kind in ("L", "K"):
                value = _cstring(self._payload(size, MAX_NAME_BYTES, "GNU long name"))
                long_name, long_link = (value, long_link) if kind == "L" else (long_name, value)
                described = "GNU long name"
                continue
            if kind not in _TYPES:
                raise FailedPrecondition(f"unsupported tar entry type {kind!r} (sparse, multi-volume and vendor "
                               "entries are refused)")
            entry = self._entry(header, kind, size, {**global_pax, **local_pax}, long_name, long_link)
            local_pax, long_name, long_link, described = {}, None, None, None
            # Like Go's and Python's readers: links, directories and devices carry no data, whatever their size.
            self._start(f"the data of entry {entry.name!r}", entry.size)
            yield entry

    @staticmethod
    def _check_sum(header: bytes) -> None:
        stored = _number(header[148:156], "checksum")
        unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != unsigned and stored != unsigned - 256 * sum(b > 127 for b in header):  # old signed sums
            raise FailedPrecondition("tar header checksum mismatch (not a tar archive, or corrupted)")

    @staticmethod
    def _entry(header: bytes, kind: str, size: int, pax: dict[str, bytes], long_name: bytes | None,
               long_link: bytes | None) -> TarEntry:
        if any(key.startswith("GNU.sparse") for key in pax):
            raise FailedPrecondition("sparse files in pax format are not supported")
        name = _cstring(header[0:100])
        if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix field extends the name
            prefix = _cstring(header[345:500])
            name = prefix + b"/" + name if prefix else name
        name = pax.get("path", long_name if long_name is not None else name)
        link = pax.get("linkpath", long_link if long_link is not None else _cstring(header[157:257]))
        if len(name) > MAX_NAME_BYTES or len(link) > MAX_NAME_BYTES or b"\0" in name or b"\0" in link:
            raise FailedPrecondition("tar entry name too long or containing NUL")
        numbers = {key: _number(header[start:end], key) for key, start, end in
                   (("uid", 108, 116), ("gid", 116, 124))}
        for key in _PAX_INT_KEYS:
            if key in pax:
                if not pax[key].isdigit():
                    raise FailedPrecondition(f"bad pax {key} {pax[key]!r}")
                numbers[key] = int(pax[key])
        if "size" in pax:
            size = numbers["size"]
        mtime_ns = (_time_ns(_decode(pax["mtime"])) if "mtime" in pax
                    else _number(header[136:148], "mtime") * 10**9)
        xattrs = {key.removeprefix("SCHILY.xattr."): value for key, value in pax.items()
                  if key.startswith("SCHILY.xattr.")}
        return TarEntry(
            name=_decode(name), type=kind, mode=_number(header[100:108], "mode") & 0o7777,
            uid=numbers["uid"], gid=numbers["gid"], size=size if kind == REGULAR else 0, mtime_ns=mtime_ns,
            linkname=_decode(link), devmajor=_number(header[329:337], "devmajor"),
            devminor=_number(header[337:345], "devminor"), xattrs=xattrs,
        )
