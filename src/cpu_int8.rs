//! int8 x int8 products for the int8 projections and head on CPUs with AVX-512 VNNI
//! (`vpdpbusd`: 64 byte products summed into 16 int32 lanes per instruction, measured at 4x the
//! f32 FMA rate on an Intel Xeon with AVX512_VNNI — benches/README.md).
//!
//! The decode path of [`crate::cpu_quant`] keeps the arithmetic f32 (the weights are decoded,
//! the activations are not rounded); here the activations are quantised too, per row and per
//! block of 32 along `K` (llama.cpp's `Q8_0 x Q8_0`): each 32-deep block is an exact integer
//! dot product, scaled by the activation block's scale times the weight column's block scale
//! and summed in f32. The weight strips are stored in the order `vpdpbusd` reads them (see
//! [`crate::cpu_quant`]: four depth rows per column contiguous, biased by 128 to be unsigned);
//! the bias is removed exactly by starting each block's integer sum at `-128 * sum(x_q)`.
//!
//! [`active`] is the switch: VNNI on an AVX-512 CPU, unless [`INT8_ENV`] says `decode` or the
//! kernels are forced below AVX-512 (`DIFFUGPT_CPU_KERNELS=avx2|generic`).

use rayon::prelude::*;

use crate::cpu_gemm::SendPtr;
use crate::cpu_quant::{Q8_ROW_BLOCK, Q8_STRIP_BLOCK, QK};

/// The environment variable that picks the int8 products: `auto` (default: VNNI where the CPU
/// has it), `vnni` (the same; refused with a note where it has not), `decode` (decode the
/// weights to f32 and run the f32 kernels, as on CPUs without VNNI). Read once per process.
pub const INT8_ENV: &str = "DIFFUGPT_CPU_INT8";

/// Columns per strip.
const NR: usize = crate::cpu_gemm::STRIP;
/// Activation rows per register block: 6 rows x (2 int32 + 2 f32 accumulators) + 2 weight
/// registers, 2 scale registers and a broadcast fill the 32 registers.
const MR: usize = 4;
/// Depth blocks (of [`QK`]) per run of the driver, up to `KB_MAX_ROWS` rows.
const KB: usize = 8;
const KB_MAX_ROWS: usize = 128;

/// Where a register block's f32 sums start: the bias (or zero), or what `out` holds (a later
/// run of depth blocks).
#[derive(Clone, Copy)]
enum Start {
    Bias(Option<*const f32>),
    Out,
}

/// Whether this CPU can run the VNNI kernels (AVX-512F + AVX512_VNNI, and the kernels not
/// forced below AVX-512).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu_gemm::isa() == crate::cpu_gemm::Isa::Avx512
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether int8 projection weights run on the VNNI kernels in this process ([`supported`] and
/// not turned off by [`INT8_ENV`]).
pub fn active() -> bool {
    static ACTIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| match std::env::var(INT8_ENV).as_deref() {
        Err(_) | Ok("") | Ok("auto") => supported(),
        Ok("vnni") => {
            if !supported() {
                eprintln!("note: {INT8_ENV}=vnni but this CPU (or the forced kernels) has no AVX-512 VNNI: decoding to f32");
            }
            supported()
        }
        Ok("decode") => false,
        Ok(other) => {
            eprintln!("note: {INT8_ENV}={other:?} is not one of auto, vnni, decode: using auto");
            supported()
        }
    })
}

/// The name reports print for the int8 products in use.
pub fn path_name() -> &'static str {
    if active() {
        "vnni"
    } else {
        "decode"
    }
}

/// Activations quantised per row and per block of [`QK`] along `K`: `q` (`m x kq` bytes, `kq` =
/// `K` rounded up to [`QK`], zero-padded), one scale per block (`d`, max |x| / 127) and the sum
/// of the block's quantised values (`sum`, for the weights' bias of 128).
pub struct QuantRows {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<i32>,
    pub kq: usize,
    pub blocks: usize,
}

