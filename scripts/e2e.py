#!/usr/bin/env python3
"""Runs the end-to-end tests (raid-tests/tests/*.rs) a few binaries at a time.

`cargo test -p raid-tests --release` builds every test binary once, then
runs them one after the other: a binary whose last test is slow leaves the
other core idle, and most e2e tests wait on clients, timeouts and guests
more than they compute. This script builds the same binaries (the same
cargo command with --no-run), then runs JOBS binaries at once, each with
--test-threads=THREADS, the slowest known ones first so that the short ones
fill the gaps. Binaries in HEAVY (QEMU TCG guests, which use both cores)
never run two at a time and run one test at a time. Each binary's output
is printed whole when it ends, with its time; a failing binary does not
stop the others (as --no-fail-fast), and the exit status is 1 if any
failed. The closing table
lists the slowest binaries, to keep SLOW in step with the suite.

    scripts/e2e.py [--jobs N] [--threads N] [--log FILE] [NAME...]

NAME restricts the run to those test files (without `.rs`). VRAID_BIN is
passed on to the tests as it is.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Slowest first: measured one binary at a time with --test-threads=1 (on
# a loaded machine, 2026-12-07), the guest binaries by far the longest.
# Anything not listed runs after these, in name order.
SLOW = [
    "md_arrays",
    "vhost_guest",
    "member_power_cut_fio",
    "scale_memory",
    "redteam_block_status",
    "written_map",
    "member_power_cut",
    "remote_mirror",
    "rebuild",
    "remote_multiconn",
    "pools",
    "pools_split",
    "raid6",
    "redteam_resync",
    "remote_members",
    "crash_resync",
    "ops_persist",
    "inline_checksums",
    "redteam_members",
    "redteam_md",
    "volume_faults",
    "checksums",
]
# Each test boots a QEMU TCG guest with 2 vCPUs, which keep both cores
# busy: these binaries run one at a time and one test at a time, so a guest
# next to another binary's tests gets about the CPU share it had when two
# guests of one binary ran together (cargo test --test-threads=2), and the
# boot timeouts keep their margin.
HEAVY = {"md_arrays", "vhost_guest"}


def build():
    """Builds the raid-tests binaries; returns {name: executable}."""
    cmd = [
        "cargo", "test", "-p", "raid-tests", "--release", "--no-run",
        "--message-format=json-render-diagnostics",
    ]
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit("error: building the end-to-end tests failed (above)")
    bins = {}
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if msg["profile"]["test"]:
            bins[msg["target"]["name"]] = msg["executable"]
    return bins


def order(names):
    """SLOW first, in its order, then the rest by name."""
    first = [n for n in SLOW if n in names]
    return first + sorted(n for n in names if n not in SLOW)


def next_ready(queue, running):
    """Index in queue of the next binary allowed to start, or None."""
    heavy_running = any(n in HEAVY for n in running)
    for i, name in enumerate(queue):
        if not (heavy_running and name in HEAVY):
            return i
    return None


def start(name, exe, threads, logdir):
    log = open(logdir / f"{name}.log", "w+")
    proc = subprocess.Popen(
        [exe, f"--test-threads={threads}"],
        cwd=ROOT / "raid-tests",
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log, time.monotonic()


def report(name, exe, proc, log, began, logfile):
    """Prints a finished binary's output; returns (seconds, passed)."""
    secs = time.monotonic() - began
    log.seek(0)
    text = log.read()
    log.close()
    ok = proc.returncode == 0
    status = "ok" if ok else f"FAILED (exit {proc.returncode})"
    print(f"\n     Running {name} ({exe}): {status} in {secs:.0f}s", flush=True)
    print(text, end="", flush=True)
    if logfile:
        with open(logfile, "a") as f:
            f.write(text)
    return secs, ok


def run_all(bins, names, args):
    logdir = ROOT / "target" / "e2e-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    queue, running, times, failed = order(names), {}, {}, []
    try:
        while queue or running:
            while queue and len(running) < args.jobs:
                i = next_ready(queue, running)
                if i is None:
                    break
                name = queue.pop(i)
                threads = 1 if name in HEAVY else args.threads
                running[name] = start(name, bins[name], threads, logdir)
            # Until a child ends; WNOWAIT leaves reaping (its status) to poll.
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            for name in [n for n, r in running.items() if r[0].poll() is not None]:
                proc, log, began = running.pop(name)
                secs, ok = report(name, bins[name], proc, log, began, args.log)
                times[name] = secs
                if not ok:
                    failed.append(name)
    except BaseException:
        for proc, _, _ in running.values():
            proc.kill()
        raise
    return times, failed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=int(os.environ.get("E2E_JOBS", 2)))
    p.add_argument("--threads", type=int, default=int(os.environ.get("E2E_THREADS", 2)))
    p.add_argument("--log", help="append every binary's output to this file")
    p.add_argument("names", nargs="*")
    args = p.parse_args()
    bins = build()
    names = args.names or list(bins)
    unknown = [n for n in names if n not in bins]
    if unknown:
        sys.exit(f"error: no end-to-end test binary named {', '.join(unknown)}")
    began = time.monotonic()
    times, failed = run_all(bins, names, args)
    print(f"\nend-to-end: {len(times)} binaries in {time.monotonic() - began:.0f}s "
          f"({args.jobs} at a time, {args.threads} threads each); slowest:")
    for name, secs in sorted(times.items(), key=lambda t: -t[1])[:15]:
        print(f"  {secs:6.0f}s  {name}")
    if failed:
        print(f"error: end-to-end test binaries failed: {' '.join(sorted(failed))}")
        sys.exit(1)


if __name__ == "__main__":
    main()
