#!/usr/bin/env bash
# Snapshot times at 256 MiB with the test guest (kite_test=tick, 1 vCPU), five rounds, each:
#   create: PUT /snapshot/create on the paused VM (curl's time, and Kite's own log line);
#   restore: `kite restore` process start to the first guest instruction (--timeline), next
#            to a fresh boot's;
#   load-call: PUT /snapshot/load with resume_vm, on a `kite run --api-sock` waiting.
# Needs curl, KVM, target/release/kite and guest-images/out/testguest.elf.
#   scripts/snapshot-times.sh [rounds]
set -uo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
K=$ROOT/target/release/kite
G=$ROOT/guest-images/out/testguest.elf
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
for _ in $(seq 1 "${1:-5}"); do
  rm -rf $D/s $D/a.sock $D/b.sock
  $K run --no-acpi --kernel $G --memory 256M --api-sock $D/a.sock --cmdline "kite_test=tick kite_tick_ms=10 kite_n=100000" >/dev/null 2>$D/run.err </dev/null & P=$!
  sleep 0.5
  curl -s --unix-socket $D/a.sock -X PATCH http://localhost/vm -d '{"state":"Paused"}'
  mkdir -p $D/s
  /usr/bin/time -f "create-call %e s" curl -s --unix-socket $D/a.sock -X PUT http://localhost/snapshot/create -d "{\"snapshot_path\":\"$D/s/vmstate\",\"mem_file_path\":\"$D/s/memory\"}" 2>&1
  grep "snapshot written" $D/run.err | sed 's/.*in /create (Kite log): /'
  kill $P; wait $P 2>/dev/null
  # process start to first guest instruction, kite restore
  $K restore $D/s --timeout 1 --timeline 2>&1 >/dev/null | grep -E "first guest instruction" | sed 's/^/restore: /'
  # fresh boot for comparison
  $K run --no-acpi --kernel $G --memory 256M --timeout 1 --timeline --cmdline "kite_test=tick" 2>&1 >/dev/null | grep -E "first guest instruction" | sed 's/^/boot: /'
  # API: snapshot/load call time (resume_vm true)
  $K run --api-sock $D/b.sock >/dev/null 2>$D/load.err </dev/null & Q=$!
  while [ ! -S $D/b.sock ]; do sleep 0.01; done
  curl -s -o /dev/null -w "load-call %{time_total} s\n" --unix-socket $D/b.sock -X PUT http://localhost/snapshot/load -d "{\"snapshot_path\":\"$D/s/vmstate\",\"mem_backend\":{\"backend_type\":\"File\",\"backend_path\":\"$D/s/memory\"},\"resume_vm\":true}"
  kill $Q; wait $Q 2>/dev/null
done
