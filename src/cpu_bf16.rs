//! bf16 x bf16 products for the bf16 projections and head on CPUs with AVX512_BF16
//! (`vdpbf16ps`: 16 lanes, each the f32 sum of two bf16 products added to an f32 accumulator).
//!
//! What it is worth depends on the CPU, which is why `diffugpt bench` measures it beside the f32
//! FMA peak: on AMD Zen 4 a `vdpbf16ps` issues as often as a 512-bit FMA and does twice its
//! work (measured 2.03x the f32 peak), on the Intel Xeon tried it issues at a quarter of the FMA
//! rate (0.49x: there the decode path of [`crate::cpu_quant`] is faster, and [`active`] keeps
//! it; benches/README.md).
//!
//! The weights are stored as [`crate::cpu_quant`]'s bf16 strips in pair order — depth rows two
//! by two, each column's pair one 32-bit lane, the operand `vdpbf16ps` reads — and the
//! activations are rounded to bf16 per row (round to nearest even, as `vcvtne2ps2bf16`), two
//! depth rows per lane; a register block broadcasts one lane of a row against 32 columns' pairs.
//! The products of two bf16 are exact in f32 and summed in f32, so the only rounding beyond the
//! f32 forward's is that of the weights (as on the decode path) and of the activations (8 bits
//! of mantissa; measured on the default model in benches/README.md).
//!
//! [`path`] is the switch: AMX tiles ([`crate::cpu_amx`], activations split in two bf16 terms)
//! where the CPU and OS have them; else `vdpbf16ps` where the CPU has AVX512_BF16 and issues it
//! faster than the f32 kernels would run the same products; else the decode path — unless
//! [`BF16_ENV`] says otherwise or the kernels are forced below AVX-512
//! (`DIFFUGPT_CPU_KERNELS=avx2|generic`). Both bf16 products read the same strips, and the
//! driver below hands a product to the tiles when its depth suits them.

use half::bf16;
use rayon::prelude::*;

use crate::cpu_gemm::SendPtr;
use crate::cpu_quant::bf16_pair_index;

/// The environment variable that picks the bf16 products: `auto` (default: AMX tiles where the
/// CPU and OS have them, else `vdpbf16ps` where the CPU has it and it is measured faster than the
/// f32 FMAs, see [`active`]), `amx` (tiles wherever they run; refused with a note where not),
/// `dot` (`vdpbf16ps` wherever the CPU has it, also on an AMX CPU; refused with a note where it
/// has not), `decode` (decode the weights to f32 and run the f32 kernels). Read once per process.
pub const BF16_ENV: &str = "DIFFUGPT_CPU_BF16";

/// The bf16 products in use ([`path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    /// AMX tiles ([`crate::cpu_amx`]; activations as two bf16 terms), `vdpbf16ps` for depths the
    /// tiles do not take.
    Amx,
    /// `vdpbf16ps` (activations rounded to bf16).
    Dot,
    /// The weights decoded to f32 for the f32 kernels.
    Decode,
}

impl Bf16Path {
    /// The name [`BF16_ENV`] takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Path::Amx => "amx",
            Bf16Path::Dot => "vdpbf16ps",
            Bf16Path::Decode => "decode",
        }
    }
}

/// Columns per strip.
const NR: usize = crate::cpu_gemm::STRIP;
/// Activation rows per register block: 12 rows x 2 accumulators + 2 weight registers and a
/// broadcast (27 of the 32 registers). Measured against 8 rows on Zen 4 (`kernel_rates`, 64
/// rows): the same on the wide projections, 340-350 -> 390 GFLOP/s on the two 768-column ones.
const MR: usize = 12;
/// Activation rows per panel on long canvases: the panel's bf16 rows (`K = 768`: 288 KiB) stay
/// in L2 while every strip runs over them.
const PANEL_ROWS: usize = 192;
/// Depth pairs per run of the driver (see [`strips_bf16`]).
const RUN_PAIRS: usize = 192;

/// Where a register block's sums start: the bias (or zero), or what `out` holds.
#[derive(Clone, Copy)]
enum Start {
    Bias(Option<*const f32>),
    Out,
}

