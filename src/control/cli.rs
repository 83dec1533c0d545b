//! The CLI verbs that talk to a running daemon: `status`, `fail`, `remove`,
//! `fault add|list|clear`. Each sends one request and prints the reply;
//! `status --watch` on a terminal hands over to `watch.rs` (progress bars).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{call, default_client_path, ClientError};
use crate::cli::{
    AddArgs, ControlArg, FaultAddArgs, FaultClearArgs, FaultCommand, FaultKindArg, FaultListArgs,
    FaultOpArg, MemberCmdArgs, ReplaceArgs, ScrubArgs, SetArgs, StatusArgs,
};

fn socket(arg: &ControlArg) -> PathBuf {
    arg.control.clone().unwrap_or_else(default_client_path)
}

/// `vraid status`.
pub fn status(args: StatusArgs) -> Result<(), ClientError> {
    let path = socket(&args.control);
    let params = json!({ "volume": args.volume });
    loop {
        let reply = call(&path, "status", params.clone())?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&reply).unwrap_or_default()
            );
            return Ok(());
        }
        if args.watch && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return super::watch::watch(&path, &params);
        }
        let text = render_status(&reply);
        if !args.watch {
            print!("{text}");
            return Ok(());
        }
        // Clear screen, home cursor, redraw; stop quietly once the reader
        // is gone (`vraid status --watch | head`).
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let shown = write!(
            out,
            "\x1b[2J\x1b[H{text}\n(refreshing every second; Ctrl-C to stop)\n"
        )
        .and_then(|()| out.flush());
        if shown.is_err() {
            return Ok(());
        }
        drop(out);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `n` bytes in binary units ("1.5 MiB").
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

/// The text form of a `status` reply.
pub fn render_status(reply: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    for v in reply["volumes"].as_array().unwrap_or(&empty) {
        let io = &v["io"];
        let _ = writeln!(
            out,
            "{}: raid{}, {}, {} ({} bytes), chunk {}, superblock events {}",
            v["name"].as_str().unwrap_or("?"),
            v["level"],
            v["state"].as_str().unwrap_or("?").to_uppercase(),
            human_bytes(v["size"].as_u64().unwrap_or(0)),
            v["size"],
            crate::units::format_size(v["chunk_size"].as_u64().unwrap_or(0)),
            v["superblock_events"],
        );
        let _ = writeln!(
            out,
            "  client io: {} reads ({}), {} writes ({}), {} flushes, {} errors",
            io["reads"],
            human_bytes(io["read_bytes"].as_u64().unwrap_or(0)),
            io["writes"],
            human_bytes(io["write_bytes"].as_u64().unwrap_or(0)),
            io["flushes"],
            io["errors"],
        );
        let _ = writeln!(
            out,
            "  {:<5} {:<8} {:>9} {:>9} {:>7} {:>6} {:>6}  path",
            "role", "state", "reads", "writes", "errors", "csum", "faults"
        );
        for m in v["members"].as_array().unwrap_or(&empty) {
            let _ = writeln!(
                out,
                "  {:<5} {:<8} {:>9} {:>9} {:>7} {:>6} {:>6}  {}",
                m["role"].to_string(),
                m["state"].as_str().unwrap_or("?"),
                m["io"]["reads"].to_string(),
                m["io"]["writes"].to_string(),
                m["io"]["errors"].to_string(),
                m["checksum_errors"].as_u64().unwrap_or(0).to_string(),
                m["faults"].to_string(),
                m["path"].as_str().unwrap_or("-"),
            );
        }
        render_sync(&mut out, v);
    }
    let events = reply["events"].as_array().unwrap_or(&empty);
    if !events.is_empty() {
        let _ = writeln!(out, "events:");
        for e in events.iter().rev().take(10).rev() {
            let _ = writeln!(
                out,
                "  {}  {}",
                clock(e["time_ms"].as_u64().unwrap_or(0)),
                e["message"].as_str().unwrap_or("")
            );
        }
    }
    out
}

