"""The wire: one HTTP attempt.

``transport`` is the seam (the ``Transport`` protocol, the urllib3 and requests
transports, error classification); ``http11`` sends a request and reads the
response with llhttp; ``headers`` is the request header policy; ``body`` caps
and decodes response bodies; ``pool_access`` keeps each host's connections
(urllib3 makes and connects them; its one private call is there);
``request_options`` and ``encoding`` shape each record's request.
"""
