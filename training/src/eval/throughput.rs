//! Throughput of fixed-length vs EoS-first decoding over a workload whose prompts and answer lengths
//! come from a real (prepared, blocked) dataset: each block's fixed prefix is the prompt and its
//! answer runs to the first end token. The headline is *useful* tokens per second: answer tokens
//! before the end, over wall time. With `--oracle`, EoS-first uses each example's true answer length
//! (the upper bound of what a perfect first-step prediction buys; also the only meaningful setting
//! for models with random weights, which predict no end).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use diffugpt::{GenerateParams, LengthMode, LengthPredictor, LoadOptions, Model, Steps};
use serde::Serialize;

use crate::config::Pipeline;
use crate::dataset::Dataset;
use crate::eval::report::{md_table, write_report, Environment};

#[derive(Clone, Debug, clap::Args)]
pub struct ThroughputArgs {
    /// Model directory or model.safetensors
    #[arg(long)]
    pub model: PathBuf,
    /// Token-file stem of a padded or mask-eos split (e.g. runs/data/eospad/test)
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Canvas length (default: block length minus the prompt)
    #[arg(long)]
    pub canvas: Option<usize>,
    /// Denoising steps per canvas token
    #[arg(long, default_value_t = 1.0)]
    pub steps_per_token: f32,
    /// EoS-first length predictor (argmax, threshold:T, quantile:Q)
    #[arg(long, default_value = "quantile:0.9")]
    pub predictor: String,
    /// Use each example's true answer length as the prediction
    #[arg(long)]
    pub oracle: bool,
    /// Do not grow the canvas back after the cut (a model that never emits an end would otherwise
    /// grow back to the full canvas)
    #[arg(long)]
    pub no_grow: bool,
    /// EoS-first end floor (0 = off)
    #[arg(long, default_value_t = diffugpt::decode::DEFAULT_END_FLOOR)]
    pub end_floor: f32,
    #[arg(long, default_value_t = 16)]
    pub max_examples: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Totals for one decoding mode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModeTotals {
    pub examples: usize,
    pub wall_s: f64,
    /// Tokens before the end in the outputs.
    pub useful_tokens: usize,
    pub useful_tokens_per_s: f64,
    pub forward_passes: usize,
    pub positions_processed: usize,
    pub steps: usize,
}

#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    pub environment: Environment,
    pub model: PathBuf,
    pub data: PathBuf,
    pub predictor: String,
    /// The end floor of both decodings.
    pub end_floor: f32,
    pub mean_true_answer_len: f64,
    pub canvas: usize,
    pub fixed: ModeTotals,
    pub eos_first: ModeTotals,
    /// eos_first.useful_tokens_per_s / fixed.useful_tokens_per_s
    pub speedup: f64,
}

pub fn run(a: &ThroughputArgs) -> Result<ThroughputReport> {
    let model = Model::load(&a.model, LoadOptions::default())?;
    let data = Dataset::open(&a.data, Pipeline::Diffusion)?;
    if !data.is_blocked() {
        bail!(
            "{}: throughput needs a padded or mask-eos split (answers with ends)",
            a.data.display()
        );
    }
    let predictor = LengthPredictor::parse(&a.predictor)?;
    let n = a.max_examples.min(data.len());
    let mut fixed = ModeTotals::default();
    let mut eos = ModeTotals::default();
    let mut true_len_sum = 0usize;
    let mut canvas_used = 0;
    let bar = indicatif::ProgressBar::new(n as u64);
    for i in 0..n {
        let ex = data.get(i, 0);
        let Some(end) = ex.end else { continue };
        // Drop the BOS: the decoder adds its own.
        let prompt = &ex.tokens[1..ex.fixed.max(1)];
        let true_len = end - ex.fixed.max(1);
        let canvas = a.canvas.unwrap_or(ex.tokens.len() - ex.fixed.max(1)).max(1);
        canvas_used = canvas;
        true_len_sum += true_len;
        for (mode, totals) in [(false, &mut fixed), (true, &mut eos)] {
            let length = if mode {
                LengthMode::EosFirst {
                    predictor: if a.oracle {
                        LengthPredictor::Oracle(true_len)
                    } else {
                        predictor
                    },
                    margin: 8,
                    margin_ratio: 0.25,
                    grow: !a.no_grow,
                }
            } else {
                LengthMode::Fixed
            };
            let p = GenerateParams {
                canvas_len: canvas,
                steps: Steps::PerToken(a.steps_per_token),
                length,
                seed: a.seed + i as u64,
                end_floor: a.end_floor,
                ..Default::default()
            };
            let t = Instant::now();
            let g = model.session().generate(prompt, &p, None)?;
            totals.wall_s += t.elapsed().as_secs_f64();
            totals.examples += 1;
            totals.useful_tokens += g.stats.final_len;
            totals.forward_passes += g.stats.forward_passes;
            totals.positions_processed += g.stats.positions_processed();
            totals.steps += g.stats.steps;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for t in [&mut fixed, &mut eos] {
        t.useful_tokens_per_s = t.useful_tokens as f64 / t.wall_s.max(1e-9);
    }
    let report = ThroughputReport {
        environment: Environment::detect(),
        model: a.model.clone(),
        data: a.data.clone(),
        predictor: if a.oracle {
            "oracle".into()
        } else {
            predictor.label()
        },
        end_floor: a.end_floor,
        mean_true_answer_len: true_len_sum as f64 / fixed.examples.max(1) as f64,
        canvas: canvas_used,
        speedup: eos.useful_tokens_per_s / fixed.useful_tokens_per_s.max(1e-12),
        fixed,
        eos_first: eos,
    };
    let rows: Vec<Vec<String>> = [("fixed", &report.fixed), ("eos-first", &report.eos_first)]
        .iter()
        .map(|(name, t)| {
            vec![
                name.to_string(),
                t.examples.to_string(),
                t.useful_tokens.to_string(),
                format!("{:.2}", t.wall_s),
                format!("{:.1}", t.useful_tokens_per_s),
                t.forward_passes.to_string(),
                t.positions_processed.to_string(),
            ]
        })
        .collect();
    let e = &report.environment;
    let md = format!(
        "# Throughput: fixed-length vs EoS-first decoding\n\nModel `{}`, data `{}`, predictor `{}`, canvas {}, mean true answer length {:.1}.\nMachine: {} ({} threads), backend {}, {}.\n\n{}\nUseful tokens/s speed-up of EoS-first: **{:.2}x**.\n",
        report.model.display(),
        report.data.display(),
        report.predictor,
        report.canvas,
        report.mean_true_answer_len,
        e.cpu,
        e.threads,
        e.backend,
        e.dtype,
        md_table(
            &["mode", "examples", "useful tokens", "wall s", "useful tok/s", "forward passes", "positions"],
            &rows
        ),
        report.speedup
    );
    write_report(&a.out, &report, &md)?;
    Ok(report)
}
