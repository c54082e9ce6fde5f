//! GPT-2 as used by DiffuGPT (Gong et al. 2024, "Scaling Diffusion Language Models via Adaptation from
//! Autoregressive Models"): pre-LN blocks, tanh-GELU, learned positions, LM head tied to the token
//! embedding. The same weights run in two modes:
//! * *diffusion*: full bidirectional attention; the logits at position i predict token i + 1 (DiffuGPT
//!   keeps GPT-2's shift), so a masked slot at position j is read from row j - 1;
//! * *causal*: GPT-2's autoregressive mode, with a KV cache for generation.
//!
//! The weights are plain candle tensors (f32 on the CPU) so the training crate can back them with
//! `Var`s and reuse this exact forward. For inference, [`Gpt2::pack_for_cpu`] (called by
//! `Model::load`) rewrites the block projections in place into the strip layout the CPU kernels
//! stream; a packed weight has rank 3, and every path that is not the fused one unpacks it.
//! Mutable state (KV cache, canvas) lives outside the model.

use candle_core::{DType, Device, Tensor};

use crate::config::{Activation, ModelConfig, SpecialIds};
use crate::error::{Error, Result};
use crate::forward_profile::{self as profile, Op};

/// LayerNorm parameters.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// One transformer block's weights. Linear weights keep HF Conv1D's `[in, out]` layout so that
/// `x @ w` needs no transpose.
#[derive(Clone, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub c_attn_w: Tensor,
    pub c_attn_b: Tensor,
    pub attn_proj_w: Tensor,
    pub attn_proj_b: Tensor,
    pub ln_2: LayerNorm,
    pub c_fc_w: Tensor,
    pub c_fc_b: Tensor,
    pub mlp_proj_w: Tensor,
    pub mlp_proj_b: Tensor,
}

/// Which positions may attend to which.
#[derive(Clone, Debug)]
pub enum AttnMask {
    /// Every position sees every position (DiffuGPT's denoiser).
    Bidirectional,
    /// Position i sees positions <= i (GPT-2).
    Causal,
    /// An additive bias (0 or -inf) broadcastable to `[batch, heads, queries, keys]`; used by the
    /// training crate's attention annealing.
    Bias(Tensor),
}

/// Keys and values of past positions, one entry per layer, for causal generation.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            layers: vec![None; n_layer],
            len: 0,
        }
    }
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }
}

/// A GPT-2 / DiffuGPT model.
#[derive(Clone, Debug)]
pub struct Gpt2 {
    pub cfg: ModelConfig,
    pub ids: SpecialIds,
    /// Token embedding `[vocab, n_embd]`.
    pub wte: Tensor,
    /// Position embedding `[n_positions, n_embd]`.
    pub wpe: Tensor,
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
    /// Untied LM head `[vocab, n_embd]`; `None` means tied to `wte`.
    pub lm_head: Option<Tensor>,
    /// Use only ops with a backward pass (the training crate sets this).
    pub differentiable: bool,
    /// Use candle's plain ops instead of the fused CPU kernels (the reference path in tests).
    pub reference_ops: bool,
}

impl Gpt2 {
    pub fn device(&self) -> &Device {
        self.wte.device()
    }

