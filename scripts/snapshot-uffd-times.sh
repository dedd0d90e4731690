#!/usr/bin/env bash
# PUT /snapshot/load call time, File backend beside Uffd (kite-uffd-handler), at 256 MiB with
# the test guest (kite_test=tick, 1 vCPU): one snapshot, then [rounds] rounds (default 5), each
# loading it once with File and once with Uffd, resume_vm true (curl's time_total: the call
# until the answer, which Kite sends once the vCPUs run). Each Uffd load's handler then
# reports the faults it served in the first second of the guest's run.
# Needs curl, KVM, root (or /dev/userfaultfd access), target/release/kite,
# target/release/kite-uffd-handler and guest-images/out/testguest.elf.
#   scripts/snapshot-uffd-times.sh [rounds]
set -uo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
K=$ROOT/target/release/kite
H=$ROOT/target/release/kite-uffd-handler
G=$ROOT/guest-images/out/testguest.elf
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
$K run --no-acpi --kernel $G --memory 256M --api-sock $D/a.sock --cmdline "kite_test=tick kite_tick_ms=10 kite_n=100000" >/dev/null 2>$D/run.err </dev/null & P=$!
sleep 0.5
curl -s --unix-socket $D/a.sock -X PATCH http://localhost/vm -d '{"state":"Paused"}'
mkdir -p $D/s
curl -s --unix-socket $D/a.sock -X PUT http://localhost/snapshot/create -d "{\"snapshot_path\":\"$D/s/vmstate\",\"mem_file_path\":\"$D/s/memory\"}"
kill $P; wait $P 2>/dev/null
# load-call BACKEND PATH: one load in a fresh `kite run --api-sock`, stopped after a second.
load() {
  rm -f $D/b.sock
  $K run --api-sock $D/b.sock >/dev/null 2>$D/load.err </dev/null & Q=$!
  while [ ! -S $D/b.sock ]; do sleep 0.01; done
  curl -s -o /dev/null -w "$1 load-call %{time_total} s\n" --unix-socket $D/b.sock -X PUT http://localhost/snapshot/load -d "{\"snapshot_path\":\"$D/s/vmstate\",\"mem_backend\":{\"backend_type\":\"$1\",\"backend_path\":\"$2\"},\"resume_vm\":true}"
  sleep 1
  kill $Q; wait $Q 2>/dev/null
}
for _ in $(seq 1 "${1:-5}"); do
  load File $D/s/memory
  rm -f $D/h.sock
  $H $D/h.sock $D/s/memory >$D/h.out 2>/dev/null & R=$!
  while [ ! -S $D/h.sock ]; do sleep 0.01; done
  load Uffd $D/h.sock
  wait $R
  sed 's/^kite-uffd-handler: /Uffd handler: /' $D/h.out
done | tee $D/times
# The median and the fastest of each backend's calls, in ms.
for b in File Uffd; do
  awk -v b=$b '$1 == b && $2 == "load-call" { print $3 * 1000 }' $D/times | sort -n |
    awk -v b=$b '{ v[NR] = $1 } END { if (NR) printf "%s: median %.1f ms, fastest %.1f ms, slowest %.1f ms (%d calls)\n", b, v[int((NR + 1) / 2)], v[1], v[NR], NR }'
done
