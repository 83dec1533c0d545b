//! NBD wire format: constants, parsers and encoders, with no I/O.
//!
//! Everything here works on byte slices so that the fuzz targets in `fuzz/`
//! can call it directly. Values follow the NBD protocol document
//! (`doc/proto.md` of NetworkBlockDevice/nbd); all integers are big-endian.
//!
//! ```text
//! handshake:    S greeting ─► C client flags ─► (C option ─► S option replies)*
//! transmission: C request [payload] ─► S simple reply | structured chunks
//! ```

use super::reader::Reader;

/// `NBDMAGIC`, first word of the server greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second word of the greeting and the magic of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the client may ask us to skip the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option: choose an export and enter transmission (no error reply possible).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: soft disconnect.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: start TLS (unsupported here).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: negotiate structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select metadata contexts for `NBD_CMD_BLOCK_STATUS`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option: extended headers (unsupported here).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply: success / end of a list.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of a list.
pub const REP_SERVER: u32 = 2;
/// Option reply: one piece of export information.
pub const REP_INFO: u32 = 3;
/// Option reply: one metadata context (id and name).
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
/// Option reply: unknown option.
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
/// Option reply: forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
/// Option reply: malformed option.
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
/// Option reply: TLS must be negotiated first (`NBD_OPT_STARTTLS`).
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
/// Option reply: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
/// Option reply: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
/// Option reply: the option payload is too large.
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

/// Info type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info type: canonical export name.
pub const INFO_NAME: u16 = 1;
/// Info type: human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Info type: minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: always set.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: `NBD_CMD_FLAG_DF` supported (structured replies only).
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: flushes are visible across connections.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: `NBD_CMD_CACHE` supported.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
/// Transmission flag: `NBD_CMD_FLAG_FAST_ZERO` supported.
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: write zeroes must not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: don't fragment the read reply.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one extent per context in a block status reply.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail write zeroes unless it is fast.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply type: no payload.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured reply type: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply type: block status descriptors of one context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured reply type: error with a message.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// `base:allocation` flag: the extent is a hole.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// NBD error values (a fixed subset of errno).
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Cannot allocate memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left on device.
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Operation not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Largest option payload we read; larger ones get `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_PAYLOAD: u32 = 64 * 1024;
/// Largest READ/WRITE payload (the advertised maximum block size).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Longest string the protocol allows.
pub const MAX_STRING: usize = 4096;
/// Bytes of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Most queries one `NBD_OPT_{LIST,SET}_META_CONTEXT` may carry; more get
/// `NBD_REP_ERR_TOO_BIG`.
pub const MAX_META_QUERIES: usize = 32;

/// Malformed bytes from a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// An option did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// A request did not start with the request magic.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// The client set flags we did not offer.
    #[error("unknown client flags {0:#x}")]
    BadClientFlags(u32),
    /// A payload ended before a field it announced.
    #[error("{0} is truncated")]
    Truncated(&'static str),
    /// A payload has bytes after its last field.
    #[error("{0} has trailing bytes")]
    TrailingBytes(&'static str),
    /// A string is longer than 4096 bytes.
    #[error("string of {0} bytes is too long")]
    StringTooLong(usize),
    /// A string is not UTF-8 or contains NUL.
    #[error("string is not valid UTF-8 without NUL")]
    BadString,
    /// A metadata context option carries more queries than we take.
    #[error("{0} metadata context queries, at most {MAX_META_QUERIES} are taken")]
    TooManyQueries(u32),
}

/// Handshake flags the client accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClientFlags {
    /// The client speaks fixed newstyle.
    pub fixed_newstyle: bool,
    /// Skip the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
    pub no_zeroes: bool,
}

/// The 18-byte server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// Parses the client flags; unknown bits are an error (the server must hang up).
pub fn parse_client_flags(buf: &[u8; 4]) -> Result<ClientFlags, ProtoError> {
    let flags = u32::from_be_bytes(*buf);
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtoError::BadClientFlags(flags));
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// The fixed part of an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code (`OPT_*`).
    pub option: u32,
    /// Payload length that follows.
    pub length: u32,
}

/// Parses an option header, checking the magic.
pub fn parse_option_header(buf: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let mut r = Reader::new(buf, "option header");
    let magic = r.u64()?;
    if magic != IHAVEOPT {
        return Err(ProtoError::BadOptionMagic(magic));
    }
    Ok(OptionHeader {
        option: r.u32()?,
        length: r.u32()?,
    })
}

/// Export name and requested info types of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name (empty means the default export).
    pub name: String,
    /// Requested `INFO_*` types, in the order sent.
    pub info: Vec<u16>,
}

/// A parsed option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`.
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest),
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// Any option we do not implement; answered with `NBD_REP_ERR_UNSUP`.
    Unsupported(u32),
}

