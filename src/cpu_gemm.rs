//! Small-canvas matrix products for the inference forward on x86-64 CPUs with AVX-512 or
//! AVX2+FMA ([`isa`] picks; the measured figures below are AVX-512 on Zen 4 unless marked).
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
//!   along `K`, 4 rows x 4 vocabulary entries per register block (AVX2: 3 x 4), their
//!   horizontal sums done as one transpose-and-add tree, the next group of vocabulary rows
//!   prefetched while this one computes (measured at 64 rows: 148 -> 170-180 GFLOP/s).
//!
//! From `PACK_MIN_ROWS` rows on both switch to cache-blocked loops ([`Driver`]): the panel loops
//! copy the weights block by block (`256 x 128`) into a contiguous buffer — transposed on the way
//! for the head — so that with many rows neither the partial sums nor the activations are
//! streamed from L3 again for every block of `K` (measured: 150-165 -> 185-200 GFLOP/s at 1024
//! rows); the blocked loops (BLIS's order, blocks sized from the CPU's caches) also keep each
//! strip's block of weights in L1 across the row blocks, for CPUs whose FMA rate outruns L2
//! (Intel's two 512-bit pipes). Under AVX2 the head keeps its dot tiles instead, on 64-row
//! chunks (measured faster there).
//!
//! A loaded model goes one step further for its block projections: [`pack_nn`] rewrites each
//! `[in, out]` weight once, in place of the original, into strips of 32 columns that are
//! contiguous over all of `K`, and [`matmul_prepacked`] streams them (no strided walk, no copy,
//! no partial sums through memory on short canvases) with bitwise the same results.
//!
//! The cache-level loops exist once (`drivers`, generic over the `Kernels` of an instruction
//! set); only the register blocks differ per instruction set. All paths split the output columns
//! across rayon's threads; `tests` below check every instruction set the CPU has against a plain
//! triple loop on random shapes, remainders included, and `tests/parity.rs` the whole forward
//! against candle's plain ops.

use rayon::prelude::*;

/// The environment variable that forces a CPU kernel path: `auto` (default: the widest
/// instruction set the CPU has), `avx512`, `avx2` (the AVX2+FMA kernels, also on an AVX-512
/// CPU), `generic` (candle's GEMM and the portable row kernels, as on a CPU without AVX2).
/// Asking for more than the CPU has falls back to the best it has, with a note on stderr. Read
/// once per process; it lets the tests run every path on whatever machine CI has.
pub const KERNELS_ENV: &str = "DIFFUGPT_CPU_KERNELS";

/// The instruction set the CPU kernels run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No kernels of our own: candle's GEMM and the portable row kernels.
    Generic,
    /// 256-bit AVX2 with FMA (every x86-64 CPU since Haswell / Zen 1, and AVX-512 CPUs that a
    /// hypervisor shows without it).
    Avx2,
    /// AVX-512F.
    Avx512,
}

impl Isa {
    /// The name [`KERNELS_ENV`] takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Every instruction set this CPU can run, narrowest first (`Generic` always).
    pub fn supported() -> Vec<Isa> {
        [Isa::Generic, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= detected())
            .collect()
    }
}

/// The kernels' instruction set for this process: the widest the CPU has, or what
/// [`KERNELS_ENV`] asks for (never more than the CPU has). The one switch for the CPU forward's
/// kernels (weight packing, projections, head, attention products, row kernels).
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detected();
        let want = match std::env::var(KERNELS_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") => best,
            Ok("generic") => Isa::Generic,
            Ok("avx2") => Isa::Avx2,
            Ok("avx512") => Isa::Avx512,
            Ok(other) => {
                eprintln!(
                    "note: {KERNELS_ENV}={other:?} is not one of auto, generic, avx2, avx512: using auto"
                );
                best
            }
        };
        if want > best {
            eprintln!(
                "note: {KERNELS_ENV}={} but this CPU's widest is {}: using {}",
                want.name(),
                best.name(),
                best.name()
            );
        }
        want.min(best)
    })
}

/// Whether the kernels of this module run ([`isa`] is not `Generic`).
pub fn available() -> bool {
    isa() != Isa::Generic
}

/// The widest instruction set this CPU has that the kernels are written for.
fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            Isa::Avx512
        } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            Isa::Avx2
        } else {
            Isa::Generic
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isa::Generic
    }
}

/// Below this many rows (ARM decoding with a KV cache: one row) a matrix-vector product is
/// memory-bound and candle's GEMV is faster (measured: 0.3-0.6x of it at one row); from 4 rows
/// on these kernels win. (Crate-private: cbindgen would otherwise export it into the C header.)
pub(crate) const MIN_ROWS: usize = 4;

/// Output columns per strip of [`matmul_nn`] (two AVX-512 registers, four AVX2 ones).
const NR: usize = 32;

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

/// Runs a generic driver of [`drivers`] with the register kernels of `isa`. Off x86-64 only
/// `Generic` exists, which never reaches a driver (the entry points check [`runnable`]).
macro_rules! with_kernels {
    ($isa:expr, $f:ident ( $($a:expr),* $(,)? )) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                if avx512_rows() == MR_AVX512_WIDE {
                    drivers::$f::<x86::Avx512<MR_AVX512_WIDE>>($($a),*)
                } else {
                    drivers::$f::<x86::Avx512<MR_AVX512>>($($a),*)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => drivers::$f::<x86::Avx2>($($a),*),
            other => unreachable!("no {} kernels on this target", other.name()),
        }
    };
}

/// Whether `isa` has kernels and this CPU can run them: the check that keeps every unsafe
/// kernel below from executing instructions the CPU lacks.
fn runnable(isa: Isa) -> bool {
    isa != Isa::Generic && isa <= detected()
}

/// Masks of the two 16-lane halves of a strip with `cols <= 32` columns (AVX-512 `__mmask16`s;
/// also [`crate::cpu_int8`]'s).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn strip_masks(cols: usize) -> (u16, u16) {
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

/// The environment variable that forces the loops of the many-row products (from
/// `PACK_MIN_ROWS` rows on; shorter canvases always run the strip path): `auto` (default: see
/// `default_driver`), `panel` or `blocked`. Read once per process; the tests run both.
pub const GEMM_ENV: &str = "DIFFUGPT_CPU_GEMM";

/// The cache-level loop order of the many-row products of the Conv1D projections (the register
/// kernels are the same, and so is every result, bitwise: each output is the same chain of fused
/// multiply-adds along `K` from its bias, whatever the blocking; tested). The head keeps its own
/// paths (the dot tiles; AVX-512's panel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Per panel of 128 output columns and 256-deep block of weights (128 KiB, L2): every
    /// register block of activation rows, read in place, runs against the panel's four strips,
    /// which it re-reads from L2.
    Panel,
    /// BLIS's loop order with blocks sized from this CPU's caches ([`crate::cpu_caches`]): a
    /// strip's `kc x 32` weights stay in L1 while every register block of a packed `mc x kc`
    /// block of activation rows (L2) passes over them.
    Blocked,
}

impl Driver {
    /// The name [`GEMM_ENV`] takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Panel => "panel",
            Driver::Blocked => "blocked",
        }
    }
}

/// The many-row driver for this process: [`GEMM_ENV`]'s, or the default for [`isa`].
pub fn driver() -> Driver {
    static D: std::sync::OnceLock<Driver> = std::sync::OnceLock::new();
    *D.get_or_init(|| match std::env::var(GEMM_ENV).as_deref() {
        Err(_) | Ok("") | Ok("auto") => default_driver(isa()),
        Ok("panel") => Driver::Panel,
        Ok("blocked") => Driver::Blocked,
        Ok(other) => {
            eprintln!("note: {GEMM_ENV}={other:?} is not one of auto, panel, blocked: using auto");
            default_driver(isa())
        }
    })
}

/// The loops for `isa`'s kernels on this CPU: [`Driver::Panel`] wherever they were timed.
///
/// On a Zen 3 (AVX2) the blocked loops measured slower: the four projections alone at 1024
/// rows 5-7 % (`kernel_rates`, alternating rounds), the forward at 64 / 256 / 1024 positions
/// 1.06x / 1.07x / 0.99x the panel loops' median time (`benches/README.md`): there the weights'
/// re-reads from L2 (64 bytes per 12 FMAs) are within L2's bandwidth, and the blocked loops pay
/// for their packing and their shallower depth blocks (more partial-sum traffic). They are
/// meant for CPUs whose FMA rate outruns L2 (Intel's two 512-bit pipes: 128 bytes per 16 FMAs
/// in 8 cycles), where they are not yet timed; `DIFFUGPT_CPU_GEMM=blocked` and `benches/ab.sh`
/// compare the two in one command there.
fn default_driver(_isa: Isa) -> Driver {
    Driver::Panel
}

/// The environment variable that forces the rows of the AVX-512 f32 register block: `8` or
/// `14` (default: see [`avx512_rows`]). Read once per process; the tests run both.
pub const AVX512_ROWS_ENV: &str = "DIFFUGPT_CPU_AVX512_ROWS";

