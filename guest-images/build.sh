#!/usr/bin/env bash
# Builds the Linux test guest for the Kite VMM:
#
#   guest-images/out/vmlinux             the kernel as an ELF (what tests boot)
#   guest-images/out/bzImage             the same kernel as a bzImage
#   guest-images/out/kernel.final.config the kernel's final .config
#   guest-images/out/initramfs.cpio      busybox initramfs running guest-images/init, with
#                                        kite-vsock (guest-images/vsock-client.c); uncompressed,
#                                        because a guest whose ring 0 is emulated unpacks gzip
#                                        5x slower than it copies a plain cpio
#
# The kernel comes from Debian's linux-source-6.1 with the project's own patches
# (guest-images/patches/*.patch, each saying which host behaviour it answers) applied:
# `make allnoconfig`, then the fragment guest-images/kernel.config merged on top and
# `make olddefconfig`. Every option the fragment sets is checked against the final
# .config before building.
#
# Slow results are cached outside the checkout, under
#   ${KITE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kite}
# in directories named after a hash of their inputs, so a second run only copies:
#   kernel/<key>/     vmlinux, bzImage, kernel.config; key = sha256 of the installed
#                     linux-source-6.1 version, the option lines of kernel.config, the
#                     patches and the source text of the kernel_* functions below
#   initramfs/<key>/  initramfs.cpio; key = sha256 of the installed busybox-static and
#                     gcc versions, guest-images/init, vsock-client.c and the text of
#                     initramfs_build
#   src/              the unpacked kernel tree, only while a kernel build runs
# guest-images/out/ is refreshed from the cache on every run.
# Missing Debian packages are installed with apt-get (needs root or sudo).
#
# Usage: guest-images/build.sh        (from any directory)
# Environment: KITE_CACHE_DIR (cache root), KITE_JOBS (make -j, default nproc).
set -euo pipefail

GUEST_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
FRAGMENT=$GUEST_DIR/kernel.config
INIT_SCRIPT=$GUEST_DIR/init
VSOCK_CLIENT=$GUEST_DIR/vsock-client.c
PATCH_DIR=$GUEST_DIR/patches
OUT_DIR=$GUEST_DIR/out
CACHE_ROOT=${KITE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kite}
JOBS=${KITE_JOBS:-$(nproc)}

KERNEL_SRC_PKG=linux-source-6.1
KERNEL_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUSYBOX=/bin/busybox
# Needed even when everything is cached (they feed the cache keys).
BASE_PKGS=(linux-source-6.1 busybox-static cpio gcc libc6-dev)
# Needed only to build the kernel.
KERNEL_BUILD_PKGS=(build-essential bc flex bison libelf-dev libssl-dev patch)

START_TIME=$SECONDS

