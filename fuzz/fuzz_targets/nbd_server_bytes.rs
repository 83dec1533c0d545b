//! Fuzzes every parser of bytes an NBD server sends to vraid's client: the
//! whole client handshake from a byte stream, the option reply and info
//! parsers, and the transmission reply reader with READ and WRITE requests
//! waiting (chunks must land inside their request or be refused), and the
//! read-modify-write plan over the block sizes a server announced.
#![no_main]

use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use vraid::remote::{align, conn, handshake, reply};

/// Server bytes to read; what the client writes is dropped.
struct Server(Cursor<Vec<u8>>);

impl Read for Server {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Server {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(n) = handshake::handshake(&mut Server(Cursor::new(rest.to_vec())), "e") {
                assert!(n.sizes.min.is_power_of_two() && n.sizes.max >= n.sizes.min);
            }
        }
        1 => {
            let _ = reply::parse_info(rest);
            let _ = reply::parse_error_payload(rest);
            let _ = reply::parse_hole(rest);
            let _ = reply::parse_reply_header(rest);
            if let Ok(head) = rest.get(..reply::OPTION_REPLY_LEN).unwrap_or(&[]).try_into() {
                let _ = reply::parse_option_reply(&head, 7);
            }
        }
        3 => plan_over_announced_sizes(rest),
        _ => {
            // Request 0: READ of 4 KiB at 4096; 1: WRITE; 2: READ of 512 at 0.
            let reads = [(true, 4096, 4096), (false, 0, 0), (true, 0, 512)];
            assert!(conn::decode_for_fuzz(rest, &reads) <= reads.len());
        }
    }
});

/// An `NBD_INFO_BLOCK_SIZE` payload (14 bytes) the parser accepts, then a
/// request (offset, length) inside an export of whole minimum blocks: the
/// plan covers the request, aligned, and patching rebuilds it.
fn plan_over_announced_sizes(bytes: &[u8]) {
    let (Some(info), Some(req)) = (bytes.get(..14), bytes.get(14..30)) else {
        return;
    };
    let Ok(reply::Info::BlockSize(sizes)) = reply::parse_info(info) else {
        return;
    };
    let min = u64::from(sizes.min);
    let size = (u64::MAX / 2) & !(min - 1);
    let offset = u64::from_be_bytes(req[..8].try_into().unwrap()) % size;
    let len = (u64::from_be_bytes(req[8..].try_into().unwrap()) % (1 << 20)).max(1);
    if offset + len > size {
        return;
    }
    let p = align::plan(min, offset, len);
    assert!(p.outer.start.is_multiple_of(min) && p.outer.end.is_multiple_of(min));
    assert!(p.outer.start <= offset && offset + len <= p.outer.end && p.outer.end <= size);
    assert!(p.middle.start >= p.outer.start && p.middle.end <= p.outer.end);
    if let Some(h) = p.head {
        assert!(h == p.outer.start && (h != offset || offset + len < h + min));
    }
    if let Some(t) = p.tail {
        assert!(t + min == p.outer.end && Some(t) != p.head);
    }
    let src = vec![0xa5u8; len as usize];
    let mut block = vec![0u8; min as usize];
    for start in p.head.into_iter().chain(p.tail) {
        align::patch(start, &mut block, offset, len, align::Fill::Bytes(&src));
    }
}
