//! Parity against golden logits from an independent NumPy reference (scripts/make_parity_fixtures.py)
//! on tiny random models in the DiffuGPT and HF GPT-2 layouts, stored as F32, F16 and BF16.
//! Tolerance: max |Δ| / max |ref| <= 1e-4 (f32 compute).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use diffugpt::model::KvCache;
use diffugpt::{AttnMask, LoadOptions, Model};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

fn golden(name: &str) -> (Vec<u32>, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let g = candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu)
        .unwrap();
    let ids: Vec<u32> = g["ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let d = g["logits_diffusion"].to_vec2().unwrap();
    let c = g["logits_causal"].to_vec2().unwrap();
    (ids, d, c)
}

fn rel_err(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len());
    let mut max_d = 0f32;
    let mut max_r = 0f32;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            max_d = max_d.max((a - b).abs());
            max_r = max_r.max(b.abs());
        }
    }
    max_d / max_r
}

fn check_model(name: &str, expect_layout: &str, untied: bool) {
    let m = Model::load(&fixture(name), LoadOptions::default()).unwrap();
    // Loading packs the projections for the CPU kernels where they run: the golden logits
    // below then check the packed path (and the KV cache's 1-row products through it).
    assert_eq!(m.gpt.is_packed(), diffugpt::cpu_gemm::available(), "{name}");
    assert_eq!(m.info.layout.name(), expect_layout, "{name}");
    assert_eq!(m.info.untied_head, untied, "{name}");
    let (ids, want_d, want_c) = golden(name);
    let d = m
        .gpt
        .forward_logits(&ids, &AttnMask::Bidirectional)
        .unwrap();
    let e = rel_err(&d.to_vec2().unwrap(), &want_d);
    assert!(e <= TOL, "{name} diffusion rel err {e}");
    let c = m.gpt.forward_logits(&ids, &AttnMask::Causal).unwrap();
    let e = rel_err(&c.to_vec2().unwrap(), &want_c);
    assert!(e <= TOL, "{name} causal rel err {e}");
    // The head comes out of the loader already in the kernels' strips (converted in place as
    // it is read), laid out as `pack_for_cpu` lays out a plain model's: bitwise the same logits.
    let own = diffugpt::cpu_gemm::available();
    assert_eq!(m.gpt.head().rank() == 3, own, "{name}: head layout");
    let (mut plain, _) = diffugpt::weights::load(&fixture(name), LoadOptions::default()).unwrap();
    assert_eq!(
        plain.head().rank(),
        2,
        "{name}: weights::load keeps the rows"
    );
    plain.pack_for_cpu().unwrap();
    assert_eq!(
        plain.head().rank() == 3,
        own,
        "{name}: pack_for_cpu's head layout"
    );
    let p = plain
        .forward_logits(&ids, &AttnMask::Bidirectional)
        .unwrap();
    assert!(
        p.to_vec2::<f32>().unwrap() == d.to_vec2::<f32>().unwrap(),
        "{name}: loaded strips and packed rows differ"
    );

    // The KV cache, fed in uneven chunks, reproduces the causal rows.
    let mut cache = KvCache::new(m.gpt.cfg.n_layer);
    let mut rows = Vec::new();
    for chunk in [&ids[..5], &ids[5..6], &ids[6..]] {
        let t = Tensor::from_slice(chunk, (1, chunk.len()), &Device::Cpu).unwrap();
        let h = m
            .gpt
            .hidden(&t, &AttnMask::Causal, Some(&mut cache))
            .unwrap();
        let l = m.gpt.logits(&h.squeeze(0).unwrap()).unwrap();
        rows.extend(l.to_vec2::<f32>().unwrap());
    }
    assert_eq!(cache.len(), ids.len());
    let e = rel_err(&rows, &want_c);
    assert!(e <= TOL, "{name} kv-cache rel err {e}");
}

#[test]
fn diffugpt_layout_f32() {
    check_model("diffugpt-f32", "diffugpt", false);
}

