//! The engine against candle's autograd path (`train::selection_loss` + `backward` +
//! `optim::AdamW`) on random tiny models, for every pipeline and mask.

use candle_core::{Device, Tensor};
use diffugpt::config::{ModelConfig, SpecialIds};
use diffugpt::rng::Rng;
use diffugpt::Gpt2;

use super::Engine;
use crate::config::{Diffusion, Init, Optim, Pipeline, TrainConfig};
use crate::dataset::Example;
use crate::objective::{self, Mask, Selection};
use crate::optim::AdamW;
use crate::train::{make_trainable, selection_loss};

const VOCAB: usize = 97;
const IDS: SpecialIds = SpecialIds {
    eos: 90,
    mask: 91,
    pad: Some(92),
};

/// A random model with weights large enough that every path matters (LayerNorm gains and
/// biases away from identity and zero).
fn model(untied: bool, seed: u64) -> Gpt2 {
    let cfg = ModelConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        n_inner: 128,
        n_positions: 24,
        vocab_size: VOCAB,
        ..ModelConfig::gpt2_small()
    };
    let mut rng = Rng::new(seed);
    Gpt2::from_fill(cfg, IDS, untied, &Device::Cpu, |name, data| {
        let (mean, std) = if name.contains("ln") && name.ends_with("weight") {
            (1.0, 0.2)
        } else if name.ends_with("bias") {
            (0.0, 0.1)
        } else {
            (0.0, 0.3)
        };
        data.iter_mut().for_each(|v| *v = mean + std * rng.normal());
    })
    .unwrap()
}

fn train_config(pipeline: Pipeline, diffusion: Diffusion) -> TrainConfig {
    TrainConfig {
        pipeline,
        init: Init::Checkpoint {
            path: "unused".into(),
        },
        train_data: "unused".into(),
        val_data: None,
        seq_len: 16,
        batch_size: 3,
        grad_accum: 1,
        steps: 10,
        optim: Optim {
            max_lr: 1e-2,
            betas: (0.9, 0.95),
            // Large enough that gradients which are zero in exact arithmetic (the key bias of
            // attention) and only rounding noise in both paths move no weight.
            eps: 1e-4,
            weight_decay: 0.1,
            warmup_frac: 0.1,
            div_factor: 10.0,
            final_div_factor: 10.0,
            grad_clip: 1.0,
        },
        diffusion,
        log_every: 1,
        eval_every: 0,
        eval_batches: 1,
        save_every: 0,
        keep_last: 1,
        seed: 1,
        out_dir: "unused".into(),
        backend: Default::default(),
    }
}

