//! vraid's own consistency under member power cuts of a fio-verify
//! workload with flushes (issue 14, docs/FAULTS.md "Power cuts under
//! vraid itself"). Every member behaves like a disk with a volatile
//! write cache over *all* its writes — superblocks, bitmap, journal and
//! data alike. Each cycle: fio jobs that complete (randwrite with crc32c
//! verify headers, a FLUSH every 8 writes and at the end) fill slots of
//! the volume; another fio job is running when the power goes, at a
//! random moment (after a random number of volume writes, or a random
//! point of a rebuild); a seeded random subset of every member's
//! unflushed blocks is lost, the daemon is SIGKILLed and started again.
//! Then `fio --verify_only` checks every slot whose last job completed
//! (flushed), and a scrub finds the redundancy consistent. The test
//! prints every docs/FORMAT.md crash case the recoveries took (the
//! daemon logs `recovery: FORMAT.md crash case N`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

/// One fio job's region.
const SLOT: u64 = 4 << 20;
/// Slots of the volume used.
const SLOTS: u64 = 8;

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Rig {
    dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    control: PathBuf,
    /// Seed of the job whose write of each slot completed (flushed);
    /// absent: never written whole, or its last job was cut.
    flushed: BTreeMap<u64, u64>,
    /// Crash cases the recoveries took, with how often.
    cases: BTreeMap<u32, u32>,
    rng: Xorshift,
    /// Members created so far (for fresh names).
    made: usize,
}

impl Rig {
    fn new(test: &str, seed: u64) -> Rig {
        let dir = scratch_dir(test);
        let paths = member_paths(dir.path(), 3);
        create_array(5, "64K", "24M", "vol0", &paths);
        let control = dir.path().join("ctl.sock");
        Rig {
            dir,
            paths,
            control,
            flushed: BTreeMap::new(),
            cases: BTreeMap::new(),
            rng: Xorshift(seed),
            made: 3,
        }
    }

    fn start(&self) -> Server {
        let mut args: Vec<&str> = self.paths.iter().map(|p| p.to_str().unwrap()).collect();
        args.extend(["--control", self.control.to_str().unwrap()]);
        Server::start(&args)
    }

    fn ctl(&self, args: &[&str]) -> String {
        vraid_ctl_ok(&self.control, args)
    }

    /// Every member behaves like a disk with a volatile cache from now on.
    fn make_members_volatile(&self) {
        for role in 0..self.paths.len() {
            let r = role.to_string();
            self.ctl(&["fault", "add", "vol0", &r, "--kind", "volatile"]);
        }
    }

    /// Collects the crash cases a freshly started server's recovery named.
    fn collect_cases(&mut self, server: &Server, cycle: u64) {
        let log = server.log();
        let mut here = BTreeSet::new();
        for line in log.lines() {
            let Some(at) = line.find("FORMAT.md crash case ") else {
                continue;
            };
            let rest = &line[at + "FORMAT.md crash case ".len()..];
            let n: u32 = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("unparsable crash case line: {line}"));
            here.insert(n);
        }
        for &n in &here {
            *self.cases.entry(n).or_default() += 1;
        }
        eprintln!("cycle {cycle}: recovery took FORMAT.md crash cases {here:?}");
    }
}

/// A fio job on `slot` (randwrite 4k-64k, crc32c headers, a FLUSH every
/// 8 writes and at the end), or its verification (`verify_only`).
fn fio_slot(uri: &str, slot: u64, seed: u64, mode: FioMode) -> Command {
    let mut c = Command::new("fio");
    c.args([
        &format!("--name=slot{slot}"),
        "--ioengine=nbd",
        "--rw=randwrite",
        "--bsrange=4k-64k",
        "--iodepth=4",
        &format!("--offset={}", slot * SLOT),
        &format!("--size={SLOT}"),
        &format!("--randseed={seed}"),
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--fsync=8",
        "--end_fsync=1",
        "--output-format=json",
    ])
    .arg(format!("--uri={uri}"));
    match mode {
        FioMode::Write => c.arg("--do_verify=0"),
        FioMode::Verify => c.args(["--verify_only=1", "--do_verify=1"]),
        FioMode::Endless => c.args(["--do_verify=0", "--loops=100000"]),
    };
    c
}

