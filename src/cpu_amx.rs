//! bf16 products on Intel AMX tiles (`tdpbf16ps`): the bf16 projections and head on CPUs with
//! AMX-BF16 (Xeon since Sapphire Rapids).
//!
//! Why tiles: on the Xeon measured, `vdpbf16ps` issues at a quarter of the 512-bit FMA rate (the
//! bf16 products of [`crate::cpu_bf16`] lose to decoding the weights to f32), while one
//! `tdpbf16ps` does 16 x 16 x 32 multiply-adds — 8192, against an FMA's 16 — at one per 16
//! cycles: 16x the f32 FMA rate on paper. With that much arithmetic to spare, the activations
//! are not rounded once to bf16 (8 bits of mantissa: 1.6e-2 relative on the logits, over the
//! 1e-2 the bf16 path is held to) but split into two bf16 terms, `x = hi + lo` with
//! `hi = bf16(x)`, `lo = bf16(x - hi)` (16 bits together), and every tile of weights is
//! multiplied by both: the only rounding left beyond the f32 forward's is that of the weights,
//! as on the decode path.
//!
//! Layouts: the weights are [`crate::cpu_quant`]'s bf16 strips in pair order, which are already
//! what a `tdpbf16ps` B tile wants — 16 rows of depth pairs, each 16 columns x 2 bf16 (64
//! bytes), strided 128 bytes within a 32-column strip; the activation terms are plain bf16 rows
//! (A tiles of 16 rows x 32 depths). A register block is 32 rows x 32 columns: four C tiles
//! (`tmm0-3`), the two row halves' A tiles (`tmm4-5`, hi then lo) and the strip's two B tiles
//! (`tmm6-7`), eight `tdpbf16ps` per 32 depths.
//!
//! The tile instructions are written as inline assembly (their intrinsics are not stable Rust);
//! the compiler never allocates `tmm` registers, so the tiles keep their values between the
//! statements of a kernel. Each rayon task loads the tile configuration itself (it is per
//! thread) and releases the tiles at its end.
//!
//! Linux hands AMX state to a process only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`);
//! [`available`] asks once and is false where the CPU, the kernel or the hypervisor says no.

use half::bf16;
use rayon::prelude::*;

use crate::cpu_gemm::SendPtr;

/// Columns per strip of the bf16 weights.
const NR: usize = crate::cpu_gemm::STRIP;
/// Rows per register block (two A tiles).
const MB: usize = 32;
/// Depth per step (one A tile's 32 bf16 per row; a B tile's 16 pairs).
const KB: usize = 32;
/// Rows per panel on long canvases: the panel's two bf16 terms (`K = 768`: 576 KiB) stay in L2
/// while every strip runs over them.
const PANEL_ROWS: usize = 192;

/// Whether this CPU and OS run AMX-BF16 tiles for this process (asked once).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // The AVX-512 parts of the kernels (activation split, epilogue) need AVX-512F + BF16, which
    // every AMX CPU has; checked all the same.
    if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")) {
        return false;
    }
    // CPUID leaf 7 exists on every CPU with AVX-512.
    let edx = __cpuid_count(7, 0).edx;
    let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_ulong = 18;
    // SAFETY: a plain system call with integer arguments; it changes only which state the
    // kernel saves for this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Whether this CPU and OS also run AMX-INT8 tiles (with [`available`]'s permission, and AVX-512
