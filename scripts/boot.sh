#!/usr/bin/env bash
# Build everything needed on a fresh machine and boot the default Linux guest on this terminal:
# a busybox shell on the console. 'exit' or 'reboot -f' in the guest, or Ctrl-C here, ends it.
#   scripts/boot.sh [--fresh] [extra kite run arguments...]
# On a host whose KVM emulates guest ring 0 (no VT-x/AMD-V under it), Kite says so in one line
# and applies its workarounds; Linux then takes about half a minute to reach the shell.
#
# Snapshot cache: without extra arguments, the first boot snapshots the guest once its shell is
# up (kite snapshot, into the cache below, keyed by the kernel, the initramfs, the machine and
# the kite binary), and later runs restore that shell in well under a second (kite restore),
# saying so in one line. --fresh boots from scratch (and makes the snapshot again).
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

fresh=0
if [ "${1-}" = "--fresh" ]; then
	fresh=1
	shift
fi

"$ROOT/guest-images/build.sh"
cargo build --release --manifest-path "$ROOT/Cargo.toml" --quiet

KITE=$ROOT/target/release/kite
OUT=$ROOT/guest-images/out
# kvm-clock as the clocksource (the TSC is not trusted): on hosts where KVM cannot set the
# guest's TSC, a TSC-timed Linux restored minutes after its snapshot spends minutes catching
# up on the ticks it missed; kvm-clock is restored as it was.
MACHINE=(--memory 256M --cpus 1 --boot-timer
	--cmdline "console=ttyS0 reboot=k panic=1 clocksource=kvm-clock tsc=unstable")
RUN=("$KITE" run --kernel "$OUT/vmlinux" --initrd "$OUT/initramfs.cpio" "${MACHINE[@]}")
if [ $# -gt 0 ]; then
	# Another machine than the cached one: boot it, no snapshot.
	exec "${RUN[@]}" "$@"
fi

CACHE_ROOT=${KITE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kite}
key=$({
	sha256sum "$OUT/vmlinux" "$OUT/initramfs.cpio" "$KITE" | cut -d' ' -f1
	printf '%s\n' "${MACHINE[@]}"
} | sha256sum | cut -c1-24)
snap=$CACHE_ROOT/snapshot/$key

if [ $fresh = 0 ] && [ -f "$snap/vmstate" ] && [ -f "$snap/memory" ]; then
	echo "boot.sh: restoring the booted shell from the snapshot in $snap (--fresh boots from scratch); press Enter for a prompt" >&2
	exec "$KITE" restore "$snap"
fi

# Boot, and snapshot the guest once its shell is up: a watcher reads the console (through tee)
# and runs kite snapshot on the API socket; the snapshot lands under a temporary name first.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$CACHE_ROOT/snapshot"
rm -rf "$snap"
(
	for _ in $(seq 1 600); do
		if grep -q "busybox shell on the console" "$work/console" 2>/dev/null; then
			sleep 1
			tmp="$snap.tmp.$$"
			if "$KITE" snapshot "$work/api.sock" "$tmp" 2>"$work/snapshot.err"; then
				mv "$tmp" "$snap"
			else
				rm -rf "$tmp"
				echo "boot.sh: no snapshot cached: $(cat "$work/snapshot.err")" >&2
			fi
			exit 0
		fi
		sleep 0.5
	done
) &
"${RUN[@]}" --api-sock "$work/api.sock" | tee "$work/console"
