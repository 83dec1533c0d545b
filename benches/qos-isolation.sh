#!/usr/bin/env bash
# qos-isolation.sh — per-volume QoS as performance isolation (issue 11):
# a QD1 4k random reader on one volume while a neighbour volume runs 4k
# random writes at QD64, the neighbour unlimited or limited to half of
# what it does alone.
#
# One daemon serves two RAID-5 arrays of three sparse members each
# (MEMBER_SIZE, on the disk: WORKDIR defaults to /var/tmp): "vol0" (the
# reader's) and "nb" (the neighbour's); today's arrays stand in for the
# volumes of one pool (same daemon, same disk, same CPU). The reader's
# working set is written once first. Then the neighbour runs alone,
# unlimited, to find its IOPS; its limit is half of that (`vraid set nb
# --write-iops`). ROUNDS rounds alternate three modes: solo (the reader
# alone), unlimited (both, no limit), limited (both, the limit set live),
# the order reversed every other round. Each measures RUNTIME seconds and
# the server's utime+stime from /proc/PID/stat. Prints a markdown table
# (medians of the rounds): reader IOPS, neighbour IOPS, reader IOPS /
# solo (also the median of each round's ratio to that round's solo run),
# server CPU microseconds per I/O (both jobs' I/Os).
#
# Environment (defaults in brackets):
#   MEMBER_SIZE  sparse member size [1G]   READ_SET   reader fio --size [256M]
#   WRITE_SET    neighbour fio --size [512M] RUNTIME  seconds per round [10]
#   ROUNDS       rounds per mode [2]       WORKDIR    [/var/tmp/vraid-qos-isolation]
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

log() { printf '[qos-isolation %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
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
    rm -f "$WORKDIR"/*/m?.img
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

create() {
    local dir=$WORKDIR/$1
    mkdir -p "$dir"
    for i in 0 1 2; do truncate -s "$MEMBER_SIZE" "$dir/m$i.img"; done
    "$VRAID" create --level 5 --name "$1" "$dir"/m{0,1,2}.img >"$dir/create.log" 2>&1 ||
        die "$1: create failed: $(tail -n 3 "$dir/create.log")"
}

members() { printf '"%s", ' "$WORKDIR/$1"/m{0,1,2}.img | sed 's/, $//'; }

start_server() {
    local cfg=$WORKDIR/vraid.toml
    printf '[[volume]]\nname = "vol0"\nlevel = 5\nmembers = [%s]\n\n' "$(members vol0)" >"$cfg"
    printf '[[volume]]\nname = "nb"\nlevel = 5\nmembers = [%s]\n' "$(members nb)" >>"$cfg"
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

# fio_job NAME URI RW DEPTH SIZE OUT — runs in the foreground.
fio_job() {
    fio --name="$1" --ioengine=nbd --uri="$2" --rw="$3" --bs=4k --iodepth="$4" \
        --size="$5" --time_based=1 --runtime="$RUNTIME" --output-format=json >"$6"
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
    t0=$(cpu_ticks "$SERVER_PID")
    if [[ $mode != solo ]]; then
        fio_job nb "nbd://127.0.0.1:$PORT/nb" randwrite 64 "$WRITE_SET" "$out.nb.json" &
        nb_pid=$!
    fi
    fio_job reader "nbd://127.0.0.1:$PORT/vol0" randread 1 "$READ_SET" "$out.reader.json"
    [[ -n $nb_pid ]] && wait "$nb_pid"
    t1=$(cpu_ticks "$SERVER_PID")
    local r_iops r_ios
    r_iops=$(iops_of "$out.reader.json" read)
    r_ios=$(ios_of "$out.reader.json")
    if [[ -n $nb_pid ]]; then
        nb_iops=$(iops_of "$out.nb.json" write)
        nb_ios=$(ios_of "$out.nb.json")
    fi
    local hz us_per_io
    hz=$(getconf CLK_TCK)
    us_per_io=$(python3 -c "print(round(($t1-$t0)/$hz*1e6/max(1,$r_ios+$nb_ios),1))")
    log "$mode round $n: reader $r_iops IOPS, neighbour $nb_iops IOPS, $us_per_io us CPU/IO"
    printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$n" "$r_iops" "$nb_iops" "$us_per_io" >>"$RESULTS"
}

create vol0
create nb
start_server
log "writing the reader's working set ($READ_SET)"
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/vol0" --rw=write --bs=1M \
    --iodepth=8 --size="$READ_SET" --output-format=json >"$WORKDIR/fill.json"
log "neighbour alone, unlimited"
fio_job nb "nbd://127.0.0.1:$PORT/nb" randwrite 64 "$WRITE_SET" "$WORKDIR/nb-alone.json"
NB_ALONE=$(iops_of "$WORKDIR/nb-alone.json" write)
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
for mode, _, r, nb, us in rows:
    by[mode].append((float(r), float(nb), float(us)))
import statistics
mean = statistics.median  # medians of the rounds (noisy host)
solo = mean([r for r, _, _ in by["solo"]])
# Per round: the reader against the solo run of the same round (next to
# it in time), then the median of those ratios: steadier than the ratio
# of medians on a host whose load swings between rounds.
per_round = collections.defaultdict(list)
solo_of = {n: float(r) for mode, n, r, _, _ in rows if mode == "solo"}
for mode, n, r, _, _ in rows:
    per_round[mode].append(float(r) / solo_of[n])
print(f"neighbour alone: {sys.argv[2]} write IOPS; limit {sys.argv[3]} (half)\n")
print("| mode | reader IOPS (QD1) | neighbour IOPS (QD64) | reader / solo | per-round reader / solo | server CPU us/IO |")
print("|---|---:|---:|---:|---:|---:|")
for mode in ("solo", "unlimited", "limited"):
    r = mean([x[0] for x in by[mode]]); nb = mean([x[1] for x in by[mode]]); us = mean([x[2] for x in by[mode]])
    pr = per_round[mode]
    print(f"| {mode} | {r:.0f} | {nb:.0f} | {r / solo:.2f}x | {mean(pr):.2f}x ({min(pr):.2f}-{max(pr):.2f}) | {us:.1f} |")
PY
