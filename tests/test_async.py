"""Asyncio callers: awaiting a record's Future without a thread of their own."""

from __future__ import annotations

import asyncio
import threading

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector, SendResult
from eventmesh_http_sink.testing import Reply


def test_await_wrap_future_from_asyncio(server, recorder):
    server.responder = lambda request: Reply(200, body=b"ok", delay=0.05)
    server.plan("bad", Reply(422))

    async def main(sink: HttpSinkConnector) -> tuple[list[object], str]:
        loop_thread = threading.current_thread().name
        records = [ConnectRecord({"n": i}, record_id=f"a{i}", callback=recorder) for i in range(20)]
        records.append(ConnectRecord({"n": -1}, record_id="bad", callback=recorder))
        # put() returns at once (the queue has room); the awaits give the loop back meanwhile.
        outcomes = await asyncio.gather(
            *(asyncio.wrap_future(sink.put(r)) for r in records), return_exceptions=True
        )
        return outcomes, loop_thread

    with HttpSinkConnector(HttpSinkConfig(server.url, max_workers=4)) as sink:
        outcomes, loop_thread = asyncio.run(main(sink))
        assert sink.flush(10)
    assert all(isinstance(o, SendResult) and o.status == 200 for o in outcomes[:-1])
    assert getattr(outcomes[-1], "status", None) == 422  # the SinkError, raised by the await
    recorder.assert_exactly_once([f"a{i}" for i in range(20)] + ["bad"])
    # The callbacks ran on the connector's worker threads, never on the event loop's.
    assert loop_thread not in recorder.threads
    assert {name.rsplit("_", 1)[0] for name in recorder.threads} == {"eventmesh-http-sink"}


def test_cancelling_the_await_leaves_the_record_and_its_callback_alone(server, recorder):
    # asyncio.wrap_future's cancel reaches the concurrent Future, which our records refuse
    # (they are running from put on): the record is still delivered and called back once.
    server.responder = lambda request: Reply(200, delay=0.3)

    async def main(sink: HttpSinkConnector) -> None:
        waiter = asyncio.wrap_future(sink.put(ConnectRecord(1, record_id="c1", callback=recorder)))
        await asyncio.sleep(0.05)
        waiter.cancel()
        try:
            await waiter
        except asyncio.CancelledError:
            pass

    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink:
        asyncio.run(main(sink))
        assert sink.flush(10)
    recorder.assert_exactly_once(["c1"])
    assert "c1" in recorder.successes
