//! Small-canvas matrix products for the inference forward on x86-64 CPUs with AVX-512.
//!
//! After the EoS-first cut, every remaining denoising step runs on a short canvas (tens of
//! positions), where a general GEMM spends much of its time packing the weight matrix into its
//! own layout on every call: the weights are read twice and written once for a product that
//! uses each of them only `M` times. These kernels read the weights once, in the layout they
//! have in memory, and keep a block of `M` rows of activations in registers and L1/L2:
//!
//! * [`matmul_nn`]: `x [M, K] @ w [K, N]` — the Conv1D projections (`[in, out]` weights); a
//!   strip of 32 output columns at a time, `MR` activation rows against it, the strip re-read
//!   from L2 for each row block;
//! * [`matmul_nt`]: `x [M, K] @ w[N, K]^T` — the tied LM head (embedding rows); dot products
//!   along `K`, 4 rows x 4 vocabulary entries per register block, their sixteen horizontal
//!   sums done as one transpose-and-add tree, the next group of vocabulary rows prefetched
//!   while this one computes (measured at 64 rows: 148 -> 170-180 GFLOP/s).
//!
//! From [`PACK_MIN_ROWS`] rows on both switch to a cache-blocked path ([`packed`]): the weights are
//! copied block by block (`256 x 128`) into a contiguous buffer — transposed on the way for the
//! head — so that with many rows neither the partial sums nor the activations are streamed from
//! L3 again for every block of `K` (measured: 150-165 -> 185-200 GFLOP/s at 1024 rows).
//!
//! A loaded model goes one step further for its block projections: [`pack_nn`] rewrites each
//! `[in, out]` weight once, in place of the original, into strips of 32 columns that are
//! contiguous over all of `K`, and [`matmul_prepacked`] streams them (no strided walk, no copy,
//! no partial sums through memory on short canvases) with bitwise the same results.
//!
//! All paths split the output columns across rayon's threads; `tests` below check them against a
//! plain triple loop on random shapes, remainders included, and `tests/parity.rs` the whole
//! forward against candle's plain ops.

use rayon::prelude::*;

/// The environment variable that forces a CPU kernel path: `auto` (default: the AVX-512 kernels
/// where the CPU has them), `generic` (candle's GEMM and the portable row kernels, as on a CPU
/// without AVX-512), `avx512` (as `auto`, with a note on stderr when the CPU lacks AVX-512).
/// Read once per process; it lets the tests run every path on whatever machine CI has.
pub const KERNELS_ENV: &str = "DIFFUGPT_CPU_KERNELS";

/// Whether the AVX-512 kernels run: the CPU has them and [`KERNELS_ENV`] does not force the
/// generic path. The one switch for the CPU forward's kernels (weight packing, projections, head,
/// row kernels).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let detected = detected();
        match std::env::var(KERNELS_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") => detected,
            Ok("generic") => false,
            Ok("avx512") => {
                if !detected {
                    eprintln!(
                        "note: {KERNELS_ENV}=avx512 but this CPU has no AVX-512: generic kernels"
                    );
                }
                detected
            }
            Ok(other) => {
                eprintln!(
                    "note: {KERNELS_ENV}={other:?} is not one of auto, generic, avx512: using auto"
                );
                detected
            }
        }
    })
}

/// Whether this CPU has the AVX-512 the kernels are compiled for.
fn detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Below this many rows (ARM decoding with a KV cache: one row) a matrix-vector product is
/// memory-bound and candle's GEMV is faster (measured: 0.3-0.6x of it at one row); from 4 rows
/// on these kernels win. (Crate-private: cbindgen would otherwise export it into the C header.)
pub(crate) const MIN_ROWS: usize = 4;

/// Output columns per strip of [`matmul_nn`] (two 16-lane registers).
const NR: usize = 32;
/// Activation rows per register block of [`matmul_nn`].
const MR: usize = 8;

/// From this many rows on, [`matmul_nn`] and [`matmul_nt`] take the cache-blocked path
/// ([`packed`]): with many rows the in-place kernels' partial sums (`M` x the task's columns)
/// and, for the head, the activations no longer fit in L2 and every block of `K` streams them
/// from L3 or DRAM again.
pub(crate) const PACK_MIN_ROWS: usize = 128;
/// Output columns per panel of the blocked path (four strips).
const NC: usize = 4 * NR;
/// Depth of a packed weight block: `KC x NC` floats (128 KiB) stay in L2 next to the panel's
/// partial sums.
const KC_PACK: usize = 256;

