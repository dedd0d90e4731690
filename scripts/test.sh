#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: build the guest images (cached), check
# formatting and lints, run every test, and list the tests that skipped themselves and why.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Tools the tests use: ip (network namespaces and taps), mke2fs (an ext4 image), setpriv
# (running kite as an unprivileged user), iasl (decompiling our DSDT). Installed when missing
# and we may.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v mke2fs >/dev/null || missing+=(e2fsprogs)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v iasl >/dev/null || missing+=(acpica-tools)
if ((${#missing[@]})) && [ "$(id -u)" = 0 ]; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

"$ROOT/guest-images/build.sh"
# Debian's own cloud kernel, for tests/distro_kernel.rs (cached; without network it says so and
# the test skips).
"$ROOT/guest-images/debian-kernel.sh"
if [ -x "$ROOT/guest-images/testguest/build.sh" ]; then
	"$ROOT/guest-images/testguest/build.sh"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

export KITE_SKIP_LOG="$ROOT/target/kite-skipped.txt"
mkdir -p "$ROOT/target"
: >"$KITE_SKIP_LOG"
status=0
cargo test --release --workspace --all-targets || status=$?
# The fuzz targets under libFuzzer, 20 s each (tests/fuzz_corpus.rs above already ran their
# seeds on stable); skips, with its reason, where nightly or cargo-fuzz is missing.
scripts/fuzz.sh || status=$?
if [ -s "$KITE_SKIP_LOG" ]; then
	echo "Skipped tests:"
	sort "$KITE_SKIP_LOG" | sed 's/^/  /'
fi
exit $status
