"""Request headers: which names the library frames, how user headers merge, how a request is written.

The library owns the framing of every request it sends: ``Content-Length`` is
the body's length, the body is never chunked, and the connection is kept alive
unless ``keep_alive=False``. A user header that could change that framing
(``Content-Length``, ``Transfer-Encoding``, ``Connection``, ``TE``, ``Trailer``,
``Upgrade``, ``Expect``) is refused where it enters: by ``HttpSinkConfig`` for
``headers`` and by ``put`` for a ``header_fn`` result, so no configuration can
smuggle a second request into the body of the first.

Header names are case-insensitive (RFC 9110), so each name goes out once: a
user's ``host``, ``accept-encoding``, ``user-agent`` or ``content-type``
replaces the library's default instead of being sent beside it. The library
spells its own names one way (:data:`_LIBRARY_NAMES`) and :func:`merge_headers`
files a user's header under that spelling, so the connector can keep plain
dicts and still never hold two spellings of one name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from eventmesh_http_sink.errors import ConfigError, SinkError

if TYPE_CHECKING:
    from eventmesh_http_sink.config import HttpSinkConfig

__all__ = [
    "FRAMING_HEADERS",
    "USER_AGENT",
    "RequestHeads",
    "base_headers",
    "check_header",
    "encode_request",
    "merge_headers",
]

USER_AGENT = "eventmesh-http-sink/0.1"

# Lower-case names whose value would change how the request is framed or how the
# connection behaves: the library sets them itself or never sends them.
FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "te", "trailer", "upgrade", "expect"}
)

# The names the library sends itself, in the spelling it uses; a user's header
# with one of these names (any case) is filed under this spelling.
_LIBRARY_NAMES = {
    name.lower(): name
    for name in (
        "Host",
        "Accept-Encoding",
        "User-Agent",
        "Content-Type",
        "Content-Encoding",
        "Idempotency-Key",
        "Authorization",
        "extension",
    )
}

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name


def check_header(name: object, value: object, where: str) -> None:
    """Refuse a header that could split or reframe the request, or fail to encode.

    Raises:
        ConfigError: naming ``where`` (the field or record the header came from)
            and the header.
    """
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ConfigError(where, f"header name {name!r} is not a valid HTTP token")
    if name.lower() in FRAMING_HEADERS:
        raise ConfigError(
            where, f"header {name!r} is set by the library (it frames every request) and cannot be given"
        )
    if not isinstance(value, str):
        raise ConfigError(where, f"header {name!r} value must be str, got {type(value).__name__}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ConfigError(where, f"header {name!r} value contains CR, LF or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(where, f"header {name!r} value is not latin-1 encodable") from None


def merge_headers(headers: dict[str, str], extra: Mapping[str, str], where: str) -> None:
    """Add ``extra`` to ``headers``: each checked, each replacing any header of the same name.

    A name the library sends itself is filed under the library's spelling, any
    other name replaces an existing header that differs from it only in case.

    Raises:
        ConfigError: naming ``where``, for a refused header (see :func:`check_header`)
            or a name given twice in ``extra`` (names are case-insensitive).
    """
    existing = {name.lower(): name for name in headers}
    seen: set[str] = set()
    for name, value in extra.items():
        check_header(name, value, where)
        low = name.lower()
        if low in seen:
            raise ConfigError(where, f"header {name!r} is given twice (header names are case-insensitive)")
        seen.add(low)
        old = existing.get(low)
        if old is not None:
            del headers[old]
        key = _LIBRARY_NAMES.get(low, name)
        headers[key] = value
        existing[low] = key


def base_headers(config: HttpSinkConfig) -> dict[str, str]:
    """The headers every request of a connector starts from.

    ``User-Agent``, then the configured ``headers`` (a user's value replaces the
    default), then ``Connection: close`` when ``keep_alive`` is off. The
    connector adds ``Content-Type`` only where the user gave none.
    """
    headers = {"User-Agent": USER_AGENT}
    merge_headers(headers, config.headers, "headers")
    if not config.keep_alive:
        headers["Connection"] = "close"
    return headers


# What encode_request does with a header name (lower case); other names are copied.
_HOST, _ACCEPT, _CONNECTION, _REFUSED = 1, 2, 3, 4
_SPECIAL = {
    "host": _HOST,
    "accept-encoding": _ACCEPT,
    "connection": _CONNECTION,
    **dict.fromkeys(FRAMING_HEADERS - {"connection"}, _REFUSED),
}


def _head(method: str, target: str, host: str, headers: Mapping[str, str], close: bool) -> tuple[str, bool]:
    """The request line and every header line but ``Content-Length``; whether it asks to close."""
    lines = []
    host_given = accept_given = False
    for name, value in headers.items():
        kind = _SPECIAL.get(name.lower())
        if kind is not None:
            if kind == _REFUSED:
                raise SinkError(f"header {name!r} is set by the library and cannot be given")
            if kind == _HOST:
                host_given = True
            elif kind == _ACCEPT:
                accept_given = True
            elif "close" in value.lower():
                close = True
                continue  # written once, below
            else:
                continue  # a keep-alive request is the HTTP/1.1 default: nothing to say
        lines.append(f"{name}: {value}\r\n")
    head = f"{method} {target} HTTP/1.1\r\n"
    if not host_given:
        head += f"Host: {host}\r\n"
    if not accept_given:
        head += "Accept-Encoding: identity\r\n"
    if close:
        lines.append("Connection: close\r\n")
    return head + "".join(lines), close


def encode_request(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes, *, close: bool
) -> tuple[bytes, bool]:
    """The bytes of one HTTP/1.1 request, and whether it asks the server to close.

    ``Host`` and ``Accept-Encoding: identity`` (urllib3's and http.client's
    defaults) go out unless ``headers`` has them, in any case. ``Content-Length``
    is always the body's length. ``close`` (or a ``Connection: close`` in
    ``headers``) sends ``Connection: close``.

    Raises:
        SinkError: ``headers`` has a framing header other than ``Connection``
            (``HttpSinkConfig`` and ``put`` refuse those: only a direct caller of
            a transport can get here).
    """
    head, close = _head(method, target, host, headers, close)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body, close


# The fields the connector sets per record, in its spelling: everything else in a
# request's headers is usually the same for every request of a connector.
_IDEMPOTENCY_KEY = "Idempotency-Key"
_EXTENSION = "extension"
# Fields the optional features give each request (Standard Webhooks signing, the
# attempt's trace context, CloudEvents binary mode's id and time), in the spelling
# they use: kept out of the cached head once a request carries one of them.
_PER_REQUEST = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "tracestate",
    "ce-id",
    "ce-time",
)


class RequestHeads:
    """:func:`encode_request` for one transport, the fields that do not vary encoded once.

    A request's head is its request line, ``Host``, the connector's and the
    user's headers, and the fields that change per record: ``Idempotency-Key``,
    the ``extension`` header and ``Content-Length``, plus (once a request carries
    one) the signature's ``webhook-*`` fields, ``traceparent``/``tracestate`` and
    CloudEvents binary mode's ``ce-id``/``ce-time``. The rest is encoded on
    first use and kept (keyed by every name and value, so a changed header is a
    new head); each request then costs one dict copy, one dict comparison with
    the last head's headers and one bytes format instead of a line per header.
    The two per-record fields go out after the others, ``Content-Length`` last.

    When heads keep changing anyway (a ``header_fn`` or CloudEvents extensions
    giving each record its own fields) the cache only costs: after
    :data:`MAX_HEADS` distinct heads twice over it turns itself off and every
    request is encoded whole, as :func:`encode_request` does.

    Thread-safe: dict reads and writes are atomic; two threads missing the same
    head at once both encode it, to the same bytes.
    """

    MAX_HEADS = 64

    def __init__(self) -> None:
        self._heads: dict[tuple[object, ...], tuple[bytes, bool]] = {}
        # The head used last, in one tuple (read and replaced atomically): one dict
        # comparison finds it again, without building and hashing a key.
        self._last: tuple[tuple[object, ...], dict[str, str], bytes, bool] = ((), {}, b"", False)
        self._fills = 0
        self._per_request = False  # the _PER_REQUEST fields are taken out of every head
        self.caching = True

    def encode(
        self, method: str, target: str, host: str, headers: Mapping[str, str], body: bytes, *, close: bool
    ) -> tuple[bytes, bool]:
        """The bytes of one request and whether it asks to close: see :func:`encode_request`.

        Raises:
            SinkError: as :func:`encode_request`.
        """
        if not self.caching or type(headers) is not dict:
            return encode_request(method, target, host, headers, body, close=close)
        fixed = headers.copy()
        key = fixed.pop(_IDEMPOTENCY_KEY, None)
        extension = fixed.pop(_EXTENSION, None)
        varying = ""
        if self._per_request:  # signing, tracing or CloudEvents binary mode seen
            for name in _PER_REQUEST:
                value = fixed.pop(name, None)
                if value is not None:
                    varying += f"{name}: {value}\r\n"
        request = (method, target, host, close)
        last = self._last
        if last[0] == request and last[1] == fixed:
            prefix, close = last[2], last[3]
        else:
            if not self._per_request and any(name in fixed for name in _PER_REQUEST):
                self._per_request = True  # from now on those fields are not part of a head
                return self.encode(method, target, host, headers, body, close=close)
            ident = (*request, *fixed.items())
            entry = self._heads.get(ident)
            if entry is None:
                entry = self._new_head(ident, method, target, host, fixed, close)
            self._last = (request, fixed, *entry)
            prefix, close = entry
        if extension is None and key is not None and not varying:  # the usual record
            return (
                b"%sIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (prefix, key.encode("latin-1"), len(body), body),
                close,
            )
        if extension is not None:
            varying = f"extension: {extension}\r\n{varying}"
        if key is not None:
            varying = f"Idempotency-Key: {key}\r\n{varying}"
        return (
            b"%s%sContent-Length: %d\r\n\r\n%s" % (prefix, varying.encode("latin-1"), len(body), body),
            close,
        )

    def _new_head(  # noqa: PLR0917 - private, one caller
        self,
        ident: tuple[object, ...],
        method: str,
        target: str,
        host: str,
        fixed: Mapping[str, str],
        close: bool,
    ) -> tuple[bytes, bool]:
        head, close = _head(method, target, host, fixed, close)
        entry = (head.encode("latin-1"), close)
        heads = self._heads
        if len(heads) >= self.MAX_HEADS:
            heads.clear()
            self._fills += 1
            if self._fills >= 2:
                self.caching = False  # heads vary per request: keeping them only costs
                return entry
        heads[ident] = entry
        return entry
