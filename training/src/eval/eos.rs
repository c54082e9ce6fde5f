//! First-step end-of-text metrics: how well a model predicts, from one forward pass on a fully
//! masked canvas, where its answer ends; and what that is worth in full EoS-first decoding.
//!
//! # The setting
//!
//! Every evaluation case comes from a padded (or mask-eos) block `[BOS] + doc + [eos] + pad...`
//! (see [`crate::data`]) and a number of *visible* tokens `v` (the prompt and any visible prefix,
//! never the BOS). The model sees
//!
//! ```text
//! [BOS] + block[1 ..= v] + [MASK] * canvas
//! ```
//!
//! with `canvas = block_len - 1 - v` (the rest of the block) unless a canvas length is given. All
//! positions below are **answer slots**: slot `j` is canvas position `j`, i.e. block position
//! `1 + v + j`. With DiffuGPT's shift, slot `j` is read from logits row `v + j` (= `fixed - 1 + j`
//! where `fixed = 1 + v` is the number of leading positions that stay visible).
//!
//! * The **true end** `e` is the slot of the first end token (the data's `eos_id` or `pad_id`)
//!   after the visible part: the number of answer tokens. Cases whose true end lies outside the
//!   canvas (`e >= canvas`, only possible with an explicit canvas) or whose sequence exceeds the
//!   model's positions are skipped and counted.
//! * For each slot, `p_end[j]` is the softmax probability of the model's end ids (eos, plus pad when
//!   the model has one) and `argmax_is_end[j]` says whether the slot's argmax is an end id. Every
//!   [`LengthPredictor`] turns these into a predicted end `p` (a slot, or `None` when it finds no
//!   end inside the canvas). Visible-prefix choice: [`VisiblePolicy`].
//!
//! # First-step metrics ([`summarize`], one [`EndPrediction`] per case)
//!
//! Let `p* = p` when a prediction exists and `p* = canvas` for `None` (keeping the whole canvas is
//! what a decoder does when it finds no end). Over the `n` cases:
//!
//! * `exact`: share with `p == e`. `within[k]`: share with `|p - e| <= k`. A `None` is never
//!   exact nor within `k` (the true end always lies in the canvas, so "no end" is wrong).
//! * `upper_bound`: share with `p* >= e`, i.e. cutting the canvas after the prediction keeps the
//!   whole answer. `None` counts as correct (the full canvas is kept).
//! * `tightness`: mean of `p* - e` over the upper-bound-correct cases only: how many slots beyond
//!   the true end an upper bound wastes (0 = perfect; `NaN`/`null` when no case is correct).
//! * Tokens saved: a cut at the prediction keeps `kept = min(canvas, p* + 1)` slots (the answer and
//!   one end slot, no safety margin) and saves `canvas - kept`. Averaged correctly, two ways:
//!   `saved_mean` is the mean of the per-case ratios `(canvas - kept) / canvas` (every case weighs
//!   the same), `saved_pooled` is `sum(canvas - kept) / sum(canvas)` (the share of all canvas
//!   slots, long canvases weigh more). They differ when canvases differ in length. Note that
//!   saving tokens by cutting *before* the true end is not a saving but a truncated answer: read it
//!   next to `upper_bound`.
//! * `rmse`: `sqrt(mean((p* - e)^2))`; `mae`: `mean(|p* - e|)`; `mean_error`: `mean(p* - e)`
//!   (positive: predictions too long). `no_end`: share of `None` predictions.
//! * `mean_p_end_at_true`: mean of `p_end[e]`, the end probability the model gives the true end
//!   slot (model property, the same for every predictor).
//! * `mean_rank`, `median_rank`: the rank of the true end slot when the slots are sorted by their
//!   probability of being *the* end, `P(first end = j) = p_end[j] * prod_{i<j} (1 - p_end[i])`
//!   (the distribution the quantile predictor reads; rank 1 = the most probable slot; ties are
//!   counted in the true end's favour: rank = 1 + number of slots strictly more probable). The
//!   first-end probability rather than the raw `p_end` is used because a pad-trained model gives
//!   every slot after the end `p_end ~ 1`, which would make a raw ranking meaningless. The median of
//!   an even count is the mean of the two middle ranks.
//!
//! Grouping by visible tokens: [`by_visible_quartile`] splits the cases at the quartiles of `v`
//! (cut values `c_b = sorted_v[ceil(b n / 4) - 1]`, bucket `b` holds `c_{b-1} < v <= c_b`, reported
//! as the integer range `[c_{b-1} + 1, c_b]`, the first from the smallest `v`, the last to the
//! largest; empty buckets, which ties can produce, are left out) and [`by_visible_width`] into
//! buckets `[i W, (i + 1) W - 1]` of width `W` (the accuracy curve).
//!
//! # Generation metrics ([`generation_metrics`])
//!
//! The same cases are decoded in full with [`Session::generate`] (prompt = the visible tokens,
//! the same canvas, greedy, confidence-ordered unmasking, seeded) in fixed-length mode (DiffuGPT)
//! and in EoS-first mode. Over the full canvas of each case, the slots `j >= e` form the *padding
//! zone* (the "end" class); a slot is predicted "end" when the final canvas holds an end id there,
//! and slots removed by the EoS-first cut also count as predicted end (the cut asserts that the
//! answer is over). True positives: predicted end at `j >= e`; false positives: predicted end at
//! `j < e` (an answer token replaced by an end); false negatives: a non-end token at `j >= e`.
//! Precision, recall and F1 are micro-averaged (counts pooled over the cases; `NaN`/`null` when a
//! denominator is 0). Final-length error: `final_len - e` (`final_len` = tokens before the first
//! end id), reported as `final_len_mae`, `final_len_rmse` and `final_len_mean_error`. Cost: forward
//! passes and positions processed (the sum over passes of `1 + v + current canvas`) per case. All
//! of it overall and per visible-token quartile.
//!
//! # Output ([`run`])
//!
//! `report.json` ([`EosReport`]), `report.md`, `pareto.png` (upper-bound correctness against
//! tightness: sweeps of the quantile `q` and threshold `tau` as curves, each configured predictor
//! as a point) and `accuracy_by_visible.png` (exact and within-2 accuracy against visible tokens,
//! per predictor).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use diffugpt::decode::{GenerateParams, LengthMode, Session, Steps, Strategy};
use diffugpt::length::LengthPredictor;
use diffugpt::model::{AttnMask, Gpt2};
use diffugpt::rng::Rng;
use diffugpt::sampler::{argmax, ConfidenceKind, Sampler, SamplingParams};
use diffugpt::weights::LoadOptions;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::data::{Kind, TokenFile};
use crate::eval::report::{md_table, write_report, Environment};
use crate::plot::{line_chart, Series};

/// The default `--predictors`.
pub const DEFAULT_PREDICTORS: &str = "argmax,threshold:0.5,quantile:0.5,quantile:0.9";
/// Quantiles `q` swept for the Pareto plot.
pub const QUANTILE_SWEEP: [f32; 12] = [
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99,
];
/// Thresholds `tau` swept for the Pareto plot. For a model fine-tuned on padded blocks (eos-pad,
/// eos-eos) every slot after the end is an end id, so `p_end` at slot j reads as P(end <= j), the
/// length's CDF, and `threshold:tau` is its tau-quantile: the upper bounds live at tau > 0.9,
/// hence the fine steps there.
pub const THRESHOLD_SWEEP: [f32; 16] = [
    0.999, 0.995, 0.99, 0.98, 0.97, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05,
];

/// Rows of logits computed at once (a long canvas never holds all its rows of 50k floats).
const LOGIT_CHUNK: usize = 32;

// ---------------------------------------------------------------------------------------------
// Pure metrics
// ---------------------------------------------------------------------------------------------

/// One case's first-step end prediction. Positions are answer slots after the visible prefix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EndPrediction {
    /// Slot of the first end token (= answer length).
    pub true_end: usize,
    /// Predicted end slot; `None`: the predictor found no end inside the canvas.
    pub predicted: Option<usize>,
    /// Canvas length (answer slots).
    pub canvas: usize,
    /// Visible tokens (prompt + visible prefix, without the BOS).
    pub visible: usize,
    /// `p_end` of the true end slot.
    pub p_end_at_true: f32,
    /// Rank of the true end slot by first-end probability (1 = most probable).
    pub rank_of_true: usize,
}

impl EndPrediction {
    /// The prediction for the bound metrics: `None` counts as the canvas length.
    pub fn effective(&self) -> usize {
        self.predicted.unwrap_or(self.canvas)
    }

    /// Slots a cut at the prediction keeps: answer + one end slot, at most the canvas.
    pub fn kept(&self) -> usize {
        self.effective().saturating_add(1).min(self.canvas)
    }

    /// `effective() - true_end` as a float.
    pub fn error(&self) -> f64 {
        self.effective() as f64 - self.true_end as f64
    }

    /// Whether the prediction is within `k` slots of the true end (`None` never is).
    pub fn within(&self, k: usize) -> bool {
        self.predicted
            .is_some_and(|p| p.abs_diff(self.true_end) <= k)
    }
}

/// Accuracy within `+-k` slots.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WithinK {
    pub k: usize,
    pub accuracy: f64,
}

