//! A hand-written CPU training engine for exactly the core's GPT-2 (llm.c style): parameters,
//! gradients and AdamW moments are each one flat f32 buffer in the canonical tensor order
//! ([`diffugpt::model::canonical_shapes`]); activations live in buffers allocated once per batch
//! shape and reused every step, so memory is flat by construction and there is no graph. Forward,
//! loss and backward are written out: LayerNorm, the projections (AVX-512 GEMM where the CPU has
//! it, `linalg`), attention per (sequence, head) (`attention`), tanh-GELU, and the LM head
//! evaluated on the loss rows only, in chunks, with softmax and the weighted cross-entropy fused
//! (`kernels`). The loss is the one `train::batch_loss` builds with candle from the same
//! [`Selection`]; `tests` check loss, every gradient and AdamW steps against that path.

mod attention;
mod kernels;
mod linalg;
#[cfg(test)]
mod tests;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use diffugpt::config::{Activation, ModelConfig, SpecialIds};
use diffugpt::model::canonical_shapes;
use diffugpt::Gpt2;

use crate::config::Optim;
use crate::objective::Selection;
use crate::optim::AdamW;
use attention::Dims;

/// Loss rows per chunk of the LM head: a `[chunk, vocab]` block of logits (51 MB at GPT-2's
/// vocabulary) is all the head ever holds, whatever the number of loss rows.
const HEAD_CHUNK: usize = 256;

/// A range of the flat parameter (and gradient, moment) buffers.
#[derive(Clone, Copy, Debug)]
struct Span {
    off: usize,
    len: usize,
}

impl Span {
    fn of<'a>(&self, v: &'a [f32]) -> &'a [f32] {
        &v[self.off..self.off + self.len]
    }
    fn of_mut<'a>(&self, v: &'a mut [f32]) -> &'a mut [f32] {
        &mut v[self.off..self.off + self.len]
    }
}

/// One tensor of the model in the flat buffers.
#[derive(Clone, Debug)]
struct Slot {
    name: String,
    shape: Vec<usize>,
    span: Span,
}

/// The spans of one block's parameters.
#[derive(Clone, Copy, Debug)]
struct LayerSpans {
    ln1_w: Span,
    ln1_b: Span,
    attn_w: Span,
    attn_b: Span,
    proj_w: Span,
    proj_b: Span,
    ln2_w: Span,
    ln2_b: Span,
    fc_w: Span,
    fc_b: Span,
    mlp_w: Span,
    mlp_b: Span,
}

/// Activations of one batch shape, all layers in one buffer per kind.
struct Acts {
    b: usize,
    t: usize,
    /// Residual stream `[L + 1, bt, e]`: the embeddings, then each block's output.
    x: Vec<f32>,
    /// Residual after attention `[L, bt, e]`.
    xmid: Vec<f32>,
    ln1: Vec<f32>,
    ln1_stats: Vec<f32>,
    ln2: Vec<f32>,
    ln2_stats: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    atty: Vec<f32>,
    /// MLP pre-activation (bias included) and its GELU `[L, bt, inner]`.
    fc: Vec<f32>,
    fcg: Vec<f32>,
    lnf: Vec<f32>,
    lnf_stats: Vec<f32>,
    // Backward scratch.
    dres: Vec<f32>,
    dln: Vec<f32>,
    dwide: Vec<f32>,
    datty: Vec<f32>,
    // The head's chunk buffers.
    hsel: Vec<f32>,
    dhsel: Vec<f32>,
    logits: Vec<f32>,
}

impl Acts {
    fn new(c: &ModelConfig, b: usize, t: usize) -> Acts {
        let (l, e, i, h, v) = (c.n_layer, c.n_embd, c.n_inner, c.n_head, c.vocab_size);
        let bt = b * t;
        let z = |n: usize| vec![0f32; n];
        Acts {
            b,
            t,
            x: z((l + 1) * bt * e),
            xmid: z(l * bt * e),
            ln1: z(l * bt * e),
            ln1_stats: z(l * 2 * bt),
            ln2: z(l * bt * e),
            ln2_stats: z(l * 2 * bt),
            qkv: z(l * bt * 3 * e),
            att: z(l * b * h * t * t),
            atty: z(l * bt * e),
            fc: z(l * bt * i),
            fcg: z(l * bt * i),
            lnf: z(bt * e),
            lnf_stats: z(2 * bt),
            dres: z(bt * e),
            dln: z(bt * e),
            dwide: z(bt * i.max(3 * e)),
            datty: z(bt * e),
            hsel: z(HEAD_CHUNK * e),
            dhsel: z(HEAD_CHUNK * e),
            logits: z(HEAD_CHUNK * v),
        }
    }
}

