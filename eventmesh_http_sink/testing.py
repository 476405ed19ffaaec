"""A loopback HTTP receiver to try the library against, which can misbehave on purpose.

Something to send to, in two lines::

    with FaultServer() as server:        # a receiver on a free loopback port; answers 200
        ...                              # send to server.url
        print(server.keys())             # the Idempotency-Key of every request, in order

:class:`FaultServer` is a small threaded HTTP/1.1 server for trials, tests, demos
and benchmarks: it logs every request (with its ``Idempotency-Key``), keeps
connections alive, counts TCP connections, and answers each request with a
:class:`Reply` chosen by a script, a per-key plan, a random fault mix, or a
default. Faults cover what real endpoints do: error statuses, ``Retry-After``,
connection resets, garbage, truncated bodies, slow and trickling answers,
endless streams. It binds to loopback only. Unlike a receiver built on the
stdlib's ``http.server`` (several small writes per response: Nagle's algorithm
and delayed ACKs cap it at ~350 requests/s), it sets ``TCP_NODELAY`` on every
connection, so it does not hide the client's speed.

Faults::

    with FaultServer() as server:
        server.plan("rec-1", Reply(503, headers={"Retry-After": "1"}), Reply(200))
        ...  # send to server.url
        assert server.keys().count("rec-1") == 2
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import random
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import attrs

__all__ = ["FaultServer", "RandomFaults", "Reply", "RequestLog"]

Kind = Literal["reply", "reset", "garbage", "truncate", "hang", "trickle", "endless", "close"]


@attrs.frozen
class Reply:
    """How to answer one request.

    Args:
        status: The status code (for ``reply``, ``truncate``, ``trickle``, ``endless``).
        body: The response body.
        headers: Extra response headers.
        delay: Seconds to wait before answering.
        kind: ``"reply"`` a normal answer; ``"reset"`` close with a TCP RST;
            ``"garbage"`` write bytes that are not HTTP; ``"truncate"`` declare more
            body than is sent, then close; ``"hang"`` say nothing for ``delay`` seconds,
            then close; ``"trickle"`` send the body a byte every ``delay`` seconds;
            ``"endless"`` a chunked body that never ends; ``"close"`` close quietly.
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    delay: float = 0.0
    kind: Kind = "reply"

    @classmethod
    def reset(cls) -> Reply:
        """Close the connection with a TCP reset after reading the request."""
        return cls(kind="reset")

    @classmethod
    def garbage(cls, data: bytes = b"\x00\xffNOT HTTP AT ALL\r\n\r\n") -> Reply:
        """Answer with bytes that are not an HTTP response."""
        return cls(kind="garbage", body=data)

    @classmethod
    def truncate(cls, status: int = 200) -> Reply:
        """Declare a 100-byte body, send 10 bytes, close."""
        return cls(status, kind="truncate", body=b"0123456789")

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Say nothing for ``seconds``, then close."""
        return cls(kind="hang", delay=seconds)


@attrs.frozen
class RequestLog:
    """One request the server received."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    connection: int  # the TCP connection's sequence number
    answered: int | None  # the status sent, or None for a fault with no status
    at: float  # time.monotonic() when the request was read

    @property
    def key(self) -> str | None:
        """The request's ``Idempotency-Key``."""
        return self.headers.get("idempotency-key")


class RandomFaults:
    """A responder that fails a fraction of requests and adds latency.

    Args:
        fail_rate: Fraction of requests answered with a fault (0..1).
        latency: Seconds added to every answer.
        seed: Seed for a reproducible mix.
        faults: The faults to draw from.
    """

    def __init__(
        self,
        fail_rate: float = 0.0,
        latency: float = 0.0,
        seed: int | None = None,
        faults: Iterable[Reply] = (Reply(503, headers={"Retry-After": "0"}), Reply(500), Reply.reset()),
    ) -> None:
        self.fail_rate = fail_rate
        self.latency = latency
        self._faults = list(faults)
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not security
        self._lock = threading.Lock()

    def __call__(self, request: RequestLog) -> Reply:
        with self._lock:
            fail = self._random.random() < self.fail_rate
            fault = self._random.choice(self._faults) if fail else None
        if fault is None:
            return Reply(200, body=b"ok", delay=self.latency)
        return attrs.evolve(fault, delay=max(fault.delay, self.latency))


