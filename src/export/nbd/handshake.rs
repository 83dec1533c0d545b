//! Option haggling as a pure state machine: one option in, reply bytes out.
//!
//! The server's connection task reads an option header and its payload,
//! hands them to [`Negotiation::handle`], writes the returned bytes and acts
//! on the [`Step`]. No I/O happens here, so the fuzz target can drive the
//! whole option loop from a byte slice ([`negotiate_bytes`]).

use std::sync::Arc;

use super::catalog::{Export, ExportTable};
use super::meta::{self, Selection};
use super::proto::{
    self, ClientFlags, ClientOption, InfoRequest, MetaContextRequest, OptionHeader,
};

/// What the connection does after an option.
#[derive(Debug)]
pub enum Step {
    /// Read the next option.
    Continue,
    /// Write the replies, then close the connection.
    Close,
    /// Write the replies, then enter transmission on this export.
    Transmit(Arc<Export>),
    /// Write the replies, then run the TLS handshake as the server and go on
    /// reading options over TLS.
    StartTls,
}

/// Where a connection stands with TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsState {
    /// The server offers no TLS: `NBD_OPT_STARTTLS` is unsupported.
    Off,
    /// TLS may be started; `required` refuses every other option but
    /// `NBD_OPT_ABORT` until then (`NBD_REP_ERR_TLS_REQD`).
    Offered {
        /// Plain-text transmission is refused.
        required: bool,
    },
    /// The connection runs over TLS.
    Active,
}

/// The negotiation state of one connection.
#[derive(Debug)]
pub struct Negotiation<'a> {
    exports: &'a ExportTable,
    client: ClientFlags,
    structured: bool,
    /// The last `NBD_OPT_SET_META_CONTEXT`: its export and selection.
    meta: Option<(Arc<Export>, Selection)>,
    tls: TlsState,
}

impl<'a> Negotiation<'a> {
    /// Starts negotiating with a client that sent `client` flags.
    pub fn new(exports: &'a ExportTable, client: ClientFlags) -> Self {
        Negotiation {
            exports,
            client,
            structured: false,
            meta: None,
            tls: TlsState::Off,
        }
    }

    /// The metadata contexts selected for `export` (none unless the last
    /// `NBD_OPT_SET_META_CONTEXT` named this export).
    pub fn selection(&self, export: &Arc<Export>) -> Selection {
        match &self.meta {
            Some((e, s)) if Arc::ptr_eq(e, export) => s.clone(),
            _ => Selection::default(),
        }
    }

    /// The same, offering TLS as `tls` says.
    pub fn with_tls(mut self, tls: TlsState) -> Self {
        self.tls = tls;
        self
    }

    /// Where the connection stands with TLS.
    pub fn tls(&self) -> TlsState {
        self.tls
    }

    /// The TLS handshake after `Step::StartTls` succeeded: what was
    /// negotiated in plain text is forgotten (the spec lets a client redo it).
    pub fn tls_started(&mut self) {
        self.tls = TlsState::Active;
        self.structured = false;
        self.meta = None;
    }

    /// Whether structured replies have been negotiated.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// Replies to an option whose payload was too large to read (the caller
    /// skipped or refused it).
    pub fn refuse_too_big(&self, header: OptionHeader, out: &mut Vec<u8>) -> Step {
        if header.option == proto::OPT_EXPORT_NAME {
            return Step::Close;
        }
        let msg = format!("option payload of {} bytes is too large", header.length);
        proto::encode_option_reply(out, header.option, proto::REP_ERR_TOO_BIG, msg.as_bytes());
        Step::Continue
    }

