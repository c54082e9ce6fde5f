//! Products of one to three activation rows with bf16 or int8 weights, the weights converted to
//! f32 in registers: the one-row steps of ARM decoding with a KV cache.
//!
//! With one row every weight is used once, so the product is bound by how fast the weights
//! arrive from memory — which is what bf16 (half the bytes of f32) and int8 (0.28x) are for. The
//! decode path of [`crate::cpu_gemm::matmul_strips_with`] spends that: it writes each decoded
//! strip to an f32 buffer and reads it back for a one-row product, and measured 35 % (bf16) and
//! 18 % (int8) of the bandwidth floor against f32's 59 % on an AVX2 Zen 3 (benches/README.md).
//! Here each 32-byte load of weights is widened in registers and multiplied at once.
//!
//! The arithmetic is that of the decode path, operation for operation: every output column
//! starts from its bias (or zero) and adds `x[kk] * w[kk][c]` with one FMA per depth row in
//! increasing `kk`, `w` being the decoded value (bf16: exact; int8: `scale * q`, rounded once
//! as the decoder rounds it). So the projections are bitwise those of the decode path on any
//! instruction set, and the head's dot products, for one and two rows, bitwise those of the AVX2
//! dot tiles (8 lanes, the same horizontal sum; three rows sum in another order) — both tested.
//!
//! AVX2+FMA only (also on AVX-512 CPUs: the loads, not the lanes, are the limit here); callers
//! check [`runs`].

use rayon::prelude::*;

use crate::cpu_gemm::{Isa, SendPtr};
use crate::cpu_quant::{Q8_ROW_BLOCK, Q8_STRIP_BLOCK, QK};

/// Rows up to which the products here replace the decode path (three rows keep every
/// accumulator in a register; the decode path's register blocks take over from four).
pub(crate) const MAX_ROWS: usize = 3;
/// Columns per strip.
const NR: usize = crate::cpu_gemm::STRIP;
/// Head (vocabulary) rows per task.
const HEAD_BLOCK: usize = 256;

/// Whether the products here run for `m` rows: one to three, where the CPU kernels are
/// AVX2 or AVX-512 ([`crate::cpu_gemm::isa`], which never exceeds what the CPU has; forced to
/// `generic`, the decode path runs instead).
pub fn runs(m: usize) -> bool {
    (1..=MAX_ROWS).contains(&m) && crate::cpu_gemm::isa() >= Isa::Avx2
}

