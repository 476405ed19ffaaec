"""OpenTelemetry tracing (tracing.py) against the SDK's in-memory exporter and real loopback servers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from eventmesh_http_sink import (
    BatchConfig,
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    RetryConfig,
)
from eventmesh_http_sink.testing import FaultServer, Reply

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace import SpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY = RetryConfig(max_retries=3, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture(scope="module")
def provider() -> sdk_trace.TracerProvider:
    # The global provider can be set once per process: reuse an SDK one another module set.
    current = trace.get_tracer_provider()
    if isinstance(current, sdk_trace.TracerProvider):
        return current
    made = sdk_trace.TracerProvider()
    trace.set_tracer_provider(made)
    assert trace.get_tracer_provider() is made
    return made


class StartThreads(SpanProcessor):
    """Notes the thread each span starts on."""

    def __init__(self) -> None:
        self.threads: dict[int, str] = {}

    def on_start(self, span, parent_context=None) -> None:
        self.threads[span.context.span_id] = threading.current_thread().name


@pytest.fixture
def exporter(provider):
    exp = InMemorySpanExporter()
    exp.threads = StartThreads()
    provider.add_span_processor(exp.threads)
    provider.add_span_processor(SimpleSpanProcessor(exp))  # exports as each span ends
    yield exp
    exp.shutdown()  # later spans are dropped by this exporter
    exp.threads.threads = {}


@pytest.fixture
def tracer(provider):
    return provider.get_tracer("tests.caller")


def attempt_spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "eventmesh_http_sink"]


def traceparent(span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def same_context(a, b) -> bool:
    return (a.trace_id, a.span_id) == (b.trace_id, b.span_id)


# -- one record, one attempt ---------------------------------------------------------------


def test_attempt_span_follows_the_http_client_conventions(exporter, tracer, server):
    url = server.url + "hook?api_key=s3cret&v=2"
    with HttpSinkConnector(HttpSinkConfig(url, tracing=True)) as sink:
        with tracer.start_as_current_span("caller") as caller:
            future = sink.put(ConnectRecord({"n": 1}, record_id="r1"))
        assert future.result(10).status == 200
    (span,) = attempt_spans(exporter)
    assert span.name == "POST"
    assert span.kind is SpanKind.CLIENT
    assert same_context(span.parent, caller.get_span_context())
    assert dict(span.attributes) == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "url.full": f"http://127.0.0.1:{server.port}/hook?api_key=***&v=***",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET
    # The receiver got the attempt's span as its parent, through the global propagator.
    (request,) = server.requests
    assert request.headers["traceparent"] == traceparent(span)
    assert "s3cret" not in repr(span.to_json())


def test_parents_survive_the_hop_to_worker_threads(exporter, tracer, server):
    # Many callers on their own threads, each under its own span: every attempt span
    # (sent by one of 4 workers) is the child of the span its record was put under.
    parents: dict[str, object] = {}
    with HttpSinkConnector(HttpSinkConfig(server.url, max_workers=4, tracing=True)) as sink:

        def caller(i: int) -> None:
            with tracer.start_as_current_span(f"caller-{i}") as span:
                parents[f"k{i}"] = span.get_span_context()
                futures = [sink.put(ConnectRecord(i, record_id=f"k{i}"))]
            futures[0].result(10)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    spans = attempt_spans(exporter)
    assert len(spans) == 12
    by_trace_parent = {traceparent(s): s for s in spans}
    for request in server.requests:
        span = by_trace_parent[request.headers["traceparent"]]
        assert same_context(span.parent, parents[request.key])
    assert len({s.context.trace_id for s in spans}) == 12  # one trace per caller
    # The workers made them, not the callers' threads.
    assert {exporter.threads.threads[s.context.span_id].rsplit("_", 1)[0] for s in spans} == {
        "eventmesh-http-sink"
    }


def test_every_retry_is_a_new_span_under_the_same_parent(exporter, tracer, server):
    server.plan("flaky", Reply(503, headers={"Retry-After": "0"}), Reply(500), Reply(200))
    with HttpSinkConnector(HttpSinkConfig(server.url, retry=FAST_RETRY, tracing=True)) as sink:
        with tracer.start_as_current_span("caller") as caller:
            future = sink.put(ConnectRecord(1, record_id="flaky"))
        assert future.result(10).attempts == 3
    spans = sorted(attempt_spans(exporter), key=lambda s: s.start_time)
    assert len(spans) == 3
    assert all(same_context(s.parent, caller.get_span_context()) for s in spans)
    assert len({s.context.span_id for s in spans}) == 3
    assert [s.attributes.get("http.request.resend_count") for s in spans] == [None, 1, 2]
    assert [s.attributes["http.response.status_code"] for s in spans] == [503, 500, 200]
    assert [s.attributes.get("error.type") for s in spans] == ["503", "500", None]
    assert [s.status.status_code for s in spans] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    # Each request carried its own attempt's span, in order.
    assert [r.headers["traceparent"] for r in server.requests] == [traceparent(s) for s in spans]


def test_a_failure_without_a_response_names_the_error_class(exporter, tracer, server):
    server.plan("gone", Reply.reset())
    config = HttpSinkConfig(server.url, retry=RetryConfig(max_retries=0), tracing=True)
    with HttpSinkConnector(config) as sink:
        future = sink.put(ConnectRecord(1, record_id="gone"))
        error = future.exception(10)
    assert error is not None
    (span,) = attempt_spans(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == type(error).__qualname__
    assert "http.response.status_code" not in span.attributes
    assert span.parent is None  # nothing was current at put: a root span


def test_success_when_refusal_is_an_error_with_the_status(exporter, server):
    config = HttpSinkConfig(
        server.url, retry=RetryConfig(max_retries=0), success_when=lambda s, h, b: False, tracing=True
    )
    with HttpSinkConnector(config) as sink:
        assert sink.put(ConnectRecord(1)).exception(10) is not None
    (span,) = attempt_spans(exporter)
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["error.type"] == "BusinessError"
    assert span.status.status_code is StatusCode.ERROR


def test_a_method_outside_the_standard_set_is_other(exporter, server):
    with HttpSinkConnector(HttpSinkConfig(server.url, method="NOTIFY", tracing=True)) as sink:
        sink.put(ConnectRecord(1)).result(10)
    (span,) = attempt_spans(exporter)
    assert span.name == "HTTP"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "NOTIFY"


def test_a_configured_traceparent_header_is_replaced_not_doubled(exporter, tracer):
    from tests.wire_servers import ScriptServer  # keeps every header line, duplicates included

    with ScriptServer() as srv:
        config = HttpSinkConfig(srv.url, headers={"TraceParent": "00-bogus"}, tracing=True)
        with HttpSinkConnector(config) as sink, tracer.start_as_current_span("caller"):
            sink.put(ConnectRecord(1)).result(10)
        (request,) = srv.requests
    (span,) = attempt_spans(exporter)
    assert request.header("traceparent") == [traceparent(span).encode()]


# -- broadcast and batches -----------------------------------------------------------------


def test_broadcast_copies_each_get_a_span_under_the_callers_span(exporter, tracer):
    with FaultServer() as a, FaultServer() as b:
        config = HttpSinkConfig([a.url, b.url], delivery_strategy="broadcast", tracing=True)
        with HttpSinkConnector(config) as sink:
            with tracer.start_as_current_span("caller") as caller:
                future = sink.put(ConnectRecord(1))
            future.result(10)
        spans = attempt_spans(exporter)
        assert sorted(s.attributes["server.port"] for s in spans) == sorted([a.port, b.port])
        assert all(same_context(s.parent, caller.get_span_context()) for s in spans)
        assert {a.requests[0].headers["traceparent"], b.requests[0].headers["traceparent"]} == {
            traceparent(s) for s in spans
        }


def test_a_batch_is_one_span_linked_to_every_records_parent(exporter, tracer, server):
    config = HttpSinkConfig(server.url, batch=BatchConfig(max_records=4, linger=5.0), tracing=True)
    parents = []
    with HttpSinkConnector(config) as sink:
        futures = []
        for i in range(3):
            with tracer.start_as_current_span(f"caller-{i}") as span:
                parents.append(span.get_span_context())
                futures.append(sink.put(ConnectRecord(i)))
        futures.append(sink.put(ConnectRecord(3)))  # no span current: no link for this one
        for future in futures:
            future.result(10)
    (span,) = attempt_spans(exporter)
    assert span.parent is None
    assert span.context.trace_id not in {p.trace_id for p in parents}
    assert sorted((link.context.trace_id, link.context.span_id) for link in span.links) == sorted(
        (p.trace_id, p.span_id) for p in parents
    )
    assert span.attributes["http.response.status_code"] == 200
    (request,) = server.requests
    assert request.headers["traceparent"] == traceparent(span)


def test_a_failed_batch_span_is_an_error(exporter, server):
    server.script(Reply(422))
    config = HttpSinkConfig(
        server.url,
        batch=BatchConfig(max_records=2, linger=5.0),
        retry=RetryConfig(max_retries=0),
        tracing=True,
    )
    with HttpSinkConnector(config) as sink:
        futures = [sink.put(ConnectRecord(i)) for i in range(2)]
        assert all(f.exception(10) is not None for f in futures)
    (span,) = attempt_spans(exporter)
    assert span.attributes["error.type"] == "422"
    assert span.status.status_code is StatusCode.ERROR
    assert not span.links


def test_a_resent_batch_is_a_new_span_with_its_resend_count(exporter, tracer, server):
    server.script(Reply(503, headers={"Retry-After": "0"}))  # the first batch request only
    config = HttpSinkConfig(
        server.url, batch=BatchConfig(max_records=2, linger=5.0), retry=FAST_RETRY, tracing=True
    )
    with HttpSinkConnector(config) as sink, tracer.start_as_current_span("caller") as caller:
        futures = [sink.put(ConnectRecord(i)) for i in range(2)]
        assert all(f.result(10).attempts == 2 for f in futures)  # both back in one batch
    first, second = sorted(attempt_spans(exporter), key=lambda s: s.start_time)
    assert first.attributes["error.type"] == "503"
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.status.status_code is StatusCode.UNSET
    for span in (first, second):
        assert [link.context.span_id for link in span.links] == [caller.get_span_context().span_id]
    assert [r.headers["traceparent"] for r in server.requests] == [traceparent(first), traceparent(second)]


# -- off, and absent -----------------------------------------------------------------------


def test_tracing_off_makes_no_span_and_sends_no_traceparent(exporter, tracer, server):
    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink, tracer.start_as_current_span("caller"):
        sink.put(ConnectRecord(1)).result(10)
    assert attempt_spans(exporter) == []
    assert "traceparent" not in server.requests[0].headers


def test_tracing_must_be_a_bool():
    with pytest.raises(ConfigError, match="tracing: must be a bool"):
        HttpSinkConfig("http://127.0.0.1/", tracing="yes")


_WITHOUT_OTEL = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Blocker())

    from eventmesh_http_sink import ConfigError, ConnectRecord, HttpSinkConfig, HttpSinkConnector
    from eventmesh_http_sink.testing import FaultServer

    with FaultServer() as server:
        with HttpSinkConnector(HttpSinkConfig(server.url, tracing=False)) as sink:
            assert sink.put(ConnectRecord({"n": 1})).result(10).status == 200
        assert "traceparent" not in server.requests[0].headers
    try:
        HttpSinkConfig("http://127.0.0.1/", tracing=True)
    except ConfigError as exc:
        print("refused:", exc)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    print("loaded:", loaded)
    """
)


