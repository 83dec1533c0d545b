#!/usr/bin/env bash
# remote-mirror.sh — RAID-1 of a local file + a remote NBD member (nbdkit
# memory in another network namespace, behind nbdkit's delay filter to
# model a network) vs RAID-1 of two local files, with and without
# write-behind, in one run (issue 13).
#
# Two arrays are created: "remote" (WORKDIR/remote/local.img + an nbdkit
# memory export in namespace vraid-bench-PID over a veth pair, started once
# for the whole run) and "local" (two sparse files). Three setups: "remote"
# (the remote array, plain RAID-1), "behind" (the same array served with
# --write-mostly 1 --write-behind BEHIND) and "local". ROUNDS rounds
# alternate them (remote, behind, local, remote, ...); each round starts the
# server and runs, in turn, fio 4k random writes (iodepth 32), 1M
# sequential writes (iodepth 4) and 4k random writes at iodepth 1 (where
# write-behind hides the remote's latency) through vraid's NBD export for RUNTIME
# seconds each, reading utime+stime of vraid (and of nbdkit for the remote
# setups) from /proc/PID/stat around each job. Prints a markdown table:
# IOPS, vraid CPU us per I/O, nbdkit CPU us per I/O, and the ratios to
# "local".
#
# Environment (defaults in brackets):
#   MEMBER_SIZE  member size [2G]           SIZE     fio --size [1G]
#   RUNTIME      seconds per job [15]       ROUNDS   rounds per setup [2]
#   DELAY        nbdkit delay per request [1ms]  BEHIND  lag limit [8M]
#   WORKDIR      [/var/tmp/vraid-remote-mirror]
#   VRAID        binary [target/release/vraid]
# Needs root (ip netns).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBER_SIZE=${MEMBER_SIZE:-2G}
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-15}
ROUNDS=${ROUNDS:-2}
WORKDIR=${WORKDIR:-/var/tmp/vraid-remote-mirror}
VRAID=${VRAID:-target/release/vraid}
DELAY=${DELAY:-1ms}
BEHIND=${BEHIND:-8M}
NS=vraid-bench-$$
VETH=vrb$(($$ % 10000))
SUBNET=10.215.$(($$ % 250))

