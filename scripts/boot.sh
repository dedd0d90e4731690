#!/usr/bin/env bash
# Build everything needed on a fresh machine and boot the default Linux guest on this terminal.
#   scripts/boot.sh [extra kite run arguments...]
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/host-kvm.sh"

"$ROOT/guest-images/build.sh"
cargo build --release --manifest-path "$ROOT/Cargo.toml" --quiet

CMDLINE="console=ttyS0 reboot=k panic=1"
EXTRA=()
if kite_host_emulates_ring0; then
	echo "kite: this host's KVM emulates guest ring 0 (no vmx/svm): Linux boots very slowly here, so it runs with earlyprintk and stops at the first instruction this KVM cannot emulate, or after 90 s"
	CMDLINE="$CMDLINE $KITE_EMULATED_RING0_CMDLINE"
	EXTRA=(--timeout 90)
fi
exec "$ROOT/target/release/kite" run \
	--kernel "$ROOT/guest-images/out/vmlinux" \
	--initrd "$ROOT/guest-images/out/initramfs.cpio.gz" \
	--memory 256M --cpus 2 --boot-timer \
	--cmdline "$CMDLINE" "${EXTRA[@]}" "$@"
