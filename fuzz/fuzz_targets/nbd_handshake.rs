//! Drives the whole NBD option loop (client flags, then options) from a byte
//! slice through the server's handshake state machine.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vraid::block::{BlockDevice, BlockResult, BoxFuture, Durability};
use vraid::export::nbd::handshake::{negotiate_bytes_tls, TlsState};
use vraid::export::nbd::{Export, ExportTable};
use vraid::units::ByteOffset;

/// A device that is never read: the handshake only asks for its size.
struct NullDevice;

impl BlockDevice for NullDevice {
    fn name(&self) -> &str {
        "null"
    }
    fn size(&self) -> u64 {
        1 << 30
    }
    fn read<'a>(&'a self, _: ByteOffset, _: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        BoxFuture::new(async { Ok(()) })
    }
    fn write<'a>(
        &'a self,
        _: ByteOffset,
        _: &'a [u8],
        _: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        BoxFuture::new(async { Ok(()) })
    }
    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        BoxFuture::new(async { Ok(()) })
    }
    fn discard(&self, _: ByteOffset, _: u64) -> BoxFuture<'_, BlockResult> {
        BoxFuture::new(async { Ok(()) })
    }
    fn write_zeroes(&self, _: ByteOffset, _: u64, _: bool) -> BoxFuture<'_, BlockResult> {
        BoxFuture::new(async { Ok(()) })
    }
}

fn export(name: &str) -> Export {
    Export {
        name: name.to_string(),
        description: format!("fuzz export {name}"),
        device: Arc::new(NullDevice),
        read_only: name == "ro",
        preferred_block: 4096,
        multi_conn: true,
        contexts: Default::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    // One table with a single export (default-export path), one with two.
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let table = if selector & 1 == 0 {
        ExportTable::new(vec![export("vol")])
    } else {
        ExportTable::new(vec![export("a"), export("ro")])
    };
    // Bits 1-2: TLS off, allowed, required, or already running.
    let tls = match (selector >> 1) & 3 {
        0 => TlsState::Off,
        1 => TlsState::Offered { required: false },
        2 => TlsState::Offered { required: true },
        _ => TlsState::Active,
    };
    let t = negotiate_bytes_tls(&table, tls, input);
    assert!(t.output.len() >= 18, "greeting always sent");
    if tls == (TlsState::Offered { required: true }) {
        assert!(t.export.is_none(), "no transmission in plain text when TLS is required");
    }
    if matches!(tls, TlsState::Off | TlsState::Active) {
        assert!(!t.starttls, "STARTTLS accepted without TLS on offer");
    }
});
