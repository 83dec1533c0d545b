#!/bin/sh
# Runs inside the test guest (VRAID_GUEST=stall) against /dev/vda, whose
# writes at VRAID_STALL_OFFSET the host holds with a volume `stall` rule.
# Linux's virtio-blk has no request timeout handler (a request waits for the
# device forever), so "the guest's I/O times out" is observed as a guest
# sees it:
#   - the write does not complete within the hung-task timeout: the
#     kernel's hung-task detector (hung_task_timeout_secs = 5) reports the
#     writer blocked, and /sys/block/vda/inflight shows the write in flight;
#   - then the host clears the rule (it waits for "VRAID-STALL-BLOCKED"),
#     the write completes with success, nothing is left in flight, and an
#     O_DIRECT read returns the bytes written.
# The writer is `dd conv=fsync` (buffered): fsync waits for the write-back
# in plain TASK_UNINTERRUPTIBLE, which the detector watches (O_DIRECT waits
# in blk_io_schedule(), which wakes up to stay out of its sight).
#   VRAID_STALL_OFFSET   byte offset of the 4 KiB the rule stalls (4 KiB aligned)
#   VRAID_STALL_SECS     bound on each wait in the guest (default 240)
set -u
fail() { echo "VRAID-GUEST-FAIL: $*"; exit 1; }
dev=/dev/vda
off=$VRAID_STALL_OFFSET
bound=${VRAID_STALL_SECS:-240}

[ -b $dev ] || fail "$dev is missing (virtio_blk did not find the device)"
echo 5 >/proc/sys/kernel/hung_task_timeout_secs || fail "no hung-task detector"
awk -v o="$off" 'BEGIN { for (i = 0; i < 114; i++) printf "vraid-guest %012d %010d\n", o, i }' \
  | head -c 4096 >/tmp/pattern
[ "$(wc -c </tmp/pattern)" = 4096 ] || fail "pattern is not 4096 bytes"

start=$(date +%s)
dd if=/tmp/pattern of=$dev bs=4096 seek=$((off / 4096)) count=1 conv=fsync,notrunc 2>/tmp/dd.err &
pid=$!
echo "stall: dd $pid writing 4096 bytes at $off"

# 1. Blocked: the detector names the writer, the write is in flight.
i=0
until dmesg | grep -q "task dd:$pid blocked for more than"; do
  kill -0 $pid 2>/dev/null || fail "dd ended while the rule held: $(cat /tmp/dd.err)"
  i=$((i + 1))
  [ $i -le $((bound * 5)) ] || fail "no hung-task report for dd within $bound s"
  usleep 200000
done
read -r reads writes </sys/block/vda/inflight
[ "$writes" -ge 1 ] || fail "hung-task report but inflight writes = $writes"
kill -0 $pid 2>/dev/null || fail "dd ended while the rule held"
echo "stall: $(dmesg | grep -m1 "task dd:$pid blocked for more than" | sed 's/^\[[^]]*\] //')"
echo "VRAID-STALL-BLOCKED after $(($(date +%s) - start)) s, inflight reads $reads writes $writes"

# 2. Released: the host clears the rule; dd completes with success.
i=0
while kill -0 $pid 2>/dev/null; do
  i=$((i + 1))
  [ $i -le $((bound * 5)) ] || fail "dd still blocked $bound s after the report"
  usleep 200000
done
wait $pid || fail "dd failed after the release: $(cat /tmp/dd.err)"
read -r reads writes </sys/block/vda/inflight
[ "$writes" = 0 ] || fail "inflight writes = $writes after dd completed"
echo "stall: dd completed after $(($(date +%s) - start)) s"
dd if=$dev of=/tmp/back bs=4096 skip=$((off / 4096)) count=1 iflag=direct 2>/dev/null \
  || fail "read back at $off"
cmp -s /tmp/pattern /tmp/back || fail "read back at $off differs from what was written"
echo "stall released ok"
