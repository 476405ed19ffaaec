"""Bad configuration and bad records fail early, naming the field or the record."""

from __future__ import annotations

import pickle

import pytest

from eventmesh_http_sink import (
    BatchConfig,
    CircuitBreakerConfig,
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    InvalidRecordError,
    RecordEncodingError,
    ResultStoreConfig,
    RetryConfig,
    SendMessageCallback,
    UnknownOptionError,
)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"urls": []}, "urls"),
        ({"urls": ""}, "urls"),
        ({"urls": "ftp://host/x"}, "urls"),
        ({"urls": "http://"}, "urls"),
        ({"urls": 42}, "urls"),
        ({"urls": "http://user:pw@host/"}, "urls"),
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": 2.5}, "max_workers"),
        ({"max_pending": -1}, "max_pending"),
        ({"when_full": "drop"}, "when_full"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"read_timeout": -1.0}, "read_timeout"),
        ({"attempt_timeout": 0}, "attempt_timeout"),
        ({"put_timeout": -1}, "put_timeout"),
        ({"max_workers": 8, "pool_maxsize": 4}, "pool_maxsize"),
        ({"headers": {"X-Bad": "a\r\nInjected: 1"}}, "headers"),
        ({"headers": {"Bad Name": "v"}}, "headers"),
        ({"headers": {"X-Uni": "\u2603"}}, "headers"),
        ({"headers": ["not", "a", "mapping"]}, "headers"),
        ({"method": "PO ST"}, "method"),
        ({"retry": {"max_retries": 1}}, "retry"),
        ({"keep_alive": "yes"}, "keep_alive"),
        ({"verify": False, "ca_certs": "/tmp/ca.pem"}, "ca_certs"),
        ({"client_cert": ("a",)}, "client_cert"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    kwargs = {"urls": "http://127.0.0.1:1/", **kwargs}
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"initial_backoff": -0.1}, "initial_backoff"),
        ({"initial_backoff": 2, "max_backoff": 1}, "max_backoff"),
        ({"max_elapsed": 0}, "max_elapsed"),
        ({"retry_on_status": (503, 200)}, "retry_on_status"),
        ({"retry_on_status": (999,)}, "retry_on_status"),
        ({"retry_on_status": 503}, "retry_on_status"),
    ],
)
def test_retry_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        RetryConfig(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("make", "field", "suggestion"),
    [
        (lambda: HttpSinkConfig("http://h/", max_worker=8), "max_worker", "'max_workers'"),
        (lambda: HttpSinkConfig("http://h/", retrys=RetryConfig()), "retrys", "'retry'"),
        (lambda: RetryConfig(max_retry=5), "max_retry", "'max_retries'"),
        (lambda: BatchConfig(max_record=10), "batch.max_record", "'max_records'"),
        (
            lambda: CircuitBreakerConfig(failure_treshold=3),
            "circuit_breaker.failure_treshold",
            "'failure_threshold'",
        ),
        (lambda: ResultStoreConfig(maxsize=3), "result_store.maxsize", "'max_size'"),
    ],
)
def test_a_misspelt_option_is_a_config_error_with_a_suggestion(make, field, suggestion):
    with pytest.raises(ConfigError) as info:
        make()
    err = info.value
    assert isinstance(err, UnknownOptionError) and isinstance(
        err, TypeError
    )  # `except TypeError` still works
    assert err.field == field
    assert f"did you mean {suggestion}?" in str(err)
    assert str(err).startswith(f"{field}: ")
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 - crosses process boundaries (Celery) intact
    assert type(again) is UnknownOptionError and again.field == field


def test_an_unknown_option_with_no_close_name_points_to_help():
    with pytest.raises(
        UnknownOptionError, match=r"zzz: HttpSinkConfig has no option 'zzz'; see help\(HttpSinkConfig\)"
    ):
        HttpSinkConfig("http://h/", zzz=1, max_worker=2)
    with pytest.raises(UnknownOptionError, match=r"also unknown: 'max_worker'"):
        HttpSinkConfig("http://h/", zzz=1, max_worker=2)


def test_known_options_keep_the_signature_and_evolve():
    import inspect

    import attrs

    assert "max_retries" in inspect.signature(RetryConfig).parameters
    assert attrs.evolve(RetryConfig(), max_retries=1).max_retries == 1
    assert HttpSinkConfig("http://h/", max_workers=3).max_workers == 3


