#!/usr/bin/env bash
# vhost-compare.sh — vraid's vhost-user-blk export against qemu-storage-daemon's,
# driven by the same libblkio client (benches/blkio-bench) in one run.
#
# Targets (each a vhost-user-blk UNIX socket):
#   vraid-r0   vraid serve --vhost-user-blk, RAID-0 of 4 member files
#   vraid-r5   vraid serve --vhost-user-blk, RAID-5 of 4 member files
#   qsd        qemu-storage-daemon --export type=vhost-user-blk of one raw file
#              (cache.direct=on, aio=io_uring, one iothread: its fast setup)
#   base-r0    as vraid-r0 with the binary $VRAID_BASE (another build, e.g.
#   base-r5    main's, for a before/after in the same run)
# Every target is started and prefilled with one sequential 1M pass; then each
# job runs RUNTIME seconds with 1 and with 2 queues on the targets in turn:
#   randread4k randwrite4k (QD32 per queue)   seqread1m seqwrite1m (QD8)
# Prints a table of IOPS, MiB/s, server CPU per I/O (utime+stime of the
# server process over the job, from /proc/PID/stat, over the I/Os done) and
# the ratios vraid/qsd, and writes it as markdown (with date, machine and
# versions) to $OUT. Put WORKDIR on tmpfs (/dev/shm/...) to measure the
# engine rather than the disk: tmpfs refuses O_DIRECT, so there qsd runs
# with cache.direct=off (vraid's members fall back to buffered I/O alike).
# Rounds alternate the order of the targets (ABBA: odd rounds in TARGETS
# order, even rounds reversed), so a drift in the machine's load hits
# every target alike. The vraid targets also report the bytes their
# members bounced through a copy (vraid_member_bounce_bytes_total, from
# --metrics) over all the jobs: 0 means every data transfer was zero-copy.
#
#   benches/vhost-compare.sh               # full run (~7 min)
#   QUICK=1 benches/vhost-compare.sh       # smoke run (~1 min)
#   TARGETS=qsd QUICK=1 benches/vhost-compare.sh
#
# Environment (defaults in brackets):
#   TARGETS  ["vraid-r0 vraid-r5 qsd"]     QUEUES ["1 2"]
#   JOBS     ["randread4k randwrite4k seqread1m seqwrite1m"]
#   SIZE     bytes of each target used [1G; 256M with QUICK=1]
#   RUNTIME  seconds per job [5; 2 with QUICK=1]
#   REPEAT   rounds over all jobs and targets; the table shows each
#            job's median round [3; 1 with QUICK=1]
#   CHUNK    vraid --chunk-size [64K]
#   WORKDIR  member files, images, logs, JSON [target/vhost-compare]
#   OUT      markdown results [$WORKDIR/results.md]
#   VRAID    vraid binary [target/release/vraid, built if missing]
#   VRAID_BASE  binary of the base-* targets [unset]
#   QSD_DIRECT  qsd's cache.direct [on; off when WORKDIR is on tmpfs]
# Exit status: 0 when every target/job produced a result, 1 otherwise.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    SIZE=${SIZE:-256M}
    RUNTIME=${RUNTIME:-2}
    REPEAT=${REPEAT:-1}
else
    SIZE=${SIZE:-1G}
    RUNTIME=${RUNTIME:-5}
    REPEAT=${REPEAT:-3}
fi
TARGETS=${TARGETS:-"vraid-r0 vraid-r5 qsd"}
QUEUES=${QUEUES:-"1 2"}
JOBS=${JOBS:-"randread4k randwrite4k seqread1m seqwrite1m"}
CHUNK=${CHUNK:-64K}
WORKDIR=${WORKDIR:-target/vhost-compare}
OUT=${OUT:-$WORKDIR/results.md}
VRAID=${VRAID:-target/release/vraid}
BENCH=target/blkio-bench/release/blkio-bench
MAX_QUEUES=2

log() { printf '[vhost-compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

to_bytes() { # 64K -> 65536
    [[ $1 =~ ^([0-9]+)([KMGT]?)$ ]] || die "bad size '$1' (use e.g. 256M, 1G)"
    local n=${BASH_REMATCH[1]}
    case ${BASH_REMATCH[2]} in
        K) n=$((n << 10)) ;; M) n=$((n << 20)) ;; G) n=$((n << 30)) ;; T) n=$((n << 40)) ;;
    esac
    echo "$n"
}
SIZE_BYTES=$(to_bytes "$SIZE")
MIB=$((1 << 20))
((SIZE_BYTES >= 16 * MIB && SIZE_BYTES % MIB == 0)) || die "SIZE must be whole MiB, at least 16M"
[[ $RUNTIME =~ ^[0-9]+([.][0-9]+)?$ ]] || die "RUNTIME must be a number of seconds"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"
for t in $TARGETS; do [[ $t =~ ^(vraid-r0|vraid-r5|base-r0|base-r5|qsd)$ ]] || die "unknown target $t"; done
if [[ " $TARGETS " == *" base-"* ]]; then
    [[ -x ${VRAID_BASE:-} ]] || die "base-* targets need VRAID_BASE, an executable vraid"
