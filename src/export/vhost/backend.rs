//! The vhost-user backend of one connection: implements the `&self`
//! [`VhostUserBackend`] trait with per-queue state, one worker thread per
//! queue, and no lock held across I/O.
//!
//! ```text
//!  kick ─► worker thread (queue i): pop chains under the vring lock, drop it
//!            └─► parse ─► push execute() on the queue's executor ──► Volume
//!  wake ─► worker thread (queue i): poll; a completed request: copy data in,
//!            status, add_used + needs_notification (vring lock), signal,
//!            in-flight count − 1
//!  GET_VRING_BASE / RESET_DEVICE ─► wait until the queue's in-flight count is 0
//! ```
//!
//! Descriptors: the wake-up eventfds are owned by the executors, and the
//! exit-event consumers the vhost-user event loop takes by number (it never
//! closes them) are owned by [`ExitFds`]; both close when the backend of a
//! connection drops, after the last worker thread is gone.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::device::{config_slice, DeviceSpec, MAX_QUEUE_SIZE, WCE_OFFSET};
use super::exec::{answer, execute, ExportContext, Status, QUEUE_POOL};
use super::executor::QueueExecutor;
use super::request::{parse, BlockRequest, ChainError, ParseError};
use crate::export::in_flight::InFlightRequests;
use crate::member::buf::BufPool;

/// Guest memory as the backend sees it (no dirty bitmap: logging is not offered).
pub type GuestMem = GuestMemoryMmap<()>;
/// The atomically swappable guest memory handed over by the frontend.
pub type AtomicMem = GuestMemoryAtomic<GuestMem>;
/// The vring type of the backend.
pub type Vring = VringRwLock<AtomicMem>;

/// How long a queue stop waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The exit-event consumers handed to the vhost-user event loop.
///
/// vhost-user-backend 0.24 (`VringEpollHandler::new`) takes each worker
/// thread's consumer with `into_raw_fd`, adds it to the thread's epoll set
/// and never closes it: one leaked eventfd per queue per connection. This
/// remembers each one by number, with a duplicate of it (its twin), and
/// closes the number when dropped — unless `kcmp(2)` says the number no
/// longer refers to the twin's file (a later library closing it itself,
/// and the number reused), which would make closing it someone else's loss.
#[derive(Debug, Default)]
pub struct ExitFds(Mutex<Vec<(RawFd, EventConsumer)>>);

impl ExitFds {
    /// Remembers a consumer about to be handed over.
    pub(super) fn adopt(&self, consumer: &EventConsumer) -> io::Result<()> {
        let twin = consumer.try_clone()?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((consumer.as_raw_fd(), twin));
        Ok(())
    }
}

/// `kcmp(2)` `KCMP_FILE`: whether two descriptors of this process share
/// one open file; `None` if the kernel will not say.
pub(super) fn same_file(a: RawFd, b: RawFd) -> Option<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: getpid has no preconditions.
    let pid = libc::c_long::from(unsafe { libc::getpid() });
    // SAFETY: kcmp compares two descriptor numbers of our own process and
    // touches no memory; invalid numbers only make it fail with EBADF.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(a),
            libc::c_long::from(b),
        )
    };
    match rc {
        0 => Some(true),
        1..=2 => Some(false),
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF) => Some(false),
        _ => None,
    }
}

impl Drop for ExitFds {
    fn drop(&mut self) {
        for (fd, twin) in self
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            if same_file(fd, twin.as_raw_fd()) == Some(false) {
                warn!("exit eventfd {fd} was closed by someone else; leaving the number alone");
                continue;
            }
            // SAFETY: `fd` is an exit-event consumer the event loop took
            // over with `into_raw_fd` and never closes (it still refers to
            // the twin's file, or the kernel cannot tell and the pinned
            // library version is known not to close it); the backend drops
            // after every epoll handler (each holds an `Arc` of it), so no
            // worker thread or epoll set uses it any more.
            unsafe { libc::close(fd) };
        }
    }
}

