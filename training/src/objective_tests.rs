//! The training objectives of `train::batch_loss`, pinned on tiny hand-made batches.
//!
//! The expected loss is recomputed independently: the masking draws are replayed from a copy of
//! the generator in the documented order (per example: t, then one draw per maskable position;
//! then, while attention is annealed, one draw per future (query, key) pair), the logits come
//! from `Gpt2::forward_logits` on one sequence at a time, and the cross-entropy, the 1/t weight
//! and the shift (the target of position j is read from row j - 1) are applied here in f64. A
//! model with large random embeddings makes every row's distribution different, so reading the
//! wrong row, dropping 1/t, or carrying the loss at the wrong positions changes the value by far
//! more than the tolerance; each test also checks that its batch can tell these apart.

use candle_core::{Device, Tensor};
use diffugpt::config::{ModelConfig, SpecialIds};
use diffugpt::model::AttnMask;
use diffugpt::rng::Rng;
use diffugpt::Gpt2;

use crate::config::{Pipeline, TrainConfig};
use crate::dataset::Example;
use crate::train::{batch_loss, Batch};

const V: usize = 32;
const EOS: u32 = 31;
const MASK: u32 = 30;
const PAD: u32 = 29;

/// A 1-layer model whose embeddings are N(0, 1) (tied head): its rows' distributions are far
/// apart, unlike GPT-2's N(0, 0.02) init, whose logits are all near uniform.
fn model(pad: Option<u32>) -> Gpt2 {
    let cfg = ModelConfig {
        n_layer: 1,
        n_positions: 16,
        ..ModelConfig::tiny(V)
    };
    let ids = SpecialIds {
        eos: EOS,
        mask: MASK,
        pad,
    };
    let mut rng = Rng::new(7);
    Gpt2::from_fill(cfg, ids, false, &Device::Cpu, |name, data| {
        if name.contains("ln") && name.ends_with("weight") {
            data.fill(1.0);
        } else if !name.ends_with("bias") {
            let std = if name.starts_with('w') { 1.0 } else { 0.05 };
            data.iter_mut().for_each(|v| *v = rng.normal() * std);
        }
    })
    .unwrap()
}

fn config(pipeline: Pipeline, t_eps: f64, attn_anneal: usize, pad_anneal: usize) -> TrainConfig {
    serde_json::from_value(serde_json::json!({
        "pipeline": pipeline,
        "init": {"from": "scratch", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 16},
        "train_data": "unused",
        "batch_size": 2,
        "steps": 1,
        "optim": {"max_lr": 1e-3},
        "diffusion": {
            "t_eps": t_eps,
            "attn_anneal_steps": attn_anneal,
            "pad_anneal_steps": pad_anneal,
            "eos_window": 1
        },
        "seed": 0,
        "out_dir": "unused"
    }))
    .unwrap()
}

fn batch(examples: Vec<Example>) -> Batch {
    let t = examples[0].tokens.len();
    Batch { examples, t }
}

/// -log softmax(row)[target] in f64.
fn nll(row: &[f32], target: u32) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = row.iter().map(|&l| (l as f64 - m).exp()).sum();
    -(row[target as usize] as f64 - m - z.ln())
}

/// One loss term: (example, position j whose token is the target, weight).
type Term = (usize, usize, f64);

/// The mean of `w * nll(logits[row(j)], token j)` over `terms`, each example's logits from
/// `forward_logits(inputs[b], masks[b])`; `shift` is the row offset (1: DiffuGPT's shift).
fn expected(
    m: &Gpt2,
    ex: &[Example],
    inputs: &[Vec<u32>],
    masks: &[AttnMask],
    terms: &[Term],
    shift: usize,
) -> f64 {
    let logits: Vec<Vec<Vec<f32>>> = inputs
        .iter()
        .zip(masks)
        .map(|(x, mask)| m.forward_logits(x, mask).unwrap().to_vec2().unwrap())
        .collect();
    let total: f64 = terms
        .iter()
        .map(|&(b, j, w)| w * nll(&logits[b][j - shift], ex[b].tokens[j]))
        .sum();
    total / terms.len() as f64
}

fn loss_of(
    m: &Gpt2,
    p: Pipeline,
    b: &Batch,
    seed: u64,
    cfg: &TrainConfig,
    step: usize,
) -> (f64, usize) {
    let (l, n) = batch_loss(m, p, b, &mut Rng::new(seed), cfg, step).unwrap();
    (l.to_scalar::<f32>().unwrap() as f64, n)
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
        "{what}: batch_loss {got} vs recomputed {want}"
    );
}

