//! Parsers of the bytes an NBD server sends, for the client: the greeting,
//! option replies and their `NBD_REP_INFO` payloads, simple and structured
//! transmission replies. Pure functions on byte slices (fuzzed by
//! `fuzz/fuzz_targets/nbd_server_bytes.rs`); the constants are the
//! server's (`export::nbd::proto`).
//!
//! A hostile server gets an error, never a panic and never an allocation
//! it chose: every length is checked against what the client asked for.

use crate::export::nbd::proto;
use crate::export::nbd::reader::Reader;

/// Bytes of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option reply header.
pub const OPTION_REPLY_LEN: usize = 20;
/// Largest option reply payload the client reads.
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// Malformed or unexpected bytes from a server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    /// The greeting's magics are wrong (not an NBD newstyle server).
    #[error("not an NBD newstyle server (greeting magic {0:#018x})")]
    BadGreeting(u64),
    /// The server does not speak fixed newstyle.
    #[error("the server does not offer fixed newstyle negotiation")]
    NotFixedNewstyle,
    /// An option reply had the wrong magic.
    #[error("bad option reply magic {0:#018x}")]
    BadOptionReplyMagic(u64),
    /// An option reply answers another option than the one sent.
    #[error("option reply for option {got}, expected {expected}")]
    WrongOption {
        /// Option sent.
        expected: u32,
        /// Option answered.
        got: u32,
    },
    /// An option reply payload is larger than the client accepts.
    #[error("option reply of {0} bytes is too large")]
    OptionReplyTooLarge(u32),
    /// A transmission reply had an unknown magic.
    #[error("bad reply magic {0:#010x}")]
    BadReplyMagic(u32),
    /// A payload ended before a field it announced.
    #[error("{0} is truncated")]
    Truncated(&'static str),
    /// A payload's length is wrong for its type.
    #[error("{0} has a bad length")]
    BadLength(&'static str),
    /// A chunk's data lies outside the request it answers.
    #[error("reply data at {offset}+{len} is outside the request")]
    OutOfRequest {
        /// Offset the server named.
        offset: u64,
        /// Bytes it sent.
        len: u64,
    },
    /// A READ reply's chunks overlap.
    #[error("reply chunks overlap")]
    Overlap,
    /// A READ reply ended before it covered the whole request.
    #[error("reply to {0:#x} ended before all the data asked for")]
    ShortRead(u64),
    /// A reply names a handle no request is waiting for.
    #[error("reply for unknown handle {0:#x}")]
    UnknownHandle(u64),
    /// Block size constraints that make no sense.
    #[error("invalid block sizes min {min} preferred {preferred} max {max}")]
    BadBlockSizes {
        /// Minimum.
        min: u32,
        /// Preferred.
        preferred: u32,
        /// Maximum.
        max: u32,
    },
    /// A structured reply the client did not negotiate, or a chunk a
    /// command cannot have.
    #[error("unexpected {0}")]
    Unexpected(&'static str),
}

/// Parses the 18-byte greeting; returns the handshake flags.
pub fn parse_greeting(buf: &[u8; GREETING_LEN]) -> Result<u16, ReplyError> {
    let mut r = Reader::new(buf, "greeting");
    let magic = r.u64()?;
    let opt = r.u64()?;
    if magic != proto::NBDMAGIC || opt != proto::IHAVEOPT {
        return Err(ReplyError::BadGreeting(if magic != proto::NBDMAGIC {
            magic
        } else {
            opt
        }));
    }
    let flags = r.u16()?;
    if flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ReplyError::NotFixedNewstyle);
    }
    Ok(flags)
}

/// The fixed part of an option reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReply {
    /// Reply type (`REP_*`).
    pub kind: u32,
    /// Payload bytes that follow.
    pub length: u32,
}

impl OptionReply {
    /// True for the `NBD_REP_ERR_*` types.
    pub fn is_error(&self) -> bool {
        self.kind & (1 << 31) != 0
    }
}

/// Parses an option reply header answering `option`.
pub fn parse_option_reply(
    buf: &[u8; OPTION_REPLY_LEN],
    option: u32,
) -> Result<OptionReply, ReplyError> {
    let mut r = Reader::new(buf, "option reply");
    let magic = r.u64()?;
    if magic != proto::OPTION_REPLY_MAGIC {
        return Err(ReplyError::BadOptionReplyMagic(magic));
    }
    let got = r.u32()?;
    if got != option {
        return Err(ReplyError::WrongOption {
            expected: option,
            got,
        });
    }
    let reply = OptionReply {
        kind: r.u32()?,
        length: r.u32()?,
    };
    if reply.length > MAX_OPTION_REPLY {
        return Err(ReplyError::OptionReplyTooLarge(reply.length));
    }
    Ok(reply)
}

