#!/usr/bin/env bash
# tls-remote.sh — vraid's own NBD client over TLS vs plain text (issue 13:
# "the NBD client uses TLS for nbds:// members"), in one run.
#
# Two backend vraids each serve two RAID-0 volumes b0, b1 (two sparse
# MEMBER_SIZE files each, on the disk: WORKDIR defaults to /var/tmp): the
# "plain" one without TLS, the "tls" one with --tls=require. Two front
# vraids each assemble a RAID-0 of two remote members, one per backend
# volume: the plain front over nbd://, the tls front over nbds:// (CA
# checked; certificates made with openssl, EC P-256; TLS 1.3 AES-128-GCM
# as rustls picks on both ends). fio's libnbd engine reaches
# each front over plain nbd:// on loopback, so the only difference is the
# front's member links. Both fronts are filled first (reads hit data).
# Then ROUNDS rounds, plain then tls (the order flips every round, ABBA):
# 1M sequential read and write (iodepth 8), 4k random read and write
# (iodepth 32), RUNTIME seconds each over SIZE bytes. utime+stime of the
# backend (the NBD server), of the front (vraid's NBD client plus its own
# export) and fio's usr+sys are taken per job.
# Prints a markdown table: MB/s or IOPS (mean over rounds), TLS/plain, and
# CPU microseconds per I/O of backend, front and fio, plain / TLS.
#
# With VRAID_MAIN (another build, e.g. main's) a third pair runs in the same
# rounds: "tlsmain", TLS backend and front both of that build, reported as
# a second table row per workload (tlsmain/plain) and as tls/tlsmain. Order per round: plain tls
# tlsmain, reversed every other round (ABBA).
#
# Environment (defaults in brackets):
#   MEMBER_SIZE  backend file size [512M] SIZE     fio --size [512M]
#   RUNTIME      seconds per job [10]     ROUNDS   rounds [2]
#   CONNS        connections per member [1]
#   WORKDIR      [/var/tmp/vraid-tls-remote]   VRAID  [target/release/vraid]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBER_SIZE=${MEMBER_SIZE:-512M}
SIZE=${SIZE:-512M}
RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-1}
WORKDIR=${WORKDIR:-/var/tmp/vraid-tls-remote}
VRAID=${VRAID:-target/release/vraid}
VRAID_MAIN=${VRAID_MAIN:-}
MODES=(plain tls)
[[ -n $VRAID_MAIN ]] && MODES+=(tlsmain)