#[test]
fn diffugpt_layout_f16_and_eps_from_config() {
    check_model("diffugpt-f16", "diffugpt", false);
    let m = Model::load(&fixture("diffugpt-f16"), LoadOptions::default()).unwrap();
    assert_eq!(m.gpt.cfg.layer_norm_eps, 1e-6);
}

#[test]
fn hf_gpt2_layout_untied_head_f32() {
    check_model("gpt2-f32", "hf-gpt2", true);
}

#[test]
fn hf_gpt2_layout_bf16() {
    check_model("gpt2-bf16", "hf-gpt2", false);
}

#[test]
fn wrong_eps_would_be_detected() {
    // Guards the tolerance: loading the eps=1e-6 model with eps 1e-5 must exceed it.
    let mut m = Model::load(&fixture("diffugpt-f16"), LoadOptions::default()).unwrap();
    m.gpt.cfg.layer_norm_eps = 1e-5;
    let (ids, want_d, _) = golden("diffugpt-f16");
    let d = m
        .gpt
        .forward_logits(&ids, &AttnMask::Bidirectional)
        .unwrap();
    assert!(rel_err(&d.to_vec2().unwrap(), &want_d) > TOL);
}

#[test]
fn cli_logits_dump_matches_golden() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.npy");
    let (ids, want_d, _) = golden("diffugpt-f32");
    let ids_arg = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_diffugpt"))
        .args(["logits", "--model"])
        .arg(fixture("diffugpt-f32"))
        .args(["--ids", &ids_arg, "--mode", "diffusion", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let l = Tensor::read_npy(&out).unwrap();
    assert_eq!(l.dims(), &[12, 97]);
    assert!(rel_err(&l.to_vec2().unwrap(), &want_d) <= TOL);
}

/// The fast CPU path (AVX-512 matmuls of `cpu_gemm` where available, in-place softmax, bias+GELU,
/// fused attention) against candle's plain ops on a random model with fresh random ids, both
/// modes. Tolerance 1e-5 relative to max |ref|.
#[test]
fn fused_cpu_path_matches_reference_ops() {
    use diffugpt::config::{ModelConfig, SpecialIds};
    let cfg = ModelConfig {
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        n_inner: 256,
        n_positions: 256,
        vocab_size: 300,
        ..ModelConfig::tiny(300)
    };
    let ids = SpecialIds::resolve(300, &Default::default(), &Default::default()).unwrap();
    let fast = diffugpt::Gpt2::random(cfg, ids, 11, &Device::Cpu).unwrap();
    let mut reference = fast.clone();
    reference.reference_ops = true;
    // Projections packed for the CPU kernels (what `Model::load` gives): the same products in
    // the same order as the in-place kernels, so hidden states bitwise equal to them from
    // cpu_gemm::MIN_ROWS (4) rows on; fewer rows run candle's GEMV unpacked and only agree
    // within the tolerance. The head, in strips, runs the projections' kernels.
    let mut packed = fast.clone();
    let own = diffugpt::cpu_gemm::available();
    assert_eq!(packed.pack_for_cpu().unwrap(), own);
    assert_eq!(packed.is_packed(), own);
    // Reference ops on a packed model unpack per call.
    let mut packed_reference = packed.clone();
    packed_reference.reference_ops = true;
    let mut rng = diffugpt::rng::Rng::new(5);
    // 150 and 256 rows take the cache-blocked matrix path (cpu_gemm::PACK_MIN_ROWS = 128).
    for t in [1usize, 7, 33, 100, 150, 256] {
        let tokens: Vec<u32> = (0..t).map(|_| rng.below(300) as u32).collect();
        for mask in [AttnMask::Bidirectional, AttnMask::Causal] {
            let a = fast
                .forward_logits(&tokens, &mask)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let b = reference
                .forward_logits(&tokens, &mask)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let e = rel_err(&a, &b);
            assert!(e <= 1e-5, "t={t} {mask:?}: {e}");
            let p = packed
                .forward_logits(&tokens, &mask)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let e = rel_err(&p, &b);
            assert!(e <= 1e-5, "packed t={t} {mask:?}: {e}");
            if t >= 4 {
                // The blocks run the same products in the same order; the head differs in
                // kernel (strips instead of the rows' dot tiles), so it is held to the
                // tolerance above.
                let ids = Tensor::from_slice(&tokens, (1, t), &Device::Cpu).unwrap();
                let hidden = |m: &diffugpt::Gpt2| -> Vec<f32> {
                    let h = m.hidden(&ids, &mask, None).unwrap();
                    h.flatten_all().unwrap().to_vec1().unwrap()
                };
                assert!(
                    hidden(&packed) == hidden(&fast),
                    "packed t={t} {mask:?}: hidden states not bitwise equal to the in-place path"
                );
            }
            let pr = packed_reference
                .forward_logits(&tokens, &mask)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert!(pr == b, "reference ops on a packed model t={t} {mask:?}");
        }
    }
    // Everything that reads weights by name sees the `[in, out]` layout again.
    let (na, nb) = (
        fast.named_tensors().unwrap(),
        packed.named_tensors().unwrap(),
    );
    assert_eq!(na.len(), nb.len());
    for ((ka, ta), (kb, tb)) in na.iter().zip(&nb) {
        assert_eq!((ka, ta.dims()), (kb, tb.dims()));
        let (va, vb): (Vec<f32>, Vec<f32>) = (
            ta.flatten_all().unwrap().to_vec1().unwrap(),
            tb.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(va == vb, "{ka} changed by packing");
    }
    let unpacked = packed.unpacked().unwrap();
    assert!(!unpacked.is_packed());
    assert!(unpacked.blocks[0].c_fc_w.dims() == fast.blocks[0].c_fc_w.dims());
}

/// `forward_profile::measure` only watches: the logits under it are bitwise those without it, on
/// the fast path and on the reference ops, and every op of every layer is counted once per call.
#[test]
fn profiling_changes_no_logit_and_counts_every_op() {
    use diffugpt::config::{ModelConfig, SpecialIds};
    use diffugpt::forward_profile::{measure, Op};
    let cfg = ModelConfig {
        n_layer: 3,
        n_head: 2,
        n_embd: 32,
        n_inner: 128,
        n_positions: 64,
        vocab_size: 120,
        ..ModelConfig::tiny(120)
    };
    let ids = SpecialIds::resolve(120, &Default::default(), &Default::default()).unwrap();
    let fast = diffugpt::Gpt2::random(cfg, ids, 3, &Device::Cpu).unwrap();
    let mut reference = fast.clone();
    reference.reference_ops = true;
    let tokens: Vec<u32> = (0..20).map(|i| (i * 37 % 120) as u32).collect();
    for model in [&fast, &reference] {
        for mask in [AttnMask::Bidirectional, AttnMask::Causal] {
            let plain = model.forward_logits(&tokens, &mask).unwrap();
            let (profiled, p) = measure(|| model.forward_logits(&tokens, &mask).unwrap());
            assert_eq!(
                plain.to_vec2::<f32>().unwrap(),
                profiled.to_vec2::<f32>().unwrap()
            );
            let calls = |op| p.get(op).map_or(0, |o| o.calls);
            assert_eq!(calls(Op::Embed), 1);
            assert_eq!(calls(Op::LayerNorm), 7);
            for op in [Op::Qkv, Op::Attention, Op::AttnProj, Op::MlpUp, Op::MlpDown] {
                assert_eq!(calls(op), 3, "{op:?}");
            }
            assert_eq!(calls(Op::Residual), 6);
            assert_eq!(calls(Op::Head), 1);
            let ops: f64 = p.ops.iter().map(|o| o.ms).sum();
            assert!(ops <= p.total_ms && p.other_ms() >= 0.0);
        }
    }
}
