//! Weight formats of the CPU forward: f32 (as loaded), bf16 and Q8_0-style int8, their encoding
//! at load and their decoding into f32 blocks for [`crate::cpu_gemm`]'s kernels.
//!
//! The compressed formats exist for memory (bf16: half of f32; int8: 1.125 bytes per weight,
//! 0.28x) and for memory-bound products (ARM decoding, one row per step). The arithmetic stays
//! f32: a block of weights is decoded into an L1/L2-resident f32 buffer just before the register
//! kernels use it, so the products are bitwise those of the f32 kernels on the decoded weights
//! (tested), and quality is that of the rounded weights alone (activations are not quantised).
//! For one to three rows (the ARM steps) [`crate::cpu_gemv`] widens the weights in registers
//! instead of through the buffer, with the same arithmetic (bitwise, tested).
//! Where the CPU kernels run (AVX2 or AVX-512), the int8 projections run on
//! [`crate::cpu_int8`]'s integer dot products instead (activations quantised per block of 32:
//! `vpdpbusd` on AVX-512 VNNI, `vpmaddubsw` on AVX2); this path remains for the portable kernels
//! and for `DIFFUGPT_CPU_INT8=decode`. Likewise bf16 on CPUs where `vdpbf16ps` is fast ([`crate::cpu_bf16`]: AMD Zen 4, twice
//! the f32 FMA rate; not the Intel Xeon tried, half of it — there bf16 stays on this path).
//!
//! Layouts (all little-endian, rank 3 for projections so that the model can tell them apart):
//! * projections, bf16: [`crate::cpu_gemm::pack_nn`]'s strips `[ceil(N/32), K, 32]` as bf16,
//!   each strip's depth rows in pairs (each column's two values of a pair adjacent: one 32-bit
//!   lane of `vdpbf16ps`), an odd last row plain (`bf16_pair_index`);
//! * projections, int8: per strip, per block of `QK` (32) depth rows, 32 f32 scales (one per
//!   column) then the `32 x 32` int8 values in the order `vpdpbusd` reads them — groups of four
//!   depth rows, in each group the 32 columns' four values contiguous (byte `(r / 4) * 128 +
//!   c * 4 + r % 4`) — each stored plus 128 (XOR `0x80`: unsigned, the operand `vpdpbusd`
//!   takes unsigned): `[ceil(N/32), ceil(K/32), Q8_STRIP_BLOCK]` bytes. Scale = max |w| / 127
//!   over the block's column, values rounded to nearest;
//! * head (`[N, K]` rows, the tied embedding), f32: the strips of the `[K, N]` weight it
//!   multiplies as, [`crate::cpu_gemm::pack_nn`]'s layout `[ceil(N/32), K, 32]` with the last
//!   strip zero-padded ([`Rows::F32Strips`]; the loader converts in place, strip by strip), so
//!   that the head runs on the projections' kernels; bf16: `[N, K]` — or, where the `vdpbf16ps`
//!   kernels run, the strips of the `[K, N]` weight in the projections' pair order, the last
//!   strip compact ([`Rows::Bf16Strips`], same size); int8: per row, per block of 32
//!   along `K`, one f32 scale then 32 int8 values (llama.cpp's Q8_0 with an f32 scale):
//!   `[N, ceil(K/32) * Q8_ROW_BLOCK]` bytes. Where [`crate::cpu_int8`]'s integer kernels run, the
//!   int8 head is kept instead as the strips of the `[K, N]` weight it multiplies as (the same
//!   per-row, per-32 blocks: identical values and scales), in the projections' `vpdpbusd` order,
//!   the last strip compact (`N % 32` columns: 36 bytes per column and block, no padding), so
//!   that the head runs on the same kernels; same size ([`Rows::Int8Strips`]).
//!
//! Depth beyond `K` in the last block is zero-padded.

use half::bf16;

