#!/usr/bin/env bash
# What a workload costs the guest in exits, counted on both sides: for each VMM given (Kite and,
# say, a Firecracker binary), one `kite bench --peer` run of the workloads under `perf record -e
# kvm:kvm_mmio`, then per run: the guest's notifications per virtio queue (QueueNotify writes,
# by queue index), its interrupt-status reads (one per virtio interrupt it takes) and its exits
# to user space. Every notification is an exit (tens of microseconds where KVM emulates guest
# ring 0), so these counts explain most differences between two VMMs on the virtio rows.
#   scripts/notify-counts.sh VMM [VMM...] [-- WORKLOAD...]   (default workload: virtio-vsock)
# Each VMM is run as `kite bench`'s peer (Firecracker's flags, `--config-file`, `--no-api`); give
# Kite itself through a link named `firecracker` to count Kite. Needs perf with the kvm
# tracepoints, root, KVM and the test guest (built by `kite bench` if missing).
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
KITE=${KITE:-$ROOT/target/release/kite}
VMMS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do VMMS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(virtio-vsock)
if [ ${#VMMS[@]} -eq 0 ]; then
  echo "usage: scripts/notify-counts.sh VMM [VMM...] [-- WORKLOAD...]" >&2
  exit 2
fi
command -v perf >/dev/null || { echo "notify-counts: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
D=$(mktemp -d); [ -n "${KEEP:-}" ] && echo "kept: $D"
trap '[ -n "${KEEP:-}" ] || rm -rf "$D"' EXIT
for i in "${!VMMS[@]}"; do
  vmm=$(cd -- "$(dirname -- "${VMMS[$i]}")" && pwd)/$(basename -- "${VMMS[$i]}")
  mkdir -p "$D/$i"
  # The wrapper keeps argv[0]'s name (`firecracker`) for a Kite link: exec -a.
  cat >"$D/$i/wrap" <<EOF
#!/usr/bin/env bash
n=\$(ls "$D/$i" | grep -c '\.data\$' || true)
exec perf record -q -o "$D/$i/\$n.data" -e kvm:kvm_mmio -- "$vmm" "\$@"
EOF
  chmod +x "$D/$i/wrap"
  "$KITE" bench --peer "$D/$i/wrap" --runs 1 "${WORKLOADS[@]}" >"$D/$i/bench.txt" 2>&1 || {
    cat "$D/$i/bench.txt" >&2
    exit 1
  }
  echo "== ${VMMS[$i]}"
  for data in $(ls "$D/$i"/*.data | sort -V); do
    # kvm_mmio lines: "mmio write len 4 gpa 0x... val 0x...". Virtio-mmio's QueueNotify is at
    # offset 0x50 of a device's window, InterruptStatus at 0x60.
    perf script -i "$data" 2>/dev/null | awk -v run="$(basename "$data" .data)" '
      /mmio write/ && $0 ~ /gpa 0x[0-9a-f]*050 / { q[$NF]++ }
      /mmio read/ && $0 ~ /gpa 0x[0-9a-f]*060 / { isr++ }
      END {
        printf "run %s: notifications", run
        for (k in q) printf " queue %s: %d,", k, q[k]
        printf " interrupts taken: %d\n", isr
      }'
  done
done
echo "workloads: ${WORKLOADS[*]} (runs in the order kite bench lists them, one per workload row)"
