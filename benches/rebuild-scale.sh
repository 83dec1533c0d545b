#!/usr/bin/env bash
# rebuild-scale.sh — issue 15, "work proportional to data": rebuild time of
# a RAID-5 of four sparse MEMBER_SIZE members (4 TiB: a 12 TiB volume)
# holding SMALL vs LARGE bytes of data, in one run, rounds alternated
# (small, large, small, large, ...).
#
# Each round: create the array on fresh sparse files (WORKDIR, on the disk),
# serve it, write the data as four sequential runs spread over the volume
# (fio, nbd engine, 1M writes: sequential, see the ENOSPC note in the
# preamble of docs/STATUS.md), set the rebuild rate unlimited, then fail,
# remove and add back member 1 (wiped and rebuilt). The time is from `add`
# until status shows the rebuild finished; the server's utime+stime over
# that interval (/proc/PID/stat) is its CPU. Copied and skipped bytes come
# from status `last_sync`. Prints a markdown table (mean over rounds) and
# the large/small ratios; the rebuild should scale with the data, not the
# 4 TiB capacity.
#
# Environment (defaults in brackets):
#   MEMBER_SIZE [4T]  SMALL [1G]  LARGE [4G]  ROUNDS [2]
#   WORKDIR [/var/tmp/vraid-rebuild-scale]  VRAID [target/release/vraid]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBER_SIZE=${MEMBER_SIZE:-4T}
SMALL=${SMALL:-1G}
LARGE=${LARGE:-4G}
ROUNDS=${ROUNDS:-2}
WORKDIR=${WORKDIR:-/var/tmp/vraid-rebuild-scale}
VRAID=${VRAID:-target/release/vraid}

log() { printf '[rebuild-scale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in fio python3 "$VRAID"; do
    command -v "$tool" >/dev/null || die "missing: $tool"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
W=$(cd "$WORKDIR" && pwd)
M=("$W/m0.img" "$W/m1.img" "$W/m2.img" "$W/m3.img")
CTL="$W/ctl.sock"
PORT=$((20000 + RANDOM % 20000))
URI="nbd://127.0.0.1:$PORT/vol0"
PID=
trap '[[ -n $PID ]] && kill -KILL $PID 2>/dev/null; rm -rf "$W"; true' EXIT
HZ=$(getconf CLK_TCK)

cpu_secs() { awk -v hz="$HZ" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
status() { "$VRAID" status --control "$CTL" --json; }
vol() { status | python3 -c "import json,sys; v=json.load(sys.stdin)['volumes'][0]; print($1)"; }

round() { # data bytes -> "secs copied skipped cpu"
    local data=$1
    rm -f "${M[@]}"
    for m in "${M[@]}"; do truncate -s "$MEMBER_SIZE" "$m"; done
    "$VRAID" create --level 5 --chunk-size 64K --member-size 256M --name vol0 "${M[@]}" >/dev/null
    "$VRAID" serve --nbd "127.0.0.1:$PORT" --control "$CTL" "${M[@]}" >"$W/serve.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do [[ -S $CTL ]] && break; sleep 0.1; done
    [[ -S $CTL ]] || { cat "$W/serve.log" >&2; die "vraid did not start"; }
    local size
    size=$(vol "v['size']")
    for i in 0 1 2 3; do
        fio --name="w$i" --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 \
            --offset=$((size / 4 * i + i * (3 << 20))) --size=$((data / 4)) >/dev/null
    done
    "$VRAID" set --control "$CTL" vol0 --rebuild-max-mbps 0 >/dev/null
    "$VRAID" fail --control "$CTL" vol0 1 >/dev/null
    "$VRAID" remove --control "$CTL" vol0 1 >/dev/null
    local c0 t0 c1 t1
    c0=$(cpu_secs "$PID")
    t0=$(date +%s.%N)
    "$VRAID" add --control "$CTL" vol0 "${M[1]}" --force >/dev/null
    until [[ $(vol "v['sync'] is None and (v.get('last_sync') or {}).get('kind') == 'rebuild'") == True ]]; do
        sleep 0.05
    done
    t1=$(date +%s.%N)
    c1=$(cpu_secs "$PID")
    local done skipped
    done=$(vol "v['last_sync']['done_bytes']")
    skipped=$(vol "v['last_sync']['skipped_bytes']")
    kill -TERM "$PID"; wait "$PID" || true; PID=
    rm -f "${M[@]}"
    python3 -c "print($t1 - $t0, $done - $skipped, $skipped, $c1 - $c0)"
}

declare -A SECS COPIED SKIPPED CPU
for label in small large; do SECS[$label]=0; COPIED[$label]=0; SKIPPED[$label]=0; CPU[$label]=0; done
for r in $(seq "$ROUNDS"); do
    for label in small large; do
        if [[ $label == small ]]; then size=$SMALL; else size=$LARGE; fi
        log "round $r: $label ($size on 4 x $MEMBER_SIZE)"
        read -r s c k u <<<"$(round "$(numfmt --from=iec "$size")")"
        log "  rebuild $s s, copied $c, skipped $k, server CPU $u s"
        SECS[$label]=$(python3 -c "print(${SECS[$label]} + $s / $ROUNDS)")
        COPIED[$label]=$c; SKIPPED[$label]=$k
        CPU[$label]=$(python3 -c "print(${CPU[$label]} + $u / $ROUNDS)")
    done
done

echo "| data on 4 x $MEMBER_SIZE RAID-5 | rebuild s | copied MiB/member | skipped GiB/member | server CPU s |"
echo "|---|---:|---:|---:|---:|"
for label in small large; do
    if [[ $label == small ]]; then size=$SMALL; else size=$LARGE; fi
    python3 -c "print(f'| $size | {${SECS[$label]}:.2f} | {${COPIED[$label]}/2**20:.0f} | {${SKIPPED[$label]}/2**30:.0f} | {${CPU[$label]}:.2f} |')"
done
python3 -c "print(f'large/small: time {${SECS[large]}/${SECS[small]}:.2f}x, copied {${COPIED[large]}/${COPIED[small]}:.2f}x')"
