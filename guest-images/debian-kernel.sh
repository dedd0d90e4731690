#!/usr/bin/env bash
# Fetches Debian 12's own cloud kernel, as a user of Kite would, for the distro-kernel test
# (tests/distro_kernel.rs):
#
#   guest-images/out/debian-cloud-vmlinux   the kernel as an ELF (what the test boots)
#
# The kernel is the linux-image-*-cloud-amd64 package that the linux-image-cloud-amd64
# metapackage depends on (apt's candidate), fetched with `apt-get download`, unpacked with
# `dpkg-deb -x`, and its vmlinuz turned into an ELF by the kernel source's
# scripts/extract-vmlinux (taken out of /usr/src/linux-source-6.1.tar.xz). A bzImage would
# spend minutes decompressing itself where the host's KVM emulates guest ring 0.
#
# Cached outside the checkout, under
#   ${KITE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kite}/debian-cloud/
#     <package version>/   vmlinux, config (the kernel's .config), package (name and version)
#     resolved             which package and version apt's lists name, with a key of the
#                          lists' names, sizes and mtimes (apt-cache takes most of a second
#                          where apt keeps no binary cache; this makes a cached run instant)
# so a second run reads no package lists, touches no network and only copies the ELF.
# `apt-get update` runs only if apt's lists do not know the metapackage.
#
# Without network (the download fails) it says so on one line and exits 0 without
# publishing, so the test skips. Missing Debian packages are installed with apt-get (needs
# root or sudo).
#
# Usage: guest-images/debian-kernel.sh        (from any directory)
# Environment: KITE_CACHE_DIR (cache root).
set -euo pipefail

GUEST_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
OUT_DIR=$GUEST_DIR/out
OUT_NAME=debian-cloud-vmlinux
CACHE_ROOT=${KITE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kite}
CACHE_DIR=$CACHE_ROOT/debian-cloud

META_PKG=linux-image-cloud-amd64
KERNEL_SRC_PKG=linux-source-6.1
KERNEL_TARBALL=/usr/src/linux-source-6.1.tar.xz
# Needed only when the kernel is not cached: tar -J (xz-utils) for the source tarball,
# readelf (binutils) for extract-vmlinux's check.
FETCH_PKGS=(xz-utils binutils "$KERNEL_SRC_PKG")

# Microseconds since the epoch (bash 5's EPOCHREALTIME), for durations under a second.
now_us() { local t=${EPOCHREALTIME/[^0-9]/}; echo "$t"; }
START_US=$(now_us)

log() { printf '[debian-kernel] %s\n' "$*"; }
die() { printf '[debian-kernel] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------
# Packages (as in build.sh)
# ---------------------------------------------------------------------------------
APT_UPDATED=0
SUDO=()

pkg_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

need_root() {
	if ((EUID != 0)); then
		command -v sudo >/dev/null 2>&1 || die "$1 (run as root, or install them first)"
		SUDO=(sudo)
	fi
}

# apt-get update, once; returns non-zero (after one log line) if it fails.
apt_update() {
	((APT_UPDATED == 0)) || return 0
	need_root "apt-get update needs root"
	log "apt-get update"
	local out
	if ! out=$("${SUDO[@]}" apt-get update -qq 2>&1); then
		log "apt-get update failed: $(grep -m1 -E '^(E|W):' <<<"$out" || echo "${out%%$'\n'*}")"
		return 1
	fi
	APT_UPDATED=1
}

ensure_packages() {
	local missing=() p
	for p in "$@"; do
		pkg_installed "$p" || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	need_root "missing packages: ${missing[*]}"
	apt_update || die "cannot install ${missing[*]}: apt-get update failed"
	log "installing: ${missing[*]}"
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	for p in "${missing[@]}"; do
		pkg_installed "$p" || die "package $p did not install"
	done
}

# ---------------------------------------------------------------------------------
# Which kernel package
# ---------------------------------------------------------------------------------

# What apt's choice of candidate depends on: the lists (names, sizes, mtimes), the
# preferences and the architecture. Cheap: no list is read.
lists_key() {
	local LISTS='' ETC=''
	eval "$(apt-config shell LISTS Dir::State::lists/d ETC Dir::Etc/d)"
	{
		echo "kite debian-cloud resolution 1"
		dpkg --print-architecture
		stat -c '%n %s %Y' -- "$LISTS"*_Packages* "$ETC"preferences "$ETC"preferences.d/* \
			2>/dev/null || true
	} | sha256sum | cut -c1-24
}

# Prints "<package> <version>": the linux-image-*-cloud-amd64 package the metapackage's
# candidate depends on, and that package's candidate version. Fails if apt does not know it.
resolve_from_lists() {
	local dep ver
	local show
	show=$(apt-cache show --no-all-versions "$META_PKG" 2>/dev/null) || return 1
	dep=$(awk '/^Depends:/ {
		sub(/^Depends: */, ""); n = split($0, alt, /[,|]/)
		for (i = 1; i <= n; i++) {
			split(alt[i], w, " ")
			if (w[1] ~ /^linux-image-[0-9].*-cloud-amd64$/) { print w[1]; exit }
		}
	}' <<<"$show")
	[[ -n $dep ]] || return 1
	show=$(apt-cache show --no-all-versions "$dep" 2>/dev/null) || return 1
	ver=$(awk '/^Version:/ { print $2; exit }' <<<"$show")
	[[ -n $ver ]] || return 1
	echo "$dep $ver"
}

