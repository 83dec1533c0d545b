//! RAID-6 P and Q syndromes over GF(2^8) as Linux md computes them, and
//! the recovery of any two lost blocks of a stripe.
//!
//! The field is GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1
//! (0x11d) and generator g = 2 (H. Peter Anvin, "The mathematics of
//! RAID-6"). For data blocks D_0 .. D_{n-1}, in md's slot order (the data
//! disk after Q is slot 0, see `raid6_idx_to_slot` in md's raid5.c):
//!
//! ```text
//!   P = D_0 ^ D_1 ^ ... ^ D_{n-1}
//!   Q = g^0·D_0 ^ g^1·D_1 ^ ... ^ g^{n-1}·D_{n-1}
//! ```
//!
//! Q is built by Horner's rule, `q = q·g ^ D_i` from the highest slot down,
//! where `·g` is a shift and a conditional XOR of 0x1d per byte: done on
//! `u64` lanes (eight bytes at a time), which LLVM vectorises; the kernel is
//! compiled twice, for the baseline target and for AVX2, and picked at run
//! time. Multiplying a buffer by an arbitrary constant (recovery only)
//! uses a 256-entry product table of that constant.
//!
//! [`reference`] holds the byte-at-a-time definitions the property tests
//! compare against.

use super::parity::xor_into;

/// The low byte of the field polynomial 0x11d.
const POLY: u8 = 0x1d;

/// Bytes per tile: the P and Q tiles stay in L1 while the sources stream.
const TILE: usize = 8 << 10;

/// `EXP[i] = g^i` for i in 0..255, repeated once so `EXP[a + b]` needs no
/// reduction mod 255.
static EXP: [u8; 510] = exp_table();
/// `LOG[x] = i` with g^i = x, for x ≠ 0 (`LOG[0]` is unused).
static LOG: [u8; 256] = log_table();

const fn exp_table() -> [u8; 510] {
    let mut t = [0u8; 510];
    let mut x: u8 = 1;
    let mut i = 0;
    while i < 510 {
        t[i] = x;
        x = mul2(x);
        i += 1;
    }
    t
}

const fn log_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut x: u8 = 1;
    let mut i = 0;
    while i < 255 {
        t[x as usize] = i as u8;
        x = mul2(x);
        i += 1;
    }
    t
}

/// `x·g` in the field.
const fn mul2(x: u8) -> u8 {
    (x << 1) ^ if x & 0x80 != 0 { POLY } else { 0 }
}

/// `a·b` in the field.
pub fn gf_mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
}

/// `g^e` for any exponent (g has order 255).
pub fn gf_pow2(e: usize) -> u8 {
    EXP[e % 255]
}

/// The multiplicative inverse of `a` (≠ 0).
pub fn gf_inv(a: u8) -> u8 {
    debug_assert_ne!(a, 0);
    EXP[255 - LOG[a as usize] as usize]
}

/// Eight bytes multiplied by g at once.
#[inline(always)]
fn mul2_lanes(x: u64) -> u64 {
    let high = x & 0x8080_8080_8080_8080;
    let reduce = (high >> 7).wrapping_mul(u64::from(POLY));
    ((x & 0x7f7f_7f7f_7f7f_7f7f) << 1) ^ reduce
}

#[inline(always)]
fn load(b: &[u8]) -> u64 {
    u64::from_ne_bytes(b.try_into().unwrap_or_default())
}

/// `q = q·g ^ d`, over whole buffers of the same length.
#[inline(always)]
fn horner_step(q: &mut [u8], d: &[u8]) {
    let mut qs = q.chunks_exact_mut(8);
    let mut ds = d.chunks_exact(8);
    for (q, d) in (&mut qs).zip(&mut ds) {
        let v = mul2_lanes(load(q)) ^ load(d);
        q.copy_from_slice(&v.to_ne_bytes());
    }
    for (q, d) in qs.into_remainder().iter_mut().zip(ds.remainder()) {
        *q = mul2(*q) ^ *d;
    }
}

/// One tile of P and Q from the same tile of every source.
#[inline(always)]
fn syndrome_tile(p: &mut [u8], q: &mut [u8], data: &[&[u8]], range: std::ops::Range<usize>) {
    let Some((last, rest)) = data.split_last() else {
        p.fill(0);
        q.fill(0);
        return;
    };
    p.copy_from_slice(&last[range.clone()]);
    q.copy_from_slice(&last[range.clone()]);
    for d in rest.iter().rev() {
        pq_step(p, q, &d[range.clone()]);
    }
}