log() { printf '[tls-remote %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in fio openssl python3 nbdinfo; do
    command -v $tool >/dev/null || die "$tool not found"
done
[[ -x $VRAID ]] || die "$VRAID not found: cargo build --release -p vraid"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR/pki"
WORKDIR=$(cd "$WORKDIR" && pwd)
PKI=$WORKDIR/pki
RESULTS=$WORKDIR/results.tsv
: >"$RESULTS"
PIDS=()

cleanup() {
    local pid
    # Fronts first (their members are on the backend), then the backend.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$WORKDIR"/*.img
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

ec_req() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "$@"; }

make_pki() {
    ec_req -subj "/CN=bench CA" -keyout "$PKI/ca-key.pem" -out "$PKI/ca-cert.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
        2>/dev/null
    ec_req -subj "/CN=localhost" -CA "$PKI/ca-cert.pem" -CAkey "$PKI/ca-key.pem" \
        -keyout "$PKI/server-key.pem" -out "$PKI/server-cert.pem" \
        -addext basicConstraints=critical,CA:FALSE \
        -addext keyUsage=critical,digitalSignature,keyEncipherment \
        -addext extendedKeyUsage=serverAuth -addext subjectAltName=IP:127.0.0.1 2>/dev/null
}

# wait_port PORT PID LOG
wait_port() {
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "server exited: $(tail -n 5 "$3")"
        sleep 0.1
    done
    die "nothing listens on port $1"
}

# backend MODE VOL...: a vraid serving a RAID-0 of two sparse files per
# volume; the tls one with --tls=require (a client that did not start TLS
# is refused, so the tls front's members are TLS or nothing). Sets
# BACK_PORT and BACK_PID.
backend() {
    local mode=$1 v bin=$VRAID
    shift
    [[ $mode == tlsmain ]] && bin=$VRAID_MAIN
    {
        if [[ $mode == tls* ]]; then
            printf '[server]\ntls = "require"\ntls_cert = "%s"\ntls_key = "%s"\n' \
                "$PKI/server-cert.pem" "$PKI/server-key.pem"
        fi
        for v in "$@"; do
            truncate -s "$MEMBER_SIZE" "$WORKDIR/$mode-$v-0.img" "$WORKDIR/$mode-$v-1.img"
            printf '\n[[volume]]\nname = "%s"\nlevel = 0\nmembers = ["%s", "%s"]\n' "$v" \
                "$WORKDIR/$mode-$v-0.img" "$WORKDIR/$mode-$v-1.img"
            printf 'create = { member_size = "%s" }\n' "$MEMBER_SIZE"
        done
    } >"$WORKDIR/backend-$mode.toml"
    BACK_PORT=$(free_port)
    "$bin" serve --config "$WORKDIR/backend-$mode.toml" --nbd "127.0.0.1:$BACK_PORT" \
        --control "$WORKDIR/backend-$mode.sock" >"$WORKDIR/backend-$mode.log" 2>&1 &
    BACK_PID=$!
    PIDS+=("$BACK_PID")
    wait_port "$BACK_PORT" "$BACK_PID" "$WORKDIR/backend-$mode.log"
}

# front MODE SCHEME QUERY: creates and serves a RAID-0 of the two volumes
# b0, b1 of the backend at BACK_PORT; sets FRONT_PORT and FRONT_PID.
front() {
    local mode=$1 scheme=$2 query=$3 m0 m1 bin=$VRAID
    [[ $mode == tlsmain ]] && bin=$VRAID_MAIN
    m0="$scheme://127.0.0.1:$BACK_PORT/b0?${query}connections=$CONNS"
    m1="$scheme://127.0.0.1:$BACK_PORT/b1?${query}connections=$CONNS"
    "$bin" create --level 0 --name vol "$m0" "$m1" >"$WORKDIR/create-$mode.log" 2>&1 ||
        die "create $mode failed: $(tail -n 3 "$WORKDIR/create-$mode.log")"
    FRONT_PORT=$(free_port)
    "$bin" serve --nbd "127.0.0.1:$FRONT_PORT" --control "$WORKDIR/front-$mode.sock" \
        "$m0" "$m1" >"$WORKDIR/front-$mode.log" 2>&1 &
    FRONT_PID=$!
    PIDS+=("$FRONT_PID")
    wait_port "$FRONT_PORT" "$FRONT_PID" "$WORKDIR/front-$mode.log"
}

make_pki
declare -A PORT PID BACK
for mode in "${MODES[@]}"; do
    backend "$mode" b0 b1
    BACK[$mode]=$BACK_PID
    if [[ $mode == plain ]]; then
        front "$mode" nbd ""
    else
        front "$mode" nbds "tls-certificates=$PKI&"
        [[ $(grep -c "entered transmission" "$WORKDIR/backend-$mode.log") -ge 2 ]] ||
            die "the $mode front's members did not reach the TLS-only backend"
    fi
    PORT[$mode]=$FRONT_PORT PID[$mode]=$FRONT_PID
done

for mode in "${MODES[@]}"; do
    port=${PORT[$mode]}
    log "filling $SIZE of the $mode front"
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol" --rw=write --bs=1M \
        --iodepth=8 --size="$SIZE" --output="$WORKDIR/fill-$mode.json" --output-format=json \
        >/dev/null
done

# job MODE WORKLOAD N
job() {
    local mode=$1 work=$2 n=$3 rw bs depth out b0 b1 f0 f1
    local port=${PORT[$mode]} pid=${PID[$mode]} back=${BACK[$mode]}
    case $work in
        read1m) rw=read bs=1M depth=8 ;;
        write1m) rw=write bs=1M depth=8 ;;
        randread4k) rw=randread bs=4k depth=32 ;;
        randwrite4k) rw=randwrite bs=4k depth=32 ;;
    esac
    out=$WORKDIR/$mode-$work-$n.json
    b0=$(cpu_ticks "$back") f0=$(cpu_ticks "$pid")
    fio --name="$work" --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol" --rw=$rw --bs=$bs \
        --iodepth=$depth --size="$SIZE" --time_based --runtime="$RUNTIME" --norandommap \
        --randrepeat=0 --output-format=json --output="$out" >/dev/null
    b1=$(cpu_ticks "$back") f1=$(cpu_ticks "$pid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$work" "$out" "$((b1 - b0))" "$((f1 - f0))" \
        "$(getconf CLK_TCK)" >>"$RESULTS"
}