/// Replays the diffusion masking draws: per example t, then one draw per position from
/// `fixed`, masking with probability t (t * pad_scale after the end). Returns the inputs and
/// the loss terms (weight 1/t) and each example's t.
fn replay_diffusion(
    rng: &mut Rng,
    ex: &[Example],
    t_eps: f64,
    pad_scale: f64,
) -> (Vec<Vec<u32>>, Vec<Term>, Vec<f64>) {
    let (mut inputs, mut terms, mut ts) = (vec![], vec![], vec![]);
    for (b, e) in ex.iter().enumerate() {
        let t = t_eps + (1.0 - t_eps) * rng.next_f64();
        let mut x = e.tokens.clone();
        for (j, slot) in x.iter_mut().enumerate().skip(e.fixed) {
            let after_end = e.end.is_some_and(|end| j > end);
            let p = if after_end { t * pad_scale } else { t };
            if rng.next_f64() < p {
                terms.push((b, j, 1.0 / t));
                *slot = MASK;
            }
        }
        inputs.push(x);
        ts.push(t);
    }
    (inputs, terms, ts)
}

fn stream_examples() -> Vec<Example> {
    vec![
        Example {
            tokens: vec![EOS, 3, 14, 15, 9, 2, 6, 5, 3, 5],
            fixed: 2,
            end: None,
        },
        Example {
            tokens: vec![EOS, 8, 9, 7, 9, 3, 2, 3, 8, 4],
            fixed: 1,
            end: None,
        },
    ]
}

#[test]
fn diffusion_loss_is_the_1_over_t_weighted_shifted_cross_entropy() {
    let m = model(None);
    let ex = stream_examples();
    let cfg = config(Pipeline::Diffusion, 0.1, 0, 0);
    let seed = 11;
    let (got, n) = loss_of(&m, Pipeline::Diffusion, &batch(ex.clone()), seed, &cfg, 0);
    let (inputs, terms, ts) = replay_diffusion(&mut Rng::new(seed), &ex, 0.1, 1.0);
    let bi = [AttnMask::Bidirectional, AttnMask::Bidirectional];
    let want = expected(&m, &ex, &inputs, &bi, &terms, 1);
    assert_eq!(n, terms.len());
    assert_close(got, want, "diffusion");
    // The batch can tell a missing 1/t or a missing shift apart from the right loss.
    assert!(
        ts.iter().all(|&t| t < 0.8),
        "t = {ts:?}: pick a seed with a smaller t"
    );
    let unweighted: Vec<Term> = terms.iter().map(|&(b, j, _)| (b, j, 1.0)).collect();
    let no_t = expected(&m, &ex, &inputs, &bi, &unweighted, 1);
    let no_shift = expected(&m, &ex, &inputs, &bi, &terms, 0);
    for (name, wrong) in [("without 1/t", no_t), ("without the shift", no_shift)] {
        assert!(
            (wrong - want).abs() > 0.05 * want.abs(),
            "{name}: {wrong} vs {want}: the batch cannot detect it"
        );
    }
}

/// A block: BOS, a prompt, an answer, the end token at 6, then padding.
fn padded_examples(filler: u32) -> Vec<Example> {
    let mut tokens = vec![EOS, 4, 5, 6, 7, 8, EOS];
    tokens.resize(12, filler);
    let mut other = vec![EOS, 9, 10, 11, EOS];
    other.resize(12, filler);
    vec![
        Example {
            tokens,
            fixed: 2,
            end: Some(6),
        },
        Example {
            tokens: other,
            fixed: 1,
            end: Some(4),
        },
    ]
}

#[test]
fn padding_after_the_end_is_annealed_in_for_eos_eos_and_eos_pad() {
    for (pad, filler) in [(None, EOS), (Some(PAD), PAD)] {
        let m = model(pad);
        let ex = padded_examples(filler);
        let b = batch(ex.clone());
        let cfg = config(Pipeline::Diffusion, 0.5, 0, 10);
        let bi = [AttnMask::Bidirectional, AttnMask::Bidirectional];
        // Step 0: pad scale 0, so nothing after the end carries loss (the end itself does);
        // step 5: pad positions masked with probability t / 2; step 10 and later: t.
        for (step, scale) in [(0, 0.0), (5, 0.5), (10, 1.0), (20, 1.0)] {
            let seed = 3;
            let (got, n) = loss_of(&m, Pipeline::Diffusion, &b, seed, &cfg, step);
            let (inputs, terms, _) = replay_diffusion(&mut Rng::new(seed), &ex, 0.5, scale);
            let what = format!("filler {filler}, step {step}");
            assert_eq!(n, terms.len(), "{what}");
            assert_close(got, expected(&m, &ex, &inputs, &bi, &terms, 1), &what);
            let after_end = terms
                .iter()
                .filter(|&&(b, j, _)| j > ex[b].end.unwrap())
                .count();
            if step == 0 {
                assert_eq!(after_end, 0, "{what}");
            } else {
                assert!(
                    after_end > 0,
                    "{what}: no pad position drawn: pick another seed"
                );
            }
        }
    }
}