/// Whether this CPU can run the `vdpbf16ps` kernels (AVX-512F + AVX512_BF16, and the kernels
/// not forced below AVX-512).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu_gemm::isa() == crate::cpu_gemm::Isa::Avx512
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `vdpbf16ps` is worth it here: measured once per process, a few milliseconds —
/// `vdpbf16ps` chains against 512-bit FMA chains on one thread. The kernels do twice an FMA's
/// work per instruction, so they pay where the dot product issues at more than about half the
/// FMA rate (the threshold 0.75 leaves the room the f32 kernels' better tuning takes).
fn worth_it() -> bool {
    match crate::bench::bf16_dot_to_fma_ratio() {
        Some(r) => r >= 0.75 * 2.0,
        None => false,
    }
}

/// The bf16 products of this process: [`BF16_ENV`]'s, or the fastest this CPU has.
pub fn path() -> Bf16Path {
    static PATH: std::sync::OnceLock<Bf16Path> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| {
        let amx = supported() && crate::cpu_amx::available();
        let auto = || {
            if amx {
                Bf16Path::Amx
            } else if supported() && worth_it() {
                Bf16Path::Dot
            } else {
                Bf16Path::Decode
            }
        };
        match std::env::var(BF16_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") => auto(),
            Ok("amx") => {
                if !amx {
                    eprintln!("note: {BF16_ENV}=amx but this CPU, OS (or the forced kernels) has no AMX tiles: using auto");
                }
                auto()
            }
            Ok("dot") => {
                if supported() {
                    Bf16Path::Dot
                } else {
                    eprintln!("note: {BF16_ENV}=dot but this CPU (or the forced kernels) has no AVX512_BF16: decoding to f32");
                    Bf16Path::Decode
                }
            }
            Ok("decode") => Bf16Path::Decode,
            Ok(other) => {
                eprintln!("note: {BF16_ENV}={other:?} is not one of auto, amx, dot, decode: using auto");
                auto()
            }
        }
    })
}

/// Whether bf16 projection weights run on bf16 products (tiles or `vdpbf16ps`) in this process,
/// in the strip layout those read, rather than being decoded to f32.
pub fn active() -> bool {
    path() != Bf16Path::Decode
}

/// The name reports print for the bf16 products in use.
pub fn path_name() -> &'static str {
    path().name()
}

/// Whether a product of depth `k` splits its activations into two bf16 terms (it runs on AMX
/// tiles) rather than rounding them once: what the references of the tests follow.
pub fn splits_activations(k: usize) -> bool {
    path() == Bf16Path::Amx && crate::cpu_amx::runs(k)
}

/// `v` rounded to bf16 as `vcvtne2ps2bf16` does: to nearest, ties to even; subnormals to a
/// signed zero (the instruction treats them as zero); NaN stays a (quiet) NaN.
pub fn round_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7f80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// `x [m, k]` as bf16 pairs: per row `ceil(k / 2)` lanes, depth `2j` in the low half of lane
/// `j` and `2j + 1` in the high half (zero past `k`).
pub fn pair_rows(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    assert_eq!(x.len(), m * k, "pair_rows: size");
    #[cfg(target_arch = "x86_64")]
    if k.is_multiple_of(32) && supported() {
        // SAFETY: AVX-512F and AVX512_BF16 (`supported`).
        return unsafe { pair_rows_avx512(x) };
    }
    pair_rows_body(x, m, k)
}

fn pair_rows_body(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let mut p = vec![0u32; m * kp];
    for (row, out) in x.chunks_exact(k.max(1)).zip(p.chunks_exact_mut(kp.max(1))) {
        for (o, two) in out.iter_mut().zip(row.chunks(2)) {
            let hi = two.get(1).map_or(0, |&v| round_bf16(v));
            *o = round_bf16(two[0]) as u32 | (hi as u32) << 16;
        }
    }
    p
}