/// The resync/rebuild line with a progress bar, and the spares.
fn render_sync(out: &mut String, v: &Value) {
    let sync = &v["sync"];
    if let (Some(done), Some(total)) = (sync["done_bytes"].as_u64(), sync["total_bytes"].as_u64()) {
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        let what = match sync["member"].as_u64() {
            Some(m) => format!("{} of member {m}", sync["kind"].as_str().unwrap_or("sync")),
            None => sync["kind"].as_str().unwrap_or("sync").to_string(),
        };
        let rate = sync["bytes_per_sec"].as_f64().unwrap_or(0.0) as u64;
        let eta = sync["eta_secs"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |s| format!("{}s", s.round() as u64));
        let _ = writeln!(
            out,
            "  {what}: [{}{}] {:5.1}% {} of {}, {}/s, ETA {eta}, limit {} MB/s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            frac * 100.0,
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate),
            v["rebuild_max_mbps"]
        );
    }
    if v["last_scrub"].is_object() {
        let name = v["name"].as_str().unwrap_or("?");
        let prefix = format!("{name}: ");
        for (i, line) in render_scrub(name, &v["last_scrub"]).lines().enumerate() {
            let line = if i == 0 {
                format!("last {}", line.strip_prefix(&prefix).unwrap_or(line))
            } else {
                line.to_string()
            };
            let _ = writeln!(out, "  {line}");
        }
    }
    if let Some(spares) = v["spares"].as_array().filter(|s| !s.is_empty()) {
        let names: Vec<&str> = spares.iter().filter_map(Value::as_str).collect();
        let _ = writeln!(out, "  spares: {}", names.join(", "));
    }
    let j = &v["journal"];
    if let (Some(b), Some(e), Some(c)) = (
        j["batches"].as_u64(),
        j["entries"].as_u64(),
        j["checkpoints"].as_u64(),
    ) {
        let _ = writeln!(
            out,
            "  write-hole journal: {e} entries in {b} batches, {c} checkpoints"
        );
    }
    render_checksum_cache(out, &v["checksum_cache"]);
}

