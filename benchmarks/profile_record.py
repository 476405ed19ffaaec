"""Profile of one record's life, ``put`` to callback: ``python benchmarks/profile_record.py``.

For each scheme (http, https: loopback nginx, see ``servers.py``) and each
``max_workers`` (1, 4, 16), fresh interpreters run the same workload as
``compare.py``'s connector client (``put`` of ~150-byte JSON records with a
counting callback, then ``flush``) and report, **per delivered record**:

* ``measure``: wall rate, CPU µs (user + system, all threads, ``getrusage``),
  of which the caller's thread (``time.thread_time``), context switches
  (voluntary = a thread slept: lock, Condition, queue or socket wait;
  involuntary = preempted), and the worker loops running at the end.
* ``locks`` (a separate run: the shim slows everything): every
  ``threading.Lock``/``RLock``, ``Condition`` and ``Event`` the process creates
  after start-up (the connector's, ``concurrent.futures``', urllib3's pool
  queue...) is a counting wrapper; lock acquisitions, the contended ones (the
  lock was held: the thread had to sleep or spin), and ``Condition.wait`` calls
  (a thread going to sleep to be woken by a notify), each by the place that
  created the lock. The GIL and C-level waits (``SimpleQueue.get``, socket
  reads) are not Python locks: the context switches above count those.
* ``valgrind`` (``--valgrind``, slow): ``callgrind`` instruction count and
  allocation calls (``_PyObject_Malloc``/``Calloc``/``Realloc``: every Python
  object and buffer, big ones included; ``malloc`` called from outside Python's
  allocator: OpenSSL, llhttp...) of two runs of different sizes; the difference
  divided by the extra records is the per-record cost without start-up.
* ``py-spy`` (``--pyspy``): ``py-spy record --gil`` (only the thread holding the
  GIL is sampled: where the Python CPU goes), summarised as GIL-held time per
  stage of the record's path and the top functions by own time.

The profile describes whatever the checkout's connector does; ``--package-root``
profiles another checkout (e.g. after the core rewrite, against the old one).
Output: a report on stdout (Markdown tables), ``--json FILE`` for the raw figures.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# -- the lock shim (child, mode "locks" only) ------------------------------------------------

_SITES: dict[str, dict[str, Any]] = {}  # creation site -> {"acq", "contended", "waits"} counters


def _site() -> str:
    """Where a lock was created: the first frame outside threading.py and this file."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.endswith(("threading.py", "profile_record.py")):
        frame = frame.f_back
    if frame is None:
        return "?"
    code = frame.f_code
    name = code.co_filename
    for marker in ("eventmesh_http_sink/", "site-packages/", "lib/python3.11/"):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f"{name}:{frame.f_lineno} {code.co_name}"


def _counters(site: str) -> dict[str, Any]:
    # dict.setdefault is atomic under the GIL; itertools.count's __next__ too:
    # no count is lost whatever the threads do.
    return _SITES.setdefault(
        site, {"acq": itertools.count(), "contended": itertools.count(), "waits": itertools.count()}
    )


class _CountingLock:
    """A Lock or RLock that counts its acquisitions, and those that found it held."""

    __slots__ = ("_acq", "_contended", "_l")

    def __init__(self, inner: Any, site: str) -> None:
        self._l = inner
        c = _counters(site)
        self._acq = c["acq"].__next__
        self._contended = c["contended"].__next__

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self._acq()
        if self._l.acquire(False):
            return True
        if not blocking:
            return False
        self._contended()
        return bool(self._l.acquire(True, timeout))

    def __enter__(self) -> bool:
        return self.acquire()

    def release(self) -> None:
        self._l.release()

    def __exit__(self, *exc: object) -> None:
        self._l.release()

    def locked(self) -> bool:
        return bool(self._l.locked())

    def _at_fork_reinit(self) -> None:
        self._l._at_fork_reinit()


class _CountingRLock(_CountingLock):
    """An RLock, with the protocol Condition uses for one (a plain lock has none)."""

    __slots__ = ()

    def _is_owned(self) -> bool:
        return bool(self._l._is_owned())

    def _release_save(self) -> Any:
        return self._l._release_save()

    def _acquire_restore(self, state: Any) -> None:
        self._acq()
        self._l._acquire_restore(state)