    /// Answers one option, appending reply bytes to `out`.
    pub fn handle(&mut self, header: OptionHeader, payload: &[u8], out: &mut Vec<u8>) -> Step {
        if let Some(step) = self.tls_gate(header.option, out) {
            return step;
        }
        let option = match proto::parse_option(header, payload) {
            Ok(option) => option,
            Err(e) => {
                tracing::warn!(option = header.option, error = %e, "malformed NBD option");
                if header.option == proto::OPT_EXPORT_NAME {
                    return Step::Close;
                }
                if header.option == proto::OPT_SET_META_CONTEXT {
                    // A failed SET still replaces the selection.
                    self.meta = None;
                }
                let reply = match e {
                    proto::ProtoError::TooManyQueries(_) => proto::REP_ERR_TOO_BIG,
                    _ => proto::REP_ERR_INVALID,
                };
                proto::encode_option_reply(out, header.option, reply, e.to_string().as_bytes());
                return Step::Continue;
            }
        };
        match option {
            ClientOption::ExportName(name) => self.export_name(&name, out),
            ClientOption::Abort => {
                proto::encode_option_reply(out, proto::OPT_ABORT, proto::REP_ACK, &[]);
                Step::Close
            }
            ClientOption::List => {
                for e in self.exports.iter() {
                    let p = proto::rep_server_payload(&e.name, &e.description);
                    proto::encode_option_reply(out, proto::OPT_LIST, proto::REP_SERVER, &p);
                }
                proto::encode_option_reply(out, proto::OPT_LIST, proto::REP_ACK, &[]);
                Step::Continue
            }
            ClientOption::StructuredReply => {
                self.structured = true;
                proto::encode_option_reply(out, proto::OPT_STRUCTURED_REPLY, proto::REP_ACK, &[]);
                Step::Continue
            }
            ClientOption::Info(req) => {
                self.info(proto::OPT_INFO, &req, out);
                Step::Continue
            }
            ClientOption::Go(req) => match self.info(proto::OPT_GO, &req, out) {
                Some(export) => Step::Transmit(export),
                None => Step::Continue,
            },
            ClientOption::ListMetaContext(req) => {
                self.list_meta(&req, out);
                Step::Continue
            }
            ClientOption::SetMetaContext(req) => {
                self.set_meta(&req, out);
                Step::Continue
            }
            ClientOption::StartTls => self.start_tls(out),
            ClientOption::Unsupported(code) => {
                tracing::debug!(option = code, "unsupported NBD option");
                proto::encode_option_reply(out, code, proto::REP_ERR_UNSUP, &[]);
                Step::Continue
            }
        }
    }

    /// The export a metadata context option names, after the checks both
    /// options share; `None` once an error reply is written.
    fn meta_export(
        &self,
        option: u32,
        req: &MetaContextRequest,
        out: &mut Vec<u8>,
    ) -> Option<Arc<Export>> {
        let refuse = |out: &mut Vec<u8>, reply: u32, msg: String| {
            proto::encode_option_reply(out, option, reply, msg.as_bytes());
            None
        };
        if !self.structured {
            let msg = "negotiate NBD_OPT_STRUCTURED_REPLY first".to_string();
            return refuse(out, proto::REP_ERR_INVALID, msg);
        }
        if let Some(bad) = req.queries.iter().find_map(|q| meta::check_query(q).err()) {
            return refuse(out, proto::REP_ERR_INVALID, bad);
        }
        match self.exports.lookup(&req.name) {
            Some(export) => Some(export.clone()),
            None => refuse(
                out,
                proto::REP_ERR_UNKNOWN,
                format!("no export named {:?}", req.name),
            ),
        }
    }

    /// `NBD_OPT_LIST_META_CONTEXT`: the contexts the queries name (id 0).
    fn list_meta(&self, req: &MetaContextRequest, out: &mut Vec<u8>) {
        let option = proto::OPT_LIST_META_CONTEXT;
        let Some(export) = self.meta_export(option, req, out) else {
            return;
        };
        for c in meta::list(&export.meta_contexts(), &req.queries) {
            let p = proto::rep_meta_context_payload(0, c.name());
            proto::encode_option_reply(out, option, proto::REP_META_CONTEXT, &p);
        }
        proto::encode_option_reply(out, option, proto::REP_ACK, &[]);
    }

    /// `NBD_OPT_SET_META_CONTEXT`: replaces the selection (also when it
    /// fails) and names the contexts chosen with their ids.
    fn set_meta(&mut self, req: &MetaContextRequest, out: &mut Vec<u8>) {
        let option = proto::OPT_SET_META_CONTEXT;
        self.meta = None;
        let Some(export) = self.meta_export(option, req, out) else {
            return;
        };
        let selection = Selection::select(&export.meta_contexts(), &req.queries);
        for (id, c) in selection.iter() {
            let p = proto::rep_meta_context_payload(*id, c.name());
            proto::encode_option_reply(out, option, proto::REP_META_CONTEXT, &p);
        }
        proto::encode_option_reply(out, option, proto::REP_ACK, &[]);
        self.meta = Some((export, selection));
    }

    /// Under `TlsState::Offered { required: true }`, refuses every option
    /// but STARTTLS and ABORT (EXPORT_NAME cannot be answered: it closes).
    fn tls_gate(&self, option: u32, out: &mut Vec<u8>) -> Option<Step> {
        if self.tls != (TlsState::Offered { required: true }) {
            return None;
        }
        match option {
            proto::OPT_STARTTLS | proto::OPT_ABORT => None,
            proto::OPT_EXPORT_NAME => {
                tracing::warn!("NBD_OPT_EXPORT_NAME before TLS, which this server requires");
                Some(Step::Close)
            }
            _ => {
                let msg = b"this server requires TLS: send NBD_OPT_STARTTLS first";
                proto::encode_option_reply(out, option, proto::REP_ERR_TLS_REQD, msg);
                Some(Step::Continue)
            }
        }
    }

