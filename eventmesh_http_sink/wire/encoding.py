"""How a record becomes a request: JSON (the core's), raw, or CloudEvents 1.0 over HTTP.

Runs in the caller's thread from ``put``, after the core has encoded the data
and built the headers, so a record that cannot be encoded fails there. The
CloudEvents modes use the ``cloudevents`` SDK (2.x, ``cloudevents.core``), so a
receiver using that SDK's ``from_http`` parses exactly what we send.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from eventmesh_http_sink.errors import ConfigError, InvalidRecordError
from eventmesh_http_sink.records import ConnectRecord

if TYPE_CHECKING:
    from eventmesh_http_sink.config import HttpSinkConfig

__all__ = ["Encoder", "cloudevent_structured", "make_encoder"]

#: ``encode(record, body, headers) -> body``; may change ``headers`` in place.
Encoder = Callable[[ConnectRecord, bytes, dict[str, str]], bytes]

_EXT_NAME = re.compile(r"^[a-z0-9]{1,20}$")
# Context attributes a record's extensions may set; the rest come from the record itself.
_SETTABLE = frozenset({"source", "type", "subject", "dataschema"})
_RESERVED = frozenset({"id", "specversion", "time", "datacontenttype", "data", "data_base64"})


def _raw(record: ConnectRecord, body: bytes, headers: dict[str, str]) -> bytes:
    headers.pop("extension", None)
    return body


def make_encoder(config: HttpSinkConfig) -> Encoder | None:
    """The encoder for ``config.encoding``; ``None`` for the core's JSON encoding."""
    if config.encoding == "raw":
        return _raw
    if config.encoding.startswith("cloudevents"):
        try:
            from cloudevents.core.bindings import http as ce_http  # noqa: F401
        except ImportError:
            raise ConfigError(
                "encoding", "the cloudevents package (>= 2.0) is required: pip install 'cloudevents>=2'"
            ) from None
        binary = config.encoding == "cloudevents-binary"
        source, ce_type = config.ce_source, config.ce_type

        def encode(record: ConnectRecord, body: bytes, headers: dict[str, str]) -> bytes:
            message_headers, message_body = _cloudevent(record, body, headers, source, ce_type, binary)
            headers.pop("extension", None)
            headers.pop("Content-Type", None)
            headers.update(message_headers)
            return message_body

        return encode
    return None


def cloudevent_structured(
    record: ConnectRecord, body: bytes, headers: dict[str, str], config: HttpSinkConfig
) -> bytes:
    """The record as a structured-mode CloudEvent JSON document (a batch element)."""
    return _cloudevent(record, body, headers, config.ce_source, config.ce_type, False)[1]


def _cloudevent(  # noqa: PLR0917 - private, called from two places
    record: ConnectRecord,
    body: bytes,
    headers: dict[str, str],
    source: str | None,
    ce_type: str | None,
    binary: bool,
) -> tuple[dict[str, str], bytes]:
    from cloudevents.core.bindings import http as ce_http
    from cloudevents.core.exceptions import BaseCloudEventException
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    rid = record.record_id
    content_type = headers.get("Content-Type", "application/octet-stream")
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": rid,
        "source": source,
        "type": ce_type,
        "datacontenttype": content_type,
    }
    if record.timestamp is not None:
        try:
            attributes["time"] = datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
        except (TypeError, ValueError, OverflowError, OSError) as exc:
            raise InvalidRecordError(
                rid, f"timestamp {record.timestamp!r} is not epoch milliseconds"
            ) from exc
    for name, value in (record.extensions or {}).items():
        if name in _RESERVED:
            raise InvalidRecordError(rid, f"extension {name!r} is a reserved CloudEvents attribute")
        if not _EXT_NAME.match(name):
            raise InvalidRecordError(
                rid, f"extension {name!r} is not a CloudEvents attribute name (a-z, 0-9, at most 20)"
            )
        if isinstance(value, (bool, int)):
            pass
        elif isinstance(value, str):
            # Binary mode percent-encodes values (the HTTP binding, 3.1.3.2), so non-ASCII
            # is safe; control characters are refused as a likely injection attempt.
            if "\r" in value or "\n" in value or "\0" in value:
                raise InvalidRecordError(rid, f"extension {name!r} contains CR, LF or NUL")
        else:
            raise InvalidRecordError(
                rid,
                f"extension {name!r} must be str, int or bool for CloudEvents, got {type(value).__name__}",
            )
        if name in _SETTABLE or name not in attributes:
            attributes[name] = value
    data: Any = body
    if not binary:
        # Structured mode embeds JSON data as JSON and text as a string; bytes go as data_base64.
        if content_type.startswith("application/json"):
            data = json.loads(body)
        elif content_type.startswith("text/"):
            data = body.decode("utf-8")
    try:
        event = CloudEvent(attributes, data)
        fmt = JSONFormat()
        message = ce_http.to_binary(event, fmt) if binary else ce_http.to_structured(event, fmt)
    except BaseCloudEventException as exc:
        raise InvalidRecordError(rid, f"not a valid CloudEvent: {exc}") from exc
    out_headers = dict(message.headers)
    out_headers["Content-Type"] = out_headers.pop("content-type", content_type)
    return out_headers, message.body