/// Parses an option payload of the type named by `header`.
pub fn parse_option(header: OptionHeader, payload: &[u8]) -> Result<ClientOption, ProtoError> {
    match header.option {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName(parse_string(payload)?)),
        // The spec has no payload for ABORT; tolerate one rather than refuse to quit.
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => {
            expect_empty(payload, "NBD_OPT_LIST")?;
            Ok(ClientOption::List)
        }
        OPT_STRUCTURED_REPLY => {
            expect_empty(payload, "NBD_OPT_STRUCTURED_REPLY")?;
            Ok(ClientOption::StructuredReply)
        }
        OPT_INFO => Ok(ClientOption::Info(parse_info_request(payload)?)),
        OPT_GO => Ok(ClientOption::Go(parse_info_request(payload)?)),
        OPT_LIST_META_CONTEXT => Ok(ClientOption::ListMetaContext(parse_meta_context_request(
            payload,
        )?)),
        OPT_SET_META_CONTEXT => Ok(ClientOption::SetMetaContext(parse_meta_context_request(
            payload,
        )?)),
        OPT_STARTTLS => {
            expect_empty(payload, "NBD_OPT_STARTTLS")?;
            Ok(ClientOption::StartTls)
        }
        other => Ok(ClientOption::Unsupported(other)),
    }
}

/// Parses the `NBD_OPT_INFO` / `NBD_OPT_GO` payload:
/// u32 name length, name, u16 count, count × u16 info type.
pub fn parse_info_request(payload: &[u8]) -> Result<InfoRequest, ProtoError> {
    let mut r = Reader::new(payload, "NBD_OPT_INFO/GO");
    let name_len = r.u32()? as usize;
    let name = parse_string(r.bytes(name_len)?)?;
    let count = r.u16()? as usize;
    let mut info = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        info.push(r.u16()?);
    }
    r.finish()?;
    Ok(InfoRequest { name, info })
}

/// Export name and queries of `NBD_OPT_LIST_META_CONTEXT` /
/// `NBD_OPT_SET_META_CONTEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export name.
    pub name: String,
    /// Queries (`namespace:leaf`), in the order sent.
    pub queries: Vec<String>,
}

/// Parses the metadata context payload: u32 name length, name, u32
/// count, count × (u32 length, query). At most [`MAX_META_QUERIES`].
pub fn parse_meta_context_request(payload: &[u8]) -> Result<MetaContextRequest, ProtoError> {
    let mut r = Reader::new(payload, "NBD_OPT_*_META_CONTEXT");
    let name_len = r.u32()? as usize;
    let name = parse_string(r.bytes(name_len)?)?;
    let count = r.u32()?;
    if count as usize > MAX_META_QUERIES {
        return Err(ProtoError::TooManyQueries(count));
    }
    let mut queries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = r.u32()? as usize;
        queries.push(parse_string(r.bytes(len)?)?);
    }
    r.finish()?;
    Ok(MetaContextRequest { name, queries })
}

fn expect_empty(payload: &[u8], what: &'static str) -> Result<(), ProtoError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(ProtoError::TrailingBytes(what))
    }
}

fn parse_string(bytes: &[u8]) -> Result<String, ProtoError> {
    if bytes.len() > MAX_STRING {
        return Err(ProtoError::StringTooLong(bytes.len()));
    }
    if bytes.contains(&0) {
        return Err(ProtoError::BadString);
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::BadString)
}

