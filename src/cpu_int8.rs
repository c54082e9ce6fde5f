//! int8 x int8 products for the int8 projections and head, on integer dot products:
//! * `vnni` — CPUs with AVX-512 VNNI (`vpdpbusd`: 64 byte products summed into 16 int32 lanes per
//!   instruction, measured at 4x the f32 FMA rate on an Intel Xeon with AVX512_VNNI —
//!   benches/README.md);
//! * `avx2` — every AVX2 CPU (`vpmaddubsw` + `vpmaddwd`: 32 byte products into 8 int32 lanes per
//!   pair, measured at 1.3-1.4x the f32 FMA rate in products on AMD Zen 3: the byte
//!   multiply-adds issue no faster than FMAs there, and each 32 products take four
//!   instructions). `vpmaddubsw` multiplies an unsigned byte by a signed one and saturates the
//!   sum of two products to int16: with the weights' unsigned (biased) form, 255 x 127 x 2
//!   would saturate, so the unsigned operand is |x| and the signed one the weight with x's sign
//!   (`vpsignb`, llama.cpp's trick): 127 x 127 x 2 fits, and the block sums are the exact
//!   integers the VNNI kernels compute.
//!
//! The decode path of [`crate::cpu_quant`] keeps the arithmetic f32 (the weights are decoded,
//! the activations are not rounded); here the activations are quantised too, per row and per
//! block of 32 along `K` (llama.cpp's `Q8_0 x Q8_0`): each 32-deep block is an exact integer
//! dot product, scaled by the activation block's scale times the weight column's block scale
//! and summed in f32. The weight strips are stored in the order `vpdpbusd` reads them (see
//! [`crate::cpu_quant`]: four depth rows per column contiguous, biased by 128 to be unsigned);
//! the VNNI kernels remove the bias exactly by starting each block's integer sum at
//! `-128 * sum(x_q)`, the AVX2 kernels by flipping the bias bit of each weight register. Both
//! kernels give the same integers and the same f32 additions: bitwise
//! [`matmul_strips_q8_reference`] up to FMA rounding (tested).
//!
//! [`kernel`] is the switch: VNNI where the CPU has it, else AVX2, unless [`INT8_ENV`] asks for
//! one (or for `decode`) or the kernels are forced down (`DIFFUGPT_CPU_KERNELS=avx2` leaves AVX2,
//! `generic` neither).

use rayon::prelude::*;

use crate::cpu_gemm::SendPtr;
use crate::cpu_quant::{Q8_ROW_BLOCK, Q8_STRIP_BLOCK, QK};

/// The environment variable that picks the int8 products: `auto` (default: the fastest integer
/// kernels the CPU has, see [`kernel`]), `vnni` or `avx2` (those kernels; where the CPU or the
/// forced kernels lack them, a note and `auto`'s choice), `amx` (VNNI with its full strips on
/// AMX-INT8 tiles, see [`tiles`]), `decode` (decode the weights to f32 and
/// run the f32 kernels, activations not rounded). Read once per process.
pub const INT8_ENV: &str = "DIFFUGPT_CPU_INT8";

/// Columns per strip.
const NR: usize = crate::cpu_gemm::STRIP;
/// Activation rows per register block: 4 rows x (2 int32 + 2 f32 accumulators) + 2 weight
/// registers, 2 scale registers and a broadcast fit AVX-512's 32 registers; in the AVX2 kernel,
/// 4 rows x 2 int32 accumulators, 2 weight registers, two broadcasts, the ones and a product
/// fill its 16 (the f32 sums wait in `out`).
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

/// The integer kernels the int8 products can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 VNNI `vpdpbusd`.
    Vnni,
    /// AVX2 `vpmaddubsw` / `vpmaddwd` (with `vpsignb`).
    Avx2,
}

