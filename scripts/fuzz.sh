#!/usr/bin/env bash
# Run Kite's fuzz targets (fuzz/, on fuzz/harness) under libFuzzer: each on its seed corpus
# (fuzz/corpus/<target>/) and its crash regressions (fuzz/regressions/<target>/), two at a time.
#
#   scripts/fuzz.sh                      every target for 20 s (what scripts/test.sh runs)
#   scripts/fuzz.sh -t 1800 -r 10000000  each target until 30 minutes or 10 million runs
#   scripts/fuzz.sh virtio_blk loader    only these targets
#
# Options: -t SECONDS per target (20), -r RUNS per target (no limit), -j targets at a time (2).
#
# Needs the nightly toolchain and cargo-fuzz, which scripts/test.sh installs when missing. Run
# alone without them, it skips with a one-line reason for need `nightly`, also appended to
# $KITE_SKIP_LOG as the tests' skips are (`[nightly] scripts/fuzz.sh: ...`); KITE_FUZZ_INSTALL=1
# makes it install cargo-fuzz itself (about 100 s, into ~/.cargo/bin). The instrumented build
# goes to $KITE_FUZZ_TARGET_DIR (~/.cache/kite/fuzz-target), outside the checkout, so that CI's
# fresh clones reuse the dependencies built before: about 3.5 minutes from nothing here, 30 s
# for Kite alone; then 8 targets x 20 s, two at a time, take about 95 s.
#
# A crash, a hang (10 s for one input) or running out of memory fails the run. Its input is
# left in target/fuzz/artifacts/<target>/ (crash-*, timeout-*, oom-*); reproduce it with
# `target/fuzz/bin/<target> <file>`, or as a test by copying it into fuzz/regressions/<target>/.
# New corpus entries go to target/fuzz/corpus/<target>/ (the committed seeds stay as they are),
# each target's log to target/fuzz/logs/<target>.log.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

seconds=20
runs=-1
jobs=2
while getopts "t:r:j:" opt; do
	case $opt in
	t) seconds=$OPTARG ;;
	r) runs=$OPTARG ;;
	j) jobs=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))

# The line crates/testkit's skip writes: `[need] test: reason`.
skip() {
	local line="[nightly] scripts/fuzz.sh: $1"
	echo "SKIPPED $line"
	if [ -n "${KITE_SKIP_LOG:-}" ]; then
		echo "$line" >>"$KITE_SKIP_LOG"
	fi
	exit 0
}

if ! cargo +nightly --version >/dev/null 2>&1; then
	skip "no nightly Rust toolchain (rustup toolchain install nightly), so no fuzzing"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	if [ "${KITE_FUZZ_INSTALL:-0}" = 1 ]; then
		cargo install cargo-fuzz --locked
	else
		skip "cargo-fuzz is not installed (cargo install cargo-fuzz, or KITE_FUZZ_INSTALL=1), so no fuzzing"
	fi
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^kite-fuzz$')
fi

out="$ROOT/target/fuzz"
build_dir=${KITE_FUZZ_TARGET_DIR:-$HOME/.cache/kite/fuzz-target}
mkdir -p "$out/bin" "$out/logs" "$build_dir"
start=$(date +%s)
# No sanitizer: Kite is Rust, and guest memory (the one place unsafe code touches a lot) is an
# mmap that AddressSanitizer does not watch; without it runs are about twice as fast. Debug
# assertions and overflow checks are on (cargo-fuzz's default).
echo "fuzz: building ${#targets[@]} targets (nightly, cargo-fuzz, into $build_dir)"
if ! cargo +nightly fuzz build --sanitizer none --target-dir "$build_dir" >"$out/logs/build.log" 2>&1; then
	tail -n 40 "$out/logs/build.log"
	echo "fuzz: the build failed (log: $out/logs/build.log)"
	exit 1
fi
for t in "${targets[@]}"; do
	# A rename, which a copy of the binary still running elsewhere does not mind.
	cp "$build_dir/x86_64-unknown-linux-gnu/release/$t" "$out/bin/$t.new"
	mv -f "$out/bin/$t.new" "$out/bin/$t"
done
echo "fuzz: built in $(($(date +%s) - start)) s"

# One target: its summary line in $out/logs/<target>.summary, libFuzzer's exit status in
# $out/logs/<target>.status.
run_target() {
	local t=$1
	local log="$out/logs/$t.log"
	mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
	local dirs=("$out/corpus/$t" "fuzz/corpus/$t")
	if [ -d "fuzz/regressions/$t" ]; then
		dirs+=("fuzz/regressions/$t")
	fi
	local status=0
	"$out/bin/$t" -max_total_time="$seconds" -runs="$runs" -max_len=8192 -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" \
		"${dirs[@]}" >"$log" 2>&1 || status=$?
	local execs rate cov ft
	# A run that crashed at once has no such lines.
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)
	ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)
	printf '%-14s %10s runs %7s/s  cov %5s  ft %6s  exit %s\n' "$t" "${execs:-?}" "${rate:-?}" \
		"${cov:-?}" "${ft:-?}" "$status" >"$out/logs/$t.summary"
	echo "$status" >"$out/logs/$t.status"
}

for t in "${targets[@]}"; do
	rm -f "$out/logs/$t.status" "$out/logs/$t.summary"
	while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
		wait -n || true
	done
	run_target "$t" &
done
wait

failed=()
for t in "${targets[@]}"; do
	if [ "$(cat "$out/logs/$t.status" 2>/dev/null)" != 0 ]; then
		failed+=("$t")
	fi
done

echo "fuzz: target         executions    exec/s   edges   features"
for t in "${targets[@]}"; do
	cat "$out/logs/$t.summary" 2>/dev/null || echo "$t: no summary (log: $out/logs/$t.log)"
done
echo "fuzz: done in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
	for t in "${failed[@]}"; do
		echo "fuzz: $t FAILED (log: $out/logs/$t.log)"
		grep -m 5 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$out/logs/$t.log" | sed 's/^/    /' || true
		for f in "$out/artifacts/$t"/*; do
			[ -e "$f" ] && echo "    reproducer: $f (run: $out/bin/$t $f)"
		done
	done
	exit 1
fi