/// Transmission command types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1), followed by `length` bytes of payload.
    Write,
    /// `NBD_CMD_DISC` (2).
    Disconnect,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4).
    Trim,
    /// `NBD_CMD_CACHE` (5).
    Cache,
    /// `NBD_CMD_WRITE_ZEROES` (6).
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS` (7).
    BlockStatus,
    /// Anything else (answered with `EINVAL`).
    Unknown(u16),
}

impl Command {
    /// Decodes a wire command type.
    pub fn from_wire(value: u16) -> Command {
        match value {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// The wire command type.
    pub fn to_wire(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disconnect => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::Cache => 5,
            Command::WriteZeroes => 6,
            Command::BlockStatus => 7,
            Command::Unknown(other) => other,
        }
    }

    /// Command flags valid for this command (FUA is valid on every command).
    pub fn allowed_flags(self) -> u16 {
        match self {
            Command::Read => CMD_FLAG_FUA | CMD_FLAG_DF,
            Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            _ => CMD_FLAG_FUA,
        }
    }
}

/// A transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// Command type.
    pub command: Command,
    /// Opaque cookie (handle) echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// Parses a 28-byte request header, checking the magic.
pub fn parse_request(buf: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
    let mut r = Reader::new(buf, "request");
    let magic = r.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic(magic));
    }
    Ok(Request {
        flags: r.u16()?,
        command: Command::from_wire(r.u16()?),
        cookie: r.u64()?,
        offset: r.u64()?,
        length: r.u32()?,
    })
}

/// Encodes a request header (used by tests and fuzz seeds).
pub fn encode_request(req: &Request) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&req.flags.to_be_bytes());
    out[6..8].copy_from_slice(&req.command.to_wire().to_be_bytes());
    out[8..16].copy_from_slice(&req.cookie.to_be_bytes());
    out[16..24].copy_from_slice(&req.offset.to_be_bytes());
    out[24..].copy_from_slice(&req.length.to_be_bytes());
    out
}

/// Appends an option reply: magic, option, reply type, length, payload.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, payload: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Payload of `NBD_REP_SERVER`: u32 name length, name, description.
pub fn rep_server_payload(name: &str, description: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + name.len() + description.len());
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(description.as_bytes());
    p
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
pub fn info_export_payload(size: u64, flags: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&flags.to_be_bytes());
    p
}

/// Payload of `NBD_REP_META_CONTEXT`: context id, then its name.
pub fn rep_meta_context_payload(id: u32, name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p
}

/// Appends a `BLOCK_STATUS` chunk: the context id, then one (length,
/// flags) descriptor per extent. Nothing is appended for no extents (the
/// chunk needs one).
pub fn encode_block_status(
    out: &mut Vec<u8>,
    cookie: u64,
    context: u32,
    extents: &[(u32, u32)],
    done: bool,
) {
    let Ok(length) = u32::try_from(4 + 8 * extents.len()) else {
        return;
    };
    if extents.is_empty() {
        return;
    }
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    out.extend_from_slice(&chunk_header(
        flags,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        length,
    ));
    out.extend_from_slice(&context.to_be_bytes());
    for (len, state) in extents {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&state.to_be_bytes());
    }
}

/// Payload of `NBD_REP_INFO` for `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn info_string_payload(info: u16, text: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + text.len());
    p.extend_from_slice(&info.to_be_bytes());
    p.extend_from_slice(text.as_bytes());
    p
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size_payload(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(14);
    p.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zeroes unless
/// the client negotiated `NO_ZEROES`.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// A simple reply header; READ data (if any) follows it.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk header; `length` bytes of payload follow it.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut out = [0u8; CHUNK_HEADER_LEN];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..].copy_from_slice(&length.to_be_bytes());
    out
}

/// Bytes before the data in an `OFFSET_DATA` chunk (header + offset).
pub const OFFSET_DATA_PREFIX: usize = CHUNK_HEADER_LEN + 8;

/// Fills the first [`OFFSET_DATA_PREFIX`] bytes of `buf` with an
/// `OFFSET_DATA` chunk header whose data is the rest of `buf`. Reads land
/// directly behind the prefix, so the data is never copied.
///
/// Returns `None` if `buf` is shorter than the prefix plus one byte, or the
/// data does not fit the 32-bit chunk length.
pub fn fill_offset_data_prefix(buf: &mut [u8], cookie: u64, offset: u64, done: bool) -> Option<()> {
    let data_len = buf.len().checked_sub(OFFSET_DATA_PREFIX)?;
    if data_len == 0 {
        return None;
    }
    let length = u32::try_from(data_len + 8).ok()?;
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    buf[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(
        flags,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        length,
    ));
    buf[CHUNK_HEADER_LEN..OFFSET_DATA_PREFIX].copy_from_slice(&offset.to_be_bytes());
    Some(())
}

