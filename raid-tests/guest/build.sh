#!/usr/bin/env bash
# Builds the test guest: a Debian 6.1 kernel and a busybox-static initramfs
# that loads the virtio-blk and ext4 modules and runs guest-test.sh (or, with
# VRAID_GUEST=md on the kernel command line, loads md's modules too and runs
# md-test.sh with mdadm from Debian's mdadm package).
#
#   raid-tests/guest/build.sh [OUT_DIR]     # default: target/guest-cache
#
# OUT_DIR receives:
#   linux-image-*.deb       the kernel package (apt-get download; kept as cache)
#   mdadm_*.deb             mdadm (apt-get download; kept as cache)
#   vmlinuz                 the kernel
#   initramfs.cpio.gz       /init + busybox + modules + mke2fs, e2fsck, mdadm and their libraries
#
# Flow:  apt-get download linux-image-6.1.*-amd64 -> dpkg-deb -x -> busybox
#        depmod -> modules (dependencies first) -> cpio | gzip.
# The kernel package is fetched once; the initramfs is rebuilt on every call
# (a second or two), so edits to init or guest-test.sh always take effect.
# Concurrent callers are serialised with flock on OUT_DIR/.lock.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../target/guest-cache}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

exec 9>"$out/.lock"
flock 9

need() { command -v "$1" >/dev/null 2>&1 || { echo "build.sh: $1 is missing ($2)" >&2; exit 1; }; }
need busybox "apt-get install busybox-static"
need cpio "apt-get install cpio"
need dpkg-deb "dpkg"
[ -x /sbin/mke2fs ] || { echo "build.sh: /sbin/mke2fs is missing (apt-get install e2fsprogs)" >&2; exit 1; }
grep -qx ash <<<"$(busybox --list)" || { echo "build.sh: busybox has no ash" >&2; exit 1; }
{ ldd /bin/busybox 2>&1 || true; } | grep -q "not a dynamic" || { echo "build.sh: /bin/busybox must be static (busybox-static)" >&2; exit 1; }

# --- kernel package -----------------------------------------------------------
# The current bookworm kernel is what the linux-image-amd64 metapackage pulls in
# (backports are pinned lower, so this is 6.1, not a backported 6.12).
deb="$(ls "$out"/linux-image-6.1.*-amd64_*.deb 2>/dev/null | sort -V | tail -n1 || true)"
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | grep -o 'linux-image-6\.1[^ ]*-amd64' | head -n1 || true; }
# (apt warns that it downloads unsandboxed as root: harmless here.)
download() { (cd "$out" && apt-get download -qq "$1") 2>"$out/download.log"; }
if [ -z "$deb" ]; then
  pkg="$(kernel_pkg)"
  # No package lists, or stale ones naming a version the mirror dropped:
  # refresh once and retry.
  if [ -z "$pkg" ] || ! download "$pkg"; then
    apt-get update -qq
    pkg="$(kernel_pkg)"
    [ -n "$pkg" ] || { echo "build.sh: apt knows no linux-image-6.1.*-amd64 (bookworm sources?)" >&2; exit 1; }
    download "$pkg" || { cat "$out/download.log" >&2; echo "build.sh: apt-get download $pkg failed" >&2; exit 1; }
  fi
  echo "build.sh: downloaded $pkg" >&2
  deb="$(find "$out" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
fi

