#!/usr/bin/env bash
# checksum-compare.sh — vraid with per-block checksums on against off, in one run.
#
# For each level (RAID-5 over 3 members, RAID-1 over 2) two identical arrays
# are created: one served as usual (checksums on, the default) and one with
# `vraid serve --no-checksums`. Each is prefilled with a sequential 1M write,
# then fio (libnbd engine) runs the same jobs on both, one after the other:
# 4k random read and write (iodepth 32) and 1M sequential read and write
# (iodepth 8). It prints a markdown table with the on/off ratio per job
# (throughput on ÷ off: 1.00 = no overhead; the goal is >= 0.90).
#
# Environment (defaults in brackets):
#   SIZE      volume size [1G]        RUNTIME  seconds per job [10]
#   RAMP      ramp seconds [2]        LEVELS   levels ["5 1"]
#   CHUNK     chunk size [64K]        WORKDIR  [target/checksum-compare]
#   VRAID     binary [target/release/vraid]
#   VRAID_IO_ENGINE  --io-engine of vraid serve [auto]
#   JOBS      jobs to run ["randread4k randwrite4k seqread1m seqwrite1m"]
#   ORDER     which array runs first ["off on"]
#   FIO_EXTRA more fio options for every job, e.g. "--fsync=1" to flush
#             after each write (checksum pages are written back per flush) [""]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-2}
LEVELS=${LEVELS:-"5 1"}
CHUNK=${CHUNK:-64K}
WORKDIR=${WORKDIR:-target/checksum-compare}
VRAID=${VRAID:-target/release/vraid}
VRAID_IO_ENGINE=${VRAID_IO_ENGINE:-auto}
ORDER=${ORDER:-"off on"}
JOBS=${JOBS:-"randread4k randwrite4k seqread1m seqwrite1m"}

log() { printf '[checksum-compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v fio >/dev/null || die "fio not found (apt-get install fio)"
command -v python3 >/dev/null || die "python3 not found"
[[ -x $VRAID ]] || die "$VRAID not found: cargo build --release -p vraid"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"

bytes() { numfmt --from=iec "${1%B}"; }
SIZE_BYTES=$(bytes "$SIZE")
MIB=$((1 << 20))
# Metadata in front of the data area (docs/FORMAT.md §1) plus slack.
headroom() { echo $(($1 / 512 + 4 * MIB)); }

mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
RESULTS=$WORKDIR/results.tsv
: >"$RESULTS"
SERVER_PID=

cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

job_args() {
    case $1 in
        randread4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
        randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
        seqread1m) echo "--rw=read --bs=1M --iodepth=8" ;;
        seqwrite1m) echo "--rw=write --bs=1M --iodepth=8" ;;
    esac
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# run_target LEVEL MODE(on|off)
run_target() {
    local level=$1 mode=$2 name="r$1-$2" members data member_bytes port dir
    members=$([[ $level == 5 ]] && echo 3 || echo 2)
    data=$([[ $level == 5 ]] && echo $((SIZE_BYTES / 2)) || echo "$SIZE_BYTES")
    member_bytes=$((data + $(headroom "$data")))
    dir=$WORKDIR/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    local paths=()
    for ((i = 0; i < members; i++)); do paths+=("$dir/m$i.img"); done
    "$VRAID" create --level "$level" --chunk-size "$CHUNK" \
        --member-size "$((member_bytes / MIB))M" --name vol "${paths[@]}" >"$dir/create.log" 2>&1 ||
        die "$name: create failed: $(tail -n 3 "$dir/create.log")"
    port=$(free_port)
    local extra=()
    [[ $mode == off ]] && extra+=(--no-checksums)
    "$VRAID" serve --nbd "127.0.0.1:$port" --control "$dir/control.sock" \
        --io-engine "$VRAID_IO_ENGINE" "${extra[@]}" "${paths[@]}" >"$dir/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "$name: serve exited: $(tail -n 5 "$dir/serve.log")"
        sleep 0.1
    done
    local uri="nbd://127.0.0.1:$port/vol"
    log "$name: prefill $SIZE"
    fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 \
        --size="$SIZE_BYTES" --output-format=json --output="$dir/prefill.json" >/dev/null
    for job in $JOBS; do
        log "$name: $job (${RUNTIME}s)"
        # shellcheck disable=SC2046,SC2086
        fio --name="$job" --ioengine=nbd --uri="$uri" $(job_args "$job") \
            --size="$SIZE_BYTES" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
            --randrepeat=0 ${FIO_EXTRA:-} --output-format=json --output="$dir/$job.json" >/dev/null
        printf '%s\t%s\t%s\t%s\n' "$level" "$mode" "$job" "$dir/$job.json" >>"$RESULTS"
    done
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || die "$name: serve exited with an error"
    SERVER_PID=
    grep -q "checksum mismatch" "$dir/serve.log" && die "$name: checksum errors during the bench"
    rm -f "${paths[@]}"
}

for level in $LEVELS; do
    for mode in $ORDER; do run_target "$level" "$mode"; done
done

python3 - "$RESULTS" "$SIZE" "$RUNTIME" <<'PY'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
res = {}
for level, mode, job, path in rows:
    j = json.load(open(path))["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    res[(level, mode, job)] = (side["iops"], side["bw"] / 1024)
print(f"\nchecksums on vs off (SIZE={sys.argv[2]}, RUNTIME={sys.argv[3]}s)\n")
print("| level | job | off IOPS | on IOPS | off MiB/s | on MiB/s | on/off |")
print("|---|---|---:|---:|---:|---:|---:|")
for level in sorted({r[0] for r in rows}, reverse=True):
    for job in ["randread4k", "randwrite4k", "seqread1m", "seqwrite1m"]:
        if (level, "on", job) not in res or (level, "off", job) not in res:
            continue
        (oi, ob), (ni, nb) = res[(level, "off", job)], res[(level, "on", job)]
        print(f"| raid{level} | {job} | {oi:.0f} | {ni:.0f} | {ob:.1f} | {nb:.1f} | {ni / oi if oi else 0:.2f} |")
PY
