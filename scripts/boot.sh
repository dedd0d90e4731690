#!/usr/bin/env bash
# Build everything needed on a fresh machine and boot the default Linux guest on this terminal:
# a busybox shell on the console. 'exit' or 'reboot -f' in the guest, or Ctrl-C here, ends it.
#   scripts/boot.sh [extra kite run arguments...]
# On a host whose KVM emulates guest ring 0 (no VT-x/AMD-V under it), Kite says so in one line
# and applies its workarounds; Linux then takes about half a minute to reach the shell.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

"$ROOT/guest-images/build.sh"
cargo build --release --manifest-path "$ROOT/Cargo.toml" --quiet

exec "$ROOT/target/release/kite" run \
	--kernel "$ROOT/guest-images/out/vmlinux" \
	--initrd "$ROOT/guest-images/out/initramfs.cpio" \
	--memory 256M --cpus 2 --boot-timer \
	--cmdline "console=ttyS0 reboot=k panic=1" "$@"
