#!/usr/bin/env bash
# pool-compare.sh — a thin volume of a pool against the bare array (issue 11).
#
# One daemon serves two arrays of the same shape (LEVEL over MEMBERS sparse
# members of MEMBER_SIZE each, on the disk: WORKDIR defaults to /var/tmp):
# "bare" exported itself, and "pooled" carrying a pool (CLUSTER) whose
# thin volume "thin" (WORKSET, written once in full so its clusters are
# allocated) is the peer. ROUNDS rounds, the order of the peers
# alternated, each measure RUNTIME seconds of fio (nbd engine) and the
# server's utime+stime from /proc/PID/stat (the steadier measure on a
# shared host: CPU per I/O, where IOPS swing with the load of others):
#   randwrite   4k random writes at QD16 to allocated clusters (goal >= 0.9x)
#   randread    4k random reads at QD16 (goal >= 0.95x)
#   firsttouch  FT_IOS 4k writes at QD16, each to a cluster never written
#               (a fresh volume each round; on the bare array a region
#               never written) (goal >= 0.5x)
# Then the snapshot pause: a SNAP_SIZE volume with every cluster mapped,
# fio 4k random writes at QD16 on it plus a QD1 4k random-write probe, and
# a QD1 4k random-write probe on the other volume ("thin"); SNAPS
# snapshots taken one per second during the run (and deleted after). The
# probes' largest completion latency with snapshots against a run without
# is the client-visible pause (goal < 10 ms), with the snapshot commands'
# own times. ROUNDS=0 measures the pause only; SNAPS=0 skips it;
# WORKLOADS picks the steady workloads (say WORKLOADS=randread).
# Ratios: of the medians, and the median of each round's thin / bare
# (the two peers of a round run back to back, so a load swing between
# rounds cancels), for IOPS and for server CPU us/IO. On a loaded host
# prefer many short rounds (ROUNDS=10 RUNTIME=4).
#
# Environment (defaults in brackets):
#   LEVEL [0]  MEMBERS [2]  MEMBER_SIZE [16G]  CLUSTER [1M]  WORKSET [1G]
#   RUNTIME [10]  ROUNDS [3]  FT_IOS [1024]  SNAPS [5]  SNAP_SIZE [10G]
#   WORKLOADS ["randwrite randread firsttouch"]
#   WORKDIR [/var/tmp/vraid-pool-compare]  VRAID [target/release/vraid]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LEVEL=${LEVEL:-0}
MEMBERS=${MEMBERS:-2}
MEMBER_SIZE=${MEMBER_SIZE:-16G}
CLUSTER=${CLUSTER:-1M}
WORKSET=${WORKSET:-1G}
RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-3}
FT_IOS=${FT_IOS:-1024}
SNAPS=${SNAPS:-5}
SNAP_SIZE=${SNAP_SIZE:-10G}
WORKLOADS=${WORKLOADS:-randwrite randread firsttouch}
WORKDIR=${WORKDIR:-/var/tmp/vraid-pool-compare}
VRAID=${VRAID:-target/release/vraid}

