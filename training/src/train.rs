//! The training loop: ARM, diffusion and mask-EoS objectives on the core's own model code, AdamW +
//! OneCycle, gradient accumulation and clipping, validation with end-token metrics, crash-safe
//! checkpoints and exact resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use diffugpt::config::{ModelConfig, SpecialIdOverrides, SpecialIds};
use diffugpt::model::AttnMask;
use diffugpt::rng::Rng;
use diffugpt::weights::{self, Layout, LoadOptions, SaveDtype};
use diffugpt::Gpt2;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::config::{Init, Pipeline, TrainConfig};
use crate::data;
use crate::dataset::{Dataset, Example};
use crate::optim::{one_cycle_lr, AdamW};

/// A model whose weights are trainable variables.
pub struct Trainable {
    pub model: Gpt2,
    pub opt: AdamW,
}

/// Turns `model`'s weights into variables and wraps them with an optimizer.
pub fn make_trainable(model: &Gpt2, cfg: &TrainConfig) -> Result<Trainable> {
    let vars: Vec<(String, Var)> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, Var::from_tensor(&t.to_dtype(DType::F32)?)?)))
        .collect::<Result<_>>()?;
    let mut get = |n: &str| -> diffugpt::Result<Tensor> {
        vars.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_tensor().clone())
            .ok_or_else(|| diffugpt::Error::MissingTensor(n.into()))
    };
    let mut m = Gpt2::from_named(
        model.cfg.clone(),
        model.ids,
        &mut get,
        model.lm_head.is_some(),
    )?;
    m.differentiable = true;
    let o = &cfg.optim;
    let opt = AdamW::new(vars, o.betas, o.eps, o.weight_decay)?;
    Ok(Trainable { model: m, opt })
}

/// The initial model for a run (before any checkpoint).
pub fn initial_model(cfg: &TrainConfig, data_pad: Option<u32>, data_vocab: usize) -> Result<Gpt2> {
    let model = match &cfg.init {
        Init::Scratch {
            n_layer,
            n_head,
            n_embd,
            n_positions,
        } => {
            let mc = ModelConfig {
                n_layer: *n_layer,
                n_head: *n_head,
                n_embd: *n_embd,
                n_inner: 4 * n_embd,
                n_positions: *n_positions,
                ..ModelConfig::gpt2_small()
            };
            let ids = SpecialIds::resolve(
                mc.vocab_size,
                &Default::default(),
                &SpecialIdOverrides::default(),
            )?;
            Gpt2::random(mc, ids, cfg.seed, &Device::Cpu)?
        }
        Init::Checkpoint { path } => {
            weights::load(path, LoadOptions::default())
                .with_context(|| format!("loading {}", path.display()))?
                .0
        }
    };
    extend_vocab(model, data_pad, data_vocab)
}

/// Vocabulary extension for a new pad id: new rows are the mean embedding (the head stays tied).
pub fn extend_vocab(mut model: Gpt2, pad: Option<u32>, data_vocab: usize) -> Result<Gpt2> {
    let need = data_vocab.max(pad.map_or(0, |p| p as usize + 1));
    let have = model.cfg.vocab_size;
    if need > have {
        let grow = |t: &Tensor| -> Result<Tensor> {
            let mean = t.mean_keepdim(0)?;
            Ok(Tensor::cat(
                &[t.clone(), mean.repeat((need - have, 1))?],
                0,
            )?)
        };
        model.wte = grow(&model.wte)?;
        if let Some(h) = &model.lm_head {
            model.lm_head = Some(grow(h)?);
        }
        model.cfg.vocab_size = need;
    }
    if let Some(p) = pad {
        if p != model.ids.eos {
            model.ids.pad = Some(p);
        }
    }
    model.ids.validate(model.cfg.vocab_size)?;
    Ok(model)
}

/// A batch in tensor form plus what the loss needs.
struct Batch {
    examples: Vec<Example>,
    t: usize,
}

fn sample_batch(data: &Dataset, cfg: &TrainConfig, rng: &mut Rng) -> Batch {
    let examples: Vec<Example> = (0..cfg.batch_size)
        .map(|_| data.sample(rng, cfg.seq_len))
        .collect();
    let t = examples[0].tokens.len();
    Batch { examples, t }
}