/// `p ^= d` and `q = q·g ^ d` in one pass over `d`.
#[inline(always)]
fn pq_step(p: &mut [u8], q: &mut [u8], d: &[u8]) {
    let mut ps = p.chunks_exact_mut(8);
    let mut qs = q.chunks_exact_mut(8);
    let mut ds = d.chunks_exact(8);
    for ((p, q), d) in (&mut ps).zip(&mut qs).zip(&mut ds) {
        let dv = load(d);
        p.copy_from_slice(&(load(p) ^ dv).to_ne_bytes());
        q.copy_from_slice(&(mul2_lanes(load(q)) ^ dv).to_ne_bytes());
    }
    let tail = ps.into_remainder().iter_mut().zip(qs.into_remainder());
    for ((p, q), d) in tail.zip(ds.remainder()) {
        *p ^= *d;
        *q = mul2(*q) ^ *d;
    }
}

#[inline(always)]
fn syndrome_generic(p: &mut [u8], q: &mut [u8], data: &[&[u8]]) {
    for (t, (pt, qt)) in p.chunks_mut(TILE).zip(q.chunks_mut(TILE)).enumerate() {
        let range = t * TILE..t * TILE + pt.len();
        syndrome_tile(pt, qt, data, range);
    }
}

/// Bytes of a column the AVX2 kernel keeps in registers: four 32-byte
/// lanes of P and four of Q.
#[cfg(target_arch = "x86_64")]
const COLUMN: usize = 128;

/// P and Q with AVX2, as md's `raid6_avx2x4`: each 128-byte column of P
/// and Q stays in registers while every source's column streams past (one
/// load per source and lane, no P/Q traffic until the column is done);
/// the tail under a column is done by the generic kernel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn syndrome_avx2(p: &mut [u8], q: &mut [u8], data: &[&[u8]]) {
    let len = p.len();
    let body = len - len % COLUMN;
    if data.is_empty() || body == 0 {
        return syndrome_generic(p, q, data);
    }
    let mut off = 0;
    while off < body {
        // SAFETY: AVX2 is enabled for this function (its callers check the
        // CPU); `off + COLUMN <= body <= len` and every source, P and Q are
        // `len` bytes long (`gen_syndrome` asserts it), so each unaligned
        // 32-byte load and store below is in bounds.
        unsafe { column_avx2(p, q, data, off) };
        off += COLUMN;
    }
    if body < len {
        syndrome_tile(&mut p[body..], &mut q[body..], data, body..len);
    }
}

/// One 128-byte column of P and Q at `off` (see [`syndrome_avx2`]).
///
/// # Safety
/// The CPU supports AVX2; `off + COLUMN` is within `p`, `q` and every
/// source; `data` is not empty.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn column_avx2(p: &mut [u8], q: &mut [u8], data: &[&[u8]], off: usize) {
    use std::arch::x86_64::*;
    const LANES: usize = COLUMN / 32;
    let load = |b: &[u8], i: usize| {
        // SAFETY: the caller's bounds; unaligned loads need no alignment.
        unsafe { _mm256_loadu_si256(b.as_ptr().add(off + 32 * i).cast()) }
    };
    let poly = _mm256_set1_epi8(POLY as i8);
    let zero = _mm256_setzero_si256();
    let (last, rest) = data.split_last().expect("column of no source");
    let mut pv: [__m256i; LANES] = std::array::from_fn(|i| load(last, i));
    let mut qv = pv;
    for d in rest.iter().rev() {
        for i in 0..LANES {
            let dv = load(d, i);
            // q·g: bytes with the top bit set (negative) get 0x1d after
            // the shift, as md's `vpcmpgtb` / `vpaddb` / `vpand`.
            let high = _mm256_cmpgt_epi8(zero, qv[i]);
            let doubled = _mm256_add_epi8(qv[i], qv[i]);
            let reduced = _mm256_xor_si256(doubled, _mm256_and_si256(high, poly));
            qv[i] = _mm256_xor_si256(reduced, dv);
            pv[i] = _mm256_xor_si256(pv[i], dv);
        }
    }
    for i in 0..LANES {
        // SAFETY: the caller's bounds, as for the loads.
        unsafe {
            _mm256_storeu_si256(p.as_mut_ptr().add(off + 32 * i).cast(), pv[i]);
            _mm256_storeu_si256(q.as_mut_ptr().add(off + 32 * i).cast(), qv[i]);
        }
    }
}

