"""Deliver event records to HTTP endpoints from synchronous Python, one callback per record.

The Python counterpart of Apache EventMesh's HTTP Sink Connector and its
``SendMessageCallback`` contract: :meth:`HttpSinkConnector.put` returns a
:class:`concurrent.futures.Future` at once, a bounded thread pool sends the
request over a urllib3 connection pool, and every accepted record gets exactly
one outcome.
"""

from .batching import BatchConfig
from .breaker import CircuitBreakerConfig
from .config import HttpSinkConfig, RetryConfig
from .connector import HttpSinkConnector, SinkStats
from .dead_letter import ReplayReport, replay
from .errors import (
    BatchRecordError,
    BroadcastError,
    BusinessError,
    CircuitOpenError,
    ConfigError,
    ConnectTimeoutError,
    EndpointUnavailableError,
    HttpStatusError,
    InvalidRecordError,
    QueueFullError,
    ReadTimeoutError,
    RecordEncodingError,
    ResponseError,
    SinkClosedError,
    SinkError,
)
from .metrics import HistogramSnapshot, UrlStats
from .per_process import ProcessConnector
from .records import ConnectRecord
from .result_store import ResultStoreConfig
from .results import SendExceptionContext, SendMessageCallback, SendResult
from .transport import RequestsTransport, Response, Transport, Urllib3Transport
from .worker_batch import BatchDeliveryError, BatchSummary, deliver_batch, records_from_dicts

__version__ = "0.1.0"

__all__ = [
    "BatchConfig",
    "BatchDeliveryError",
    "BatchRecordError",
    "BatchSummary",
    "BroadcastError",
    "BusinessError",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "ConfigError",
    "ConnectRecord",
    "ConnectTimeoutError",
    "EndpointUnavailableError",
    "HistogramSnapshot",
    "HttpSinkConfig",
    "HttpSinkConnector",
    "HttpStatusError",
    "InvalidRecordError",
    "ProcessConnector",
    "QueueFullError",
    "ReadTimeoutError",
    "RecordEncodingError",
    "ReplayReport",
    "RequestsTransport",
    "Response",
    "ResponseError",
    "ResultStoreConfig",
    "RetryConfig",
    "SendExceptionContext",
    "SendMessageCallback",
    "SendResult",
    "SinkClosedError",
    "SinkError",
    "SinkStats",
    "Transport",
    "UrlStats",
    "Urllib3Transport",
    "__version__",
    "deliver_batch",
    "records_from_dicts",
    "replay",
]
