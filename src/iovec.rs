//! Scatter-gather lists for [`crate::block::BlockDevice`]'s vectored calls:
//! std's [`IoSlice`] / [`IoSliceMut`] (ABI-compatible with `struct iovec`,
//! so a member hands them to `readv`/`writev` as they are), and the few
//! operations the layers need on them.
//!
//! ```text
//!  export: guest memory regions / reply buffer ─► [IoSliceMut] ─► Volume
//!  level:  split by extent (sub-lists borrowing the same bytes, no copy)
//!  member: aligned ─► READV/WRITEV straight into the segments
//!          unaligned ─► bounce (counted: `member::bounce_bytes`)
//! ```
//!
//! Splitting borrows: a sub-list made by [`split_mut`] borrows the parent
//! list mutably for as long as it lives, so sub-lists of one request are
//! disjoint and the compiler keeps them so.

use std::io::{IoSlice, IoSliceMut};

/// Total bytes of a read list.
pub fn len_mut(bufs: &[IoSliceMut<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Total bytes of a write list.
pub fn len(bufs: &[IoSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// True when every segment's address and length are multiples of `align`
/// (a power of two): what O_DIRECT asks of a vectored transfer.
pub fn is_aligned<'s>(segs: impl IntoIterator<Item = &'s [u8]>, align: u64) -> bool {
    let mask = align as usize - 1;
    segs.into_iter()
        .all(|s| s.as_ptr() as usize & mask == 0 && s.len() & mask == 0)
}

/// Cuts a read list into consecutive sub-lists of `lens` bytes each
/// (their sum must not exceed the list's length), borrowing the same
/// bytes: one per extent of a striped request.
pub fn split_mut<'b>(
    bufs: &'b mut [IoSliceMut<'_>],
    lens: impl IntoIterator<Item = usize>,
) -> Vec<Vec<IoSliceMut<'b>>> {
    let mut segs = bufs.iter_mut().map(|b| &mut **b);
    let mut cur: &'b mut [u8] = &mut [];
    let mut out = Vec::new();
    for want in lens {
        let mut list = Vec::new();
        let mut left = want;
        while left > 0 {
            if cur.is_empty() {
                match segs.next() {
                    Some(s) => cur = s,
                    None => break,
                }
                continue;
            }
            let n = left.min(cur.len());
            let (piece, rest) = std::mem::take(&mut cur).split_at_mut(n);
            cur = rest;
            list.push(IoSliceMut::new(piece));
            left -= n;
        }
        out.push(list);
    }
    out
}

/// Cuts a write list into consecutive sub-lists of `lens` bytes each, as
/// [`split_mut`] does for reads.
pub fn split<'b>(
    bufs: &'b [IoSlice<'_>],
    lens: impl IntoIterator<Item = usize>,
) -> Vec<Vec<IoSlice<'b>>> {
    let mut segs = bufs.iter().map(|b| &**b);
    let mut cur: &'b [u8] = &[];
    let mut out = Vec::new();
    for want in lens {
        let mut list = Vec::new();
        let mut left = want;
        while left > 0 {
            if cur.is_empty() {
                match segs.next() {
                    Some(s) => cur = s,
                    None => break,
                }
                continue;
            }
            let n = left.min(cur.len());
            let (piece, rest) = cur.split_at(n);
            cur = rest;
            list.push(IoSlice::new(piece));
            left -= n;
        }
        out.push(list);
    }
    out
}

/// Copies the list's bytes, in order, into `out` (as far as both reach).
pub fn gather(bufs: &[IoSlice<'_>], out: &mut [u8]) {
    let mut at = 0;
    for b in bufs {
        let n = b.len().min(out.len() - at);
        out[at..at + n].copy_from_slice(&b[..n]);
        at += n;
    }
}

/// Copies `data` into the list's segments, in order (as far as both reach).
pub fn scatter(data: &[u8], bufs: &mut [IoSliceMut<'_>]) {
    let mut at = 0;
    for b in bufs {
        let n = b.len().min(data.len() - at);
        b[..n].copy_from_slice(&data[at..at + n]);
        at += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_mut_cuts_across_segments_without_copying() {
        // Arrange: segments of 3, 5 and 4 bytes.
        let (mut a, mut b, mut c) = ([0u8; 3], [0u8; 5], [0u8; 4]);
        let pa = a.as_ptr();
        let mut list = [
            IoSliceMut::new(&mut a),
            IoSliceMut::new(&mut b),
            IoSliceMut::new(&mut c),
        ];

        // Act
        let mut parts = split_mut(&mut list, [2, 7, 3]);

        // Assert
        let lens: Vec<Vec<usize>> = parts
            .iter()
            .map(|p| p.iter().map(|s| s.len()).collect())
            .collect();
        assert_eq!(lens, vec![vec![2], vec![1, 5, 1], vec![3]]);
        assert_eq!(parts[0][0].as_ptr(), pa);
        for (i, part) in parts.iter_mut().enumerate() {
            for s in part.iter_mut() {
                s.fill(i as u8 + 1);
            }
        }
        drop(parts);
        assert_eq!((a, b, c), ([1, 1, 2], [2; 5], [2, 3, 3, 3]));
    }

    #[test]
    fn gather_and_scatter_round_trip() {
        let data: Vec<u8> = (0..12).collect();
        let (mut a, mut b) = ([0u8; 5], [0u8; 7]);
        scatter(
            &data,
            &mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)],
        );
        let mut back = [0u8; 12];
        gather(&[IoSlice::new(&a), IoSlice::new(&b)], &mut back);
        assert_eq!(&back[..], &data[..]);
        let list = [IoSlice::new(&a), IoSlice::new(&b)];
        let parts = split(&list, [6, 6]);
        assert_eq!(parts.iter().map(|p| len(p)).collect::<Vec<_>>(), [6, 6]);
    }

    #[test]
    fn alignment_looks_at_every_address_and_length() {
        let buf = crate::member::buf::AlignedBuf::new(8192);
        let s = buf.as_slice();
        assert!(is_aligned([&s[..4096], &s[4096..]], 512));
        assert!(!is_aligned([&s[..4096], &s[4096..4608]], 4096));
        assert!(!is_aligned([&s[512..1024]], 4096));
    }
}
