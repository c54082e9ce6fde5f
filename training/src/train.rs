//! The training loop: ARM, diffusion and mask-EoS objectives on the core's own model code, AdamW +
//! OneCycle, gradient accumulation and clipping, validation with end-token metrics, crash-safe
//! checkpoints and exact resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use diffugpt::config::{ModelConfig, SpecialIds};
use diffugpt::model::AttnMask;
use diffugpt::rng::Rng;
use diffugpt::weights::{self, Layout, LoadOptions, SaveDtype};
use diffugpt::Gpt2;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::checkpoint;
use crate::config::{Init, Pipeline, TrainConfig};
use crate::dataset::{Dataset, Example};
use crate::objective::{self, Mask, Selection};
use crate::optim::{one_cycle_lr, AdamW};

/// A model whose weights are trainable variables.
pub struct Trainable {
    pub model: Gpt2,
    pub opt: AdamW,
}

/// Turns `model`'s weights into variables and wraps them with an optimizer.
pub fn make_trainable(model: &Gpt2, cfg: &TrainConfig) -> Result<Trainable> {
    let vars: Vec<(String, Var)> = model
        .named_tensors()?
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

/// The initial model for a run (before any checkpoint). A scratch model takes its vocabulary
/// size and special ids from the training data's header (so a corpus-trained BPE vocabulary,
/// whatever its ids, needs no extra setting); a checkpoint keeps its own and gets a pad row when
/// the data needs one.
pub fn initial_model(cfg: &TrainConfig, data: &Dataset) -> Result<Gpt2> {
    let h = data.header();
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
                vocab_size: h.vocab_size as usize,
                ..ModelConfig::gpt2_small()
            };
            let ids = SpecialIds {
                eos: h.eos_id,
                mask: h.mask_id,
                pad: h.pad_id.filter(|&p| p != h.eos_id),
            };
            ids.validate(mc.vocab_size)?;
            Gpt2::random(mc, ids, cfg.seed, &Device::Cpu)?
        }
        Init::Checkpoint { path } => {
            weights::load(path, LoadOptions::default())
                .with_context(|| format!("loading {}", path.display()))?
                .0
        }
    };
    extend_vocab(model, data.pad_id(), data.vocab_size())
}