/// Quantises `x [m, k]` (see [`QuantRows`]): values rounded to nearest (ties to even), an
/// all-zero block has scale 0 and quantises to zeros.
pub fn quantize_rows(x: &[f32], m: usize, k: usize) -> QuantRows {
    assert_eq!(x.len(), m * k, "quantize_rows: size");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_gemm::isa() == crate::cpu_gemm::Isa::Avx512 {
        // SAFETY: the CPU has AVX-512F (isa() never exceeds what it detects).
        return unsafe { quantize_rows_avx512(x, m, k) };
    }
    quantize_rows_body(x, m, k)
}

/// [`quantize_rows_body`] in AVX-512 registers, a block (two registers) at a time: the same
/// scale (max |x| / 127, its reciprocal), the same rounding (the default MXCSR mode is to
/// nearest, ties to even, as `round_ties_even`) and sums; bitwise the scalar body (tested). The
/// scalar loop, even compiled for AVX-512, was ~7% of an int8 forward.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_rows_avx512(x: &[f32], m: usize, k: usize) -> QuantRows {
    use std::arch::x86_64::*;
    if !k.is_multiple_of(QK) {
        return quantize_rows_body(x, m, k);
    }
    let blocks = k / QK;
    let mut q = vec![0i8; m * k];
    let mut d = vec![0f32; m * blocks];
    let mut sum = vec![0i32; m * blocks];
    for (i, (xb, qb)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
        let v0 = _mm512_loadu_ps(xb.as_ptr());
        let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        let iv = _mm512_set1_ps(inv);
        let r0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v0, iv), lo), hi));
        let r1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v1, iv), lo), hi));
        _mm_storeu_si128(qb.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(r0));
        _mm_storeu_si128(
            qb.as_mut_ptr().add(16) as *mut __m128i,
            _mm512_cvtepi32_epi8(r1),
        );
        d[i] = scale;
        sum[i] = _mm512_reduce_add_epi32(_mm512_add_epi32(r0, r1));
    }
    QuantRows {
        q,
        d,
        sum,
        kq: k,
        blocks,
    }
}

#[inline(always)]
fn quantize_rows_body(x: &[f32], m: usize, k: usize) -> QuantRows {
    let blocks = k.div_ceil(QK);
    let kq = blocks * QK;
    let mut q = vec![0i8; m * kq];
    let mut d = vec![0f32; m * blocks];
    let mut sum = vec![0i32; m * blocks];
    for r in 0..m {
        let row = &x[r * k..(r + 1) * k];
        for b in 0..blocks {
            let vals = &row[b * QK..((b + 1) * QK).min(k)];
            let amax = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut s = 0i32;
            for (o, &v) in q[r * kq + b * QK..].iter_mut().zip(vals) {
                let v = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
                *o = v;
                s += v as i32;
            }
            d[r * blocks + b] = scale;
            sum[r * blocks + b] = s;
        }
    }
    QuantRows {
        q,
        d,
        sum,
        kq,
        blocks,
    }
}

/// `out[M, N] = x[M, K] @ w (+ bias)` for int8 strip weights (`w`:
/// [`crate::cpu_quant::strips_to_int8`]'s bytes), activations quantised per row and block.
///
/// # Panics
/// If the sizes do not match or [`supported`] is false.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strips_q8(
    x: &[f32],
    w: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    let strips = n.div_ceil(NR);
    let want = strips * k.div_ceil(QK) * Q8_STRIP_BLOCK;
    assert_eq!(w.len(), want, "matmul_strips_q8: weight size");
    assert_eq!(out.len(), m * n, "int8 products: output size");
    // SAFETY: `out` holds m x n values.
    unsafe { strips_q8(x, w, bias, out.as_mut_ptr(), m, k, n, false) }
}

/// [`matmul_strips_q8`] into a new vector, which the kernels fill without it being zeroed first
/// (see [`crate::cpu_gemm::filled_vec`]).
pub fn matmul_strips_q8_new(
    x: &[f32],
    w: &[u8],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let want = n.div_ceil(NR) * k.div_ceil(QK) * Q8_STRIP_BLOCK;
    assert_eq!(w.len(), want, "matmul_strips_q8: weight size");
    // SAFETY: the kernels write every one of the m x n values (every row block stores all of
    // its strip's columns on its first run of depth blocks).
    unsafe { crate::cpu_gemm::filled_vec(m * n, |o| strips_q8(x, w, bias, o, m, k, n, false)) }
}

