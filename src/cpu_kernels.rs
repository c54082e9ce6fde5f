//! Fused CPU kernels for the inference forward, applied in place on fresh candle tensors.
//!
//! Candle's generic unary/softmax ops run one thread with libm `exp`/`tanh` and allocate a new
//! output each time; on a 1024-position canvas the attention softmax (12 x 1024 x 1024 scores) and the
//! MLP's GELU cost more than the matmuls around them. These kernels use a branch-free polynomial
//! `exp` that LLVM vectorises, fold the attention scale into the softmax and the bias into the GELU,
//! work in place and split rows across threads. The training crate keeps candle's differentiable
//! ops; `tests` below check both paths agree on random inputs.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use crate::cpu_quant::{self, WeightFormat};
use crate::error::Result;

/// Independent accumulator lanes of the row loops (max, softmax sums): four AVX2 vectors / two
/// AVX-512 ones, so that several `exp` polynomials are in flight at once (measured: the softmax
/// of 1024-score rows 0.93 -> 0.79 ns per score on a Zen 3 core, against 16 lanes).
const LANES: usize = 32;

/// exp(x) with relative error < 2e-7 on the whole f32 range; 0 below -87 (so -inf -> 0) and
/// saturating above 88. Branch-free so that loops over slices vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_poly::<false>(x)
}

/// `a * b + c`, fused with `FMA`: for the row loops compiled with FMA enabled (the `avx2,fma` /
/// `avx512f,fma` builds below), where the separate multiplies and adds were half of the `exp`
/// polynomial's instructions and its dependency chain twice as long (measured: the attention
/// softmax 1.0 -> 0.93 ns per score on a Zen 3 core). Elsewhere (x86-64 without FMA) `mul_add`
/// would be a libm call, hence the plain form for [`exp_f32`] and the generic rows.
#[inline(always)]
fn mad<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn exp_poly<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // max/min rather than clamp: NaN becomes -87 here (and is returned as NaN below), so that
    // `k` is always an integer in [-125, 127].
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-87.0).min(88.0);
    let k = mad::<FMA>(xc, LOG2E, 0.5).floor();
    let r = mad::<FMA>(-k, LN2_LO, mad::<FMA>(-k, LN2_HI, xc));
    // Taylor to degree 7 on |r| <= ln2/2, Horner.
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = mad::<FMA>(p, r, c);
    }
    // SAFETY: `k` is an integer in [-125, 127] (above). The checked `as i32` (saturating, NaN
    // to 0) made LLVM convert lane by lane — 16 scalar conversions per vector, most of GELU's
    // time (measured: bias-GELU 3.5% of a bf16 forward at 64 rows).
    let ki: i32 = unsafe { k.to_int_unchecked() };
    let scale = f32::from_bits(((ki + 127) as u32) << 23);
    let y = p * scale;
    if x.is_nan() {
        x
    } else if x < -87.0 {
        0.0
    } else {
        y
    }
}

#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for a in acc {
        m = m.max(a);
    }
    m
}

/// Which build of the row kernels below runs: the AVX-512 or AVX2+FMA one, following the kernel
/// switch ([`crate::cpu_gemm::isa`]), so that forcing a path forces these too. The default
/// x86-64 target has no SSE4.1, so without them `floor` in [`exp_f32`] is a libm call and
/// nothing vectorises.
#[cfg(target_arch = "x86_64")]
fn simd_rows() -> crate::cpu_gemm::Isa {
    crate::cpu_gemm::isa()
}

/// A row kernel in three builds of one body (`$body::<FMA>`, `#[inline(always)]`): AVX-512 and
/// AVX2 with FMA (`$body::<true>` compiled under `#[target_feature]`, where LLVM vectorises the
/// lane loops), and the portable one, picked per call by [`simd_rows`].
macro_rules! row_kernel {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                match simd_rows() {
                    // SAFETY (both): `isa()` never exceeds what the CPU has, and each build
                    // enables only that instruction set's features.
                    crate::cpu_gemm::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    crate::cpu_gemm::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    crate::cpu_gemm::Isa::Generic => {}
                }
            }
            $body::<false>($($arg),*)
        }
    };
}

row_kernel! {
    /// In place: x <- softmax(scale * x) along one row.
    pub fn softmax_row(x: &mut [f32], scale: f32) => softmax_row_body
}

#[inline(always)]
fn softmax_row_body<const FMA: bool>(x: &mut [f32], scale: f32) {
    let m = row_max(x) * scale;
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_poly::<FMA>(mad::<FMA>(c[i], scale, -m));
            acc[i] += c[i];
        }
    }
    let mut sum: f32 = 0.0;
    for v in chunks.into_remainder() {
        *v = exp_poly::<FMA>(mad::<FMA>(*v, scale, -m));
        sum += *v;
    }
    sum += acc.iter().sum::<f32>();
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// gelu_new(x + b) = (x + b) * sigmoid(2u), u = sqrt(2/pi) (y + 0.044715 y^3); equal to
/// 0.5 y (1 + tanh(u)).
#[inline(always)]
fn gelu_tanh<const FMA: bool>(y: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    let u = C * mad::<FMA>(0.044715 * y * y, y, y);
    y / (1.0 + exp_poly::<FMA>(-2.0 * u))
}

fn contiguous_f32<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: only f32 is supported"
        ))),
    }
}

/// The second operand of an in-place op: contiguous f32 data, read only.
fn contiguous_f32_ref<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: operand must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: only f32 is supported"
        ))),
    }
}

/// Rows per parallel task: enough work per task to amortise scheduling.
fn rows_per_task(row_len: usize, rows: usize) -> usize {
    (16_384 / row_len.max(1)).clamp(1, rows.max(1))
}

struct ScaledSoftmax(f32);

impl InplaceOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "scaled-softmax"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let n = *l.dims().last().unwrap_or(&1);
        let x = contiguous_f32(s, l, self.name())?;
        let rows = x.len() / n.max(1);
        x.par_chunks_mut(n * rows_per_task(n, rows))
            .for_each(|block| {
                block
                    .chunks_exact_mut(n)
                    .for_each(|r| softmax_row(r, self.0))
            });
        Ok(())
    }
}

