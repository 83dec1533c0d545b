#!/usr/bin/env bash
# checksum-cache.sh — 4k random writes over a working set far larger than
# the checksum-page cache, checksums on vs off, in one run (issue 15).
#
# Two RAID-5 arrays of four sparse members (MEMBER_SIZE each, on the disk:
# WORKDIR defaults to /var/tmp, not tmpfs) are created: "on" is served with
# `--checksum-cache CACHE`, "off" with `--no-checksums`. ROUNDS rounds
# alternate them (on, off, on, off, ...); each round starts the server,
# runs fio (libnbd engine, 4k randwrite, iodepth 32) over WORKING_SET bytes
# of the volume for RUNTIME seconds, and reads the server's utime+stime
# from /proc/PID/stat before and after. The cache holds CACHE / 4 KiB pages,
# each covering 4 MiB of one member's data: the working set is reported as
# a multiple of the member data the cache can cover (>= 100x by default).
# Rounds are ABBA-ordered (on off, off on, on off, ...) so neither mode
# always runs first. Prints a markdown table: IOPS and server CPU
# microseconds per I/O, per mode (mean over rounds), and on/off as the
# ratio of the means and as the median (and range) of the per-round
# ratios (round k of "on" against round k of "off").
#
# Environment (defaults in brackets):
#   MEMBER_SIZE  sparse member size [1T]     WORKING_SET  fio --size [1200G]
#   CACHE        --checksum-cache [4M]       RUNTIME      seconds per round [20]
#   ROUNDS       rounds per mode [2]         WORKDIR      [/var/tmp/vraid-checksum-cache]
#   VRAID        binary [target/release/vraid]
#   FIO_EXTRA    more fio options, e.g. "--fsync=32" [""]
#   MODES        modes run per round ["on off"]: "on" = separate layout,
#                "inline" = an array created with `--checksum-layout inline`
#                (no page cache), "off" = `--no-checksums`; "base" is "on"
#                served by VRAID_BASE (another build, e.g. main's) for an A/B,
#                "inline-base" is "inline" served by VRAID_BASE
#   PREP         member preparation [sparse]: "sparse" leaves the members as
#                created (holes; ext4 serializes unaligned direct writes
#                into them), "written" writes zeroes over everything past the
#                first MiB after create (the data and checksum areas, so no
#                holes: as a real disk or a fully written file; all-zero
#                entries and tags mean "unknown", zero parity matches)
#
# Per round it also records (to tell a dip of the machine from one of ours):
# the 1-minute load average at the start, the CPU the rest of the machine
# used during the fio run (busy jiffies of /proc/stat minus the server's and
# fio's own, in cores), the bytes the rest of the machine moved on the disk
# under WORKDIR (its /proc/diskstats minus the server's /proc/PID/io), and
# fio's per-second IOPS (the slowest second and
# the spread within the round: write-back bursts or stalls show there).
# The per-round table follows the summary; for each round's on/off ratio it
# says which side moved against its own neighbours (the same mode's mean of
# the rounds before and after).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBER_SIZE=${MEMBER_SIZE:-1T}
WORKING_SET=${WORKING_SET:-1200G}
CACHE=${CACHE:-4M}
RUNTIME=${RUNTIME:-20}
ROUNDS=${ROUNDS:-2}
WORKDIR=${WORKDIR:-/var/tmp/vraid-checksum-cache}
VRAID=${VRAID:-target/release/vraid}

