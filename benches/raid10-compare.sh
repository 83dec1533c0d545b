#!/usr/bin/env bash
# raid10-compare.sh — RAID-10 n2 over 4 members against RAID-1 and RAID-0
# over the same number of members, in one run, over NBD with fio's
# libnbd engine.
#
# Arrays (4 sparse members of MEMBER_SIZE each, chunk CHUNK):
#   raid0: 4 members striped; raid1: a 4-way mirror; raid10: n2 over 4
#   (two mirrored pairs, striped). Each is prefilled over SIZE (1M
#   sequential writes), then the jobs run time based against each in turn;
#   with ROUNDS > 1 the levels alternate (raid0, raid1, raid10, raid0, ...)
#   and the table shows medians. Server CPU per I/O is utime+stime of the
#   vraid process (/proc/PID/stat) over the job divided by the job's I/Os.
# Random writes are rate limited (RATE_IOPS, fio --rate_iops, 0 = none):
# this machine's ext4 returns spurious ENOSPC when O_DIRECT 4k random
# writes fill holes of several sparse files at a high rate.
#
# Environment (defaults in brackets):
#   SIZE [256M] bytes of each volume the jobs cover; RUNTIME [5] s per job
#   RAMP [1]; ROUNDS [1]; CHUNK [64K]; MEMBER_SIZE [512M]; RATE_IOPS [0]
#   JOBS ["randread4k randwrite4k read1M write1M"]
#   WORKDIR [target/raid10-compare]; VRAID [target/release/vraid]
# Output: a table on stdout and in $WORKDIR/results.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIZE=${SIZE:-256M}
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
ROUNDS=${ROUNDS:-1}
CHUNK=${CHUNK:-64K}
MEMBER_SIZE=${MEMBER_SIZE:-512M}
RATE_IOPS=${RATE_IOPS:-0}
JOBS=${JOBS:-"randread4k randwrite4k read1M write1M"}
WORKDIR=${WORKDIR:-target/raid10-compare}
VRAID=${VRAID:-target/release/vraid}
OUT=$WORKDIR/results.md
LEVELS="raid0 raid1 raid10"

for tool in fio python3 "$VRAID"; do
    command -v "$tool" >/dev/null || { echo "raid10-compare: $tool not found" >&2; exit 2; }
done
rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
W=$(cd "$WORKDIR" && pwd)

job_args() {
    local rate=""
    [[ $RATE_IOPS -gt 0 ]] && rate="--rate_iops=$RATE_IOPS"
    case $1 in
        randread4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
        randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32 $rate" ;;
        read1M) echo "--rw=read --bs=1M --iodepth=8" ;;
        write1M) echo "--rw=write --bs=1M --iodepth=8" ;;
        *) echo "raid10-compare: unknown job $1" >&2; exit 2 ;;
    esac
}
median() { python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A CREATE=([raid0]="--level 0" [raid1]="--level 1" [raid10]="--level 10 --layout n2")
members() { for i in 0 1 2 3; do echo "$W/$1-m$i.img"; done; }

PID=""
PORT=""
serve() { # level
    local l=$1
    mapfile -t ms < <(members "$l")
    PORT=$(free_port)
    "$VRAID" serve --nbd "127.0.0.1:$PORT" --control "$W/$l.sock" "${ms[@]}" \
        >>"$W/serve-$l.log" 2>&1 &
    PID=$!
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "raid10-compare: $l did not start" >&2
    exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }

for l in $LEVELS; do
    mapfile -t ms < <(members "$l")
    for m in "${ms[@]}"; do truncate -s "$MEMBER_SIZE" "$m"; done
    read -r -a create <<<"${CREATE[$l]}"
    "$VRAID" create "${create[@]}" --chunk-size "$CHUNK" --member-size "$MEMBER_SIZE" \
        --name "$l" "${ms[@]}" >"$W/create-$l.log" 2>&1
    serve "$l"
    fio --name=prefill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$l" --rw=write --bs=1M \
        --iodepth=8 --size="$SIZE" >"$W/prefill-$l.log" 2>&1
    stop
done
sync

declare -A IOPS CPU
tick_us=$((1000000 / $(getconf CLK_TCK)))
for _ in $(seq "$ROUNDS"); do
    for l in $LEVELS; do
        serve "$l"
        for job in $JOBS; do
            read -r -a args <<<"$(job_args "$job")"
            before=$(cpu_ticks "$PID")
            fio --name="$job" --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$l" "${args[@]}" \
                --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
                --group_reporting --output-format=json --output="$W/$job-$l.json" >/dev/null 2>&1
            after=$(cpu_ticks "$PID")
            read -r iops ios < <(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(round(j["read"]["iops"] + j["write"]["iops"]), j["read"]["total_ios"] + j["write"]["total_ios"])' "$W/$job-$l.json")
            cpu=$(python3 -c "print(round(($after - $before) * $tick_us / max($ios, 1), 1))")
            IOPS[$job-$l]="${IOPS[$job-$l]:-} $iops"
            CPU[$job-$l]="${CPU[$job-$l]:-} $cpu"
            echo "raid10-compare: $job $l: $iops IOPS, $cpu CPU us/IO" >&2
        done
        stop
    done
done

{
    echo "| job (4 members, chunk $CHUNK, SIZE $SIZE, rounds $ROUNDS) | RAID-0 IOPS | RAID-1 IOPS | RAID-10 n2 IOPS | RAID-10/RAID-1 | RAID-10/RAID-0 | CPU us/IO 0 / 1 / 10 |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for job in $JOBS; do
        read -r -a a0 <<<"${IOPS[$job-raid0]}"
        read -r -a a1 <<<"${IOPS[$job-raid1]}"
        read -r -a a10 <<<"${IOPS[$job-raid10]}"
        read -r -a c0 <<<"${CPU[$job-raid0]}"
        read -r -a c1 <<<"${CPU[$job-raid1]}"
        read -r -a c10 <<<"${CPU[$job-raid10]}"
        i0=$(median "${a0[@]}") i1=$(median "${a1[@]}") i10=$(median "${a10[@]}")
        python3 -c "print(f'| $job | {$i0:.0f} | {$i1:.0f} | {$i10:.0f} | {$i10/$i1:.2f} | {$i10/$i0:.2f} | {$(median "${c0[@]}"):.1f} / {$(median "${c1[@]}"):.1f} / {$(median "${c10[@]}"):.1f} |')"
    done
} | tee "$OUT"