impl Int8Kernel {
    /// The name [`INT8_ENV`] takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Vnni => "vnni",
            Int8Kernel::Avx2 => "avx2",
        }
    }

    /// Whether this CPU can run these kernels with the CPU kernels' instruction set in this
    /// process ([`crate::cpu_gemm::isa`]: forcing `avx2` leaves the AVX2 kernels only).
    pub fn supported(self) -> bool {
        use crate::cpu_gemm::{isa, Isa};
        match self {
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni => isa() == Isa::Avx512 && std::is_x86_feature_detected!("avx512vnni"),
            // `isa()` never exceeds what the CPU has: Avx2 or above means AVX2 and FMA.
            Int8Kernel::Avx2 => cfg!(target_arch = "x86_64") && isa() >= Isa::Avx2,
            #[cfg(not(target_arch = "x86_64"))]
            Int8Kernel::Vnni => false,
        }
    }

    /// Every kernel this CPU can run in this process (for the tests), fastest first.
    pub fn all_supported() -> Vec<Int8Kernel> {
        [Int8Kernel::Vnni, Int8Kernel::Avx2]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }
}

/// The integer kernels the int8 projections and head run on in this process, `None` where they
/// are decoded to f32 instead: by default the fastest the CPU has (VNNI, else AVX2: on Zen 3
/// the AVX2 kernels make the int8 forward 1.3-1.4x the f32 one, benches/README.md); see
/// [`INT8_ENV`].
pub fn kernel() -> Option<Int8Kernel> {
    static KERNEL: std::sync::OnceLock<Option<Int8Kernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        let auto = || Int8Kernel::all_supported().first().copied();
        let forced = |k: Int8Kernel| {
            if k.supported() {
                Some(k)
            } else {
                let a = auto();
                eprintln!(
                    "note: {INT8_ENV}={} but this CPU (or the forced kernels) cannot run it: using {}",
                    k.name(),
                    a.map_or("decode", Int8Kernel::name)
                );
                a
            }
        };
        match std::env::var(INT8_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") => auto(),
            Ok("vnni") | Ok("amx") => forced(Int8Kernel::Vnni),
            Ok("avx2") => forced(Int8Kernel::Avx2),
            Ok("decode") => None,
            Ok(other) => {
                eprintln!(
                    "note: {INT8_ENV}={other:?} is not one of auto, amx, vnni, avx2, decode: using auto"
                );
                auto()
            }
        }
    })
}

/// Whether int8 projection weights run on integer kernels in this process ([`kernel`]).
pub fn active() -> bool {
    kernel().is_some()
}

/// Whether the VNNI products run their full strips on AMX-INT8 tiles
/// ([`crate::cpu_amx::matmul_q8_strips`], bitwise the VNNI kernel's results): only where
/// [`INT8_ENV`]`=amx` asks for them. Not by default: with a scale per 32 depths, every
/// `tdpbsud` (16 x 16 x 32) needs its integer tile stored and folded into the f32 sums by
/// AVX-512 (about 450 instructions per 32 x 32 x 32 block), and on the Xeon measured the int8
/// forward ran 0.93-1.01x the VNNI kernels' time (`benches/ab.sh`, 5 alternating rounds):
/// within the noise.
pub fn tiles() -> bool {
    static TILES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TILES.get_or_init(|| {
        let can = kernel() == Some(Int8Kernel::Vnni) && crate::cpu_amx::int8_available();
        match std::env::var(INT8_ENV).as_deref() {
            Ok("amx") if can => true,
            Ok("amx") => {
                eprintln!(
                    "note: {INT8_ENV}=amx but this CPU or OS has no AMX-INT8 tiles: using {}",
                    kernel().map_or("decode", Int8Kernel::name)
                );
                false
            }
            _ => false,
        }
    })
}

/// The name reports print for the int8 products in use.
pub fn path_name() -> &'static str {
    if tiles() {
        "amx"
    } else {
        kernel().map_or("decode", Int8Kernel::name)
    }
}

/// Activations quantised per row and per block of 32 along `K`: `q` (`m x kq` bytes, `kq` =
/// `K` rounded up to 32, zero-padded), one scale per block (`d`, max |x| / 127) and the sum
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
    match crate::cpu_gemm::isa() {
        // SAFETY: the CPU has AVX-512F (isa() never exceeds what it detects).
        crate::cpu_gemm::Isa::Avx512 => return unsafe { quantize_rows_avx512(x, m, k) },
        // SAFETY: the CPU has AVX2 and FMA (likewise).
        crate::cpu_gemm::Isa::Avx2 => return unsafe { quantize_rows_avx2(x, m, k) },
        crate::cpu_gemm::Isa::Generic => {}
    }
    quantize_rows_body(x, m, k)
}

