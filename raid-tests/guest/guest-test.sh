#!/bin/sh
# Runs inside the test guest against /dev/vda (the vhost-user-blk disk).
# Parameters come from the kernel command line (unknown key=value arguments
# become init's environment):
#   VRAID_SIZE       expected size of /dev/vda in bytes (required)
#   VRAID_QUEUES     expected number of virtqueues the guest uses (optional)
#   VRAID_MIN_IO     expected minimum_io_size in bytes (optional)
#   VRAID_OPT_IO     expected optimal_io_size in bytes (optional)
#   VRAID_FS_MIB     the ext4 filesystem covers the first FS_MIB MiB (required)
#   VRAID_PATTERNS   OFFSET:LENGTH,... byte ranges past the filesystem that get
#                    pattern_bytes (below) written with O_DIRECT and read back
#   VRAID_MODE       write (default): write everything, then verify it;
#                    verify: a later boot on the same volume only reads the
#                    patterns and checks the files against /SUMS in the fs
# Prints "VRAID-MD5 <md5> <file>" for the files it wrote, so the host can
# compare them with what it reads over NBD. Exits non-zero on any mismatch.
set -u
fail() { echo "VRAID-GUEST-FAIL: $*"; exit 1; }
dev=/dev/vda

# pattern_bytes OFFSET LENGTH: 36-byte lines "vraid-guest OOOOOOOOOOOO IIIIIIIIII\n"
# (offset and line number zero-padded), cut to LENGTH. The host test builds the
# same bytes.
pattern_bytes() {
  awk -v o="$1" -v n="$(( ($2 + 35) / 36 ))" \
    'BEGIN { for (i = 0; i < n; i++) printf "vraid-guest %012d %010d\n", o, i }' | head -c "$2"
}

[ -b $dev ] || fail "$dev is missing (virtio_blk did not find the device)"
size=$(( $(cat /sys/block/vda/size) * 512 ))
[ "$size" = "$VRAID_SIZE" ] || fail "size is $size, expected $VRAID_SIZE"
echo "vda: $size bytes, logical block $(cat /sys/block/vda/queue/logical_block_size)," \
  "min io $(cat /sys/block/vda/queue/minimum_io_size), opt io $(cat /sys/block/vda/queue/optimal_io_size)," \
  "queues $(ls /sys/block/vda/mq | wc -l)"
if [ -n "${VRAID_QUEUES:-}" ]; then
  q=$(ls /sys/block/vda/mq | wc -l)
  [ "$q" = "$VRAID_QUEUES" ] || fail "guest uses $q queues, expected $VRAID_QUEUES"
fi
if [ -n "${VRAID_MIN_IO:-}" ]; then
  v=$(cat /sys/block/vda/queue/minimum_io_size)
  [ "$v" = "$VRAID_MIN_IO" ] || fail "minimum_io_size is $v, expected $VRAID_MIN_IO"
fi
if [ -n "${VRAID_OPT_IO:-}" ]; then
  v=$(cat /sys/block/vda/queue/optimal_io_size)
  [ "$v" = "$VRAID_OPT_IO" ] || fail "optimal_io_size is $v, expected $VRAID_OPT_IO"
fi

mode=${VRAID_MODE:-write}
case $mode in write | verify) ;; *) fail "unknown VRAID_MODE $mode" ;; esac

# 1. Raw patterns with O_DIRECT, 64 KiB requests crossing chunk boundaries.
if [ "$mode" = write ]; then
  for range in $(echo "$VRAID_PATTERNS" | tr ',' ' '); do
    off=${range%%:*}
    len=${range##*:}
    pattern_bytes "$off" "$len" >/tmp/pattern
    dd if=/tmp/pattern of=$dev bs=65536 seek="$off" oflag=seek_bytes,direct conv=notrunc 2>/dev/null \
      || fail "dd write at $off"
  done
fi
echo 3 >/proc/sys/vm/drop_caches
for range in $(echo "$VRAID_PATTERNS" | tr ',' ' '); do
  off=${range%%:*}
  len=${range##*:}
  pattern_bytes "$off" "$len" >/tmp/pattern
  dd if=$dev of=/tmp/readback bs=65536 skip="$off" count="$len" iflag=skip_bytes,count_bytes,direct 2>/dev/null \
    || fail "dd read at $off"
  cmp /tmp/pattern /tmp/readback || fail "pattern at $off:$len reads back different"
  echo "pattern $off:$len ok"
done

# 2. ext4 on the first VRAID_FS_MIB MiB: make, mount, write, remount, verify.
if [ "$mode" = verify ]; then
  mount -t ext4 -o ro $dev /mnt || fail "mount of the earlier boot's filesystem"
  (cd /mnt && md5sum -c SUMS >/dev/null) || fail "files differ from the earlier boot's"
  while read -r sum name; do echo "VRAID-MD5 $sum $name"; done </mnt/SUMS
  umount /mnt || fail "umount"
  echo "ext4 from the earlier boot ok"
  exit 0
fi
mkfs.ext4 -q -F -b 4096 -L vraid-guest $dev $(( VRAID_FS_MIB * 256 )) || fail "mkfs.ext4"
mount -t ext4 $dev /mnt || fail "mount after mkfs"
head -c 3000000 /dev/urandom >/mnt/random-a || fail "write random-a"
head -c 8388608 /dev/urandom >/mnt/random-b || fail "write random-b"
mkdir /mnt/small || fail "mkdir"
i=1
while [ $i -le 40 ]; do
  pattern_bytes "$i" $(( i * 1000 + 7 )) >/mnt/small/f$i || fail "write small/f$i"
  i=$(( i + 1 ))
done
(cd /mnt && md5sum random-a random-b small/*) >/tmp/sums || fail "md5sum"
cp /tmp/sums /mnt/SUMS || fail "write SUMS"
sync
umount /mnt || fail "umount"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 -o ro $dev /mnt || fail "remount"
(cd /mnt && md5sum -c /tmp/sums >/dev/null) || fail "files differ after remount"
umount /mnt || fail "second umount"
while read -r sum name; do echo "VRAID-MD5 $sum $name"; done </tmp/sums
echo "ext4 ok"