/// Depth rows (or, for the head, elements along `K`) per int8 block sharing one scale.
/// (Crate-private, as the two below: cbindgen would otherwise export them into the C header.)
pub(crate) const QK: usize = 32;
/// Columns per strip (as [`crate::cpu_gemm::pack_nn`]).
const NR: usize = crate::cpu_gemm::STRIP;
/// Bytes of one int8 strip block: `NR` f32 scales and `QK x NR` values.
pub(crate) const Q8_STRIP_BLOCK: usize = NR * 4 + QK * NR;
/// Bytes of one int8 head-row block: an f32 scale and `QK` values.
pub(crate) const Q8_ROW_BLOCK: usize = 4 + QK;

/// How the CPU forward stores the projection and head weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As loaded (converted to f32).
    #[default]
    F32,
    /// bf16 (round to nearest even), decoded to f32 in registers' reach.
    Bf16,
    /// int8 with one f32 scale per 32 weights (Q8_0-like).
    Int8,
}

impl WeightFormat {
    /// The names the CLI (`--dtype`), the C API and reports use.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
        }
    }

    /// Parses `f32`, `bf16`, `int8` (or `q8_0`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(WeightFormat::F32),
            "bf16" => Some(WeightFormat::Bf16),
            "int8" | "q8_0" => Some(WeightFormat::Int8),
            _ => None,
        }
    }
}

/// Strip weights in one of the formats, as [`crate::cpu_gemm::matmul_strips_with`] reads them.
#[derive(Clone, Copy, Debug)]
pub enum Strips<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    Int8(&'a [u8]),
}