    /// The output projection `[vocab, n_embd]`.
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }

    fn layer_norm(&self, x: &Tensor, ln: &LayerNorm) -> Result<Tensor> {
        let eps = self.cfg.layer_norm_eps as f32;
        profile::time(Op::LayerNorm, || {
            if self.fast_cpu() {
                if let Some(y) = crate::cpu_kernels::layer_norm(x, &ln.weight, &ln.bias, eps)? {
                    return Ok(y);
                }
            }
            Ok(if self.differentiable {
                candle_nn::ops::layer_norm_slow(x, &ln.weight, &ln.bias, eps)?
            } else {
                candle_nn::ops::layer_norm(x, &ln.weight, &ln.bias, eps)?
            })
        })
    }

    /// Whether the fused in-place CPU kernels apply (f32 on the CPU, no autograd needed).
    fn fast_cpu(&self) -> bool {
        !self.differentiable
            && !self.reference_ops
            && self.wpe.device().is_cpu()
            && self.wpe.dtype() == DType::F32
    }

    /// The format the CPU forward keeps its projections and head in
    /// ([`Gpt2::pack_for_cpu_as`]).
    pub fn weight_format(&self) -> crate::cpu_quant::WeightFormat {
        crate::cpu_kernels::weight_format(self.head())
    }

    /// Whether a head-shaped weight (the token embedding, the head) is held as
    /// [`crate::cpu_kernels::encode_rows`] left it (the f32 strips, bf16 or int8) rather than
    /// as plain `[vocab, n_embd]` rows in the model's dtype.
    fn is_encoded(&self, t: &Tensor) -> bool {
        t.rank() != 2 || t.dtype() != self.wpe.dtype()
    }

    /// Checks token ids against the vocabulary and the position table before they reach an
    /// embedding lookup (an out-of-range id would otherwise be a backend error or worse).
    pub fn check_ids(&self, ids: &[u32], pos_offset: usize) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::Prompt(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.cfg.vocab_size
            )));
        }
        if ids.is_empty() {
            return Err(Error::Prompt("empty token sequence".into()));
        }
        if pos_offset + ids.len() > self.cfg.n_positions {
            return Err(Error::Prompt(format!(
                "{} positions exceed the model's context of {}",
                pos_offset + ids.len(),
                self.cfg.n_positions
            )));
        }
        Ok(())
    }

    /// Final hidden states `[batch, T, n_embd]` (after `ln_f`) for `ids` `[batch, T]` (u32).
    ///
    /// `pos_offset` is the position of the first id (non-zero only with a KV cache).
    pub fn hidden(
        &self,
        ids: &Tensor,
        mask: &AttnMask,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let pos_offset = cache.as_ref().map_or(0, |c| c.len);
        if pos_offset + t > self.cfg.n_positions {
            return Err(Error::Prompt(format!(
                "{} positions exceed the model's context of {}",
                pos_offset + t,
                self.cfg.n_positions
            )));
        }
        let e = self.cfg.n_embd;
        let mut x = profile::time(Op::Embed, || -> Result<Tensor> {
            let tok = if !self.is_encoded(&self.wte) {
                self.wte.index_select(&ids.flatten_all()?, 0)?
            } else {
                // Strips or bf16 / int8 ([`Gpt2::pack_for_cpu_as`]): decode the looked-up rows.
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                crate::cpu_kernels::embed_rows(&self.wte, &ids, e, self.cfg.vocab_size)?
            }
            .reshape((b, t, e))?;
            let pos = self.wpe.narrow(0, pos_offset, t)?;
            Ok(tok.broadcast_add(&pos)?)
        })?;
        let causal_bias = match mask {
            AttnMask::Causal if t > 1 => Some(causal_bias(t, pos_offset, x.device())?),
            _ => None,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
            x = self.block_forward(block, &x, mask, causal_bias.as_ref(), layer_cache)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.layer_norm(&x, &self.ln_f)
    }

    fn block_forward(
        &self,
        blk: &Block,
        x: &Tensor,
        mask: &AttnMask,
        causal_bias: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let h = self.layer_norm(x, &blk.ln_1)?.reshape((b * t, e))?;
        let qkv = profile::time(Op::Qkv, || self.linear(&h, &blk.c_attn_w, &blk.c_attn_b))?;
        let y = profile::time(Op::Attention, || {
            self.attention(&qkv, b, t, mask, causal_bias, cache)
        })?;
        self.block_tail(blk, x, &y)
    }

    /// Attention over `qkv` `[b * t, 3 * e]`: `[b * t, e]`, before the output projection.
    fn attention(
        &self,
        qkv: &Tensor,
        b: usize,
        t: usize,
        mask: &AttnMask,
        causal_bias: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let e = self.cfg.n_embd;
        let (nh, hd) = (self.cfg.n_head, self.cfg.head_dim());
        let fused_mask = match mask {
            AttnMask::Bidirectional => Some(false),
            AttnMask::Causal => Some(true),
            AttnMask::Bias(_) => None,
        };
        if let (true, None, Some(causal)) = (self.fast_cpu(), &cache, fused_mask) {
            return crate::cpu_kernels::fused_attention(qkv, b, t, nh, causal);
        }
        let qkv = qkv.reshape((b, t, 3, nh, hd))?.permute((2, 0, 3, 1, 4))?; // [3, b, nh, t, hd]
        let q = qkv.get(0)?.contiguous()?;
        let mut k = qkv.get(1)?.contiguous()?;
        let mut v = qkv.get(2)?.contiguous()?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let scale = 1.0 / (hd as f64).sqrt();
        let fast = self.fast_cpu();
        let mut att = q.matmul(&k.t()?)?; // [b, nh, t, s]
        if !fast {
            att = (att * scale)?;
        }
        let bias = match mask {
            AttnMask::Bidirectional => None,
            AttnMask::Causal => causal_bias,
            AttnMask::Bias(bias) => Some(bias),
        };
        if let Some(bias) = bias {
            // The bias is 0 or -inf, so adding it before or after the scale is the same.
            att = att.broadcast_add(bias)?;
        }
        let att = if fast {
            crate::cpu_kernels::scaled_softmax_inplace(att, scale as f32)?
        } else if self.differentiable {
            // candle-nn's fused `softmax_last_dim` has no backward: under it no gradient reaches
            // the queries and keys (their weights never trained). The composed softmax has one.
            candle_nn::ops::softmax(&att, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&att)?
        };
        Ok(att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, e))?)
    }

    /// Attention output projection, residual, MLP, residual. `y` is `[b * t, e]`.
    fn block_tail(&self, blk: &Block, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let fast = self.fast_cpu();
        let y = profile::time(Op::AttnProj, || {
            self.linear(y, &blk.attn_proj_w, &blk.attn_proj_b)
        })?
        .reshape((b, t, e))?;
        let x = profile::time(Op::Residual, || self.residual(x, y))?;
        let h = self.layer_norm(&x, &blk.ln_2)?.reshape((b * t, e))?;
        let m = profile::time(Op::MlpUp, || -> Result<Tensor> {
            Ok(match self.cfg.activation {
                Activation::GeluTanh if fast => {
                    let n = blk.c_fc_b.elem_count();
                    let y = fast_matmul(&h, &blk.c_fc_w, None, n)?;
                    crate::cpu_kernels::bias_gelu_inplace(y, &blk.c_fc_b)?
                }
                Activation::GeluTanh => self.linear(&h, &blk.c_fc_w, &blk.c_fc_b)?.gelu()?,
                Activation::GeluErf => self.linear(&h, &blk.c_fc_w, &blk.c_fc_b)?.gelu_erf()?,
            })
        })?;
        let m = profile::time(Op::MlpDown, || {
            self.linear(&m, &blk.mlp_proj_w, &blk.mlp_proj_b)
        })?
        .reshape((b, t, e))?;
        profile::time(Op::Residual, || self.residual(&x, m))
    }

    /// `x + y` for the residual connections: on the fast path into `y` (the fresh output of a
    /// projection) instead of a new tensor.
    fn residual(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        if self.fast_cpu() && x.is_contiguous() && y.is_contiguous() {
            return crate::cpu_kernels::add_inplace(y, x);
        }
        Ok((x + y)?)
    }

    /// Logits `[rows, vocab]` for hidden states `[rows, n_embd]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        profile::time(Op::Head, || self.head_logits(hidden))
    }

    fn head_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        if self.is_encoded(self.head()) {
            // Strips or bf16 / int8 ([`Gpt2::pack_for_cpu_as`]): the strip / decoding head
            // kernels when they run, else the decoded rows through the plain path.
            let n = self.cfg.vocab_size;
            if self.fast_cpu() && crate::cpu_gemm::available() {
                return crate::cpu_kernels::encoded_head_matmul(hidden, self.head(), n);
            }
            let head = crate::cpu_kernels::decode_rows(self.head(), self.cfg.n_embd, n)?;
            return Ok(hidden.matmul(&head.t()?)?);
        }
        if self.fast_cpu() {
            if let Some(y) = crate::cpu_kernels::weights_matmul(hidden, self.head(), None, true)? {
                return Ok(y);
            }
        }
        Ok(hidden.matmul(&self.head().t()?)?)
    }

    /// `x @ w + b`, through the kernels of [`crate::cpu_gemm`] on the fast path. `w` may be
    /// packed ([`Gpt2::pack_for_cpu`]); off the fast path (reference ops, autograd) it is then
    /// unpacked for the call.
    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.fast_cpu() {
            return fast_matmul(x, w, Some(b), b.elem_count());
        }
        linear(x, &plain_weight(w, b)?, b)
    }

    /// Convenience: full logits `[T, vocab]` for one sequence (row i from hidden state i).
    pub fn forward_logits(&self, ids: &[u32], mask: &AttnMask) -> Result<Tensor> {
        self.check_ids(ids, 0)?;
        let t = Tensor::from_slice(ids, (1, ids.len()), self.device())?;
        let h = self.hidden(&t, mask, None)?.squeeze(0)?;
        self.logits(&h)
    }

    /// Estimated peak working memory (bytes, beyond the weights) of one forward over `batch`
    /// sequences of `t` positions plus the decoder's logit chunks: activations (about 12 x n_embd
    /// floats per position live at once), the attention scores (a `t x t` block per concurrent head
    /// on the fused path, every head's on the reference path) and [`LOGIT_CHUNK`] rows of logits.
    /// Saturating.
    pub fn forward_bytes(&self, batch: usize, t: usize) -> u64 {
        let (b, t) = (batch as u64, t as u64);
        let (e, h, v) = (
            self.cfg.n_embd as u64,
            self.cfg.n_head as u64,
            self.cfg.vocab_size as u64,
        );
        let m = u64::saturating_mul;
        let act = m(m(m(b, t), 12), e);
        let heads = if self.fast_cpu() {
            rayon::current_num_threads() as u64
        } else {
            m(b, h)
        };
        let scores = m(m(m(heads, t), t), 2);
        let logits = m(m(LOGIT_CHUNK as u64, v), 2);
        m(act.saturating_add(scores).saturating_add(logits), 4)
    }

    /// Bytes the weights take as held (f32, or the bf16 / int8 formats of
    /// [`Gpt2::pack_for_cpu_as`], padding of the packed strips included).
    pub fn weight_bytes(&self) -> u64 {
        let ln = |l: &LayerNorm| [l.weight.clone(), l.bias.clone()];
        let mut all = vec![self.wte.clone(), self.wpe.clone()];
        for b in &self.blocks {
            all.extend(ln(&b.ln_1));
            all.extend(ln(&b.ln_2));
            all.extend([
                b.c_attn_w.clone(),
                b.c_attn_b.clone(),
                b.attn_proj_w.clone(),
                b.attn_proj_b.clone(),
                b.c_fc_w.clone(),
                b.c_fc_b.clone(),
                b.mlp_proj_w.clone(),
                b.mlp_proj_b.clone(),
            ]);
        }
        all.extend(ln(&self.ln_f));
        all.extend(self.lm_head.clone());
        all.iter()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum()
    }

    /// Number of parameters actually held (an untied head counts).
    pub fn param_count(&self) -> u64 {
        let head = self.lm_head.as_ref().map_or(0, |_| {
            (self.cfg.vocab_size * self.cfg.n_embd) as u64 // whatever format it is held in
        });
        self.cfg.param_count() + head
    }

    /// All weights as (canonical name, tensor) pairs in a fixed order. Canonical names are the
    /// DiffuGPT ones without the `denoise_model.` prefix (`wte`, `h.0.ln_1.weight`, ...). Packed
    /// projections ([`Gpt2::pack_for_cpu`]) come back in their `[in, out]` layout (a copy).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let e = self.cfg.n_embd;
        let mut out = vec![
            (
                "wte.weight".to_string(),
                crate::cpu_kernels::decode_rows(&self.wte, e, self.cfg.vocab_size)?,
            ),
            ("wpe.weight".to_string(), self.wpe.clone()),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = |s: &str| format!("h.{i}.{s}");
            out.extend([
                (p("ln_1.weight"), b.ln_1.weight.clone()),
                (p("ln_1.bias"), b.ln_1.bias.clone()),
                (
                    p("attn.c_attn.weight"),
                    plain_weight(&b.c_attn_w, &b.c_attn_b)?,
                ),
                (p("attn.c_attn.bias"), b.c_attn_b.clone()),
                (
                    p("attn.c_proj.weight"),
                    plain_weight(&b.attn_proj_w, &b.attn_proj_b)?,
                ),
                (p("attn.c_proj.bias"), b.attn_proj_b.clone()),
                (p("ln_2.weight"), b.ln_2.weight.clone()),
                (p("ln_2.bias"), b.ln_2.bias.clone()),
                (p("mlp.c_fc.weight"), plain_weight(&b.c_fc_w, &b.c_fc_b)?),
                (p("mlp.c_fc.bias"), b.c_fc_b.clone()),
                (
                    p("mlp.c_proj.weight"),
                    plain_weight(&b.mlp_proj_w, &b.mlp_proj_b)?,
                ),
                (p("mlp.c_proj.bias"), b.mlp_proj_b.clone()),
            ]);
        }
        out.push(("ln_f.weight".into(), self.ln_f.weight.clone()));
        out.push(("ln_f.bias".into(), self.ln_f.bias.clone()));
        if let Some(h) = &self.lm_head {
            out.push((
                "lm_head.weight".into(),
                crate::cpu_kernels::decode_rows(h, e, self.cfg.vocab_size)?,
            ));
        }
        Ok(out)
    }

    /// Whether the block projections are in [`crate::cpu_gemm::pack_nn`]'s layout.
    pub fn is_packed(&self) -> bool {
        self.blocks.iter().any(|b| {
            [&b.c_attn_w, &b.attn_proj_w, &b.c_fc_w, &b.mlp_proj_w]
                .iter()
                .any(|w| w.rank() == 3)
        })
    }

    /// Rewrites the four projection weights of every block, in place and one at a time (no
    /// second copy of the model), into the strip-major layout that the CPU kernels stream
    /// contiguously ([`crate::cpu_gemm::pack_nn`]): 10-30% faster projections on short canvases,
    /// bitwise the same hidden states. The head (the token embedding when tied) goes into the
    /// same layout as the `[n_embd, vocab]` weight it multiplies as, so that it runs on the same
    /// kernels (0.66x the time of the rows' dot tiles at 64 rows, 0.63x at one row on the Xeon
    /// of benches/README; logits within float rounding of the rows', not bitwise); this one
    /// tensor is converted through a copy here ([`crate::Model::load`] lays it out in place as
    /// it reads it instead). Only for f32 inference on a CPU with our kernels (AVX2 or AVX-512;
    /// see [`crate::cpu_gemm::isa`]); returns whether the model is packed. The packed tensors
    /// have shape `[ceil(out / 32), in, 32]`; everything that reads weights by name
    /// ([`Gpt2::named_tensors`], [`Gpt2::to_dtype`], saving, GPU upload) gets the `[in, out]`
    /// (head: `[vocab, n_embd]`) layout back, and the non-fused paths unpack per call.
    pub fn pack_for_cpu(&mut self) -> Result<bool> {
        self.pack_for_cpu_as(crate::cpu_quant::WeightFormat::F32)
    }

    /// [`Gpt2::pack_for_cpu`] with the projections, and the head (the token embedding when
    /// tied), stored in `format` ([`crate::cpu_quant`]): bf16 halves their memory, int8 takes
    /// 0.28x of f32; the forward decodes them block by block into the f32 kernels. One tensor
    /// at a time, in place. Without our kernels (see [`crate::cpu_gemm::isa`]) a compressed
    /// format is refused (`Error::Config`): nothing else would read it fast. Biases, LayerNorms
    /// and the position table stay f32.
    pub fn pack_for_cpu_as(&mut self, format: crate::cpu_quant::WeightFormat) -> Result<bool> {
        use crate::cpu_quant::WeightFormat;
        let plain_f32 = !self.differentiable
            && self.device().is_cpu()
            && self.wte.dtype() == DType::F32
            && self.wpe.dtype() == DType::F32;
        if format != WeightFormat::F32 {
            if !plain_f32 || !crate::cpu_gemm::available() {
                return Err(Error::Config(format!(
                    "{} weights need an f32 model for inference on a CPU with the AVX2 or AVX-512 kernels (kernels here: {})",
                    format.name(),
                    crate::cpu_gemm::isa().name()
                )));
            }
            for d in [self.cfg.n_embd, self.cfg.n_inner] {
                if format == WeightFormat::Int8 && !d.is_multiple_of(crate::cpu_quant::QK) {
                    return Err(Error::Config(format!(
                        "int8 weights need n_embd and n_inner to be multiples of {}; this model has {d}",
                        crate::cpu_quant::QK
                    )));
                }
            }
        }
        if !plain_f32 || !crate::cpu_gemm::available() {
            return Ok(self.is_packed());
        }
        for b in &mut self.blocks {
            for w in [
                &mut b.c_attn_w,
                &mut b.attn_proj_w,
                &mut b.c_fc_w,
                &mut b.mlp_proj_w,
            ] {
                if w.rank() == 2 {
                    if let Some(p) = crate::cpu_kernels::pack_weight(w, format)? {
                        *w = p;
                    }
                }
            }
        }
        for t in [Some(&mut self.wte), self.lm_head.as_mut()]
            .into_iter()
            .flatten()
        {
            // Rank 2: not encoded yet (packing twice leaves the first encoding).
            if t.rank() == 2 {
                if let Some(h) = crate::cpu_kernels::encode_rows(t, format)? {
                    *t = h;
                }
            }
        }
        Ok(self.is_packed())
    }

    /// A copy with every projection in the plain `[in, out]` layout and the embedding / head in
    /// f32 (for the GPU upload and anything else that reads weights directly).
    pub fn unpacked(&self) -> Result<Gpt2> {
        let mut m = self.clone();
        for b in &mut m.blocks {
            for (w, bias) in [
                (&mut b.c_attn_w, &b.c_attn_b),
                (&mut b.attn_proj_w, &b.attn_proj_b),
                (&mut b.c_fc_w, &b.c_fc_b),
                (&mut b.mlp_proj_w, &b.mlp_proj_b),
            ] {
                *w = plain_weight(w, bias)?;
            }
        }
        let e = m.cfg.n_embd;
        m.wte = crate::cpu_kernels::decode_rows(&m.wte, e, m.cfg.vocab_size)?;
        if let Some(h) = &mut m.lm_head {
            *h = crate::cpu_kernels::decode_rows(h, e, m.cfg.vocab_size)?;
        }
        Ok(m)
    }

    /// Builds a model from canonical-name tensors (see [`Gpt2::named_tensors`]); shapes must match
    /// `cfg` (the loader checks them first with precise errors).
    pub fn from_named(
        cfg: ModelConfig,
        ids: SpecialIds,
        mut get: impl FnMut(&str) -> Result<Tensor>,
        untied_head: bool,
    ) -> Result<Self> {
        let ln = |get: &mut dyn FnMut(&str) -> Result<Tensor>, p: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: get(&format!("{p}.weight"))?,
                bias: get(&format!("{p}.bias"))?,
            })
        };
        let wte = get("wte.weight")?;
        let wpe = get("wpe.weight")?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("h.{i}.{s}");
            blocks.push(Block {
                ln_1: ln(&mut get, &p("ln_1"))?,
                c_attn_w: get(&p("attn.c_attn.weight"))?,
                c_attn_b: get(&p("attn.c_attn.bias"))?,
                attn_proj_w: get(&p("attn.c_proj.weight"))?,
                attn_proj_b: get(&p("attn.c_proj.bias"))?,
                ln_2: ln(&mut get, &p("ln_2"))?,
                c_fc_w: get(&p("mlp.c_fc.weight"))?,
                c_fc_b: get(&p("mlp.c_fc.bias"))?,
                mlp_proj_w: get(&p("mlp.c_proj.weight"))?,
                mlp_proj_b: get(&p("mlp.c_proj.bias"))?,
            });
        }
        let ln_f = ln(&mut get, "ln_f")?;
        let lm_head = if untied_head {
            Some(get("lm_head.weight")?)
        } else {
            None
        };
        Ok(Gpt2 {
            cfg,
            ids,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            differentiable: false,
            reference_ops: false,
        })
    }

    /// Builds a model whose every tensor starts as zeros of its canonical shape and is then filled
    /// by `fill(canonical_name, data)`. The one constructor behind random init and the hand-built
    /// models with known outputs that tests use.
    pub fn from_fill(
        cfg: ModelConfig,
        ids: SpecialIds,
        untied_head: bool,
        device: &Device,
        mut fill: impl FnMut(&str, &mut [f32]),
    ) -> Result<Self> {
        cfg.validate()?;
        ids.validate(cfg.vocab_size)?;
        let shapes = canonical_shapes(&cfg, untied_head);
        let mut make = |name: &str| -> Result<Tensor> {
            let shape = &shapes
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| Error::MissingTensor(name.to_string()))?
                .1;
            let mut data = vec![0f32; shape.iter().product()];
            fill(name, &mut data);
            Ok(Tensor::from_vec(data, shape.as_slice(), device)?)
        };
        Gpt2::from_named(cfg, ids, &mut make, untied_head)
    }

    /// A randomly initialised model (GPT-2's init: N(0, 0.02), residual projections scaled by
    /// 1/sqrt(2 n_layer), LayerNorm at identity). Deterministic in `seed`; used by tests, benchmarks
    /// and training from scratch.
    pub fn random(cfg: ModelConfig, ids: SpecialIds, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = crate::rng::Rng::new(seed);
        let resid = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
        Gpt2::from_fill(cfg, ids, false, device, |name, data| {
            if name.contains("ln") && name.ends_with("weight") {
                data.fill(1.0);
            } else if !name.ends_with("bias") {
                let std = if name.ends_with("c_proj.weight") {
                    resid
                } else {
                    0.02
                };
                data.iter_mut().for_each(|v| *v = rng.normal() * std);
            }
        })
    }

    /// Converts every weight to `dtype` (e.g. BF16 on a GPU).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let named = self.named_tensors()?;
        let mut get = |n: &str| -> Result<Tensor> {
            let t = &named
                .iter()
                .find(|(k, _)| k == n)
                .ok_or_else(|| Error::MissingTensor(n.into()))?
                .1;
            Ok(t.to_dtype(dtype)?)
        };
        let mut m = Gpt2::from_named(self.cfg.clone(), self.ids, &mut get, self.lm_head.is_some())?;
        m.differentiable = self.differentiable;
        m.reference_ops = self.reference_ops;
        Ok(m)
    }
}