/// Rows of the AVX-512 f32 register block in this process (x 32 columns): 14 on Intel, 8
/// elsewhere, unless [`AVX512_ROWS_ENV`] says otherwise.
///
/// Intel's cores have two 512-bit FMA pipes, and with 8 rows (16 accumulators, 128 bytes of
/// weights per 16 FMAs) the weights' re-reads from L2 held them back: on a Xeon (model 167) 14
/// rows (28 accumulators, 128 bytes per 28 FMAs) made the forward 8 % faster at 64 positions
/// and 10 % at 1024 (`benches/ab.sh`, alternating rounds). AMD Zen 4 runs 512-bit FMAs as two
/// 256-bit halves, and its kernels were tuned at 8 rows.
pub fn avx512_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        let default = if cpu_is_intel() {
            MR_AVX512_WIDE
        } else {
            MR_AVX512
        };
        match std::env::var(AVX512_ROWS_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") => default,
            Ok("8") => MR_AVX512,
            Ok("14") => MR_AVX512_WIDE,
            Ok(other) => {
                eprintln!(
                    "note: {AVX512_ROWS_ENV}={other:?} is not one of auto, 8, 14: using auto"
                );
                default
            }
        }
    })
}

/// Whether the CPU's vendor string is Intel's.
fn cpu_is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let id = std::arch::x86_64::__cpuid(0);
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&id.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&id.edx.to_le_bytes());
        v[8..].copy_from_slice(&id.ecx.to_le_bytes());
        &v == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The cache blocking of [`Driver::Blocked`] for `isa`'s register block.
fn blocking(isa: Isa) -> crate::cpu_caches::Blocking {
    let mr = if isa == Isa::Avx512 {
        avx512_rows()
    } else {
        MR_AVX2
    };
    crate::cpu_caches::Blocking::detected(mr)
}

/// A driver and, for [`Driver::Blocked`], its blocks.
#[derive(Clone, Copy, Debug)]
struct Plan {
    driver: Driver,
    blocking: crate::cpu_caches::Blocking,
}

/// This process's [`driver`] with [`blocking`] for `isa`.
fn plan(isa: Isa) -> Plan {
    Plan {
        driver: driver(),
        blocking: blocking(isa),
    }
}

/// `x @ w` (or `x @ w^T` for the head from `PACK_MIN_ROWS` rows on, `src` says) with `plan`'s
/// loops, output columns split across rayon's threads. The callers have checked the sizes and
/// that `isa`'s kernels run here.
#[allow(clippy::too_many_arguments)]
fn strip_products(
    isa: Isa,
    plan: Plan,
    x: &[f32],
    src: Source<'_>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    if k == 0 {
        // No depth, no loop iterations: the bias (or zero) is the whole result.
        for row in out.chunks_exact_mut(n.max(1)) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return;
    }
    let optr = SendPtr(out.as_mut_ptr());
    let strips = n.div_ceil(NR);
    let head = matches!(src, Source::Plain { nt: true, .. });
    if m >= PACK_MIN_ROWS && plan.driver == Driver::Blocked && !head {
        let b = plan.blocking;
        // Two column ranges per thread: each packs every block of `x` once, so fewer tasks
        // copy less (one copy per `32 x strips` products of each activation).
        let per_task = strips.div_ceil(rayon::current_num_threads() * 2).max(1);
        (0..strips.div_ceil(per_task))
            .into_par_iter()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(wbuf, abuf), task| {
                    let o = optr;
                    let s0 = task * per_task;
                    let s1 = ((task + 1) * per_task).min(strips);
                    // SAFETY: `isa`'s kernels run here and the sizes hold (the callers' checks);
                    // this task alone writes columns s0*NR..min(s1*NR, n).
                    unsafe {
                        with_kernels!(
                            isa,
                            blocked(x, src, bias, o.0, m, k, n, s0, s1, b, wbuf, abuf)
                        )
                    };
                },
            );
        return;
    }
    if m >= PACK_MIN_ROWS {
        let copies = !matches!(src, Source::Prepacked(_));
        let panels = n.div_ceil(NC);
        let parts = panel_row_parts(panels, m, rayon::current_num_threads());
        let part_rows = m.div_ceil(parts);
        (0..panels * parts).into_par_iter().for_each_init(
            || {
                if copies {
                    vec![0f32; KC_PACK * NC]
                } else {
                    Vec::new()
                }
            },
            |buf, task| {
                let o = optr;
                let (panel, part) = (task / parts, task % parts);
                let c0 = panel * NC;
                let r0 = part * part_rows;
                let rows = part_rows.min(m - r0);
                // SAFETY: as above; this task alone writes columns c0..c0+NC of rows r0..r0+rows.
                unsafe {
                    with_kernels!(
                        isa,
                        panel(
                            &x[r0 * k..(r0 + rows) * k],
                            src,
                            bias,
                            o.0.add(r0 * n),
                            rows,
                            k,
                            n,
                            c0,
                            NC.min(n - c0),
                            buf
                        )
                    )
                };
            },
        );
        return;
    }
    match src {
        Source::Plain { w, nt: false } => {
            // A few tasks per thread, each a run of whole strips (a column range).
            let per_task = strips.div_ceil(rayon::current_num_threads() * 2).max(1);
            (0..strips.div_ceil(per_task))
                .into_par_iter()
                .for_each(|task| {
                    let o = optr;
                    let s0 = task * per_task;
                    let s1 = ((task + 1) * per_task).min(strips);
                    // SAFETY: as above; this task alone writes columns s0*NR..min(s1*NR, n).
                    unsafe {
                        with_kernels!(
                            isa,
                            columns_nn(x, w, bias, o.0, m, k, n, s0 * NR, (s1 * NR).min(n))
                        )
                    };
                });
        }
        Source::Prepacked(wp) => {
            let (x, ldx) = unaliased_rows(x, m, k);
            let x: &[f32] = &x;
            // Runs of a few strips (each ~30 us at 64 rows), eight per thread: on a shared host
            // a descheduled thread then leaves little work behind it (two per thread measured a
            // few % slower at 64 rows).
            let per_task = strips.div_ceil(rayon::current_num_threads() * 8).max(1);
            (0..strips.div_ceil(per_task))
                .into_par_iter()
                .for_each(|task| {
                    let o = optr;
                    let s0 = task * per_task;
                    let s1 = ((task + 1) * per_task).min(strips);
                    // SAFETY: as above; this task alone writes columns s0*NR..min(s1*NR, n).
                    unsafe {
                        with_kernels!(
                            isa,
                            strips_prepacked(x, ldx, wp, bias, o.0, m, k, n, s0, s1)
                        )
                    };
                });
        }
        Source::Decoded(w) => {
            let (x, ldx) = unaliased_rows(x, m, k);
            let x: &[f32] = &x;
            // One strip per task: decoding it (K x 32) is the task's only memory traffic, and
            // the buffer (96-384 KiB for GPT-2) stays in L2 while every row block runs over it.
            (0..strips).into_par_iter().for_each_init(
                || vec![0f32; k * NR],
                |buf, s| {
                    let o = optr;
                    w.decode(s, k, 0, k, buf);
                    // SAFETY: as above; `buf` holds the strip's K x 32 weights; this task alone
                    // writes columns s*NR..min((s+1)*NR, n).
                    unsafe {
                        with_kernels!(
                            isa,
                            strip_rows(x, ldx, buf.as_ptr(), bias, o.0, m, k, n, s, None)
                        )
                    };
                },
            );
        }
        Source::Plain { nt: true, .. } => {
            unreachable!("the head's dot tiles run below PACK_MIN_ROWS rows")
        }
    }
}

/// Into how many row ranges the panel loops split each panel of `m` rows: enough that there are
/// at least eight tasks per thread (a panel alone is a sixth of GPT-2's 768-column products), so
/// that a thread slowed by another process leaves little behind for the others to wait on; no
/// range under 64 rows. Each range re-reads its panel's weights (from L3 after the first). The
/// rows of a product are independent, so the split leaves every result bitwise the same.
/// Measured on a shared Zen 3 (2 threads, 1024 rows, five runs of 16 alternating calls, order
/// and weights rotated): `mlp.c_proj` medians 0.98-1.44x (median 1.11x) the GFLOP/s of one task
/// per panel, `attn.c_proj` 0.99-1.15x (1.09x), `c_fc` (24 panels: unsplit) 1.00-1.04x.
fn panel_row_parts(panels: usize, m: usize, threads: usize) -> usize {
    (8 * threads)
        .div_ceil(panels.max(1))
        .clamp(1, (m / 64).max(1))
}

