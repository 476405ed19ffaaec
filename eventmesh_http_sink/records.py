"""The record a caller hands to the sink, and how its data becomes a request body.

:class:`ConnectRecord` mirrors EventMesh's ``ConnectRecord``: a payload, string-keyed
extensions (EventMesh's ``KeyValue``), an optional callback, a timestamp and an
opaque source position. Encoding happens in the caller's thread, inside
:meth:`HttpSinkConnector.put`, so a record that cannot be sent fails there,
before anything is queued.
"""

from __future__ import annotations

import functools
import itertools
import json
import json.encoder
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .errors import InvalidRecordError, RecordEncodingError

if TYPE_CHECKING:
    from .results import SendMessageCallback

__all__ = ["ConnectRecord"]

JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
BYTES_CONTENT_TYPE = "application/octet-stream"

_CONTROL = frozenset("\r\n\0")


# Record ids: ``str(uuid.uuid4())`` reads 16 bytes from the kernel and builds a UUID
# object per record (~20,000 instructions, more than half of a ConnectRecord). An id
# needs to be unique, not unpredictable (it travels in the clear as Idempotency-Key),
# so each process draws 74 random bits once and counts: the id is an RFC 9562 UUID of
# version 8 ("custom"), the random bits, then a 48-bit counter. Two processes share a
# prefix with probability ~n^2 / 2^75; a forked child draws a new prefix (below), so it
# never repeats its parent's ids.
_id_prefix = ""
_id_next: Callable[[], int] = itertools.count().__next__


def _reseed_record_ids() -> None:
    global _id_prefix, _id_next  # noqa: PLW0603 - per-process state, replaced only here
    bits = int.from_bytes(os.urandom(10), "big") >> 6  # 74 random bits
    high, mid, low = bits >> 26, (bits >> 14) & 0xFFF, bits & 0x3FFF
    # 8-4-4-4-12 hex digits: 48 random bits, version 8 + 12 bits, variant 0b10 + 14 bits, the counter.
    _id_prefix = f"{high >> 16:08x}-{high & 0xFFFF:04x}-8{mid:03x}-{0x8000 | low:04x}-"
    _id_next = itertools.count().__next__  # next() of a count is atomic under the GIL


_reseed_record_ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_record_ids)


def _new_record_id() -> str:
    return _id_prefix + format(_id_next(), "012x")