# --- kernel and modules in load order -----------------------------------------
# Extracted once per package into $kdir: vmlinuz, the needed modules, and
# modules.list (dependencies first, found depth-first over modules.dep). The
# full extraction (~400 MB) is deleted afterwards.
kdir="$out/kernel-$(basename "$deb" .deb)"
# .done-md2: extracted with md's modules too (md-modules.list).
if [ ! -f "$kdir/.done-md2" ]; then
  rm -rf "$kdir"
  mkdir -p "$kdir/modules"
  dpkg-deb -x "$deb" "$kdir/root"
  kver="$(ls "$kdir/root/lib/modules")"
  busybox depmod -b "$kdir/root" "$kver"
  moddir="$kdir/root/lib/modules/$kver"
  declare -A seen=()
  order=()
  visit() {
    local rel="$1" line dep
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    line="$(grep -m1 "^$rel:" "$moddir/modules.dep")" || { echo "build.sh: $rel not in modules.dep" >&2; exit 1; }
    for dep in ${line#*:}; do visit "$dep"; done
    order+=("$rel")
  }
  for m in virtio_pci virtio_blk crc32c_generic ext4; do
    rel="$(grep -m1 -o "^[^:]*/$m\.ko" "$moddir/modules.dep")" || { echo "build.sh: module $m not found" >&2; exit 1; }
    visit "$rel"
  done
  : >"$kdir/modules.list"
  for rel in "${order[@]}"; do
    cp "$moddir/$rel" "$kdir/modules/"
    basename "$rel" >>"$kdir/modules.list"
  done
  # md's personalities and what they need (async_*, xor, raid6_pq), loaded
  # after the list above only by the md guest.
  order=()
  for m in md-mod linear raid0 raid1 raid10 raid456; do
    rel="$(grep -m1 -o "^[^:]*/$m\.ko" "$moddir/modules.dep")" || { echo "build.sh: module $m not found" >&2; exit 1; }
    visit "$rel"
  done
  : >"$kdir/md-modules.list"
  for rel in "${order[@]}"; do
    cp "$moddir/$rel" "$kdir/modules/"
    basename "$rel" >>"$kdir/md-modules.list"
  done
  cp "$kdir/root/boot/vmlinuz-$kver" "$kdir/vmlinuz"
  rm -rf "$kdir/root"
  touch "$kdir/.done-md2"
fi

# --- mdadm (for the md guest) ---------------------------------------------------
mdeb="$(ls "$out"/mdadm_*.deb 2>/dev/null | sort -V | tail -n1 || true)"
if [ -z "$mdeb" ]; then
  download mdadm || { apt-get update -qq; download mdadm; } || { cat "$out/download.log" >&2; echo "build.sh: apt-get download mdadm failed" >&2; exit 1; }
  mdeb="$(ls "$out"/mdadm_*.deb | sort -V | tail -n1)"
fi
mdir="$out/mdadm-$(basename "$mdeb" .deb)"
if [ ! -x "$mdir/mdadm" ]; then
  rm -rf "$mdir"
  mkdir -p "$mdir"
  dpkg-deb -x "$mdeb" "$mdir/root"
  cp "$mdir/root/sbin/mdadm" "$mdir/mdadm"
  rm -rf "$mdir/root"
fi
cp "$kdir/vmlinuz" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"

# --- initramfs tree -------------------------------------------------------------------
root="$(mktemp -d "$out/initramfs.XXXXXX")"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,etc,run,lib/modules,lib64,lib/x86_64-linux-gnu}
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount umount insmod poweroff; do ln -s busybox "$root/bin/$applet"; done
cp "$kdir"/modules/*.ko "$root/lib/modules/"
cp "$kdir/modules.list" "$root/modules.list"
cp "$kdir/md-modules.list" "$root/md-modules.list"
# mke2fs and e2fsck with their shared libraries (busybox's mke2fs only
# writes ext2; the md guest checks ext4 written by vraid with e2fsck).
[ -x /sbin/e2fsck ] || { echo "build.sh: /sbin/e2fsck is missing (apt-get install e2fsprogs)" >&2; exit 1; }
cp /sbin/mke2fs "$root/sbin/mke2fs"
cp /sbin/e2fsck "$root/sbin/e2fsck"
ln -s mke2fs "$root/sbin/mkfs.ext4"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
for tool in /sbin/mke2fs /sbin/e2fsck; do
  ldd "$tool" | grep -o '/[^ ]*' | while read -r lib; do
    cp -L "$lib" "$root$lib"
  done
done
# mdadm with its shared libraries (the host's: the same Debian release).
cp "$mdir/mdadm" "$root/sbin/mdadm"
ldd "$root/sbin/mdadm" | grep -o '/[^ ]*' | while read -r lib; do
  cp -L "$lib" "$root$lib"
done
cp "$here/init" "$root/init"
cp "$here/guest-test.sh" "$root/guest-test.sh"
cp "$here/md-test.sh" "$root/md-test.sh"
cp "$here/pool-test.sh" "$root/pool-test.sh"
cp "$here/stall-test.sh" "$root/stall-test.sh"
chmod 0755 "$root/init" "$root/guest-test.sh" "$root/md-test.sh" "$root/pool-test.sh" "$root/stall-test.sh"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$out"
