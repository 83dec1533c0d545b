#!/usr/bin/env bash
# rebuild-compare.sh — rebuild speed, client I/O during a rebuild, and the
# cost of the write-intent bitmap, each as a ratio against a baseline
# measured in the same run on the same files.
#
#  1. rebuild: a RAID-5 of 3 members (SIZE of data each) loses member 2; a
#     config spare is rebuilt at rebuild_max_mbps = 0 (unlimited). Its rate
#     (member bytes/s, from the daemon log) is compared with fio sequential
#     1M O_DIRECT reads of the two surviving member files at once (per
#     member). Goal >= 0.8.
#  2. client 4k random read IOPS (fio, NBD, iodepth 16) during a rebuild at
#     the default throttle (200 MB/s, backs off to 1/4 under client I/O)
#     against the healthy idle array. Goal >= 0.5.
#  3. 4k random write IOPS with the bitmap on against bitmap = false.
#     Goal: overhead <= 10 %.
#
# Environment: SIZE [1G] data per member, RUNTIME [10] seconds per fio job,
# WORKDIR [target/rebuild-compare], VRAID [target/release/vraid],
# OUT [$WORKDIR/results.md].
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/.."
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
WORKDIR=${WORKDIR:-target/rebuild-compare}
VRAID=${VRAID:-target/release/vraid}
OUT=${OUT:-$WORKDIR/results.md}

for tool in fio python3 "$VRAID"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

bytes() { numfmt --from=iec "$1"; }
DATA=$(bytes "$SIZE")
# Member file: data plus the metadata in front of it (docs/FORMAT.md).
MEMBER=$((DATA + DATA / 512 + (4 << 20)))
rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
W=$(cd "$WORKDIR" && pwd)
M=("$W/m0.img" "$W/m1.img" "$W/m2.img")
SPARE="$W/spare.img"
PORT=$((20000 + RANDOM % 20000))
URI="nbd://127.0.0.1:$PORT/bench"
PID=