row_kernel! {
    /// In place: r <- gelu_new(r + bias).
    pub fn bias_gelu_row(r: &mut [f32], bias: &[f32]) => bias_gelu_row_body
}

#[inline(always)]
fn bias_gelu_row_body<const FMA: bool>(r: &mut [f32], bias: &[f32]) {
    for (v, &bb) in r.iter_mut().zip(bias) {
        *v = gelu_tanh::<FMA>(*v + bb);
    }
}

struct BiasGelu;

impl InplaceOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }
    fn cpu_fwd(
        &self,
        s: &mut CpuStorage,
        l: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<()> {
        let n = *l.dims().last().unwrap_or(&1);
        let x = contiguous_f32(s, l, self.name())?;
        let bias = contiguous_f32_ref(b, bl, self.name())?;
        if bias.len() != n {
            candle_core::bail!("bias-gelu: bias has {} values for rows of {n}", bias.len());
        }
        let rows = x.len() / n.max(1);
        x.par_chunks_mut(n * rows_per_task(n, rows))
            .for_each(|block| {
                for r in block.chunks_exact_mut(n) {
                    bias_gelu_row(r, bias);
                }
            });
        Ok(())
    }
}

row_kernel! {
    /// In place: `out <- (x - mean) / sqrt(var + eps) * w + b` for one row, with the mean and the
    /// variance in two passes (the variance of the centred values: no cancellation when the mean is
    /// large against the spread, as the one-pass `E[x^2] - mean^2` of candle's LayerNorm has).
    pub fn layer_norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) => layer_norm_row_body
}

/// A sum of `f(v)` over `x` in `LANES` independent lanes (so that it vectorises: a single
/// running sum is one long dependency chain that LLVM must keep in order).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    tail + acc.iter().sum::<f32>()
}

#[inline(always)]
fn layer_norm_row_body<const FMA: bool>(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let n = x.len().max(1) as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| {
        let d = v - mean;
        d * d
    }) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (((o, &v), &ww), &bb) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = mad::<FMA>((v - mean) * rstd, ww, bb);
    }
}

/// LayerNorm over the last dim of a contiguous f32 CPU tensor into a fresh one, rows split
/// across threads: [`layer_norm_row`] per row. Candle's LayerNorm sums each row in one serial
/// chain per row task (measured at 1024 x 768 on a Zen 3: 1.1 ms per call, 2.2x PyTorch's).
/// `None` when `x`, `w` or `b` is not contiguous f32 on the CPU (the caller then takes
/// candle's).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    let n = *x.dims().last().unwrap_or(&0);
    if n == 0 || w.elem_count() != n || b.elem_count() != n {
        return Ok(None);
    }
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (bs, bl) = b.storage_and_layout();
    let (Some(xv), Some(wv), Some(bv)) =
        (f32_slice(&xs, xl), f32_slice(&ws, wl), f32_slice(&bs, bl))
    else {
        return Ok(None);
    };
    let rows = xv.len() / n;
    let per_task = rows_per_task(n, rows);
    let mut out = vec![0f32; xv.len()];
    out.par_chunks_mut(n * per_task)
        .zip(xv.par_chunks(n * per_task))
        .for_each(|(o, xi)| {
            for (orow, xrow) in o.chunks_exact_mut(n).zip(xi.chunks_exact(n)) {
                layer_norm_row(xrow, wv, bv, eps, orow);
            }
        });
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "add-in-place"
    }
    fn cpu_fwd(
        &self,
        s: &mut CpuStorage,
        l: &Layout,
        x: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<()> {
        let y = contiguous_f32(s, l, self.name())?;
        let x = contiguous_f32_ref(x, xl, self.name())?;
        if x.len() != y.len() {
            candle_core::bail!("add-in-place: {} values against {}", x.len(), y.len());
        }
        // Split across threads from 128K values on (1024 x 768: 5.2-7.7 ms per forward for its
        // 24 adds against candle's 12.2-13.0); below, one pass on this thread, where waking the
        // workers cost more than the adds (64 x 768: 1.0 ms per forward split, 0.5 serial).
        const CHUNK: usize = 32_768;
        let add =
            |(yc, xc): (&mut [f32], &[f32])| yc.iter_mut().zip(xc).for_each(|(v, &w)| *v += w);
        if y.len() >= 4 * CHUNK {
            y.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(add);
        } else {
            add((y, x));
        }
        Ok(())
    }
}

/// `y + x` written into `y` (a fresh contiguous f32 CPU tensor not shared with anything else,
/// of `x`'s shape): the residual connection without a new allocation and its page faults.
/// Bitwise candle's `x + y`. Returns `y`.
pub fn add_inplace(y: Tensor, x: &Tensor) -> Result<Tensor> {
    if y.shape() != x.shape() {
        return Err(internal(format!(
            "add_inplace: shapes {:?} and {:?}",
            y.shape(),
            x.shape()
        )));
    }
    y.inplace_op2(x, &AddInPlace)?;
    Ok(y)
}

/// softmax(scale * x) over the last dim, in place on `x` (which must be a fresh contiguous f32
/// CPU tensor not shared with anything else). Returns `x`.
pub fn scaled_softmax_inplace(x: Tensor, scale: f32) -> Result<Tensor> {
    x.inplace_op1(&ScaledSoftmax(scale))?;
    Ok(x)
}

/// gelu_new(x + bias) in place (bias broadcast over the last dim). Returns `x`.
pub fn bias_gelu_inplace(x: Tensor, bias: &Tensor) -> Result<Tensor> {
    x.inplace_op2(bias, &BiasGelu)?;
    Ok(x)
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of columns (its own head) of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not a field access) so closures capture the whole `Send` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Query rows per block of [`fused_attention`]'s own-kernel path: 48 rows of scores at
/// t = 1024 are 192 KiB, which stay in L2 next to the block's share of `k^T` and `v` (a multiple
/// of both register blocks' row counts, 6 and 8; 96 and 192 measured the same on a Zen 3).
const ATTN_BLOCK_ROWS: usize = 48;

