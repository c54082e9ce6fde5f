//! `diffugpt-train export`: the shipped form of a trained model is checked before it is written.

use candle_core::{Device, Tensor};
use diffugpt::config::{ModelConfig, SpecialIds};
use diffugpt::weights::{self, Layout, SaveDtype};
use diffugpt::{AttnMask, Gpt2, LoadOptions};
use diffugpt_training::export::{run, ExportArgs};

fn gpt2_tokenizer() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-diffugpt/tokenizer.json")
}

/// A random f32 model with GPT-2's vocabulary, saved as the trainer saves its final model.
fn f32_model(dir: &std::path::Path, vocab: usize) -> Gpt2 {
    let cfg = ModelConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        n_inner: 128,
        n_positions: 64,
        vocab_size: vocab,
        ..ModelConfig::gpt2_small()
    };
    let ids = SpecialIds::resolve(vocab, &Default::default(), &Default::default()).unwrap();
    let m = Gpt2::random(cfg, ids, 3, &Device::Cpu).unwrap();
    weights::save(&m, dir, Layout::DiffuGpt, SaveDtype::F32).unwrap();
    m
}

fn args(model: &std::path::Path, out: &std::path::Path) -> ExportArgs {
    ExportArgs {
        model: model.to_path_buf(),
        tokenizer: gpt2_tokenizer(),
        out: out.to_path_buf(),
        dtype: "f16".into(),
        max_logit_diff: 0.05,
    }
}

#[test]
fn export_writes_a_16_bit_model_with_its_tokenizer_and_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("final");
    let m = f32_model(&src, 50257);
    let out = tmp.path().join("models/default");
    let s = run(&args(&src, &out)).unwrap();
    assert!(s.max_logit_diff < 0.05, "{s:?}");
    // Half the bytes of the f32 weights (plus the header).
    let f32_bytes = std::fs::metadata(src.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(s.bytes < f32_bytes * 6 / 10, "{} vs {f32_bytes}", s.bytes);
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(gpt2_tokenizer()).unwrap()
    );
    let (back, _) = weights::load(&out, LoadOptions::default()).unwrap();
    assert_eq!(back.ids, m.ids);
    assert_eq!(back.cfg.vocab_size, 50257);
    let ids: Vec<u32> = vec![464, 10541, 10541, 50256];
    let a = m.forward_logits(&ids, &AttnMask::Bidirectional).unwrap();
    let b = back.forward_logits(&ids, &AttnMask::Bidirectional).unwrap();
    let d: f32 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d < 0.05, "{d}");
    // A second export replaces the first and leaves no temporary directory behind.
    run(&args(&src, &out)).unwrap();
    assert!(!tmp.path().join("models/default.export-tmp").exists());
}

#[test]
fn export_refuses_a_tokenizer_larger_than_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("final");
    f32_model(&src, 1000);
    let out = tmp.path().join("out");
    let e = run(&args(&src, &out)).unwrap_err().to_string();
    assert!(e.contains("not the tokenizer it was trained with"), "{e}");
    assert!(!out.exists());
}

#[test]
fn export_refuses_weights_that_overflow_16_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("final");
    let mut m = f32_model(&src, 50257);
    // One bias far beyond f16's range (65504): the f16 copy would hold inf.
    let b = &m.ln_f.bias;
    let mut v: Vec<f32> = b.to_vec1().unwrap();
    v[0] = 1e6;
    m.ln_f.bias = Tensor::from_vec(v, b.shape(), &Device::Cpu).unwrap();
    weights::save(&m, &src, Layout::DiffuGpt, SaveDtype::F32).unwrap();
    let out = tmp.path().join("out");
    let e = run(&args(&src, &out)).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    assert!(!out.exists());
    let mut bad = args(&src, &out);
    bad.dtype = "f8".into();
    assert!(run(&bad).unwrap_err().to_string().contains("f16 or bf16"));
}
