//! Benchmarks shared by `diffugpt bench` and the criterion benches: forward latency at several
//! canvas sizes and fixed vs EoS-first decoding throughput, on a DiffuGPT-S-shaped model with random
//! weights generated in memory from a seed (no file needed).

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::config::{ModelConfig, SpecialIdOverrides, SpecialIds};
use crate::cpu_quant::WeightFormat;
use crate::decode::{GenerateParams, LengthMode, Session, Steps, Strategy};
use crate::error::Result;
use crate::forward_profile::{self, Profile};
use crate::length::LengthPredictor;
use crate::model::{AttnMask, Gpt2, KvCache};
use crate::sampler::ConfidenceKind;

/// A DiffuGPT-S-shaped model (12 x 768, vocab 50257) with random weights.
pub fn random_small_model(seed: u64) -> Result<Gpt2> {
    random_small_model_as(seed, WeightFormat::F32)
}

/// [`random_small_model`] with its projections and head held in `format`.
pub fn random_small_model_as(seed: u64, format: WeightFormat) -> Result<Gpt2> {
    let cfg = ModelConfig::gpt2_small();
    let ids = SpecialIds::resolve(
        cfg.vocab_size,
        &Default::default(),
        &SpecialIdOverrides::default(),
    )?;
    // As `Model::load` leaves a CPU model: projections packed for the fused kernels.
    let mut m = Gpt2::random(cfg, ids, seed, &Device::Cpu)?;
    m.pack_for_cpu_as(format)?;
    Ok(m)
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, v.sqrt())
}

/// One forward of `t` positions as the decoder runs it: hidden states for the whole canvas, logits
/// only for `logit_rows` rows (the masked slots; the decoder never computes the others).
pub fn forward_once(model: &Gpt2, t: usize, logit_rows: usize) -> Result<()> {
    let ids = bench_ids(model.cfg.vocab_size, t);
    let input = Tensor::from_slice(&ids, (1, t), model.device())?;
    let h = model
        .hidden(&input, &AttnMask::Bidirectional, None)?
        .squeeze(0)?;
    let rows = logit_rows.min(t);
    if rows > 0 {
        let logits = model.logits(&h.narrow(0, t - rows, rows)?)?;
        // Force evaluation (the CPU backend is eager; this keeps the result alive until here).
        let _ = logits.dims();
    }
    Ok(())
}

/// Measured f32 multiply-add throughput of this CPU on all of rayon's threads, in GFLOP/s (one
/// fused multiply-add counts as two operations): the ceiling of any f32 forward on this machine,
/// printed beside the forward rows so that their GFLOP/s read as a share of what the CPU can do.
/// Twelve independent accumulator chains per thread (more than latency x pipes on current x86
/// cores), with the registers of the kernels that run ([`crate::cpu_gemm::isa`]: 16 lanes for
/// AVX-512, 8 for AVX2+FMA, so that a forced AVX2 path on an AVX-512 CPU is measured against the
/// AVX2 peak; the generic path against the widest the CPU has); best of seven runs of ~30 ms (on a shared
/// host one descheduled thread drags a whole run down: three were seen to all read half the
/// peak). `None` off x86-64 or without FMA.
pub fn fma_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu_gemm::Isa;
        let (avx512, fma) = match crate::cpu_gemm::isa() {
            Isa::Avx512 => (true, true),
            Isa::Avx2 => (false, true),
            Isa::Generic => (
                std::is_x86_feature_detected!("avx512f"),
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            ),
        };
        if !avx512 && !fma {
            return None;
        }
        let lanes = if avx512 { 16 } else { 8 };
        Some(best_chain_rate(lanes * 2, |seed| {
            // SAFETY: the features each kernel needs were detected above.
            unsafe {
                if avx512 {
                    fma_chains::zmm(fma_chains::ITERS, seed as f32)
                } else {
                    fma_chains::ymm(fma_chains::ITERS, seed as f32)
                }
            }
        }))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Measured int8 dot-product throughput of the integer kernels the int8 forward runs on
