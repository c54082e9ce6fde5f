//! bf16 and int8 weights on the CPU (`LoadOptions::cpu_weights`, `Gpt2::pack_for_cpu_as`):
//! logits against the f32 forward (and the golden NumPy logits) within stated tolerances, the
//! KV-cache one-row path against the full causal forward, memory against f32, and a clear
//! refusal where the kernels do not run.
//!
//! Tolerances (max |Δ| / max |f32 logit|): 1e-2 for both (issue 16's target; measured 1.3e-3
//! for bf16, which keeps 8 bits of mantissa, and 4.2e-3 for int8, one f32 scale per 32
//! weights: half a step is <= 0.4% of the block's largest weight). The one-row KV-cache steps against the full causal forward in the same
//! format: 1e-4 (the same weights, only the summation order differs).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use diffugpt::config::{ModelConfig, SpecialIdOverrides, SpecialIds};
use diffugpt::cpu_quant::WeightFormat;
use diffugpt::model::{Gpt2, KvCache};
use diffugpt::{AttnMask, LoadOptions, Model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

fn rel_err(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    let (mut d, mut r) = (0f32, 0f32);
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            d = d.max((a - b).abs());
            r = r.max(b.abs());
        }
    }
    d / r
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

/// Relative logit error (largest difference over the largest |logit|) allowed against f32.
/// bf16 on `vdpbf16ps` rounds the activations to bf16 too (8-bit mantissa, 2^-9 relative per
/// element, on top of the weights' rounding): measured on the parity fixture of width 16 at
/// 1.15e-2 and on the default model at 1.6e-2 worst / 6.7e-3 mean per sequence (against 8.4e-3
/// and 7e-3 for the weights alone; benches/README.md), hence 2e-2 on that path. On AMX tiles the
/// activations are two bf16 terms (16 bits): the weights' rounding alone, as decoding.
fn tol(f: WeightFormat) -> f32 {
    match f {
        WeightFormat::F32 => 1e-4,
        WeightFormat::Bf16 if diffugpt::cpu_bf16::path() == diffugpt::cpu_bf16::Bf16Path::Dot => {
            2e-2
        }
        WeightFormat::Bf16 => 1e-2,
        WeightFormat::Int8 => 1e-2,
    }
}

/// A random model whose widths are multiples of 32 (int8's block), larger than the parity
/// fixtures so that the head and the projections span several strips and blocks.
fn random_model() -> Gpt2 {
    let cfg = ModelConfig {
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        n_inner: 256,
        n_positions: 64,
        vocab_size: 300,
        ..ModelConfig::gpt2_small()
    };
    let ids =
        SpecialIds::resolve(300, &Default::default(), &SpecialIdOverrides::default()).unwrap();
    Gpt2::random(cfg, ids, 3, &Device::Cpu).unwrap()
}

fn ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

/// Causal logits of `ids` fed one position at a time through the KV cache.
fn one_row_steps(m: &Gpt2, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(m.cfg.n_layer);
    ids.iter()
        .map(|&id| {
            let t = Tensor::from_slice(&[id], (1, 1), &Device::Cpu).unwrap();
            let h = m
                .hidden(&t, &AttnMask::Causal, Some(&mut cache))
                .unwrap()
                .squeeze(0)
                .unwrap();
            m.logits(&h).unwrap().to_vec2::<f32>().unwrap().remove(0)
        })
        .collect()
}