/// [`quantize_rows_body`] in AVX2 registers, a block (four registers) at a time: as
/// [`quantize_rows_avx512`], bitwise the scalar body (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_rows_avx2(x: &[f32], m: usize, k: usize) -> QuantRows {
    use std::arch::x86_64::*;
    if !k.is_multiple_of(QK) {
        return quantize_rows_body(x, m, k);
    }
    let blocks = k / QK;
    let mut q = vec![0i8; m * k];
    let mut d = vec![0f32; m * blocks];
    let mut sum = vec![0i32; m * blocks];
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    // packs_epi32 then packs_epi16 interleave the four registers' 128-bit halves; this puts
    // the 32 bytes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (i, (xb, qb)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
        let v: [__m256; 4] = std::array::from_fn(|j| _mm256_loadu_ps(xb.as_ptr().add(8 * j)));
        let a = _mm256_max_ps(
            _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
            _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)),
        );
        let h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
        let scale = amax / 127.0;
        let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let r: [__m256i; 4] = std::array::from_fn(|j| {
            _mm256_cvtps_epi32(_mm256_min_ps(
                _mm256_max_ps(_mm256_mul_ps(v[j], inv), lo),
                hi,
            ))
        });
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(r[0], r[1]),
            _mm256_packs_epi32(r[2], r[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, bytes);
        let s = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        d[i] = scale;
        sum[i] = _mm_cvtsi128_si32(s);
    }
    QuantRows {
        q,
        d,
        sum,
        kq: k,
        blocks,
    }
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
/// If the sizes do not match or no integer kernels run in this process ([`kernel`]).
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
    let kern = process_kernel();
    // SAFETY: `out` holds m x n values.
    unsafe { strips_q8(kern, x, w, bias, out.as_mut_ptr(), m, k, n, false) }
}

/// [`matmul_strips_q8`] into a new vector, which the kernels fill without it being zeroed first
/// (`cpu_gemm::filled_vec`).
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
    let kern = process_kernel();
    // SAFETY: the kernels write every one of the m x n values (every row block stores all of
    // its strip's columns on its first run of depth blocks).
    unsafe {
        crate::cpu_gemm::filled_vec(m * n, |o| strips_q8(kern, x, w, bias, o, m, k, n, false))
    }
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
    let kern = process_kernel();
    // SAFETY: `out` holds m x n values.
    unsafe { strips_q8(kern, x, w, None, out.as_mut_ptr(), m, k, n, true) }
}

/// [`matmul_head_q8`] into a new vector (as [`matmul_strips_q8_new`]).
pub fn matmul_head_q8_new(x: &[f32], w: &[u8], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        n * k.div_ceil(QK) * Q8_ROW_BLOCK,
        "matmul_head_q8: weight size"
    );
    let kern = process_kernel();
    // SAFETY: as in `matmul_strips_q8_new`.
    unsafe { crate::cpu_gemm::filled_vec(m * n, |o| strips_q8(kern, x, w, None, o, m, k, n, true)) }
}

/// The kernels of this process, for the public products.
fn process_kernel() -> Int8Kernel {
    kernel().expect("int8 products: no integer kernels run in this process (cpu_int8::kernel)")
}

/// [`strips_q8_with`], full strips on tiles where [`tiles`] says so.
///
/// # Safety
/// As [`strips_q8_with`].
#[allow(clippy::too_many_arguments)]
unsafe fn strips_q8(
    kern: Int8Kernel,
    x: &[f32],
    w: &[u8],
    bias: Option<&[f32]>,
    out: *mut f32,
    m: usize,
    k: usize,
    n: usize,
    compact_last: bool,
) {
    // SAFETY: the caller's.
    unsafe { strips_q8_with(tiles(), kern, x, w, bias, out, m, k, n, compact_last) }
}

