//! The CLI verbs that talk to a running daemon: `status`, `fail`, `remove`,
//! `add`, `replace`, `set`, `scrub`, `fault add|list|clear`. Each sends one
//! request (typed [`super::params`]) and prints the typed reply, as text or
//! (`--json`) as the daemon's JSON; `status --watch` on a terminal hands over
//! to `watch.rs` (progress bars).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::BinaryBytes;
use serde::Serialize;

use super::client::{call, default_client_path, ClientError};
use super::params::{
    AddParams, CacheSetParams, FaultAddParams, FaultClearParams, MemberArg, MemberParams,
    MirrorSetParams, PowercutParams, QosSetParams, ReplaceParams, ScrubParams, SetParams,
    VolumeFaultAddParams, VolumeFilter,
};
use super::replies::{
    AddReply, FailReply, FaultAddReply, FaultClearReply, FaultListReply, MirrorReply,
    PowercutReply, RemoveReply, ReplaceReply, ScrubReply, SetReply, VolumeFaultAddReply,
};
use super::status::{
    wire_name, FaultStatus, ScrubStatus, StatusReply, VolumeFaultStatus, VolumeStatus,
};
use crate::cli::{
    AddArgs, CacheModeArg, ControlArg, FaultAddArgs, FaultClearArgs, FaultCommand, FaultKindArg,
    FaultListArgs, FaultOpArg, KeepArg, MemberCmdArgs, PowercutArgs, ReplaceArgs, ScrubArgs,
    SetArgs, StatusArgs,
};
use crate::member::fault::{FaultKind, FaultOp};
use crate::volfault::{CacheMode, CacheStatus, KeepPolicy};

pub(crate) fn socket(arg: &ControlArg) -> PathBuf {
    arg.control.clone().unwrap_or_else(default_client_path)
}