/// `x`'s rows and their stride for the short-canvas strip path: `x` itself, or a copy with rows
/// one cache line further apart where its stride is a multiple of 4 KiB (`K` = 1024, 2048,
/// 3072 ...: GPT-2's `mlp.c_proj`).
/// There the register block's rows would share the same L1 sets (4K aliasing) while each strip
/// re-reads them; measured at 64 x 3072 x 768 on a Zen 3 with 2 threads: 104-117 GFLOP/s, and
/// 110-132 with rows 3088 floats apart. The copy (768 KiB) is ~2 % of that product.
fn unaliased_rows(x: &[f32], m: usize, k: usize) -> (std::borrow::Cow<'_, [f32]>, usize) {
    if !k.is_multiple_of(1024) || m < 2 {
        return (std::borrow::Cow::Borrowed(x), k);
    }
    const PAD: [f32; 16] = [0.0; 16];
    let mut p = Vec::with_capacity(m * (k + PAD.len()));
    for row in x.chunks_exact(k) {
        p.extend_from_slice(row);
        p.extend_from_slice(&PAD);
    }
    (std::borrow::Cow::Owned(p), k + PAD.len())
}

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: each task writes a disjoint set of output columns.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The checks every entry point makes before its unsafe kernels run: kernels for `isa` that
/// this CPU can run, each slice of the stated size (`w_len`: what the weight's layout needs for
/// `k` x `n`).
#[allow(clippy::too_many_arguments)]
fn check_args(
    isa: Isa,
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
    assert!(
        runnable(isa),
        "{what}: this CPU cannot run the {} kernels",
        isa.name()
    );
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
/// If the slices do not have the stated sizes or no kernels run here (check [`available`]).
pub fn matmul_nn(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    matmul_nn_with(isa(), x, w, bias, out, m, k, n)
}

/// [`matmul_nn`] with the kernels of `isa` (tests run every one the CPU has).
#[allow(clippy::too_many_arguments)]
pub fn matmul_nn_with(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    check_args(isa, "matmul_nn", x, w, k * n, bias, out, m, k, n);
    let src = Source::Plain { w, nt: false };
    strip_products(isa, plan(isa), x, src, bias, out, m, k, n);
}

/// [`matmul_prepacked`] on the calling thread only, no bias, every register block over all of
/// `K` against its strip (for deep products with few columns inside work that is already
/// parallel: attention's `q @ k^T` and `P @ v`). Bitwise the result of [`matmul_nn`] on the
/// unpacked weights: the same chain of FMAs per output, without partial sums through memory.
///
/// # Panics
/// As [`matmul_prepacked`].
pub fn matmul_prepacked_serial(
    x: &[f32],
    wp: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    matmul_prepacked_serial_with(isa(), x, wp, out, m, k, n)
}

/// [`matmul_prepacked_serial`] with the kernels of `isa`.
pub fn matmul_prepacked_serial_with(
    isa: Isa,
    x: &[f32],
    wp: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    check_args(
        isa,
        "matmul_prepacked_serial",
        x,
        wp,
        packed_len(k, n),
        None,
        out,
        m,
        k,
        n,
    );
    let strips = n.div_ceil(NR);
    // SAFETY: kernels checked; sizes asserted; `out` is exclusively borrowed.
    unsafe {
        with_kernels!(
            isa,
            strips_prepacked(x, k, wp, None, out.as_mut_ptr(), m, k, n, 0, strips)
        )
    };
}

/// Columns per strip of the pre-packed layout ([`pack_nn`]). (Crate-private: cbindgen.)
pub(crate) const STRIP: usize = NR;

/// A vector of `len` f32 written by `fill` through the pointer it is given, never zeroed: for
/// kernel outputs (up to 200 MB of logits on a full canvas), where zeroing first is a serial
/// pass over the memory and its page faults, on the calling thread only.
///
/// # Safety
/// `fill` must write all `len` values (a panic inside it leaves the vector unreturned).
pub(crate) unsafe fn filled_vec(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    fill(v.spare_capacity_mut().as_mut_ptr() as *mut f32);
    // SAFETY: the caller's promise: all `len` values are written.
    unsafe { v.set_len(len) };
    v
}

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
/// [`matmul_nn`], minus the copy. Both add the products in the same order as [`matmul_nn`] with
/// the same kernels, so the results are bitwise equal to it (tested).
///
/// # Panics
/// If the slices do not have the stated sizes or no kernels run here (check [`available`]).
pub fn matmul_prepacked(
    x: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    matmul_prepacked_with(isa(), x, wp, bias, out, m, k, n)
}

/// [`matmul_prepacked`] with the kernels of `isa`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_prepacked_with(
    isa: Isa,
    x: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    check_args(
        isa,
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
    strip_products(isa, plan(isa), x, Source::Prepacked(wp), bias, out, m, k, n);
}

/// `out[M, N] = x[M, K] @ w[N, K]^T`, all row-major and contiguous.
///
/// # Panics
/// If the slices do not have the stated sizes or no kernels run here (check [`available`]).
pub fn matmul_nt(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    matmul_nt_with(isa(), x, w, out, m, k, n)
}

/// [`matmul_nt`] with the kernels of `isa`.
pub fn matmul_nt_with(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    check_args(isa, "matmul_nt", x, w, n * k, None, out, m, k, n);
    if m >= PACK_MIN_ROWS {
        if isa == Isa::Avx512 {
            // The head keeps the panel driver: with `blocked`'s shallow depth blocks its
            // partial sums (4 x 1024 x 50257 bytes at T = 1024) would go through DRAM once per
            // block (measured on Zen 3: 113-131 against the dot tiles' 145-149 GFLOP/s).
            strip_products(
                isa,
                plan(isa),
                x,
                Source::Plain { w, nt: true },
                None,
                out,
                m,
                k,
                n,
            );
        } else {
            // AVX2's 3 x 4 dot tiles beat the packed path's transposing copy at every row count
            // measured (Zen 4 without AVX-512, 128 and 256 rows, three rounds: 117-128 against
            // 87-109 GFLOP/s): run them on chunks of rows whose activations stay in L2.
            let chunk = nt_chunk_rows(m, k);
            for (xc, oc) in x.chunks(chunk * k).zip(out.chunks_mut(chunk * n)) {
                matmul_nt_with(isa, xc, w, oc, xc.len() / k, k, n);
            }
        }
        return;
    }
    const NB: usize = 256;
    let optr = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(NB)).into_par_iter().for_each(|blk| {
        let o = optr;
        let n0 = blk * NB;
        // SAFETY: as in matmul_nn; this task alone writes columns n0..n0+NB.
        unsafe {
            with_kernels!(
                isa,
                block_nt(x, w.as_ptr().add(n0 * k), o.0, m, k, n, n0, NB.min(n - n0))
            )
        };
    });
}

/// [`matmul_prepacked`] for strip weights in any [`crate::cpu_quant`] format: bf16 and int8
/// strips are decoded block by block into an f32 buffer (a whole strip below `PACK_MIN_ROWS`
/// rows, a `KC_PACK`-deep panel block from there on) and the f32 kernels run on it, in the same
/// order as on pre-packed f32 weights: the result is bitwise that of [`matmul_prepacked_with`]
/// on the decoded weights (tested).
///
/// # Panics
/// As [`matmul_prepacked`], the weight length checked against its format.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strips_with(
    isa: Isa,
    x: &[f32],
    w: crate::cpu_quant::Strips<'_>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    use crate::cpu_quant::Strips;
    if let Strips::F32(wp) = w {
        return matmul_prepacked_with(isa, x, wp, bias, out, m, k, n);
    }
    assert_eq!(w.len(), w.expected_len(k, n), "matmul_strips: weight size");
    check_args(isa, "matmul_strips", x, &[], 0, bias, out, m, k, n);
    strip_products(isa, plan(isa), x, Source::Decoded(w), bias, out, m, k, n);
}

/// Activation rows per chunk of the head's dot tiles on `m` rows: chunks of equal size (whole
/// 3-row tiles) no larger than what takes half of L2 (and below `PACK_MIN_ROWS`, so that each
/// chunk runs the tiles). Every chunk streams the whole head (154 MB for GPT-2) from memory once,
/// so fewer, larger chunks stream it less often: on a Zen 3 (512 KiB L2, at most 84 rows) the head
/// at 1024 rows took 448-524 ms (median 480) with 84-row chunks against 506-552 (median 540) with
/// 64-row ones over alternating rounds of `kernel_rates`; equal sizes keep a last chunk of a few
/// rows from streaming the whole head for them.
fn nt_chunk_rows(m: usize, k: usize) -> usize {
    let l2 = crate::cpu_caches::Caches::detected().l2;
    let max = (l2 / 2 / (4 * k.max(1)) / 12 * 12).clamp(12, 120);
    m.div_ceil(m.div_ceil(max).max(1))
        .next_multiple_of(3)
        .min(max + 2)
}