/// First-step metrics over a set of predictions (see the [module docs](self) for definitions).
/// Undefined values (empty set, nothing upper-bound correct) are `NaN`, `null` in JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EndMetrics {
    pub n: usize,
    pub exact: f64,
    pub within: Vec<WithinK>,
    pub upper_bound: f64,
    pub tightness: f64,
    pub saved_mean: f64,
    pub saved_pooled: f64,
    pub rmse: f64,
    pub mae: f64,
    pub mean_error: f64,
    pub no_end: f64,
    pub mean_p_end_at_true: f64,
    pub mean_rank: f64,
    pub median_rank: f64,
}

impl EndMetrics {
    /// Accuracy within `+-k`, when `k` was asked for.
    pub fn within(&self, k: usize) -> Option<f64> {
        self.within.iter().find(|w| w.k == k).map(|w| w.accuracy)
    }
}

fn mean_of(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        f64::NAN
    } else {
        num as f64 / den as f64
    }
}

/// The first-step metrics of `preds`, with `within` for each of `ks` (in the given order).
pub fn summarize(preds: &[EndPrediction], ks: &[usize]) -> EndMetrics {
    let n = preds.len();
    let share =
        |f: &dyn Fn(&EndPrediction) -> bool| ratio(preds.iter().filter(|p| f(p)).count(), n);
    let bound: Vec<&EndPrediction> = preds
        .iter()
        .filter(|p| p.effective() >= p.true_end)
        .collect();
    let canvas_total: usize = preds.iter().map(|p| p.canvas).sum();
    let saved_total: usize = preds.iter().map(|p| p.canvas - p.kept()).sum();
    EndMetrics {
        n,
        exact: share(&|p| p.predicted == Some(p.true_end)),
        within: ks
            .iter()
            .map(|&k| WithinK {
                k,
                accuracy: share(&|p| p.within(k)),
            })
            .collect(),
        upper_bound: ratio(bound.len(), n),
        tightness: mean_of(bound.iter().map(|p| p.error())),
        saved_mean: mean_of(preds.iter().map(|p| {
            if p.canvas == 0 {
                0.0
            } else {
                (p.canvas - p.kept()) as f64 / p.canvas as f64
            }
        })),
        saved_pooled: ratio(saved_total, canvas_total),
        rmse: mean_of(preds.iter().map(|p| p.error().powi(2))).sqrt(),
        mae: mean_of(preds.iter().map(|p| p.error().abs())),
        mean_error: mean_of(preds.iter().map(EndPrediction::error)),
        no_end: share(&|p| p.predicted.is_none()),
        mean_p_end_at_true: mean_of(preds.iter().map(|p| p.p_end_at_true as f64)),
        mean_rank: mean_of(preds.iter().map(|p| p.rank_of_true as f64)),
        median_rank: median(preds.iter().map(|p| p.rank_of_true as f64).collect()),
    }
}

/// Metrics of the cases whose visible-token count lies in `[lo, hi]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket<M> {
    /// 1 to 4 for quartile buckets, `None` for fixed-width buckets.
    pub quartile: Option<usize>,
    pub lo: usize,
    pub hi: usize,
    pub metrics: M,
}

/// A group of case indices with its visible-token range.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Group {
    quartile: Option<usize>,
    lo: usize,
    hi: usize,
    members: Vec<usize>,
}

/// The quartile cut values `[c1, c2, c3]` of `visible` (nearest rank: `c_b = sorted[ceil(b n / 4)
/// - 1]`); `None` when empty.
pub fn visible_quartile_cuts(visible: &[usize]) -> Option<[usize; 3]> {
    if visible.is_empty() {
        return None;
    }
    let mut s = visible.to_vec();
    s.sort_unstable();
    let n = s.len();
    let cut = |b: usize| s[(b * n).div_ceil(4) - 1];
    Some([cut(1), cut(2), cut(3)])
}

fn quartile_groups(visible: &[usize]) -> Vec<Group> {
    let Some(c) = visible_quartile_cuts(visible) else {
        return Vec::new();
    };
    let min = *visible.iter().min().expect("non-empty");
    let max = *visible.iter().max().expect("non-empty");
    (0..4)
        .filter_map(|b| {
            let above = |v: usize| b == 0 || v > c[b - 1];
            let below = |v: usize| b == 3 || v <= c[b];
            let members: Vec<usize> = (0..visible.len())
                .filter(|&i| above(visible[i]) && below(visible[i]))
                .collect();
            (!members.is_empty()).then(|| Group {
                quartile: Some(b + 1),
                lo: if b == 0 { min } else { c[b - 1] + 1 },
                hi: if b == 3 { max } else { c[b] },
                members,
            })
        })
        .collect()
}

fn width_groups(visible: &[usize], width: usize) -> Vec<Group> {
    let w = width.max(1);
    let mut map: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &v) in visible.iter().enumerate() {
        map.entry(v / w).or_default().push(i);
    }
    map.into_iter()
        .map(|(b, members)| Group {
            quartile: None,
            lo: b * w,
            hi: b * w + w - 1,
            members,
        })
        .collect()
}

fn bucketize<T, M>(items: &[T], groups: Vec<Group>, summarize: impl Fn(&[T]) -> M) -> Vec<Bucket<M>>
where
    T: Clone,
{
    groups
        .into_iter()
        .map(|g| {
            let sel: Vec<T> = g.members.iter().map(|&i| items[i].clone()).collect();
            Bucket {
                quartile: g.quartile,
                lo: g.lo,
                hi: g.hi,
                metrics: summarize(&sel),
            }
        })
        .collect()
}

/// [`summarize`] per quartile of the visible-token count (non-empty buckets only).
pub fn by_visible_quartile(preds: &[EndPrediction], ks: &[usize]) -> Vec<Bucket<EndMetrics>> {
    let visible: Vec<usize> = preds.iter().map(|p| p.visible).collect();
    bucketize(preds, quartile_groups(&visible), |s| summarize(s, ks))
}

/// [`summarize`] per bucket `[i width, (i + 1) width - 1]` of visible tokens (non-empty only, in
/// order): the accuracy-by-visible-tokens curve.
pub fn by_visible_width(
    preds: &[EndPrediction],
    ks: &[usize],
    width: usize,
) -> Vec<Bucket<EndMetrics>> {
    let visible: Vec<usize> = preds.iter().map(|p| p.visible).collect();
    bucketize(preds, width_groups(&visible, width), |s| summarize(s, ks))
}

/// A curve bucket width giving about 8 buckets over `0 ..= max_visible`.
pub fn auto_bucket_width(max_visible: usize) -> usize {
    (max_visible + 1).div_ceil(8).max(1)
}

// ---------------------------------------------------------------------------------------------
// Cases and first-step scores
// ---------------------------------------------------------------------------------------------

/// How many tokens of a block are visible to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum VisiblePolicy {
    /// `meta` for mask-eos data, `uniform` for padded data.
    Auto,
    /// The block's meta value: `fixed = meta` (mask-eos: the prepared visible prefix; padded: the
    /// BOS and prompt only).
    Meta,
    /// Visible tokens `v` drawn uniformly in `[meta - 1, doc_len]` with the seeded generator (the
    /// prompt always visible; `v = doc_len` leaves only the end to predict).
    Uniform,
}

impl VisiblePolicy {
    /// Resolves `Auto` for a file kind.
    pub fn resolve(self, kind: Kind) -> VisiblePolicy {
        match (self, kind) {
            (VisiblePolicy::Auto, Kind::MaskEos) => VisiblePolicy::Meta,
            (VisiblePolicy::Auto, _) => VisiblePolicy::Uniform,
            (p, _) => p,
        }
    }
}

/// One evaluation case: what the model sees and where the answer really ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EosCase {
    /// Visible tokens (prompt + visible prefix) without the BOS.
    pub visible: Vec<u32>,
    /// Slot of the first end token after the visible part (the answer length).
    pub true_end: usize,
    /// Slots from the canvas start to the end of the block (the default canvas).
    pub rest: usize,
}

impl EosCase {
    /// From a block and `fixed`, the number of leading positions (BOS included) that stay visible
    /// (clamped to `[1, block.len()]`). `None` when no end token follows the visible part.
    pub fn from_block(block: &[u32], fixed: usize, is_end: impl Fn(u32) -> bool) -> Option<Self> {
        if block.is_empty() {
            return None;
        }
        let fixed = fixed.clamp(1, block.len());
        let end = (fixed..block.len()).find(|&j| is_end(block[j]))?;
        Some(EosCase {
            visible: block[1..fixed].to_vec(),
            true_end: end - fixed,
            rest: block.len() - fixed,
        })
    }
}

/// The first `max` blocks of `file` as cases, the visible prefix chosen by `policy` (`seed` for
/// [`VisiblePolicy::Uniform`]). The true end uses the file's `eos_id` and `pad_id`.
pub fn cases_from_file(
    file: &TokenFile,
    policy: VisiblePolicy,
    seed: u64,
    max: usize,
) -> Vec<EosCase> {
    let h = file.header();
    let (eos, pad) = (h.eos_id, h.pad_id);
    let policy = policy.resolve(h.kind);
    let mut rng = Rng::new(seed);
    (0..file.n_blocks().min(max))
        .filter_map(|i| {
            let meta = file.meta(i) as usize;
            // A continuation block has no end to predict.
            let e = file.end_position(i)?;
            // One draw per block whatever the policy, so the stream never shifts.
            let u = rng.below((e.saturating_sub(meta) + 1) as u64) as usize;
            let fixed = match policy {
                VisiblePolicy::Uniform => meta + u,
                _ => meta,
            };
            EosCase::from_block(file.block(i), fixed, |t| t == eos || Some(t) == pad)
        })
        .collect()
}

