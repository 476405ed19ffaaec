"""A bounded store of attempt outcomes and the HTTP endpoint that exports it.

EventMesh's HTTP sink has a "webhook" mode: it keeps every attempt's outcome
in a bounded queue and serves it over HTTP so other systems can poll what
happened. :class:`ResultStore` is that queue (one entry per attempt, retries
included, the oldest entry dropped when full) and :class:`ExportServer` the
endpoint::

    GET /export?pageNum=1&pageSize=10&type=peek   -> 200 {"pageNum", "pageSize", "pageItems"}
                                                    204 when there is nothing to return
                                                    400 {"error": ...} for bad parameters
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import socket
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal

import attrs

from eventmesh_http_sink._validators import field_name, known_options, non_empty_str, positive_int
from eventmesh_http_sink.errors import ConfigError

__all__ = ["ExportServer", "ResultStore", "ResultStoreConfig"]

_log = logging.getLogger("eventmesh_http_sink")
_MAX_MESSAGE = 256
_MODES = ("peek", "poll")


def _check_port(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(field_name(inst, attr), f"must be None or a port 0..65535, got {value!r}")


def _check_path(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.startswith("/") or "?" in value or "#" in value:
        raise ConfigError(
            field_name(inst, attr), f"must be a path starting with '/' (no query), got {value!r}"
        )


@known_options
@attrs.frozen
class ResultStoreConfig:
    """Keep each attempt's outcome and, optionally, serve it over HTTP.

    Args:
        max_size: Entries kept; when full, the oldest entry goes.
        serve_port: ``None`` serves nothing (use :meth:`HttpSinkConnector.export`);
            ``0`` serves on an ephemeral port, ``N`` on port N.
        serve_host: The address the export endpoint binds (loopback by default:
            the entries carry response bodies).
        export_path: The path of the export endpoint.
    """

    _config_prefix: ClassVar[str] = "result_store"  # ConfigError names "result_store.<field>"

    max_size: int = attrs.field(default=5000, validator=positive_int)
    serve_port: int | None = attrs.field(default=None, validator=_check_port)
    serve_host: str = attrs.field(default="127.0.0.1", validator=non_empty_str)
    export_path: str = attrs.field(default="/export", validator=_check_path)


def _iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def check_page(page_num: object, page_size: object, mode: object) -> None:
    """Refuse bad export parameters.

    Raises:
        ValueError: naming the parameter.
    """
    if isinstance(page_num, bool) or not isinstance(page_num, int) or page_num < 1:
        raise ValueError(f"page_num must be an int >= 1, got {page_num!r}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be an int >= 1, got {page_size!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be 'peek' or 'poll', got {mode!r}")


class ResultStore:
    """A thread-safe bounded queue of attempt entries, EventMesh's webhook format.

    Each entry is ``{"metadata": {"url", "code", "message", "receivedTime",
    "recordId", "retryNum"}, "data": <response body text or None>}``; ``code``
    is -1 when no response was read.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._items: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_size)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def add_attempt(
        self,
        *,
        url: str,
        record_id: str,
        retry_num: int,
        status: int | None,
        message: str,
        body: bytes | None,
    ) -> None:
        """Append one attempt's outcome (the oldest entry goes when full)."""
        entry = {
            "metadata": {
                "url": url,
                "code": -1 if status is None else status,
                "message": message[:_MAX_MESSAGE],
                "receivedTime": _iso_now(),
                "recordId": record_id,
                "retryNum": retry_num,
            },
            "data": None if body is None else body.decode("utf-8", errors="replace"),
        }
        with self._lock:
            self._items.append(entry)  # deque(maxlen) drops the oldest

    def export(
        self, page_num: int = 1, page_size: int = 10, mode: Literal["peek", "poll"] = "peek"
    ) -> dict[str, Any]:
        """One page of entries, oldest first.

        ``peek`` returns page ``page_num`` and keeps it; ``poll`` removes and
        returns the first ``page_size`` entries (``page_num`` is only echoed),
        as EventMesh does.

        Returns:
            ``{"pageNum": page_num, "pageSize": <items returned>, "pageItems": [...]}``.

        Raises:
            ValueError: a parameter is out of range.
        """
        check_page(page_num, page_size, mode)
        with self._lock:
            if mode == "poll":
                count = min(page_size, len(self._items))
                items = [self._items.popleft() for _ in range(count)]
            else:
                start = (page_num - 1) * page_size
                items = list(self._items)[start : start + page_size]
        return {"pageNum": page_num, "pageSize": len(items), "pageItems": items}


class ExportServer:
    """Serves a :class:`ResultStore` at ``GET <export_path>`` from a daemon thread."""

    def __init__(self, store: ResultStore, config: ResultStoreConfig) -> None:
        self._store = store
        self._path = config.export_path
        server_class = _ServerV6 if ":" in config.serve_host else ThreadingHTTPServer
        try:
            self._server = server_class((config.serve_host, config.serve_port or 0), _make_handler(self))
        except OSError as exc:
            raise ConfigError(
                "result_store.serve_port",
                f"cannot serve on {config.serve_host}:{config.serve_port}: {exc}",
            ) from exc
        self._server.daemon_threads = True
        host, port = config.serve_host, int(self._server.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}{self._path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"eventmesh-http-sink-export-{port}",
            daemon=True,
        )
        self._thread.start()
        _log.info("serving attempt results at %s", self.url)
        if host not in ("127.0.0.1", "::1", "localhost"):
            # The endpoint has no authentication and the entries carry response bodies.
            _log.warning("the export endpoint %s is reachable beyond loopback, unauthenticated", self.url)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def answer(self, raw_path: str) -> tuple[int, dict[str, Any] | None]:
        """The status and JSON body for a GET of ``raw_path``."""
        parsed = urllib.parse.urlsplit(raw_path)
        if parsed.path != self._path:
            return HTTPStatus.NOT_FOUND, {"error": f"not found: use {self._path}"}
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        try:
            page_num = _int_param(query, "pageNum")
            page_size = _int_param(query, "pageSize")
            mode = query.get("type", ["peek"])[-1]
            check_page(page_num, page_size, mode)
        except ValueError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        page = self._store.export(page_num, page_size, mode)  # type: ignore[arg-type]
        if not page["pageItems"]:
            return HTTPStatus.NO_CONTENT, None
        return HTTPStatus.OK, page


class _ServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _int_param(query: dict[str, list[str]], name: str) -> int:
    values = query.get(name)
    if not values:
        raise ValueError(f"{name} is required")
    text = values[-1].strip()
    if not text.isdigit():
        raise ValueError(f"{name} must be a positive integer, got {values[-1]!r}")
    return int(text)


def _make_handler(export: ExportServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "eventmesh-http-sink-export"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status, payload = export.answer(self.path)
            self._send(status, payload)

        def _refuse(self) -> None:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET is supported"}, allow=True)

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

        def _send(self, status: int, payload: dict[str, Any] | None, allow: bool = False) -> None:
            body = b"" if payload is None else json.dumps(payload).encode("utf-8")
            self.send_response(status)
            if allow:
                self.send_header("Allow", "GET")
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("export endpoint: " + format, *args)

    return Handler