/// ([`crate::cpu_int8::kernel`]; `None` where it decodes to f32), on all of rayon's threads, in
/// GOP/s (a multiply-add is two operations): `vpdpbusd` chains (64 byte multiply-adds per
/// instruction) for `vnni`, `vpsignb` + `vpmaddubsw` + `vpmaddwd` + `vpaddd` chains (32 per
/// four instructions, the AVX2 kernels' inner loop) for `avx2`. Chains and repeats as
/// [`fma_peak_gflops`].
pub fn int8_peak_gops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu_int8::Int8Kernel;
        match crate::cpu_int8::kernel()? {
            Int8Kernel::Vnni => Some(best_chain_rate(64 * 2, |seed| {
                // SAFETY: the VNNI kernels run only with AVX-512F and AVX512_VNNI.
                unsafe { fma_chains::vnni(fma_chains::ITERS, seed as i32) as f32 }
            })),
            Int8Kernel::Avx2 => Some(best_chain_rate(32 * 2, |seed| {
                // SAFETY: the AVX2 kernels run only with AVX2.
                unsafe { fma_chains::maddubs(fma_chains::ITERS, seed as i32) as f32 }
            })),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Measured bf16 dot-product throughput (`vdpbf16ps`: 32 bf16 multiply-adds per instruction
/// into 16 f32 lanes, two operations each) on all of rayon's threads, in GFLOP/s, where the CPU
/// has AVX512_BF16 (`None` elsewhere): the ceiling of the bf16 forward where it runs on
/// [`crate::cpu_bf16`]'s kernels, and otherwise the reason it does not (on the Xeon this was
/// tried on it is half the f32 FMA peak; benches/README.md).
pub fn bf16_dot_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bf16"))
        {
            return None;
        }
        Some(best_chain_rate(32 * 2, |seed| {
            // SAFETY: AVX-512F and AVX512_BF16 detected above.
            unsafe { fma_chains::bf16(fma_chains::ITERS, seed as f32) }
        }))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Measured AMX bf16 tile throughput (`tdpbf16ps`: 16 x 16 x 32 multiply-adds per
/// instruction, two operations each) on all of rayon's threads, in GFLOP/s, where the CPU and OS
/// run AMX-BF16 (`None` elsewhere). The bf16 forward's products on tiles do twice the operations
/// they count (two activation terms, [`crate::cpu_amx`]), so half this is their ceiling.
pub fn amx_bf16_peak_gflops() -> Option<f64> {
    if !crate::cpu_amx::available() {
        return None;
    }
    // ~20 ms per thread at the 3.2 TFLOP/s per core measured on a Xeon.
    const ITERS: usize = 1_000_000;
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let sums = rayon::broadcast(|ctx| {
            crate::cpu_amx::peak_chains(ITERS, std::hint::black_box(1.0 + ctx.index() as f32))
        });
        std::hint::black_box(sums.iter().sum::<f32>());
        let ops = (ITERS * 4 * 16 * 16 * 32 * 2 * sums.len()) as f64;
        best = best.max(ops / t.elapsed().as_secs_f64() / 1e9);
    }
    Some(best)
}

/// One thread's `vdpbf16ps` rate over its 512-bit FMA rate, in floating-point operations (a
/// `vdpbf16ps` does 32 multiply-adds, an FMA 16): what [`crate::cpu_bf16::active`] decides by.
/// Short chains (about a millisecond each, best of five, interleaved so that a busy neighbour
/// slows both alike); measured 2.0 on AMD Zen 4 and 0.5 on an Intel Xeon with AVX512_BF16.
/// `None` without AVX-512F and AVX512_BF16.
pub fn bf16_dot_to_fma_ratio() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bf16"))
        {
            return None;
        }
        const SHORT: usize = 40_000;
        let (mut dot, mut fma) = (f64::MAX, f64::MAX);
        for i in 0..5 {
            let t = Instant::now();
            // SAFETY: AVX-512F and AVX512_BF16 detected above.
            std::hint::black_box(unsafe { fma_chains::bf16(SHORT, 1.0 + i as f32) });
            dot = dot.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            // SAFETY: as above.
            std::hint::black_box(unsafe { fma_chains::zmm(SHORT, 1.0 + i as f32) });
            fma = fma.min(t.elapsed().as_secs_f64());
        }
        Some(2.0 * fma / dot)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The one timing loop of the peaks above: `chains(seed)` on every rayon thread at once (a
/// different seed each), best of seven; `ops_per_instr` operations per instruction of a chain.
/// In G operations per second.
#[cfg(target_arch = "x86_64")]
fn best_chain_rate(ops_per_instr: usize, chains: impl Fn(usize) -> f32 + Sync) -> f64 {
    let mut best = 0f64;
    for _ in 0..7 {
        let t = Instant::now();
        let sums = rayon::broadcast(|ctx| chains(std::hint::black_box(1 + ctx.index())));
        std::hint::black_box(sums.iter().sum::<f32>());
        let ops = (fma_chains::ITERS * fma_chains::CHAINS * ops_per_instr * sums.len()) as f64;
        best = best.max(ops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

#[cfg(target_arch = "x86_64")]
mod fma_chains {
    use std::arch::x86_64::*;

    /// Independent dependency chains: enough to keep every FMA pipe busy despite its latency.
    pub(super) const CHAINS: usize = 12;
    /// Instructions per chain and run (~30 ms at the rates of current cores).
    pub(super) const ITERS: usize = 8_000_000;

    /// `CHAINS` x `iters` 16-lane FMAs. Each chain starts from a different value, so the
    /// compiler cannot merge them into one.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn zmm(iters: usize, seed: f32) -> f32 {
        let mut acc: [__m512; CHAINS] =
            std::array::from_fn(|i| _mm512_set1_ps(seed + 0.1 * i as f32));
        let (b, c) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, b, c);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
        _mm512_reduce_add_ps(s)
    }

    /// `CHAINS` x `iters` `vpdpbusd`s (int32 sums of four byte products per lane).
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn vnni(iters: usize, seed: i32) -> i32 {
        let mut acc: [__m512i; CHAINS] =
            std::array::from_fn(|i| _mm512_set1_epi32(seed + i as i32));
        let (a, b) = (
            _mm512_set1_epi32(0x0102_0304),
            _mm512_set1_epi32(-0x0101_0102),
        );
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_si512(), |s, c| _mm512_add_epi32(s, *c));
        _mm512_reduce_add_epi32(s)
    }

    /// `CHAINS` x `iters` groups of `vpsignb`, `vpmaddubsw`, `vpmaddwd` (against ones) and
    /// `vpaddd`: 32 byte products summed into 8 int32 lanes, as the AVX2 int8 kernels do. Only
    /// the additions chain (a chain through the products would measure their latency, ~0.6x
    /// the rate on Zen 3): eight accumulators over eight distinct (weight, activation) pairs,
    /// the activations passed through an empty `asm!` each round so that the products cannot be
    /// hoisted out of the loop or merged, and 1.5x the rounds to make `CHAINS` x `iters`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn maddubs(iters: usize, seed: i32) -> i32 {
        let mut acc: [__m256i; 8] = std::array::from_fn(|i| _mm256_set1_epi32(seed + i as i32));
        let a = _mm256_set1_epi32(0x0102_0304);
        let b = [
            _mm256_set1_epi32(-0x0101_0102),
            _mm256_set1_epi32(0x0305_0709),
        ];
        let mut x: [__m256i; 4] = std::array::from_fn(|i| _mm256_set1_epi32(seed * 3 + i as i32));
        let ones = _mm256_set1_epi16(1);
        // Eight accumulators doing `CHAINS` x `iters` groups in all.
        debug_assert!((iters * CHAINS).is_multiple_of(8));
        for _ in 0..iters * CHAINS / 8 {
            for (i, c) in acc.iter_mut().enumerate() {
                let p = _mm256_maddubs_epi16(a, _mm256_sign_epi8(b[i / 4], x[i % 4]));
                *c = _mm256_add_epi32(*c, _mm256_madd_epi16(p, ones));
            }
            std::arch::asm!(
                "/* {0} {1} {2} {3} */",
                inout(ymm_reg) x[0],
                inout(ymm_reg) x[1],
                inout(ymm_reg) x[2],
                inout(ymm_reg) x[3],
                options(nomem, nostack, preserves_flags)
            );
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_si256(), |s, c| _mm256_add_epi32(s, *c));
        _mm256_extract_epi32(s, 0)
    }

    /// `CHAINS` x `iters` `vdpbf16ps`s (f32 sums of two bf16 products per lane).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16(iters: usize, seed: f32) -> f32 {
        let mut acc: [__m512; CHAINS] =
            std::array::from_fn(|i| _mm512_set1_ps(seed + 0.1 * i as f32));
        // bf16 pairs (1.0, 0.5) and (1e-4-ish): small products, no overflow over the chains.
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f00));
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x38d1_38d1));
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_dpbf16_ps(*c, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
        _mm512_reduce_add_ps(s)
    }

    /// As [`zmm`] with 8-lane AVX2 registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn ymm(iters: usize, seed: f32) -> f32 {
        let mut acc: [__m256; CHAINS] =
            std::array::from_fn(|i| _mm256_set1_ps(seed + 0.1 * i as f32));
        let (b, c) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-4));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, b, c);
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}