# The newest cached kernel as "<package> <version>", if any.
newest_cached() {
	local d versions=() best
	for d in "$CACHE_DIR"/*/; do
		[[ -f $d.complete && -f ${d}package ]] && versions+=("$(basename -- "$d")")
	done
	((${#versions[@]} > 0)) || return 1
	best=$(printf '%s\n' "${versions[@]}" | sort -V | tail -n1)
	cat -- "$CACHE_DIR/$best/package"
}

# Sets PKG and VER.
resolve() {
	local key memo=$CACHE_DIR/resolved line
	key=$(lists_key)
	if [[ -f $memo ]] && read -r line <"$memo" && [[ ${line%% *} == "$key" ]]; then
		read -r _ PKG VER <<<"$line"
		return 0
	fi
	if ! line=$(resolve_from_lists); then
		log "apt's lists do not know $META_PKG"
		if apt_update && line=$(resolve_from_lists); then
			key=$(lists_key)
		elif line=$(newest_cached); then
			read -r PKG VER <<<"$line"
			log "using the newest cached kernel instead: $PKG $VER"
			return 0
		else
			log "cannot find $META_PKG (no network?): not publishing $OUT_NAME; the distro-kernel test will skip"
			exit 0
		fi
	fi
	read -r PKG VER <<<"$line"
	printf '%s %s %s\n' "$key" "$PKG" "$VER" >"$memo.tmp.$$"
	mv -f -- "$memo.tmp.$$" "$memo"
}

# ---------------------------------------------------------------------------------
# Fetch and extract
# ---------------------------------------------------------------------------------

# The package that provides the decompressor the kernel's config names.
decompressor_pkg() {
	local config=$1
	case $(grep -m1 -oE '^CONFIG_KERNEL_(GZIP|BZIP2|LZMA|XZ|LZO|LZ4|ZSTD)=y' "$config" || true) in
	CONFIG_KERNEL_GZIP=y) echo gzip ;;
	CONFIG_KERNEL_BZIP2=y) echo bzip2 ;;
	CONFIG_KERNEL_LZMA=y | CONFIG_KERNEL_XZ=y) echo xz-utils ;;
	CONFIG_KERNEL_LZO=y) echo lzop ;;
	CONFIG_KERNEL_LZ4=y) echo lz4 ;;
	CONFIG_KERNEL_ZSTD=y) echo zstd ;;
	*) die "$config names no known kernel compression" ;;
	esac
}

# The first of its arguments that exists (an unmatched glob stays literal and does not).
first() {
	local f
	for f in "$@"; do
		[[ -e $f ]] && { echo "$f"; return 0; }
	done
	return 1
}

# Download $PKG=$VER and leave vmlinux, config and package in $1.
fetch() {
	local dest=$1 deb vmlinuz config out t0=$SECONDS
	mkdir -p -- "$dest/deb"
	# apt's download sandbox user (_apt) must be able to write the file.
	if ((EUID == 0)) && id _apt >/dev/null 2>&1; then
		chown _apt -- "$dest/deb"
	fi
	log "downloading $PKG $VER"
	if ! out=$(cd -- "$dest/deb" && apt-get download -q "$PKG=$VER" 2>&1); then
		log "cannot download $PKG $VER (no network?): $(grep -m1 -E '^E:' <<<"$out" || echo "${out##*$'\n'}"); not publishing $OUT_NAME, the distro-kernel test will skip"
		exit 0
	fi
	deb=$(first "$dest/deb/${PKG}"_*.deb) || die "apt-get download left no .deb in $dest/deb"
	dpkg-deb -x "$deb" "$dest/root" || die "dpkg-deb -x $deb failed"
	vmlinuz=$(first "$dest/root/boot/vmlinuz-"*) || die "$(basename -- "$deb") has no /boot/vmlinuz-*"
	config=$(first "$dest/root/boot/config-"*) || die "$(basename -- "$deb") has no /boot/config-*"
	ensure_packages "$(decompressor_pkg "$config")"

	tar -xJf "$KERNEL_TARBALL" --wildcards --occurrence=1 -O '*/scripts/extract-vmlinux' \
		>"$dest/extract-vmlinux" || die "no scripts/extract-vmlinux in $KERNEL_TARBALL"
	[[ -s $dest/extract-vmlinux ]] || die "no scripts/extract-vmlinux in $KERNEL_TARBALL"
	sh "$dest/extract-vmlinux" "$vmlinuz" >"$dest/vmlinux" ||
		die "extract-vmlinux could not turn $(basename -- "$vmlinuz") into an ELF"
	local header
	header=$(LC_ALL=C readelf -h "$dest/vmlinux" 2>&1) || die "extract-vmlinux's output is not an ELF"
	[[ $header =~ Machine:[[:space:]]+Advanced\ Micro\ Devices\ X86-64 ]] ||
		die "extract-vmlinux's output is not an x86-64 ELF"

	cp -- "$config" "$dest/config"
	echo "$PKG $VER" >"$dest/package"
	rm -rf -- "$dest/deb" "$dest/root" "$dest/extract-vmlinux"
	log "extracted $(basename -- "$vmlinuz") ($(du -m -- "$dest/vmlinux" | cut -f1) MB ELF) in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------

main() {
	[[ $(uname -m) == x86_64 ]] || die "Debian's amd64 cloud kernel is for x86-64 hosts"
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found (this recipe needs Debian or a derivative)"

	mkdir -p -- "$CACHE_DIR" "$OUT_DIR"
	# One fetch at a time per cache (a second caller waits, then hits the cache).
	exec 9>"$CACHE_DIR/.lock"
	if ! flock -n 9; then
		log "waiting for another fetch using $CACHE_DIR"
		flock 9
	fi

	resolve
	local dir=$CACHE_DIR/$VER
	if [[ -f $dir/.complete ]]; then
		log "$PKG $VER: cached ($dir)"
	else
		log "$PKG $VER: not cached, fetching"
		ensure_packages "${FETCH_PKGS[@]}"
		[[ -f $KERNEL_TARBALL ]] || die "$KERNEL_TARBALL not found (is $KERNEL_SRC_PKG installed?)"
		local tmp=$dir.tmp.$$
		# Leftovers of interrupted fetches (we hold the lock, so none is running).
		rm -rf -- "$CACHE_DIR"/*.tmp.*
		trap 'rm -rf -- "$tmp"' EXIT
		fetch "$tmp"
		touch -- "$tmp/.complete"
		rm -rf -- "$dir"
		mv -- "$tmp" "$dir"
		trap - EXIT
	fi

	# Publish atomically (a reader never sees half a file), with the cached file's mtime; a
	# published file of the same size and mtime is that copy already (rsync's quick check).
	local published=$OUT_DIR/$OUT_NAME
	if [[ -f $published && $(stat -c '%s %Y' -- "$published") == $(stat -c '%s %Y' -- "$dir/vmlinux") ]]; then
		log "$published is up to date"
	else
		cp -p -- "$dir/vmlinux" "$OUT_DIR/.$OUT_NAME.tmp"
		mv -f -- "$OUT_DIR/.$OUT_NAME.tmp" "$published"
	fi
	local ms=$((($(now_us) - START_US) / 1000))
	log "$OUT_NAME: $PKG $VER, done in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
}

main "$@"