/// The engine: a model's weights, their gradients and AdamW state, and the activation buffers.
pub struct Engine {
    cfg: ModelConfig,
    ids: SpecialIds,
    untied: bool,
    slots: Vec<Slot>,
    layers: Vec<LayerSpans>,
    wte: Span,
    wpe: Span,
    lnf_w: Span,
    lnf_b: Span,
    /// The LM head: `wte` when tied.
    head: Span,
    params: Vec<f32>,
    grads: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    /// AdamW updates applied (bias correction).
    pub adam_t: usize,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    acts: Option<Acts>,
}

/// Why the engine cannot train `model`, if it cannot (the candle path still can).
pub fn unsupported(model: &Gpt2) -> Option<String> {
    if model.cfg.activation != Activation::GeluTanh {
        return Some("the engine implements tanh-GELU (gelu_new) only".into());
    }
    if !model.device().is_cpu() {
        return Some("the engine runs on the CPU only".into());
    }
    None
}

impl Engine {
    /// Copies `model`'s weights into the engine (moments zero).
    pub fn new(model: &Gpt2, optim: &Optim) -> Result<Engine> {
        if let Some(why) = unsupported(model) {
            bail!("{why}");
        }
        let untied = model.lm_head.is_some();
        let shapes = canonical_shapes(&model.cfg, untied);
        let mut slots = Vec::with_capacity(shapes.len());
        let mut off = 0;
        for (name, shape) in shapes {
            let len = shape.iter().product();
            slots.push(Slot {
                name,
                shape,
                span: Span { off, len },
            });
            off += len;
        }
        let mut params = vec![0f32; off];
        for (name, t) in model.named_tensors()? {
            let slot = slots
                .iter()
                .find(|s| s.name == name)
                .with_context(|| format!("unexpected tensor {name}"))?;
            if t.dims() != slot.shape.as_slice() {
                bail!("{name}: shape {:?}, expected {:?}", t.dims(), slot.shape);
            }
            let data = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            slot.span.of_mut(&mut params).copy_from_slice(&data);
        }
        let span = |n: &str| -> Result<Span> {
            Ok(slots
                .iter()
                .find(|s| s.name == n)
                .with_context(|| format!("no tensor {n}"))?
                .span)
        };
        let layers = (0..model.cfg.n_layer)
            .map(|i| {
                let s = |n: &str| span(&format!("h.{i}.{n}"));
                Ok(LayerSpans {
                    ln1_w: s("ln_1.weight")?,
                    ln1_b: s("ln_1.bias")?,
                    attn_w: s("attn.c_attn.weight")?,
                    attn_b: s("attn.c_attn.bias")?,
                    proj_w: s("attn.c_proj.weight")?,
                    proj_b: s("attn.c_proj.bias")?,
                    ln2_w: s("ln_2.weight")?,
                    ln2_b: s("ln_2.bias")?,
                    fc_w: s("mlp.c_fc.weight")?,
                    fc_b: s("mlp.c_fc.bias")?,
                    mlp_w: s("mlp.c_proj.weight")?,
                    mlp_b: s("mlp.c_proj.bias")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let wte = span("wte.weight")?;
        let head = if untied { span("lm_head.weight")? } else { wte };
        Ok(Engine {
            cfg: model.cfg.clone(),
            ids: model.ids,
            untied,
            layers,
            wte,
            wpe: span("wpe.weight")?,
            lnf_w: span("ln_f.weight")?,
            lnf_b: span("ln_f.bias")?,
            head,
            grads: vec![0f32; off],
            m: vec![0f32; off],
            v: vec![0f32; off],
            params,
            slots,
            adam_t: 0,
            betas: optim.betas,
            eps: optim.eps,
            weight_decay: optim.weight_decay,
            acts: None,
        })
    }

    /// The model with the engine's current weights (a copy, for evaluation and saving).
    pub fn to_model(&self) -> Result<Gpt2> {
        let get = |n: &str| -> diffugpt::Result<Tensor> {
            let s = self
                .slots
                .iter()
                .find(|s| s.name == n)
                .ok_or_else(|| diffugpt::Error::MissingTensor(n.into()))?;
            Ok(Tensor::from_slice(
                s.span.of(&self.params),
                s.shape.as_slice(),
                &Device::Cpu,
            )?)
        };
        Ok(Gpt2::from_named(
            self.cfg.clone(),
            self.ids,
            get,
            self.untied,
        )?)
    }

    /// The model and an [`AdamW`] holding the engine's moments, sharing the weights' storage
    /// (what `checkpoint::save` writes).
    pub fn to_checkpoint(&self) -> Result<(Gpt2, AdamW)> {
        let mut vars = Vec::with_capacity(self.slots.len());
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for s in &self.slots {
            let t =
                |buf: &[f32]| Tensor::from_slice(s.span.of(buf), s.shape.as_slice(), &Device::Cpu);
            vars.push((s.name.clone(), Var::from_tensor(&t(&self.params)?)?));
            m.push(t(&self.m)?);
            v.push(t(&self.v)?);
        }
        let mut get = |n: &str| -> diffugpt::Result<Tensor> {
            vars.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_tensor().clone())
                .ok_or_else(|| diffugpt::Error::MissingTensor(n.into()))
        };
        let model = Gpt2::from_named(self.cfg.clone(), self.ids, &mut get, self.untied)?;
        let opt = AdamW {
            vars,
            m,
            v,
            t: self.adam_t,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
        };
        Ok((model, opt))
    }

    /// Takes over the moments (and step count) of `opt` (a restored checkpoint's), by name.
    pub fn load_moments(&mut self, opt: &AdamW) -> Result<()> {
        for (i, (name, _)) in opt.vars.iter().enumerate() {
            let s = self
                .slots
                .iter()
                .find(|s| &s.name == name)
                .with_context(|| format!("optimizer state for unknown tensor {name}"))?;
            for (dst, src) in [(&mut self.m, &opt.m[i]), (&mut self.v, &opt.v[i])] {
                if src.dims() != s.shape.as_slice() {
                    bail!(
                        "optimizer state for {name}: shape {:?}, expected {:?}",
                        src.dims(),
                        s.shape
                    );
                }
                s.span
                    .of_mut(dst)
                    .copy_from_slice(&src.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        self.adam_t = opt.t;
        Ok(())
    }

    /// Forward, loss and backward of one micro-batch; the gradients are added to those of
    /// earlier micro-batches since the last [`Engine::update`]. Returns the loss (0 without rows).
    pub fn forward_backward(&mut self, sel: &Selection) -> Result<f64> {
        let c = &self.cfg;
        let (b, t) = (sel.b, sel.t);
        if sel.input.len() != b * t || t == 0 {
            bail!("selection of {} ids for {b} x {t}", sel.input.len());
        }
        if t > c.n_positions {
            bail!(
                "{t} positions exceed the model's context of {}",
                c.n_positions
            );
        }
        if let Some(bad) = sel.input.iter().find(|&&i| i as usize >= c.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            );
        }
        if let Some(r) = sel
            .rows
            .iter()
            .find(|r| r.row as usize >= b * t || r.target as usize >= c.vocab_size)
        {
            bail!("loss row {r:?} out of range");
        }
        if sel.rows.is_empty() {
            return Ok(0.0);
        }
        if self.acts.as_ref().is_none_or(|a| a.b != b || a.t != t) {
            self.acts = None; // free the old shape's buffers first
            self.acts = Some(Acts::new(c, b, t));
        }
        self.forward(sel);
        let loss = self.head_loss_backward(sel);
        self.backward(sel);
        Ok(loss)
    }

    fn forward(&mut self, sel: &Selection) {
        let Engine {
            cfg,
            layers,
            params: p,
            acts,
            ..
        } = self;
        let a = acts.as_mut().expect("activations allocated");
        let (e, inner, nl) = (cfg.n_embd, cfg.n_inner, cfg.n_layer);
        let (b, t) = (a.b, a.t);
        let bt = b * t;
        let eps = cfg.layer_norm_eps as f32;
        let wte = self.wte.of(p);
        let wpe = self.wpe.of(p);
        for (i, (row, &id)) in a.x[..bt * e]
            .chunks_exact_mut(e)
            .zip(&sel.input)
            .enumerate()
        {
            let tok = &wte[id as usize * e..][..e];
            let pos = &wpe[(i % t) * e..][..e];
            row.iter_mut()
                .zip(tok.iter().zip(pos))
                .for_each(|(o, (a, b))| *o = a + b);
        }
        let d = Dims {
            b,
            t,
            heads: cfg.n_head,
            e,
        };
        for (l, ls) in layers.iter().enumerate() {
            let (x_in, x_rest) = a.x[l * bt * e..].split_at_mut(bt * e);
            let x_out = &mut x_rest[..bt * e];
            let ln1 = &mut a.ln1[l * bt * e..][..bt * e];
            let (m1, r1) = a.ln1_stats[l * 2 * bt..][..2 * bt].split_at_mut(bt);
            kernels::layernorm_fwd(ln1, m1, r1, x_in, ls.ln1_w.of(p), ls.ln1_b.of(p), eps);
            let qkv = &mut a.qkv[l * bt * 3 * e..][..bt * 3 * e];
            linalg::matmul(
                ln1,
                ls.attn_w.of(p),
                Some(ls.attn_b.of(p)),
                qkv,
                bt,
                e,
                3 * e,
            );
            let att = &mut a.att[l * b * cfg.n_head * t * t..][..b * cfg.n_head * t * t];
            let atty = &mut a.atty[l * bt * e..][..bt * e];
            attention::forward(att, atty, qkv, d, &sel.mask);
            let xmid = &mut a.xmid[l * bt * e..][..bt * e];
            linalg::matmul(atty, ls.proj_w.of(p), Some(ls.proj_b.of(p)), xmid, bt, e, e);
            xmid.iter_mut().zip(x_in.iter()).for_each(|(o, x)| *o += x);
            let ln2 = &mut a.ln2[l * bt * e..][..bt * e];
            let (m2, r2) = a.ln2_stats[l * 2 * bt..][..2 * bt].split_at_mut(bt);
            kernels::layernorm_fwd(ln2, m2, r2, xmid, ls.ln2_w.of(p), ls.ln2_b.of(p), eps);
            let fc = &mut a.fc[l * bt * inner..][..bt * inner];
            linalg::matmul(ln2, ls.fc_w.of(p), Some(ls.fc_b.of(p)), fc, bt, e, inner);
            let fcg = &mut a.fcg[l * bt * inner..][..bt * inner];
            kernels::gelu_fwd(fcg, fc);
            linalg::matmul(
                fcg,
                ls.mlp_w.of(p),
                Some(ls.mlp_b.of(p)),
                x_out,
                bt,
                inner,
                e,
            );
            x_out.iter_mut().zip(xmid.iter()).for_each(|(o, x)| *o += x);
        }
        let (m, r) = a.lnf_stats.split_at_mut(bt);
        let x_last = &a.x[nl * bt * e..][..bt * e];
        kernels::layernorm_fwd(
            &mut a.lnf,
            m,
            r,
            x_last,
            self.lnf_w.of(p),
            self.lnf_b.of(p),
            eps,
        );
    }

    /// The LM head on the loss rows, chunk by chunk: logits, fused softmax + cross-entropy and
    /// its gradient, the head's weight gradient, and the hidden states' gradient scattered into
    /// `dln` (zero on the other rows). Returns the loss.
    fn head_loss_backward(&mut self, sel: &Selection) -> f64 {
        use rayon::prelude::*;
        let Engine {
            cfg,
            params: p,
            grads: g,
            acts,
            head,
            ..
        } = self;
        let a = acts.as_mut().expect("activations allocated");
        let (e, v) = (cfg.n_embd, cfg.vocab_size);
        let n = sel.rows.len();
        let w = head.of(p);
        a.dln.fill(0.0);
        let mut loss = 0f64;
        for chunk in sel.rows.chunks(HEAD_CHUNK) {
            let c = chunk.len();
            let hsel = &mut a.hsel[..c * e];
            for (dst, r) in hsel.chunks_exact_mut(e).zip(chunk) {
                dst.copy_from_slice(&a.lnf[r.row as usize * e..][..e]);
            }
            let logits = &mut a.logits[..c * v];
            linalg::matmul_t(hsel, w, logits, c, e, v);
            // Per-row losses summed in row order (deterministic, unlike a work-stealing sum).
            let rows: Vec<f64> = logits
                .par_chunks_mut(v)
                .zip(chunk.par_iter())
                .map(|(row, r)| {
                    let coef = r.weight / n as f32;
                    r.weight as f64 * kernels::softmax_ce_row(row, r.target as usize, coef)
                })
                .collect();
            loss += rows.iter().sum::<f64>();
            let dhsel = &mut a.dhsel[..c * e];
            linalg::matmul(logits, w, None, dhsel, c, v, e);
            linalg::matmul_tn_acc(logits, hsel, head.of_mut(g), c, v, e);
            for (src, r) in dhsel.chunks_exact(e).zip(chunk) {
                let dst = &mut a.dln[r.row as usize * e..][..e];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
        loss / n as f64
    }

    /// Backward from `dln` (the gradient at `ln_f`'s output) to the embeddings.
    fn backward(&mut self, sel: &Selection) {
        let Engine {
            cfg,
            layers,
            params: p,
            grads: g,
            acts,
            ..
        } = self;
        let a = acts.as_mut().expect("activations allocated");
        let (e, inner, nl) = (cfg.n_embd, cfg.n_inner, cfg.n_layer);
        let (b, t) = (a.b, a.t);
        let bt = b * t;
        let (mf, rf) = a.lnf_stats.split_at(bt);
        a.dres.fill(0.0);
        let x_last = &a.x[nl * bt * e..][..bt * e];
        let (gw, gb) = two_mut(g, self.lnf_w, self.lnf_b);
        kernels::layernorm_bwd(
            &mut a.dres,
            gw,
            gb,
            &a.dln,
            x_last,
            self.lnf_w.of(p),
            mf,
            rf,
        );
        let d = Dims {
            b,
            t,
            heads: cfg.n_head,
            e,
        };
        for (l, ls) in layers.iter().enumerate().rev() {
            let x_in = &a.x[l * bt * e..][..bt * e];
            let xmid = &a.xmid[l * bt * e..][..bt * e];
            let ln1 = &a.ln1[l * bt * e..][..bt * e];
            let ln2 = &a.ln2[l * bt * e..][..bt * e];
            let (m1, r1) = a.ln1_stats[l * 2 * bt..][..2 * bt].split_at(bt);
            let (m2, r2) = a.ln2_stats[l * 2 * bt..][..2 * bt].split_at(bt);
            let qkv = &a.qkv[l * bt * 3 * e..][..bt * 3 * e];
            let att = &a.att[l * b * cfg.n_head * t * t..][..b * cfg.n_head * t * t];
            let atty = &a.atty[l * bt * e..][..bt * e];
            let fc = &a.fc[l * bt * inner..][..bt * inner];
            let fcg = &a.fcg[l * bt * inner..][..bt * inner];
            // MLP: x_out = xmid + proj(gelu(fc(ln2(xmid)))); dres is d x_out.
            linalg::matmul_tn_acc(fcg, &a.dres, ls.mlp_w.of_mut(g), bt, inner, e);
            linalg::col_sum_acc(&a.dres, ls.mlp_b.of_mut(g));
            let dfc = &mut a.dwide[..bt * inner];
            linalg::matmul_t(&a.dres, ls.mlp_w.of(p), dfc, bt, e, inner);
            kernels::gelu_bwd(dfc, fc);
            linalg::matmul_tn_acc(ln2, dfc, ls.fc_w.of_mut(g), bt, e, inner);
            linalg::col_sum_acc(dfc, ls.fc_b.of_mut(g));
            linalg::matmul_t(dfc, ls.fc_w.of(p), &mut a.dln, bt, inner, e);
            let (gw, gb) = two_mut(g, ls.ln2_w, ls.ln2_b);
            kernels::layernorm_bwd(&mut a.dres, gw, gb, &a.dln, xmid, ls.ln2_w.of(p), m2, r2);
            // Attention: xmid = x_in + proj(attn(ln1(x_in))); dres is now d xmid.
            linalg::matmul_tn_acc(atty, &a.dres, ls.proj_w.of_mut(g), bt, e, e);
            linalg::col_sum_acc(&a.dres, ls.proj_b.of_mut(g));
            linalg::matmul_t(&a.dres, ls.proj_w.of(p), &mut a.datty, bt, e, e);
            let dqkv = &mut a.dwide[..bt * 3 * e];
            attention::backward(dqkv, &a.datty, att, qkv, d);
            linalg::matmul_tn_acc(ln1, dqkv, ls.attn_w.of_mut(g), bt, e, 3 * e);
            linalg::col_sum_acc(dqkv, ls.attn_b.of_mut(g));
            linalg::matmul_t(dqkv, ls.attn_w.of(p), &mut a.dln, bt, 3 * e, e);
            let (gw, gb) = two_mut(g, ls.ln1_w, ls.ln1_b);
            kernels::layernorm_bwd(&mut a.dres, gw, gb, &a.dln, x_in, ls.ln1_w.of(p), m1, r1);
        }
        // Embeddings: dres is d x0 = d(wte[id] + wpe[pos]).
        let (gte, gpe) = two_mut(g, self.wte, self.wpe);
        for (i, (row, &id)) in a.dres.chunks_exact(e).zip(&sel.input).enumerate() {
            let tok = &mut gte[id as usize * e..][..e];
            tok.iter_mut().zip(row).for_each(|(o, d)| *o += d);
            let pos = &mut gpe[(i % t) * e..][..e];
            pos.iter_mut().zip(row).for_each(|(o, d)| *o += d);
        }
    }

    /// Global L2 norm of the accumulated gradients.
    pub fn grad_norm(&self) -> f64 {
        kernels::sum_sq(&self.grads).sqrt()
    }

    /// One AdamW update with learning rate `lr`, the gradients multiplied by `grad_scale` first
    /// (accumulation averaging and clipping), as `optim::AdamW::step`; then clears the gradients.
    pub fn update(&mut self, lr: f64, grad_scale: f64) {
        use rayon::prelude::*;
        self.adam_t += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.adam_t as i32);
        let bc2 = 1.0 - b2.powi(self.adam_t as i32);
        let (wd, eps) = (self.weight_decay, self.eps);
        let Engine {
            slots,
            params,
            grads,
            m,
            v,
            ..
        } = self;
        for s in slots.iter() {
            let decay = if wd > 0.0 && s.shape.len() >= 2 {
                (1.0 - lr * wd) as f32
            } else {
                1.0
            };
            const CHUNK: usize = 1 << 15;
            s.span
                .of_mut(params)
                .par_chunks_mut(CHUNK)
                .zip(s.span.of(grads).par_chunks(CHUNK))
                .zip(
                    s.span
                        .of_mut(m)
                        .par_chunks_mut(CHUNK)
                        .zip(s.span.of_mut(v).par_chunks_mut(CHUNK)),
                )
                .for_each(|((p, g), (m, v))| {
                    kernels::adamw_chunk(
                        p,
                        g,
                        m,
                        v,
                        grad_scale as f32,
                        b1 as f32,
                        b2 as f32,
                        (1.0 / bc1) as f32,
                        (1.0 / bc2) as f32,
                        eps as f32,
                        lr as f32,
                        decay,
                    )
                });
        }
        self.grads.fill(0.0);
    }

    /// The accumulated gradient of one tensor (canonical name).
    pub fn grad(&self, name: &str) -> Option<&[f32]> {
        let s = self.slots.iter().find(|s| s.name == name)?;
        Some(s.span.of(&self.grads))
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }
}

/// Two disjoint mutable spans of one buffer.
fn two_mut(buf: &mut [f32], a: Span, b: Span) -> (&mut [f32], &mut [f32]) {
    assert!(
        a.off + a.len <= b.off || b.off + b.len <= a.off,
        "overlapping spans"
    );
    if a.off < b.off {
        let (lo, hi) = buf.split_at_mut(b.off);
        (&mut lo[a.off..a.off + a.len], &mut hi[..b.len])
    } else {
        let (lo, hi) = buf.split_at_mut(a.off);
        (&mut hi[..a.len], &mut lo[b.off..b.off + b.len])
    }
}