/// One row of the benchmark table.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub test: String,
    pub mean_ms: f64,
    pub std_ms: f64,
    /// tokens/s for decode tests (useful tokens: before the end), positions/s for forwards.
    pub per_s: f64,
    pub steps: usize,
    pub forward_passes: usize,
    /// Matrix arithmetic rate of a forward row (see [`ModelConfig::forward_flops`]), GFLOP/s.
    pub gflops: Option<f64>,
    /// The weight format the row ran with (`f32`, `bf16`, `int8`; GPU rows: `f32`).
    pub dtype: &'static str,
}

/// Times `f` `reps` times after one warm-up; returns milliseconds.
pub fn time_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Deterministic, vocabulary-spread token ids for a benchmark canvas of `t` positions.
fn bench_ids(vocab: usize, t: usize) -> Vec<u32> {
    (0..t as u32).map(|i| (i * 7919) % vocab as u32).collect()
}

/// The table row of a forward benchmark at `t` positions from its per-repetition times.
fn forward_row(cfg: &ModelConfig, t: usize, ms: &[f64]) -> BenchRow {
    let (m, s) = mean_std(ms);
    BenchRow {
        test: format!("forward-{t}"),
        mean_ms: m,
        std_ms: s,
        per_s: t as f64 / (m / 1e3),
        steps: 1,
        forward_passes: 1,
        gflops: Some(cfg.forward_flops(t, t) / (m / 1e3) / 1e9),
        dtype: "f32",
    }
}