/// P and Q of `data` (in slot order) into `p` and `q`. Every buffer must
/// have the same length. With no data both are zero.
pub fn gen_syndrome(p: &mut [u8], q: &mut [u8], data: &[&[u8]]) {
    assert_eq!(p.len(), q.len(), "P and Q differ in length");
    assert!(
        data.iter().all(|d| d.len() == p.len()),
        "data blocks differ in length from P"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { syndrome_avx2(p, q, data) };
        return;
    }
    syndrome_generic(p, q, data)
}

/// `dst ^= c·src` over whole buffers: AVX2 nibble tables where the CPU
/// has it, a product table of `c` for the rest.
pub fn mul_xor_into(dst: &mut [u8], src: &[u8], c: u8) {
    debug_assert_eq!(dst.len(), src.len());
    let done = mul_vectorised(dst, Some(src), c);
    let table: [u8; 256] = std::array::from_fn(|x| gf_mul(c, x as u8));
    for (d, s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d ^= table[*s as usize];
    }
}

/// `buf = c·buf`.
pub fn mul_in_place(buf: &mut [u8], c: u8) {
    let done = mul_vectorised(buf, None, c);
    let table: [u8; 256] = std::array::from_fn(|x| gf_mul(c, x as u8));
    for b in buf[done..].iter_mut() {
        *b = table[*b as usize];
    }
}

/// The vectorised part of [`mul_xor_into`] (`src` given) or
/// [`mul_in_place`]: returns how many leading bytes it did (0 without
/// AVX2).
fn mul_vectorised(dst: &mut [u8], src: Option<&[u8]>, c: u8) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { mul_avx2(dst, src, c) };
    }
    let _ = (dst, src, c);
    0
}

/// `c·x` is linear over XOR: `c·x = c·(x & 0x0f) ^ c·(x & 0xf0)`, each
/// half a 16-entry table looked up 32 bytes at a time with `vpshufb`
/// (md's `raid6_2data_recov_avx2`). Whole 32-byte blocks only; returns
/// how many bytes it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn mul_avx2(dst: &mut [u8], src: Option<&[u8]>, c: u8) -> usize {
    use std::arch::x86_64::*;
    let low: [u8; 16] = std::array::from_fn(|x| gf_mul(c, x as u8));
    let high: [u8; 16] = std::array::from_fn(|x| gf_mul(c, (x << 4) as u8));
    // SAFETY: 16-byte unaligned loads of 16-byte arrays.
    let (low, high) = unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(low.as_ptr().cast())),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(high.as_ptr().cast())),
        )
    };
    let nibble = _mm256_set1_epi8(0x0f);
    let body = dst.len() - dst.len() % 32;
    if let Some(src) = src {
        assert!(src.len() >= body, "source shorter than the destination");
    }
    let mut off = 0;
    while off < body {
        // SAFETY: `off + 32 <= body`, within `dst` and (asserted) `src`.
        unsafe {
            let at = dst.as_mut_ptr().add(off).cast::<__m256i>();
            let x = match src {
                Some(s) => _mm256_loadu_si256(s.as_ptr().add(off).cast()),
                None => _mm256_loadu_si256(at),
            };
            let lo = _mm256_and_si256(x, nibble);
            let hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble);
            let product =
                _mm256_xor_si256(_mm256_shuffle_epi8(low, lo), _mm256_shuffle_epi8(high, hi));
            let out = match src {
                Some(_) => _mm256_xor_si256(_mm256_loadu_si256(at), product),
                None => product,
            };
            _mm256_storeu_si256(at, out);
        }
        off += 32;
    }
    body
}

/// Which blocks of a stripe are lost, by slot (`Data(i)`, P or Q).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// One data block; P and Q are intact (either would do; P is used).
    Data(usize),
    /// Two data blocks `x < y`.
    TwoData(usize, usize),
    /// Data block `x` and P.
    DataAndP(usize),
    /// Data block `x` and Q.
    DataAndQ(usize),
}

