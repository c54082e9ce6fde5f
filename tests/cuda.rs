//! The CUDA backend against the CPU reference.
//!
//! Two kinds of tests:
//! * without a GPU (they run in CI): kernels.cu compiles with NVRTC (when libnvrtc loads), and a
//!   CUDA request falls back to the CPU cleanly (library, C API and CLI);
//! * with a GPU: every kernel on fresh random inputs vs a plain f64 CPU reference (relative error
//!   norm(diff) / norm(ref): f32 <= 1e-5, bf16 <= 1e-2), the whole forward vs `Gpt2::hidden`, and
//!   seeded greedy EoS-first decoding equal to the CPU's.
//!
//! Skips must not look like passes. A test cannot mark itself skipped at run time, so the GPU
//! tests are `#[ignore]`d: `cargo test` reports them as *ignored*, never as passed. They run with
//! `--include-ignored` (`scripts/gpu_run.sh`); there, a test that finds no GPU fails when
//! `DIFFUGPT_REQUIRE_GPU=1` (which gpu_run.sh sets) and otherwise prints `SKIPPED: no GPU` on
//! stderr and returns. The few CI tests that need what a machine may lack (libnvrtc; *no* GPU for
//! the fallback tests) print `SKIPPED: ...` on stderr too; `scripts/cuda_ci_check.sh` fails when
//! the NVRTC one skipped, and `DIFFUGPT_REQUIRE_GPU=1` makes a missing libnvrtc a failure.
//!
//! `scripts/gpu_run.sh` runs this file with `--nocapture --test-threads=1` so the `ERR` lines form
//! a table of kernel errors.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::sync::Arc;

mod common;

use candle_core::{Device, Tensor};
use diffugpt::config::{ModelConfig, SpecialIdOverrides, SpecialIds};
use diffugpt::cuda::{self, CudaModel, CudaSession, Gpu, GpuDtype, Harness, WLayout};
use diffugpt::rng::Rng;
use diffugpt::sampler::Sampler;
use diffugpt::{
    AttnMask, ComputeDevice, ConfidenceKind, GenerateParams, Gpt2, LengthMode, LengthPredictor,
    LoadOptions, Model, SamplingParams, Steps, Strategy,
};

/// The fixture model. `DIFFUGPT_ROOT` overrides the checkout's path compiled into the binary:
/// `scripts/gpu_run.sh` runs this test binary on another machine, in another directory.
fn fixture_dir() -> PathBuf {
    let root = std::env::var_os("DIFFUGPT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join("tests/fixtures/tiny-diffugpt")
}

/// Whether `DIFFUGPT_REQUIRE_GPU=1`: the GPU machine's run, where every skip is a failure.
fn gpu_required() -> bool {
    std::env::var_os("DIFFUGPT_REQUIRE_GPU").is_some_and(|v| v == "1")
}

/// Reports a skipped test on stderr, or fails it when a GPU run requires everything to run.
fn skip(why: &str) {
    assert!(!gpu_required(), "DIFFUGPT_REQUIRE_GPU=1 but {why}");
    eprintln!("SKIPPED: {why}");
}

/// The GPU, or None after reporting the skip (a failure under `DIFFUGPT_REQUIRE_GPU=1`).
fn gpu() -> Option<Arc<Gpu>> {
    if let Err(e) = cuda::device::probe() {
        skip(&format!("no GPU ({e})"));
        return None;
    }
    Some(Gpu::open(0).expect("a GPU was found but could not be opened"))
}

fn randn(n: usize, std: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * std).collect()
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut d, mut r) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        d += (g as f64 - w).powi(2);
        r += w * w;
    }
    (d / r.max(1e-300)).sqrt()
}

fn tol(d: GpuDtype) -> f64 {
    match d {
        GpuDtype::F32 => 1e-5,
        GpuDtype::Bf16 => 1e-2,
    }
}

fn check(name: &str, d: GpuDtype, got: &[f32], want: &[f64]) {
    let e = rel_err(got, want);
    println!(
        "ERR | {name:<28} | {:<4} | {e:.3e} | tol {:.0e}",
        d.name(),
        tol(d)
    );
    assert!(e <= tol(d), "{name} ({}): relative error {e:e}", d.name());
}