/// Forward latency at each T (full logits for every row: the worst case).
pub fn bench_forward(model: &Gpt2, lens: &[usize], reps: usize) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &t in lens {
        let ms = time_ms(reps, || forward_once(model, t, t))?;
        let mut row = forward_row(&model.cfg, t, &ms);
        row.dtype = model.weight_format().name();
        rows.push(row);
    }
    Ok(rows)
}

/// Where the forward at `t` positions spends its time, op by op: the mean of `reps` profiled
/// forwards after one warm-up ([`crate::forward_profile`]; times and call counts per forward).
/// Run apart from [`bench_forward`], so that its rows carry no profiling.
pub fn profile_forward(model: &Gpt2, t: usize, reps: usize) -> Result<Profile> {
    forward_once(model, t, t)?;
    let reps = reps.max(1);
    let (r, mut p) = forward_profile::measure(|| -> Result<()> {
        for _ in 0..reps {
            forward_once(model, t, t)?;
        }
        Ok(())
    });
    r?;
    // All repetitions in one profile: per forward.
    p.total_ms /= reps as f64;
    for o in &mut p.ops {
        o.ms /= reps as f64;
        o.calls /= reps as u64;
    }
    Ok(p)
}

/// Autoregressive decoding with a KV cache, as the ARM path runs it: a causal prefill of
/// `prompt_len` positions, then `tokens` steps of one position each (its hidden state and its
/// logits). `per_s` is tokens/s of the one-row steps alone: each reads every weight once, so
/// it is bound by memory bandwidth (see [`memory_bandwidth_gbs`]).
pub fn bench_arm(model: &Gpt2, prompt_len: usize, tokens: usize, reps: usize) -> Result<BenchRow> {
    let v = model.cfg.vocab_size;
    let prompt = bench_ids(v, prompt_len.max(1));
    let mut cache = KvCache::new(model.cfg.n_layer);
    let mut step_ms = Vec::new();
    time_ms(reps, || {
        cache.clear();
        let input = Tensor::from_slice(&prompt, (1, prompt.len()), model.device())?;
        model.hidden(&input, &AttnMask::Causal, Some(&mut cache))?;
        let t0 = Instant::now();
        for i in 0..tokens {
            let id = [((i * 31 + 7) % v) as u32];
            let input = Tensor::from_slice(&id, (1, 1), model.device())?;
            let h = model
                .hidden(&input, &AttnMask::Causal, Some(&mut cache))?
                .squeeze(0)?;
            let _ = model.logits(&h)?.dims();
        }
        step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        Ok(())
    })?;
    // The first entry is the warm-up run.
    let (m, s) = mean_std(&step_ms[1..]);
    Ok(BenchRow {
        test: format!("arm-kv-{tokens}"),
        mean_ms: m,
        std_ms: s,
        per_s: tokens as f64 / (m / 1e3),
        steps: tokens,
        forward_passes: tokens,
        gflops: None,
        dtype: model.weight_format().name(),
    })
}

