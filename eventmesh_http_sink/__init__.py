"""Deliver event records to HTTP endpoints from synchronous Python, one callback per record.

The Python counterpart of Apache EventMesh's HTTP Sink Connector and its
``SendMessageCallback`` contract: :meth:`HttpSinkConnector.put` returns a
:class:`concurrent.futures.Future` at once, a bounded thread pool sends the
request over a urllib3 connection pool, and every accepted record gets exactly
one outcome.
"""

from .batching import BatchConfig
from .config import HttpSinkConfig, RetryConfig
from .connector import HttpSinkConnector, SinkStats
from .errors import (
    BatchRecordError,
    BroadcastError,
    BusinessError,
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
from .per_process import ProcessConnector
from .records import ConnectRecord
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
    "ConfigError",
    "ConnectRecord",
    "ConnectTimeoutError",
    "EndpointUnavailableError",
    "HttpSinkConfig",
    "HttpSinkConnector",
    "HttpStatusError",
    "InvalidRecordError",
    "ProcessConnector",
    "QueueFullError",
    "ReadTimeoutError",
    "RecordEncodingError",
    "RequestsTransport",
    "Response",
    "ResponseError",
    "RetryConfig",
    "SendExceptionContext",
    "SendMessageCallback",
    "SendResult",
    "SinkClosedError",
    "SinkError",
    "SinkStats",
    "Transport",
    "Urllib3Transport",
    "__version__",
    "deliver_batch",
    "records_from_dicts",
]
