"""Shared by the worker integrations (``eventmesh_http_sink.celery`` and ``.rq``): a connector per
process and the delivery of a batch of dict records."""
