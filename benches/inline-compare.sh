#!/usr/bin/env bash
# inline-compare.sh — 4k random I/O with block checksums in the inline
# layout, in the separate layout, and off, in one run (issue 15).
#
# Three RAID-5 arrays over sparse member files in DIR (by default 4 x 2 TiB:
# a 6 TiB volume, a working set far beyond any checksum page cache):
#   off      separate layout, `vraid serve --no-checksums`
#   separate separate layout, checksums on (the default)
#   inline   `vraid create --checksum-layout inline`, checksums on
# For each of ROUNDS rounds, the modes run in turn (the order rotates every
# round, so no mode always runs first), each serving its array and running
# the JOBS with fio over NBD: random writes at random offsets of the whole
# volume (sparse), random reads over the first PREFILL bytes, which the
# first round writes sequentially before its jobs (so reads are verified
# against real checksums rather than served from holes). Per run it records IOPS and the server's
# CPU time per I/O (utime + stime from /proc/PID/stat over the fio run).
# It prints a markdown table: per mode and job, the mean IOPS, CPU µs per
# I/O and the ratio to `off` (goal: inline/off >= 0.85 for randwrite4k).
#
# Environment (defaults in brackets):
#   DIR       where the member files live [/var/tmp/vraid-inline-compare];
#             use a tmpfs path (/dev/shm/...) for the tmpfs numbers
#   MEMBERS   members [4]                MEMBER_SIZE  member file size [2T]
#   RUNTIME   seconds per job [10]       RAMP         ramp seconds [2]
#   ROUNDS    rounds [3]                 CHUNK        chunk size [64K]
#   JOBS      ["randwrite4k randread4k"] MODES        ["off separate inline"]
#             (also overwrite4k: random writes over the prefilled span, where
#             the members' blocks are already written: no hole filling)
#   PREFILL   bytes written once and read by randread4k [1G]
#   CACHE     `--checksum-cache` of the checksum-on modes [1M]: the separate
#             layout's working set is then >= 100x the cache (inline has none)
#   VRAID     binary [target/release/vraid]
#   VRAID_BASE binary serving the mode `inline-base` (an inline array served
#             by another build, e.g. the main branch's, for an A/B of the
#             inline write path in the same run) [unset: no such mode]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${DIR:-/var/tmp/vraid-inline-compare}
MEMBERS=${MEMBERS:-4}
MEMBER_SIZE=${MEMBER_SIZE:-2T}
RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-2}
ROUNDS=${ROUNDS:-3}
CHUNK=${CHUNK:-64K}
JOBS=${JOBS:-"randwrite4k randread4k"}
MODES=${MODES:-"off separate inline"}
PREFILL=${PREFILL:-1G}
CACHE=${CACHE:-1M}
VRAID=${VRAID:-target/release/vraid}
VRAID_BASE=${VRAID_BASE:-}

log() { printf '[inline-compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v fio >/dev/null || die "fio not found (apt-get install fio)"
command -v python3 >/dev/null || die "python3 not found"
[[ -x $VRAID ]] || die "$VRAID not found: cargo build --release -p vraid"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
RESULTS=$DIR/results.tsv
: >"$RESULTS"
SERVER_PID=
CLK_TCK=$(getconf CLK_TCK)

cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    for mode in $MODES; do rm -rf "${DIR:?}/$mode"; done
}
trap cleanup EXIT

job_args() {
    case $1 in
        randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
        randread4k) echo "--rw=randread --bs=4k --iodepth=32 --size=$PREFILL" ;;
        overwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32 --size=$PREFILL" ;;
    esac
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# CPU ticks (utime + stime) of a process.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

paths_of() {
    local i
    for ((i = 0; i < MEMBERS; i++)); do echo "$DIR/$1/m$i.img"; done
}

# create MODE: a fresh array of sparse members.
create() {
    local mode=$1 layout=separate
    [[ $mode == inline* ]] && layout=inline
    rm -rf "${DIR:?}/$mode"
    mkdir -p "$DIR/$mode"
    mapfile -t paths < <(paths_of "$mode")
    "$VRAID" create --level 5 --chunk-size "$CHUNK" --member-size "$MEMBER_SIZE" \
        --name vol --checksum-layout "$layout" "${paths[@]}" >"$DIR/$mode/create.log" 2>&1 ||
        die "$mode: create failed: $(tail -n 3 "$DIR/$mode/create.log")"
}