/// [`pair_rows_body`] with `vcvtne2ps2bf16`, 32 values at a time (`k` a multiple of 32, so
/// rows never share a register); bitwise the scalar rounding (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_rows_avx512(x: &[f32]) -> Vec<u32> {
    use std::arch::x86_64::*;
    let mut p = vec![0u32; x.len() / 2];
    for (src, dst) in x.chunks_exact(32).zip(p.chunks_exact_mut(16)) {
        let lo = _mm512_loadu_ps(src.as_ptr());
        let hi = _mm512_loadu_ps(src.as_ptr().add(16));
        // The second operand fills the low half: values 0..16, then 16..32.
        let b: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, b);
    }
    p
}

/// `out[M, N] = x[M, K] @ w (+ bias)` for bf16 strip weights in pair order
/// ([`crate::cpu_quant::strips_to_bf16`]), activations rounded to bf16.
///
/// # Panics
/// If the sizes do not match or [`supported`] is false.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strips_bf16(
    x: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert_eq!(
        w.len(),
        crate::cpu_gemm::packed_len(k, n),
        "matmul_strips_bf16: weight size"
    );
    assert_eq!(out.len(), m * n, "bf16 products: output size");
    // SAFETY: `out` holds m x n values.
    unsafe { strips_bf16(x, w, bias, out.as_mut_ptr(), m, k, n, false) }
}

/// [`matmul_strips_bf16`] into a new vector, which the kernels fill without it being zeroed
/// first (a serial pass over the output and, for large outputs, its page faults on one thread).
pub fn matmul_strips_bf16_new(
    x: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert_eq!(
        w.len(),
        crate::cpu_gemm::packed_len(k, n),
        "matmul_strips_bf16: weight size"
    );
    // SAFETY: the kernels write every one of the m x n values (every row block stores all of
    // its strip's columns on its first depth run).
    unsafe { crate::cpu_gemm::filled_vec(m * n, |o| strips_bf16(x, w, bias, o, m, k, n, false)) }
}

/// `out[M, N] = x[M, K] @ head[N, K]^T` for a bf16 head in
/// [`crate::cpu_quant::rows_to_bf16_strips`]'s layout (the last strip compact), on the same
/// kernels as the projections.
///
/// # Panics
/// As [`matmul_strips_bf16`].
pub fn matmul_head_bf16(x: &[f32], w: &[bf16], out: &mut [f32], m: usize, k: usize, n: usize) {
    assert_eq!(w.len(), n * k, "matmul_head_bf16: weight size");
    assert_eq!(out.len(), m * n, "bf16 products: output size");
    // SAFETY: `out` holds m x n values.
    unsafe { strips_bf16(x, w, None, out.as_mut_ptr(), m, k, n, true) }
}

/// [`matmul_head_bf16`] into a new vector (as [`matmul_strips_bf16_new`]).
pub fn matmul_head_bf16_new(x: &[f32], w: &[bf16], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.len(), n * k, "matmul_head_bf16: weight size");
    // SAFETY: as in `matmul_strips_bf16_new`.
    unsafe { crate::cpu_gemm::filled_vec(m * n, |o| strips_bf16(x, w, None, o, m, k, n, true)) }
}

