#!/usr/bin/env bash
# engine-path.sh — the engine's per-request cost and QD1 latency over NBD
# (issue 10), every target served at once and measured in alternated rounds.
#
# Targets (each its own server process, so its CPU is its own):
#   r0-shm    vraid RAID-0 over 4 member files on tmpfs (/dev/shm)
#   r5-shm    vraid RAID-5 over the same shape on tmpfs
#   r0-disk   vraid RAID-0 over 4 member files on the disk ($WORKDIR)
#   r1-disk   vraid RAID-1 over 2 member files on the disk
#   r5-disk   vraid RAID-5 over 4 member files on the disk
#   qnbd-disk qemu-nbd --cache=none --aio=io_uring on one file on the disk
#   nbdkit-mem nbdkit's memory plugin (the NBD transport's ceiling; RAM)
#   any vraid target with "-old" appended: the same, served by $VRAID_OLD
#   (before/after a change in one run); with "-ring" appended: served with
#   VRAID_LONE_INLINE=0 (every member request through the io_uring thread,
#   none run on the caller's thread at queue depth 1: src/member/lone.rs);
#   with "-beside": VRAID_EDGE_BESIDE=1 (a sub-block write's edge read
#   beside its data write: src/integrity/beside.rs)
# Jobs (fio, ioengine=nbd, over the first $SIZE of each export):
#   randread4k randwrite4k (QD32), qd1read4k qd1write4k qd1write1k (QD1),
#   seqwrite1k (sequential 1 KiB writes, QD32: what nbd-tester-client's
#   write test sends; that client is not packaged in Debian),
#   seqread1m seqwrite1m (QD8)
# Every target is prefilled sequentially; then, ROUNDS times, every
# target:job pair in $PAIRS runs once (the order reversed on even rounds,
# so a noisy minute does not land on one target). Reported per pair
# (medians over the rounds): IOPS, mean completion latency, and the
# server's CPU (utime+stime from /proc/PID/stat over the job) per I/O;
# then, per job, every vraid target's ratios to each peer (nbdkit-mem,
# qnbd-disk) run on the same job, and vraid's 1k/4k QD1 write latency.
# The issue-10 goals, e.g.:
#   PAIRS="r0-shm:randread4k nbdkit-mem:randread4k r0-shm:randwrite4k
#   nbdkit-mem:randwrite4k r0-disk:qd1read4k qnbd-disk:qd1read4k
#   r0-disk:qd1write4k qnbd-disk:qd1write4k r0-disk:qd1write1k"
#
# Environment (defaults in brackets):
#   PAIRS    target:job pairs ["r0-shm:randread4k r5-shm:randread4k
#            r0-disk:qd1read4k qnbd-disk:qd1read4k r0-disk:qd1write4k
#            qnbd-disk:qd1write4k r0-disk:qd1write1k qnbd-disk:qd1write1k
#            r1-disk:qd1write1k"]
#   ROUNDS   [3]   RUNTIME seconds per job [5]   SIZE fio range [512M]
#   VRAID    [target/release/vraid]   VRAID_OLD [target/base/vraid]
#   WORKDIR  [target/engine-path]
#   CHECKSUMS  1 = vraid default (block checksums on), 0 = --no-checksums [1]
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-"r0-shm:randread4k r5-shm:randread4k r0-disk:qd1read4k qnbd-disk:qd1read4k
r0-disk:qd1write4k qnbd-disk:qd1write4k r0-disk:qd1write1k qnbd-disk:qd1write1k r1-disk:qd1write1k"}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-512M}
VRAID=${VRAID:-target/release/vraid}
VRAID_OLD=${VRAID_OLD:-target/base/vraid}
WORKDIR=${WORKDIR:-target/engine-path}
CHECKSUMS=${CHECKSUMS:-1}
MEMBER_SIZE=300M

mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
SHM=$(mktemp -d /dev/shm/engine-path.XXXXXX)
RESULTS=$WORKDIR/runs.tsv
: >"$RESULTS"
declare -A PID PORT
TICK_US=$((1000000 / $(getconf CLK_TCK)))

