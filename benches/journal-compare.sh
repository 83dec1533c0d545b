#!/usr/bin/env bash
# journal-compare.sh — RAID-5 partial-stripe write speed with the write-hole
# protection (partial-parity journal, docs/FORMAT.md §9) on against off, in
# one run, over NBD with fio's libnbd engine. Goal: "on" within 15 % of "off".
#
# One 4-member RAID-5 (sparse members of MEMBER_SIZE: 4G gives a 16 MiB ring)
# is prefilled over SIZE once (and synced, so no writeback of it overlaps a
# measurement), then served twice: with the protection on (the default) and
# with --no-journal; every job runs time based in each. With ROUNDS > 1
# the on and off servers alternate ROUNDS times (on, off, on, off, ...) and
# the table shows the median IOPS of each (a shared host is noisy).
#
# Environment (defaults in brackets):
#   SIZE      bytes of the volume the jobs cover [1G]
#   RUNTIME   seconds per job [5]; RAMP ramp seconds [1]
#   ROUNDS    on/off alternations [1]
#   JOBS      ["randwrite4k randwrite16k"] (both iodepth 32)
#   CHUNK     chunk size [64K]; MEMBER_SIZE per member [4G]
#   WORKDIR   [target/journal-compare]; VRAID [target/release/vraid]
# Output: a table on stdout and $WORKDIR/results.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
ROUNDS=${ROUNDS:-1}
JOBS=${JOBS:-"randwrite4k randwrite16k"}
CHUNK=${CHUNK:-64K}
MEMBER_SIZE=${MEMBER_SIZE:-4G}
WORKDIR=${WORKDIR:-target/journal-compare}
VRAID=${VRAID:-target/release/vraid}
OUT=$WORKDIR/results.md

for tool in fio "$VRAID"; do
    command -v "$tool" >/dev/null || { echo "journal-compare: $tool not found" >&2; exit 2; }
done
rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"

job_args() {
    case $1 in
        randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
        randwrite16k) echo "--rw=randwrite --bs=16k --iodepth=32" ;;
        *) echo "journal-compare: unknown job $1" >&2; exit 2 ;;
    esac
}

median() { python3 -c 'import statistics,sys; print(round(statistics.median(map(int, sys.argv[1:]))))' "$@"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

members=("$WORKDIR"/m{0..3}.img)
"$VRAID" create --level 5 --chunk-size "$CHUNK" --member-size "$MEMBER_SIZE" \
    --name bench "${members[@]}" >"$WORKDIR/create.log" 2>&1

declare -A IOPS
modes=(prefill)
for _ in $(seq "$ROUNDS"); do modes+=(on off); done
for mode in "${modes[@]}"; do
    port=$(free_port)
    flags=()
    [[ $mode != on ]] && flags=(--no-journal)
    "$VRAID" serve --nbd "127.0.0.1:$port" --control "$WORKDIR/ctl.sock" "${flags[@]}" \
        "${members[@]}" >"$WORKDIR/serve-$mode.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    uri="nbd://127.0.0.1:$port/bench"
    if [[ $mode == prefill ]]; then
        fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 \
            --size="$SIZE" >"$WORKDIR/prefill.log" 2>&1
        kill -TERM "$pid"
        wait "$pid" || true
        sync
        continue
    fi
    for job in $JOBS; do
        read -r -a args <<<"$(job_args "$job")"
        fio --name="$job-$mode" --ioengine=nbd --uri="$uri" "${args[@]}" --size="$SIZE" \
            --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --group_reporting \
            --output-format=json --output="$WORKDIR/$job-$mode.json" >/dev/null 2>&1
        iops=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["write"]["iops"]))' "$WORKDIR/$job-$mode.json")
        IOPS[$job-$mode]="${IOPS[$job-$mode]:-} $iops"
        echo "journal-compare: $job protection $mode: $iops IOPS" >&2
    done
    kill -TERM "$pid"
    wait "$pid" || true
done

{
    echo "| job (RAID-5, 4 members, chunk $CHUNK, SIZE $SIZE) | protection on, IOPS | off, IOPS | on/off |"
    echo "|---|---:|---:|---:|"
    for job in $JOBS; do
        read -r -a ons <<<"${IOPS[$job-on]}"
        read -r -a offs <<<"${IOPS[$job-off]}"
        on=$(median "${ons[@]}") off=$(median "${offs[@]}")
        ratio=$(python3 -c "print(f'{$on/$off:.2f}')")
        echo "| $job QD32 | $on | $off | $ratio |"
    done
} | tee "$OUT"