fi
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # cpu_ticks PID: utime+stime of the process (all its threads)
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
for j in $JOBS; do [[ $j =~ ^(randread4k|randwrite4k|seqread1m|seqwrite1m)$ ]] || die "unknown job $j"; done
for q in $QUEUES; do ((q >= 1 && q <= MAX_QUEUES)) || die "QUEUES entries must be 1..$MAX_QUEUES"; done

command -v python3 >/dev/null || die "python3 is needed for the table"
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon missing (qemu-utils 10, see scripts/test)"
log "building blkio-bench"
cargo build -q --release --manifest-path benches/blkio-bench/Cargo.toml --target-dir target/blkio-bench
if [[ " $TARGETS " == *" vraid-"* ]]; then
    if [[ $VRAID == target/release/vraid ]]; then
        log "building vraid (release)"
        cargo build -q --release -p vraid
    fi
    [[ -x $VRAID ]] || die "vraid binary $VRAID not found"
    grep -q -- --vhost-user-blk <<<"$("$VRAID" serve --help)" ||
        die "$VRAID serve has no --vhost-user-blk option (vhost-user-blk export not built yet); try TARGETS=qsd"
fi

mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
if [[ -z ${QSD_DIRECT:-} ]]; then
    QSD_DIRECT=on
    [[ $(stat -f -c %T "$WORKDIR") != tmpfs ]] || QSD_DIRECT=off
fi
[[ $QSD_DIRECT =~ ^(on|off)$ ]] || die "QSD_DIRECT must be on or off"
rm -rf "$WORKDIR/run"
mkdir -p "$WORKDIR/run" "$(dirname "$OUT")"
RESULTS=$WORKDIR/results.jsonl
: >"$RESULTS"
FAILED=0

SERVER_PID=
declare -A PID_OF=() SOCK_OF=() METRICS_OF=()
stop_server() { # stop_server PID: SIGTERM, 10 s grace, then SIGKILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
stop_all() {
    local t
    [[ -z $SERVER_PID ]] || stop_server "$SERVER_PID"
    for t in "${!PID_OF[@]}"; do stop_server "${PID_OF[$t]}"; done
    PID_OF=()
}
trap stop_all EXIT

wait_socket() { # wait_socket SOCK LOG
    local i
    for ((i = 0; i < 300; i++)); do
        [[ -S $1 ]] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "no socket $1; last lines of $2:"
    tail -n 20 "$2" >&2 || true
    return 1
}

# start_target TARGET DIR: starts the server (SERVER_PID), sets SOCK (and
# METRICS, vraid's metrics address, when it has one).
SOCK=
METRICS=
start_target() {
    local target=$1 dir=$2 sock=$2/vhost.sock level data members=() port
    SOCK=$sock
    METRICS=
    mkdir -p "$dir"
    case $target in
        qsd)
            truncate -s "$SIZE_BYTES" "$dir/disk.raw"
            qemu-storage-daemon --object iothread,id=io0 \
                --blockdev "driver=file,node-name=f,filename=$dir/disk.raw,cache.direct=$QSD_DIRECT,aio=io_uring" \
                --export "type=vhost-user-blk,id=e,node-name=f,iothread=io0,addr.type=unix,addr.path=$sock,writable=on,num-queues=$MAX_QUEUES" \
                >"$dir/server.log" 2>&1 &
            SERVER_PID=$!
            ;;
        vraid-r0 | vraid-r5 | base-r0 | base-r5)
            local bin=$VRAID
            [[ $target != base-* ]] || bin=$VRAID_BASE
            if [[ $target == *-r0 ]]; then level=0 data=4; else level=5 data=3; fi
            # Data per member rounded up to the chunk, plus room for metadata.
            local chunk member_data member i
            chunk=$(to_bytes "$CHUNK")
            member_data=$(((SIZE_BYTES / data + chunk - 1) / chunk * chunk))
            member=$(((member_data + member_data / 512 + 4 * MIB + MIB - 1) / MIB))
            for ((i = 0; i < 4; i++)); do members+=("$dir/m$i.img"); done
            "$bin" create --level "$level" --chunk-size "$CHUNK" --member-size "${member}M" \
                --name vol0 "${members[@]}" >"$dir/create.log" 2>&1 ||
                { tail -n 20 "$dir/create.log" >&2; return 1; }
            port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
            # Both vraid targets run at once: each gets its own control socket.
            local control=() metrics=()
            grep -q -- --control <<<"$("$bin" serve --help)" && control=(--control "$dir/control.sock")
            if grep -q -- --metrics <<<"$("$bin" serve --help)"; then
                METRICS=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
                metrics=(--metrics "$METRICS")
            fi
            "$bin" serve --nbd "127.0.0.1:$port" "${control[@]}" "${metrics[@]}" \
                --vhost-user-blk "$sock" --vhost-queues "$MAX_QUEUES" \
                "${members[@]}" >"$dir/server.log" 2>&1 &
            SERVER_PID=$!
            ;;
    esac
    wait_socket "$sock" "$dir/server.log"
}