/// The first forward's end scores of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotScores {
    /// Index of the case in the input list.
    pub case: usize,
    pub visible: usize,
    pub true_end: usize,
    /// End probability of each canvas slot.
    pub p_end: Vec<f32>,
    /// Whether each slot's argmax is an end id.
    pub argmax_is_end: Vec<bool>,
}

impl SlotScores {
    pub fn canvas(&self) -> usize {
        self.p_end.len()
    }

    /// `P(first end = j) = p_end[j] * prod_{i<j} (1 - p_end[i])` for every slot.
    pub fn first_end_distribution(&self) -> Vec<f64> {
        let mut survive = 1.0f64;
        self.p_end
            .iter()
            .map(|&p| {
                let p = (p as f64).clamp(0.0, 1.0);
                let q = survive * p;
                survive *= 1.0 - p;
                q
            })
            .collect()
    }

    /// 1 + the number of slots with a strictly larger first-end probability than the true end.
    pub fn rank_of_true(&self) -> usize {
        let d = self.first_end_distribution();
        let t = d.get(self.true_end).copied().unwrap_or(0.0);
        1 + d.iter().filter(|&&q| q > t).count()
    }

    /// What `predictor` predicts for this case.
    pub fn prediction(&self, predictor: &LengthPredictor) -> EndPrediction {
        EndPrediction {
            true_end: self.true_end,
            predicted: predictor.predict(&self.p_end, &self.argmax_is_end),
            canvas: self.canvas(),
            visible: self.visible,
            p_end_at_true: self.p_end.get(self.true_end).copied().unwrap_or(0.0),
            rank_of_true: self.rank_of_true(),
        }
    }
}

/// [`SlotScores::prediction`] for every case.
pub fn predictions(scores: &[SlotScores], predictor: &LengthPredictor) -> Vec<EndPrediction> {
    scores.iter().map(|s| s.prediction(predictor)).collect()
}

/// Why a case has no first-step input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The true end is not inside the canvas (explicit canvas shorter than the answer).
    EndOutsideCanvas,
    /// BOS + visible + canvas exceeds the model's positions.
    TooLong,
}

impl EosCase {
    /// The first denoising step's input `[BOS] + visible + [MASK] * canvas` (canvas = `canvas` or
    /// the rest of the block), with the number of leading visible positions and the canvas length.
    pub fn first_step_input(
        &self,
        model: &Gpt2,
        canvas: Option<usize>,
    ) -> std::result::Result<(Vec<u32>, usize, usize), Skip> {
        let c = canvas.unwrap_or(self.rest);
        if self.true_end >= c {
            return Err(Skip::EndOutsideCanvas);
        }
        let p_len = 1 + self.visible.len();
        if p_len + c > model.cfg.n_positions {
            return Err(Skip::TooLong);
        }
        let mut seq = Vec::with_capacity(p_len + c);
        seq.push(model.ids.eos);
        seq.extend_from_slice(&self.visible);
        seq.resize(p_len + c, model.ids.mask);
        Ok((seq, p_len, c))
    }
}

/// The scored cases and the ones left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FirstStep {
    pub scores: Vec<SlotScores>,
    /// The true end is not inside the canvas (explicit canvas shorter than the answer).
    pub skipped_end_outside_canvas: usize,
    /// BOS + visible + canvas exceeds the model's positions.
    pub skipped_too_long: usize,
}

/// The model's end ids: eos, and pad when it has one.
/// The ids that count as an end: eos, and pad when the model has one.
pub fn end_ids(model: &Gpt2) -> Vec<u32> {
    let mut v = vec![model.ids.eos];
    v.extend(model.ids.pad);
    v
}

/// One bidirectional forward on `seq`; `p_end` and argmax-is-end of `canvas` slots read from rows
/// `p_len - 1 ..` (the DiffuGPT shift).
fn slot_end_scores(
    model: &Gpt2,
    sampler: &Sampler,
    seq: &[u32],
    p_len: usize,
    canvas: usize,
) -> Result<(Vec<f32>, Vec<bool>)> {
    let (p_end, is_end, _) = slot_scores_and_hidden(model, sampler, seq, p_len, canvas)?;
    Ok((p_end, is_end))
}

/// `slot_end_scores` and the final hidden states `[canvas, n_embd]` the slots are read from
/// (the features of the learned end probe, [`crate::eval::probe`]).
pub fn slot_scores_and_hidden(
    model: &Gpt2,
    sampler: &Sampler,
    seq: &[u32],
    p_len: usize,
    canvas: usize,
) -> Result<(Vec<f32>, Vec<bool>, Tensor)> {
    model.check_ids(seq, 0)?;
    let input = Tensor::from_slice(seq, (1, seq.len()), model.device())?;
    let hidden = model
        .hidden(&input, &AttnMask::Bidirectional, None)?
        .squeeze(0)?;
    let rows = hidden.narrow(0, p_len - 1, canvas)?;
    let mut p_end = Vec::with_capacity(canvas);
    let mut is_end = Vec::with_capacity(canvas);
    let mut start = 0;
    while start < canvas {
        let len = LOGIT_CHUNK.min(canvas - start);
        let logits = model
            .logits(&rows.narrow(0, start, len)?)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for row in &logits {
            p_end.push(sampler.end_prob(row));
            is_end.push(model.ids.is_end(argmax(row).0 as u32));
        }
        start += len;
    }
    Ok((p_end, is_end, rows))
}

/// Runs the first denoising step of every case: `[BOS] + visible + [MASK] * canvas` (canvas =
/// `canvas` or the rest of the block), one bidirectional forward, per-slot end scores.
pub fn first_step_scores(
    model: &Gpt2,
    cases: &[EosCase],
    canvas: Option<usize>,
    bar: Option<&ProgressBar>,
) -> Result<FirstStep> {
    let sampler = Sampler::new(
        SamplingParams::default(),
        ConfidenceKind::Prob,
        model.cfg.vocab_size,
        end_ids(model),
        vec![],
    );
    let mut out = FirstStep::default();
    for (i, case) in cases.iter().enumerate() {
        if let Some(b) = bar {
            b.inc(1);
        }
        let (seq, p_len, c) = match case.first_step_input(model, canvas) {
            Ok(input) => input,
            Err(Skip::EndOutsideCanvas) => {
                out.skipped_end_outside_canvas += 1;
                continue;
            }
            Err(Skip::TooLong) => {
                out.skipped_too_long += 1;
                continue;
            }
        };
        let (p_end, argmax_is_end) = slot_end_scores(model, &sampler, &seq, p_len, c)
            .with_context(|| format!("first step of case {i}"))?;
        out.scores.push(SlotScores {
            case: i,
            visible: case.visible.len(),
            true_end: case.true_end,
            p_end,
            argmax_is_end,
        });
    }
    Ok(out)
}

/// For each predictor, its label and one [`EndPrediction`] per scored case (cases skipped by
/// [`first_step_scores`] are left out).
pub fn first_step_predictions(
    model: &Gpt2,
    cases: &[EosCase],
    predictors: &[LengthPredictor],
    canvas: Option<usize>,
) -> Result<Vec<(String, Vec<EndPrediction>)>> {
    let fs = first_step_scores(model, cases, canvas, None)?;
    Ok(predictors
        .iter()
        .map(|p| (p.label(), predictions(&fs.scores, p)))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

/// End-token confusion counts over the slots of a canvas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndTokenCounts {
    pub tp: usize,
    pub fp: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub tn: usize,
}

impl EndTokenCounts {
    pub fn add(&mut self, o: &EndTokenCounts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.tn += o.tn;
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// `2 tp / (2 tp + fp + fn)` (`NaN` when all three are 0).
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

/// Counts over slots `0 .. canvas_len` of a generated `canvas` (which may be shorter after an
/// EoS-first cut: the missing slots count as predicted end). Slot `j` is actually "end" when
/// `j >= true_end`.
pub fn end_token_counts(
    canvas: &[u32],
    canvas_len: usize,
    true_end: usize,
    is_end: impl Fn(u32) -> bool,
) -> EndTokenCounts {
    let mut c = EndTokenCounts::default();
    for j in 0..canvas_len {
        let pred = canvas.get(j).is_none_or(|&t| is_end(t));
        match (pred, j >= true_end) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, true) => c.fn_ += 1,
            (false, false) => c.tn += 1,
        }
    }
    c
}

/// One decoded case.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenRecord {
    pub case: usize,
    pub visible: usize,
    pub true_end: usize,
    pub canvas: usize,
    pub predicted_len: Option<usize>,
    pub final_len: usize,
    pub final_canvas_len: usize,
    pub forward_passes: usize,
    pub positions_processed: usize,
    pub counts: EndTokenCounts,
}

/// Generation metrics over a set of decoded cases (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenMetrics {
    pub n: usize,
    pub counts: EndTokenCounts,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub final_len_mae: f64,
    pub final_len_rmse: f64,
    pub final_len_mean_error: f64,
    pub mean_forward_passes: f64,
    pub mean_positions_processed: f64,
}

