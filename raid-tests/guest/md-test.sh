#!/bin/sh
# Runs inside the md test guest (VRAID_GUEST=md): makes md arrays with the
# real kernel md and mdadm on the virtio disks, writes random data into each,
# prints what the host checks, and stops them. Parameters (kernel command
# line, so init's environment):
#   VRAID_MD_ARRAYS  NAME:LEVEL:LAYOUT:METADATA:CHUNK:FIRST:COUNT:BITMAP,...
#                    one array per entry, on disks FIRST..FIRST+COUNT-1
#                    (0 = /dev/vda, in the order of the -drive options);
#                    LAYOUT and CHUNK "-" for mdadm's default, BITMAP
#                    "bitmap" for an internal write-intent bitmap (64 KiB
#                    per bit), "ext4" for an ext4 with files instead of
#                    random data, "bitmap-ext4" for both, else "-".
#   VRAID_MD_MODE    "verify": assemble the arrays already on the disks
#                    instead (after vraid wrote them), see verify_array;
#                    "readd": assemble each array without its stale
#                    members (VRAID_MD_STALE), then re-add them, see
#                    readd_array.
#   VRAID_MD_STALE   NAME:I+J,... (readd mode): the members (0-based within
#                    the array) vraid wrote the array without.
# For each array it prints
#   VRAID-MD-FILE NAME FILE MD5      (ext4 arrays: each file written)
#   VRAID-MD-ARRAY NAME SIZE MD5 UUID
# (the array's size in bytes, the md5 of all of it as md reads it, and the
# UUID as mdadm prints it) after `mdadm --examine` of its disks; in verify
# mode
#   VRAID-MD-FILE NAME FILE MD5      (ext4 arrays: every file found)
#   VRAID-MD-BITMAP NAME BITS DIRTY EVENTS  (bitmap arrays: mdadm -X of the
#                                            first disk, before assembly)
#   VRAID-MD-VERIFY NAME MD5 MISMATCH_CNT FSCK_STATUS MISMATCH_AFTER_REPAIR
# (a check that finds mismatches is followed by repair and a second check);
# in readd mode, before the VERIFY line (printed after the recovery)
#   VRAID-MD-DEGRADED NAME MD5 FSCK_STATUS DEGRADED_COUNT  (assembled without
#                                            the stale members)
#   VRAID-MD-READD NAME DEV SECTORS_WRITTEN  (each stale member after
#                                            mdadm --re-add and md's recovery)
set -u
echo  # a line of its own after SeaBIOS's escapes
fail() { echo "VRAID-GUEST-FAIL: $*"; exit 1; }
letters=abcdefghijklmnopqrstuvwxyz
disk() { echo "/dev/vd$(echo $letters | cut -c$(( $1 + 1 )))"; }
[ -n "${VRAID_MD_ARRAYS:-}" ] || fail "VRAID_MD_ARRAYS is not set"

# write_random SEEK_64K COUNT_64K: random bytes into /dev/md0.
write_random() {
  dd if=/dev/urandom of=/dev/md0 bs=65536 seek="$1" count="$2" conv=fsync 2>/dev/null \
    || fail "dd into /dev/md0 at $1 x 64 KiB"
}

# write_ext4 NAME: an ext4 on /dev/md0 with a few files, their md5 printed.
write_ext4() {
  mkfs.ext4 -q -F /dev/md0 || fail "mkfs.ext4 on $1"
  mount -t ext4 /dev/md0 /mnt || fail "mount of $1"
  mkdir -p /mnt/dir
  dd if=/dev/urandom of=/mnt/big bs=65536 count=100 2>/dev/null || fail "write big"
  dd if=/dev/urandom of=/mnt/dir/odd bs=4097 count=33 2>/dev/null || fail "write odd"
  echo "md array $1 made by Linux" >/mnt/dir/small
  for f in big dir/odd dir/small; do
    echo "VRAID-MD-FILE $1 $f $(md5sum </mnt/$f | cut -d' ' -f1)"
  done
  umount /mnt || fail "umount of $1"
}