/// VNNI for the strips the tiles leave to the VNNI kernels).
pub fn int8_available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            available()
                && std::is_x86_feature_detected!("avx512vnni")
                && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 25) != 0
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `out[m, n] (+)= ` the int8 product of [`crate::cpu_int8`] on tiles, for the `full_strips`
/// first strips (32 columns each) of int8 strip weights: `tdpbsud` (signed activation bytes x
/// the weights' unsigned, biased bytes) gives each 32-deep block's exact integer sums, 16 x 16
/// at a time; the same epilogue as the VNNI kernel (`-128 * sum(x_q)` for the bias, then
/// `f += float(sum) * (scale_w * scale_x)` as one FMA) makes the result bitwise the VNNI
/// kernel's (tested). `xq`: the activations as [`crate::cpu_int8::quantize_rows`] gives them.
///
/// # Safety
/// [`int8_available`] must hold; `w` must hold the `full_strips` strips of `xq.blocks` blocks,
/// `bias` (if any) at least `full_strips * 32` values; `out` must be valid for writes of `m`
/// rows of `ldo >= full_strips * 32` values.
pub unsafe fn matmul_q8_strips(
    xq: &crate::cpu_int8::QuantRows,
    w: &[u8],
    bias: Option<&[f32]>,
    out: *mut f32,
    ldo: usize,
    m: usize,
    full_strips: usize,
) {
    use crate::cpu_quant::Q8_STRIP_BLOCK;
    assert!(int8_available(), "AMX int8 products: no tiles here");
    let (kq, blocks) = (xq.kq, xq.blocks);
    assert!(
        kq == blocks * 32 && xq.q.len() == m * kq,
        "AMX int8 products: input size"
    );
    assert!(
        w.len() >= full_strips * blocks * Q8_STRIP_BLOCK,
        "AMX int8 products: weight size"
    );
    assert!(
        bias.is_none_or(|b| b.len() >= full_strips * NR),
        "AMX int8 products: bias size"
    );
    // The A tiles read whole 16-row groups: the rows past `m` padded with zeros.
    let mpad = padded_rows(m);
    let mut qpad = vec![0i8; mpad * kq];
    qpad[..m * kq].copy_from_slice(&xq.q);
    let optr = SendPtr(out);
    let strip_bytes = blocks * Q8_STRIP_BLOCK;
    (0..full_strips).into_par_iter().for_each(|s| {
        let o = optr;
        let wstrip = w[s * strip_bytes..][..strip_bytes].as_ptr();
        let next = if s + 1 < full_strips {
            w[(s + 1) * strip_bytes..].as_ptr()
        } else {
            std::ptr::null()
        };
        let b = bias.map(|b| b[s * NR..][..NR].as_ptr());
        // SAFETY: `int8_available()` (asserted); sizes asserted above; this task alone writes
        // columns s*32..s*32+32 of the `m` rows.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            tiles::strip_q8(
                qpad.as_ptr(),
                kq,
                xq.d.as_ptr(),
                xq.sum.as_ptr(),
                blocks,
                wstrip,
                b,
                o.0.add(s * NR),
                ldo,
                m,
                next,
                strip_bytes,
            );
        }
    });
}

/// Whether [`matmul_strips`] takes this product: tiles available and the depth a whole number of
/// tile steps (GPT-2's 768 and 3072 are; other depths stay on the `vdpbf16ps` kernels).
pub fn runs(k: usize) -> bool {
    k.is_multiple_of(KB) && k > 0 && available()
}

/// `x [m, k]` (`k` even) split into two bf16 terms per value, `hi = bf16(x)` and
/// `lo = bf16(x - hi)` (round to nearest even, as `vcvtneps2bf16`), each `[mpad, k]` with the
/// rows past `m` zero, two depths per 32-bit lane (depth `2j` in the low half of lane `j`: the
/// order of [`crate::cpu_bf16::pair_rows`], which the `vdpbf16ps` kernels read too).
pub fn split_rows(x: &[f32], m: usize, k: usize, mpad: usize) -> (Vec<u32>, Vec<u32>) {
    assert_eq!(x.len(), m * k, "split_rows: size");
    assert!(
        mpad >= m && k.is_multiple_of(2),
        "split_rows: padding or odd depth"
    );
    let mut hi = vec![0u32; mpad * k / 2];
    let mut lo = vec![0u32; mpad * k / 2];
    #[cfg(target_arch = "x86_64")]
    if k.is_multiple_of(16) && available() {
        // SAFETY: AVX-512F + AVX512_BF16 (`available`); sizes as allocated.
        unsafe { split_avx512(x, &mut hi[..m * k / 2], &mut lo[..m * k / 2]) };
        return (hi, lo);
    }
    for ((two, h), l) in x.chunks_exact(2).zip(hi.iter_mut()).zip(lo.iter_mut()) {
        let terms = [
            crate::cpu_bf16::bf16_terms(two[0]),
            crate::cpu_bf16::bf16_terms(two[1]),
        ];
        *h = terms[0].0 as u32 | (terms[1].0 as u32) << 16;
        *l = terms[0].1 as u32 | (terms[1].1 as u32) << 16;
    }
    (hi, lo)
}

