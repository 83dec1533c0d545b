#!/usr/bin/env bash
# journal-replay.sh — how long a RAID-5 with the write-hole journal takes
# to come back after a crash with many journal records in flight: OLD and
# NEW vraid binaries, rounds alternated (old, new, old, new, ...).
#
# Each round: four sparse MEMBER_SIZE files (WORKDIR, on the disk), a
# RAID-5, `vraid serve`, fio sequential 32 MiB writes at QD32 over NBD for
# LOAD_SECS, SIGKILL of the server mid-load, then a restart. The replay
# time is from the restart's first log line to its "replayed N
# partial-parity records" line (the server listens right after); the
# number of records varies with what was in flight. Prints per round the
# records, seconds and ms per record.
#
#   benches/journal-replay.sh OLD_BIN NEW_BIN
# Environment: MEMBER_SIZE [4G]  ROUNDS [2]  LOAD_SECS [4]
#              WORKDIR [target/tmp/journal-replay]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OLD=${1:?old vraid binary}
NEW=${2:?new vraid binary}
MEMBER_SIZE=${MEMBER_SIZE:-4G}
ROUNDS=${ROUNDS:-2}
LOAD_SECS=${LOAD_SECS:-4}
WORKDIR=${WORKDIR:-target/tmp/journal-replay}
command -v fio >/dev/null || { echo "journal-replay.sh: fio is missing (apt-get install fio)" >&2; exit 1; }

# Waits (at most 300 s) for PATTERN in FILE.
wait_log() {
  for _ in $(seq 3000); do grep -q "$2" "$1" && return 0; sleep 0.1; done
  echo "journal-replay.sh: no '$2' in $1" >&2; return 1
}

# Seconds since the epoch of a log line's leading RFC 3339 timestamp.
stamp() { date -d "$(cut -d' ' -f1 <<<"$1")" +%s.%N; }

round() {
  local bin=$1 d=$WORKDIR port=$((20000 + RANDOM % 20000))
  rm -rf "$d"; mkdir -p "$d"
  for i in 0 1 2 3; do truncate -s "$MEMBER_SIZE" "$d/m$i.img"; done
  "$bin" create --level 5 --chunk-size 64K --force "$d"/m{0,1,2,3}.img >/dev/null 2>&1
  "$bin" serve --nbd 127.0.0.1:$port "$d"/m{0,1,2,3}.img >"$d/log1" 2>&1 &
  local pid=$!
  wait_log "$d/log1" "NBD server listening"
  fio --name=load --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol0" --rw=write \
    --bs=32M --iodepth=32 --time_based --runtime=60 >/dev/null 2>&1 &
  local fio=$!
  sleep "$LOAD_SECS" # the load runs this long before the crash
  kill -9 $pid; wait $pid 2>/dev/null || true
  kill $fio 2>/dev/null || true; wait $fio 2>/dev/null || true
  "$bin" serve --nbd 127.0.0.1:$port "$d"/m{0,1,2,3}.img >"$d/log2" 2>&1 &
  pid=$!
  wait_log "$d/log2" "NBD server listening"
  local first replayed n secs
  first=$(head -1 "$d/log2")
  replayed=$(grep "partial-parity records" "$d/log2" | head -1)
  n=$(grep -o "replayed [0-9]*" <<<"$replayed" | grep -o "[0-9]*")
  secs=$(echo "$(stamp "$replayed") - $(stamp "$first")" | bc)
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$d"
  printf '| %s | %s | %.2f | %s |\n' "$2" "$n" "$secs" \
    "$( [ "$n" -gt 0 ] && echo "scale=2; 1000 * $secs / $n" | bc || echo -)"
}

echo "| round | binary | records | replay s | ms/record |"
echo "|---|---|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  round "$OLD" "old" | sed "s/^/| $r /"
  round "$NEW" "new" | sed "s/^/| $r /"
done
