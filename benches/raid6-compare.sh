#!/usr/bin/env bash
# raid6-compare.sh — RAID-6 against RAID-5 and RAID-0 of the same data
# members, in one run, over NBD with fio's libnbd engine, and RAID-6's
# two-member rebuild against its one-member rebuild and RAID-5's.
#
# Arrays (sparse members of MEMBER_SIZE, chunk CHUNK, 3 data members each):
#   raid0: 3 members; raid5: 4 members; raid6: 5 members.
# Each is prefilled over SIZE (1M sequential writes), then the jobs run
# time based against each in turn; with ROUNDS > 1 the levels alternate
# ABBA (raid0, raid5, raid6, raid6, raid5, raid0, ...) and the table shows
# medians. Server
# CPU per I/O is utime+stime of the vraid process (/proc/PID/stat) over
# the job divided by the job's I/Os.
# Rebuild: after the jobs, RAID-5 loses one member, RAID-6 one and then
# (a fresh run) two: the array is stopped, the member files are deleted,
# and it is served again from a config naming as many fresh spares (so a
# RAID-6 rebuilds two in one pass), at an unlimited rebuild rate; the time
# from the start until every rebuild finished is taken from the daemon's
# log (the written-region map limits the copy to the regions written).
#
# Environment (defaults in brackets):
#   SIZE [512M] bytes of each volume the jobs cover; RUNTIME [5] s per job
#   RAMP [1]; ROUNDS [1]; CHUNK [64K]; MEMBER_SIZE [1G]
#   JOBS ["randwrite4k randread4k write1M"] (also write768k, and
#   randwrite4kqd1: 4k random writes at iodepth 1, journal latency bound)
#   LEVELS ["raid0 raid5 raid6"]; REBUILD [on]: off skips the rebuilds
#   QD [8]: iodepth of the sequential write jobs
#   WORKDIR [target/raid6-compare]; VRAID [target/release/vraid]
#   JOURNAL [off]: on serves RAID-5 and RAID-6 with their write-hole
#   journals (the default of `vraid serve`), off with --no-journal
#   MEMBERS [files]: files = every member a sparse file in WORKDIR (one
#   tmpfs or one disk: RAID-6 moves 5/3 the bytes through that one device,
#   so ~0.6x of RAID-0 is the bound there); independent = every member its
#   own bandwidth-limited device, as separate disks are: one nbdkit per
#   member (`nbdkit --filter=rate memory MEMBER_SIZE`, reached as
#   nbd+unix:///?socket=...), each limited to MEMBER_MBPS [40] MB/s (the
#   rate filter has separate budgets for reads and writes, like a
#   full-duplex link; a disk shares one). No rebuilds (REBUILD=off).
#   MEMBER_WRITE_DELAY [unset]: e.g. 2ms adds nbdkit's delay filter
#   (every write to a member takes that long more, as a disk's write
#   latency), so latency-bound jobs (randwrite4kqd1 with JOURNAL=on: two
#   journal rings per write) measure the member round trips, not the CPU.
#   The member servers' CPU (all of a level's nbdkits, % of one core) is
#   shown so the limit can be checked to be the rate, not the CPU.
#   Needs nbdkit with its memory plugin and rate filter (Debian: nbdkit).
# Output: tables on stdout and in $WORKDIR/results.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIZE=${SIZE:-512M}
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
ROUNDS=${ROUNDS:-1}
CHUNK=${CHUNK:-64K}
MEMBER_SIZE=${MEMBER_SIZE:-1G}
JOBS=${JOBS:-"randwrite4k randread4k write1M"}
LEVELS=${LEVELS:-"raid0 raid5 raid6"}
REBUILD=${REBUILD:-on}
QD=${QD:-8}
WORKDIR=${WORKDIR:-target/raid6-compare}
VRAID=${VRAID:-target/release/vraid}
OUT=$WORKDIR/results.md
JOURNAL=${JOURNAL:-off}
NOJ=(--no-journal)
[[ $JOURNAL == on ]] && NOJ=()
MEMBERS=${MEMBERS:-files}
MEMBER_MBPS=${MEMBER_MBPS:-40}
case $MEMBERS in
    files) ;;
    independent)
        command -v nbdkit >/dev/null || { echo "raid6-compare: nbdkit not found" >&2; exit 2; }
        REBUILD=off ;;
    *) echo "raid6-compare: MEMBERS is files or independent" >&2; exit 2 ;;
esac

for tool in fio python3 "$VRAID"; do
    command -v "$tool" >/dev/null || { echo "raid6-compare: $tool not found" >&2; exit 2; }
done
rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
W=$(cd "$WORKDIR" && pwd)