log() { printf '[checksum-cache %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v fio >/dev/null || die "fio not found (apt-get install fio)"
command -v python3 >/dev/null || die "python3 not found"
[[ -x $VRAID ]] || die "$VRAID not found: cargo build --release -p vraid"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"

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
    # The member images go; the logs stay.
    rm -f "$WORKDIR"/*/m?.img
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Busy jiffies of the whole machine (every field of "cpu" but idle and iowait).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# Bytes read + written on the disk under WORKDIR (0 on tmpfs), and by a process.
DISK=$(basename "$(findmnt -no SOURCE --target "$WORKDIR" 2>/dev/null || echo none)")
disk_bytes() { awk -v d="$DISK" '$3 == d {printf "%.0f\n", ($6 + $10) * 512; f = 1} END {if (!f) print 0}' /proc/diskstats; }
proc_bytes() { awk '/^(read|write)_bytes/ {s += $2} END {printf "%.0f\n", s}' "/proc/$1/io"; }

create() {
    local dir=$WORKDIR/$1
    rm -rf "$dir"
    mkdir -p "$dir"
    for i in 0 1 2 3; do truncate -s "$MEMBER_SIZE" "$dir/m$i.img"; done
    local layout=()
    [[ $1 == inline* ]] && layout=(--checksum-layout inline)
    "$VRAID" create --level 5 --name vol "${layout[@]}" "$dir"/m{0,1,2,3}.img \
        >"$dir/create.log" 2>&1 || die "$1: create failed: $(tail -n 3 "$dir/create.log")"
    if [[ ${PREP:-sparse} == written ]]; then
        local mib
        mib=$(($(stat -c %s "$dir/m0.img") >> 20))
        log "$1: writing the members' data and checksum areas (${mib} MiB each)"
        for i in 0 1 2 3; do
            dd if=/dev/zero of="$dir/m$i.img" bs=1M seek=1 count=$((mib - 1)) \
                conv=notrunc,fsync status=none
        done
    fi
}

# round MODE N
round() {
    local mode=$1 n=$2 dir=$WORKDIR/$1 port extra=()
    port=$(free_port)
    local bin=$VRAID
    if [[ $mode == off ]]; then extra+=(--no-checksums); else extra+=(--checksum-cache "$CACHE"); fi
    if [[ $mode == base || $mode == inline-base ]]; then
        bin=${VRAID_BASE:?VRAID_BASE names the base binary}
    fi
    "$bin" serve --nbd "127.0.0.1:$port" --control "$dir/control.sock" "${extra[@]}" \
        "$dir"/m{0,1,2,3}.img >>"$dir/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "$mode: serve exited: $(tail -n 5 "$dir/serve.log")"
        sleep 0.1
    done
    local before after out=$dir/round$n.json load m0 m1
    load=$(cut -d' ' -f1 /proc/loadavg)
    before=$(cpu_ticks "$SERVER_PID")
    m0=$(machine_ticks)
    local d0 p0 d1 p1
    d0=$(disk_bytes)
    p0=$(proc_bytes "$SERVER_PID")
    log "$mode round $n: randwrite 4k over $WORKING_SET (${RUNTIME}s), load $load"
    # shellcheck disable=SC2086
    fio --name=rw --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol" --rw=randwrite --bs=4k \
        --iodepth=32 --size="$WORKING_SET" --norandommap --randrepeat=0 --time_based \
        --runtime="$RUNTIME" ${FIO_EXTRA:-} --write_iops_log="$dir/iops$n" --log_avg_msec=1000 \
        --output-format=json --output="$out" >/dev/null
    after=$(cpu_ticks "$SERVER_PID")
    m1=$(machine_ticks)
    d1=$(disk_bytes)
    p1=$(proc_bytes "$SERVER_PID")
    if [[ $mode != off ]]; then
        "$VRAID" status --control "$dir/control.sock" |
            grep -E "checksum cache|unaligned member writes" | tee "$dir/status$n.txt" >&2 || true
    fi
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || die "$mode: serve exited with an error"
    SERVER_PID=
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$out" "$((after - before))" \
        "$(getconf CLK_TCK)" "$n" "$load" "$((m1 - m0))" "$dir/iops${n}_iops.1.log" \
        "$((d1 - d0 - (p1 - p0)))" >>"$RESULTS"
}

read -r -a modes <<<"${MODES:-on off}"
for m in "${modes[@]}"; do create "$m"; done
for ((n = 1; n <= ROUNDS; n++)); do
    # Odd rounds in MODES order, even ones reversed (ABBA).
    order=("${modes[@]}")
    if ((n % 2 == 0)); then
        order=()
        for ((i = ${#modes[@]} - 1; i >= 0; i--)); do order+=("${modes[i]}"); done
    fi
    for m in "${order[@]}"; do round "$m" "$n"; done
done
grep -qs "checksum mismatch" "$WORKDIR"/*/serve.log && die "checksum errors during the bench"

python3 - "$RESULTS" "$WORKING_SET" "$CACHE" "$RUNTIME" "${PREP:-sparse}" <<'PY'
import json, sys
def size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
agg = {}
per = {}
for mode, path, ticks, hz, n, load, mticks, ilog, dbytes in rows:
    j = json.load(open(path))["jobs"][0]
    w = j["write"]
    a = agg.setdefault(mode, {"iops": [], "us": []})
    a["iops"].append(w["iops"])
    a["us"].append(int(ticks) / int(hz) * 1e6 / max(w["total_ios"], 1))
    secs = max(w["runtime"], 1) / 1000
    fio_ticks = (j["usr_cpu"] + j["sys_cpu"]) / 100 * secs * int(hz)
    others = max(int(mticks) - int(ticks) - fio_ticks, 0) / int(hz) / secs
    try:
        ps = [int(l.split(",")[1]) for l in open(ilog) if l.strip()]
    except OSError:
        ps = []
    per[(mode, int(n))] = dict(iops=w["iops"], us=a["us"][-1], load=float(load),
                               others=others, disk=max(int(dbytes), 0) / secs / 1e6,
                               smin=min(ps) if ps else 0,
                               sd=(sum((x - sum(ps) / len(ps)) ** 2 for x in ps) / len(ps)) ** .5
                               / max(sum(ps) / len(ps), 1) if ps else 0)
ws, cache = size(sys.argv[2]), size(sys.argv[3])
covered = cache // 4096 * (4 << 20)
print(f"\n4k random writes, RAID-5 4 members ({sys.argv[5]} members), working set {sys.argv[2]} "
      f"= {ws * 4 / 3 / covered:.0f}x the member data the {sys.argv[3]} cache covers, "
      f"{sys.argv[4]}s x {len(next(iter(agg.values()))['iops'])} rounds\n")
print("| checksums | IOPS (per round) | mean IOPS | server CPU us/IO |")
print("|---|---|---:|---:|")
mean = {}
for mode in ["on", "inline", "base", "inline-base", "off"]:
    if mode not in agg:
        continue
    a = agg[mode]
    mean[mode] = (sum(a["iops"]) / len(a["iops"]), sum(a["us"]) / len(a["us"]))
    rounds = " / ".join(f"{x:.0f}" for x in a["iops"])
    print(f"| {mode} | {rounds} | {mean[mode][0]:.0f} | {mean[mode][1]:.1f} |")
med = lambda v: (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2
for a_, b_ in [("on", "off"), ("inline", "off"), ("base", "off"), ("inline-base", "off"),
               ("on", "base"), ("inline", "inline-base")]:
    if a_ not in mean or b_ not in mean:
        continue
    r = sorted(x / y for x, y in zip(agg[a_]["iops"], agg[b_]["iops"]))
    c = sorted(x / y for x, y in zip(agg[a_]["us"], agg[b_]["us"]))
    print(f"| {a_}/{b_} (ratio of means) | | {mean[a_][0] / mean[b_][0]:.2f} | {mean[a_][1] / mean[b_][1]:.2f} |")
    print(f"| {a_}/{b_} (per-round median, range) | | {med(r):.2f} ({r[0]:.2f}-{r[-1]:.2f}) | {med(c):.2f} ({c[0]:.2f}-{c[-1]:.2f}) |")
loads = [p["load"] for p in per.values()]
print(f"\nload average (1 min) at the rounds' starts: {min(loads):.1f}-{max(loads):.1f}\n")
print("| round | mode | IOPS | us/IO | load | others' CPU (cores) | others' disk MB/s | slowest second | per-second CV | vs off | moved |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
rounds = sorted({n for _, n in per})
def neigh(mode, n):
    v = [per[(mode, k)]["iops"] for k in (n - 1, n + 1) if (mode, k) in per]
    return sum(v) / len(v) if v else None
for n in rounds:
    for mode in [m for m in ["on", "inline", "base", "inline-base", "off"] if (m, n) in per]:
        p = per[(mode, n)]
        ratio, moved = "", ""
        if mode != "off" and ("off", n) in per:
            o = per[("off", n)]
            ratio = f"{p['iops'] / o['iops']:.2f}"
            # Which side is off its neighbours' mean (same mode, rounds n-1, n+1)?
            dm, do = neigh(mode, n), neigh("off", n)
            if dm and do:
                moved = f"{mode} {p['iops'] / dm - 1:+.0%}, off {o['iops'] / do - 1:+.0%}"
        print(f"| {n} | {mode} | {p['iops']:.0f} | {p['us']:.1f} | {p['load']:.1f} | {p['others']:.2f} "
              f"| {p['disk']:.1f} "
              f"| {p['smin']} | {p['sd']:.2f} | {ratio} | {moved} |")
PY