log() { printf '[remote-mirror %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for t in fio nbdkit python3 ip; do command -v $t >/dev/null || die "$t not found"; done
[[ -x $VRAID ]] || die "$VRAID not found: cargo build --release -p vraid"

mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
RESULTS=$WORKDIR/results.tsv
: >"$RESULTS"
SERVER_PID= NBDKIT_PID=

cleanup() {
    for pid in $SERVER_PID $NBDKIT_PID; do
        if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    done
    rm -f "$WORKDIR"/remote/*.img "$WORKDIR"/local/*.img
    ip netns del "$NS" 2>/dev/null || true
    ip link del "${VETH}a" 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    local host=${3:-127.0.0.1}
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "process $2 exited"
        sleep 0.1
    done
    die "nothing listens on $1"
}
cpu_ticks() { if [[ -n $1 ]]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }

ip netns add "$NS"
ip link add "${VETH}a" type veth peer name "${VETH}b"
ip link set "${VETH}b" netns "$NS"
ip addr add "$SUBNET.1/30" dev "${VETH}a"
ip link set "${VETH}a" up
ip netns exec "$NS" ip addr add "$SUBNET.2/30" dev "${VETH}b"
ip netns exec "$NS" ip link set "${VETH}b" up
ip netns exec "$NS" ip link set lo up
NBDKIT_PORT=10809
# `ip netns exec` execs nbdkit: $! is nbdkit's pid.
# 64 threads: the delay models the network, not a server that serves 16
# requests at a time (nbdkit's default).
ip netns exec "$NS" nbdkit -f -t 64 -i "$SUBNET.2" -p "$NBDKIT_PORT" --filter=delay memory "$MEMBER_SIZE" \
    rdelay="$DELAY" wdelay="$DELAY" >"$WORKDIR/nbdkit.log" 2>&1 &
NBDKIT_PID=$!
wait_port "$NBDKIT_PORT" "$NBDKIT_PID" "$SUBNET.2"
REMOTE_URI="nbd://$SUBNET.2:$NBDKIT_PORT/"

members() {
    case $1 in
    remote | behind) echo "$WORKDIR/remote/local.img $REMOTE_URI" ;;
    *) echo "$WORKDIR/local/m0.img $WORKDIR/local/m1.img" ;;
    esac
}
# The array a setup serves, and its extra flags.
array_of() { if [[ $1 == local ]]; then echo local; else echo remote; fi; }
flags() { if [[ $1 == behind ]]; then echo "--write-mostly 1 --write-behind $BEHIND"; fi; }

create() {
    rm -rf "${WORKDIR:?}/$1"
    mkdir -p "$WORKDIR/$1"
    # shellcheck disable=SC2046
    "$VRAID" create --level 1 --name vol --member-size "$MEMBER_SIZE" $(members "$1") \
        >"$WORKDIR/$1/create.log" 2>&1 || die "$1: create failed: $(tail -n 3 "$WORKDIR/$1/create.log")"
}

# job ARRAY ROUND NAME FIO-ARGS...
job() {
    local array=$1 n=$2 name=$3 port=$4; shift 4
    local out=$WORKDIR/$(array_of "$array")/$array-$name-$n.json v0 v1 k0 k1 kpid=
    [[ $array != local ]] && kpid=$NBDKIT_PID
    v0=$(cpu_ticks "$SERVER_PID"); k0=$(cpu_ticks "$kpid")
    fio --name="$name" --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol" --size="$SIZE" \
        --time_based --runtime="$RUNTIME" --output-format=json --output="$out" "$@" >/dev/null
    v1=$(cpu_ticks "$SERVER_PID"); k1=$(cpu_ticks "$kpid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$array" "$name" "$out" "$((v1 - v0))" "$((k1 - k0))" \
        "$(getconf CLK_TCK)" >>"$RESULTS"
}

round() {
    local array=$1 n=$2 port dir
    port=$(free_port)
    dir=$WORKDIR/$(array_of "$array")
    # shellcheck disable=SC2046
    "$VRAID" serve --nbd "127.0.0.1:$port" --control "$dir/control.sock" \
        $(members "$array") $(flags "$array") >>"$dir/serve.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$port" "$SERVER_PID"
    log "$array round $n"
    job "$array" "$n" rand4k "$port" --rw=randwrite --bs=4k --iodepth=32 --norandommap --randrepeat=0
    job "$array" "$n" seq1m "$port" --rw=write --bs=1M --iodepth=4
    job "$array" "$n" rand4k-qd1 "$port" --rw=randwrite --bs=4k --iodepth=1 --norandommap --randrepeat=0
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || die "$array: serve exited with an error"
    SERVER_PID=
}

create remote
create local
for ((n = 1; n <= ROUNDS; n++)); do
    round remote "$n"
    round behind "$n"
    round local "$n"
done

python3 - "$RESULTS" "$RUNTIME" <<'PY'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
agg = {}
for array, name, path, vt, kt, hz in rows:
    w = json.load(open(path))["jobs"][0]["write"]
    ios = max(w["total_ios"], 1)
    a = agg.setdefault((name, array), {"iops": [], "v": [], "k": []})
    a["iops"].append(w["iops"])
    a["v"].append(int(vt) / int(hz) * 1e6 / ios)
    a["k"].append(int(kt) / int(hz) * 1e6 / ios)
mean = lambda xs: sum(xs) / len(xs)
print(f"\nRAID-1 local file + nbdkit memory (namespace, delay filter) vs two local files, {sys.argv[2]}s per job\n")
print("| job | array | IOPS (per round) | mean IOPS | vraid CPU us/IO | nbdkit CPU us/IO |")
print("|---|---|---|---:|---:|---:|")
for name in ["rand4k", "seq1m", "rand4k-qd1"]:
    m = {}
    for array in ["remote", "behind", "local"]:
        a = agg.get((name, array))
        if not a:
            continue
        m[array] = (mean(a["iops"]), mean(a["v"]))
        rounds = " / ".join(f"{x:.0f}" for x in a["iops"])
        print(f"| {name} | {array} | {rounds} | {m[array][0]:.0f} | {m[array][1]:.1f} | {mean(a['k']):.1f} |")
    for a in ["remote", "behind"]:
        if a in m and "local" in m:
            print(f"| {name} | {a}/local | | {m[a][0] / m['local'][0]:.2f} | {m[a][1] / m['local'][1]:.2f} | |")
PY
