#!/usr/bin/env bash
# qos-isolation.sh — per-volume QoS as performance isolation (issue 11):
# a QD1 4k random reader on one volume while a neighbour volume runs 4k
# random writes at QD64, the neighbour unlimited or limited to half of
# what it does alone.
#
# One daemon serves the two volumes, "vol0" (the reader's) and "nb" (the
# neighbour's). POOL=1 (the issue's setting): two thin volumes of one pool
# (CLUSTER) on one RAID-5 array of three sparse members (MEMBER_SIZE, on
# the disk: WORKDIR defaults to /var/tmp), both working sets written once
# first (the neighbour's writes then land in place). POOL=0: two RAID-5
# arrays of three members each stand in for the volumes (same daemon,
# disk and CPU; no shared members, stripe locks or pool metadata); the
# reader's working set is written once first. Then the neighbour runs alone,
# unlimited, three times to find its IOPS (the best run: other tenants'
# load only ever lowers it); its limit is half of that (`vraid set nb
# --write-iops`). ROUNDS rounds alternate three modes: solo (the reader
# alone), unlimited (both, no limit), limited (both, the limit set live),
# the order reversed every other round. Each measures RUNTIME seconds and
# the server's utime+stime from /proc/PID/stat. Prints a markdown table
# (medians of the rounds): reader IOPS, neighbour IOPS, reader IOPS /
# solo (also the median of each round's ratio to that round's solo run),
# server CPU microseconds per I/O (both jobs' I/Os), and where the
# reader's time goes (means per read, from the daemon's metrics): at the
# client (fio's completion latency), in the volume's stack (the reader
# volume's latency histogram) and at the members (every member read of
# the array(s) under it: with POOL=1 the neighbour's read-modify-write
# reads are among them).
#
# Environment (defaults in brackets):
#   MEMBER_SIZE  sparse member size [1G]   READ_SET   reader fio --size [256M]
#   WRITE_SET    neighbour fio --size [512M] RUNTIME  seconds per round [10]
#   ROUNDS       rounds per mode [2]       WORKDIR    [/var/tmp/vraid-qos-isolation]
#   POOL         1: volumes of one pool, 0: two arrays [1]
#   CLUSTER      pool cluster size [1M]
#   VRAID        binary [target/release/vraid]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBER_SIZE=${MEMBER_SIZE:-1G}
READ_SET=${READ_SET:-256M}
WRITE_SET=${WRITE_SET:-512M}
RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-2}
WORKDIR=${WORKDIR:-/var/tmp/vraid-qos-isolation}
VRAID=${VRAID:-target/release/vraid}
POOL=${POOL:-1}
CLUSTER=${CLUSTER:-1M}

log() { printf '[qos-isolation %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v fio >/dev/null || die "fio not found (apt-get install fio)"
command -v python3 >/dev/null || die "python3 not found"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"
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
    rm -f "$WORKDIR"/*/m?.img
}
trap cleanup EXIT

free_ports() { # two distinct free ports
    python3 -c 'import socket; a=socket.socket(); a.bind(("127.0.0.1",0)); b=socket.socket(); b.bind(("127.0.0.1",0)); print(a.getsockname()[1], b.getsockname()[1])'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# rq_wait PID — each thread of the daemon: "TID COMM WAIT", WAIT the
# nanoseconds it has waited runnable for a CPU (schedstat's run-queue
# wait).
rq_wait() {
    local t
    for t in /proc/"$1"/task/*; do
        echo "${t##*/} $(tr -d ' ' <"$t/comm" 2>/dev/null) $(awk '{print $2}' "$t/schedstat" 2>/dev/null)"
    done 2>/dev/null
}

# rq_per_io BEFORE AFTER IOS — microseconds of run-queue wait per I/O
# between two rq_wait snapshots, of the threads in both (threads come and
# go: io_uring's workers, blocking threads): runtime workers and the
# rest, then the io_uring thread.
rq_per_io() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys
def snap(t):
    return {f[0]: (f[1], int(f[2])) for f in (l.split() for l in t.splitlines()) if len(f) == 3}
a, b, n = snap(sys.argv[1]), snap(sys.argv[2]), max(1, int(sys.argv[3]))
rt = ring = 0
for tid, (comm, w) in b.items():
    if tid in a:
        d = w - a[tid][1]
        if comm.startswith("vraid-uring"):
            ring += d
        else:
            rt += d
print(round(rt / n / 1e3), round(ring / n / 1e3))
PY
}

