"""Generated record ids: UUID-shaped, unique across threads, and never repeated by a forked child."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from eventmesh_http_sink import ConnectRecord


def test_a_generated_id_is_an_rfc_9562_version_8_uuid():
    rid = ConnectRecord("x").record_id
    parsed = uuid.UUID(rid)
    assert str(parsed) == rid  # canonical lower-case 8-4-4-4-12 form
    assert parsed.version == 8
    assert parsed.variant == uuid.RFC_4122


def test_ids_made_by_many_threads_at_once_are_all_different():
    per_thread = 5_000
    made: list[list[str]] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        made.append([ConnectRecord(i).record_id for i in range(per_thread)])

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [rid for ids in made for rid in ids]
    assert len(ids) == 8 * per_thread
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_repeats_its_parents_ids():
    before = ConnectRecord("p").record_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, "\n".join(ConnectRecord("c").record_id for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    parent = [ConnectRecord("p").record_id for _ in range(100)]
    assert len(child) == 100
    assert not set(child) & set(parent)
    # The child drew its own random prefix: it cannot collide with ids the parent makes later.
    assert child[0][:24] != before[:24] == parent[0][:24]
    assert all(rid.startswith(child[0][:24]) for rid in child)
