#!/usr/bin/env bash
# fio-compare.sh — measure vraid RAID-0/1/5 against qemu-nbd and nbdkit in one run.
#
# Every target is an NBD server on a free loopback port; fio drives all of them
# with the same jobs through its libnbd engine (ioengine=nbd, uri=...). Each
# target is prefilled with a sequential write, then the selected jobs run one
# after the other (time based). Results go to stdout and, as markdown, to $OUT.
# See benches/README.md for how to read the ratios.
#
# Environment (defaults in brackets):
#   TARGETS   targets to run ["raid0 raid1 raid5 qemu-nbd qemu-nbd-nocache nbdkit-mem"]
#   JOBS      jobs to run ["randread4k randwrite4k seqread1m seqwrite1m"]
#   SIZE      usable size of every target, i.e. of each volume, not of each
#             member [1G; 256M with QUICK=1]
#   RUNTIME   seconds per job, after RAMP seconds of ramp [10; 3 with QUICK=1]
#   RAMP      ramp seconds per job [2]
#   QUICK     1 = smoke-test mode (RUNTIME=3, SIZE=256M unless set) [0]
#   WORKDIR   member files, images, logs, fio JSON [target/fio-compare]
#   OUT       markdown results [$WORKDIR/results.md]
#   VRAID     vraid binary [target/release/vraid]
#   VRAID_IO_ENGINE   --io-engine for vraid serve: auto|uring|sync [auto]
#   CHUNK     vraid --chunk-size [64K]
#   MEMBER_HEADROOM   added to each vraid member for the metadata in front of
#             the data area (docs/FORMAT.md) [auto = data/512 + 4M]
#   IDLE_RSS  measure idle RSS of a 4x256M RAID-5 vraid serve: 1|0|auto [auto =
#             when a raid target is selected]
#   START_TIMEOUT     seconds to wait for a server to accept connections [30]
#   FIO_TIMEOUT_SLACK seconds a job may overrun RAMP+RUNTIME before it is
#             killed [120]; the prefill may take PREFILL_TIMEOUT seconds [900]
#   KEEP      1 = keep member files and images after each target [0]
#
# Exit status: 0 when every selected target/job produced a result, 1 otherwise
# (the table still shows what did run), 2 on bad usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO_ROOT"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RUNTIME=${RUNTIME:-3}
    SIZE=${SIZE:-256M}
else
    RUNTIME=${RUNTIME:-10}
    SIZE=${SIZE:-1G}
fi
RAMP=${RAMP:-2}
WORKDIR=${WORKDIR:-target/fio-compare}
OUT=${OUT:-$WORKDIR/results.md}
TARGETS=${TARGETS:-"raid0 raid1 raid5 qemu-nbd qemu-nbd-nocache nbdkit-mem"}
JOBS=${JOBS:-"randread4k randwrite4k seqread1m seqwrite1m"}
VRAID=${VRAID:-target/release/vraid}
VRAID_IO_ENGINE=${VRAID_IO_ENGINE:-auto}
CHUNK=${CHUNK:-64K}
MEMBER_HEADROOM=${MEMBER_HEADROOM:-auto}
IDLE_RSS=${IDLE_RSS:-auto}
START_TIMEOUT=${START_TIMEOUT:-30}
FIO_TIMEOUT_SLACK=${FIO_TIMEOUT_SLACK:-120}
PREFILL_TIMEOUT=${PREFILL_TIMEOUT:-900}
KEEP=${KEEP:-0}

ALL_TARGETS="raid0 raid1 raid5 qemu-nbd qemu-nbd-nocache nbdkit-mem"
ALL_JOBS="randread4k randwrite4k seqread1m seqwrite1m"

log() { printf '[fio-compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
usage_error() {
    log "usage error: $*"
    exit 2
}

# to_bytes 64K -> 65536 (binary suffixes K M G T, optional B/iB).
to_bytes() {
    local text=$1 num suffix shift
    if [[ ! $text =~ ^([0-9]+)([KkMmGgTt]?)([iI]?[bB])?$ ]]; then
        usage_error "bad size '$text' (use e.g. 256M, 1G)"
    fi
    num=${BASH_REMATCH[1]}
    suffix=${BASH_REMATCH[2]^^}
    case $suffix in
        '') shift=0 ;;
        K) shift=10 ;;
        M) shift=20 ;;
        G) shift=30 ;;
        T) shift=40 ;;
    esac
    echo $((num << shift))
}

