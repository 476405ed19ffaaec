"""The CLI's line reader: the same lines whatever the chunks, bounded memory, nothing dropped at a stop."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventmesh_http_sink.cli import lines as lines_module
from eventmesh_http_sink.cli.lines import Line, LineReader


def reader_of(data: bytes, sizes: list[int]) -> LineReader:
    chunks: list[bytes] = []
    pos = 0
    for size in sizes or [len(data) or 1]:
        if pos >= len(data):
            break
        chunks.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        chunks.append(data[pos:])
    it = iter([*chunks, b""])
    return LineReader(lambda: next(it))


def expected(data: bytes) -> list[tuple[int, bytes]]:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    out = []
    for number, part in enumerate(parts, 1):
        if number == 1:
            part = part.removeprefix(b"\xef\xbb\xbf")
        part = part.removesuffix(b"\r")
        if part.strip():
            out.append((number, part))
    return out


@given(
    st.lists(st.sampled_from([b"a", b"\n", b"\r", b" ", b"\xff", b"{}", b"\xef\xbb\xbf"]), max_size=60).map(
        b"".join
    ),
    st.lists(st.integers(1, 9), max_size=30),
)
def test_the_same_numbered_lines_whatever_the_chunk_boundaries(data: bytes, sizes: list[int]) -> None:
    reader = reader_of(data, sizes)
    assert [(line.number, line.data) for line in reader] == expected(data)
    assert reader.at_end


def test_bad_bytes_spoil_one_line_only() -> None:
    reader = reader_of(b'{"a": 1}\n{"b": "\xff"}\r\n{"c": 3}', [5])
    got = list(reader)
    assert [line.number for line in got] == [1, 2, 3]
    assert got[0].text() == '{"a": 1}' and got[2].text() == '{"c": 3}'  # the last line needs no newline
    with pytest.raises(ValueError, match=r"invalid UTF-8 \(byte 0xff at column 8\)"):
        got[1].text()
    assert got[1].shown() == '{"b": "\\xff"}'


def test_a_line_longer_than_the_limit_is_rejected_not_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lines_module, "MAX_LINE_BYTES", 10)
    data = b"short\n" + b"x" * 50 + b"\nafter\n" + b"y" * 30 + b"\n" + b"z" * 11 + b"\n"
    reader = reader_of(data, [4] * 22)  # the long lines arrive in pieces, the last one whole
    got = list(reader)
    assert [(line.number, line.data, line.too_long) for line in got] == [
        (1, b"short", False),
        (2, b"", True),
        (3, b"after", False),
        (4, b"", True),
        (5, b"", True),
    ]
    with pytest.raises(ValueError, match="line longer than"):
        got[1].text()


def test_drain_hands_back_what_was_read_after_a_stop() -> None:
    stop = threading.Event()
    chunks = iter([b"one\ntwo\nthree\nfour\nfi"])
    reader = LineReader(lambda: None if stop.is_set() else next(chunks))
    it = iter(reader)
    assert next(it) == Line(1, b"one")
    stop.set()
    assert reader.last_number == 1
    rest, partial = reader.drain()
    assert [line.data for line in rest] == [b"two", b"three", b"four"]
    assert partial == b"fi" and reader.last_number == 4
    assert list(it) == []


def test_a_pipe_is_polled_so_a_stop_is_seen_without_input() -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"a\nb")
        stop = threading.Event()
        reader = LineReader.from_fd(read_end, stop)
        assert not reader.rereadable
        it = iter(reader)
        assert next(it).data == b"a"
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        assert list(it) == []  # returned once stopped, though the pipe is still open
        assert reader.drain() == ([], b"b") and not reader.at_end
    finally:
        os.close(read_end)
        os.close(write_end)


def test_lines_made_in_memory_lose_none_at_chunk_boundaries() -> None:
    reader = LineReader.from_lines(str(i) for i in range(1000))
    assert [line.text() for line in reader] == [str(i) for i in range(1000)]
