//! One request, from its parsed header (and WRITE payload) to its reply:
//! validation, the volume call, and the reply as header + data, ready to
//! be written with one `writev` and never copied.
//!
//! ```text
//!  Request + payload ─► validate ─► volume call, in pieces of DEVICE_PIECE
//!                                   (each holding its size of DEVICE_BUDGET)
//!                    ─► Reply { head (≤ 28 bytes), body (READ data) , charge }
//! ```
//!
//! A request runs as a future on its connection's task; its bytes
//! ([`Charge`]) go back when its reply is dropped, after the body.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::catalog::Export;
use super::limits::DEVICE_PIECE;
use super::proto::{self, errno, Command, Request};
use super::transmission::nbd_error;
use crate::block::{BlockError, Durability};
use crate::export::in_flight::InFlightRequest;
use crate::member::buf::AlignedBuf;
use crate::qos::Direction;
use crate::units::ByteOffset;

/// What every request of a connection needs, shared by its futures.
#[derive(Debug)]
pub(super) struct Context {
    /// The export chosen during the handshake.
    pub export: Arc<Export>,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// The metadata contexts selected for `NBD_CMD_BLOCK_STATUS`.
    pub meta: super::meta::Selection,
    /// The server-wide budget of bytes in the volume at once
    /// ([`super::limits::DEVICE_BUDGET`]).
    pub device_budget: Arc<Semaphore>,
}

/// The bytes a READ or WRITE holds from its connection's pool and the
/// server's until its reply is written.
#[derive(Debug, Default)]
pub(super) struct Charge {
    /// Bytes of the connection's pool (a count the connection keeps).
    pub connection: u64,
    /// The server pool's permit, held until dropped.
    pub _server: Option<OwnedSemaphorePermit>,
}

/// A payload: READ or WRITE data in an aligned buffer (the members read
/// and write it in place, `member::file`), or encoded bytes (an error
/// chunk).
#[derive(Debug)]
pub(super) enum Body {
    /// Encoded bytes.
    Plain(Vec<u8>),
    /// Data in an O_DIRECT-aligned buffer.
    Data(AlignedBuf),
}

impl Body {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Body::Plain(v) => v,
            Body::Data(b) => b.as_slice(),
        }
    }
}

/// An encoded reply: `head` then `body`, written as they are.
#[derive(Debug)]
pub(super) struct Reply {
    head: [u8; proto::OFFSET_DATA_PREFIX],
    head_len: u8,
    /// READ data, or a whole structured error chunk.
    body: Body,
    /// Dropped after `body` (fields drop in order): the bytes go back
    /// once the memory is free.
    pub charge: Charge,
}

impl Reply {
    fn new(head: &[u8], body: Vec<u8>) -> Reply {
        Reply::with_body(head, Body::Plain(body))
    }

    fn with_body(head: &[u8], body: Body) -> Reply {
        let mut h = [0u8; proto::OFFSET_DATA_PREFIX];
        h[..head.len()].copy_from_slice(head);
        Reply {
            head: h,
            head_len: head.len() as u8,
            body,
            charge: Charge::default(),
        }
    }

    /// The header bytes.
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// The bytes after the header.
    pub fn body(&self) -> &[u8] {
        self.body.as_slice()
    }

    /// The header, and the body as a piece: READ data mutable.
    pub fn parts_mut(&mut self) -> (&[u8], crate::tls::Piece<'_>) {
        let body = match &mut self.body {
            Body::Plain(v) => crate::tls::Piece::Copy(v),
            Body::Data(b) => crate::tls::Piece::InPlace(b.as_mut_slice()),
        };
        (&self.head[..usize::from(self.head_len)], body)
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        usize::from(self.head_len) + self.body().len()
    }
}

/// A failed request: NBD error value and a message for the client.
#[derive(Debug)]
struct Failure {
    error: u32,
    message: String,
}

impl Failure {
    fn new(error: u32, message: impl Into<String>) -> Self {
        Failure {
            error,
            message: message.into(),
        }
    }
}

impl From<BlockError> for Failure {
    fn from(e: BlockError) -> Self {
        Failure::new(nbd_error(&e), e.to_string())
    }
}

/// Runs one request and gives its reply, holding `charge` (and the
/// server's in-flight count) until the reply is dropped.
pub(super) async fn serve(
    ctx: Arc<Context>,
    req: Request,
    payload: Option<AlignedBuf>,
    charge: Charge,
    _in_flight: InFlightRequest,
) -> Reply {
    let result = match validate(&ctx, &req) {
        Ok(()) => perform(&ctx, &req, payload).await,
        Err(f) => Err(f),
    };
    let mut reply = match result {
        Ok(reply) => reply,
        Err(f) => {
            tracing::debug!(cookie = req.cookie, error = f.error, message = %f.message, "NBD request failed");
            error_reply(ctx.structured, req.cookie, &f)
        }
    };
    reply.charge = charge;
    reply
}