contains_word() { # contains_word "a b c" b
    local word
    for word in $1; do [[ $word == "$2" ]] && return 0; done
    return 1
}

# ---------------------------------------------------------------- validation
SIZE_BYTES=$(to_bytes "$SIZE")
CHUNK_BYTES=$(to_bytes "$CHUNK")
HEADROOM_BYTES=auto
[[ $MEMBER_HEADROOM == auto ]] || HEADROOM_BYTES=$(to_bytes "$MEMBER_HEADROOM")
MIB=$((1 << 20))
((SIZE_BYTES >= 16 * MIB && SIZE_BYTES % MIB == 0)) ||
    usage_error "SIZE must be a whole number of MiB, at least 16M (got $SIZE)"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || usage_error "RUNTIME must be a positive integer"
[[ $RAMP =~ ^[0-9]+$ ]] || usage_error "RAMP must be a non-negative integer"
for t in $TARGETS; do
    contains_word "$ALL_TARGETS" "$t" || usage_error "unknown target '$t' (known: $ALL_TARGETS)"
done
for j in $JOBS; do
    contains_word "$ALL_JOBS" "$j" || usage_error "unknown job '$j' (known: $ALL_JOBS)"
done
[[ -n ${TARGETS// /} ]] || usage_error "TARGETS is empty"
[[ -n ${JOBS// /} ]] || usage_error "JOBS is empty"

WANT_VRAID=0
for t in $TARGETS; do [[ $t == raid* ]] && WANT_VRAID=1; done
if [[ $IDLE_RSS == auto ]]; then IDLE_RSS=$WANT_VRAID; fi
[[ $IDLE_RSS == 0 || $IDLE_RSS == 1 ]] || usage_error "IDLE_RSS must be 0, 1 or auto"
if ((WANT_VRAID || IDLE_RSS)); then WANT_VRAID=1; fi

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found in PATH ($2)"; }
need fio "apt-get install fio"
need python3 "needed to parse fio's JSON"
need timeout "coreutils"
if contains_word "$TARGETS" qemu-nbd || contains_word "$TARGETS" qemu-nbd-nocache; then
    need qemu-nbd "apt-get install qemu-utils"
fi
if contains_word "$TARGETS" nbdkit-mem; then need nbdkit "apt-get install nbdkit"; fi
if ((WANT_VRAID)); then
    [[ -x $VRAID ]] || die "vraid binary $VRAID not found; build it with: cargo build --release -p vraid (or set VRAID=)"
fi
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (fio >= 3.17 built with libnbd needed)"

mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
mkdir -p "$(dirname "$OUT")"
JSON_DIR=$WORKDIR/json
LOG_DIR=$WORKDIR/logs
rm -rf "$JSON_DIR"
mkdir -p "$JSON_DIR" "$LOG_DIR"
MANIFEST=$WORKDIR/manifest.tsv # target \t job \t status \t json-or-reason
EXTRA=$WORKDIR/extra.tsv       # key \t value (RSS figures, notes)
PIDS_FILE=$WORKDIR/servers.pids
: >"$MANIFEST"
: >"$EXTRA"
: >"$PIDS_FILE"

# ----------------------------------------------------------- server handling
# Every server's pid and command name go to $PIDS_FILE so that whichever shell
# runs the cleanup (the per-target subshell or the main script) can stop it.

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# start_server NAME LOGFILE CMD... ; sets SERVER_PID
SERVER_PID=
SERVER_LOG=
start_server() {
    local name=$1 logfile=$2
    shift 2
    log "starting $name: $*"
    "$@" >"$logfile" 2>&1 &
    SERVER_PID=$!
    SERVER_LOG=$logfile
    printf '%s %s %s\n' "$SERVER_PID" "$(proc_start_time "$SERVER_PID")" "$(basename "$1")" >>"$PIDS_FILE"
}

# wait_port NAME PID PORT LOGFILE: until the port accepts a TCP connection.
wait_port() {
    local name=$1 pid=$2 port=$3 logfile=$4
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) exited during startup; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "$name (pid $pid) did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT}s; last lines of $logfile:"
    tail -n 20 "$logfile" >&2 || true
    return 1
}

# proc_start_time PID: start time in clock ticks since boot (field 22 of
# /proc/PID/stat), which tells a process apart from a later one with its pid.
proc_start_time() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return 0
    }
    stat=${stat##*) } # drop "pid (comm) ", comm may hold spaces
    # shellcheck disable=SC2086 # split the fields on purpose
    set -- $stat
    echo "${20}"
}

# pid_is PID START: PID is alive and is the process we started.
pid_is() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ $(proc_start_time "$1") == "$2" ]]
}

# stop_server NAME PID: SIGTERM, wait up to 10 s, then SIGKILL. Returns the
# server's exit status (non-zero also when it had to be killed).
stop_server() {
    local name=$1 pid=$2 rc=0 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "warning: $name (pid $pid) still running 10 s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    # Drop it from the registry.
    if [[ -f $PIDS_FILE ]]; then
        grep -v "^$pid " "$PIDS_FILE" >"$PIDS_FILE.tmp" || true
        mv "$PIDS_FILE.tmp" "$PIDS_FILE"
    fi
    return "$rc"
}

cleanup_servers() {
    local pid start comm
    [[ -f $PIDS_FILE ]] || return 0
    while read -r pid start comm; do
        [[ -n $pid ]] || continue
        if pid_is "$pid" "$start"; then
            log "cleanup: stopping $comm (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done <"$PIDS_FILE"
    sleep 0.5
    while read -r pid start comm; do
        [[ -n $pid ]] || continue
        local i
        for ((i = 0; i < 50; i++)); do
            pid_is "$pid" "$start" || break
            sleep 0.1
        done
        if pid_is "$pid" "$start"; then
            log "cleanup: $comm (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done <"$PIDS_FILE"
    : >"$PIDS_FILE"
}

# export_size URI: prints the export size in bytes if nbdinfo is available.
check_export_size() {
    local name=$1 uri=$2 size
    command -v nbdinfo >/dev/null 2>&1 || return 0
    if ! size=$(nbdinfo --size "$uri" 2>&1); then
        log "$name: nbdinfo could not open $uri: $size"
        return 1
    fi
    if ((size < SIZE_BYTES)); then
        log "$name: export is $size bytes, smaller than SIZE=$SIZE_BYTES"
        return 1
    fi
    log "$name: export $uri is $size bytes"
}

# ------------------------------------------------------------------ fio jobs
job_args() { # job_args JOB -> fio options
    case $1 in
        randread4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
        randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
        seqread1m) echo "--rw=read --bs=1M --iodepth=8" ;;
        seqwrite1m) echo "--rw=write --bs=1M --iodepth=8" ;;
    esac
}