/// Refuses data whose special ids differ from the model's: data prepared with another mask or
/// eos id would otherwise train silently on the wrong targets (the trainer masks with the
/// model's mask id and scores ends with the model's end ids).
pub fn check_data_ids(model: &Gpt2, data: &Dataset, what: &str) -> Result<()> {
    let h = data.header();
    let ids = model.ids;
    let fix = "prepare the data with the model's ids (--eos-id / --mask-id) or train a model that uses the data's";
    if h.eos_id != ids.eos {
        bail!(
            "{what} data was prepared with eos_id {} but the model's eos id is {}: {fix}",
            h.eos_id,
            ids.eos
        );
    }
    if h.mask_id != ids.mask {
        bail!(
            "{what} data was prepared with mask_id {} but the model's mask id is {}: {fix}",
            h.mask_id,
            ids.mask
        );
    }
    if let Some(p) = h.pad_id.filter(|&p| p != h.eos_id) {
        if ids.pad != Some(p) {
            bail!(
                "{what} data pads with id {p} but the model's pad id is {:?}: {fix}",
                ids.pad
            );
        }
    }
    if h.vocab_size as usize > model.cfg.vocab_size {
        bail!(
            "{what} data has a vocabulary of {} ids but the model only {}",
            h.vocab_size,
            model.cfg.vocab_size
        );
    }
    Ok(())
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
pub struct Batch {
    pub(crate) examples: Vec<Example>,
    pub(crate) t: usize,
}

impl Batch {
    /// A batch of examples of one length (tests build their own).
    pub fn new(examples: Vec<Example>) -> Result<Batch> {
        let t = examples.first().map_or(0, |e| e.tokens.len());
        if t == 0 || examples.iter().any(|e| e.tokens.len() != t) {
            bail!("a batch needs examples of one non-zero length");
        }
        Ok(Batch { examples, t })
    }
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

/// Loss of one batch for the pipeline. Returns (loss, number of target tokens). Pinned on
/// hand-made batches by `objective_tests`.
pub(crate) fn batch_loss(
    model: &Gpt2,
    pipeline: Pipeline,
    batch: &Batch,
    rng: &mut Rng,
    cfg: &TrainConfig,
    step: usize,
) -> Result<(Tensor, usize)> {
    let sel = objective::select(
        model.ids,
        pipeline,
        &batch.examples,
        batch.t,
        rng,
        cfg,
        step,
    );
    selection_loss(model, &sel)
}

/// The loss of a [`Selection`] on candle's ops (differentiable when `model` is). Returns (loss,
/// number of target tokens); a selection without rows has loss 0.
pub fn selection_loss(model: &Gpt2, sel: &Selection) -> Result<(Tensor, usize)> {
    let (b, t) = (sel.b, sel.t);
    let n = sel.rows.len();
    if n == 0 {
        return Ok((Tensor::new(0f32, &Device::Cpu)?, 0));
    }
    let mask = match &sel.mask {
        Mask::Bidirectional => AttnMask::Bidirectional,
        Mask::Causal => AttnMask::Causal,
        Mask::Bias(bias) => AttnMask::Bias(Tensor::from_slice(bias, (b, 1, t, t), &Device::Cpu)?),
    };
    let x = Tensor::from_slice(&sel.input, (b, t), &Device::Cpu)?;
    let h = model
        .hidden(&x, &mask, None)?
        .reshape((b * t, model.cfg.n_embd))?;
    let idx = Tensor::from_vec(
        sel.rows.iter().map(|r| r.row).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )?;
    let tgt = Tensor::from_vec(
        sel.rows.iter().map(|r| r.target).collect::<Vec<_>>(),
        (n, 1),
        &Device::Cpu,
    )?;
    let wts = Tensor::from_vec(
        sel.rows.iter().map(|r| r.weight).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )?;
    let logits = model.logits(&h.index_select(&idx, 0)?)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let nll = logp.gather(&tgt, 1)?.squeeze(1)?.neg()?;
    let loss = ((nll * wts)?.sum_all()? / n as f64)?;
    Ok((loss, n))
}

/// The gradients of one optimizer step, summed over its micro-batches.
pub struct Accumulated {
    /// Sum of the micro-batch gradients, in `opt.vars` order (detached).
    pub grads: Vec<Option<Tensor>>,
    pub loss_sum: f64,
    /// Micro-batches that carried at least one target: the divisor of the mean. A micro-batch
    /// without targets adds no gradient and must not dilute the others.
    pub used: usize,
}

impl Accumulated {
    /// Nothing accumulated yet, for `opt`'s variables.
    pub fn new(opt: &AdamW) -> Accumulated {
        Accumulated {
            grads: vec![None; opt.vars.len()],
            loss_sum: 0.0,
            used: 0,
        }
    }

    /// Forward and backward of one micro-batch on candle's autograd, added to the sum (nothing
    /// when it has no targets).
    pub fn add(&mut self, model: &Gpt2, opt: &AdamW, sel: &Selection) -> Result<()> {
        let (loss, n) = selection_loss(model, sel)?;
        if n == 0 {
            return Ok(());
        }
        self.loss_sum += loss.to_scalar::<f32>()? as f64;
        self.used += 1;
        AdamW::accumulate(&mut self.grads, opt.collect(&loss.backward()?))?;
        Ok(())
    }

    /// Mean loss of the micro-batches that had targets (NaN, logged as null, when none had).
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.used as f64
    }
}

/// Averages the accumulated gradients over the micro-batches that had targets, clips their global
/// norm to `grad_clip` (0 = off) and takes one AdamW step at `lr`. Returns the norm before
/// clipping. A step whose micro-batches all drew no target has nothing to learn from: no update
/// (AdamW's momentum would still move the weights).
pub fn apply_update(opt: &mut AdamW, acc: &Accumulated, lr: f64, grad_clip: f64) -> Result<f64> {
    if acc.used == 0 {
        return Ok(0.0);
    }
    let scale = 1.0 / acc.used as f64;
    let norm = AdamW::grad_norm(&acc.grads)? * scale;
    opt.step(&acc.grads, lr, scale * clip_factor(norm, grad_clip))?;
    Ok(norm)
}

/// The factor that brings a gradient of global norm `norm` down to `grad_clip` (0 = off).
pub fn clip_factor(norm: f64, grad_clip: f64) -> f64 {
    if grad_clip > 0.0 && norm > grad_clip {
        grad_clip / norm
    } else {
        1.0
    }
}

/// Runs forward and backward over `batches` (sampled in this order, drawing masks from `rng`).
pub fn accumulate_gradients(
    model: &Gpt2,
    opt: &AdamW,
    cfg: &TrainConfig,
    batches: &[Batch],
    rng: &mut Rng,
    step: usize,
) -> Result<Accumulated> {
    let mut acc = Accumulated::new(opt);
    for batch in batches {
        let sel = objective::select(
            model.ids,
            cfg.pipeline,
            &batch.examples,
            batch.t,
            rng,
            cfg,
            step,
        );
        acc.add(model, opt, &sel)?;
    }
    Ok(acc)
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
    // Validation needs no gradients: a copy of the model whose weights are plain (detached)
    // tensors sharing the variables' storage builds no graph, and runs the fused in-place kernels.
    let model = &frozen(model)?;
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
        for i in 0..(cfg.eval_batches.max(1) * cfg.batch_size).min(data.len()) {
            let ex = data.get(i, cfg.seq_len);
            let Some(end) = ex.end else { continue };
            let mut x = ex.tokens.clone();
            let fixed = ex.fixed.max(1);
            for v in x.iter_mut().skip(fixed) {
                *v = model.ids.mask;
            }
            let logits = model.forward_logits(&x, &AttnMask::Bidirectional)?;
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

/// `model` with its weights detached from the trainable variables (same storage, no copy): the
/// forward passes of validation and evaluation then build no autograd graph.
pub fn frozen(model: &Gpt2) -> Result<Gpt2> {
    let named = model.named_tensors()?;
    let mut get = |n: &str| -> diffugpt::Result<Tensor> {
        named
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.detach())
            .ok_or_else(|| diffugpt::Error::MissingTensor(n.into()))
    };
    let mut m = Gpt2::from_named(
        model.cfg.clone(),
        model.ids,
        &mut get,
        model.lm_head.is_some(),
    )?;
    m.differentiable = false;
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
    /// Batch positions (padding and the first position included) per second.
    positions_per_s: f64,
    /// Positions the model learns to predict (after the first, up to the end) per second.
    useful_tokens_per_s: f64,
    elapsed_s: f64,
}

/// Appends one JSONL line with a single `write_all` of the line and its `\n`: a kill between two
/// writes would leave a line without its end, which the next line would then run into.
fn append_line(w: &mut impl Write, json: &str) -> Result<()> {
    let mut buf = Vec::with_capacity(json.len() + 1);
    buf.extend_from_slice(json.as_bytes());
    buf.push(b'\n');
    w.write_all(&buf).context("appending to metrics.jsonl")?;
    Ok(())
}

/// Makes `metrics.jsonl` describe exactly the run being continued from `step` (0 for a fresh
/// start): keeps the complete (newline-terminated) lines that parse as JSON objects with a `step`
/// of at most `step`, in order, and drops the rest: a line torn by a kill, and the lines of steps
/// after the checkpoint, which the resumed run logs again (so no step is logged twice). Replaced
/// atomically (temp file, fsync, rename); untouched when nothing is dropped or there is no file.
pub fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = Vec::with_capacity(text.len());
    let mut rest = &text[..];
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..=end];
        rest = &rest[end + 1..];
        let logged = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step")?.as_u64());
        if logged.is_some_and(|s| s <= step as u64) {
            kept.extend_from_slice(line);
        }
    }
    if kept.len() != text.len() {
        weights::write_atomic(path, &kept)
            .with_context(|| format!("rewriting {}", path.display()))?;
    }
    Ok(())
}

