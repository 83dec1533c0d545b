#!/usr/bin/env bash
# qd1-latency.sh — queue-depth-1 latency over NBD with the members on the
# disk (issue 10): vraid RAID-0 (and RAID-1/RAID-5) against qemu-nbd
# --cache=none --aio=io_uring on one file of the same disk, in one run.
#
# Runs benches/engine-path.sh with the pairs below, every server up at
# once, rounds alternated (the order reversed on every even round: ABBA):
#   r0-disk        this binary: a lone request runs on the caller's thread
#   r0-disk-ring   the same binary with VRAID_LONE_INLINE=0 (through the
#                  io_uring thread: two hand-offs per request)
#   r0-disk-old    $VRAID_OLD (e.g. main's binary)
#   qnbd-disk      qemu-nbd on one file
# and prints the medians, the ratios to qemu-nbd, vraid's 1k/4k write
# latency, and the ratios of this binary to the ring-only and old ones.
#
# Environment: ROUNDS [4], RUNTIME [5], SIZE [512M], VRAID
# [target/release/vraid], VRAID_OLD [target/base/vraid], WORKDIR
# [target/qd1-latency], PAIRS (default below); the rest as engine-path.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROUNDS=${ROUNDS:-4}
export WORKDIR=${WORKDIR:-target/qd1-latency}
export PAIRS=${PAIRS:-"r0-disk:qd1read4k r0-disk-ring:qd1read4k r0-disk-old:qd1read4k
qnbd-disk:qd1read4k r0-disk:qd1write4k r0-disk-ring:qd1write4k r0-disk-old:qd1write4k
qnbd-disk:qd1write4k r0-disk:qd1write1k r0-disk-ring:qd1write1k r0-disk-old:qd1write1k
qnbd-disk:qd1write1k"}
benches/engine-path.sh
echo
echo "ratios of the medians (same run; load now: $(cut -d' ' -f1-3 /proc/loadavg)):"
python3 - "$WORKDIR/runs.tsv" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    target, job, *fields = line.rstrip("\n").split("\t")
    runs[(target, job)].append({k: float(v) for k, v in (f.split("=") for f in fields)})
med = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
       for key, rows in runs.items()}
print("| ratio | job | mean latency | IOPS | server CPU us/IO |")
print("|---|---|---|---|---|")
def ratio(a, b, job):
    if (a, job) in med and (b, job) in med:
        x, y = med[(a, job)], med[(b, job)]
        print(f"| {a} / {b} | {job} | {x['lat_us'] / y['lat_us']:.2f} | "
              f"{x['iops'] / y['iops']:.2f} | {x['cpu_us/io'] / y['cpu_us/io']:.2f} |")
jobs = sorted({job for _, job in med})
targets = sorted({t for t, _ in med})
for job in jobs:
    for t in targets:
        if t.endswith(("-ring", "-old")) or t == "qnbd-disk":
            continue
        for peer in (f"{t}-ring", f"{t}-old"):
            ratio(t, peer, job)
PY