# run_fio TARGET JOB URI: runs one job, records a success in the manifest; on
# failure sets FIO_RC and returns 1.
FIO_RC=0
run_fio() {
    local target=$1 job=$2 uri=$3 json rc=0
    local -a args
    read -r -a args <<<"$(job_args "$job")"
    json=$JSON_DIR/$target-$job.json
    log "$target: $job (${RAMP}s ramp + ${RUNTIME}s)"
    timeout --signal=TERM --kill-after=10 $((RAMP + RUNTIME + FIO_TIMEOUT_SLACK)) \
        fio --name="$target-$job" --ioengine=nbd --uri="$uri" "${args[@]}" \
        --size="$SIZE_BYTES" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
        --group_reporting --output-format=json --output="$json" \
        >"$LOG_DIR/$target-$job.fio.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        log "$target: $job failed (fio exit $rc); see $LOG_DIR/$target-$job.fio.log"
        FIO_RC=$rc
        return 1
    fi
    printf '%s\t%s\tok\t%s\n' "$target" "$job" "$json" >>"$MANIFEST"
}

prefill() { # prefill TARGET URI: sequential 1M write over the whole SIZE.
    local target=$1 uri=$2 rc=0 start=$SECONDS
    log "$target: prefill $SIZE sequentially"
    timeout --signal=TERM --kill-after=10 "$PREFILL_TIMEOUT" \
        fio --name="$target-prefill" --ioengine=nbd --uri="$uri" --rw=write --bs=1M \
        --iodepth=8 --size="$SIZE_BYTES" --output-format=json \
        --output="$JSON_DIR/$target-prefill.json" \
        >"$LOG_DIR/$target-prefill.fio.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        log "$target: prefill failed (fio exit $rc); see $LOG_DIR/$target-prefill.fio.log"
        return 1
    fi
    log "$target: prefill done in $((SECONDS - start))s"
}

