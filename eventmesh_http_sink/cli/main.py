"""The ``eventmesh-http-sink`` command: send, replay, receive, demo.

Exit codes: 0 every record was delivered; 1 some record failed or some input
line was rejected; 2 usage or input errors (bad option, unreadable file,
``--strict`` stopping at a bad line); 130 interrupted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

import attrs

from eventmesh_http_sink.config import DEFAULT_SENSITIVE_HEADERS, HttpSinkConfig, RetryConfig
from eventmesh_http_sink.connector import HttpSinkConnector
from eventmesh_http_sink.errors import ConfigError, InvalidRecordError, SinkError
from eventmesh_http_sink.metrics import error_kind
from eventmesh_http_sink.records import ConnectRecord
from eventmesh_http_sink.results import SendExceptionContext, SendResult
from eventmesh_http_sink.testing import FaultServer, RandomFaults, Reply, RequestLog

__all__ = ["main"]

PROG = "eventmesh-http-sink"


class UsageError(Exception):
    """Bad options or input: exit code 2."""


# -- options -> config ------------------------------------------------------------------------


def _add_delivery_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("delivery")
    g.add_argument(
        "--workers", type=int, default=16, metavar="N", help="threads sending requests (default 16)"
    )
    g.add_argument(
        "--max-pending", type=int, default=1000, metavar="N", help="records in flight at most (default 1000)"
    )
    g.add_argument(
        "--retries", type=int, default=3, metavar="N", help="retries after the first attempt (default 3)"
    )
    g.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="seconds per attempt (default 30)"
    )
    g.add_argument("--header", action="append", default=[], metavar="K:V", help="extra header (repeatable)")
    g.add_argument("--bearer-token-env", metavar="VAR", help="send Authorization: Bearer $VAR")
    g.add_argument("--batch", type=int, metavar="N", help="send up to N records per request")
    g.add_argument(
        "--encoding",
        choices=["json", "cloudevents-binary", "cloudevents-structured", "raw"],
        help="body encoding",
    )
    g.add_argument("--strategy", choices=["round_robin", "broadcast", "failover"], help="with several URLs")
    g.add_argument("--dead-letter", metavar="FILE", help="write records that finally fail to FILE")
    g.add_argument("--rate-limit", type=float, metavar="N", help="at most N requests per second")
    o = p.add_argument_group("input and output")
    o.add_argument("--rejects", metavar="FILE", help="write unparsable input lines here (default stderr)")
    o.add_argument("--strict", action="store_true", help="stop at the first unparsable line (exit 2)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    o.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    o.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between plain progress lines",
    )
    o.add_argument("-v", "--verbose", action="count", default=0, help="-v logs failures, -vv retries too")


def _has_field(name: str) -> bool:
    return name in attrs.fields_dict(HttpSinkConfig)


def _need(option: str, field: str) -> None:
    if not _has_field(field):
        raise UsageError(f"{option} is not supported by this build (HttpSinkConfig has no {field!r} field)")


def build_config(args: argparse.Namespace) -> HttpSinkConfig:
    """Map the command-line options to an :class:`HttpSinkConfig`.

    Raises:
        UsageError: an option this build does not support, or a bad value.
    """
    urls = [u for u in args.url.split(",") if u]
    if args.timeout <= 0:
        raise UsageError("--timeout must be > 0")
    if args.retries < 0:
        raise UsageError("--retries must be >= 0")
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {item!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    kwargs: dict[str, Any] = {
        "max_workers": args.workers,
        "max_pending": args.max_pending,
        "read_timeout": args.timeout,
        "attempt_timeout": args.timeout,
        "connect_timeout": min(5.0, args.timeout),
        "retry": RetryConfig(max_retries=args.retries, initial_backoff=0.05, max_backoff=5.0),
    }
    if args.bearer_token_env:
        token = os.environ.get(args.bearer_token_env)
        if not token:
            raise UsageError(f"--bearer-token-env: environment variable {args.bearer_token_env} is not set")
        if _has_field("bearer_token"):
            kwargs["bearer_token"] = token
        else:
            headers["Authorization"] = f"Bearer {token}"
    kwargs["headers"] = headers
    if args.batch is not None:
        _need("--batch", "batch")
        try:
            batch_config = importlib.import_module(".batching", __package__).BatchConfig
        except (ImportError, AttributeError):
            raise UsageError("--batch is not supported by this build (no BatchConfig)") from None
        kwargs["batch"] = batch_config(max_records=args.batch)
    if args.encoding is not None:
        _need("--encoding", "encoding")
        kwargs["encoding"] = args.encoding
        if args.encoding.startswith("cloudevents"):
            for field, default in (("ce_source", "eventmesh-http-sink"), ("ce_type", "eventmesh.record")):
                if _has_field(field):
                    kwargs[field] = default
    if args.strategy is not None:
        _need("--strategy", "delivery_strategy")
        kwargs["delivery_strategy"] = args.strategy
    if args.dead_letter is not None:
        _need("--dead-letter", "dead_letter")
        kwargs["dead_letter"] = args.dead_letter
    if args.rate_limit is not None:
        _need("--rate-limit", "rate_limit")
        kwargs["rate_limit"] = args.rate_limit
    try:
        return HttpSinkConfig(urls, **kwargs)
    except (ConfigError, TypeError, ValueError) as exc:  # ConfigError names the config field
        raise UsageError(f"invalid option: {exc}") from None


# -- input ------------------------------------------------------------------------------------


class _Rejects:
    """Reports unparsable input lines, with their line numbers."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.count = 0
        self._out: IO[str] = open(path, "w", encoding="utf-8") if path else sys.stderr  # noqa: SIM115

    def add(self, lineno: int, reason: str, line: str) -> None:
        self.count += 1
        if self.path:
            entry = {"line": lineno, "error": reason, "text": line}
            self._out.write(json.dumps(entry, ensure_ascii=False) + "\n")
        else:
            self._out.write(f"{PROG}: line {lineno}: rejected: {reason}\n")
        self._out.flush()

    def close(self) -> None:
        if self.path:
            self._out.close()


