//! A strict NBD server in this process for the client's tests: an export
//! in memory that refuses (`EINVAL`) any request not aligned to its minimum
//! block, may advertise `CAN_MULTI_CONN`, counts connections and requests
//! per connection, and misbehaves on demand (refuses connections past a
//! number, dies instead of applying a write, goes silent on one
//! connection, stops reading one connection until released, with a tiny
//! receive buffer so a request stays queued at the client). What nbdkit's
//! blocksize-policy filter does, with knobs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::export::nbd::proto::{self, Command, Request};

/// How the server presents its export and misbehaves.
#[derive(Debug, Clone)]
pub struct Setup {
    pub size: u64,
    /// Minimum, preferred, maximum block size.
    pub sizes: (u32, u32, u32),
    pub multi_conn: bool,
    /// Connections from this number on are closed at once (0-based).
    pub refuse_from: usize,
    /// Connection that never answers (0-based).
    pub silent: Option<usize>,
    /// Connection that reads nothing after its handshake until
    /// [`Strict::release`] (like a server behind a cut link), then serves.
    pub stall: Option<usize>,
    /// `SO_RCVBUF` of the listening socket (inherited by connections).
    pub recv_buffer: Option<u32>,
}

impl Setup {
    pub fn new(size: u64, min: u32) -> Setup {
        Setup {
            size,
            sizes: (min, min.max(4096), 1 << 20),
            multi_conn: true,
            refuse_from: usize::MAX,
            silent: None,
            stall: None,
            recv_buffer: None,
        }
    }
}

/// The server's state, shared with the test.
#[derive(Debug)]
pub struct Strict {
    pub setup: Setup,
    pub data: Mutex<Vec<u8>>,
    /// Connections accepted (refused ones too).
    pub accepted: AtomicUsize,
    /// Requests answered per connection number.
    pub served: Mutex<Vec<usize>>,
    /// Requests refused for being unaligned.
    pub unaligned: AtomicUsize,
    /// Writes left before the server drops a write and its connection
    /// unapplied (`usize::MAX`: never).
    pub die_in: AtomicUsize,
    /// Writes and reads applied.
    pub writes: AtomicUsize,
    /// Lets the stalled connection read again.
    pub release: tokio::sync::Notify,
    /// How the stalled connection ended, once it has.
    stall_end: tokio::sync::watch::Sender<Option<String>>,
}