/// The checksum-page cache line of `vraid status` (issue 15).
fn render_checksum_cache(out: &mut String, c: &Value) {
    let Ok(c) = serde_json::from_value::<crate::integrity::CacheStats>(c.clone()) else {
        return;
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let _ = writeln!(
        out,
        "  checksum cache: {:.1} of {:.1} MiB, hit rate {:.1}% ({} hits, {} misses, {} evictions, {} written back)",
        mib(c.resident_bytes),
        mib(c.budget_bytes),
        100.0 * c.hit_rate(),
        c.hits,
        c.misses,
        c.evictions,
        c.writebacks
    );
}

/// `vraid fail`.
pub fn fail(args: MemberCmdArgs) -> Result<(), ClientError> {
    let reply = call(
        &socket(&args.control),
        "fail",
        json!({"volume": args.volume, "member": member_arg(&args.member)}),
    )?;
    println!(
        "{}: member {} failed; volume is {}",
        args.volume,
        reply["member"],
        reply["volume_state"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// A path as the daemon must see it: absolute, since its working directory
/// may differ from ours.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A member named on the command line (a role number or a path) as the
/// daemon must see it: a path made absolute, since a relative one means
/// a file in *our* working directory, not in the daemon's.
fn member_arg(member: &str) -> String {
    if member.parse::<usize>().is_ok() {
        return member.to_string();
    }
    absolute(Path::new(member)).display().to_string()
}

/// `vraid add`.
pub fn add(args: AddArgs) -> Result<(), ClientError> {
    let path = absolute(&args.path);
    let reply = call(
        &socket(&args.control),
        "add",
        json!({"volume": args.volume, "path": path, "force": args.force}),
    )?;
    match reply["role"].as_u64() {
        Some(role) => println!(
            "{}: {} added as member {role}; rebuilding (watch with: vraid status --watch)",
            args.volume,
            path.display()
        ),
        None => println!("{}: {} added as a hot spare", args.volume, path.display()),
    }
    Ok(())
}

/// `vraid replace`.
pub fn replace(args: ReplaceArgs) -> Result<(), ClientError> {
    let path = absolute(&args.path);
    call(
        &socket(&args.control),
        "replace",
        json!({"volume": args.volume, "member": member_arg(&args.member), "path": path, "force": args.force}),
    )?;
    println!(
        "{}: copying member {} onto {}; it keeps serving until the copy is in sync",
        args.volume,
        args.member,
        path.display()
    );
    Ok(())
}

/// `vraid set`.
pub fn set(args: SetArgs) -> Result<(), ClientError> {
    if let Some(mbps) = args.rebuild_max_mbps {
        call(
            &socket(&args.control),
            "set",
            json!({"volume": args.volume, "rebuild_max_mbps": mbps}),
        )?;
        println!("{}: rebuild rate limit {mbps} MB/s", args.volume);
    }
    Ok(())
}

/// `vraid scrub`.
pub fn scrub(args: ScrubArgs) -> Result<(), ClientError> {
    let reply = call(
        &socket(&args.control),
        "scrub",
        json!({"volume": args.volume, "repair": args.repair, "cancel": args.cancel, "wait": !args.no_wait}),
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_default()
        );
    } else if args.cancel {
        println!("{}: scrub cancelled", args.volume);
    } else if args.no_wait {
        println!(
            "{}: scrub started (watch with: vraid status --watch)",
            args.volume
        );
    } else {
        print!("{}", render_scrub(&args.volume, &reply["scrub"]));
    }
    Ok(())
}

/// The text form of a scrub result (`last_scrub` in status).
fn render_scrub(volume: &str, s: &Value) -> String {
    let mut out = String::new();
    let sum = |key: &str| -> u64 {
        s["members"]
            .as_array()
            .map_or(0, |ms| ms.iter().filter_map(|m| m[key].as_u64()).sum())
    };
    let _ = writeln!(
        out,
        "{volume}: scrub {} ({}) in {:.1} s: checked {}, {} mismatches, {} checksum errors, {} read errors, {} repaired{}",
        s["outcome"].as_str().unwrap_or("?"),
        if s["repair"].as_bool() == Some(true) { "repair" } else { "check" },
        s["secs"].as_f64().unwrap_or(0.0),
        human_bytes(s["bytes_checked"].as_u64().unwrap_or(0)),
        sum("mismatch"),
        sum("checksum"),
        sum("io"),
        sum("repaired"),
        if s["degraded"].as_bool() == Some(true) {
            " (degraded: not everything could be checked)"
        } else {
            ""
        },
    );
    for m in s["members"].as_array().into_iter().flatten() {
        let found: u64 = ["mismatch", "checksum", "io"]
            .iter()
            .filter_map(|k| m[*k].as_u64())
            .sum();
        if found > 0 {
            let _ = writeln!(
                out,
                "  member {}: {} mismatches, {} checksum errors, {} read errors, {} repaired",
                m["role"], m["mismatch"], m["checksum"], m["io"], m["repaired"]
            );
        }
    }
    out
}

/// `vraid remove`.
pub fn remove(args: MemberCmdArgs) -> Result<(), ClientError> {
    let reply = call(
        &socket(&args.control),
        "remove",
        json!({"volume": args.volume, "member": member_arg(&args.member)}),
    )?;
    match reply["spare"].as_str() {
        Some(spare) => println!("{}: hot spare {spare} removed", args.volume),
        None => println!("{}: member {} removed", args.volume, reply["member"]),
    }
    Ok(())
}

/// `vraid fault ...`.
pub fn fault(cmd: FaultCommand) -> Result<(), ClientError> {
    match cmd {
        FaultCommand::Add(a) => fault_add(a),
        FaultCommand::List(a) => fault_list(a),
        FaultCommand::Clear(a) => fault_clear(a),
    }
}

fn fault_add(a: FaultAddArgs) -> Result<(), ClientError> {
    let kind = match a.kind {
        FaultKindArg::Error => "error",
        FaultKindArg::Delay => "delay",
        FaultKindArg::Corrupt => "corrupt",
        FaultKindArg::Offline => "offline",
    };
    let op = match a.op {
        FaultOpArg::Read => "read",
        FaultOpArg::Write => "write",
        FaultOpArg::Any => "any",
    };
    let delay_us = a
        .delay
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let reply = call(
        &socket(&a.control),
        "fault.add",
        json!({
            "volume": a.volume, "member": member_arg(&a.member), "kind": kind, "op": op,
            "offset": a.offset, "length": a.length, "probability": a.probability,
            "delay_us": delay_us, "count": a.count,
        }),
    )?;
    println!(
        "fault {} added on {} member {}",
        reply["id"], a.volume, reply["member"]
    );
    Ok(())
}

fn fault_list(a: FaultListArgs) -> Result<(), ClientError> {
    let reply = call(&socket(&a.control), "fault.list", json!({}))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_default()
        );
        return Ok(());
    }
    let empty = Vec::new();
    let faults = reply["faults"].as_array().unwrap_or(&empty);
    if faults.is_empty() {
        println!("no faults");
        return Ok(());
    }
    println!(
        "{:>4}  {:<12} {:>6}  {:<8} {:<6} {:>8} {:>8}  range",
        "id", "volume", "member", "kind", "op", "hits", "left"
    );
    for f in faults {
        let range = match (f["offset"].as_u64(), f["length"].as_u64()) {
            (None, None) => "all".to_string(),
            (o, Some(l)) => format!("{}+{l}", o.unwrap_or(0)),
            (Some(o), None) => format!("{o}.."),
        };
        let left = f["remaining"]
            .as_u64()
            .map_or_else(|| "-".to_string(), |n| n.to_string());
        println!(
            "{:>4}  {:<12} {:>6}  {:<8} {:<6} {:>8} {:>8}  {range}{}{}",
            f["id"].to_string(),
            f["volume"].as_str().unwrap_or("?"),
            f["member"].to_string(),
            f["kind"].as_str().unwrap_or("?"),
            f["op"].as_str().unwrap_or("?"),
            f["hits"].to_string(),
            left,
            if f["probability"].as_f64().unwrap_or(1.0) < 1.0 {
                format!(" p={}", f["probability"])
            } else {
                String::new()
            },
            match f["delay_us"].as_u64() {
                Some(us) if us > 0 => format!(" delay={us}us"),
                _ => String::new(),
            },
        );
        if f["holds_role"] == false {
            println!(
                "      stays with {}, which no longer holds member {}",
                f["path"].as_str().unwrap_or("?"),
                f["member"]
            );
        }
    }
    Ok(())
}

fn fault_clear(a: FaultClearArgs) -> Result<(), ClientError> {
    let reply = call(&socket(&a.control), "fault.clear", json!({ "id": a.id }))?;
    println!("cleared {} fault rule(s)", reply["cleared"]);
    Ok(())
}