/// The [`OFFSET_DATA_PREFIX`] bytes that go before `data_len` bytes of
/// data in an `OFFSET_DATA` chunk, for a reply written as header + data
/// without copying the data. `None` if `data_len` is 0 or does not fit the
/// 32-bit chunk length.
pub fn offset_data_header(
    cookie: u64,
    offset: u64,
    data_len: usize,
    done: bool,
) -> Option<[u8; OFFSET_DATA_PREFIX]> {
    if data_len == 0 {
        return None;
    }
    let length = u32::try_from(data_len.checked_add(8)?).ok()?;
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    let mut out = [0u8; OFFSET_DATA_PREFIX];
    out[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(
        flags,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        length,
    ));
    out[CHUNK_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    Some(out)
}

/// Appends an `OFFSET_DATA` chunk (copying `data`).
pub fn encode_offset_data(out: &mut Vec<u8>, cookie: u64, offset: u64, data: &[u8], done: bool) {
    let start = out.len();
    out.resize(start + OFFSET_DATA_PREFIX, 0);
    out.extend_from_slice(data);
    if fill_offset_data_prefix(&mut out[start..], cookie, offset, done).is_none() {
        // Empty or oversized data cannot be an OFFSET_DATA chunk.
        out.truncate(start);
    }
}

/// Appends the final `NONE` chunk (DONE flag set).
pub fn encode_none(out: &mut Vec<u8>, cookie: u64) {
    out.extend_from_slice(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0));
}