log() { printf '[pool-compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v fio >/dev/null || die "fio not found (apt-get install fio)"
command -v python3 >/dev/null || die "python3 not found"
[[ -x $VRAID ]] || die "$VRAID not found: cargo build --release -p vraid"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"

rm -rf "$WORKDIR"
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
    rm -f "$WORKDIR"/*/m*.img
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ctl() { "$VRAID" "$@" --control "$CONTROL" >/dev/null; }
bytes() { numfmt --from=iec "$1"; }

create() {
    local dir=$WORKDIR/$1 paths=()
    mkdir -p "$dir"
    for ((i = 0; i < MEMBERS; i++)); do
        truncate -s "$MEMBER_SIZE" "$dir/m$i.img"
        paths+=("$dir/m$i.img")
    done
    "$VRAID" create --level "$LEVEL" --name "$1" "${paths[@]}" >"$dir/create.log" 2>&1 ||
        die "$1: create failed: $(tail -n 3 "$dir/create.log")"
}

members() { printf '"%s", ' "$WORKDIR/$1"/m*.img | sed 's/, $//'; }

start_server() {
    local cfg=$WORKDIR/vraid.toml
    printf '[[volume]]\nname = "bare"\nlevel = %s\nmembers = [%s]\n\n' "$LEVEL" "$(members bare)" >"$cfg"
    printf '[[volume]]\nname = "pooled"\nlevel = %s\nmembers = [%s]\n' "$LEVEL" "$(members pooled)" >>"$cfg"
    PORT=$(free_port)
    CONTROL=$WORKDIR/control.sock
    "$VRAID" serve --config "$cfg" --nbd "127.0.0.1:$PORT" --control "$CONTROL" \
        >"$WORKDIR/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        "$VRAID" status --control "$CONTROL" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || die "serve exited: $(tail -n 5 "$WORKDIR/serve.log")"
        sleep 0.1
    done
    die "server not up"
}

uri() { echo "nbd://127.0.0.1:$PORT/$1"; }

json_of() { # FILE EXPR(j = the job) — prints EXPR
    python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):])["jobs"][0]; assert j["error"] == 0, j["error"]; print(eval(sys.argv[2]))' "$1" "$2"
}

# run_timed KIND PEER ROUND FIO-ARGS... — one measured fio job.
run_timed() {
    local kind=$1 peer=$2 n=$3 out=$WORKDIR/$1-$2-$3.json t0 t1
    shift 3
    t0=$(cpu_ticks "$SERVER_PID")
    fio --name="$kind" --ioengine=nbd --bs=4k --iodepth=16 --output-format=json "$@" >"$out"
    t1=$(cpu_ticks "$SERVER_PID")
    local iops ios us
    iops=$(json_of "$out" 'int(j["read"]["iops"] + j["write"]["iops"])')
    ios=$(json_of "$out" 'j["read"]["total_ios"] + j["write"]["total_ios"]')
    us=$(python3 -c "print(round(($t1-$t0)/$(getconf CLK_TCK)*1e6/max(1,$ios),1))")
    log "$kind $peer round $n: $iops IOPS, $us us CPU/IO"
    printf '%s\t%s\t%s\t%s\t%s\n' "$kind" "$peer" "$n" "$iops" "$us" >>"$RESULTS"
}

steady() { # KIND PEER ROUND URI
    local rw=randwrite
    [[ $1 == randread ]] && rw=randread
    run_timed "$1" "$2" "$3" --uri="$4" --rw="$rw" --size="$WORKSET" \
        --time_based=1 --runtime="$RUNTIME"
}

# first_touch PEER ROUND: FT_IOS writes, one per cluster, none written before.
first_touch() {
    local cs skip offset=0 target
    cs=$(bytes "$CLUSTER")
    skip=$((cs - 4096))
    if [[ $1 == thin ]]; then
        ctl volume create pooled "ft$2" --size $((FT_IOS * cs))
        target=$(uri "ft$2")
    else
        offset=$(($(bytes "$WORKSET") + ($2 - 1) * FT_IOS * cs))
        target=$(uri bare)
    fi
    run_timed firsttouch "$1" "$2" --uri="$target" --rw="write:$skip" \
        --offset="$offset" --size=$((FT_IOS * cs)) --number_ios="$FT_IOS"
    [[ $1 == thin ]] && ctl volume delete "ft$2"
    return 0
}

snapshot_pause() {
    local ten cs dir=$WORKDIR/snap
    ten=$(bytes "$SNAP_SIZE")
    cs=$(bytes "$CLUSTER")
    mkdir -p "$dir"
    ctl volume create pooled big --size "$ten"
    log "mapping every cluster of a $SNAP_SIZE volume (4k into each)"
    fio --name=map --ioengine=nbd --uri="$(uri big)" --rw="write:$((cs - 4096))" --bs=4k \
        --iodepth=16 --size="$ten" --output-format=json >"$dir/map.json"
    "$VRAID" volume list --control "$CONTROL" | grep ' big:' >&2
    for mode in plain snapshots; do
        fio --name=load --ioengine=nbd --uri="$(uri big)" --rw=randwrite --bs=4k --iodepth=16 \
            --size="$ten" --time_based=1 --runtime=$((SNAPS + 4)) --output-format=json \
            >"$dir/load-$mode.json" &
        local load=$!
        fio --name=probe --ioengine=nbd --uri="$(uri big)" --rw=randwrite --bs=4k --iodepth=1 \
            --size="$ten" --time_based=1 --runtime=$((SNAPS + 4)) --output-format=json \
            >"$dir/probe-$mode.json" &
        local probe=$!
        fio --name=other --ioengine=nbd --uri="$(uri thin)" --rw=randwrite --bs=4k --iodepth=1 \
            --size="$WORKSET" --time_based=1 --runtime=$((SNAPS + 4)) --output-format=json \
            >"$dir/other-$mode.json" &
        local other=$!
        sleep 2
        for ((k = 0; k < SNAPS; k++)); do
            if [[ $mode == snapshots ]]; then
                local t0 t1
                t0=$(date +%s%N)
                ctl volume snapshot big "snap$k"
                t1=$(date +%s%N)
                echo $(((t1 - t0) / 1000)) >>"$dir/snapshot-us"
            fi
            sleep 1
        done
        wait "$load" "$probe" "$other"
        local max p99 who
        for who in probe other; do
            max=$(json_of "$dir/$who-$mode.json" 'round(j["write"]["clat_ns"]["max"]/1e6, 2)')
            p99=$(json_of "$dir/$who-$mode.json" 'round(j["write"]["clat_ns"]["percentile"]["99.000000"]/1e6, 2)')
            log "$who ($mode): max completion latency $max ms, p99 $p99 ms"
            printf 'pause\t%s\t%s\t%s\t%s\n' "$mode" "$who" "$max" "$p99" >>"$RESULTS"
        done
    done
    for ((k = 0; k < SNAPS; k++)); do ctl volume delete "snap$k"; done
    ctl volume delete big
}

create bare
create pooled
start_server
ctl pool create pooled --cluster-size "$CLUSTER"
ctl volume create pooled thin --size "$WORKSET"
for peer in bare thin; do
    log "writing $WORKSET of $peer once"
    fio --name=fill --ioengine=nbd --uri="$(uri "$peer")" --rw=write --bs=1M --iodepth=8 \
        --size="$WORKSET" --output-format=json >"$WORKDIR/fill-$peer.json"
done

for n in $(seq "$ROUNDS"); do
    order="bare thin"
    ((n % 2 == 0)) && order="thin bare"
    for peer in $order; do
        target=$(uri "$peer")
        for w in $WORKLOADS; do
            case $w in
                firsttouch) first_touch "$peer" "$n" ;;
                *) steady "$w" "$peer" "$n" "$target" ;;
            esac
        done
    done
done
((SNAPS > 0)) && snapshot_pause
mkdir -p "$WORKDIR/snap" && touch "$WORKDIR/snap/snapshot-us"

python3 - "$RESULTS" "$WORKDIR/snap/snapshot-us" <<'PY'
import sys, collections
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = collections.defaultdict(list)
pause = {}
for r in rows:
    if r[0] == "pause":
        pause[(r[1], r[2])] = (float(r[3]), float(r[4]))
    else:
        by[(r[0], r[1])].append((float(r[3]), float(r[4])))
import statistics
mean = statistics.median  # medians of the rounds (noisy host)
goal = {"randwrite": 0.9, "randread": 0.95, "firsttouch": 0.5}
# Per round: thin / bare of the same round (run back to back).
per = collections.defaultdict(dict)
for r in rows:
    if r[0] != "pause":
        per[(r[0], r[2])][r[1]] = (float(r[3]), float(r[4]))
def paired(k, col):
    qs = [v["thin"][col] / v["bare"][col] for (kk, _), v in per.items()
          if kk == k and "thin" in v and "bare" in v and v["bare"][col] > 0]
    return f"{mean(qs):.2f}x ({min(qs):.2f}-{max(qs):.2f}, {len(qs)} rounds)" if qs else "-"
print("| workload | bare IOPS | thin IOPS | thin / bare (goal) | per round thin / bare IOPS | bare CPU us/IO | thin CPU us/IO | per round thin / bare CPU |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for k in ("randwrite", "randread", "firsttouch"):
    b, t = by[(k, "bare")], by[(k, "thin")]
    if not b or not t:
        continue
    bi, ti = mean([x[0] for x in b]), mean([x[0] for x in t])
    print(f"| {k} | {bi:.0f} | {ti:.0f} | {ti / bi:.2f}x (>= {goal[k]}x) | {paired(k, 0)} | {mean([x[1] for x in b]):.1f} | {mean([x[1] for x in t]):.1f} | {paired(k, 1)} |")
snaps = [int(x) / 1000 for x in open(sys.argv[2]).read().split()]
if not pause:
    sys.exit(0)
print()
print("| volume under load | snapshotted: probe max ms | p99 ms | other volume: probe max ms | p99 ms |")
print("|---|---:|---:|---:|---:|")
for m in ("plain", "snapshots"):
    p, o = pause[(m, "probe")], pause[(m, "other")]
    print(f"| {m} | {p[0]:.2f} | {p[1]:.2f} | {o[0]:.2f} | {o[1]:.2f} |")
print(f"\nsnapshot commands: {len(snaps)}, {min(snaps):.1f}..{max(snaps):.1f} ms each (CLI round trip)")
PY
