"""The URL-redaction helpers: what they hide, what they keep, and that they never raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventmesh_http_sink import ConfigError, HttpSinkConfig
from eventmesh_http_sink.redact import redact_text, redact_url, url_label

SECRET = "Zq9-s3cr3t"


@pytest.mark.parametrize(
    ("url", "shown", "label"),
    [
        (
            f"https://hooks.example:8443/in/v1?api_key={SECRET}&v=2",
            "https://hooks.example:8443/in/v1?api_key=***&v=***",
            "https://hooks.example:8443/in/v1",
        ),
        (f"http://h/p?{SECRET}", "http://h/p?***", "http://h/p"),  # a bare item may be a token
        (f"https://u:{SECRET}@h/x?a=1#{SECRET}", "https://***@h/x?a=***#***", "https://h/x"),
        (f"http://[::1]:80/x?k={SECRET}", "http://[::1]:80/x?k=***", "http://[::1]:80/x"),
        ("https://h/plain", "https://h/plain", "https://h/plain"),
        ("https://h", "https://h", "https://h"),
        (f"/relative?token={SECRET}", "/relative?token=***", "/relative"),
    ],
)
def test_redact_url_and_label(url, shown, label):
    assert redact_url(url) == shown
    assert url_label(url) == label


def test_unchanged_urls_are_returned_as_is():
    url = "https://hooks.example/in"
    assert redact_url(url) is url
    text = "connection refused"
    assert redact_text(text) is text


def test_redact_text_finds_urls_and_bare_queries():
    urllib3_message = (
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
        f"/hook?api_key={SECRET}&x=1 (Caused by NewConnectionError(...))"
    )
    out = redact_text(urllib3_message)
    assert SECRET not in out and "/hook?api_key=***&x=***" in out
    out = redact_text(f"HTTP 503 from 'https://user:{SECRET}@h/x?sig={SECRET}' (retrying)")
    assert SECRET not in out and "https://***@h/x?sig=***" in out


@given(st.text())
def test_helpers_never_raise_and_never_keep_a_planted_query_value(text):
    url = f"https://h/p?{text}&api_key={SECRET}"
    assert SECRET not in redact_url(url)
    assert SECRET not in url_label(url)
    assert SECRET not in redact_text(f"error sending to {url}")
    redact_url(text), url_label(text), redact_text(text)  # any input: no exception


def test_config_repr_and_url_errors_hide_the_query():
    config = HttpSinkConfig(f"https://h.example/in?api_key={SECRET}")
    assert SECRET not in repr(config) and "api_key=***" in repr(config)
    assert config.urls == (f"https://h.example/in?api_key={SECRET}",)  # the real URL is still sent
    for bad in (f"ftp://h/x?api_key={SECRET}", f"http://[::1/x?api_key={SECRET}"):
        with pytest.raises(ConfigError) as info:
            HttpSinkConfig(bad)
        assert info.value.field == "urls" and SECRET not in str(info.value)