/// Block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Minimum block size: offsets and lengths are multiples of it.
    pub min: u32,
    /// Preferred block size.
    pub preferred: u32,
    /// Largest payload of one request.
    pub max: u32,
}

impl Default for BlockSizes {
    /// What a server that sends none allows (the protocol's defaults,
    /// max capped at 32 MiB).
    fn default() -> Self {
        BlockSizes {
            min: 1,
            preferred: 4096,
            max: 32 << 20,
        }
    }
}

/// One `NBD_REP_INFO` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSizes),
    /// Any other information type (ignored).
    Other(u16),
}

/// Parses an `NBD_REP_INFO` payload.
pub fn parse_info(payload: &[u8]) -> Result<Info, ReplyError> {
    let mut r = Reader::new(payload, "NBD_REP_INFO");
    match r.u16()? {
        proto::INFO_EXPORT => {
            let info = Info::Export {
                size: r.u64()?,
                flags: r.u16()?,
            };
            r.finish()?;
            Ok(info)
        }
        proto::INFO_BLOCK_SIZE => {
            let sizes = BlockSizes {
                min: r.u32()?,
                preferred: r.u32()?,
                max: r.u32()?,
            };
            r.finish()?;
            check_block_sizes(sizes).map(Info::BlockSize)
        }
        other => Ok(Info::Other(other)),
    }
}

/// The protocol's rules: powers of two, min ≤ 64 KiB, min ≤ preferred,
/// min ≤ max (max need not be a power of two but a multiple of min, or
/// 0xffffffff for "no limit", as nbdkit's blocksize-policy filter sends).
fn check_block_sizes(s: BlockSizes) -> Result<BlockSizes, ReplyError> {
    let ok = s.min.is_power_of_two()
        && s.min <= 64 * 1024
        && s.preferred.is_power_of_two()
        && s.preferred >= s.min
        && (s.max == u32::MAX || s.max >= s.min && s.max.is_multiple_of(s.min));
    if ok {
        Ok(s)
    } else {
        Err(ReplyError::BadBlockSizes {
            min: s.min,
            preferred: s.preferred,
            max: s.max,
        })
    }
}

/// The first four bytes of a transmission reply decide its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// A simple reply: 12 more header bytes.
    Simple,
    /// A structured reply chunk: 16 more header bytes.
    Structured,
}

impl ReplyKind {
    /// Bytes of the whole header of this kind.
    pub fn header_len(self) -> usize {
        match self {
            ReplyKind::Simple => proto::SIMPLE_REPLY_LEN,
            ReplyKind::Structured => proto::CHUNK_HEADER_LEN,
        }
    }
}

/// Decodes the reply magic.
pub fn reply_kind(magic: [u8; 4]) -> Result<ReplyKind, ReplyError> {
    match u32::from_be_bytes(magic) {
        proto::SIMPLE_REPLY_MAGIC => Ok(ReplyKind::Simple),
        proto::STRUCTURED_REPLY_MAGIC => Ok(ReplyKind::Structured),
        other => Err(ReplyError::BadReplyMagic(other)),
    }
}

/// A transmission reply header, simple or structured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    /// Handle of the request it answers.
    pub handle: u64,
    /// Simple reply error (0 for a structured chunk).
    pub error: u32,
    /// Chunk flags (`REPLY_FLAG_DONE` set on a simple reply).
    pub flags: u16,
    /// Chunk type (`REPLY_TYPE_NONE` for a simple reply).
    pub kind: u16,
    /// Chunk payload length (0 for a simple reply: READ data follows it
    /// with the request's length).
    pub length: u32,
    /// Whether it was a structured chunk.
    pub structured: bool,
}

impl ReplyHeader {
    /// Whether this is the last chunk of its reply.
    pub fn done(&self) -> bool {
        self.flags & proto::REPLY_FLAG_DONE != 0
    }
}

/// Parses a whole reply header (magic included; its length is
/// [`ReplyKind::header_len`]).
pub fn parse_reply_header(buf: &[u8]) -> Result<ReplyHeader, ReplyError> {
    let mut r = Reader::new(buf, "reply header");
    let kind = reply_kind(r.array()?)?;
    let header = match kind {
        ReplyKind::Simple => {
            let error = r.u32()?;
            ReplyHeader {
                handle: r.u64()?,
                error,
                flags: proto::REPLY_FLAG_DONE,
                kind: proto::REPLY_TYPE_NONE,
                length: 0,
                structured: false,
            }
        }
        ReplyKind::Structured => {
            let flags = r.u16()?;
            let kind = r.u16()?;
            ReplyHeader {
                handle: r.u64()?,
                error: 0,
                flags,
                kind,
                length: r.u32()?,
                structured: true,
            }
        }
    };
    r.finish()?;
    Ok(header)
}

