//! The RAID-5 and RAID-6 write hole (docs/FORMAT.md §9): a crash in the
//! middle of partial-stripe writes, then a restart with a member gone (two
//! for RAID-6). With the journal every chunk nobody was writing reads back
//! intact; without it the same crash corrupts them (the evidence that the
//! scenario really tears stripes).
//!
//! The torn state is made certain, not lucky: a `delay` fault holds every
//! data/parity write to member 0 for 30 s, so stripes whose parity lives on
//! member 0 get their new data but keep their old parity (and stripes whose
//! written chunk lives there get new parity over old data) when the daemon
//! is SIGKILLed. The journal is written to the raw member, outside the
//! fault layer, so the records are durable before the writes start.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use raid_tests::*;

const CHUNK: u64 = 64 << 10;
/// Data bytes of one stripe (RAID-5 over 4 members, RAID-6 over 5: 3 data
/// chunks).
const SDS: u64 = 3 * CHUNK;
const STRIPES: u64 = 64;
const OLD: u8 = 0x5a;
const NEW: u8 = 0xc3;

/// The 4K block written into stripe `s` while the daemon is killed.
fn written(s: u64) -> u64 {
    s * SDS + (s % 3) * CHUNK + (s % 5) * 4096
}

fn serve_args<'a>(paths: &'a [PathBuf], control: &'a str, protect: bool) -> Vec<&'a str> {
    let mut args = vec!["--control", control];
    if !protect {
        args.push("--no-journal");
    }
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    args
}

/// Runs the crash scenario; returns how many verified ranges hold wrong
/// data after the restart with member 1 gone (RAID-6: members 1 and 2),
/// and the restart's log.
fn crash_then_lose_a_member(protect: bool) -> (usize, String) {
    crash_then_lose_members(5, protect, false)
}

