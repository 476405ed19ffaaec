"""Raw scripted socket servers for the wire tests: real sockets on loopback, exact bytes.

:class:`ScriptServer` reads each request with llhttp's request parser
(httptools) and answers with exactly the bytes, pauses and closes a test
scripts, so framing cases no well-behaved server produces can be served:
malformed heads, bad chunk sizes, bytes past ``Content-Length``, a connection
closed when the next request arrives. It serves plain TCP or TLS.
"""

from __future__ import annotations

import collections
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httptools

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Close:
    """Script step: close the connection (FIN)."""

    def __repr__(self) -> str:
        return "CLOSE"


class _Reset:
    """Script step: abort the connection (RST)."""

    def __repr__(self) -> str:
        return "RESET"


CLOSE = _Close()
RESET = _Reset()

# A script step: bytes to send, seconds to sleep, CLOSE or RESET. When a script
# ends without CLOSE/RESET the connection waits for its next request.
Step = bytes | float | _Close | _Reset
Script = Sequence[Step]


class Request:
    """One request as the server read it."""

    def __init__(self, conn: int, on_conn: int) -> None:
        self.conn = conn  # which connection (1, 2, ...)
        self.on_conn = on_conn  # its index on that connection (0 for the first)
        self.method = ""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def header(self, name: str) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive), in order."""
        low = name.lower().encode()
        return [v for n, v in self.headers if n.lower() == low]

    def names(self) -> list[str]:
        """Lower-case header names in order (duplicates kept)."""
        return [n.decode("latin-1").lower() for n, _ in self.headers]


class _Reader:
    """httptools request-parser callbacks collecting whole requests."""

    def __init__(self, conn: int) -> None:
        self.conn = conn
        self.count = 0
        self.current: Request | None = None
        self.done: collections.deque[Request] = collections.deque()
        self.parser: Any = None

    def on_message_begin(self) -> None:
        self.current = Request(self.conn, self.count)
        self.count += 1

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method().decode()
        self.done.append(self.current)


class ScriptServer:
    """Answers each request with a script: ``replies`` in order, then ``answer(request)``, then :data:`OK`.

    Args:
        answer: Makes the script for a request when ``replies`` is empty.
        ssl_context: Serve TLS with this server-side context.
        ignore_close: Keep reading requests after one that said ``Connection: close``
            (a server that does not honour it).
    """

    def __init__(
        self,
        answer: Callable[[Request], Script] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ignore_close: bool = False,
    ) -> None:
        self.answer = answer
        self._ignore_close = ignore_close
        self.replies: collections.deque[Script] = collections.deque()
        self.requests: list[Request] = []
        self.connections = 0
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/in?x=1"
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def script(self, *scripts: Script) -> None:
        """Queue the scripts of the next requests."""
        with self._lock:
            self.replies.extend(scripts)

    def __enter__(self) -> ScriptServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopped = True
        self.sock.close()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _next(self, request: Request) -> Script:
        with self._lock:
            self.requests.append(request)
            if self.replies:
                return self.replies.popleft()
        if self.answer is not None:
            return self.answer(request)
        return (OK,)

    def _serve(self, raw: socket.socket, number: int) -> None:
        conn: socket.socket = raw
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(10)
        reader = _Reader(number)
        parser = reader.parser = httptools.HttpRequestParser(reader)
        if self._ignore_close:
            parser.set_dangerous_leniencies(lenient_keep_alive=True, lenient_data_after_close=True)
        try:
            if self._ssl is not None:
                conn = self._ssl.wrap_socket(raw, server_side=True)
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                parser.feed_data(data)
                while reader.done:
                    if not self._run(conn, raw, self._next(reader.done.popleft())):
                        return
        except (OSError, httptools.HttpParserError):
            return
        finally:
            with self._lock:
                self._open.discard(raw)
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _run(conn: socket.socket, raw: socket.socket, script: Iterable[Step]) -> bool:
        """Play one script; False when it closed the connection."""
        for step in script:
            if isinstance(step, bytes):
                conn.sendall(step)
            elif isinstance(step, float | int):
                time.sleep(step)
            elif isinstance(step, _Reset):
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()
                return False
            else:
                return False
        return True


def response(
    status: int = 200, body: bytes = b"", headers: Sequence[tuple[str, str]] = (), reason: str = "X"
) -> bytes:
    """A well-formed response with a Content-Length (unless ``headers`` frame it otherwise)."""
    names = {n.lower() for n, _ in headers}
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{n}: {v}" for n, v in headers]
    if "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes, trailers: bytes = b"") -> bytes:
    """A chunked body of ``pieces`` (sizes in lower-case hex), then ``trailers`` (raw lines)."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + trailers + b"\r\n"


class DelayProxy:
    """A TCP proxy on loopback that delays every byte, FIN and RST by ``delay`` seconds each way.

    Loopback has no latency, so a server's idle close reaches the client within
    microseconds; through this proxy it takes ``delay``, as on a real network,
    which widens the stale keep-alive race to something a test meets.
    """

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.delay = delay
        self._upstream = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for sock in self._socks:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._socks.append(sock)
            for src, dst in ((client, upstream), (upstream, client)):
                queue: collections.deque[tuple[float, bytes | _Close | _Reset]] = collections.deque()
                ready = threading.Condition()
                threading.Thread(target=self._read, args=(src, queue, ready), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, queue, ready), daemon=True).start()

    def _read(self, src: socket.socket, queue: collections.deque[Any], ready: threading.Condition) -> None:
        while True:
            try:
                data: bytes | _Close | _Reset = src.recv(65536) or CLOSE
            except OSError:
                data = RESET
            with ready:
                queue.append((time.monotonic() + self.delay, data))
                ready.notify()
            if not isinstance(data, bytes):
                return

    @staticmethod
    def _write(dst: socket.socket, queue: collections.deque[Any], ready: threading.Condition) -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue.popleft()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if isinstance(data, bytes):
                    dst.sendall(data)
                    continue
                if isinstance(data, _Reset):
                    dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    dst.close()
                else:
                    dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
