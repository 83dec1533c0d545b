#!/usr/bin/env bash
# raid5-write.sh — RAID-5 4k random write (and the RAID-0/RAID-5 4k random
# read pair) against RAID-0 and against an older vraid binary, in one run
# (issue 10's RAID-5 goals).
#
# Runs benches/engine-path.sh with the pairs below, served at once by the
# new binary ($VRAID) and the old one ($VRAID_OLD, targets ending "-old"),
# rounds alternated (the order reversed on every even round: ABBA), and
# then prints, from the medians over the rounds:
#   r5/r0   RAID-5 4k random write IOPS over RAID-0's on the same storage
#           (goal >= 0.5 on the disk), and their CPU per I/O;
#   new/old the same target served by each binary;
#   r0/r5 read CPU per I/O (goal <= 1.0).
# The write-hole journal is on (vraid's default) in every RAID-5 target.
#
# Environment: ROUNDS [4], RUNTIME [5], SIZE [512M], VRAID
# [target/release/vraid], VRAID_OLD [target/base/vraid] (e.g. main's
# binary), WORKDIR [target/raid5-write], PAIRS (default below); the rest
# as engine-path.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROUNDS=${ROUNDS:-4}
export WORKDIR=${WORKDIR:-target/raid5-write}
export PAIRS=${PAIRS:-"r5-shm:randwrite4k r5-shm-old:randwrite4k r0-shm:randwrite4k
r0-shm-old:randwrite4k r5-disk:randwrite4k r5-disk-old:randwrite4k r0-disk:randwrite4k
r0-disk-old:randwrite4k r0-shm:randread4k r0-shm-old:randread4k r5-shm:randread4k
r5-shm-old:randread4k"}
benches/engine-path.sh
echo
echo "ratios of the medians (same run; load: $(cut -d' ' -f1-3 /proc/loadavg)):"
python3 - "$WORKDIR/runs.tsv" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    target, job, *fields = line.rstrip("\n").split("\t")
    runs[(target, job)].append({k: float(v) for k, v in (f.split("=") for f in fields)})
med = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
       for key, rows in runs.items()}
print("| ratio | job | IOPS | server CPU us/IO |")
print("|---|---|---|---|")
def ratio(name, a, b, job):
    if (a, job) in med and (b, job) in med:
        x, y = med[(a, job)], med[(b, job)]
        print(f"| {name} | {job} | {x['iops'] / y['iops']:.2f} | "
              f"{x['cpu_us/io'] / y['cpu_us/io']:.2f} |")
for old in ("", "-old"):
    for store in ("shm", "disk"):
        ratio(f"r5-{store}{old} / r0-{store}{old}", f"r5-{store}{old}", f"r0-{store}{old}",
              "randwrite4k")
    ratio(f"r0-shm{old} / r5-shm{old}", f"r0-shm{old}", f"r5-shm{old}", "randread4k")
for t in ("r5-shm", "r5-disk", "r0-shm", "r0-disk"):
    for job in ("randwrite4k", "randread4k"):
        ratio(f"{t} new / old", t, f"{t}-old", job)
PY
