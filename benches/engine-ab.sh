#!/usr/bin/env bash
# engine-ab.sh — A/B two vraid binaries on the same RAID-0 array, alternating.
#
# On a shared VM, IOPS of back-to-back runs swing by ±40 %, so a change to the
# member I/O path cannot be judged from one fio-compare.sh run. This script
# serves one 4 x 261M RAID-0 array with binary A, then B, then A ... (REPS
# rounds), drives each with fio (ioengine=nbd, 4 KiB random, QD32) and reports
# per run the IOPS and, from /proc, what the server spent per I/O: CPU time
# (user + system, all threads) and voluntary / involuntary context switches.
# Those per-I/O costs move far less with the neighbours' load than IOPS do.
#
# Usage: benches/engine-ab.sh BIN_A BIN_B
# Environment (defaults in brackets):
#   JOBS     ["randread4k randwrite4k"]    REPS  rounds [5]
#   RUNTIME  seconds per fio run [4]       WORKDIR [target/engine-ab]
#   PEER     "nbdkit-mem" adds nbdkit's memory plugin (1G, prefilled on
#            each start since it keeps nothing) to every round, as the NBD
#            transport's ceiling [none]
#   Members on tmpfs (the engine is then the only cost):
#   WORKDIR=/dev/shm/engine-ab.
#   Any other variable (TOKIO_WORKER_THREADS, VRAID_IO_ENGINE...) reaches the
#   servers unchanged.
# Output: one line per run, then the median per binary and job.
set -euo pipefail

if (($# != 2)); then
    echo "usage: $0 BIN_A BIN_B" >&2
    exit 2
fi
BINS=("$1" "$2")
PEER=${PEER:-}
case $PEER in
"") ;;
nbdkit-mem) command -v nbdkit >/dev/null || {
    echo "PEER=nbdkit-mem needs nbdkit (apt-get install nbdkit)" >&2
    exit 2
} ;;
*)
    echo "unknown PEER $PEER" >&2
    exit 2
    ;;
esac
JOBS=${JOBS:-"randread4k randwrite4k"}
REPS=${REPS:-5}
RUNTIME=${RUNTIME:-4}
WORKDIR=${WORKDIR:-target/engine-ab}
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
MEMBERS=("$WORKDIR"/m{0,1,2,3}.img)
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

start_server() { # BIN (or nbdkit-mem) -> sets SERVER and URI
    local port=$((20000 + RANDOM % 20000)) i
    if [[ $1 == nbdkit-mem ]]; then
        nbdkit -f -i 127.0.0.1 -p "$port" memory 1G >"$WORKDIR/serve.log" 2>&1 &
        SERVER=$!
        URI=nbd://127.0.0.1:$port/
    else
        "$1" serve --nbd "127.0.0.1:$port" "${MEMBERS[@]}" >"$WORKDIR/serve.log" 2>&1 &
        SERVER=$!
        URI=nbd://127.0.0.1:$port/ab
    fi
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

# Prints "cpu_ticks voluntary involuntary" summed over the server's threads.
costs() {
    local cpu v=0 n=0 status
    cpu=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
    for status in /proc/"$SERVER"/task/*/status; do
        v=$((v + $(awk '/^voluntary_ctxt/ {print $2}' "$status" 2>/dev/null || echo 0)))
        n=$((n + $(awk '/^nonvoluntary_ctxt/ {print $2}' "$status" 2>/dev/null || echo 0)))
    done
    echo "$cpu $v $n"
}

"${BINS[0]}" create --level 0 --chunk-size 64K --member-size 261M --name ab --force \
    "${MEMBERS[@]}" >"$WORKDIR/create.log" 2>&1
start_server "${BINS[0]}"
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size=1G \
    >"$WORKDIR/fill.log" 2>&1
stop_server

TICK_US=$((1000000 / $(getconf CLK_TCK)))
for ((rep = 1; rep <= REPS; rep++)); do
    for bin in "${BINS[@]}" $PEER; do
        for job in $JOBS; do
            case $job in
            randread4k) rw=randread ;;
            randwrite4k) rw=randwrite ;;
            *)
                echo "unknown job $job" >&2
                exit 2
                ;;
            esac
            start_server "$bin"
            if [[ $bin == nbdkit-mem ]]; then
                fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 \
                    --size=1G >"$WORKDIR/fill.log" 2>&1
            fi
            fio --name=warm --ioengine=nbd --uri="$URI" --rw=$rw --bs=4k --iodepth=32 \
                --size=1G --time_based --runtime=1 >/dev/null 2>&1
            read -r c0 v0 n0 < <(costs)
            fio --name=ab --ioengine=nbd --uri="$URI" --rw=$rw --bs=4k --iodepth=32 \
                --size=1G --time_based --runtime="$RUNTIME" --output-format=json \
                --output="$WORKDIR/fio.json" >/dev/null 2>&1
            read -r c1 v1 n1 < <(costs)
            stop_server
            python3 - "$bin" "$job" "$WORKDIR/fio.json" $(((c1 - c0) * TICK_US)) \
                $((v1 - v0)) $((n1 - n0)) <<'PY' | tee -a "$RESULTS"
import json, sys
binary, job, path, cpu_us, vol, invol = sys.argv[1:]
d = json.load(open(path))["jobs"][0]["read" if "read" in job else "write"]
ios = max(d["total_ios"], 1)
print(f"{binary}\t{job}\tiops={d['iops']:.0f}\tcpu_us/io={int(cpu_us) / ios:.1f}"
      f"\tvcsw/io={int(vol) / ios:.2f}\tivcsw/io={int(invol) / ios:.2f}")
PY
        done
    done
done

echo "medians over $REPS rounds:"
python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    binary, job, *fields = line.split("\t")
    runs[(job, binary)].append({k: float(v) for k, v in (f.split("=") for f in fields)})
for (job, binary), rows in sorted(runs.items()):
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{job}\t{binary}\t" + "\t".join(f"{k}={v:.2f}" if "/" in k else f"{k}={v:.0f}"
                                          for k, v in med.items()))
PY
