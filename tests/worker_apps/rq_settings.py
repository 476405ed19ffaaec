"""Settings module for `rq worker -c tests.worker_apps.rq_settings` in the worker tests."""

from __future__ import annotations

import os

from eventmesh_http_sink import HttpSinkConfig
from eventmesh_http_sink.rq import configure

REDIS_URL = os.environ["EMHS_REDIS_URL"]
configure(HttpSinkConfig(os.environ["EMHS_SINK_URL"], max_workers=8), flush_timeout=10)