log() { printf '[engine-path %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

cleanup() {
    local t
    for t in "${!PID[@]}"; do kill "${PID[$t]}" 2>/dev/null || true; done
    for t in "${!PID[@]}"; do wait "${PID[$t]}" 2>/dev/null || true; done
    rm -rf "$SHM" "$WORKDIR"/*.img
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    local i
    for ((i = 0; i < 300; i++)); do
        if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "nothing listens on port $1; see $WORKDIR/*.log"
    exit 1
}

start_vraid() { # NAME LEVEL DIR COUNT
    local name=$1 level=$2 dir=$3 count=$4 i bin=$VRAID
    local -a members=() extra=() env=()
    [[ $name == *-old ]] && bin=$VRAID_OLD
    [[ $name == *-ring ]] && env=(VRAID_LONE_INLINE=0)
    [[ $name == *-beside ]] && env=(VRAID_EDGE_BESIDE=1)
    for ((i = 0; i < count; i++)); do members+=("$dir/$name-$i.img"); done
    ((CHECKSUMS)) || extra+=(--no-checksums)
    "$bin" create --level "$level" --chunk-size 64K --member-size "$MEMBER_SIZE" \
        --name "$name" --force "${members[@]}" >"$WORKDIR/$name.create.log" 2>&1
    PORT[$name]=$(free_port)
    env "${env[@]}" "$bin" serve --nbd "127.0.0.1:${PORT[$name]}" --control "$WORKDIR/$name.sock" "${extra[@]}" \
        "${members[@]}" \
        >"$WORKDIR/$name.log" 2>&1 &
    PID[$name]=$!
}

start_qemu_nbd() { # NAME
    local name=$1 file=$WORKDIR/$1.img
    truncate -s "$MEMBER_SIZE" "$file"
    PORT[$name]=$(free_port)
    qemu-nbd --cache=none --aio=io_uring -f raw -x "$name" -b 127.0.0.1 -p "${PORT[$name]}" \
        --persistent --shared=8 "$file" >"$WORKDIR/$name.log" 2>&1 &
    PID[$name]=$!
}

start_nbdkit_mem() { # NAME
    local name=$1
    PORT[$name]=$(free_port)
    nbdkit -f -i 127.0.0.1 -p "${PORT[$name]}" memory 1G >"$WORKDIR/$name.log" 2>&1 &
    PID[$name]=$!
}

start_target() {
    local kind=${1%-old}
    kind=${kind%-beside}
    case ${kind%-ring} in
    r0-shm) start_vraid "$1" 0 "$SHM" 4 ;;
    r5-shm) start_vraid "$1" 5 "$SHM" 4 ;;
    r0-disk) start_vraid "$1" 0 "$WORKDIR" 4 ;;
    r1-disk) start_vraid "$1" 1 "$WORKDIR" 2 ;;
    r5-disk) start_vraid "$1" 5 "$WORKDIR" 4 ;;
    qnbd-disk) start_qemu_nbd qnbd-disk ;;
    nbdkit-mem) start_nbdkit_mem nbdkit-mem ;;
    *)
        log "unknown target $1"
        exit 2
        ;;
    esac
}

job_args() {
    case $1 in
    randread4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
    randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    qd1read4k) echo "--rw=randread --bs=4k --iodepth=1" ;;
    qd1write4k) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
    qd1write1k) echo "--rw=randwrite --bs=1k --iodepth=1" ;;
    seqwrite1k) echo "--rw=write --bs=1k --iodepth=32" ;;
    seqread1m) echo "--rw=read --bs=1M --iodepth=8" ;;
    seqwrite1m) echo "--rw=write --bs=1M --iodepth=8" ;;
    *)
        log "unknown job $1"
        exit 2
        ;;
    esac
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

uri() { echo "nbd://127.0.0.1:${PORT[$1]}/$1"; }

echo "load at start: $(uptime)"
targets=$(for p in $PAIRS; do echo "${p%%:*}"; done | sort -u)
for t in $targets; do start_target "$t"; done
for t in $targets; do wait_port "${PORT[$t]}"; done
for t in $targets; do
    log "$t: prefill $SIZE"
    fio --name=fill --ioengine=nbd --uri="$(uri "$t")" --rw=write --bs=1M --iodepth=8 \
        --size="$SIZE" >"$WORKDIR/$t.fill.log" 2>&1
done

read -r -a pairs <<<"$(echo $PAIRS)"
for ((round = 1; round <= ROUNDS; round++)); do
    order=("${pairs[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#pairs[@]} - 1; i >= 0; i--)); do order+=("${pairs[$i]}"); done
    fi
    for pair in "${order[@]}"; do
        t=${pair%%:*} job=${pair#*:}
        read -r -a args <<<"$(job_args "$job")"
        c0=$(cpu_ticks "${PID[$t]}")
        fio --name="$pair" --ioengine=nbd --uri="$(uri "$t")" "${args[@]}" --size="$SIZE" \
            --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=json \
            --output="$WORKDIR/fio.json" >/dev/null 2>&1
        c1=$(cpu_ticks "${PID[$t]}")
        python3 - "$t" "$job" "$WORKDIR/fio.json" $(((c1 - c0) * TICK_US)) <<'PY' | tee -a "$RESULTS"
import json, sys
target, job, path, cpu_us = sys.argv[1:]
d = json.load(open(path))["jobs"][0]["read" if "read" in job else "write"]
ios = max(d["total_ios"], 1)
# The CPU window includes fio's 1 s ramp: count its I/Os too.
ramp_ios = d["iops"] * 1.0
p99 = d["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000
load = open("/proc/loadavg").read().split()[0]
print(f"{target}\t{job}\tiops={d['iops']:.0f}\tlat_us={d['clat_ns']['mean'] / 1000:.1f}"
      f"\tp99_us={p99:.0f}\tcpu_us/io={int(cpu_us) / (ios + ramp_ios):.1f}\tload={load}")
PY
    done
done

echo "load at end: $(uptime)"
echo "medians over $ROUNDS rounds (same run, alternated):"
python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    target, job, *fields = line.rstrip("\n").split("\t")
    runs[(job, target)].append({k: float(v) for k, v in (f.split("=") for f in fields)})
print("| job | target | IOPS | mean lat us | p99 lat us | server CPU us/IO | load 1 min |")
print("|---|---|---|---|---|---|---|")
for (job, target), rows in sorted(runs.items()):
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"| {job} | {target} | {med['iops']:.0f} | {med['lat_us']:.1f} | {med['p99_us']:.0f}"
          f" | {med['cpu_us/io']:.1f} | {med['load']:.1f} |")
PY
python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    target, job, *fields = line.rstrip("\n").split("\t")
    runs[(job, target)].append({k: float(v) for k, v in (f.split("=") for f in fields)})
med = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for key, rows in runs.items()}
peers = ("nbdkit-mem", "qnbd-disk")
print()
print("ratios, vraid / peer on the same job (medians):")
print("| job | vraid | peer | IOPS | mean lat | CPU us/IO |")
print("|---|---|---|---|---|---|")
for (job, target), m in sorted(med.items()):
    if target in peers:
        continue
    for peer in peers:
        p = med.get((job, peer))
        if p:
            print(f"| {job} | {target} | {peer} | {m['iops'] / p['iops']:.2f}x"
                  f" | {m['lat_us'] / p['lat_us']:.2f}x | {m['cpu_us/io'] / p['cpu_us/io']:.2f}x |")
for (job, target), m in sorted(med.items()):
    four = med.get(("qd1write4k", target))
    if job == "qd1write1k" and four:
        print(f"{target}: 1k / 4k QD1 write latency {m['lat_us'] / four['lat_us']:.2f}x")
PY