/// `out[M, N] = x[M, K] @ head[N, K]^T` for an int8 head in
/// [`crate::cpu_quant::rows_to_int8_strips`]'s layout (the last strip compact), on the same
/// kernels as the projections.
///
/// # Panics
/// As [`matmul_strips_q8`].
pub fn matmul_head_q8(x: &[f32], w: &[u8], out: &mut [f32], m: usize, k: usize, n: usize) {
    assert_eq!(
        w.len(),
        n * k.div_ceil(QK) * Q8_ROW_BLOCK,
        "matmul_head_q8: weight size"
    );
    assert_eq!(out.len(), m * n, "int8 products: output size");
    // SAFETY: `out` holds m x n values.
    unsafe { strips_q8(x, w, None, out.as_mut_ptr(), m, k, n, true) }
}

/// [`matmul_head_q8`] into a new vector (as [`matmul_strips_q8_new`]).
pub fn matmul_head_q8_new(x: &[f32], w: &[u8], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        n * k.div_ceil(QK) * Q8_ROW_BLOCK,
        "matmul_head_q8: weight size"
    );
    // SAFETY: as in `matmul_strips_q8_new`.
    unsafe { crate::cpu_gemm::filled_vec(m * n, |o| strips_q8(x, w, None, o, m, k, n, true)) }
}

/// The driver of both: strips of 32 columns in parallel; `compact_last`: the last strip holds
/// only its `n % 32` columns (36 bytes per column and block) instead of a padded 32. Writes
/// every one of the `m x n` values of `out`.
///
/// # Safety
/// `out` must be valid for writes of `m x n` f32.
#[allow(clippy::too_many_arguments)]
unsafe fn strips_q8(
    x: &[f32],
    w: &[u8],
    bias: Option<&[f32]>,
    out: *mut f32,
    m: usize,
    k: usize,
    n: usize,
    compact_last: bool,
) {
    assert!(
        supported(),
        "int8 products: the CPU cannot run the VNNI kernels"
    );
    assert_eq!(x.len(), m * k, "int8 products: input size");
    assert!(
        bias.is_none_or(|b| b.len() == n),
        "int8 products: bias size"
    );
    let blocks = k.div_ceil(QK);
    let strips = n.div_ceil(NR);
    let xq = quantize_rows(x, m, k);
    let optr = SendPtr(out);
    // A strip's int8 blocks (27-108 KiB for GPT-2) stay in L1/L2 while every row block runs
    // over all of `K` against them; the quantised rows stream from L2.
    (0..strips).into_par_iter().for_each(|s| {
        let o = optr;
        let n0 = s * NR;
        let cols = NR.min(n - n0);
        // Columns the strip's blocks are laid out for.
        let lc = if compact_last { cols } else { NR };
        let wstrip = &w[s * blocks * Q8_STRIP_BLOCK..][..blocks * lc * Q8_ROW_BLOCK];
        // Short canvases: depth in runs of KB blocks, so that the run's weights (9 KiB) and its
        // slice of every quantised row (m x 256 bytes) stay in L1 while all row blocks go over
        // them, the f32 sums waiting in `out` between runs (64 rows: 92 -> 84 ms a forward).
        // Many rows overflow L1 anyway: there, all of `K` at once (1024 rows: 1.94 s -> 2.1 s
        // with runs).
        let kb = if m <= KB_MAX_ROWS { KB } else { blocks };
        let mut b0 = 0;
        // At least one run, so that even K = 0 writes every output (the bias or zero).
        loop {
            let nb = kb.min(blocks - b0);
            let mut r = 0;
            while r < m {
                let rows = MR.min(m - r);
                // SAFETY: `supported()` checked above; the slices hold the asserted sizes; this
                // task alone writes columns n0..n0+cols of rows r..r+rows.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    vnni::rows(
                        rows,
                        xq.q.as_ptr().add(r * xq.kq + b0 * QK),
                        xq.kq,
                        xq.d.as_ptr().add(r * blocks + b0),
                        xq.sum.as_ptr().add(r * blocks + b0),
                        blocks,
                        nb,
                        wstrip.as_ptr().add(b0 * lc * Q8_ROW_BLOCK),
                        if b0 == 0 {
                            Start::Bias(bias.map(|b| b.as_ptr().add(n0)))
                        } else {
                            Start::Out
                        },
                        o.0.add(r * n + n0),
                        n,
                        cols,
                        lc,
                    );
                }
                r += rows;
            }
            b0 += nb;
            if b0 >= blocks {
                break;
            }
        }
    });
}