/// Structured reply type: a hole (reads back as zeroes).
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Structured reply type: error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// Parses an error chunk payload: u32 error, u16 message length, message
/// (and for `ERROR_OFFSET` an offset after it). Returns the error value.
pub fn parse_error_payload(payload: &[u8]) -> Result<u32, ReplyError> {
    let mut r = Reader::new(payload, "error chunk");
    let error = r.u32()?;
    let len = r.u16()? as usize;
    r.bytes(len)?;
    Ok(error)
}

/// Parses an `OFFSET_HOLE` payload: offset and hole length.
pub fn parse_hole(payload: &[u8]) -> Result<(u64, u32), ReplyError> {
    let mut r = Reader::new(payload, "OFFSET_HOLE chunk");
    let hole = (r.u64()?, r.u32()?);
    r.finish()?;
    Ok(hole)
}

/// Where `len` bytes the server put at `offset` land in the buffer of a
/// request at `request_offset` of `request_len` bytes.
pub fn place(
    offset: u64,
    len: u64,
    request_offset: u64,
    request_len: u64,
) -> Result<std::ops::Range<usize>, ReplyError> {
    let start = offset.checked_sub(request_offset);
    let end = start.and_then(|s| s.checked_add(len));
    match (start, end) {
        (Some(s), Some(e)) if e <= request_len => Ok(s as usize..e as usize),
        _ => Err(ReplyError::OutOfRequest { offset, len }),
    }
}

impl From<crate::export::nbd::reader::ReadError> for ReplyError {
    fn from(e: crate::export::nbd::reader::ReadError) -> Self {
        use crate::export::nbd::reader::ReadError;
        match e {
            ReadError::Truncated(w) => ReplyError::Truncated(w),
            ReadError::Trailing(w) => ReplyError::BadLength(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_servers_greeting_parses() {
        let flags = parse_greeting(&proto::greeting()).unwrap();
        assert_ne!(flags & proto::FLAG_NO_ZEROES, 0);
        let mut bad = proto::greeting();
        bad[0] = 0;
        assert!(parse_greeting(&bad).is_err());
    }

    #[test]
    fn our_servers_option_replies_and_infos_parse() {
        let mut out = Vec::new();
        let payload = proto::info_block_size_payload(512, 4096, 1 << 20);
        proto::encode_option_reply(&mut out, proto::OPT_GO, proto::REP_INFO, &payload);
        let head: [u8; OPTION_REPLY_LEN] = out[..20].try_into().unwrap();
        let reply = parse_option_reply(&head, proto::OPT_GO).unwrap();
        assert_eq!(reply.kind, proto::REP_INFO);
        assert!(parse_option_reply(&head, proto::OPT_LIST).is_err());
        assert_eq!(
            parse_info(&out[20..]),
            Ok(Info::BlockSize(BlockSizes {
                min: 512,
                preferred: 4096,
                max: 1 << 20
            }))
        );
        assert_eq!(
            parse_info(&proto::info_export_payload(7, 3)),
            Ok(Info::Export { size: 7, flags: 3 })
        );
        assert!(parse_info(&proto::info_block_size_payload(3, 4096, 4096)).is_err());
        // Red team: "no maximum" is 0xffffffff, not a multiple of min.
        let no_max = proto::info_block_size_payload(4096, 4096, u32::MAX);
        assert!(parse_info(&no_max).is_ok());
        assert!(parse_info(&proto::info_block_size_payload(4096, 4096, 6144)).is_err());
    }

    #[test]
    fn our_servers_reply_headers_parse() {
        let simple = parse_reply_header(&proto::simple_reply(9, 5)).unwrap();
        assert_eq!(
            (simple.handle, simple.error, simple.structured),
            (9, 5, false)
        );
        let mut out = Vec::new();
        proto::encode_error_chunk(&mut out, 4, proto::errno::EIO, "boom");
        let chunk = parse_reply_header(&out[..20]).unwrap();
        assert_eq!(
            (chunk.handle, chunk.kind, chunk.done()),
            (4, proto::REPLY_TYPE_ERROR, true)
        );
        assert_eq!(parse_error_payload(&out[20..]), Ok(proto::errno::EIO));
    }

    #[test]
    fn data_outside_the_request_is_refused() {
        assert_eq!(place(4096, 512, 4096, 4096), Ok(0..512));
        assert!(place(0, 1, 4096, 4096).is_err());
        assert!(place(8000, 200, 4096, 4096).is_err());
        assert!(place(u64::MAX, 2, 4096, 4096).is_err());
    }
}