/// Deletes the temporaries killed writes of an earlier invocation left in the run directory,
/// its checkpoints and its final model (only names the trainer's own writers use).
fn remove_stale_temps(cfg: &TrainConfig) -> Result<()> {
    let out = &cfg.out_dir;
    let mut removed =
        checkpoint::remove_stale_temps(out, &["config.json", "metrics.jsonl"], false)?;
    removed.extend(checkpoint::remove_stale_checkpoint_temps(
        &out.join("checkpoints"),
    )?);
    removed.extend(checkpoint::remove_stale_temps(
        &final_model_dir(out),
        &["model.safetensors", "config.json"],
        false,
    )?);
    for p in removed {
        eprintln!("removed stale temporary {}", p.display());
    }
    Ok(())
}

/// Runs (or resumes) training. Returns the per-step training losses of this invocation.
/// `stop_after` ends the invocation (with a checkpoint) after that many optimizer steps in total,
/// as an interruption would; a later `resume` continues exactly.
///
/// Whatever earlier invocations left is made consistent first: stale temporaries of killed writes
/// are deleted, and `metrics.jsonl` is cut back to the steps up to the checkpoint resumed from
/// (see [`truncate_metrics`]). A fresh start (`resume == false`) in a directory with checkpoints
/// begins a new run: the old run's `checkpoints/` is moved aside whole to
/// `checkpoints.previous-N` (see [`checkpoint::archive_previous_run`]) and `metrics.jsonl` starts
/// over.
pub fn train(
    cfg: &TrainConfig,
    config_path: Option<&Path>,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<Vec<f64>> {
    let stop = StopAt {
        step: stop_after,
        deadline: None,
    };
    train_observed(cfg, config_path, resume, stop, &mut |_| {})
}

/// When an invocation ends early, with a checkpoint, as an interruption would (a later `resume`
/// continues exactly).
#[derive(Clone, Copy, Debug, Default)]
pub struct StopAt {
    /// After this many optimizer steps in total.
    pub step: Option<usize>,
    /// After the first step that completes at or past this moment: a wall-clock budget, so a
    /// long stage fits a session (`diffugpt-train train --max-minutes`).
    pub deadline: Option<Instant>,
}

/// [`train`] with a [`StopAt`], calling `after_step(step)` once each optimizer step is complete
/// (logged, validated and checkpointed), with `step` counted from 1. Tests and benchmarks watch
/// memory through it.
pub fn train_observed(
    cfg: &TrainConfig,
    config_path: Option<&Path>,
    resume: bool,
    stop: StopAt,
    after_step: &mut dyn FnMut(usize),
) -> Result<Vec<f64>> {
    std::fs::create_dir_all(&cfg.out_dir)?;
    let ckpt_dir = cfg.out_dir.join("checkpoints");
    remove_stale_temps(cfg)?;
    if let Some(p) = config_path {
        // Read first, then replace atomically: a kill never leaves a torn copy, and copying the
        // run directory's own config.json onto itself (`train RUN/config.json --resume`) keeps it.
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        weights::write_atomic(&cfg.out_dir.join("config.json"), &bytes)
            .context("copying the config into the run directory")?;
    }
    let train_data = Dataset::open(&cfg.train_data, cfg.pipeline)?;
    let val_data = match &cfg.val_data {
        Some(p) => Some(Dataset::open(p, cfg.pipeline)?),
        None => None,
    };
    let found = if resume {
        checkpoint::latest(&ckpt_dir).context("--resume")?
    } else {
        None
    };
    let (base, state) = match (resume, found) {
        (true, Some(dir)) => {
            let (m, _) = weights::load(&dir, LoadOptions::default())?;
            let st: TrainState = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?;
            eprintln!("resuming from {} (step {})", dir.display(), st.step);
            (m, Some((st, dir)))
        }
        (true, None) => bail!("--resume: no checkpoint under {}", ckpt_dir.display()),
        (false, _) => {
            if let Some(old) = checkpoint::archive_previous_run(&ckpt_dir)? {
                eprintln!(
                    "fresh start: the previous run's checkpoints were moved to {}",
                    old.display()
                );
            }
            (initial_model(cfg, &train_data)?, None)
        }
    };
    check_data_ids(&base, &train_data, "training")?;
    if let Some(v) = &val_data {
        check_data_ids(&base, v, "validation")?;
    }
    let mut backend = Backend::new(&base, cfg)?;
    let ids = base.ids;
    drop(base);
    let mut rng = Rng::new(cfg.seed);
    let mut start = 0;
    let mut best_val = None;
    if let Some((st, dir)) = &state {
        backend.load_optimizer(dir, st.adam_t)?;
        rng = Rng::from_state(st.rng);
        start = st.step;
        best_val = st.best_val;
    }
    if start >= cfg.steps {
        eprintln!("nothing to do: {start} of {} steps done", cfg.steps);
        return Ok(vec![]);
    }
    let metrics_path = cfg.out_dir.join("metrics.jsonl");
    truncate_metrics(&metrics_path, start)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
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
        let batches: Vec<Batch> = (0..cfg.grad_accum)
            .map(|_| sample_batch(&train_data, cfg, &mut rng))
            .collect();
        let positions: usize = batches.iter().map(|b| b.examples.len() * b.t).sum();
        let useful: usize = batches
            .iter()
            .map(|b| objective::useful_tokens(&b.examples, b.t))
            .sum();
        for batch in &batches {
            let sel = objective::select(
                ids,
                cfg.pipeline,
                &batch.examples,
                batch.t,
                &mut rng,
                cfg,
                step,
            );
            backend.micro_batch(&sel)?;
        }
        let lr = one_cycle_lr(
            step,
            cfg.steps,
            o.max_lr,
            o.warmup_frac,
            o.div_factor,
            o.final_div_factor,
        );
        let (norm, loss) = backend.apply_update(lr, o.grad_clip)?;
        losses.push(loss);
        let done = step + 1;
        let secs = t0.elapsed().as_secs_f64();
        let tps = useful as f64 / secs;
        bar.set_position(done as u64);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} useful tok/s"));
        if done % cfg.log_every.max(1) == 0 || done == cfg.steps {
            let line = LogLine {
                step: done,
                loss,
                lr,
                grad_norm: norm,
                positions_per_s: positions as f64 / secs,
                useful_tokens_per_s: tps,
                elapsed_s: started.elapsed().as_secs_f64(),
            };
            append_line(&mut metrics, &serde_json::to_string(&line)?)?;
        }
        let last = done == cfg.steps;
        let stopping =
            stop.step == Some(done) || stop.deadline.is_some_and(|d| Instant::now() >= d);
        let mut val_loss = None;
        if let Some(v) = &val_data {
            if last || (cfg.eval_every > 0 && done % cfg.eval_every == 0) {
                let m = evaluate(&backend.model()?, cfg.pipeline, v, cfg, done)?;
                let mut j = serde_json::to_value(&m)?;
                j["step"] = done.into();
                append_line(&mut metrics, &j.to_string())?;
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
                adam_t: backend.adam_t(),
                rng: rng.state(),
                best_val,
            };
            // The log up to this step reaches the disk before the checkpoint that vouches for it
            // (a power cut must not leave a checkpoint whose steps are missing from the log).
            metrics.sync_data().context("syncing metrics.jsonl")?;
            backend.save_checkpoint(&ckpt_dir, &st, is_best, cfg.keep_last)?;
        }
        after_step(done);
        if stopping && !last {
            bar.finish_and_clear();
            eprintln!("stopped after step {done} (resume with --resume)");
            return Ok(losses);
        }
    }
    bar.finish_and_clear();
    // The final model, loadable by the core (and `diffugpt --model`).
    let final_dir = cfg.out_dir.join("final");
    weights::save(
        &backend.model()?,
        &final_dir,
        Layout::DiffuGpt,
        SaveDtype::F32,
    )?;
    eprintln!("wrote {}", final_dir.display());
    Ok(losses)
}

