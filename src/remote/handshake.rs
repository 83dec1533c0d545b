//! The client side of the fixed newstyle handshake, on any blocking
//! `Read + Write` stream (a socket with timeouts, or bytes in a fuzz
//! target):
//!
//! ```text
//!  S greeting ─► C flags (FIXED_NEWSTYLE [| NO_ZEROES])
//!  C OPT_STRUCTURED_REPLY ─► S ACK | ERR_*      (structured replies or simple)
//!  C OPT_GO(export, [INFO_BLOCK_SIZE]) ─► S INFO* ─► S ACK   (transmission)
//! ```

use std::io::{self, Read, Write};

use super::reply::{self, BlockSizes, Info, OptionReply, ReplyError};
use crate::export::nbd::proto;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed.
    #[error("connection failed")]
    Io(#[from] io::Error),
    /// The server sent malformed bytes.
    #[error("bad handshake from the server")]
    Reply(#[from] ReplyError),
    /// The server refused an option.
    #[error("the server refused {option} with reply type {kind:#x}{}", with_message(.message))]
    Refused {
        /// Option name.
        option: &'static str,
        /// `NBD_REP_ERR_*` type.
        kind: u32,
        /// The server's message, if any.
        message: String,
    },
    /// `NBD_OPT_GO` succeeded without `NBD_INFO_EXPORT`.
    #[error("the server sent no export size")]
    NoExportInfo,
}

fn with_message(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

/// What the handshake settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags (`TFLAG_*`).
    pub flags: u16,
    /// Block size constraints.
    pub sizes: BlockSizes,
    /// Whether replies are structured.
    pub structured: bool,
}

impl Negotiated {
    /// Whether the server advertises transmission flag `flag`.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// Runs the handshake for `export` on `stream`.
pub fn handshake<S: Read + Write>(
    stream: &mut S,
    export: &str,
) -> Result<Negotiated, HandshakeError> {
    greet(stream)?;
    options(stream, export)
}

/// The greeting and the client flags: the part before the first option.
pub fn greet<S: Read + Write>(stream: &mut S) -> Result<(), HandshakeError> {
    let mut greeting = [0u8; reply::GREETING_LEN];
    stream.read_exact(&mut greeting)?;
    let flags = reply::parse_greeting(&greeting)?;
    let mut client = proto::FLAG_C_FIXED_NEWSTYLE;
    if flags & proto::FLAG_NO_ZEROES != 0 {
        client |= proto::FLAG_C_NO_ZEROES;
    }
    stream.write_all(&client.to_be_bytes())?;
    Ok(())
}

/// The options after the greeting (over TLS once `start_tls` is done).
pub fn options<S: Read + Write>(
    stream: &mut S,
    export: &str,
) -> Result<Negotiated, HandshakeError> {
    let structured = structured_replies(stream)?;
    go(stream, export, structured)
}

/// `NBD_OPT_STARTTLS`: on `NBD_REP_ACK` the caller upgrades the stream;
/// anything else is a refusal (never a fall back to plain text).
pub fn start_tls<S: Read + Write>(stream: &mut S) -> Result<(), HandshakeError> {
    send_option(stream, proto::OPT_STARTTLS, &[])?;
    let (head, payload) = read_option_reply(stream, proto::OPT_STARTTLS)?;
    match head.kind {
        proto::REP_ACK => Ok(()),
        _ => Err(refused("NBD_OPT_STARTTLS", head, &payload)),
    }
}

/// Asks for structured replies; a refusal means simple replies.
fn structured_replies<S: Read + Write>(stream: &mut S) -> Result<bool, HandshakeError> {
    send_option(stream, proto::OPT_STRUCTURED_REPLY, &[])?;
    let (head, payload) = read_option_reply(stream, proto::OPT_STRUCTURED_REPLY)?;
    match head.kind {
        proto::REP_ACK => Ok(true),
        _ if head.is_error() => Ok(false),
        _ => Err(refused("NBD_OPT_STRUCTURED_REPLY", head, &payload)),
    }
}

/// `NBD_OPT_GO` with `NBD_INFO_BLOCK_SIZE` requested.
fn go<S: Read + Write>(
    stream: &mut S,
    export: &str,
    structured: bool,
) -> Result<Negotiated, HandshakeError> {
    send_option(stream, proto::OPT_GO, &go_payload(export))?;
    let mut export_info = None;
    let mut sizes = BlockSizes::default();
    for _ in 0..MAX_INFO_REPLIES {
        let (head, payload) = read_option_reply(stream, proto::OPT_GO)?;
        match head.kind {
            proto::REP_INFO => match reply::parse_info(&payload)? {
                Info::Export { size, flags } => export_info = Some((size, flags)),
                Info::BlockSize(s) => sizes = s,
                Info::Other(_) => {}
            },
            proto::REP_ACK => {
                let (size, flags) = export_info.ok_or(HandshakeError::NoExportInfo)?;
                return Ok(Negotiated {
                    size,
                    flags,
                    sizes,
                    structured,
                });
            }
            _ => return Err(refused("NBD_OPT_GO", head, &payload)),
        }
    }
    Err(ReplyError::Unexpected("endless NBD_REP_INFO replies").into())
}

/// Most `NBD_REP_INFO` replies accepted before the `NBD_REP_ACK`.
const MAX_INFO_REPLIES: usize = 64;

/// The `NBD_OPT_GO` payload: name length, name, one info request.
pub fn go_payload(export: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + export.len());
    p.extend_from_slice(&(export.len() as u32).to_be_bytes());
    p.extend_from_slice(export.as_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
    p
}

/// Writes an option: IHAVEOPT, option, length, payload.
fn send_option<S: Write>(stream: &mut S, option: u32, payload: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(proto::OPTION_HEADER_LEN + payload.len());
    out.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    stream.write_all(&out)?;
    stream.flush()
}

fn read_option_reply<S: Read>(
    stream: &mut S,
    option: u32,
) -> Result<(OptionReply, Vec<u8>), HandshakeError> {
    let mut head = [0u8; reply::OPTION_REPLY_LEN];
    stream.read_exact(&mut head)?;
    let head = reply::parse_option_reply(&head, option)?;
    let mut payload = vec![0u8; head.length as usize];
    stream.read_exact(&mut payload)?;
    Ok((head, payload))
}

fn refused(option: &'static str, head: OptionReply, payload: &[u8]) -> HandshakeError {
    HandshakeError::Refused {
        option,
        kind: head.kind,
        message: String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that reads scripted server bytes and swallows writes.
    struct Scripted(io::Cursor<Vec<u8>>);

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn server_bytes(structured: u32, infos: &[Vec<u8>]) -> Vec<u8> {
        let mut s = proto::greeting().to_vec();
        proto::encode_option_reply(&mut s, proto::OPT_STRUCTURED_REPLY, structured, &[]);
        for i in infos {
            proto::encode_option_reply(&mut s, proto::OPT_GO, proto::REP_INFO, i);
        }
        proto::encode_option_reply(&mut s, proto::OPT_GO, proto::REP_ACK, &[]);
        s
    }

    #[test]
    fn go_settles_size_flags_and_block_sizes() {
        let bytes = server_bytes(
            proto::REP_ACK,
            &[
                proto::info_export_payload(1 << 20, 0x1ed),
                proto::info_block_size_payload(512, 4096, 65536),
            ],
        );
        let n = handshake(&mut Scripted(io::Cursor::new(bytes)), "e").unwrap();
        assert_eq!((n.size, n.flags, n.structured), (1 << 20, 0x1ed, true));
        assert_eq!(n.sizes.max, 65536);
    }

    #[test]
    fn refused_structured_replies_mean_simple_ones_and_no_size_is_an_error() {
        let bytes = server_bytes(proto::REP_ERR_UNSUP, &[proto::info_export_payload(8, 1)]);
        let n = handshake(&mut Scripted(io::Cursor::new(bytes)), "e").unwrap();
        assert!(!n.structured);
        let bytes = server_bytes(proto::REP_ACK, &[]);
        assert!(matches!(
            handshake(&mut Scripted(io::Cursor::new(bytes)), "e"),
            Err(HandshakeError::NoExportInfo)
        ));
    }

    #[test]
    fn start_tls_needs_an_ack_and_a_refusal_is_an_error() {
        for (kind, ok) in [(proto::REP_ACK, true), (proto::REP_ERR_UNSUP, false)] {
            let mut s = proto::greeting().to_vec();
            proto::encode_option_reply(&mut s, proto::OPT_STARTTLS, kind, b"no");
            let mut stream = Scripted(io::Cursor::new(s));
            greet(&mut stream).unwrap();
            let r = start_tls(&mut stream);
            assert_eq!(r.is_ok(), ok, "{r:?}");
        }
    }

    #[test]
    fn truncated_handshakes_are_errors() {
        let bytes = server_bytes(proto::REP_ACK, &[proto::info_export_payload(8, 1)]);
        for cut in 0..bytes.len() {
            let r = handshake(&mut Scripted(io::Cursor::new(bytes[..cut].to_vec())), "e");
            assert!(r.is_err(), "cut at {cut}");
        }
    }
}
