#!/usr/bin/env bash
# scrub-compare.sh — scrub throughput against fio sequential reads of the
# same member files, measured in the same run.
#
#  A RAID-5 of 3 members (SIZE of data each) is filled over NBD and served
#  with rebuild_max_mbps = 0 (unlimited); `vraid scrub` (check) reads every
#  member. Its rate (member bytes/s per member, from the scrub result) is
#  compared with one fio job reading all three member files at once,
#  sequentially, 1M O_DIRECT at iodepth 16 (per member), taken before and
#  after the scrub (the faster). Goal >= 0.8.
#
# Environment: SIZE [1G] data per member, WORKDIR [target/scrub-compare],
# VRAID [target/release/vraid], OUT [$WORKDIR/results.md].
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/.."
SIZE=${SIZE:-1G}
WORKDIR=${WORKDIR:-target/scrub-compare}
VRAID=${VRAID:-target/release/vraid}
OUT=${OUT:-$WORKDIR/results.md}

for tool in fio python3 "$VRAID"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

DATA=$(numfmt --from=iec "$SIZE")
# Member file: data plus the metadata in front of it (docs/FORMAT.md).
MEMBER=$((DATA + DATA / 512 + (4 << 20)))
rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
W=$(cd "$WORKDIR" && pwd)
M=("$W/m0.img" "$W/m1.img" "$W/m2.img")
PORT=$((20000 + RANDOM % 20000))
URI="nbd://127.0.0.1:$PORT/bench"
CTL="$W/ctl.sock"
PID=

start() { # log file
    "$VRAID" serve --nbd "127.0.0.1:$PORT" --control "$CTL" --config "$W/bench.toml" >"$1" 2>&1 &
    PID=$!
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "vraid did not start:" >&2
    cat "$1" >&2
    exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
trap '[[ -n $PID ]] && kill -KILL $PID 2>/dev/null; true' EXIT

seqread() { # -> MB/s per member, the three member files read at once
    fio --name="seqread-$1" --output-format=json --output="$W/seqread-$1.json" \
        --rw=read --bs=1M --direct=1 --ioengine=libaio --iodepth=16 \
        --filename="${M[0]}:${M[1]}:${M[2]}" --size=$((3 * MEMBER)) >/dev/null
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(sum(x["read"]["bw_bytes"] for x in j["jobs"])/1e6/3)' "$W/seqread-$1.json"
}
num() { python3 -c "print(f'{$1:.0f}')"; }

echo "== create RAID-5, 3 x $SIZE data, fill it"
"$VRAID" create --level 5 --chunk-size 64K --member-size "$MEMBER" --name bench "${M[@]}" >/dev/null
printf '[[volume]]\nname = "bench"\nlevel = 5\nmembers = ["%s", "%s", "%s"]\nrebuild_max_mbps = 0\n' "${M[@]}" >"$W/bench.toml"
start "$W/fill.log"
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size=$((2 * DATA)) >/dev/null
stop

echo "== baseline: fio sequential read of the three member files at once"
SEQ_BEFORE=$(seqread before)

echo "== vraid scrub (check), unthrottled"
start "$W/scrub.log"
"$VRAID" scrub bench --control "$CTL" --json >"$W/scrub.json"
stop
read -r SCRUB SECS FOUND < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["scrub"]
print(s["bytes_checked"] / 3 / s["secs"] / 1e6, s["secs"], s["found"])' "$W/scrub.json")

echo "== baseline again (the disk may be shared: take the faster)"
SEQ_AFTER=$(seqread after)
SEQ=$(python3 -c "print(max($SEQ_BEFORE, $SEQ_AFTER))")

{
    echo "### Scrub benchmark ($SIZE data per member, RAID-5 of 3, $(date -u +%F))"
    echo
    echo "| measurement | vraid scrub | fio seq read | ratio | goal |"
    echo "|---|---|---|---|---|"
    echo "| MB/s per member (3 members read at once) | $(num "$SCRUB") | $(num "$SEQ") | $(python3 -c "print(f'{$SCRUB / $SEQ:.2f}')") | >= 0.8 |"
    echo
    echo "Scrub took $(python3 -c "print(f'{$SECS:.2f}')") s and found $FOUND bad blocks; fio before/after: $(num "$SEQ_BEFORE") / $(num "$SEQ_AFTER") MB/s per member."
} | tee "$OUT"
