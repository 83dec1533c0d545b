//! blkio-bench: a small fio-like load generator for vhost-user-blk sockets,
//! built on libblkio's `virtio-blk-vhost-user` driver (the `blkio` crate).
//!
//! ```text
//!  Blkio::new("virtio-blk-vhost-user") -> path, num-queues -> connect/start
//!  alloc_mem_region(queues × iodepth × bs) -> map_mem_region
//!  one thread per queue: keep `iodepth` requests in flight until `runtime`
//!  elapses, then drain; print one JSON object on stdout
//! ```
//!
//! Random jobs pick block-aligned offsets over the whole device; sequential
//! jobs give each queue its own contiguous slice and walk it, wrapping.
//! Any failed request makes the run fail (exit 1), so a broken export is never
//! reported as fast.

use std::mem::MaybeUninit;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use clap::{Parser, ValueEnum};

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("blkio {what}: {message}")]
    Blkio { what: &'static str, message: String },
    #[error("invalid job: {0}")]
    Job(String),
    #[error("request at byte {offset} failed with {ret}")]
    Request { offset: u64, ret: i32 },
    #[error("a queue thread panicked")]
    Thread,
}

fn blkio_err(what: &'static str) -> impl Fn(blkio::Error) -> BenchError {
    move |e| BenchError::Blkio {
        what,
        message: e.message().to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
    Read,
    Write,
}

impl Rw {
    fn is_write(self) -> bool {
        matches!(self, Rw::Randwrite | Rw::Write)
    }
    fn is_random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite)
    }
    fn name(self) -> &'static str {
        match self {
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Read => "read",
            Rw::Write => "write",
        }
    }
}

/// Drive a vhost-user-blk socket and print IOPS and MiB/s as JSON.
#[derive(Debug, Parser)]
struct Args {
    /// vhost-user-blk UNIX socket.
    #[arg(long)]
    path: String,
    /// Virtqueues to use, one thread each.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    iodepth: u32,
    /// Request size in bytes (a multiple of 512).
    #[arg(long, default_value_t = 4096)]
    bs: u64,
    #[arg(long, value_enum)]
    rw: Rw,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10.0)]
    runtime: f64,
    /// Bytes of the device to use from offset 0 (default: all of it).
    #[arg(long)]
    size: Option<u64>,
    /// Sequential jobs only: stop after one pass over each queue's slice
    /// (a prefill), whatever --runtime says.
    #[arg(long)]
    once: bool,
}

/// One queue's share of the job.
#[derive(Debug, Clone, Copy)]
struct QueueJob {
    rw: Rw,
    bs: u64,
    iodepth: usize,
    /// Byte range [start, end) this queue addresses.
    start: u64,
    end: u64,
    /// Address of this queue's `iodepth × bs` bytes in the mapped region.
    buf: usize,
    deadline: Instant,
    /// Stop after one sequential pass.
    once: bool,
    seed: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct QueueStats {
    ios: u64,
    bytes: u64,
}

/// xorshift64*: cheap, deterministic offsets; quality is irrelevant here.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Hands out the next offset for a queue.
#[derive(Debug)]
struct Offsets {
    job: QueueJob,
    rng: Rng,
    next_seq: u64,
}

impl Offsets {
    fn new(job: QueueJob) -> Offsets {
        Offsets {
            job,
            rng: Rng(job.seed | 1),
            next_seq: job.start,
        }
    }

    /// Whether a one-pass sequential job has covered its slice.
    fn exhausted(&self) -> bool {
        self.job.once && self.next_seq + self.job.bs > self.job.end
    }

