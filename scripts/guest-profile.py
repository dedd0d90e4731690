#!/usr/bin/env python3
"""Symbolize a guest profile written by `KITE_GUEST_PROFILE=FILE kite run ...`.

    scripts/guest-profile.py FILE VMLINUX [WINDOW_SECONDS]

FILE has one guest RIP per line, sampled every 2 ms per vCPU. Prints the functions that took
the most samples overall, then the top three in each window of WINDOW_SECONDS (default 2),
so a slow boot shows which kernel code each part of it spends its time in.
"""
import bisect
import collections
import subprocess
import sys

INTERVAL = 0.002


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rips = [int(l, 16) for l in open(sys.argv[1]) if l.strip()]
    window = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    syms = []
    nm = subprocess.run(["nm", "-n", sys.argv[2]], capture_output=True, text=True, check=True)
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            syms.append((int(parts[0], 16), parts[2]))
    addrs = [a for a, _ in syms]

    def name(rip):
        if rip < 0xFFFF_8000_0000_0000:
            return "(user space)"
        i = bisect.bisect_right(addrs, rip) - 1
        return syms[i][1] if i >= 0 else "?"

    names = [name(r) for r in rips]
    total = len(names)
    print(f"{total} samples, about {total * INTERVAL:.1f} s of vCPU time")
    for fn, n in collections.Counter(names).most_common(25):
        print(f"{n:6d} {100 * n / total:5.1f}%  {n * INTERVAL:6.2f} s  {fn}")
    per = int(window / INTERVAL)
    print(f"\nby window of {window} s (top 3):")
    for start in range(0, total, per):
        chunk = collections.Counter(names[start:start + per]).most_common(3)
        desc = ", ".join(f"{fn} {100 * n / len(names[start:start + per]):.0f}%" for fn, n in chunk)
        print(f"{start * INTERVAL:6.1f} s  {desc}")


if __name__ == "__main__":
    main()