#[test]
fn compressed_weights_match_the_f32_forward() {
    let base = random_model();
    let mut f32m = base.clone();
    f32m.pack_for_cpu().unwrap();
    let x = ids(40, base.cfg.vocab_size);
    let want = f32m
        .forward_logits(&x, &AttnMask::Bidirectional)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for f in [WeightFormat::Bf16, WeightFormat::Int8] {
        let mut m = base.clone();
        if !diffugpt::cpu_gemm::available() {
            let e = m.pack_for_cpu_as(f).unwrap_err().to_string();
            assert!(e.contains("kernels"), "{e}");
            continue;
        }
        m.pack_for_cpu_as(f).unwrap();
        assert_eq!(m.weight_format(), f);
        assert_eq!(
            m.wte.dtype(),
            if f == WeightFormat::Bf16 {
                DType::BF16
            } else {
                DType::U8
            }
        );
        let got = m
            .forward_logits(&x, &AttnMask::Bidirectional)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let e = rel_err(&got, &want);
        assert!(e <= tol(f), "{} rel err {e}", f.name());
        // The weights did change (a format that silently stayed f32 would pass the above).
        assert!(e > 1e-6, "{} logits equal f32's: not compressed?", f.name());
        let agree = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| argmax(g) == argmax(w))
            .count();
        assert!(
            agree * 10 >= got.len() * 9,
            "{}: top-1 {agree}/{}",
            f.name(),
            got.len()
        );

        // One-row KV-cache steps (the strip and head paths at m = 1) against the full causal
        // forward of the same compressed model.
        let causal = m
            .forward_logits(&x[..12], &AttnMask::Causal)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let e = rel_err(&one_row_steps(&m, &x[..12]), &causal);
        assert!(e <= 1e-4, "{} KV-cache steps rel err {e}", f.name());

        // Everything that reads weights by name gets f32 back, close to the originals.
        let named = m.named_tensors().unwrap();
        assert!(named.iter().all(|(_, t)| t.dtype() == DType::F32));
        let plain = m.unpacked().unwrap();
        let back = plain.forward_logits(&x, &AttnMask::Bidirectional).unwrap();
        let e = rel_err(&back.to_vec2::<f32>().unwrap(), &got);
        // The same weights: 1e-4, unless int8 runs on integer dot products (activations rounded
        // to int8 per block of 32 as well) or bf16 on vdpbf16ps (activations rounded to bf16):
        // then within the format's tolerance.
        let rounds_activations = match f {
            WeightFormat::Int8 => diffugpt::cpu_int8::active(),
            WeightFormat::Bf16 => diffugpt::cpu_bf16::active(),
            WeightFormat::F32 => false,
        };
        let same_weights_tol = if rounds_activations { tol(f) } else { 1e-4 };
        assert!(
            e <= same_weights_tol,
            "{} decoded copy rel err {e}",
            f.name()
        );
    }
}

/// The weights really shrink: bf16 about half of f32, int8 under 0.3x (biases, LayerNorms and
/// the position table stay f32; this model is small, so they weigh more than in GPT-2).
#[test]
fn compressed_weights_take_less_memory() {
    if !diffugpt::cpu_gemm::available() {
        return;
    }
    let mut f32m = random_model();
    f32m.pack_for_cpu().unwrap();
    let full = f32m.weight_bytes() as f64;
    for (f, most) in [(WeightFormat::Bf16, 0.55), (WeightFormat::Int8, 0.32)] {
        let mut m = random_model();
        m.pack_for_cpu_as(f).unwrap();
        let r = m.weight_bytes() as f64 / full;
        assert!(r <= most, "{}: {r:.3} of f32", f.name());
    }
}

/// Through `Model::load`: bf16 against the golden NumPy logits of the tied and untied parity
/// fixtures; `dtype: BF16` on the CPU means bf16 weights; int8 refuses widths that are not
/// multiples of 32 (the fixtures' 16) with a message.
#[test]
fn loading_in_a_format() {
    for name in ["diffugpt-f32", "gpt2-f32"] {
        let opts = LoadOptions {
            dtype: Some(DType::BF16),
            ..Default::default()
        };
        let m = match Model::load(&fixture(name), opts) {
            Ok(m) => m,
            Err(e) => {
                assert!(!diffugpt::cpu_gemm::available(), "{name}: {e}");
                continue;
            }
        };
        assert_eq!(m.gpt.weight_format(), WeightFormat::Bf16, "{name}");
        assert_eq!(m.backend(), "cpu:bf16");
        let g =
            candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu)
                .unwrap();
        let x: Vec<u32> = g["ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
        let want: Vec<Vec<f32>> = g["logits_diffusion"].to_vec2().unwrap();
        let got = m.gpt.forward_logits(&x, &AttnMask::Bidirectional).unwrap();
        let e = rel_err(&got.to_vec2::<f32>().unwrap(), &want);
        assert!(e <= tol(WeightFormat::Bf16), "{name}: bf16 rel err {e}");

        let opts = LoadOptions {
            cpu_weights: WeightFormat::Int8,
            ..Default::default()
        };
        let e = Model::load(&fixture(name), opts).err().unwrap().to_string();
        assert!(e.contains("multiples of 32"), "{name}: {e}");
    }
}