create() {
    local dir=$WORKDIR/$1
    mkdir -p "$dir"
    for i in 0 1 2; do truncate -s "$MEMBER_SIZE" "$dir/m$i.img"; done
    "$VRAID" create --level 5 --name "$1" "$dir"/m{0,1,2}.img >"$dir/create.log" 2>&1 ||
        die "$1: create failed: $(tail -n 3 "$dir/create.log")"
}

members() { printf '"%s", ' "$WORKDIR/$1"/m{0,1,2}.img | sed 's/, $//'; }

start_server() { # ARRAY...
    local cfg=$WORKDIR/vraid.toml a
    : >"$cfg"
    for a in "$@"; do
        printf '[[volume]]\nname = "%s"\nlevel = 5\nmembers = [%s]\n\n' "$a" "$(members "$a")" >>"$cfg"
    done
    local ports
    read -r -a ports <<<"$(free_ports)"
    PORT=${ports[0]}
    METRICS=127.0.0.1:${ports[1]}
    CONTROL=$WORKDIR/control.sock
    "$VRAID" serve --config "$cfg" --nbd "127.0.0.1:$PORT" --control "$CONTROL" \
        --metrics "$METRICS" >"$WORKDIR/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        "$VRAID" status --control "$CONTROL" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || die "serve exited: $(tail -n 5 "$WORKDIR/serve.log")"
        sleep 0.1
    done
    die "server not up"
}

# fio_job NAME URI RW DEPTH SIZE OUT — runs in the foreground.
fio_job() {
    fio --name="$1" --ioengine=nbd --uri="$2" --rw="$3" --bs=4k --iodepth="$4" \
        --size="$5" --time_based=1 --runtime="$RUNTIME" --output-format=json >"$6"
}

# latency_sums FAMILY LABEL=VALUE — "seconds_sum count" of the read
# latency histograms of FAMILY (vraid_volume, vraid_member) whose labels
# hold LABEL=VALUE (all series of the family when LABEL is empty).
latency_sums() {
    curl -s "http://$METRICS/metrics" | python3 -c '
import sys, re
fam, want = sys.argv[1], sys.argv[2]
tot = {"sum": 0.0, "count": 0.0}
for l in sys.stdin:
    m = re.match(fam + r"_latency_seconds_(sum|count)\{(.*)\} (\S+)", l)
    if m and "op=\"read\"" in m.group(2) and (not want or want in m.group(2)):
        tot[m.group(1)] += float(m.group(3))
print(tot["sum"], int(tot["count"]))' "$1" "$2"
}

# mean_us "SUM0 N0" "SUM1 N1" — mean microseconds per op between two scrapes.
mean_us() { python3 -c "a=\"$1\".split(); b=\"$2\".split(); n=int(b[1])-int(a[1]); print(round((float(b[0])-float(a[0]))/max(n,1)*1e6))"; }

clat_us() { # FILE — fio's mean read completion latency, us
    python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):]); print(round(j["jobs"][0]["read"]["clat_ns"]["mean"]/1000))' "$1"
}

iops_of() { # FILE read|write
    python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):]); print(int(j["jobs"][0][sys.argv[2]]["iops"]))' "$1" "$2"
}

ios_of() { # FILE — total I/Os of the job
    python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):]); r=j["jobs"][0]; print(r["read"]["total_ios"] + r["write"]["total_ios"])' "$1"
}

# measure MODE ROUND
measure() {
    local mode=$1 n=$2 out=$WORKDIR/$1-$2 t0 t1 nb_pid= nb_iops=0 nb_ios=0
    case $mode in
        unlimited) "$VRAID" set nb --write-iops none --control "$CONTROL" >/dev/null ;;
        limited) "$VRAID" set nb --write-iops "$LIMIT" --control "$CONTROL" >/dev/null ;;
    esac
    local v0 m0 v1 m1
    v0=$(latency_sums vraid_volume 'volume="vol0"')
    m0=$(latency_sums vraid_member "")
    local q0 q1
    q0=$(rq_wait "$SERVER_PID")
    t0=$(cpu_ticks "$SERVER_PID")
    if [[ $mode != solo ]]; then
        fio_job nb "nbd://127.0.0.1:$PORT/nb" randwrite 64 "$WRITE_SET" "$out.nb.json" &
        nb_pid=$!
    fi
    fio_job reader "nbd://127.0.0.1:$PORT/vol0" randread 1 "$READ_SET" "$out.reader.json"
    [[ -n $nb_pid ]] && wait "$nb_pid"
    t1=$(cpu_ticks "$SERVER_PID")
    q1=$(rq_wait "$SERVER_PID")
    v1=$(latency_sums vraid_volume 'volume="vol0"')
    m1=$(latency_sums vraid_member "")
    local r_iops r_ios c_us v_us m_us
    c_us=$(clat_us "$out.reader.json")
    v_us=$(mean_us "$v0" "$v1")
    m_us=$(mean_us "$m0" "$m1")
    r_iops=$(iops_of "$out.reader.json" read)
    r_ios=$(ios_of "$out.reader.json")
    if [[ -n $nb_pid ]]; then
        nb_iops=$(iops_of "$out.nb.json" write)
        nb_ios=$(ios_of "$out.nb.json")
    fi
    local hz us_per_io
    hz=$(getconf CLK_TCK)
    us_per_io=$(python3 -c "print(round(($t1-$t0)/$hz*1e6/max(1,$r_ios+$nb_ios),1))")
    local rq
    rq=$(rq_per_io "$q0" "$q1" $((r_ios + nb_ios)))
    log "$mode round $n: reader $r_iops IOPS, neighbour $nb_iops IOPS, $us_per_io us CPU/IO; reader read us: client $c_us, volume $v_us, member $m_us; daemon run-queue wait us/IO (workers, ring): $rq"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$n" "$r_iops" "$nb_iops" "$us_per_io" \
        "$c_us" "$v_us" "$m_us" >>"$RESULTS"
}

