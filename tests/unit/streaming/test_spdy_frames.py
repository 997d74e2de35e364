"""crirt.streaming.spdy_frames: frame layouts, header blocks and the shared zlib contexts of SPDY/3.1."""

from __future__ import annotations

import struct
import zlib

import pytest

from crirt.streaming.spdy_frames import (
    DICTIONARY,
    FLAG_FIN,
    FrameError,
    FrameHeader,
    FrameType,
    HeaderBlockError,
    HeaderBlockTooLarge,
    HeaderCompressor,
    HeaderDecompressor,
    RstStatus,
    Setting,
    decode_header_block,
    encode_data,
    encode_goaway,
    encode_header_block,
    encode_ping,
    encode_rst_stream,
    encode_settings,
    encode_syn_reply,
    encode_syn_stream,
    encode_window_update,
    parse_goaway,
    parse_header,
    parse_ping,
    parse_rst_stream,
    parse_settings,
    parse_stream_block,
    parse_syn_stream,
    parse_window_update,
)


def test_dictionary_shape() -> None:
    # Length-prefixed words first ("options", ...), raw text last; 1423 bytes in all per the SPDY/3 draft.
    assert len(DICTIONARY) == 1423
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_control_frame_layout() -> None:
    # C bit + version 3, type, flags, 24-bit length, then the payload.
    assert encode_rst_stream(5, RstStatus.CANCEL) == bytes.fromhex("80030003 00000008 00000005 00000005")
    assert encode_ping(7) == bytes.fromhex("80030006 00000004 00000007")
    assert encode_goaway(9, 1) == bytes.fromhex("80030007 00000008 00000009 00000001")
    assert encode_window_update(0, 65536) == bytes.fromhex("80030009 00000008 00000000 00010000")
    assert encode_syn_reply(3, b"zz", fin=True) == bytes.fromhex("80030002 01000006 00000003") + b"zz"
    header = parse_header(encode_ping(7)[:8])
    assert header == FrameHeader(control=True, version=3, type=FrameType.PING, stream_id=0, flags=0, length=4)


def test_data_frame_layout() -> None:
    frame = encode_data(0x7FFFFFFF, b"abc", fin=True)
    assert frame == bytes.fromhex("7fffffff 01000003") + b"abc"
    assert parse_header(frame[:8]) == FrameHeader(False, 0, 0, 0x7FFFFFFF, FLAG_FIN, 3)
    assert parse_header(bytes.fromhex("00000001 00ffffff")).length == 0xFFFFFF


def test_syn_stream_round_trip() -> None:
    frame = encode_syn_stream(11, b"block", fin=True, priority=3)
    header = parse_header(frame[:8])
    assert (header.type, header.flags, header.length) == (FrameType.SYN_STREAM, FLAG_FIN, 15)
    syn = parse_syn_stream(frame[8:])
    assert (syn.stream_id, syn.associated_id, syn.priority, syn.block) == (11, 0, 3, b"block")
    with pytest.raises(FrameError):
        parse_syn_stream(b"\x00" * 9)


def test_fixed_size_payloads_are_checked() -> None:
    assert parse_rst_stream(struct.pack(">II", 0x80000003, 5)) == (3, 5)  # the reserved bit is dropped
    assert parse_goaway(struct.pack(">II", 7, 0)) == (7, 0)
    assert parse_ping(struct.pack(">I", 1)) == 1
    assert parse_window_update(struct.pack(">II", 1, 0x80000010)) == (1, 16)
    assert parse_stream_block(b"\x00\x00\x00\x05rest", "HEADERS") == (5, b"rest")
    for parse, size in ((parse_rst_stream, 8), (parse_goaway, 8), (parse_window_update, 8), (parse_ping, 4)):
        with pytest.raises(FrameError):
            parse(b"\x00" * (size + 1))
    with pytest.raises(FrameError):
        parse_stream_block(b"\x00\x00", "HEADERS")


def test_settings_round_trip_and_bad_counts() -> None:
    frame = encode_settings({Setting.INITIAL_WINDOW_SIZE: 1 << 20, Setting.MAX_CONCURRENT_STREAMS: 100})
    assert parse_settings(frame[8:]) == {7: 1 << 20, 4: 100}
    flagged = struct.pack(">III", 1, 0x01000007, 500)  # PERSIST_VALUE flag in the id word's top byte
    assert parse_settings(flagged) == {7: 500}
    with pytest.raises(FrameError):
        parse_settings(struct.pack(">III", 2, 7, 500))


def test_header_block_round_trip() -> None:
    raw = encode_header_block({"StreamType": "stdin", ":method": "POST"})
    assert raw[:4] == b"\x00\x00\x00\x02"
    assert decode_header_block(raw) == {"streamtype": "stdin", ":method": "POST"}
    multi = struct.pack(">I", 1) + struct.pack(">I", 1) + b"a" + struct.pack(">I", 3) + b"x\0y"
    assert decode_header_block(multi) == {"a": "x, y"}


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00",  # no room for the count
        struct.pack(">I", 1000) + b"\x00" * 16,  # more pairs than bytes
        struct.pack(">II", 1, 5) + b"ab",  # name runs past the end
        struct.pack(">II", 1, 0) + struct.pack(">I", 0),  # empty name
        struct.pack(">I", 2) + encode_header_block({"a": "1"})[4:] * 2,  # the same name twice
        encode_header_block({"a": "1"}) + b"extra",
        struct.pack(">I", 1) + struct.pack(">I", 1) + b"\xff" + struct.pack(">I", 0),  # not UTF-8
    ],
    ids=["short", "count", "overrun", "empty-name", "duplicate", "trailing", "utf8"],
)
def test_bad_header_blocks_are_refused(raw: bytes) -> None:
    with pytest.raises(HeaderBlockError):
        decode_header_block(raw)


def test_compression_shares_one_context_per_direction() -> None:
    compressor, decompressor = HeaderCompressor(), HeaderDecompressor(max_size=4096)
    headers = {":status": "200", ":version": "HTTP/1.1", "streamtype": "stdout"}
    first, second = compressor.compress(headers), compressor.compress(headers)
    assert len(second) < len(first)  # the second block refers back into the first
    assert decompressor.headers(first) == decompressor.headers(second) == headers
    # An independent inflater with the same dictionary reads the same stream.
    inflater = zlib.decompressobj(zdict=DICTIONARY)
    assert decode_header_block(inflater.decompress(HeaderCompressor().compress(headers))) == headers


def test_oversized_block_keeps_the_context_in_step() -> None:
    compressor, decompressor = HeaderCompressor(), HeaderDecompressor(max_size=1024)
    with pytest.raises(HeaderBlockTooLarge):
        decompressor.decompress(compressor.compress({"big": "x" * 200_000}))
    assert decompressor.headers(compressor.compress({"next": "ok"})) == {"next": "ok"}


def test_garbage_is_a_zlib_error() -> None:
    with pytest.raises(zlib.error):
        HeaderDecompressor(max_size=1024).decompress(b"\x00not deflate at all")