#[test]
fn mask_eos_carries_the_loss_at_the_end_and_its_window_only() {
    let m = model(None);
    // BOS, prompt 5 6 (fixed 3), answer 7, end at 4, padding.
    let ex = vec![Example {
        tokens: vec![EOS, 5, 6, 7, EOS, EOS, EOS, EOS],
        fixed: 3,
        end: Some(4),
    }];
    let mut b = batch(ex.clone());
    b.examples.push(ex[0].clone());
    let cfg = config(Pipeline::MaskEos, 0.1, 0, 0);
    let (got, n) = loss_of(&m, Pipeline::MaskEos, &b, 0, &cfg, 0);
    // Input: the fixed prefix, then the mask everywhere; window 1 around the end at 4: token
    // positions 3, 4, 5 (targets 7, EOS, EOS), read from rows 2, 3, 4, weight 1.
    let input = vec![EOS, 5, 6, MASK, MASK, MASK, MASK, MASK];
    let terms: Vec<Term> = [3, 4, 5].iter().map(|&j| (0, j, 1.0)).collect();
    let want = expected(
        &m,
        &ex,
        std::slice::from_ref(&input),
        &[AttnMask::Bidirectional],
        &terms,
        1,
    );
    assert_eq!(n, 6, "two copies of three positions");
    assert_close(got, want, "mask-eos");
    let wider: Vec<Term> = [3, 4, 5, 6].iter().map(|&j| (0, j, 1.0)).collect();
    let wrong = expected(&m, &ex, &[input], &[AttnMask::Bidirectional], &wider, 1);
    assert!((wrong - want).abs() > 1e-3, "the window is not observable");
}

/// The annealed attention mask of one example: causal, plus each future (query, key) pair
/// allowed with probability p, drawn in row-major order after all the masking draws.
fn annealed_mask(rng: &mut Rng, t: usize, p: f64) -> AttnMask {
    let mut bias = vec![0f32; t * t];
    for q in 0..t {
        for k in q + 1..t {
            if rng.next_f64() >= p {
                bias[q * t + k] = f32::NEG_INFINITY;
            }
        }
    }
    AttnMask::Bias(Tensor::from_vec(bias, (1, 1, t, t), &Device::Cpu).unwrap())
}

#[test]
fn attention_annealing_opens_future_keys_with_probability_step_over_n() {
    let m = model(None);
    let ex = stream_examples();
    let b = batch(ex.clone());
    let t = b.t;
    let cfg = config(Pipeline::Diffusion, 0.1, 8, 0);
    let seed = 11;
    let mut losses = vec![];
    for step in [0, 4, 8] {
        let (got, n) = loss_of(&m, Pipeline::Diffusion, &b, seed, &cfg, step);
        let mut rng = Rng::new(seed);
        let (inputs, terms, _) = replay_diffusion(&mut rng, &ex, 0.1, 1.0);
        let p = step as f64 / 8.0;
        let masks: Vec<AttnMask> = if step >= 8 {
            vec![AttnMask::Bidirectional, AttnMask::Bidirectional]
        } else {
            ex.iter().map(|_| annealed_mask(&mut rng, t, p)).collect()
        };
        if step == 0 {
            // p = 0 is plain causal attention.
            let causal = [AttnMask::Causal, AttnMask::Causal];
            let want = expected(&m, &ex, &inputs, &causal, &terms, 1);
            assert_close(got, want, "step 0 (causal)");
        }
        assert_eq!(n, terms.len());
        let want = expected(&m, &ex, &inputs, &masks, &terms, 1);
        assert_close(got, want, &format!("step {step}"));
        losses.push(want);
    }
    // Causal, half open and bidirectional attention give different losses on this batch.
    assert!((losses[0] - losses[1]).abs() > 1e-3 && (losses[1] - losses[2]).abs() > 1e-3);
}