/// Measured read bandwidth from memory on all of rayon's threads, GB/s: a 512 MiB buffer
/// summed in parallel, best of five (the floor of a one-row step is the model's weight bytes
/// over this).
pub fn memory_bandwidth_gbs() -> f64 {
    use rayon::prelude::*;
    let buf = vec![1u64; 64 << 20];
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let sum: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .sum();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(sum, buf.len() as u64);
        best = best.max((buf.len() * 8) as f64 / secs / 1e9);
    }
    best
}

/// Decoding params used by the decode benchmark.
pub fn decode_params(canvas: usize, steps: usize, eos_first: bool) -> GenerateParams {
    GenerateParams {
        canvas_len: canvas,
        steps: Steps::Fixed(steps),
        strategy: Strategy::Confidence(ConfidenceKind::Prob),
        length: if eos_first {
            LengthMode::EosFirst {
                predictor: LengthPredictor::Quantile(0.9),
                margin: 8,
                margin_ratio: 0.25,
                grow: false,
            }
        } else {
            LengthMode::Fixed
        },
        ..Default::default()
    }
}

/// Fixed vs EoS-first decoding with a prompt of `prompt_len` tokens; tokens/s counts useful tokens
/// (the answer before its end).
///
/// Random weights predict no end, so the EoS-first row uses the oracle predictor with the answer
/// length of the workload: every other part of the EoS-first path (the full-canvas first step, the
/// cut, the scaled steps) runs as in real decoding.
pub fn bench_decode(
    model: &Gpt2,
    prompt_len: usize,
    canvas: usize,
    steps: usize,
    answer_len: usize,
    reps: usize,
) -> Result<Vec<BenchRow>> {
    bench_decode_in(
        &mut Session::new(model),
        prompt_len,
        canvas,
        steps,
        answer_len,
        reps,
    )
}

