#!/usr/bin/env bash
# tls-nbd.sh — NBD throughput over TLS vs plain text, in one run (issue 13).
#
# One RAID-0 volume of two sparse members (MEMBER_SIZE each, on the disk:
# WORKDIR defaults to /var/tmp, not tmpfs), served once with --tls=allow so
# that plain and TLS clients reach the same server. Certificates are made
# with openssl (EC P-256, TLS 1.3 with AES-GCM as negotiated by GnuTLS).
# The volume is filled first (so reads hit data, not holes). Then ROUNDS
# rounds, each running every workload in plain text, then over TLS (the
# order flips every round): fio's libnbd engine (nbd:// vs nbds://), 1M
# sequential read and write (iodepth 8), 4k random read and write (iodepth
# 32), RUNTIME seconds each over SIZE bytes. The server's utime+stime is
# read from /proc/PID/stat around each job.
# The peer: nbdkit's memory plugin with --tls=on (its "allow") and the same
# certificates, measured in the same rounds (its server does next to no
# work, so its TLS/plain ratio is what the client and the machine allow).
# Prints a markdown table: MB/s or IOPS per target and mode (mean over
# rounds), server CPU microseconds per I/O, the client's (fio's usr+sys
# from its JSON) per I/O, their sum, and TLS/plain (goals: >= 0.8 at 1M, >= 0.9 at
# 4k); then vraid against the peer in each mode (the second view: the peer
# pays the same client).
#
# Environment (defaults in brackets):
#   MEMBER_SIZE  sparse member size [1G]   SIZE     fio --size [1G]
#   RUNTIME      seconds per job [10]      ROUNDS   rounds [3]
#   WORKDIR      [/var/tmp/vraid-tls-nbd]  VRAID    binary [target/release/vraid]
#   TARGETS      ["vraid nbdkit", plus "vraidb" when VRAID_B is set]
#   VRAID_B      a second vraid binary, served the same way as target
#                "vraidb" (two builds A/B in the same rounds) [unset]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBER_SIZE=${MEMBER_SIZE:-1G}
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
VRAID_B=${VRAID_B:-}
TARGETS=${TARGETS:-vraid nbdkit${VRAID_B:+ vraidb}}
ROUNDS=${ROUNDS:-3}
WORKDIR=${WORKDIR:-/var/tmp/vraid-tls-nbd}
VRAID=${VRAID:-target/release/vraid}