/// Rebuilds the lost data blocks of a stripe in place.
///
/// `data` holds every data block in slot order; the lost ones' contents
/// are ignored and overwritten. `p` and `q` are the stripe's parity blocks
/// (a lost one's contents are ignored and left as they are: regenerate it
/// with [`gen_syndrome`] afterwards). `scratch` must be as long as a block.
pub fn recover(data: &mut [&mut [u8]], p: &[u8], q: &[u8], lost: Lost, scratch: &mut [u8]) {
    match lost {
        Lost::Data(x) | Lost::DataAndQ(x) => recover_from_p(data, p, x),
        Lost::DataAndP(x) => recover_from_q(data, q, x, scratch),
        Lost::TwoData(x, y) => recover_two(data, p, q, x, y, scratch),
    }
}

/// `D_x = P ^ (every other D)`.
fn recover_from_p(data: &mut [&mut [u8]], p: &[u8], x: usize) {
    let (before, rest) = data.split_at_mut(x);
    let (dx, after) = rest.split_first_mut().expect("lost slot in range");
    dx.copy_from_slice(p);
    for d in before.iter().chain(after.iter()) {
        xor_into(dx, d);
    }
}

/// Q of the stripe with slots `zeroed` taken as zero, into `out`.
fn partial_q(data: &[&mut [u8]], zeroed: &[usize], out: &mut [u8]) {
    out.fill(0);
    for (i, d) in data.iter().enumerate().rev() {
        if zeroed.contains(&i) {
            mul_in_place(out, 2);
        } else {
            horner_step(out, d);
        }
    }
}

/// `D_x = (Q ^ Q_x) · g^{-x}`, where Q_x is Q with D_x = 0.
fn recover_from_q(data: &mut [&mut [u8]], q: &[u8], x: usize, scratch: &mut [u8]) {
    partial_q(data, &[x], scratch);
    xor_into(scratch, q);
    mul_in_place(scratch, gf_inv(gf_pow2(x)));
    data[x].copy_from_slice(scratch);
}

/// Two data blocks, after hpa's paper §4:
/// `A = g^{y-x}·(g^{y-x} ^ 1)^{-1}`, `B = g^{-x}·(g^{y-x} ^ 1)^{-1}`,
/// `D_x = A·(P ^ P_xy) ^ B·(Q ^ Q_xy)`, `D_y = (P ^ P_xy) ^ D_x`, where
/// P_xy and Q_xy are P and Q with D_x = D_y = 0.
fn recover_two(data: &mut [&mut [u8]], p: &[u8], q: &[u8], x: usize, y: usize, scratch: &mut [u8]) {
    assert!(x < y && y < data.len(), "lost slots {x}, {y} out of order");
    partial_q(data, &[x, y], scratch);
    xor_into(scratch, q);
    let (lo, hi) = data.split_at_mut(y);
    let (dy, above) = hi.split_first_mut().expect("y in range");
    dy.copy_from_slice(p);
    for (_, d) in lo.iter().enumerate().filter(|(i, _)| *i != x) {
        xor_into(dy, d);
    }
    for d in above.iter() {
        xor_into(dy, d);
    }
    let gyx = gf_pow2(y - x);
    let denom = gf_inv(gyx ^ 1);
    let a = gf_mul(gyx, denom);
    let b = gf_mul(gf_inv(gf_pow2(x)), denom);
    let dx = &mut lo[x];
    dx.fill(0);
    mul_xor_into(dx, dy, a);
    mul_xor_into(dx, scratch, b);
    xor_into(dy, dx);
}

/// Byte-at-a-time definitions, for the property tests and the benches.
pub mod reference {
    use super::{gf_mul, gf_pow2};

    /// P and Q by the definition.
    pub fn syndrome(data: &[&[u8]], len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut p = vec![0u8; len];
        let mut q = vec![0u8; len];
        for (i, d) in data.iter().enumerate() {
            let g = gf_pow2(i);
            for b in 0..len {
                p[b] ^= d[b];
                q[b] ^= gf_mul(g, d[b]);
            }
        }
        (p, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn field_tables_match_the_polynomial() {
        // g^8 = x^4 + x^3 + x^2 + 1 = 0x1d; g has order 255.
        assert_eq!(gf_pow2(8), 0x1d);
        assert_eq!(gf_pow2(255), 1);
        let mut seen = [false; 256];
        for e in 0..255 {
            seen[gf_pow2(e) as usize] = true;
        }
        assert!(
            !seen[0] && seen[1..].iter().all(|s| *s),
            "g generates the group"
        );
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1, "inverse of {a}");
        }
    }

    /// Multiplication by shift-and-reduce, independent of the tables.
    fn slow_mul(mut a: u8, mut b: u8) -> u8 {
        let mut r = 0;
        while b != 0 {
            if b & 1 != 0 {
                r ^= a;
            }
            a = mul2(a);
            b >>= 1;
        }
        r
    }

