#!/usr/bin/env bash
# volatile-cache.sh — write IOPS of one volume with the write cache
# write-through and volatile (issue 14), alternated in rounds on one server,
# plus a baseline binary (before the client stack existed) as the peer.
#
# One 2 x 261M RAID-1 array on the real disk; per round and mode: `vraid set
# vol --cache MODE`, a FLUSH-free fio (ioengine=nbd, 4 KiB random writes,
# QD32, RUNTIME s) and, from /proc, the server's CPU time per I/O. Volatile
# runs use CACHE_SIZE (default 1G, so the run fits: the RAM-speed case) and
# the cache is written back (set writethrough) between runs, outside the
# measured window.
#
# Usage: benches/volatile-cache.sh [BASELINE_BIN]
# Environment: REPS [3], RUNTIME [4], CACHE_SIZE [1G], WORKDIR [target/volatile-cache]
set -euo pipefail

BIN=${VRAID:-target/release/vraid}
BASE=${1:-}
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-4}
CACHE_SIZE=${CACHE_SIZE:-1G}
WORKDIR=${WORKDIR:-target/volatile-cache}
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
MEMBERS=("$WORKDIR"/m{0,1}.img)
CTL=$WORKDIR/control.sock
RESULTS=$WORKDIR/runs.txt
: >"$RESULTS"
SERVER=

cleanup() {
    if [[ -n $SERVER ]]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
}
trap cleanup EXIT

start_server() { # BIN -> SERVER, URI
    local port=$((20000 + RANDOM % 20000)) i
    "$1" serve --nbd "127.0.0.1:$port" --control "$CTL" "${MEMBERS[@]}" >"$WORKDIR/serve.log" 2>&1 &
    SERVER=$!
    URI=nbd://127.0.0.1:$port/vc
    for ((i = 0; i < 100; i++)); do
        if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "server $1 did not start; see $WORKDIR/serve.log" >&2
    exit 1
}

stop_server() {
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}

TICK_US=$((1000000 / $(getconf CLK_TCK)))
measure() { # LABEL
    local c0 c1
    c0=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
    fio --name=vc --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
        --size=256M --time_based --runtime="$RUNTIME" --output-format=json \
        --output="$WORKDIR/fio.json" >/dev/null 2>&1
    c1=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
    python3 - "$1" "$WORKDIR/fio.json" $(((c1 - c0) * TICK_US)) <<'PY' | tee -a "$RESULTS"
import json, sys
label, path, cpu_us = sys.argv[1:]
d = json.load(open(path))["jobs"][0]["write"]
ios = max(d["total_ios"], 1)
print(f"{label}\tiops={d['iops']:.0f}\tcpu_us/io={int(cpu_us) / ios:.1f}")
PY
}

"$BIN" create --level 1 --chunk-size 64K --member-size 261M --name vc --force \
    "${MEMBERS[@]}" >"$WORKDIR/create.log" 2>&1
start_server "$BIN"
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size=256M \
    >"$WORKDIR/fill.log" 2>&1
stop_server

for ((rep = 1; rep <= REPS; rep++)); do
    if [[ -n $BASE ]]; then
        start_server "$BASE"
        measure baseline
        stop_server
    fi
    start_server "$BIN"
    measure writethrough
    "$BIN" set vc --cache volatile --cache-size "$CACHE_SIZE" --control "$CTL" >/dev/null
    measure volatile
    "$BIN" set vc --cache writethrough --control "$CTL" >/dev/null
    stop_server
done

echo "medians over $REPS rounds:"
python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, *fields = line.split("\t")
    runs[label].append({k: float(v) for k, v in (f.split("=") for f in fields)})
for label, rows in runs.items():
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{label}\t" + "\t".join(f"{k}={v:.1f}" for k, v in med.items()))
    runs[label] = med
for a, b in [("volatile", "writethrough"), ("writethrough", "baseline")]:
    if a in runs and b in runs:
        x, y = runs[a], runs[b]
        print(f"{a}/{b}: {x['iops'] / y['iops']:.2f}x IOPS, "
              f"{x['cpu_us/io'] / y['cpu_us/io']:.2f}x CPU per I/O")
PY
