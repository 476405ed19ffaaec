"""The responder of ``receive``: injects faults, then prints or stores each request.

A request that cannot be stored (``--out`` on a full disk) or printed (stdout's
reader went away) is answered 500, so the sender keeps the record and retries;
the write error is reported on stderr, once per kind, never as a reset connection.

With ``--verify-secret-env`` each request's Standard Webhooks signature is
checked first, as a receiver in production would: one that does not verify
(missing, tampered, wrong secret, timestamp off by more than 5 minutes) is
answered 401 and counted, and the summary says how many verified and failed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from eventmesh_http_sink.config import DEFAULT_SENSITIVE_HEADERS
from eventmesh_http_sink.signing import WebhookSigner
from eventmesh_http_sink.testing import RandomFaults, Reply, RequestLog

from .output import PROG, write_err, write_out

__all__ = ["Receiver"]


class Receiver:
    """Answers a request as ``faults`` says, then stores it in ``out`` or prints a line for it.

    Args:
        faults: The fault mix.
        out: A file to append each request to as a JSON line; ``None`` prints a line instead.
        on_stdout_gone: Called once when stdout can no longer be written.
        verifier: Checks each request's signature; ``None`` checks nothing.
    """

    def __init__(
        self,
        faults: RandomFaults,
        out: str | None,
        on_stdout_gone: Callable[[], None],
        verifier: WebhookSigner | None = None,
    ) -> None:
        self.faults = faults
        self.out = out
        self.verifier = verifier
        self.count = 0
        self.unwritten = 0
        self.verified = 0
        self.unverified = 0
        self._fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666) if out else None
        self._torn = False  # the last write to `out` stopped inside a line
        self._errors_told: set[str] = set()
        self._on_stdout_gone = on_stdout_gone
        self._lock = threading.Lock()

    def __call__(self, request: RequestLog) -> Reply:
        why_not = None if self.verifier is None else self.verifier.verify(request.body, request.headers)
        if why_not is not None:
            reply = Reply(401, body=f"webhook signature did not verify: {why_not}".encode())
        else:
            reply = self.faults(request)
        answered = reply.status if reply.kind == "reply" else reply.kind
        signature = None if self.verifier is None else (why_not or "verified")
        with self._lock:
            self.count += 1
            if signature == "verified":
                self.verified += 1
            elif signature is not None:
                self.unverified += 1
            problem = (
                self._store(request, answered, signature)
                if self._fd is not None
                else self._print(request, answered, signature)
            )
            if problem is not None:
                self.unwritten += 1
        if problem is not None:
            return Reply(500, body=f"the receiver could not keep this request: {problem}".encode())
        return reply

    def _store(self, request: RequestLog, answered: int | str, signature: str | None) -> str | None:
        assert self._fd is not None  # noqa: S101 - checked by the caller
        headers = {k: ("***" if k in DEFAULT_SENSITIVE_HEADERS else v) for k, v in request.headers.items()}
        try:
            body: Any = json.loads(request.body)
        except ValueError:
            body = request.body.decode("utf-8", "replace")
        entry = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "key": request.key,
            "headers": headers,
            "body": body,
            "answered": answered,
        }
        if signature is not None:
            entry["signature"] = signature
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        if self._torn:
            data = b"\n" + data  # never glue a line onto the fragment a failed write left
        try:
            while data:
                data = data[os.write(self._fd, data) :]
                self._torn = bool(data)
        except OSError as exc:
            message = f"cannot write {self.out}: {exc.strerror}"
            if message not in self._errors_told:
                self._errors_told.add(message)
                write_err(f"{PROG}: receive: {message} (the request is answered 500)\n")
            return message
        self._torn = False
        return None

    def _print(self, request: RequestLog, answered: int | str, signature: str | None) -> str | None:
        line = f"{request.method} {request.path} key={request.key} {len(request.body)} bytes -> {answered}"
        if signature is not None:
            line += " signature " + ("verified" if signature == "verified" else f"FAILED ({signature})")
        line += "\n"
        if write_out(line):
            return None
        if "stdout" not in self._errors_told:
            self._errors_told.add("stdout")
            self._on_stdout_gone()
        return "stdout is closed"

    def close(self) -> None:
        """Close the ``out`` file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