# wait_idle: until md's sync_action reads idle and the array is in sync
# (resync_start "none": a resync after an unclean stop is over; it may not
# have started when the array was just assembled), polled once a second,
# at most 20 minutes under TCG.
wait_idle() {
  n=0
  while [ "$(cat /sys/block/md0/md/sync_action)" != idle ] \
    || [ "$(cat /sys/block/md0/md/resync_start)" != none ]; do
    n=$(( n + 1 ))
    [ "$n" -lt 1200 ] || fail "md0 not idle after 20 minutes ($(cat /proc/mdstat))"
    sleep 1
  done
}

# verify_array NAME KIND DEVS...: assemble with mdadm, let a resync finish,
# run md's `check`, e2fsck -fn and list the files of an ext4, print the md5.
verify_array() {
  name=$1 kind=$2
  shift 2
  case $kind in bitmap*) print_bitmap "$name" "$1" ;; esac
  mdadm --assemble /dev/md0 --run "$@" >/tmp/assemble.log 2>&1 \
    || { cat /tmp/assemble.log; fail "mdadm --assemble $name"; }
  cat /tmp/assemble.log
  mdadm --readwrite /dev/md0 2>/dev/null
  mdadm --examine "$@" | grep -E 'Events|State :'
  check_and_stop "$name" "$kind"
}

# print_bitmap NAME DEV: mdadm -X of DEV as VRAID-MD-BITMAP NAME BITS DIRTY EVENTS.
print_bitmap() {
  mdadm -X "$2" >/tmp/x.log 2>&1 || { cat /tmp/x.log; fail "mdadm -X $1"; }
  cat /tmp/x.log
  bits=$(sed -n 's/.*Bitmap : \([0-9]*\) bits.* \([0-9]*\) dirty.*/\1 \2/p' /tmp/x.log)
  ev=$(sed -n 's/^ *Events : \([0-9]*\).*/\1/p' /tmp/x.log)
  echo "VRAID-MD-BITMAP $1 $bits $ev"
}

# fsck_ext4 NAME: e2fsck -fn of /dev/md0 (status in $fsck), its files listed.
fsck_ext4() {
  [ -e /etc/mtab ] || ln -s /proc/mounts /etc/mtab
  e2fsck -fn /dev/md0 >/tmp/fsck.log 2>&1
  fsck=$?
  [ "$fsck" = 0 ] || cat /tmp/fsck.log
  mount -t ext4 -o ro /dev/md0 /mnt || fail "mount of $1"
  (cd /mnt && find . -type f) | while read -r f; do
    echo "VRAID-MD-FILE $1 ${f#./} $(md5sum <"/mnt/$f" | cut -d' ' -f1)"
  done
  umount /mnt || fail "umount of $1"
}

# written_sectors DEV: sectors written to DEV since boot (/sys/block/X/stat).
written_sectors() {
  awk '{ print $7 }' "/sys/block/${1#/dev/}/stat"
}

# readd_array NAME KIND STALE DEVS...: assemble DEVS but the STALE ones
# (I+J, 0-based) degraded, read it (md5, e2fsck), mdadm --re-add each stale
# member, wait for md's recovery, print what it wrote to each, then check.
readd_array() {
  name=$1 kind=$2 stale=$3
  shift 3
  present="" gone="" i=0
  for d in "$@"; do
    case "+$stale+" in *"+$i+"*) gone="$gone $d" ;; *) present="$present $d" ;; esac
    i=$(( i + 1 ))
  done
  # shellcheck disable=SC2086
  set -- $present
  case $kind in bitmap*) print_bitmap "$name" "$1" ;; esac
  # shellcheck disable=SC2086
  mdadm --assemble /dev/md0 --run $present >/tmp/assemble.log 2>&1 \
    || { cat /tmp/assemble.log; fail "mdadm --assemble $name degraded"; }
  cat /tmp/assemble.log
  # shellcheck disable=SC2086
  mdadm --examine $present | grep -E 'Events|State :'
  fsck=-
  case $kind in *ext4) fsck_ext4 "$name" ;; esac
  echo 3 >/proc/sys/vm/drop_caches
  sum=$(md5sum </dev/md0 | cut -d' ' -f1) || fail "md5sum of $name"
  echo "VRAID-MD-DEGRADED $name $sum $fsck $(cat /sys/block/md0/md/degraded)"
  mdadm --readwrite /dev/md0 2>/dev/null
  for d in $gone; do
    eval "before_${d#/dev/}=$(written_sectors "$d")"
    mdadm /dev/md0 --re-add "$d" >/tmp/readd.log 2>&1
    cat /tmp/readd.log
    grep -q "re-added" /tmp/readd.log || fail "mdadm --re-add $d to $name"
  done
  n=0
  while [ "$(cat /sys/block/md0/md/degraded)" != 0 ]; do
    n=$(( n + 1 ))
    [ "$n" -lt 1200 ] || fail "md0 still degraded after 20 minutes ($(cat /proc/mdstat))"
    sleep 1
  done
  wait_idle
  cat /proc/mdstat
  for d in $gone; do
    eval "b=\$before_${d#/dev/}"
    echo "VRAID-MD-READD $name $d $(( $(written_sectors "$d") - b ))"
  done
  check_and_stop "$name" "$kind"
}