log() { printf '[tls-nbd %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in fio openssl python3 nbdcopy; do
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
SERVER_PID=
B_PID=
NBDKIT_PID=

cleanup() {
    for pid in $SERVER_PID $B_PID $NBDKIT_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$WORKDIR"/m*.img
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

make_pki
truncate -s "$MEMBER_SIZE" "$WORKDIR"/m{0,1}.img
"$VRAID" create --level 0 --name vol "$WORKDIR"/m{0,1}.img >"$WORKDIR/create.log" 2>&1 ||
    die "create failed: $(tail -n 3 "$WORKDIR/create.log")"
PORT=$(free_port)
"$VRAID" serve --nbd "127.0.0.1:$PORT" --control "$WORKDIR/control.sock" --tls=allow \
    --tls-cert "$PKI/server-cert.pem" --tls-key "$PKI/server-key.pem" \
    "$WORKDIR"/m{0,1}.img >"$WORKDIR/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "serve exited: $(tail -n 5 "$WORKDIR/serve.log")"
    sleep 0.1
done

wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on port $1"
}
B_PORT=$(free_port)
if [[ " $TARGETS " == *" vraidb "* ]]; then
    [[ -x $VRAID_B ]] || die "VRAID_B=$VRAID_B is not an executable"
    truncate -s "$MEMBER_SIZE" "$WORKDIR"/mb{0,1}.img
    "$VRAID_B" create --level 0 --name vol "$WORKDIR"/mb{0,1}.img >"$WORKDIR/create-b.log" 2>&1 ||
        die "create (B) failed: $(tail -n 3 "$WORKDIR/create-b.log")"
    "$VRAID_B" serve --nbd "127.0.0.1:$B_PORT" --control "$WORKDIR/control-b.sock" --tls=allow \
        --tls-cert "$PKI/server-cert.pem" --tls-key "$PKI/server-key.pem" \
        "$WORKDIR"/mb{0,1}.img >"$WORKDIR/serve-b.log" 2>&1 &
    B_PID=$!
    wait_port "$B_PORT"
fi
NBDKIT_PORT=$(free_port)
if [[ " $TARGETS " == *" nbdkit "* ]]; then
    command -v nbdkit >/dev/null || die "nbdkit not found (TARGETS=vraid to skip the peer)"
    nbdkit --exit-with-parent -f -i 127.0.0.1 -p "$NBDKIT_PORT" --tls=on \
        --tls-certificates="$PKI" memory size=2G >"$WORKDIR/nbdkit.log" 2>&1 &
    NBDKIT_PID=$!
    wait_port "$NBDKIT_PORT"
fi

PLAIN="nbd://127.0.0.1:$PORT/vol"
# fio's libnbd engine refuses ?tls-certificates= (local file access in a
# URI): libnbd then looks in $HOME/.pki/libnbd, so fio gets a HOME of its own.
TLS="nbds://127.0.0.1:$PORT/vol"
mkdir -p "$WORKDIR/home/.pki/libnbd"
cp "$PKI/ca-cert.pem" "$WORKDIR/home/.pki/libnbd/"
log "filling $SIZE of the volume"
fio --name=fill --ioengine=nbd --uri="$PLAIN" --rw=write --bs=1M --iodepth=8 --size="$SIZE" \
    --output="$WORKDIR/fill.json" --output-format=json >/dev/null

if [[ -n $B_PID ]]; then
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$B_PORT/vol" --rw=write --bs=1M \
        --iodepth=8 --size="$SIZE" --output="$WORKDIR/fill-b.json" --output-format=json >/dev/null
fi
if [[ -n $NBDKIT_PID ]]; then
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$NBDKIT_PORT/" --rw=write --bs=1M \
        --iodepth=8 --size="$SIZE" --output="$WORKDIR/fill-nbdkit.json" --output-format=json >/dev/null
fi

# job TARGET MODE WORKLOAD N
job() {
    local target=$1 mode=$2 work=$3 n=$4 uri rw bs depth out before after pid
    if [[ $target == vraid ]]; then
        pid=$SERVER_PID
        [[ $mode == plain ]] && uri=$PLAIN || uri=$TLS
    elif [[ $target == vraidb ]]; then
        pid=$B_PID
        [[ $mode == plain ]] && uri=nbd://127.0.0.1:$B_PORT/vol || uri=nbds://127.0.0.1:$B_PORT/vol
    else
        pid=$NBDKIT_PID
        [[ $mode == plain ]] && uri=nbd://127.0.0.1:$NBDKIT_PORT/ || uri=nbds://127.0.0.1:$NBDKIT_PORT/
    fi
    case $work in
        read1m) rw=read bs=1M depth=8 ;;
        write1m) rw=write bs=1M depth=8 ;;
        randread4k) rw=randread bs=4k depth=32 ;;
        randwrite4k) rw=randwrite bs=4k depth=32 ;;
    esac
    out=$WORKDIR/$target-$mode-$work-$n.json
    before=$(cpu_ticks "$pid")
    HOME=$WORKDIR/home fio --name="$work" --ioengine=nbd --uri="$uri" --rw=$rw --bs=$bs --iodepth=$depth \
        --size="$SIZE" --time_based --runtime="$RUNTIME" --norandommap --randrepeat=0 \
        --output-format=json --output="$out" >/dev/null
    after=$(cpu_ticks "$pid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$mode" "$work" "$out" \
        "$((after - before))" "$(getconf CLK_TCK)" >>"$RESULTS"
}

