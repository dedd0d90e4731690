#!/usr/bin/env bash
# Snapshot times at 256 MiB with the test guest (kite_test=tick, 1 vCPU), in rounds; each round,
# for each Kite binary given (in turn, so that drift of the machine hits all alike):
#   create:    PUT /snapshot/create on the paused VM (curl's time);
#   restore:   `kite restore` process start to the first guest instruction (--timeline);
#   boot:      the same for a fresh boot, for comparison;
#   load-call: PUT /snapshot/load with resume_vm, on a `kite run --api-sock` waiting (curl's time).
# At the end: the median, min and max of each figure per binary, and the load average before
# and after (absolute times on a shared machine follow its load; compare binaries side by side).
# Needs curl, KVM and guest-images/out/testguest.elf.
#   scripts/snapshot-times.sh [rounds] [KITE...]      (default: 5 rounds, target/release/kite)
set -uo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${1:-5}
shift || true
BINS=("$@")
[ ${#BINS[@]} -eq 0 ] && BINS=("$ROOT/target/release/kite")
G=$ROOT/guest-images/out/testguest.elf
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
OUT=$D/figures
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
first_insn() { grep -E "timeline: .* first guest instruction" | awk '{print $3}'; }
for _ in $(seq 1 "$ROUNDS"); do
  for i in "${!BINS[@]}"; do
    K=${BINS[$i]}
    rm -rf "$D/s" "$D/a.sock" "$D/b.sock"
    "$K" run --no-acpi --kernel "$G" --memory 256M --api-sock "$D/a.sock" \
      --cmdline "kite_test=tick kite_tick_ms=10 kite_n=100000" >/dev/null 2>"$D/run.err" </dev/null &
    P=$!
    while [ ! -S "$D/a.sock" ]; do sleep 0.01; done
    sleep 0.2
    curl -s --unix-socket "$D/a.sock" -X PATCH http://localhost/vm -d '{"state":"Paused"}'
    mkdir -p "$D/s"
    curl -s -o /dev/null -w "$i create-call %{time_total}\n" --unix-socket "$D/a.sock" -X PUT \
      http://localhost/snapshot/create \
      -d "{\"snapshot_path\":\"$D/s/vmstate\",\"mem_file_path\":\"$D/s/memory\"}" >>"$OUT"
    kill $P; wait $P 2>/dev/null
    echo "$i restore $("$K" restore "$D/s" --timeout 1 --timeline 2>&1 >/dev/null | first_insn)" >>"$OUT"
    echo "$i boot $("$K" run --no-acpi --kernel "$G" --memory 256M --timeout 1 --timeline \
      --cmdline "kite_test=tick" 2>&1 >/dev/null | first_insn)" >>"$OUT"
    "$K" run --api-sock "$D/b.sock" >/dev/null 2>"$D/load.err" </dev/null &
    Q=$!
    while [ ! -S "$D/b.sock" ]; do sleep 0.01; done
    curl -s -o /dev/null -w "$i load-call %{time_total}\n" --unix-socket "$D/b.sock" -X PUT \
      http://localhost/snapshot/load \
      -d "{\"snapshot_path\":\"$D/s/vmstate\",\"mem_backend\":{\"backend_type\":\"File\",\"backend_path\":\"$D/s/memory\"},\"resume_vm\":true}" >>"$OUT"
    kill $Q; wait $Q 2>/dev/null
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in "${!BINS[@]}"; do
  echo "${BINS[$i]}:"
  for what in create-call restore boot load-call; do
    # curl gives seconds, the timeline ms: all in ms.
    awk -v i="$i" -v w="$what" '$1 == i && $2 == w && $3 != "" {
        v = (w ~ /-call$/) ? $3 * 1000 : $3; print v }' "$OUT" | sort -g |
      awk -v w="$what" '{ a[NR] = $1 } END { if (NR == 0) { print "  " w ": no figures"; exit }
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "  %-12s median %7.2f ms  min %7.2f  max %7.2f  (n=%d)\n", w, m, a[1], a[NR], NR }'
  done
done