mark_all_failed() { # mark_all_failed TARGET REASON: jobs not yet in the manifest
    local target=$1 reason=$2 job
    for job in $JOBS; do
        if ! grep -q "^$target	$job	" "$MANIFEST"; then
            printf '%s\t%s\tFAILED\t%s\n' "$target" "$job" "$reason" >>"$MANIFEST"
        fi
    done
}

# run_jobs TARGET URI PID: prefill then every job; stops at the first failure
# or when the server died.
run_jobs() {
    local target=$1 uri=$2 pid=$3 job
    prefill "$target" "$uri" || {
        server_alive "$pid" || log "$target: the server (pid $pid) died during the prefill"
        mark_all_failed "$target" "prefill failed"
        return 1
    }
    for job in $JOBS; do
        run_fio "$target" "$job" "$uri" || {
            if ! server_alive "$pid"; then
                log "$target: the server (pid $pid) died during $job; last lines of its log:"
                tail -n 20 "$SERVER_LOG" >&2 || true
                printf '%s\t%s\tFAILED\tserver died during this job (fio exit %s)\n' \
                    "$target" "$job" "$FIO_RC" >>"$MANIFEST"
            else
                printf '%s\t%s\tFAILED\tfio exit %s, see logs/%s-%s.fio.log\n' \
                    "$target" "$job" "$FIO_RC" "$target" "$job" >>"$MANIFEST"
            fi
            mark_all_failed "$target" "skipped after $job failed"
            return 1
        }
    done
}

# server_alive PID: running (a zombie that has not been reaped yet is dead).
server_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

proc_status_kib() { # proc_status_kib PID FIELD -> value in KiB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# ------------------------------------------------------------------- targets
vraid_geometry() { # vraid_geometry TARGET -> "level members data_members"
    case $1 in
        raid0) echo "0 4 4" ;;
        raid1) echo "1 2 1" ;;
        raid5) echo "5 4 3" ;;
    esac
}

# vraid_create NAME LEVEL MEMBERS MEMBER_BYTES DIR: creates members; prints paths.
vraid_create() {
    local name=$1 level=$2 members=$3 member_bytes=$4 dir=$5 i
    local -a paths=()
    rm -rf "$dir"
    mkdir -p "$dir"
    for ((i = 0; i < members; i++)); do paths+=("$dir/m$i.img"); done
    log "$name: vraid create --level $level --chunk-size $CHUNK --member-size $((member_bytes / MIB))M (${members} members)"
    if ! "$VRAID" create --level "$level" --chunk-size "$CHUNK" \
        --member-size "$((member_bytes / MIB))M" --name "$name" --force "${paths[@]}" \
        >"$LOG_DIR/$name-create.log" 2>&1; then
        log "$name: vraid create failed; last lines of $LOG_DIR/$name-create.log:"
        tail -n 20 "$LOG_DIR/$name-create.log" >&2 || true
        return 1
    fi
    printf '%s\n' "${paths[@]}"
}

