//! XOR parity over byte buffers.
//!
//! Plain `u64` loops over fixed-size blocks: LLVM turns them into SIMD
//! without `unsafe`. Multi-source XOR works tile by tile (16 KiB) so the
//! destination tile stays in L1 while every source streams through once.

/// Bytes per tile of [`xor_sources`].
const TILE: usize = 16 << 10;

/// `dst ^= src`. Both must be the same length.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(64);
    let mut s = src.chunks_exact(64);
    for (d, s) in (&mut d).zip(&mut s) {
        for i in 0..8 {
            let r = 8 * i..8 * i + 8;
            let x = u64::from_ne_bytes(d[r.clone()].try_into().unwrap_or_default())
                ^ u64::from_ne_bytes(s[r.clone()].try_into().unwrap_or_default());
            d[r].copy_from_slice(&x.to_ne_bytes());
        }
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d ^= *s;
    }
}

/// `dst = sources[0] ^ sources[1] ^ ...`; `dst` is zeroed when there are
/// no sources. Every source must be as long as `dst`.
pub fn xor_sources(dst: &mut [u8], sources: &[&[u8]]) {
    let Some((first, rest)) = sources.split_first() else {
        dst.fill(0);
        return;
    };
    for (t, dst_tile) in dst.chunks_mut(TILE).enumerate() {
        let range = t * TILE..t * TILE + dst_tile.len();
        dst_tile.copy_from_slice(&first[range.clone()]);
        for src in rest {
            xor_into(dst_tile, &src[range.clone()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(len: usize, sources: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0; len];
        for s in sources {
            for (o, b) in out.iter_mut().zip(s) {
                *o ^= b;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn xor_sources_matches_bytewise_xor(len in 0usize..40_000, n in 0usize..6, seed in any::<u8>()) {
            let sources: Vec<Vec<u8>> = (0..n)
                .map(|k| (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ k as u8)).collect())
                .collect();
            let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
            let mut dst = vec![0xAA; len];
            xor_sources(&mut dst, &refs);
            prop_assert_eq!(dst, naive(len, &sources));
        }
    }

    #[test]
    fn xor_into_twice_restores_the_original() {
        let orig: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let key: Vec<u8> = (0..1000u32).map(|i| (i * 13 + 5) as u8).collect();
        let mut buf = orig.clone();
        xor_into(&mut buf, &key);
        assert_ne!(buf, orig);
        xor_into(&mut buf, &key);
        assert_eq!(buf, orig);
    }
}
