//! The two ways the trainer computes a step, behind one interface so that the loop in `train`
//! does not care: the hand-written CPU [`Engine`] (the default where it applies), and candle's
//! autograd over the core's `Gpt2` forward (any activation; the reference the engine is tested
//! against). Both read the same [`Selection`] per micro-batch and write the same checkpoints
//! (model weights through `weights::save`, AdamW moments through `checkpoint`), so a run can be
//! resumed by either.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use diffugpt::Gpt2;

use crate::checkpoint;
use crate::config::{BackendKind, TrainConfig};
use crate::engine::{self, Engine};
use crate::objective::Selection;
use crate::train::{apply_update, clip_factor, make_trainable, Accumulated, TrainState, Trainable};

// One per run: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Candle {
        tr: Trainable,
        /// The micro-batches since the last update.
        acc: Accumulated,
    },
    Engine {
        e: Engine,
        /// Loss sum and count of the micro-batches with targets since the last update (the
        /// engine holds their summed gradients), as [`Accumulated`] for candle.
        loss_sum: f64,
        used: usize,
    },
}

impl Backend {
    /// The backend `cfg` asks for (`auto`: the engine where it supports the model).
    pub fn new(model: &Gpt2, cfg: &TrainConfig) -> Result<Backend> {
        let use_engine = match cfg.backend {
            BackendKind::Candle => false,
            BackendKind::Engine => {
                if let Some(why) = engine::unsupported(model) {
                    bail!("backend \"engine\": {why} (use \"candle\")");
                }
                true
            }
            BackendKind::Auto => engine::unsupported(model).is_none(),
        };
        Ok(if use_engine {
            Backend::Engine {
                e: Engine::new(model, &cfg.optim)?,
                loss_sum: 0.0,
                used: 0,
            }
        } else {
            let tr = make_trainable(model, cfg)?;
            let acc = Accumulated::new(&tr.opt);
            Backend::Candle { tr, acc }
        })
    }

    /// Restores the optimizer moments and step count saved in checkpoint `dir`.
    pub fn load_optimizer(&mut self, dir: &Path, adam_t: usize) -> Result<()> {
        match self {
            Backend::Candle { tr, .. } => {
                checkpoint::load_optimizer(&mut tr.opt, dir)?;
                tr.opt.t = adam_t;
            }
            Backend::Engine { e, .. } => {
                let (_, mut opt) = e.to_checkpoint()?;
                checkpoint::load_optimizer(&mut opt, dir)?;
                opt.t = adam_t;
                e.load_moments(&opt)?;
            }
        }
        Ok(())
    }

    /// Forward and backward of one micro-batch, its gradients added to the step's; a
    /// micro-batch without loss rows adds nothing and does not count.
    pub fn micro_batch(&mut self, sel: &Selection) -> Result<()> {
        match self {
            Backend::Candle { tr, acc } => acc.add(&tr.model, &tr.opt, sel)?,
            Backend::Engine { e, loss_sum, used } => {
                if !sel.rows.is_empty() {
                    *loss_sum += e.forward_backward(sel)?;
                    *used += 1;
                }
            }
        }
        Ok(())
    }

    /// Ends the step as [`apply_update`]: gradients averaged over the micro-batches with
    /// targets, clipped to `grad_clip`, one AdamW update at `lr` (none when no micro-batch had
    /// targets). Returns the gradient norm before clipping and the mean loss (NaN without
    /// targets); the next step starts from zero.
    pub fn apply_update(&mut self, lr: f64, grad_clip: f64) -> Result<(f64, f64)> {
        match self {
            Backend::Candle { tr, acc } => {
                let norm = apply_update(&mut tr.opt, acc, lr, grad_clip)?;
                let loss = acc.mean_loss();
                *acc = Accumulated::new(&tr.opt);
                Ok((norm, loss))
            }
            Backend::Engine { e, loss_sum, used } => {
                let loss = *loss_sum / *used as f64;
                let mut norm = 0.0;
                if *used > 0 {
                    let scale = 1.0 / *used as f64;
                    norm = e.grad_norm() * scale;
                    e.update(lr, scale * clip_factor(norm, grad_clip));
                }
                (*loss_sum, *used) = (0.0, 0);
                Ok((norm, loss))
            }
        }
    }

    /// AdamW updates applied so far.
    pub fn adam_t(&self) -> usize {
        match self {
            Backend::Candle { tr, .. } => tr.opt.t,
            Backend::Engine { e, .. } => e.adam_t,
        }
    }

    /// The model as it stands, for evaluation and the final save (not differentiable).
    pub fn model(&self) -> Result<Gpt2> {
        match self {
            Backend::Candle { tr, .. } => {
                let mut m = tr.model.clone();
                m.differentiable = false;
                Ok(m)
            }
            Backend::Engine { e, .. } => e.to_model(),
        }
    }

    /// Writes a checkpoint (see [`checkpoint::save`]).
    pub fn save_checkpoint(
        &self,
        root: &Path,
        state: &TrainState,
        best: bool,
        keep: usize,
    ) -> Result<PathBuf> {
        match self {
            Backend::Candle { tr, .. } => {
                checkpoint::save(root, &tr.model, &tr.opt, state, best, keep)
            }
            Backend::Engine { e, .. } => {
                let (model, opt) = e.to_checkpoint()?;
                checkpoint::save(root, &model, &opt, state, best, keep)
            }
        }
    }
}
