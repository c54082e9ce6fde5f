//! Diffusion decoding on a conditional canvas `[eos as BOS] + prompt + [MASK] x canvas_len`, with
//! fixed-length (DiffuGPT's behaviour) or EoS-first variable-length canvases, and causal (ARM)
//! generation for GPT-2 weights.
//!
//! DiffuGPT keeps GPT-2's shift: the token for canvas position p is read from the logits of row
//! p - 1. The BOS guarantees that the first answer slot has a row to read from even with an empty
//! prompt. The prompt is never changed.
//!
//! EoS-first: the first forward runs on the full canvas; the end probability of every masked slot
//! gives a predicted length; the canvas is cut to that length plus a margin and the remaining steps
//! are scaled to the new length. If the answer turns out longer (the last slot is filled with a
//! non-end token and no end was produced), the canvas grows again, up to the original length.

use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use crate::backend::{CpuForward, Forward};
use crate::error::{Error, Result};
use crate::length::{cut_length, length_floor, LengthPredictor};
use crate::model::{AttnMask, Gpt2, KvCache};
use crate::rng::Rng;
use crate::sampler::{ConfidenceKind, RowChoice, Sampler, SamplingParams};

/// Which masked slots are revealed at a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// DiffuGPT: at step t (counting down to 0) each masked slot is revealed with probability
    /// 1/(t+1); everything left is revealed at the last step.
    RandomKeep,
    /// Reveal the ceil(masked / steps left) slots the model is surest about.
    Confidence(ConfidenceKind),
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "random" | "random-keep" => Strategy::RandomKeep,
            "topk" | "confidence" | "prob" => Strategy::Confidence(ConfidenceKind::Prob),
            "margin" => Strategy::Confidence(ConfidenceKind::Margin),
            "entropy" => Strategy::Confidence(ConfidenceKind::NegEntropy),
            _ => {
                return Err(Error::Param(format!(
                    "unknown strategy `{s}` (random, confidence, margin, entropy)"
                )))
            }
        })
    }
}

/// How many denoising steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Steps {
    /// A fixed number for the full canvas (scaled down when EoS-first cuts the canvas).
    Fixed(usize),
    /// Steps per canvas token (e.g. 1.0: one token per step on average).
    PerToken(f32),
}

/// Canvas length policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LengthMode {
    /// Always denoise the whole canvas (DiffuGPT).
    Fixed,
    /// Predict the end at step 1 and cut the canvas.
    EosFirst {
        predictor: LengthPredictor,
        /// Extra slots kept after the predicted end.
        margin: usize,
        /// Extra slots as a share of the predicted length (the larger of the two margins wins).
        margin_ratio: f32,
        /// Grow the canvas again when the answer turns out longer.
        grow: bool,
    },
}

/// Everything that controls one diffusion generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    /// Masked slots after the prompt (the longest answer).
    pub canvas_len: usize,
    pub steps: Steps,
    pub strategy: Strategy,
    pub sampling: SamplingParams,
    pub length: LengthMode,
    pub seed: u64,
    /// Never produce the mask id (DiffuGPT-S's mask is a real token, "------------").
    pub ban_mask: bool,
    /// Refuse requests whose forward pass would need more working memory than this many bytes
    /// (see [`Gpt2::forward_bytes`]); an error instead of an OOM kill.
    pub memory_limit: u64,
    /// No end before the `end_floor`-quantile of the length the first step predicts (0 = off,
    /// DiffuGPT's plain decoding; see [`crate::length::length_floor`]), in both length modes.
    /// Without it, confidence decoding lets the ends of a model fine-tuned on padded blocks creep
    /// inward step by step and its answers come out a few tokens long.
    pub end_floor: f32,
}

/// Default working-memory limit of one request: 8 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 8 << 30;

/// The default `end_floor` (measured on the default model: docs/results.md).
pub const DEFAULT_END_FLOOR: f32 = 0.7;

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            canvas_len: 64,
            steps: Steps::PerToken(1.0),
            strategy: Strategy::Confidence(ConfidenceKind::Prob),
            sampling: SamplingParams::default(),
            length: LengthMode::EosFirst {
                predictor: LengthPredictor::Quantile(0.9),
                margin: 8,
                margin_ratio: 0.25,
                grow: true,
            },
            end_floor: DEFAULT_END_FLOOR,
            seed: 0,
            ban_mask: true,
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