fn validate(ctx: &Context, req: &Request) -> Result<(), Failure> {
    let cmd = req.command;
    if let Command::Unknown(code) = cmd {
        return Err(Failure::new(
            errno::EINVAL,
            format!("unknown command {code}"),
        ));
    }
    let df_ok = ctx.structured || req.flags & proto::CMD_FLAG_DF == 0;
    if req.flags & !cmd.allowed_flags() != 0 || !df_ok {
        let msg = format!("flags {:#x} not valid for {cmd:?}", req.flags);
        return Err(Failure::new(errno::EINVAL, msg));
    }
    let writes = matches!(cmd, Command::Write | Command::Trim | Command::WriteZeroes);
    if writes && ctx.export.read_only {
        return Err(Failure::new(errno::EPERM, "export is read-only"));
    }
    if cmd == Command::Read && req.length > proto::MAX_PAYLOAD {
        let error = if req.flags & proto::CMD_FLAG_DF != 0 {
            errno::EOVERFLOW
        } else {
            errno::EINVAL
        };
        return Err(Failure::new(
            error,
            "read larger than the maximum block size",
        ));
    }
    if cmd == Command::BlockStatus {
        check_block_status(ctx, req)?;
    }
    if matches!(
        cmd,
        Command::Read
            | Command::Write
            | Command::Trim
            | Command::WriteZeroes
            | Command::Cache
            | Command::BlockStatus
    ) {
        check_range(ctx, req)?;
    }
    Ok(())
}

/// What a block status reply may hold: one chunk per selected context of
/// at most `MAX_DESCRIPTORS` descriptors; charged like a READ of as many
/// bytes (two contexts' worth).
pub(super) const BLOCK_STATUS_BYTES: u32 = 2 * (super::meta::MAX_DESCRIPTORS as u32 * 8 + 64);

fn check_block_status(ctx: &Context, req: &Request) -> Result<(), Failure> {
    if !ctx.structured || ctx.meta.is_empty() {
        let msg = "no metadata context selected (NBD_OPT_SET_META_CONTEXT)";
        return Err(Failure::new(errno::EINVAL, msg));
    }
    if req.length == 0 {
        return Err(Failure::new(errno::EINVAL, "block status of 0 bytes"));
    }
    Ok(())
}

/// One `BLOCK_STATUS` chunk per selected context, the last one DONE.
async fn block_status(ctx: &Context, req: &Request) -> Result<Reply, Failure> {
    let req_one = req.flags & proto::CMD_FLAG_REQ_ONE != 0;
    let count = ctx.meta.iter().count();
    let mut body = Vec::new();
    for (i, (id, context)) in ctx.meta.iter().enumerate() {
        let extents = context.extents(req.offset, u64::from(req.length)).await?;
        let wire = super::meta::descriptors(&extents, req.length, req_one);
        if wire.is_empty() {
            let msg = format!("context {} gave no extent", context.name());
            return Err(Failure::new(errno::EIO, msg));
        }
        proto::encode_block_status(&mut body, req.cookie, *id, &wire, i + 1 == count);
    }
    Ok(Reply::new(&[], body))
}

fn check_range(ctx: &Context, req: &Request) -> Result<(), Failure> {
    let size = ctx.export.device.size();
    let end = req.offset.checked_add(u64::from(req.length));
    if end.is_some_and(|end| end <= size) {
        return Ok(());
    }
    let error = if matches!(req.command, Command::Write | Command::WriteZeroes) {
        errno::ENOSPC
    } else {
        errno::EINVAL
    };
    let msg = format!(
        "request at {} of {} bytes is past the end of the export ({size} bytes)",
        req.offset, req.length
    );
    Err(Failure::new(error, msg))
}

async fn perform(
    ctx: &Context,
    req: &Request,
    payload: Option<AlignedBuf>,
) -> Result<Reply, Failure> {
    let dev = &ctx.export.device;
    let offset = ByteOffset(req.offset);
    let len = u64::from(req.length);
    let fua = req.flags & proto::CMD_FLAG_FUA != 0;
    match req.command {
        Command::Read => return read(ctx, req).await,
        Command::BlockStatus => return block_status(ctx, req).await,
        Command::Write => {
            let durability = if fua {
                Durability::Fua
            } else {
                Durability::Normal
            };
            let data = payload.as_ref().map_or(&[][..], AlignedBuf::as_slice);
            write(ctx, req.offset, data, durability).await?;
            drop(payload);
        }
        Command::Flush => dev.flush().await?,
        Command::Trim => {
            if len > 0 {
                dev.discard(offset, len).await?;
                if fua {
                    dev.flush().await?;
                }
            }
        }
        Command::WriteZeroes => {
            if len > 0 {
                let may_unmap = req.flags & proto::CMD_FLAG_NO_HOLE == 0;
                dev.write_zeroes(offset, len, may_unmap).await?;
                if fua {
                    dev.flush().await?;
                }
            }
        }
        // Range already validated; there is no cache to warm.
        Command::Cache => {}
        Command::Disconnect | Command::Unknown(_) => {
            return Err(Failure::new(errno::EINVAL, "unexpected command"));
        }
    }
    Ok(Reply::new(&proto::simple_reply(req.cookie, 0), Vec::new()))
}