/// [`split_rows`]' body, 16 values at a time; bitwise the scalar rounding (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn split_avx512(x: &[f32], hi: &mut [u32], lo: &mut [u32]) {
    use std::arch::x86_64::*;
    for ((src, h), l) in x
        .chunks_exact(16)
        .zip(hi.chunks_exact_mut(8))
        .zip(lo.chunks_exact_mut(8))
    {
        let v = _mm512_loadu_ps(src.as_ptr());
        let hb: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        let back = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hb)));
        let lb: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_sub_ps(v, back)));
        _mm256_storeu_si256(h.as_mut_ptr() as *mut __m256i, hb);
        _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, lb);
    }
}

/// `out[m, n] = x[m, k] @ w (+ bias)` on tiles, `x` given as its [`split_rows`] terms (`mpad`
/// rows, a multiple of 32), for bf16 strips in pair order: the `full_strips` first strips of `w`
/// (the caller runs a last strip with fewer than 32 columns on other kernels); writes the
/// `full_strips * 32` first columns of the `m` rows of `out` (row stride `ldo`).
///
/// # Safety
/// [`runs`]`(k)` must hold; `hi` / `lo` must hold `mpad * k` bf16 values, `w` `full_strips * 32 * k`,
/// `bias` (if any) at least `full_strips * 32`; `out` must be valid for writes of `m` rows of
/// `ldo` values with `ldo >= full_strips * 32`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_strips(
    hi: &[u32],
    lo: &[u32],
    mpad: usize,
    w: &[bf16],
    bias: Option<&[f32]>,
    out: *mut f32,
    ldo: usize,
    m: usize,
    k: usize,
    full_strips: usize,
) {
    assert!(runs(k), "AMX products: no tiles here, or a depth of {k}");
    assert!(
        mpad.is_multiple_of(MB) && mpad >= m,
        "AMX products: padding"
    );
    assert!(
        hi.len() == mpad * k / 2 && lo.len() == mpad * k / 2,
        "AMX products: input size"
    );
    assert!(w.len() >= full_strips * NR * k, "AMX products: weight size");
    assert!(
        bias.is_none_or(|b| b.len() >= full_strips * NR),
        "AMX products: bias size"
    );
    let optr = SendPtr(out);
    for p0 in (0..mpad).step_by(PANEL_ROWS) {
        let pend = (p0 + PANEL_ROWS).min(mpad);
        (0..full_strips).into_par_iter().for_each(|s| {
            let o = optr;
            let wstrip = w[s * NR * k..][..NR * k].as_ptr() as *const u16;
            let b = bias.map(|b| b[s * NR..][..NR].as_ptr());
            // The strip this thread most likely runs next (rayon hands out contiguous ranges).
            let next = if s + 1 < full_strips {
                w[(s + 1) * NR * k..].as_ptr() as *const u8
            } else {
                std::ptr::null()
            };
            // SAFETY: `runs(k)` (asserted) — AMX-BF16 with the OS's permission, AVX-512F; the
            // slices hold the sizes asserted above; this task alone writes columns
            // s*32..s*32+32 of rows p0..min(pend, m).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                tiles::strip(
                    (hi.as_ptr() as *const u16).add(p0 * k),
                    (lo.as_ptr() as *const u16).add(p0 * k),
                    k,
                    wstrip,
                    b,
                    o.0.add(p0 * ldo + s * NR),
                    ldo,
                    (pend - p0) / MB,
                    m.saturating_sub(p0).min(pend - p0),
                    next,
                );
            }
        });
    }
}

