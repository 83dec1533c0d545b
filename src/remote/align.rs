//! Requests cut to a server's minimum block size (`NBD_INFO_BLOCK_SIZE`):
//! where a request starts or ends inside a block, that block is read,
//! patched and written whole (read-modify-write); the whole blocks between
//! go to the server as they are.
//!
//! ```text
//!  offset                                               offset+len
//!    │◄─────────────────── the request ────────────────────►│
//!  ├─┴──────┼────────┼────────┼────────┼────────┼───────────┴──┤
//!  │  head  │           middle (whole blocks)         │  tail   │
//!  └────────────────────────── outer ─────────────────────────┘
//! ```
//!
//! Pure arithmetic on numbers the server chose (`min` is a power of two
//! of at most 64 KiB, checked by `reply::parse_info`); fuzzed with the
//! server's bytes by `nbd_server_bytes`.

use std::ops::Range;

/// How a request falls on blocks of `min` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The request rounded out to whole blocks: what a write locks.
    pub outer: Range<u64>,
    /// Start of the first block when the request covers only part of it.
    pub head: Option<u64>,
    /// Start of the last block when the request covers only part of it
    /// and it is not the head block.
    pub tail: Option<u64>,
    /// Whole blocks the request covers entirely (may be empty).
    pub middle: Range<u64>,
}

impl Plan {
    /// True when nothing has to be read first.
    pub fn aligned(&self) -> bool {
        self.head.is_none() && self.tail.is_none()
    }
}

/// Plans a request of `len` (> 0) bytes at `offset` over blocks of `min`
/// bytes (a power of two). The caller has checked that the request lies
/// inside an export whose usable size is a multiple of `min`, so the
/// rounded end cannot overflow.
pub fn plan(min: u64, offset: u64, len: u64) -> Plan {
    debug_assert!(min.is_power_of_two() && len > 0);
    let mask = min - 1;
    let end = offset + len;
    let first = offset & !mask;
    let outer_end = (end + mask) & !mask;
    let last = outer_end - min;
    let head = (offset != first || end < first + min).then_some(first);
    let tail = (last != first && end != outer_end).then_some(last);
    let mid_start = if head.is_some() { first + min } else { first };
    let mid_end = if tail.is_some() { last } else { outer_end };
    Plan {
        outer: first..outer_end,
        head,
        tail,
        middle: mid_start..mid_end.max(mid_start),
    }
}

/// What a write puts into the blocks it covers.
#[derive(Clone, Copy, Debug)]
pub enum Fill<'a> {
    /// These bytes, the first at the request's offset.
    Bytes(&'a [u8]),
    /// Zeroes.
    Zero,
}

/// Puts into `block` (the export's bytes from `block_start`) the part of
/// a request at `offset` of `len` bytes that falls inside it.
pub fn patch(block_start: u64, block: &mut [u8], offset: u64, len: u64, fill: Fill<'_>) {
    let block_end = block_start + block.len() as u64;
    let (from, to) = (offset.max(block_start), (offset + len).min(block_end));
    if from >= to {
        return;
    }
    let dst = &mut block[(from - block_start) as usize..(to - block_start) as usize];
    match fill {
        Fill::Bytes(src) => {
            dst.copy_from_slice(&src[(from - offset) as usize..(to - offset) as usize])
        }
        Fill::Zero => dst.fill(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plans_of_the_shapes_a_4k_server_sees() {
        let p = plan(4096, 512, 512);
        assert_eq!((p.outer, p.head, p.tail), (0..4096, Some(0), None));
        assert!(p.middle.is_empty());
        let p = plan(4096, 4096, 8192);
        assert!(p.aligned());
        assert_eq!(p.middle, 4096..12288);
        let p = plan(4096, 3584, 8192);
        assert_eq!(
            (p.head, p.tail, p.middle),
            (Some(0), Some(8192), 4096..8192)
        );
        let p = plan(4096, 4096, 4608);
        assert_eq!((p.head, p.tail, p.middle), (None, Some(8192), 4096..8192));
        let p = plan(1, 7, 3);
        assert!(p.aligned());
    }

    proptest! {
        /// Head, middle and tail cover the request exactly once, inside the
        /// outer blocks; patching them from the request rebuilds it.
        #[test]
        fn a_plan_covers_the_request_once(
            shift in 0u32..17, offset in 0u64..(1 << 20), len in 1u64..(1 << 18)
        ) {
            let min = 1u64 << shift;
            let p = plan(min, offset, len);
            let mut parts: Vec<Range<u64>> = vec![p.middle.clone()];
            parts.extend(p.head.map(|h| h..h + min));
            parts.extend(p.tail.map(|t| t..t + min));
            parts.retain(|r| !r.is_empty());
            parts.sort_by_key(|r| r.start);
            prop_assert_eq!(parts.first().unwrap().start, p.outer.start);
            prop_assert_eq!(parts.last().unwrap().end, p.outer.end);
            for w in parts.windows(2) {
                prop_assert_eq!(w[0].end, w[1].start);
            }
            prop_assert!(p.outer.start <= offset && offset + len <= p.outer.end);
            prop_assert!(p.outer.start.is_multiple_of(min) && p.outer.end.is_multiple_of(min));
            prop_assert!(p.outer.end - p.outer.start < len + 2 * min);
            let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let mut outer = vec![0u8; (p.outer.end - p.outer.start) as usize];
            patch(p.outer.start, &mut outer, offset, len, Fill::Bytes(&src));
            let at = (offset - p.outer.start) as usize;
            prop_assert!(outer[at..at + len as usize] == src[..]);
            prop_assert!(outer[..at].iter().all(|&b| b == 0));
        }
    }
}