/// Blocked examples of 16 tokens: a fixed prefix, text, an end token, then padding.
fn examples(rng: &mut Rng) -> Vec<Example> {
    (0..3)
        .map(|i| {
            let end = 8 + 2 * i + rng.below(3) as usize;
            let tokens = (0..16)
                .map(|j| match j {
                    j if j < end => rng.below(88) as u32,
                    j if j == end => IDS.eos,
                    _ => IDS.pad.unwrap(),
                })
                .collect();
            Example {
                tokens,
                fixed: 1 + i,
                end: Some(end),
            }
        })
        .collect()
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Loss and every gradient of one selection, engine against candle.
fn check_gradients(model: &Gpt2, cfg: &TrainConfig, sel: &Selection) {
    assert!(!sel.rows.is_empty());
    let tr = make_trainable(model, cfg).unwrap();
    let (loss, n) = selection_loss(&tr.model, sel).unwrap();
    assert_eq!(n, sel.rows.len());
    let want = loss.to_scalar::<f32>().unwrap() as f64;
    let grads = tr.opt.collect(&loss.backward().unwrap());
    let mut eng = Engine::new(model, &cfg.optim).unwrap();
    let got = eng.forward_backward(sel).unwrap();
    assert!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "loss {got} vs candle {want}"
    );
    let mut bad = Vec::new();
    for ((name, _), g) in tr.opt.vars.iter().zip(&grads) {
        let g: Vec<f32> = g
            .as_ref()
            .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
            .unwrap_or_default();
        let mine = eng.grad(name).unwrap();
        let scale = max_abs(&g).max(1e-6);
        let err = mine
            .iter()
            .zip(if g.is_empty() {
                vec![0.0; mine.len()]
            } else {
                g
            })
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        if err > 1e-4 * scale {
            bad.push(format!(
                "{name}: max error {err} for gradients up to {scale}"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

fn selection(model: &Gpt2, cfg: &TrainConfig, step: usize, seed: u64) -> Selection {
    let mut rng = Rng::new(seed);
    let ex = examples(&mut rng);
    objective::select(model.ids, cfg.pipeline, &ex, 16, &mut rng, cfg, step)
}

#[test]
fn arm_loss_and_gradients_match_candle() {
    let m = model(false, 1);
    let cfg = train_config(Pipeline::Arm, Diffusion::default());
    let sel = selection(&m, &cfg, 0, 2);
    assert_eq!(sel.mask, Mask::Causal);
    check_gradients(&m, &cfg, &sel);
}

#[test]
fn diffusion_loss_and_gradients_match_candle() {
    let m = model(false, 3);
    let cfg = train_config(Pipeline::Diffusion, Diffusion::default());
    let sel = selection(&m, &cfg, 0, 4);
    assert_eq!(sel.mask, Mask::Bidirectional);
    // Weighted rows (1/t) differ from 1.
    assert!(sel.rows.iter().any(|r| r.weight > 1.0));
    check_gradients(&m, &cfg, &sel);
}

#[test]
fn annealed_diffusion_loss_and_gradients_match_candle() {
    let m = model(false, 5);
    let d = Diffusion {
        attn_anneal_steps: 10,
        pad_anneal_steps: 10,
        ..Default::default()
    };
    let cfg = train_config(Pipeline::Diffusion, d);
    let sel = selection(&m, &cfg, 4, 6);
    let Mask::Bias(bias) = &sel.mask else {
        panic!("annealing mid-way gives a bias mask")
    };
    // Some future keys hidden, some open (sequence 0).
    let future = |v: f32| (0..16).any(|q| (q + 1..16).any(|k| bias[q * 16 + k] == v));
    assert!(future(f32::NEG_INFINITY) && future(0.0));
    check_gradients(&m, &cfg, &sel);
}

#[test]
fn mask_eos_loss_and_gradients_match_candle() {
    let m = model(false, 7);
    let cfg = train_config(Pipeline::MaskEos, Diffusion::default());
    let sel = selection(&m, &cfg, 0, 8);
    check_gradients(&m, &cfg, &sel);
}

#[test]
fn an_untied_head_matches_candle() {
    let m = model(true, 9);
    let cfg = train_config(Pipeline::Diffusion, Diffusion::default());
    let sel = selection(&m, &cfg, 0, 10);
    check_gradients(&m, &cfg, &sel);
}

#[test]
fn adamw_steps_with_accumulation_and_clipping_match_candle() {
    let m = model(false, 11);
    let cfg = train_config(Pipeline::Diffusion, Diffusion::default());
    let mut tr = make_trainable(&m, &cfg).unwrap();
    let mut eng = Engine::new(&m, &cfg.optim).unwrap();
    for step in 0..3 {
        let mut acc: Vec<Option<Tensor>> = vec![None; tr.opt.vars.len()];
        for micro in 0..2 {
            let sel = selection(&m, &cfg, step, 100 + 2 * step as u64 + micro);
            let (loss, _) = selection_loss(&tr.model, &sel).unwrap();
            AdamW::accumulate(&mut acc, tr.opt.collect(&loss.backward().unwrap())).unwrap();
            eng.forward_backward(&sel).unwrap();
        }
        let (want, got) = (AdamW::grad_norm(&acc).unwrap() * 0.5, eng.grad_norm() * 0.5);
        assert!((got - want).abs() <= 1e-5 * want, "norm {got} vs {want}");
        // Clipping active (norm above 1 with these weights) and the averaging of the two.
        assert!(want > 1.0);
        let scale = 0.5 / want;
        tr.opt.step(&acc, 1e-2, scale).unwrap();
        eng.update(1e-2, scale);
    }
    assert_eq!(eng.adam_t, 3);
    let mine = eng.to_model().unwrap().named_tensors().unwrap();
    for ((name, var), (n2, t)) in tr.opt.vars.iter().zip(&mine) {
        assert_eq!(name, n2);
        let a: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let before: Vec<f32> = m
            .named_tensors()
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let moved = a
            .iter()
            .zip(&before)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        // Three steps of lr 1e-2 move weights by up to ~3e-2; the two paths agree to 1e-5.
        assert!(
            err <= 1e-5,
            "{name}: weights differ by {err} (moved {moved})"
        );
    }
}

#[test]
fn a_selection_without_rows_is_loss_zero_and_bad_ids_are_errors() {
    let m = model(false, 13);
    let cfg = train_config(Pipeline::Diffusion, Diffusion::default());
    let mut eng = Engine::new(&m, &cfg.optim).unwrap();
    let mut sel = selection(&m, &cfg, 0, 14);
    let rows = std::mem::take(&mut sel.rows);
    assert_eq!(eng.forward_backward(&sel).unwrap(), 0.0);
    assert_eq!(eng.grad_norm(), 0.0);
    sel.rows = rows;
    sel.input[3] = VOCAB as u32;
    let err = eng.forward_backward(&sel).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

/// Both paths against central differences of the engine's loss on a few weights of the query,
/// key and value projections: the oracle that showed candle's path gave the queries and keys no
/// gradient (its fused softmax has no backward; `Gpt2` now uses the composed one when
/// differentiable).
#[test]
fn both_paths_match_finite_differences_through_attention() {
    let m = model(false, 1);
    let cfg = train_config(Pipeline::Diffusion, Diffusion::default());
    let sel = selection(&m, &cfg, 0, 2);
    let tr = make_trainable(&m, &cfg).unwrap();
    let (loss, _) = selection_loss(&tr.model, &sel).unwrap();
    let grads = tr.opt.collect(&loss.backward().unwrap());
    let mut eng = Engine::new(&m, &cfg.optim).unwrap();
    eng.forward_backward(&sel).unwrap();
    // q, k and v columns of the first block's c_attn (width 32: q 0..32, k 32..64, v 64..96).
    for (name, i) in [
        ("h.0.attn.c_attn.weight", 3),
        ("h.0.attn.c_attn.weight", 40),
        ("h.0.attn.c_attn.weight", 70),
        ("h.1.attn.c_attn.bias", 5),
        ("h.1.attn.c_attn.bias", 70),
    ] {
        let idx = tr.opt.vars.iter().position(|(n, _)| n == name).unwrap();
        let candle: Vec<f32> = grads[idx]
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mine = eng.grad(name).unwrap()[i];
        let off = eng.slots.iter().find(|s| s.name == name).unwrap().span.off + i;
        let h = 1e-2f32;
        let mut probe = Engine::new(&m, &cfg.optim).unwrap();
        probe.params[off] += h;
        let up = probe.forward_backward(&sel).unwrap();
        probe.params[off] -= 2.0 * h;
        let down = probe.forward_backward(&sel).unwrap();
        let fd = ((up - down) / (2.0 * h as f64)) as f32;
        for (who, g) in [("engine", mine), ("candle", candle[i])] {
            assert!(
                (g - fd).abs() <= 1e-3 + 0.02 * fd.abs(),
                "{who} {name}[{i}]: {g} vs finite differences {fd}"
            );
        }
        assert!(fd.abs() > 1e-3, "{name}[{i}] has a gradient worth checking");
    }
}
