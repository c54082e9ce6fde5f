//! `diffugpt-train export`: a trained model as the library ships it — 16-bit safetensors in
//! DiffuGPT's layout, `config.json` with the special ids, and the `tokenizer.json` it was trained
//! with — checked before it is written over anything: the tokenizer must fit the model's ids, and
//! the 16-bit copy must give the same logits as the f32 model (within `max_logit_diff`), so a
//! weight that overflows f16 is an error here and not noise in a user's output.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use candle_core::DType;
use diffugpt::weights::{self, Layout, SaveDtype};
use diffugpt::{AttnMask, Gpt2, LoadOptions};
use serde::Serialize;

/// `clap` arguments of `export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Model directory or model.safetensors (any checkpoint the core loads)
    #[arg(long)]
    pub model: PathBuf,
    /// The tokenizer.json the model was trained with
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory (model.safetensors, config.json, tokenizer.json)
    #[arg(long)]
    pub out: PathBuf,
    /// f16 or bf16
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Largest allowed |logit difference| between the f32 model and the export
    #[arg(long, default_value_t = 0.05)]
    pub max_logit_diff: f32,
}

/// What `export` wrote.
#[derive(Debug, Serialize)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub dtype: String,
    pub parameters: usize,
    pub bytes: u64,
    /// Max |logit| difference, f32 model vs export, over a probe sequence.
    pub max_logit_diff: f32,
}

pub fn run(a: &ExportArgs) -> Result<ExportSummary> {
    let dtype = match a.dtype.as_str() {
        "f16" => SaveDtype::F16,
        "bf16" => SaveDtype::BF16,
        other => bail!("--dtype must be f16 or bf16, got {other:?}"),
    };
    let (model, _) = weights::load(&a.model, LoadOptions::default())
        .with_context(|| format!("loading {}", a.model.display()))?;
    let tok = diffugpt::Tokenizer::from_file(&a.tokenizer)
        .with_context(|| format!("loading {}", a.tokenizer.display()))?;
    ensure!(
        tok.vocab_size() <= model.cfg.vocab_size,
        "{} has {} ids but the model only {} rows: not the tokenizer it was trained with",
        a.tokenizer.display(),
        tok.vocab_size(),
        model.cfg.vocab_size
    );
    // Write to a sibling directory, check it, then move it into place.
    let tmp = a.out.with_extension("export-tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    weights::save(&model, &tmp, Layout::DiffuGpt, dtype)?;
    std::fs::copy(&a.tokenizer, tmp.join("tokenizer.json"))?;
    let (exported, _) = weights::load(&tmp, LoadOptions::default())?;
    let diff = max_logit_diff(&model, &exported)?;
    // NaN (a non-finite logit) fails too.
    if diff.is_nan() || diff > a.max_logit_diff {
        std::fs::remove_dir_all(&tmp)?;
        bail!(
            "the {} export changes the logits by up to {diff} (> --max-logit-diff {}): a weight is out of range for it",
            a.dtype,
            a.max_logit_diff
        );
    }
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out)
            .with_context(|| format!("replacing {}", a.out.display()))?;
    }
    std::fs::rename(&tmp, &a.out)?;
    let bytes = std::fs::metadata(a.out.join("model.safetensors"))?.len();
    Ok(ExportSummary {
        out: a.out.clone(),
        dtype: a.dtype.clone(),
        parameters: model.param_count() as usize,
        bytes,
        max_logit_diff: diff,
    })
}

/// Max |logit| difference of two models on a fixed probe sequence (all ids spread over the
/// vocabulary, half of them masks), bidirectional attention.
fn max_logit_diff(a: &Gpt2, b: &Gpt2) -> Result<f32> {
    let cfg = &a.cfg;
    let len = cfg.n_positions.min(64);
    let mask = a.ids.mask;
    let ids: Vec<u32> = (0..len)
        .map(|i| {
            if i % 2 == 1 {
                mask
            } else {
                ((i * 7919) % cfg.vocab_size) as u32
            }
        })
        .collect();
    let la = a
        .forward_logits(&ids, &AttnMask::Bidirectional)?
        .to_dtype(DType::F32)?;
    let lb = b
        .forward_logits(&ids, &AttnMask::Bidirectional)?
        .to_dtype(DType::F32)?;
    let d = (la - lb)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    Ok(if d.is_nan() { f32::INFINITY } else { d })
}