/// `vraid status`.
pub fn status(args: StatusArgs) -> Result<(), ClientError> {
    let path = socket(&args.control);
    let params = VolumeFilter {
        volume: args.volume.clone(),
    };
    loop {
        let reply: StatusReply = call(&path, "status", &params)?;
        if args.json {
            print_json(&reply);
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

/// `reply` as pretty JSON on stdout (`--json`).
pub(crate) fn print_json<T: Serialize>(reply: &T) {
    // Through a `Value`: its keys come out sorted, as they always did.
    let value = serde_json::to_value(reply).unwrap_or_default();
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
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
pub fn render_status(reply: &StatusReply) -> String {
    let mut out = String::new();
    for v in &reply.volumes {
        render_volume(&mut out, v);
        render_sync(&mut out, v);
        render_engine(&mut out, v);
    }
    for p in &reply.pools {
        out.push_str(&super::pool_cli::render_pool(p));
    }
    out.push_str(&super::pool_cli::render_pool_volumes(&reply.pool_volumes));
    let d = &reply.nbd_dropped;
    if !d.is_zero() {
        let _ = writeln!(
            out,
            "nbd dropped: idle {}, slow drain {}, stalled reply {}, stalled payload {}",
            d.idle, d.slow_drain, d.stalled_reply, d.stalled_payload
        );
    }
    let n = &reply.member_nowait;
    if !n.is_zero() {
        let _ = writeln!(
            out,
            "unaligned member writes: {} RWF_NOWAIT tries, {} would block, {} unsupported, {} widened ({} untried), {} edge reads",
            n.tries, n.refused_would_block, n.refused_unsupported, n.widened, n.untried, n.edge_reads
        );
    }
    if !reply.events.is_empty() {
        let _ = writeln!(out, "events:");
        for e in reply.events.iter().rev().take(10).rev() {
            let _ = writeln!(out, "  {}  {}", clock(e.time_ms), e.message);
        }
    }
    out
}

/// The volume's header, client I/O line and member table.
fn render_volume(out: &mut String, v: &VolumeStatus) {
    let io = &v.io;
    let _ = writeln!(
        out,
        "{}: raid{}, {}, {} ({} bytes), chunk {}, superblock events {}",
        v.name,
        v.level,
        v.state.word().to_uppercase(),
        BinaryBytes(v.size),
        v.size,
        crate::units::format_size(v.chunk_size),
        v.superblock_events,
    );
    let _ = writeln!(
        out,
        "  client io: {} reads ({}), {} writes ({}), {} flushes, {} errors",
        io.reads,
        BinaryBytes(io.read_bytes),
        io.writes,
        BinaryBytes(io.write_bytes),
        io.flushes,
        io.errors,
    );
    render_client(out, v);
    let _ = writeln!(
        out,
        "  {:<5} {:<8} {:>9} {:>9} {:>7} {:>6} {:>6}  path",
        "role", "state", "reads", "writes", "errors", "csum", "faults"
    );
    for m in &v.members {
        let _ = writeln!(
            out,
            "  {:<5} {:<8} {:>9} {:>9} {:>7} {:>6} {:>6}  {}",
            m.role,
            m.state.word(),
            m.io.reads,
            m.io.writes,
            m.io.errors,
            m.checksum_errors,
            m.faults,
            m.path.as_deref().unwrap_or("-"),
        );
        if let Some(r) = &m.remote {
            let _ = writeln!(
                out,
                "        remote: latency avg {} us max {} us over {} requests, \
                 {} reconnects, {} timeouts, {} retries, {} connections",
                r.latency_us_avg,
                r.latency_us_max,
                r.requests,
                r.reconnects,
                r.timeouts,
                r.retries,
                r.connections,
            );
        }
        render_policy(out, m);
    }
}

/// A member's mirror policy: write-mostly, and the write-behind lag.
fn render_policy(out: &mut String, m: &super::status::MemberStatus) {
    if let Some(b) = &m.behind {
        let _ = writeln!(
            out,
            "        write-mostly, write-behind: lag {} bytes in {} requests (limits {} bytes, \
             {} requests), {} writes went behind",
            b.lag_bytes, b.lag_requests, b.max_bytes, b.max_requests, b.queued_total,
        );
    } else if m.write_mostly {
        let _ = writeln!(out, "        write-mostly");
    }
    if let Some(why) = &m.join_refused {
        let _ = writeln!(
            out,
            "        join given up: {why} (`vraid add` brings a member in)"
        );
    }
}

/// The write cache, QoS and volume faults, when in use.
fn render_client(out: &mut String, v: &VolumeStatus) {
    if let Some(q) = v.qos.filter(|q| q.limits.any() || q.throttled_requests > 0) {
        let _ = writeln!(
            out,
            "  qos: {}; {} requests throttled for {:.3} s, {} waiting, {} in flight ({} held by the in-flight cap)",
            q.limits.describe(),
            q.throttled_requests,
            q.throttled_us as f64 / 1e6,
            q.waiting,
            q.in_flight,
            q.capped_requests,
        );
    }
    if let Some(c) = v
        .cache
        .as_ref()
        .filter(|c| c.mode == CacheMode::Volatile || c.powercuts > 0)
    {
        let _ = writeln!(
            out,
            "  write cache: {}, {} dirty in {} writes (of {}), {} power cuts dropped {} writes",
            wire_name(&c.mode),
            BinaryBytes(c.dirty_bytes),
            c.dirty_writes,
            BinaryBytes(c.capacity),
            c.powercuts,
            c.dropped_writes,
        );
    }
    if let Some(f) = v.volume_faults.filter(|f| f.rules > 0 || f.stalled > 0) {
        let _ = writeln!(
            out,
            "  volume faults: {} rules, {} requests stalled, {} bad bytes",
            f.rules, f.stalled, f.bad_bytes
        );
    }
    if let Some(l) = &v.write_log {
        let state = match &l.failed {
            None => "recording".to_string(),
            Some(why) => format!("stopped recording: {why}"),
        };
        let _ = writeln!(
            out,
            "  write log: {} ({state}), {} entries, {}",
            l.path.display(),
            l.entries,
            BinaryBytes(l.bytes),
        );
    }
}

/// The line of the resync/rebuild/scrub running (`status --watch` on a
/// terminal draws it as a progress bar instead).
fn render_sync(out: &mut String, v: &VolumeStatus) {
    let Some(engine) = &v.engine else {
        return;
    };
    if let Some(sync) = &engine.sync {
        let _ = writeln!(
            out,
            "  {}: {:5.1}% {} of {}, {}/s, ETA {}, limit {} MB/s",
            sync.what(),
            sync.fraction() * 100.0,
            BinaryBytes(sync.done_bytes),
            BinaryBytes(sync.total_bytes),
            BinaryBytes(sync.bytes_per_sec.max(0.0) as u64),
            sync.eta_text(),
            engine.rebuild_max_mbps
        );
    }
}

/// The last scrub, the spares and the journal counters.
fn render_engine(out: &mut String, v: &VolumeStatus) {
    let Some(engine) = &v.engine else {
        return;
    };
    if let Some(last) = &engine.last_scrub {
        let prefix = format!("{}: ", v.name);
        for (i, line) in render_scrub(&v.name, last).lines().enumerate() {
            let line = if i == 0 {
                format!("last {}", line.strip_prefix(&prefix).unwrap_or(line))
            } else {
                line.to_string()
            };
            let _ = writeln!(out, "  {line}");
        }
    }
    if !engine.spares.is_empty() {
        let _ = writeln!(out, "  spares: {}", engine.spares.join(", "));
    }
    if let Some(j) = engine.journal {
        let _ = writeln!(
            out,
            "  write-hole journal: {} entries in {} batches, {} checkpoints",
            j.entries, j.batches, j.checkpoints
        );
    }
    if let Some(c) = engine.checksum_cache {
        render_checksum_cache(out, &c);
    }
}

/// The checksum-page cache line of `vraid status` (issue 15).
fn render_checksum_cache(out: &mut String, c: &crate::integrity::CacheStats) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let _ = writeln!(
        out,
        "  checksum cache: {:.1} of {:.1} MiB, hit rate {:.1}% ({} hits, {} misses, {} loads, {} evictions, {} written back)",
        mib(c.resident_bytes),
        mib(c.budget_bytes),
        100.0 * c.hit_rate(),
        c.hits,
        c.misses,
        c.loads,
        c.evictions,
        c.writebacks
    );
}

/// `vraid fail`.
pub fn fail(args: MemberCmdArgs) -> Result<(), ClientError> {
    let reply: FailReply = member_call(&args, "fail")?;
    match &reply.replace_stopped {
        Some(new) if reply.state == super::status::MemberStatusState::Active => println!(
            "{}: replace of member {} onto {new} stopped; the old member keeps serving; \
             volume is {}",
            args.volume, reply.member, reply.volume_state
        ),
        // The old member had failed meanwhile: the role has none now.
        Some(new) => println!(
            "{}: replace of member {} onto {new} stopped; its old member had failed, \
             so member {} is {} now; volume is {}",
            args.volume, reply.member, reply.member, reply.state, reply.volume_state
        ),
        None => println!(
            "{}: member {} failed; volume is {}",
            args.volume, reply.member, reply.volume_state
        ),
    }
    Ok(())
}

/// Sends `verb` about one member of a volume (`fail`, `remove`).
fn member_call<R: serde::de::DeserializeOwned>(
    args: &MemberCmdArgs,
    verb: &str,
) -> Result<R, ClientError> {
    call(
        &socket(&args.control),
        verb,
        &MemberParams {
            volume: args.volume.clone(),
            member: member_arg(&args.member),
        },
    )
}

/// A path as the daemon must see it: absolute, since its working directory
/// may differ from ours. An NBD URI stays as it is.
fn absolute(path: &Path) -> PathBuf {
    if crate::remote::is_nbd_uri(path) {
        return path.to_path_buf();
    }
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A member named on the command line (a role number or a path) as the
/// daemon must see it: a path made absolute, since a relative one means
/// a file in *our* working directory, not in the daemon's.
fn member_arg(member: &str) -> MemberArg {
    if let Ok(role) = member.parse::<usize>() {
        return MemberArg::Role(role);
    }
    MemberArg::Path(absolute(Path::new(member)).display().to_string())
}

/// `vraid add`.
pub fn add(args: AddArgs) -> Result<(), ClientError> {
    let path = absolute(&args.path);
    let reply: AddReply = call(
        &socket(&args.control),
        "add",
        &AddParams {
            volume: args.volume.clone(),
            path: path.clone(),
            force: args.force,
        },
    )?;
    match reply.role {
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
    let _: ReplaceReply = call(
        &socket(&args.control),
        "replace",
        &ReplaceParams {
            volume: args.volume.clone(),
            member: member_arg(&args.member),
            path: path.clone(),
            force: args.force,
        },
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
    if args.cache.is_some() || args.cache_size.is_some() {
        let mode = args.cache.map(|m| match m {
            CacheModeArg::Volatile => CacheMode::Volatile,
            CacheModeArg::Writethrough => CacheMode::Writethrough,
        });
        let st: CacheStatus = call(
            &socket(&args.control),
            "cache.set",
            &CacheSetParams {
                volume: args.volume.clone(),
                mode,
                size: args.cache_size,
            },
        )?;
        println!(
            "{}: write cache {}, {} bytes, {} dirty",
            args.volume,
            wire_name(&st.mode),
            st.capacity,
            st.dirty_bytes
        );
    }
    if args.sets_qos() {
        set_qos(&args)?;
    }
    if args.sets_mirror() {
        set_mirror(&args)?;
    }
    if let Some(mbps) = args.rebuild_max_mbps {
        let _: SetReply = call(
            &socket(&args.control),
            "set",
            &SetParams {
                volume: args.volume.clone(),
                rebuild_max_mbps: mbps,
            },
        )?;
        println!("{}: rebuild rate limit {mbps} MB/s", args.volume);
    }
    Ok(())
}

/// `vraid set --member M --write-mostly on|off`, `--write-behind
/// SIZE|off`, `--write-behind-requests N`.
fn set_mirror(args: &SetArgs) -> Result<(), ClientError> {
    let member = args.member.as_ref().map(|m| match m.parse::<usize>() {
        Ok(r) => MemberArg::Role(r),
        Err(_) => MemberArg::Path(m.clone()),
    });
    let r: MirrorReply = call(
        &socket(&args.control),
        "mirror.set",
        &MirrorSetParams {
            volume: args.volume.clone(),
            member,
            write_mostly: args.write_mostly,
            write_behind: args.write_behind,
            write_behind_requests: args.write_behind_requests,
        },
    )?;
    let roles: Vec<String> = r.write_mostly.iter().map(usize::to_string).collect();
    let behind = match (r.write_behind, r.write_behind_requests) {
        (Some(b), Some(n)) => format!("on, lag up to {b} bytes or {n} requests"),
        _ => "off".to_string(),
    };
    println!(
        "{}: write-mostly members [{}], write-behind {behind} (kept in the superblocks)",
        args.volume,
        roles.join(", ")
    );
    Ok(())
}

/// `vraid set --iops ... --bps ...`: the QoS limits named change, the
/// others stay.
fn set_qos(args: &SetArgs) -> Result<(), ClientError> {
    let st: crate::qos::QosStatus = call(
        &socket(&args.control),
        "qos.set",
        &QosSetParams {
            volume: args.volume.clone(),
            iops: args.iops,
            read_iops: args.read_iops,
            write_iops: args.write_iops,
            bps: args.bps,
            read_bps: args.read_bps,
            write_bps: args.write_bps,
            burst_ms: args.burst,
        },
    )?;
    println!("{}: QoS {}", args.volume, st.limits.describe());
    Ok(())
}

/// `vraid scrub`.
pub fn scrub(args: ScrubArgs) -> Result<(), ClientError> {
    let reply: ScrubReply = call(
        &socket(&args.control),
        "scrub",
        &ScrubParams {
            volume: args.volume.clone(),
            repair: args.repair,
            cancel: args.cancel,
            wait: !args.no_wait,
        },
    )?;
    if args.json {
        print_json(&reply);
    } else if args.cancel {
        println!("{}: scrub cancelled", args.volume);
    } else if args.no_wait {
        println!(
            "{}: scrub started (watch with: vraid status --watch)",
            args.volume
        );
    } else if let Some(result) = &reply.scrub {
        print!("{}", render_scrub(&args.volume, result));
    }
    Ok(())
}

/// The text form of a scrub result (`last_scrub` in status).
fn render_scrub(volume: &str, s: &ScrubStatus) -> String {
    let mut out = String::new();
    let total = s.total();
    let _ = writeln!(
        out,
        "{volume}: scrub {} ({}) in {:.1} s: checked {}, {} mismatches, {} checksum errors, {} read errors, {} repaired{}",
        s.outcome,
        if s.repair { "repair" } else { "check" },
        s.secs,
        BinaryBytes(s.bytes_checked),
        total.mismatch,
        total.checksum,
        total.io,
        total.repaired,
        if s.degraded {
            " (degraded: not everything could be checked)"
        } else {
            ""
        },
    );
    for m in s.members.iter().filter(|m| m.found() > 0) {
        let _ = writeln!(
            out,
            "  member {}: {} mismatches, {} checksum errors, {} read errors, {} repaired",
            m.role, m.mismatch, m.checksum, m.io, m.repaired
        );
    }
    out
}

/// `vraid remove`.
pub fn remove(args: MemberCmdArgs) -> Result<(), ClientError> {
    let reply: RemoveReply = member_call(&args, "remove")?;
    match (reply.spare, reply.member) {
        (Some(spare), _) => println!("{}: hot spare {spare} removed", args.volume),
        (None, Some(role)) => println!("{}: member {role} removed", args.volume),
        (None, None) => println!("{}: member {} removed", args.volume, args.member),
    }
    Ok(())
}

/// `vraid fault ...`.
pub fn fault(cmd: FaultCommand) -> Result<(), ClientError> {
    match cmd {
        FaultCommand::Add(a) => fault_add(a),
        FaultCommand::List(a) => fault_list(a),
        FaultCommand::Clear(a) => fault_clear(a),
        FaultCommand::Powercut(a) => powercut(a),
    }
}

/// `vraid fault powercut`.
fn powercut(a: PowercutArgs) -> Result<(), ClientError> {
    let keep = match a.keep {
        KeepArg::None => KeepPolicy::None,
        KeepArg::OrderedPrefix => KeepPolicy::OrderedPrefix,
        KeepArg::RandomSubset => KeepPolicy::RandomSubset,
    };
    let reply: PowercutReply = call(
        &socket(&a.control),
        "fault.powercut",
        &PowercutParams {
            volume: a.volume.clone(),
            keep,
            seed: a.seed,
        },
    )?;
    if a.json {
        print_json(&reply);
        return Ok(());
    }
    let r = &reply.report;
    println!(
        "{}: power cut (keep {}, seed {}): dropped {} unflushed writes ({} bytes), kept {} ({} bytes)",
        reply.volume,
        wire_name(&r.keep),
        r.seed,
        r.dropped_writes,
        r.dropped_bytes,
        r.kept_writes,
        r.kept_bytes
    );
    for m in &reply.members {
        println!(
            "{}: member {} power cut: {} unflushed blocks restored, {} kept; frozen until restart",
            reply.volume, m.member, m.restored_blocks, m.kept_blocks
        );
    }
    Ok(())
}

/// `vraid fault add VOL --volume ...`.
fn volume_fault_add(a: &FaultAddArgs, kind: FaultKind, op: FaultOp) -> Result<(), ClientError> {
    let reply: VolumeFaultAddReply = call(
        &socket(&a.control),
        "fault.add_volume",
        &VolumeFaultAddParams {
            volume: a.volume.clone(),
            kind,
            op,
            offset: a.offset,
            length: a.length,
            probability: a.probability,
            delay_us: delay_us(a),
            count: a.count,
        },
    )?;
    println!("fault {} added on volume {}", reply.id, reply.volume);
    Ok(())
}

fn delay_us(a: &FaultAddArgs) -> Option<u64> {
    a.delay
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn fault_add(a: FaultAddArgs) -> Result<(), ClientError> {
    let kind = match a.kind {
        FaultKindArg::Error => FaultKind::Error,
        FaultKindArg::Delay => FaultKind::Delay,
        FaultKindArg::Corrupt => FaultKind::Corrupt,
        FaultKindArg::Offline => FaultKind::Offline,
        FaultKindArg::Stall => FaultKind::Stall,
        FaultKindArg::Readonly => FaultKind::Readonly,
        FaultKindArg::BadSector => FaultKind::BadSector,
        FaultKindArg::Torn => FaultKind::Torn,
        FaultKindArg::Volatile => FaultKind::Volatile,
    };
    let op = match a.op {
        FaultOpArg::Read => FaultOp::Read,
        FaultOpArg::Write => FaultOp::Write,
        FaultOpArg::Any => FaultOp::Any,
    };
    let Some(member) = a.member.as_deref().filter(|_| !a.on_volume) else {
        return volume_fault_add(&a, kind, op);
    };
    let reply: FaultAddReply = call(
        &socket(&a.control),
        "fault.add",
        &FaultAddParams {
            volume: a.volume.clone(),
            member: member_arg(member),
            kind,
            op,
            offset: a.offset,
            length: a.length,
            probability: a.probability,
            delay_us: delay_us(&a),
            count: a.count,
        },
    )?;
    println!(
        "fault {} added on {} member {}",
        reply.id, a.volume, reply.member
    );
    Ok(())
}

fn fault_list(a: FaultListArgs) -> Result<(), ClientError> {
    let reply: FaultListReply = call(&socket(&a.control), "fault.list", &VolumeFilter::default())?;
    if a.json {
        print_json(&reply);
        return Ok(());
    }
    if reply.faults.is_empty() && reply.volume_faults.is_empty() {
        println!("no faults");
        return Ok(());
    }
    println!(
        "{:>4}  {:<12} {:>6}  {:<10} {:<6} {:>8} {:>8}  range",
        "id", "volume", "member", "kind", "op", "hits", "left"
    );
    for f in &reply.faults {
        print_fault(f);
    }
    for f in &reply.volume_faults {
        print_volume_fault(f);
    }
    Ok(())
}

/// One row of `fault list` for a volume rule (member column `volume`).
fn print_volume_fault(f: &VolumeFaultStatus) {
    let spec = &f.spec;
    let left = f
        .remaining
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    println!(
        "{:>4}  {:<12} {:>6}  {:<10} {:<6} {:>8} {:>8}  {}",
        f.id,
        f.volume,
        "volume",
        wire_name(&spec.kind),
        wire_name(&spec.op),
        f.hits,
        left,
        range_text(spec),
    );
}

fn range_text(spec: &crate::member::fault::FaultSpec) -> String {
    match (spec.offset, spec.length) {
        (None, None) => "all".to_string(),
        (o, Some(l)) => format!("{}+{l}", o.unwrap_or(0)),
        (Some(o), None) => format!("{o}.."),
    }
}

/// One row of `fault list`.
fn print_fault(f: &FaultStatus) {
    let spec = &f.spec;
    let range = range_text(spec);
    let left = f
        .remaining
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    println!(
        "{:>4}  {:<12} {:>6}  {:<10} {:<6} {:>8} {:>8}  {range}{}{}",
        f.id,
        f.volume,
        f.member,
        wire_name(&spec.kind),
        wire_name(&spec.op),
        f.hits,
        left,
        if spec.probability < 1.0 {
            format!(" p={}", spec.probability)
        } else {
            String::new()
        },
        if spec.delay_us > 0 {
            format!(" delay={}us", spec.delay_us)
        } else {
            String::new()
        },
    );
    if !f.holds_role {
        println!(
            "      stays with {}, which no longer holds member {}",
            f.path.as_deref().unwrap_or("?"),
            f.member
        );
    }
}

fn fault_clear(a: FaultClearArgs) -> Result<(), ClientError> {
    let reply: FaultClearReply = call(
        &socket(&a.control),
        "fault.clear",
        &FaultClearParams { id: a.id },
    )?;
    println!("cleared {} fault rule(s)", reply.cleared);
    Ok(())
}