/// Rows of [`split_rows`]' padding for `m` rows.
pub fn padded_rows(m: usize) -> usize {
    m.div_ceil(MB) * MB
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use super::{KB, MB, NR};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// The tile configuration (palette 1): every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    /// One strip (32 columns) against `blocks` register blocks of 32 rows: per block, four C
    /// tiles over all of `k` from zero, then stored, biased and written to the rows that exist
    /// (`valid` of the `blocks * 32`). Meanwhile the `k` cache lines of the `next` strip (null:
    /// none) are asked for into L2, spread over the depth steps of all blocks: on short
    /// canvases the tile loads of a strip's first block otherwise wait on DRAM with the tiles
    /// idle (measured at 64 rows: the projections read their weights at 7-8 GB/s of the 20
    /// the memory gives).
    ///
    /// # Safety
    /// AMX-BF16 usable by this process, AVX-512F; `hi` / `lo` hold `blocks * 32` rows of `k`
    /// bf16, `w` a strip's `k * 32`, `bias` 32 values; `out` valid for `valid` rows of 32
    /// values at stride `ldo`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn strip(
        hi: *const u16,
        lo: *const u16,
        k: usize,
        w: *const u16,
        bias: Option<*const f32>,
        out: *mut f32,
        ldo: usize,
        blocks: usize,
        valid: usize,
        next: *const u8,
    ) {
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        let lda = 2 * k; // bytes per activation row
        let ldb = 4 * NR; // bytes per depth pair of the strip (32 columns x 2 bf16)
        let mut c = [0f32; MB * NR];
        // A strip is `64 k` bytes (32 columns x 2 bf16 per depth row), asked for over every
        // depth step of every block.
        let mut pf = crate::cpu_gemm::PrefetchStream::new(next, 64 * k, blocks * k / KB);
        for blk in 0..blocks {
            let a_hi = hi.add(blk * MB * k);
            let a_lo = lo.add(blk * MB * k);
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for k0 in (0..k).step_by(KB) {
                pf.ask();
                let b0 = w.add(k0 * NR); // pair row k0 / 2, 2 bf16 per column
                asm!(
                    "tileloadd tmm4, [{h0} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{h1} + {lda}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm4, [{l0} + {lda}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{l1} + {lda}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    b0 = in(reg) b0,
                    b1 = in(reg) b0.add(16 * 2),
                    ldb = in(reg) ldb,
                    h0 = in(reg) a_hi.add(k0),
                    h1 = in(reg) a_hi.add(16 * k + k0),
                    l0 = in(reg) a_lo.add(k0),
                    l1 = in(reg) a_lo.add(16 * k + k0),
                    lda = in(reg) lda,
                    options(nostack, readonly)
                );
            }
            let cp = c.as_mut_ptr();
            asm!(
                "tilestored [{c0} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                "tilestored [{c2} + {ldc}*1], tmm2",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c0 = in(reg) cp,
                c1 = in(reg) cp.add(16),
                c2 = in(reg) cp.add(16 * NR),
                c3 = in(reg) cp.add(16 * NR + 16),
                ldc = in(reg) 4 * NR,
                options(nostack)
            );
            let (b0, b1) = match bias {
                Some(b) => (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16))),
                None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
            };
            let rows = valid.saturating_sub(blk * MB).min(MB);
            for r in 0..rows {
                let o = out.add((blk * MB + r) * ldo);
                let cr = cp.add(r * NR);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(cr), b0));
                _mm512_storeu_ps(o.add(16), _mm512_add_ps(_mm512_loadu_ps(cr.add(16)), b1));
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// The int8 tile configuration: C tiles `tmm0-3` 16 x 16 int32, A tiles `tmm4-5` 16 rows x
    /// 32 activation bytes (one block), B tiles `tmm6-7` 8 groups of 4 depths x 16 columns.
    const CONFIG_Q8: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = if t == 4 || t == 5 { 32 } else { 64 };
            c[48 + t] = if t >= 6 { 8 } else { 16 };
            t += 1;
        }
        Config(c)
    };

    /// One int8 strip (32 columns, `blocks` blocks of 32 depths) against all `m` rows, 32 at a
    /// time (`q`: `ceil(m / 32) * 32` rows of `kq` bytes): per block, four C tiles of integer
    /// sums, stored and folded into the f32 sums (in L1) as the VNNI kernel folds its
    /// registers. Meanwhile the `next` strip (`bytes` long; null: none) is prefetched into L2.
    ///
    /// # Safety
    /// AMX-INT8 usable by this process, AVX-512F; sizes as [`super::matmul_q8_strips`] asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn strip_q8(
        q: *const i8,
        kq: usize,
        xd: *const f32,
        xsum: *const i32,
        blocks: usize,
        w: *const u8,
        bias: Option<*const f32>,
        out: *mut f32,
        ldo: usize,
        m: usize,
        next: *const u8,
        bytes: usize,
    ) {
        use crate::cpu_quant::Q8_ROW_BLOCK;
        asm!("ldtilecfg [{}]", in(reg) CONFIG_Q8.0.as_ptr(), options(nostack, readonly));
        let row_blocks = m.div_ceil(MB);
        let mut pf = crate::cpu_gemm::PrefetchStream::new(next, bytes, row_blocks * blocks);
        let mut ibuf = [0i32; MB * NR];
        let mut acc = [0f32; MB * NR];
        let (b0, b1) = match bias {
            Some(b) => (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16))),
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        for rb in 0..row_blocks {
            let r0 = rb * MB;
            let rows = MB.min(m - r0);
            for r in 0..MB {
                _mm512_storeu_ps(acc.as_mut_ptr().add(r * NR), b0);
                _mm512_storeu_ps(acc.as_mut_ptr().add(r * NR + 16), b1);
            }
            for blk in 0..blocks {
                pf.ask();
                let wb = w.add(blk * NR * Q8_ROW_BLOCK);
                let vals = wb.add(NR * 4);
                let a = q.add(r0 * kq + blk * 32);
                let ip = ibuf.as_mut_ptr();
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{v0} + {ldb}*1]",
                    "tdpbsud tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{v1} + {ldb}*1]",
                    "tdpbsud tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    "tdpbsud tmm2, tmm5, tmm6",
                    "tdpbsud tmm3, tmm5, tmm7",
                    "tilestored [{c0} + {ldc}*1], tmm0",
                    "tilestored [{c1} + {ldc}*1], tmm1",
                    "tilestored [{c2} + {ldc}*1], tmm2",
                    "tilestored [{c3} + {ldc}*1], tmm3",
                    a0 = in(reg) a,
                    a1 = in(reg) a.add(16 * kq),
                    lda = in(reg) kq,
                    v0 = in(reg) vals,
                    v1 = in(reg) vals.add(64),
                    ldb = in(reg) 4 * NR,
                    c0 = in(reg) ip,
                    c1 = in(reg) ip.add(16),
                    c2 = in(reg) ip.add(16 * NR),
                    c3 = in(reg) ip.add(16 * NR + 16),
                    ldc = in(reg) 4 * NR,
                    options(nostack)
                );
                let s0 = _mm512_loadu_ps(wb as *const f32);
                let s1 = _mm512_loadu_ps((wb as *const f32).add(16));
                for r in 0..rows {
                    let i = (r0 + r) * blocks + blk;
                    let c = _mm512_set1_epi32(-128 * *xsum.add(i));
                    let d = _mm512_set1_ps(*xd.add(i));
                    let ir = ip.add(r * NR);
                    let ar = acc.as_mut_ptr().add(r * NR);
                    let a0 = _mm512_add_epi32(_mm512_loadu_si512(ir as *const _), c);
                    let a1 = _mm512_add_epi32(_mm512_loadu_si512(ir.add(16) as *const _), c);
                    let f0 = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(a0),
                        _mm512_mul_ps(s0, d),
                        _mm512_loadu_ps(ar),
                    );
                    let f1 = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(a1),
                        _mm512_mul_ps(s1, d),
                        _mm512_loadu_ps(ar.add(16)),
                    );
                    _mm512_storeu_ps(ar, f0);
                    _mm512_storeu_ps(ar.add(16), f1);
                }
            }
            for r in 0..rows {
                let o = out.add((r0 + r) * ldo);
                let ar = acc.as_ptr().add(r * NR);
                _mm512_storeu_ps(o, _mm512_loadu_ps(ar));
                _mm512_storeu_ps(o.add(16), _mm512_loadu_ps(ar.add(16)));
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// [`super::peak_chains`]: A in `tmm4-5`, B in `tmm6-7`, four C tiles, `iters` rounds of
    /// four independent `tdpbf16ps`; the sum of the four C tiles stored to `c`.
    ///
    /// # Safety
    /// AMX-BF16 usable by this process; `a` and `b` hold 512 bf16 each, `c` 256 f32.
    pub unsafe fn chains(a: *const u16, b: *const u16, iters: usize, c: *mut f32) {
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{a} + {ld}*1]",
            "tileloadd tmm5, [{a} + {ld}*1]",
            "tileloadd tmm6, [{b} + {ld}*1]",
            "tileloadd tmm7, [{b} + {ld}*1]",
            a = in(reg) a,
            b = in(reg) b,
            ld = in(reg) 64usize,
            options(nostack, readonly)
        );
        for _ in 0..iters {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem)
            );
        }
        let mut part = [0f32; 4 * 256];
        let p = part.as_mut_ptr();
        asm!(
            "tilestored [{c0} + {ld}*1], tmm0",
            "tilestored [{c1} + {ld}*1], tmm1",
            "tilestored [{c2} + {ld}*1], tmm2",
            "tilestored [{c3} + {ld}*1], tmm3",
            c0 = in(reg) p,
            c1 = in(reg) p.add(256),
            c2 = in(reg) p.add(512),
            c3 = in(reg) p.add(768),
            ld = in(reg) 64usize,
            options(nostack)
        );
        asm!("tilerelease", options(nostack, nomem));
        for i in 0..256 {
            *c.add(i) = part[i] + part[256 + i] + part[512 + i] + part[768 + i];
        }
    }
}

