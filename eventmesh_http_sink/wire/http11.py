"""One HTTP/1.1 exchange over a connected socket, the response parsed by llhttp.

``pool.urlopen`` costs more Python per request than everything else the
connector does together (http.client parses headers with the ``email`` package
and builds a buffered file per response; urllib3 wraps it all again). So the
transport takes a connection from the urllib3 pool (which keeps connecting, TLS
and certificate checks), and :func:`exchange` writes the request in one
``sendall`` on its socket, plain or TLS, and reads the answer with
``httptools.HttpResponseParser`` (llhttp, Node.js's parser) in its strict
default mode: the status line, headers, ``Content-Length``, chunked framing,
trailers and keep-alive all come from llhttp, and whatever it refuses
(ambiguous framing such as ``Transfer-Encoding`` with ``Content-Length``, chunk
sizes like ``0x5``, CR/LF/NUL in header values, bare-LF line ends, obs-fold) is
refused at once, never waited on.

What llhttp leaves to its caller is done here:

* a ``HEAD`` response ends with its headers;
* ``101 Switching Protocols`` is an upgrade we never asked for and a status
  below 100 is not HTTP: both are refused;
* interim 1xx answers (``100 Continue``, ``103 Early Hints``) are skipped, at
  most :data:`MAX_INTERIM` of them;
* at most :data:`MAX_FIELDS` header fields per head and as many trailer fields,
  and at most :data:`MAX_HEAD` bytes read without body progress (a head, chunk
  framing or trailers that never end);
* every ``recv`` is bounded by the read timeout and by the attempt's deadline,
  whichever comes first (see :func:`exchange` on how);
* the connection is reusable only when the final message ended cleanly, llhttp
  says keep-alive, and no byte followed the message.

A body beyond ``keep`` bytes is drained up to ``drain_limit`` more, then the
connection is given up (:attr:`Result.reusable` false) with the first ``keep``
bytes kept, as the urlopen path does.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.client import RemoteDisconnected
from typing import Any, NamedTuple, NoReturn

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import ProtocolError

from eventmesh_http_sink.errors import ReadTimeoutError, ResponseError

__all__ = ["MAX_FIELDS", "MAX_HEAD", "MAX_INTERIM", "Headers", "NoResponse", "Result", "exchange"]

_RECV = 64 * 1024
MAX_HEAD = 64 * 1024
MAX_FIELDS = 100  # http.client's limit for a head
MAX_INTERIM = 10
_local = threading.local()
# A request up to this size goes out in one send on an idle connection (Linux's default
# initial send buffer, tcp_wmem, is 16 KiB): a blocking send of it cannot trickle for long.
_SEND_AT_ONCE = 16 * 1024


def _timeval(seconds: float) -> bytes:
    """``seconds`` as the ``struct timeval`` SO_RCVTIMEO/SO_SNDTIMEO take, never all zero (no timeout)."""
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000) or (0 if whole else 1)  # 0 would wait forever
    return struct.pack("ll", whole, micros)


def _kernel_timeouts() -> bool:
    """Whether this kernel takes our ``timeval`` for SO_RCVTIMEO/SO_SNDTIMEO: set, read back, compare.

    Linux only (a timed-out blocking call fails with EAGAIN there: tests/test_http11.py).
    ``"ll"`` is not the kernel's timeval everywhere: 32-bit Linux with a 64-bit time_t
    (Debian trixie armhf) wants 16 bytes and refuses 8 with EINVAL, which would fail every
    plain-http request. Anything unexpected keeps Python's timeout mode.
    """
    if not sys.platform.startswith("linux"):
        return False
    timeval = _timeval(1.5)
    try:
        with socket.socket() as probe:
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
                probe.setsockopt(socket.SOL_SOCKET, option, timeval)
                if probe.getsockopt(socket.SOL_SOCKET, option, len(timeval)) != timeval:
                    return False
    except OSError:
        return False
    return True


# Where the kernel's timeouts work as we set them; elsewhere Python's timeout mode is kept.
_KERNEL_TIMEOUTS = _kernel_timeouts()

# A send that fails this way may still have a readable answer (a server that
# answers 413 and closes before reading the body): read it before giving up.
_SEND_CUT = (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class NoResponse(Exception):  # noqa: N818 - a condition for the caller, not an error to report
    """The connection ended (EOF, reset, broken pipe) before any byte of a response.

    On a reused connection this is the stale keep-alive race: the server closed
    it while the request was on its way, so it cannot have answered it.
    """


class _Refused(Exception):  # noqa: N818 - raised inside a parser callback, never escapes
    """A response llhttp parses but a client must not accept."""


class _After(Exception):  # noqa: N818 - stops the parser at bytes after the message
    pass


class Headers(Mapping[str, str]):
    """A response's headers, case-insensitive, decoded on first use.

    The success path never reads them, so the ``HTTPHeaderDict`` is built only
    when a status error, ``success_when`` or the caller asks.
    """

    __slots__ = ("_dict", "_fields")

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self._fields = fields
        self._dict: HTTPHeaderDict | None = None

    def _headers(self) -> HTTPHeaderDict:
        headers = self._dict
        if headers is None:  # two threads may both build it: the same value either way
            headers = HTTPHeaderDict()
            for name, value in self._fields:
                headers.add(name.decode("latin-1"), value.decode("latin-1"))
            self._dict = headers
        return headers

    def __getitem__(self, name: str) -> str:
        return self._headers()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._headers()

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())

    def __repr__(self) -> str:
        return repr(self._headers())


def _has(fields: list[tuple[bytes, bytes]], name: bytes) -> bool:
    size = len(name)
    for field, _ in fields:  # noqa: SIM110 - a loop, not any(genexpr): this runs per response
        if len(field) == size and field.lower() == name:
            return True
    return False


def _joined(parts: list[bytes]) -> bytes:
    body = b"".join(parts)
    # Free the parts now, before the result goes out: freed later, together with the
    # joined copy, they left glibc a free heap top above its trim threshold, so a
    # 64 KiB body cost 16 page faults per response (trimmed, then grown again).
    parts.clear()
    return body


class Result(NamedTuple):
    """What :func:`exchange` read.

    Attributes:
        status: The final status code.
        reason: The reason phrase (may be empty).
        headers: The final response's headers.
        body: The body: its first ``keep`` bytes, or, with ``Content-Encoding``,
            its first ``keep + drain_limit`` still-encoded bytes for the caller to
            decode.
        encoding: The ``Content-Encoding`` header, or ``None``.
        complete: Whether the whole body was read.
        reusable: Whether the connection stands at a clean message boundary of
            a keep-alive exchange.
    """

    status: int
    reason: str
    headers: Headers
    body: bytes
    encoding: str | None
    complete: bool
    reusable: bool


_new_result = tuple.__new__


class _Response:
    """The llhttp callbacks: state of one response being parsed."""

    __slots__ = (
        "chunked",
        "done",
        "encoded",
        "extra",
        "fields",
        "head",
        "head_only",
        "interim",
        "keep",
        "keep_alive",
        "kept",
        "parser",
        "parts",
        "reason",
        "seen",
        "status",
    )

    def __init__(self, head_only: bool, keep: int) -> None:
        self.parser: Any = None
        self.reset(head_only, keep)

    def reset(self, head_only: bool, keep: int) -> None:
        """Ready for a new exchange (fresh lists: a returned :class:`Headers` keeps the old head)."""
        self.head_only = head_only
        self.keep = keep
        self.status = 0  # of the final response, once its head is complete
        self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []  # of the head being read, then trailers
        self.head: list[tuple[bytes, bytes]] | None = None  # the final head's fields
        self.encoded = False
        self.interim = 0
        self.parts: list[bytes] = []
        self.kept = 0
        self.seen = 0  # body bytes of the final response
        self.chunked = False
        self.keep_alive = False
        self.done = False  # the final message ended (HEAD: its head did)
        self.extra = False  # bytes followed the message

    # -- llhttp callbacks (called from feed_data) ----------------------------------------
    # Field counts are checked when a head or the trailers end: their bytes are
    # bounded by MAX_HEAD meanwhile, so the lists cannot grow without limit.

    def on_message_begin(self) -> None:
        if self.done:
            raise _After

    def on_status(self, data: bytes) -> None:
        self.reason += data

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        fields = self.fields
        if len(fields) > MAX_FIELDS:
            raise _Refused(f"more than {MAX_FIELDS} header fields")
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status < 100:
                raise _Refused(f"status {status:03d} is not an HTTP status")
            if status == 101:
                raise _Refused("101 Switching Protocols: an upgrade this client never asked for")
            self.interim += 1
            if self.interim > MAX_INTERIM:
                raise _Refused(f"more than {MAX_INTERIM} interim 1xx responses")
            self.reason = b""  # the next message's, from a fresh start
            self.fields = []
            return
        self.status = status
        self.head = fields
        self.fields = []  # trailers, read and dropped as http.client does, but counted
        for name, _ in fields:  # _has(fields, b"content-encoding"), inline: this runs per response
            if len(name) == 16 and name.lower() == b"content-encoding":
                self.encoded = True
                self.keep = -1  # keep it all (bounded by the drain limit): the caller decodes it
                break
        if self.head_only:
            self.keep_alive = parser.should_keep_alive()
            self.done = True  # a HEAD response has no body, whatever its headers say

    def on_chunk_header(self) -> None:
        if self.done:
            raise _After
        self.chunked = True

    def on_body(self, data: bytes) -> None:
        if self.done:
            raise _After
        self.seen += len(data)
        keep = self.keep
        if keep < 0:
            self.parts.append(data)
        elif self.kept < keep:
            part = data[: keep - self.kept]
            self.parts.append(part)
            self.kept += len(part)

    def on_message_complete(self) -> None:
        if self.head is None or self.done:
            return  # an interim answer ended, or a HEAD response's empty body
        if len(self.fields) > MAX_FIELDS:
            raise _Refused(f"more than {MAX_FIELDS} trailer fields")
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True

    # -- results ---------------------------------------------------------------------------

    def result(self, complete: bool, reusable: bool) -> Result:
        head = self.head
        assert head is not None  # noqa: S101 - only called once the head is complete
        headers = Headers(head)
        parts = self.parts
        # tuple.__new__ straight: a NamedTuple's own __new__ is a Python function (a frame per response).
        return _new_result(
            Result,
            (
                self.status,
                self.reason.decode("latin-1"),
                headers,
                parts[0] if len(parts) == 1 else _joined(parts),
                headers.get("Content-Encoding") if self.encoded else None,
                complete,
                reusable,
            ),
        )

    def framed(self) -> bool:
        """Whether the body's end is declared (a length or chunks), not the close."""
        head = self.head
        assert head is not None  # noqa: S101 - only called once the head is complete
        # A chunked body cut before its first chunk-size line shows no chunk yet:
        # with Transfer-Encoding and no body byte, the close is a truncation too.
        return (
            self.chunked
            or _has(head, b"content-length")
            or (_has(head, b"transfer-encoding") and not self.seen)
        )


