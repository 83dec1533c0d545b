#!/usr/bin/env bash
# idle-rss.sh — issue 15, "memory that does not grow with the disk": the
# idle RSS of `vraid serve` for a RAID-5 of four sparse BIG members
# (16 TiB less 1 MiB: ext4's largest file with 4 KiB blocks is 16 TiB - 4 KiB)
# against the same array over four SMALL members, in one run, rounds
# alternated (small, big, small, big, ...), for each checksum layout.
#
# Each round: create the array on fresh sparse files in WORKDIR, serve it,
# wait until `vraid status` answers and the RSS has been stable for 2 s
# (sampled every 0.5 s, at most 30 s), record VmRSS and VmHWM from
# /proc/PID/status and the server's CPU ticks so far, stop it. Prints a
# markdown table (per layout and size: RSS per round, mean) and the big /
# small ratio (goal: big <= 16 MiB, ratio ~1: nothing sized by capacity).
#
# Environment (defaults in brackets):
#   BIG [16 TiB - 1 MiB, in bytes]  SMALL [1G]  ROUNDS [3]  LAYOUTS ["separate inline"]
#   WORKDIR [/var/tmp/vraid-idle-rss]  VRAID [target/release/vraid]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIG=${BIG:-$(((16 << 40) - (1 << 20)))}
SMALL=${SMALL:-1G}
ROUNDS=${ROUNDS:-3}
LAYOUTS=${LAYOUTS:-"separate inline"}
WORKDIR=${WORKDIR:-/var/tmp/vraid-idle-rss}
VRAID=${VRAID:-target/release/vraid}

log() { printf '[idle-rss %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ -x $VRAID ]] || die "$VRAID not found: cargo build --release -p vraid"
command -v python3 >/dev/null || die "python3 not found"

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
W=$(cd "$WORKDIR" && pwd)
RESULTS=$W/results.tsv
: >"$RESULTS"
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$W"
}
trap cleanup EXIT

kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# measure ROUND LAYOUT SIZE
measure() {
    local round=$1 layout=$2 size=$3 d="$W/a" paths=() i prev=-1 stable=0 rss port
    rm -rf "$d"
    mkdir -p "$d"
    for i in 0 1 2 3; do
        truncate -s "$size" "$d/m$i.img"
        paths+=("$d/m$i.img")
    done
    "$VRAID" create --level 5 --chunk-size 64K --name vol --checksum-layout "$layout" \
        "${paths[@]}" >"$d/create.log" 2>&1 || die "create: $(tail -n 3 "$d/create.log")"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$VRAID" serve --nbd "127.0.0.1:$port" --control "$d/ctl.sock" "${paths[@]}" >"$d/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        "$VRAID" status --control "$d/ctl.sock" >/dev/null 2>&1 && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "serve exited: $(tail -n 5 "$d/serve.log")"
        sleep 0.1
    done
    # Idle: the RSS unchanged over 4 samples 0.5 s apart (at most 30 s).
    for _ in $(seq 60); do
        rss=$(kib "$SERVER_PID" VmRSS)
        if [[ $rss == "$prev" ]]; then stable=$((stable + 1)); else stable=0; fi
        ((stable >= 4)) && break
        prev=$rss
        sleep 0.5
    done
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$layout" "$size" "$rss" "$(kib "$SERVER_PID" VmHWM)" >>"$RESULTS"
    log "round $round: $layout over 4 x $size: VmRSS $rss kB"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || die "serve exited with an error"
    SERVER_PID=
    rm -rf "$d"
}

for ((round = 0; round < ROUNDS; round++)); do
    for layout in $LAYOUTS; do
        if ((round % 2 == 0)); then
            measure "$round" "$layout" "$SMALL"
            measure "$round" "$layout" "$BIG"
        else
            measure "$round" "$layout" "$BIG"
            measure "$round" "$layout" "$SMALL"
        fi
    done
done

python3 - "$RESULTS" "$SMALL" "$BIG" <<'PY'
import sys
from collections import defaultdict
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
small, big = sys.argv[2], sys.argv[3]
acc = defaultdict(list)
for rnd, layout, size, rss, hwm in rows:
    acc[(layout, size)].append((int(rss), int(hwm)))
print(f"\nIdle RSS of `vraid serve`, RAID-5 over 4 sparse members, {small} vs {big}\n")
print("| layout | member size | VmRSS kB per round | mean VmRSS | peak VmHWM | big / small |")
print("|---|---|---|---:|---:|---:|")
for layout in dict.fromkeys(r[1] for r in rows):
    base = acc[(layout, small)]
    base_mean = sum(r for r, _ in base) / len(base)
    for size in (small, big):
        v = acc[(layout, size)]
        mean = sum(r for r, _ in v) / len(v)
        ratio = f"{mean / base_mean:.2f}" if size == big else "1.00"
        per = " / ".join(str(r) for r, _ in v)
        print(f"| {layout} | {size} | {per} | {mean:.0f} kB ({mean / 1024:.1f} MiB) | "
              f"{max(h for _, h in v)} kB | {ratio} |")
PY
