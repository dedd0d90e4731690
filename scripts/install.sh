#!/usr/bin/env bash
# Build Kite (profile release-lto) and install it with its manual pages and shell completions:
#
#   scripts/install.sh               into /usr/local (needs root)
#   scripts/install.sh ~/.local      into a prefix of your own
#
# Installs PREFIX/bin/kite, PREFIX/share/man/man1/kite*.1 (`man kite`, `man kite-run`), and the
# completions for bash (PREFIX/share/bash-completion/completions/kite), zsh
# (PREFIX/share/zsh/site-functions/_kite) and fish
# (PREFIX/share/fish/vendor_completions.d/kite.fish). The pages and scripts come from
# `kite man DIR` and `kite completions SHELL`, generated from the command line's own
# definitions.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${1:-/usr/local}

# The release-lto profile (Cargo.toml): fat LTO, one codegen unit, abort on panic, as
# Firecracker's releases are built, optimised for size; a smaller resident set per VM than
# `--release`. Linked statically (`crt-static`), as Firecracker's releases are too: each VM
# maps only the C library code Kite calls, not all of libc.so, ld.so and libgcc_s (peak RSS
# 3.1 MiB against 4.1 MiB for the same build linked dynamically, `kite bench startup`), and
# the jailer copies no libraries into the jail. A static build needs an explicit --target (without one the flag would reach the
# proc macros, which must stay dynamic), so the binary is under target/TRIPLE/release-lto.
HOST=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
	cargo build --profile release-lto --target "$HOST" --manifest-path "$ROOT/Cargo.toml" --bin kite
KITE=$ROOT/target/$HOST/release-lto/kite

install -d "$PREFIX/bin" "$PREFIX/share/man/man1" \
	"$PREFIX/share/bash-completion/completions" "$PREFIX/share/zsh/site-functions" \
	"$PREFIX/share/fish/vendor_completions.d"
install -m 755 "$KITE" "$PREFIX/bin/kite"
pages=$(mktemp -d)
trap 'rm -rf "$pages"' EXIT
"$KITE" man "$pages" >/dev/null
install -m 644 "$pages"/*.1 "$PREFIX/share/man/man1/"
"$KITE" completions bash >"$pages/kite.bash"
"$KITE" completions zsh >"$pages/_kite"
"$KITE" completions fish >"$pages/kite.fish"
install -m 644 "$pages/kite.bash" "$PREFIX/share/bash-completion/completions/kite"
install -m 644 "$pages/_kite" "$PREFIX/share/zsh/site-functions/_kite"
install -m 644 "$pages/kite.fish" "$PREFIX/share/fish/vendor_completions.d/kite.fish"
echo "installed kite, its manual pages and bash/zsh/fish completions under $PREFIX"