job_args() {
    case $1 in
        randread4k) echo "--rw randread --bs 4096 --iodepth 32" ;;
        randwrite4k) echo "--rw randwrite --bs 4096 --iodepth 32" ;;
        seqread1m) echo "--rw read --bs 1048576 --iodepth 8" ;;
        seqwrite1m) echo "--rw write --bs 1048576 --iodepth 8" ;;
    esac
}

# Every target is started and prefilled first; then each job runs on the
# targets back to back, so a change in the machine's load hits them alike.
STARTED=()
for target in $TARGETS; do
    dir=$WORKDIR/run/$target
    SERVER_PID=
    if ! start_target "$target" "$dir"; then
        log "$target: did not start"
        FAILED=1
        [[ -z $SERVER_PID ]] || stop_server "$SERVER_PID"
        continue
    fi
    PID_OF[$target]=$SERVER_PID
    SOCK_OF[$target]=$SOCK
    METRICS_OF[$target]=$METRICS
    SERVER_PID=
    log "$target: prefill $SIZE"
    if ! "$BENCH" --path "$SOCK" --rw write --bs 1048576 --iodepth 8 --queues 1 \
        --size "$SIZE_BYTES" --once --runtime 3600 >"$dir/prefill.json" 2>"$dir/prefill.err"; then
        log "$target: prefill failed: $(cat "$dir/prefill.err")"
        FAILED=1
        stop_server "${PID_OF[$target]}"
        unset "PID_OF[$target]"
        continue
    fi
    STARTED+=("$target")
done

# bounced TARGET: vraid_member_bounce_bytes_total of the target (empty
# when it has no metrics endpoint).
bounced() {
    local addr=${METRICS_OF[$1]:-}
    [[ -n $addr ]] || return 0
    python3 - "$addr" <<'PY' 2>/dev/null || true
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
print(sum(float(l.split()[-1]) for l in text.splitlines()
          if l.startswith("vraid_member_bounce_bytes_total")))
PY
}
declare -A BOUNCE0=()
for target in "${STARTED[@]}"; do BOUNCE0[$target]=$(bounced "$target"); done

JOB_TIMEOUT=$(awk -v r="$RUNTIME" 'BEGIN { print r + 60 }')
REVERSED=()
for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do REVERSED+=("${STARTED[i]}"); done
for ((round = 1; round <= REPEAT; round++)); do
    for job in $JOBS; do
        for q in $QUEUES; do
            read -r -a args <<<"$(job_args "$job")"
            order=("${STARTED[@]}")
            ((round % 2 == 1)) || order=("${REVERSED[@]}")
            for target in "${order[@]}"; do
                dir=$WORKDIR/run/$target
                log "round $round/$REPEAT: $target: $job, $q queue(s), ${RUNTIME}s"
                # A job that overruns by a minute has requests stuck in the server.
                rc=0
                cpu0=$(cpu_ticks "${PID_OF[$target]}")
                out=$(timeout "$JOB_TIMEOUT" "$BENCH" --path "${SOCK_OF[$target]}" "${args[@]}" --queues "$q" \
                    --size "$SIZE_BYTES" --runtime "$RUNTIME" 2>"$dir/$job-q$q.err") || rc=$?
                cpu1=$(cpu_ticks "${PID_OF[$target]}")
                if ((rc == 0)); then
                    printf '{"target":"%s","job":"%s","round":%d,"cpu_ticks":%d,"clk_tck":%d,"result":%s}\n' \
                        "$target" "$job" "$round" $((cpu1 - cpu0)) "$CLK_TCK" "$out" >>"$RESULTS"
                elif ((rc == 124)); then
                    log "$target: $job q$q FAILED: no completion within ${JOB_TIMEOUT}s (requests stuck in the server)"
                    FAILED=1
                else
                    log "$target: $job q$q FAILED: $(cat "$dir/$job-q$q.err")"
                    FAILED=1
                fi
            done
        done
    done
done
BOUNCES=""
for target in "${STARTED[@]}"; do
    b1=$(bounced "$target")
    [[ -n $b1 && -n ${BOUNCE0[$target]} ]] || continue
    BOUNCES="$BOUNCES $target=$(awk -v a="${BOUNCE0[$target]}" -v b="$b1" 'BEGIN { printf "%.0f", b - a }')"