/// [`matmul_nt_with`] for head rows in any [`crate::cpu_quant`] format: blocks of vocabulary
/// rows are decoded into an f32 buffer and the dot tiles run on it; from `PACK_MIN_ROWS` rows on,
/// in chunks of `nt_chunk_rows` activation rows (each decodes the head once more, a few % of
/// its products).
/// Bitwise the result of [`matmul_nt_with`] on the decoded rows below `PACK_MIN_ROWS` rows, and
/// on AVX2 at any row count (tested).
///
/// # Panics
/// As [`matmul_nt`], the weight length checked against its format.
pub fn matmul_nt_rows_with(
    isa: Isa,
    x: &[f32],
    w: crate::cpu_quant::Rows<'_>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    use crate::cpu_quant::Rows;
    if let Rows::F32(wf) = w {
        return matmul_nt_with(isa, x, wf, out, m, k, n);
    }
    assert_eq!(w.len(), w.expected_len(k, n), "matmul_nt_rows: weight size");
    check_args(isa, "matmul_nt_rows", x, &[], 0, None, out, m, k, n);
    if m >= PACK_MIN_ROWS {
        let chunk = nt_chunk_rows(m, k);
        for (xc, oc) in x.chunks(chunk * k).zip(out.chunks_mut(chunk * n)) {
            matmul_nt_rows_with(isa, xc, w, oc, xc.len() / k, k, n);
        }
        return;
    }
    // 64 vocabulary rows per task (192 KiB decoded for GPT-2): the dot tiles re-read them
    // from L2 for every row tile.
    const NB: usize = 64;
    let optr = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(NB)).into_par_iter().for_each_init(
        || vec![0f32; NB * k],
        |buf, blk| {
            let o = optr;
            let n0 = blk * NB;
            let cols = NB.min(n - n0);
            w.decode(k, n0, cols, buf);
            // SAFETY: kernels checked above; `buf` holds rows n0..n0+cols; this task alone
            // writes those columns.
            unsafe { with_kernels!(isa, block_nt(x, buf.as_ptr(), o.0, m, k, n, n0, cols)) };
        },
    );
}

/// Where [`drivers::panel`] finds its weights.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// `[K, N]` (`nt`: `[N, K]`) as stored; each depth block is copied into the panel's
    /// buffer first.
    Plain { w: &'a [f32], nt: bool },
    /// [`pack_nn`]'s layout, read in place.
    Prepacked(&'a [f32]),
    /// The strip layout in a compressed format: each depth block of the panel's strips is
    /// decoded into the panel's buffer first (strip after strip, `kc x 32` each).
    Decoded(crate::cpu_quant::Strips<'a>),
}

/// Cache lines of weights that a register block asks for (into L2) while it computes, two per
/// depth row: how the strip path overlaps reading the next strip from DRAM with the arithmetic
/// on this one (with tens of rows, the weights are read once and the two would otherwise take
/// turns: on the Xeon measured, 0.47 ms of DRAM and 1.27 ms of FMAs per core for `c_fc` at 64
/// rows, 1.9 ms in the forward). Prefetches never fault, so a range past the end is harmless.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Prefetch {
    ptr: *const f32,
    lines: usize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Prefetch {
    /// Nothing to prefetch.
    fn none() -> Self {
        Prefetch {
            ptr: std::ptr::null(),
            lines: 0,
        }
    }

    /// Depth rows of a block that carry a prefetch (two lines each), at most `kc`.
    fn rows(self, kc: usize) -> usize {
        self.lines.div_ceil(2).min(kc)
    }

    /// Asks for lines `2 kk` and `2 kk + 1`.
    ///
    /// # Safety
    /// SSE (every x86-64 CPU); `ptr` need not be valid (prefetches never fault), but the
    /// address arithmetic must not overflow.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn at(self, kk: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = self.ptr.wrapping_add(32 * kk) as *const i8;
        _mm_prefetch::<_MM_HINT_T1>(p);
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64));
    }
}

/// A range of bytes asked for into L2 a few cache lines at a time, between pieces of other work:
/// how the bf16 tile and int8 drivers overlap reading the next strip of weights from DRAM with
/// the arithmetic on this one (the f32 register blocks do the same inside their loop,
/// [`Prefetch`]). `per_ask` lines per [`PrefetchStream::ask`] cover the range in `asks` calls.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct PrefetchStream {
    ptr: *const u8,
    lines: usize,
    done: usize,
    per_ask: usize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl PrefetchStream {
    /// `bytes` from `ptr` (null: nothing) over `asks` calls of [`PrefetchStream::ask`].
    pub(crate) fn new(ptr: *const u8, bytes: usize, asks: usize) -> Self {
        let lines = if ptr.is_null() { 0 } else { bytes.div_ceil(64) };
        PrefetchStream {
            ptr,
            lines,
            done: 0,
            per_ask: lines.div_ceil(asks.max(1)),
        }
    }

    /// Asks for the next `per_ask` lines (fewer at the end). Prefetches never fault, and the
    /// addresses stay within the range.
    #[inline]
    pub(crate) fn ask(&mut self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            let end = (self.done + self.per_ask).min(self.lines);
            for l in self.done..end {
                // SAFETY: a prefetch has no architectural effect and never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(self.ptr.wrapping_add(64 * l) as *const i8) };
            }
            self.done = end;
        }
    }
}

/// The register kernels of one instruction set, behind the cache-level loops of [`drivers`]:
/// the loops decide which block of `x` meets which block of weights; these multiply them.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
trait Kernels {
    /// Activation rows per register block of [`Kernels::micro`].
    const MR: usize;
    /// Rows and vocabulary entries per register block of [`Kernels::tile_nt`].
    const NT_R: usize;
    const NT_C: usize;

    /// `rows` (1..=`MR`) rows of `x` (`xp`, row stride `ldx`) times `kc` rows of a strip of
    /// `cols` (1..=32) weight columns (`wp`, row stride `ldw`) into `out` (row stride `ldo`),
    /// adding to what `out` holds when `accumulate`, else starting from `bias` (or zero). Reads
    /// no weight, bias or output column at or beyond `cols`. Meanwhile asks for `pf`'s lines
    /// (into L2), two per depth row from the first.
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro(
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
        cols: usize,
        pf: Prefetch,
    );

    /// `out[r, c] = x[r, :] . w[c, :]` for the `NT_R x NT_C` tile at (`r0`, `c0`) when `full`,
    /// else for the single entry there; `wp` points at the weight row of column `c0` (rows `k`
    /// apart), so that a decoded block of the head can stand in for the whole matrix.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_nt(
        full: bool,
        x: &[f32],
        wp: *const f32,
        out: *mut f32,
        k: usize,
        n: usize,
        r0: usize,
        c0: usize,
    );
}