    fn start_tls(&self, out: &mut Vec<u8>) -> Step {
        let (reply, msg): (u32, &[u8]) = match self.tls {
            TlsState::Off => (proto::REP_ERR_UNSUP, b"this server does not offer TLS"),
            TlsState::Active => (proto::REP_ERR_INVALID, b"TLS is already negotiated"),
            TlsState::Offered { .. } => {
                proto::encode_option_reply(out, proto::OPT_STARTTLS, proto::REP_ACK, &[]);
                return Step::StartTls;
            }
        };
        proto::encode_option_reply(out, proto::OPT_STARTTLS, reply, msg);
        Step::Continue
    }

    fn export_name(&self, name: &str, out: &mut Vec<u8>) -> Step {
        let Some(export) = self.exports.lookup(name) else {
            tracing::warn!(export = name, "NBD_OPT_EXPORT_NAME for unknown export");
            return Step::Close;
        };
        out.extend_from_slice(&proto::export_name_reply(
            export.device.size(),
            export.transmission_flags(self.structured),
            self.client.no_zeroes,
        ));
        Step::Transmit(export.clone())
    }

    /// Sends the `NBD_REP_INFO` replies and the final ACK (or an error);
    /// returns the export on success.
    fn info(&self, option: u32, req: &InfoRequest, out: &mut Vec<u8>) -> Option<Arc<Export>> {
        let Some(export) = self.exports.lookup(&req.name) else {
            let msg = format!("no export named {:?}", req.name);
            proto::encode_option_reply(out, option, proto::REP_ERR_UNKNOWN, msg.as_bytes());
            return None;
        };
        let flags = export.transmission_flags(self.structured);
        let p = proto::info_export_payload(export.device.size(), flags);
        proto::encode_option_reply(out, option, proto::REP_INFO, &p);
        let mut sent = Vec::with_capacity(3);
        for &info in &req.info {
            if sent.contains(&info) {
                continue;
            }
            sent.push(info);
            let payload = match info {
                proto::INFO_NAME => proto::info_string_payload(info, &export.name),
                proto::INFO_DESCRIPTION => proto::info_string_payload(info, &export.description),
                proto::INFO_BLOCK_SIZE => {
                    let (min, preferred, max) = export.block_sizes();
                    proto::info_block_size_payload(min, preferred, max)
                }
                // INFO_EXPORT is always sent; unknown types are ignored.
                _ => continue,
            };
            proto::encode_option_reply(out, option, proto::REP_INFO, &payload);
        }
        proto::encode_option_reply(out, option, proto::REP_ACK, &[]);
        Some(export.clone())
    }
}

/// The outcome of [`negotiate_bytes`].
#[derive(Debug)]
pub struct Transcript {
    /// Everything the server would have written, greeting included.
    pub output: Vec<u8>,
    /// The export chosen, if the client reached transmission.
    pub export: Option<Arc<Export>>,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// Whether the client got as far as an accepted `NBD_OPT_STARTTLS`
    /// (the transcript stops there: the TLS handshake is not simulated).
    pub starttls: bool,
}

/// Runs the whole handshake over `input` (client flags, then options) as the
/// server would, without I/O. Stops at the end of input, a close or transmission.
pub fn negotiate_bytes(exports: &ExportTable, input: &[u8]) -> Transcript {
    negotiate_bytes_tls(exports, TlsState::Off, input)
}

/// [`negotiate_bytes`] on a server whose connection stands at `tls`.
pub fn negotiate_bytes_tls(exports: &ExportTable, tls: TlsState, input: &[u8]) -> Transcript {
    let mut t = Transcript {
        output: proto::greeting().to_vec(),
        export: None,
        structured: false,
        starttls: false,
    };
    let Some((flags, mut rest)) = input.split_first_chunk::<4>() else {
        return t;
    };
    let Ok(client) = proto::parse_client_flags(flags) else {
        return t;
    };
    let mut neg = Negotiation::new(exports, client).with_tls(tls);
    while let Some((head, tail)) = rest.split_first_chunk::<{ proto::OPTION_HEADER_LEN }>() {
        let Ok(header) = proto::parse_option_header(head) else {
            break;
        };
        let step = if header.length > proto::MAX_OPTION_PAYLOAD {
            // A real connection skips the payload; here it is whatever is left.
            let skip = (header.length as usize).min(tail.len());
            rest = &tail[skip..];
            neg.refuse_too_big(header, &mut t.output)
        } else if tail.len() < header.length as usize {
            break;
        } else {
            let (payload, after) = tail.split_at(header.length as usize);
            rest = after;
            neg.handle(header, payload, &mut t.output)
        };
        match step {
            Step::Continue => {}
            Step::Close => break,
            Step::Transmit(export) => {
                t.export = Some(export);
                break;
            }
            Step::StartTls => {
                t.starttls = true;
                break;
            }
        }
    }
    t.structured = neg.structured();
    t
}