/// Canonical tensor names and shapes for a config (in [`Gpt2::named_tensors`] order).
pub fn canonical_shapes(cfg: &ModelConfig, untied_head: bool) -> Vec<(String, Vec<usize>)> {
    let (e, i, v, p) = (cfg.n_embd, cfg.n_inner, cfg.vocab_size, cfg.n_positions);
    let mut out = vec![
        ("wte.weight".to_string(), vec![v, e]),
        ("wpe.weight".to_string(), vec![p, e]),
    ];
    for l in 0..cfg.n_layer {
        let n = |s: &str| format!("h.{l}.{s}");
        out.extend([
            (n("ln_1.weight"), vec![e]),
            (n("ln_1.bias"), vec![e]),
            (n("attn.c_attn.weight"), vec![e, 3 * e]),
            (n("attn.c_attn.bias"), vec![3 * e]),
            (n("attn.c_proj.weight"), vec![e, e]),
            (n("attn.c_proj.bias"), vec![e]),
            (n("ln_2.weight"), vec![e]),
            (n("ln_2.bias"), vec![e]),
            (n("mlp.c_fc.weight"), vec![e, i]),
            (n("mlp.c_fc.bias"), vec![i]),
            (n("mlp.c_proj.weight"), vec![i, e]),
            (n("mlp.c_proj.bias"), vec![e]),
        ]);
    }
    out.push(("ln_f.weight".into(), vec![e]));
    out.push(("ln_f.bias".into(), vec![e]));
    if untied_head {
        out.push(("lm_head.weight".into(), vec![v, e]));
    }
    out
}

