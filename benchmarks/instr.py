"""Instructions and allocations per call of a micro path, under callgrind: robust to a busy machine.

``python benchmarks/instr.py --setup "from eventmesh_http_sink import ConnectRecord" "ConnectRecord(1)"``

Runs the statement N1 and N2 times in two interpreters under ``valgrind
--tool=callgrind`` and prints the difference divided by N2 - N1: the cost of
one call without start-up, as instructions (Ir) and Python allocator calls.
Wall-clock micro benchmarks swing 2x when other processes share the cores;
instruction counts do not. ``--package-root DIR`` (repeatable) measures the
same statement against other checkouts, side by side (e.g. a worktree of the
commit before a change).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from profile_record import _callgrind_totals  # noqa: E402 - benchmarks/ is on sys.path just above

_CHILD = """
import sys
sys.path.insert(0, {root!r})
{setup}
def _run():
    for _ in range({n}):
        {stmt}
_run()
"""


def cost(root: str, setup: str, stmt: str, n1: int, n2: int) -> tuple[float, float]:
    """(instructions, Python allocations) per execution of ``stmt`` with the package of ``root``."""
    figures = []
    with tempfile.TemporaryDirectory(prefix="emhs-instr-") as tmp:
        for n in (n1, n2):
            out = f"{tmp}/cg.{n}"
            code = _CHILD.format(root=root, setup=setup, stmt=stmt, n=n)
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
            subprocess.run([*cmd, sys.executable, "-c", code], check=True, capture_output=True)
            figures.append(_callgrind_totals(out))
    (i1, a1, _), (i2, a2, _) = figures
    return (i2 - i1) / (n2 - n1), (a2 - a1) / (n2 - n1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stmt")
    p.add_argument("--setup", default="")
    p.add_argument("--package-root", action="append", help="checkout(s) to compare; default: this one")
    p.add_argument("--n", default="2000,12000", help="the two iteration counts")
    args = p.parse_args()
    n1, n2 = (int(x) for x in args.n.split(","))
    roots = args.package_root or [str(HERE.parent)]
    for root in roots:
        ir, allocs = cost(root, args.setup, args.stmt, n1, n2)
        print(f"{ir:>10,.0f} instructions {allocs:>6.1f} allocations per call  ({root})")


if __name__ == "__main__":
    main()