/// Appends an `ERROR` chunk with a human-readable message (DONE flag set).
pub fn encode_error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let msg = truncate_utf8(message, MAX_STRING);
    let length = (6 + msg.len()) as u32;
    out.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        length,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl From<super::reader::ReadError> for ProtoError {
    fn from(e: super::reader::ReadError) -> Self {
        match e {
            super::reader::ReadError::Truncated(w) => ProtoError::Truncated(w),
            super::reader::ReadError::Trailing(w) => ProtoError::TrailingBytes(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option_header_bytes(magic: u64, option: u32, length: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&magic.to_be_bytes());
        b[8..12].copy_from_slice(&option.to_be_bytes());
        b[12..].copy_from_slice(&length.to_be_bytes());
        b
    }

    fn info_payload(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name);
        p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            p.extend_from_slice(&i.to_be_bytes());
        }
        p
    }

    #[test]
    fn greeting_carries_magics_and_fixed_newstyle_no_zeroes() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
    }

    #[test]
    fn client_flags_with_unknown_bit_are_refused() {
        assert_eq!(
            parse_client_flags(&3u32.to_be_bytes()),
            Ok(ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            })
        );
        assert_eq!(
            parse_client_flags(&4u32.to_be_bytes()),
            Err(ProtoError::BadClientFlags(4))
        );
    }

    #[test]
    fn option_header_parses_and_checks_magic() {
        let ok = option_header_bytes(IHAVEOPT, OPT_GO, 12);
        assert_eq!(
            parse_option_header(&ok),
            Ok(OptionHeader {
                option: OPT_GO,
                length: 12
            })
        );
        let bad = option_header_bytes(NBDMAGIC, OPT_GO, 12);
        assert_eq!(
            parse_option_header(&bad),
            Err(ProtoError::BadOptionMagic(NBDMAGIC))
        );
    }

    #[test]
    fn go_payload_parses_name_and_info_requests() {
        let payload = info_payload(b"vol0", &[INFO_BLOCK_SIZE, INFO_NAME]);
        let header = OptionHeader {
            option: OPT_GO,
            length: payload.len() as u32,
        };
        assert_eq!(
            parse_option(header, &payload),
            Ok(ClientOption::Go(InfoRequest {
                name: "vol0".into(),
                info: vec![INFO_BLOCK_SIZE, INFO_NAME]
            }))
        );
    }

    #[test]
    fn info_payload_with_bad_lengths_is_an_error_not_a_panic() {
        let mut p = info_payload(b"vol0", &[1, 2]);
        assert!(parse_info_request(&p[..p.len() - 1]).is_err());
        p.push(0);
        assert_eq!(
            parse_info_request(&p),
            Err(ProtoError::TrailingBytes("NBD_OPT_INFO/GO"))
        );
        assert!(parse_info_request(&u32::MAX.to_be_bytes()).is_err());
        assert!(parse_info_request(&[]).is_err());
        assert_eq!(
            parse_info_request(&info_payload(b"a\0b", &[])),
            Err(ProtoError::BadString)
        );
    }

    #[test]
    fn simple_options_parse_and_unknown_is_unsupported() {
        let h = |option, length| OptionHeader { option, length };
        assert_eq!(
            parse_option(h(OPT_EXPORT_NAME, 3), b"abc"),
            Ok(ClientOption::ExportName("abc".into()))
        );
        assert_eq!(parse_option(h(OPT_ABORT, 0), b""), Ok(ClientOption::Abort));
        assert_eq!(parse_option(h(OPT_LIST, 0), b""), Ok(ClientOption::List));
        assert!(parse_option(h(OPT_LIST, 1), b"x").is_err());
        assert_eq!(
            parse_option(h(OPT_STRUCTURED_REPLY, 0), b""),
            Ok(ClientOption::StructuredReply)
        );
        assert_eq!(
            parse_option(h(OPT_STARTTLS, 0), b""),
            Ok(ClientOption::StartTls)
        );
        assert!(parse_option(h(OPT_STARTTLS, 1), b"x").is_err());
        assert_eq!(
            parse_option(h(0xdead, 0), b""),
            Ok(ClientOption::Unsupported(0xdead))
        );
    }

    #[test]
    fn request_round_trips_and_bad_magic_is_refused() {
        let req = Request {
            flags: CMD_FLAG_FUA,
            command: Command::Write,
            cookie: 0x0102_0304_0506_0708,
            offset: 4096,
            length: 512,
        };
        let bytes = encode_request(&req);
        assert_eq!(parse_request(&bytes), Ok(req));
        let mut bad = bytes;
        bad[0] ^= 0xff;
        assert!(matches!(
            parse_request(&bad),
            Err(ProtoError::BadRequestMagic(_))
        ));
    }

    #[test]
    fn unknown_command_type_is_kept_for_an_einval_reply() {
        let req = Request {
            flags: 0,
            command: Command::Unknown(42),
            cookie: 1,
            offset: 0,
            length: 0,
        };
        assert_eq!(parse_request(&encode_request(&req)), Ok(req));
    }

    #[test]
    fn simple_reply_layout_matches_spec() {
        let r = simple_reply(7, errno::EINVAL);
        assert_eq!(&r[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[4..8], &22u32.to_be_bytes());
        assert_eq!(&r[8..], &7u64.to_be_bytes());
    }

    #[test]
    fn offset_data_chunk_layout_matches_spec() {
        let mut out = Vec::new();
        encode_offset_data(&mut out, 9, 1024, &[0xab; 3], true);
        assert_eq!(out.len(), 20 + 8 + 3);
        assert_eq!(&out[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&out[6..8], &REPLY_TYPE_OFFSET_DATA.to_be_bytes());
        assert_eq!(&out[8..16], &9u64.to_be_bytes());
        assert_eq!(&out[16..20], &11u32.to_be_bytes());
        assert_eq!(&out[20..28], &1024u64.to_be_bytes());
        assert_eq!(&out[28..], &[0xab; 3]);
    }

    #[test]
    fn empty_offset_data_is_not_encoded() {
        let mut out = vec![1];
        encode_offset_data(&mut out, 9, 0, &[], true);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn none_and_error_chunks_carry_done_flag() {
        let mut out = Vec::new();
        encode_none(&mut out, 5);
        assert_eq!(out, chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, 5, 0));
        let mut out = Vec::new();
        encode_error_chunk(&mut out, 5, errno::EIO, "boom");
        assert_eq!(&out[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&out[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&out[16..20], &10u32.to_be_bytes());
        assert_eq!(&out[20..24], &5u32.to_be_bytes());
        assert_eq!(&out[24..26], &4u16.to_be_bytes());
        assert_eq!(&out[26..], b"boom");
    }

    #[test]
    fn export_name_reply_honours_no_zeroes() {
        assert_eq!(export_name_reply(1, 1, false).len(), 134);
        assert_eq!(export_name_reply(1, 1, true).len(), 10);
    }

    #[test]
    fn option_reply_layout_matches_spec() {
        let mut out = Vec::new();
        encode_option_reply(
            &mut out,
            OPT_LIST,
            REP_SERVER,
            &rep_server_payload("a", "d"),
        );
        assert_eq!(&out[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[8..12], &OPT_LIST.to_be_bytes());
        assert_eq!(&out[12..16], &REP_SERVER.to_be_bytes());
        assert_eq!(&out[16..20], &6u32.to_be_bytes());
        assert_eq!(&out[20..], &[0, 0, 0, 1, b'a', b'd']);
    }

    fn meta_payload(name: &[u8], count: u32, queries: &[&[u8]]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name);
        p.extend_from_slice(&count.to_be_bytes());
        for q in queries {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q);
        }
        p
    }

    #[test]
    fn meta_context_payload_parses_name_and_queries() {
        let p = meta_payload(b"vol", 2, &[b"base:allocation", b"qemu:"]);
        let h = OptionHeader {
            option: OPT_SET_META_CONTEXT,
            length: p.len() as u32,
        };

        let got = parse_option(h, &p);

        assert_eq!(
            got,
            Ok(ClientOption::SetMetaContext(MetaContextRequest {
                name: "vol".into(),
                queries: vec!["base:allocation".into(), "qemu:".into()],
            }))
        );
    }

    #[test]
    fn meta_context_payload_with_bad_lengths_is_an_error_not_a_panic() {
        let ok = meta_payload(b"vol", 1, &[b"base:allocation"]);
        assert!(parse_meta_context_request(&ok[..ok.len() - 1]).is_err());
        let mut trailing = ok.clone();
        trailing.push(0);
        assert!(parse_meta_context_request(&trailing).is_err());
        assert!(parse_meta_context_request(&meta_payload(b"vol", 2, &[b"base:"])).is_err());
        let mut huge = meta_payload(b"vol", 1, &[]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context_request(&huge).is_err());
        assert_eq!(
            parse_meta_context_request(&meta_payload(b"vol", 1000, &[])),
            Err(ProtoError::TooManyQueries(1000))
        );
        assert_eq!(
            parse_meta_context_request(&meta_payload(b"vol", 1, &[b"a\0:b"])),
            Err(ProtoError::BadString)
        );
    }

    #[test]
    fn block_status_chunk_layout_matches_spec() {
        let mut out = Vec::new();

        encode_block_status(
            &mut out,
            3,
            1,
            &[(4096, STATE_HOLE | STATE_ZERO), (512, 0)],
            true,
        );

        assert_eq!(&out[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&out[6..8], &REPLY_TYPE_BLOCK_STATUS.to_be_bytes());
        assert_eq!(&out[16..20], &20u32.to_be_bytes());
        assert_eq!(&out[20..24], &1u32.to_be_bytes());
        assert_eq!(&out[24..32], &[0, 0, 0x10, 0, 0, 0, 0, 3]);
        assert_eq!(&out[32..40], &[0, 0, 2, 0, 0, 0, 0, 0]);
        assert_eq!(Command::from_wire(7), Command::BlockStatus);
    }

    proptest::proptest! {
        #[test]
        fn option_parsers_never_panic(option in 0u32..16, payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let header = OptionHeader { option, length: payload.len() as u32 };
            let _ = parse_option(header, &payload);
            let _ = parse_info_request(&payload);
            let _ = parse_meta_context_request(&payload);
        }

        #[test]
        fn info_request_round_trips(name in "[a-z0-9/_-]{0,40}", info in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..8)) {
            let mut p = (name.len() as u32).to_be_bytes().to_vec();
            p.extend_from_slice(name.as_bytes());
            p.extend_from_slice(&(info.len() as u16).to_be_bytes());
            for i in &info {
                p.extend_from_slice(&i.to_be_bytes());
            }
            proptest::prop_assert_eq!(parse_info_request(&p), Ok(InfoRequest { name, info }));
        }

        #[test]
        fn request_parse_round_trips(bytes in proptest::array::uniform28(proptest::prelude::any::<u8>())) {
            let mut bytes = bytes;
            bytes[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            let req = parse_request(&bytes);
            proptest::prop_assert!(req.is_ok());
            if let Ok(req) = req {
                proptest::prop_assert_eq!(encode_request(&req), bytes);
            }
        }
    }
}
