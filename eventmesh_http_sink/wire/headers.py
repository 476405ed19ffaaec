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
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return (head + "".join(lines)).encode("latin-1") + body, close