/// `iters` x 4 `tdpbf16ps` on four independent C tiles (operands in tiles, no memory traffic):
/// what [`crate::bench::amx_bf16_peak_gflops`] times on every thread. Returns a value of the
/// sums so that the work cannot be dropped. Floating-point operations per call:
/// `iters * 4 * 16 * 16 * 32 * 2`.
///
/// # Panics
/// If [`available`] is false.
pub fn peak_chains(iters: usize, seed: f32) -> f32 {
    assert!(available(), "AMX peak: no tiles here");
    #[cfg(target_arch = "x86_64")]
    {
        // Small values (bf16 1/64 and 1/128 with the seed's sign) that sum without overflow.
        let a = vec![crate::cpu_bf16::round_bf16(seed / 64.0); 16 * 32];
        let b = vec![crate::cpu_bf16::round_bf16(1.0 / 128.0); 16 * 32];
        let mut c = [0f32; 16 * 16];
        // SAFETY: `available()`; the operands hold one tile each (16 rows of 64 bytes), `c`
        // one f32 tile.
        unsafe { tiles::chains(a.as_ptr(), b.as_ptr(), iters, c.as_mut_ptr()) };
        c.iter().sum()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (iters, seed);
        0.0
    }
}

/// The product [`matmul_strips`] computes, in scalar f64 on its operands (the bf16 weights, the
/// activations as `hi + lo`): the reference of the tests, on any CPU.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strips_reference(
    x: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: &mut [f64],
    m: usize,
    k: usize,
    n: usize,
) {
    crate::cpu_bf16::strips_reference_with(x, w, bias, out, m, k, n, |v| {
        let (h, l) = crate::cpu_bf16::bf16_terms(v);
        crate::cpu_bf16::bf16_value(h) + crate::cpu_bf16::bf16_value(l)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The vector split equals the scalar one bit for bit, and `hi + lo` carries about 16 bits.
    #[test]
    fn split_is_the_scalar_rounding() {
        let (m, k) = (5, 48);
        let mut rng = Rng::new(7);
        let mut x = rng.signed_vec(m * k);
        x[3] = 1e-3;
        x[4] = -7.5e4;
        x[5] = 0.0;
        let (hi, lo) = split_rows(&x, m, k, 32);
        assert_eq!(hi.len(), 32 * k / 2);
        assert!(hi[m * k / 2..]
            .iter()
            .chain(&lo[m * k / 2..])
            .all(|&v| v == 0));
        for (i, &v) in x.iter().enumerate() {
            let half = |t: &[u32]| (t[i / 2] >> (16 * (i % 2))) as u16;
            let (h, l) = crate::cpu_bf16::bf16_terms(v);
            assert_eq!((half(&hi), half(&lo)), (h, l), "value {i}: {v}");
            let sum = crate::cpu_bf16::bf16_value(h) + crate::cpu_bf16::bf16_value(l);
            assert!(
                (sum - v as f64).abs() <= v.abs() as f64 * 2f64.powi(-16),
                "{v} vs {sum}"
            );
        }
    }

    /// The tiles against the f64 reference on the same operands (bf16 weights, activations as
    /// two terms): row counts below, at and past a register block and a panel (192), depths of
    /// one and several tile steps, with and without bias, written into a wider output.
    #[test]
    fn tiles_equal_the_reference() {
        if !available() {
            eprintln!("SKIPPED: this CPU or OS runs no AMX-BF16 tiles");
            return;
        }
        let mut rng = Rng::new(11);
        for &(m, k, n) in &[
            (1, 32, 32),
            (17, 64, 64),
            (32, 96, 96),
            (70, 768, 64),
            (200, 64, 32),
        ] {
            for with_bias in [false, true] {
                let x = rng.signed_vec(m * k);
                let w = rng.signed_vec(k * n);
                let b = rng.signed_vec(n);
                let bias = with_bias.then_some(&b[..]);
                let q = crate::cpu_quant::strips_to_bf16(&crate::cpu_gemm::pack_nn(&w, k, n), k, n);
                let mut want = vec![0f64; m * n];
                matmul_strips_reference(&x, &q, bias, &mut want, m, k, n);
                let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
                let qa: Vec<bf16> = q.iter().map(|v| bf16::from_f32(v.to_f32().abs())).collect();
                let mut abs_sum = vec![0f64; m * n];
                matmul_strips_reference(&xa, &qa, None, &mut abs_sum, m, k, n);
                // Two columns of sentinels right of the product: the tiles must not touch them.
                let ldo = n + 2;
                let mut got = vec![f32::NAN; m * ldo];
                let mpad = padded_rows(m);
                let (hi, lo) = split_rows(&x, m, k, mpad);
                // SAFETY: `available()`, k a multiple of 32; sizes as built above.
                unsafe {
                    matmul_strips(
                        &hi,
                        &lo,
                        mpad,
                        &q,
                        bias,
                        got.as_mut_ptr(),
                        ldo,
                        m,
                        k,
                        n / NR,
                    )
                };
                for r in 0..m {
                    for c in 0..ldo {
                        let g = got[r * ldo + c];
                        if c >= n {
                            assert!(g.is_nan(), "{m}x{k}x{n}: column {c} of row {r} written");
                            continue;
                        }
                        let (w, a) = (want[r * n + c], abs_sum[r * n + c]);
                        // f32 sums of 2k exact products: at most 2k roundings of 2^-24.
                        let tol = (2 * k + 2) as f64 * 6e-8 * a + 1e-30;
                        assert!(
                            (g as f64 - w).abs() <= tol,
                            "{m}x{k}x{n} [{r}, {c}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// Two terms make the activations all but exact: against plain f64 on the unrounded
    /// activations, the only error left is the weights' rounding to bf16.
    #[test]
    fn reference_rounds_only_the_weights() {
        let (m, k, n) = (3, 64, 32);
        let mut rng = Rng::new(5);
        let x = rng.signed_vec(m * k);
        let w = rng.signed_vec(k * n);
        let q = crate::cpu_quant::strips_to_bf16(&crate::cpu_gemm::pack_nn(&w, k, n), k, n);
        let mut got = vec![0f64; m * n];
        matmul_strips_reference(&x, &q, None, &mut got, m, k, n);
        for r in 0..m {
            for c in 0..n {
                let exact_w: f64 = (0..k)
                    .map(|i| {
                        x[r * k + i] as f64
                            * q[crate::cpu_quant::bf16_pair_index(i, c % NR, NR, k)].to_f64()
                    })
                    .sum();
                let abs: f64 = (0..k)
                    .map(|i| (x[r * k + i] * w[i * n + c]).abs() as f64)
                    .sum();
                assert!(
                    (got[r * n + c] - exact_w).abs() <= abs * 2f64.powi(-15),
                    "r{r} c{c}"
                );
            }
        }
    }
}