impl Strict {
    /// Starts serving on a loopback port.
    pub async fn start(setup: Setup) -> (Arc<Strict>, SocketAddr) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = setup.recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::new(Strict {
            data: Mutex::new(vec![0u8; setup.size as usize]),
            setup,
            accepted: AtomicUsize::new(0),
            served: Mutex::new(Vec::new()),
            unaligned: AtomicUsize::new(0),
            die_in: AtomicUsize::new(usize::MAX),
            writes: AtomicUsize::new(0),
            release: tokio::sync::Notify::new(),
            stall_end: tokio::sync::watch::Sender::new(None),
        });
        let server = s.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let n = server.accepted.fetch_add(1, Ordering::SeqCst);
                server.served.lock().unwrap().push(0);
                if n >= server.setup.refuse_from {
                    continue;
                }
                let s = server.clone();
                tokio::spawn(async move {
                    let end = s.connection(sock, n).await;
                    if s.setup.stall == Some(n) {
                        let end = end.map_or_else(|e| format!("error: {e}"), |()| "end".into());
                        s.stall_end.send_replace(Some(end));
                    }
                });
            }
        });
        (s, addr)
    }

    /// Waits (30 s at most) until the stalled connection has ended; how
    /// it ended ("end": a clean end, or the read error).
    pub async fn stalled_end(&self) -> String {
        let mut rx = self.stall_end.subscribe();
        let ended = rx.wait_for(Option::is_some);
        let end = tokio::time::timeout(std::time::Duration::from_secs(30), ended)
            .await
            .expect("the stalled connection did not end within 30 s")
            .unwrap();
        end.clone().unwrap()
    }

    /// A snapshot of the export.
    pub fn bytes(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    fn flags(&self) -> u16 {
        let mut f = proto::TFLAG_HAS_FLAGS
            | proto::TFLAG_SEND_FLUSH
            | proto::TFLAG_SEND_FUA
            | proto::TFLAG_SEND_WRITE_ZEROES
            | proto::TFLAG_SEND_TRIM;
        if self.setup.multi_conn {
            f |= proto::TFLAG_CAN_MULTI_CONN;
        }
        f
    }

    async fn connection(&self, mut s: TcpStream, n: usize) -> std::io::Result<()> {
        s.write_all(&proto::greeting()).await?;
        s.read_u32().await?;
        loop {
            let mut head = [0u8; proto::OPTION_HEADER_LEN];
            s.read_exact(&mut head).await?;
            let option = u32::from_be_bytes(head[8..12].try_into().unwrap());
            let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let mut payload = vec![0u8; len as usize];
            s.read_exact(&mut payload).await?;
            let mut out = Vec::new();
            if option != proto::OPT_GO {
                // Structured replies refused: simple replies only.
                proto::encode_option_reply(&mut out, option, proto::REP_ERR_UNSUP, &[]);
                s.write_all(&out).await?;
                continue;
            }
            let (min, pref, max) = self.setup.sizes;
            let infos = [
                proto::info_export_payload(self.setup.size, self.flags()),
                proto::info_block_size_payload(min, pref, max),
            ];
            for info in infos {
                proto::encode_option_reply(&mut out, option, proto::REP_INFO, &info);
            }
            proto::encode_option_reply(&mut out, option, proto::REP_ACK, &[]);
            s.write_all(&out).await?;
            break;
        }
        if self.setup.stall == Some(n) {
            self.release.notified().await;
        }
        self.transmission(s, n).await
    }

    async fn transmission(&self, mut s: TcpStream, n: usize) -> std::io::Result<()> {
        loop {
            let mut head = [0u8; proto::REQUEST_LEN];
            s.read_exact(&mut head).await?;
            let req = proto::parse_request(&head).unwrap();
            let mut payload = vec![0u8; 0];
            if req.command == Command::Write {
                payload.resize(req.length as usize, 0);
                s.read_exact(&mut payload).await?;
            }
            if req.command == Command::Disconnect {
                return Ok(());
            }
            if self.setup.silent == Some(n) {
                continue;
            }
            if req.command == Command::Write && self.die_in.fetch_sub(1, Ordering::SeqCst) == 1 {
                // Dies with the write unapplied.
                return Ok(());
            }
            let out = self.answer(&req, &payload);
            self.served.lock().unwrap()[n] += 1;
            s.write_all(&out).await?;
        }
    }

    fn answer(&self, req: &Request, payload: &[u8]) -> Vec<u8> {
        let min = u64::from(self.setup.sizes.0);
        let (at, len) = (req.offset as usize, req.length as usize);
        let sized = matches!(
            req.command,
            Command::Read | Command::Write | Command::WriteZeroes | Command::Trim
        );
        if sized && (!req.offset.is_multiple_of(min) || !u64::from(req.length).is_multiple_of(min))
        {
            self.unaligned.fetch_add(1, Ordering::SeqCst);
            return proto::simple_reply(req.cookie, proto::errno::EINVAL).to_vec();
        }
        if sized && at + len > self.setup.size as usize {
            return proto::simple_reply(req.cookie, proto::errno::EINVAL).to_vec();
        }
        let mut out = proto::simple_reply(req.cookie, 0).to_vec();
        let mut data = self.data.lock().unwrap();
        match req.command {
            Command::Read => out.extend_from_slice(&data[at..at + len]),
            Command::Write => {
                data[at..at + len].copy_from_slice(payload);
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            Command::WriteZeroes | Command::Trim => data[at..at + len].fill(0),
            _ => {}
        }
        out
    }
}
