//! The CLI verbs that talk to a running daemon: `status`, `fail`, `remove`,
//! `fault add|list|clear`. Each sends one request and prints the reply.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{call, default_client_path, ClientError};
use crate::cli::{
    ControlArg, FaultAddArgs, FaultClearArgs, FaultCommand, FaultKindArg, FaultListArgs,
    FaultOpArg, MemberCmdArgs, StatusArgs,
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
        let text = render_status(&reply);
        if !args.watch {
            print!("{text}");
            return Ok(());
        }
        // Clear screen, home cursor, redraw.
        print!("\x1b[2J\x1b[H{text}\n(refreshing every second; Ctrl-C to stop)\n");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn human_bytes(n: u64) -> String {
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
            "  {:<5} {:<8} {:>9} {:>9} {:>7} {:>6}  path",
            "role", "state", "reads", "writes", "errors", "faults"
        );
        for m in v["members"].as_array().unwrap_or(&empty) {
            let _ = writeln!(
                out,
                "  {:<5} {:<8} {:>9} {:>9} {:>7} {:>6}  {}",
                m["role"].to_string(),
                m["state"].as_str().unwrap_or("?"),
                m["io"]["reads"].to_string(),
                m["io"]["writes"].to_string(),
                m["io"]["errors"].to_string(),
                m["faults"].to_string(),
                m["path"].as_str().unwrap_or("-"),
            );
        }
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

/// `vraid fail`.
pub fn fail(args: MemberCmdArgs) -> Result<(), ClientError> {
    let reply = call(
        &socket(&args.control),
        "fail",
        json!({"volume": args.volume, "member": args.member}),
    )?;
    println!(
        "{}: member {} failed; volume is {}",
        args.volume,
        reply["member"],
        reply["volume_state"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `vraid remove`.
pub fn remove(args: MemberCmdArgs) -> Result<(), ClientError> {
    let reply = call(
        &socket(&args.control),
        "remove",
        json!({"volume": args.volume, "member": args.member}),
    )?;
    println!("{}: member {} removed", args.volume, reply["member"]);
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
            "volume": a.volume, "member": a.member, "kind": kind, "op": op,
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
    }
    Ok(())
}

fn fault_clear(a: FaultClearArgs) -> Result<(), ClientError> {
    let reply = call(&socket(&a.control), "fault.clear", json!({ "id": a.id }))?;
    println!("cleared {} fault rule(s)", reply["cleared"]);
    Ok(())
}