/// [`bench_decode`] in a given session (a GPU session runs the same workload on the GPU).
pub fn bench_decode_in(
    session: &mut Session,
    prompt_len: usize,
    canvas: usize,
    steps: usize,
    answer_len: usize,
    reps: usize,
) -> Result<Vec<BenchRow>> {
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + i).collect();
    let mut rows = Vec::new();
    for eos_first in [false, true] {
        let mut p = decode_params(canvas, steps, eos_first);
        if eos_first {
            p.length = LengthMode::EosFirst {
                predictor: LengthPredictor::Oracle(answer_len),
                margin: 8,
                margin_ratio: 0.25,
                grow: false,
            };
        }
        let mut last = None;
        let ms = time_ms(reps, || {
            last = Some(session.generate(&prompt, &p, None)?.stats);
            Ok(())
        })?;
        let st = last.expect("at least one run");
        let (m, s) = mean_std(&ms);
        rows.push(BenchRow {
            test: if eos_first {
                format!("eosfirst-{canvas}-ans{answer_len}")
            } else {
                format!("fixed-{canvas}")
            },
            mean_ms: m,
            std_ms: s,
            per_s: answer_len.min(canvas) as f64 / (m / 1e3),
            steps: st.steps,
            forward_passes: st.forward_passes,
            gflops: None,
            dtype: "f32",
        });
    }
    Ok(rows)
}

/// The benchmark on an accelerator: `gpt`'s weights on the backend `device` chooses (`dtype`: its
/// compute dtype, `None` for the default), the forward at each of `lens` — hidden states plus the
/// step decisions of every row, the worst case like [`bench_forward`]; the clock stops once the
/// decisions reach the host — then, when `decode` is `(prompt_len, canvas, steps, answer_len)`,
/// [`bench_decode_in`]'s rows. Returns the rows, the backend's name and its report; `None` when the
/// forwards would run on the CPU (asked for, or no usable accelerator: a message on stderr says
/// why), whose numbers [`bench_forward`] and [`bench_decode`] give.
pub fn bench_on_device(
    gpt: &Gpt2,
    device: crate::weights::ComputeDevice,
    dtype: Option<candle_core::DType>,
    lens: &[usize],
    reps: usize,
    decode: Option<(usize, usize, usize, usize)>,
) -> Result<Option<(Vec<BenchRow>, String, crate::backend::BackendReport)>> {
    if device == crate::weights::ComputeDevice::Cpu {
        return Ok(None);
    }
    let model = crate::Model::from_gpt(gpt.clone(), device, dtype)?;
    if model.fallback.is_some() {
        return Ok(None);
    }
    let cfg = &model.gpt.cfg;
    let ids = model.gpt.ids;
    let sampler = crate::sampler::Sampler::new(
        Default::default(),
        ConfidenceKind::Prob,
        cfg.vocab_size,
        vec![ids.eos],
        vec![ids.mask],
    );
    let mut rows = Vec::new();
    {
        let mut session = model.session();
        if !session.on_gpu() {
            // The session fell back to the CPU (a message said why): no device numbers.
            return Err(crate::Error::Cuda(format!(
                "no {} session could be created",
                model.backend()
            )));
        }
        let fwd = session.forward_mut();
        for &t in lens {
            let seq = bench_ids(cfg.vocab_size, t);
            let all: Vec<usize> = (0..t).collect();
            let ms = time_ms(reps, || {
                fwd.forward(&seq)?;
                fwd.decide_greedy(&all, &sampler, true)?;
                Ok(())
            })?;
            rows.push(forward_row(cfg, t, &ms));
        }
    }
    if let Some((prompt_len, canvas, steps, answer_len)) = decode {
        rows.extend(bench_decode_in(
            &mut model.session(),
            prompt_len,
            canvas,
            steps,
            answer_len,
            reps,
        )?);
    }
    Ok(Some((rows, model.backend(), model.backend_report())))
}