run_vraid_target() {
    local target=$1 level members data per_member member_bytes dir port uri pid rc=0
    local -a paths
    read -r level members data <<<"$(vraid_geometry "$target")"
    # Each member holds SIZE/data bytes of data, rounded up to whole chunks and
    # MiB, plus headroom for the metadata in front of the data area: superblocks,
    # bitmap and journal (~1 MiB) and the block checksums (4 bytes per 4 KiB).
    local headroom
    per_member=$(((SIZE_BYTES + data - 1) / data))
    per_member=$(((per_member + CHUNK_BYTES - 1) / CHUNK_BYTES * CHUNK_BYTES))
    headroom=$HEADROOM_BYTES
    [[ $headroom == auto ]] && headroom=$((per_member / 512 + 4 * MIB))
    member_bytes=$(((per_member + headroom + MIB - 1) / MIB * MIB))
    dir=$WORKDIR/$target
    mapfile -t paths < <(vraid_create "$target" "$level" "$members" "$member_bytes" "$dir")
    ((${#paths[@]} == members)) || {
        mark_all_failed "$target" "vraid create failed"
        return 1
    }
    port=$(free_port)
    uri="nbd://127.0.0.1:$port/$target"
    start_server "$target" "$LOG_DIR/$target-serve.log" \
        "$VRAID" serve --nbd "127.0.0.1:$port" --io-engine "$VRAID_IO_ENGINE" "${paths[@]}"
    pid=$SERVER_PID
    if ! wait_port "$target" "$pid" "$port" "$LOG_DIR/$target-serve.log" ||
        ! check_export_size "$target" "$uri"; then
        stop_server "$target" "$pid" || true
        mark_all_failed "$target" "server did not come up"
        return 1
    fi
    printf '%s\t%s\n' "idle_rss_kib:$target" "$(proc_status_kib "$pid" VmRSS)" >>"$EXTRA"
    run_jobs "$target" "$uri" "$pid" || rc=1
    if server_alive "$pid"; then
        printf '%s\t%s\n' "peak_rss_kib:$target" "$(proc_status_kib "$pid" VmHWM)" >>"$EXTRA"
    fi
    local src=0 was_alive=0
    server_alive "$pid" && was_alive=1
    stop_server "$target" "$pid" || src=$?
    if ((!was_alive)); then
        printf '%s\t%s\n' "note" "vraid serve ($target) died on its own (status $src)" >>"$EXTRA"
    elif ((src != 0)); then
        log "warning: $target: vraid serve exited with status $src after SIGTERM (expected 0)"
        printf '%s\t%s\n' "note" "vraid serve ($target) exited with status $src after SIGTERM" >>"$EXTRA"
    fi
    ((KEEP == 1)) || rm -rf "$dir"
    return "$rc"
}

run_qemu_target() {
    local target=$1 image port uri pid rc=0
    local -a cache_args=()
    [[ $target == qemu-nbd-nocache ]] && cache_args=(--cache=none --aio=io_uring)
    image=$WORKDIR/$target.raw
    rm -f "$image"
    truncate -s "$SIZE_BYTES" "$image"
    port=$(free_port)
    uri="nbd://127.0.0.1:$port/$target"
    start_server "$target" "$LOG_DIR/$target.log" \
        qemu-nbd -f raw --persistent --shared=8 "${cache_args[@]}" \
        -b 127.0.0.1 -p "$port" -x "$target" "$image"
    pid=$SERVER_PID
    if ! wait_port "$target" "$pid" "$port" "$LOG_DIR/$target.log" ||
        ! check_export_size "$target" "$uri"; then
        stop_server "$target" "$pid" || true
        mark_all_failed "$target" "server did not come up"
        return 1
    fi
    run_jobs "$target" "$uri" "$pid" || rc=1
    stop_server "$target" "$pid" || true
    ((KEEP == 1)) || rm -f "$image"
    return "$rc"
}

run_nbdkit_target() {
    local target=$1 port uri pid rc=0
    port=$(free_port)
    uri="nbd://127.0.0.1:$port/"
    start_server "$target" "$LOG_DIR/$target.log" \
        nbdkit -f -i 127.0.0.1 -p "$port" memory "$SIZE_BYTES"
    pid=$SERVER_PID
    if ! wait_port "$target" "$pid" "$port" "$LOG_DIR/$target.log" ||
        ! check_export_size "$target" "$uri"; then
        stop_server "$target" "$pid" || true
        mark_all_failed "$target" "server did not come up"
        return 1
    fi
    run_jobs "$target" "$uri" "$pid" || rc=1
    stop_server "$target" "$pid" || true
    return "$rc"
}

run_target() {
    case $1 in
        raid0 | raid1 | raid5) run_vraid_target "$1" ;;
        qemu-nbd | qemu-nbd-nocache) run_qemu_target "$1" ;;
        nbdkit-mem) run_nbdkit_target "$1" ;;
    esac
}