/// The driver of both, on `kern` (`use_tiles`: full strips on AMX tiles, where they run): strips of 32 columns in parallel; `compact_last`: the last strip holds
/// only its `n % 32` columns (36 bytes per column and block) instead of a padded 32. Writes
/// every one of the `m x n` values of `out`.
///
/// # Safety
/// `out` must be valid for writes of `m x n` f32.
#[allow(clippy::too_many_arguments)]
unsafe fn strips_q8_with(
    use_tiles: bool,
    kern: Int8Kernel,
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
        kern.supported(),
        "int8 products: the CPU cannot run the {} kernels",
        kern.name()
    );
    assert_eq!(x.len(), m * k, "int8 products: input size");
    assert!(
        bias.is_none_or(|b| b.len() == n),
        "int8 products: bias size"
    );
    let blocks = k.div_ceil(QK);
    let strips = n.div_ceil(NR);
    let xq = quantize_rows(x, m, k);
    // The AVX2 kernels multiply |x| (unsigned) by the weight carrying x's sign.
    let xabs: Vec<u8> = match kern {
        Int8Kernel::Avx2 => xq.q.iter().map(|v| v.unsigned_abs()).collect(),
        Int8Kernel::Vnni => Vec::new(),
    };
    let optr = SendPtr(out);
    // On tiles, the strips with 32 columns; the VNNI kernels below take a narrower last one.
    let first = if use_tiles
        && kern == Int8Kernel::Vnni
        && crate::cpu_amx::int8_available()
        && k == blocks * QK
    {
        let full = n / NR;
        // SAFETY: `int8_available()` checked; the entry points checked the weight
        // and bias sizes; `out` holds m x n values (the caller).
        unsafe { crate::cpu_amx::matmul_q8_strips(&xq, w, bias, out, n, m, full) };
        full
    } else {
        0
    };
    if first == strips {
        return;
    }
    // Many rows: groups of rows whose quantised bytes (`k`, and `|x|` on AVX2) take half of L2,
    // each group against every strip, so that the rows come from L2 for all strips instead of
    // from L3 for each (at 1024 rows, 1.5-6 MiB of them per strip). Rayon hands each thread
    // contiguous runs of (group, strip) tasks, so each core keeps its own group in its L2.
    let row_bytes = k * if kern == Int8Kernel::Avx2 { 2 } else { 1 };
    let group = if m <= KB_MAX_ROWS {
        m.max(1)
    } else {
        let l2 = crate::cpu_caches::Caches::detected().l2;
        (l2 / 2 / row_bytes.max(1) / MR * MR).clamp(MR, m)
    };
    let groups = m.div_ceil(group).max(1);
    let count = strips - first;
    (0..groups * count).into_par_iter().for_each(|task| {
        let (g, s) = (task / count, first + task % count);
        let (r_lo, r_hi) = (g * group, ((g + 1) * group).min(m));
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
        // The next strip's bytes (this thread's likely next task: rayon hands out contiguous
        // runs), asked for into L2 a few lines between register blocks, so that its DRAM
        // reads overlap this strip's arithmetic instead of taking turns with it.
        let (next, next_bytes) = if s + 1 < strips {
            let lc_next = if compact_last {
                NR.min(n - (s + 1) * NR)
            } else {
                NR
            };
            (
                w[(s + 1) * blocks * Q8_STRIP_BLOCK..].as_ptr(),
                blocks * lc_next * Q8_ROW_BLOCK,
            )
        } else {
            (std::ptr::null(), 0)
        };
        let calls = blocks.div_ceil(kb) * (r_hi - r_lo).div_ceil(MR);
        let mut pf = crate::cpu_gemm::PrefetchStream::new(next, next_bytes, calls);
        let mut b0 = 0;
        // At least one run, so that even K = 0 writes every output (the bias or zero).
        loop {
            let nb = kb.min(blocks - b0);
            let mut r = r_lo;
            while r < r_hi {
                let rows = MR.min(r_hi - r);
                let start = if b0 == 0 {
                    Start::Bias(bias.map(|b| b.as_ptr().add(n0)))
                } else {
                    Start::Out
                };
                // Where this register block's run starts in each operand (in bounds: r < m,
                // b0 <= blocks, n0 < n).
                let wrun = wstrip.as_ptr().add(b0 * lc * Q8_ROW_BLOCK);
                let xrun = r * xq.kq + b0 * QK;
                let xd = xq.d.as_ptr().add(r * blocks + b0);
                let xsum = xq.sum.as_ptr().add(r * blocks + b0);
                let orun = o.0.add(r * n + n0);
                pf.ask();
                // SAFETY: `kern.supported()` checked above; the slices hold the asserted sizes;
                // this task alone writes columns n0..n0+cols of rows r..r+rows.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    match kern {
                        Int8Kernel::Vnni => vnni::rows(
                            rows,
                            xq.q.as_ptr().add(xrun),
                            xq.kq,
                            xd,
                            xsum,
                            blocks,
                            nb,
                            wrun,
                            start,
                            orun,
                            n,
                            cols,
                            lc,
                        ),
                        Int8Kernel::Avx2 => maddubs::rows(
                            rows,
                            xq.q.as_ptr().add(xrun),
                            xabs.as_ptr().add(xrun),
                            xq.kq,
                            xd,
                            blocks,
                            nb,
                            wrun,
                            start,
                            orun,
                            n,
                            cols,
                            lc,
                        ),
                    }
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

/// The AVX2 kernels: `vpsignb` + `vpmaddubsw` + `vpmaddwd` + `vpaddd` per 32 byte products.
/// Sixteen columns (two registers of 8 int32 lanes) at a time, so that 4 rows' int32 sums fit
/// the 16 registers (a single row takes all 32); the f32 sums go through `out` after each block
/// of 32 (4 rows x 16 columns, in L1), which costs a load and a store per 256 products.
#[cfg(target_arch = "x86_64")]
mod maddubs {
    use super::{Start, MR, NR, Q8_ROW_BLOCK};
    use std::arch::x86_64::*;

    /// `rows` (1..=`MR`) rows against one strip: the one place a run-time row count becomes
    /// the register block's compile-time one (two to four rows: 16 columns at a time; one row:
    /// all 32), and a strip's last columns (a ragged or compact last strip) masked loads and
    /// stores.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows(
        rows: usize,
        xq: *const i8,
        xabs: *const u8,
        kq: usize,
        xd: *const f32,
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
        // One row (ARM steps, memory-bound): the whole strip at once, so that its bytes stream
        // in order in one pass rather than as two passes over alternate cache lines (ARM int8
        // tokens/s ~4 % higher on Zen 3, seven alternating rounds; benches/README.md).
        if rows == 1 {
            if cols == NR {
                block::<1, 4, false>(
                    xq, xabs, kq, xd, bstride, nb, w, start, out, ldo, 0, cols, lc,
                );
            } else {
                block::<1, 4, true>(
                    xq, xabs, kq, xd, bstride, nb, w, start, out, ldo, 0, cols, lc,
                );
            }
            return;
        }
        let mut c0 = 0;
        while c0 < cols {
            macro_rules! go {
                ($R:literal, $M:literal) => {
                    block::<$R, 2, $M>(
                        xq, xabs, kq, xd, bstride, nb, w, start, out, ldo, c0, cols, lc,
                    )
                };
            }
            if c0 + 16 <= cols {
                match rows {
                    4 => go!(4, false),
                    3 => go!(3, false),
                    2 => go!(2, false),
                    _ => go!(1, false),
                }
            } else {
                match rows {
                    4 => go!(4, true),
                    3 => go!(3, true),
                    2 => go!(2, true),
                    _ => go!(1, true),
                }
            }
            c0 += 16;
        }
    }

    /// Lanes `0..valid` all ones (the rest zero), for `vpmaskmov`.
    #[inline(always)]
    unsafe fn lane_mask(valid: usize) -> __m256i {
        let v = valid.min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(v),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// `R` rows x columns `c0..c0 + 8 C` of the strip over `nb` blocks: per block, 8 groups of
    /// four depth rows; each group is `C` weight registers (8 columns x 4 bytes each, the bias
    /// bit flipped back to signed) and, per row, broadcasts of the row's four activation bytes
    /// and of their absolute values. `MASKED`: columns at or past `cols` exist only in part
    /// (the strip's last ones), so their loads and stores are masked to what exists.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const R: usize, const C: usize, const MASKED: bool>(
        xq: *const i8,
        xabs: *const u8,
        kq: usize,
        xd: *const f32,
        bstride: usize,
        nb: usize,
        w: *const u8,
        start: Start,
        out: *mut f32,
        ldo: usize,
        c0: usize,
        cols: usize,
        lc: usize,
    ) {
        let m: [__m256i; C] = std::array::from_fn(|j| lane_mask(cols.saturating_sub(c0 + 8 * j)));
        let load_ps = |p: *const f32, m: __m256i| {
            if MASKED {
                _mm256_maskload_ps(p, m)
            } else {
                _mm256_loadu_ps(p)
            }
        };
        let store_ps = |p: *mut f32, m: __m256i, v: __m256| {
            if MASKED {
                _mm256_maskstore_ps(p, m, v)
            } else {
                _mm256_storeu_ps(p, v)
            }
        };
        let load_w = |p: *const u8, m: __m256i| {
            if MASKED {
                _mm256_maskload_epi32(p as *const i32, m)
            } else {
                _mm256_loadu_si256(p as *const __m256i)
            }
        };
        // Where block 0's f32 sums start (later blocks: what the previous one stored).
        let first = |i: usize, j: usize| match start {
            Start::Bias(Some(b)) => load_ps(b.add(c0 + 8 * j), m[j]),
            Start::Bias(None) => _mm256_setzero_ps(),
            Start::Out => load_ps(out.add(i * ldo + c0 + 8 * j), m[j]),
        };
        if nb == 0 {
            for i in 0..R {
                for (j, &mj) in m.iter().enumerate() {
                    store_ps(out.add(i * ldo + c0 + 8 * j), mj, first(i, j));
                }
            }
            return;
        }
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        for b in 0..nb {
            let blk = w.add(b * lc * Q8_ROW_BLOCK);
            let vals = blk.add(lc * 4 + c0 * 4);
            let mut acc = [[_mm256_setzero_si256(); C]; R];
            for g in 0..8 {
                let gp = vals.add(g * lc * 4);
                let wv: [__m256i; C] =
                    std::array::from_fn(|j| _mm256_xor_si256(load_w(gp.add(32 * j), m[j]), flip));
                for (i, a) in acc.iter_mut().enumerate() {
                    let off = i * kq + b * 32 + g * 4;
                    let xs = _mm256_set1_epi32((xq.add(off) as *const i32).read_unaligned());
                    let xa = _mm256_set1_epi32((xabs.add(off) as *const i32).read_unaligned());
                    for (aj, &wj) in a.iter_mut().zip(&wv) {
                        let p = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wj, xs));
                        *aj = _mm256_add_epi32(*aj, _mm256_madd_epi16(p, ones));
                    }
                }
            }
            let sc = blk as *const f32;
            let s: [__m256; C] = std::array::from_fn(|j| load_ps(sc.add(c0 + 8 * j), m[j]));
            for (i, a) in acc.iter().enumerate() {
                let d = _mm256_set1_ps(*xd.add(i * bstride + b));
                for (j, ((&aj, &sj), &mj)) in a.iter().zip(&s).zip(&m).enumerate() {
                    let o = out.add(i * ldo + c0 + 8 * j);
                    let f = if b == 0 { first(i, j) } else { load_ps(o, mj) };
                    let f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(aj), _mm256_mul_ps(sj, d), f);
                    store_ps(o, mj, f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).signed_vec(len)
    }

    /// Every integer kernel this process can run, or a note that there is none.
    fn kernels() -> Vec<Int8Kernel> {
        let all = Int8Kernel::all_supported();
        if all.is_empty() {
            eprintln!("SKIPPED: this CPU (or the forced kernels) has no integer kernels");
        }
        all
    }

    /// The head on the strip kernels (compact last strip: 45 = 32 + 13 and 50 = 32 + 18 rows,
    /// 300 = 9 x 32 + 12) against the plain product on the decoded rows with the activations
    /// rounded the same way: the exact integer sums make the two equal up to f32 summation
    /// order. Every kernel the CPU can run.
    #[test]
    fn head_kernels_equal_decoded_rows() {
        for kern in kernels() {
            for &(m, k, n) in &[(1, 64, 45), (9, 96, 50), (70, 128, 300), (5, 64, 8)] {
                let x = rand_vec(m * k, 30 + n as u64);
                let w = rand_vec(n * k, 40 + n as u64);
                let q = crate::cpu_quant::rows_to_int8_strips(&w, k, n);
                let mut wd = vec![0f32; n * k];
                crate::cpu_quant::Rows::Int8Strips(&q).decode(k, 0, n, &mut wd);
                let xq = quantize_rows(&x, m, k);
                let mut got = vec![f32::NAN; m * n];
                // SAFETY: `got` holds m x n values; `kern` is supported.
                unsafe { strips_q8(kern, &x, &q, None, got.as_mut_ptr(), m, k, n, true) };
                for r in 0..m {
                    for c in 0..n {
                        let want: f64 = (0..k)
                            .map(|i| {
                                let xv = xq.q[r * xq.kq + i] as f64
                                    * xq.d[r * xq.blocks + i / QK] as f64;
                                xv * wd[c * k + i] as f64
                            })
                            .sum();
                        let g = got[r * n + c] as f64;
                        assert!(
                            (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{kern:?} {m}x{k}x{n} r{r} c{c}: {g} vs {want}"
                        );
                    }
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

    /// The AVX-512 and AVX2 quantisations are bitwise the scalar one (where the CPU has them).
    #[test]
    fn vector_quantisation_equals_scalar() {
        let (m, k) = (5, 96);
        let mut x = rand_vec(m * k, 5);
        x[0] = 0.5; // ties: 0.5 / (1/127) lands near .5 steps in places
        x[k..k + 32].iter_mut().for_each(|v| *v = 0.0);
        x[2 * k + 40] = -3.0; // a block whose largest magnitude is negative
        let b = quantize_rows_body(&x, m, k);
        let mut tried = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F detected.
                tried.push(("avx512", unsafe { quantize_rows_avx512(&x, m, k) }));
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: AVX2 and FMA detected.
                tried.push(("avx2", unsafe { quantize_rows_avx2(&x, m, k) }));
            }
        }
        if tried.is_empty() {
            eprintln!("SKIPPED: no vector quantisation on this CPU");
        }
        for (name, a) in tried {
            assert_eq!(
                (&a.q, &a.sum, a.kq, a.blocks),
                (&b.q, &b.sum, b.kq, b.blocks),
                "{name}"
            );
            assert_eq!(
                a.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{name}"
            );
        }
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

    /// Every integer kernel against the scalar reference of the same arithmetic (integer
    /// block sums exact, the same f32 additions; FMA vs mul_add rounding alike): every row
    /// count of the register block, ragged strips (45, 200 = 6 x 32 + 8, 60 = 32 + 28: the
    /// last 16 columns partly there), depths that are not multiples of 32, K = 0, runs of depth
    /// blocks (768 = 24 blocks: three runs at 64 rows, one at 200), with and without bias. The
    /// weights include +-127 against activations of +-127 (the AVX2 kernels' int16 pair sums
    /// at their largest). Relative 1e-5 of the row's largest output covers the scale product's
    /// rounding.
    #[test]
    fn kernels_equal_the_reference() {
        for kern in kernels() {
            let mut seed = 10;
            let shapes = [
                (1, 32, 32),
                (7, 77, 45),
                (13, 300, 200),
                (64, 768, 96),
                (3, 64, 60),
                (5, 64, 40),
                (11, 96, 33),
                (200, 768, 40),
                (2, 0, 20),
                // Many rows: several groups of rows (L2 / 2 of quantised rows each) on any
                // CPU with up to 2 MiB of L2, the last group ragged.
                (1501, 768, 40),
            ];
            for &(m, k, n) in &shapes {
                for with_bias in [false, true] {
                    seed += 1;
                    let mut x = rand_vec(m * k, seed);
                    let mut w = rand_vec(k * n, seed + 100);
                    // Block maxima of both signs at both operands' ends.
                    for v in x.iter_mut().step_by(13) {
                        *v = v.signum() * 2.0;
                    }
                    for v in w.iter_mut().step_by(7) {
                        *v = v.signum() * 3.0;
                    }
                    let bias = rand_vec(n, seed + 200);
                    let bias = with_bias.then_some(&bias[..]);
                    // (K = 0: no blocks, no bytes; pack_nn wants K > 0.)
                    let q = if k == 0 {
                        Vec::new()
                    } else {
                        let packed = crate::cpu_gemm::pack_nn(&w, k, n);
                        crate::cpu_quant::strips_to_int8(&packed, k, n)
                    };
                    let mut want = vec![0f32; m * n];
                    matmul_strips_q8_reference(&x, &q, bias, &mut want, m, k, n);
                    let mut got = vec![f32::NAN; m * n];
                    // SAFETY: `got` holds m x n values; `kern` is supported.
                    unsafe { strips_q8(kern, &x, &q, bias, got.as_mut_ptr(), m, k, n, false) };
                    let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * scale,
                            "{kern:?} {m}x{k}x{n} bias {with_bias} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// On AMX-INT8 tiles the products are bitwise the VNNI kernel's (the same integers, the same
    /// f32 epilogue), for projections and heads (a compact last strip left to VNNI), rows below,
    /// at and past the 32-row block, short and long depths.
    #[test]
    fn tiles_equal_vnni_bitwise() {
        if !(crate::cpu_amx::int8_available() && Int8Kernel::Vnni.supported()) {
            eprintln!("SKIPPED: no AMX-INT8 tiles in this process");
            return;
        }
        let mut seed = 500;
        for &(m, k, n, compact) in &[
            (1, 32, 32, false),
            (5, 64, 96, false),
            (33, 96, 64, false),
            (70, 768, 64, true),
            (64, 256, 45, true),
            (7, 64, 80, false),
        ] {
            seed += 1;
            let x = rand_vec(m * k, seed);
            let w = rand_vec(k * n, seed + 1);
            let bias = rand_vec(n, seed + 2);
            let (q, bias) = if compact {
                (crate::cpu_quant::rows_to_int8_strips(&w, k, n), None)
            } else {
                let packed = crate::cpu_gemm::pack_nn(&w, k, n);
                (
                    crate::cpu_quant::strips_to_int8(&packed, k, n),
                    Some(&bias[..]),
                )
            };
            let run = |t: bool| {
                let mut out = vec![f32::NAN; m * n];
                // SAFETY: `out` holds m x n values; VNNI supported (checked above).
                unsafe {
                    strips_q8_with(
                        t,
                        Int8Kernel::Vnni,
                        &x,
                        &q,
                        bias,
                        out.as_mut_ptr(),
                        m,
                        k,
                        n,
                        compact,
                    )
                };
                out
            };
            let (v, t) = (run(false), run(true));
            assert!(
                v.iter().all(|f| f.is_finite()),
                "{m}x{k}x{n}: unwritten outputs"
            );
            for (i, (a, b)) in v.iter().zip(&t).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{m}x{k}x{n} compact {compact} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    /// The process's kernel follows the CPU kernels' instruction set: none below AVX2, VNNI
    /// only on AVX-512 (so that `DIFFUGPT_CPU_KERNELS=avx2` runs the AVX2 kernels on any host).
    #[test]
    fn kernel_follows_the_instruction_set() {
        use crate::cpu_gemm::{isa, Isa};
        assert_eq!(Int8Kernel::Avx2.supported(), isa() >= Isa::Avx2);
        if isa() < Isa::Avx512 {
            assert!(!Int8Kernel::Vnni.supported());
        }
        if let Some(k) = kernel() {
            assert!(k.supported());
        }
        if std::env::var(INT8_ENV).is_err() {
            assert_eq!(kernel(), Int8Kernel::all_supported().first().copied());
        }
    }
}
