//! Fixtures shared by the training integration tests: the fixture corpus prepared into token
//! files, and a small training config to adjust per test.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use diffugpt_training::config::{Diffusion, Init, Optim, Pipeline, TrainConfig};
use diffugpt_training::data::Kind;
use diffugpt_training::prepare::{prepare, PadVariant, PrepareOptions, Splitter};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The fixture corpus (fortunes) prepared into `out` with the tiny model's GPT-2 tokenizer:
/// 64-token blocks, 10% validation, 5% test.
pub fn prep(out: &Path, kind: Kind, variant: PadVariant) -> PathBuf {
    let mut o = PrepareOptions::new(
        root().join("training/tests/fixtures/corpus/fortunes.txt"),
        root().join("tests/fixtures/tiny-diffugpt/tokenizer.json"),
        out.to_path_buf(),
    );
    o.splitter = Splitter::Percent;
    o.kind = kind;
    o.variant = variant;
    o.block_len = 64;
    o.val_frac = 0.1;
    o.test_frac = 0.05;
    prepare(&o).unwrap();
    out.to_path_buf()
}

/// A from-scratch model small enough for tests: 1 layer, 2 heads, 16 wide.
pub fn tiny_scratch() -> Init {
    Init::Scratch {
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        n_positions: 64,
    }
}

/// A short run on `data`: batch 4 x 2 accumulation of 48 tokens, OneCycle up to 5e-3, both
/// annealings over the first half, a metrics line every step, no validation or checkpoints in
/// between (only at the end).
pub fn config(
    pipeline: Pipeline,
    init: Init,
    data: &Path,
    out: &Path,
    steps: usize,
) -> TrainConfig {
    TrainConfig {
        pipeline,
        init,
        train_data: data.join("train"),
        val_data: Some(data.join("val")),
        seq_len: 48,
        batch_size: 4,
        grad_accum: 2,
        steps,
        optim: Optim {
            max_lr: 5e-3,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_frac: 0.2,
            div_factor: 10.0,
            final_div_factor: 10.0,
            grad_clip: 1.0,
        },
        diffusion: Diffusion {
            attn_anneal_steps: steps / 2,
            pad_anneal_steps: steps / 2,
            ..Default::default()
        },
        log_every: 1,
        eval_every: 0,
        eval_batches: 2,
        save_every: 0,
        keep_last: 2,
        seed: 3,
        out_dir: out.to_path_buf(),
        backend: Default::default(),
    }
}