/// A row length of at least `t` floats whose rows do not share L1 sets: a multiple of 16 (whole
/// cache lines), moved off multiples of 1 KiB by one line.
fn padded_stride(t: usize) -> usize {
    let tp = t.next_multiple_of(16);
    if tp.is_multiple_of(256) {
        tp + 16
    } else {
        tp
    }
}

/// Softmax of query row `i`'s scores in place; with `causal`, over keys `0..=i` only (the
/// others set to 0).
fn softmax_scores(row: &mut [f32], i: usize, causal: bool, scale: f32) {
    if causal {
        softmax_row(&mut row[..=i], scale);
        row[i + 1..].fill(0.0);
    } else {
        softmax_row(row, scale);
    }
}

/// Multi-head self-attention straight from the fused QKV projection.
///
/// `qkv` is `[batch * t, 3 * n_embd]` (q | k | v, heads contiguous inside each, as GPT-2's
/// `c_attn` produces it); returns `[batch * t, n_embd]` with heads already merged. One task per
/// (sequence, head) runs two single-threaded GEMMs, so no `[heads, t, t]` score tensor is
/// materialised: with the own kernels on copies of its q, k^T and v and on blocks of query rows,
/// otherwise (`gemm`) on strided views of `qkv`. `causal` restricts row i to keys <= i. Requires
/// a contiguous f32 CPU tensor.
pub fn fused_attention(
    qkv: &Tensor,
    batch: usize,
    t: usize,
    n_head: usize,
    causal: bool,
) -> Result<Tensor> {
    fused_attention_in_blocks(qkv, batch, t, n_head, causal, ATTN_BLOCK_ROWS)
}