impl GenerateParams {
    pub fn validate(&self, model: &Gpt2, prompt_len: usize) -> Result<()> {
        self.sampling.validate()?;
        if self.canvas_len == 0 {
            return Err(Error::Param("canvas_len must be positive".into()));
        }
        let total = 1 + prompt_len + self.canvas_len;
        if total > model.cfg.n_positions {
            return Err(Error::Param(format!(
                "BOS + {prompt_len} prompt tokens + canvas {} = {total} positions exceed the model's {} positions",
                self.canvas_len, model.cfg.n_positions
            )));
        }
        let needed = model.forward_bytes(1, total);
        if needed > self.memory_limit {
            return Err(Error::MemoryLimit {
                needed,
                limit: self.memory_limit,
            });
        }
        match self.steps {
            Steps::Fixed(0) => return Err(Error::Param("steps must be positive".into())),
            Steps::PerToken(r) if !(r.is_finite() && r > 0.0 && r <= 64.0) => {
                return Err(Error::Param(format!(
                    "steps per token must be in (0, 64], got {r}"
                )))
            }
            Steps::Fixed(n) if n > 1_000_000 => {
                return Err(Error::Param(format!("steps {n} is absurd")))
            }
            _ => {}
        }
        if let LengthMode::EosFirst {
            predictor,
            margin_ratio,
            ..
        } = self.length
        {
            predictor.validate()?;
            if !(margin_ratio.is_finite() && margin_ratio >= 0.0) {
                return Err(Error::Param(format!(
                    "margin ratio must be >= 0, got {margin_ratio}"
                )));
            }
        }
        if !(0.0..1.0).contains(&self.end_floor) {
            return Err(Error::Param(format!(
                "end floor must be in [0, 1) (0 = off), got {}",
                self.end_floor
            )));
        }
        Ok(())
    }

    fn total_steps(&self) -> usize {
        match self.steps {
            Steps::Fixed(n) => n,
            Steps::PerToken(r) => ((self.canvas_len as f32 * r).ceil() as usize).max(1),
        }
    }
}

/// What the per-step callback sees.
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// 1-based step just finished.
    pub step: usize,
    /// Current estimate of the total (changes when the canvas is cut or grown).
    pub total_steps: usize,
    /// The canvas (answer slots only); masked slots hold the mask id.
    pub canvas: &'a [u32],
    pub masked: usize,
}

/// Statistics of one generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GenerationStats {
    /// EoS-first: answer length predicted at step 1 (`None`: fixed mode, or no end predicted).
    pub predicted_len: Option<usize>,
    /// Tokens before the first end id in the final canvas.
    pub final_len: usize,
    /// Canvas length requested.
    pub canvas_len: usize,
    /// Canvas length at the end (after cuts and growth).
    pub final_canvas_len: usize,
    pub steps: usize,
    pub forward_passes: usize,
    /// Positions (BOS + prompt + canvas) fed to each forward pass.
    pub forward_sizes: Vec<usize>,
    /// Times the canvas grew back.
    pub grow_events: usize,
    /// Stopped by the callback.
    pub cancelled: bool,
    pub elapsed_s: f64,
}

impl GenerationStats {
    /// Sum of positions over all forward passes (the work done).
    pub fn positions_processed(&self) -> usize {
        self.forward_sizes.iter().sum()
    }
}

/// The result of a generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The answer: canvas tokens before the first end id.
    pub tokens: Vec<u32>,
    /// The whole final canvas.
    pub canvas: Vec<u32>,
    pub stats: GenerationStats,
}

/// Per-request decoding state: reusable scratch, so repeated generations on one session allocate
/// little. A session belongs to one thread at a time; the model may be shared.
pub struct Session<'m> {
    /// The CPU copy of the weights (the causal path, the checks).
    model: &'m Gpt2,
    /// Where the diffusion forwards and the row decisions run (see [`crate::backend`]); the
    /// decode loop is the same on every backend.
    fwd: Box<dyn Forward + 'm>,
}

