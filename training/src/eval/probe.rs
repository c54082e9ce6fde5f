//! `eval probe`: a learned end-position probe against the zero-shot predictors.
//!
//! The zero-shot predictors ([`LengthPredictor`]) read the model's own end probability per slot
//! at the first denoising step. The probe reads the same forward pass differently: a linear
//! pointer over the canvas slots, `s_j = w . x_j`, `P(end = j) = softmax_j(s)`, on features of the
//! frozen model's final hidden state at the row slot `j` is read from (DiffuGPT's shift), plus the
//! slot's end log-odds and its relative position. `w` is fitted by full-batch Adam on the
//! cross-entropy of the true end slot over cases from the *training* split; it is evaluated on
//! the test split with exactly the metrics of `eval eos`: its distribution is turned into the
//! per-slot hazard `p_end[j] = P(end = j) / P(end >= j)`, so every predictor (argmax, threshold,
//! quantile and the quantile sweep) reads the probe the way it reads the model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::DType;
use diffugpt::length::LengthPredictor;
use diffugpt::model::Gpt2;
use diffugpt::sampler::{ConfidenceKind, Sampler, SamplingParams};
use diffugpt::weights::LoadOptions;
use serde::Serialize;

use crate::data::TokenFile;
use crate::eval::eos::{
    cases_from_file, end_ids, parse_predictors, predictions, slot_scores_and_hidden, summarize,
    sweep, EndMetrics, SlotScores, SweepPoint, VisiblePolicy, QUANTILE_SWEEP,
};
use crate::eval::report::{md_table, write_report, Environment};

/// `clap` arguments of `eval probe`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// Model directory or model.safetensors (frozen)
    #[arg(long)]
    pub model: PathBuf,
    /// Padded split the probe is fitted on (e.g. runs/data/gcide-padded/train)
    #[arg(long)]
    pub train_data: PathBuf,
    /// Padded split it is evaluated on (e.g. runs/data/gcide-padded/test)
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (report.json, report.md)
    #[arg(long)]
    pub out: PathBuf,
    /// Training cases (the first blocks of the training split)
    #[arg(long, default_value_t = 1000)]
    pub train_examples: usize,
    /// Test cases (the first blocks of the test split)
    #[arg(long, default_value_t = 400)]
    pub max_examples: usize,
    /// How many tokens of each block are visible (as in `eval eos`)
    #[arg(long, value_enum, default_value_t = VisiblePolicy::Meta)]
    pub visible: VisiblePolicy,
    /// Predictors applied to both the model's and the probe's slot scores
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "argmax,quantile:0.5,quantile:0.9,quantile:0.95,quantile:0.99"
    )]
    pub predictors: Vec<String>,
    /// Full-batch Adam steps
    #[arg(long, default_value_t = 300)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.02)]
    pub lr: f64,
    /// L2 penalty on the weights
    #[arg(long, default_value_t = 1e-4)]
    pub l2: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One case's per-slot features (row-major `[canvas, dim]`) and its first-step scores.
struct Featured {
    scores: SlotScores,
    x: Vec<f32>,
}

/// A predictor's metrics from the model's own scores and from the probe's, on the same cases.
#[derive(Debug, Serialize)]
pub struct ProbeRow {
    pub predictor: String,
    pub zero_shot: EndMetrics,
    pub probe: EndMetrics,
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub eval: &'static str,
    pub environment: Environment,
    pub model: PathBuf,
    pub train_data: PathBuf,
    pub data: PathBuf,
    pub visible_policy: VisiblePolicy,
    pub train_cases: usize,
    pub test_cases: usize,
    pub features: usize,
    pub epochs: usize,
    /// Mean cross-entropy of the true end slot (nats): train at the start and end of fitting,
    /// and on the test cases.
    pub train_loss_start: f64,
    pub train_loss_end: f64,
    pub test_loss: f64,
    /// The same loss for the model's own first-end distribution on the test cases.
    pub test_loss_zero_shot: f64,
    pub rows: Vec<ProbeRow>,
    pub sweep_zero_shot: Vec<SweepPoint>,
    pub sweep_probe: Vec<SweepPoint>,
    pub elapsed_s: f64,
}