/// Pools the counts and averages the length errors and costs of `records`.
pub fn summarize_generation(records: &[GenRecord]) -> GenMetrics {
    let mut counts = EndTokenCounts::default();
    records.iter().for_each(|r| counts.add(&r.counts));
    let err = |r: &GenRecord| r.final_len as f64 - r.true_end as f64;
    GenMetrics {
        n: records.len(),
        counts,
        precision: counts.precision(),
        recall: counts.recall(),
        f1: counts.f1(),
        final_len_mae: mean_of(records.iter().map(|r| err(r).abs())),
        final_len_rmse: mean_of(records.iter().map(|r| err(r).powi(2))).sqrt(),
        final_len_mean_error: mean_of(records.iter().map(err)),
        mean_forward_passes: mean_of(records.iter().map(|r| r.forward_passes as f64)),
        mean_positions_processed: mean_of(records.iter().map(|r| r.positions_processed as f64)),
    }
}

/// [`summarize_generation`] per visible-token quartile.
pub fn generation_by_quartile(records: &[GenRecord]) -> Vec<Bucket<GenMetrics>> {
    let visible: Vec<usize> = records.iter().map(|r| r.visible).collect();
    bucketize(records, quartile_groups(&visible), summarize_generation)
}

/// How [`generation_metrics`] decodes.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationOptions {
    /// Canvas length; `None`: the rest of each case's block.
    pub canvas: Option<usize>,
    /// The EoS-first predictor.
    pub predictor: LengthPredictor,
    pub margin: usize,
    pub margin_ratio: f32,
    pub grow: bool,
    /// EoS-first end floor (see `diffugpt::length::length_floor`; 0 = off).
    pub end_floor: f32,
    pub steps: Steps,
    /// Case `i` decodes with seed `seed + i`.
    pub seed: u64,
}

impl Default for GenerationOptions {
    /// The core's EoS-first defaults: quantile 0.9, margin 8 / 25%, growth on, the default end
    /// floor, one step per token.
    fn default() -> Self {
        GenerationOptions {
            canvas: None,
            predictor: LengthPredictor::Quantile(0.9),
            margin: 8,
            margin_ratio: 0.25,
            grow: true,
            end_floor: diffugpt::decode::DEFAULT_END_FLOOR,
            steps: Steps::PerToken(1.0),
            seed: 0,
        }
    }
}

/// One decoding mode's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenModeReport {
    /// `fixed` or `eos-first`.
    pub mode: String,
    pub overall: GenMetrics,
    pub quartiles: Vec<Bucket<GenMetrics>>,
    pub records: Vec<GenRecord>,
}

/// Fixed-length against EoS-first decoding on the same cases.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationReport {
    pub examples: usize,
    pub skipped: usize,
    pub predictor: String,
    pub margin: usize,
    pub margin_ratio: f32,
    pub grow: bool,
    pub end_floor: f32,
    pub steps: String,
    pub modes: Vec<GenModeReport>,
    /// EoS-first forward passes / fixed-length forward passes (totals).
    pub forward_passes_ratio: f64,
    /// EoS-first positions processed / fixed-length positions processed (totals).
    pub positions_ratio: f64,
}

/// Decodes every case in fixed-length and EoS-first mode (greedy, confidence order) and scores
/// the ends. Cases whose end lies outside the canvas or that exceed the model's positions are
/// skipped (counted).
pub fn generation_metrics(
    model: &Gpt2,
    cases: &[EosCase],
    opts: &GenerationOptions,
    bar: Option<&ProgressBar>,
) -> Result<GenerationReport> {
    let modes = [
        ("fixed", LengthMode::Fixed),
        (
            "eos-first",
            LengthMode::EosFirst {
                predictor: opts.predictor,
                margin: opts.margin,
                margin_ratio: opts.margin_ratio,
                grow: opts.grow,
            },
        ),
    ];
    let mut records: Vec<Vec<GenRecord>> = vec![Vec::new(); modes.len()];
    let mut skipped = 0;
    let ids = model.ids;
    for (i, case) in cases.iter().enumerate() {
        let c = opts.canvas.unwrap_or(case.rest);
        if case.true_end >= c || 1 + case.visible.len() + c > model.cfg.n_positions {
            skipped += 1;
            if let Some(b) = bar {
                b.inc(modes.len() as u64);
            }
            continue;
        }
        for (m, (_, length)) in modes.iter().enumerate() {
            let params = GenerateParams {
                canvas_len: c,
                steps: opts.steps,
                strategy: Strategy::Confidence(ConfidenceKind::Prob),
                sampling: SamplingParams::default(),
                length: *length,
                seed: opts.seed.wrapping_add(i as u64),
                ban_mask: true,
                end_floor: opts.end_floor,
                ..GenerateParams::default()
            };
            let g = Session::new(model)
                .generate(&case.visible, &params, None)
                .with_context(|| format!("generating case {i}"))?;
            records[m].push(GenRecord {
                case: i,
                visible: case.visible.len(),
                true_end: case.true_end,
                canvas: c,
                predicted_len: g.stats.predicted_len,
                final_len: g.stats.final_len,
                final_canvas_len: g.stats.final_canvas_len,
                forward_passes: g.stats.forward_passes,
                positions_processed: g.stats.positions_processed(),
                counts: end_token_counts(&g.canvas, c, case.true_end, |t| ids.is_end(t)),
            });
            if let Some(b) = bar {
                b.inc(1);
            }
        }
    }
    let total = |m: usize, f: fn(&GenRecord) -> usize| records[m].iter().map(f).sum::<usize>();
    let forward_passes_ratio = ratio(
        total(1, |r| r.forward_passes),
        total(0, |r| r.forward_passes),
    );
    let positions_ratio = ratio(
        total(1, |r| r.positions_processed),
        total(0, |r| r.positions_processed),
    );
    Ok(GenerationReport {
        examples: records[0].len(),
        skipped,
        predictor: opts.predictor.label(),
        margin: opts.margin,
        margin_ratio: opts.margin_ratio,
        grow: opts.grow,
        end_floor: opts.end_floor,
        steps: match opts.steps {
            Steps::Fixed(n) => format!("{n}"),
            Steps::PerToken(r) => format!("{r} per token"),
        },
        modes: modes
            .iter()
            .zip(records)
            .map(|((name, _), recs)| GenModeReport {
                mode: name.to_string(),
                overall: summarize_generation(&recs),
                quartiles: generation_by_quartile(&recs),
                records: recs,
            })
            .collect(),
        forward_passes_ratio,
        positions_ratio,
    })
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

/// `eval eos`: first-step end metrics (and optionally generation metrics) of a model on padded or
/// mask-eos token data.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct EosEvalArgs {
    /// Model directory (model.safetensors + config.json) or weights file.
    #[arg(long)]
    pub model: PathBuf,
    /// Token-file stem of padded or mask-eos data (e.g. runs/data/eospad/test).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (report.json, report.md, pareto.png, accuracy_by_visible.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Length predictors: argmax, threshold:TAU, quantile:Q, oracle:N (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_PREDICTORS)]
    pub predictors: Vec<String>,
    /// Evaluate the first N blocks of the file.
    #[arg(long, default_value_t = 200)]
    pub max_examples: usize,
    /// Seeds the visible-prefix draws and the decoding.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also decode in full (fixed-length and EoS-first) and report generation end metrics.
    #[arg(long)]
    pub generate: bool,
    /// Cases decoded in full with --generate (the first ones evaluated).
    #[arg(long, default_value_t = 20)]
    pub generate_examples: usize,
    /// Canvas length (default: the rest of each block after the visible tokens).
    #[arg(long)]
    pub canvas: Option<usize>,
    /// Tolerances k for the within-+-k accuracies (comma-separated; 2 is always added).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub ks: Vec<usize>,
    /// How many tokens of each block are visible.
    #[arg(long, value_enum, default_value_t = VisiblePolicy::Auto)]
    pub visible: VisiblePolicy,
    /// Width (visible tokens) of the accuracy-curve buckets (default: about 8 buckets).
    #[arg(long)]
    pub bucket_width: Option<usize>,
    /// EoS-first predictor used with --generate.
    #[arg(long, default_value = "quantile:0.9")]
    pub gen_predictor: String,
    /// EoS-first safety margin (slots) used with --generate.
    #[arg(long, default_value_t = 8)]
    pub margin: usize,
    /// EoS-first margin as a share of the prediction used with --generate.
    #[arg(long, default_value_t = 0.25)]
    pub margin_ratio: f32,
    /// EoS-first end floor used with --generate (0 = off).
    #[arg(long, default_value_t = diffugpt::decode::DEFAULT_END_FLOOR)]
    pub end_floor: f32,
    /// Denoising steps per canvas token with --generate.
    #[arg(long, default_value_t = 1.0)]
    pub steps_per_token: f32,
}

impl EosEvalArgs {
    /// The command-line defaults for everything but the paths.
    pub fn new(model: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        EosEvalArgs {
            model,
            data,
            out,
            predictors: DEFAULT_PREDICTORS.split(',').map(String::from).collect(),
            max_examples: 200,
            seed: 0,
            generate: false,
            generate_examples: 20,
            canvas: None,
            ks: vec![1, 2, 4],
            visible: VisiblePolicy::Auto,
            bucket_width: None,
            gen_predictor: "quantile:0.9".into(),
            margin: 8,
            margin_ratio: 0.25,
            end_floor: diffugpt::decode::DEFAULT_END_FLOOR,
            steps_per_token: 1.0,
        }
    }
}