start() { # config file, log file
    "$VRAID" serve --nbd "127.0.0.1:$PORT" --config "$1" >"$2" 2>&1 &
    PID=$!
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "vraid did not start:" >&2
    cat "$2" >&2
    exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
trap '[[ -n $PID ]] && kill -KILL $PID 2>/dev/null; true' EXIT

config() { # file, members..., then optional "--" extra lines
    local file=$1; shift
    local list=""
    for m in "$@"; do list+="\"$m\", "; done
    printf '[[volume]]\nname = "bench"\nlevel = 5\nchunk_size = "64K"\nmembers = [%s]\n' "${list%, }" >"$file"
}

fio_json() { # name, extra args... -> prints JSON path
    local name=$1; shift
    fio --name="$name" --output-format=json --output="$W/$name.json" "$@" >/dev/null
    echo "$W/$name.json"
}
iops() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(sum(x["read"]["iops"]+x["write"]["iops"] for x in j["jobs"]))' "$1"; }
bw_mbs() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(sum(x["read"]["bw_bytes"] for x in j["jobs"])/1e6)' "$1"; }
ratio() { python3 -c "print(f'{($1)/($2):.2f}')"; }
num() { python3 -c "print(f'{$1:.0f}')"; }
seqread() { # -> MB/s per member, both surviving member files read at once
    local j
    j=$(fio_json "seqread-members-$1" --rw=read --bs=1M --direct=1 --ioengine=libaio --iodepth=16 \
        --filename="${M[0]}:${M[1]}" --size=$((2 * MEMBER)))
    python3 -c "print($(bw_mbs "$j") / 2)"
}

echo "== create RAID-5, 3 x $SIZE data, fill it"
"$VRAID" create --level 5 --chunk-size 64K --member-size "$MEMBER" --name bench "${M[@]}" >/dev/null
config "$W/whole.toml" "${M[@]}"
start "$W/whole.toml" "$W/fill.log"
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size=$((2 * DATA)) >/dev/null

echo "== client 4k randread on the idle healthy array"
J=$(fio_json idle-randread --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=16 \
    --time_based --runtime="$RUNTIME" --ramp_time=2 --size=$((2 * DATA)))
IDLE_READ=$(iops "$J")

stop
# Bitmap on/off alternated twice (the disk may be shared: take each best).
config "$W/nobitmap.toml" "${M[@]}"
echo 'bitmap = false' >>"$W/nobitmap.toml"
randwrite() { # config, name -> IOPS
    start "$1" "$W/$2.log"
    local j
    j=$(fio_json "$2" --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=16 \
        --time_based --runtime="$RUNTIME" --ramp_time=2 --size=$((2 * DATA)))
    stop
    iops "$j"
}
echo "== 4k randwrite, bitmap on / off / on / off"
ON1=$(randwrite "$W/whole.toml" bitmap-on-1)
OFF1=$(randwrite "$W/nobitmap.toml" bitmap-off-1)
ON2=$(randwrite "$W/whole.toml" bitmap-on-2)
OFF2=$(randwrite "$W/nobitmap.toml" bitmap-off-2)
BITMAP_ON=$(python3 -c "print(max($ON1, $ON2))")
BITMAP_OFF=$(python3 -c "print(max($OFF1, $OFF2))")

echo "== baseline: fio sequential read of the two surviving member files at once"
# One job reading both files concurrently (round robin): per-member rate.
SEQ_BEFORE=$(seqread before)

echo "== rebuild of member 2 onto a spare, unlimited"
mv "${M[2]}" "$W/m2.lost"
truncate -s "$MEMBER" "$SPARE"
config "$W/spare.toml" "${M[@]}"
printf 'spares = ["%s"]\nrebuild_max_mbps = 0\n' "$SPARE" >>"$W/spare.toml"
start "$W/spare.toml" "$W/rebuild.log"
for _ in $(seq 1200); do grep -q 'rebuild of member 2 finished' "$W/rebuild.log" && break; sleep 0.5; done
REBUILD=$(grep -o 'finished: copied [0-9]* bytes of [0-9]* in [0-9.]* s ([0-9.]* MB/s)' "$W/rebuild.log" | grep -o '([0-9.]* MB/s)' | tr -d '(MB/s) ')
stop
echo "== baseline again after the rebuild (the disk is shared: take the faster)"
SEQ_AFTER=$(seqread after)
SEQ_MEMBER=$(python3 -c "print(max($SEQ_BEFORE, $SEQ_AFTER))")

echo "== client 4k randread during a rebuild at the default throttle"
# Leave the first spare (now member 2) out: a fresh spare is rebuilt.
SPARE2="$W/spare2.img"
truncate -s "$MEMBER" "$SPARE2"
config "$W/spare2.toml" "${M[@]}"
printf 'spares = ["%s"]\n' "$SPARE2" >>"$W/spare2.toml"
start "$W/spare2.toml" "$W/rebuild2.log"
J=$(fio_json rebuild-randread --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=16 \
    --time_based --runtime="$RUNTIME" --ramp_time=2 --size=$((2 * DATA)))
REBUILD_READ=$(iops "$J")
STILL=$(grep -c 'rebuild of member 2 finished' "$W/rebuild2.log" || true)
stop

{
    echo "### Rebuild benchmark ($SIZE data per member, RAID-5 of 3, $(date -u +%F))"
    echo
    echo "| measurement | vraid | baseline | ratio | goal |"
    echo "|---|---|---|---|---|"
    echo "| rebuild rate vs fio seq read of the 2 source member files at once, MB/s per member | $(num "$REBUILD") | $(num "$SEQ_MEMBER") | $(ratio "$REBUILD" "$SEQ_MEMBER") | >= 0.8 |"
    echo "| (same, all disk traffic: rebuild reads 2 + writes 1, fio reads 2), MB/s | $(num "3 * $REBUILD") | $(num "2 * $SEQ_MEMBER") | $(ratio "3 * $REBUILD" "2 * $SEQ_MEMBER") | |"
    echo "| 4k randread IOPS during rebuild (default throttle) vs idle healthy | $(num "$REBUILD_READ") | $(num "$IDLE_READ") | $(ratio "$REBUILD_READ" "$IDLE_READ") | >= 0.5 |"
    echo "| 4k randwrite IOPS bitmap on vs off | $(num "$BITMAP_ON") | $(num "$BITMAP_OFF") | $(ratio "$BITMAP_ON" "$BITMAP_OFF") | >= 0.9 |"
    echo
    echo "Rebuild still running at the end of the randread job: $([[ $STILL == 0 ]] && echo yes || echo no)."
} | tee "$OUT"
