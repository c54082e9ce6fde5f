//! What one micro-batch asks of the model, for every pipeline: the input ids (with the masked
//! slots replaced), the loss rows (which hidden state predicts which target with which weight)
//! and the attention mask. Both training paths (candle's autograd in `train::batch_loss` and the
//! hand-written CPU engine in `engine`) start from [`select`], so the RNG draws, the masking and
//! the row selection cannot drift apart between them.

use diffugpt::config::SpecialIds;
use diffugpt::rng::Rng;

use crate::config::{Pipeline, TrainConfig};
use crate::data;
use crate::dataset::Example;

/// Which positions attend to which (the engine's own form of `diffugpt::model::AttnMask`).
#[derive(Clone, Debug, PartialEq)]
pub enum Mask {
    Bidirectional,
    Causal,
    /// Additive bias `[batch, t, t]` (0 or -inf), shared by all heads: attention annealing.
    Bias(Vec<f32>),
}

/// One loss row: the flattened `[b * t]` hidden state it is read from, its target id and weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossRow {
    pub row: u32,
    pub target: u32,
    pub weight: f32,
}

/// A micro-batch's inputs and loss rows. The loss is
/// `sum(weight * -log softmax(logits(hidden[row]))[target]) / rows.len()`.
#[derive(Clone, Debug)]
pub struct Selection {
    pub b: usize,
    pub t: usize,
    /// `[b * t]` input ids.
    pub input: Vec<u32>,
    pub rows: Vec<LossRow>,
    pub mask: Mask,
}

/// Draws the micro-batch's masking for `pipeline` at optimizer step `step` (annealing).
pub fn select(
    ids: SpecialIds,
    pipeline: Pipeline,
    examples: &[Example],
    t: usize,
    rng: &mut Rng,
    cfg: &TrainConfig,
    step: usize,
) -> Selection {
    let b = examples.len();
    let mut input: Vec<u32> = Vec::with_capacity(b * t);
    let mut rows: Vec<LossRow> = Vec::new();
    let row = |bi: usize, j: usize, target: u32, weight: f32| LossRow {
        row: (bi * t + j) as u32,
        target,
        weight,
    };
    let d = &cfg.diffusion;
    let mask = match pipeline {
        Pipeline::Arm => {
            for (bi, ex) in examples.iter().enumerate() {
                input.extend_from_slice(&ex.tokens);
                let last = ex.end.unwrap_or(t - 1);
                for j in ex.fixed.max(1)..=last {
                    rows.push(row(bi, j - 1, ex.tokens[j], 1.0));
                }
            }
            Mask::Causal
        }
        Pipeline::Diffusion => {
            let pad_scale = if d.pad_anneal_steps == 0 {
                1.0
            } else {
                (step as f64 / d.pad_anneal_steps as f64).min(1.0)
            };
            for (bi, ex) in examples.iter().enumerate() {
                let tn = d.t_eps + (1.0 - d.t_eps) * rng.next_f64();
                let mut x = ex.tokens.clone();
                for (j, slot) in x.iter_mut().enumerate().skip(ex.fixed.max(1)) {
                    let after_end = ex.end.is_some_and(|e| j > e);
                    let p = if after_end { tn * pad_scale } else { tn };
                    if rng.next_f64() < p {
                        rows.push(row(bi, j - 1, *slot, (1.0 / tn) as f32));
                        *slot = ids.mask;
                    }
                }
                input.extend_from_slice(&x);
            }
            let p = if d.attn_anneal_steps == 0 {
                1.0
            } else {
                (step as f64 / d.attn_anneal_steps as f64).min(1.0)
            };
            if p >= 1.0 {
                Mask::Bidirectional
            } else {
                // Causal plus Bernoulli(p) future entries, drawn per sequence.
                let mut bias = vec![0f32; b * t * t];
                for bi in 0..b {
                    for q in 0..t {
                        for k in q + 1..t {
                            if rng.next_f64() >= p {
                                bias[(bi * t + q) * t + k] = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                Mask::Bias(bias)
            }
        }
        Pipeline::MaskEos => {
            let w = d.eos_window;
            for (bi, ex) in examples.iter().enumerate() {
                let fixed = ex.fixed.max(1) as u32;
                input.extend(data::mask_eos_input(&ex.tokens, fixed, ids.mask));
                for i in data::mask_eos_loss_positions(&ex.tokens, fixed, ids.eos, w) {
                    rows.push(row(bi, i, ex.tokens[i + 1], 1.0));
                }
            }
            Mask::Bidirectional
        }
    };
    Selection {
        b,
        t,
        input,
        rows,
        mask,
    }
}

/// Positions of `examples` the model learns to predict whatever the pipeline: after the first
/// (BOS or context) and up to the end token (all of a stream window); padding excluded.
pub fn useful_tokens(examples: &[Example], t: usize) -> usize {
    examples
        .iter()
        .map(|ex| ex.end.unwrap_or(t - 1).min(t - 1))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn useful_tokens_skip_the_first_position_and_padding() {
        let ex = |end| Example {
            tokens: vec![0; 8],
            fixed: 1,
            end,
        };
        // Ends at 3 and 7 (positions 1..=end); a stream window predicts positions 1..8.
        assert_eq!(
            useful_tokens(&[ex(Some(3)), ex(Some(7)), ex(None)], 8),
            3 + 7 + 7
        );
    }
}