/// The cache-level loops, one copy for every instruction set: which rows of `x` meet which block
/// of weights, in which order, and what is prefetched; the arithmetic is `K`'s. Each register
/// block is a whole depth block or all of `K` (tens of microseconds of work), so the call into
/// `K`'s kernels costs nothing measurable.
#[cfg(target_arch = "x86_64")]
mod drivers {
    use super::{Kernels, Prefetch, Source, KC_PACK, NC, NR};
    use crate::cpu_caches::Blocking;
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};

    /// Strips `s0..s1` of `x @ w` for pre-packed `w`, all `m` rows: each register block runs
    /// over all of `K` against the strip, which streams from memory once for the first block and
    /// is re-read from L2 by the others.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strips_prepacked<K: Kernels>(
        x: &[f32],
        ldx: usize,
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
            let next = (s + 1 < s1).then(|| wp.as_ptr().add((s + 1) * k * NR));
            strip_rows::<K>(
                x,
                ldx,
                wp.as_ptr().add(s * k * NR),
                bias,
                out,
                m,
                k,
                n,
                s,
                next,
            );
        }
    }

    /// Strip `s` of `x @ w` for all `m` rows (`ldx` apart in `x`), its `K x 32` weights at
    /// `wstrip` (in the pre-packed weights, or decoded into a buffer); `next`: the strip this
    /// task runs after it, which the register blocks prefetch.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip_rows<K: Kernels>(
        x: &[f32],
        ldx: usize,
        wstrip: *const f32,
        bias: Option<&[f32]>,
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        s: usize,
        next: Option<*const f32>,
    ) {
        let n0 = s * NR;
        let cols = NR.min(n - n0);
        // The next strip's lines, shared out over this strip's register blocks.
        let (blocks, lines) = (m.div_ceil(K::MR), k * NR / 16);
        let mut r = 0;
        while r < m {
            let rows = K::MR.min(m - r);
            let b = r / K::MR;
            let pf = match next {
                Some(p) => {
                    let (l0, l1) = (b * lines / blocks, (b + 1) * lines / blocks);
                    Prefetch {
                        ptr: p.wrapping_add(16 * l0),
                        lines: l1 - l0,
                    }
                }
                None => Prefetch::none(),
            };
            K::micro(
                rows,
                x.as_ptr().add(r * ldx),
                ldx,
                wstrip,
                NR,
                out.add(r * n + n0),
                n,
                k,
                false,
                bias.map(|b| b.as_ptr().add(n0)),
                cols,
                pf,
            );
            r += rows;
        }
    }

    /// Output columns `c0..c1` (whole strips but the last), all `m` rows.
    ///
    /// The weight rows are walked in blocks of `KC`: a block of rows restricted to `c0..c1` is a
    /// set of long contiguous runs, which the hardware prefetcher streams from DRAM at full
    /// speed (a 32-column strip over all of `K` would be 128-byte pieces 4*N bytes apart, and
    /// runs at a fraction of it). The partial sums live in `out` between blocks (L2-resident).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn columns_nn<K: Kernels>(
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
                let wp = w.as_ptr().add(kb * n + n0);
                let mut r = 0;
                while r < m {
                    let rows = K::MR.min(m - r);
                    K::micro(
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
                        cols,
                        Prefetch::none(),
                    );
                    r += rows;
                }
                n0 += NR;
            }
            kb += kc;
        }
    }

    /// One panel of [`super::packed`]: output columns `c0..c0+cols` (`cols <= NC`), all rows.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel<K: Kernels>(
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
                Source::Decoded(_) => (buf.as_ptr(), NR, kc),
            };
            match src {
                Source::Prepacked(_) => {}
                Source::Decoded(ws) => {
                    debug_assert!(buf.len() >= KC_PACK * NC);
                    for (i, s0) in (0..cols).step_by(NR).enumerate() {
                        let strip = (c0 + s0) / NR;
                        ws.decode(strip, k, kb, kc, &mut buf[i * kc * NR..(i + 1) * kc * NR]);
                    }
                }
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
                let rows = K::MR.min(m - r);
                let xp = x.as_ptr().add(r * k + kb);
                let mut s0 = 0;
                while s0 < cols {
                    let wp = wbase.add(s0 * strip_step);
                    let op = out.add(r * n + c0 + s0);
                    let b = bias.map(|b| b.as_ptr().add(c0 + s0));
                    K::micro(
                        rows,
                        xp,
                        k,
                        wp,
                        ldw,
                        op,
                        n,
                        kc,
                        kb > 0,
                        b,
                        NR.min(cols - s0),
                        Prefetch::none(),
                    );
                    s0 += NR;
                }
                r += rows;
            }
            kb += kc;
        }
    }

    /// Strips `s0..s1` of the product, all `m` rows, in BLIS's loop order with `b`'s blocks:
    /// per chunk of `b.strips` strips and block of `b.kc` weight rows, the chunk's weights are
    /// made contiguous per strip (in place when pre-packed, else copied into `wbuf`); per block
    /// of `b.mc` activation rows, their `kc`-deep slice is copied into `abuf` (rows a cache line
    /// multiple apart, never a multiple of 4 KiB: no L1 set aliasing between the register
    /// block's rows, whatever `K`); then each strip's `kc x 32` weights, in L1, meet every
    /// register block of those rows. The partial sums go through `out` between depth blocks.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn blocked<K: Kernels>(
        x: &[f32],
        src: Source<'_>,
        bias: Option<&[f32]>,
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        s0: usize,
        s1: usize,
        b: Blocking,
        wbuf: &mut Vec<f32>,
        abuf: &mut Vec<f32>,
    ) {
        debug_assert!(b.kc.is_multiple_of(32) && b.mc >= 1 && b.strips >= 1);
        let lda = {
            let l = b.kc.next_multiple_of(16);
            if l.is_multiple_of(1024) {
                l + 16
            } else {
                l
            }
        };
        // Blocks of equal size (register blocks whole but the last): 1024 rows in blocks of at
        // most 510 are 342 + 342 + 340, not 510 + 510 + 4, whose last pass over every strip
        // would do 4 rows' work.
        let mc_max = m.div_ceil(m.div_ceil(b.mc)).next_multiple_of(K::MR).min(m);
        if abuf.len() < mc_max * lda {
            abuf.resize(mc_max * lda, 0.0);
        }
        let chunk = b.strips.min(s1 - s0);
        if !matches!(src, Source::Prepacked(_)) && wbuf.len() < chunk * b.kc * NR {
            wbuf.resize(chunk * b.kc * NR, 0.0);
        }
        let mut j0 = s0;
        while j0 < s1 {
            let j1 = (j0 + b.strips).min(s1);
            let mut kb = 0;
            while kb < k {
                let kc = b.kc.min(k - kb);
                match src {
                    Source::Prepacked(_) => {}
                    Source::Decoded(ws) => {
                        for j in j0..j1 {
                            ws.decode(j, k, kb, kc, &mut wbuf[(j - j0) * kc * NR..][..kc * NR]);
                        }
                    }
                    Source::Plain { w, nt: false } => {
                        for j in j0..j1 {
                            let (c0, cols) = (j * NR, NR.min(n - j * NR));
                            let dst = wbuf.as_mut_ptr().add((j - j0) * kc * NR);
                            for kk in 0..kc {
                                std::ptr::copy_nonoverlapping(
                                    w.as_ptr().add((kb + kk) * n + c0),
                                    dst.add(kk * NR),
                                    cols,
                                );
                            }
                        }
                    }
                    Source::Plain { nt: true, .. } => {
                        unreachable!("the head runs the panel driver or the dot tiles")
                    }
                }
                let strip_w = |j: usize| -> *const f32 {
                    match src {
                        Source::Prepacked(wp) => wp.as_ptr().add(j * k * NR + kb * NR),
                        _ => wbuf.as_ptr().add((j - j0) * kc * NR),
                    }
                };
                let mut i0 = 0;
                while i0 < m {
                    let mc = mc_max.min(m - i0);
                    for r in 0..mc {
                        std::ptr::copy_nonoverlapping(
                            x.as_ptr().add((i0 + r) * k + kb),
                            abuf.as_mut_ptr().add(r * lda),
                            kc,
                        );
                    }
                    for j in j0..j1 {
                        let (c0, cols) = (j * NR, NR.min(n - j * NR));
                        let wp = strip_w(j);
                        let bj = bias.map(|b| b.as_ptr().add(c0));
                        let mut r = 0;
                        while r < mc {
                            let rows = K::MR.min(mc - r);
                            K::micro(
                                rows,
                                abuf.as_ptr().add(r * lda),
                                lda,
                                wp,
                                NR,
                                out.add((i0 + r) * n + c0),
                                n,
                                kc,
                                kb > 0,
                                bj,
                                cols,
                                Prefetch::none(),
                            );
                            r += rows;
                        }
                    }
                    i0 += mc;
                }
                kb += kc;
            }
            j0 = j1;
        }
    }

    /// Output columns `n0..n0+cols` of `x @ w^T` for all `m` rows; `wrows` points at the weight
    /// row of column `n0` (the whole head, or a decoded block of it).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_nt<K: Kernels>(
        x: &[f32],
        wrows: *const f32,
        out: *mut f32,
        m: usize,
        k: usize,
        n: usize,
        n0: usize,
        cols: usize,
    ) {
        let (tr, tc) = (K::NT_R, K::NT_C);
        let mut c = 0;
        while c < cols {
            let nc = tc.min(cols - c);
            // Prefetch the next group's vocabulary rows (tc x k floats, contiguous) a share per
            // row tile, so the head streams from DRAM while this group computes.
            let next = (c + nc).min(cols);
            let next_n = tc.min(cols - next);
            let lines = (next_n * k).div_ceil(16);
            let tiles = m.div_ceil(tr);
            let per_tile = lines.div_ceil(tiles.max(1));
            let pbase = wrows.add(next * k);
            let mut line = 0;
            let mut r = 0;
            while r < m {
                for _ in 0..per_tile {
                    if line < lines {
                        _mm_prefetch::<_MM_HINT_T0>(pbase.add(16 * line) as *const i8);
                        line += 1;
                    }
                }
                let nr = tr.min(m - r);
                if nr == tr && nc == tc {
                    K::tile_nt(true, x, wrows.add(c * k), out, k, n, r, n0 + c);
                } else {
                    for i in 0..nr {
                        for j in 0..nc {
                            K::tile_nt(
                                false,
                                x,
                                wrows.add((c + j) * k),
                                out,
                                k,
                                n,
                                r + i,
                                n0 + c + j,
                            );
                        }
                    }
                }
                r += nr;
            }
            c += nc;
        }
    }
}