def test_config_defaults_and_conversions():
    config = HttpSinkConfig(["https://a.example/x?y=1", "http://b.example"])
    assert config.urls == ("https://a.example/x?y=1", "http://b.example")
    assert config.max_workers == 16
    assert config.pool_maxsize == 16
    assert config.max_pending == 10_000
    assert config.when_full == "block"
    assert config.verify is True
    assert config.retry == RetryConfig()
    assert config.retry.retry_on_status == (408, 425, 429, 500, 502, 503, 504)
    with pytest.raises(AttributeError):
        config.max_workers = 3  # type: ignore[misc]


def test_config_repr_hides_secrets():
    config = HttpSinkConfig(
        "http://h/",
        headers={"Authorization": "Bearer s3cret", "X-Token": "t0ken", "X-Plain": "visible"},
        sensitive_headers=["x-token"],
    )
    text = repr(config)
    assert "s3cret" not in text
    assert "t0ken" not in text
    assert "visible" in text


def test_connector_requires_a_config():
    with pytest.raises(ConfigError, match="config"):
        HttpSinkConnector({"urls": "http://h/"})  # type: ignore[arg-type]


def test_record_defaults():
    a, b = ConnectRecord("x"), ConnectRecord("y")
    assert a.record_id != b.record_id
    assert len(a.record_id) == 36
    assert a.extensions is None
    assert a.topic is None
    assert ConnectRecord("z", {"topic": "orders"}).topic == "orders"
    assert ConnectRecord("z", record_id="fixed-1").record_id == "fixed-1"
    assert "x" not in repr(ConnectRecord("secret payload x"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"extensions": ["not", "a", "mapping"]},
        {"extensions": {1: "non-str key"}},
        {"record_id": ""},
        {"record_id": "a\r\nb"},
        {"record_id": "ü-non-ascii"},
    ],
)
def test_bad_record_fields_fail_at_construction(kwargs):
    with pytest.raises(InvalidRecordError):
        ConnectRecord("data", **kwargs)


def test_callback_without_methods_is_refused_naming_the_record():
    class HalfCallback:
        def on_success(self, result):
            pass

    with pytest.raises(InvalidRecordError, match="on_exception") as info:
        ConnectRecord("d", callback=HalfCallback(), record_id="rec-7")
    assert info.value.record_id == "rec-7"
    record = ConnectRecord("d", record_id="rec-8")
    with pytest.raises(InvalidRecordError, match="rec-8"):
        record.callback = object()  # type: ignore[assignment]


def test_callback_protocol_is_runtime_checkable():
    class Good:
        def on_success(self, result):
            pass

        def on_exception(self, context):
            pass

    assert isinstance(Good(), SendMessageCallback)
    assert not isinstance(object(), SendMessageCallback)


@pytest.mark.parametrize(
    ("record", "exc"),
    [
        (ConnectRecord(object(), record_id="r-obj"), RecordEncodingError),
        (ConnectRecord({"x": {1, 2}}, record_id="r-set"), RecordEncodingError),
        (ConnectRecord(float("nan"), record_id="r-nan"), RecordEncodingError),
        (ConnectRecord("\ud800", record_id="r-surrogate"), RecordEncodingError),
        (ConnectRecord("d", {"k": object()}, record_id="r-ext"), RecordEncodingError),
        (ConnectRecord(b"x" * 2000, record_id="r-big"), InvalidRecordError),
    ],
)
def test_put_refuses_unsendable_records_before_queueing(server, connector_factory, record, exc):
    sink = connector_factory(server.url, max_body_bytes=1000)
    with pytest.raises(exc) as info:
        sink.put(record)
    assert record.record_id in str(info.value)
    assert sink.stats().submitted == 0
    if exc is RecordEncodingError:
        assert isinstance(info.value, TypeError)


def test_put_refuses_non_records(server, connector_factory):
    sink = connector_factory(server.url)
    with pytest.raises(TypeError, match="ConnectRecord"):
        sink.put({"data": 1})  # type: ignore[arg-type]


def test_put_all_is_all_or_nothing_on_bad_input(server, connector_factory):
    sink = connector_factory(server.url)
    good = [ConnectRecord(i) for i in range(3)]
    with pytest.raises(RecordEncodingError):
        sink.put_all([*good, ConnectRecord(object())])
    assert sink.flush(5)
    assert sink.stats().submitted == 0
    assert server.requests == []