def _json_encoder(*, ensure_ascii: bool) -> Callable[[Any], str]:
    """``json.dumps(obj, ensure_ascii=..., separators=(",", ":"), allow_nan=False)``, made once.

    ``json.dumps`` with any non-default argument builds a ``JSONEncoder`` and then
    a C encoder on every call; per record that costs more than the encoding. The
    C encoder built here once gives the same text. It keeps no circular-reference
    markers (a shared marker dict would be seen by other threads through
    ``default``): a circular structure ends in ``RecursionError`` instead of
    ``ValueError``, refused the same way.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator: json.dumps as before
        return functools.partial(
            json.dumps, ensure_ascii=ensure_ascii, separators=(",", ":"), allow_nan=False
        )
    basestring = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    encode = make(None, json.JSONEncoder().default, basestring, None, ":", ",", False, False, False)
    join = "".join

    def dumps(obj: Any) -> str:
        return join(encode(obj, 0))

    return dumps


_dumps_data = _json_encoder(ensure_ascii=False)
_dumps_ascii = _json_encoder(ensure_ascii=True)


def _check_record_id(inst: ConnectRecord, attr: attrs.Attribute[str], value: str) -> None:
    # The id travels as the Idempotency-Key header, so it must be a clean header value.
    if not isinstance(value, str) or not value:
        raise InvalidRecordError(None, f"record_id must be a non-empty str, got {value!r}")
    # isprintable() is false for CR, LF, NUL and every other control character.
    if not value.isascii() or not value.isprintable():
        raise InvalidRecordError(value, "record_id must be printable ASCII without CR/LF")


def _check_extensions(inst: ConnectRecord, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise InvalidRecordError(
            _id_of(inst), f"extensions must be a str-keyed mapping, got {type(value).__name__}"
        )
    for key in value:
        if not isinstance(key, str):
            raise InvalidRecordError(_id_of(inst), f"extensions keys must be str, got {key!r}")


def _check_callback(inst: ConnectRecord, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    for name in ("on_success", "on_exception"):
        if not callable(getattr(value, name, None)):
            raise InvalidRecordError(
                _id_of(inst),
                f"callback {type(value).__name__} has no callable {name}(); "
                "a SendMessageCallback needs on_success(result) and on_exception(context)",
            )


def _id_of(inst: ConnectRecord) -> str | None:
    # Validators of earlier fields run before record_id exists on a half-built record.
    return getattr(inst, "record_id", None)


@attrs.define(eq=False, repr=False)
class ConnectRecord:
    """One event to deliver.

    Args:
        data: The payload: ``bytes`` are sent as-is (``application/octet-stream``),
            ``str`` as UTF-8 text, anything else as JSON (``application/json``).
        extensions: String-keyed attributes (EventMesh's ``KeyValue``); sent as a JSON
            ``extension`` header. ``extensions["topic"]`` is reported back as the topic.
        callback: A :class:`SendMessageCallback` told the outcome, exactly once.
        timestamp: Event time in epoch milliseconds, as EventMesh records carry it.
        position: The source position (opaque to the sink, kept for the caller).
        record_id: A unique id, a fresh UUID unless given (RFC 9562 version 8: a
            random per-process prefix and a counter, unique across threads,
            processes and forks); sent as ``Idempotency-Key`` on every attempt so
            receivers can de-duplicate.
    """

    data: Any
    extensions: Mapping[str, Any] | None = attrs.field(default=None, validator=_check_extensions)
    callback: SendMessageCallback | None = attrs.field(default=None, validator=_check_callback)
    timestamp: int | float | None = None
    position: Any = None
    record_id: str = attrs.field(factory=_new_record_id, kw_only=True, validator=_check_record_id)

    @property
    def topic(self) -> str | None:
        """``extensions["topic"]`` as a string, or ``None``."""
        ext = self.extensions
        if not ext:
            return None
        topic = ext.get("topic")
        return None if topic is None else str(topic)

    def __repr__(self) -> str:
        # Payloads can be large or sensitive: show their type and size, never their content.
        return (
            f"ConnectRecord(record_id={self.record_id!r}, topic={self.topic!r}, "
            f"data=<{type(self.data).__name__}>)"
        )


def encode_data(record: ConnectRecord) -> tuple[bytes, str]:
    """Return ``(body, content_type)`` for a record's data.

    Raises:
        RecordEncodingError: the data is not bytes, str or JSON-serialisable.
    """
    data = record.data
    if isinstance(data, bytes):
        return data, BYTES_CONTENT_TYPE
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data), BYTES_CONTENT_TYPE
    try:
        if isinstance(data, str):
            return data.encode("utf-8"), TEXT_CONTENT_TYPE
        text = _dumps_data(data)
        return text.encode("utf-8"), JSON_CONTENT_TYPE
    except (TypeError, ValueError, RecursionError) as exc:
        # UnicodeEncodeError (a lone surrogate) is a ValueError too.
        raise RecordEncodingError(
            record.record_id, f"data of type {type(data).__name__} is not bytes, str or JSON: {exc}"
        ) from exc


def encode_extensions(record: ConnectRecord) -> str | None:
    """Return the ``extension`` header value (compact ASCII JSON), or ``None`` when empty.

    ``ensure_ascii`` escapes every non-ASCII character, so the value is always a
    valid header; CR, LF and NUL in keys or string values are refused outright.

    Raises:
        InvalidRecordError: an extension key or value contains CR, LF or NUL.
        RecordEncodingError: the extensions are not JSON-serialisable.
    """
    ext = record.extensions
    if not ext:
        return None
    for key, value in ext.items():
        # Escaped JSON could carry them safely, but a receiver that copies extensions
        # into headers (or the CloudEvents binary mode) could not: refuse them early.
        if not _CONTROL.isdisjoint(key) or (isinstance(value, str) and not _CONTROL.isdisjoint(value)):
            raise InvalidRecordError(record.record_id, f"extension {key!r} contains CR, LF or NUL")
    try:
        return _dumps_ascii(ext)
    except (TypeError, ValueError, RecursionError) as exc:
        raise RecordEncodingError(record.record_id, f"extensions are not JSON-serialisable: {exc}") from exc