/// Starts `vraid serve` on `paths` with the last member behind nbdkit
/// (its writes delayed 20 ms each, every request logged) and SIGKILLs it
/// mid-replay: after it logs that it replays the journal, once the slow
/// member has taken 3 more writes, and before it logs that the replay
/// ended (asserted: the kill provably lands inside the replay; FORMAT.md
/// §9 cases 30, 70).
fn kill_during_replay(paths: &[PathBuf], ctl: &str, dir: &std::path::Path) {
    let (log, nbd_log) = (dir.join("replay-kill.log"), dir.join("nbdkit.log"));
    let port = free_port();
    let mut nbdkit = Command::new("nbdkit")
        .args(["-f", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["--filter=log", "--filter=delay", "file"])
        .arg(paths.last().unwrap())
        .arg(format!("logfile={}", nbd_log.display()))
        .arg("wdelay=20ms")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn nbdkit");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nbdkit not up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut members: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    *members.last_mut().unwrap() = format!("nbd://127.0.0.1:{port}/");
    let mut args = serve_args(&[], ctl, true);
    args.extend(members.iter().map(String::as_str));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = vraid(&["serve", "--nbd", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn vraid serve");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let writes = || read(&nbd_log).matches("Write id=").count();
    let mut at_replay = None;
    loop {
        let text = read(&log);
        assert!(
            !text.contains("replayed "),
            "the replay ended before the kill:\n{text}"
        );
        match at_replay {
            None if text.contains("replaying the write-hole journal") => at_replay = Some(writes()),
            Some(w) if writes() >= w + 3 => break,
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "no replay:\n{text}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = nbdkit.kill();
    let _ = nbdkit.wait();
    let text = read(&log);
    assert!(!text.contains("replayed "), "replay ended:\n{text}");
}

fn crash_then_lose_members(level: u32, protect: bool, kill_replay: bool) -> (usize, String) {
    // Arrange: a known pattern over the first STRIPES stripes, flushed.
    let dir = scratch_dir(&format!("wh{level}-{protect}"));
    let (n, lost) = if level == 6 { (5, 2) } else { (4, 1) };
    let paths = member_paths(dir.path(), n);
    create_array(level, "64K", "48M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let ctl = control.to_str().unwrap().to_string();
    let server = Server::start(&serve_args(&paths, &ctl, protect));
    let uri = server.uri("vol0");
    qemu_io(
        &uri,
        &[
            format!("write -P {OLD} 0 {}", STRIPES * SDS),
            "flush".into(),
        ],
    );

    // Act: hold member 0's writes, start 64 concurrent partial-stripe
    // writes, and kill the daemon while they are torn.
    vraid_ctl_ok(
        &control,
        &[
            "fault", "add", "vol0", "0", "--kind", "delay", "--op", "write", "--delay", "30s",
        ],
    );
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for s in 0..STRIPES {
        c.arg("-c")
            .arg(format!("aio_write -P {NEW} {} 4k", written(s)));
    }
    let mut writer = c
        .arg("-c")
        .arg("aio_flush")
        .arg(&uri)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-io");
    std::thread::sleep(Duration::from_secs(3));
    server.kill();
    let _ = writer.kill();
    let _ = writer.wait();
    if kill_replay {
        kill_during_replay(&paths, &ctl, dir.path());
    }
    for p in &paths[1..=lost] {
        std::fs::remove_file(p).unwrap();
    }
    let left: Vec<PathBuf> = (0..n)
        .filter(|i| !(1..=lost).contains(i))
        .map(|i| paths[i].clone())
        .collect();
    let server = Server::start(&serve_args(&left, &ctl, protect));

    // Every byte of those stripes except the blocks being written.
    let mut reads = Vec::new();
    for s in 0..STRIPES {
        let (w, start, end) = (written(s), s * SDS, (s + 1) * SDS);
        reads.push(format!("read -P {OLD} {start} {}", w - start));
        if end > w + 4096 {
            reads.push(format!("read -P {OLD} {} {}", w + 4096, end - w - 4096));
        }
    }
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for r in &reads {
        c.arg("-c").arg(r);
    }
    let out = run(c.arg(server.uri("vol0")));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let bad = text.matches("Pattern verification failed").count();
    let log = server.log();
    server.stop();
    (bad, log)
}

#[test]
fn untouched_chunks_survive_a_crash_mid_write_and_a_lost_member() {
    let (bad, log) = crash_then_lose_a_member(true);
    let replayed = log
        .lines()
        .find_map(|l| l.split("replayed ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        replayed.is_some_and(|n| n > 0),
        "no partial-parity records replayed:\n{log}"
    );
    assert_eq!(bad, 0, "{bad} untouched ranges corrupted:\n{log}");
}

#[test]
fn without_the_journal_the_same_crash_corrupts_untouched_chunks() {
    let (bad, log) = crash_then_lose_a_member(false);
    eprintln!("without the journal: {bad} untouched ranges corrupted");
    assert!(
        log.contains("write-hole protection is off"),
        "protection not off:\n{log}"
    );
    assert!(bad > 0, "the scenario did not tear any stripe:\n{log}");
}

#[test]
fn raid6_untouched_chunks_survive_a_crash_mid_write_and_two_lost_members() {
    let (bad, log) = crash_then_lose_members(6, true, false);
    let replayed = log
        .lines()
        .find_map(|l| l.split("replayed ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        replayed.is_some_and(|n| n > 0),
        "no partial-parity records replayed:\n{log}"
    );
    assert_eq!(bad, 0, "{bad} untouched ranges corrupted:\n{log}");
}

#[test]
fn raid6_without_the_journal_the_same_crash_corrupts_untouched_chunks() {
    let (bad, log) = crash_then_lose_members(6, false, false);
    eprintln!("RAID-6 without the journal: {bad} untouched ranges corrupted");
    assert!(
        log.contains("write-hole protection is off"),
        "protection not off:\n{log}"
    );
    assert!(bad > 0, "the scenario did not tear any stripe:\n{log}");
}

#[test]
fn raid6_a_kill_during_the_replay_then_two_lost_members_keeps_untouched_chunks() {
    let (bad, log) = crash_then_lose_members(6, true, true);
    assert_eq!(bad, 0, "{bad} untouched ranges corrupted:\n{log}");
}