LOAD_START=$(cut -d" " -f1-3 /proc/loadavg)
for ((n = 1; n <= ROUNDS; n++)); do
    order=("${MODES[@]}")
    if ((n % 2 == 0)); then
        for ((i = 0; i < ${#MODES[@]}; i++)); do order[i]=${MODES[${#MODES[@]} - 1 - i]}; done
    fi
    for work in read1m write1m randread4k randwrite4k; do
        for mode in "${order[@]}"; do
            log "round $n: $work $mode (${RUNTIME}s, load $(cut -d' ' -f1 /proc/loadavg))"
            job "$mode" "$work" "$n"
        done
    done
done

python3 - "$RESULTS" "$RUNTIME" "$ROUNDS" "$CONNS" "$LOAD_START" "$(cut -d" " -f1-3 /proc/loadavg)" <<'PY'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
agg = {}
for mode, work, path, back, front, hz in rows:
    j = json.load(open(path))["jobs"][0]
    side = j["read"] if "read" in work else j["write"]
    ios = max(side["total_ios"], 1)
    a = agg.setdefault((work, mode), {"bw": [], "iops": [], "b": [], "f": [], "c": []})
    a["bw"].append(side["bw_bytes"] / 1e6)
    a["iops"].append(side["iops"])
    a["b"].append(int(back) / int(hz) * 1e6 / ios)
    a["f"].append(int(front) / int(hz) * 1e6 / ios)
    a["c"].append((j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] * 1e3 / ios)
mean = lambda v: sum(v) / len(v)
print(f"\nvraid's NBD client, nbds:// vs nbd:// members: front RAID-0 of two remote "
      f"members ({sys.argv[4]} connection(s) each) on a backend vraid; fio libnbd over plain "
      f"nbd:// to the front; {sys.argv[2]}s x {sys.argv[3]} rounds per cell, order alternated; "
      f"load average {sys.argv[5]} at the start, {sys.argv[6]} at the end\n")
print("| workload | plain | TLS | TLS/plain | backend (server) CPU us/IO plain / TLS "
      "| front (client) CPU us/IO plain / TLS | fio CPU us/IO plain / TLS |")
print("|---|---:|---:|---:|---:|---:|---:|")
for work in ["read1m", "write1m", "randread4k", "randwrite4k"]:
    for tls in ["tls", "tlsmain"]:
        p, t = agg.get((work, "plain")), agg.get((work, tls))
        if not p or not t:
            continue
        key, unit = ("bw", "MB/s") if "1m" in work else ("iops", "IOPS")
        pv, tv = mean(p[key]), mean(t[key])
        cells = " | ".join(f"{mean(p[k]):.1f} / {mean(t[k]):.1f}" for k in ("b", "f", "c"))
        name = work if tls == "tls" else f"{work} (tlsmain)"
        print(f"| {name} | {pv:.0f} {unit} | {tv:.0f} {unit} | {tv / pv:.2f} | {cells} |")
for work in ["read1m", "write1m", "randread4k", "randwrite4k"]:
    t, m = agg.get((work, "tls")), agg.get((work, "tlsmain"))
    if t and m:
        key = "bw" if "1m" in work else "iops"
        print(f"\n{work}: tls/tlsmain {mean(t[key]) / mean(m[key]):.2f}, backend CPU us/IO "
              f"{mean(t['b']):.1f} / {mean(m['b']):.1f}", end="")
print()
PY
