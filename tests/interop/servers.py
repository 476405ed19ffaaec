"""Real HTTP servers for the interop suite, each a child process on a loopback port.

Nobody here wrote them: nginx (plain, and TLS with a ``trustme`` certificate),
Node.js ``http``, uvicorn with its h11 and its httptools implementation, and
gunicorn's sync worker. Each :class:`Receiver` logs every request it gets (its
``Idempotency-Key`` and which TCP connection carried it) where the tests can
read it back: nginx through ``log_format`` (``$http_idempotency_key``,
``$connection``), the others through the small apps beside this module.

Every server listens on 127.0.0.1 only and is configured to close kept-alive
connections idle for :data:`IDLE_TIMEOUT` seconds (gunicorn's sync worker closes
after every response); :meth:`Receiver.idle_close_after` measures when each
really does. :meth:`Receiver.stop` ends the process this module started, by pid.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import attrs

from tests.interop.routes import CHUNKS, big_body

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

IDLE_TIMEOUT = 1.0  # configured idle timeout: nginx /idle, Node keepAliveTimeout, uvicorn
BIG_SIZES = (256 * 1024, 3 * 1024 * 1024)  # served at /big?size=N
GZIP_TEXT = b"compressible text, " * 64  # nginx /gzip (gzipped when the client accepts it)

RECEIVERS = ("nginx", "nginx-tls", "node", "uvicorn-h11", "uvicorn-httptools", "gunicorn-sync")


class Unavailable(Exception):
    """A server program (or Python package) this receiver needs is not installed."""


@attrs.frozen
class Logged:
    """One request as the server saw it.

    Attributes:
        key: Its ``Idempotency-Key`` (``None`` without one).
        conn: The TCP connection that carried it (nginx's ``$connection`` serial, else the client port).
        method: The request method.
        path: The path, without the query.
        hosts: Every ``Host`` header value as the server reports them.
        status: The status the server answered (nginx only; ``None`` for the apps).
        compressed: Whether the server gzipped its answer (nginx's ``$gzip_ratio``; ``None`` for the apps).
    """

    key: str | None
    conn: str
    method: str
    path: str
    hosts: tuple[str, ...]
    status: int | None = None
    compressed: bool | None = None


@attrs.define
class Receiver:
    """A running server and what the tests need to know about it."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path
    log_path: Path
    tls_ca: Path | None = None
    closes_every_response: bool = False
    interim_skip: str | None = "cannot send interim (1xx) answers"
    compresses: bool = False
    _idle: float | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    def client_options(self) -> dict[str, object]:
        """Config keywords every connector to this server needs (the test CA for TLS)."""
        return {"ca_certs": str(self.tls_ca)} if self.tls_ca else {}

    def log(self) -> list[Logged]:
        """Every request logged so far."""
        text = self.log_path.read_text(encoding="latin-1") if self.log_path.exists() else ""
        parse = _parse_nginx if self.name.startswith("nginx") else _parse_json
        return [parse(line) for line in text.splitlines() if line.strip()]

    def requests_for(self, keys: Iterable[str], timeout: float = 10.0) -> list[Logged]:
        """The logged requests carrying ``keys``, once every key was seen at least once.

        Servers log after (nginx) or while answering, so a line can land just after
        the client's callback: wait for all keys, then a moment for late repeats.
        """
        wanted = set(keys)
        deadline = time.monotonic() + timeout
        while True:
            seen = [entry for entry in self.log() if entry.key in wanted]
            if {e.key for e in seen} >= wanted or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        return [entry for entry in self.log() if entry.key in wanted]

    def idle_close_after(self) -> float:
        """Seconds the server really keeps an idle kept-alive connection (measured once).

        Servers pad or round the configured timeout (Node 20 closes an idle connection
        ``keepAliveTimeout`` + 1 s after its last answer, nginx and uvicorn on a timer
        tick): the idle cases time their gaps from what the server does.
        """
        if self._idle is None:
            self._idle = _measure_idle_close(self)
        return self._idle

    def stop(self) -> None:
        """End the server process (by its pid) and remove its files."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def diagnostics(self) -> str:
        """The server's own error output, for a failing test's message."""
        err = self.tmp / "stderr.log"
        error_log = self.tmp / "error.log"
        parts = [p.read_text(errors="replace")[-3000:] for p in (err, error_log) if p.exists()]
        return "\n".join(parts)


def _measure_idle_close(receiver: Receiver) -> float:
    sock: socket.socket = socket.create_connection(("127.0.0.1", receiver.port), timeout=30)
    try:
        if receiver.tls_ca is not None:
            context = ssl.create_default_context(cafile=str(receiver.tls_ca))
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(b"GET /idle HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\nok"):  # every receiver answers GET /idle with "ok"
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"{receiver.name} closed before answering GET /idle: {data!r}")
            data += chunk
        answered = time.monotonic()
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass  # a reset, or TLS without close_notify: closed all the same
        return time.monotonic() - answered
    finally:
        sock.close()


def _parse_json(line: str) -> Logged:
    entry = json.loads(line)
    return Logged(entry["key"], str(entry["conn"]), entry["method"], entry["path"], tuple(entry["hosts"]))


def _parse_nginx(line: str) -> Logged:
    conn, status, request, key, host, gzip_ratio = line.split("\t")
    method, _, rest = request.partition(" ")
    path = rest.rsplit(" ", 1)[0].split("?", 1)[0]
    return Logged(None if key == "-" else key, conn, method, path, (host,), int(status), gzip_ratio != "-")


# -- starting them ----------------------------------------------------------------------------


def start(name: str, tmp: Path) -> Receiver:
    """Start the receiver ``name`` (one of :data:`RECEIVERS`) with its files in ``tmp``.

    Raises:
        Unavailable: its program or Python package is not installed.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    if name in ("nginx", "nginx-tls"):
        return _start_nginx(tmp, tls=name == "nginx-tls")
    if name == "node":
        return _start_node(tmp)
    if name.startswith("uvicorn-"):
        return _start_uvicorn(tmp, name.removeprefix("uvicorn-"))
    if name == "gunicorn-sync":
        return _start_gunicorn(tmp)
    raise ValueError(f"unknown receiver {name!r}")


def _binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if found is None:
        raise Unavailable(f"{name} is not installed")
    return found


def _module(name: str, hint: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise Unavailable(f"the Python package {name} is not installed ({hint})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, tmp: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(tmp)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"{what} did not listen on {port} within 20 s: {_tail(tmp)}")


def _tail(tmp: Path) -> str:
    return " | ".join(
        p.read_text(errors="replace")[-1500:] for p in (tmp / "stderr.log", tmp / "error.log") if p.exists()
    )


_NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    log_format interop '$connection\t$status\t$request\t$http_idempotency_key\t$http_host\t$gzip_ratio';
    access_log {tmp}/access.log interop;
    default_type text/plain;
    keepalive_timeout 60s;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl};
        {tls}
        root {tmp}/www;
        location = /ok {{ return 200 "ok"; }}
        location = /idle {{ keepalive_timeout {idle}s; return 200 "ok"; }}
        # keepalive_timeout 0: nginx answers with "Connection: close" and closes.
        location = /close {{ keepalive_timeout 0; return 200 "ok"; }}
        # sub_filter drops the Content-Length of what it filters: the answer goes out chunked.
        location = /chunked {{
            sub_filter_types *;
            sub_filter_once off;
            sub_filter "|" "";
            return 200 "{chunked}";
        }}
        location = /nocontent {{ return 204; }}
        # A body over client_max_body_size is refused from the request head, unread.
        location = /reject {{ client_max_body_size 1k; return 200 "not reached"; }}
        location = /gzip {{ gzip on; gzip_types *; gzip_min_length 0; return 200 "{gzip}"; }}
        # The static module refuses POST (405); error_page turns that into a GET of the file.
        location = /big {{ rewrite ^ /big-$arg_size last; }}
        location ^~ /big- {{ error_page 405 =200 $uri; }}
    }}
}}
"""


def _start_nginx(tmp: Path, *, tls: bool) -> Receiver:
    binary = _binary("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx")
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    for size in BIG_SIZES:
        (www / f"big-{size}").write_bytes(big_body(size))
    ca_path = None
    tls_lines = ""
    if tls:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - trustme is in the test extra
            raise Unavailable("the Python package trustme is not installed") from exc
        ca = trustme.CA()
        ca_path = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        server_pem = tmp / "server.pem"
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
        tls_lines = f"ssl_certificate {server_pem}; ssl_certificate_key {server_pem};"
    port = _free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(
            tmp=tmp,
            port=port,
            ssl=" ssl" if tls else "",
            tls=tls_lines,
            idle=int(IDLE_TIMEOUT),
            # "|" marks where sub_filter cuts; it is removed from the answer.
            chunked="|".join(c.decode() for c in CHUNKS),
            gzip=GZIP_TEXT.decode(),
        )
    )
    with open(tmp / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    name = "nginx-tls" if tls else "nginx"
    _wait_listening(proc, port, name, tmp)
    return Receiver(
        name,
        proc,
        port,
        tmp,
        tmp / "access.log",
        tls_ca=ca_path,
        interim_skip=(
            "nginx 1.22 sends no 103 Early Hints (1.29+), and 100 Continue only to a request "
            "with Expect: 100-continue, which the library never sends"
        ),
        compresses=True,
    )


def _start_node(tmp: Path) -> Receiver:
    binary = _binary("node", "/usr/bin/node", "/usr/local/bin/node")
    log_path = tmp / "requests.jsonl"
    with open(tmp / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [binary, str(HERE / "node_server.js"), str(log_path), str(int(IDLE_TIMEOUT * 1000))],
            stdin=subprocess.PIPE,  # the server exits when this closes
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"node did not start: {line!r} {_tail(tmp)}")
    port = int(line)
    _wait_listening(proc, port, "node", tmp)
    return Receiver("node", proc, port, tmp, log_path, interim_skip=None)


def _python_env(log_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["EMHS_INTEROP_LOG"] = str(log_path)
    return env


def _start_uvicorn(tmp: Path, impl: str) -> Receiver:
    _module("uvicorn", "pip install '.[interop]'")
    if impl == "httptools":
        _module("httptools", "pip install '.[interop]'")
    log_path = tmp / "requests.jsonl"
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "tests.interop.asgi_app:app", "--http", impl]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--timeout-keep-alive", str(int(IDLE_TIMEOUT))]
    cmd += ["--lifespan", "off", "--log-level", "warning", "--no-access-log"]
    with open(tmp / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_python_env(log_path), stdin=subprocess.DEVNULL, stderr=err
        )
    _wait_listening(proc, port, f"uvicorn --http {impl}", tmp)
    return Receiver(
        f"uvicorn-{impl}",
        proc,
        port,
        tmp,
        log_path,
        interim_skip=(
            "ASGI has no interim-response event; uvicorn sends 100 Continue only to a request "
            "with Expect: 100-continue, which the library never sends"
        ),
    )


def _start_gunicorn(tmp: Path) -> Receiver:
    _module("gunicorn", "pip install '.[interop]'")
    log_path = tmp / "requests.jsonl"
    port = _free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--worker-class", "sync", "--workers", "2"]
    cmd += ["--bind", f"127.0.0.1:{port}", "--log-level", "warning", "--graceful-timeout", "2"]
    cmd += ["tests.interop.wsgi_app:app"]
    with open(tmp / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_python_env(log_path), stdin=subprocess.DEVNULL, stderr=err
        )
    _wait_listening(proc, port, "gunicorn", tmp)
    return Receiver(
        "gunicorn-sync",
        proc,
        port,
        tmp,
        log_path,
        closes_every_response=True,
        interim_skip="WSGI cannot send interim answers; gunicorn answers Expect: 100-continue itself",
    )


def distinct(entries: Iterable[Logged]) -> collections.Counter[str]:
    """Requests per connection."""
    return collections.Counter(e.conn for e in entries)
