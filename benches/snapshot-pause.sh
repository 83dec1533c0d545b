#!/usr/bin/env bash
# snapshot-pause.sh — client-visible pause of a pool snapshot under load,
# two vraid builds against each other (issue 11).
#
# A RAID-0 array (MEMBERS sparse members of MEMBER_SIZE on WORKDIR) with a
# pool (CLUSTER) and one volume "big" of SIZE, every cluster mapped (4k
# into each), laid once with VRAID_A. Then ROUNDS pairs of rounds in ABBA
# order (A B B A ...), each restarting the daemon with that build on the
# same members and running twice for SNAPS + 4 seconds:
#   plain      fio 4k randwrite QD16 (load) + a QD1 4k randwrite probe
#   snapshots  the same, with SNAPS snapshots of "big" one second apart
#              (deleted after)
# The probe's max and p99/p99.9 completion latency in the snapshot run
# against the plain run is the client-visible pause (goal < 10 ms). Also
# the load's IOPS and the server's CPU per I/O (/proc/PID/stat), the
# snapshot commands' round trips, and the daemon's own "snapshot phases"
# log lines (drain, lock, commit; paused = writes to the source held:
# drain + lock + commit when the commit is under the gate) where the
# build writes them. Where the time goes: the probe's own latency log
# (fio --write_lat_log, Unix-epoch times) split into the window of each
# snapshot call (start - 50 ms .. end + 50 ms: quiesce and commit) and the
# second after it (copy-on-write of what the snapshot shares), against
# the same windows of the plain run. Per phase (session 18): the daemon's
# "slow pool write" lines (every write of 10 ms or more, its time split
# into gate, write gate, lock + lookup, in place, split record, reserve,
# zeroed_from wait, copy permit, copy, map lock, map, safe point), summed
# per phase over the snapshot runs, and the phase that dominates each of
# the 20 slowest writes, where the build writes them.
#
# Environment (defaults in brackets):
#   VRAID_A [target/release/vraid-main]  VRAID_B [target/release/vraid]
#   SIZE [10G]  CLUSTER [1M]  MEMBERS [2]  MEMBER_SIZE [16G]  SNAPS [5]
#   ROUNDS [1] (pairs: 1 = A B B A)  WORKDIR [/var/tmp/vraid-snapshot-pause]
#   KEEP [0] (1: keep the laid members, and reuse them if WORKDIR has them)
#   POOL_B [""] extra `pool create` options of B's own pool (e.g.
#     "--split-clusters": a version-3 pool, which A's build may refuse);
#     when set, A and B each get their own members and pool, laid alike
#     by their own build (WORKDIR/A, WORKDIR/B); else one pool laid by A.
#   POOL_A [""] the same for A's pool (POOL_A=POOL_B=--split-clusters:
#     two version-3 pools).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VRAID_A=${VRAID_A:-target/release/vraid-main}
VRAID_B=${VRAID_B:-target/release/vraid}
SIZE=${SIZE:-10G}
CLUSTER=${CLUSTER:-1M}
MEMBERS=${MEMBERS:-2}
MEMBER_SIZE=${MEMBER_SIZE:-16G}
SNAPS=${SNAPS:-5}
KEEP=${KEEP:-0}
ROUNDS=${ROUNDS:-1}
WORKDIR=${WORKDIR:-/var/tmp/vraid-snapshot-pause}
POOL_B=${POOL_B:-}
POOL_A=${POOL_A:-}