def install_lock_shim() -> None:
    """Replace threading's lock factories by counting ones (before the libraries are imported)."""
    import _thread

    raw_lock, raw_rlock = _thread.allocate_lock, _thread.RLock
    base_condition = threading.Condition

    def lock() -> _CountingLock:
        return _CountingLock(raw_lock(), _site())

    def rlock(*args: Any, **kwargs: Any) -> _CountingRLock:
        return _CountingRLock(raw_rlock(), _site())

    def waiter() -> Any:  # Condition.wait's per-wait lock: not worth counting on its own
        return raw_lock()

    class Condition(base_condition):  # type: ignore[valid-type,misc]
        def __init__(self, lock: Any = None) -> None:
            site = _site()
            super().__init__(lock if lock is not None else _CountingRLock(raw_rlock(), site))
            self._count_wait = _counters(site)["waits"].__next__

        def wait(self, timeout: float | None = None) -> bool:
            self._count_wait()
            return bool(super().wait(timeout))

    threading.Lock = lock  # type: ignore[misc,assignment]
    threading.RLock = rlock  # type: ignore[assignment]
    threading.Condition = Condition  # type: ignore[misc]
    threading._allocate_lock = waiter  # type: ignore[attr-defined]


def _read_sites() -> dict[str, dict[str, int]]:
    # A counter's next value is how often it was called (reading it adds one we subtract).
    out = {}
    for site, c in list(_SITES.items()):
        out[site] = {k: next(v) for k, v in c.items()}
    return out


# -- the child: one measured run ---------------------------------------------------------------


def _cpu() -> tuple[float, int, int]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime, u.ru_nvcsw, u.ru_nivcsw


def child(args: argparse.Namespace) -> None:
    if args.package_root:
        sys.path.insert(0, args.package_root)
    if args.mode == "locks":
        install_lock_shim()
    import gc

    from workload import Count, make_record

    from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector

    n = args.records
    callback = Count()
    options: dict[str, Any] = {"ca_certs": args.ca} if args.ca else {}
    config = HttpSinkConfig(args.url, max_workers=int(args.workers), max_pending=max(10_000, n), **options)
    with HttpSinkConnector(config) as sink:
        for _ in range(4):  # warm-up: connections, TLS, threads, the adaptive limit
            for i in range(max(200, int(args.workers) * 8)):
                sink.put(ConnectRecord(make_record(-i), callback=callback))
            sink.flush()
        callback.ok = 0
        gc.collect()
        before_sites = _read_sites() if args.mode == "locks" else {}
        caller0 = time.thread_time()
        cpu0, vol0, invol0 = _cpu()
        t0 = time.perf_counter()
        run_records(sink, ConnectRecord, make_record, callback, n)
        wall = time.perf_counter() - t0
        cpu1, vol1, invol1 = _cpu()
        caller = time.thread_time() - caller0
        after_sites = _read_sites() if args.mode == "locks" else {}
        # Profiling only: the loops the adaptive limit allowed (the runtime's dispatcher).
        process = getattr(sink, "_process", None)
        rt = process.current() if process is not None else getattr(sink, "_rt", None)
        dispatcher = getattr(rt, "dispatcher", rt)
        limit = getattr(getattr(dispatcher, "limit", None), "limit", None)
        threads = threading.active_count()
    sites = {}
    for site, after in after_sites.items():
        prev = before_sites.get(site, {"acq": 0, "contended": 0, "waits": 0})
        # Each _read_sites() call advanced every counter by one.
        delta = {k: after[k] - prev.get(k, -1) - 1 for k in after}
        if any(delta.values()):
            sites[site] = delta
    ok = callback.ok
    print(
        json.dumps(
            {
                "records": ok,
                "failed": callback.failed,
                "wall": wall,
                "rate": ok / wall,
                "cpu_us": (cpu1 - cpu0) / ok * 1e6,
                "caller_cpu_us": caller / ok * 1e6,
                "voluntary_cs": (vol1 - vol0) / ok,
                "involuntary_cs": (invol1 - invol0) / ok,
                "limit": limit,
                "threads": threads,
                "sites": sites,
            }
        )
    )