def test_without_opentelemetry_the_package_works_and_imports_none_of_it():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTEL], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "refused: tracing: needs OpenTelemetry: pip install 'eventmesh-http-sink[otel]'" in done.stdout
    assert "loaded: []" in done.stdout


# -- Celery: the task's span is the parent of its records' spans ---------------------------


def _task_span_signals(tracer):
    """Start a span around each task body, as opentelemetry-instrumentation-celery does."""
    from celery import signals
    from opentelemetry import context

    running: dict[str, tuple] = {}
    task_spans = []

    def start(task_id, task, **_):
        span = tracer.start_span(f"run/{task.name}", kind=SpanKind.CONSUMER)
        task_spans.append(span)
        running[task_id] = (span, context.attach(trace.set_span_in_context(span)))

    def end(task_id, **_):
        span, token = running.pop(task_id)
        context.detach(token)
        span.end()

    return task_spans, ((signals.task_prerun, start), (signals.task_postrun, end))


def test_celery_task_span_parents_its_records_spans_in_process(exporter, tracer, server):
    celery = pytest.importorskip("celery")
    ecelery = pytest.importorskip("eventmesh_http_sink.celery")
    app = celery.Celery("emhs-trace", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True  # the task body runs here, between the real signals
    task_spans, receivers = _task_span_signals(tracer)
    for signal, receiver in receivers:
        signal.connect(receiver, weak=False)
    try:
        task = ecelery.setup_celery(app, HttpSinkConfig(server.url, max_workers=4, tracing=True))
        summary = task.delay([{"data": {"n": i}, "record_id": f"c{i}"} for i in range(5)]).get()
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
        ecelery._close()
        ecelery._holder = None
        app.close()
    assert summary["succeeded"] == 5
    (task_span,) = task_spans
    spans = attempt_spans(exporter)
    assert len(spans) == 5
    assert all(same_context(s.parent, task_span.get_span_context()) for s in spans)
    assert {r.headers["traceparent"] for r in server.requests} == {traceparent(s) for s in spans}


@pytest.mark.workers
@pytest.mark.timeout(90)
def test_celery_worker_task_span_parents_its_records_spans(tmp_path):
    # A real `celery worker` (prefork, one child) against Redis, exporting its spans to a file.
    import json
    import time
    import uuid

    from eventmesh_http_sink.celery import TASK_NAME
    from tests.test_workers import REDIS_HOST, REDIS_PORT, _delete_keys, _env, _log_tail, _process, _redis
    from tests.worker_apps.celery_app import make_app

    client = _redis()
    run = uuid.uuid4().hex[:10]
    prefix, queue = f"emhs-test-{run}:", f"emhs-test-{run}"
    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    span_file, log = tmp_path / "spans.jsonl", tmp_path / "celery.log"
    args = [sys.executable, "-m", "celery", "-A", "tests.worker_apps.celery_traced_app", "worker"]
    args += ["--pool=prefork", "--concurrency=1", "-Q", queue, "-n", f"{run}@%h", "--loglevel=WARNING"]
    args += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
    app = make_app(broker, prefix, queue)
    try:
        with FaultServer() as server:
            env = _env(
                EMHS_BROKER_URL=broker,
                EMHS_PREFIX=prefix,
                EMHS_QUEUE=queue,
                EMHS_SINK_URL=server.url,
                EMHS_SPAN_FILE=str(span_file),
            )
            with _process(args, env, log):
                results = [
                    app.send_task(
                        TASK_NAME, args=[[{"data": b * 10 + i, "record_id": f"t{b}-{i}"} for i in range(5)]]
                    )
                    for b in range(2)
                ]
                for result in results:
                    try:
                        assert result.get(timeout=60)["succeeded"] == 5
                    except Exception:
                        pytest.fail(f"task {result.id} did not finish: worker log:\n{_log_tail(log)}")
                deadline = time.monotonic() + 10  # the task spans end at task_postrun, after the result
                while time.monotonic() < deadline:
                    spans = [json.loads(line) for line in span_file.read_text().splitlines()]
                    if sum(s["name"].startswith("run/") for s in spans) == 2:
                        break
                    time.sleep(0.1)
            received = {r.headers["traceparent"]: r.key for r in server.requests}
    finally:
        app.close()
        _delete_keys(client, f"{prefix}*")
        _delete_keys(client, f"*{queue}*")
        client.close()
    task_ids = {s["span_id"]: s for s in spans if s["name"] == f"run/{TASK_NAME}"}
    attempts = [s for s in spans if s["kind"] == "CLIENT"]
    assert len(task_ids) == 2 and len(attempts) == 10, spans
    assert all(s["parent_id"] in task_ids for s in attempts)
    assert all(s["pid"] != os.getpid() for s in attempts)  # made in the worker's child, not here
    # Each task's five records hang under that task's span, and each request carried its span.
    # traceparent: version-trace_id-span_id-flags (the flags may carry W3C level 2's "random" bit).
    by_span = {tuple(tp.split("-")[1:3]): key for tp, key in received.items()}
    assert set(by_span) == {(a["trace_id"], a["span_id"]) for a in attempts}, (received, attempts)
    for task_span_id in task_ids:
        keys = {by_span[a["trace_id"], a["span_id"]] for a in attempts if a["parent_id"] == task_span_id}
        assert len(keys) == 5
        assert len({k.split("-")[0] for k in keys}) == 1  # all from that task's batch


def test_the_readme_tracing_example_runs_and_parents_the_attempt(server):
    import json
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "tracing=True" in b]
    code = code.replace("https://hooks.example.com/events", server.url)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    decoder, text, spans = json.JSONDecoder(), done.stdout, []
    while text.strip():  # ConsoleSpanExporter prints one indented JSON document per span
        span, end = decoder.raw_decode(text.lstrip())
        spans.append(span)
        text = text.lstrip()[end:]
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"place-order", "POST"}
    assert by_name["POST"]["parent_id"] == by_name["place-order"]["context"]["span_id"]
    (request,) = server.requests
    assert request.headers["traceparent"].split("-")[2] == by_name["POST"]["context"]["span_id"][2:]