/// Path of the final model of a run directory.
pub fn final_model_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("final")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every `write` call separately.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_metrics_line_is_one_write_with_its_newline() {
        let mut w = Calls::default();
        let line = LogLine {
            step: 3,
            loss: 1.5,
            lr: 1e-3,
            grad_norm: 0.5,
            positions_per_s: 100.0,
            useful_tokens_per_s: 80.0,
            elapsed_s: 2.0,
        };
        append_line(&mut w, &serde_json::to_string(&line).unwrap()).unwrap();
        append_line(&mut w, r#"{"step":3,"val_loss":2.0}"#).unwrap();
        assert_eq!(w.0.len(), 2, "one write call per line");
        for call in &w.0 {
            assert_eq!(call.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(call.last(), Some(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(call).unwrap();
            assert_eq!(v["step"], 3);
        }
    }

    #[test]
    fn metrics_are_cut_back_to_the_checkpoint_and_torn_lines_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        let text = concat!(
            "{\"step\":1,\"loss\":3.0}\n",
            "{\"step\":2,\"loss\":2.5}\n",
            "{\"step\":2,\"val_loss\":2.7,\"eos_exact\":0.0}\n",
            // An earlier torn line that the next append ran into.
            "{\"step\":3,\"lo{\"step\":3,\"loss\":2.4}\n",
            "{\"step\":3,\"loss\":2.4}\n",
            "not json\n",
            "{\"loss\":1.0}\n",
            "{\"step\":4,\"loss\":2.2}\n",
            "{\"step\":5,\"loss\":2.1}\n",
            // Torn by the kill: no newline.
            "{\"step\":6,\"loss\":2",
        );
        std::fs::write(&path, text).unwrap();
        truncate_metrics(&path, 3).unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            kept,
            concat!(
                "{\"step\":1,\"loss\":3.0}\n",
                "{\"step\":2,\"loss\":2.5}\n",
                "{\"step\":2,\"val_loss\":2.7,\"eos_exact\":0.0}\n",
                "{\"step\":3,\"loss\":2.4}\n",
            )
        );
        // Nothing left behind by the atomic rewrite; a clean file is left as it is.
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        truncate_metrics(&path, 3).unwrap();
        truncate_metrics(&path, 10).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);
        // A fresh start (step 0) starts the file over; no file is fine.
        truncate_metrics(&path, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        truncate_metrics(&tmp.path().join("none.jsonl"), 3).unwrap();
        assert!(!tmp.path().join("none.jsonl").exists());
    }
}