log() { printf '[snapshot-pause %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v fio >/dev/null || die "fio not found (apt-get install fio)"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"
for b in "$VRAID_A" "$VRAID_B"; do [[ -x $b ]] || die "$b not found"; done

LAID=0
if [[ $KEEP == 1 && -f $WORKDIR/A/vraid.toml && -f $WORKDIR/A/map.json ]]; then
    LAID=1
else
    rm -rf "$WORKDIR"
fi
mkdir -p "$WORKDIR/A"
WORKDIR=$(cd "$WORKDIR" && pwd)
ROOT=$WORKDIR
RESULTS=$ROOT/results.tsv
: >"$RESULTS"
SERVER_PID=

stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
cleanup() {
    stop_server
    [[ $KEEP == 1 ]] || rm -f "$ROOT"/*/m*.img
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ctl() { "$VRAID" "$@" --control "$CONTROL" >/dev/null; }
uri() { echo "nbd://127.0.0.1:$PORT/$1"; }
json_of() { # FILE EXPR(j = the job) — prints EXPR
    python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):])["jobs"][0]; assert j["error"] == 0, j["error"]; print(eval(sys.argv[2]))' "$1" "$2"
}

start_server() { # VRAID LOG
    VRAID=$1
    PORT=$(free_port)
    CONTROL=$WORKDIR/control.sock
    RUST_LOG=info "$VRAID" serve --config "$WORKDIR/vraid.toml" --nbd "127.0.0.1:$PORT" \
        --control "$CONTROL" >"$2" 2>&1 &
    SERVER_PID=$!
    SERVER_LOG=$2
    for _ in $(seq 200); do
        "$VRAID" status --control "$CONTROL" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || die "serve exited: $(tail -n 5 "$2")"
        sleep 0.1
    done
    die "server not up"
}

lay() { # VRAID [POOL CREATE OPTIONS...] — members and pool in WORKDIR
    local bin=$1 paths=() cs
    shift
    for ((i = 0; i < MEMBERS; i++)); do
        truncate -s "$MEMBER_SIZE" "$WORKDIR/m$i.img"
        paths+=("$WORKDIR/m$i.img")
    done
    "$bin" create --level 0 --name pooled "${paths[@]}" >"$WORKDIR/create.log" 2>&1 ||
        die "create failed: $(tail -n 3 "$WORKDIR/create.log")"
    printf '[[volume]]\nname = "pooled"\nlevel = 0\nmembers = [%s]\n' \
        "$(printf '"%s", ' "${paths[@]}" | sed 's/, $//')" >"$WORKDIR/vraid.toml"
    start_server "$bin" "$WORKDIR/serve-lay.log"
    ctl pool create pooled --cluster-size "$CLUSTER" "$@"
    ctl volume create pooled big --size "$SIZE"
    cs=$(numfmt --from=iec "$CLUSTER")
    log "mapping every cluster of $SIZE (4k into each)"
    # io_size: one 4k write per cluster (without it fio writes SIZE bytes,
    # going round the volume 256 times at 1 MiB clusters).
    fio --name=map --ioengine=nbd --uri="$(uri big)" --rw="write:$((cs - 4096))" --bs=4k \
        --iodepth=16 --size="$SIZE" --io_size=$(($(numfmt --from=iec "$SIZE") / cs * 4096)) \
        --output-format=json >"$WORKDIR/map.json"
    stop_server
}

# windows PEER ROUND MODE LATLOG — the probe's max latency over the I/Os
# completing in the window of each snapshot command (its start - 50 ms to
# its end + 50 ms: the snapshot's own quiesce and commit) and in the
# second after that window (copy-on-write of the clusters it shared);
# for the plain run, the same windows at the same offsets from the start
# of the log are the baseline (rows "win").
windows() {
    local cmds
    cmds=$(awk -F'\t' -v p="$1" -v n="$2" '$1 == "cmd" && $2 == p && $3 == n {print $5, $6}' \
        "$RESULTS" | tail -n "$SNAPS")
    SNAPS=$SNAPS python3 - "$1" "$2" "$3" "$4" "$cmds" >>"$RESULTS" <<'PY'
import os, sys
peer, n, mode, log, cmds = sys.argv[1:6]
rows = [l.split(",") for l in open(log).read().split("\n") if l.strip()]
lat = [(int(r[0]), int(r[1]) / 1e6) for r in rows]  # (completion ms, latency ms)
if not lat:
    sys.exit()
spans = [tuple(map(int, c.split())) for c in cmds.split("\n") if c.strip()]
if mode == "plain":  # the snapshot run's offsets from its first I/O, here
    spans = [(lat[0][0] + 2000 + 1000 * k, lat[0][0] + 2000 + 1000 * k) for k in range(int(os.environ["SNAPS"]))]
for a, b in spans:
    win = [l for t, l in lat if a - 50 <= t <= b + 50]
    after = [l for t, l in lat if b + 50 < t <= b + 1050]
    print(f"win\t{peer}\t{n}\t{mode}\t{b - a}\t{max(win, default=0):.2f}\t{len(win)}\t{max(after, default=0):.2f}\t{len(after)}")
PY
}

# one_run PEER ROUND MODE — load + probe, snapshots if MODE=snapshots.
one_run() {
    local peer=$1 n=$2 mode=$3 d=$WORKDIR/$1-$2 t0 t1 c0 c1 k
    mkdir -p "$d"
    local l0
    l0=$(wc -l <"$SERVER_LOG")
    c0=$(cpu_ticks "$SERVER_PID")
    fio --name=load --ioengine=nbd --uri="$(uri big)" --rw=randwrite --bs=4k --iodepth=16 \
        --size="$SIZE" --time_based=1 --runtime=$((SNAPS + 4)) --output-format=json \
        >"$d/load-$mode.json" &
    local load=$!
    fio --name=probe --ioengine=nbd --uri="$(uri big)" --rw=randwrite --bs=4k --iodepth=1 \
        --size="$SIZE" --time_based=1 --runtime=$((SNAPS + 4)) --lat_percentiles=1 \
        --percentile_list=50:99:99.9 --write_lat_log="$d/probe-$mode" --log_avg_msec=0 \
        --log_unix_epoch=1 --output-format=json >"$d/probe-$mode.json" &
    local probe=$!
    sleep 2
    for ((k = 0; k < SNAPS; k++)); do
        if [[ $mode == snapshots ]]; then
            t0=$(date +%s%N)
            ctl volume snapshot big "snap$k"
            t1=$(date +%s%N)
            printf 'cmd\t%s\t%s\t%s\t%s\t%s\n' "$peer" "$n" $(((t1 - t0) / 1000)) \
                $((t0 / 1000000)) $((t1 / 1000000)) >>"$RESULTS"
        fi
        sleep 1
    done
    wait "$load" "$probe"
    c1=$(cpu_ticks "$SERVER_PID")
    local p="$d/probe-$mode.json" l="$d/load-$mode.json" iops ios us
    local max p99 p999
    max=$(json_of "$p" 'round(j["write"]["lat_ns"]["max"]/1e6, 2)')
    p99=$(json_of "$p" 'round(j["write"]["lat_ns"]["percentile"]["99.000000"]/1e6, 2)')
    p999=$(json_of "$p" 'round(j["write"]["lat_ns"]["percentile"]["99.900000"]/1e6, 2)')
    iops=$(json_of "$l" 'int(j["write"]["iops"])')
    ios=$(( $(json_of "$l" 'j["write"]["total_ios"]') + $(json_of "$p" 'j["write"]["total_ios"]') ))
    us=$(python3 -c "print(round(($c1-$c0)/$(getconf CLK_TCK)*1e6/max(1,$ios),1))")
    log "$peer round $n $mode: probe max $max ms p99 $p99 p99.9 $p999; load $iops IOPS, $us us CPU/IO"
    printf 'run\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$peer" "$n" "$mode" "$max" "$p99" "$p999" \
        "$iops" "$us" >>"$RESULTS"
    windows "$peer" "$n" "$mode" "$d/probe-${mode}_lat.1.log"
    tail -n +$((l0 + 1)) "$SERVER_LOG" | sed 's/\x1b\[[0-9;]*m//g' |
        grep -o 'slow pool write total_us=[0-9]*[a-z_=0-9 ]*' |
        sed "s/^slow pool write /slow\t$peer\t$n\t$mode\t/" >>"$RESULTS" || true
    if [[ $mode == snapshots ]]; then
        for ((k = 0; k < SNAPS; k++)); do ctl volume delete "snap$k"; done
    fi
}

round() { # PEER ROUND
    local bin=$VRAID_A
    [[ $1 == B ]] && bin=$VRAID_B
    WORKDIR=$ROOT/A
    [[ $1 == B && -n $POOL_B$POOL_A ]] && WORKDIR=$ROOT/B
    start_server "$bin" "$WORKDIR/serve-$1-$2.log"
    one_run "$1" "$2" plain
    one_run "$1" "$2" snapshots
    stop_server
    grep 'snapshot phases' "$WORKDIR/serve-$1-$2.log" | sed 's/\x1b\[[0-9;]*m//g' |
        grep -o 'drain_us=[0-9]* lock_us=[0-9]*\( paused_us=[0-9]*\)\? commit_us=[0-9]*' |
        sed "s/^/phase\t$1\t$2\t/" >>"$RESULTS" || true
}

if [[ $LAID == 0 ]]; then
    # shellcheck disable=SC2086 # POOL_A is a list of options
    WORKDIR=$ROOT/A lay "$VRAID_A" $POOL_A
    if [[ -n $POOL_B$POOL_A ]]; then
        mkdir -p "$ROOT/B"
        # shellcheck disable=SC2086 # POOL_B is a list of options
        WORKDIR=$ROOT/B lay "$VRAID_B" $POOL_B
    fi
fi

for n in $(seq "$ROUNDS"); do
    round A "$n"
    round B "$n"
    round B "$n"
    round A "$n"
done

python3 - "$RESULTS" <<'PY'
import sys, collections, re
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
runs = collections.defaultdict(list)
cmds = collections.defaultdict(list)
phases = collections.defaultdict(list)
slow = collections.defaultdict(list)
wins = collections.defaultdict(list)
for r in rows:
    if r[0] == "run":
        runs[(r[1], r[3])].append([float(x) for x in r[4:9]])
    elif r[0] == "cmd":
        cmds[r[1]].append(int(r[3]) / 1000)
    elif r[0] == "win":
        wins[(r[1], r[3])].append([float(x) for x in r[4:9]])
    elif r[0] == "slow":
        slow[(r[1], r[3])].append(dict((k, int(v) / 1000) for k, v in re.findall(r"(\w+)_us=(\d+)", r[4])))
    elif r[0] == "phase":
        kv = dict((k, int(v) / 1000) for k, v in re.findall(r"(\w+)_us=(\d+)", r[3]))
        kv.setdefault("paused", kv["drain"] + kv["lock"] + kv["commit"])
        phases[r[1]].append(kv)
mx = lambda xs: max(xs) if xs else float("nan")
mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
print("| build | mode | probe max ms (worst / mean of runs) | probe p99 ms | probe p99.9 ms | load IOPS | CPU us/IO |")
print("|---|---|---:|---:|---:|---:|---:|")
for peer in ("A", "B"):
    for mode in ("plain", "snapshots"):
        v = runs[(peer, mode)]
        if not v:
            continue
        col = lambda i: [x[i] for x in v]
        print(f"| {peer} | {mode} | {mx(col(0)):.1f} / {mean(col(0)):.1f} | {mean(col(1)):.1f} | {mean(col(2)):.1f} | {mean(col(3)):.0f} | {mean(col(4)):.1f} |")
print()
print("| build | mode | snapshot call ms (max / mean) | probe max ms in window (max / mean) | probe I/Os in window | probe max ms in the next second (max / mean) |")
print("|---|---|---:|---:|---:|---:|")
for peer in ("A", "B"):
    for mode in ("plain", "snapshots"):
        w = wins[(peer, mode)]
        if not w:
            continue
        col = lambda i: [x[i] for x in w]
        call = f"{mx(col(0)):.1f} / {mean(col(0)):.1f}" if mode == "snapshots" else "-"
        print(f"| {peer} | {mode} | {call} | {mx(col(1)):.1f} / {mean(col(1)):.1f} | {mean(col(2)):.1f} | {mx(col(3)):.1f} / {mean(col(3)):.1f} |")
print()
for peer in ("A", "B"):
    c = cmds[peer]
    if c:
        print(f"{peer}: snapshot commands {len(c)}, {min(c):.1f}..{max(c):.1f} ms (CLI round trip)")
    p = phases[peer]
    if p:
        f = lambda k: f"{k} {mx([x[k] for x in p]):.1f} ({mean([x[k] for x in p]):.1f})"
        print(f"{peer}: daemon phases, ms max (mean): " + ", ".join(f(k) for k in ("drain", "lock", "commit", "paused")))
for peer, mode in sorted(slow):
    s = slow[(peer, mode)]
    keys = sorted({k for x in s for k in x if k != "total"}, key=lambda k: -sum(x.get(k, 0) for x in s))
    print(f"{peer} {mode}: {len(s)} writes >= 10 ms (all runs), total {sum(x['total'] for x in s):.0f} ms; per phase ms sum / max: "
          + ", ".join(f"{k} {sum(x.get(k, 0) for x in s):.0f} / {max(x.get(k, 0) for x in s):.1f}" for k in keys))
    top = sorted(s, key=lambda x: -x["total"])[:20]
    dom = collections.Counter(max((k for k in x if k != "total"), key=lambda k: x[k], default="?") for x in top)
    print(f"{peer} {mode}: 20 slowest {top[-1]['total']:.1f}..{top[0]['total']:.1f} ms, dominant phase: " + ", ".join(f"{k} {n}" for k, n in dom.most_common()))
PY