/// The product [`matmul_strips_q8`] computes, in scalar code and the same order of f32
/// additions (block by block, `d_x * d_w` times the exact integer sum): the reference of the
/// tests, on any CPU.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strips_q8_reference(
    x: &[f32],
    w: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    let blocks = k.div_ceil(QK);
    let xq = quantize_rows(x, m, k);
    for r in 0..m {
        for c in 0..n {
            let (s, cc) = (c / NR, c % NR);
            let mut acc = bias.map_or(0.0, |b| b[c]);
            for b in 0..blocks {
                let blk = &w[(s * blocks + b) * Q8_STRIP_BLOCK..][..Q8_STRIP_BLOCK];
                let sw = f32::from_le_bytes(blk[cc * 4..cc * 4 + 4].try_into().unwrap());
                let vals = &blk[NR * 4..];
                let mut dot = 0i32;
                for kk in 0..QK {
                    let wq = (vals[(kk / 4) * NR * 4 + cc * 4 + kk % 4] ^ 0x80) as i8;
                    dot += wq as i32 * xq.q[r * xq.kq + b * QK + kk] as i32;
                }
                acc = (dot as f32).mul_add(sw * xq.d[r * blocks + b], acc);
            }
            out[r * n + c] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Start, MR, NR, Q8_ROW_BLOCK};
    use std::arch::x86_64::*;

    /// `rows` (1..=`MR`) rows against one strip: the one place a run-time row count becomes
    /// the register block's compile-time one.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn rows(
        rows: usize,
        xq: *const i8,
        kq: usize,
        xd: *const f32,
        xsum: *const i32,
        bstride: usize,
        nb: usize,
        w: *const u8,
        start: Start,
        out: *mut f32,
        ldo: usize,
        cols: usize,
        lc: usize,
    ) {
        debug_assert!((1..=MR).contains(&rows) && cols <= lc && lc <= NR);
        let (m0, m1) = crate::cpu_gemm::strip_masks(cols);
        macro_rules! go {
            ($R:literal) => {
                block::<$R>(
                    xq, kq, xd, xsum, bstride, nb, w, start, out, ldo, m0, m1, lc,
                )
            };
        }
        match rows {
            6 => go!(6),
            5 => go!(5),
            4 => go!(4),
            3 => go!(3),
            2 => go!(2),
            _ => go!(1),
        }
    }

    /// `R` rows x 32 columns over all blocks of `K`: per block, 8 groups of four depth rows;
    /// each group is two weight registers (32 columns x 4 bytes) and, per row, one broadcast of
    /// the row's four activation bytes into two `vpdpbusd`s. The blocks are laid out for `lc`
    /// columns (32, or fewer in a compact last strip); the loads are masked to the columns
    /// that exist, so nothing past the strip is read.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn block<const R: usize>(
        xq: *const i8,
        kq: usize,
        xd: *const f32,
        xsum: *const i32,
        bstride: usize,
        nb: usize,
        w: *const u8,
        start: Start,
        out: *mut f32,
        ldo: usize,
        m0: __mmask16,
        m1: __mmask16,
        lc: usize,
    ) {
        let mut f0 = [_mm512_setzero_ps(); R];
        let mut f1 = [_mm512_setzero_ps(); R];
        match start {
            Start::Bias(Some(b)) => {
                f0 = [_mm512_maskz_loadu_ps(m0, b); R];
                f1 = [_mm512_maskz_loadu_ps(m1, b.add(16)); R];
            }
            Start::Bias(None) => {}
            Start::Out => {
                for i in 0..R {
                    f0[i] = _mm512_maskz_loadu_ps(m0, out.add(i * ldo));
                    f1[i] = _mm512_maskz_loadu_ps(m1, out.add(i * ldo + 16));
                }
            }
        }
        for b in 0..nb {
            let blk = w.add(b * lc * Q8_ROW_BLOCK);
            let s0 = _mm512_maskz_loadu_ps(m0, blk as *const f32);
            let s1 = _mm512_maskz_loadu_ps(m1, (blk as *const f32).add(16));
            let vals = blk.add(lc * 4);
            let mut a0 = [_mm512_setzero_si512(); R];
            let mut a1 = [_mm512_setzero_si512(); R];
            for i in 0..R {
                let c = _mm512_set1_epi32(-128 * *xsum.add(i * bstride + b));
                a0[i] = c;
                a1[i] = c;
            }
            for g in 0..8 {
                let gp = vals.add(g * lc * 4) as *const i32;
                let w0 = _mm512_maskz_loadu_epi32(m0, gp);
                let w1 = _mm512_maskz_loadu_epi32(m1, gp.add(16));
                for i in 0..R {
                    let p = xq.add(i * kq + b * 32 + g * 4) as *const i32;
                    let xv = _mm512_set1_epi32(p.read_unaligned());
                    a0[i] = _mm512_dpbusd_epi32(a0[i], w0, xv);
                    a1[i] = _mm512_dpbusd_epi32(a1[i], w1, xv);
                }
            }
            for i in 0..R {
                let d = _mm512_set1_ps(*xd.add(i * bstride + b));
                f0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[i]), _mm512_mul_ps(s0, d), f0[i]);
                f1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1[i]), _mm512_mul_ps(s1, d), f1[i]);
            }
        }
        for i in 0..R {
            let o = out.add(i * ldo);
            _mm512_mask_storeu_ps(o, m0, f0[i]);
            _mm512_mask_storeu_ps(o.add(16), m1, f1[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..len).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
    }

    /// The head on the strip kernels (compact last strip: 45 = 32 + 13 and 50 = 32 + 18 rows)
    /// against the plain product on the decoded rows with the activations rounded the same
    /// way: the exact integer sums make the two equal up to f32 summation order.
    #[test]
    fn vnni_head_equals_decoded_rows() {
        if !supported() {
            eprintln!("SKIPPED: this CPU (or the forced kernels) has no AVX-512 VNNI");
            return;
        }
        for &(m, k, n) in &[(1, 64, 45), (9, 96, 50), (70, 128, 300)] {
            let x = rand_vec(m * k, 30 + n as u64);
            let w = rand_vec(n * k, 40 + n as u64);
            let q = crate::cpu_quant::rows_to_int8_strips(&w, k, n);
            let mut wd = vec![0f32; n * k];
            crate::cpu_quant::Rows::Int8Strips(&q).decode(k, 0, n, &mut wd);
            let xq = quantize_rows(&x, m, k);
            let mut got = vec![f32::NAN; m * n];
            matmul_head_q8(&x, &q, &mut got, m, k, n);
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| {
                            let xv =
                                xq.q[r * xq.kq + i] as f64 * xq.d[r * xq.blocks + i / QK] as f64;
                            xv * wd[c * k + i] as f64
                        })
                        .sum();
                    let g = got[r * n + c] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m}x{k}x{n} r{r} c{c}: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// Quantised rows: within half a step of each block's scale, sums exact, zero blocks zero.
    #[test]
    fn rows_quantise_within_half_a_step() {
        let (m, k) = (3, 77);
        let mut x = rand_vec(m * k, 1);
        x[k..k + 32].iter_mut().for_each(|v| *v = 0.0); // row 1, block 0: all zero
        let q = quantize_rows(&x, m, k);
        assert_eq!((q.kq, q.blocks), (96, 3));
        for r in 0..m {
            for b in 0..3 {
                let d = q.d[r * 3 + b];
                let mut s = 0;
                for kk in 0..QK {
                    let v = q.q[r * 96 + b * QK + kk];
                    s += v as i32;
                    let i = b * QK + kk;
                    let want = if i < k { x[r * k + i] } else { 0.0 };
                    assert!((v as f32 * d - want).abs() <= d * 0.5 + 1e-7, "r{r} k{i}");
                }
                assert_eq!(s, q.sum[r * 3 + b]);
            }
        }
        assert_eq!(q.d[3], 0.0);
    }

    /// The AVX-512 quantisation is bitwise the scalar one.
    #[test]
    fn vector_quantisation_equals_scalar() {
        let (m, k) = (5, 96);
        let mut x = rand_vec(m * k, 5);
        x[0] = 0.5; // ties: 0.5 / (1/127) lands near .5 steps in places
        x[k..k + 32].iter_mut().for_each(|v| *v = 0.0);
        let a = quantize_rows(&x, m, k);
        let b = quantize_rows_body(&x, m, k);
        assert_eq!((a.q, a.sum, a.kq, a.blocks), (b.q, b.sum, b.kq, b.blocks));
        assert_eq!(
            a.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    /// The scalar reference against plain f32 on the decoded weights: within the error of
    /// rounding the activations (half a step of each block, summed over `K`).
    #[test]
    fn reference_is_close_to_f32() {
        let (m, k, n) = (5, 77, 45);
        let x = rand_vec(m * k, 2);
        let w = rand_vec(k * n, 3);
        let bias = rand_vec(n, 4);
        let packed = crate::cpu_gemm::pack_nn(&w, k, n);
        let q = crate::cpu_quant::strips_to_int8(&packed, k, n);
        let mut got = vec![0f32; m * n];
        matmul_strips_q8_reference(&x, &q, Some(&bias), &mut got, m, k, n);
        for r in 0..m {
            for c in 0..n {
                let want: f32 = bias[c] + (0..k).map(|i| x[r * k + i] * w[i * n + c]).sum::<f32>();
                // Both operands within half a step (<= 0.5/127 of a block max <= 1) of the
                // truth: |error| <= k * (2 * 0.5/127 + (0.5/127)^2).
                let tol = k as f32 * (1.0 / 127.0 + 1e-4);
                assert!((got[r * n + c] - want).abs() <= tol, "r{r} c{c}");
            }
        }
    }

    /// The VNNI kernels against the scalar reference of the same arithmetic (integer block
    /// sums exact, the same f32 additions; FMA vs mul_add rounding alike): every row count of
    /// the register block, ragged strips, depths that are not multiples of 32, with and without
    /// bias. Relative 1e-5 of the row's largest output covers the scale product's rounding.
    #[test]
    fn vnni_kernels_equal_the_reference() {
        if !supported() {
            eprintln!("SKIPPED: this CPU (or the forced kernels) has no AVX-512 VNNI");
            return;
        }
        let mut seed = 10;
        for &(m, k, n) in &[(1, 32, 32), (7, 77, 45), (13, 300, 200), (64, 768, 96)] {
            for with_bias in [false, true] {
                seed += 1;
                let x = rand_vec(m * k, seed);
                let w = rand_vec(k * n, seed + 100);
                let bias = rand_vec(n, seed + 200);
                let bias = with_bias.then_some(&bias[..]);
                let q = crate::cpu_quant::strips_to_int8(&crate::cpu_gemm::pack_nn(&w, k, n), k, n);
                let mut want = vec![0f32; m * n];
                matmul_strips_q8_reference(&x, &q, bias, &mut want, m, k, n);
                let mut got = vec![f32::NAN; m * n];
                matmul_strips_q8(&x, &q, bias, &mut got, m, k, n);
                let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * scale,
                        "{m}x{k}x{n} bias {with_bias} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