    #[test]
    fn table_multiplication_matches_shift_and_reduce() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(gf_mul(a, b), slow_mul(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn q_of_known_bytes_follows_the_definition() {
        // Two data disks 0x01 and 0x01: Q = g^0 + g^1 = 1 ^ 2 = 3; with
        // 0x80 in slot 1: Q = 2 * 0x80 = 0x1d.
        let (mut p, mut q) = (vec![0u8; 1], vec![0u8; 1]);
        gen_syndrome(&mut p, &mut q, &[&[1], &[1]]);
        assert_eq!((p[0], q[0]), (0, 3));
        gen_syndrome(&mut p, &mut q, &[&[0], &[0x80]]);
        assert_eq!((p[0], q[0]), (0x80, 0x1d));
    }

    #[test]
    fn buffer_products_match_the_field_for_every_constant() {
        // 100 bytes: three vectorised blocks and a table-done tail.
        let src: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
        for c in 0..=255u8 {
            let mut acc: Vec<u8> = (0..100u32).map(|i| (i * 5) as u8).collect();
            let want: Vec<u8> = acc
                .iter()
                .zip(&src)
                .map(|(a, s)| a ^ slow_mul(c, *s))
                .collect();
            mul_xor_into(&mut acc, &src, c);
            assert_eq!(acc, want, "dst ^= {c} * src");
            let mut buf = src.clone();
            mul_in_place(&mut buf, c);
            let want: Vec<u8> = src.iter().map(|s| slow_mul(c, *s)).collect();
            assert_eq!(buf, want, "buf = {c} * buf");
        }
    }

    fn stripe() -> impl Strategy<Value = Vec<Vec<u8>>> {
        (1usize..=14, 0usize..=3 * TILE / 2 + 9).prop_flat_map(|(n, len)| {
            prop::collection::vec(prop::collection::vec(any::<u8>(), len), n)
        })
    }

    fn syndrome_of(data: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let len = data[0].len();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let (mut p, mut q) = (vec![0xa5; len], vec![0x5a; len]);
        gen_syndrome(&mut p, &mut q, &refs);
        (p, q)
    }

    fn lose_and_recover(data: &[Vec<u8>], lost: Lost) -> Vec<Vec<u8>> {
        let (p, q) = syndrome_of(data);
        let mut copy = data.to_vec();
        let slots = match lost {
            Lost::TwoData(x, y) => vec![x, y],
            Lost::Data(x) | Lost::DataAndP(x) | Lost::DataAndQ(x) => vec![x],
        };
        for s in slots {
            copy[s].fill(0xee);
        }
        let p = if matches!(lost, Lost::DataAndP(_)) {
            vec![0xcc; p.len()]
        } else {
            p
        };
        let q = if matches!(lost, Lost::DataAndQ(_)) {
            vec![0xcc; q.len()]
        } else {
            q
        };
        let mut scratch = vec![0x77; p.len()];
        let mut refs: Vec<&mut [u8]> = copy.iter_mut().map(Vec::as_mut_slice).collect();
        recover(&mut refs, &p, &q, lost, &mut scratch);
        copy
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn syndrome_matches_the_byte_at_a_time_definition(data in stripe()) {
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let want = reference::syndrome(&refs, data[0].len());
            prop_assert_eq!(syndrome_of(&data), want);
        }

        #[test]
        fn the_portable_kernel_matches_the_dispatched_one(data in stripe()) {
            let len = data[0].len();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let (mut p, mut q) = (vec![0; len], vec![0; len]);
            syndrome_generic(&mut p, &mut q, &refs);
            prop_assert_eq!((p, q), syndrome_of(&data));
        }

        #[test]
        fn any_two_lost_blocks_come_back(data in stripe(), a in any::<prop::sample::Index>(),
                                         b in any::<prop::sample::Index>(), kind in 0u8..4) {
            let n = data.len();
            let (x, y) = (a.index(n), b.index(n));
            let lost = match kind {
                0 => Lost::Data(x),
                1 => Lost::DataAndP(x),
                2 => Lost::DataAndQ(x),
                _ if x == y => Lost::Data(x),
                _ => Lost::TwoData(x.min(y), x.max(y)),
            };
            prop_assert_eq!(lose_and_recover(&data, lost), data);
        }
    }
}