def test_a_context_entered_elsewhere_still_gives_the_parent(exporter, tracer):
    # contextvars refuses to enter a context that is entered already, in any thread: close()
    # may run a record's callback in its context while a worker starts that record's attempt.
    import contextvars

    from eventmesh_http_sink.tracing import AttemptTracer

    attempt_tracer = AttemptTracer("POST", ["http://127.0.0.1:9/"])
    with tracer.start_as_current_span("caller") as caller:
        captured = contextvars.copy_context()
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(10)

    holder = threading.Thread(target=captured.run, args=(hold,))
    holder.start()
    try:
        assert entered.wait(10)
        with pytest.raises(RuntimeError):
            captured.run(lambda: None)  # what start() meets
        span, headers = attempt_tracer.start("http://127.0.0.1:9/", {}, captured, 1)
        span.end(200)
        batch_span, _ = attempt_tracer.start_batch("http://127.0.0.1:9/", {}, [captured], 1)
        batch_span.end(200)
    finally:
        release.set()
        holder.join()
    assert headers["traceparent"] == traceparent(span.span)
    single, batch = attempt_spans(exporter)
    assert same_context(single.parent, caller.get_span_context())
    assert [link.context.span_id for link in batch.links] == [caller.get_span_context().span_id]


def test_the_callers_tracestate_goes_out_with_the_request(exporter, server):
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState, use_span

    upstream = SpanContext(
        0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "v1")])
    )
    # use_span: as if the context had been extracted from an incoming request.
    with (
        HttpSinkConnector(HttpSinkConfig(server.url, tracing=True)) as sink,
        use_span(NonRecordingSpan(upstream)),
    ):
        sink.put(ConnectRecord(1)).result(10)
    (span,) = attempt_spans(exporter)
    (request,) = server.requests
    assert span.context.trace_id == 0x1234
    assert request.headers["traceparent"] == traceparent(span)
    assert request.headers["tracestate"] == "vendor=v1"