/// The register kernels: AVX-512 (a strip as two 16-lane registers, 8 rows) and AVX2+FMA (a
/// strip as two halves of two 8-lane registers, 6 rows: 12 accumulators, two weight registers
/// and one broadcast fill the 16 registers AVX2 has).
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::Kernels;

    /// The AVX-512 kernels with `MR`-row register blocks ([`super::avx512_rows`]).
    pub struct Avx512<const MR: usize>;
    pub struct Avx2;

    impl<const M: usize> Kernels for Avx512<M> {
        const MR: usize = M;
        const NT_R: usize = 4;
        const NT_C: usize = 4;

        unsafe fn micro(
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
            cols: usize,
            pf: super::Prefetch,
        ) {
            avx512::micro_rows::<M>(
                rows, xp, ldx, wp, ldw, out, ldo, kc, accumulate, bias, cols, pf,
            )
        }

        unsafe fn tile_nt(
            full: bool,
            x: &[f32],
            w: *const f32,
            out: *mut f32,
            k: usize,
            n: usize,
            r0: usize,
            c0: usize,
        ) {
            if full {
                avx512::tile_nt::<4, 4>(x, w, out, k, n, r0, c0)
            } else {
                avx512::tile_nt::<1, 1>(x, w, out, k, n, r0, c0)
            }
        }
    }

    impl Kernels for Avx2 {
        const MR: usize = super::MR_AVX2;
        const NT_R: usize = 3;
        const NT_C: usize = 4;

        unsafe fn micro(
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
            cols: usize,
            pf: super::Prefetch,
        ) {
            avx2::micro_rows(
                rows, xp, ldx, wp, ldw, out, ldo, kc, accumulate, bias, cols, pf,
            )
        }

        unsafe fn tile_nt(
            full: bool,
            x: &[f32],
            w: *const f32,
            out: *mut f32,
            k: usize,
            n: usize,
            r0: usize,
            c0: usize,
        ) {
            if full {
                avx2::tile_nt::<3, 4>(x, w, out, k, n, r0, c0)
            } else {
                avx2::tile_nt::<1, 1>(x, w, out, k, n, r0, c0)
            }
        }
    }

    mod avx512 {
        use std::arch::x86_64::*;

        /// [`micro`] for `rows` (1..=`MR`) rows: the one place that turns a run-time row count
        /// into the register block's compile-time one.
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn micro_rows<const MR: usize>(
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
            cols: usize,
            pf: super::super::Prefetch,
        ) {
            debug_assert!((1..=MR).contains(&rows));
            let (m0, m1) = super::super::strip_masks(cols);
            // Blocks that prefetch nothing (all but the strip path's) keep the plain loop.
            macro_rules! go {
                ($R:literal) => {
                    if pf.lines > 0 {
                        micro::<$R, true>(
                            xp, ldx, wp, ldw, out, ldo, kc, accumulate, bias, m0, m1, pf,
                        )
                    } else {
                        micro::<$R, false>(
                            xp, ldx, wp, ldw, out, ldo, kc, accumulate, bias, m0, m1, pf,
                        )
                    }
                };
            }
            match rows {
                14 => go!(14),
                13 => go!(13),
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

        /// The register block: `R` rows against a 32-column strip (see [`super::Kernels::micro`]).
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        #[inline]
        unsafe fn micro<const R: usize, const PF: bool>(
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
            pf: super::super::Prefetch,
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
            macro_rules! depth_row {
                ($kk:expr) => {
                    let w0 = _mm512_maskz_loadu_ps(m0, wp);
                    let w1 = _mm512_maskz_loadu_ps(m1, wp.add(16));
                    for i in 0..R {
                        let a = _mm512_set1_ps(*xp.add(i * ldx + $kk));
                        acc0[i] = _mm512_fmadd_ps(a, w0, acc0[i]);
                        acc1[i] = _mm512_fmadd_ps(a, w1, acc1[i]);
                    }
                    wp = wp.add(ldw);
                };
            }
            // The prefetching rows first, then the plain loop (no test per row).
            let pf_rows = if PF { pf.rows(kc) } else { 0 };
            for kk in 0..pf_rows {
                pf.at(kk);
                depth_row!(kk);
            }
            for kk in pf_rows..kc {
                depth_row!(kk);
            }
            for i in 0..R {
                let o = out.add(i * ldo);
                _mm512_mask_storeu_ps(o, m0, acc0[i]);
                _mm512_mask_storeu_ps(o.add(16), m1, acc1[i]);
            }
        }

        /// Dot products along `K`, `R` rows x `C` vocabulary entries per register block.
        #[target_feature(enable = "avx512f")]
        #[inline]
        #[allow(clippy::needless_range_loop)] // parallel register arrays, indexed in step
        pub unsafe fn tile_nt<const R: usize, const C: usize>(
            x: &[f32],
            wp: *const f32,
            out: *mut f32,
            k: usize,
            n: usize,
            r0: usize,
            c0: usize,
        ) {
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            let xp = x.as_ptr().add(r0 * k);
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

    pub(crate) mod avx2 {
        use super::super::MR_AVX2 as MR;
        use std::arch::x86_64::*;

        /// Lane masks (all ones = load/store the lane) of two 8-lane registers covering the
        /// first `cols` (<= 16) of 16 columns.
        #[target_feature(enable = "avx2")]
        #[inline]
        pub(crate) unsafe fn half_masks(cols: usize) -> (__m256i, __m256i) {
            let c = _mm256_set1_epi32(cols as i32);
            (
                _mm256_cmpgt_epi32(c, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                _mm256_cmpgt_epi32(c, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)),
            )
        }

        /// A load that touches only the masked lanes unless `FULL` (then all eight).
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn load<const FULL: bool>(p: *const f32, m: __m256i) -> __m256 {
            if FULL {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, m)
            }
        }

        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn store<const FULL: bool>(p: *mut f32, m: __m256i, v: __m256) {
            if FULL {
                _mm256_storeu_ps(p, v)
            } else {
                _mm256_maskstore_ps(p, m, v)
            }
        }

        /// A strip as two 16-column halves, each its own register block over all `kc`: the
        /// activations (`rows x kc`, L1) are read twice, the weights once.
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn micro_rows(
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
            cols: usize,
            pf: super::super::Prefetch,
        ) {
            debug_assert!((1..=MR).contains(&rows));
            let mut c = 0;
            while c < cols {
                let hc = 16.min(cols - c);
                let (w, o, b) = (wp.add(c), out.add(c), bias.map(|b| b.add(c)));
                // The first half carries the prefetches.
                let pf = if c == 0 {
                    pf
                } else {
                    super::super::Prefetch::none()
                };
                macro_rules! go {
                    ($R:literal) => {
                        if hc == 16 {
                            half::<$R, true>(xp, ldx, w, ldw, o, ldo, kc, accumulate, b, hc, pf)
                        } else {
                            half::<$R, false>(xp, ldx, w, ldw, o, ldo, kc, accumulate, b, hc, pf)
                        }
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
                c += 16;
            }
        }

        /// `R` rows against 16 (`FULL`) or `cols` < 16 columns.
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        #[inline]
        unsafe fn half<const R: usize, const FULL: bool>(
            xp: *const f32,
            ldx: usize,
            mut wp: *const f32,
            ldw: usize,
            out: *mut f32,
            ldo: usize,
            kc: usize,
            accumulate: bool,
            bias: Option<*const f32>,
            cols: usize,
            pf: super::super::Prefetch,
        ) {
            let (m0, m1) = half_masks(cols);
            let mut acc0 = [_mm256_setzero_ps(); R];
            let mut acc1 = [_mm256_setzero_ps(); R];
            for i in 0..R {
                let o = out.add(i * ldo);
                if accumulate {
                    acc0[i] = load::<FULL>(o, m0);
                    acc1[i] = load::<FULL>(o.add(8), m1);
                } else if let Some(b) = bias {
                    acc0[i] = load::<FULL>(b, m0);
                    acc1[i] = load::<FULL>(b.add(8), m1);
                }
            }
            // One base pointer per row, all advanced by the same index: the broadcasts' addresses
            // are then base + 4 kk each, not a chain of additions of the row stride.
            let xr: [*const f32; R] = std::array::from_fn(|i| xp.add(i * ldx));
            macro_rules! depth_row {
                ($kk:expr) => {
                    let w0 = load::<FULL>(wp, m0);
                    let w1 = load::<FULL>(wp.add(8), m1);
                    for i in 0..R {
                        let a = _mm256_broadcast_ss(&*xr[i].add($kk));
                        acc0[i] = _mm256_fmadd_ps(a, w0, acc0[i]);
                        acc1[i] = _mm256_fmadd_ps(a, w1, acc1[i]);
                    }
                    wp = wp.add(ldw);
                };
            }
            // The prefetching rows first, then the plain loop (no test per row).
            let pf_rows = pf.rows(kc);
            for kk in 0..pf_rows {
                pf.at(kk);
                depth_row!(kk);
            }
            for kk in pf_rows..kc {
                depth_row!(kk);
            }
            for i in 0..R {
                let o = out.add(i * ldo);
                store::<FULL>(o, m0, acc0[i]);
                store::<FULL>(o.add(8), m1, acc1[i]);
            }
        }

        /// Dot products along `K`, `R` rows x `C` vocabulary entries per register block (3 x 4:
        /// twelve accumulators, three activation registers, one weight register).
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        #[allow(clippy::needless_range_loop)] // parallel register arrays, indexed in step
        pub unsafe fn tile_nt<const R: usize, const C: usize>(
            x: &[f32],
            wp: *const f32,
            out: *mut f32,
            k: usize,
            n: usize,
            r0: usize,
            c0: usize,
        ) {
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            let xp = x.as_ptr().add(r0 * k);
            let full = k - k % 8;
            let mut kk = 0;
            while kk < full {
                let mut xv = [_mm256_setzero_ps(); R];
                for i in 0..R {
                    xv[i] = _mm256_loadu_ps(xp.add(i * k + kk));
                }
                for j in 0..C {
                    let wv = _mm256_loadu_ps(wp.add(j * k + kk));
                    for i in 0..R {
                        acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                    }
                }
                kk += 8;
            }
            if full < k {
                let (mask, _) = half_masks(k - full);
                for i in 0..R {
                    let xv = _mm256_maskload_ps(xp.add(i * k + full), mask);
                    for j in 0..C {
                        let wv = _mm256_maskload_ps(wp.add(j * k + full), mask);
                        acc[i][j] = _mm256_fmadd_ps(xv, wv, acc[i][j]);
                    }
                }
            }
            for i in 0..R {
                if C == 4 {
                    // Four sums in one __m128: hadd pairs the lanes within each 128-bit half,
                    // then the halves are added.
                    let t0 = _mm256_hadd_ps(acc[i][0], acc[i][1]);
                    let t1 = _mm256_hadd_ps(acc[i][2], acc[i][3]);
                    let t = _mm256_hadd_ps(t0, t1);
                    let s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
                    _mm_storeu_ps(out.add((r0 + i) * n + c0), s);
                } else {
                    for j in 0..C {
                        *out.add((r0 + i) * n + c0 + j) = hsum(acc[i][j]);
                    }
                }
            }
        }

        #[target_feature(enable = "avx2")]
        #[inline]
        pub(crate) unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
}

/// Register-block rows of the AVX-512 (the two [`avx512_rows`] chooses from) and AVX2 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MR_AVX512: usize = 8;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MR_AVX512_WIDE: usize = 14;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MR_AVX2: usize = 6;

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

    /// The instruction sets with kernels that this CPU runs; every kernel test runs each of them
    /// (on an AVX-512 host both AVX-512 and AVX2).
    fn kernel_isas() -> Vec<Isa> {
        let v: Vec<Isa> = Isa::supported()
            .into_iter()
            .filter(|&i| i != Isa::Generic)
            .collect();
        if v.is_empty() {
            eprintln!("skipped: no AVX2 or AVX-512 on this CPU (the model uses the general path)");
        }
        v
    }

    /// Shapes around every edge: row counts around both kernels' MR (8, 6) and 1, columns around the 32-wide strip
    /// and the 16-lane halves, depths around the 64-row weight block and the 16-lane dot chunk.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (4, 16, 32),
        (7, 17, 33),
        (8, 64, 48),
        (9, 65, 16),
        (6, 40, 8),
        (12, 33, 31),
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
        for isa in kernel_isas() {
            let mut seed = 1;
            for &(m, k, n) in SHAPES {
                let x = rand_vec(m * k, &mut seed);
                let w = rand_vec(k * n, &mut seed);
                let b = rand_vec(n, &mut seed);
                for bias in [None, Some(&b[..])] {
                    // Garbage in the output must not leak into the result.
                    let mut out = vec![f32::NAN; m * n];
                    matmul_nn_with(isa, &x, &w, bias, &mut out, m, k, n);
                    let want = reference(&x, &w, bias, m, k, n, false);
                    let what = format!("{isa:?} nn {m}x{k}x{n} bias={}", bias.is_some());
                    check(&out, &want, k, &what);
                }
            }
        }
    }

    #[test]
    fn serial_prepacked_matches_the_reference() {
        for isa in kernel_isas() {
            let mut seed = 3;
            for &(m, k, n) in SHAPES {
                let x = rand_vec(m * k, &mut seed);
                let w = rand_vec(k * n, &mut seed);
                let mut out = vec![f32::NAN; m * n];
                matmul_prepacked_serial_with(isa, &x, &pack_nn(&w, k, n), &mut out, m, k, n);
                let want = reference(&x, &w, None, m, k, n, false);
                check(
                    &out,
                    &want,
                    k,
                    &format!("{isa:?} serial prepacked {m}x{k}x{n}"),
                );
            }
        }
    }

    #[test]
    fn head_chunks_are_equal_and_run_the_tiles() {
        for k in [64, 768, 1024, 4096] {
            for m in [PACK_MIN_ROWS, 130, 256, 1000, 1024, 5000] {
                let c = nt_chunk_rows(m, k);
                assert!(c.is_multiple_of(3) && c < PACK_MIN_ROWS, "m {m} k {k}: {c}");
                // Equal chunks: the last one is never less than half the others, unless there
                // is only one or the sizes force it (a few rows of rounding).
                let last = m - (m.div_ceil(c) - 1) * c;
                assert!(
                    last * 2 >= c || m.div_ceil(c) == 1 || last + 3 * m.div_ceil(c) >= c,
                    "m {m} k {k}: {c} last {last}"
                );
            }
        }
        // 768-wide rows on a 512 KiB L2: at most 84 rows; 1024 rows in 13 chunks.
        if crate::cpu_caches::Caches::detected().l2 == 512 << 10 {
            assert_eq!(1024usize.div_ceil(nt_chunk_rows(1024, 768)), 13);
        }
    }

    #[test]
    fn panels_split_into_row_ranges_for_enough_tasks() {
        // GPT-2's 768-column products at 1024 rows on 2 threads: 6 panels x 3 ranges.
        assert_eq!(panel_row_parts(6, 1024, 2), 3);
        // Enough panels already: one range each.
        assert_eq!(panel_row_parts(24, 1024, 2), 1);
        // Never ranges under 64 rows, never zero.
        assert_eq!(panel_row_parts(1, 150, 16), 2);
        assert_eq!(panel_row_parts(1, 10, 2), 1);
        assert_eq!(panel_row_parts(0, 0, 0), 1);
    }

    /// `K = 0`: every output is its bias (or zero), on every path and both loop orders.
    #[test]
    fn no_depth_gives_the_bias() {
        for isa in kernel_isas() {
            for driver in [Driver::Panel, Driver::Blocked] {
                let plan = Plan {
                    driver,
                    blocking: blocking(isa),
                };
                for m in [5, 130] {
                    let n = 45;
                    let b: Vec<f32> = (0..n).map(|i| i as f32 - 7.0).collect();
                    for src in [Source::Plain { w: &[], nt: false }, Source::Prepacked(&[])] {
                        for bias in [None, Some(&b[..])] {
                            let mut out = vec![f32::NAN; m * n];
                            strip_products(isa, plan, &[], src, bias, &mut out, m, 0, n);
                            for row in out.chunks_exact(n) {
                                assert_eq!(
                                    row,
                                    bias.unwrap_or(&[0.0; 45]),
                                    "{isa:?} {driver:?} {m}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The serial pre-packed product (attention's) adds the same chain as the in-place one:
    /// bitwise equal, at every shape.
    #[test]
    fn serial_prepacked_equals_nn_bitwise() {
        for isa in kernel_isas() {
            let mut seed = 4;
            for &(m, k, n) in SHAPES.iter().chain(&[(48, 1040, 64), (7, 1024, 16)]) {
                let x = rand_vec(m * k, &mut seed);
                let w = rand_vec(k * n, &mut seed);
                let mut want = vec![f32::NAN; m * n];
                matmul_nn_with(isa, &x, &w, None, &mut want, m, k, n);
                let mut got = vec![f32::NAN; m * n];
                matmul_prepacked_serial_with(isa, &x, &pack_nn(&w, k, n), &mut got, m, k, n);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{isa:?} {m}x{k}x{n}");
            }
        }
    }

    #[test]
    fn nt_matches_the_reference_on_random_shapes() {
        for isa in kernel_isas() {
            let mut seed = 2;
            for &(m, k, n) in SHAPES.iter().chain(&[(5, 768, 600)]) {
                let x = rand_vec(m * k, &mut seed);
                let w = rand_vec(n * k, &mut seed);
                let mut out = vec![f32::NAN; m * n];
                matmul_nt_with(isa, &x, &w, &mut out, m, k, n);
                let want = reference(&x, &w, None, m, k, n, true);
                check(&out, &want, k, &format!("{isa:?} nt {m}x{k}x{n}"));
            }
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
        for isa in kernel_isas() {
            let mut seed = 5;
            // 1024 deep: the rows are copied a cache line apart (`unaliased_rows`).
            for &(m, k, n) in SHAPES
                .iter()
                .chain(&[(2, 100, 70), (3, 768, 64), (9, 1024, 70)])
            {
                let x = rand_vec(m * k, &mut seed);
                let w = rand_vec(k * n, &mut seed);
                let b = rand_vec(n, &mut seed);
                let p = pack_nn(&w, k, n);
                for bias in [None, Some(&b[..])] {
                    let mut out = vec![f32::NAN; m * n];
                    matmul_prepacked_with(isa, &x, &p, bias, &mut out, m, k, n);
                    let what = format!("{isa:?} prepacked {m}x{k}x{n} bias={}", bias.is_some());
                    check(&out, &reference(&x, &w, bias, m, k, n, false), k, &what);
                    if m >= MIN_ROWS {
                        // Same products added in the same order as the in-place kernels: the
                        // model gives the same logits packed or not.
                        let mut plain = vec![0f32; m * n];
                        matmul_nn_with(isa, &x, &w, bias, &mut plain, m, k, n);
                        let same = out
                            .iter()
                            .zip(&plain)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{what}: differs from matmul_nn");
                    }
                }
            }
        }
    }

    /// The bf16 and int8 paths decode and then run the f32 kernels in the f32 path's order:
    /// bitwise the f32 pre-packed product on the decoded weights, at every row count (strip
    /// path and panel path), with ragged strips and depths that are not multiples of 32.
    #[test]
    fn decoded_strips_equal_the_f32_kernels_on_the_decoded_weights() {
        use crate::cpu_quant::{strips_to_bf16, strips_to_int8, Strips};
        for isa in kernel_isas() {
            let mut seed = 11;
            for &(m, k, n) in &[
                (1, 77, 45),
                (5, 300, 200),
                (64, 96, 33),
                (130, 300, 200),
                (7, 1024, 45),
            ] {
                let x = rand_vec(m * k, &mut seed);
                let w = rand_vec(k * n, &mut seed);
                let b = rand_vec(n, &mut seed);
                let p = pack_nn(&w, k, n);
                let (pb, pq) = (strips_to_bf16(&p, k, n), strips_to_int8(&p, k, n));
                for ws in [Strips::Bf16(&pb), Strips::Int8(&pq)] {
                    let mut decoded = vec![0f32; p.len()];
                    for (s, d) in decoded.chunks_exact_mut(k * NR).enumerate() {
                        ws.decode(s, k, 0, k, d);
                    }
                    let mut want = vec![0f32; m * n];
                    matmul_prepacked_with(isa, &x, &decoded, Some(&b), &mut want, m, k, n);
                    let mut got = vec![f32::NAN; m * n];
                    matmul_strips_with(isa, &x, ws, Some(&b), &mut got, m, k, n);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa:?} {m}x{k}x{n} ({} elements)", ws.len());
                }
            }
        }
    }

    /// The two AVX-512 register blocks (8 and 14 rows, [`avx512_rows`]) give bitwise the same
    /// outputs on the strip path (with its prefetches) and the panel path, every row count of a
    /// block included: each output is the same chain of FMAs along `K`, whatever the block.
    /// The process's own choice is checked against the reference by the tests above.
    #[test]
    fn avx512_row_blocks_agree_bitwise() {
        if !Isa::supported().contains(&Isa::Avx512) {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let mut seed = 77;
        for &(m, k, n) in &[(1, 40, 70), (13, 100, 64), (29, 64, 96), (150, 300, 130)] {
            let x = rand_vec(m * k, &mut seed);
            let w = rand_vec(k * n, &mut seed);
            let bias = rand_vec(n, &mut seed);
            let wp = pack_nn(&w, k, n);
            let strips = n.div_ceil(NR);
            let run = |wide: bool, panel: bool| {
                let mut out = vec![f32::NAN; m * n];
                let o = out.as_mut_ptr();
                let mut buf = vec![0f32; KC_PACK * NC];
                // SAFETY: AVX-512 checked above; sizes as built.
                unsafe {
                    macro_rules! go {
                        ($K:ty) => {
                            if panel {
                                for c0 in (0..n).step_by(NC) {
                                    drivers::panel::<$K>(
                                        &x,
                                        Source::Prepacked(&wp),
                                        Some(&bias),
                                        o,
                                        m,
                                        k,
                                        n,
                                        c0,
                                        NC.min(n - c0),
                                        &mut buf,
                                    );
                                }
                            } else {
                                drivers::strips_prepacked::<$K>(
                                    &x,
                                    k,
                                    &wp,
                                    Some(&bias),
                                    o,
                                    m,
                                    k,
                                    n,
                                    0,
                                    strips,
                                );
                            }
                        };
                    }
                    if wide {
                        go!(x86::Avx512<MR_AVX512_WIDE>)
                    } else {
                        go!(x86::Avx512<MR_AVX512>)
                    }
                }
                out
            };
            for panel in [false, true] {
                let (a, b) = (run(false, panel), run(true, panel));
                assert!(
                    a.iter().all(|v| v.is_finite()),
                    "{m}x{k}x{n}: unwritten outputs"
                );
                assert!(
                    a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{m}x{k}x{n} panel {panel}: 8 and 14 rows differ"
                );
            }
        }
    }

    /// Both drivers, on every weight source and with blockings small enough that every loop of
    /// the blocked driver runs several times (chunks of strips, depth blocks, row blocks with a
    /// ragged last one), give bitwise the same outputs: each is the same chain of fused
    /// multiply-adds along `K`. The panel driver's results are checked against the reference
    /// by the tests above, so this also checks the blocked one against it.
    #[test]
    fn drivers_agree_bitwise_on_every_source_and_blocking() {
        use crate::cpu_caches::Blocking;
        use crate::cpu_quant::{strips_to_bf16, strips_to_int8, Strips};
        for isa in kernel_isas() {
            let mr = if isa == Isa::Avx512 {
                avx512_rows()
            } else {
                MR_AVX2
            };
            let blockings = [
                Blocking {
                    kc: 32,
                    mc: mr,
                    strips: 1,
                },
                Blocking {
                    kc: 64,
                    mc: 3 * mr,
                    strips: 2,
                },
                blocking(isa),
            ];
            let panel = Plan {
                driver: Driver::Panel,
                blocking: blocking(isa),
            };
            let mut seed = 21;
            for &(m, k, n) in &[
                (5, 100, 45),
                (128, 64, 40),
                (130, 160, 70),
                (200, 1024, 33),
                (301, 96, 97),
            ] {
                let x = rand_vec(m * k, &mut seed);
                let w = rand_vec(k * n, &mut seed);
                let b = rand_vec(n, &mut seed);
                let p = pack_nn(&w, k, n);
                let (pb, pq) = (strips_to_bf16(&p, k, n), strips_to_int8(&p, k, n));
                let sources = [
                    ("plain", Source::Plain { w: &w, nt: false }),
                    ("prepacked", Source::Prepacked(&p)),
                    ("bf16", Source::Decoded(Strips::Bf16(&pb))),
                    ("int8", Source::Decoded(Strips::Int8(&pq))),
                ];
                for (what, src) in sources {
                    for bias in [None, Some(&b[..])] {
                        let mut want = vec![f32::NAN; m * n];
                        strip_products(isa, panel, &x, src, bias, &mut want, m, k, n);
                        assert!(want.iter().all(|v| v.is_finite()), "{isa:?} {what} panel");
                        for blocking in blockings {
                            let plan = Plan {
                                driver: Driver::Blocked,
                                blocking,
                            };
                            let mut got = vec![f32::NAN; m * n];
                            strip_products(isa, plan, &x, src, bias, &mut got, m, k, n);
                            let same = got
                                .iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same,
                                "{isa:?} {what} {m}x{k}x{n} bias={} {blocking:?}",
                                bias.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_loops_follow_the_switch() {
        let want = match std::env::var(GEMM_ENV).as_deref() {
            Ok("blocked") => Driver::Blocked,
            Ok("panel") => Driver::Panel,
            _ => Driver::Panel,
        };
        assert_eq!(driver(), want);
        assert_eq!(plan(Isa::Avx2).driver, want);
        assert_eq!(plan(Isa::Avx2).blocking, blocking(Isa::Avx2));
    }

    /// The head in bf16 / int8: the dot tiles on decoded blocks of vocabulary rows give the f32
    /// head's products on the decoded rows: bitwise where both run the same tiles (below 128
    /// rows, and under AVX2 at any count), within the f32 tolerance where AVX-512's large-row
    /// head takes the packed path instead.
    #[test]
    fn decoded_head_rows_equal_the_f32_head_on_the_decoded_rows() {
        use crate::cpu_quant::{rows_to_int8, to_bf16, Rows};
        for isa in kernel_isas() {
            let mut seed = 13;
            for &(m, k, n) in &[(1, 77, 45), (7, 96, 300), (130, 64, 150)] {
                let x = rand_vec(m * k, &mut seed);
                let w = rand_vec(n * k, &mut seed);
                let (rb, rq) = (to_bf16(&w), rows_to_int8(&w, k, n));
                for rows in [Rows::Bf16(&rb), Rows::Int8(&rq)] {
                    let mut decoded = vec![0f32; n * k];
                    rows.decode(k, 0, n, &mut decoded);
                    let mut want = vec![0f32; m * n];
                    matmul_nt_with(isa, &x, &decoded, &mut want, m, k, n);
                    let mut got = vec![f32::NAN; m * n];
                    matmul_nt_rows_with(isa, &x, rows, &mut got, m, k, n);
                    let what = format!("{isa:?} nt rows {m}x{k}x{n} ({} bytes)", rows.len());
                    if m < PACK_MIN_ROWS || isa == Isa::Avx2 {
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{what}: not bitwise");
                    } else {
                        check(&got, &want, k, &what);
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "assertion")]
    fn wrong_sizes_are_refused() {
        let Some(&isa) = kernel_isas().first() else {
            panic!("assertion: skipped without kernels");
        };
        let mut out = vec![0f32; 4];
        matmul_nn_with(isa, &[0.0; 3], &[0.0; 4], None, &mut out, 2, 2, 2);
    }

    #[test]
    #[should_panic(expected = "cannot run")]
    fn kernels_the_cpu_lacks_are_refused() {
        // Generic has no kernels: refused on every CPU, before any unsafe code runs.
        let mut out = vec![0f32; 4];
        matmul_nn_with(Isa::Generic, &[0.0; 4], &[0.0; 4], None, &mut out, 2, 2, 2);
    }
}