/// The driver of both: strips of 32 columns in parallel, each over all of `K` per block of
/// `MR` rows; on long canvases panel by panel of rows. `compact_last`: the last strip holds only
/// its `n % 32` columns. Writes every one of the `m x n` values of `out`.
///
/// # Safety
/// `out` must be valid for writes of `m x n` f32.
#[allow(clippy::too_many_arguments)]
unsafe fn strips_bf16(
    x: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: *mut f32,
    m: usize,
    k: usize,
    n: usize,
    compact_last: bool,
) {
    assert!(
        supported(),
        "bf16 products: the CPU cannot run the vdpbf16ps kernels"
    );
    assert_eq!(x.len(), m * k, "bf16 products: input size");
    assert!(
        bias.is_none_or(|b| b.len() == n),
        "bf16 products: bias size"
    );
    if splits_activations(k) {
        // SAFETY: the caller's `out`; `runs(k)` holds.
        unsafe { strips_amx(x, w, bias, out, m, k, n, compact_last) };
        return;
    }
    let kp = k.div_ceil(2);
    let xp = pair_rows(x, m, k);
    let optr = SendPtr(out);
    let strips = n.div_ceil(NR);
    for p0 in (0..m).step_by(PANEL_ROWS) {
        let prows = PANEL_ROWS.min(m - p0);
        // A strip (48-192 KiB for GPT-2) stays in L2 while the panel's row blocks run over it.
        (0..strips).into_par_iter().for_each(|s| {
            let o = optr;
            let n0 = s * NR;
            let cols = NR.min(n - n0);
            let lc = if compact_last { cols } else { NR };
            let wstrip = &w[s * NR * k..][..lc * k];
            // Depth in runs of `RUN_PAIRS` pairs: the run's weights (16 KiB) stay in L1 while
            // every row block of the panel goes over them, the sums waiting in `out`.
            let pairs = k / 2;
            let mut q0 = 0;
            loop {
                let np = RUN_PAIRS.min(pairs - q0);
                let last = q0 + np == pairs;
                let mut r = p0;
                while r < p0 + prows {
                    let rows = MR.min(p0 + prows - r);
                    // SAFETY: `supported()` checked above; the slices hold the asserted sizes,
                    // `out` m x n values (the caller); this task alone writes columns
                    // n0..n0+cols of rows r..r+rows.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        dot::rows(
                            rows,
                            xp.as_ptr().add(r * kp + q0),
                            kp,
                            np,
                            last && k % 2 == 1,
                            (wstrip.as_ptr() as *const u16).add(q0 * lc * 2),
                            lc,
                            if q0 == 0 {
                                Start::Bias(bias.map(|b| b.as_ptr().add(n0)))
                            } else {
                                Start::Out
                            },
                            o.0.add(r * n + n0),
                            n,
                            cols,
                        );
                    }
                    r += rows;
                }
                if last {
                    break;
                }
                q0 += np;
            }
        });
    }
}

/// [`strips_bf16`] on AMX tiles: the strips with 32 columns on [`crate::cpu_amx`], a last one
/// with fewer (a head's compact strip, or padding) on the `vdpbf16ps` kernels, once per
/// activation term, so that every column sees the same operands.
///
/// # Safety
/// As [`strips_bf16`]; [`splits_activations`]`(k)` must hold.
#[allow(clippy::too_many_arguments)]
unsafe fn strips_amx(
    x: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: *mut f32,
    m: usize,
    k: usize,
    n: usize,
    compact_last: bool,
) {
    let mpad = crate::cpu_amx::padded_rows(m);
    let (hi, lo) = crate::cpu_amx::split_rows(x, m, k, mpad);
    let full = n / NR;
    // SAFETY: `runs(k)` (the caller); `hi` / `lo` from `split_rows`; `w` holds at least the
    // full strips (asserted by the entry points); `out` m x n values (the caller).
    unsafe { crate::cpu_amx::matmul_strips(&hi, &lo, mpad, w, bias, out, n, m, k, full) };
    let n0 = full * NR;
    if n0 == n {
        return;
    }
    let cols = n - n0;
    let lc = if compact_last { cols } else { NR };
    let wstrip = w[full * NR * k..][..lc * k].as_ptr() as *const u16;
    let kp = k / 2;
    for r in (0..m).step_by(MR) {
        let rows = MR.min(m - r);
        for (term, start) in [
            (&hi, Start::Bias(bias.map(|b| b[n0..].as_ptr()))),
            (&lo, Start::Out),
        ] {
            // SAFETY: AVX512_BF16 (`supported`, implied by the AMX path); the last strip's
            // `lc * k` weights, rows r..r+rows of a term (`kp` lanes each), columns n0..n of
            // `out`'s rows r..r+rows.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                dot::rows(
                    rows,
                    term.as_ptr().add(r * kp),
                    kp,
                    kp,
                    false,
                    wstrip,
                    lc,
                    start,
                    out.add(r * n + n0),
                    n,
                    cols,
                )
            };
        }
    }
}

/// The product [`matmul_strips_bf16`] computes, in scalar f64 on the same rounded operands
/// (the bf16 weights, the activations as [`activation_value`] gives them: rounded by
/// [`round_bf16`], or split in two terms on tiles): the reference of the tests, on any CPU. The kernels differ from it only by their f32 summation.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strips_bf16_reference(
    x: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: &mut [f64],
    m: usize,
    k: usize,
    n: usize,
) {
    strips_reference_with(x, w, bias, out, m, k, n, |v| activation_value(v, k));
}

