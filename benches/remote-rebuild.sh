#!/usr/bin/env bash
# remote-rebuild.sh — rebuild of a remote (NBD) member vs fio on the same
# kind of export, in one run (issue 13).
#
# A RAID-1 "vol" of a local file and an nbdkit memory export on loopback
# (member URI with ?connections=CONNS), filled whole through vraid's export
# (the written-region map would skip what was never written), rebuild
# unthrottled (rebuild_max_mbps 0). Two rebuilds per round:
#   to-remote    the remote member is failed and removed, a fresh (empty)
#                nbdkit takes its place with `vraid add`: the rebuild reads
#                the local file and writes the export. Peer: fio sequential
#                write (bs 2M, iodepth 16: the rebuild's step and depth) to a
#                fresh nbdkit of the same size.
#   from-remote  the local member is failed, removed, and a fresh local file
#                added: the rebuild reads the export. Peer: fio sequential
#                read of the same export (the issue's "fio reading the same
#                export").
# Rounds alternate the order (rebuild first, then peer; next round peer
# first). MB/s of the rebuild come from the daemon's log (member bytes
# copied / time); utime+stime of vraid and nbdkit from /proc around each
# step, as CPU ms per GB moved. Prints a markdown table with the ratios.
#
# TLS=1: every nbdkit requires TLS (certificates made with openssl, EC
# P-256), the member is `nbds://` and fio's peer jobs use `nbds://` too.
#
# Environment (defaults in brackets):
#   MEMBER_SIZE  member size [1G]      ROUNDS  rounds [2]
#   CONNS        connections to the remote member [2]   TLS  [0]
#   WORKDIR      [/var/tmp/vraid-remote-rebuild]  VRAID [target/release/vraid]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBER_SIZE=${MEMBER_SIZE:-1G}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-2}
WORKDIR=${WORKDIR:-/var/tmp/vraid-remote-rebuild}
VRAID=${VRAID:-target/release/vraid}
TLS=${TLS:-0}