/// The cache-blocked product for many rows: per panel of `NC` output columns and block of
/// `KC_PACK` weight rows, the weights are copied once into a contiguous `[KC_PACK, NC]` block
/// (transposed on the way for `nt`, the head's `[N, K]` rows), then every block of `MR`
/// activation rows runs against its four strips while its `MR x KC_PACK` slice of `x` sits in
/// L1. The partial sums of the panel (`M x NC`) stay in L2 between depth blocks.
#[allow(clippy::too_many_arguments)]
fn packed(
    x: &[f32],
    w: &[f32],
    nt: bool,
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    let optr = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(NC)).into_par_iter().for_each_init(
        || vec![0f32; KC_PACK * NC],
        |buf, panel| {
            let o = optr;
            let c0 = panel * NC;
            // SAFETY: AVX-512 checked by the callers; this task alone writes columns
            // c0..c0+NC; all reads stay inside the asserted sizes.
            unsafe {
                x86::panel(
                    x,
                    x86::Source::Plain { w, nt },
                    bias,
                    o.0,
                    m,
                    k,
                    n,
                    c0,
                    NC.min(n - c0),
                    buf,
                )
            };
        },
    );
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each task writes a disjoint set of output columns.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The checks every entry point makes before its unsafe kernels run: AVX-512 present, each slice
/// of the stated size (`w_len`: what the weight's layout needs for `k` x `n`).
#[allow(clippy::too_many_arguments)]
fn check_args(
    what: &str,
    x: &[f32],
    w: &[f32],
    w_len: usize,
    bias: Option<&[f32]>,
    out: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(available(), "{what} needs AVX-512");
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), w_len);
    assert_eq!(out.len(), m * n);
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
    }
}

/// `out[M, N] = x[M, K] @ w[K, N] (+ bias[N])`, all row-major and contiguous.
///
/// # Panics
/// If the slices do not have the stated sizes or the CPU lacks AVX-512 (check [`available`]).
pub fn matmul_nn(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    check_args("matmul_nn", x, w, k * n, bias, out, m, k, n);
    if m >= PACK_MIN_ROWS {
        packed(x, w, false, bias, out, m, k, n);
        return;
    }
    let strips = n.div_ceil(NR);
    // A few tasks per thread, each a run of whole strips (a column range).
    let per_task = strips.div_ceil(rayon::current_num_threads() * 2).max(1);
    let optr = SendPtr(out.as_mut_ptr());
    (0..strips.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let o = optr;
            let s0 = task * per_task;
            let s1 = ((task + 1) * per_task).min(strips);
            // SAFETY: AVX-512 checked above; indices stay inside the asserted sizes; this task
            // alone writes columns s0*NR..min(s1*NR, n).
            unsafe { x86::columns_nn(x, w, bias, o.0, m, k, n, s0 * NR, (s1 * NR).min(n)) };
        });
}

/// [`matmul_nn`] on the calling thread only (for callers already parallel over other work,
/// such as attention over heads); no bias.
///
/// # Panics
/// As [`matmul_nn`].
pub fn matmul_nn_serial(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    check_args("matmul_nn_serial", x, w, k * n, None, out, m, k, n);
    // SAFETY: AVX-512 checked; sizes asserted; `out` is exclusively borrowed.
    unsafe { x86::columns_nn(x, w, None, out.as_mut_ptr(), m, k, n, 0, n) };
}

/// Columns per strip of the pre-packed layout ([`pack_nn`]). (Crate-private: cbindgen.)
pub(crate) const STRIP: usize = NR;

/// Length of `w [K, N]` in the pre-packed layout: whole strips, the last zero-padded.
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * k * NR
}

