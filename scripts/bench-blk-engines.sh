#!/bin/bash
# virtio-blk's two engines side by side: the test guest's throughput mode (kite_test=virtio-blk
# kite_blk_mode=rand|seq) on the same 64 MiB image as `--disk IMG,io=sync` and
# `--disk IMG,io=uring`, interleaved pair by pair, at queue depths 1, 4 and 32. Prints one line
# per run, then per row the median uring/sync ratio of the pairs. `kite bench virtio-blk` runs
# depth 1 on the sync engine only; this is the engine comparison.
# Usage: scripts/bench-blk-engines.sh [ROUNDS]   (build first: cargo build --release;
# guest-images/testguest/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
kite=target/release/kite
elf=guest-images/out/testguest.elf
[[ -x $kite && -f $elf ]] || { echo "build kite (cargo build --release) and the test guest (guest-images/testguest/build.sh) first" >&2; exit 1; }
img=$(mktemp --tmpdir kite-blk-engines.XXXXXX.img)
trap 'rm -f "$img"' EXIT
head -c $((64 << 20)) /dev/urandom >"$img"
log=$(mktemp --tmpdir kite-blk-engines.XXXXXX.log)
key() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$2"; }
for round in $(seq "$rounds"); do
	for depth in 1 4 32; do
		for engine in sync uring; do
			for mode in "rand 4096 4096" "seq 1048576 64"; do
				read -r m bs n <<<"$mode"
				out=$($kite run --kernel "$elf" --no-acpi --memory 256M --disk "$img,io=$engine" \
					--cmdline "kite_test=virtio-blk kite_blk_mode=$m kite_blk_bs=$bs kite_blk_depth=$depth kite_n=$n" 2>&1 |
					grep "KITE-TEST virtio-blk ok" || true)
				[[ -n $out ]] || { echo "round $round depth $depth $engine $m: no result" >&2; continue; }
				echo "round=$round depth=$depth engine=$engine mode=$m write_iops=$(key write_iops "$out") read_iops=$(key read_iops "$out")" | tee -a "$log"
			done
		done
	done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$log" <<'PY'
import statistics, sys
rows = [dict(kv.split("=") for kv in l.split()) for l in open(sys.argv[1])]
def pick(r, d, m, e):
    return next((x for x in rows if (x["round"], x["depth"], x["mode"], x["engine"]) == (r, d, m, e)), None)
for d in ["1", "4", "32"]:
    for m in ["rand", "seq"]:
        for k in ["write_iops", "read_iops"]:
            ratios = []
            for r in sorted({x["round"] for x in rows}):
                s, u = pick(r, d, m, "sync"), pick(r, d, m, "uring")
                if s and u and int(s[k]) > 0:
                    ratios.append(int(u[k]) / int(s[k]))
            if ratios:
                print(f"depth={d:>2} {m:4} {k:10} uring/sync median {statistics.median(ratios):.2f} "
                      f"(pairs: {' '.join(f'{x:.2f}' for x in ratios)})")
PY
rm -f "$log"