/// Parses predictor specs (each may itself be comma-separated).
pub fn parse_predictors(specs: &[String]) -> Result<Vec<LengthPredictor>> {
    let mut out = Vec::new();
    for s in specs
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        out.push(LengthPredictor::parse(s).with_context(|| format!("--predictors {s}"))?);
    }
    ensure!(!out.is_empty(), "no length predictor given");
    Ok(out)
}

/// One predictor's first-step results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PredictorReport {
    pub label: String,
    pub overall: EndMetrics,
    pub quartiles: Vec<Bucket<EndMetrics>>,
    /// Fixed-width visible-token buckets (`bucket_width`).
    pub curve: Vec<Bucket<EndMetrics>>,
    pub predictions: Vec<EndPrediction>,
}

/// One point of a predictor sweep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    /// `q` or `tau`.
    pub param: f32,
    pub upper_bound: f64,
    pub tightness: f64,
    pub exact: f64,
    pub saved_mean: f64,
}

/// Quantile and threshold sweeps (the Pareto curves).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sweep {
    pub quantile: Vec<SweepPoint>,
    pub threshold: Vec<SweepPoint>,
}

/// `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct EosReport {
    pub eval: &'static str,
    pub environment: Environment,
    pub model: PathBuf,
    pub data: PathBuf,
    pub data_kind: Kind,
    pub block_len: usize,
    pub visible_policy: VisiblePolicy,
    pub canvas: Option<usize>,
    pub seed: u64,
    pub ks: Vec<usize>,
    /// Cases read from the file (at most `max_examples`).
    pub n_cases: usize,
    /// Cases evaluated (the `n` of every overall metric).
    pub n_examples: usize,
    pub skipped_end_outside_canvas: usize,
    pub skipped_too_long: usize,
    pub bucket_width: usize,
    pub predictors: Vec<PredictorReport>,
    pub sweep: Sweep,
    pub generation: Option<GenerationReport>,
    pub plots: Vec<String>,
    pub notes: Vec<String>,
    pub elapsed_s: f64,
}

/// `make(param)` for every param, summarized (the Pareto curves).
pub fn sweep(
    scores: &[SlotScores],
    make: fn(f32) -> LengthPredictor,
    params: &[f32],
) -> Vec<SweepPoint> {
    params
        .iter()
        .map(|&param| {
            let m = summarize(&predictions(scores, &make(param)), &[]);
            SweepPoint {
                param,
                upper_bound: m.upper_bound,
                tightness: m.tightness,
                exact: m.exact,
                saved_mean: m.saved_mean,
            }
        })
        .collect()
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}]"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Runs the evaluation and writes the report and plots into `args.out`.
pub fn run(args: &EosEvalArgs) -> Result<()> {
    let start = Instant::now();
    let predictors = parse_predictors(&args.predictors)?;
    let gen_predictor = LengthPredictor::parse(&args.gen_predictor)
        .with_context(|| format!("--gen-predictor {}", args.gen_predictor))?;
    let mut ks = args.ks.clone();
    ks.push(2);
    ks.sort_unstable();
    ks.dedup();

    let (model, _) = diffugpt::weights::load(&args.model, LoadOptions::default())
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let file = TokenFile::open(&args.data)
        .with_context(|| format!("opening token file {}", args.data.display()))?;
    let h = file.header().clone();
    ensure!(
        h.kind.is_blocked(),
        "{}: eval eos needs padded or mask-eos data, not {}",
        args.data.display(),
        h.kind
    );
    let mut notes = Vec::new();
    if h.eos_id != model.ids.eos {
        notes.push(format!(
            "the data's eos_id {} differs from the model's eos {}: the BOS and end probabilities use the model's ids, the true end the data's",
            h.eos_id, model.ids.eos
        ));
    }
    if let Some(p) = h.pad_id.filter(|&p| !model.ids.is_end(p)) {
        notes.push(format!(
            "the data pads with id {p}, which the model does not treat as an end: p_end counts only the model's end ids"
        ));
    }
    if h.mask_id != model.ids.mask {
        notes.push(format!(
            "the data's mask_id {} differs from the model's mask {}; the canvas uses the model's",
            h.mask_id, model.ids.mask
        ));
    }
    for n in &notes {
        eprintln!("note: {n}");
    }

    let policy = args.visible.resolve(h.kind);
    let cases = cases_from_file(&file, policy, args.seed, args.max_examples);
    ensure!(
        !cases.is_empty(),
        "{}: no evaluation cases",
        args.data.display()
    );
    let pb = bar(cases.len(), "eos first step");
    let fs = first_step_scores(&model, &cases, args.canvas, Some(&pb))?;
    pb.finish_and_clear();
    ensure!(
        !fs.scores.is_empty(),
        "every case was skipped ({} with the end outside the canvas, {} too long for the model)",
        fs.skipped_end_outside_canvas,
        fs.skipped_too_long
    );
    let max_visible = fs.scores.iter().map(|s| s.visible).max().unwrap_or(0);
    let width = args
        .bucket_width
        .unwrap_or_else(|| auto_bucket_width(max_visible))
        .max(1);
    let reports: Vec<PredictorReport> = predictors
        .iter()
        .map(|p| {
            let preds = predictions(&fs.scores, p);
            PredictorReport {
                label: p.label(),
                overall: summarize(&preds, &ks),
                quartiles: by_visible_quartile(&preds, &ks),
                curve: by_visible_width(&preds, &ks, width),
                predictions: preds,
            }
        })
        .collect();
    let sweep = Sweep {
        quantile: sweep(&fs.scores, LengthPredictor::Quantile, &QUANTILE_SWEEP),
        threshold: sweep(&fs.scores, LengthPredictor::Threshold, &THRESHOLD_SWEEP),
    };

    let generation = if args.generate {
        let gen_cases: Vec<EosCase> = fs
            .scores
            .iter()
            .take(args.generate_examples)
            .map(|s| cases[s.case].clone())
            .collect();
        let opts = GenerationOptions {
            canvas: args.canvas,
            predictor: gen_predictor,
            margin: args.margin,
            margin_ratio: args.margin_ratio,
            grow: true,
            end_floor: args.end_floor,
            steps: Steps::PerToken(args.steps_per_token),
            seed: args.seed,
        };
        let pb = bar(2 * gen_cases.len(), "eos generation");
        let g = generation_metrics(&model, &gen_cases, &opts, Some(&pb))?;
        pb.finish_and_clear();
        Some(g)
    } else {
        None
    };

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut plots = Vec::new();
    if plot_pareto(&args.out.join("pareto.png"), &reports, &sweep)? {
        plots.push("pareto.png".to_string());
    } else {
        notes.push("pareto.png not drawn: no finite tightness".into());
    }
    if plot_accuracy(&args.out.join("accuracy_by_visible.png"), &reports)? {
        plots.push("accuracy_by_visible.png".to_string());
    }

    let report = EosReport {
        eval: "eos",
        environment: Environment::detect(),
        model: args.model.clone(),
        data: args.data.clone(),
        data_kind: h.kind,
        block_len: h.block_len as usize,
        visible_policy: policy,
        canvas: args.canvas,
        seed: args.seed,
        ks,
        n_cases: cases.len(),
        n_examples: fs.scores.len(),
        skipped_end_outside_canvas: fs.skipped_end_outside_canvas,
        skipped_too_long: fs.skipped_too_long,
        bucket_width: width,
        predictors: reports,
        sweep,
        generation,
        plots,
        notes,
        elapsed_s: start.elapsed().as_secs_f64(),
    };
    let md = markdown(&report);
    write_report(&args.out, &report, &md)?;
    eprintln!(
        "eval eos: {} examples in {:.1}s -> {}",
        report.n_examples,
        report.elapsed_s,
        args.out.display()
    );
    Ok(())
}

fn finite_points(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    points
        .into_iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// Draws `pareto.png`; false when there is nothing finite to draw.
fn plot_pareto(out: &Path, reports: &[PredictorReport], sweep: &Sweep) -> Result<bool> {
    let curve = |name: &str, pts: &[SweepPoint]| {
        let mut points = finite_points(pts.iter().map(|p| (p.tightness, p.upper_bound)));
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        Series {
            name: name.to_string(),
            points,
        }
    };
    let mut series = vec![
        curve("quantile sweep (q 0.05..0.99)", &sweep.quantile),
        curve("threshold sweep (tau 0.95..0.05)", &sweep.threshold),
    ];
    series.extend(reports.iter().map(|r| Series {
        name: r.label.clone(),
        points: finite_points([(r.overall.tightness, r.overall.upper_bound)]),
    }));
    if series.iter().all(|s| s.points.is_empty()) {
        return Ok(false);
    }
    line_chart(
        out,
        "End prediction: upper-bound correctness vs tightness",
        "tightness (mean predicted - true end, correct bounds only)",
        "upper-bound correctness",
        &series,
    )?;
    Ok(true)
}

/// Draws `accuracy_by_visible.png`; false when there is nothing finite to draw.
fn plot_accuracy(out: &Path, reports: &[PredictorReport]) -> Result<bool> {
    let mid = |b: &Bucket<EndMetrics>| (b.lo + b.hi) as f64 / 2.0;
    let mut series = Vec::new();
    for r in reports {
        series.push(Series {
            name: format!("{} exact", r.label),
            points: finite_points(r.curve.iter().map(|b| (mid(b), b.metrics.exact))),
        });
        series.push(Series {
            name: format!("{} within 2", r.label),
            points: finite_points(
                r.curve
                    .iter()
                    .map(|b| (mid(b), b.metrics.within(2).unwrap_or(f64::NAN))),
            ),
        });
    }
    if series.iter().all(|s| s.points.is_empty()) {
        return Ok(false);
    }
    line_chart(
        out,
        "First-step end accuracy by visible tokens",
        "visible tokens (bucket centre)",
        "accuracy",
        &series,
    )?;
    Ok(true)
}

fn f3(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "-".into()
    }
}