# check_and_stop NAME KIND: let a resync finish, md's check (and repair if
# it counts mismatches), e2fsck and files of an ext4, md5, stop; prints
# VRAID-MD-VERIFY.
check_and_stop() {
  name=$1 kind=$2
  mismatch=- after=-
  case $(cat /sys/block/md0/md/level) in
    raid0 | linear) ;;
    *)
      wait_idle
      echo check >/sys/block/md0/md/sync_action || fail "check on $name"
      wait_idle
      mismatch=$(cat /sys/block/md0/md/mismatch_cnt)
      after=$mismatch
      if [ "$mismatch" != 0 ]; then
        echo repair >/sys/block/md0/md/sync_action || fail "repair on $name"
        wait_idle
        echo check >/sys/block/md0/md/sync_action || fail "check on $name"
        wait_idle
        after=$(cat /sys/block/md0/md/mismatch_cnt)
      fi
      ;;
  esac
  fsck=-
  case $kind in *ext4) fsck_ext4 "$name" ;; esac
  echo 3 >/proc/sys/vm/drop_caches
  sum=$(md5sum </dev/md0 | cut -d' ' -f1) || fail "md5sum of $name"
  mdadm --stop /dev/md0 || fail "mdadm --stop $name"
  echo "VRAID-MD-VERIFY $name $sum $mismatch $fsck $after"
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
  if [ "${VRAID_MD_MODE:-}" = verify ]; then
    # shellcheck disable=SC2086
    verify_array "$name" "$bitmap" $devs
    continue
  fi
  if [ "${VRAID_MD_MODE:-}" = readd ]; then
    stale=$(echo "${VRAID_MD_STALE:-}" | tr ',' '\n' | sed -n "s/^$name://p")
    [ -n "$stale" ] || fail "no stale members given for $name"
    # shellcheck disable=SC2086
    readd_array "$name" "$bitmap" "$stale" $devs
    continue
  fi
  opts="--metadata=$meta --level=$level --raid-devices=$count --run --homehost=vraidguest"
  case $level in 0 | linear) ;; *) opts="$opts --assume-clean" ;; esac
  [ "$chunk" = - ] || opts="$opts --chunk=$chunk"
  [ "$layout" = - ] || opts="$opts --layout=$layout"
  case $bitmap in bitmap*) opts="$opts --bitmap=internal --bitmap-chunk=64K" ;; esac
  [ "$meta" = 0.90 ] || opts="$opts --name=$name"
  # shellcheck disable=SC2086
  yes | mdadm --create /dev/md0 $opts $devs >/tmp/create.log 2>&1 \
    || { cat /tmp/create.log; fail "mdadm --create $name ($opts)"; }
  size=$(blockdev --getsize64 /dev/md0) || fail "size of $name"
  units=$(( size / 65536 ))
  if [ "${bitmap#bitmap-}" = ext4 ]; then
    write_ext4 "$name"
  else
    # The start, a piece in the middle off the chunk grid, the end.
    write_random 0 128
    write_random $(( units / 2 + 3 )) 37
    write_random $(( units - 32 )) 32
  fi
  sync
  echo 3 >/proc/sys/vm/drop_caches
  sum=$(md5sum </dev/md0 | cut -d' ' -f1) || fail "md5sum of $name"
  uuid=$(mdadm --detail /dev/md0 | sed -n 's/^ *UUID : \([0-9a-f:]*\).*/\1/p')
  # shellcheck disable=SC2086
  mdadm --examine $devs
  mdadm --stop /dev/md0 || fail "mdadm --stop $name"
  echo "VRAID-MD-ARRAY $name $size $sum $uuid"
done
