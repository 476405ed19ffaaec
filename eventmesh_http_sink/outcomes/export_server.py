"""The HTTP endpoint that serves a :class:`ResultStore`: one thread, bounded, and gone at close.

``GET <export_path>?pageNum=N&pageSize=M&type=peek|poll``::

    200 {"pageNum", "pageSize", "pageItems"}   entries, oldest first
    204                                        nothing to return
    400 {"error": "pageSize: ..."}             a bad parameter, named as the client wrote it
    404 / 405 (Allow: GET) / 413 / 414 / 431   other paths, other methods, oversized requests
    503 (Retry-After: 1)                       too many answers still being written

Why it looks like this:

* **One thread, a fixed number of connections.** A ``selectors`` loop serves every
  connection from a single thread, so idle clients cannot grow threads. At most
  :data:`MAX_CONNECTIONS` are kept: a new one evicts the connection that has been
  quiet longest, and a connection quiet for ``idle_timeout`` seconds (no byte read
  or written) is closed.
* **HTTP is parsed by llhttp** (``httptools``), not by hand: a request is answered
  only once llhttp has seen all of it, so a request cut short by a hang-up is
  never answered, let alone polled.
* **``poll`` removes entries only once the answer was written in full**: the
  entries are taken out while their answer is written and put back at the head of
  the store if the client hangs up, stalls past ``idle_timeout``, or the server
  closes first. "Written in full" means the kernel accepted every byte; nothing
  on the server side can know more.
* **Bounded memory**: ``pageSize`` is at most :data:`MAX_PAGE_SIZE`, request lines
  and headers are capped, and answers waiting to be written share a budget of
  :data:`OUTPUT_BUDGET` bytes (past it, ``503``).
* **``close()`` stops answering at once**, open connections included: the loop
  closes every socket (putting back what was being polled) before ``close()``
  returns, and never raises.
* Client hang-ups and bad requests are logged at DEBUG, never printed.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import re
import selectors
import socket
import threading
import time
import urllib.parse
import weakref
from http import HTTPStatus
from typing import Any

import httptools

from eventmesh_http_sink.errors import ConfigError
from eventmesh_http_sink.outcomes.result_store import ResultStore, ResultStoreConfig

__all__ = ["MAX_CONNECTIONS", "MAX_PAGE_SIZE", "OUTPUT_BUDGET", "ExportServer"]

_log = logging.getLogger("eventmesh_http_sink")

#: The largest ``pageSize`` the endpoint answers (a larger one gets ``400``).
MAX_PAGE_SIZE = 100
#: Connections kept open at once; the quietest goes when another arrives.
MAX_CONNECTIONS = 64
#: Bytes of answers waiting to be written, over all connections, before new requests get ``503``.
OUTPUT_BUDGET = 32 * 1024 * 1024

_MAX_URL = 8192  # what nginx accepts by default
_MAX_HEADERS = 16 * 1024
_MAX_BODY = 64 * 1024  # a GET has no body; tolerate a small one, refuse a large one
_MAX_PIPELINED = 16
_MAX_PARAM_DIGITS = 9
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would take "²" and fullwidth digits
_SERVERS: weakref.WeakSet[ExportServer] = weakref.WeakSet()


class _Refuse(Exception):  # noqa: N818 - a signal from a parser callback, not an error
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Request:
    __slots__ = ("keep_alive", "method", "refused", "target")

    def __init__(self, method: str, target: str, keep_alive: bool, refused: int | None = None) -> None:
        self.method = method
        self.target = target
        self.keep_alive = keep_alive
        self.refused = refused


class _Conn:
    """One client connection: llhttp's callbacks fill ``requests``; the loop answers them in order."""

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.parser = httptools.HttpRequestParser(self)
        self.last_active = now
        self.requests: collections.deque[_Request] = collections.deque()
        self.out = b""  # the answer being written
        self.sent = 0
        self.lease: list[tuple[int, dict[str, Any]]] | None = None  # polled entries, until written
        self.close_after = False
        self._url = bytearray()
        self._head = 0
        self._body = 0

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._head = self._body = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > _MAX_URL:
            raise _Refuse(HTTPStatus.REQUEST_URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head += len(name) + len(value)
        if self._head > _MAX_HEADERS:
            raise _Refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > _MAX_BODY:
            raise _Refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        target = self._url.decode("latin-1")
        self.requests.append(_Request(method, target, self.parser.should_keep_alive()))
        if len(self.requests) > _MAX_PIPELINED:
            raise _Refuse(HTTPStatus.TOO_MANY_REQUESTS)

    @property
    def pending(self) -> int:
        return len(self.out) - self.sent


class ExportServer:
    """Serves a :class:`ResultStore` at ``GET <export_path>`` from one daemon thread.

    Args:
        store: The store to serve.
        config: Where to serve (``serve_host``, ``serve_port``, ``export_path``) and
            how long a connection may stay quiet (``idle_timeout``).

    Raises:
        ConfigError: the address cannot be bound (``result_store.serve_port``).
    """

    def __init__(self, store: ResultStore, config: ResultStoreConfig) -> None:
        self._store = store
        self._path = config.export_path
        self._idle_timeout = config.idle_timeout
        host = config.serve_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, config.serve_port or 0))
            listener.listen(128)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise ConfigError(
                "result_store.serve_port", f"cannot serve on {host}:{config.serve_port}: {exc}"
            ) from exc
        self._listener = listener
        port = int(listener.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}{self._path}"
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns: dict[socket.socket, _Conn] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"eventmesh-http-sink-export-{port}", daemon=True
        )
        _SERVERS.add(self)
        self._thread.start()
        _log.info("serving attempt results at %s", self.url)
        if host not in ("127.0.0.1", "::1", "localhost"):
            # The endpoint has no authentication and the entries carry response bodies.
            _log.warning("the export endpoint %s is reachable beyond loopback, unauthenticated", self.url)

    def close(self) -> None:
        """Stop answering (open connections included), put back what was being polled, free the port.

        Never raises; returns once the serving thread has closed every socket.
        """
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the loop polls the flag at least once a second anyway
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    # -- the loop -------------------------------------------------------------------------------

    def _serve(self) -> None:
        selector = self._selector
        try:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closing.is_set():
                for key, mask in selector.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._ready(key.data, mask)
                self._expire()
        except Exception:  # a bug here must not leave the port bound and the thread dead silently
            _log.exception("the export endpoint %s stopped unexpectedly", self.url)
        finally:
            self._shut_everything()

    def _next_timeout(self) -> float:
        if not self._conns:
            return 1.0
        oldest = min(conn.last_active for conn in self._conns.values())
        return max(0.01, min(1.0, oldest + self._idle_timeout - time.monotonic()))

    def _accept(self) -> None:
        for _ in range(MAX_CONNECTIONS):  # a burst of clients: take what is there, stay responsive
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, retry at the next wake-up
                _log.debug("export endpoint: accept failed: %s", exc)
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                quietest = min(self._conns.values(), key=lambda c: c.last_active)
                _log.debug("export endpoint: %d connections open, closing the quietest", MAX_CONNECTIONS)
                self._drop(quietest)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, time.monotonic())
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _expire(self) -> None:
        deadline = time.monotonic() - self._idle_timeout
        for conn in [c for c in self._conns.values() if c.last_active < deadline]:
            what = "while its answer was being written" if conn.pending else "idle"
            _log.debug("export endpoint: closing a connection quiet for %ss (%s)", self._idle_timeout, what)
            self._drop(conn)

    def _ready(self, conn: _Conn, mask: int) -> None:
        if conn.sock not in self._conns:
            return  # dropped earlier in this round
        try:
            if mask & selectors.EVENT_WRITE:
                self._write(conn)
            if mask & selectors.EVENT_READ and conn.sock in self._conns and not conn.pending:
                self._read(conn)
        except OSError as exc:
            self._hang_up(conn, exc)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            # The client hung up. A request it had not finished is simply never answered.
            _log.debug("export endpoint: client hung up")
            self._drop(conn)
            return
        conn.last_active = time.monotonic()
        try:
            conn.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            status = refused.status if isinstance(refused, _Refuse) else HTTPStatus.BAD_REQUEST
            conn.requests.append(_Request("", "", False, status))
        except httptools.HttpParserUpgrade:
            conn.requests.append(_Request("", "", False, HTTPStatus.BAD_REQUEST))
        except httptools.HttpParserError as exc:
            _log.debug("export endpoint: unparsable request: %s", exc)
            conn.requests.append(_Request("", "", False, HTTPStatus.BAD_REQUEST))
        self._answer_next(conn)

    def _answer_next(self, conn: _Conn) -> None:
        if conn.pending or not conn.requests:
            return
        request = conn.requests.popleft()
        status, payload, extra, lease = self._respond(request, self._buffered())
        keep = request.keep_alive and request.refused is None
        body = b"" if payload is None else json.dumps(payload).encode("ascii")
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        if payload is not None:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(body) if request.method != 'HEAD' else 0}")
        head.extend(extra)
        head.append("Cache-Control: no-store")
        head.append("Connection: keep-alive" if keep else "Connection: close")
        conn.out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (
            b"" if request.method == "HEAD" else body
        )
        conn.sent = 0
        conn.lease = lease
        conn.close_after = not keep
        _log.debug("export endpoint: %s %s -> %d", request.method or "-", request.target[:200], status)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            while conn.pending:
                sent = conn.sock.send(memoryview(conn.out)[conn.sent :])
                conn.sent += sent
                conn.last_active = time.monotonic()
        except (BlockingIOError, InterruptedError):
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)  # the rest when there is room
            return
        # Written in full: what was polled is now the client's.
        conn.lease = None
        conn.out, conn.sent = b"", 0
        if conn.close_after:
            self._drop(conn)
            return
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        self._answer_next(conn)  # a pipelined request already parsed

    def _buffered(self) -> int:
        return sum(conn.pending for conn in self._conns.values())

    def _hang_up(self, conn: _Conn, exc: OSError) -> None:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT):
            _log.debug("export endpoint: client went away: %s", exc)
        else:
            _log.debug("export endpoint: connection error: %s", exc)
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock, None)
        if conn.lease:
            _log.debug("export endpoint: answer not written in full; %d entries kept", len(conn.lease))
            self._store.give_back(conn.lease)
        conn.lease = None
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _shut_everything(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    # -- answers ----------------------------------------------------------------------------------

    def _respond(
        self, request: _Request, buffered: int
    ) -> tuple[int, dict[str, Any] | None, list[str], list[tuple[int, dict[str, Any]]] | None]:
        """``(status, JSON payload, extra header lines, polled entries)`` for one request."""
        status, error, extra = self._refusal(request, buffered)
        if status:
            return status, {"error": error}, extra, None
        page_num, page_size, mode = parse_query(urllib.parse.urlsplit(request.target).query)
        lease = None
        if mode == "poll":
            lease = self._store.take(page_size)
            items = [entry for _, entry in lease]
        else:
            items = self._store.export(page_num, page_size, "peek")["pageItems"]
        if not items:
            return HTTPStatus.NO_CONTENT, None, [], None
        return HTTPStatus.OK, {"pageNum": page_num, "pageSize": len(items), "pageItems": items}, [], lease

    def _refusal(self, request: _Request, buffered: int) -> tuple[int, str, list[str]]:
        """``(status, error, extra header lines)`` when the request is refused; status 0 otherwise."""
        if request.refused is not None:
            return request.refused, HTTPStatus(request.refused).phrase, []
        if request.method != "GET":
            return HTTPStatus.METHOD_NOT_ALLOWED, "only GET is allowed", ["Allow: GET"]
        parsed = urllib.parse.urlsplit(request.target)
        if parsed.path != self._path:
            return HTTPStatus.NOT_FOUND, f"not found: use {self._path}", []
        try:
            parse_query(parsed.query)
        except ValueError as exc:
            return HTTPStatus.BAD_REQUEST, str(exc), []
        if buffered > OUTPUT_BUDGET:
            return (
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too many answers still being written; retry",
                ["Retry-After: 1"],
            )
        return 0, "", []


def parse_query(query: str) -> tuple[int, int, str]:
    """``(pageNum, pageSize, type)`` from an export query string.

    Raises:
        ValueError: naming the parameter as the client wrote it (``pageNum``, ``pageSize``, ``type``).
    """
    try:
        fields = urllib.parse.parse_qs(query, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        raise ValueError("too many query parameters") from None
    page_num = _int_param(fields, "pageNum", None)
    page_size = _int_param(fields, "pageSize", MAX_PAGE_SIZE)
    modes = fields.get("type", ["peek"])
    if len(modes) != 1 or modes[0] not in ("peek", "poll"):
        raise ValueError(f"type: must be peek or poll, got {_shown(modes)}")
    return page_num, page_size, modes[0]


def _int_param(fields: dict[str, list[str]], name: str, cap: int | None) -> int:
    values = fields.get(name)
    if not values:
        raise ValueError(f"{name}: required")
    if len(values) > 1:
        raise ValueError(f"{name}: given {len(values)} times")
    text = values[0]
    upper = cap if cap is not None else 10**_MAX_PARAM_DIGITS - 1
    if len(text) > _MAX_PARAM_DIGITS or not _DIGITS.fullmatch(text) or not 1 <= int(text) <= upper:
        raise ValueError(f"{name}: must be an integer from 1 to {upper}, got {_shown(values)}")
    return int(text)


def _shown(values: list[str]) -> str:
    text = values[0] if len(values) == 1 else ",".join(values)
    return repr(text if len(text) <= 20 else text[:20] + "...")


def _after_fork_in_child() -> None:
    # The child has no serving thread: release the parent's sockets, so a child never
    # holds the parent's port (and a fixed serve_port can be bound again after the parent).
    for server in list(_SERVERS):
        server._closing.set()
        for sock in [*server._conns, server._listener, server._wake_r, server._wake_w]:
            try:
                sock.close()
            except OSError:
                pass
        server._conns.clear()
        try:
            server._selector.close()
        except (OSError, ValueError):
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
