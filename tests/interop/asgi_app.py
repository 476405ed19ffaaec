"""The ASGI receiver run by uvicorn in the interop suite (``--http h11`` and ``--http httptools``).

Each request appends one JSON line to the file named by ``EMHS_INTEROP_LOG`` when
its head arrives: its ``Idempotency-Key``, the client port (one per TCP
connection), the method, the path and every ``Host`` header as sent. The
routes are those of :mod:`tests.interop.routes`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tests.interop.routes import CHUNKS, INTERIM_FINAL, OK, REJECTED, big_body

_LOG = os.open(os.environ["EMHS_INTEROP_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _record(scope: dict[str, Any]) -> None:
    headers = scope["headers"]
    keys = [v.decode("latin-1") for k, v in headers if k == b"idempotency-key"]
    entry = {
        "key": keys[0] if keys else None,
        "conn": scope["client"][1],
        "method": scope["method"],
        "path": scope["path"],
        "hosts": [v.decode("latin-1") for k, v in headers if k == b"host"],
    }
    os.write(_LOG, json.dumps(entry).encode() + b"\n")  # one write: lines never interleave


async def _drain(receive: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)


_TEXT = (b"content-type", b"text/plain")


async def _answer(send: Any, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    headers = [_TEXT, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI application."""
    if scope["type"] != "http":
        return
    _record(scope)
    path = scope["path"]
    if path == "/reject":
        # Refuse at the head, before reading any of the body.
        await _answer(send, 413, REJECTED, (b"connection", b"close"))
        return
    await _drain(receive)
    if path == "/close":
        await _answer(send, 200, OK, (b"connection", b"close"))
    elif path == "/chunked":
        # No content-length and more_body: the server frames the body with chunked encoding.
        await send({"type": "http.response.start", "status": 200, "headers": [_TEXT]})
        for piece in CHUNKS:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/nocontent":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        size = int(dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)["size"])
        await _answer(send, 200, big_body(size))
    elif path == "/interim":  # not reachable by the suite: ASGI has no interim answers
        await _answer(send, 200, INTERIM_FINAL)
    else:
        await _answer(send, 200, OK)
