"""Deliver event records to HTTP endpoints from synchronous Python, one callback per record.

The Python counterpart of Apache EventMesh's HTTP Sink Connector and its
``SendMessageCallback`` contract: :meth:`HttpSinkConnector.put` returns a
:class:`concurrent.futures.Future` at once, a bounded thread pool sends the
request over a urllib3 connection pool, and every accepted record gets exactly
one outcome.
"""

from .config import HttpSinkConfig, RetryConfig
from .connector import HttpSinkConnector
from .dispatch.batching import BatchConfig
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
    UnknownOptionError,
)
from .integrations.per_process import ProcessConnector
from .integrations.worker_batch import BatchDeliveryError, BatchSummary, deliver_batch, records_from_dicts
from .metrics import HistogramSnapshot, UrlStats
from .outcomes.replay import ReplayReport, replay
from .outcomes.result_store import ResultStoreConfig
from .records import ConnectRecord
from .results import SendExceptionContext, SendMessageCallback, SendResult
from .scheduling.breaker import CircuitBreakerConfig
from .signing import WebhookSigner
from .stats import SinkStats
from .version import __version__
from .wire.transport import RequestsTransport, Response, Transport, Urllib3Transport

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
    "UnknownOptionError",
    "UrlStats",
    "Urllib3Transport",
    "WebhookSigner",
    "__version__",
    "deliver_batch",
    "records_from_dicts",
    "replay",
]