/// Features and scores of the first `max` usable cases of `data`.
fn featurize(
    model: &Gpt2,
    data: &std::path::Path,
    policy: VisiblePolicy,
    seed: u64,
    max: usize,
) -> Result<Vec<Featured>> {
    let file =
        TokenFile::open(data).with_context(|| format!("opening token file {}", data.display()))?;
    ensure!(
        file.header().kind.is_blocked(),
        "{}: eval probe needs padded or mask-eos data",
        data.display()
    );
    let sampler = Sampler::new(
        SamplingParams::default(),
        ConfidenceKind::Prob,
        model.cfg.vocab_size,
        end_ids(model),
        vec![],
    );
    let mut out = Vec::new();
    for (i, case) in cases_from_file(&file, policy, seed, usize::MAX)
        .into_iter()
        .enumerate()
    {
        if out.len() >= max {
            break;
        }
        let Ok((seq, p_len, c)) = case.first_step_input(model, None) else {
            continue;
        };
        let (p_end, argmax_is_end, rows) = slot_scores_and_hidden(model, &sampler, &seq, p_len, c)?;
        let h = rows.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut x = Vec::with_capacity(c * (model.cfg.n_embd + 2));
        for (j, row) in h.iter().enumerate() {
            x.extend_from_slice(row);
            let p = p_end[j].clamp(1e-6, 1.0 - 1e-6);
            x.push((p / (1.0 - p)).ln() / 10.0);
            x.push(j as f32 / model.cfg.n_positions as f32);
        }
        out.push(Featured {
            scores: SlotScores {
                case: i,
                visible: case.visible.len(),
                true_end: case.true_end,
                p_end,
                argmax_is_end,
            },
            x,
        });
    }
    ensure!(!out.is_empty(), "{}: no usable cases", data.display());
    Ok(out)
}

