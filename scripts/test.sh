#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: install what its steps need (cached outside the
# checkout), build the guest images (cached), check formatting and lints, run every test and
# the fuzz targets, and list the tests that skipped themselves, with the need each lacked.
#
# Every skip goes to one log, $KITE_SKIP_LOG (target/kite-skipped.txt), one line each:
# `[need] test: reason`, the need one of KNOWN_NEEDS below (crates/testkit's `Need`). Where the
# machine declares what it has, `KITE_MACHINE_HAS="kvm root ..."` (.ci/run does), a test that
# skipped for a need the machine has fails the run. Without it, skips are listed only.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# Its own total time, on one line, however it ends.
trap 'echo "scripts/test.sh: $((SECONDS / 60)) min $((SECONDS % 60)) s in all"' EXIT

# What a test may need that a machine can lack (crates/testkit's unit tests keep this list the
# same as its `Need`).
KNOWN_NEEDS="kvm root tap loop tools guest-images distro-kernel nobody nightly cgroup io-uring userfaultfd"
read -ra machine_has <<<"${KITE_MACHINE_HAS:-}"
for need in "${machine_has[@]}"; do
	if [[ " $KNOWN_NEEDS " != *" $need "* ]]; then
		echo "scripts/test.sh: KITE_MACHINE_HAS names \"$need\", which is not a need; the needs are: $KNOWN_NEEDS" >&2
		exit 2
	fi
done

export KITE_SKIP_LOG="$ROOT/target/kite-skipped.txt"
mkdir -p "$ROOT/target"
: >"$KITE_SKIP_LOG"

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
# The nightly toolchain and cargo-fuzz, for scripts/fuzz.sh: installed when missing, into
# ~/.rustup and ~/.cargo/bin (outside the checkout; a machine keeps them, so this is once per
# machine: about 100 s for cargo-fuzz). Where they cannot be installed (no rustup, no network)
# fuzz.sh skips for need `nightly`.
if ! cargo +nightly --version >/dev/null 2>&1; then
	rustup toolchain install nightly --profile minimal ||
		echo "scripts/test.sh: cannot install the nightly toolchain; scripts/fuzz.sh will skip"
fi
if cargo +nightly --version >/dev/null 2>&1 && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	cargo install cargo-fuzz --locked ||
		echo "scripts/test.sh: cannot install cargo-fuzz; scripts/fuzz.sh will skip"
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

status=0
cargo test --release --workspace --all-targets || status=$?
# The test guest's host-side tests (its workloads crate, and the host program that runs them),
# in the test guest's own workspace; the guest itself (built above) has no tests.
(
	cd guest-images/testguest
	cargo test --offline --workspace --exclude kite-testguest --target-dir target
) || status=$?
# The fuzz targets under libFuzzer, 20 s each (tests/fuzz_corpus.rs above already ran their
# seeds on stable); skips, for need `nightly`, where nightly or cargo-fuzz is missing.
scripts/fuzz.sh || status=$?
if [ -s "$KITE_SKIP_LOG" ]; then
	echo "Skipped tests:"
	sort "$KITE_SKIP_LOG" | sed 's/^/  /'
fi
# On a machine that declares what it has, a skip for one of those needs fails the run (a skip
# that names no need too): one line each.
if ((${#machine_has[@]})); then
	while IFS= read -r line; do
		need=
		if [[ $line =~ ^\[([a-z-]+)\]\  ]]; then
			need=${BASH_REMATCH[1]}
		fi
		if [ -z "$need" ]; then
			echo "FAILED: a skip that names no need: $line"
			status=1
		elif [[ " ${machine_has[*]} " == *" $need "* ]]; then
			echo "FAILED: skipped, but this machine has $need (KITE_MACHINE_HAS): $line"
			status=1
		fi
	done < <(sort "$KITE_SKIP_LOG")
fi
exit $status