done
stop_all
if [[ ${KEEP:-0} != 1 ]]; then
    for target in $TARGETS; do rm -f "$WORKDIR/run/$target"/*.img "$WORKDIR/run/$target"/*.raw; done
fi

machine="$(uname -sr), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
machine="$machine; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
vraid_version="vraid $VRAID"
[[ $VRAID != target/release/vraid ]] || vraid_version="vraid $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
[[ -z ${VRAID_BASE:-} ]] || vraid_version="$vraid_version, base-* $VRAID_BASE"
versions="$vraid_version, $(qemu-storage-daemon --version | head -n1) (cache.direct=$QSD_DIRECT, aio=io_uring)"
[[ -z $BOUNCES ]] || versions="$versions; bytes bounced by the members over all jobs:$BOUNCES"
command_line="VRAID=$VRAID VRAID_BASE=${VRAID_BASE:-} WORKDIR=$WORKDIR QUICK=$QUICK SIZE=$SIZE RUNTIME=$RUNTIME REPEAT=$REPEAT TARGETS=\"$TARGETS\" QUEUES=\"$QUEUES\" benches/vhost-compare.sh"
python3 - "$RESULTS" "$OUT" "$machine" "$versions" "$command_line" <<'EOF'
import json, sys, datetime
results_path, out_path, machine, versions, command = sys.argv[1:6]
rows = [json.loads(l) for l in open(results_path) if l.strip()]
# The median round (by IOPS) of each target/job/queues.
rounds = {}
for r in rows:
    rounds.setdefault((r["target"], r["job"], r["result"]["queues"]), []).append(r["result"])
for r in rows:
    ios = r["result"].get("ios") or 0
    r["result"]["cpu_us_io"] = (
        r["cpu_ticks"] * 1e6 / r["clk_tck"] / ios if "cpu_ticks" in r and ios else None
    )
by = {k: sorted(v, key=lambda x: x["iops"])[len(v) // 2] for k, v in rounds.items()}
targets = list(dict.fromkeys(r["target"] for r in rows))
keys = list(dict.fromkeys((r["job"], r["result"]["queues"]) for r in rows))
head = ["job", "queues"]
for t in targets:
    head += [f"{t} IOPS", f"{t} MiB/s", f"{t} CPU µs/IO"]
ratio_targets = [t for t in targets if t != "qsd"] if "qsd" in targets else []
head += [f"{t}/qsd" for t in ratio_targets]
head += [f"{t}/qsd CPU" for t in ratio_targets]
base_pairs = [(t, "base-" + t[len("vraid-"):]) for t in targets
              if t.startswith("vraid-") and "base-" + t[len("vraid-"):] in targets]
head += [f"{a}/{b}" for a, b in base_pairs]
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for job, q in keys:
    cells = [job, str(q)]
    for t in targets:
        r = by.get((t, job, q))
        cpu = r and r.get("cpu_us_io")
        cells += ([f"{r['iops']:.0f}", f"{r['mib_s']:.1f}", f"{cpu:.1f}" if cpu else "—"]
                  if r else ["—", "—", "—"])
    base = by.get(("qsd", job, q))
    for t in ratio_targets:
        r = by.get((t, job, q))
        cells.append(f"{r['iops'] / base['iops']:.2f}×" if r and base and base["iops"] > 0 else "—")
    for t in ratio_targets:
        r = by.get((t, job, q))
        ok = r and base and r.get("cpu_us_io") and base.get("cpu_us_io")
        cells.append(f"{r['cpu_us_io'] / base['cpu_us_io']:.2f}×" if ok else "—")
    for a, b in base_pairs:
        ra, rb = by.get((a, job, q)), by.get((b, job, q))
        cells.append(f"{ra['iops'] / rb['iops']:.2f}×" if ra and rb and rb["iops"] > 0 else "—")
    lines.append("| " + " | ".join(cells) + " |")
table = "\n".join(lines)
print(table)
md = f"""# vhost-user-blk: vraid vs qemu-storage-daemon

- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}
- machine: {machine}
- versions: {versions}
- command: `{command}`
- client: benches/blkio-bench (libblkio virtio-blk-vhost-user, buffers from alloc_mem_region);
  random jobs QD32 per queue over the whole SIZE, sequential jobs QD8 per queue, each
  queue on its own slice; every target prefilled once; jobs interleaved across targets,
  the targets' order reversed every other round (ABBA);
  each cell is the median of the rounds (raw JSON lines: results.jsonl beside this file);
  ratios are IOPS (= MiB/s) ratios, "CPU" ratios those of CPU µs/IO (lower is better); CPU µs/IO is the server process's utime+stime
  over the job (all its threads, from /proc/PID/stat) divided by the I/Os done.

{table}
"""
open(out_path, "w").write(md)
EOF
log "markdown written to $OUT"
exit "$FAILED"