/// [`fused_attention`] with `block` query rows per block on the own-kernel path.
fn fused_attention_in_blocks(
    qkv: &Tensor,
    batch: usize,
    t: usize,
    n_head: usize,
    causal: bool,
    block: usize,
) -> Result<Tensor> {
    let (rows, three_e) = qkv.dims2()?;
    let e = three_e / 3;
    if rows != batch * t || three_e % 3 != 0 || n_head == 0 || e % n_head != 0 {
        return Err(candle_core::Error::Msg(format!(
            "fused attention: qkv {:?} does not match batch {batch} x t {t}, {n_head} heads",
            qkv.dims()
        ))
        .into());
    }
    let d = e / n_head;
    let (storage, layout) = qkv.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused attention: qkv must be contiguous".into()))?;
    let src: &[f32] = match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => &v[start..end],
        _ => {
            return Err(
                candle_core::Error::Msg("fused attention: needs f32 on the CPU".into()).into(),
            )
        }
    };
    let mut out = vec![0f32; rows * e];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let scale = 1.0 / (d as f32).sqrt();
    // Short canvases (the EoS-first steps after the cut) in one block: their scores are small,
    // and a remainder block of a few rows only adds calls.
    let block = if t <= 2 * block {
        t.max(1)
    } else {
        block.max(1)
    };
    (0..batch * n_head).into_par_iter().for_each(|task| {
        let (bi, h) = (task / n_head, task % n_head);
        let base = src[bi * t * three_e..].as_ptr();
        if crate::cpu_gemm::available() {
            // Contiguous copies (t x d each) let the own kernels stream them: scores = q @ k^T
            // with k^T laid out [d, t] (the in-place NN kernels measured faster here than the
            // head's NT dot tiles), in strips (below).
            // Scores rows `tp` apart (keys padded with zeros): with t = 1024 their rows would be
            // 4 KiB apart, so the register block's rows fall into the same L1 sets (4K
            // aliasing; measured: q @ k^T at 1024 x 64 x 1024 51.7 GFLOP/s on one Zen 3 core,
            // 82.6 with rows 1040 apart). Padded keys score 0 and meet zero rows of `v`, so
            // they add exact zeros.
            let tp = padded_stride(t);
            // Row r of part p (0 q, 1 k, 2 v) of this head: d contiguous floats.
            let seq = &src[bi * t * three_e..(bi + 1) * t * three_e];
            let part = |p: usize, r: usize| &seq[r * three_e + p * e + h * d..][..d];
            // k^T ([d, tp]) straight into the strip layout of `cpu_gemm::pack_nn`: keys in
            // strips of 32, each strip contiguous over the d depth rows, so that `q @ k^T` runs
            // every register block over a contiguous 8 KiB strip (measured at 48 x 64 x 1040 on
            // one Zen 3 core: 69-72 us against 82-93 us reading k^T's rows 4 KiB apart).
            let strip = crate::cpu_gemm::STRIP;
            // `v` likewise as strips of 32 columns over all `tp` keys (padded keys: zero rows):
            // `P @ v` is deep (t) and narrow (d = 64, two strips), and each register block then
            // runs over all keys at once instead of 64-deep blocks whose partial sums go back to
            // memory between them (bitwise the same sums; at 48 x 1040 x 64 on one Zen 3 core
            // 70-72 us against 82-86 us).
            let mut q = vec![0f32; t * d];
            let mut ktp = vec![0f32; crate::cpu_gemm::packed_len(d, tp)];
            let mut vp = vec![0f32; crate::cpu_gemm::packed_len(tp, d)];
            for r in 0..t {
                q[r * d..(r + 1) * d].copy_from_slice(part(0, r));
                let base = (r / strip) * d * strip + r % strip;
                for (c, &x) in part(1, r).iter().enumerate() {
                    ktp[base + c * strip] = x;
                }
                for (c0, vs) in (0..d).step_by(strip).zip(part(2, r).chunks(strip)) {
                    let at = (c0 / strip) * tp * strip + r * strip;
                    vp[at..at + vs.len()].copy_from_slice(vs);
                }
            }
            let mut o = vec![0f32; t * d];
            // A block of query rows at a time, so that its scores (`block x tp`) stay in L2
            // between the two products and the softmax; the whole `t x t` matrix (4 MiB at
            // t = 1024) went through L3 four times. Every score and output element is summed
            // in the same order either way (the products are per row), so the blocking does
            // not change a bit of the result.
            let mut scores = vec![0f32; block.min(t) * tp];
            for r0 in (0..t).step_by(block) {
                let rows = block.min(t - r0);
                let s = &mut scores[..rows * tp];
                let qb = &q[r0 * d..(r0 + rows) * d];
                crate::cpu_gemm::matmul_prepacked_serial(qb, &ktp, s, rows, d, tp);
                for (i, row) in s.chunks_exact_mut(tp).enumerate() {
                    softmax_scores(&mut row[..t], r0 + i, causal, scale);
                }
                let ob = &mut o[r0 * d..(r0 + rows) * d];
                crate::cpu_gemm::matmul_prepacked_serial(s, &vp, ob, rows, tp, d);
            }
            for (r, row) in o.chunks_exact(d).enumerate() {
                // SAFETY: row r of this sequence, this head's d columns: inside `out`, written
                // by this task only.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        row.as_ptr(),
                        out_ptr.get().add((bi * t + r) * e + h * d),
                        d,
                    )
                };
            }
            return;
        }
        let mut scores = vec![0f32; t * t];
        // SAFETY: all offsets stay inside `src` (t rows of 3e from the sequence start);
        // strides are in elements.
        unsafe {
            // scores[i, j] = q_i . k_j
            gemm::gemm(
                t,
                t,
                d,
                scores.as_mut_ptr(),
                1,
                t as isize,
                false,
                base.add(h * d),
                1,
                three_e as isize,
                base.add(e + h * d),
                three_e as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (i, row) in scores.chunks_exact_mut(t).enumerate() {
            softmax_scores(row, i, causal, scale);
        }
        // SAFETY: as above, and each task writes only its head's d columns of its own
        // sequence's rows of `out`.
        unsafe {
            // out[:, head] = P @ v
            gemm::gemm(
                t,
                d,
                t,
                out_ptr.get().add(bi * t * e + h * d),
                1,
                e as isize,
                false,
                scores.as_ptr(),
                1,
                t as isize,
                base.add(2 * e + h * d),
                1,
                three_e as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    drop(storage);
    Ok(Tensor::from_vec(out, (rows, e), qkv.device())?)
}

/// `x [M, K] @ w (+ bias)` with the kernels of [`crate::cpu_gemm`], where `w` is `[K, N]` or, with
/// `w_rows_are_outputs`, `[N, K]` (the tied head). `None` when they do not apply (no kernels,
/// fewer than `cpu_gemm::MIN_ROWS` rows, not contiguous f32 on the CPU): use the general
/// path then.
pub fn weights_matmul(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    w_rows_are_outputs: bool,
) -> Result<Option<Tensor>> {
    let (m, k) = x.dims2()?;
    if m < crate::cpu_gemm::MIN_ROWS || !crate::cpu_gemm::available() {
        return Ok(None);
    }
    let (wr, wc) = w.dims2()?;
    let (wk, n) = if w_rows_are_outputs {
        (wc, wr)
    } else {
        (wr, wc)
    };
    if wk != k || bias.is_some_and(|b| b.dims() != [n]) {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let bs = bias.map(|b| b.storage_and_layout());
    let (Some(xv), Some(wv)) = (f32_slice(&xs, xl), f32_slice(&ws, wl)) else {
        return Ok(None);
    };
    let bv = match &bs {
        Some((g, l)) => match f32_slice(g, l) {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        None => None,
    };
    let mut out = vec![0f32; m * n];
    if w_rows_are_outputs {
        crate::cpu_gemm::matmul_nt(xv, wv, &mut out, m, k, n);
        if let Some(b) = bv {
            out.chunks_exact_mut(n)
                .for_each(|r| r.iter_mut().zip(b).for_each(|(o, b)| *o += b));
        }
    } else {
        crate::cpu_gemm::matmul_nn(xv, wv, bv, &mut out, m, k, n);
    }
    drop((xs, ws, bs));
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

/// A broken internal invariant (a packed weight of the wrong shape or kind): reported as a
/// backend error rather than a panic.
fn internal(msg: impl Into<String>) -> crate::error::Error {
    candle_core::Error::Msg(msg.into()).into()
}

/// The contiguous f32 data of a CPU tensor, or `None` (other dtype or device, strided).
fn f32_slice<'a>(s: &'a candle_core::Storage, l: &Layout) -> Option<&'a [f32]> {
    let (a, b) = l.contiguous_offsets()?;
    match s {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => Some(&v[a..b]),
        _ => None,
    }
}

/// A Conv1D weight `[K, N]` rewritten into [`crate::cpu_gemm::pack_nn`]'s strip-major layout,
/// as a tensor of shape `[ceil(N / 32), K, 32]` (the rank tells packed from plain) in f32 or
/// bf16, or the int8 strip layout of [`crate::cpu_quant`] (`[ceil(N / 32), K / 32, bytes]`, u8;
/// needs `K` a multiple of 32). `None` when the weight is not contiguous f32 on the CPU.
pub fn pack_weight(w: &Tensor, format: WeightFormat) -> Result<Option<Tensor>> {
    let (k, n) = w.dims2()?;
    let (st, l) = w.storage_and_layout();
    let Some(data) = f32_slice(&st, l) else {
        return Ok(None);
    };
    let packed = crate::cpu_gemm::pack_nn(data, k, n);
    drop(st);
    let strips = n.div_ceil(crate::cpu_gemm::STRIP);
    let shape = (strips, k, crate::cpu_gemm::STRIP);
    Ok(Some(match format {
        WeightFormat::F32 => Tensor::from_vec(packed, shape, w.device())?,
        WeightFormat::Bf16 => {
            Tensor::from_vec(cpu_quant::strips_to_bf16(&packed, k, n), shape, w.device())?
        }
        WeightFormat::Int8 => {
            check_int8_depth(k)?;
            let q = cpu_quant::strips_to_int8(&packed, k, n);
            let bytes = q.len() / (strips * (k / cpu_quant::QK));
            Tensor::from_vec(q, (strips, k / cpu_quant::QK, bytes), w.device())?
        }
    }))
}

/// int8 blocks run along `K` 32 at a time, and the depth is read back from the block count.
fn check_int8_depth(k: usize) -> Result<()> {
    if !k.is_multiple_of(cpu_quant::QK) {
        return Err(crate::error::Error::Config(format!(
            "int8 weights need n_embd and n_inner to be multiples of {}; this model has a depth of {k}",
            cpu_quant::QK
        )));
    }
    Ok(())
}

/// The head (`[N, K]`, the tied embedding) in `format`: f32 as the strips of the `[K, N]` weight
/// (`[ceil(N / 32), K, 32]`, [`crate::cpu_gemm::pack_nn`]'s layout), bf16 `[N, K]`, int8 rows
/// `[N, K / 32 * 36]` u8 — or, where the integer kernels run ([`crate::cpu_int8::active`]), the
/// same bytes in strip order as `[1, N, K / 32 * 36]`, and where the `vdpbf16ps` kernels run
/// ([`crate::cpu_bf16::active`]) bf16 in strip order as `[1, N, K]` (the rank tells the layouts
/// apart). `None` when it is not contiguous f32 on the CPU.
pub fn encode_rows(w: &Tensor, format: WeightFormat) -> Result<Option<Tensor>> {
    let (n, k) = w.dims2()?;
    let (st, l) = w.storage_and_layout();
    let Some(data) = f32_slice(&st, l) else {
        return Ok(None);
    };
    let t = match format {
        // The projections' strip layout `[ceil(N / 32), K, 32]`: the head then runs on their
        // pre-packed kernels (measured on the Xeon of benches/README, 2 threads: 20.8 against
        // the row dot tiles' 31.4 ms at 64 rows, 5.7 against 9.0 ms at one row).
        WeightFormat::F32 => Tensor::from_vec(
            cpu_quant::rows_to_f32_strips(data, k, n),
            (
                n.div_ceil(crate::cpu_gemm::STRIP),
                k,
                crate::cpu_gemm::STRIP,
            ),
            w.device(),
        )?,
        // Where the vdpbf16ps kernels run, as the strips of `[K, N]` (rank 3 tells).
        WeightFormat::Bf16 if crate::cpu_bf16::active() => Tensor::from_vec(
            cpu_quant::rows_to_bf16_strips(data, k, n),
            (1, n, k),
            w.device(),
        )?,
        WeightFormat::Bf16 => Tensor::from_vec(cpu_quant::to_bf16(data), (n, k), w.device())?,
        WeightFormat::Int8 => {
            check_int8_depth(k)?;
            if crate::cpu_int8::active() {
                let q = cpu_quant::rows_to_int8_strips(data, k, n);
                let bytes = q.len() / n;
                Tensor::from_vec(q, (1, n, bytes), w.device())?
            } else {
                let q = cpu_quant::rows_to_int8(data, k, n);
                let bytes = q.len() / n;
                Tensor::from_vec(q, (n, bytes), w.device())?
            }
        }
    };
    drop(st);
    Ok(Some(t))
}

/// Views of a tensor's CPU storage in each weight format (by dtype: f32, bf16, u8 = int8).
fn with_storage<R>(t: &Tensor, f: impl FnOnce(Option<(WeightFormat, StorageView<'_>)>) -> R) -> R {
    let (st, l) = t.storage_and_layout();
    let view = l.contiguous_offsets().and_then(|(a, b)| match &*st {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => {
            Some((WeightFormat::F32, StorageView::F32(&v[a..b])))
        }
        candle_core::Storage::Cpu(CpuStorage::BF16(v)) => {
            Some((WeightFormat::Bf16, StorageView::Bf16(&v[a..b])))
        }
        candle_core::Storage::Cpu(CpuStorage::U8(v)) => {
            Some((WeightFormat::Int8, StorageView::Int8(&v[a..b])))
        }
        _ => None,
    });
    f(view)
}

enum StorageView<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    Int8(&'a [u8]),
}

impl<'a> StorageView<'a> {
    fn strips(self) -> cpu_quant::Strips<'a> {
        match self {
            StorageView::F32(v) => cpu_quant::Strips::F32(v),
            StorageView::Bf16(v) => cpu_quant::Strips::Bf16(v),
            StorageView::Int8(v) => cpu_quant::Strips::Int8(v),
        }
    }

    /// The head view; `strip_order`: a bf16 or int8 head of rank 3 ([`encode_rows`]).
    fn rows(self, strip_order: bool) -> cpu_quant::Rows<'a> {
        match self {
            StorageView::F32(v) if strip_order => cpu_quant::Rows::F32Strips(v),
            StorageView::F32(v) => cpu_quant::Rows::F32(v),
            StorageView::Bf16(v) if strip_order => cpu_quant::Rows::Bf16Strips(v),
            StorageView::Bf16(v) => cpu_quant::Rows::Bf16(v),
            StorageView::Int8(v) if strip_order => cpu_quant::Rows::Int8Strips(v),
            StorageView::Int8(v) => cpu_quant::Rows::Int8(v),
        }
    }
}

/// The format a packed projection or an encoded head is stored in (f32 for anything else).
pub fn weight_format(t: &Tensor) -> WeightFormat {
    match t.dtype() {
        candle_core::DType::BF16 => WeightFormat::Bf16,
        candle_core::DType::U8 => WeightFormat::Int8,
        _ => WeightFormat::F32,
    }
}

/// The depth `K` of a packed projection (`[strips, K or K / 32, ...]`).
fn packed_depth(wp: &Tensor) -> Result<usize> {
    let (_, d, _) = wp.dims3()?;
    Ok(match weight_format(wp) {
        WeightFormat::Int8 => d * cpu_quant::QK,
        _ => d,
    })
}

/// The head's `n` rows `[N, K]` as f32 (a copy when it is stored in another format or order); `k`
/// is the embedding width.
pub fn decode_rows(w: &Tensor, k: usize, n: usize) -> Result<Tensor> {
    if weight_format(w) == WeightFormat::F32 && w.rank() == 2 {
        return Ok(w.clone());
    }
    with_storage(w, |v| {
        let rows = v
            .ok_or_else(|| internal("encoded head is not contiguous on the CPU"))?
            .1
            .rows(w.rank() == 3);
        check_rows(&rows, k, n)?;
        let mut out = vec![0f32; n * k];
        rows.decode(k, 0, n, &mut out);
        Ok(Tensor::from_vec(out, (n, k), w.device())?)
    })
}

fn check_rows(rows: &cpu_quant::Rows<'_>, k: usize, n: usize) -> Result<()> {
    if rows.len() != rows.expected_len(k, n) {
        return Err(internal(format!(
            "encoded head of {} elements does not hold {n} rows of {k}",
            rows.len()
        )));
    }
    Ok(())
}

/// Embedding lookup `[ids.len(), k]` from the `n` head-format rows (any [`WeightFormat`], or the
/// f32 strips of [`encode_rows`]).
pub fn embed_rows(w: &Tensor, ids: &[u32], k: usize, n: usize) -> Result<Tensor> {
    with_storage(w, |v| {
        let rows = v
            .ok_or_else(|| internal("embedding is not contiguous on the CPU"))?
            .1
            .rows(w.rank() == 3);
        check_rows(&rows, k, n)?;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(internal(format!("token id {id} outside the embedding")));
        }
        // Each distinct id is decoded once, the rows in parallel, and repeats copied: a canvas
        // is mostly `[MASK]`, and a row of the strip layouts is a gather over `k` cache lines
        // (one value per 128-byte strip row), 10 ms at 1024 distinct ids on one core.
        let mut first = std::collections::HashMap::with_capacity(ids.len());
        let src: Vec<usize> = (0..ids.len())
            .map(|i| *first.entry(ids[i]).or_insert(i))
            .collect();
        let mut out = vec![0f32; ids.len() * k];
        if k == 0 {
            return Ok(Tensor::from_vec(out, (ids.len(), k), w.device())?);
        }
        out.par_chunks_exact_mut(k)
            .enumerate()
            .filter(|(i, _)| src[*i] == *i)
            .for_each(|(i, o)| rows.decode(k, ids[i] as usize, 1, o));
        for (i, &j) in src.iter().enumerate() {
            if j != i {
                out.copy_within(j * k..(j + 1) * k, i * k);
            }
        }
        Ok(Tensor::from_vec(out, (ids.len(), k), w.device())?)
    })
}

/// `x [M, K] @ head[N, K]^T` for a head of `n` rows stored by [`encode_rows`] (f32 strips, bf16
/// or int8).
pub fn encoded_head_matmul(x: &Tensor, w: &Tensor, n: usize) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let xv = f32_slice(&xs, xl).ok_or_else(|| internal("head input is not f32 on the CPU"))?;
    let out = with_storage(w, |v| {
        let rows = v
            .ok_or_else(|| internal("encoded head is not contiguous on the CPU"))?
            .1
            .rows(w.rank() == 3);
        check_rows(&rows, k, n)?;
        Ok::<_, crate::error::Error>(match rows {
            // The projections' pre-packed kernels, any number of rows.
            cpu_quant::Rows::F32Strips(v) => {
                let mut out = vec![0f32; m * n];
                crate::cpu_gemm::matmul_prepacked(xv, v, None, &mut out, m, k, n);
                out
            }
            cpu_quant::Rows::Int8Strips(q) => crate::cpu_int8::matmul_head_q8_new(xv, q, m, k, n),
            cpu_quant::Rows::Bf16Strips(b) => crate::cpu_bf16::matmul_head_bf16_new(xv, b, m, k, n),
            cpu_quant::Rows::Bf16(b) if crate::cpu_gemv::runs(m) => {
                crate::cpu_gemv::matmul_head(xv, crate::cpu_gemv::HeadRows::Bf16(b), m, k, n)
            }
            cpu_quant::Rows::Int8(q) if crate::cpu_gemv::runs(m) => {
                crate::cpu_gemv::matmul_head(xv, crate::cpu_gemv::HeadRows::Int8(q), m, k, n)
            }
            _ => {
                let mut out = vec![0f32; m * n];
                let isa = crate::cpu_gemm::isa();
                crate::cpu_gemm::matmul_nt_rows_with(isa, xv, rows, &mut out, m, k, n);
                out
            }
        })
    })?;
    drop(xs);
    Ok(Tensor::from_vec(out, (m, n), x.device())?)
}

/// The plain `[K, N]` weight behind a packed one (`n` output columns: the padding of the last
/// strip is dropped).
pub fn unpack_weight(wp: &Tensor, n: usize) -> Result<Tensor> {
    let strips = wp.dim(0)?;
    let k = packed_depth(wp)?;
    if strips != n.div_ceil(crate::cpu_gemm::STRIP) {
        return Err(internal(format!(
            "packed weight {:?} does not hold {n} output columns",
            wp.dims()
        )));
    }
    let w = with_storage(wp, |v| {
        let ws = v
            .ok_or_else(|| internal("packed weight is not contiguous on the CPU"))?
            .1
            .strips();
        if ws.len() != ws.expected_len(k, n) {
            return Err(internal(format!(
                "packed weight {:?} for {k} x {n}",
                wp.dims()
            )));
        }
        let mut packed = vec![0f32; crate::cpu_gemm::packed_len(k, n)];
        for (s, d) in packed
            .chunks_exact_mut(k * crate::cpu_gemm::STRIP)
            .enumerate()
        {
            ws.decode(s, k, 0, k, d);
        }
        Ok(crate::cpu_gemm::unpack_nn(&packed, k, n))
    })?;
    Ok(Tensor::from_vec(w, (k, n), wp.device())?)
}

/// `x [M, K] @ w (+ bias)` for a weight packed by [`pack_weight`] holding `n` output columns;
/// any number of rows.
pub fn prepacked_matmul(
    x: &Tensor,
    wp: &Tensor,
    bias: Option<&Tensor>,
    n: usize,
) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let strips = wp.dim(0)?;
    if packed_depth(wp)? != k
        || strips != n.div_ceil(crate::cpu_gemm::STRIP)
        || bias.is_some_and(|b| b.dims() != [n])
    {
        return Err(internal(format!(
            "x {:?} @ packed {:?} to {n} columns",
            x.dims(),
            wp.dims()
        )));
    }
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let bs = bias.map(|b| b.storage_and_layout());
    let not_f32 = || internal("packed matmul needs contiguous f32 CPU activations and bias");
    let xv = f32_slice(&xs, xl).ok_or_else(not_f32)?;
    let bv = match &bs {
        Some((g, l)) => Some(f32_slice(g, l).ok_or_else(not_f32)?),
        None => None,
    };
    let out = with_storage(wp, |v| {
        let ws = v
            .ok_or_else(|| internal("packed weight is not contiguous on the CPU"))?
            .1
            .strips();
        if ws.len() != ws.expected_len(k, n) {
            return Err(internal(format!(
                "packed weight {:?} for {k} x {n}",
                wp.dims()
            )));
        }
        Ok(match ws {
            // bf16 on a CPU where vdpbf16ps pays: bf16 products, activations rounded.
            crate::cpu_quant::Strips::Bf16(b) if crate::cpu_bf16::active() => {
                crate::cpu_bf16::matmul_strips_bf16_new(xv, b, bv, m, k, n)
            }
            // int8 where the integer kernels run (VNNI or AVX2): quantised activations.
            crate::cpu_quant::Strips::Int8(q) if crate::cpu_int8::active() => {
                crate::cpu_int8::matmul_strips_q8_new(xv, q, bv, m, k, n)
            }
            // One to three rows (ARM steps): bf16 / int8 widened in registers, no decoded copy.
            crate::cpu_quant::Strips::Bf16(b) if crate::cpu_gemv::runs(m) => {
                crate::cpu_gemv::matmul_strips(
                    xv,
                    crate::cpu_gemv::StripWeights::Bf16(b),
                    bv,
                    m,
                    k,
                    n,
                )
            }
            crate::cpu_quant::Strips::Int8(q) if crate::cpu_gemv::runs(m) => {
                crate::cpu_gemv::matmul_strips(
                    xv,
                    crate::cpu_gemv::StripWeights::Int8(q),
                    bv,
                    m,
                    k,
                    n,
                )
            }
            _ => {
                let mut out = vec![0f32; m * n];
                let isa = crate::cpu_gemm::isa();
                crate::cpu_gemm::matmul_strips_with(isa, xv, ws, bv, &mut out, m, k, n);
                out
            }
        })
    })?;
    drop((xs, bs));
    Ok(Tensor::from_vec(out, (m, n), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Largest difference relative to the reference's largest magnitude, floored at 1: outputs
    /// near zero (GELU of a very negative input, a 2x1 case) must not turn f32 rounding of the
    /// `1 + tanh` cancellation into a large "relative" error (CI saw that with unseeded inputs).
    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let m = b.iter().map(|y| y.abs()).fold(1f32, f32::max);
        d / m
    }

    /// Seeded normal inputs: a failure reproduces.
    fn randn(rng: &mut crate::rng::Rng, std: f32, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() * std).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn exp_matches_libm() {
        // Both builds: the fused one (what the AVX2 / AVX-512 rows run) and the plain one.
        let fused: fn(f32) -> f32 = exp_poly::<true>;
        for (name, exp) in [("plain", exp_f32 as fn(f32) -> f32), ("fma", fused)] {
            let mut worst = 0f64;
            for i in -87_000..88_000 {
                let x = i as f32 * 1e-3 + 0.000_37;
                let r = (exp(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
                worst = worst.max(r);
            }
            assert!(worst < 5e-7, "{name}: max rel err {worst}");
            assert_eq!(exp(f32::NEG_INFINITY), 0.0, "{name}");
            assert_eq!(exp(-100.0), 0.0, "{name}");
            assert!(exp(0.0) == 1.0, "{name}");
            assert!(exp(f32::NAN).is_nan(), "{name}");
        }
    }

    /// Fused attention against plain candle ops (tolerance as above), both masks; on the own
    /// kernels, every block size gives bitwise the same result (the products run per row).
    fn check_attention(rng: &mut crate::rng::Rng, b: usize, t: usize, nh: usize, hd: usize) {
        let d = Device::Cpu;
        let e = nh * hd;
        let qkv = randn(rng, 1.0, &[b * t, 3 * e]);
        for causal in [false, true] {
            let got = fused_attention(&qkv, b, t, nh, causal).unwrap();
            if crate::cpu_gemm::available() {
                let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
                for block in [1, 7, t] {
                    let other = fused_attention_in_blocks(&qkv, b, t, nh, causal, block).unwrap();
                    let other: Vec<f32> = other.flatten_all().unwrap().to_vec1().unwrap();
                    assert!(
                        got.iter()
                            .zip(&other)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "t {t}: blocks of {block} rows differ from {ATTN_BLOCK_ROWS}"
                    );
                }
            }

            let p = qkv
                .reshape((b, t, 3, nh, hd))
                .unwrap()
                .permute((2, 0, 3, 1, 4))
                .unwrap();
            let (q, k, v) = (p.get(0).unwrap(), p.get(1).unwrap(), p.get(2).unwrap());
            let mut att = (q
                .contiguous()
                .unwrap()
                .matmul(&k.contiguous().unwrap().t().unwrap())
                .unwrap()
                / (hd as f64).sqrt())
            .unwrap();
            if causal {
                let m: Vec<f32> = (0..t * t)
                    .map(|x| {
                        if x % t > x / t {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                    .collect();
                att = att
                    .broadcast_add(&Tensor::from_vec(m, (t, t), &d).unwrap())
                    .unwrap();
            }
            let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
            let want = att
                .matmul(&v.contiguous().unwrap())
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b * t, e))
                .unwrap();
            assert!(max_rel(&got, &want) < 1e-5, "attention causal={causal}");
        }
        assert!(fused_attention(&qkv, b, t + 1, nh, false).is_err());
    }

    /// Tolerance: 1e-5 relative to the largest value (f32 rounding of different summation orders).
    #[test]
    fn fused_softmax_and_gelu_match_candle_reference() {
        let d = Device::Cpu;
        let mut rng = crate::rng::Rng::new(17);
        for (rows, n) in [(7, 5), (3, 16), (40, 1027), (2, 1), (64, 3)] {
            let x = randn(&mut rng, 3.0, &[rows, n]);
            let want = candle_nn::ops::softmax_last_dim(&(&x * 0.125).unwrap()).unwrap();
            let got = scaled_softmax_inplace(x.copy().unwrap(), 0.125).unwrap();
            assert!(max_rel(&got, &want) < 1e-5, "softmax {rows}x{n}");
            let b = randn(&mut rng, 1.0, &[n]);
            let want = x.broadcast_add(&b).unwrap().gelu().unwrap();
            let got = bias_gelu_inplace(x.copy().unwrap(), &b).unwrap();
            assert!(max_rel(&got, &want) < 1e-5, "gelu {rows}x{n}");
        }
        // A causal row: -inf entries get exactly zero weight.
        let x = Tensor::new(&[[1.0f32, f32::NEG_INFINITY, 2.0]], &d).unwrap();
        let got: Vec<Vec<f32>> = scaled_softmax_inplace(x, 1.0).unwrap().to_vec2().unwrap();
        assert_eq!(got[0][1], 0.0);
        assert!((got[0][0] + got[0][2] - 1.0).abs() < 1e-6);
        // Fused attention against plain candle ops, both masks: two sequences; one spanning
        // three query blocks (the last partial); one whose score rows are padded (t = 256).
        for (b, t, nh, hd) in [(2, 37, 3, 8), (1, 101, 2, 16), (1, 256, 2, 8)] {
            check_attention(&mut rng, b, t, nh, hd);
        }
        // Wrong dtype / non-contiguous inputs are errors, not panics.
        let x = Tensor::zeros((2, 3), candle_core::DType::F64, &d).unwrap();
        assert!(scaled_softmax_inplace(x, 1.0).is_err());
        let x = Tensor::zeros((3, 2), candle_core::DType::F32, &d)
            .unwrap()
            .t()
            .unwrap();
        assert!(scaled_softmax_inplace(x, 1.0).is_err());
    }

    /// LayerNorm against an f64 two-pass reference, to 1e-5 relative of the output's largest
    /// magnitude: widths below, at and above the lane count with remainders, many rows (several
    /// tasks), and rows whose mean is large against their spread (where candle's one-pass
    /// variance loses digits: it is checked to 1e-5 on the ordinary rows only).
    #[test]
    fn layer_norm_matches_a_two_pass_f64_reference() {
        let mut rng = crate::rng::Rng::new(23);
        for (rows, n, offset) in [
            (1, 1, 0.0),
            (5, 7, 0.0),
            (3, 32, 0.0),
            (40, 768, 0.0),
            (300, 100, 0.0),
            (9, 771, 300.0),
        ] {
            let x = (randn(&mut rng, 2.0, &[rows, n]) + offset).unwrap();
            let w = randn(&mut rng, 1.0, &[n]);
            let b = randn(&mut rng, 1.0, &[n]);
            let got = layer_norm(&x, &w, &b, 1e-5)
                .unwrap()
                .expect("contiguous f32");
            assert_eq!(got.dims(), x.dims());
            let xv: Vec<Vec<f32>> = x.to_vec2().unwrap();
            let (wv, bv) = (w.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
            let want: Vec<f32> = xv
                .iter()
                .flat_map(|r| {
                    let m = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                    let var = r.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n as f64;
                    let rstd = 1.0 / (var + 1e-5).sqrt();
                    r.iter()
                        .zip(&wv)
                        .zip(&bv)
                        .map(|((&v, &ww), &bb)| {
                            ((v as f64 - m) * rstd * ww as f64 + bb as f64) as f32
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let want = Tensor::from_vec(want, (rows, n), &Device::Cpu).unwrap();
            assert!(
                max_rel(&got, &want) < 1e-5,
                "{rows}x{n}+{offset}: {}",
                max_rel(&got, &want)
            );
            if offset == 0.0 {
                let candle = candle_nn::ops::layer_norm(&x, &w, &b, 1e-5).unwrap();
                assert!(max_rel(&got, &candle) < 1e-5, "candle {rows}x{n}");
            }
        }
        // Not contiguous, or another dtype: left to candle.
        let x = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(layer_norm(&x.t().unwrap(), &w, &w, 1e-5).unwrap().is_none());
        let x64 = Tensor::zeros((2, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
        assert!(layer_norm(&x64, &w, &w, 1e-5).unwrap().is_none());
    }

    /// The in-place residual add is bitwise candle's `x + y` (several chunks and a remainder),
    /// and refuses mismatched shapes.
    #[test]
    fn add_inplace_is_candles_add() {
        let mut rng = crate::rng::Rng::new(29);
        for shape in [[1usize, 3], [70, 768], [3, 11_000], [200, 768]] {
            let x = randn(&mut rng, 1.0, &shape);
            let y = randn(&mut rng, 1.0, &shape);
            let want: Vec<Vec<f32>> = (&x + &y).unwrap().to_vec2().unwrap();
            let got: Vec<Vec<f32>> = add_inplace(y.copy().unwrap(), &x)
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(got, want);
        }
        let x = randn(&mut rng, 1.0, &[2, 3]);
        let y = randn(&mut rng, 1.0, &[3, 2]);
        assert!(add_inplace(y, &x).is_err());
    }
}
