//! The run configuration: one JSON file, the single source of hyper-parameters. Unknown fields are
//! errors (a typo must not silently fall back to a default); `validate()` explains what is wrong.
//! The file is copied into the run directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What the model learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pipeline {
    /// Causal next-token prediction (GPT-2 pre-training).
    Arm,
    /// DiffuGPT's masked diffusion: t ~ U(eps, 1), mask each maskable token with prob t, loss =
    /// sum (1/t) CE over masked positions (shifted: logits at i predict token i+1) / #masked.
    Diffusion,
    /// Mask-EoS: inputs `[BOS] + doc[:k] + MASK...`, loss only at the end position and a window
    /// around it, so the end is predicted from the visible context alone.
    MaskEos,
}

/// How a step is computed (see `backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The CPU engine where it supports the model (tanh-GELU), else candle.
    #[default]
    Auto,
    /// The hand-written CPU engine (an error for a model it does not support).
    Engine,
    /// candle's autograd over the core's forward (slower; the engine's reference).
    Candle,
}

/// Where the initial weights come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "from")]
pub enum Init {
    /// Random GPT-2 init of the given shape (vocab 50257).
    Scratch {
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        n_positions: usize,
    },
    /// Any checkpoint the core loads: HF GPT-2 (adaptation), DiffuGPT, or this project's own.
    Checkpoint { path: PathBuf },
}

/// AdamW + OneCycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optim {
    pub max_lr: f64,
    #[serde(default = "betas")]
    pub betas: (f64, f64),
    #[serde(default = "adam_eps")]
    pub eps: f64,
    /// Applied to parameters with >= 2 dimensions only.
    #[serde(default)]
    pub weight_decay: f64,
    /// Share of the steps spent warming up (OneCycle's pct_start).
    #[serde(default = "warmup")]
    pub warmup_frac: f64,
    /// initial lr = max_lr / div_factor
    #[serde(default = "div")]
    pub div_factor: f64,
    /// final lr = initial lr / final_div_factor
    #[serde(default = "final_div")]
    pub final_div_factor: f64,
    /// Global gradient-norm clip (0 = off).
    #[serde(default = "clip")]
    pub grad_clip: f64,
}

fn betas() -> (f64, f64) {
    (0.9, 0.95)
}
fn adam_eps() -> f64 {
    1e-8
}
fn warmup() -> f64 {
    0.1
}
fn div() -> f64 {
    25.0
}
fn final_div() -> f64 {
    1e4
}
fn clip() -> f64 {
    1.0
}

/// Diffusion-specific knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diffusion {
    /// Lower bound of the noise level t.
    #[serde(default = "t_eps")]
    pub t_eps: f64,
    /// Attention annealing: causal plus Bernoulli(p) future entries, p rising linearly to 1 over
    /// this many optimizer steps (0 = fully bidirectional from the start).
    #[serde(default)]
    pub attn_anneal_steps: usize,
    /// Pad annealing: pad tokens (after the end) are masked with probability t * s, s rising
    /// linearly from 0 to 1 over this many optimizer steps (0 = s = 1 from the start).
    #[serde(default)]
    pub pad_anneal_steps: usize,
    /// Mask-EoS: tokens within this distance of the end carry the loss.
    #[serde(default = "window")]
    pub eos_window: usize,
}

fn t_eps() -> f64 {
    1e-3
}
fn window() -> usize {
    1
}

impl Default for Diffusion {
    fn default() -> Self {
        Diffusion {
            t_eps: t_eps(),
            attn_anneal_steps: 0,
            pad_anneal_steps: 0,
            eos_window: window(),
        }
    }
}

/// A training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub pipeline: Pipeline,
    pub init: Init,
    /// Stem of the prepared training split (e.g. `data/fortunes/train`).
    pub train_data: PathBuf,
    /// Stem of the validation split.
    #[serde(default)]
    pub val_data: Option<PathBuf>,
    /// Sequence length for stream data (blocked data use their block length).
    #[serde(default = "seq_len")]
    pub seq_len: usize,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Optimizer steps.
    pub steps: usize,
    pub optim: Optim,
    #[serde(default)]
    pub diffusion: Diffusion,
    #[serde(default = "ten")]
    pub log_every: usize,
    /// Validate every N steps (0 = only at the end).
    #[serde(default)]
    pub eval_every: usize,
    #[serde(default = "four")]
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = only at the end).
    #[serde(default)]
    pub save_every: usize,
    #[serde(default = "two")]
    pub keep_last: usize,
    pub seed: u64,
    pub out_dir: PathBuf,
    /// How steps are computed (`auto`, `engine`, `candle`); the checkpoints are the same.
    #[serde(default)]
    pub backend: BackendKind,
}

fn seq_len() -> usize {
    128
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn four() -> usize {
    4
}
fn ten() -> usize {
    10
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: TrainConfig =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        if self.batch_size == 0 || self.grad_accum == 0 || self.steps == 0 {
            bail!("batch_size, grad_accum and steps must be positive");
        }
        if self.seq_len < 2 {
            bail!("seq_len must be at least 2");
        }
        if !(o.max_lr.is_finite() && o.max_lr > 0.0) {
            bail!("optim.max_lr must be a positive number, got {}", o.max_lr);
        }
        let (b1, b2) = o.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            bail!("optim.betas must be in [0, 1), got ({b1}, {b2})");
        }
        if !(o.eps > 0.0 && o.weight_decay >= 0.0 && o.grad_clip >= 0.0) {
            bail!("optim.eps must be > 0, weight_decay and grad_clip >= 0");
        }
        if !(0.0..1.0).contains(&o.warmup_frac) || o.div_factor < 1.0 || o.final_div_factor < 1.0 {
            bail!("optim.warmup_frac must be in [0, 1), div factors >= 1");
        }
        let d = &self.diffusion;
        if !(d.t_eps > 0.0 && d.t_eps < 1.0) {
            bail!("diffusion.t_eps must be in (0, 1), got {}", d.t_eps);
        }
        if let Init::Scratch {
            n_layer,
            n_head,
            n_embd,
            n_positions,
        } = self.init
        {
            if n_layer == 0
                || n_head == 0
                || n_embd == 0
                || n_positions == 0
                || n_embd % n_head != 0
            {
                bail!("init: sizes must be positive and n_embd divisible by n_head");
            }
        }
        Ok(())
    }
}