def run_records(sink: Any, record_type: Any, make_record: Any, callback: Any, n: int) -> None:
    """The measured part (py-spy's summary keys on this name): ``n`` puts, then flush."""
    put = sink.put
    for i in range(n):
        put(record_type(make_record(i), callback=callback))
    sink.flush()


# -- the parent ----------------------------------------------------------------------------------


def _child_cmd(
    args: argparse.Namespace, mode: str, url: str, ca: str | None, workers: int, n: int
) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--url", url]
    cmd += ["--records", str(n), "--workers", str(workers)]
    if ca:
        cmd += ["--ca", ca]
    if args.package_root:
        cmd += ["--package-root", args.package_root]
    return cmd


def _run(cmd: list[str], timeout: float = 1800) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... failed:\n{out.stderr[-3000:]}")
    # py-spy and valgrind may print after the child: its line is the last JSON object.
    line = next(ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} records failed")
    return result


def measure(args: argparse.Namespace, url: str, ca: str | None, workers: int) -> dict[str, Any]:
    """Median over ``--rounds`` plain runs, key by key."""
    runs = [_run(_child_cmd(args, "measure", url, ca, workers, args.records)) for _ in range(args.rounds)]
    keys = ["rate", "cpu_us", "caller_cpu_us", "voluntary_cs", "involuntary_cs"]
    out: dict[str, Any] = {k: _median([r[k] for r in runs]) for k in keys}
    out["limit"] = runs[-1]["limit"]
    out["threads"] = runs[-1]["threads"]
    return out


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def locks(args: argparse.Namespace, url: str, ca: str | None, workers: int) -> dict[str, Any]:
    n = args.lock_records
    res = _run(_child_cmd(args, "locks", url, ca, workers, n))
    sites = {s: {k: v / n for k, v in c.items()} for s, c in res["sites"].items()}
    total = {k: sum(c[k] for c in sites.values()) for k in ("acq", "contended", "waits")}
    return {"per_record": total, "sites": sites, "voluntary_cs": res["voluntary_cs"]}


_ALLOC_FNS = ("_PyObject_Malloc", "_PyObject_Calloc", "_PyObject_Realloc")


def _callgrind_totals(path: str) -> tuple[int, int, int]:
    """(instructions, Python allocator calls, malloc calls not from Python's allocator) of one file."""
    names: dict[str, str] = {}
    total = 0
    py_allocs = 0
    ext_mallocs = 0
    current_fn = ""
    target = ""
    name_re = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
                continue
            m = name_re.match(line.rstrip("\n"))
            if m:
                kind, ident, name = m.groups()
                if name:
                    names[ident] = name
                if kind == "fn":
                    current_fn = names.get(ident, "")
                else:
                    target = names.get(ident, "")
                continue
            if line.startswith("calls="):
                calls = int(line[6:].split()[0])
                if target in _ALLOC_FNS:
                    py_allocs += calls
                elif target == "malloc" and not current_fn.startswith(("_PyObject_", "_PyMem")):
                    ext_mallocs += calls
    return total, py_allocs, ext_mallocs


def valgrind(args: argparse.Namespace, url: str, ca: str | None, workers: int) -> dict[str, Any] | None:
    if shutil.which("valgrind") is None:
        return None
    small, large = args.valgrind_records
    figures = []
    with tempfile.TemporaryDirectory(prefix="emhs-callgrind-") as tmp:
        for n in (small, large):
            out = f"{tmp}/cg.{n}"
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
            _run(cmd + _child_cmd(args, "measure", url, ca, workers, n), timeout=3600)
            figures.append(_callgrind_totals(out))
    extra = large - small
    (i1, a1, m1), (i2, a2, m2) = figures
    return {
        "instructions": (i2 - i1) / extra,
        "py_allocs": (a2 - a1) / extra,
        "ext_mallocs": (m2 - m1) / extra,
    }


