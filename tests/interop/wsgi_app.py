"""The WSGI receiver run by gunicorn's sync worker in the interop suite.

Each request appends one JSON line to the file named by ``EMHS_INTEROP_LOG``
when its head arrives: its ``Idempotency-Key``, the client port (one per TCP
connection), the method, the path and the ``Host`` header as the server gives
it (gunicorn joins repeated headers with a comma). The routes are those of
:mod:`tests.interop.routes`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from tests.interop.routes import CHUNKS, OK, REJECTED, big_body

_LOG = os.open(os.environ["EMHS_INTEROP_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _record(environ: dict[str, Any]) -> None:
    host = environ.get("HTTP_HOST")
    entry = {
        "key": environ.get("HTTP_IDEMPOTENCY_KEY"),
        "conn": int(environ["REMOTE_PORT"]),
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "hosts": [] if host is None else [host],
    }
    # Several worker processes append to one file: one O_APPEND write per line.
    os.write(_LOG, json.dumps(entry).encode() + b"\n")


def _chunks() -> Iterator[bytes]:
    yield from CHUNKS


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application."""
    _record(environ)
    path = environ["PATH_INFO"]
    text = [("Content-Type", "text/plain")]
    if path == "/reject":
        # Refuse at the head, before reading any of the body.
        start_response("413 Content Too Large", [*text, ("Content-Length", str(len(REJECTED)))])
        return [REJECTED]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    while length > 0:  # read the whole body before answering
        piece = stream.read(min(length, 65536))
        if not piece:
            break
        length -= len(piece)
    if path == "/chunked":
        start_response("200 OK", text)  # no Content-Length: gunicorn sends it chunked
        return _chunks()
    if path == "/nocontent":
        start_response("204 No Content", [])
        return []
    body = big_body(int(parse_qs(environ["QUERY_STRING"])["size"][0])) if path == "/big" else OK
    start_response("200 OK", [*text, ("Content-Length", str(len(body)))])
    return [body]