/// Rewrites a Conv1D weight `w [K, N]` into the strip-major layout `[ceil(N / 32), K, 32]`
/// that [`matmul_prepacked`] reads: each strip of 32 output columns over all of `K` becomes one
/// contiguous run. In the `[in, out]` layout a strip is 128-byte pieces `4 N` bytes apart (each
/// in its own page for GPT-2's widths), which neither the hardware prefetcher nor the TLB
/// follow well; with few activation rows the projections were bound by that, not by arithmetic
/// (measured at 64 rows: 105-135 -> 150-175 GFLOP/s). The padding columns are zeros.
///
/// # Panics
/// If `w.len() != k * n`.
pub fn pack_nn(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.len(), k * n);
    let mut p = vec![0f32; packed_len(k, n)];
    for (s, strip) in p.chunks_exact_mut(k * NR).enumerate() {
        let (c0, cols) = (s * NR, NR.min(n - s * NR));
        for (kk, row) in strip.chunks_exact_mut(NR).enumerate() {
            row[..cols].copy_from_slice(&w[kk * n + c0..kk * n + c0 + cols]);
        }
    }
    p
}

/// The inverse of [`pack_nn`]: `[K, N]` again (padding dropped).
///
/// # Panics
/// If `p.len() != packed_len(k, n)`.
pub fn unpack_nn(p: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert_eq!(p.len(), packed_len(k, n));
    let mut w = vec![0f32; k * n];
    for (s, strip) in p.chunks_exact(k * NR).enumerate() {
        let (c0, cols) = (s * NR, NR.min(n - s * NR));
        for (kk, row) in strip.chunks_exact(NR).enumerate() {
            w[kk * n + c0..kk * n + c0 + cols].copy_from_slice(&row[..cols]);
        }
    }
    w
}

/// `out[M, N] = x[M, K] @ w[K, N] (+ bias[N])` with `w` pre-packed by [`pack_nn`]; any `M >= 1`.
///
/// Below `PACK_MIN_ROWS` (128) rows each register block runs over all of `K` against one contiguous
/// strip (no partial sums through memory); from there on the cache-blocked path runs as for
/// [`matmul_nn`], minus the copy. Both add the products in the same order as [`matmul_nn`], so
/// the results are bitwise equal to it (tested).
///
/// # Panics
/// If the slices do not have the stated sizes or the CPU lacks AVX-512 (check [`available`]).
pub fn matmul_prepacked(
    x: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    check_args(
        "matmul_prepacked",
        x,
        wp,
        packed_len(k, n),
        bias,
        out,
        m,
        k,
        n,
    );
    let optr = SendPtr(out.as_mut_ptr());
    if m >= PACK_MIN_ROWS {
        (0..n.div_ceil(NC)).into_par_iter().for_each(|panel| {
            let o = optr;
            let c0 = panel * NC;
            // SAFETY: as in `packed`; no copy buffer is needed for pre-packed weights.
            unsafe {
                x86::panel(
                    x,
                    x86::Source::Prepacked(wp),
                    bias,
                    o.0,
                    m,
                    k,
                    n,
                    c0,
                    NC.min(n - c0),
                    &mut [],
                )
            };
        });
        return;
    }
    let strips = n.div_ceil(NR);
    // Runs of a few strips (each ~30 us at 64 rows), eight per thread: on a shared host a
    // descheduled thread then leaves little work behind it (two per thread measured a few %
    // slower at 64 rows).
    let per_task = strips.div_ceil(rayon::current_num_threads() * 8).max(1);
    (0..strips.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let o = optr;
            let s0 = task * per_task;
            let s1 = ((task + 1) * per_task).min(strips);
            // SAFETY: AVX-512 checked above; sizes asserted; this task alone writes columns
            // s0*NR..min(s1*NR, n).
            unsafe { x86::strips_prepacked(x, wp, bias, o.0, m, k, n, s0, s1) };
        });
}