# Stages of the record's path, by the function a GIL-held sample is in (innermost match wins
# within a thread's stack: a sample inside encode_request under send counts as "request head").
STAGES = [
    (
        "caller: build ConnectRecord (id, validators) + make_record",
        ("__init__ (<attrs generated", "make_record", "_new_record_id", "_check_"),
    ),
    ("caller: put -> encode record (json.dumps, extensions)", ("encode_data", "encode_extensions")),
    ("caller: put -> Future, headers, context", ("_prepare",)),
    (
        "caller: put -> accept + hand to a worker",
        ("_submit", "_enqueue", "_spawn", "_dispatch", "_send_unit"),
    ),
    ("worker: loop, take a record", ("_work",)),
    ("worker: request head (encode_request)", ("encode_request", "RequestHeads.encode")),
    ("worker: urllib3 pool take/give back", ("take", "give_back", "_get_conn", "_put_conn")),
    (
        "worker: sendall + recv + llhttp callbacks",
        ("exchange", "on_header", "on_body", "on_message", "on_headers", "on_status", "on_chunk"),
    ),
    ("worker: transport.send (rest)", ("send (eventmesh_http_sink/wire/transport.py",)),
    ("worker: attempt (choose URL, SendResult, hooks)", ("_attempt",)),
    ("worker: resolve (lock, metrics, set_result)", ("_resolve", "outcome (", "set_result")),
    (
        "worker: done-callback (user callback, counters, notify)",
        ("_on_done", "on_success", "_invoke_callbacks"),
    ),
    ("caller: flush / other", ("flush", "run_records")),
]