fn eval_batch(data: &Dataset, cfg: &TrainConfig, index: usize) -> Batch {
    let examples: Vec<Example> = (0..cfg.batch_size)
        .map(|i| data.get((index * cfg.batch_size + i) % data.len(), cfg.seq_len))
        .collect();
    let t = examples[0].tokens.len();
    Batch { examples, t }
}

/// Loss of one batch for the pipeline. Returns (loss, number of target tokens).
fn batch_loss(
    model: &Gpt2,
    pipeline: Pipeline,
    batch: &Batch,
    rng: &mut Rng,
    cfg: &TrainConfig,
    step: usize,
) -> Result<(Tensor, usize)> {
    let ids = model.ids;
    let (b, t) = (batch.examples.len(), batch.t);
    let mut input: Vec<u32> = Vec::with_capacity(b * t);
    // (row in the flattened [b*t] hidden states, target id, weight)
    let mut rows: Vec<(u32, u32, f32)> = Vec::new();
    let d = &cfg.diffusion;
    let mask = match pipeline {
        Pipeline::Arm => {
            for (bi, ex) in batch.examples.iter().enumerate() {
                input.extend_from_slice(&ex.tokens);
                let last = ex.end.unwrap_or(t - 1);
                for j in ex.fixed.max(1)..=last {
                    rows.push(((bi * t + j - 1) as u32, ex.tokens[j], 1.0));
                }
            }
            AttnMask::Causal
        }
        Pipeline::Diffusion => {
            let pad_scale = if d.pad_anneal_steps == 0 {
                1.0
            } else {
                (step as f64 / d.pad_anneal_steps as f64).min(1.0)
            };
            for (bi, ex) in batch.examples.iter().enumerate() {
                let tn = d.t_eps + (1.0 - d.t_eps) * rng.next_f64();
                let mut x = ex.tokens.clone();
                for (j, slot) in x.iter_mut().enumerate().skip(ex.fixed.max(1)) {
                    let after_end = ex.end.is_some_and(|e| j > e);
                    let p = if after_end { tn * pad_scale } else { tn };
                    if rng.next_f64() < p {
                        rows.push(((bi * t + j - 1) as u32, *slot, (1.0 / tn) as f32));
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
                AttnMask::Bidirectional
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
                AttnMask::Bias(Tensor::from_vec(bias, (b, 1, t, t), &Device::Cpu)?)
            }
        }
        Pipeline::MaskEos => {
            let w = d.eos_window;
            for (bi, ex) in batch.examples.iter().enumerate() {
                let fixed = ex.fixed.max(1) as u32;
                input.extend(data::mask_eos_input(&ex.tokens, fixed, ids.mask));
                for i in data::mask_eos_loss_positions(&ex.tokens, fixed, ids.eos, w) {
                    rows.push(((bi * t + i) as u32, ex.tokens[i + 1], 1.0));
                }
            }
            AttnMask::Bidirectional
        }
    };
    let n = rows.len();
    if n == 0 {
        return Ok((Tensor::new(0f32, &Device::Cpu)?, 0));
    }
    let x = Tensor::from_vec(input, (b, t), &Device::Cpu)?;
    let h = model
        .hidden(&x, &mask, None)?
        .reshape((b * t, model.cfg.n_embd))?;
    let idx = Tensor::from_vec(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )?;
    let tgt = Tensor::from_vec(
        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        (n, 1),
        &Device::Cpu,
    )?;
    let wts = Tensor::from_vec(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )?;
    let logits = model.logits(&h.index_select(&idx, 0)?)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let nll = logp.gather(&tgt, 1)?.squeeze(1)?.neg()?;
    let loss = ((nll * wts)?.sum_all()? / n as f64)?;
    Ok((loss, n))
}

/// Validation: mean loss over `eval_batches` fixed batches, and first-step end metrics on
/// blocked data (the argmax-first predictor against the true end, from the fixed prefix alone).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub val_loss: f64,
    /// Share of examples whose predicted end position is exact.
    pub eos_exact: f64,
    /// ... within +-2 tokens.
    pub eos_within_2: f64,
    pub examples: usize,
}

pub fn evaluate(
    model: &Gpt2,
    pipeline: Pipeline,
    data: &Dataset,
    cfg: &TrainConfig,
    step: usize,
) -> Result<EvalMetrics> {
    let mut rng = Rng::new(cfg.seed ^ 0x05EE_DEA1);
    let mut total = 0.0;
    let mut batches = 0;
    for i in 0..cfg.eval_batches.max(1) {
        let batch = eval_batch(data, cfg, i);
        let (l, n) = batch_loss(model, pipeline, &batch, &mut rng, cfg, step)?;
        if n > 0 {
            total += l.to_scalar::<f32>()? as f64;
            batches += 1;
        }
    }
    let mut m = EvalMetrics {
        val_loss: if batches > 0 {
            total / batches as f64
        } else {
            f64::NAN
        },
        ..Default::default()
    };
    if data.is_blocked() {
        let (mut exact, mut near, mut count) = (0usize, 0usize, 0usize);
        let session_model = {
            let mut g = model.clone();
            g.differentiable = false;
            g
        };
        for i in 0..(cfg.eval_batches.max(1) * cfg.batch_size).min(data.len()) {
            let ex = data.get(i, cfg.seq_len);
            let Some(end) = ex.end else { continue };
            let mut x = ex.tokens.clone();
            let fixed = ex.fixed.max(1);
            for v in x.iter_mut().skip(fixed) {
                *v = model.ids.mask;
            }
            let logits = session_model.forward_logits(&x, &AttnMask::Bidirectional)?;
            let rows: Vec<Vec<f32>> = logits.to_vec2()?;
            let pred = (fixed..x.len()).find(|&j| {
                let (am, _) = diffugpt::sampler::argmax(&rows[j - 1]);
                model.ids.is_end(am as u32)
            });
            count += 1;
            if let Some(p) = pred {
                exact += usize::from(p == end);
                near += usize::from(p.abs_diff(end) <= 2);
            }
        }
        if count > 0 {
            m.eos_exact = exact as f64 / count as f64;
            m.eos_within_2 = near as f64 / count as f64;
        }
        m.examples = count;
    }
    Ok(m)
}

/// Saved with every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    pub adam_t: usize,
    pub rng: [u64; 4],
    pub best_val: Option<f64>,
}