#[derive(Clone, Copy)]
enum FioMode {
    Write,
    Verify,
    Endless,
}

fn run_fio(mut c: Command, what: &str) {
    let out = run(&mut c);
    assert!(
        out.status.success(),
        "fio {what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The flushed-data check: every slot whose last job completed verifies.
fn verify_flushed(rig: &Rig, uri: &str, cycle: u64) {
    for (&slot, &seed) in &rig.flushed {
        let what = format!("verify of flushed slot {slot} (seed {seed}) after cut {cycle}");
        run_fio(fio_slot(uri, slot, seed, FioMode::Verify), &what);
    }
    eprintln!(
        "cycle {cycle}: {} flushed slots verified",
        rig.flushed.len()
    );
}

fn scrub_clean(control: &Path, cycle: u64) {
    let out = vraid_ctl_ok(control, &["scrub", "vol0", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    for m in v["scrub"]["members"].as_array().unwrap() {
        for key in ["checksum", "io", "mismatch"] {
            assert_eq!(m[key], 0, "cycle {cycle}: scrub found {key}: {v}");
        }
    }
}

/// Polls `f` on the volume status until it is true (120 s at most).
fn wait_status(control: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = volume_status(control, "vol0");
        if f(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what} did not happen: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No pass running and every member active.
fn settled(st: &Value) -> bool {
    st["sync"].is_null() && member_states_of(st).iter().all(|s| s == "active")
}

fn member_states_of(st: &Value) -> Vec<String> {
    st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Writes `jobs` slots to completion (flushed).
fn write_jobs(rig: &mut Rig, uri: &str, jobs: usize) {
    for _ in 0..jobs {
        let slot = rig.rng.next() % SLOTS;
        let seed = rig.rng.next() % 1_000_000 + 1;
        rig.flushed.remove(&slot);
        run_fio(fio_slot(uri, slot, seed, FioMode::Write), "write");
        rig.flushed.insert(slot, seed);
    }
}

/// Starts an endless job on a slot (whose contents are unknown from now on).
fn start_endless(rig: &mut Rig, uri: &str) -> Child {
    let slot = rig.rng.next() % SLOTS;
    rig.flushed.remove(&slot);
    let seed = rig.rng.next() % 1_000_000 + 1;
    fio_slot(uri, slot, seed, FioMode::Endless)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fio")
}

/// The power cut (seeded random subset of every member's unflushed
/// blocks lost), then SIGKILL of the daemon and of the running fio.
fn cut(rig: &Rig, server: Server, mut fio: Child, cycle: u64) -> u64 {
    let seed = (7000 + cycle).to_string();
    // Bounded: a cut that waits for itself must fail the test, not hang it.
    let mut c = Command::new("timeout");
    c.arg("120").arg(vraid_bin()).args([
        "fault",
        "powercut",
        "vol0",
        "--keep",
        "random-subset",
        "--seed",
        &seed,
        "--json",
        "--control",
    ]);
    let out = run_ok(c.arg(&rig.control));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let members = v["members"].as_array().expect("member cuts in the reply");
    assert_eq!(members.len(), rig.paths.len(), "{v}");
    let restored: u64 = members
        .iter()
        .map(|c| c["restored_blocks"].as_u64().unwrap())
        .sum();
    eprintln!("cycle {cycle} (seed {seed}): {restored} member blocks restored");
    server.kill();
    let _ = fio.kill();
    let _ = fio.wait();
    restored
}

/// Waits until `n` more writes reached the volume (or fio ended).
fn wait_writes(control: &Path, fio: &mut Child, n: u64) {
    let writes = |st: &Value| st["io"]["writes"].as_u64().unwrap();
    let base = writes(&volume_status(control, "vol0"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while writes(&volume_status(control, "vol0")) < base + n {
        assert!(Instant::now() < deadline, "fio made no progress");
        if fio.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// After a restart: the crash cases, the flushed data, a clean scrub.
fn check_after_cut(rig: &mut Rig, server: &Server, cycle: u64) {
    rig.collect_cases(server, cycle);
    let st = wait_status(&rig.control, "the recovery", settled);
    assert_eq!(member_states_of(&st), vec!["active"; 3], "cycle {cycle}");
    verify_flushed(rig, &server.uri("vol0"), cycle);
    scrub_clean(&rig.control, cycle);
}

/// The final check: a clean stop, and parity consistent in the files;
/// the crash cases reached.
fn final_check(mut rig: Rig, cycles: u64, restored: u64) -> BTreeMap<u32, u32> {
    let server = rig.start();
    check_after_cut(&mut rig, &server, cycles);
    assert_eq!(server.stop(), 0);
    assert_eq!(
        bad_parity_stripes(&rig.paths, 64 << 10),
        Vec::<usize>::new()
    );
    assert!(restored > 0, "no member block was ever restored");
    eprintln!(
        "{cycles} member power cuts, {restored} member blocks restored; \
         FORMAT.md crash cases reached (case: times): {:?}",
        rig.cases
    );
    // Every cut left the array dirty with bits set: the bitmap resync.
    assert!(rig.cases.contains_key(&12), "{:?}", rig.cases);
    rig.cases
}

#[test]
fn raid5_fio_verify_survives_20_member_power_cuts_at_random_moments() {
    const CUTS: u64 = 20;
    let mut rig = Rig::new("cut-fio-r5", 0x05EE_DF10);
    let mut restored = 0;
    for cycle in 0..CUTS {
        let server = rig.start();
        if cycle > 0 {
            check_after_cut(&mut rig, &server, cycle);
        }
        rig.make_members_volatile();
        let uri = server.uri("vol0");
        let jobs = 1 + (rig.rng.next() % 2) as usize;
        write_jobs(&mut rig, &uri, jobs);
        let mut fio = start_endless(&mut rig, &uri);
        let n = 5 + rig.rng.next() % 300;
        wait_writes(&rig.control, &mut fio, n);
        restored += cut(&rig, server, fio, cycle);
    }
    final_check(rig, CUTS, restored);
}

/// Fails role `role` and adds a fresh member: a rebuild (throttled) starts.
fn start_rebuild(rig: &mut Rig, role: usize) {
    rig.made += 1;
    let new = rig.dir.path().join(format!("m{}.img", rig.made));
    std::fs::File::create(&new)
        .and_then(|f| f.set_len(24 << 20))
        .unwrap();
    rig.ctl(&["set", "vol0", "--rebuild-max-mbps", "4"]);
    fail_remove_add(&rig.control, &role.to_string(), &new);
    let old = std::mem::replace(&mut rig.paths[role], new);
    std::fs::remove_file(old).unwrap();
}

/// Waits until the rebuild has copied a random share of the member.
fn wait_rebuild_share(rig: &mut Rig, fio: &mut Child) {
    let share = 5 + rig.rng.next() % 85;
    let what = format!("the rebuild passing {share}%");
    wait_status(&rig.control, &what, |st| {
        let (done, total) = (&st["sync"]["done_bytes"], &st["sync"]["total_bytes"]);
        match (done.as_u64(), total.as_u64()) {
            (Some(d), Some(t)) if t > 0 => d * 100 / t >= share,
            _ => false,
        }
    });
    assert!(fio.try_wait().unwrap().is_none(), "fio ended early");
}

#[test]
fn raid5_member_power_cuts_during_rebuilds_lose_no_flushed_write() {
    const CUTS: u64 = 10;
    let mut rig = Rig::new("cut-fio-rebuild", 0x5EED_B17D);
    let mut restored = 0;
    for cycle in 0..CUTS {
        let server = rig.start();
        if cycle > 0 {
            rig.ctl(&["set", "vol0", "--rebuild-max-mbps", "0"]);
            check_after_cut(&mut rig, &server, cycle);
        }
        let uri = server.uri("vol0");
        // Some flushed data first, so that the rebuild copies it.
        write_jobs(&mut rig, &uri, 1);
        start_rebuild(&mut rig, (cycle % 3) as usize);
        rig.make_members_volatile();
        let mut fio = start_endless(&mut rig, &uri);
        wait_rebuild_share(&mut rig, &mut fio);
        restored += cut(&rig, server, fio, cycle);
    }
    let cases = final_check(rig, CUTS, restored);
    assert!(cases.contains_key(&16), "no rebuild resumed: {cases:?}");
}