log() { printf '[guest-images] %s\n' "$*"; }
die() { printf '[guest-images] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------
APT_UPDATED=0

pkg_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

ensure_packages() {
	local missing=() p
	for p in "$@"; do
		pkg_installed "$p" || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0

	local sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null 2>&1 ||
			die "missing packages: ${missing[*]} (run as root, or install them first)"
		sudo=(sudo)
	fi
	if ((APT_UPDATED == 0)); then
		log "apt-get update"
		"${sudo[@]}" apt-get update -qq
		APT_UPDATED=1
	fi
	log "installing: ${missing[*]}"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	for p in "${missing[@]}"; do
		pkg_installed "$p" || die "package $p did not install"
	done
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# ---------------------------------------------------------------------------------
# Kernel recipe. Everything that decides what the kernel build produces lives in
# the kernel_* functions below: their source text (via `declare -f`) is part of
# the kernel cache key, so editing them rebuilds, while editing the rest of this
# script (messages, the initramfs part) does not.
# ---------------------------------------------------------------------------------

# Unpack the kernel source and apply our patches (in name order): $1 = target directory.
kernel_unpack_source() {
	local dest=$1 tmp p
	[[ -f $dest/.kite-unpacked ]] && return 0
	rm -rf -- "$dest"
	tmp=$dest.tmp.$$
	rm -rf -- "$tmp"
	mkdir -p -- "$tmp"
	tar -xf "$KERNEL_TARBALL" -C "$tmp" --strip-components=1
	for p in "$PATCH_DIR"/*.patch; do
		[[ -e $p ]] || continue
		patch -d "$tmp" -p1 --quiet --forward <"$p" || {
			echo "[guest-images] ERROR: patch $p does not apply" >&2
			return 1
		}
	done
	touch -- "$tmp/.kite-unpacked"
	mv -- "$tmp" "$dest"
}

# Check that every option the fragment sets has that value in the final .config:
# $1 = fragment, $2 = .config. "=y" (and any other value) must appear verbatim;
# "is not set" means no "=" line for that option.
kernel_check_config() {
	local fragment=$1 config=$2 line opt bad=()
	while IFS= read -r line; do
		if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
			opt=${BASH_REMATCH[1]}
			grep -qxF -- "$line" "$config" ||
				bad+=("$opt (wanted ${BASH_REMATCH[2]}, got: $(grep -m1 -E "^(# )?$opt[= ]" "$config" || echo 'absent'))")
		elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
			opt=${BASH_REMATCH[1]}
			if grep -qE "^$opt=" "$config"; then
				bad+=("$opt (wanted not set, got: $(grep -m1 -E "^$opt=" "$config"))")
			fi
		fi
	done <"$fragment"
	if ((${#bad[@]} > 0)); then
		printf '[guest-images] ERROR: %d option(s) of %s did not stick after olddefconfig\n' \
			"${#bad[@]}" "$fragment" >&2
		printf '[guest-images]   %s\n' "${bad[@]}" >&2
		printf '[guest-images] (a dependency is missing from the fragment, or something selects it)\n' >&2
		return 1
	fi
}

# Configure and build: $1 = source tree, $2 = build dir, $3 = fragment,
# $4 = result dir (gets vmlinux, bzImage, kernel.config). Returns non-zero on any
# failure (each step is checked: `set -e` does not apply inside `f || ...`).
kernel_build() {
	local src=$1 build=$2 fragment=$3 result=$4
	local kmake=(make -C "$src" O="$build" ARCH=x86_64
		KBUILD_BUILD_USER=kite KBUILD_BUILD_HOST=kite
		KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970")
	local clog=$build/kite-config.log blog=$build/kite-build.log
	mkdir -p -- "$build" "$result" || return 1

	if ! { "${kmake[@]}" allnoconfig &&
		(cd "$build" && "$src/scripts/kconfig/merge_config.sh" -m -O "$build" \
			"$build/.config" "$fragment") &&
		"${kmake[@]}" olddefconfig; } >"$clog" 2>&1; then
		tail -n 40 -- "$clog" >&2
		return 1
	fi
	kernel_check_config "$fragment" "$build/.config" || return 1

	if ! "${kmake[@]}" -j"$JOBS" vmlinux bzImage >"$blog" 2>&1; then
		tail -n 40 -- "$blog" >&2
		return 1
	fi
	cp -- "$build/vmlinux" "$result/vmlinux" &&
		cp -- "$build/arch/x86/boot/bzImage" "$result/bzImage" &&
		cp -- "$build/.config" "$result/kernel.config"
}

kernel_cache_key() {
	{
		echo "kite guest kernel"
		echo "package $KERNEL_SRC_PKG $(pkg_version "$KERNEL_SRC_PKG")"
		echo "--- fragment (option lines only)"
		grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' -- "$FRAGMENT"
		echo "--- patches"
		local p
		for p in "$PATCH_DIR"/*.patch; do
			[[ -e $p ]] && { echo "$(basename -- "$p")"; cat -- "$p"; }
		done
		echo "--- recipe"
		declare -f kernel_unpack_source kernel_check_config kernel_build
	} | sha256sum | cut -c1-24
}

# ---------------------------------------------------------------------------------
# Initramfs recipe (same idea: the initramfs_* function text is part of its key).
# ---------------------------------------------------------------------------------

# $1 = output .cpio, $2 = scratch dir.
initramfs_build() {
	local out=$1 root=$2/root applet
	rm -rf -- "$2"
	mkdir -p -- "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root}
	cp -- "$BUSYBOX" "$root/bin/busybox"
	# busybox has no AF_VSOCK: our own small static client for the vsock check.
	gcc -static -nostdlib -ffreestanding -fno-stack-protector -fno-builtin -Os -s \
		-Wall -Werror -o "$root/bin/kite-vsock" "$VSOCK_CLIENT" || return 1
	# One symlink per applet, where busybox says it belongs (sh, mount, devmem...).
	while IFS= read -r applet; do
		[[ -n $applet && $applet != bin/busybox ]] || continue
		mkdir -p -- "$root/$(dirname -- "$applet")"
		[[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
	done < <("$BUSYBOX" --list-full)
	cp -- "$INIT_SCRIPT" "$root/init"
	chmod 0755 "$root/init"
	# Sorted names, owner root, fixed mtimes: same inputs give the same archive.
	find "$root" -exec touch -h -d @0 {} +
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
		cpio --quiet -o -H newc -R 0:0 --reproducible) >"$out"
}

initramfs_cache_key() {
	{
		echo "kite guest initramfs"
		echo "package busybox-static $(pkg_version busybox-static)"
		echo "package gcc $(pkg_version gcc) libc6-dev $(pkg_version libc6-dev)"
		echo "--- init"
		cat -- "$INIT_SCRIPT"
		echo "--- vsock client"
		cat -- "$VSOCK_CLIENT"
		echo "--- recipe"
		declare -f initramfs_build
	} | sha256sum | cut -c1-24
}

# ---------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------

# Copy a cached file to out/ atomically (a reader never sees half a file).
publish() {
	local src=$1 name=$2
	cp -- "$src" "$OUT_DIR/.$name.tmp"
	mv -f -- "$OUT_DIR/.$name.tmp" "$OUT_DIR/$name"
}

main() {
	[[ -f $FRAGMENT ]] || die "missing $FRAGMENT"
	[[ -f $INIT_SCRIPT ]] || die "missing $INIT_SCRIPT"
	[[ $(uname -m) == x86_64 ]] || die "this recipe builds an x86-64 guest on an x86-64 host"

	ensure_packages "${BASE_PKGS[@]}"
	[[ -f $KERNEL_TARBALL ]] || die "$KERNEL_TARBALL not found (is $KERNEL_SRC_PKG installed?)"
	[[ -x $BUSYBOX ]] || die "$BUSYBOX not found (is busybox-static installed?)"

	mkdir -p -- "$CACHE_ROOT" "$OUT_DIR"
	# One build at a time per cache (a second caller waits, then hits the cache).
	exec 9>"$CACHE_ROOT/.lock"
	if ! flock -n 9; then
		log "waiting for another build using $CACHE_ROOT"
		flock 9
	fi

	# --- kernel ---
	local kkey kdir
	kkey=$(kernel_cache_key)
	kdir=$CACHE_ROOT/kernel/$kkey
	if [[ -f $kdir/.complete ]]; then
		log "kernel: cached ($kdir)"
	else
		log "kernel: not cached, building (key $kkey)"
		ensure_packages "${KERNEL_BUILD_PKGS[@]}"
		local ver src build tmpres
		ver=$(pkg_version "$KERNEL_SRC_PKG")
		src=$CACHE_ROOT/src/$KERNEL_SRC_PKG-$ver-$kkey
		log "kernel: unpacking $KERNEL_SRC_PKG $ver into $src"
		mkdir -p -- "$CACHE_ROOT/src"
		kernel_unpack_source "$src"
		build=$CACHE_ROOT/kernel/$kkey.build
		tmpres=$CACHE_ROOT/kernel/$kkey.tmp
		# Leftovers of interrupted builds (we hold the lock, so none is running).
		rm -rf -- "$CACHE_ROOT"/kernel/*.build "$CACHE_ROOT"/kernel/*.tmp
		log "kernel: allnoconfig + $(basename -- "$FRAGMENT") + olddefconfig, then make -j$JOBS"
		log "kernel: this takes several minutes; logs in $build"
		local t0=$SECONDS
		kernel_build "$src" "$build" "$FRAGMENT" "$tmpres" ||
			die "kernel build failed (logs in $build)"
		touch -- "$tmpres/.complete"
		rm -rf -- "$kdir"
		mv -- "$tmpres" "$kdir"
		# The unpacked tree is 1.5 GB and re-unpacking takes seconds: drop it.
		rm -rf -- "$build" "$src"
		log "kernel: built in $((SECONDS - t0)) s"
	fi

	# --- initramfs ---
	local ikey idir
	ikey=$(initramfs_cache_key)
	idir=$CACHE_ROOT/initramfs/$ikey
	if [[ -f $idir/.complete ]]; then
		log "initramfs: cached ($idir)"
	else
		log "initramfs: building (busybox $(pkg_version busybox-static), key $ikey)"
		local itmp=$CACHE_ROOT/initramfs/$ikey.tmp
		rm -rf -- "$CACHE_ROOT"/initramfs/*.tmp
		mkdir -p -- "$itmp"
		initramfs_build "$itmp/initramfs.cpio" "$itmp/scratch" ||
			die "initramfs build failed"
		rm -rf -- "$itmp/scratch"
		touch -- "$itmp/.complete"
		rm -rf -- "$idir"
		mv -- "$itmp" "$idir"
	fi

	# --- publish ---
	publish "$kdir/vmlinux" vmlinux
	publish "$kdir/bzImage" bzImage
	publish "$kdir/kernel.config" kernel.final.config
	rm -f -- "$OUT_DIR/initramfs.cpio.gz"
	publish "$idir/initramfs.cpio" initramfs.cpio
	log "wrote $OUT_DIR/{vmlinux,bzImage,kernel.final.config,initramfs.cpio}"
	log "done in $((SECONDS - START_TIME)) s"
}

main "$@"
