//! Fuzzes every parser of bytes an NBD server sends to vraid's client: the
//! whole client handshake from a byte stream, the option reply and info
//! parsers, and the transmission reply reader with READ and WRITE requests
//! waiting (chunks must land inside their request or be refused).
#![no_main]

use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use vraid::remote::{conn, handshake, reply};

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
    match mode % 3 {
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
        _ => {
            // Request 0: READ of 4 KiB at 4096; 1: WRITE; 2: READ of 512 at 0.
            let reads = [(true, 4096, 4096), (false, 0, 0), (true, 0, 512)];
            assert!(conn::decode_for_fuzz(rest, &reads) <= reads.len());
        }
    }
});
