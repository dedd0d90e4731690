#!/usr/bin/env python3
"""Whole-process cost of `kite run` (the test guest's `hello`), two builds side by side.

    scripts/compare-startup.py REV [--runs N] [--sizes 64M,256M,1G,4G,16G] [--same-guest]

Builds Kite and the test guest at git revision REV (in a worktree under
$KITE_CACHE_DIR/compare, kept for next time), and the working tree's as they are, then runs
both, interleaved run by run, for each guest RAM size: wall time from spawn to exit, peak RSS
of the Kite process (VmHWM, from its own memory line: wait4's ru_maxrss would include the
forked Python before exec) and its CPU time (wait4's rusage). Prints the median of each and the
after/before ratio. Run it on a quiet machine; the ratios are what to quote.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(tree: Path) -> tuple[Path, Path]:
    """Kite (release) and the test guest of the source tree `tree`."""
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=tree, check=True)
    guest = subprocess.run(
        [str(tree / "guest-images/testguest/build.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return tree / "target/release/kite", Path(guest)


def checkout(rev: str) -> Path:
    cache = Path(os.environ.get("KITE_CACHE_DIR", Path.home() / ".cache/kite"))
    sha = subprocess.run(
        ["git", "rev-parse", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = cache / "compare" / sha[:12]
    if not tree.exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True
        )
    return tree


def one(kite: Path, guest: Path, memory: str) -> tuple[float, float, float]:
    """Wall ms, peak RSS MiB, CPU ms of one hello run."""
    args = [str(kite), "run", "--no-acpi", "--memory", memory, "--kernel", str(guest),
            "--cmdline", "kite_test=hello"]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=log)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = (time.perf_counter() - start) * 1e3
        log.seek(0)
        err = log.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or b"KITE-TEST hello ok" not in out:
        sys.exit(f"compare-startup: {kite} at {memory} failed (exit {proc.returncode})")
    rss = re.search(rb"peak RSS ([0-9.]+) MiB", err)
    if not rss:
        sys.exit(f"compare-startup: {kite} printed no 'peak RSS' line")
    return wall, float(rss.group(1)), (usage.ru_utime + usage.ru_stime) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the 'before' git revision, e.g. a commit or main~3")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--sizes", default="64M,256M,1G,4G,16G")
    p.add_argument("--same-guest", action="store_true",
                   help="run both Kites with the working tree's test guest, to tell Kite's "
                        "changes from the guest's")
    a = p.parse_args()
    print(f"building {a.rev} and the working tree ...", file=sys.stderr)
    before = build(checkout(a.rev))
    after = build(ROOT)
    if a.same_guest:
        before = (before[0], after[1])
    print(f"hello, median of {a.runs} interleaved runs; wall = spawn to exit")
    print(f"{'guest RAM':>9}  {'wall ms before':>14} {'after':>7} {'ratio':>6}"
          f"  {'peak RSS MiB before':>19} {'after':>6}  {'CPU ms before':>13} {'after':>6}")
    for size in a.sizes.split(","):
        b, f = [], []
        for _ in range(a.runs):
            b.append(one(*before, size))
            f.append(one(*after, size))
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        print(f"{size:>9}  {med(b, 0):>14.1f} {med(f, 0):>7.1f} {med(f, 0) / med(b, 0):>6.2f}"
              f"  {med(b, 1):>19.1f} {med(f, 1):>6.1f}  {med(b, 2):>13.1f} {med(f, 2):>6.1f}")


if __name__ == "__main__":
    main()