/// The backend of one frontend connection.
pub struct BlkBackend {
    ctx: Arc<ExportContext>,
    runtime: tokio::runtime::Handle,
    mem: RwLock<Option<AtomicMem>>,
    event_idx: AtomicBool,
    /// Each queue's requests popped and not yet put on the used ring.
    queues: Vec<Arc<InFlightRequests>>,
    /// Each queue's bounce buffers.
    pools: Vec<Arc<BufPool>>,
    executors: Vec<QueueExecutor>,
    exit_fds: ExitFds,
    /// Chains refused as malformed so far (logged at warn level at 1, 2,
    /// 4, 8...: a hostile guest cannot flood the log).
    bad_chains: AtomicU64,
}

impl std::fmt::Debug for BlkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkBackend")
            .field("ctx", &self.ctx)
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl BlkBackend {
    /// A backend for `ctx` whose requests run in `runtime`'s context.
    pub fn new(ctx: Arc<ExportContext>, runtime: tokio::runtime::Handle) -> io::Result<BlkBackend> {
        let n = usize::from(ctx.spec.num_queues);
        Ok(BlkBackend {
            ctx,
            runtime,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            queues: (0..n)
                .map(|_| Arc::new(InFlightRequests::default()))
                .collect(),
            pools: (0..n).map(|_| BufPool::new(QUEUE_POOL)).collect(),
            executors: (0..n)
                .map(|_| QueueExecutor::new())
                .collect::<io::Result<_>>()?,
            exit_fds: ExitFds::default(),
            bad_chains: AtomicU64::new(0),
        })
    }

    /// The epoll event id of queue `index`'s completion wake-ups: above the
    /// ids the vhost-user event loop reserves (queues, then exit).
    fn wake_event(&self, index: usize) -> u64 {
        (self.queues.len() + 1 + index) as u64
    }

    /// Registers each queue's wake-up eventfd with the worker thread that
    /// serves the queue (thread `i` serves queue `i`).
    pub fn register_wakers(
        &self,
        handlers: &[Arc<vhost_user_backend::VringEpollHandler<Arc<BlkBackend>>>],
    ) -> io::Result<()> {
        for (index, exec) in self.executors.iter().enumerate() {
            let handler = handlers
                .get(index)
                .ok_or_else(|| io::Error::other(format!("no worker thread for queue {index}")))?;
            handler.register_listener(exec.wake_fd(), EventSet::IN, self.wake_event(index))?;
        }
        Ok(())
    }

    /// Requests in flight on every queue.
    pub fn in_flight(&self) -> usize {
        self.queues.iter().map(|q| q.get()).sum()
    }

    /// Waits for every queue to drain; false on timeout.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.queues
            .iter()
            .all(|q| q.wait_idle(deadline.saturating_duration_since(Instant::now())))
    }

    /// Pops every available chain and starts it.
    fn process_queue(&self, index: usize, vring: &Vring) {
        let Some(atomic) = self.mem.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let mem = atomic.memory().into_inner();
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            std::iter::from_fn(|| queue.pop_descriptor_chain(mem.clone())).collect()
        };
        for chain in chains {
            let head = chain.head_index();
            let guard = self.queues[index].begin();
            match parse_whole(&mem, chain) {
                Ok(req) => {
                    let ctx = self.ctx.clone();
                    let pool = self.pools[index].clone();
                    let mem = mem.clone();
                    let vring = vring.clone();
                    self.executors[index].push(crate::block::BoxFuture::new(async move {
                        let (status, data_in) = execute(&ctx, &pool, &mem, &req).await;
                        let used = answer(&*mem, req.status, status, data_in);
                        complete(&vring, head, used);
                        drop(guard);
                    }));
                }
                Err(e) => {
                    self.log_bad_chain(index, head, &e);
                    let used = e
                        .status
                        .map_or(0, |addr| answer(&*mem, addr, Status::IOERR, 0));
                    complete(vring, head, used);
                    drop(guard);
                }
            }
        }
    }
}

impl BlkBackend {
    /// Logs a refused chain: warn at the 1st, 2nd, 4th, 8th... of the
    /// connection, debug otherwise.
    fn log_bad_chain(&self, index: usize, head: u16, e: &ChainError) {
        let n = self.bad_chains.fetch_add(1, Ordering::Relaxed) + 1;
        let answer = if e.status.is_some() {
            "answered IOERR"
        } else {
            "returned without a status (none found)"
        };
        let name = &self.ctx.spec.name;
        if n.is_power_of_two() {
            warn!("{name}: malformed request on queue {index} (head {head}), {answer}: {e} ({n} so far)");
        } else {
            debug!("{name}: malformed request on queue {index} (head {head}), {answer}: {e}");
        }
    }
}