/// `out[M, N] = x[M, K] @ w[N, K]^T`, all row-major and contiguous.
///
/// # Panics
/// If the slices do not have the stated sizes or the CPU lacks AVX-512 (check [`available`]).
pub fn matmul_nt(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    check_args("matmul_nt", x, w, n * k, None, out, m, k, n);
    if m >= PACK_MIN_ROWS {
        packed(x, w, true, None, out, m, k, n);
        return;
    }
    const NB: usize = 256;
    let optr = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(NB)).into_par_iter().for_each(|blk| {
        let o = optr;
        let n0 = blk * NB;
        // SAFETY: as in matmul_nn; this task alone writes columns n0..n0+NB.
        unsafe { x86::block_nt(x, w, o.0, m, k, n, n0, NB.min(n - n0)) };
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KC_PACK, MR, NC, NR};
    use std::arch::x86_64::*;

    /// Where [`panel`] finds its weights.
    #[derive(Clone, Copy)]
    pub enum Source<'a> {
        /// `[K, N]` (`nt`: `[N, K]`) as stored; each depth block is copied into the panel's
        /// buffer first.
        Plain { w: &'a [f32], nt: bool },
        /// [`super::pack_nn`]'s layout, read in place.
        Prepacked(&'a [f32]),
    }

    /// Strips `s0..s1` of `x @ w` for pre-packed `w`, all `m` rows: each register block runs
    /// over all of `K` against the strip, which streams from memory once for the first block and
    /// is re-read from L2 by the others.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strips_prepacked(
        x: &[f32],
        wp: &[f32],
        bias: Option<&[f32]>,
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        s0: usize,
        s1: usize,
    ) {
        for s in s0..s1 {
            let n0 = s * NR;
            let (m0, m1) = strip_masks(NR.min(n - n0));
            let wstrip = wp.as_ptr().add(s * k * NR);
            let mut r = 0;
            while r < m {
                let rows = MR.min(m - r);
                micro_rows(
                    rows,
                    x.as_ptr().add(r * k),
                    k,
                    wstrip,
                    NR,
                    out.add(r * n + n0),
                    n,
                    k,
                    false,
                    bias.map(|b| b.as_ptr().add(n0)),
                    m0,
                    m1,
                );
                r += rows;
            }
        }
    }

    /// Masks of the two 16-lane halves of a strip with `cols <= 32` columns.
    fn strip_masks(cols: usize) -> (__mmask16, __mmask16) {
        let m0 = if cols >= 16 {
            0xffff
        } else {
            ((1u32 << cols) - 1) as u16
        };
        let m1 = if cols <= 16 {
            0
        } else if cols >= 32 {
            0xffff
        } else {
            ((1u32 << (cols - 16)) - 1) as u16
        };
        (m0, m1)
    }

    /// Output columns `c0..c1` (whole strips but the last), all `m` rows.
    ///
    /// The weight rows are walked in blocks of `KC`: a block of rows restricted to `c0..c1` is a
    /// set of long contiguous runs, which the hardware prefetcher streams from DRAM at full
    /// speed (a 32-column strip over all of `K` would be 128-byte pieces 4*N bytes apart, and
    /// runs at a fraction of it). The partial sums live in `out` between blocks (L2-resident).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn columns_nn(
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        c0: usize,
        c1: usize,
    ) {
        const KC: usize = 64;
        let strips = (c1 - c0).div_ceil(NR);
        let lines_per_row = (c1 - c0).div_ceil(16);
        let mut kb = 0;
        while kb < k {
            let kc = KC.min(k - kb);
            // Prefetch the next block of weight rows in address order, a share per strip, so
            // DRAM sees long sequential runs one block ahead of the arithmetic.
            let next = kb + kc;
            let next_lines = KC.min(k.saturating_sub(next)) * lines_per_row;
            let per_strip = next_lines.div_ceil(strips);
            let mut line = 0;
            let mut n0 = c0;
            while n0 < c1 {
                for _ in 0..per_strip {
                    if line >= next_lines {
                        break;
                    }
                    let (row, l) = (line / lines_per_row, line % lines_per_row);
                    let p = w.as_ptr().add((next + row) * n + c0 + 16 * l);
                    _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                    line += 1;
                }
                let cols = NR.min(c1 - n0);
                let (m0, m1) = strip_masks(cols);
                let wp = w.as_ptr().add(kb * n + n0);
                let mut r = 0;
                while r < m {
                    let rows = MR.min(m - r);
                    micro_rows(
                        rows,
                        x.as_ptr().add(r * k + kb),
                        k,
                        wp,
                        n,
                        out.add(r * n + n0),
                        n,
                        kc,
                        kb > 0,
                        bias.map(|b| b.as_ptr().add(n0)),
                        m0,
                        m1,
                    );
                    r += rows;
                }
                n0 += NR;
            }
            kb += kc;
        }
    }

    /// [`micro`] for `rows` (1..=`MR`) rows: the one place that turns a run-time row count into
    /// the register block's compile-time one.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn micro_rows(
        rows: usize,
        xp: *const f32,
        ldx: usize,
        wp: *const f32,
        ldw: usize,
        out: *mut f32,
        ldo: usize,
        kc: usize,
        accumulate: bool,
        bias: Option<*const f32>,
        m0: __mmask16,
        m1: __mmask16,
    ) {
        debug_assert!((1..=MR).contains(&rows));
        macro_rules! go {
            ($R:literal) => {
                micro::<$R>(xp, ldx, wp, ldw, out, ldo, kc, accumulate, bias, m0, m1)
            };
        }
        match rows {
            8 => go!(8),
            7 => go!(7),
            6 => go!(6),
            5 => go!(5),
            4 => go!(4),
            3 => go!(3),
            2 => go!(2),
            _ => go!(1),
        }
    }

    /// The register block: `R` rows of `x` (`xp`, row stride `ldx`) times `kc` rows of a
    /// 32-column weight strip (`wp`, row stride `ldw`) into `out` (row stride `ldo`), adding
    /// to what `out` holds when `accumulate`, else starting from `bias` (or zero).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn micro<const R: usize>(
        xp: *const f32,
        ldx: usize,
        mut wp: *const f32,
        ldw: usize,
        out: *mut f32,
        ldo: usize,
        kc: usize,
        accumulate: bool,
        bias: Option<*const f32>,
        m0: __mmask16,
        m1: __mmask16,
    ) {
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        for i in 0..R {
            let o = out.add(i * ldo);
            if accumulate {
                acc0[i] = _mm512_maskz_loadu_ps(m0, o);
                acc1[i] = _mm512_maskz_loadu_ps(m1, o.add(16));
            } else if let Some(b) = bias {
                acc0[i] = _mm512_maskz_loadu_ps(m0, b);
                acc1[i] = _mm512_maskz_loadu_ps(m1, b.add(16));
            }
        }
        for kk in 0..kc {
            let w0 = _mm512_maskz_loadu_ps(m0, wp);
            let w1 = _mm512_maskz_loadu_ps(m1, wp.add(16));
            for i in 0..R {
                let a = _mm512_set1_ps(*xp.add(i * ldx + kk));
                acc0[i] = _mm512_fmadd_ps(a, w0, acc0[i]);
                acc1[i] = _mm512_fmadd_ps(a, w1, acc1[i]);
            }
            wp = wp.add(ldw);
        }
        for i in 0..R {
            let o = out.add(i * ldo);
            _mm512_mask_storeu_ps(o, m0, acc0[i]);
            _mm512_mask_storeu_ps(o.add(16), m1, acc1[i]);
        }
    }

    /// One panel of [`super::packed`]: output columns `c0..c0+cols` (`cols <= NC`), all rows.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel(
        x: &[f32],
        src: Source<'_>,
        bias: Option<&[f32]>,
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        c0: usize,
        cols: usize,
        buf: &mut [f32],
    ) {
        debug_assert!(cols <= NC);
        let mut kb = 0;
        while kb < k {
            let kc = KC_PACK.min(k - kb);
            // Where strip `s0` (columns c0+s0..) of this depth block starts, and the distance
            // between its rows: in the pre-packed weights themselves, or in `buf` after the copy.
            let (wbase, ldw, strip_step) = match src {
                Source::Prepacked(wp) => (wp.as_ptr().add(c0 * k + kb * NR), NR, k),
                Source::Plain { .. } => (buf.as_ptr(), NC, 1),
            };
            match src {
                Source::Prepacked(_) => {}
                Source::Plain { w, nt: true } => {
                    // The head's rows are outputs: walk them in 16 x 16 tiles so both the reads
                    // (along K) and the writes (along the panel) stay within a few cache lines.
                    debug_assert!(buf.len() >= KC_PACK * NC);
                    for j0 in (0..cols).step_by(16) {
                        let jn = 16.min(cols - j0);
                        for k0 in (0..kc).step_by(16) {
                            let kn = 16.min(kc - k0);
                            for j in j0..j0 + jn {
                                let src = w.as_ptr().add((c0 + j) * k + kb + k0);
                                for kk in 0..kn {
                                    *buf.get_unchecked_mut((k0 + kk) * NC + j) = *src.add(kk);
                                }
                            }
                        }
                    }
                }
                Source::Plain { w, nt: false } => {
                    // B[kb..kb+kc, c0..c0+cols] into buf as kc rows of NC.
                    debug_assert!(buf.len() >= KC_PACK * NC);
                    for kk in 0..kc {
                        std::ptr::copy_nonoverlapping(
                            w.as_ptr().add((kb + kk) * n + c0),
                            buf.as_mut_ptr().add(kk * NC),
                            cols,
                        );
                    }
                }
            }
            let mut r = 0;
            while r < m {
                let rows = MR.min(m - r);
                let xp = x.as_ptr().add(r * k + kb);
                let mut s0 = 0;
                while s0 < cols {
                    let (m0, m1) = strip_masks(NR.min(cols - s0));
                    let wp = wbase.add(s0 * strip_step);
                    let op = out.add(r * n + c0 + s0);
                    let b = bias.map(|b| b.as_ptr().add(c0 + s0));
                    micro_rows(rows, xp, k, wp, ldw, op, n, kc, kb > 0, b, m0, m1);
                    s0 += NR;
                }
                r += rows;
            }
            kb += kc;
        }
    }

    /// Output columns `n0..n0+cols` of `x @ w^T` for all `m` rows.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_nt(
        x: &[f32],
        w: &[f32],
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        n0: usize,
        cols: usize,
    ) {
        let mut c = 0;
        while c < cols {
            let nc = 4.min(cols - c);
            // Prefetch the next group's vocabulary rows (4 x k floats, contiguous) a share per
            // row tile, so the head streams from DRAM while this group computes.
            let next = (c + nc).min(cols);
            let next_n = 4.min(cols - next);
            let lines = (next_n * k).div_ceil(16);
            let tiles = m.div_ceil(4);
            let per_tile = lines.div_ceil(tiles.max(1));
            let pbase = w.as_ptr().add((n0 + next) * k);
            let mut line = 0;
            let mut r = 0;
            while r < m {
                for _ in 0..per_tile {
                    if line < lines {
                        _mm_prefetch::<_MM_HINT_T0>(pbase.add(16 * line) as *const i8);
                        line += 1;
                    }
                }
                let nr = 4.min(m - r);
                if nr == 4 && nc == 4 {
                    tile_nt::<4, 4>(x, w, out, k, n, r, n0 + c);
                } else {
                    for i in 0..nr {
                        for j in 0..nc {
                            tile_nt::<1, 1>(x, w, out, k, n, r + i, n0 + c + j);
                        }
                    }
                }
                r += nr;
            }
            c += nc;
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::needless_range_loop)] // parallel register arrays, indexed in step
    unsafe fn tile_nt<const R: usize, const C: usize>(
        x: &[f32],
        w: &[f32],
        out: *mut f32,
        k: usize,
        n: usize,
        r0: usize,
        c0: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let xp = x.as_ptr().add(r0 * k);
        let wp = w.as_ptr().add(c0 * k);
        // Whole 16-lane chunks with plain loads (a mask computed per chunk cost ~10% of the
        // head at 64 rows), then the remainder, if any, masked.
        let full = k - k % 16;
        let mut kk = 0;
        while kk < full {
            let mut wv = [_mm512_setzero_ps(); C];
            for j in 0..C {
                wv[j] = _mm512_loadu_ps(wp.add(j * k + kk));
            }
            for i in 0..R {
                let xv = _mm512_loadu_ps(xp.add(i * k + kk));
                for j in 0..C {
                    acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
                }
            }
            kk += 16;
        }
        if full < k {
            let mask = ((1u32 << (k - full)) - 1) as __mmask16;
            let mut wv = [_mm512_setzero_ps(); C];
            for j in 0..C {
                wv[j] = _mm512_maskz_loadu_ps(mask, wp.add(j * k + full));
            }
            for i in 0..R {
                let xv = _mm512_maskz_loadu_ps(mask, xp.add(i * k + full));
                for j in 0..C {
                    acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
                }
            }
        }
        if R == 4 && C == 4 {
            // All sixteen sums at once (45 shuffles and adds instead of 16 separate
            // reductions of ~8 each); lane group i of the result holds row i's four columns.
            let v: [__m512; 16] = std::array::from_fn(|t| acc[t / 4][t % 4]);
            let sums = reduce16(&v);
            for i in 0..4 {
                let row: __m128 = match i {
                    0 => _mm512_extractf32x4_ps::<0>(sums),
                    1 => _mm512_extractf32x4_ps::<1>(sums),
                    2 => _mm512_extractf32x4_ps::<2>(sums),
                    _ => _mm512_extractf32x4_ps::<3>(sums),
                };
                _mm_storeu_ps(out.add((r0 + i) * n + c0), row);
            }
            return;
        }
        for i in 0..R {
            for j in 0..C {
                *out.add((r0 + i) * n + c0 + j) = _mm512_reduce_add_ps(acc[i][j]);
            }
        }
    }

    /// The sums of sixteen 16-lane registers in one register: lane `t` = sum of `v[t]`. A
    /// transpose-and-add tree: pairs of registers are interleaved and added (unpack lo/hi
    /// of floats, then of doubles), which leaves each 128-bit lane with one partial sum of
    /// four registers; two rounds of 128-bit lane shuffles add those up.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn reduce16(v: &[__m512; 16]) -> __m512 {
        // a[p]: per 128-bit lane [v2p, v2p+1, v2p, v2p+1] partials.
        let a: [__m512; 8] = std::array::from_fn(|p| {
            let (x, y) = (v[2 * p], v[2 * p + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
        });
        // b[g]: per 128-bit lane [v4g, v4g+1, v4g+2, v4g+3] partials.
        let b: [__m512; 4] = std::array::from_fn(|g| {
            let (x, y) = (_mm512_castps_pd(a[2 * g]), _mm512_castps_pd(a[2 * g + 1]));
            // Doubles only move pairs of floats; the addition is of floats.
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
            )
        });
        // Lane pairs added: [b0 l0+l1, b0 l2+l3, b1 l0+l1, b1 l2+l3] and the same for b2, b3.
        let pair = |x: __m512, y: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        };
        pair(pair(b[0], b[1]), pair(b[2], b[3]))
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    #[derive(Clone, Copy)]
    pub enum Source<'a> {
        Plain { w: &'a [f32], nt: bool },
        Prepacked(&'a [f32]),
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strips_prepacked(
        _: &[f32],
        _: &[f32],
        _: Option<&[f32]>,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) {
        unreachable!("available() is false off x86-64")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn columns_nn(
        _: &[f32],
        _: &[f32],
        _: Option<&[f32]>,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) {
        unreachable!("available() is false off x86-64")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_nt(
        _: &[f32],
        _: &[f32],
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) {
        unreachable!("available() is false off x86-64")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel(
        _: &[f32],
        _: Source<'_>,
        _: Option<&[f32]>,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [f32],
    ) {
        unreachable!("available() is false off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(len: usize, seed: &mut u64) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Plain triple loop in f64: the reference.
    fn reference(
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
        nt: bool,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |b| b[j] as f64);
                for l in 0..k {
                    let wv = if nt { w[j * k + l] } else { w[l * n + j] };
                    s += x[i * k + l] as f64 * wv as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    /// Max |a - b| relative to the reference's scale, sqrt(k) for unit-range inputs.
    fn check(got: &[f32], want: &[f32], k: usize, what: &str) {
        let scale = (k as f32).sqrt().max(1.0);
        let err = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err / scale <= 1e-5, "{what}: max err {err} (scale {scale})");
    }

    /// Shapes around every edge: row counts around MR and 1, columns around the 32-wide strip
    /// and the 16-lane halves, depths around the 64-row weight block and the 16-lane dot chunk.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (4, 16, 32),
        (7, 17, 33),
        (8, 64, 48),
        (9, 65, 16),
        (13, 130, 100),
        (16, 768, 64),
        (33, 200, 97),
        (64, 129, 257),
        // The blocked path: rows around PACK_MIN_ROWS and MR, columns around the 128-wide
        // panel, depths around the 256-deep packed block.
        (128, 256, 128),
        (129, 257, 129),
        (135, 600, 300),
        (200, 64, 40),
    ];

    #[test]
    fn nn_matches_the_reference_on_random_shapes() {
        if !available() {
            eprintln!("skipped: no AVX-512 on this CPU (the model uses the general path)");
            return;
        }
        let mut seed = 1;
        for &(m, k, n) in SHAPES {
            let x = rand_vec(m * k, &mut seed);
            let w = rand_vec(k * n, &mut seed);
            let b = rand_vec(n, &mut seed);
            for bias in [None, Some(&b[..])] {
                // Garbage in the output must not leak into the result.
                let mut out = vec![f32::NAN; m * n];
                matmul_nn(&x, &w, bias, &mut out, m, k, n);
                let want = reference(&x, &w, bias, m, k, n, false);
                check(
                    &out,
                    &want,
                    k,
                    &format!("nn {m}x{k}x{n} bias={}", bias.is_some()),
                );
            }
        }
    }

    #[test]
    fn serial_nn_matches_the_reference() {
        if !available() {
            eprintln!("skipped: no AVX-512 on this CPU (the model uses the general path)");
            return;
        }
        let mut seed = 3;
        for &(m, k, n) in SHAPES {
            let x = rand_vec(m * k, &mut seed);
            let w = rand_vec(k * n, &mut seed);
            let mut out = vec![f32::NAN; m * n];
            matmul_nn_serial(&x, &w, &mut out, m, k, n);
            check(
                &out,
                &reference(&x, &w, None, m, k, n, false),
                k,
                "serial nn",
            );
        }
    }

    #[test]
    fn nt_matches_the_reference_on_random_shapes() {
        if !available() {
            eprintln!("skipped: no AVX-512 on this CPU (the model uses the general path)");
            return;
        }
        let mut seed = 2;
        for &(m, k, n) in SHAPES.iter().chain(&[(5, 768, 600)]) {
            let x = rand_vec(m * k, &mut seed);
            let w = rand_vec(n * k, &mut seed);
            let mut out = vec![f32::NAN; m * n];
            matmul_nt(&x, &w, &mut out, m, k, n);
            let want = reference(&x, &w, None, m, k, n, true);
            check(&out, &want, k, &format!("nt {m}x{k}x{n}"));
        }
    }

    #[test]
    fn pack_and_unpack_are_inverse() {
        let mut seed = 4;
        for &(_, k, n) in SHAPES {
            let w = rand_vec(k * n, &mut seed);
            let p = pack_nn(&w, k, n);
            assert_eq!(p.len(), packed_len(k, n));
            // Strip s, depth kk, column c of the strip is w[kk, 32 s + c]; padding is zero.
            let strips = n.div_ceil(NR);
            for (s, kk, c) in [
                (0, 0, 0),
                (strips - 1, k - 1, (n - 1) % NR),
                (0, k / 2, 1 % n),
            ] {
                assert_eq!(p[s * k * NR + kk * NR + c], w[kk * n + s * NR + c]);
            }
            let pad = strips * NR - n;
            for kk in 0..k {
                let row = &p[(strips - 1) * k * NR + kk * NR..][..NR];
                assert!(row[NR - pad..].iter().all(|&v| v == 0.0), "{k}x{n} padding");
            }
            assert_eq!(unpack_nn(&p, k, n), w, "{k}x{n} round trip");
        }
    }

    #[test]
    fn prepacked_matches_the_reference_and_the_in_place_path_bitwise() {
        if !available() {
            eprintln!("skipped: no AVX-512 on this CPU (the model uses the general path)");
            return;
        }
        let mut seed = 5;
        for &(m, k, n) in SHAPES.iter().chain(&[(2, 100, 70), (3, 768, 64)]) {
            let x = rand_vec(m * k, &mut seed);
            let w = rand_vec(k * n, &mut seed);
            let b = rand_vec(n, &mut seed);
            let p = pack_nn(&w, k, n);
            for bias in [None, Some(&b[..])] {
                let mut out = vec![f32::NAN; m * n];
                matmul_prepacked(&x, &p, bias, &mut out, m, k, n);
                let what = format!("prepacked {m}x{k}x{n} bias={}", bias.is_some());
                check(&out, &reference(&x, &w, bias, m, k, n, false), k, &what);
                if m >= MIN_ROWS {
                    // Same products added in the same order as the in-place kernels: the model
                    // gives the same logits packed or not.
                    let mut plain = vec![0f32; m * n];
                    matmul_nn(&x, &w, bias, &mut plain, m, k, n);
                    let same = out
                        .iter()
                        .zip(&plain)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}: differs from matmul_nn");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "assertion")]
    fn wrong_sizes_are_refused() {
        if !available() {
            panic!("assertion: skipped without AVX-512");
        }
        let mut out = vec![0f32; 4];
        matmul_nn(&[0.0; 3], &[0.0; 4], None, &mut out, 2, 2, 2);
    }
}