/// The f64 product of bf16 strips (pair order) and the activations as `value` maps them: the
/// body of this module's and [`crate::cpu_amx`]'s references.
#[allow(clippy::too_many_arguments)]
pub(crate) fn strips_reference_with(
    x: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: &mut [f64],
    m: usize,
    k: usize,
    n: usize,
    value: impl Fn(f32) -> f64,
) {
    let xr: Vec<f64> = x.iter().map(|&v| value(v)).collect();
    for r in 0..m {
        for c in 0..n {
            let (s, cc) = (c / NR, c % NR);
            let strip = &w[s * NR * k..][..NR * k];
            let dot: f64 = (0..k)
                .map(|i| xr[r * k + i] * strip[bf16_pair_index(i, cc, NR, k)].to_f64())
                .sum();
            out[r * n + c] = bias.map_or(0.0, |b| b[c] as f64) + dot;
        }
    }
}

/// The value an activation `v` takes in this process's bf16 products of depth `k`: rounded to
/// bf16, or the sum of its two bf16 terms where the product runs on tiles
/// ([`splits_activations`]).
pub fn activation_value(v: f32, k: usize) -> f64 {
    if splits_activations(k) {
        let (h, l) = bf16_terms(v);
        bf16_value(h) + bf16_value(l)
    } else {
        bf16_value(round_bf16(v))
    }
}

/// `v` as two bf16 terms, `hi = bf16(v)` and `lo = bf16(v - hi)` ([`round_bf16`] both): the
/// activations of the AMX products ([`crate::cpu_amx::split_rows`]).
pub fn bf16_terms(v: f32) -> (u16, u16) {
    let h = round_bf16(v);
    (h, round_bf16(v - f32::from_bits((h as u32) << 16)))
}

/// The value of bf16 bits `b`.
pub fn bf16_value(b: u16) -> f64 {
    f32::from_bits((b as u32) << 16) as f64
}

#[cfg(target_arch = "x86_64")]
mod dot {
    use super::{Start, MR, NR};
    use std::arch::x86_64::*;

