//! `vraid log ...`: the verbs that talk to the daemon (`start`, `mark`,
//! `stop`) and the offline ones on a log file (`list`, `replay`,
//! `crashpoints`, `check`, in `crate::wlog`).

use std::path::PathBuf;

use serde::Serialize;

use super::client::{call, default_client_path};
use super::log_methods::{LogMarkParams, LogMarkReply, LogReply, LogStartParams, LogStopParams};
use crate::cli::{
    ControlArg, CrashArgs, LogCheckArgs, LogCommand, LogCrashArgs, LogReplayArgs, ReplayPoint,
};
use crate::daemon::DaemonError;
use crate::wlog::crash::{crash_points, CrashOptions, CrashPoint};
use crate::wlog::replay::{OpenLog, Target};
use crate::wlog::LogError;

/// `vraid log ...`.
pub fn log(cmd: LogCommand) -> Result<(), DaemonError> {
    match cmd {
        LogCommand::Start(a) => {
            let path = std::path::absolute(&a.file).map_err(|e| LogError::file(&a.file, e))?;
            let p = LogStartParams {
                volume: a.volume,
                path,
            };
            let r: LogReply = call(&socket(&a.control), "log.start", &p)?;
            println!("{}: logging to {}", r.volume, r.log.path.display());
        }
        LogCommand::Mark(a) => {
            let p = LogMarkParams {
                volume: a.volume,
                name: a.name.clone(),
            };
            let r: LogMarkReply = call(&socket(&a.control), "log.mark", &p)?;
            println!("{}: mark {:?} is entry {}", r.volume, a.name, r.entry);
        }
        LogCommand::Stop(a) => stop(&a.control, a.volume, a.json)?,
        LogCommand::List(a) => list(&OpenLog::open(&a.log.file, a.log.allow_torn)?, a.json),
        LogCommand::Replay(a) => replay(a)?,
        LogCommand::Crashpoints(a) => crashpoints(a)?,
        LogCommand::Check(a) => check(a)?,
    }
    Ok(())
}

fn socket(arg: &ControlArg) -> PathBuf {
    arg.control.clone().unwrap_or_else(default_client_path)
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn stop(control: &ControlArg, volume: String, json: bool) -> Result<(), DaemonError> {
    let r: LogReply = call(&socket(control), "log.stop", &LogStopParams { volume })?;
    if json {
        print_json(&r);
    } else {
        println!(
            "{}: log {} stopped: {} entries, {} bytes",
            r.volume,
            r.log.path.display(),
            r.log.entries,
            r.log.bytes
        );
    }
    match r.log.failed {
        Some(why) => Err(DaemonError::Usage(format!("the log is incomplete: {why}"))),
        None => Ok(()),
    }
}

/// `vraid log list --json`.
#[derive(Debug, Serialize)]
struct ListJson {
    volume: String,
    volume_size: u64,
    entries: u64,
    complete: bool,
    flushes: Vec<u64>,
    marks: Vec<(String, u64)>,
}

fn list(log: &OpenLog, json: bool) {
    let ix = &log.index;
    let marks: Vec<(String, u64)> = (ix.entries.iter().enumerate())
        .filter_map(|(i, e)| e.name.clone().map(|n| (n, i as u64)))
        .collect();
    if json {
        return print_json(&ListJson {
            volume: ix.header.volume.clone(),
            volume_size: ix.header.volume_size,
            entries: ix.entries.len() as u64,
            complete: ix.tail == crate::wlog::scan::Tail::Ended,
            flushes: ix.flushes(),
            marks,
        });
    }
    println!(
        "log of {} ({} bytes): {} entries, {} flushes, {} marks",
        ix.header.volume,
        ix.header.volume_size,
        ix.entries.len(),
        ix.flushes().len(),
        marks.len()
    );
    for (i, e) in ix.entries.iter().enumerate() {
        let h = &e.head;
        let fua = if h.flags & crate::wlog::format::FLAG_FUA != 0 {
            " fua"
        } else {
            ""
        };
        let name = e.name.as_deref().unwrap_or("");
        println!(
            "{i:>8} {:<5} {:>14} {:>10}{fua} {name}",
            h.kind.name(),
            h.offset,
            h.len
        );
    }
}

fn options(log: &OpenLog, a: &CrashArgs) -> Result<CrashOptions, LogError> {
    let after = match &a.after_mark {
        Some(name) => log.mark_cut(name)? - 1,
        None => a.after,
    };
    let before = match &a.before_mark {
        Some(name) => log.mark_cut(name)?,
        None => a.before.unwrap_or(u64::MAX),
    };
    Ok(CrashOptions {
        subsets: a.subsets,
        seed: a.seed,
        max: a.max,
        after,
        before,
    })
}

fn replay(a: LogReplayArgs) -> Result<(), LogError> {
    let log = OpenLog::open(&a.log.file, a.log.allow_torn)?;
    let n = log.index.entries.len() as u64;
    let point = match (a.to, a.to_flush, &a.to_mark, a.crashpoint) {
        (Some(ReplayPoint::Entries(to)), ..) => plain(log.entries_cut(to)?),
        (Some(ReplayPoint::Flush(k)), ..) => plain(log.flush_cut(k)?),
        (Some(ReplayPoint::Mark(name)), ..) => plain(log.mark_cut(&name)?),
        (_, Some(k), ..) => plain(log.flush_cut(k)?),
        (_, _, Some(name), _) => plain(log.mark_cut(name)?),
        (.., Some(id)) => crash_points(&log.index, options(&log, &a.crash)?)
            .into_iter()
            .find(|p| p.id == id)
            .ok_or_else(|| LogError::NoSuchPoint(format!("no crash point {id}")))?,
        _ => plain(n),
    };
    let target = Target::open(&a.target, log.index.header.volume_size)?;
    log.apply_point(&target, &point)?;
    target.sync()?;
    println!(
        "replayed entries 0..{} of {n} ({} dropped) onto {}",
        point.cut,
        point.dropped.len(),
        a.target.display()
    );
    Ok(())
}

fn plain(cut: u64) -> CrashPoint {
    CrashPoint {
        id: 0,
        label: format!("entries:{cut}"),
        cut,
        durable: cut,
        dropped: Vec::new(),
    }
}

fn crashpoints(a: LogCrashArgs) -> Result<(), LogError> {
    let log = OpenLog::open(&a.log.file, a.log.allow_torn)?;
    let points = crash_points(&log.index, options(&log, &a.crash)?);
    if a.json {
        print_json(&points);
        return Ok(());
    }
    for p in &points {
        println!(
            "{:>6} {:<14} entries 0..{} durable 0..{} dropped {:?}",
            p.id, p.label, p.cut, p.durable, p.dropped
        );
    }
    Ok(())
}

fn check(a: LogCheckArgs) -> Result<(), LogError> {
    let log = OpenLog::open(&a.log.file, a.log.allow_torn)?;
    let points = crash_points(&log.index, options(&log, &a.crash)?);
    let base = a.base.as_deref();
    let results = crate::wlog::check::check(&log, &points, &a.image, base, &a.command)?;
    let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
    for r in &results {
        match &r.failure {
            None => println!("ok     {} (entries 0..{})", r.point.label, r.point.cut),
            Some(why) => println!(
                "FAILED {} (entries 0..{}): {why}",
                r.point.label, r.point.cut
            ),
        }
    }
    println!(
        "{} crash points checked, {} failed",
        results.len(),
        failed.len()
    );
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(LogError::CheckFailed {
            failed: failed.len(),
            points: results.len(),
            first: first.point.label.clone(),
        }),
    }
}
