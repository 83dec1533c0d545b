#!/bin/sh
# Runs inside the md test guest (VRAID_GUEST=md): makes md arrays with the
# real kernel md and mdadm on the virtio disks, writes random data into each,
# prints what the host checks, and stops them. Parameters (kernel command
# line, so init's environment):
#   VRAID_MD_ARRAYS  NAME:LEVEL:LAYOUT:METADATA:CHUNK:FIRST:COUNT:BITMAP,...
#                    one array per entry, on disks FIRST..FIRST+COUNT-1
#                    (0 = /dev/vda, in the order of the -drive options);
#                    LAYOUT and CHUNK "-" for mdadm's default, BITMAP
#                    "bitmap" for an internal write-intent bitmap, else "-".
# For each array it prints
#   VRAID-MD-ARRAY NAME SIZE MD5 UUID
# (the array's size in bytes, the md5 of all of it as md reads it, and the
# UUID as mdadm prints it) after `mdadm --examine` of its disks.
set -u
fail() { echo "VRAID-GUEST-FAIL: $*"; exit 1; }
letters=abcdefghijklmnopqrstuvwxyz
disk() { echo "/dev/vd$(echo $letters | cut -c$(( $1 + 1 )))"; }
[ -n "${VRAID_MD_ARRAYS:-}" ] || fail "VRAID_MD_ARRAYS is not set"

# write_random SEEK_64K COUNT_64K: random bytes into /dev/md0.
write_random() {
  dd if=/dev/urandom of=/dev/md0 bs=65536 seek="$1" count="$2" conv=fsync 2>/dev/null \
    || fail "dd into /dev/md0 at $1 x 64 KiB"
}

for spec in $(echo "$VRAID_MD_ARRAYS" | tr ',' ' '); do
  IFS=: read -r name level layout meta chunk first count bitmap <<EOF
$spec
EOF
  devs=""
  i=0
  while [ "$i" -lt "$count" ]; do
    devs="$devs $(disk $(( first + i )))"
    i=$(( i + 1 ))
  done
  opts="--metadata=$meta --level=$level --raid-devices=$count --run --homehost=vraidguest"
  [ "$level" = 0 ] || opts="$opts --assume-clean"
  [ "$chunk" = - ] || opts="$opts --chunk=$chunk"
  [ "$layout" = - ] || opts="$opts --layout=$layout"
  [ "$bitmap" = bitmap ] && opts="$opts --bitmap=internal"
  [ "$meta" = 0.90 ] || opts="$opts --name=$name"
  # shellcheck disable=SC2086
  yes | mdadm --create /dev/md0 $opts $devs >/tmp/create.log 2>&1 \
    || { cat /tmp/create.log; fail "mdadm --create $name ($opts)"; }
  size=$(blockdev --getsize64 /dev/md0) || fail "size of $name"
  units=$(( size / 65536 ))
  # The start, a piece in the middle off the chunk grid, the end.
  write_random 0 128
  write_random $(( units / 2 + 3 )) 37
  write_random $(( units - 32 )) 32
  sync
  echo 3 >/proc/sys/vm/drop_caches
  sum=$(md5sum </dev/md0 | cut -d' ' -f1) || fail "md5sum of $name"
  uuid=$(mdadm --detail /dev/md0 | sed -n 's/^ *UUID : \([0-9a-f:]*\).*/\1/p')
  # shellcheck disable=SC2086
  mdadm --examine $devs
  mdadm --stop /dev/md0 || fail "mdadm --stop $name"
  echo "VRAID-MD-ARRAY $name $size $sum $uuid"
done