fn f1d(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "-".into()
    }
}

fn end_row(label: String, m: &EndMetrics, ks: &[usize]) -> Vec<String> {
    let mut row = vec![label, m.n.to_string(), f3(m.exact)];
    row.extend(ks.iter().map(|&k| f3(m.within(k).unwrap_or(f64::NAN))));
    row.extend([
        f3(m.upper_bound),
        f1d(m.tightness),
        f3(m.saved_mean),
        f3(m.saved_pooled),
        f1d(m.rmse),
        f3(m.no_end),
    ]);
    row
}

fn end_header(first: &str, ks: &[usize]) -> Vec<String> {
    let mut h = vec![first.to_string(), "n".into(), "exact".into()];
    h.extend(ks.iter().map(|k| format!("±{k}")));
    h.extend(
        [
            "upper bound",
            "tightness",
            "saved (mean)",
            "saved (pooled)",
            "RMSE",
            "no end",
        ]
        .map(String::from),
    );
    h
}

fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    md_table(&h, rows)
}

fn gen_row(label: String, m: &GenMetrics) -> Vec<String> {
    vec![
        label,
        m.n.to_string(),
        f3(m.precision),
        f3(m.recall),
        f3(m.f1),
        f1d(m.final_len_mae),
        f1d(m.final_len_rmse),
        f1d(m.final_len_mean_error),
        f1d(m.mean_forward_passes),
        f1d(m.mean_positions_processed),
    ]
}

const GEN_HEADER: [&str; 10] = [
    "",
    "n",
    "end precision",
    "end recall",
    "end F1",
    "final-len MAE",
    "final-len RMSE",
    "final-len mean error",
    "forward passes",
    "positions processed",
];

fn range(b: &Bucket<impl Sized>) -> String {
    match b.quartile {
        Some(q) => format!("Q{q}: {}-{}", b.lo, b.hi),
        None => format!("{}-{}", b.lo, b.hi),
    }
}