LOAD_START=$(cut -d" " -f1-3 /proc/loadavg)
for ((n = 1; n <= ROUNDS; n++)); do
    if ((n % 2)); then order=(plain tls); else order=(tls plain); fi
    for work in read1m write1m randread4k randwrite4k; do
        for target in $TARGETS; do
            for mode in "${order[@]}"; do
                log "round $n: $target $work $mode (${RUNTIME}s, load $(cut -d' ' -f1 /proc/loadavg))"
                job "$target" "$mode" "$work" "$n"
            done
        done
    done
done
grep -q "with TLS\|NBD client entered transmission" "$WORKDIR/serve.log" ||
    die "no client reached transmission"

python3 - "$RESULTS" "$RUNTIME" "$ROUNDS" "$LOAD_START" "$(cut -d" " -f1-3 /proc/loadavg)" <<'PY'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
agg = {}
for target, mode, work, path, ticks, hz in rows:
    j = json.load(open(path))["jobs"][0]
    side = j["read"] if "read" in work else j["write"]
    ios = max(side["total_ios"], 1)
    a = agg.setdefault((target, work, mode), {"bw": [], "iops": [], "us": [], "cl": []})
    a["bw"].append(side["bw_bytes"] / 1e6)
    a["iops"].append(side["iops"])
    a["us"].append(int(ticks) / int(hz) * 1e6 / ios)
    # fio's usr_cpu/sys_cpu: percent of the job's run time.
    a["cl"].append((j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] * 1e3 / ios)
mean = lambda v: sum(v) / len(v)
print(f"\nNBD over TLS vs plain, fio libnbd engine; vraid: RAID-0 of 2 members; "
      f"nbdkit: memory plugin; {sys.argv[2]}s x {sys.argv[3]} rounds per cell, order alternated; "
      f"load average {sys.argv[4]} at the start, {sys.argv[5]} at the end\n")
print("| target | workload | plain | TLS | TLS/plain | server CPU us/IO plain / TLS "
      "| client (fio) CPU us/IO plain / TLS | server+client us/IO plain / TLS |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
works = ["read1m", "write1m", "randread4k", "randwrite4k"]
for target, work in [(t, w) for t in ["vraid", "vraidb", "nbdkit"] for w in works]:
    p, t = agg.get((target, work, "plain")), agg.get((target, work, "tls"))
    if not p or not t:
        continue
    key, unit = ("bw", "MB/s") if "1m" in work else ("iops", "IOPS")
    pv, tv = mean(p[key]), mean(t[key])
    print(f"| {target} | {work} | {pv:.0f} {unit} | {tv:.0f} {unit} | {tv / pv:.2f} | "
          f"{mean(p['us']):.1f} / {mean(t['us']):.1f} | {mean(p['cl']):.1f} / {mean(t['cl']):.1f} | "
          f"{mean(p['us']) + mean(p['cl']):.1f} / {mean(t['us']) + mean(t['cl']):.1f} |")
if any(k[0] == "nbdkit" for k in agg):
    print("\n| workload | vraid TLS / nbdkit TLS | vraid plain / nbdkit plain |")
    print("|---|---:|---:|")
    for work in works:
        cells = [agg.get((tg, work, m)) for tg in ["vraid", "nbdkit"] for m in ["tls", "plain"]]
        if all(cells):
            key = "bw" if "1m" in work else "iops"
            vt, vp, kt, kp = (mean(c[key]) for c in cells)
            print(f"| {work} | {vt / kt:.2f} | {vp / kp:.2f} |")
if any(k[0] == "vraidb" for k in agg):
    print("\n| workload | vraidb / vraid TLS | vraidb / vraid plain "
          "| server CPU us/IO TLS vraid / vraidb |")
    print("|---|---:|---:|---:|")
    for work in works:
        cells = [agg.get((tg, work, m)) for tg in ["vraidb", "vraid"] for m in ["tls", "plain"]]
        if all(cells):
            key = "bw" if "1m" in work else "iops"
            bt, bp, at, ap = (mean(c[key]) for c in cells)
            print(f"| {work} | {bt / at:.2f} | {bp / ap:.2f} | "
                  f"{mean(cells[2]['us']):.1f} / {mean(cells[0]['us']):.1f} |")
PY
