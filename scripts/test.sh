#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: build the guest images (cached), check
# formatting and lints, run every test, and list the tests that skipped themselves and why.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

"$ROOT/guest-images/build.sh"
if [ -x "$ROOT/guest-images/testguest/build.sh" ]; then
	"$ROOT/guest-images/testguest/build.sh"
fi

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings

export KITE_SKIP_LOG="$ROOT/target/kite-skipped.txt"
mkdir -p "$ROOT/target"
: >"$KITE_SKIP_LOG"
status=0
cargo test --release --all-targets || status=$?
if [ -s "$KITE_SKIP_LOG" ]; then
	echo "Skipped tests:"
	sort "$KITE_SKIP_LOG" | sed 's/^/  /'
fi
exit $status
