"""A job that puts records and returns without waiting (for ConnectorWorker's flush)."""

from __future__ import annotations

from eventmesh_http_sink import ConnectRecord
from eventmesh_http_sink.rq import get_connector


def fire_and_forget(keys: list[str]) -> int:
    connector = get_connector()
    for key in keys:
        connector.put(ConnectRecord({"key": key}, record_id=key))
    return len(keys)
