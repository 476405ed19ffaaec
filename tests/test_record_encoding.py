"""The record's JSON: the encoder built once writes what json.dumps writes, and refuses what it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventmesh_http_sink import ConnectRecord, RecordEncodingError
from eventmesh_http_sink.records import encode_data, encode_extensions

VALUES: list[Any] = [
    {"a": 1, "b": [1, 2.5, None, True, False, 'é\u2028x"\\'], "c": {"d": {}}},
    [],
    {},
    7,
    -0.0,
    1e300,
    10**40,
    (1, 2),
    {1: "x", 2.5: "y", None: "z", False: "f"},
]


@pytest.mark.parametrize("value", VALUES)
def test_data_is_encoded_as_json_dumps_encodes_it(value: Any) -> None:
    body, content_type = encode_data(ConnectRecord(value))
    want = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert body == want.encode("utf-8")
    assert content_type == "application/json"


def test_extensions_are_ascii_json() -> None:
    ext = {"topic": "orders", "note": "é\u2028", "n": 3}
    assert encode_extensions(ConnectRecord(1, ext)) == json.dumps(
        ext, ensure_ascii=True, separators=(",", ":"), allow_nan=False
    )


def _circular() -> Any:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "value", [float("nan"), {"x": float("inf")}, {"o": object()}, {(1, 2): 3}, _circular(), "\ud800"]
)
def test_what_json_refuses_is_a_record_encoding_error(value: Any) -> None:
    with pytest.raises(RecordEncodingError):
        encode_data(ConnectRecord(value if not isinstance(value, str) else {"s": value}))