    /// `rows` (1..=`MR`) rows against one strip: the one place a run-time row count becomes
    /// the register block's compile-time one.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn rows(
        rows: usize,
        xp: *const u32,
        kp: usize,
        np: usize,
        tail: bool,
        w: *const u16,
        lc: usize,
        start: Start,
        out: *mut f32,
        ldo: usize,
        cols: usize,
    ) {
        debug_assert!((1..=MR).contains(&rows) && cols <= lc && lc <= NR);
        let (m0, m1) = crate::cpu_gemm::strip_masks(cols);
        macro_rules! go {
            ($R:literal) => {
                block::<$R>(xp, kp, np, tail, w, lc, start, out, ldo, m0, m1)
            };
        }
        match rows {
            12 => go!(12),
            11 => go!(11),
            10 => go!(10),
            9 => go!(9),
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

    /// `R` rows x 32 columns over `np` pairs of depth rows (and the odd last row when `tail`):
    /// per pair, two weight registers (32
    /// columns' pairs) and, per row, one broadcast lane into two `vdpbf16ps`s; an odd last
    /// depth row is widened to pairs with a zero high half (the activations' is zero too). The
    /// weight loads are masked to the columns that exist (`lc` may be fewer than 32 in a
    /// compact last strip), so nothing past the strip is read.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn block<const R: usize>(
        xp: *const u32,
        kp: usize,
        np: usize,
        tail: bool,
        w: *const u16,
        lc: usize,
        start: Start,
        out: *mut f32,
        ldo: usize,
        m0: __mmask16,
        m1: __mmask16,
    ) {
        let mut a0 = [_mm512_setzero_ps(); R];
        let mut a1 = [_mm512_setzero_ps(); R];
        match start {
            Start::Bias(Some(b)) => {
                a0 = [_mm512_maskz_loadu_ps(m0, b); R];
                a1 = [_mm512_maskz_loadu_ps(m1, b.add(16)); R];
            }
            Start::Bias(None) => {}
            Start::Out => {
                for i in 0..R {
                    a0[i] = _mm512_maskz_loadu_ps(m0, out.add(i * ldo));
                    a1[i] = _mm512_maskz_loadu_ps(m1, out.add(i * ldo + 16));
                }
            }
        }
        let pairs = np;
        for p in 0..pairs {
            let wp = w.add(p * lc * 2) as *const i32;
            let w0: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(m0, wp));
            let w1: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(m1, wp.add(16)));
            for i in 0..R {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*xp.add(i * kp + p) as i32));
                a0[i] = _mm512_dpbf16_ps(a0[i], w0, xv);
                a1[i] = _mm512_dpbf16_ps(a1[i], w1, xv);
            }
        }
        if tail {
            // The plain last row: `lc` bf16 values, zero-extended into the low halves.
            let wt = w.add(pairs * lc * 2);
            let mut lanes = [0u32; NR];
            for (c, l) in lanes.iter_mut().enumerate().take(lc) {
                *l = *wt.add(c) as u32;
            }
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(lanes.as_ptr() as *const _));
            let w1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(lanes.as_ptr().add(16) as *const _));
            for i in 0..R {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*xp.add(i * kp + pairs) as i32));
                a0[i] = _mm512_dpbf16_ps(a0[i], w0, xv);
                a1[i] = _mm512_dpbf16_ps(a1[i], w1, xv);
            }
        }
        for i in 0..R {
            let o = out.add(i * ldo);
            _mm512_mask_storeu_ps(o, m0, a0[i]);
            _mm512_mask_storeu_ps(o.add(16), m1, a1[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).signed_vec(len)
    }

    /// Rounding: to nearest with ties to even, subnormals to signed zero, NaN quiet, overflow to
    /// infinity — and the same as `half`'s rounding on ordinary values.
    #[test]
    fn rounding_is_nearest_even() {
        let b = |v: f32| f32::from_bits((round_bf16(v) as u32) << 16);
        assert_eq!(b(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(b(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (the latter).
        assert_eq!(b(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round_bf16(-1e-40), 0x8000);
        assert_eq!(round_bf16(1e-40), 0);
        assert!(b(f32::NAN).is_nan());
        assert_eq!(b(f32::MAX), f32::INFINITY);
        for v in rand_vec(1000, 3) {
            assert_eq!(round_bf16(v), bf16::from_f32(v).to_bits(), "{v}");
        }
    }

    /// The AVX-512 conversion is bitwise the scalar one (ties, signs, zeros, subnormals).
    #[test]
    fn vector_pairs_equal_scalar() {
        if !supported() {
            eprintln!("SKIPPED: this CPU (or the forced kernels) has no AVX512_BF16");
            return;
        }
        let (m, k) = (3, 96);
        let mut x = rand_vec(m * k, 5);
        x[0] = 1.0 + 1.0 / 256.0;
        x[1] = -(1.0 + 3.0 / 256.0);
        x[2] = 1e-40;
        x[3] = -0.0;
        x[40] = 3e38;
        assert_eq!(pair_rows(&x, m, k), pair_rows_body(&x, m, k));
    }

    /// Odd depths: the last lane of a row holds the last value and a zero.
    #[test]
    fn odd_rows_pad_with_zero() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let p = pair_rows(&x, 2, 3);
        assert_eq!(p.len(), 4);
        assert_eq!(p[1] >> 16, 0);
        assert_eq!(p[1] & 0xffff, bf16::from_f32(3.0).to_bits() as u32);
        assert_eq!(p[2] & 0xffff, bf16::from_f32(4.0).to_bits() as u32);
    }

    fn check(got: &[f32], want: &[f64], abs_sum: &[f64], k: usize, what: &str) {
        // f32 summation of k exact products: |error| <= k * 2^-24 * sum |products| (a bound,
        // not an estimate), plus one rounding of the bias.
        // On tiles, `2k` products (two activation terms).
        let terms = if splits_activations(k) { 2.0 } else { 1.0 };
        for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs_sum).enumerate() {
            let tol = (terms * k as f64 + 2.0) * 6e-8 * a + 1e-30;
            assert!(
                (g as f64 - w).abs() <= tol,
                "{what} [{i}]: {g} vs {w} (tol {tol:e})"
            );
        }
    }

    /// The kernels against the f64 reference on the same rounded operands: every row count of
    /// the register block, ragged strips, odd depths, with and without bias, a long canvas
    /// (more than one panel).
    #[test]
    fn kernels_equal_the_reference() {
        if !supported() {
            eprintln!("SKIPPED: this CPU (or the forced kernels) has no AVX512_BF16");
            return;
        }
        let mut seed = 10;
        for &(m, k, n) in &[
            (1, 32, 32),
            (7, 77, 45),
            (13, 300, 200),
            (64, 768, 96),
            (200, 64, 33),
        ] {
            for with_bias in [false, true] {
                seed += 1;
                let x = rand_vec(m * k, seed);
                let w = rand_vec(k * n, seed + 100);
                let bias = rand_vec(n, seed + 200);
                let bias = with_bias.then_some(&bias[..]);
                let q = crate::cpu_quant::strips_to_bf16(&crate::cpu_gemm::pack_nn(&w, k, n), k, n);
                let mut want = vec![0f64; m * n];
                matmul_strips_bf16_reference(&x, &q, bias, &mut want, m, k, n);
                let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
                let qa: Vec<bf16> = q.iter().map(|v| bf16::from_f32(v.to_f32().abs())).collect();
                let mut abs_sum = vec![0f64; m * n];
                matmul_strips_bf16_reference(&abs, &qa, bias, &mut abs_sum, m, k, n);
                let mut got = vec![f32::NAN; m * n];
                matmul_strips_bf16(&x, &q, bias, &mut got, m, k, n);
                check(
                    &got,
                    &want,
                    &abs_sum,
                    k,
                    &format!("{m}x{k}x{n} bias {with_bias}"),
                );
            }
        }
    }

    /// The head on the strip kernels (compact last strips: 45 = 32 + 13, 50 = 32 + 18 rows)
    /// against the f64 product of the decoded rows and the rounded activations.
    #[test]
    fn head_equals_decoded_rows() {
        if !supported() {
            eprintln!("SKIPPED: this CPU (or the forced kernels) has no AVX512_BF16");
            return;
        }
        for &(m, k, n) in &[(1, 64, 45), (9, 97, 50), (70, 128, 300)] {
            let x = rand_vec(m * k, 30 + n as u64);
            let w = rand_vec(n * k, 40 + n as u64);
            let q = crate::cpu_quant::rows_to_bf16_strips(&w, k, n);
            let mut wd = vec![0f32; n * k];
            crate::cpu_quant::Rows::Bf16Strips(&q).decode(k, 0, n, &mut wd);
            let mut got = vec![f32::NAN; m * n];
            matmul_head_bf16(&x, &q, &mut got, m, k, n);
            let xr = |i: usize| activation_value(x[i], k);
            let mut want = vec![0f64; m * n];
            let mut abs_sum = vec![0f64; m * n];
            for r in 0..m {
                for c in 0..n {
                    for i in 0..k {
                        let p = xr(r * k + i) * wd[c * k + i] as f64;
                        want[r * n + c] += p;
                        abs_sum[r * n + c] += p.abs();
                    }
                }
            }
            check(&got, &want, &abs_sum, k, &format!("head {m}x{k}x{n}"));
        }
    }

    /// The reference against plain f32 on the unrounded operands: within bf16's rounding of
    /// both (2^-9 relative each) summed over `K`.
    #[test]
    fn reference_is_close_to_f32() {
        let (m, k, n) = (5, 77, 45);
        let x = rand_vec(m * k, 2);
        let w = rand_vec(k * n, 3);
        let q = crate::cpu_quant::strips_to_bf16(&crate::cpu_gemm::pack_nn(&w, k, n), k, n);
        let mut got = vec![0f64; m * n];
        matmul_strips_bf16_reference(&x, &q, None, &mut got, m, k, n);
        for r in 0..m {
            for c in 0..n {
                let want: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[i * n + c] as f64)
                    .sum();
                let tol = k as f64 * (2.0 / 512.0 + 1e-5);
                assert!((got[r * n + c] - want).abs() <= tol, "r{r} c{c}");
            }
        }
    }
}