fill() { # VOLUME SIZE
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$1" --rw=write --bs=1M \
        --iodepth=8 --size="$2" --output-format=json >"$WORKDIR/fill-$1.json"
}

if ((POOL)); then
    create arr
    start_server arr
    "$VRAID" pool create arr --cluster-size "$CLUSTER" --control "$CONTROL" >/dev/null
    "$VRAID" volume create arr vol0 --size "$READ_SET" --control "$CONTROL" >/dev/null
    "$VRAID" volume create arr nb --size "$WRITE_SET" --control "$CONTROL" >/dev/null
    log "writing both working sets ($READ_SET, $WRITE_SET)"
    fill nb "$WRITE_SET"
else
    create vol0
    create nb
    start_server vol0 nb
    log "writing the reader's working set ($READ_SET)"
fi
fill vol0 "$READ_SET"
log "neighbour alone, unlimited (3 runs)"
NB_ALONE=0
for k in 1 2 3; do
    fio_job nb "nbd://127.0.0.1:$PORT/nb" randwrite 64 "$WRITE_SET" "$WORKDIR/nb-alone-$k.json"
    iops=$(iops_of "$WORKDIR/nb-alone-$k.json" write)
    if ((iops > NB_ALONE)); then NB_ALONE=$iops; fi
done
LIMIT=$((NB_ALONE / 2))
((LIMIT > 0)) || die "the neighbour did no I/O alone"
log "neighbour alone: $NB_ALONE IOPS; its limit: $LIMIT write IOPS"

for n in $(seq "$ROUNDS"); do
    order="solo unlimited limited"
    ((n % 2 == 0)) && order="limited unlimited solo"
    for mode in $order; do measure "$mode" "$n"; done
done

python3 - "$RESULTS" "$NB_ALONE" "$LIMIT" <<'PY'
import sys, collections
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = collections.defaultdict(list)
for mode, _, r, nb, us, c, v, m in rows:
    by[mode].append((float(r), float(nb), float(us), float(c), float(v), float(m)))
import statistics
mean = statistics.median  # medians of the rounds (noisy host)
solo = mean([x[0] for x in by["solo"]])
# Per round: the reader against the solo run of the same round (next to
# it in time), then the median of those ratios: steadier than the ratio
# of medians on a host whose load swings between rounds.
per_round = collections.defaultdict(list)
solo_of = {n: float(r) for mode, n, r, *_ in rows if mode == "solo"}
for mode, n, r, *_ in rows:
    per_round[mode].append(float(r) / solo_of[n])
print(f"neighbour alone: {sys.argv[2]} write IOPS; limit {sys.argv[3]} (half)\n")
print("| mode | reader IOPS (QD1) | neighbour IOPS (QD64) | reader / solo | per-round reader / solo | server CPU us/IO | read us: client / volume / member |")
print("|---|---:|---:|---:|---:|---:|---:|")
for mode in ("solo", "unlimited", "limited"):
    r, nb, us, c, v, m = (mean([x[k] for x in by[mode]]) for k in range(6))
    pr = per_round[mode]
    print(f"| {mode} | {r:.0f} | {nb:.0f} | {r / solo:.2f}x | {mean(pr):.2f}x ({min(pr):.2f}-{max(pr):.2f}) | {us:.1f} | {c:.0f} / {v:.0f} / {m:.0f} |")
PY