def _refuse(exc: BaseException, url: str) -> NoReturn:
    """Raise the :class:`ResponseError` for a refused response, llhttp's reason or ours as cause."""
    cause = exc.__context__ if isinstance(exc.__context__, _Refused) else exc
    what = str(cause) or type(cause).__name__
    raise ResponseError(f"unreadable response from {url}: {what}", url=url) from cause


def exchange(
    sock: Any,
    request: bytes,
    *,
    url: str,
    head_only: bool,
    keep: int,
    drain_limit: int,
    read_timeout: float,
    deadline: float | None,
) -> Result:
    """Send ``request`` on ``sock`` and read one response.

    Args:
        sock: A connected socket or ``SSLSocket``. A plain socket may be left
            blocking with the kernel's timeouts at ``read_timeout``: give it to
            ``exchange`` with that same ``read_timeout`` only (as a pool's
            connections always are), or in timeout mode.
        request: The whole request (see ``headers.encode_request``).
        url: For error messages.
        head_only: The request was ``HEAD``: the response ends with its headers.
        keep: How many body bytes to keep.
        drain_limit: How many body bytes past ``keep`` to read so the
            connection can be reused; beyond that it is given up.
        read_timeout: The longest wait for one ``recv``.
        deadline: ``time.monotonic()`` value the whole exchange must end by.

    Raises:
        NoResponse: the connection ended before any byte of a response.
        ReadTimeoutError: past ``deadline``.
        ResponseError: a response llhttp or this client refuses, or one cut short.
        OSError: from the socket (``TimeoutError`` for a read timeout), for the
            caller to classify like urllib3's.
    """
    # Per thread: one receive buffer (no 64 KiB allocation per recv), and the parser of
    # the last exchange if it ended cleanly at a keep-alive message boundary, where
    # llhttp stands ready for the next message (as servers reuse one per connection);
    # taken out here, so a failure below leaves nothing half-used to reuse.
    local = _local.__dict__
    buffer = local.get("buffer")
    if buffer is None:
        buffer = local["buffer"] = memoryview(bytearray(_RECV))
    spare = local.pop("parser", None)
    if spare is None:
        resp = _Response(head_only, keep)
        parser = resp.parser = HttpResponseParser(resp)
    else:
        resp, parser = spare
        resp.reset(head_only, keep)
    feed = parser.feed_data
    recv_into = sock.recv_into
    monotonic = time.monotonic
    # How each wait is bounded. Python's timeout mode (settimeout(t)) makes every recv a
    # poll() then a recv, each releasing and retaking the GIL: on plain TCP, a blocking
    # socket with the kernel's SO_RCVTIMEO waits in the recv alone (a third less CPU per
    # request on loopback). So a plain socket waiting read_timeout is blocking (timeout
    # None, the kernel's timeouts set by _bound), and a wait the deadline shortens, a TLS
    # socket (a blocking SSLSocket retries a timed-out read forever) or a request too big
    # for one send use timeout mode.
    kernel = _KERNEL_TIMEOUTS and type(sock) is socket.socket and len(request) <= _SEND_AT_ONCE
    timeout = sock.gettimeout()
    # The usual deadline (attempt_timeout, 60 s by default) is far off: read_timeout bounds the
    # wait, and _timeout (which raises past the deadline) is called only when it gets close.
    if deadline is None or deadline - monotonic() >= read_timeout:
        wait = read_timeout
    else:
        wait = _timeout(read_timeout, deadline, url)
    bound = None if kernel and wait == read_timeout else wait
    if bound != timeout:  # the usual case on a reused connection: no syscall
        timeout = _bound(sock, bound, read_timeout)
    cut: BaseException | None = None
    try:
        if timeout is None:
            # SO_SNDTIMEO bounds each send() call, not a sendall: one send (which on Linux
            # waits at most read_timeout in all), then timeout mode, which bounds the rest
            # as a whole by the wait (and the deadline) for a peer that reads slowly.
            sent = sock.send(request)
            if sent < len(request):
                timeout = _bound(sock, _timeout(read_timeout, deadline, url), read_timeout)
                sock.sendall(memoryview(request)[sent:])
        else:
            sock.sendall(request)
    except _SEND_CUT as exc:
        cut = exc  # the answer may still be readable: urlopen reads it too
    except BlockingIOError as exc:  # SO_SNDTIMEO ran out
        raise _timed_out(exc) from exc
    received = 0
    idle = 0  # bytes read since the body last grew
    limit = keep + drain_limit
    while True:
        if deadline is None or deadline - monotonic() >= read_timeout:
            wait = read_timeout
        else:
            wait = _timeout(read_timeout, deadline, url)
        bound = None if kernel and wait == read_timeout else wait
        if bound != timeout:
            timeout = _bound(sock, bound, read_timeout)
        try:
            size = recv_into(buffer)
        except (ConnectionResetError, BrokenPipeError) as exc:
            if not received:
                raise NoResponse("connection reset before any response") from exc
            raise
        except (TimeoutError, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO ran out
            if type(exc) is BlockingIOError:
                exc = _timed_out(exc)
            if wait < read_timeout:  # the deadline, not read_timeout, bounded this wait
                raise ReadTimeoutError(f"attempt_timeout exceeded reading from {url}", url=url) from exc
            raise ReadTimeoutError(f"read from {url} timed out", url=url) from exc
        if not size:
            if not received:
                closed = cut or RemoteDisconnected("Remote end closed connection without response")
                raise NoResponse("connection closed before any response") from closed
            if resp.head is None or resp.framed():
                why = "connection closed mid-response"
                raise ResponseError(f"unreadable response from {url}: {why}", url=url) from ProtocolError(why)
            return resp.result(complete=True, reusable=False)  # a body that runs to the close
        received += size
        seen = resp.seen
        try:
            feed(buffer[:size])  # llhttp's callbacks copy what they hand out: the buffer is free again
        except (HttpParserError, HttpParserUpgrade) as exc:
            if not resp.done:
                _refuse(exc, url)
            resp.extra = True  # the message was whole; what followed it is not ours
        if resp.done:
            # Over TLS, one recv returns at most one record (16 KiB < _RECV) and OpenSSL
            # reads no further ahead: bytes after the message wait in the kernel, where
            # urllib3's check before the next reuse sees them.
            reusable = resp.keep_alive and not resp.extra
            if reusable and not head_only:  # llhttp saw the whole message: it is ready for the next
                local["parser"] = (resp, parser)
            return resp.result(complete=True, reusable=reusable)
        if resp.seen > limit:
            return resp.result(complete=False, reusable=False)
        if resp.seen != seen:
            idle = 0
        else:
            idle += size
            if idle > MAX_HEAD:
                _refuse(_Refused(f"more than {MAX_HEAD} bytes of head, chunk framing or trailers"), url)


def _timed_out(exc: BlockingIOError) -> TimeoutError:
    """A kernel timeout (EAGAIN on a blocking socket) as timeout mode reports one: ``TimeoutError``."""
    timed_out = TimeoutError("timed out")
    timed_out.__cause__ = exc
    return timed_out


def _bound(sock: Any, bound: float | None, read_timeout: float) -> float | None:
    """Bound the socket's waits: ``None`` blocking with the kernel's timeouts, else timeout mode.

    Returns the socket's timeout now: ``read_timeout`` (timeout mode) if the kernel
    refused the timeouts.
    """
    if bound is None:
        # Set at every switch to blocking (a fresh connection, or after a deadline-bounded
        # wait): a blocking socket here always carries this read_timeout.
        timeval = _timeval(read_timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        except OSError:  # never block without them: timeout mode bounds the wait instead
            bound = read_timeout
    sock.settimeout(bound)
    return bound


def _timeout(read_timeout: float, deadline: float | None, url: str) -> float:
    if deadline is None:
        return read_timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise ReadTimeoutError(f"attempt_timeout exceeded reading the response from {url}", url=url)
    return min(read_timeout, left)
