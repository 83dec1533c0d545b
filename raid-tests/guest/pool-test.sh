#!/bin/sh
# Runs inside the test guest (VRAID_GUEST=pool) against two vhost-user-blk
# disks, two thin volumes of one vraid pool. Which one is /dev/vda and which
# /dev/vdb is found by size, from the kernel command line:
#   VRAID_SIZE_A, VRAID_SIZE_B   sizes of volume a and b in bytes (must differ)
# Both get ext4 over the whole disk and are mounted at once; each gets its own
# files (random data and named small files), written while the other is
# mounted; then both are unmounted, caches dropped, remounted read-only and
# checked. Prints "VRAID-MD5 <a|b> <md5> <file>" for every file so the host
# can compare them with what it reads over NBD. Exits non-zero on any error.
set -u
fail() { echo "VRAID-GUEST-FAIL: $*"; exit 1; }

disk_of() {
  for d in vda vdb; do
    [ -b /dev/$d ] || fail "/dev/$d is missing (virtio_blk found $(ls /sys/block | tr '\n' ' '))"
    [ "$(( $(cat /sys/block/$d/size) * 512 ))" = "$1" ] && { echo $d; return 0; }
  done
  fail "no disk of $1 bytes"
}
a=$(disk_of "$VRAID_SIZE_A") || exit 1
b=$(disk_of "$VRAID_SIZE_B") || exit 1
[ "$a" != "$b" ] || fail "both volumes on $a"
echo "volume a is $a, volume b is $b"

for v in a b; do
  eval d=\$$v
  mkfs.ext4 -q -F -b 4096 -L "pool-$v" /dev/$d || fail "mkfs.ext4 on $d"
  mkdir -p /mnt/$v
  mount -t ext4 /dev/$d /mnt/$v || fail "mount $d"
done
for v in a b; do
  head -c 4000000 /dev/urandom >/mnt/$v/random || fail "write $v/random"
  mkdir /mnt/$v/small || fail "mkdir $v/small"
  i=1
  while [ $i -le 16 ]; do
    awk -v v="$v" -v i="$i" 'BEGIN { for (n = 0; n < i * 100; n++) printf "volume %s file %d line %d\n", v, i, n }' \
      >/mnt/$v/small/f$i || fail "write $v/small/f$i"
    i=$(( i + 1 ))
  done
  (cd /mnt/$v && md5sum random small/*) >/tmp/sums-$v || fail "md5sum $v"
  cp /tmp/sums-$v /mnt/$v/SUMS || fail "write $v/SUMS"
done
sync
for v in a b; do umount /mnt/$v || fail "umount $v"; done
echo 3 >/proc/sys/vm/drop_caches
for v in a b; do
  eval d=\$$v
  mount -t ext4 -o ro /dev/$d /mnt/$v || fail "remount $d"
  (cd /mnt/$v && md5sum -c /tmp/sums-$v >/dev/null) || fail "files of $v differ after remount"
  grep -q "volume $v file 3 line 7" /mnt/$v/small/f3 || fail "$v/small/f3 holds the other volume's text"
done
cmp -s /mnt/a/random /mnt/b/random && fail "a/random and b/random are the same bytes"
for v in a b; do
  umount /mnt/$v || fail "second umount $v"
  while read -r sum name; do echo "VRAID-MD5 $v $sum $name"; done </tmp/sums-$v
done
echo "pool volumes ok"