const DTYPES: [GpuDtype; 2] = [GpuDtype::F32, GpuDtype::Bf16];

// ---------------------------------------------------------------------------------------------
// Without a GPU.

#[test]
fn nvrtc_compiles_the_kernels() {
    if !cuda::device::nvrtc_available() {
        skip("libnvrtc cannot be loaded (set LD_LIBRARY_PATH; see scripts/cuda_ci_check.sh)");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let c = cuda::kernels::compile_for(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        // The CUBIN (what the GPU loads first) is an ELF image for this architecture.
        let cubin = c
            .cubin
            .as_ref()
            .unwrap_or_else(|e| panic!("{arch}: no CUBIN: {e}"));
        assert!(
            cubin.starts_with(b"\x7fELF"),
            "{arch}: the CUBIN is not ELF"
        );
        assert!(cubin.len() > 4096, "{arch}: CUBIN of {} bytes", cubin.len());
        let src = c.ptx.to_src();
        for k in [
            "embed_f32",
            "add_ln_bf16",
            "bias_gelu_f32",
            "gather_rows_bf16",
            "attention16_f32",
            "attention64_bf16",
            "step_decide",
        ] {
            assert!(
                src.contains(&format!(".entry {k}")),
                "{arch}: no kernel {k} in the PTX"
            );
        }
    }
}

#[test]
fn cuda_request_falls_back_to_the_cpu_without_a_gpu() {
    if cuda::gpu_available() {
        eprintln!("SKIPPED: a GPU is present (the fallback needs none)");
        return;
    }
    assert!(matches!(
        cuda::device::probe(),
        Err(diffugpt::Error::Cuda(_))
    ));
    assert!(matches!(Gpu::open(0), Err(diffugpt::Error::Cuda(_))));
    let gpu_model = Model::load(
        &fixture_dir(),
        LoadOptions {
            device: ComputeDevice::Cuda,
            dtype: Some(candle_core::DType::BF16),
            ..Default::default()
        },
    )
    .expect("a CUDA request without a GPU must still load (on the CPU)");
    let why = gpu_model
        .fallback
        .clone()
        .expect("the fallback is reported");
    assert!(!why.is_empty());
    assert_eq!(gpu_model.backend(), "cpu");
    assert_eq!(
        gpu_model.backend_report(),
        diffugpt::BackendReport::default()
    );
    assert!(!gpu_model.session().on_gpu());
    let cpu_model = Model::load(&fixture_dir(), LoadOptions::default()).unwrap();
    assert!(cpu_model.fallback.is_none());
    let p = GenerateParams {
        canvas_len: 16,
        ..Default::default()
    };
    let a = gpu_model.generate_text("Hello", &p).unwrap();
    let b = cpu_model.generate_text("Hello", &p).unwrap();
    assert_eq!(a.generation.tokens, b.generation.tokens);
}

#[test]
fn cli_device_cuda_falls_back_without_a_gpu() {
    if cuda::gpu_available() {
        eprintln!("SKIPPED: a GPU is present (the fallback needs none)");
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffugpt"))
        .args([
            "generate", "--device", "cuda", "--canvas", "8", "--prompt", "Hi",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {err}");
    assert!(err.contains("running on the CPU"), "stderr: {err}");
}

#[test]
fn c_api_device_cuda_falls_back_without_a_gpu() {
    use diffugpt::ffi::dgpt_status::*;
    use diffugpt::ffi::*;
    if cuda::gpu_available() {
        eprintln!("SKIPPED: a GPU is present (the fallback needs none)");
        return;
    }
    let path = std::ffi::CString::new(fixture_dir().to_str().unwrap()).unwrap();
    let mut p = dgpt_model_default_params();
    p.device = 1;
    p.dtype = 1;
    let mut m: *mut dgpt_model = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated path, params and out pointer.
    let st = unsafe { dgpt_model_load(path.as_ptr(), &p, &mut m) };
    assert_eq!(st, DGPT_OK);
    assert!(!m.is_null());
    // SAFETY: from dgpt_model_load.
    unsafe { dgpt_model_free(m) };
    // bf16 on the CPU is a weight format of its own (cpu:bf16), so it loads.
    let mut q = dgpt_model_default_params();
    q.dtype = 1;
    // SAFETY: as above.
    let st = unsafe { dgpt_model_load(path.as_ptr(), &q, &mut m) };
    assert_eq!(st, DGPT_OK);
    // SAFETY: from dgpt_model_load.
    unsafe { dgpt_model_free(m) };
    // int8 is CPU-only: asked for with the CUDA device it is refused, even where CUDA would
    // fall back, so the caller never silently gets a different format than it asked for.
    q.dtype = 2;
    q.device = 1;
    // SAFETY: as above.
    assert_ne!(
        unsafe { dgpt_model_load(path.as_ptr(), &q, &mut m) },
        DGPT_OK
    );
    // Unknown devices are refused too.
    q.dtype = 0;
    q.device = 7;
    // SAFETY: as above.
    assert_ne!(
        unsafe { dgpt_model_load(path.as_ptr(), &q, &mut m) },
        DGPT_OK
    );
}

// ---------------------------------------------------------------------------------------------
// CPU references (f64).

fn ref_layernorm(x: &[f64], w: &[f32], b: &[f32], rows: usize, c: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; rows * c];
    for r in 0..rows {
        let xr = &x[r * c..(r + 1) * c];
        let mean = xr.iter().sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for i in 0..c {
            out[r * c + i] = (xr[i] - mean) * rstd * w[i] as f64 + b[i] as f64;
        }
    }
    out
}

fn ref_gelu(y: f64) -> f64 {
    0.5 * y * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (y + 0.044715 * y.powi(3))).tanh())
}

#[allow(clippy::too_many_arguments)]
fn ref_attention(
    qkv: &[f32],
    bias: &[f32],
    t: usize,
    nh: usize,
    hd: usize,
    causal: bool,
) -> Vec<f64> {
    let c = nh * hd;
    let at = |r: usize, col: usize| qkv[r * 3 * c + col] as f64 + bias[col] as f64;
    let mut out = vec![0.0; t * c];
    for h in 0..nh {
        for q in 0..t {
            let keys = if causal { q + 1 } else { t };
            let s: Vec<f64> = (0..keys)
                .map(|k| {
                    (0..hd)
                        .map(|d| at(q, h * hd + d) * at(k, c + h * hd + d))
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                out[q * c + h * hd + d] = (0..keys)
                    .map(|k| e[k] / z * at(k, 2 * c + h * hd + d))
                    .sum::<f64>();
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Kernels, with a GPU.

#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn kernel_add_ln_matches_cpu() {
    let Some(g) = gpu() else { return };
    let h = Harness::new(g).unwrap();
    let mut rng = Rng::new(1);
    for d in DTYPES {
        for (rows, c) in [(7, 32), (64, 768), (3, 1000)] {
            let x = randn(rows * c, 1.0, &mut rng);
            let add = randn(rows * c, 0.5, &mut rng);
            let ab = randn(c, 0.1, &mut rng);
            let w: Vec<f32> = randn(c, 0.2, &mut rng).iter().map(|v| 1.0 + v).collect();
            let b = randn(c, 0.1, &mut rng);
            // Reference on the values the GPU sees (T-typed vectors rounded).
            let r = |v: &[f32]| d.decode(&d.encode(v));
            let (abr, wr, br) = (r(&ab), r(&w), r(&b));
            let sum: Vec<f64> = (0..rows * c)
                .map(|i| x[i] as f64 + add[i] as f64 + abr[i % c] as f64)
                .collect();
            let want = ref_layernorm(&sum, &wr, &br, rows, c, 1e-5);
            let (xo, out) = h
                .add_ln(d, &x, Some((&add, &ab)), &w, &b, rows, c, 1e-5)
                .unwrap();
            check(
                &format!("add_ln residual {rows}x{c}"),
                GpuDtype::F32,
                &xo,
                &sum,
            );
            check(&format!("add_ln {rows}x{c}"), d, &out, &want);
            // Without the residual.
            let (_, out) = h.add_ln(d, &x, None, &w, &b, rows, c, 1e-5).unwrap();
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            check(
                &format!("ln {rows}x{c}"),
                d,
                &out,
                &ref_layernorm(&x64, &wr, &br, rows, c, 1e-5),
            );
        }
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn kernel_bias_gelu_matches_cpu() {
    let Some(g) = gpu() else { return };
    let h = Harness::new(g).unwrap();
    let mut rng = Rng::new(2);
    for d in DTYPES {
        for (rows, n) in [(5, 128), (64, 3072)] {
            let x = randn(rows * n, 2.0, &mut rng);
            let b = randn(n, 0.5, &mut rng);
            let br = d.decode(&d.encode(&b));
            let want: Vec<f64> = (0..rows * n)
                .map(|i| ref_gelu(x[i] as f64 + br[i % n] as f64))
                .collect();
            let got = h.bias_gelu(d, &x, &b, rows, n).unwrap();
            check(&format!("bias_gelu {rows}x{n}"), d, &got, &want);
        }
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn kernel_attention_matches_cpu() {
    let Some(g) = gpu() else { return };
    let h = Harness::new(g).unwrap();
    let mut rng = Rng::new(3);
    for d in DTYPES {
        for (t, nh, hd) in [
            (1, 2, 16),
            (37, 2, 16),
            (100, 3, 32),
            (64, 12, 64),
            (300, 4, 64),
        ] {
            for causal in [false, true] {
                let c = nh * hd;
                let qkv = randn(t * 3 * c, 1.0, &mut rng);
                let bias = randn(3 * c, 0.2, &mut rng);
                let want = ref_attention(&qkv, &d.decode(&d.encode(&bias)), t, nh, hd, causal);
                let got = h.attention(d, &qkv, &bias, t, nh, hd, causal).unwrap();
                let name = format!(
                    "attention t{t} h{nh}x{hd}{}",
                    if causal { " causal" } else { "" }
                );
                check(&name, d, &got, &want);
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn kernel_gemm_matches_cpu() {
    let Some(g) = gpu() else { return };
    let h = Harness::new(g).unwrap();
    let mut rng = Rng::new(4);
    for d in DTYPES {
        for (m, k, n) in [(3, 32, 96), (64, 768, 2304), (17, 768, 1000)] {
            let x = randn(m * k, 1.0, &mut rng);
            let w = randn(k * n, 0.05, &mut rng);
            let (xr, wr) = (d.decode(&d.encode(&x)), d.decode(&d.encode(&w)));
            // KN: w is [k, n].
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (r, col) = (i / n, i % n);
                    (0..k)
                        .map(|j| xr[r * k + j] as f64 * wr[j * n + col] as f64)
                        .sum()
                })
                .collect();
            let got = h.gemm(d, &x, &w, WLayout::KN, m, k, n).unwrap();
            check(&format!("gemm x@w {m}x{k}x{n}"), d, &got, &want);
            // NK: the same numbers read as [n, k] (the LM head against the embedding).
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (r, col) = (i / n, i % n);
                    (0..k)
                        .map(|j| xr[r * k + j] as f64 * wr[col * k + j] as f64)
                        .sum()
                })
                .collect();
            let got = h.gemm(d, &x, &w, WLayout::NK, m, k, n).unwrap();
            check(&format!("gemm x@w^T {m}x{k}x{n}"), d, &got, &want);
        }
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn kernel_step_decide_matches_sampler() {
    let Some(g) = gpu() else { return };
    let h = Harness::new(g).unwrap();
    let mut rng = Rng::new(5);
    let (n, v) = (40, 50257);
    let mut logits = randn(n * v, 3.0, &mut rng);
    // Rows with the banned id on top, with exact ties, with a dominant end token.
    logits[10541] = 100.0;
    logits[v + 7] = 50.0;
    logits[v + 9] = 50.0;
    logits[2 * v + 50256] = 40.0;
    let (ends, banned) = ([50256u32, 50255], [10541u32]);
    let got = h.step_decide(&logits, n, v, &ends, &banned).unwrap();
    let mut worst = [0.0f64; 4];
    for kind in [
        ConfidenceKind::Prob,
        ConfidenceKind::Margin,
        ConfidenceKind::NegEntropy,
    ] {
        let mut s = Sampler::new(
            SamplingParams::default(),
            kind,
            v,
            ends.to_vec(),
            banned.to_vec(),
        );
        for r in 0..n {
            let mut row = logits[r * v..(r + 1) * v].to_vec();
            let raw = diffugpt::sampler::argmax(&row).0 as u32;
            let c = s.choose(&mut row, &mut Rng::new(0));
            let gd = got[r];
            assert_eq!(gd.token, c.token, "row {r}: token");
            assert_eq!(gd.raw_argmax, raw, "row {r}: raw argmax");
            let conf = match kind {
                ConfidenceKind::Prob => gd.prob,
                ConfidenceKind::Margin => gd.margin,
                ConfidenceKind::NegEntropy => gd.neg_entropy,
            };
            let e = |a: f32, b: f32| ((a - b).abs() / b.abs().max(1e-6)) as f64;
            // The margin is a difference of probabilities: near a tie it is tiny and its relative
            // error meaningless, so it is measured against the top probability.
            let err = match kind {
                ConfidenceKind::Margin => {
                    ((conf - c.confidence).abs() / c.confidence.abs().max(gd.prob)) as f64
                }
                _ => e(conf, c.confidence),
            };
            worst[kind as usize] = worst[kind as usize].max(err);
            worst[3] = worst[3].max(e(gd.p_end, c.p_end));
        }
    }
    for (i, name) in ["prob", "margin", "neg entropy", "p_end"]
        .iter()
        .enumerate()
    {
        println!(
            "ERR | step_decide {name:<16} | f32  | {:.3e} | tol 1e-4 (max rel)",
            worst[i]
        );
        assert!(worst[i] <= 1e-4, "step_decide {name}: {:e}", worst[i]);
    }
    assert_ne!(got[0].token, 10541, "the banned id is never chosen");
    assert_eq!(got[0].raw_argmax, 10541);
    assert_eq!(got[1].token, 7, "ties go to the first index");
    assert!(got[1].margin.abs() < 1e-6, "a tie has margin 0");
    assert!(got[2].p_end > 0.99);
}

// ---------------------------------------------------------------------------------------------
// Whole forward and decoding, with a GPU.

fn forward_vs_cpu(name: &str, g: &Arc<Gpu>, model: &Gpt2, t: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let ids: Vec<u32> = (0..t)
        .map(|_| {
            (rng.next_f64() * model.cfg.vocab_size as f64) as u32 % model.cfg.vocab_size as u32
        })
        .collect();
    let input = Tensor::from_slice(&ids, (1, t), &Device::Cpu).unwrap();
    let want = model
        .hidden(&input, &AttnMask::Bidirectional, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    for d in DTYPES {
        let cm = Arc::new(CudaModel::upload(g.clone(), model, d).unwrap());
        let mut s = CudaSession::new(cm, t).unwrap();
        s.forward(&ids, false).unwrap();
        let got = s.hidden_to_host().unwrap();
        // bf16 through 12 layers accumulates more than one kernel's rounding: 2e-2 there.
        let e = rel_err(&got, &want);
        let tolerance = if d == GpuDtype::F32 { 1e-4 } else { 3e-2 };
        println!(
            "ERR | forward {name} T={t:<5} | {:<4} | {e:.3e} | tol {tolerance:.0e}",
            d.name()
        );
        assert!(e <= tolerance, "forward {name} T={t} {}: {e:e}", d.name());
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn forward_tiny_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cfg = ModelConfig::tiny(1000);
    let ids = SpecialIds::resolve(
        1000,
        &Default::default(),
        &SpecialIdOverrides {
            eos: Some(999),
            mask: Some(998),
            pad: None,
        },
    )
    .unwrap();
    let m = Gpt2::random(cfg, ids, 11, &Device::Cpu).unwrap();
    for t in [1, 5, 64, 200] {
        forward_vs_cpu("tiny", &g, &m, t, t as u64);
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn forward_diffugpt_s_shaped_matches_cpu() {
    let Some(g) = gpu() else { return };
    let m = diffugpt::bench::random_small_model(3).unwrap();
    for t in [64, 1024] {
        forward_vs_cpu("S-shaped", &g, &m, t, t as u64);
    }
}

fn greedy_params(len: LengthMode, strategy: Strategy) -> GenerateParams {
    GenerateParams {
        canvas_len: 48,
        steps: Steps::Fixed(16),
        strategy,
        length: len,
        seed: 7,
        ..Default::default()
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn greedy_eos_first_decode_equals_cpu() {
    let Some(_g) = gpu() else { return };
    let cpu = Model::load(&fixture_dir(), LoadOptions::default()).unwrap();
    let gpu = Model::load(
        &fixture_dir(),
        LoadOptions {
            device: ComputeDevice::Cuda,
            dtype: Some(candle_core::DType::F32),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(gpu.fallback.is_none(), "{:?}", gpu.fallback);
    assert!(gpu.session().on_gpu());
    let prompt = cpu
        .tokenizer()
        .unwrap()
        .encode("The meaning of life is")
        .unwrap();
    let eos_first = LengthMode::EosFirst {
        predictor: LengthPredictor::Quantile(0.9),
        margin: 4,
        margin_ratio: 0.25,
        grow: true,
    };
    for (len, strategy) in [
        (eos_first, Strategy::Confidence(ConfidenceKind::Prob)),
        (eos_first, Strategy::Confidence(ConfidenceKind::Margin)),
        (LengthMode::Fixed, Strategy::RandomKeep),
        (
            LengthMode::EosFirst {
                predictor: LengthPredictor::ArgmaxFirst,
                margin: 4,
                margin_ratio: 0.0,
                grow: true,
            },
            Strategy::Confidence(ConfidenceKind::Prob),
        ),
    ] {
        let p = greedy_params(len, strategy);
        let a = cpu.session().generate(&prompt, &p, None).unwrap();
        let b = gpu.session().generate(&prompt, &p, None).unwrap();
        assert_eq!(a.canvas, b.canvas, "{len:?} {strategy:?}");
        assert_eq!(
            a.stats.forward_sizes, b.stats.forward_sizes,
            "{len:?} {strategy:?}"
        );
        assert_eq!(a.stats.predicted_len, b.stats.predicted_len);
    }
    // Sampling runs on the host sampler from GPU logits (the rows are copied back): it must run
    // and keep to the canvas. Equality with the CPU is not asserted: a draw may flip on f32 noise.
    let mut p = greedy_params(eos_first, Strategy::Confidence(ConfidenceKind::Prob));
    p.sampling.temperature = 0.8;
    p.sampling.top_k = 20;
    let b = gpu.session().generate(&prompt, &p, None).unwrap();
    assert!(b.canvas.len() <= p.canvas_len && b.stats.steps > 0);
    // Sessions are pooled: the calls above reused one set of device buffers.
    assert!(gpu.backend_report().graph_failures.is_empty());
}

/// Negative-entropy ranking on the GPU equals the CPU's where the ranking is the model's, not
/// rounding's. The fixture's rows are close to uniform over 50257 tokens (entropies within
/// ~1.7e-4 of each other, while a sequential f32 sum is off by ~1e-4): on them any two correct
/// implementations may order slots differently. With `ln_f` scaled by 40 the same network has
/// peaked rows whose entropies are far apart; the CPU sums the entropy in f64, the GPU blockwise.
#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn greedy_neg_entropy_on_peaked_logits_equals_cpu() {
    let Some(_g) = gpu() else { return };
    let base = Model::load(&fixture_dir(), LoadOptions::default()).unwrap();
    let prompt = base
        .tokenizer()
        .unwrap()
        .encode("The meaning of life is")
        .unwrap();
    let mut peaked = base.gpt.unpacked().unwrap();
    peaked.ln_f.weight = (&peaked.ln_f.weight * 40.0).unwrap();
    peaked.ln_f.bias = (&peaked.ln_f.bias * 40.0).unwrap();
    let cpu = Model::from_gpt(peaked.clone(), ComputeDevice::Cpu, None).unwrap();
    let gpu = Model::from_gpt(peaked, ComputeDevice::Cuda, Some(candle_core::DType::F32)).unwrap();
    assert!(gpu.fallback.is_none(), "{:?}", gpu.fallback);
    let strategy = Strategy::Confidence(ConfidenceKind::NegEntropy);
    for len in [
        LengthMode::Fixed,
        LengthMode::EosFirst {
            predictor: LengthPredictor::Quantile(0.9),
            margin: 4,
            margin_ratio: 0.25,
            grow: true,
        },
    ] {
        let p = greedy_params(len, strategy);
        let a = cpu.session().generate(&prompt, &p, None).unwrap();
        let b = gpu.session().generate(&prompt, &p, None).unwrap();
        assert_eq!(a.canvas, b.canvas, "{len:?}");
        assert_eq!(a.stats.forward_sizes, b.stats.forward_sizes, "{len:?}");
    }
}

/// The end floor on the GPU decision path (rows before the floor decided with the end ids banned)
/// gives the CPU's answers on the ramp model, whose end probabilities reach every floor.
#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn end_floor_on_the_gpu_equals_cpu() {
    let Some(_g) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    common::save_model(&common::ramp_table().build(), dir.path());
    let cpu = Model::load(dir.path(), LoadOptions::default()).unwrap();
    let gpu = Model::load(
        dir.path(),
        LoadOptions {
            device: ComputeDevice::Cuda,
            dtype: Some(candle_core::DType::F32),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(gpu.session().on_gpu());
    for len in [
        LengthMode::Fixed,
        LengthMode::EosFirst {
            predictor: LengthPredictor::Quantile(0.9),
            margin: 0,
            margin_ratio: 0.0,
            grow: false,
        },
    ] {
        for (floor, answer_len) in [(0.0, 5), (0.9, 6), (0.99, 7)] {
            let mut p = greedy_params(len, Strategy::Confidence(ConfidenceKind::Prob));
            p.canvas_len = 8;
            p.steps = Steps::Fixed(8);
            p.end_floor = floor;
            let a = cpu.session().generate(&common::PROMPT, &p, None).unwrap();
            let b = gpu.session().generate(&common::PROMPT, &p, None).unwrap();
            assert_eq!(a.tokens.len(), answer_len, "{len:?} floor {floor}");
            assert_eq!(a.canvas, b.canvas, "{len:?} floor {floor}");
        }
    }
}

/// Runs everywhere: the f64 references above agree with the CPU model's own ops, so a GPU test
/// failing later points at the GPU, not at the reference.
#[test]
fn references_agree_with_candle_ops() {
    let mut rng = Rng::new(9);
    let (rows, c) = (5, 48);
    let x = randn(rows * c, 1.0, &mut rng);
    let w: Vec<f32> = randn(c, 0.2, &mut rng).iter().map(|v| 1.0 + v).collect();
    let b = randn(c, 0.1, &mut rng);
    let xt = Tensor::from_slice(&x, (rows, c), &Device::Cpu).unwrap();
    let wt = Tensor::from_slice(&w, c, &Device::Cpu).unwrap();
    let bt = Tensor::from_slice(&b, c, &Device::Cpu).unwrap();
    let ln = candle_nn::ops::layer_norm(&xt, &wt, &bt, 1e-5)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    assert!(rel_err(&ln, &ref_layernorm(&x64, &w, &b, rows, c, 1e-5)) < 1e-5);
    let g = xt
        .gelu()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want: Vec<f64> = x64.iter().map(|&v| ref_gelu(v)).collect();
    assert!(rel_err(&g, &want) < 1e-5);

    let (t, nh, hd) = (9, 2, 16);
    let cc = nh * hd;
    let qkv = randn(t * 3 * cc, 1.0, &mut rng);
    let bias = randn(3 * cc, 0.2, &mut rng);
    for causal in [false, true] {
        // softmax(q k^T / sqrt(hd) + mask) v per head, with candle ops.
        let full: Vec<f32> = (0..t * 3 * cc)
            .map(|i| qkv[i] + bias[i % (3 * cc)])
            .collect();
        let m = Tensor::from_slice(&full, (t, 3, nh, hd), &Device::Cpu).unwrap();
        let m = m.permute((1, 2, 0, 3)).unwrap(); // [3, nh, t, hd]
        let (q, k, v) = (
            m.get(0).unwrap().contiguous().unwrap(),
            m.get(1).unwrap().contiguous().unwrap(),
            m.get(2).unwrap().contiguous().unwrap(),
        );
        let mut s = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
        if causal {
            let mask: Vec<f32> = (0..t * t)
                .map(|i| {
                    if i % t > i / t {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_slice(&mask, (t, t), &Device::Cpu).unwrap();
            s = s.broadcast_add(&mask).unwrap();
        }
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        let y = p.matmul(&v).unwrap().transpose(0, 1).unwrap(); // [t, nh, hd]
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = ref_attention(&qkv, &bias, t, nh, hd, causal);
        assert!(rel_err(&y, &want) < 1e-5, "causal {causal}");
    }
    // The host-side bf16 encoding is round-to-nearest-even, like the kernels' stores.
    // 1 + 2^-8 and 1 + 3 * 2^-8 lie halfway between two bf16 values: ties go to the even one.
    let xs = [
        1.0f32,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -3.3e-5,
        65504.0,
    ];
    let back = GpuDtype::Bf16.decode(&GpuDtype::Bf16.encode(&xs));
    for (a, b) in xs.iter().zip(&back) {
        assert_eq!(*b, half::bf16::from_f32(*a).to_f32());
    }
}

/// A replayed graph runs the same kernels on the same buffers as the direct forward, so within
/// one session (one stream, one cuBLAS handle: cuBLAS promises the same results only for the same
/// handle and stream) the hidden states are bit for bit the same. Each length runs directly,
/// then with graphs three times: the first is an ordinary forward (the warm-up before any
/// capture), the second captures, the third replays.
#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn graph_replay_equals_direct_forward() {
    let Some(g) = gpu() else { return };
    let m = diffugpt::bench::random_small_model(5).unwrap();
    let cm = Arc::new(CudaModel::upload(g, &m, GpuDtype::Bf16).unwrap());
    let mut s = CudaSession::new(cm, 600).unwrap();
    let mut rng = Rng::new(1);
    for (i, t) in [545, 41, 545, 41].into_iter().enumerate() {
        let ids: Vec<u32> = (0..t)
            .map(|_| (rng.next_f64() * 50257.0) as u32 % 50257)
            .collect();
        s.set_graphs(false);
        s.forward(&ids, false).unwrap();
        let direct = s.hidden_to_host().unwrap();
        s.set_graphs(true);
        for run in 0..3 {
            s.forward(&ids, false).unwrap();
            assert_eq!(
                s.hidden_to_host().unwrap(),
                direct,
                "T={t}, graphed run {run}: the same kernels on the same buffers"
            );
        }
        assert!(s.take_graph_failures().is_empty());
        // Two shapes captured once each, then only replayed.
        assert_eq!(s.graph_counts(), ((i + 1).min(2), (i + 1).min(2)));
    }
}

/// The graph cache is bounded: more lengths than it holds evict the least recently used.
#[test]
#[ignore = "needs a GPU: scripts/gpu_run.sh runs it (--include-ignored)"]
fn graph_cache_is_bounded() {
    let Some(g) = gpu() else { return };
    let m = Gpt2::random(
        ModelConfig::tiny(1000),
        SpecialIds::resolve(
            1000,
            &Default::default(),
            &SpecialIdOverrides {
                eos: Some(999),
                mask: Some(998),
                pad: None,
            },
        )
        .unwrap(),
        3,
        &Device::Cpu,
    )
    .unwrap();
    let cm = Arc::new(CudaModel::upload(g, &m, GpuDtype::F32).unwrap());
    let mut s = CudaSession::new(cm, 64).unwrap();
    s.set_graphs(true);
    let n = CudaSession::graph_cache_capacity() + 4;
    for t in 1..=n {
        let ids: Vec<u32> = (0..t as u32).collect();
        s.forward(&ids, false).unwrap();
        s.forward(&ids, false).unwrap();
    }
    assert!(s.take_graph_failures().is_empty());
    assert_eq!(s.graph_counts(), (CudaSession::graph_cache_capacity(), n));
}