# run ROUND MODE: serve MODE's array and run every job on it.
run() {
    local round=$1 mode=$2 port extra=() uri t0 t1 bin=$VRAID
    [[ $mode == inline-base ]] && bin=${VRAID_BASE:?inline-base needs VRAID_BASE}
    mapfile -t paths < <(paths_of "$mode")
    if [[ $mode == off ]]; then extra+=(--no-checksums); else extra+=(--checksum-cache "$CACHE"); fi
    port=$(free_port)
    "$bin" serve --nbd "127.0.0.1:$port" --control "$DIR/$mode/control.sock" \
        "${extra[@]}" "${paths[@]}" >>"$DIR/$mode/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "$mode: serve exited: $(tail -n 5 "$DIR/$mode/serve.log")"
        sleep 0.1
    done
    uri="nbd://127.0.0.1:$port/vol"
    if ((round == 0)); then
        log "$mode: prefill $PREFILL"
        fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 \
            --size="$PREFILL" --output-format=json --output="$DIR/$mode/prefill.json" >/dev/null
    fi
    for job in $JOBS; do
        log "round $round: $mode: $job (${RUNTIME}s)"
        t0=$(cpu_ticks "$SERVER_PID")
        # shellcheck disable=SC2046
        fio --name="$job" --ioengine=nbd --uri="$uri" $(job_args "$job") \
            --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --norandommap \
            --randrepeat=0 --output-format=json --output="$DIR/$mode/$job.$round.json" >/dev/null
        t1=$(cpu_ticks "$SERVER_PID")
        printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$job" "$DIR/$mode/$job.$round.json" \
            "$(((t1 - t0)))" >>"$RESULTS"
    done
    log "$mode: server RSS $(awk '/VmRSS/ { print $2 " kB" }' "/proc/$SERVER_PID/status")"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || die "$mode: serve exited with an error"
    SERVER_PID=
    grep -q "checksum mismatch" "$DIR/$mode/serve.log" && die "$mode: checksum errors during the bench"
    return 0
}

# The separate layout reserves its checksum area (0.1 % of each member) at
# assembly: 3 arrays of 4 x 2 TiB need about 17 GB of free space.
for mode in $MODES; do create "$mode"; done
read -r -a order <<<"$MODES"
for ((round = 0; round < ROUNDS; round++)); do
    n=${#order[@]}
    for ((k = 0; k < n; k++)); do run "$round" "${order[(k + round) % n]}"; done
done

python3 - "$RESULTS" "$CLK_TCK" "$MEMBERS" "$MEMBER_SIZE" "$DIR" "$RUNTIME" <<'PY'
import json, sys
from collections import defaultdict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
tck = int(sys.argv[2])
acc = defaultdict(list)
for rnd, mode, job, path, ticks in rows:
    j = json.load(open(path))["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    ios = side["total_ios"]
    # fio's total_ios excludes the ramp; the CPU ticks include it: scale.
    run_ms = side["runtime"] or 1
    wall_ms = run_ms + 1000 * float(j["job options"].get("ramp_time", 0) or 0)
    cpu_us = int(ticks) / tck * 1e6 * run_ms / wall_ms
    acc[(mode, job)].append((side["iops"], cpu_us / ios if ios else 0))
modes = list(dict.fromkeys(r[1] for r in rows))
jobs = list(dict.fromkeys(r[2] for r in rows))
print(f"\nRAID-5, {sys.argv[3]} x {sys.argv[4]} sparse members in {sys.argv[5]}, "
      f"{sys.argv[6]} s per run, QD32; randwrite4k over the whole volume, "
      f"randread4k over the prefilled span\n")
print("| job | mode | IOPS (per round) | mean IOPS | vs off (per-round median, min-max) | server CPU µs/I/O |")
print("|---|---|---|---:|---:|---:|")
for job in jobs:
    off = acc.get(("off", job))
    base = sum(i for i, _ in off) / len(off) if off else 0
    for mode in modes:
        v = acc.get((mode, job))
        if not v:
            continue
        mean = sum(i for i, _ in v) / len(v)
        cpu = sum(c for _, c in v) / len(v)
        per = " / ".join(f"{i:.0f}" for i, _ in v)
        ratio = f"{mean / base:.2f}" if base else "-"
        if base and off and len(off) == len(v):
            # Rounds alternate modes: round k of a mode against round k of off.
            per_round = [i / o for (i, _), (o, _) in zip(v, off) if o]
            med = sorted(per_round)[len(per_round) // 2]
            ratio += f" (median {med:.2f}, {min(per_round):.2f}-{max(per_round):.2f})"
        print(f"| {job} | {mode} | {per} | {mean:.0f} | {ratio} | {cpu:.1f} |")
PY
