"""The wire: one HTTP attempt.

``transport`` is the seam (the ``Transport`` protocol, the urllib3 and requests
transports, error classification); ``http11`` sends a request and reads the
response with llhttp; ``headers`` is the request header policy; ``body`` caps
and decodes response bodies; ``pool_access`` holds the urllib3 pool internals
in one place; ``request_options`` and ``encoding`` shape each record's request.
"""