/// The decoder produces rows of logits in chunks of this many, so a 1024-slot canvas never holds
/// 1024 x 50257 floats at once (128 rows of GPT-2 logits: 26 MB). Every chunk reads the whole LM
/// head (154 MB in f32) once, so fewer, larger chunks are faster: 128 rows run the head at ~320
/// GFLOP/s on the AVX-512 path against ~190 at 32.
pub const LOGIT_CHUNK: usize = 128;

/// A projection weight in its `[in, out]` layout: itself, or unpacked (a copy) when
/// [`Gpt2::pack_for_cpu`] packed it; `bias` gives the number of output columns.
fn plain_weight(w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if w.rank() == 3 {
        crate::cpu_kernels::unpack_weight(w, bias.elem_count())
    } else {
        Ok(w.clone())
    }
}

fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(w)?.broadcast_add(b)?)
}

/// `x @ w (+ bias)` on the fast CPU path, `n` output columns: the pre-packed kernels for a
/// packed `w`, the in-place ones for a plain `[in, out]` one, candle's matmul where neither
/// applies (no AVX2/AVX-512 kernels, too few rows).
fn fast_matmul(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, n: usize) -> Result<Tensor> {
    if w.rank() == 3 {
        return crate::cpu_kernels::prepacked_matmul(x, w, bias, n);
    }
    if let Some(y) = crate::cpu_kernels::weights_matmul(x, w, bias, false)? {
        return Ok(y);
    }
    match bias {
        Some(b) => linear(x, w, b),
        None => Ok(x.matmul(w)?),
    }
}

/// `[t, offset + t]` additive mask: 0 where key <= query, -inf after.
fn causal_bias(t: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let s = offset + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|q| {
            (0..s).map(move |k| {
                if k <= q + offset {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(data, (t, s), device)?)
}