job_args() {
    case $1 in
        randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
        randwrite4kqd1) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
        randread4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
        write1M) echo "--rw=write --bs=1M --iodepth=$QD" ;;
        write768k) echo "--rw=write --bs=768k --iodepth=$QD" ;;
        *) echo "raid6-compare: unknown job $1" >&2; exit 2 ;;
    esac
}
median() { python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])) if sys.argv[1:] else "float(\"nan\")")' "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A COUNT=([raid0]=3 [raid5]=4 [raid6]=5) LEVEL=([raid0]=0 [raid5]=5 [raid6]=6)
members() {
    local l=$1
    for i in $(seq 0 $((COUNT[$l] - 1))); do
        if [[ $MEMBERS == independent ]]; then
            echo "nbd+unix:///?socket=$W/$l-m$i.sock"
        else
            echo "$W/$l-m$i.img"
        fi
    done
}

# Independent members: one rate-limited nbdkit memory server per member,
# started once for the whole run (the arrays live in their memory).
declare -A MEMBER_PIDS=()
SERVER_PIDS=()
cleanup() {
    for pid in "${SERVER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
start_member_servers() { # level
    local l=$1 sock
    for i in $(seq 0 $((COUNT[$l] - 1))); do
        sock="$W/$l-m$i.sock"
        delay=() delay_arg=()
        if [[ -n ${MEMBER_WRITE_DELAY:-} ]]; then
            delay=(--filter=delay) delay_arg=(delay-write="$MEMBER_WRITE_DELAY")
        fi
        nbdkit -f -U "$sock" --filter=rate "${delay[@]}" memory "$MEMBER_SIZE" \
            rate="$((MEMBER_MBPS * 8))M" "${delay_arg[@]}" >>"$W/nbdkit-$l.log" 2>&1 &
        SERVER_PIDS+=($!)
        MEMBER_PIDS[$l]="${MEMBER_PIDS[$l]:-} $!"
        for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
        [[ -S $sock ]] || { echo "raid6-compare: nbdkit for $sock did not start" >&2; exit 1; }
    done
}
member_ticks() { # level: CPU ticks of its member servers
    local l=$1 t=0
    [[ $MEMBERS == independent ]] || { echo 0; return; }
    for pid in ${MEMBER_PIDS[$l]}; do t=$((t + $(cpu_ticks "$pid"))); done
    echo "$t"
}

PID=""
PORT=""
serve() { # level [extra args]
    local l=$1
    shift
    mapfile -t ms < <(members "$l")
    PORT=$(free_port)
    "$VRAID" serve --nbd "127.0.0.1:$PORT" --control "$W/$l.sock" "${NOJ[@]}" "$@" \
        "${ms[@]}" >>"$W/serve-$l.log" 2>&1 &
    PID=$!
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "raid6-compare: $l did not start" >&2
    exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }

for l in $LEVELS; do
    [[ $MEMBERS == independent ]] && start_member_servers "$l"
    mapfile -t ms < <(members "$l")
    "$VRAID" create --level "${LEVEL[$l]}" --chunk-size "$CHUNK" --member-size "$MEMBER_SIZE" \
        --name "$l" "${ms[@]}" >"$W/create-$l.log" 2>&1
    serve "$l"
    fio --name=prefill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$l" --rw=write --bs=1M \
        --iodepth=8 --size="$SIZE" >"$W/prefill-$l.log" 2>&1
    stop
done
sync

declare -A IOPS CPU MCPU LOAD
tick_us=$((1000000 / $(getconf CLK_TCK)))
read -r -a order <<<"$LEVELS"
for round in $(seq "$ROUNDS"); do
    levels=("${order[@]}")
    if ((round % 2 == 0)); then
        levels=()
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do levels+=("${order[$i]}"); done
    fi
    for l in "${levels[@]}"; do
        serve "$l"
        for job in $JOBS; do
            read -r -a args <<<"$(job_args "$job")"
            before=$(cpu_ticks "$PID") mbefore=$(member_ticks "$l")
            fio --name="$job" --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$l" "${args[@]}" \
                --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
                --group_reporting --output-format=json --output="$W/$job-$l.json" >/dev/null 2>&1
            after=$(cpu_ticks "$PID") mafter=$(member_ticks "$l")
            load=$(cut -d' ' -f1 /proc/loadavg)
            read -r iops ios < <(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(round(j["read"]["iops"] + j["write"]["iops"]), j["read"]["total_ios"] + j["write"]["total_ios"])' "$W/$job-$l.json")
            cpu=$(python3 -c "print(round(($after - $before) * $tick_us / max($ios, 1), 1))")
            # Member servers' CPU over the job (ramp included), % of a core.
            mcpu=$(python3 -c "print(round(($mafter - $mbefore) * $tick_us / 1e4 / ($RUNTIME + $RAMP)))")
            IOPS[$job-$l]="${IOPS[$job-$l]:-} $iops"
            CPU[$job-$l]="${CPU[$job-$l]:-} $cpu"
            MCPU[$job-$l]="${MCPU[$job-$l]:-} $mcpu"
            LOAD[$job]="${LOAD[$job]:-} $load"
            echo "raid6-compare: $job $l: $iops IOPS, $cpu CPU us/IO, members $mcpu % CPU, load $load" >&2
        done
        stop
    done
done

# Rebuild: `fails` members of level $1 failed, removed and replaced by
# fresh ones at once; prints the seconds until every rebuild finished.
rebuild_secs() { # level fails
    local l=$1 n=$2
    local roles=(1 3) quoted=() spares=()
    mapfile -t ms < <(members "$l")
    for r in "${roles[@]:0:$n}"; do
        rm -f "${ms[$r]}"
        truncate -s "$MEMBER_SIZE" "$W/$l-new$r-$n.img"
        spares+=("\"$W/$l-new$r-$n.img\"")
    done
    for m in "${ms[@]}"; do quoted+=("\"$m\""); done
    local cfg="$W/$l-$n.toml"
    printf '[[volume]]\nname = "%s"\nlevel = %s\nchunk_size = "%s"\nmembers = [%s]\nspares = [%s]\nwrite_hole_protection = false\nrebuild_max_mbps = 0\ncreate = { member_size = "%s" }\n' \
        "$l" "${LEVEL[$l]}" "$CHUNK" "$(IFS=,; echo "${quoted[*]}")" "$(IFS=,; echo "${spares[*]}")" \
        "$MEMBER_SIZE" >"$cfg"
    local t0 log
    log=$(($(wc -l <"$W/serve-$l.log") + 1))
    t0=$(date +%s.%N)
    PORT=$(free_port)
    "$VRAID" serve --nbd "127.0.0.1:$PORT" --control "$W/$l.sock" --config "$cfg" \
        >>"$W/serve-$l.log" 2>&1 &
    PID=$!
    for _ in $(seq 12000); do
        done_count=$(tail -n +"$log" "$W/serve-$l.log" | grep -c "rebuild of member .* finished" || true)
        [[ $done_count -ge $n ]] && break
        sleep 0.05
    done
    python3 -c "import time; print(round(time.time() - $t0, 2))"
    stop
    # The new members take the roles for the next run.
    for r in "${roles[@]:0:$n}"; do mv "$W/$l-new$r-$n.img" "${ms[$r]}"; done
}
r5=- r6one=- r6two=-
if [[ $REBUILD == on ]]; then
    r5=$(rebuild_secs raid5 1)
    r6one=$(rebuild_secs raid6 1)
    r6two=$(rebuild_secs raid6 2)
fi

{
    what="members $MEMBERS"
    [[ $MEMBERS == independent ]] && what="$what, $MEMBER_MBPS MB/s each"
    [[ -n ${MEMBER_WRITE_DELAY:-} ]] && what="$what, writes +$MEMBER_WRITE_DELAY"
    echo "| job (3 data members, chunk $CHUNK, SIZE $SIZE, rounds $ROUNDS, $what, journal $JOURNAL) | RAID-0 IOPS | RAID-5 IOPS | RAID-6 IOPS | RAID-6/RAID-5 | RAID-6/RAID-0 | CPU us/IO 0 / 5 / 6 | member servers % CPU 0 / 5 / 6 | load |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for job in $JOBS; do
        for l in raid0 raid5 raid6; do
            IOPS[$job-$l]=${IOPS[$job-$l]:-} CPU[$job-$l]=${CPU[$job-$l]:-} MCPU[$job-$l]=${MCPU[$job-$l]:-}
        done
        read -r -a m0 <<<"${MCPU[$job-raid0]}"
        read -r -a m5 <<<"${MCPU[$job-raid5]}"
        read -r -a m6 <<<"${MCPU[$job-raid6]}"
        read -r -a ld <<<"${LOAD[$job]:-}"
        read -r -a a0 <<<"${IOPS[$job-raid0]}"
        read -r -a a5 <<<"${IOPS[$job-raid5]}"
        read -r -a a6 <<<"${IOPS[$job-raid6]}"
        read -r -a c0 <<<"${CPU[$job-raid0]}"
        read -r -a c5 <<<"${CPU[$job-raid5]}"
        read -r -a c6 <<<"${CPU[$job-raid6]}"
        i0=$(median "${a0[@]}") i5=$(median "${a5[@]}") i6=$(median "${a6[@]}")
        python3 -c "print(f'| $job | {$i0:.0f} | {$i5:.0f} | {$i6:.0f} | {$i6/$i5:.2f} | {$i6/$i0:.2f} | {$(median "${c0[@]}"):.1f} / {$(median "${c5[@]}"):.1f} / {$(median "${c6[@]}"):.1f} | {$(median "${m0[@]}"):.0f} / {$(median "${m5[@]}"):.0f} / {$(median "${m6[@]}"):.0f} | {$(median "${ld[@]}"):.1f} |')"
    done
    echo
    echo "| rebuild after the jobs (unlimited rate, written regions) | seconds |"
    echo "|---|---:|"
    echo "| RAID-5, one member | $r5 |"
    echo "| RAID-6, one member | $r6one |"
    echo "| RAID-6, two members (one pass) | $r6two |"
} | tee "$OUT"
