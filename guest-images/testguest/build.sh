#!/usr/bin/env bash
# Builds Kite's test guest (a static x86-64 ELF kernel) with cargo, release profile, and
# copies it to guest-images/out/testguest.elf. Prints that path on stdout (cargo's own
# messages go to stderr). Works from any directory; needs only the stable host toolchain
# (no extra target, no network: the crates have no dependencies outside this directory).
#
# Usage: guest-images/testguest/build.sh
set -euo pipefail

DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
OUT_DIR=$(cd -- "$DIR/.." && pwd)/out
OUT=$OUT_DIR/testguest.elf

# cargo must run from this directory so that .cargo/config.toml (static relocation model)
# applies; the caller's flags and target settings must not leak in.
cd "$DIR"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET \
      CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
cargo build --release --offline -p kite-testguest --target-dir "$DIR/target" >&2

BIN=$DIR/target/release/kite-testguest
mkdir -p "$OUT_DIR"
if ! cmp -s "$BIN" "$OUT"; then
	cp "$BIN" "$OUT.tmp"
	mv -f "$OUT.tmp" "$OUT"
fi
echo "$OUT"
