"""The export endpoint against hostile and careless clients (issue 16, items 5, 9 and 13).

Each test talks to a real :class:`ExportServer` over loopback sockets: idle
connections, requests cut short, clients that never read, odd methods and
parameters, and a close() while connections are open.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from eventmesh_http_sink import ResultStoreConfig
from eventmesh_http_sink.outcomes.export_server import MAX_CONNECTIONS, MAX_PAGE_SIZE, ExportServer
from eventmesh_http_sink.outcomes.result_store import ResultStore
from eventmesh_http_sink.testing import free_port


def fill(store: ResultStore, count: int, body: bytes = b"ok", prefix: str = "r") -> None:
    for i in range(count):
        store.add_attempt(
            url="http://h/", record_id=f"{prefix}{i}", retry_num=0, status=200, message="OK", body=body
        )


def ids(store: ResultStore) -> list[str]:
    return [item["metadata"]["recordId"] for item in store.export(1, 100_000)["pageItems"]]


@pytest.fixture
def store() -> ResultStore:
    return ResultStore(10_000)


@pytest.fixture
def serve(store: ResultStore) -> Iterator[ExportServer]:
    server = ExportServer(store, ResultStoreConfig(serve_port=0, idle_timeout=0.5))
    yield server
    server.close()


def address(server: ExportServer) -> tuple[str, int]:
    host_port = server.url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    return host, int(port)


def request(server: ExportServer, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*address(server), timeout=5)
    try:
        conn.request(method, target)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get(server: ExportServer, query: str) -> tuple[int, dict | None]:
    status, _, body = request(server, "GET", f"/export?{query}")
    return status, (json.loads(body) if body else None)


def export_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("eventmesh-http-sink-export")]


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- bounded, and gone at close ----------------------------------------------------------------


def test_100_idle_clients_grow_no_thread_and_close_ends_them_all(store):
    fill(store, 3)
    server = ExportServer(store, ResultStoreConfig(serve_port=0, idle_timeout=30))
    threads_before = set(threading.enumerate())
    idle = [socket.create_connection(address(server)) for _ in range(100)]
    try:
        time.sleep(0.3)
        # One serving thread, whatever the clients do (the old server: one thread per connection).
        assert set(threading.enumerate()) - threads_before == set()
        assert len(export_threads()) == 1
        # A real client is still served: the quietest idle connections made room (MAX_CONNECTIONS).
        assert get(server, "pageNum=1&pageSize=2")[0] == 200
        evicted = 0
        for sock in idle:
            sock.settimeout(0.01)
            try:
                evicted += sock.recv(1) == b""
            except TimeoutError:
                pass
        assert evicted >= 100 - MAX_CONNECTIONS + 1
        server.close()
        assert export_threads() == []
        for sock in idle:  # every connection, open or not, is closed by close()
            sock.settimeout(2)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        server.close()
        for sock in idle:
            sock.close()


def test_idle_connections_are_closed_after_idle_timeout(serve):
    sock = socket.create_connection(address(serve))
    sock.settimeout(3)
    started = time.monotonic()
    assert sock.recv(1) == b""  # closed by the server, not by us
    assert 0.3 < time.monotonic() - started < 2.5
    sock.close()


def test_an_open_connection_gets_no_answer_after_close(store):
    fill(store, 5)
    server = ExportServer(store, ResultStoreConfig(serve_port=0))
    conn = http.client.HTTPConnection(*address(server), timeout=5)
    conn.request("GET", "/export?pageNum=1&pageSize=1")
    first = conn.getresponse()
    assert first.status == 200 and first.getheader("Connection") == "keep-alive"
    first.read()
    server.close()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, BrokenPipeError)):
        conn.request("GET", "/export?pageNum=1&pageSize=2&type=poll")
        conn.getresponse()
    conn.close()
    assert len(store) == 5  # and nothing was polled


def test_a_closed_server_frees_its_fixed_port(store):
    port = free_port()
    server = ExportServer(store, ResultStoreConfig(serve_port=port))
    server.close()
    ExportServer(store, ResultStoreConfig(serve_port=port)).close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_a_forked_child_does_not_keep_the_parents_port(store):
    port = free_port()
    server = ExportServer(store, ResultStoreConfig(serve_port=port))
    read_end, write_end = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: say it runs (fork hooks done), wait until the parent closed, leave
        os.write(ready_w, b"r")
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"r"
        server.close()
        # The child is alive and never closed anything itself: the port must be free anyway.
        again = ExportServer(store, ResultStoreConfig(serve_port=port))
        again.close()
    finally:
        os.write(write_end, b"x")
        os.close(write_end)
        os.close(ready_r)
        os.waitpid(pid, 0)


# -- poll removes only what was written in full -------------------------------------------------


def test_poll_with_an_incomplete_request_then_a_hang_up_removes_nothing(serve, store):
    fill(store, 50)
    host, port = address(serve)
    for ending in (b"", b"\r\n"):  # the blank line that ends the headers never comes
        sock = socket.create_connection((host, port))
        sock.sendall(b"GET /export?pageNum=1&pageSize=40&type=poll HTTP/1.1\r\nHost: x" + ending)
        time.sleep(0.1)
        sock.close()
    time.sleep(0.2)
    assert len(store) == 50
    assert get(serve, "pageNum=1&pageSize=40&type=poll")[0] == 200  # a whole request polls
    assert len(store) == 10


def test_poll_answer_never_read_puts_entries_back_in_order(serve, store):
    body = b"b" * 60_000  # 100 entries: ~6 MB of JSON, far more than the socket buffers hold
    fill(store, 120, body=body)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address(serve))
    sock.sendall(b"GET /export?pageNum=1&pageSize=100&type=poll HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for(lambda: len(store) == 20)  # taken while the answer is written ...
    assert wait_for(lambda: len(store) == 120, timeout=5)  # ... and put back at idle_timeout
    sock.close()
    assert ids(store) == [f"r{i}" for i in range(120)]  # in their place, oldest first


def test_poll_answer_cut_by_a_reset_puts_entries_back(serve, store, caplog, capfd):
    fill(store, 100, body=b"c" * 60_000)
    caplog.set_level(logging.DEBUG, logger="eventmesh_http_sink")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address(serve))
    sock.sendall(b"GET /export?pageNum=1&pageSize=100&type=poll HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.recv(1000)  # the answer started
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST
    assert wait_for(lambda: len(store) == 100)
    assert get(serve, "pageNum=1&pageSize=100&type=poll")[1]["pageSize"] == 100
    assert len(store) == 0
    # The hang-up is a DEBUG line, never a traceback on stderr.
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert any(
        "went away" in r.getMessage() or "kept" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.DEBUG
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_concurrent_polls_never_hand_out_an_entry_twice(serve, store):
    fill(store, 400)
    seen: list[str] = []
    lock = threading.Lock()

    def poller() -> None:
        while True:
            status, page = get(serve, "pageNum=1&pageSize=7&type=poll")
            if status == 204:
                return
            with lock:
                seen.extend(i["metadata"]["recordId"] for i in page["pageItems"])

    threads = [threading.Thread(target=poller) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == sorted(f"r{i}" for i in range(400))


def test_give_back_keeps_order_and_the_bound():
    store = ResultStore(10)
    fill(store, 10)
    first = store.take(3)
    second = store.take(3)
    fill(store, 4, prefix="n")  # the store has room for 6 more: 4 fill it partly
    store.give_back(first)  # returned out of order
    store.give_back(second)
    # Full (10): the oldest taken entries go, as they would have without the poll.
    assert ids(store) == ["r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "n0", "n1", "n2", "n3"][-10:]
    assert len(store) == 10


# -- methods, parameters, sizes --------------------------------------------------------------


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE", "POST", "PUT", "DELETE", "PATCH", "PROPFIND"])
def test_other_methods_get_405_with_allow_get(serve, method):
    status, headers, body = request(serve, method, "/export?pageNum=1&pageSize=1")
    assert status == 405 and headers["Allow"] == "GET"
    if method != "HEAD":
        assert "GET" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=2", "pageNum"),
        ("pageNum=1", "pageSize"),
        ("pageNum=0&pageSize=2", "pageNum"),
        ("pageNum=-1&pageSize=2", "pageNum"),
        ("pageNum=1.0&pageSize=2", "pageNum"),
        ("pageNum=%20%31&pageSize=2", "pageNum"),  # " 1"
        ("pageNum=%C2%B2&pageSize=2", "pageNum"),  # "²": str.isdigit() says yes
        ("pageNum=%EF%BC%91&pageSize=2", "pageNum"),  # a fullwidth one: int() says 1
        ("pageNum=" + "1" * 5000 + "&pageSize=2", "pageNum"),
        ("pageNum=1&pageNum=2&pageSize=2", "pageNum"),
        ("pageNum=1&pageSize=x", "pageSize"),
        (f"pageNum=1&pageSize={MAX_PAGE_SIZE + 1}", "pageSize"),
        ("pageNum=1&pageSize=1000000", "pageSize"),
        ("pageNum=1&pageSize=2&type=eat", "type"),
    ],
)
def test_bad_parameters_get_400_naming_the_parameter(serve, query, field):
    status, body = get(serve, query)
    assert status == 400
    assert body is not None and body["error"].startswith(f"{field}:")
    assert len(body["error"]) < 120  # never a 5,000-digit echo or a raw int() message


def test_page_size_cap_is_served(serve, store):
    fill(store, MAX_PAGE_SIZE + 5)
    status, page = get(serve, f"pageNum=1&pageSize={MAX_PAGE_SIZE}")
    assert status == 200 and page["pageSize"] == MAX_PAGE_SIZE


def test_keep_alive_and_pipelining_answer_in_order(serve, store):
    fill(store, 3)
    sock = socket.create_connection(address(serve))
    sock.sendall(
        b"GET /export?pageNum=1&pageSize=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /export?pageNum=2&pageSize=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /export?pageNum=3&pageSize=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert [b["pageItems"][0]["metadata"]["recordId"] for b in bodies] == ["r0", "r1", "r2"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"\x00\xffNOT HTTP\r\n\r\n", 400),
        (b"GET /export?" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /export HTTP/1.1\r\nX: " + b"v" * 20000 + b"\r\n\r\n", 431),
    ],
)
def test_garbage_and_oversized_requests_get_an_error_and_a_close(serve, raw, status):
    sock = socket.create_connection(address(serve))
    sock.sendall(raw)
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.startswith(f"HTTP/1.1 {status} ".encode()) and b"Connection: close" in data