/// One metrics line.
#[derive(Serialize)]
struct LogLine {
    step: usize,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens_per_s: f64,
    elapsed_s: f64,
}

/// Runs (or resumes) training. Returns the per-step training losses of this invocation.
/// `stop_after` ends the invocation (with a checkpoint) after that many optimizer steps in total,
/// as an interruption would; a later `resume` continues exactly.
pub fn train(
    cfg: &TrainConfig,
    config_path: Option<&Path>,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<Vec<f64>> {
    std::fs::create_dir_all(&cfg.out_dir)?;
    if let Some(p) = config_path {
        std::fs::copy(p, cfg.out_dir.join("config.json"))
            .context("copying the config into the run directory")?;
    }
    let train_data = Dataset::open(&cfg.train_data, cfg.pipeline)?;
    let val_data = match &cfg.val_data {
        Some(p) => Some(Dataset::open(p, cfg.pipeline)?),
        None => None,
    };
    let ckpt_dir = cfg.out_dir.join("checkpoints");
    let (base, state) = match (resume, checkpoint::latest(&ckpt_dir)?) {
        (true, Some(dir)) => {
            let (m, _) = weights::load(&dir, LoadOptions::default())?;
            let st: TrainState = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?;
            eprintln!("resuming from {} (step {})", dir.display(), st.step);
            (m, Some((st, dir)))
        }
        (true, None) => bail!("--resume: no checkpoint under {}", ckpt_dir.display()),
        (false, _) => (
            initial_model(cfg, train_data.pad_id(), train_data.vocab_size())?,
            None,
        ),
    };
    let Trainable { model, mut opt } = make_trainable(&base, cfg)?;
    drop(base);
    let mut rng = Rng::new(cfg.seed);
    let mut start = 0;
    let mut best_val = None;
    if let Some((st, dir)) = &state {
        checkpoint::load_optimizer(&mut opt, dir)?;
        opt.t = st.adam_t;
        rng = Rng::from_state(st.rng);
        start = st.step;
        best_val = st.best_val;
    }
    if start >= cfg.steps {
        eprintln!("nothing to do: {start} of {} steps done", cfg.steps);
        return Ok(vec![]);
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.out_dir.join("metrics.jsonl"))?;
    let bar = indicatif::ProgressBar::new(cfg.steps as u64);
    bar.set_position(start as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let o = &cfg.optim;
    let started = Instant::now();
    let mut losses = Vec::new();
    for step in start..cfg.steps {
        let t0 = Instant::now();
        let mut acc: Vec<Option<Tensor>> = vec![None; opt.vars.len()];
        let mut loss_sum = 0.0;
        let mut tokens = 0usize;
        for _ in 0..cfg.grad_accum {
            let batch = sample_batch(&train_data, cfg, &mut rng);
            tokens += batch.examples.len() * batch.t;
            let (loss, n) = batch_loss(&model, cfg.pipeline, &batch, &mut rng, cfg, step)?;
            if n == 0 {
                continue;
            }
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let g = opt.collect(&loss.backward()?);
            AdamW::accumulate(&mut acc, g)?;
        }
        let scale = 1.0 / cfg.grad_accum as f64;
        let norm = AdamW::grad_norm(&acc)? * scale;
        let clip = if o.grad_clip > 0.0 && norm > o.grad_clip {
            o.grad_clip / norm
        } else {
            1.0
        };
        let lr = one_cycle_lr(
            step,
            cfg.steps,
            o.max_lr,
            o.warmup_frac,
            o.div_factor,
            o.final_div_factor,
        );
        opt.step(&acc, lr, scale * clip)?;
        let loss = loss_sum / cfg.grad_accum as f64;
        losses.push(loss);
        let done = step + 1;
        let tps = tokens as f64 / t0.elapsed().as_secs_f64();
        bar.set_position(done as u64);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
        if done % cfg.log_every.max(1) == 0 || done == cfg.steps {
            let line = LogLine {
                step: done,
                loss,
                lr,
                grad_norm: norm,
                tokens_per_s: tps,
                elapsed_s: started.elapsed().as_secs_f64(),
            };
            writeln!(metrics, "{}", serde_json::to_string(&line)?)?;
        }
        let last = done == cfg.steps;
        let stopping = stop_after == Some(done);
        let mut val_loss = None;
        if let Some(v) = &val_data {
            if last || (cfg.eval_every > 0 && done % cfg.eval_every == 0) {
                let m = evaluate(&model, cfg.pipeline, v, cfg, done)?;
                let mut j = serde_json::to_value(&m)?;
                j["step"] = done.into();
                writeln!(metrics, "{j}")?;
                val_loss = Some(m.val_loss);
            }
        }
        let is_best = match (val_loss, best_val) {
            (Some(v), Some(b)) => v < b,
            (Some(v), None) => v.is_finite(),
            _ => false,
        };
        if is_best {
            best_val = val_loss;
        }
        if last || stopping || is_best || (cfg.save_every > 0 && done % cfg.save_every == 0) {
            let st = TrainState {
                step: done,
                adam_t: opt.t,
                rng: rng.state(),
                best_val,
            };
            checkpoint::save(&ckpt_dir, &model, &opt, &st, is_best, cfg.keep_last)?;
        }
        if stopping && !last {
            bar.finish_and_clear();
            eprintln!("stopped after step {done} (resume with --resume)");
            return Ok(losses);
        }
    }
    bar.finish_and_clear();
    // The final model, loadable by the core (and `diffugpt --model`).
    let final_dir = cfg.out_dir.join("final");
    let mut out = model.clone();
    out.differentiable = false;
    weights::save(&out, &final_dir, Layout::DiffuGpt, SaveDtype::F32)?;
    eprintln!("wrote {}", final_dir.display());
    Ok(losses)
}

/// Path of the final model of a run directory.
pub fn final_model_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("final")
}
