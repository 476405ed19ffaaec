"""The llhttp callbacks of wire/http11.py: what one message leaves must not leak into the next."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventmesh_http_sink import HttpSinkConfig, RetryConfig, Urllib3Transport
from tests.wire_servers import ScriptServer, response


@pytest.fixture
def raw() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def test_the_final_answer_after_interim_ones_has_only_its_own_reason_and_headers(raw: ScriptServer) -> None:
    raw.script(
        (
            b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + response(202, b"k", reason="Accepted"),
        )
    )
    t = Urllib3Transport(HttpSinkConfig(raw.url, retry=RetryConfig(max_retries=0)))
    resp = t.send("POST", raw.url, b"a", {})
    assert (resp.status, resp.reason, resp.body) == (202, "Accepted", b"k")
    assert "link" not in resp.headers and "x-interim" not in resp.headers
    assert resp.headers["content-length"] == "1"
    t.close()