# Idle RSS of `vraid serve` on a 4 x 256M RAID-5, no client connected.
measure_idle_rss() {
    local dir=$WORKDIR/rss-raid5 port pid rss hwm
    local -a paths
    mapfile -t paths < <(vraid_create rss5 5 4 $((256 * MIB)) "$dir")
    ((${#paths[@]} == 4)) || return 1
    port=$(free_port)
    start_server rss5 "$LOG_DIR/rss5-serve.log" \
        "$VRAID" serve --nbd "127.0.0.1:$port" --io-engine "$VRAID_IO_ENGINE" "${paths[@]}"
    pid=$SERVER_PID
    if ! wait_port rss5 "$pid" "$port" "$LOG_DIR/rss5-serve.log"; then
        stop_server rss5 "$pid" || true
        return 1
    fi
    sleep 2 # let start-up allocations settle
    rss=$(proc_status_kib "$pid" VmRSS)
    hwm=$(proc_status_kib "$pid" VmHWM)
    log "idle vraid serve (RAID-5, 4 x 256M): VmRSS ${rss} KiB, VmHWM ${hwm} KiB"
    printf 'idle_rss_kib:rss5\t%s\nidle_hwm_kib:rss5\t%s\n' "$rss" "$hwm" >>"$EXTRA"
    stop_server rss5 "$pid" || log "warning: vraid serve (rss5) exited non-zero after SIGTERM"
    rm -rf "$dir"
}

# ---------------------------------------------------------------------- main
CHILD=
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM "$CHILD" 2>/dev/null || true
    fi
    cleanup_servers
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs "$@" in a background subshell with errexit on and its own cleanup, then
# waits for it (wait is interruptible, so SIGTERM to this script acts at once).
in_subshell() {
    (
        trap cleanup_servers EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        set -e
        "$@"
    ) &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}

log "targets: $TARGETS"
log "jobs: $JOBS; SIZE=$SIZE RUNTIME=${RUNTIME}s RAMP=${RAMP}s WORKDIR=$WORKDIR"
FAILED=0
if ((IDLE_RSS)); then
    in_subshell measure_idle_rss || {
        log "idle RSS measurement failed"
        FAILED=1
    }
fi
for target in $TARGETS; do
    in_subshell run_target "$target" || {
        log "$target: failed (see $LOG_DIR)"
        FAILED=1
    }
done

# ------------------------------------------------------------------- report
vraid_version=
if ((WANT_VRAID)); then
    vraid_version=$("$VRAID" --version 2>/dev/null | head -n 1 || true)
fi
git_rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null; then git_rev="$git_rev (dirty)"; fi

export MANIFEST EXTRA OUT SIZE RUNTIME RAMP TARGETS JOBS VRAID_IO_ENGINE CHUNK QUICK
export FC_DATE FC_NPROC FC_CPU FC_KERNEL FC_FIO FC_QEMU FC_NBDKIT FC_VRAID FC_GIT
FC_DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
FC_NPROC=$(nproc)
FC_CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
FC_KERNEL=$(uname -r)
FC_FIO=$(fio --version)
FC_QEMU=$(qemu-nbd --version 2>/dev/null | head -n 1 || echo "not installed")
FC_NBDKIT=$(nbdkit --version 2>/dev/null | head -n 1 || echo "not installed")
FC_VRAID=${vraid_version:-n/a}
FC_GIT=$git_rev

python3 - <<'PY'
import json, os, sys

targets = os.environ["TARGETS"].split()
jobs = os.environ["JOBS"].split()
results, failures = {}, {}


def load(path):
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON document.
    return json.loads(text[text.index("{"):])


with open(os.environ["MANIFEST"]) as f:
    for line in f:
        target, job, status, info = line.rstrip("\n").split("\t", 3)
        if status != "ok":
            failures[(target, job)] = info
            continue
        try:
            doc = load(info)
            j = doc["jobs"][0]
            side = j["write"] if "write" in job else j["read"]
            if j.get("error"):
                raise ValueError(f"fio job error {j['error']}")
            pct = side.get("clat_ns", {}).get("percentile", {})
            p99 = pct.get("99.000000")
            results[(target, job)] = {
                "iops": side["iops"],
                "mibs": side["bw_bytes"] / 2**20,
                "p99_us": p99 / 1000 if p99 is not None else None,
            }
        except (OSError, ValueError, KeyError, IndexError) as e:
            failures[(target, job)] = f"unparsable fio output: {e}"

extra = {}
notes = []
with open(os.environ["EXTRA"]) as f:
    for line in f:
        key, value = line.rstrip("\n").split("\t", 1)
        if key == "note":
            notes.append(value)
        elif value.isdigit():
            extra[key] = value


def ratio(target, job, ref):
    a, b = results.get((target, job)), results.get((ref, job))
    if not a or not b or b["iops"] == 0:
        return "-"
    return f"{a['iops'] / b['iops']:.2f}"


header = ["target", "job", "IOPS", "MiB/s", "p99 lat us", "/qemu-nbd", "/nbdkit-mem"]
rows = []
failed_lines = []
for target in targets:
    for job in jobs:
        r = results.get((target, job))
        if r is None:
            why = failures.get((target, job), "no result")
            rows.append([target, job, "FAILED", "-", "-", "-", "-"])
            failed_lines.append(f"{target} {job}: {why}")
            continue
        p99 = f"{r['p99_us']:.0f}" if r["p99_us"] is not None else "-"
        rows.append([target, job, f"{r['iops']:.0f}", f"{r['mibs']:.1f}", p99,
                     ratio(target, job, "qemu-nbd"), ratio(target, job, "nbdkit-mem")])

penalty = []
for job in jobs:
    r = ratio("raid5", job, "raid0")
    if r != "-":
        penalty.append([job, r])


def text_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = []
    for i, row in enumerate([header] + rows):
        cells = []
        for k, (cell, w) in enumerate(zip(row, widths)):
            cells.append(str(cell).ljust(w) if k < 2 else str(cell).rjust(w))
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if k < 2 else "---:" for k in range(len(header))) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


rss_lines = []
if "idle_rss_kib:rss5" in extra:
    rss_lines.append(f"idle `vraid serve` RSS (RAID-5, 4 x 256M, no client): "
                     f"{int(extra['idle_rss_kib:rss5']) / 1024:.1f} MiB "
                     f"(VmHWM {int(extra['idle_hwm_kib:rss5']) / 1024:.1f} MiB)")
for t in ("raid0", "raid1", "raid5"):
    if f"peak_rss_kib:{t}" in extra and f"idle_rss_kib:{t}" in extra:
        rss_lines.append(f"`vraid serve` {t}: RSS idle {int(extra[f'idle_rss_kib:{t}']) / 1024:.1f} MiB, "
                         f"peak during run (VmHWM) {int(extra[f'peak_rss_kib:{t}']) / 1024:.1f} MiB")

e = os.environ
print()
print(text_table(header, rows))
if penalty:
    print()
    print("RAID-5 / RAID-0 (IOPS ratio; write rows = RAID-5 write penalty):")
    print(text_table(["job", "raid5/raid0"], penalty))
if rss_lines or notes:
    print()
    for line in rss_lines + notes:
        print(line.replace("`", ""))
if failed_lines:
    print()
    print("failed:")
    for line in failed_lines:
        print("  " + line)

meta = [
    f"- date: {e['FC_DATE']}",
    f"- host: nproc {e['FC_NPROC']}, CPU {e['FC_CPU']}, kernel {e['FC_KERNEL']}",
    f"- tools: {e['FC_FIO']}, {e['FC_QEMU']}, {e['FC_NBDKIT']}, vraid {e['FC_VRAID']} (git {e['FC_GIT']})",
    f"- SIZE {e['SIZE']} per target (usable), RUNTIME {e['RUNTIME']} s + ramp {e['RAMP']} s per job"
    f"{' (QUICK)' if e['QUICK'] == '1' else ''}, prefilled sequentially; vraid chunk {e['CHUNK']}, "
    f"io-engine {e['VRAID_IO_ENGINE']}",
    "- jobs: randread4k/randwrite4k = 4 KiB random QD32; seqread1m/seqwrite1m = 1 MiB sequential QD8; "
    "fio ioengine=nbd, one connection per job",
    "- ratios are IOPS(row) / IOPS(reference) for the same job (same block size, so also the MiB/s ratio)",
]
md = ["# vraid fio comparison", ""] + meta + ["", md_table(header, rows)]
if penalty:
    md += ["", "RAID-5 / RAID-0 (IOPS ratio; write rows = RAID-5 write penalty):", "",
           md_table(["job", "raid5/raid0"], penalty)]
if rss_lines or notes:
    md += [""] + [f"- {line}" for line in rss_lines + notes]
if failed_lines:
    md += ["", "Failed:", ""] + [f"- {line}" for line in failed_lines]
with open(e["OUT"], "w") as f:
    f.write("\n".join(md) + "\n")
print()
print(f"markdown written to {e['OUT']}")
PY

if ((FAILED)); then
    log "some targets failed; see $LOG_DIR"
    exit 1
fi