class FaultServer:
    """A threaded loopback HTTP/1.1 server whose answers are scripted.

    Answer order: a per-key :meth:`plan`, then the :meth:`script` queue, then
    ``responder`` (a callable taking the :class:`RequestLog`), then ``Reply(200)``.

    Args:
        port: 0 for an ephemeral port.
        responder: The default answer maker.
        host: The address to bind (loopback by default).
        keep_log: Keep every request in :attr:`requests` (turn off for long runs).
        ssl_context: Serve HTTPS with this server-side context.
    """

    def __init__(
        self,
        port: int = 0,
        responder: Callable[[RequestLog], Reply] | None = None,
        host: str = "127.0.0.1",
        keep_log: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self.responder = responder
        self.keep_log = keep_log
        self.requests: list[RequestLog] = []
        self.status_counts: collections.Counter[int | str] = collections.Counter()
        self._script: collections.deque[Reply] = collections.deque()
        self._plans: dict[str, collections.deque[Reply]] = {}
        self._lock = threading.Lock()
        self._conn_seq = itertools.count(1)
        self._open_sockets: set[socket.socket] = set()
        self.connections = 0
        self._host = host
        self._port = port
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        """``http://host:port/`` of the running server."""
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self.port}/"

    def start(self) -> FaultServer:
        """Bind and serve in a daemon thread."""
        handler = _make_handler(self)
        server = socketserver.ThreadingTCPServer((self._host, self._port), handler, bind_and_activate=False)
        server.daemon_threads = True
        server.allow_reuse_address = True
        server.request_queue_size = 1024
        server.server_bind()
        server.server_activate()
        if self._ssl_context is not None:
            # The handshake runs on the connection's own thread (at its first read), so
            # a client that rejects the certificate cannot stall the accept loop.
            server.socket = self._ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fault-server-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *replies: Reply) -> None:
        """Queue answers for the next requests, whatever their key."""
        with self._lock:
            self._script.extend(replies)

    def plan(self, key: str, *replies: Reply) -> None:
        """Queue answers for the next requests carrying ``Idempotency-Key: key``."""
        with self._lock:
            self._plans.setdefault(key, collections.deque()).extend(replies)

    # -- what arrived ------------------------------------------------------------------------

    def keys(self) -> list[str | None]:
        """The Idempotency-Key of every logged request, in arrival order."""
        with self._lock:
            return [r.key for r in self.requests]

    def delivered_keys(self) -> set[str]:
        """The keys of requests that were answered 2xx."""
        with self._lock:
            return {r.key for r in self.requests if r.key and r.answered and 200 <= r.answered < 300}

    def _choose(self, request: RequestLog) -> Reply:
        with self._lock:
            key = request.key
            plan = self._plans.get(key) if key else None
            if plan:
                return plan.popleft()
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            return self.responder(request)
        return Reply(200)

    def _record(self, request: RequestLog) -> None:
        with self._lock:
            self.status_counts[request.answered if request.answered is not None else "fault"] += 1
            if self.keep_log:
                self.requests.append(request)


def _make_handler(server: FaultServer) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        rbufsize = 65536
        wbufsize = 0

        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with server._lock:
                server.connections += 1
                server._open_sockets.add(sock)
            conn_id = next(server._conn_seq)
            try:
                while self._one_request(sock, conn_id):
                    pass
            except (OSError, ValueError):
                pass  # the client went away
            finally:
                with server._lock:
                    server._open_sockets.discard(sock)

        def _one_request(self, sock: socket.socket, conn_id: int) -> bool:
            line = self.rfile.readline(65537)
            if not line:
                return False
            parts = line.decode("latin-1").split()
            if len(parts) != 3:
                return False
            method, path, _ = parts
            headers: dict[str, str] = {}
            while True:
                hline = self.rfile.readline(65537)
                if hline in (b"\r\n", b"\n", b""):
                    break
                name, _, value = hline.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = self._read_chunked()
            else:
                body = self.rfile.read(int(headers.get("content-length", "0") or 0))
            at = time.monotonic()
            probe = RequestLog(method, path, headers, body, conn_id, None, at)
            reply = server._choose(probe)
            keep = headers.get("connection", "").lower() != "close"
            answered = reply.status if reply.kind in ("reply", "trickle", "endless") else None
            server._record(attrs.evolve(probe, answered=answered))
            return self._answer(sock, reply, keep)

        def _read_chunked(self) -> bytes:
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()

        def _answer(self, sock: socket.socket, reply: Reply, keep: bool) -> bool:
            kind = reply.kind
            if reply.delay and kind not in ("hang", "trickle"):
                time.sleep(reply.delay)
            if kind == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                return False
            if kind == "close":
                return False
            if kind == "garbage":
                sock.sendall(reply.body)
                return False
            if kind == "hang":
                time.sleep(reply.delay)
                return False
            head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
            head += [f"{k}: {v}" for k, v in reply.headers.items()]
            if kind == "endless":
                head.append("Transfer-Encoding: chunked")
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
                while True:  # until the client hangs up
                    sock.sendall(chunk)
            declared = len(reply.body) + (90 if kind == "truncate" else 0)
            head.append(f"Content-Length: {declared}")
            if not keep:
                head.append("Connection: close")
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if kind == "trickle":
                for i in range(len(reply.body)):
                    sock.sendall(reply.body[i : i + 1])
                    time.sleep(reply.delay)
            else:
                sock.sendall(reply.body)
            return keep and kind != "truncate"

    return Handler


_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    425: "Too Early",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def free_port() -> int:
    """An unused loopback port (for a server that must come back on the same port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


__all__ += ["free_port"]
