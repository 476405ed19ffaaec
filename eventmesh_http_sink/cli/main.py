"""The ``eventmesh-http-sink`` command: send, replay, receive, demo.

Exit codes: 0 every record was delivered; 1 some record failed or was cancelled,
or some input line was rejected; 2 usage or input errors (bad option, unreadable
file, ``--strict`` stopping at a bad line); 128 + N stopped by signal N (130 for
Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from eventmesh_http_sink.config import DEFAULT_SENSITIVE_HEADERS, HttpSinkConfig, RetryConfig
from eventmesh_http_sink.dispatch.batching import BatchConfig
from eventmesh_http_sink.errors import ConfigError, SinkError
from eventmesh_http_sink.redact import redact_text, redact_url
from eventmesh_http_sink.signing import WebhookSigner
from eventmesh_http_sink.testing import FaultServer, RandomFaults, Reply, RequestLog

from .lines import LineReader
from .output import PROG, ensure_std_streams, write_err, write_out
from .receive import Receiver
from .run import RunSettings, run
from .stopping import StopRequest

__all__ = ["main"]


class UsageError(Exception):
    """Bad options or input: exit code 2."""


# -- options -> config ------------------------------------------------------------------------

_DEFAULTS = {"workers": 16, "max_pending": 1000, "retries": 3, "timeout": 30.0}


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
    g.add_argument(
        "--signing-secret-env",
        metavar="VAR",
        help="sign every request (Standard Webhooks) with the whsec_... secret in $VAR"
        " (several, space-separated, while rotating)",
    )
    g.add_argument("--batch", type=int, metavar="N", help="send up to N records per request")
    g.add_argument(
        "--encoding",
        choices=["json", "cloudevents-binary", "cloudevents-structured", "raw"],
        help="body encoding",
    )
    g.add_argument("--strategy", choices=["round_robin", "broadcast", "failover"], help="with several URLs")
    g.add_argument("--rate-limit", type=float, metavar="N", help="at most N requests per second")
    d = g.add_mutually_exclusive_group()
    d.add_argument(
        "--dead-letter",
        metavar="FILE",
        help="append records that fail or are cancelled to FILE"
        " (default: a new eventmesh-failed-*.jsonl in the current directory, made only when needed)",
    )
    d.add_argument(
        "--no-dead-letter", action="store_true", help="keep failed records nowhere but the summary"
    )
    o = p.add_argument_group("input and output")
    o.add_argument(
        "--rejects",
        metavar="FILE",
        help="write unparsable input lines here (default: the first 20 on stderr)",
    )
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


# A config field (ConfigError.field) -> the option the user typed.
_FLAG_OF_FIELD = {
    "urls": "URL",
    "max_workers": "--workers",
    "pool_maxsize": "--workers",
    "max_pending": "--max-pending",
    "max_retries": "--retries",
    "read_timeout": "--timeout",
    "attempt_timeout": "--timeout",
    "connect_timeout": "--timeout",
    "headers": "--header",
    "bearer_token": "--bearer-token-env",
    "batch": "--batch",
    "encoding": "--encoding",
    "ce_source": "--encoding",
    "ce_type": "--encoding",
    "delivery_strategy": "--strategy",
    "rate_limit": "--rate-limit",
    "dead_letter": "--dead-letter",
    "signing": "--signing-secret-env",
}


def _flag_error(exc: ConfigError) -> UsageError:
    flag = _FLAG_OF_FIELD.get(exc.field.split(".", 1)[0])
    if flag is None:
        return UsageError(f"invalid option: {exc}")
    return UsageError(f"{flag}: {exc.reason}")


def build_config(args: argparse.Namespace) -> HttpSinkConfig:
    """Map the command-line options to an :class:`HttpSinkConfig`.

    Raises:
        UsageError: a bad value, naming the option the user typed.
    """
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
        "headers": headers,
    }
    if args.bearer_token_env:
        token = os.environ.get(args.bearer_token_env)
        if not token:
            raise UsageError(f"--bearer-token-env: environment variable {args.bearer_token_env} is not set")
        kwargs["bearer_token"] = token
    if args.signing_secret_env:
        kwargs["signing"] = signer_from_env(args.signing_secret_env, "--signing-secret-env")
    if args.encoding is not None:
        kwargs["encoding"] = args.encoding
        if args.encoding.startswith("cloudevents"):
            kwargs["ce_source"] = "eventmesh-http-sink"
            kwargs["ce_type"] = "eventmesh.record"
    if args.strategy is not None:
        kwargs["delivery_strategy"] = args.strategy
    if args.rate_limit is not None:
        kwargs["rate_limit"] = args.rate_limit
    if args.dead_letter is not None:
        kwargs["dead_letter"] = args.dead_letter  # checked here; the run sets it again
    try:
        if args.timeout > 0:
            kwargs["connect_timeout"] = min(5.0, args.timeout)
        kwargs["retry"] = RetryConfig(max_retries=args.retries, initial_backoff=0.05, max_backoff=5.0)
        if args.batch is not None:
            kwargs["batch"] = BatchConfig(max_records=args.batch)
        return HttpSinkConfig([u for u in args.url.split(",") if u], **kwargs)
    except ConfigError as exc:
        raise _flag_error(exc) from None


def signer_from_env(var: str, flag: str) -> WebhookSigner:
    """The :class:`WebhookSigner` of the secret(s) in environment variable ``var``.

    Several secrets (rotation) are separated by whitespace.

    Raises:
        UsageError: naming ``flag``: the variable is unset or empty, or a secret is
            malformed (the message never shows the secret).
    """
    secrets = os.environ.get(var, "").split()
    if not secrets:
        raise UsageError(f"{flag}: environment variable {var} is not set")
    try:
        return WebhookSigner(*secrets)
    except ConfigError as exc:
        raise UsageError(f"{flag}: ${var}: {exc.reason}") from None


def _prog_command() -> str:
    """How the user ran this program, for the commands the summary suggests."""
    if os.path.basename(sys.argv[0]) == PROG:
        return PROG
    return f"{os.path.basename(sys.executable) or 'python3'} -m eventmesh_http_sink"


def _delivery_args(args: argparse.Namespace) -> list[str]:
    """The options of this run that shape what the endpoint receives, for a resend command."""
    out: list[str] = []
    for name, value in _DEFAULTS.items():
        if getattr(args, name) != value:
            out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for item in args.header:
        name, _, value = item.partition(":")
        shown = "***" if name.strip().lower() in DEFAULT_SENSITIVE_HEADERS else value.strip()
        out += ["--header", f"{name.strip()}: {shown}"]
    for flag, value in (
        ("--bearer-token-env", args.bearer_token_env),
        ("--signing-secret-env", args.signing_secret_env),
        ("--batch", args.batch),
        ("--encoding", args.encoding),
        ("--strategy", args.strategy),
        ("--rate-limit", args.rate_limit),
    ):
        if value is not None:
            out += [flag, str(value)]
    return out


def _shown_url(args: argparse.Namespace) -> tuple[str, str]:
    """The URL argument for a suggested command, and a note when query values are hidden."""
    shown = ",".join(redact_url(u) for u in args.url.split(","))
    return shown, ("  (query values shown as ***: put yours back)" if shown != args.url else "")


def _resend(args: argparse.Namespace) -> Callable[[str], str]:
    url, note = _shown_url(args)

    def command(path: str) -> str:
        return shlex.join([*_prog_command().split(), "replay", path, url, *_delivery_args(args)]) + note

    return command


def _rest(args: argparse.Namespace, command: str) -> Callable[[int, bool], str]:
    url, note = _shown_url(args)

    def advice(last: int, rereadable: bool) -> str:
        if args.file in (None, "-"):
            where = "the input file" if rereadable else "standard input"
            return f"{where} after line {last} was not read"
        tail = shlex.join(["tail", "-n", f"+{last + 1}", args.file])
        again = shlex.join(
            [*_prog_command().split(), command, *(("-", url) if command == "replay" else (url, "-"))]
        )
        extra = "".join(" " + shlex.quote(a) for a in _delivery_args(args))
        return f"lines after {last} were not read; send them with: {tail} | {again}{extra}{note}"

    return advice


def _default_dead_letter() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"eventmesh-failed-{stamp}-{os.getpid()}.jsonl"


def _dead_letter_path(args: argparse.Namespace) -> str | None:
    if args.no_dead_letter:
        return None
    if args.dead_letter is not None:
        return str(args.dead_letter)
    if not os.access(os.getcwd(), os.W_OK):
        raise UsageError(
            f"the current directory ({os.getcwd()}) is not writable, so failed records would have"
            " nowhere to go: give --dead-letter FILE, or --no-dead-letter"
        )
    return _default_dead_letter()


def _open_input(path: str) -> int:
    if path in (None, "-"):
        try:
            return sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # closed (<&-: None), or not a real file
            raise UsageError("cannot read standard input") from None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _count_lines(fd: int) -> int | None:
    # Only the live bar shows a total, and only a regular file can be read twice.
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            total = sum(1 for line in f if line.strip())
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        return None
    return total


def _deliver(args: argparse.Namespace, command: str) -> int:
    if args.progress_interval <= 0:
        raise UsageError("--progress-interval must be > 0")
    config = build_config(args)
    dead_letter = _dead_letter_path(args)
    if args.rejects:
        try:
            with open(args.rejects, "a"):  # fail now, not at the first bad line
                pass
        except OSError as exc:
            raise UsageError(f"cannot write {args.rejects}: {exc.strerror}") from None
    fd = _open_input(args.file)
    try:
        reads_itself = (
            dead_letter is not None
            and args.file not in (None, "-")
            and os.path.exists(dead_letter)
            and os.path.samefile(dead_letter, args.file)
        )
        if reads_itself:
            raise UsageError(
                "--dead-letter must not be the file being read: new failures would be read again"
            )
        show_bar = not args.quiet and sys.stderr.isatty() and args.file not in (None, "-")
        settings = RunSettings(
            mode="replay"
            if command == "replay"
            else ("raw" if getattr(args, "raw_lines", False) else "send"),
            strict=args.strict,
            rejects=args.rejects,
            quiet=args.quiet,
            json=args.json,
            progress_interval=args.progress_interval,
            dead_letter=dead_letter,
            resend=_resend(args),
            rest=_rest(args, command),
            total=_count_lines(fd) if show_bar else None,
            redact=redact_text,
        )
        return run(settings, config, lambda stop: LineReader.from_fd(fd, stop))
    finally:
        if args.file not in (None, "-"):
            os.close(fd)


def cmd_send(args: argparse.Namespace) -> int:
    return _deliver(args, "send")


def cmd_replay(args: argparse.Namespace) -> int:
    return _deliver(args, "replay")


# -- receive ----------------------------------------------------------------------------------


def cmd_receive(args: argparse.Namespace) -> int:
    if not 0 <= args.fail_rate <= 1:
        raise UsageError("--fail-rate must be between 0 and 1")
    if args.latency_ms < 0:
        raise UsageError("--latency-ms must be >= 0")
    verifier = None
    if args.verify_secret_env:
        verifier = signer_from_env(args.verify_secret_env, "--verify-secret-env")
    with StopRequest() as stop:
        try:
            receiver = Receiver(
                RandomFaults(args.fail_rate, args.latency_ms / 1000.0, seed=args.seed),
                args.out,
                on_stdout_gone=stop.event.set,
                verifier=verifier,
            )
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror}") from None
        server = FaultServer(args.port, receiver, host=args.host, keep_log=False)
        try:
            server.start()
        except OSError as exc:
            receiver.close()
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        try:
            write_out(f"listening on {server.url} (Ctrl-C to stop)\n")
            stop.event.wait()
            if not stop.signum:
                time.sleep(0.5)  # stdout's reader left: let the 500 being written reach its client
        finally:
            server.stop()
            receiver.close()
    message = f"received {receiver.count} request(s)"
    if receiver.unwritten:
        message += f"; {receiver.unwritten} could not be written and were answered 500"
    if verifier is not None:
        message += f"; signatures: {receiver.verified} verified, {receiver.unverified} failed (answered 401)"
    write_err(message + "\n")
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

    temp_dir = None if args.dead_letter else tempfile.mkdtemp(prefix="eventmesh-demo-")
    dead_letter = args.dead_letter or os.path.join(temp_dir or "", "dead-letters.jsonl")
    try:
        with FaultServer(responder=responder, keep_log=False) as server:
            if not args.quiet and not args.json:
                write_out(
                    f"demo: a receiver on {server.url} fails ~{args.fail_rate:.0%} of requests"
                    f" (503 Retry-After: 0, connection resets) and always answers 500 to {_POISON}\n"
                )
            config = HttpSinkConfig(
                server.url,
                max_workers=8,
                max_pending=64,
                retry=RetryConfig(max_retries=5, initial_backoff=0.01, max_backoff=0.1, max_elapsed=10.0),
            )
            n = args.records
            settings = RunSettings(
                mode="send",
                quiet=args.quiet,
                json=args.json,
                progress_interval=1.0,
                dead_letter=dead_letter,
                total=n,
            )
            code = run(settings, config, lambda stop: LineReader.from_lines(_demo_lines(n)))
        if not args.quiet and not args.json:
            if temp_dir is None or args.keep:
                write_out(
                    f"demo: the failed record is in {dead_letter}; try: {PROG} replay {dead_letter} URL\n"
                )
            else:
                write_out(f"demo: removed {temp_dir} and its dead-letter file (--keep keeps them)\n")
            write_out("demo: " + ("worked as designed" if code == 1 else "did NOT go as designed") + "\n")
    finally:
        if temp_dir is not None and not args.keep:
            shutil.rmtree(temp_dir, ignore_errors=True)
    if code > 128:
        return code  # stopped by a signal
    # One record fails on purpose: exit code 1 from the run is the designed outcome.
    return 0 if code == 1 else 1


def _demo_lines(n: int) -> Iterator[str]:
    poison_at = n // 2
    for i in range(n):
        rid = _POISON if i == poison_at else f"demo-{i}"
        yield json.dumps(
            {"record_id": rid, "data": {"n": i, "msg": "hello"}, "extensions": {"topic": "demo"}}
        )


# -- entry point ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose unknown options get a "did you mean" and this (sub)command's usage."""

    def unknown(self, extras: list[str]) -> None:
        options = sorted(set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", self.format_help())))
        hints = []
        for extra in extras:
            if extra.startswith("-"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1)
                if close:
                    hints.append(f"{extra}: did you mean {close[0]}?")
        message = f"unrecognized arguments: {' '.join(extras)}"
        self.error(message + ("\n  " + "\n  ".join(hints) if hints else ""))


def make_parser() -> tuple[_Parser, dict[str, _Parser]]:
    """The argument parser of the command, and the parser of each subcommand."""
    parser = _Parser(
        prog=PROG,
        description="Deliver JSON Lines events to HTTP endpoints, with retries and a summary.",
        epilog="Exit codes: 0 all delivered, 1 some failed, cancelled or rejected, 2 usage/input error,"
        " 130 Ctrl-C, 143 SIGTERM.",
    )
    parser.add_argument("--demo", action="store_true", help="same as the demo command")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subs: dict[str, _Parser] = {}

    p = sub.add_parser("send", help="send a JSON Lines file (or stdin) to URL")
    p.add_argument("url", metavar="URL", help="endpoint (several: comma-separated)")
    p.add_argument("file", metavar="FILE", nargs="?", default="-", help="JSON Lines file, - for stdin")
    p.add_argument("--raw-lines", action="store_true", help="take each line (JSON or text) as the data")
    _add_delivery_options(p)
    p.set_defaults(func=cmd_send)
    subs["send"] = p

    p = sub.add_parser("replay", help="resend a dead-letter file to URL")
    p.add_argument("file", metavar="FILE", help="dead-letter JSON Lines file, - for stdin")
    p.add_argument("url", metavar="URL", help="endpoint (several: comma-separated)")
    _add_delivery_options(p)
    p.set_defaults(func=cmd_replay)
    subs["replay"] = p

    p = sub.add_parser("receive", help="run a loopback receiver that prints or stores requests")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port; default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests to fail (0..1)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault mix")
    p.add_argument("--out", metavar="FILE", help="append requests as JSON lines instead of printing")
    p.add_argument(
        "--verify-secret-env",
        metavar="VAR",
        help="check each request's Standard Webhooks signature with the whsec_... secret(s) in $VAR;"
        " answer 401 to those that do not verify",
    )
    p.set_defaults(func=cmd_receive)
    subs["receive"] = p

    p = sub.add_parser("demo", help="send sample records to an in-process receiver with faults")
    _add_demo_options(p)
    p.set_defaults(func=cmd_demo)
    subs["demo"] = p
    return parser, subs


def _add_demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=int, default=3000, help="records to send (default 3000)")
    p.add_argument("--fail-rate", type=float, default=0.05, help="fraction of failing requests")
    p.add_argument("--latency-ms", type=float, default=4.0, help="receiver latency per request (default 4)")
    p.add_argument(
        "--dead-letter", metavar="FILE", help="dead-letter file, kept (default: a temp file, removed)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp directory and its dead-letter file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v logs failures, -vv retries too")


def _version() -> str:
    from eventmesh_http_sink import __version__

    return __version__


class _RedactingFormatter(logging.Formatter):
    """Formats as usual, then hides URL query values: the lines (tracebacks included) may name URLs."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def _configure_logging(verbose: int) -> tuple[logging.Handler, int]:
    # The library adds no handler; the command shows errors, and more with -v.
    level = logging.ERROR if verbose <= 0 else logging.WARNING if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("eventmesh_http_sink")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler, previous


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    ensure_std_streams()
    parser, subs = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--demo" in argv and "demo" not in argv:
        argv = ["demo", *(a for a in argv if a != "--demo")]
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            # Unknown options of a subcommand: its usage, not the top-level one.
            subs.get(args.command, parser).unknown(extras)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler, previous_level = _configure_logging(getattr(args, "verbose", 0))
    try:
        code: int = args.func(args)
    except UsageError as exc:
        write_err(f"{PROG} {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        write_err(f"{PROG}: interrupted\n")
        return 130
    except SinkError as exc:
        write_err(f"{PROG} {args.command}: error: {exc}\n")
        return 2
    finally:
        # main() may run in-process (tests, embedding): leave logging as we found it.
        logger = logging.getLogger("eventmesh_http_sink")
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    return code
