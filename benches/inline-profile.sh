#!/usr/bin/env bash
# inline-profile.sh — where the inline checksum layout's extra CPU per 4k
# random write goes (issue 15): the same fio job against an inline array
# and a `--no-checksums` array, each server sampled with `perf record -g`,
# and the flat profiles (self time per symbol) printed side by side as
# shares of samples and as CPU microseconds per client write.
#
# Two RAID-5 arrays of 4 members (MEMBER_SIZE each) in WORKDIR, written
# (zeroes over every member past its first MiB: no holes, as a real disk)
# unless PREP=sparse. For each of ROUNDS rounds, each mode (order rotated)
# is served, fio runs 4k randwrite QD32 over the volume for RUNTIME seconds,
# and perf samples the server for PERF_SECS seconds from the middle of the
# run. CPU per I/O is the server's utime+stime over the fio run / writes.
#
# Environment (defaults in brackets):
#   WORKDIR [/var/tmp/vraid-inline-profile]   MEMBER_SIZE [512M]
#   RUNTIME [10]   PERF_SECS [6]   ROUNDS [2]   TOP [40]
#   MODES ["inline off"]   VRAID [target/release/vraid]   PREP [written]
#   VRAID_BASE  binary for the mode "inline-base" (an A/B of two builds)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORKDIR=${WORKDIR:-/var/tmp/vraid-inline-profile}
MEMBER_SIZE=${MEMBER_SIZE:-512M}
RUNTIME=${RUNTIME:-10}
PERF_SECS=${PERF_SECS:-6}
ROUNDS=${ROUNDS:-2}
TOP=${TOP:-40}
MODES=${MODES:-"inline off"}
VRAID=${VRAID:-target/release/vraid}
PREP=${PREP:-written}

log() { printf '[inline-profile %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v fio >/dev/null || die "fio not found"
command -v perf >/dev/null || die "perf not found (linux-perf)"
[[ -x $VRAID ]] || die "$VRAID not found"

mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -f "$WORKDIR"/*/m?.img "$WORKDIR"/*/perf*.data
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

create() {
    local dir=$WORKDIR/$1 layout=()
    rm -rf "$dir"
    mkdir -p "$dir"
    for i in 0 1 2 3; do truncate -s "$MEMBER_SIZE" "$dir/m$i.img"; done
    [[ $1 == inline* ]] && layout=(--checksum-layout inline)
    "$VRAID" create --level 5 --name vol "${layout[@]}" "$dir"/m{0,1,2,3}.img \
        >"$dir/create.log" 2>&1 || die "$1: create failed"
    if [[ $PREP == written ]]; then
        local mib=$(($(stat -c %s "$dir/m0.img") >> 20))
        for i in 0 1 2 3; do
            dd if=/dev/zero of="$dir/m$i.img" bs=1M seek=1 count=$((mib - 1)) \
                conv=notrunc,fsync status=none
        done
    fi
}

# round MODE N
round() {
    local mode=$1 n=$2 dir=$WORKDIR/$1 port bin=$VRAID extra=()
    [[ $mode == inline-base ]] && bin=${VRAID_BASE:?VRAID_BASE names the base binary}
    [[ $mode == off ]] && extra=(--no-checksums)
    port=$(free_port)
    "$bin" serve --nbd "127.0.0.1:$port" --control "$dir/control.sock" "${extra[@]}" \
        "$dir"/m{0,1,2,3}.img >>"$dir/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "$mode: serve exited"
        sleep 0.1
    done
    local t0 t1 load
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(cpu_ticks "$SERVER_PID")
    fio --name=rw --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol" --rw=randwrite --bs=4k \
        --iodepth=32 --norandommap --randrepeat=0 --time_based --runtime="$RUNTIME" \
        --output-format=json --output="$dir/fio$n.json" >/dev/null &
    local fio_pid=$!
    # perf samples the middle of the fio run (fio's own start-up excluded).
    local lead=$(((RUNTIME - PERF_SECS) / 2))
    ((lead > 0)) && sleep "$lead"
    perf record -q -g -F 999 -p "$SERVER_PID" -o "$dir/perf$n.data" -- sleep "$PERF_SECS" \
        >/dev/null 2>&1 || log "$mode: perf record failed"
    wait "$fio_pid"
    t1=$(cpu_ticks "$SERVER_PID")
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || die "$mode: serve exited with an error"
    SERVER_PID=
    perf report -i "$dir/perf$n.data" --no-children --sort symbol --percent-limit 0.3 \
        --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' >"$dir/flat$n.txt" || true
    printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$n" "$dir/fio$n.json" "$((t1 - t0))" "$load" \
        >>"$WORKDIR/results.tsv"
    log "$mode round $n done (load $load)"
}

: >"$WORKDIR/results.tsv"
read -r -a modes <<<"$MODES"
for m in "${modes[@]}"; do create "$m"; done
for ((n = 1; n <= ROUNDS; n++)); do
    k=${#modes[@]}
    for ((j = 0; j < k; j++)); do round "${modes[(j + n) % k]}" "$n"; done
done

python3 - "$WORKDIR" "$(getconf CLK_TCK)" "$TOP" <<'PY'
import json, sys, re
from collections import defaultdict
wd, hz, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [l.split("\t") for l in open(f"{wd}/results.tsv").read().splitlines()]
us, iops, share = defaultdict(list), defaultdict(list), defaultdict(lambda: defaultdict(float))
for mode, n, path, ticks, load in rows:
    w = json.load(open(path))["jobs"][0]["write"]
    iops[mode].append(w["iops"])
    us[mode].append(int(ticks) / hz * 1e6 / max(w["total_ios"], 1))
    for line in open(f"{wd}/{mode}/flat{n}.txt"):
        m = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(.+?)(\s{2,}|$)", line)
        if m:
            share[mode][m.group(2).strip()] += float(m.group(1)) / len([r for r in rows if r[0] == mode])
modes = list(dict.fromkeys(r[0] for r in rows))
mean = lambda v: sum(v) / len(v)
print("\n| mode | IOPS per round | CPU us/write per round | mean us/write |")
print("|---|---|---|---:|")
for m in modes:
    print(f"| {m} | {' / '.join(f'{x:.0f}' for x in iops[m])} | "
          f"{' / '.join(f'{x:.1f}' for x in us[m])} | {mean(us[m]):.1f} |")
syms = sorted({s for m in modes for s in share[m]},
              key=lambda s: -max(share[m].get(s, 0) * mean(us[m]) for m in modes))[:top]
print("\nSelf time per symbol: share of samples and us per write (share x mean us/write)\n")
print("| symbol | " + " | ".join(f"{m} % | {m} us" for m in modes) + " |")
print("|---|" + "---:|---:|" * len(modes))
for s in syms:
    cells = " | ".join(f"{share[m].get(s, 0):.1f} | {share[m].get(s, 0) / 100 * mean(us[m]):.2f}"
                       for m in modes)
    print(f"| `{s[:70]}` | {cells} |")
PY
