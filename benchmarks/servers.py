"""Loopback HTTP servers for the benchmarks, each in its own process.

* :func:`start_nginx`: nginx answering ``200 ok`` to everything (``apt-get install
  nginx-light``). C, one worker process: it is never the limit of a Python client.
  With ``tls=True`` it serves https with a certificate from a throw-away CA made
  at run time (:class:`TestCA`, ``trustme``); every client verifies against it.
* :func:`start_python_server`: a small asyncio ``Protocol`` server (no framework,
  no uvloop) in a separate interpreter, answering ``200 ok`` after ``delay``
  seconds. Used for the 10 ms scenario (nginx cannot delay natively) and as the
  zero-latency fallback when nginx is not installed (TLS too).

Both listen on 127.0.0.1 only, on a free ephemeral port, and keep connections
alive. :class:`ServerProcess` stops the process it started, by its pid.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
error_log {prefix}/error.log crit;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    ssl_session_cache shared:tls:1m;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl} reuseport backlog=1024;
        {tls}
        location / {{ return 200 "ok"; }}
    }}
}}
"""

# The delayed server: a bare asyncio Protocol, parsing just enough HTTP/1.1
# (request line, headers, Content-Length body) and answering each request
# ``delay`` seconds after it arrived, in order, on a kept-alive connection.
_PY_SERVER = r"""
import asyncio, socket, socketserver, sys, threading, time
DELAY = float(sys.argv[2])
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

class H(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.buf = b""
    def data_received(self, data):
        buf = self.buf + data
        loop = asyncio.get_running_loop()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            i = head.find(b"content-length:")
            j = head.find(b"\r\n", i)
            n = int(head[i + 15 : j if j > 0 else None]) if i >= 0 else 0
            if len(buf) < end + 4 + n:
                break
            buf = buf[end + 4 + n:]
            if DELAY > 0:
                loop.call_later(DELAY, self.reply)
            else:
                self.reply()
        self.buf = buf
    def reply(self):
        if not self.t.is_closing():
            self.t.write(RESPONSE)

class Threaded(socketserver.StreamRequestHandler):
    # One thread per connection, time.sleep for the delay: timer precision ~0.1 ms
    # (asyncio's epoll timeouts round up to whole milliseconds).
    def handle(self):
        rf, wf = self.rfile, self.wfile
        while True:
            line = rf.readline(65537)
            if not line:
                return
            t0 = time.monotonic()
            n = 0
            while True:
                h = rf.readline(65537)
                if h in (b"\r\n", b"\n", b""):
                    break
                if h[:15].lower() == b"content-length:":
                    n = int(h[15:])
            if n:
                rf.read(n)
            left = DELAY - (time.monotonic() - t0)
            if left > 0:
                time.sleep(left)
            wf.write(RESPONSE)
            wf.flush()

def threaded():
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.request_queue_size = 1024
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Threaded)
    print(srv.server_address[1], flush=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    time.sleep(float(sys.argv[1]))  # bounded lifetime

async def main():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    context = None
    if len(sys.argv) > 4:  # a certificate chain + key file: serve https
        import ssl
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[4])
    server = await asyncio.get_running_loop().create_server(H, sock=sock, backlog=1024, ssl=context)
    print(sock.getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))  # bounded lifetime: never outlives a forgotten parent
    server.close()

if len(sys.argv) > 3 and sys.argv[3] == "threaded":
    threaded()
else:
    asyncio.run(main())
"""


class TestCA:
    """A throw-away certificate authority (``trustme``) and a server certificate for 127.0.0.1.

    Attributes:
        ca_file: The CA certificate (PEM) clients verify against.
        server_pem: The server's key and certificate chain in one PEM file.
    """

    def __init__(self, directory: str) -> None:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - trustme is in the bench extra
            raise RuntimeError("the https scenario needs trustme (pip install '.[bench]')") from exc
        ca = trustme.CA()
        self.ca_file = str(Path(directory, "ca.pem"))
        self.server_pem = str(Path(directory, "server.pem"))
        ca.cert_pem.write_to_path(self.ca_file)
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(self.server_pem)


class ServerProcess:
    """A server process we started; :meth:`stop` ends it by pid.

    Attributes:
        url: Where clients send (``https://`` when :attr:`ca_file` is set).
        ca_file: The CA certificate to verify the server against, for https.
    """

    def __init__(
        self, name: str, proc: subprocess.Popen[bytes], port: int, tmp: str | None, ca_file: str | None = None
    ) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.ca_file = ca_file
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}/events"
        self._tmp = tmp

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # the port pipe: an unclosed one is a ResourceWarning
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


def nginx_path() -> str | None:
    """The nginx binary, or ``None`` when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def start_nginx(*, tls: bool = False) -> ServerProcess:
    """Start nginx on a free loopback port (raises if nginx is missing); https with ``tls``."""
    binary = nginx_path()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    tmp = tempfile.mkdtemp(prefix="emhs-nginx-")
    port = _free_port()
    ca = TestCA(tmp) if tls else None
    conf = Path(tmp, "nginx.conf")
    conf.write_text(
        _NGINX_CONF.format(
            prefix=tmp,
            port=port,
            ssl=" ssl" if ca else "",
            tls=f"ssl_certificate {ca.server_pem}; ssl_certificate_key {ca.server_pem};" if ca else "",
        )
    )
    proc = subprocess.Popen(
        [binary, "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(port, proc)
    return ServerProcess(
        "nginx (TLS, throw-away CA)" if ca else "nginx", proc, port, tmp, ca.ca_file if ca else None
    )


def start_python_server(
    delay: float = 0.0, lifetime: float = 3600.0, *, threaded: bool = False, tls: bool = False
) -> ServerProcess:
    """Start the Python server in a fresh interpreter, answering after ``delay`` seconds.

    ``threaded``: a thread per connection sleeping out the delay (precise to ~0.1 ms)
    instead of the asyncio loop (whose timers fire up to 1 ms late).
    ``tls``: https with a throw-away CA (asyncio server only).
    """
    if tls and threaded:
        raise ValueError("the threaded server speaks plain http only")
    tmp = tempfile.mkdtemp(prefix="emhs-pyserver-") if tls else None
    ca = TestCA(tmp) if tmp else None
    cmd = [sys.executable, "-c", _PY_SERVER, str(lifetime), str(delay), "threaded" if threaded else "asyncio"]
    proc = subprocess.Popen(
        cmd + ([ca.server_pem] if ca else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("python server failed to start")
    port = int(line)
    _wait_listening(port, proc)
    kind = "python threads" if threaded else "python asyncio" + (" (TLS)" if ca else "")
    name = f"{kind} ({delay * 1000:g} ms)" if delay else kind
    return ServerProcess(name, proc, port, tmp, ca.ca_file if ca else None)


def start_fast_server(*, tls: bool = False) -> ServerProcess:
    """nginx when installed (unless ``EMHS_BENCH_SERVER=python``), else the asyncio server, no delay."""
    if nginx_path() and os.environ.get("EMHS_BENCH_SERVER", "nginx") != "python":
        return start_nginx(tls=tls)
    return start_python_server(0.0, tls=tls)


def wrk_capacity(url: str, connections: int = 16, seconds: float = 3.0) -> float | None:
    """Requests/s the C client ``wrk`` gets from ``url`` (``None`` without wrk, or ``seconds=0``)."""
    binary = shutil.which("wrk")
    if binary is None or seconds <= 0:
        return None
    out = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{seconds:g}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None