    fn next(&mut self) -> u64 {
        let blocks = (self.job.end - self.job.start) / self.job.bs;
        if self.job.rw.is_random() {
            self.job.start + (self.rng.next() % blocks) * self.job.bs
        } else {
            if self.next_seq + self.job.bs > self.job.end {
                self.next_seq = self.job.start;
            }
            let off = self.next_seq;
            self.next_seq += self.job.bs;
            off
        }
    }
}

fn submit(q: &mut Blkioq, job: &QueueJob, slot: usize, offset: u64) {
    let buf = (job.buf + slot * job.bs as usize) as *mut u8;
    // user_data is the slot; run_queue keeps each slot's offset.
    let user_data = slot;
    if job.rw.is_write() {
        q.write(offset, buf, job.bs as usize, user_data, ReqFlags::empty());
    } else {
        q.read(offset, buf, job.bs as usize, user_data, ReqFlags::empty());
    }
}

/// Keeps `iodepth` requests in flight until the deadline, then drains.
fn run_queue(mut q: Blkioq, job: QueueJob) -> Result<QueueStats, BenchError> {
    let mut offsets = Offsets::new(job);
    let mut slot_offset = vec![0u64; job.iodepth];
    let mut in_flight = 0;
    for (slot, off) in slot_offset.iter_mut().enumerate() {
        if offsets.exhausted() {
            break;
        }
        *off = offsets.next();
        submit(&mut q, &job, slot, *off);
        in_flight += 1;
    }
    let mut stats = QueueStats::default();
    let mut completions: Vec<MaybeUninit<Completion>> =
        (0..job.iodepth).map(|_| MaybeUninit::uninit()).collect();
    while in_flight > 0 {
        let n = q
            .do_io(&mut completions, 1, None, None)
            .map_err(blkio_err("do_io"))?;
        let running = Instant::now() < job.deadline;
        for c in &completions[..n] {
            // SAFETY: do_io initialised the first `n` completions it returned.
            let c = unsafe { c.assume_init_ref() };
            let slot = c.user_data;
            if c.ret != 0 {
                return Err(BenchError::Request {
                    offset: slot_offset.get(slot).copied().unwrap_or(u64::MAX),
                    ret: c.ret,
                });
            }
            stats.ios += 1;
            stats.bytes += job.bs;
            if running && !offsets.exhausted() {
                slot_offset[slot] = offsets.next();
                submit(&mut q, &job, slot, slot_offset[slot]);
            } else {
                in_flight -= 1;
            }
        }
    }
    Ok(stats)
}

#[derive(Debug)]
struct Report {
    ios: u64,
    bytes: u64,
    secs: f64,
    capacity: u64,
}

/// Rejects jobs the queues cannot run.
fn check_args(args: &Args) -> Result<(), BenchError> {
    if args.bs == 0 || !args.bs.is_multiple_of(512) {
        return Err(BenchError::Job(format!(
            "bs {} is not a multiple of 512",
            args.bs
        )));
    }
    if args.queues == 0 || args.iodepth == 0 {
        return Err(BenchError::Job(
            "queues and iodepth must be at least 1".into(),
        ));
    }
    if args.once && args.rw.is_random() {
        return Err(BenchError::Job("--once is for sequential jobs".into()));
    }
    if !(args.runtime > 0.0 && args.runtime < 86_400.0) {
        return Err(BenchError::Job(format!(
            "runtime {} is out of range",
            args.runtime
        )));
    }
    Ok(())
}

fn run(args: &Args) -> Result<Report, BenchError> {
    check_args(args)?;
    let mut b = Blkio::new("virtio-blk-vhost-user").map_err(blkio_err("new"))?;
    b.set_str("path", &args.path)
        .map_err(blkio_err("set path"))?;
    b.connect().map_err(blkio_err("connect"))?;
    b.set_i32("num-queues", args.queues as i32)
        .map_err(blkio_err("set num-queues"))?;
    let capacity = b.get_u64("capacity").map_err(blkio_err("get capacity"))?;
    let queues = b.start().map_err(blkio_err("start"))?.queues;

    let size = args.size.unwrap_or(capacity).min(capacity);
    let per_queue = if args.rw.is_random() {
        size
    } else {
        size / u64::from(args.queues)
    };
    if per_queue < args.bs {
        return Err(BenchError::Job(format!(
            "device of {capacity} bytes too small for bs {} × {} queues",
            args.bs, args.queues
        )));
    }

    let align = b
        .get_u64("mem-region-alignment")
        .map_err(blkio_err("get mem-region-alignment"))?
        .max(4096);
    let queue_bytes = args.bs * u64::from(args.iodepth);
    let total = (queue_bytes * u64::from(args.queues)).div_ceil(align) * align;
    let region: MemoryRegion = b
        .alloc_mem_region(total as usize)
        .map_err(blkio_err("alloc_mem_region"))?;
    b.map_mem_region(&region)
        .map_err(blkio_err("map_mem_region"))?;
    // SAFETY: alloc_mem_region returned a fresh read-write mapping of
    // region.len bytes at region.addr that nothing else references yet; no
    // request is in flight.
    let bytes = unsafe { std::slice::from_raw_parts_mut(region.addr as *mut u8, region.len) };
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31).wrapping_add(7);
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.runtime);
    let handles: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let first = if args.rw.is_random() {
                0
            } else {
                per_queue * i as u64
            };
            let job = QueueJob {
                rw: args.rw,
                bs: args.bs,
                iodepth: args.iodepth as usize,
                start: first,
                end: first + per_queue / args.bs * args.bs,
                buf: region.addr + i * queue_bytes as usize,
                deadline,
                once: args.once,
                seed: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
            };
            std::thread::spawn(move || run_queue(q, job))
        })
        .collect();
    join_queues(handles, start, capacity)
}

/// Waits for every queue's thread and adds up their counts; the first
/// error wins.
fn join_queues(
    handles: Vec<std::thread::JoinHandle<Result<QueueStats, BenchError>>>,
    start: Instant,
    capacity: u64,
) -> Result<Report, BenchError> {
    let mut report = Report {
        ios: 0,
        bytes: 0,
        secs: 0.0,
        capacity,
    };
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => {
                report.ios += s.ios;
                report.bytes += s.bytes;
            }
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(_) => first_error = first_error.or(Some(BenchError::Thread)),
        }
    }
    report.secs = start.elapsed().as_secs_f64();
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(r) => {
            let iops = r.ios as f64 / r.secs;
            let mib_s = r.bytes as f64 / r.secs / (1024.0 * 1024.0);
            println!(
                "{{\"path\":{:?},\"rw\":\"{}\",\"bs\":{},\"iodepth\":{},\"queues\":{},\"capacity\":{},\"seconds\":{:.3},\"ios\":{},\"bytes\":{},\"iops\":{:.1},\"mib_s\":{:.2}}}",
                args.path,
                args.rw.name(),
                args.bs,
                args.iodepth,
                args.queues,
                r.capacity,
                r.secs,
                r.ios,
                r.bytes,
                iops,
                mib_s
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("blkio-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