impl<'m> Session<'m> {
    /// A session whose forwards run on the CPU.
    pub fn new(model: &'m Gpt2) -> Self {
        Session {
            model,
            fwd: Box::new(CpuForward::new(model)),
        }
    }

    /// A session whose diffusion forwards run on `fwd` (from the model's backend).
    pub(crate) fn with_forward(model: &'m Gpt2, fwd: Box<dyn Forward + 'm>) -> Self {
        Session { model, fwd }
    }

    /// Whether diffusion forwards run on an accelerator (a GPU).
    pub fn on_gpu(&self) -> bool {
        self.fwd.on_accelerator()
    }

    pub fn model(&self) -> &Gpt2 {
        self.model
    }

    /// The session's forward (benchmarks time it alone).
    pub(crate) fn forward_mut(&mut self) -> &mut dyn Forward {
        &mut *self.fwd
    }

    /// Diffusion generation. `on_step` returns false to stop early (the partial canvas is
    /// returned with `stats.cancelled`).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_step: Option<&mut dyn FnMut(&StepInfo) -> bool>,
    ) -> Result<Generation> {
        let model = self.model;
        let start = Instant::now();
        params.validate(model, prompt.len())?;
        let ids = model.ids;
        let mut prefix = Vec::with_capacity(1 + prompt.len());
        prefix.push(ids.eos);
        prefix.extend_from_slice(prompt);
        model.check_ids(&prefix, 0)?;
        let p_len = prefix.len();
        let max_len = params.canvas_len;
        let total_steps = params.total_steps();

        let mut end_ids = vec![ids.eos];
        end_ids.extend(ids.pad);
        let banned = if params.ban_mask {
            vec![ids.mask]
        } else {
            vec![]
        };
        let mut sampler = Sampler::new(
            params.sampling,
            match params.strategy {
                Strategy::Confidence(k) => k,
                Strategy::RandomKeep => ConfidenceKind::Prob,
            },
            model.cfg.vocab_size,
            end_ids,
            banned,
        );
        sampler.mark_seen(prompt);
        let mut rng = Rng::new(params.seed);
        let mut canvas = vec![ids.mask; max_len];
        // Which slots are still masked. Tracked apart from the tokens: with `ban_mask` off the
        // sampler may reveal the mask id itself, and such a slot is revealed all the same
        // (looking for the mask id in the canvas instead never ended: a fuzzer finding).
        let mut open = vec![true; max_len];
        let mut stats = GenerationStats {
            canvas_len: max_len,
            ..Default::default()
        };
        // Steps left including the current one.
        let mut remaining = total_steps;
        let mut step = 0;
        let mut seq = prefix.clone();
        // Slots before it may not be revealed as an end (set at step 1 by `end_floor`).
        let mut end_floor = 0usize;

        while open.contains(&true) {
            step += 1;
            seq.truncate(p_len);
            seq.extend_from_slice(&canvas);
            let fwd = &mut *self.fwd;
            fwd.forward(&seq)?;
            stats.forward_passes += 1;
            stats.forward_sizes.push(seq.len());

            let eos_first = matches!(params.length, LengthMode::EosFirst { .. });
            if step == 1 && (eos_first || params.end_floor > 0.0) {
                // The first step's end probability per slot: the length prediction, the floor.
                let rows: Vec<usize> = (0..canvas.len()).map(|j| p_len - 1 + j).collect();
                let first = fwd.end_stats(&rows, &sampler)?;
                let p_end: Vec<f32> = first.iter().map(|s| s.0).collect();
                let is_end: Vec<bool> = first.iter().map(|s| ids.is_end(s.1)).collect();
                end_floor = length_floor(params.end_floor, &p_end);
                if let LengthMode::EosFirst {
                    predictor,
                    margin,
                    margin_ratio,
                    ..
                } = params.length
                {
                    let pred = predictor.predict(&p_end, &is_end);
                    stats.predicted_len = pred;
                    // The answer ends at the floor at the earliest: a cut before it would only
                    // grow back.
                    let cut = cut_length(
                        pred.map(|n| n.max(end_floor)),
                        margin,
                        margin_ratio,
                        max_len,
                    );
                    if cut < canvas.len() {
                        canvas.truncate(cut);
                        open.truncate(cut);
                        remaining = scaled_steps(total_steps, cut, max_len);
                    }
                }
            }

            let masked: Vec<usize> = (0..canvas.len()).filter(|&j| open[j]).collect();
            let reveal: Vec<(usize, RowChoice)> = match params.strategy {
                Strategy::RandomKeep => {
                    let remaining = remaining.max(1);
                    let p = 1.0 / remaining as f64;
                    let chosen: Vec<usize> = masked
                        .iter()
                        .copied()
                        .filter(|_| remaining <= 1 || rng.next_f64() < p)
                        .collect();
                    choose_rows(fwd, p_len, &chosen, &mut sampler, &mut rng, end_floor)?
                }
                Strategy::Confidence(_) => {
                    let mut all =
                        choose_rows(fwd, p_len, &masked, &mut sampler, &mut rng, end_floor)?;
                    let n = masked.len().div_ceil(remaining.max(1));
                    // Stable: ties keep canvas order, so greedy decoding is deterministic.
                    all.sort_by(|a, b| {
                        b.1.confidence
                            .total_cmp(&a.1.confidence)
                            .then(a.0.cmp(&b.0))
                    });
                    all.truncate(n);
                    all
                }
            };
            for (j, c) in &reveal {
                canvas[*j] = c.token;
                open[*j] = false;
            }
            let revealed: Vec<u32> = reveal.iter().map(|(_, c)| c.token).collect();
            sampler.mark_seen(&revealed);
            remaining = remaining.saturating_sub(1);

            if let LengthMode::EosFirst { grow: true, .. } = params.length {
                let last = *canvas.last().expect("canvas is never empty");
                let last_open = *open.last().expect("canvas is never empty");
                let has_end = canvas.iter().zip(&open).any(|(&t, &o)| !o && ids.is_end(t));
                if canvas.len() < max_len && !last_open && !ids.is_end(last) && !has_end {
                    let add = (canvas.len() / 2).max(16).min(max_len - canvas.len());
                    canvas.extend(std::iter::repeat_n(ids.mask, add));
                    open.extend(std::iter::repeat_n(true, add));
                    remaining += scaled_steps(total_steps, add, max_len);
                    stats.grow_events += 1;
                }
            }
            stats.steps = step;
            if let Some(cb) = on_step.as_mut() {
                let info = StepInfo {
                    step,
                    total_steps: step + remaining,
                    canvas: &canvas,
                    masked: open.iter().filter(|&&o| o).count(),
                };
                if !cb(&info) {
                    stats.cancelled = true;
                    break;
                }
            }
        }
        // The answer ends at the first end token, or at the first slot still masked (a
        // cancelled generation).
        let end = canvas
            .iter()
            .zip(&open)
            .position(|(&t, &o)| o || ids.is_end(t))
            .unwrap_or(canvas.len());
        stats.final_len = end;
        stats.final_canvas_len = canvas.len();
        stats.elapsed_s = start.elapsed().as_secs_f64();
        Ok(Generation {
            tokens: canvas[..end].to_vec(),
            canvas,
            stats,
        })
    }

    /// Causal (ARM) generation with a KV cache: GPT-2 behaviour, for GPT-2 weights or ARM-trained
    /// checkpoints. Stops at an end id or after `max_new_tokens`.
    pub fn generate_causal(
        &mut self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampling: SamplingParams,
        seed: u64,
        mut on_step: Option<&mut dyn FnMut(&StepInfo) -> bool>,
    ) -> Result<Generation> {
        let model = self.model;
        let start = Instant::now();
        sampling.validate()?;
        if max_new_tokens == 0 {
            return Err(Error::Param("max_new_tokens must be positive".into()));
        }
        let ids = model.ids;
        let mut prefix = vec![ids.eos];
        prefix.extend_from_slice(prompt);
        model.check_ids(&prefix, 0)?;
        if prefix.len() + max_new_tokens > model.cfg.n_positions {
            return Err(Error::Param(format!(
                "BOS + {} prompt tokens + {max_new_tokens} new tokens exceed the model's {} positions",
                prompt.len(),
                model.cfg.n_positions
            )));
        }
        let mut end_ids = vec![ids.eos];
        end_ids.extend(ids.pad);
        let mut sampler = Sampler::new(
            sampling,
            ConfidenceKind::Prob,
            model.cfg.vocab_size,
            end_ids,
            vec![ids.mask],
        );
        sampler.mark_seen(prompt);
        let mut rng = Rng::new(seed);
        let mut cache = KvCache::new(model.cfg.n_layer);
        let mut out = Vec::new();
        let mut stats = GenerationStats {
            canvas_len: max_new_tokens,
            ..Default::default()
        };
        let mut next: Vec<u32> = prefix;
        loop {
            let input = Tensor::from_slice(&next, (1, next.len()), model.device())?;
            let h = model
                .hidden(&input, &AttnMask::Causal, Some(&mut cache))?
                .squeeze(0)?;
            stats.forward_passes += 1;
            stats.forward_sizes.push(next.len());
            let last = h.narrow(0, next.len() - 1, 1)?;
            let mut row = model.logits(&last)?.flatten_all()?.to_vec1::<f32>()?;
            let c = sampler.choose(&mut row, &mut rng);
            stats.steps += 1;
            if ids.is_end(c.token) {
                break;
            }
            out.push(c.token);
            sampler.mark_seen(&[c.token]);
            if let Some(cb) = on_step.as_mut() {
                let info = StepInfo {
                    step: stats.steps,
                    total_steps: max_new_tokens,
                    canvas: &out,
                    masked: 0,
                };
                if !cb(&info) {
                    stats.cancelled = true;
                    break;
                }
            }
            if out.len() >= max_new_tokens {
                break;
            }
            next = vec![c.token];
        }
        stats.final_len = out.len();
        stats.final_canvas_len = out.len();
        stats.elapsed_s = start.elapsed().as_secs_f64();
        Ok(Generation {
            tokens: out.clone(),
            canvas: out,
            stats,
        })
    }
}