/// Takes `len` bytes of the device budget for one piece.
async fn piece_permit(
    ctx: &Context,
    len: usize,
) -> Result<tokio::sync::SemaphorePermit<'_>, Failure> {
    // A piece is at most DEVICE_PIECE, far below u32::MAX and the budget.
    ctx.device_budget
        .acquire_many(len as u32)
        .await
        .map_err(|_| Failure::new(errno::ESHUTDOWN, "server shutting down"))
}

/// Waits for the volume's QoS to admit a piece of `len` bytes: when the
/// wait began (for the latency histogram; `None` without limits) and the
/// piece's place in flight, held until it has ended.
async fn admit(
    ctx: &Context,
    dir: Direction,
    len: usize,
) -> (
    Option<std::time::Instant>,
    Option<crate::qos::Admission<'_>>,
) {
    match ctx.export.device.admit(dir, len as u64) {
        Some(wait) => {
            let since = std::time::Instant::now();
            (Some(since), Some(wait.await))
        }
        None => (None, None),
    }
}

/// Writes `data` at `at`, one piece at a time.
async fn write(ctx: &Context, at: u64, data: &[u8], d: Durability) -> Result<(), Failure> {
    let mut pos = at;
    let dev = &ctx.export.device;
    for piece in data.chunks(DEVICE_PIECE) {
        // QoS first: a throttled request must not sit on the budget.
        let (since, _in_flight) = admit(ctx, Direction::Write, piece.len()).await;
        let _budget = piece_permit(ctx, piece.len()).await?;
        let op = async { dev.write(ByteOffset(pos), piece, d).await };
        crate::qos::prepaid_since(since, op).await?;
        pos += piece.len() as u64;
    }
    Ok(())
}

/// Reads into the reply's data buffer, one piece at a time; the header is
/// a separate array, so the data is written to the socket where it lies.
async fn read(ctx: &Context, req: &Request) -> Result<Reply, Failure> {
    if req.length == 0 {
        return Ok(if ctx.structured {
            let none = proto::chunk_header(
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_NONE,
                req.cookie,
                0,
            );
            Reply::new(&none, Vec::new())
        } else {
            Reply::new(&proto::simple_reply(req.cookie, 0), Vec::new())
        });
    }
    // Aligned: a member reads into it in place when the request is aligned.
    let mut data = AlignedBuf::new(req.length as usize);
    let mut pos = req.offset;
    let dev = &ctx.export.device;
    for piece in data.as_mut_slice().chunks_mut(DEVICE_PIECE) {
        let (since, _in_flight) = admit(ctx, Direction::Read, piece.len()).await;
        let _budget = piece_permit(ctx, piece.len()).await?;
        let op = async { dev.read(ByteOffset(pos), piece).await };
        crate::qos::prepaid_since(since, op).await?;
        pos += piece.len() as u64;
    }
    if !ctx.structured {
        let head = proto::simple_reply(req.cookie, 0);
        return Ok(Reply::with_body(&head, Body::Data(data)));
    }
    let head = proto::offset_data_header(req.cookie, req.offset, data.len(), true)
        .ok_or_else(|| Failure::new(errno::EINVAL, "read too large for one chunk"))?;
    Ok(Reply::with_body(&head, Body::Data(data)))
}

/// The EIO reply of a request whose future panicked; its server bytes
/// went back in the unwinding, `connection` bytes go back with the reply.
pub(super) fn panicked(cookie: u64, structured: bool, connection: u64) -> Reply {
    let f = Failure::new(errno::EIO, "internal error");
    let mut reply = error_reply(structured, cookie, &f);
    reply.charge.connection = connection;
    reply
}

fn error_reply(structured: bool, cookie: u64, f: &Failure) -> Reply {
    if structured {
        let mut chunk = Vec::new();
        proto::encode_error_chunk(&mut chunk, cookie, f.error, &f.message);
        Reply::new(&[], chunk)
    } else {
        Reply::new(&proto::simple_reply(cookie, f.error), Vec::new())
    }
}