def _decode_data(obj: dict[str, Any]) -> Any:
    # Dead-letter lines carry bytes as base64 with a flag (several spellings accepted).
    data = obj["data"]
    flagged = (
        obj.get("data_base64") is True
        or obj.get("base64") is True
        or obj.get("data_encoding") == "base64"
        or obj.get("encoding") == "base64"
    )
    if flagged:
        if not isinstance(data, str):
            raise ValueError("data is flagged base64 but is not a string")
        return base64.b64decode(data, validate=True)
    return data


def parse_line(line: str, raw: bool) -> ConnectRecord:
    """Turn one JSON Lines line into a record.

    Raises:
        ValueError: the line is not what ``send``/``replay`` accept (the message says why).
    """
    if raw:
        try:
            return ConnectRecord(json.loads(line))
        except json.JSONDecodeError:
            return ConnectRecord(line)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict) or "data" not in obj:
        raise ValueError('expected an object with a "data" key (use --raw-lines to send any JSON)')
    try:
        data = _decode_data(obj)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"bad base64 data: {exc}") from None
    kwargs: dict[str, Any] = {}
    if obj.get("record_id") is not None:
        kwargs["record_id"] = obj["record_id"]
    try:
        return ConnectRecord(data, obj.get("extensions"), timestamp=obj.get("timestamp"), **kwargs)
    except InvalidRecordError as exc:
        raise ValueError(str(exc)) from None