/// Parses a popped chain, refusing one cut short: virtio-queue's iterator
/// ends a chain silently when it loops (more descriptors than the queue
/// size), links past the table, passes 4 GiB in total, or has a bad
/// indirect table. Its last descriptor then still says NEXT; what it
/// yielded must not run as a request (QEMU marks such a device broken; we
/// answer IOERR to the last writable byte seen, if any, and go on).
fn parse_whole<I>(mem: &GuestMem, chain: I) -> Result<BlockRequest, ChainError>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut cut = false;
    let parsed = parse(mem, chain.inspect(|d| cut = d.has_next()));
    match parsed {
        Ok(req) if cut => Err(ChainError {
            status: Some(req.status),
            kind: ParseError::Truncated,
        }),
        Err(e) if cut && e.kind != ParseError::TooManyDescriptors => Err(ChainError {
            status: e.status,
            kind: ParseError::Truncated,
        }),
        other => other,
    }
}

/// Puts a chain on the used ring and signals the driver if it wants it.
/// The vring lock is held only for the ring update, never for the signal.
fn complete(vring: &Vring, head: u16, used: u32) {
    let notify = {
        let mut state = vring.get_mut();
        if let Err(e) = state.add_used(head, used) {
            warn!("cannot add used descriptor {head}: {e}");
            return;
        }
        state.needs_notification().unwrap_or(true)
    };
    if notify {
        if let Err(e) = vring.signal_used_queue() {
            debug!("cannot signal the used queue: {e}");
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.queues.len()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.ctx.spec.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        DeviceSpec::protocol_features()
    }

    fn reset_device(&self) {
        if !self.drain(DRAIN_TIMEOUT) {
            warn!(
                "{}: device reset with requests still in flight",
                self.ctx.spec.name
            );
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self
            .ctx
            .spec
            .config_space(self.ctx.writeback.load(Ordering::Relaxed));
        config_slice(&space, offset, size).unwrap_or_default()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        match (offset as usize, buf) {
            (WCE_OFFSET, [wce]) => {
                self.ctx.writeback.store(*wce != 0, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only the wce byte of the config space is writable",
            )),
        }
    }

    fn update_memory(&self, mem: AtomicMem) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.queues.len()).map(|i| 1u64 << i).collect()
    }

    /// A fresh exit event for a worker thread. The caller must keep the
    /// consumer's descriptor open and not close it (the event loop turns it
    /// into a raw fd and forgets it): the backend closes it when it drops.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        self.exit_fds.adopt(&consumer).ok()?;
        Some((consumer, notifier))
    }

    fn stop_vring(&self, index: u32) -> io::Result<()> {
        let Some(queue) = self.queues.get(index as usize) else {
            return Ok(());
        };
        if queue.wait_idle(DRAIN_TIMEOUT) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("queue {index} did not drain within {DRAIN_TIMEOUT:?}"),
            ))
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn!("{}: unexpected event set {evset:?}", self.ctx.spec.name);
            return Ok(());
        }
        let index = usize::from(device_event);
        let _runtime = self.runtime.enter();
        let n = self.queues.len();
        if index > n && index - n - 1 < n {
            self.executors[index - n - 1].run();
            return Ok(());
        }
        let Some(vring) = vrings.get(index) else {
            warn!("{}: event for unknown queue {index}", self.ctx.spec.name);
            return Ok(());
        };
        if !self.event_idx.load(Ordering::Relaxed) {
            self.process_queue(index, vring);
            self.executors[index].run();
            return Ok(());
        }
        // EVENT_IDX: suppress kicks while draining, re-enable, and look again
        // for chains that raced with the re-enable. A ring the guest placed
        // outside its memory ends the loop; the worker thread stays alive.
        loop {
            if let Err(e) = vring.disable_notification() {
                debug!("{}: queue {index}: {e}", self.ctx.spec.name);
            }
            self.process_queue(index, vring);
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    debug!("{}: queue {index}: {e}", self.ctx.spec.name);
                    break;
                }
            }
        }
        self.executors[index].run();
        Ok(())
    }
}