log() { printf '[remote-rebuild %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for t in fio nbdkit nbdinfo python3 openssl; do command -v $t >/dev/null || die "$t not found"; done
[[ -x $VRAID ]] || die "$VRAID not found: cargo build --release -p vraid"

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
RESULTS=$WORKDIR/results.tsv
: >"$RESULTS"
SERVER_PID= NBDKIT_PID= PEER_PID=
CTL=$WORKDIR/control.sock

cleanup() {
    for pid in $SERVER_PID $NBDKIT_PID $PEER_PID; do
        if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    done
    rm -f "$WORKDIR"/*.img
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "process $2 exited"
        sleep 0.1
    done
    die "nothing listens on $1"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ctl() { "$VRAID" "$@" --control "$CTL" >>"$WORKDIR/ctl.log" 2>&1 || die "vraid $*: $(tail -n 3 "$WORKDIR/ctl.log")"; }
# remove ROLE: a member failed just after its rebuild may already be out.
remove() { "$VRAID" remove vol "$1" --control "$CTL" >>"$WORKDIR/ctl.log" 2>&1 || grep -q "already removed" "$WORKDIR/ctl.log" || die "remove $1"; }

PKI=$WORKDIR/pki
NBDKIT_TLS=() SCHEME=nbd QUERY=
if [[ $TLS == 1 ]]; then
    mkdir -p "$PKI" "$WORKDIR/home/.pki/libnbd"
    ec_req() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "$@" 2>/dev/null; }
    ec_req -subj "/CN=bench CA" -keyout "$PKI/ca-key.pem" -out "$PKI/ca-cert.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
    ec_req -subj "/CN=localhost" -CA "$PKI/ca-cert.pem" -CAkey "$PKI/ca-key.pem" \
        -keyout "$PKI/server-key.pem" -out "$PKI/server-cert.pem" \
        -addext basicConstraints=critical,CA:FALSE \
        -addext keyUsage=critical,digitalSignature,keyEncipherment \
        -addext extendedKeyUsage=serverAuth -addext subjectAltName=IP:127.0.0.1
    # fio's libnbd engine refuses ?tls-certificates=: it looks in $HOME.
    cp "$PKI/ca-cert.pem" "$WORKDIR/home/.pki/libnbd/"
    NBDKIT_TLS=(--tls=require "--tls-certificates=$PKI") SCHEME=nbds QUERY="tls-certificates=$PKI&"
fi
# member_uri PORT: the remote member's URI.
member_uri() { echo "$SCHEME://127.0.0.1:$1/?${QUERY}connections=$CONNS"; }

# fresh_nbdkit: a fresh, empty memory export; sets NEW_PORT and NEW_PID.
fresh_nbdkit() {
    NEW_PORT=$(free_port)
    nbdkit -f -i 127.0.0.1 -p "$NEW_PORT" "${NBDKIT_TLS[@]}" memory "$MEMBER_SIZE" >>"$WORKDIR/nbdkit.log" 2>&1 &
    NEW_PID=$!
    wait_port "$NEW_PORT" "$NEW_PID"
}
# SIGKILL: nbdkit waits on SIGTERM for clients still connected (a removed
# member's connections may outlive its removal).
stop_pid() { kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

fresh_nbdkit
NBDKIT_PORT=$NEW_PORT NBDKIT_PID=$NEW_PID
REMOTE=$(member_uri "$NBDKIT_PORT")
truncate -s "$MEMBER_SIZE" "$WORKDIR/local0.img"
"$VRAID" create --level 1 --name vol --member-size "$MEMBER_SIZE" "$WORKDIR/local0.img" "$REMOTE" \
    >"$WORKDIR/create.log" 2>&1 || die "create failed: $(tail -n 3 "$WORKDIR/create.log")"
PORT=$(free_port)
"$VRAID" serve --nbd "127.0.0.1:$PORT" --control "$CTL" "$WORKDIR/local0.img" "$REMOTE" \
    >"$WORKDIR/serve.log" 2>&1 &
SERVER_PID=$!
wait_port "$PORT" "$SERVER_PID"
ctl set vol --rebuild-max-mbps 0
VOL_SIZE=$(nbdinfo --size "nbd://127.0.0.1:$PORT/vol")
log "filling the volume ($VOL_SIZE bytes)"
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/vol" --rw=write --bs=1M --iodepth=8 \
    --size="$VOL_SIZE" --output="$WORKDIR/fill.json" --output-format=json >/dev/null
LOCAL=$WORKDIR/local0.img
N_LOCAL=0

# record KIND ROUND MBPS VRAID-TICKS NBDKIT-TICKS BYTES
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" "$(getconf CLK_TCK)" >>"$RESULTS"; }

# wait_rebuild ROLE NTH: the MB/s of the NTH finished rebuild of ROLE.
wait_rebuild() {
    local line=
    for _ in $(seq 3000); do
        line=$(grep -E "of member $1 finished: copied" "$WORKDIR/serve.log" | sed -n "$2p")
        [[ -n $line ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "serve exited"
        sleep 0.2
    done
    [[ -n $line ]] || die "rebuild of member $1 did not finish"
    grep -q "copied 0 bytes" <<<"$line" && die "nothing copied: $line"
    sed -E 's/.*copied ([0-9]+) bytes.* \(([0-9.]+) MB\/s\).*/\1 \2/' <<<"$line"
}

REB1=0 REB0=0
to_remote() {
    local n=$1 v0 k0 out
    ctl fail vol 1
    remove 1
    stop_pid "$NBDKIT_PID"
    fresh_nbdkit
    NBDKIT_PID=$NEW_PID NBDKIT_PORT=$NEW_PORT
    v0=$(cpu_ticks "$SERVER_PID"); k0=$(cpu_ticks "$NBDKIT_PID")
    ctl add vol "$(member_uri "$NBDKIT_PORT")"
    REB1=$((REB1 + 1))
    out=$(wait_rebuild 1 "$REB1")
    record to-remote "$n" "${out#* }" "$(($(cpu_ticks "$SERVER_PID") - v0))" \
        "$(($(cpu_ticks "$NBDKIT_PID") - k0))" "${out% *}"
}

from_remote() {
    local n=$1 v0 k0 out
    ctl fail vol 0
    remove 0
    rm -f "$LOCAL"
    N_LOCAL=$((N_LOCAL + 1))
    LOCAL=$WORKDIR/local$N_LOCAL.img
    truncate -s "$MEMBER_SIZE" "$LOCAL"
    v0=$(cpu_ticks "$SERVER_PID"); k0=$(cpu_ticks "$NBDKIT_PID")
    ctl add vol "$LOCAL"
    REB0=$((REB0 + 1))
    out=$(wait_rebuild 0 "$REB0")
    record from-remote "$n" "${out#* }" "$(($(cpu_ticks "$SERVER_PID") - v0))" \
        "$(($(cpu_ticks "$NBDKIT_PID") - k0))" "${out% *}"
}

# peer KIND ROUND: fio with the rebuild's shape against an nbdkit export.
peer() {
    local kind=$1 n=$2 port pid rw k0 out
    if [[ $kind == fio-write ]]; then
        fresh_nbdkit
        port=$NEW_PORT pid=$NEW_PID PEER_PID=$NEW_PID rw=write
    else
        port=$NBDKIT_PORT pid=$NBDKIT_PID rw=read
    fi
    out=$WORKDIR/$kind-$n.json
    k0=$(cpu_ticks "$pid")
    HOME=$WORKDIR/home fio --name="$kind" --ioengine=nbd --uri="$SCHEME://127.0.0.1:$port/" --rw=$rw --bs=2M \
        --iodepth=16 --size="$VOL_SIZE" --output-format=json --output="$out" >/dev/null
    python3 - "$out" "$kind" "$n" "$(($(cpu_ticks "$pid") - k0))" "$(getconf CLK_TCK)" >>"$RESULTS" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = j["write"] if sys.argv[2] == "fio-write" else j["read"]
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{side['bw_bytes'] / 1e6:.1f}\t0\t{sys.argv[4]}\t{side['io_bytes']}\t{sys.argv[5]}")
PY
    if [[ $kind == fio-write ]]; then stop_pid "$PEER_PID"; PEER_PID=; fi
}

for ((n = 1; n <= ROUNDS; n++)); do
    if ((n % 2)); then
        log "round $n: rebuild to the remote, fio write, fio read, rebuild from the remote"
        to_remote "$n"
        peer fio-write "$n"; peer fio-read "$n"; from_remote "$n"
    else
        log "round $n: fio read, rebuild from the remote, fio write, rebuild to the remote"
        peer fio-read "$n"; from_remote "$n"; peer fio-write "$n"; to_remote "$n"
    fi
done
stop_pid "$SERVER_PID"; SERVER_PID=

python3 - "$RESULTS" "$CONNS" "$MEMBER_SIZE" "$TLS" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
agg = {}
for kind, n, mbps, vt, kt, nbytes, hz in rows:
    a = agg.setdefault(kind, {"mbps": [], "v": [], "k": []})
    gb = max(int(nbytes), 1) / 1e9
    a["mbps"].append(float(mbps))
    a["v"].append(int(vt) / int(hz) * 1e3 / gb)
    a["k"].append(int(kt) / int(hz) * 1e3 / gb)
mean = lambda xs: sum(xs) / len(xs)
tls = ", over TLS" if sys.argv[4] == "1" else ""
print(f"\nRebuild of a remote member (RAID-1: local file + nbdkit memory on loopback, "
      f"{sys.argv[3]} members, {sys.argv[2]} connection(s){tls}) vs fio (nbd engine, bs 2M, iodepth 16)\n")
print("| what | MB/s (per round) | mean MB/s | vraid CPU ms/GB | nbdkit CPU ms/GB |")
print("|---|---|---:|---:|---:|")
for kind in ["to-remote", "fio-write", "from-remote", "fio-read"]:
    a = agg.get(kind)
    if a:
        per = " / ".join(f"{x:.0f}" for x in a["mbps"])
        v = f"{mean(a['v']):.0f}" if kind.endswith("remote") else "–"
        print(f"| {kind} | {per} | {mean(a['mbps']):.0f} | {v} | {mean(a['k']):.0f} |")
for reb, fio in [("to-remote", "fio-write"), ("from-remote", "fio-read"), ("to-remote", "fio-read")]:
    if reb in agg and fio in agg:
        print(f"| {reb} / {fio} | | {mean(agg[reb]['mbps']) / mean(agg[fio]['mbps']):.2f} | | |")
PY