impl Strips<'_> {
    /// The element count (f32, bf16) or byte count (int8) a `k x n` weight needs.
    pub fn expected_len(&self, k: usize, n: usize) -> usize {
        match self {
            Strips::F32(_) | Strips::Bf16(_) => crate::cpu_gemm::packed_len(k, n),
            Strips::Int8(_) => n.div_ceil(NR) * k.div_ceil(QK) * Q8_STRIP_BLOCK,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Strips::F32(v) => v.len(),
            Strips::Bf16(v) => v.len(),
            Strips::Int8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `k0..k0 + kc` of strip `s` (of a `k`-deep weight) as f32, `kc x NR`, into `out`.
    /// `k0` is a multiple of `QK` (32) (the callers decode whole strips or `KC_PACK` blocks).
    pub fn decode(&self, s: usize, k: usize, k0: usize, kc: usize, out: &mut [f32]) {
        debug_assert!(k0.is_multiple_of(QK) && k0 + kc <= k && out.len() >= kc * NR);
        match *self {
            Strips::F32(w) => out[..kc * NR].copy_from_slice(&w[(s * k + k0) * NR..][..kc * NR]),
            Strips::Bf16(w) => bf16_pairs_to_f32(&w[s * k * NR..][..k * NR], k, k0, kc, out),
            Strips::Int8(w) => {
                let blocks = k.div_ceil(QK);
                let mut done = 0;
                while done < kc {
                    let b = (k0 + done) / QK;
                    let rows = QK.min(kc - done);
                    let blk = &w[(s * blocks + b) * Q8_STRIP_BLOCK..][..Q8_STRIP_BLOCK];
                    let (scales, vals) = blk.split_at(NR * 4);
                    let mut sc = [0f32; NR];
                    for (c, s4) in sc.iter_mut().zip(scales.chunks_exact(4)) {
                        *c = f32::from_le_bytes([s4[0], s4[1], s4[2], s4[3]]);
                    }
                    int8_rows_to_f32(vals, rows, &sc, &mut out[done * NR..][..rows * NR]);
                    done += rows;
                }
            }
        }
    }
}

/// Head rows (`[N, K]`) in one of the formats.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    /// f32 in [`crate::cpu_gemm::pack_nn`]'s strips of the `[K, N]` weight ([`rows_to_f32_strips`],
    /// the last strip zero-padded to 32 columns): the projections' layout, so that the head runs
    /// on the same pre-packed kernels.
    F32Strips(&'a [f32]),
    Bf16(&'a [bf16]),
    Int8(&'a [u8]),
    /// bf16 in the strip order of [`rows_to_bf16_strips`] (for the `vdpbf16ps` kernels).
    Bf16Strips(&'a [bf16]),
    /// int8 in the strip order of [`rows_to_int8_strips`] (for [`crate::cpu_int8`]'s kernels).
    Int8Strips(&'a [u8]),
}

impl Rows<'_> {
    /// The element (byte, for int8) count of `n` rows of `k`.
    pub fn expected_len(&self, k: usize, n: usize) -> usize {
        match self {
            Rows::F32(_) | Rows::Bf16(_) | Rows::Bf16Strips(_) => n * k,
            Rows::F32Strips(_) => crate::cpu_gemm::packed_len(k, n),
            Rows::Int8(_) | Rows::Int8Strips(_) => n * k.div_ceil(QK) * Q8_ROW_BLOCK,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Rows::F32(v) | Rows::F32Strips(v) => v.len(),
            Rows::Bf16(v) | Rows::Bf16Strips(v) => v.len(),
            Rows::Int8(v) | Rows::Int8Strips(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `r0..r0 + rows` (each `k` long) as f32 into `out` (`rows x k`).
    pub fn decode(&self, k: usize, r0: usize, rows: usize, out: &mut [f32]) {
        debug_assert!(out.len() >= rows * k);
        match *self {
            Rows::F32(w) => out[..rows * k].copy_from_slice(&w[r0 * k..][..rows * k]),
            Rows::Bf16(w) => bf16_to_f32(&w[r0 * k..][..rows * k], &mut out[..rows * k]),
            Rows::Int8(w) => {
                let row_bytes = k.div_ceil(QK) * Q8_ROW_BLOCK;
                int8_head_rows_to_f32(
                    &w[r0 * row_bytes..][..rows * row_bytes],
                    k,
                    &mut out[..rows * k],
                );
            }
            Rows::F32Strips(w) => {
                // A gather (one value per 128-byte strip row): fine for the embedding's rows
                // and the copies that read weights by name.
                for (i, o) in out[..rows * k].chunks_exact_mut(k).enumerate() {
                    let v = r0 + i;
                    let strip = &w[(v / NR) * NR * k..][..NR * k];
                    for (r, x) in o.iter_mut().enumerate() {
                        *x = strip[r * NR + v % NR];
                    }
                }
            }
            Rows::Bf16Strips(w) => {
                // A gather, as for int8 below.
                let n = w.len() / k;
                for (i, o) in out[..rows * k].chunks_exact_mut(k).enumerate() {
                    let v = r0 + i;
                    let (s, c) = (v / NR, v % NR);
                    let lc = NR.min(n - s * NR);
                    let strip = &w[s * NR * k..][..lc * k];
                    for (r, x) in o.iter_mut().enumerate() {
                        *x = strip[bf16_pair_index(r, c, lc, k)].to_f32();
                    }
                }
            }
            Rows::Int8Strips(w) => {
                // A gather (four bytes of a column per 4 x 32-byte group): fine for the
                // embedding's few rows per step and for the copies that read weights by name.
                let n = w.len() / (k.div_ceil(QK) * Q8_ROW_BLOCK);
                for (i, o) in out[..rows * k].chunks_exact_mut(k).enumerate() {
                    let v = r0 + i;
                    let (s, c) = (v / NR, v % NR);
                    let lc = NR.min(n - s * NR);
                    let strip = &w[s * k.div_ceil(QK) * Q8_STRIP_BLOCK..];
                    for (b, ob) in o.chunks_mut(QK).enumerate() {
                        let blk = &strip[b * lc * Q8_ROW_BLOCK..][..lc * Q8_ROW_BLOCK];
                        let sc = f32::from_le_bytes(blk[c * 4..c * 4 + 4].try_into().unwrap());
                        let vals = &blk[lc * 4..];
                        for (kk, x) in ob.iter_mut().enumerate() {
                            let q = vals[(kk / 4) * lc * 4 + c * 4 + kk % 4] ^ 0x80;
                            *x = sc * (q as i8) as f32;
                        }
                    }
                }
            }
        }
    }
}

/// bf16 to f32: the bf16 bits are the f32's upper half (exact).
fn bf16_to_f32(src: &[bf16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_gemm::isa() >= crate::cpu_gemm::Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (isa() never exceeds what it detects).
        unsafe { bf16_to_f32_avx2(src, out) };
        return;
    }
    bf16_to_f32_body(src, out)
}

#[inline(always)]
fn bf16_to_f32_body(src: &[bf16], out: &mut [f32]) {
    for (o, s) in out.iter_mut().zip(src) {
        *o = f32::from_bits((s.to_bits() as u32) << 16);
    }
}

/// The same loop compiled for AVX2, which LLVM vectorises (zero-extend and shift, 8 per op).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_to_f32_avx2(src: &[bf16], out: &mut [f32]) {
    bf16_to_f32_body(src, out)
}

/// Where depth row `r`, column `c` of a bf16 strip of `lc` columns and depth `k` is stored: the
/// depth rows in pairs, each column's pair contiguous (the two bf16 halves of one 32-bit lane,
/// the order `vdpbf16ps` multiplies them in), an odd last row plain after the pairs.
#[inline]
pub(crate) fn bf16_pair_index(r: usize, c: usize, lc: usize, k: usize) -> usize {
    if k % 2 == 1 && r + 1 == k {
        r * lc + c
    } else {
        ((r / 2) * lc + c) * 2 + r % 2
    }
}

/// Depth rows `k0..k0 + kc` (`k0` even) of one bf16 strip in pair order (`strip`: all `k` rows
/// of 32 columns) as f32, `kc x NR`, into `out`.
fn bf16_pairs_to_f32(strip: &[bf16], k: usize, k0: usize, kc: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_gemm::isa() >= crate::cpu_gemm::Isa::Avx2 {
        // SAFETY: as in `bf16_to_f32`.
        unsafe { bf16_pairs_to_f32_avx2(strip, k, k0, kc, out) };
        return;
    }
    bf16_pairs_to_f32_body(strip, k, k0, kc, out)
}

#[inline(always)]
fn bf16_pairs_to_f32_body(strip: &[bf16], k: usize, k0: usize, kc: usize, out: &mut [f32]) {
    debug_assert!(k0.is_multiple_of(2) && k0 + kc <= k && out.len() >= kc * NR);
    let f = |b: bf16| f32::from_bits((b.to_bits() as u32) << 16);
    let paired = k - k % 2;
    let mut r = 0;
    // Whole pairs: one 64-element run of the strip gives two depth rows.
    while r + 1 < kc && k0 + r + 1 < paired {
        let pairs = &strip[(k0 + r) * NR..][..2 * NR];
        let (even, odd) = out[r * NR..][..2 * NR].split_at_mut(NR);
        for ((e, o), p) in even
            .iter_mut()
            .zip(odd.iter_mut())
            .zip(pairs.chunks_exact(2))
        {
            *e = f(p[0]);
            *o = f(p[1]);
        }
        r += 2;
    }
    // A lone row: the first of a pair cut by `kc`, or the plain odd last row.
    if r < kc {
        for (c, o) in out[r * NR..][..NR].iter_mut().enumerate() {
            *o = f(strip[bf16_pair_index(k0 + r, c, NR, k)]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_pairs_to_f32_avx2(strip: &[bf16], k: usize, k0: usize, kc: usize, out: &mut [f32]) {
    bf16_pairs_to_f32_body(strip, k, k0, kc, out)
}

/// The first `rows` depth rows of a block's int8 values (`vpdpbusd` order, biased by 128)
/// times their column's scale, row by row (`rows x NR`).
fn int8_rows_to_f32(vals: &[u8], rows: usize, scales: &[f32; NR], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_gemm::isa() >= crate::cpu_gemm::Isa::Avx2 {
        // SAFETY: as in `bf16_to_f32`.
        unsafe { int8_rows_to_f32_avx2(vals, rows, scales, out) };
        return;
    }
    int8_rows_to_f32_body(vals, rows, scales, out)
}

#[inline(always)]
fn int8_rows_to_f32_body(vals: &[u8], rows: usize, scales: &[f32; NR], out: &mut [f32]) {
    // A group of four depth rows is 128 bytes: column c's four values at c * 4.
    for (g, grp) in vals.chunks_exact(4 * NR).enumerate().take(rows.div_ceil(4)) {
        for j in 0..4.min(rows - 4 * g) {
            let o = &mut out[(4 * g + j) * NR..][..NR];
            for c in 0..NR {
                o[c] = scales[c] * ((grp[c * 4 + j] ^ 0x80) as i8) as f32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn int8_rows_to_f32_avx2(vals: &[u8], rows: usize, scales: &[f32; NR], out: &mut [f32]) {
    int8_rows_to_f32_body(vals, rows, scales, out)
}

/// Whole int8 head rows (`k` each, in [`Q8_ROW_BLOCK`]s) times their block's scale.
fn int8_head_rows_to_f32(w: &[u8], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_gemm::isa() >= crate::cpu_gemm::Isa::Avx2 {
        // SAFETY: as in `bf16_to_f32`.
        unsafe { int8_head_rows_to_f32_avx2(w, k, out) };
        return;
    }
    int8_head_rows_to_f32_body(w, k, out)
}

#[inline(always)]
fn int8_head_rows_to_f32_body(w: &[u8], k: usize, out: &mut [f32]) {
    let row_bytes = k.div_ceil(QK) * Q8_ROW_BLOCK;
    for (row, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(k)) {
        for (blk, oc) in row.chunks_exact(Q8_ROW_BLOCK).zip(o.chunks_mut(QK)) {
            let s = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
            for (v, q) in oc.iter_mut().zip(&blk[4..]) {
                *v = s * (*q as i8) as f32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn int8_head_rows_to_f32_avx2(w: &[u8], k: usize, out: &mut [f32]) {
    int8_head_rows_to_f32_body(w, k, out)
}

/// f32 to bf16, round to nearest even (NaN stays NaN).
pub fn to_bf16(w: &[f32]) -> Vec<bf16> {
    w.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// Strip-packed f32 (`pack_nn`'s layout) of a `k x n` weight to bf16 strips in pair order
/// (each column's two values of a pair adjacent, an odd last row plain); same length.
pub fn strips_to_bf16(packed: &[f32], k: usize, n: usize) -> Vec<bf16> {
    assert_eq!(packed.len(), crate::cpu_gemm::packed_len(k, n));
    let mut out = vec![bf16::ZERO; packed.len()];
    for (src, dst) in packed
        .chunks_exact(k * NR)
        .zip(out.chunks_exact_mut(k * NR))
    {
        for r in 0..k {
            for c in 0..NR {
                dst[bf16_pair_index(r, c, NR, k)] = bf16::from_f32(src[r * NR + c]);
            }
        }
    }
    out
}

/// `[n, k]` f32 rows to [`Rows::Bf16Strips`]: the strips of the `[k, n]` weight they multiply
/// as, in pair order, the last strip compact (its `n % 32` columns only); `n * k` values.
pub fn rows_to_bf16_strips(w: &[f32], k: usize, n: usize) -> Vec<bf16> {
    assert_eq!(w.len(), n * k);
    let mut out = vec![bf16::ZERO; n * k];
    for s in 0..n.div_ceil(NR) {
        let lc = NR.min(n - s * NR);
        let strip = &mut out[s * NR * k..][..lc * k];
        for c in 0..lc {
            for (r, &v) in w[(s * NR + c) * k..][..k].iter().enumerate() {
                strip[bf16_pair_index(r, c, lc, k)] = bf16::from_f32(v);
            }
        }
    }
    out
}

/// `[n, k]` f32 rows to [`Rows::F32Strips`]: `pack_nn` of the `[k, n]` weight they multiply as
/// (the transpose is never materialised), `crate::cpu_gemm::packed_len(k, n)` values.
pub fn rows_to_f32_strips(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.len(), n * k);
    let mut v = Vec::with_capacity(crate::cpu_gemm::packed_len(k, n));
    v.extend_from_slice(w);
    rows_into_f32_strips(v, k, n)
}

/// [`rows_to_f32_strips`] in place: strip `s` of the `[k, n]` weight is rows `32 s .. 32 s + 32`
/// of `w`, which occupy the same `32 k` values as the strip does, so each is transposed within
/// its own span through a one-strip scratch (96 KiB for GPT-2) and the loader never holds the
/// head twice (154 MB for GPT-2); the last strip grows into its zero padding.
pub fn rows_into_f32_strips(mut w: Vec<f32>, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.len(), n * k);
    if k == 0 {
        return w;
    }
    w.resize(crate::cpu_gemm::packed_len(k, n), 0.0);
    let mut scratch = vec![0f32; NR * k];
    for (s, strip) in w.chunks_exact_mut(NR * k).enumerate() {
        let lc = NR.min(n - s * NR);
        scratch[..lc * k].copy_from_slice(&strip[..lc * k]);
        if lc < NR {
            // Only the last strip has columns that no row fills: its padding.
            strip.fill(0.0);
        }
        // Column by column: each reads one row of the scratch and writes every 32nd value.
        for (c, row) in scratch[..lc * k].chunks_exact(k).enumerate() {
            for (r, &v) in row.iter().enumerate() {
                strip[r * NR + c] = v;
            }
        }
    }
    w
}

/// One scale and the rounded values for `vals` (at most [`QK`]): scale = max |v| / 127.
fn quantize_block(vals: impl Iterator<Item = f32> + Clone) -> (f32, impl Iterator<Item = i8>) {
    let amax = vals.clone().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    (
        scale,
        vals.map(move |v| (v * inv).round().clamp(-127.0, 127.0) as i8),
    )
}

/// Strip-packed f32 (`pack_nn`'s layout) of a `k x n` weight to the int8 strip layout.
pub fn strips_to_int8(packed: &[f32], k: usize, n: usize) -> Vec<u8> {
    assert_eq!(packed.len(), crate::cpu_gemm::packed_len(k, n));
    let (strips, blocks) = (n.div_ceil(NR), k.div_ceil(QK));
    let mut out = vec![0u8; strips * blocks * Q8_STRIP_BLOCK];
    for s in 0..strips {
        let strip = &packed[s * k * NR..][..k * NR];
        for b in 0..blocks {
            let rows = QK.min(k - b * QK);
            let blk = &mut out[(s * blocks + b) * Q8_STRIP_BLOCK..][..Q8_STRIP_BLOCK];
            let (scales, vals) = blk.split_at_mut(NR * 4);
            // Zero is 0x80 biased: the depth padding of a last block.
            vals.fill(0x80);
            for c in 0..NR {
                let col = (0..rows).map(|r| strip[(b * QK + r) * NR + c]);
                let (scale, q) = quantize_block(col);
                scales[c * 4..c * 4 + 4].copy_from_slice(&scale.to_le_bytes());
                for (r, q) in q.enumerate() {
                    vals[(r / 4) * NR * 4 + c * 4 + r % 4] = (q as u8) ^ 0x80;
                }
            }
        }
    }
    out
}

/// `[n, k]` f32 rows to the int8 row layout.
pub fn rows_to_int8(w: &[f32], k: usize, n: usize) -> Vec<u8> {
    assert_eq!(w.len(), n * k);
    let row_bytes = k.div_ceil(QK) * Q8_ROW_BLOCK;
    let mut out = vec![0u8; n * row_bytes];
    for (row, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(row_bytes)) {
        for (vals, blk) in row.chunks(QK).zip(o.chunks_exact_mut(Q8_ROW_BLOCK)) {
            let (scale, q) = quantize_block(vals.iter().copied());
            blk[..4].copy_from_slice(&scale.to_le_bytes());
            for (d, q) in blk[4..].iter_mut().zip(q) {
                *d = q as u8;
            }
        }
    }
    out
}

/// `[n, k]` f32 rows (`k` a multiple of 32) to [`Rows::Int8Strips`]: the row layout's
/// blocks (one scale per row per 32 along `K`, the same values) rearranged as the strips of the
/// `[k, n]` weight: per strip of 32 rows (the last one `n % 32`, compact), per block, the
/// strip's scales then its values in `vpdpbusd` order biased by 128.
pub fn rows_to_int8_strips(w: &[f32], k: usize, n: usize) -> Vec<u8> {
    assert_eq!(w.len(), n * k);
    assert!(
        k.is_multiple_of(QK),
        "int8 strips need K a multiple of {QK}"
    );
    let blocks = k / QK;
    let mut out = vec![0x80u8; n * blocks * Q8_ROW_BLOCK];
    for s in 0..n.div_ceil(NR) {
        let lc = NR.min(n - s * NR);
        let strip = &mut out[s * blocks * Q8_STRIP_BLOCK..];
        for b in 0..blocks {
            let blk = &mut strip[b * lc * Q8_ROW_BLOCK..][..lc * Q8_ROW_BLOCK];
            let (scales, vals) = blk.split_at_mut(lc * 4);
            for c in 0..lc {
                let row = &w[(s * NR + c) * k + b * QK..][..QK];
                let (scale, q) = quantize_block(row.iter().copied());
                scales[c * 4..c * 4 + 4].copy_from_slice(&scale.to_le_bytes());
                for (kk, q) in q.enumerate() {
                    vals[(kk / 4) * lc * 4 + c * 4 + kk % 4] = (q as u8) ^ 0x80;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).signed_vec(len)
    }

    #[test]
    fn names_round_trip() {
        for f in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
            assert_eq!(WeightFormat::parse(f.name()), Some(f));
        }
        assert_eq!(WeightFormat::parse("q8_0"), Some(WeightFormat::Int8));
        assert_eq!(WeightFormat::parse("f16"), None);
    }

    /// Decoding gives back each weight within half a quantisation step of its block (int8) or
    /// bf16's relative rounding (2^-9), for a depth that is not a multiple of 32 and a ragged
    /// last strip; and the decoded blocks at any `QK`-aligned depth offset agree with the whole.
    #[test]
    fn decoded_strips_and_rows_are_within_rounding() {
        let (k, n) = (77, 45);
        let w = rand_vec(k * n, 7);
        let packed = crate::cpu_gemm::pack_nn(&w, k, n);
        let b = strips_to_bf16(&packed, k, n);
        let q = strips_to_int8(&packed, k, n);
        for (fmt, strips) in [("bf16", Strips::Bf16(&b)), ("int8", Strips::Int8(&q))] {
            assert_eq!(strips.len(), strips.expected_len(k, n), "{fmt}");
            for s in 0..n.div_ceil(NR) {
                let mut whole = vec![0f32; k * NR];
                strips.decode(s, k, 0, k, &mut whole);
                for r in 0..k {
                    for c in 0..NR {
                        let want = packed[(s * k + r) * NR + c];
                        let got = whole[r * NR + c];
                        let tol = match fmt {
                            "bf16" => want.abs() / 256.0,
                            // Half a step of the column's block; the block max is <= 1.
                            _ => 0.5 / 127.0 + 1e-6,
                        };
                        assert!(
                            (got - want).abs() <= tol,
                            "{fmt} s{s} r{r} c{c}: {got} vs {want}"
                        );
                    }
                }
                let mut part = vec![0f32; 40 * NR];
                strips.decode(s, k, 32, 40, &mut part);
                assert_eq!(part, whole[32 * NR..72 * NR], "{fmt} offset block");
            }
        }
        let rb = to_bf16(&w);
        let rq = rows_to_int8(&w, n, k); // k rows of n
        for (fmt, rows) in [("bf16", Rows::Bf16(&rb)), ("int8", Rows::Int8(&rq))] {
            assert_eq!(rows.len(), rows.expected_len(n, k), "{fmt}");
            let mut out = vec![0f32; 3 * n];
            rows.decode(n, 5, 3, &mut out);
            for (i, (&got, &want)) in out.iter().zip(&w[5 * n..8 * n]).enumerate() {
                let tol = if fmt == "bf16" {
                    want.abs() / 256.0
                } else {
                    0.5 / 127.0 + 1e-6
                };
                assert!((got - want).abs() <= tol, "{fmt} {i}: {got} vs {want}");
            }
        }
    }

    /// The strip-ordered head holds exactly the row layout's values: decoding any rows of
    /// either gives the same floats, with a compact last strip (45 = 32 + 13 rows).
    #[test]
    fn int8_head_strips_decode_like_rows() {
        let (k, n) = (64, 45);
        let w = rand_vec(k * n, 9);
        let (rq, sq) = (rows_to_int8(&w, k, n), rows_to_int8_strips(&w, k, n));
        assert_eq!(sq.len(), Rows::Int8Strips(&sq).expected_len(k, n));
        for (r0, rows) in [(0, n), (31, 3), (44, 1)] {
            let mut a = vec![0f32; rows * k];
            let mut b = vec![1f32; rows * k];
            Rows::Int8(&rq).decode(k, r0, rows, &mut a);
            Rows::Int8Strips(&sq).decode(k, r0, rows, &mut b);
            assert_eq!(a, b, "rows {r0}..{}", r0 + rows);
        }
    }

    /// The bf16 strip-ordered head holds exactly the row layout's values (odd depth: a plain
    /// last row; compact last strip of 13 rows).
    #[test]
    fn bf16_head_strips_decode_like_rows() {
        for (k, n) in [(64, 45), (77, 45), (1, 33)] {
            let w = rand_vec(k * n, 9);
            let (rb, sb) = (to_bf16(&w), rows_to_bf16_strips(&w, k, n));
            assert_eq!(sb.len(), Rows::Bf16Strips(&sb).expected_len(k, n));
            for (r0, rows) in [(0, n), (30, 3), (n - 1, 1)] {
                let mut a = vec![0f32; rows * k];
                let mut b = vec![1f32; rows * k];
                Rows::Bf16(&rb).decode(k, r0, rows, &mut a);
                Rows::Bf16Strips(&sb).decode(k, r0, rows, &mut b);
                assert_eq!(a, b, "k {k} rows {r0}..{}", r0 + rows);
            }
        }
    }

    /// The f32 strip head is `pack_nn` of the transposed rows (padding zero), and decoding any
    /// rows of it gives the rows back exactly (a padded last strip of 13 columns; odd depth).
    #[test]
    fn f32_head_strips_are_the_packed_transpose_and_decode_like_rows() {
        for (k, n) in [(64, 45), (77, 45), (1, 33), (5, 32)] {
            let w = rand_vec(k * n, 9);
            let s = rows_to_f32_strips(&w, k, n);
            assert_eq!(s.len(), Rows::F32Strips(&s).expected_len(k, n));
            let mut t = vec![0f32; k * n];
            for (j, row) in w.chunks_exact(k).enumerate() {
                for (r, &v) in row.iter().enumerate() {
                    t[r * n + j] = v;
                }
            }
            assert_eq!(s, crate::cpu_gemm::pack_nn(&t, k, n), "k {k} n {n}");
            for (r0, rows) in [(0, n), (n - 3, 3), (n - 1, 1)] {
                let mut b = vec![f32::NAN; rows * k];
                Rows::F32Strips(&s).decode(k, r0, rows, &mut b);
                assert_eq!(
                    b,
                    w[r0 * k..(r0 + rows) * k],
                    "k {k} rows {r0}..{}",
                    r0 + rows
                );
            }
        }
    }

    /// An all-zero block has scale 0 and decodes to zeros (no division by zero, no NaN).
    #[test]
    fn zero_blocks_stay_zero() {
        let (k, n) = (32, 32);
        let packed = vec![0f32; crate::cpu_gemm::packed_len(k, n)];
        let q = strips_to_int8(&packed, k, n);
        let mut out = vec![1f32; k * NR];
        Strips::Int8(&q).decode(0, k, 0, k, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