def _lines(src: Iterable[str]) -> Iterator[tuple[int, str]]:
    for lineno, line in enumerate(src, 1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield lineno, text


# -- send / replay ----------------------------------------------------------------------------


class _Tracker:
    """The callback of every record the CLI sends: remembers the first failures."""

    def __init__(self) -> None:
        from .output import FailureLog

        self.failures = FailureLog()

    def on_success(self, result: SendResult) -> None:
        pass

    def on_exception(self, context: SendExceptionContext) -> None:
        self.failures.add(context.record_id, error_kind(context.error), str(context.error))


def _progress_mode(args: argparse.Namespace) -> str:
    if args.quiet:
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


def _total_for_bar(args: argparse.Namespace, path: str) -> int | None:
    # Only the live bar shows a total: don't read a big file twice for plain lines.
    return _count_lines(path) if _progress_mode(args) == "bar" else None


def _count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None


def _deliver(
    args: argparse.Namespace,
    config: HttpSinkConfig,
    source: Iterable[str] | None,
    total: int | None,
    replay_path: str | None = None,
) -> int:
    from .output import Progress, Summary, render_summary

    if args.progress_interval <= 0:
        raise UsageError("--progress-interval must be > 0")
    try:
        rejects = _Rejects(args.rejects)
    except OSError as exc:
        raise UsageError(f"cannot write {args.rejects}: {exc.strerror}") from None
    tracker = _Tracker()
    connector = HttpSinkConnector(config)
    progress = Progress(connector.stats, sys.stderr, _progress_mode(args), args.progress_interval, total)
    t0 = time.monotonic()
    read = 0
    stopped = False
    interrupted = False
    connector.start()
    progress.start()
    try:
        if replay_path is not None:
            read = _library_replay(replay_path, connector, rejects)
        elif source is not None:
            for lineno, line in _lines(source):
                read += 1
                try:
                    record = parse_line(line, getattr(args, "raw_lines", False))
                except ValueError as exc:
                    rejects.add(lineno, str(exc), line)
                    if args.strict:
                        stopped = True
                        break
                    continue
                record.callback = tracker
                try:
                    connector.put(record)
                except InvalidRecordError as exc:
                    rejects.add(lineno, str(exc), line)
                    if args.strict:
                        stopped = True
                        break
        connector.flush()  # interruptible, unlike a close() in progress
    except KeyboardInterrupt:
        interrupted = True
        sys.stderr.write(f"{PROG}: interrupted: cancelling what is still pending\n")
        connector.close(timeout=1.0)  # leftovers are reported as SinkClosedError
    else:
        connector.close()
    finally:
        progress.stop()
        rejects.close()
    st = connector.stats()
    if st.failed:
        went = (
            f"dead-letter file {args.dead_letter}" + _written(st)
            if args.dead_letter
            else f"this summary only (first {tracker.failures.limit} listed)"
        )
    else:
        went = "-"
    summary = Summary(
        read=read,
        submitted=st.submitted,
        succeeded=st.succeeded,
        failed=st.failed,
        rejected=rejects.count,
        retries=st.retried,
        elapsed=time.monotonic() - t0,
        failures_by_kind=dict(st.failures_by_kind),
        retries_by_cause=dict(st.retries_by_cause),
        latency_p50=st.latency_p50,
        latency_p95=st.latency_p95,
        latency_p99=st.latency_p99,
        failures_went_to=went,
        failed_records=list(tracker.failures.items),
    )
    if args.json:
        sys.stdout.write(json.dumps(summary.as_json()) + "\n")
    elif not args.quiet:
        render_summary(summary, sys.stdout, sys.stdout.isatty())
    sys.stdout.flush()
    if interrupted:
        return 130
    if stopped:
        sys.stderr.write(f"{PROG}: stopped at the first rejected line (--strict)\n")
        return 2
    return 1 if (st.failed or rejects.count) else 0


def _written(st: Any) -> str:
    written = getattr(st, "dead_lettered", None)
    return f" ({written} written)" if isinstance(written, int) else ""


def _library_replay(path: str, connector: HttpSinkConnector, rejects: _Rejects) -> int:
    """Resend a dead-letter file; ``eventmesh_http_sink.replay`` when this build has it."""
    package = importlib.import_module("eventmesh_http_sink")
    replay = getattr(package, "replay", None)
    if callable(replay):
        report = replay(path, connector)
        skipped = list(getattr(report, "skipped", ()) or ())
        for item in skipped:
            lineno, reason = (item[0], item[1]) if isinstance(item, tuple) else (0, str(item))
            rejects.add(int(lineno), str(reason), "")
        resent: int = getattr(report, "resent", 0)
        return resent + len(skipped)
    tracker = _Tracker()
    read = 0
    with open(path, encoding="utf-8") as src:
        for lineno, line in _lines(src):
            read += 1
            try:
                record = parse_line(line, raw=False)
            except ValueError as exc:
                rejects.add(lineno, str(exc), line)
                continue
            record.callback = tracker
            connector.put(record)
    return read


def cmd_send(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.file in (None, "-"):
        return _deliver(args, config, sys.stdin, None)
    try:
        src = open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    with src:
        return _deliver(args, config, src, _total_for_bar(args, args.file))


def cmd_replay(args: argparse.Namespace) -> int:
    config = build_config(args)
    if not os.path.isfile(args.file):
        raise UsageError(f"cannot read {args.file}: no such file")
    return _deliver(args, config, None, _total_for_bar(args, args.file), replay_path=args.file)


# -- receive ----------------------------------------------------------------------------------


class _Receiver:
    """The responder of ``receive``: injects faults, then prints or stores each request."""

    def __init__(self, faults: RandomFaults, out: IO[str] | None, echo: IO[str] | None) -> None:
        self.faults = faults
        self.out = out
        self.echo = echo
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, request: RequestLog) -> Reply:
        reply = self.faults(request)
        answered = reply.status if reply.kind == "reply" else reply.kind
        with self._lock:
            self.count += 1
            if self.out is not None:
                headers = {
                    k: ("***" if k in DEFAULT_SENSITIVE_HEADERS else v) for k, v in request.headers.items()
                }
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
                self.out.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self.out.flush()
            if self.echo is not None:
                self.echo.write(
                    f"{request.method} {request.path} key={request.key} {len(request.body)} bytes"
                    f" -> {answered}\n"
                )
                self.echo.flush()
        return reply


def _receive_faults(fail_rate: float, latency_ms: float, seed: int | None) -> RandomFaults:
    return RandomFaults(fail_rate, latency_ms / 1000.0, seed=seed)


def cmd_receive(args: argparse.Namespace) -> int:
    if not 0 <= args.fail_rate <= 1:
        raise UsageError("--fail-rate must be between 0 and 1")
    if args.latency_ms < 0:
        raise UsageError("--latency-ms must be >= 0")
    out = None
    if args.out:
        try:
            out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror}") from None
    receiver = _Receiver(
        _receive_faults(args.fail_rate, args.latency_ms, args.seed), out, None if out else sys.stdout
    )
    server = FaultServer(args.port, receiver, host=args.host, keep_log=False)
    try:
        server.start()
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    print(f"listening on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if out is not None:
            out.close()
    print(f"received {receiver.count} request(s)", file=sys.stderr, flush=True)
    return 0


# -- demo -------------------------------------------------------------------------------------

_POISON = "demo-poison-record"


def cmd_demo(args: argparse.Namespace) -> int:
    if args.records < 2:
        raise UsageError("--records must be at least 2")
    if not 0 <= args.fail_rate < 1:
        raise UsageError("--fail-rate must be in [0, 1)")
    if args.latency_ms < 0:
        raise UsageError("--latency-ms must be >= 0")
    faults = RandomFaults(
        args.fail_rate,
        args.latency_ms / 1000.0,
        seed=7,
        faults=(Reply(503, headers={"Retry-After": "0"}), Reply.reset()),
    )

    def responder(request: RequestLog) -> Reply:
        if request.key == _POISON:
            return Reply(500, body=b"this record always fails")
        return faults(request)

    with FaultServer(responder=responder, keep_log=False) as server:
        if not args.quiet:
            print(
                f"demo: a receiver on {server.url} fails ~{args.fail_rate:.0%} of requests"
                f" (503 Retry-After: 0, connection resets) and always answers 500 to {_POISON}",
                flush=True,
            )
        kwargs: dict[str, Any] = {
            "max_workers": 8,
            "max_pending": 64,
            "retry": RetryConfig(max_retries=5, initial_backoff=0.01, max_backoff=0.1, max_elapsed=10.0),
        }
        dead_letter = None
        if _has_field("dead_letter"):
            dead_letter = args.dead_letter or os.path.join(
                tempfile.mkdtemp(prefix="eventmesh-demo-"), "dead-letters.jsonl"
            )
            kwargs["dead_letter"] = dead_letter
        config = HttpSinkConfig(server.url, **kwargs)
        n = args.records
        poison_at = n // 2

        def records() -> Iterator[str]:
            for i in range(n):
                rid = _POISON if i == poison_at else f"demo-{i}"
                yield json.dumps(
                    {"record_id": rid, "data": {"n": i, "msg": "hello"}, "extensions": {"topic": "demo"}}
                )

        ns = argparse.Namespace(
            rejects=None,
            strict=False,
            quiet=args.quiet,
            json=args.json,
            progress_interval=1.0,
            raw_lines=False,
            dead_letter=dead_letter,
        )
        code = _deliver(ns, config, records(), n)
    if not args.quiet and not args.json:
        if dead_letter:
            print(f"demo: the failed record is in {dead_letter}; try: {PROG} replay {dead_letter} URL")
        print("demo: " + ("worked as designed" if code == 1 else "did NOT go as designed"))
    # One record fails on purpose: exit code 1 from the run is the designed outcome.
    return 0 if code == 1 else 1


# -- entry point ------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Deliver JSON Lines events to HTTP endpoints, with retries and a summary.",
        epilog="Exit codes: 0 all delivered, 1 some failed or rejected, 2 usage/input error.",
    )
    parser.add_argument("--demo", action="store_true", help="same as the demo command")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("send", help="send a JSON Lines file (or stdin) to URL")
    p.add_argument("url", metavar="URL", help="endpoint (several: comma-separated)")
    p.add_argument("file", metavar="FILE", nargs="?", default="-", help="JSON Lines file, - for stdin")
    p.add_argument("--raw-lines", action="store_true", help="take each line (JSON or text) as the data")
    _add_delivery_options(p)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("replay", help="resend a dead-letter file to URL")
    p.add_argument("file", metavar="FILE", help="dead-letter JSON Lines file")
    p.add_argument("url", metavar="URL", help="endpoint (several: comma-separated)")
    _add_delivery_options(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("receive", help="run a loopback receiver that prints or stores requests")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port; default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests to fail (0..1)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault mix")
    p.add_argument("--out", metavar="FILE", help="append requests as JSON lines instead of printing")
    p.set_defaults(func=cmd_receive)

    p = sub.add_parser("demo", help="send sample records to an in-process receiver with faults")
    _add_demo_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _add_demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=int, default=3000, help="records to send (default 3000)")
    p.add_argument("--fail-rate", type=float, default=0.05, help="fraction of failing requests")
    p.add_argument("--latency-ms", type=float, default=4.0, help="receiver latency per request (default 4)")
    p.add_argument("--dead-letter", metavar="FILE", help="dead-letter file (default: a temp file)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v logs failures, -vv retries too")


def _version() -> str:
    from eventmesh_http_sink import __version__

    return __version__


def _configure_logging(verbose: int) -> tuple[logging.Handler, int]:
    # The library adds no handler; the command shows errors, and more with -v.
    level = logging.ERROR if verbose <= 0 else logging.WARNING if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("eventmesh_http_sink")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler, previous


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--demo" in argv and "demo" not in argv:
        argv = ["demo", *(a for a in argv if a != "--demo")]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler, previous_level = _configure_logging(getattr(args, "verbose", 0))
    try:
        code: int = args.func(args)
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except SinkError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    finally:
        # main() may run in-process (tests, embedding): leave logging as we found it.
        logger = logging.getLogger("eventmesh_http_sink")
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    return code
