#!/usr/bin/env bash
# split-walk.sh — open time of a version-3 pool with many volumes and
# split records, and the completer's walk of its split pages (issue 11,
# docs/FORMAT.md §11 "Completion"), two vraid builds alternated (ABBA).
#
# Laid once with VRAID_B: a RAID-0 array (2 sparse members of MEMBER_SIZE)
# with a version-3 pool of CLUSTER clusters, NVOL volumes of VOLSIZE (4k
# into each cluster), a snapshot of each, then 4k more into each cluster
# of each volume (a split per cluster: NVOL x VOLSIZE/CLUSTER records; 16
# volumes at a time), flushed, and the daemon SIGKILLed at once: the splits hold their bases
# on disk. Then ROUNDS pairs of rounds A B B A: start the daemon, time
# from the spawn to the first answer of `pool list` (the open), and for a
# build that walks (its "split pages walked" log line: map pages read,
# records completed, walk ms) wait for the walk; then SIGTERM. The first
# B round completes the records (throttled, 1 ms a granule); later rounds
# walk a pool whose records are complete (the walk's reading cost alone).
#
# Environment (defaults in brackets):
#   VRAID_A [target/release/vraid-main]  VRAID_B [target/release/vraid]
#   NVOL [128]  VOLSIZE [4M]  CLUSTER [256K]  MEMBER_SIZE [8G]  ROUNDS [2]
#   WORKDIR [/var/tmp/vraid-split-walk]
#   PROBE [0] seconds of fio 4k randwrite QD16 on volume v0 right after
#     each open (0: none): in B's first round the walk is completing
#     records meanwhile, in the others nothing runs (IOPS, p99)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VRAID_A=${VRAID_A:-target/release/vraid-main}
VRAID_B=${VRAID_B:-target/release/vraid}
NVOL=${NVOL:-128}
VOLSIZE=${VOLSIZE:-4M}
CLUSTER=${CLUSTER:-256K}
MEMBER_SIZE=${MEMBER_SIZE:-8G}
ROUNDS=${ROUNDS:-2}
WORKDIR=${WORKDIR:-/var/tmp/vraid-split-walk}
PROBE=${PROBE:-0}

log() { printf '[split-walk %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
for b in "$VRAID_A" "$VRAID_B"; do [[ -x $b ]] || die "$b not found"; done
command -v qemu-io >/dev/null || die "qemu-io not found (apt-get install qemu-utils)"

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
CONTROL=$WORKDIR/control.sock
SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -"${1:-TERM}" "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap 'stop_server; rm -rf "$WORKDIR"' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
ctl() { "$VRAID_B" "$@" --control "$CONTROL" >/dev/null; }
uri() { echo "nbd://127.0.0.1:$PORT/$1"; }

# start_server VRAID LOG — OPEN_MS = the ms from the spawn to `pool list`
# (not printed: a $(...) subshell would lose SERVER_PID).
start_server() {
    local t0 t1
    PORT=$(free_port)
    t0=$(date +%s%N)
    RUST_LOG=info "$1" serve --config "$WORKDIR/vraid.toml" --nbd "127.0.0.1:$PORT" \
        --control "$CONTROL" >"$2" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 3000); do
        if "$1" pool list --control "$CONTROL" >/dev/null 2>&1; then
            t1=$(date +%s%N)
            OPEN_MS=$(((t1 - t0) / 1000000))
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || die "serve exited: $(tail -n 5 "$2")"
        sleep 0.01
    done
    die "server not up"
}

lay() {
    local paths=() cs n writes v c
    for i in 0 1; do
        truncate -s "$MEMBER_SIZE" "$WORKDIR/m$i.img"
        paths+=("$WORKDIR/m$i.img")
    done
    "$VRAID_B" create --level 0 --name pooled "${paths[@]}" >"$WORKDIR/create.log" 2>&1 ||
        die "create failed: $(tail -n 3 "$WORKDIR/create.log")"
    printf '[[volume]]\nname = "pooled"\nlevel = 0\nmembers = [%s]\n' \
        "$(printf '"%s", ' "${paths[@]}" | sed 's/, $//')" >"$WORKDIR/vraid.toml"
    start_server "$VRAID_B" "$WORKDIR/serve-lay.log"
    ctl pool create pooled --cluster-size "$CLUSTER" --split-clusters
    cs=$(numfmt --from=iec "$CLUSTER")
    n=$(($(numfmt --from=iec "$VOLSIZE") / cs))
    log "laying $NVOL volumes of $VOLSIZE, $n clusters each, a snapshot of each, then splits"
    for ((v = 0; v < NVOL; v++)); do
        ctl volume create pooled "v$v" --size "$VOLSIZE"
        writes=()
        for ((c = 0; c < n; c++)); do writes+=(-c "write -P 1 $((c * cs)) 4k"); done
        qemu-io -f raw "${writes[@]}" "$(uri "v$v")" >/dev/null
        ctl volume snapshot "v$v" "s$v"
    done
    # The splits in one burst (16 clients at a time) and the kill at once:
    # the completer (1 ms a granule) is left far behind.
    writes=()
    for ((c = 0; c < n; c++)); do writes+=(-c "write -P 2 $((c * cs + 65536)) 4k"); done
    local pids=()
    for ((v = 0; v < NVOL; v++)); do
        qemu-io -f raw "${writes[@]}" -c flush "$(uri "v$v")" >/dev/null &
        pids+=($!)
        if ((${#pids[@]} == 16)); then wait "${pids[@]}"; pids=(); fi
    done
    ((${#pids[@]} == 0)) || wait "${pids[@]}"
    stop_server KILL
}

round() { # PEER ROUND NTH
    local bin=$VRAID_A ms walk=""
    [[ $1 == B ]] && bin=$VRAID_B
    local logf=$WORKDIR/serve-$1-$2-$3.log
    start_server "$bin" "$logf"
    ms=$OPEN_MS
    local io="-"
    if [[ $PROBE != 0 ]]; then # clients while the walk completes (B's first round) or not
        io=$(fio --name=probe --ioengine=nbd --uri="$(uri v0)" --rw=randwrite --bs=4k \
            --iodepth=16 --size=4M --time_based=1 --runtime="$PROBE" --lat_percentiles=1 \
            --output-format=json | python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]["write"]; print("%d IOPS p99 %.2f ms" % (j["iops"], j["lat_ns"]["percentile"]["99.000000"] / 1e6))')
    fi
    for _ in $(seq 6000); do
        walk=$(sed 's/\x1b\[[0-9;]*m//g' "$logf" | grep -o 'split pages walked.*' || true)
        [[ -n $walk || $1 == A ]] && break
        sleep 0.05
    done
    stop_server
    log "$1 round $2.$3: open $ms ms; ${walk:-no walk}; fio on v0: $io"
    printf '%s\t%s.%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$ms" "$walk" "$io" >>"$WORKDIR/results.tsv"
}

lay
log "load: $(uptime)"
for n in $(seq "$ROUNDS"); do
    round A "$n" 1
    round B "$n" 1
    round B "$n" 2
    round A "$n" 2
done
log "load: $(uptime)"
cat "$WORKDIR/results.tsv"