/// Steps for a canvas of `len` slots when `total` steps were planned for `max_len`.
fn scaled_steps(total: usize, len: usize, max_len: usize) -> usize {
    (total * len).div_ceil(max_len).max(1)
}

/// The sampler's choice for each canvas slot in `slots` (row `p_len - 1 + slot`: the DiffuGPT
/// shift), in canvas order; slots before `end_floor` may not be an end.
fn choose_rows(
    fwd: &mut dyn Forward,
    p_len: usize,
    slots: &[usize],
    sampler: &mut Sampler,
    rng: &mut Rng,
    end_floor: usize,
) -> Result<Vec<(usize, RowChoice)>> {
    // The backend's own greedy decisions when it makes them: rows before the end floor with the
    // end ids banned as well, the others as they are.
    let (below, rest): (Vec<usize>, Vec<usize>) = slots.iter().partition(|&&j| j < end_floor);
    let mut out = Vec::with_capacity(slots.len());
    let mut decided = true;
    for (part, allow_end) in [(&below, false), (&rest, true)] {
        if part.is_empty() {
            continue;
        }
        let rows: Vec<usize> = part.iter().map(|&j| p_len - 1 + j).collect();
        match fwd.decide_greedy(&rows, sampler, allow_end)? {
            Some(choices) => out.extend(part.iter().copied().zip(choices)),
            None => {
                decided = false;
                break;
            }
        }
    }
    if decided {
        // Canvas order, as the host path returns them.
        out.sort_by_key(|&(j, _)| j);
        return Ok(out);
    }
    // The host sampler on the rows' logits.
    out.clear();
    let floor_applies = slots.iter().any(|&j| j < end_floor);
    let rows: Vec<usize> = slots.iter().map(|&j| p_len - 1 + j).collect();
    fwd.logits_rows(&rows, &mut |k, row| {
        let allow_end = !floor_applies || slots[k] >= end_floor;
        out.push((slots[k], sampler.choose_with(row, rng, allow_end)));
    })?;
    Ok(out)
}