/// A projection's strip weights in a compressed format.
#[derive(Clone, Copy)]
pub enum StripWeights<'a> {
    /// [`crate::cpu_quant`]'s bf16 strips (pair order).
    Bf16(&'a [half::bf16]),
    /// [`crate::cpu_quant`]'s int8 strips (`vpdpbusd` order, biased by 128).
    Int8(&'a [u8]),
}

/// Head rows `[N, K]` in a compressed format.
#[derive(Clone, Copy)]
pub enum HeadRows<'a> {
    /// bf16 rows.
    Bf16(&'a [half::bf16]),
    /// Q8_0 rows (per 32: an f32 scale, 32 int8).
    Int8(&'a [u8]),
}

/// `x [m, k] @ w + bias` into a new `[m, n]` vector, `w` as strips.
///
/// # Panics
/// If [`runs`] is false for `m` on this CPU or the sizes do not match (int8: `k` a multiple of
/// 32).
pub fn matmul_strips(
    x: &[f32],
    w: StripWeights<'_>,
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert!(runs(m), "cpu_gemv: {m} rows here");
    assert_eq!(x.len(), m * k, "cpu_gemv: x size");
    assert!(bias.is_none_or(|b| b.len() == n), "cpu_gemv: bias size");
    let strips = n.div_ceil(NR);
    match w {
        StripWeights::Bf16(b) => assert_eq!(b.len(), strips * k * NR, "cpu_gemv: bf16 strips"),
        StripWeights::Int8(q) => {
            assert!(k.is_multiple_of(QK), "cpu_gemv: int8 depth {k}");
            assert_eq!(
                q.len(),
                strips * (k / QK) * Q8_STRIP_BLOCK,
                "cpu_gemv: int8 strips"
            );
        }
    }
    // SAFETY (of `filled_vec`): every strip's task writes all `m` rows of its columns.
    unsafe { crate::cpu_gemm::filled_vec(m * n, |o| strips_into(x, w, bias, o, m, k, n)) }
}

/// [`matmul_strips`]' parallel loop, writing all of `out` (`m x n`).
///
/// # Safety
/// `out` valid for `m x n` writes; the sizes checked by the caller.
unsafe fn strips_into(
    x: &[f32],
    w: StripWeights<'_>,
    bias: Option<&[f32]>,
    out: *mut f32,
    m: usize,
    k: usize,
    n: usize,
) {
    let strips = n.div_ceil(NR);
    let optr = SendPtr(out);
    let per_task = strips.div_ceil(rayon::current_num_threads() * 8).max(1);
    (0..strips.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let o = optr;
            for s in task * per_task..((task + 1) * per_task).min(strips) {
                // SAFETY: `runs` checked AVX2+FMA; sizes asserted above; this task alone writes
                // columns s*NR..min((s+1)*NR, n).
                unsafe { x86::strip(x, w, bias, o.0, m, k, n, s) };
            }
        });
}

/// `x [m, k] @ w^T` into a new `[m, n]` vector, `w` the head's `[N, K]` rows.
///
/// # Panics
/// As [`matmul_strips`].
pub fn matmul_head(x: &[f32], w: HeadRows<'_>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(runs(m), "cpu_gemv: {m} rows here");
    assert_eq!(x.len(), m * k, "cpu_gemv: x size");
    match w {
        HeadRows::Bf16(b) => assert_eq!(b.len(), n * k, "cpu_gemv: bf16 head"),
        HeadRows::Int8(q) => {
            assert!(k.is_multiple_of(QK), "cpu_gemv: int8 depth {k}");
            assert_eq!(q.len(), n * (k / QK) * Q8_ROW_BLOCK, "cpu_gemv: int8 head");
        }
    }
    // SAFETY (of `filled_vec`): every head row's column is written, for all `m` rows.
    unsafe { crate::cpu_gemm::filled_vec(m * n, |o| head_into(x, w, o, m, k, n)) }
}

/// [`matmul_head`]'s parallel loop, writing all of `out` (`m x n`).
///
/// # Safety
/// As [`strips_into`].
unsafe fn head_into(x: &[f32], w: HeadRows<'_>, out: *mut f32, m: usize, k: usize, n: usize) {
    let optr = SendPtr(out);
    (0..n.div_ceil(HEAD_BLOCK)).into_par_iter().for_each(|blk| {
        let o = optr;
        let v0 = blk * HEAD_BLOCK;
        // SAFETY: as above; this task alone writes columns v0..v0+HEAD_BLOCK.
        unsafe { x86::head(x, w, o.0, m, k, n, v0, HEAD_BLOCK.min(n - v0)) };
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{HeadRows, StripWeights, NR, Q8_ROW_BLOCK, Q8_STRIP_BLOCK, QK};
    // The AVX2 dot tiles' horizontal sum and masks: the head's sums are bitwise theirs.
    use crate::cpu_gemm::x86::avx2::{half_masks, hsum};
    use std::arch::x86_64::*;

    /// Strip `s`, all `m` rows.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip(
        x: &[f32],
        w: StripWeights<'_>,
        bias: Option<&[f32]>,
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        s: usize,
    ) {
        match m {
            1 => strip_rows::<1>(x, w, bias, out, k, n, s),
            2 => strip_rows::<2>(x, w, bias, out, k, n, s),
            _ => strip_rows::<3>(x, w, bias, out, k, n, s),
        }
    }

    /// Strip `s` for `R` rows: all 32 columns at once, four 8-lane accumulators per row — four
    /// independent FMA chains even for one row, where one chain would wait on the FMA latency at
    /// every step (each column's sum stays one chain in depth order, as the decode path's).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn strip_rows<const R: usize>(
        x: &[f32],
        w: StripWeights<'_>,
        bias: Option<&[f32]>,
        out: *mut f32,
        k: usize,
        n: usize,
        s: usize,
    ) {
        const Q: usize = NR / 8;
        let n0 = s * NR;
        let cols = NR.min(n - n0);
        let xp = x.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); Q]; R];
        if let Some(b) = bias {
            // The strip's bias, zero past the last column (the padded strip's columns there
            // are computed and dropped).
            let mut t = [0f32; NR];
            t[..cols].copy_from_slice(&b[n0..n0 + cols]);
            let bv: [__m256; Q] = std::array::from_fn(|q| _mm256_loadu_ps(t.as_ptr().add(8 * q)));
            acc = [bv; R];
        }
        match w {
            StripWeights::Bf16(b) => {
                let strip = b.as_ptr().add(s * k * NR) as *const u16;
                let hi_mask = _mm256_set1_epi32(0xffff_0000u32 as i32);
                let paired = k - k % 2;
                let mut kk = 0;
                while kk < paired {
                    for q in 0..Q {
                        // Lane c: column 8q + c's values of depth rows kk (low half) and kk + 1.
                        let v = _mm256_loadu_si256(strip.add(kk * NR + 16 * q) as *const __m256i);
                        let lo = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                        let hi = _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask));
                        for (i, a) in acc.iter_mut().enumerate() {
                            let x0 = _mm256_broadcast_ss(&*xp.add(i * k + kk));
                            let x1 = _mm256_broadcast_ss(&*xp.add(i * k + kk + 1));
                            a[q] = _mm256_fmadd_ps(x0, lo, a[q]);
                            a[q] = _mm256_fmadd_ps(x1, hi, a[q]);
                        }
                    }
                    kk += 2;
                }
                if paired < k {
                    // The odd last row, plain.
                    for q in 0..Q {
                        let h = _mm_loadu_si128(strip.add(paired * NR + 8 * q) as *const __m128i);
                        let v = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                        let wv = _mm256_castsi256_ps(v);
                        for (i, a) in acc.iter_mut().enumerate() {
                            let x0 = _mm256_broadcast_ss(&*xp.add(i * k + paired));
                            a[q] = _mm256_fmadd_ps(x0, wv, a[q]);
                        }
                    }
                }
            }
            StripWeights::Int8(qw) => {
                let blocks = k / QK;
                let bias128 = _mm256_set1_epi8(0x80u8 as i8);
                for b in 0..blocks {
                    let blk = qw.as_ptr().add((s * blocks + b) * Q8_STRIP_BLOCK);
                    let vals = blk.add(NR * 4);
                    for g in 0..QK / 4 {
                        let d0 = b * QK + 4 * g;
                        for q in 0..Q {
                            let sc = _mm256_loadu_ps((blk as *const f32).add(8 * q));
                            // Lane c: column 8q + c's four values of depth rows d0..d0 + 4.
                            let v =
                                _mm256_loadu_si256(vals.add(g * 4 * NR + 32 * q) as *const __m256i);
                            let t = _mm256_xor_si256(v, bias128);
                            let d = [
                                _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(t)),
                                _mm256_srai_epi32::<24>(_mm256_slli_epi32::<16>(t)),
                                _mm256_srai_epi32::<24>(_mm256_slli_epi32::<8>(t)),
                                _mm256_srai_epi32::<24>(t),
                            ];
                            for (j, dj) in d.iter().enumerate() {
                                // As the decoder: scale * q, rounded, then the FMA.
                                let wv = _mm256_mul_ps(sc, _mm256_cvtepi32_ps(*dj));
                                for (i, a) in acc.iter_mut().enumerate() {
                                    let xv = _mm256_broadcast_ss(&*xp.add(i * k + d0 + j));
                                    a[q] = _mm256_fmadd_ps(xv, wv, a[q]);
                                }
                            }
                        }
                    }
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let mut t = [0f32; NR];
            for (q, v) in a.iter().enumerate() {
                _mm256_storeu_ps(t.as_mut_ptr().add(8 * q), *v);
            }
            std::ptr::copy_nonoverlapping(t.as_ptr(), out.add(i * n + n0), cols);
        }
    }

    /// Head rows `v0..v0 + rows`, all `m` activation rows.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn head(
        x: &[f32],
        w: HeadRows<'_>,
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        v0: usize,
        rows: usize,
    ) {
        match m {
            1 => head_rows::<1, 8>(x, w, out, k, n, v0, rows),
            2 => head_rows::<2, 4>(x, w, out, k, n, v0, rows),
            _ => head_rows::<3, 4>(x, w, out, k, n, v0, rows),
        }
    }

    /// Eight weights of head row `v` from depth `kk` (`kk + 8 <= k`, or the masked tail of a
    /// bf16 row: zeros past `k`), as f32.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn head8(w: HeadRows<'_>, k: usize, v: usize, kk: usize) -> __m256 {
        match w {
            HeadRows::Bf16(b) => {
                let p = (b.as_ptr() as *const u16).add(v * k + kk);
                let h = if kk + 8 <= k {
                    _mm_loadu_si128(p as *const __m128i)
                } else {
                    let mut t = [0u16; 8];
                    std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), k - kk);
                    _mm_loadu_si128(t.as_ptr() as *const __m128i)
                };
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
            HeadRows::Int8(q) => {
                let blk = q
                    .as_ptr()
                    .add(v * (k / QK) * Q8_ROW_BLOCK + (kk / QK) * Q8_ROW_BLOCK);
                let sc = _mm256_broadcast_ss(&*(blk as *const f32));
                let h = _mm_loadl_epi64(blk.add(4 + kk % QK) as *const __m128i);
                _mm256_mul_ps(sc, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h)))
            }
        }
    }

    /// `R` activation rows against head rows `V` at a time (8 independent FMA chains for one
    /// row, 8 or 12 for more): one 8-lane accumulator per pair, added along `K` and summed as the
    /// AVX2 dot tiles sum them.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::needless_range_loop)] // register arrays indexed in step
    unsafe fn head_rows<const R: usize, const V: usize>(
        x: &[f32],
        w: HeadRows<'_>,
        out: *mut f32,
        k: usize,
        n: usize,
        v0: usize,
        rows: usize,
    ) {
        let xp = x.as_ptr();
        let full = k - k % 8;
        // The tail lanes as the AVX2 dot tiles mask them.
        let (xmask, _) = half_masks(k - full);
        let mut v = v0;
        while v < v0 + rows {
            let nv = V.min(v0 + rows - v);
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            let mut kk = 0;
            while kk < k {
                let xv: [__m256; R] = std::array::from_fn(|i| {
                    if kk < full {
                        _mm256_loadu_ps(xp.add(i * k + kk))
                    } else {
                        _mm256_maskload_ps(xp.add(i * k + kk), xmask)
                    }
                });
                for j in 0..nv {
                    let wv = head8(w, k, v + j, kk);
                    for i in 0..R {
                        acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                    }
                }
                kk += 8;
            }
            for (i, row) in acc.iter().enumerate() {
                for (j, a) in row.iter().enumerate().take(nv) {
                    *out.add(i * n + v + j) = hsum(*a);
                }
            }
            v += nv;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::{HeadRows, StripWeights};
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip(
        _: &[f32],
        _: StripWeights<'_>,
        _: Option<&[f32]>,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) {
        unreachable!("cpu_gemv runs on x86-64 only")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn head(
        _: &[f32],
        _: HeadRows<'_>,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) {
        unreachable!("cpu_gemv runs on x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_gemm::{matmul_nt_rows_with, matmul_strips_with, pack_nn};
    use crate::cpu_quant::{rows_to_int8, strips_to_bf16, strips_to_int8, to_bf16, Rows, Strips};

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).signed_vec(len)
    }

    /// Projections: bitwise the decode path (decoded strip, then the f32 kernels) for one to
    /// three rows, with and without bias, odd depths (bf16's plain last row) and a partial last
    /// strip.
    #[test]
    fn strips_equal_the_decode_path() {
        if !runs(1) {
            return;
        }
        let isa = crate::cpu_gemm::isa();
        let mut seed = 1;
        for (k, n) in [(64usize, 96usize), (96, 40), (33, 70), (7, 5), (768, 64)] {
            for m in 1..=MAX_ROWS {
                for with_bias in [false, true] {
                    seed += 1;
                    let x = rand_vec(m * k, seed);
                    let w = rand_vec(k * n, seed + 100);
                    let bias = with_bias.then(|| rand_vec(n, seed + 200));
                    let packed = pack_nn(&w, k, n);
                    let b16 = strips_to_bf16(&packed, k, n);
                    let mut want = vec![0f32; m * n];
                    matmul_strips_with(
                        isa,
                        &x,
                        Strips::Bf16(&b16),
                        bias.as_deref(),
                        &mut want,
                        m,
                        k,
                        n,
                    );
                    let got = matmul_strips(&x, StripWeights::Bf16(&b16), bias.as_deref(), m, k, n);
                    assert_eq!(got, want, "bf16 {m} x {k} x {n} bias {with_bias}");
                    if k % QK == 0 {
                        let q8 = strips_to_int8(&packed, k, n);
                        let mut want = vec![0f32; m * n];
                        matmul_strips_with(
                            isa,
                            &x,
                            Strips::Int8(&q8),
                            bias.as_deref(),
                            &mut want,
                            m,
                            k,
                            n,
                        );
                        let got =
                            matmul_strips(&x, StripWeights::Int8(&q8), bias.as_deref(), m, k, n);
                        assert_eq!(got, want, "int8 {m} x {k} x {n} bias {with_bias}");
                    }
                }
            }
        }
    }

    /// Head: against a float64 sum over the decoded rows (bound: 8 roundings of the largest
    /// partial sum, k / 8 + 3 additions deep, of 2^-24 each, as a multiple of sum |x w|), and
    /// for one and two rows bitwise the AVX2 dot tiles on the decoded rows.
    #[test]
    fn head_equals_the_decoded_rows() {
        if !runs(1) {
            return;
        }
        let mut seed = 500;
        for (k, n) in [(64usize, 300usize), (96, 37), (21, 9), (768, 260)] {
            let w = rand_vec(n * k, seed);
            let b16 = to_bf16(&w);
            let q8 = (k % QK == 0).then(|| rows_to_int8(&w, k, n));
            for m in 1..=MAX_ROWS {
                seed += 1;
                let x = rand_vec(m * k, seed);
                let mut cases = vec![(Rows::Bf16(&b16), HeadRows::Bf16(&b16))];
                if let Some(q) = &q8 {
                    cases.push((Rows::Int8(q), HeadRows::Int8(q)));
                }
                for (rows, head) in cases {
                    let got = matmul_head(&x, head, m, k, n);
                    let mut dec = vec![0f32; n * k];
                    rows.decode(k, 0, n, &mut dec);
                    for i in 0..m {
                        for v in 0..n {
                            let (mut s, mut a) = (0f64, 0f64);
                            for kk in 0..k {
                                let p = x[i * k + kk] as f64 * dec[v * k + kk] as f64;
                                s += p;
                                a += p.abs();
                            }
                            let bound = (k / 8 + 3) as f64 * 6e-8 * a + 1e-30;
                            let e = (got[i * n + v] as f64 - s).abs();
                            assert!(e <= bound, "{m} x {k} x {n} [{i}, {v}]: {e} > {bound}");
                        }
                    }
                    if m <= 2 {
                        let mut want = vec![0f32; m * n];
                        matmul_nt_rows_with(Isa::Avx2, &x, rows, &mut want, m, k, n);
                        assert_eq!(got, want, "{m} x {k} x {n} against the AVX2 dot tiles");
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "rows here")]
    fn four_rows_are_refused() {
        if !runs(1) {
            panic!("4 rows here");
        }
        let b16 = to_bf16(&[0.0; 32 * 32]);
        let _ = matmul_strips(&[0.0; 4 * 32], StripWeights::Bf16(&b16), None, 4, 32, 32);
    }
}