/// Per-feature mean and inverse standard deviation over every slot of `cases`.
fn standardizer(cases: &[Featured], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut sum, mut sq, mut n) = (vec![0.0f64; dim], vec![0.0f64; dim], 0usize);
    for c in cases {
        for row in c.x.chunks(dim) {
            for (k, &v) in row.iter().enumerate() {
                sum[k] += v as f64;
                sq[k] += (v as f64) * (v as f64);
            }
            n += 1;
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
    let inv: Vec<f64> = (0..dim)
        .map(|k| {
            let var = sq[k] / n as f64 - mean[k] * mean[k];
            1.0 / var.max(1e-12).sqrt()
        })
        .collect();
    (mean, inv)
}

/// Standardizes every feature of `cases` in place (once, before fitting and scoring).
fn standardize(cases: &mut [Featured], dim: usize, mean: &[f64], inv: &[f64]) {
    for c in cases {
        for row in c.x.chunks_mut(dim) {
            for (k, v) in row.iter_mut().enumerate() {
                *v = ((*v as f64 - mean[k]) * inv[k]) as f32;
            }
        }
    }
}

/// The probe's softmax over the slots of one case (standardized features).
fn slot_distribution(x: &[f32], dim: usize, w: &[f64]) -> Vec<f64> {
    let s: Vec<f64> = x
        .chunks(dim)
        .map(|row| row.iter().zip(w).map(|(&v, &wk)| wk * v as f64).sum())
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Mean cross-entropy of the true end slot, and (optionally) its gradient in `w`.
fn loss_and_grad(cases: &[Featured], dim: usize, w: &[f64], grad: Option<&mut [f64]>) -> f64 {
    let mut g = vec![0.0f64; dim];
    let mut loss = 0.0;
    for c in cases {
        let p = slot_distribution(&c.x, dim, w);
        let e = c.scores.true_end;
        loss -= p[e].max(1e-300).ln();
        // d(-log p_e)/d s_j = p_j - [j == e]; d s_j / d w_k = z_jk.
        for (j, row) in c.x.chunks(dim).enumerate() {
            let d = p[j] - if j == e { 1.0 } else { 0.0 };
            if d.abs() < 1e-12 {
                continue;
            }
            for (gk, &v) in g.iter_mut().zip(row) {
                *gk += d * v as f64;
            }
        }
    }
    let n = cases.len() as f64;
    if let Some(out) = grad {
        for k in 0..dim {
            out[k] = g[k] / n;
        }
    }
    loss / n
}

/// The hazard `p_end[j] = P(end = j) / P(end >= j)` of a distribution over slots, so that the
/// first-end distribution the predictors read is the probe's.
pub fn hazard(dist: &[f64]) -> Vec<f32> {
    let mut left = 1.0f64;
    dist.iter()
        .map(|&p| {
            let h = if left > 1e-12 {
                (p / left).clamp(0.0, 1.0)
            } else {
                1.0
            };
            left -= p;
            h as f32
        })
        .collect()
}

/// Mean cross-entropy of the true end under the model's own first-end distribution.
fn zero_shot_loss(cases: &[Featured]) -> f64 {
    let n = cases.len() as f64;
    cases
        .iter()
        .map(|c| {
            let d = c.scores.first_end_distribution();
            -d[c.scores.true_end].max(1e-300).ln()
        })
        .sum::<f64>()
        / n
}

pub fn run(a: &ProbeArgs) -> Result<ProbeReport> {
    let start = Instant::now();
    ensure!(a.epochs >= 1, "--epochs must be at least 1");
    ensure!(a.lr > 0.0 && a.l2 >= 0.0, "--lr must be > 0 and --l2 >= 0");
    let predictors = parse_predictors(&a.predictors)?;
    let (model, _) = diffugpt::weights::load(&a.model, LoadOptions::default())
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let dim = model.cfg.n_embd + 2;
    eprintln!("probe: features of {} training cases", a.train_examples);
    let mut train = featurize(&model, &a.train_data, a.visible, a.seed, a.train_examples)?;
    eprintln!("probe: features of {} test cases", a.max_examples);
    let mut test = featurize(&model, &a.data, a.visible, a.seed, a.max_examples)?;
    // The training cases' statistics for both (the test split stays unseen).
    let (mean, inv) = standardizer(&train, dim);
    standardize(&mut train, dim, &mean, &inv);
    standardize(&mut test, dim, &mean, &inv);

    // Full-batch Adam from w = 0 except the end log-odds feature, which starts at 1 (the probe
    // starts near the model's own argmax-like reading and can only improve on its train loss).
    let mut w = vec![0.0f64; dim];
    w[dim - 2] = 1.0;
    let (mut m, mut v, mut g) = (vec![0.0; dim], vec![0.0; dim], vec![0.0; dim]);
    let (b1, b2, eps) = (0.9, 0.999, 1e-8);
    let train_loss_start = loss_and_grad(&train, dim, &w, None);
    let mut train_loss_end = train_loss_start;
    for t in 1..=a.epochs {
        train_loss_end = loss_and_grad(&train, dim, &w, Some(&mut g));
        for k in 0..dim {
            let gk = g[k] + 2.0 * a.l2 * w[k];
            m[k] = b1 * m[k] + (1.0 - b1) * gk;
            v[k] = b2 * v[k] + (1.0 - b2) * gk * gk;
            let mh = m[k] / (1.0 - f64::powi(b1, t as i32));
            let vh = v[k] / (1.0 - f64::powi(b2, t as i32));
            w[k] -= a.lr * mh / (vh.sqrt() + eps);
        }
    }
    let test_loss = loss_and_grad(&test, dim, &w, None);

    let zero: Vec<SlotScores> = test.iter().map(|c| c.scores.clone()).collect();
    let probed: Vec<SlotScores> = test
        .iter()
        .map(|c| {
            let d = slot_distribution(&c.x, dim, &w);
            let best = d
                .iter()
                .enumerate()
                .fold(0, |b, (j, &p)| if p > d[b] { j } else { b });
            SlotScores {
                p_end: hazard(&d),
                argmax_is_end: (0..d.len()).map(|j| j == best).collect(),
                ..c.scores.clone()
            }
        })
        .collect();
    let ks = [2, 4];
    let rows = predictors
        .iter()
        .map(|p: &LengthPredictor| ProbeRow {
            predictor: p.label(),
            zero_shot: summarize(&predictions(&zero, p), &ks),
            probe: summarize(&predictions(&probed, p), &ks),
        })
        .collect();
    let report = ProbeReport {
        eval: "probe",
        environment: Environment::detect(),
        model: a.model.clone(),
        train_data: a.train_data.clone(),
        data: a.data.clone(),
        visible_policy: a.visible,
        train_cases: train.len(),
        test_cases: test.len(),
        features: dim,
        epochs: a.epochs,
        train_loss_start,
        train_loss_end,
        test_loss,
        test_loss_zero_shot: zero_shot_loss(&test),
        rows,
        sweep_zero_shot: sweep(&zero, LengthPredictor::Quantile, &QUANTILE_SWEEP),
        sweep_probe: sweep(&probed, LengthPredictor::Quantile, &QUANTILE_SWEEP),
        elapsed_s: start.elapsed().as_secs_f64(),
    };
    write_report(&a.out, &report, &markdown(&report))?;
    Ok(report)
}

fn markdown(r: &ProbeReport) -> String {
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    let mut s = format!(
        "# Learned end probe vs zero-shot predictors\n\nModel `{}`; probe fitted on {} cases of `{}` ({} features, {} Adam steps: train CE {:.3} -> {:.3} nats), evaluated on {} cases of `{}` (visible: {:?}). Test CE of the true end slot: probe {:.3}, model's own first-end distribution {:.3}.\n\n",
        r.model.display(),
        r.train_cases,
        r.train_data.display(),
        r.features,
        r.epochs,
        r.train_loss_start,
        r.train_loss_end,
        r.test_cases,
        r.data.display(),
        r.visible_policy,
        r.test_loss,
        r.test_loss_zero_shot
    );
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .flat_map(|row| {
            [("zero-shot", &row.zero_shot), ("probe", &row.probe)].map(|(who, m)| {
                vec![
                    row.predictor.clone(),
                    who.to_string(),
                    pct(m.exact),
                    m.within(2).map_or("-".into(), pct),
                    pct(m.upper_bound),
                    format!("{:.1}", m.tightness),
                    pct(m.saved_pooled),
                    format!("{:.1}", m.rmse),
                ]
            })
        })
        .collect();
    s += &md_table(
        &[
            "predictor",
            "scores",
            "exact",
            "±2",
            "upper bound correct",
            "tightness",
            "saved (pooled)",
            "RMSE",
        ],
        &rows,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hazard_gives_back_the_distribution_as_first_end_probabilities() {
        let d = [0.1, 0.2, 0.3, 0.4];
        let h = hazard(&d);
        let s = SlotScores {
            case: 0,
            visible: 1,
            true_end: 2,
            p_end: h,
            argmax_is_end: vec![false; 4],
        };
        for (a, b) in s.first_end_distribution().iter().zip(d) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert_eq!(hazard(&[1.0, 0.0])[0], 1.0);
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let dim = 3;
        let mk = |x: Vec<f32>, e| Featured {
            scores: SlotScores {
                case: 0,
                visible: 1,
                true_end: e,
                p_end: vec![0.5; x.len() / dim],
                argmax_is_end: vec![false; x.len() / dim],
            },
            x,
        };
        let mut cases = vec![
            mk(vec![0.1, -0.3, 0.7, 0.5, 0.2, -0.1, -0.4, 0.9, 0.3], 1),
            mk(vec![0.6, 0.1, -0.2, -0.5, 0.4, 0.8], 0),
        ];
        let (mean, inv) = standardizer(&cases, dim);
        standardize(&mut cases, dim, &mean, &inv);
        let w = vec![0.3, -0.7, 0.2];
        let mut g = vec![0.0; dim];
        loss_and_grad(&cases, dim, &w, Some(&mut g));
        for k in 0..dim {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[k] += 1e-5;
            wm[k] -= 1e-5;
            let num = (loss_and_grad(&cases, dim, &wp, None)
                - loss_and_grad(&cases, dim, &wm, None))
                / 2e-5;
            assert!((num - g[k]).abs() < 1e-6, "{k}: {num} vs {}", g[k]);
        }
    }
}