def _stage(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for label, keys in STAGES:
            if any(k in frame for k in keys):
                return label
    return "other (start-up, threads, GC)"


def pyspy(args: argparse.Namespace, url: str, ca: str | None, workers: int) -> dict[str, Any] | None:
    binary = shutil.which("py-spy")
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="emhs-pyspy-") as tmp:
        out = f"{tmp}/stacks.txt"
        cmd = [binary, "record", "--gil", "-r", "200", "--format", "raw", "-o", out, "--"]
        _run(cmd + _child_cmd(args, "measure", url, ca, workers, args.pyspy_records), timeout=1800)
        lines = Path(out).read_text().splitlines()
    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        stack = stack_text.split(";")
        # Only the measured part: the caller inside run_records, workers inside their loop or batches.
        if not any(k in f for f in stack for k in ("run_records", "_work ", "_attempt_batch", "_worker ")):
            continue
        count = int(count_text)
        total += count
        stages[_stage(stack)] += count
        leaves[_short(stack[-1])] += count
    return {
        "samples": total,
        "stages": {k: v / total for k, v in stages.most_common()},
        "top": {k: v / total for k, v in leaves.most_common(args.top)},
    }


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    m = re.match(r"^(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    func, path, _ = m.groups()
    return f"{func} ({Path(path).name})"


# -- report ------------------------------------------------------------------------------------


def report(results: dict[str, dict[int, dict[str, Any]]]) -> None:
    for scheme, by_workers in results.items():
        ws = list(by_workers)
        print(f"\n### {scheme}\n")
        print("| per delivered record | " + " | ".join(f"{w} workers" for w in ws) + " |")
        print("| --- |" + " ---: |" * len(ws))

        def row(label: str, get: Any, fmt: str, ws: list[int] = ws, by_workers: Any = by_workers) -> None:
            cells = []
            for w in ws:
                try:
                    value = get(by_workers[w])
                except (KeyError, TypeError):
                    value = None
                cells.append("-" if value is None else format(value, fmt))
            print(f"| {label} | " + " | ".join(cells) + " |")

        row("records/s (wall, noisy)", lambda r: r["measure"]["rate"], ",.0f")
        row("CPU µs (all threads)", lambda r: r["measure"]["cpu_us"], ".1f")
        row("... of which the caller's thread", lambda r: r["measure"]["caller_cpu_us"], ".1f")
        row("context switches, voluntary (sleeps)", lambda r: r["measure"]["voluntary_cs"], ".2f")
        row("context switches, involuntary", lambda r: r["measure"]["involuntary_cs"], ".2f")
        row("worker loops allowed at the end (adaptive limit)", lambda r: r["measure"]["limit"], "")
        row("Python lock acquisitions", lambda r: r["locks"]["per_record"]["acq"], ".2f")
        row("... found held (contended)", lambda r: r["locks"]["per_record"]["contended"], ".2f")
        row(
            "Condition waits (a thread sleeps for a notify)",
            lambda r: r["locks"]["per_record"]["waits"],
            ".2f",
        )
        row("instructions (callgrind)", lambda r: r["valgrind"]["instructions"], ",.0f")
        row("Python allocations (pymalloc calls)", lambda r: r["valgrind"]["py_allocs"], ".0f")
        row("malloc calls from C libraries", lambda r: r["valgrind"]["ext_mallocs"], ".1f")
        # Lock sites: union over workers, sorted by acquisitions at the largest worker count.
        locked = [r["locks"]["sites"] for r in by_workers.values() if "locks" in r]
        sites = sorted(
            {s for r in locked for s in r}, key=lambda s: -max(r.get(s, {}).get("acq", 0) for r in locked)
        )
        if sites:
            print(f"\nLock acquisitions per record by where the lock was made ({scheme}, contended):")
            print()
            print("| lock made at | " + " | ".join(f"{w} workers" for w in ws) + " |")
            print("| --- |" + " ---: |" * len(ws))
            for s in sites[:12]:
                cells = []
                for w in ws:
                    c = by_workers[w].get("locks", {}).get("sites", {}).get(s)
                    if not c or c["acq"] < 0.005:
                        cells.append("-")
                    else:
                        wait = f", {c['waits']:.2f} waits" if c["waits"] >= 0.005 else ""
                        cells.append(f"{c['acq']:.2f} ({c['contended']:.2f}{wait})")
                print(f"| `{s}` | " + " | ".join(cells) + " |")
        spied = [w for w in ws if by_workers[w].get("pyspy")]
        if spied:
            print(f"\nGIL-held samples by stage ({scheme}, py-spy --gil, share of the measured part):\n")
            print("| stage | " + " | ".join(f"{w} workers" for w in spied) + " |")
            print("| --- |" + " ---: |" * len(spied))
            labels = [label for label, _ in STAGES] + ["other (start-up, threads, GC)"]
            for label in labels:
                cells = [by_workers[w]["pyspy"]["stages"].get(label, 0.0) for w in spied]
                if max(cells) >= 0.005:
                    print(f"| {label} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
            w = spied[-1]
            print(f"\nTop functions by own GIL-held time ({scheme}, {w} workers):\n")
            print("| function | share |")
            print("| --- | ---: |")
            for func, share in by_workers[w]["pyspy"]["top"].items():
                print(f"| `{func}` | {share:.1%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", choices=["measure", "locks"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--ca", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--schemes", default="http,https")
    p.add_argument("--workers", default="1,4,16", help="max_workers values (comma-separated)")
    p.add_argument("--records", type=int, default=20_000, help="records per measured run")
    p.add_argument("--rounds", type=int, default=3, help="measured runs per cell (median)")
    p.add_argument("--lock-records", type=int, default=5_000)
    p.add_argument(
        "--parts", default="measure,locks", help="measure,locks: the plain runs and the lock-counting run"
    )
    p.add_argument("--valgrind", action="store_true", help="also count instructions and allocations (slow)")
    p.add_argument("--valgrind-records", default="300,1300", help="the two run sizes of the difference")
    p.add_argument("--pyspy", action="store_true", help="also sample GIL-held stacks with py-spy")
    p.add_argument("--pyspy-records", type=int, default=30_000)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--package-root", help="profile eventmesh_http_sink from this checkout")
    p.add_argument("--json", help="write the raw figures here")
    args = p.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    args.valgrind_records = [int(x) for x in args.valgrind_records.split(",")]
    from servers import start_fast_server

    results: dict[str, dict[int, dict[str, Any]]] = {}
    for scheme in args.schemes.split(","):
        results[scheme] = {}
        with start_fast_server(tls=scheme == "https") as server:
            print(f"== {scheme}: {server.name} at {server.url}", file=sys.stderr, flush=True)
            for w in (int(x) for x in args.workers.split(",")):
                cell: dict[str, Any] = {}
                if "measure" in args.parts:
                    cell["measure"] = measure(args, server.url, server.ca_file, w)
                if "locks" in args.parts:
                    cell["locks"] = locks(args, server.url, server.ca_file, w)
                if args.valgrind:
                    cell["valgrind"] = valgrind(args, server.url, server.ca_file, w)
                if args.pyspy:
                    cell["pyspy"] = pyspy(args, server.url, server.ca_file, w)
                results[scheme][w] = cell
                brief = {k: v for k, v in cell.items() if k in ("measure", "valgrind")}
                print(f"   {w} workers: {json.dumps(brief)}", file=sys.stderr, flush=True)
    import platform

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {when}")
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