/// `report.md`.
fn markdown(r: &EosReport) -> String {
    let mut s = String::from("# EoS evaluation: first-step end prediction\n\n");
    s += &format!(
        "Model `{}`, data `{}` ({}, block_len {}): {} examples evaluated of {} read \
         ({} skipped with the end outside the canvas, {} too long). Visible tokens: `{}`; \
         canvas: {}; seed {}.\n\n",
        r.model.display(),
        r.data.display(),
        r.data_kind,
        r.block_len,
        r.n_examples,
        r.n_cases,
        r.skipped_end_outside_canvas,
        r.skipped_too_long,
        serde_json::to_value(r.visible_policy)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        r.canvas
            .map_or("the rest of each block".to_string(), |c| c.to_string()),
        r.seed
    );
    let e = &r.environment;
    s += &format!(
        "diffugpt {} on {} ({} threads, {}, {}); {:.1} s.\n\n",
        e.diffugpt_version, e.cpu, e.threads, e.backend, e.dtype, r.elapsed_s
    );
    s += "Positions are answer slots after the visible prefix. A predictor that finds no end \
          (\"no end\") counts as the full canvas for upper bound, tightness, saved and RMSE, and \
          is never exact. Saved = share of canvas slots a cut right after the prediction removes \
          (mean of per-example ratios; pooled = total saved / total canvas). Definitions: \
          module docs of `diffugpt_training::eval::eos`.\n\n";
    for n in &r.notes {
        s += &format!("> note: {n}\n\n");
    }

    s += "## Overall\n\n";
    let rows: Vec<Vec<String>> = r
        .predictors
        .iter()
        .map(|p| end_row(p.label.clone(), &p.overall, &r.ks))
        .collect();
    s += &table(&end_header("predictor", &r.ks), &rows);

    if let Some(p) = r.predictors.first() {
        let m = &p.overall;
        s += "\n## The model's end distribution at the first step\n\n";
        s += &md_table(
            &[
                "n",
                "mean p_end at the true end",
                "mean rank of the true end",
                "median rank",
            ],
            &[vec![
                m.n.to_string(),
                f3(m.mean_p_end_at_true),
                f1d(m.mean_rank),
                f1d(m.median_rank),
            ]],
        );
        s += "\nRank 1 = the slot most likely to be the first end \
              (P(first end = j) = p_j * prod_{i<j} (1 - p_i)).\n";
        s += "\nBy visible-token quartile:\n\n";
        let rows: Vec<Vec<String>> = p
            .quartiles
            .iter()
            .map(|b| {
                vec![
                    range(b),
                    b.metrics.n.to_string(),
                    f3(b.metrics.mean_p_end_at_true),
                    f1d(b.metrics.mean_rank),
                    f1d(b.metrics.median_rank),
                ]
            })
            .collect();
        s += &md_table(
            &[
                "visible",
                "n",
                "mean p_end at true end",
                "mean rank",
                "median rank",
            ],
            &rows,
        );
    }

    s += "\n## By visible-token quartile\n";
    for p in &r.predictors {
        s += &format!("\n### {}\n\n", p.label);
        let rows: Vec<Vec<String>> = p
            .quartiles
            .iter()
            .map(|b| end_row(range(b), &b.metrics, &r.ks))
            .collect();
        s += &table(&end_header("visible", &r.ks), &rows);
    }

    s += "\n## Predictor sweeps (Pareto: upper-bound correctness vs tightness)\n\n";
    let mut rows = Vec::new();
    for (name, pts) in [
        ("quantile", &r.sweep.quantile),
        ("threshold", &r.sweep.threshold),
    ] {
        rows.extend(pts.iter().map(|p| {
            vec![
                format!("{name}:{}", p.param),
                f3(p.upper_bound),
                f1d(p.tightness),
                f3(p.exact),
                f3(p.saved_mean),
            ]
        }));
    }
    s += &md_table(
        &[
            "predictor",
            "upper bound",
            "tightness",
            "exact",
            "saved (mean)",
        ],
        &rows,
    );

    if let Some(g) = &r.generation {
        s += "\n## Generation: fixed-length vs EoS-first decoding\n\n";
        s += &format!(
            "{} examples ({} skipped), greedy, confidence order, {} steps; EoS-first: {}, margin \
             {} / {}%, growth {}, end floor {}. Padding zone = slots at or after the true end; slots cut by \
             EoS-first count as predicted end. EoS-first / fixed: forward passes x{}, positions \
             processed x{}.\n\n",
            g.examples,
            g.skipped,
            g.steps,
            g.predictor,
            g.margin,
            g.margin_ratio * 100.0,
            if g.grow { "on" } else { "off" },
            g.end_floor,
            f3(g.forward_passes_ratio),
            f3(g.positions_ratio),
        );
        let mut header = GEN_HEADER;
        header[0] = "mode";
        let rows: Vec<Vec<String>> = g
            .modes
            .iter()
            .map(|m| gen_row(m.mode.clone(), &m.overall))
            .collect();
        s += &md_table(&header, &rows);
        for m in &g.modes {
            s += &format!("\n### {} by visible-token quartile\n\n", m.mode);
            let mut header = GEN_HEADER;
            header[0] = "visible";
            let rows: Vec<Vec<String>> = m
                .quartiles
                .iter()
                .map(|b| gen_row(range(b), &b.metrics))
                .collect();
            s += &md_table(&header, &rows);
        }
    }

    if !r.plots.is_empty() {
        s += "\n## Plots\n\n";
        for p in &r.plots {
            s += &format!("![{p}]({p})\n\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dtype, Header, Split, FORMAT};
    use clap::Parser;

    fn pred(
        true_end: usize,
        predicted: Option<usize>,
        canvas: usize,
        visible: usize,
        p: f32,
        rank: usize,
    ) -> EndPrediction {
        EndPrediction {
            true_end,
            predicted,
            canvas,
            visible,
            p_end_at_true: p,
            rank_of_true: rank,
        }
    }

    fn hand_built() -> Vec<EndPrediction> {
        vec![
            pred(3, Some(3), 10, 2, 0.5, 1), // exact
            pred(2, Some(5), 10, 5, 0.2, 3), // +3, a loose upper bound
            pred(6, Some(4), 20, 8, 0.1, 2), // -2, cuts the answer
            pred(1, None, 10, 9, 0.0, 10),   // no end: counts as the canvas (10)
        ]
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn summarize_hand_built() {
        let m = summarize(&hand_built(), &[1, 2]);
        assert_eq!(m.n, 4);
        assert!(close(m.exact, 0.25));
        assert_eq!(
            m.within,
            vec![
                WithinK {
                    k: 1,
                    accuracy: 0.25
                },
                WithinK {
                    k: 2,
                    accuracy: 0.5
                }
            ]
        );
        assert!(close(m.upper_bound, 0.75));
        // Errors of the correct bounds: 0, 3, 10 - 1 = 9.
        assert!(close(m.tightness, 4.0));
        // kept 4/10, 6/10, 5/20, 10/10 -> saved 0.6, 0.4, 0.75, 0.
        assert!(close(m.saved_mean, 1.75 / 4.0));
        assert!(close(m.saved_pooled, 25.0 / 50.0));
        assert!(close(m.rmse, (94.0f64 / 4.0).sqrt()));
        assert!(close(m.mae, 3.5));
        assert!(close(m.mean_error, 2.5));
        assert!(close(m.no_end, 0.25));
        assert!((m.mean_p_end_at_true - 0.2).abs() < 1e-7);
        assert!(close(m.mean_rank, 4.0));
        assert!(close(m.median_rank, 2.5));
        assert_eq!(m.within(2), Some(0.5));
        assert_eq!(m.within(3), None);

        let one = summarize(&hand_built()[2..3], &[]);
        assert!(close(one.upper_bound, 0.0));
        assert!(one.tightness.is_nan());
        assert!(close(one.median_rank, 2.0));
        let none = summarize(&[], &[1]);
        assert_eq!(none.n, 0);
        assert!(none.exact.is_nan() && none.rmse.is_nan() && none.median_rank.is_nan());
        let json = serde_json::to_value(&none).unwrap();
        assert!(json["exact"].is_null());
    }

    #[test]
    fn grouping_by_visible_tokens() {
        let preds = hand_built();
        let q = by_visible_quartile(&preds, &[2]);
        let ranges: Vec<_> = q
            .iter()
            .map(|b| (b.quartile, b.lo, b.hi, b.metrics.n))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (Some(1), 2, 2, 1),
                (Some(2), 3, 5, 1),
                (Some(3), 6, 8, 1),
                (Some(4), 9, 9, 1)
            ]
        );
        assert!(close(q[0].metrics.exact, 1.0));
        assert!(close(q[2].metrics.within(2).unwrap(), 1.0));
        assert_eq!(visible_quartile_cuts(&[9, 2, 8, 5]), Some([2, 5, 8]));
        // Ties: all in the first bucket, the others empty and left out.
        let tied: Vec<EndPrediction> = (0..5).map(|_| pred(1, Some(1), 4, 3, 0.5, 1)).collect();
        let q = by_visible_quartile(&tied, &[]);
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].lo, q[0].hi, q[0].metrics.n), (3, 3, 5));
        // Eight values: two per quartile.
        let eight: Vec<EndPrediction> =
            (0..8).map(|v| pred(1, Some(1), 4, v * 2, 0.5, 1)).collect();
        let q = by_visible_quartile(&eight, &[]);
        let r: Vec<_> = q.iter().map(|b| (b.lo, b.hi, b.metrics.n)).collect();
        assert_eq!(r, vec![(0, 2, 2), (3, 6, 2), (7, 10, 2), (11, 14, 2)]);

        let w = by_visible_width(&preds, &[2], 5);
        let r: Vec<_> = w
            .iter()
            .map(|b| (b.quartile, b.lo, b.hi, b.metrics.n))
            .collect();
        assert_eq!(r, vec![(None, 0, 4, 1), (None, 5, 9, 3)]);
        assert!(close(w[1].metrics.upper_bound, 2.0 / 3.0));
        assert_eq!(auto_bucket_width(0), 1);
        assert_eq!(auto_bucket_width(63), 8);
    }

    #[test]
    fn end_token_counts_and_f1() {
        let is_end = |t: u32| t == 9;
        // true end 3: slots 3.. are the padding zone.
        let c = end_token_counts(&[1, 9, 2, 3, 9, 9], 6, 3, is_end);
        assert_eq!(
            c,
            EndTokenCounts {
                tp: 2,
                fp: 1,
                fn_: 1,
                tn: 2
            }
        );
        // Cut canvas: slots 4 and 5 were removed and count as predicted end.
        let c2 = end_token_counts(&[1, 2, 3, 9], 6, 3, is_end);
        assert_eq!(
            c2,
            EndTokenCounts {
                tp: 3,
                fp: 0,
                fn_: 0,
                tn: 3
            }
        );
        let mut t = c;
        t.add(&c2);
        assert!(close(t.precision(), 5.0 / 6.0));
        assert!(close(t.recall(), 5.0 / 6.0));
        assert!(close(t.f1(), 10.0 / 12.0));
        assert!(EndTokenCounts::default().precision().is_nan());
        let rec = |true_end, final_len, passes| GenRecord {
            case: 0,
            visible: 1,
            true_end,
            canvas: 6,
            predicted_len: None,
            final_len,
            final_canvas_len: 6,
            forward_passes: passes,
            positions_processed: passes * 8,
            counts: c,
        };
        let g = summarize_generation(&[rec(3, 1, 4), rec(3, 6, 6)]);
        assert_eq!(g.counts.tp, 4);
        assert!(close(g.final_len_mae, 2.5));
        assert!(close(g.final_len_mean_error, 0.5));
        assert!(close(g.final_len_rmse, (13.0f64 / 2.0).sqrt()));
        assert!(close(g.mean_forward_passes, 5.0));
        assert!(close(g.mean_positions_processed, 40.0));
    }

    use crate::eval::quality::test_models::{build, E, EOS, MASK, V};
    const BIG: f32 = 40.0;

    /// A "positional oracle": identity blocks (zero weights), zero token embeddings, position r
    /// one-hot, and a final LayerNorm whose bias cancels the off-position values, so the hidden
    /// state of row r is exactly `h e_r` with `h = E / sqrt(E - 1)`. The untied head then gives
    /// row r exactly the logits `rows[r]` (token, logit) and 0 for every other token.
    fn oracle_model(rows: &[Vec<(u32, f32)>]) -> Gpt2 {
        let h = E as f32 / ((E - 1) as f32).sqrt();
        build(true, |name, data| match name {
            "wpe.weight" => (0..E).for_each(|r| data[r * E + r] = 10.0),
            "ln_f.bias" => data.fill(1.0 / ((E - 1) as f32).sqrt()),
            "lm_head.weight" => {
                for (r, row) in rows.iter().enumerate() {
                    for &(t, logit) in row {
                        data[t as usize * E + r] = logit / h;
                    }
                }
            }
            n if n.contains("ln") && n.ends_with("weight") => data.fill(1.0),
            _ => {}
        })
    }

    /// Rows 0..=3: content 10 + r; row 4: content 14 with p_end 0.1; row 5: content 15 with
    /// p_end 0.4; row 6: end with p_end 0.8 (content 16 second); rows >= 7: end only.
    fn rows() -> Vec<Vec<(u32, f32)>> {
        let logit = |p: f32| BIG + (p / (1.0 - p)).ln();
        (0..E)
            .map(|r| match r {
                0..=3 => vec![(10 + r as u32, BIG)],
                4 => vec![(14, BIG), (EOS, logit(0.1))],
                5 => vec![(15, BIG), (EOS, logit(0.4))],
                6 => vec![(16, BIG), (EOS, logit(0.8))],
                _ => vec![(EOS, BIG)],
            })
            .collect()
    }

    fn block(content: &[u32], len: usize) -> Vec<u32> {
        let mut b = vec![EOS];
        b.extend_from_slice(content);
        b.resize(len, EOS);
        b
    }

    /// A: 6 content tokens, 2 visible -> true end 4 (row 6, p 0.8); slot j is row 2 + j.
    /// B: 4 content tokens, none visible -> true end 4 (row 4, p 0.1); slot j is row j.
    fn two_cases() -> Vec<EosCase> {
        let is_end = |t: u32| t == EOS;
        vec![
            EosCase::from_block(&block(&[1, 2, 3, 4, 5, 6], 20), 3, is_end).unwrap(),
            EosCase::from_block(&block(&[1, 2, 3, 4], 20), 1, is_end).unwrap(),
        ]
    }

    #[test]
    fn cases_from_blocks() {
        let c = two_cases();
        assert_eq!(
            c[0],
            EosCase {
                visible: vec![1, 2],
                true_end: 4,
                rest: 17
            }
        );
        assert_eq!(
            c[1],
            EosCase {
                visible: vec![],
                true_end: 4,
                rest: 19
            }
        );
        // Everything visible: the end is slot 0.
        let all = EosCase::from_block(&block(&[1, 2], 6), 3, |t| t == EOS).unwrap();
        assert_eq!((all.visible.len(), all.true_end, all.rest), (2, 0, 3));
        assert_eq!(EosCase::from_block(&[EOS, 1, 2], 1, |t| t == EOS), None);
    }

    fn token_file(blocks: &[(Vec<u32>, u32)], kind: Kind) -> TokenFile {
        let len = blocks[0].0.len();
        let tokens: Vec<u32> = blocks.iter().flat_map(|(b, _)| b.clone()).collect();
        let header = Header {
            format: FORMAT.into(),
            kind,
            dtype: Dtype::U16,
            n_tokens: tokens.len() as u64,
            n_docs: blocks.len() as u64,
            block_len: len as u64,
            n_blocks: blocks.len() as u64,
            eos_id: EOS,
            pad_id: Some(EOS),
            mask_id: MASK,
            vocab_size: V as u32,
            split: Split::Test,
            docs_skipped_too_long: 0,
            docs_split_too_long: 0,
            length_histogram: vec![(32, blocks.len() as u64)],
        };
        let meta = blocks.iter().map(|(_, m)| *m).collect();
        TokenFile::new(header, tokens, Some(meta)).unwrap()
    }

    #[test]
    fn visible_policies_on_a_token_file() {
        let blocks: Vec<(Vec<u32>, u32)> = (0..20)
            .map(|i| {
                (
                    block(&[1, 2, 3, 4, 5, 6][..1 + i % 6], 12),
                    1 + (i % 2) as u32,
                )
            })
            .collect();
        let f = token_file(&blocks, Kind::Padded);
        let meta = cases_from_file(&f, VisiblePolicy::Meta, 0, 100);
        assert_eq!(meta.len(), 20);
        for (i, c) in meta.iter().enumerate() {
            let n = 1 + i % 6;
            let m = 1 + i % 2;
            assert_eq!(c.visible.len(), m - 1);
            assert_eq!(c.true_end, n + 1 - m);
            assert_eq!(c.rest, 12 - m);
        }
        let uni = cases_from_file(&f, VisiblePolicy::Auto, 5, 100);
        assert_eq!(uni, cases_from_file(&f, VisiblePolicy::Uniform, 5, 100));
        assert_ne!(uni, cases_from_file(&f, VisiblePolicy::Uniform, 6, 100));
        let mut seen = std::collections::BTreeSet::new();
        for (i, c) in uni.iter().enumerate() {
            let n = 1 + i % 6;
            let m = 1 + i % 2;
            let v = c.visible.len();
            assert!(
                v + 1 >= m && v <= n,
                "case {i}: {v} visible of {n}, meta {m}"
            );
            assert_eq!(c.true_end, n - v);
            seen.insert(c.true_end);
        }
        assert!(seen.len() > 2 && seen.contains(&0));
        assert_eq!(cases_from_file(&f, VisiblePolicy::Uniform, 5, 3).len(), 3);
        let mask_eos = token_file(&blocks, Kind::MaskEos);
        assert_eq!(
            cases_from_file(&mask_eos, VisiblePolicy::Auto, 5, 100),
            meta
        );
    }

    #[test]
    fn first_step_on_a_positional_oracle() {
        let m = oracle_model(&rows());
        let cases = two_cases();
        let fs = first_step_scores(&m, &cases, None, None).unwrap();
        assert_eq!(fs.scores.len(), 2);
        let s = &fs.scores[0];
        assert_eq!((s.case, s.visible, s.true_end, s.canvas()), (0, 2, 4, 17));
        let want = [0.0, 0.0, 0.1, 0.4, 0.8, 1.0, 1.0];
        for (j, w) in want.iter().enumerate() {
            assert!((s.p_end[j] - w).abs() < 1e-4, "slot {j}: {}", s.p_end[j]);
        }
        assert_eq!(
            s.argmax_is_end[..6],
            [false, false, false, false, true, true]
        );

        let predictors = [
            LengthPredictor::ArgmaxFirst,
            LengthPredictor::Threshold(0.3),
            LengthPredictor::Quantile(0.5),
            LengthPredictor::Threshold(0.95),
        ];
        let got = first_step_predictions(&m, &cases, &predictors, None).unwrap();
        let labels: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            ["argmax", "threshold:0.3", "quantile:0.5", "threshold:0.95"]
        );
        let predicted: Vec<Vec<Option<usize>>> = got
            .iter()
            .map(|(_, p)| p.iter().map(|e| e.predicted).collect())
            .collect();
        assert_eq!(
            predicted,
            vec![
                vec![Some(4), Some(6)],
                vec![Some(3), Some(5)],
                vec![Some(4), Some(6)],
                vec![Some(5), Some(7)],
            ]
        );
        let a = got[0].1[0];
        let b = got[0].1[1];
        assert_eq!((a.true_end, a.canvas, a.visible), (4, 17, 2));
        assert_eq!((b.true_end, b.canvas, b.visible), (4, 19, 0));
        assert!((a.p_end_at_true - 0.8).abs() < 1e-4);
        assert!((b.p_end_at_true - 0.1).abs() < 1e-4);
        // First-end probabilities: A: 0.1, 0.36, 0.432 (true), 0.108 -> rank 1;
        // B: 0.1 (true), 0.36, 0.432, 0.108 -> rank 4.
        assert_eq!((a.rank_of_true, b.rank_of_true), (1, 4));

        let m_argmax = summarize(&got[0].1, &[2]);
        assert!(close(m_argmax.exact, 0.5));
        assert!(close(m_argmax.within(2).unwrap(), 1.0));
        assert!(close(m_argmax.upper_bound, 1.0));
        assert!(close(m_argmax.tightness, 1.0));
        let m_thr = summarize(&got[1].1, &[]);
        assert!(close(m_thr.upper_bound, 0.5));
        assert!(close(m_thr.tightness, 1.0));

        // A short explicit canvas: the ends beyond it are not found.
        let short = first_step_predictions(&m, &cases, &predictors, Some(5)).unwrap();
        assert_eq!(
            short[0].1.iter().map(|e| e.predicted).collect::<Vec<_>>(),
            [Some(4), None]
        );
        assert_eq!(
            short[3].1.iter().map(|e| e.predicted).collect::<Vec<_>>(),
            [None, None]
        );
        assert!(short[0].1.iter().all(|e| e.canvas == 5));
        // Canvas 4 holds neither true end; 40 slots exceed the model's 32 positions.
        let none = first_step_scores(&m, &cases, Some(4), None).unwrap();
        assert_eq!((none.scores.len(), none.skipped_end_outside_canvas), (0, 2));
        let long = first_step_scores(&m, &cases, Some(31), None).unwrap();
        assert_eq!(
            (long.scores.len(), long.skipped_too_long),
            (1, 1),
            "A: 3 + 31 > 32 positions; B: 1 + 31 fits"
        );
    }

    #[test]
    fn generation_on_a_positional_oracle() {
        let m = oracle_model(&rows());
        let g = generation_metrics(&m, &two_cases(), &GenerationOptions::default(), None).unwrap();
        assert_eq!((g.examples, g.skipped), (2, 0));
        let fixed = &g.modes[0];
        let eos = &g.modes[1];
        assert_eq!(
            (fixed.mode.as_str(), eos.mode.as_str()),
            ("fixed", "eos-first")
        );
        // A decodes [12, 13, 14, 15, end...]: exact. B decodes [10, 11, 12, 13, 14, 15, end...]:
        // two answer tokens too many, two padding slots missed.
        for mode in [fixed, eos] {
            let r = &mode.records;
            assert_eq!((r[0].final_len, r[1].final_len), (4, 6));
            assert_eq!(
                r[0].counts,
                EndTokenCounts {
                    tp: 13,
                    fp: 0,
                    fn_: 0,
                    tn: 4
                }
            );
            assert_eq!(
                r[1].counts,
                EndTokenCounts {
                    tp: 13,
                    fp: 0,
                    fn_: 2,
                    tn: 4
                }
            );
            let o = &mode.overall;
            assert!(close(o.precision, 1.0));
            assert!(close(o.recall, 26.0 / 28.0));
            assert!(close(o.final_len_mae, 1.0));
            assert!(close(o.final_len_rmse, 2f64.sqrt()));
        }
        assert_eq!(fixed.records[0].forward_passes, 17);
        assert_eq!(fixed.records[0].positions_processed, 17 * 20);
        // EoS-first (quantile 0.9) predicts 5 and 7, then cuts to 5 + 1 + 8 and 7 + 1 + 8 slots.
        assert_eq!(eos.records[0].predicted_len, Some(5));
        assert_eq!(eos.records[1].predicted_len, Some(7));
        assert_eq!(eos.records[0].final_canvas_len, 14);
        assert_eq!(eos.records[1].final_canvas_len, 16);
        assert!(g.positions_ratio < 1.0 && g.forward_passes_ratio < 1.0);
        assert_eq!(
            fixed.quartiles.iter().map(|b| b.metrics.n).sum::<usize>(),
            2
        );
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EosEvalArgs,
    }

    #[test]
    fn args_defaults_match_new() {
        let cli = Cli::try_parse_from(["x", "--model", "m", "--data", "d", "--out", "o"]).unwrap();
        assert_eq!(
            cli.args,
            EosEvalArgs::new("m".into(), "d".into(), "o".into())
        );
        let cli = Cli::try_parse_from([
            "x",
            "--model",
            "m",
            "--data",
            "d",
            "--out",
            "o",
            "--predictors",
            "argmax,quantile:0.7",
            "--ks",
            "0,3",
            "--visible",
            "meta",
            "--generate",
            "--canvas",
            "32",
        ])
        .unwrap();
        assert_eq!(cli.args.predictors, ["argmax", "quantile:0.7"]);
        assert_eq!(cli.args.ks, [0, 3]);
        assert_eq!(cli.args.visible, VisiblePolicy::Meta);
        assert!(cli.args.generate);
        assert_eq!(cli.args.canvas, Some(32));
        assert_eq!(
            parse_predictors(&cli.args.predictors).unwrap(),
            [LengthPredictor::ArgmaxFirst, LengthPredictor::Quantile(0.7)]
        );
        assert!(parse_predictors(&["median".into()]).is_err());
        assert!(parse_predictors(&[]).is_err());
    }
}
