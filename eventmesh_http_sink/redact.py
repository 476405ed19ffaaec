"""URLs as they may be shown: query-string values and userinfo replaced by ``***``.

Webhooks often authenticate with a secret in the query string
(``https://hooks.example/in?api_key=...``), so a URL is a credential until
proven otherwise. Everything this package prints or exports (logs, reprs,
error messages, dead-letter entries, result-store entries, metric labels)
goes through one of these three functions:

* :func:`redact_url` for a URL that is shown: scheme, host, port, path and the
  query's *keys* stay, every query value, the fragment and any userinfo become
  ``***`` (``https://h/p?api_key=***&v=***``).
* :func:`url_label` for a metric label: ``scheme://host[:port]/path`` only, so
  a label never carries a value and its cardinality is that of the endpoints.
* :func:`redact_text` for free text that may contain URLs or a bare
  ``path?query`` (exception messages, urllib3's ``... with url: /p?key=v``).

All three are pure, never raise, and return their argument unchanged (the
same object) when there is nothing to redact, so calling them on every log
line costs a couple of ``in`` tests. Secrets carried in the path itself
(``/services/T000/B000/XXXX``) are not recognised: they look like any path.
"""

from __future__ import annotations

import functools
import re

__all__ = ["REDACTED", "redact_text", "redact_url", "url_label"]

REDACTED = "***"

# ``key=value`` after ``?``, ``&`` or ``;``: the value goes, the key stays.
_QUERY_PAIR = re.compile(r"([?&;][^\s=&;#?'\"<>]*=)[^\s&;#'\"<>]*")
# ``scheme://user:password@``: the userinfo goes.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@'\"<>]*@")


@functools.lru_cache(maxsize=512)  # few distinct URLs per process, shown on every log line
def redact_url(url: str) -> str:
    """``url`` with every query value, the fragment and any userinfo replaced by ``***``.

    Args:
        url: Any string; a malformed URL is redacted as text (see :func:`redact_text`).

    Returns:
        ``scheme://host:port/path?key=***&other=***`` (a query item without ``=``
        becomes ``***`` too: it may be a bare token). ``url`` itself when it has
        no query, fragment or userinfo.
    """
    if "?" not in url and "#" not in url and "@" not in url:
        return url
    rest, hash_, _ = url.partition("#")
    rest, question, query = rest.partition("?")
    scheme, sep, after = rest.partition("://")
    if sep:
        authority, slash, path = after.partition("/")
        if "@" in authority:
            authority = REDACTED + "@" + authority.rpartition("@")[2]
        rest = f"{scheme}{sep}{authority}{slash}{path}"
    else:  # not an absolute URL: redact like text
        rest = _USERINFO.sub(rf"\1{REDACTED}@", rest)
    if question:
        items = [
            f"{key}={REDACTED}" if eq else REDACTED
            for key, eq, _ in (item.partition("=") for item in query.split("&"))
            if key or eq
        ]
        rest = f"{rest}?{'&'.join(items)}"
    if hash_:
        rest = f"{rest}#{REDACTED}"
    return rest


@functools.lru_cache(maxsize=512)
def url_label(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``, for metric labels (no query, fragment or userinfo).

    Two URLs that differ only in their query share a label; the port is kept as
    written (``https://h/`` and ``https://h:443/`` are two labels).
    """
    rest = url.partition("#")[0].partition("?")[0]
    scheme, sep, after = rest.partition("://")
    if not sep:
        return _USERINFO.sub(rf"\1{REDACTED}@", rest)
    authority, slash, path = after.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}{sep}{host}{slash}{path}"


def redact_text(text: str) -> str:
    """``text`` with the query values and userinfo of any URL in it replaced by ``***``.

    Meant for messages built by others (urllib3, the socket layer, an exception's
    ``str``), where a URL or a bare ``/path?key=value`` may sit anywhere. It errs on
    the side of hiding: any ``?name=value`` or ``&name=value`` loses its value.
    """
    if "=" in text:
        text = _QUERY_PAIR.sub(rf"\1{REDACTED}", text)
    if "@" in text and "://" in text:
        text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    return text
