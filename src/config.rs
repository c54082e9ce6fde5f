//! Model hyper-parameters and special token ids.
//!
//! `config.json` uses Hugging Face GPT-2 names (`n_layer`, `n_head`, `n_embd`, ...). When it is absent
//! the shapes are inferred from the tensors. The vocabulary size always comes from the embedding rows:
//! DiffuGPT-M ships 50258 rows while its config says 50257.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// GPT-2's end-of-text id, which DiffuGPT also uses as EoS (and as BOS on the canvas).
pub const GPT2_EOS: u32 = 50256;
/// GPT-2's vocabulary size.
pub const GPT2_VOCAB: usize = 50257;
/// DiffuGPT-S reuses an existing token ("------------") as `[MASK]`.
pub const DIFFUGPT_S_MASK: u32 = 10541;
/// DiffuGPT-M appends `[MASK]` as a 50258th row.
pub const DIFFUGPT_M_MASK: u32 = 50257;

/// Largest model we agree to allocate (parameters). A config asking for more is refused before any
/// allocation instead of being OOM-killed. GPT-2 XL has 1.6 G parameters.
pub const MAX_PARAMS: u64 = 16_000_000_000;

/// The feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// tanh approximation (`gelu_new`, GPT-2's choice).
    GeluTanh,
    /// exact erf GELU (`gelu`).
    GeluErf,
}

impl Activation {
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluErf),
            other => Err(Error::Config(format!(
                "activation_function `{other}` is not supported (use gelu_new or gelu)"
            ))),
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::GeluTanh => "gelu_new",
            Activation::GeluErf => "gelu",
        }
    }
}

/// Largest single dimension (width, layers, positions, vocabulary) a config may ask for.
const MAX_DIM: usize = 1 << 24;

/// Resolved hyper-parameters of a GPT-2 shaped model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `n_layer`
    pub n_layer: usize,
    /// `n_head`
    pub n_head: usize,
    /// `n_embd`
    pub n_embd: usize,
    /// `n_inner` (defaults to 4 * n_embd)
    pub n_inner: usize,
    /// `n_positions`: the size of the learned position table, the longest canvas.
    pub n_positions: usize,
    /// Embedding rows (not the config's `vocab_size`).
    pub vocab_size: usize,
    /// `layer_norm_epsilon`
    pub layer_norm_eps: f64,
    /// `activation_function`
    pub activation: Activation,
}

impl ModelConfig {
    /// DiffuGPT-S / GPT-2 small: 12 x 768, 12 heads, 1024 positions, 50257 tokens.
    pub fn gpt2_small() -> Self {
        ModelConfig {
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            n_inner: 3072,
            n_positions: 1024,
            vocab_size: GPT2_VOCAB,
            layer_norm_eps: 1e-5,
            activation: Activation::GeluTanh,
        }
    }

    /// A tiny model with the full GPT-2 vocabulary, for fixtures and tests.
    pub fn tiny(vocab_size: usize) -> Self {
        ModelConfig {
            n_layer: 2,
            n_head: 2,
            n_embd: 32,
            n_inner: 128,
            n_positions: 256,
            vocab_size,
            layer_norm_eps: 1e-5,
            activation: Activation::GeluTanh,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Parameter count with a tied head (the head adds vocab * n_embd when untied).
    pub fn param_count(&self) -> u64 {
        // Saturating: absurd configs must compare as huge, never wrap into a small number.
        let (e, i, l) = (self.n_embd as u64, self.n_inner as u64, self.n_layer as u64);
        let (v, p) = (self.vocab_size as u64, self.n_positions as u64);
        let (m, a) = (u64::saturating_mul, u64::saturating_add);
        let attn = a(m(m(3, e), e), m(3, e));
        let block = [m(4, e), attn, a(m(e, e), e), a(m(e, i), i), a(m(i, e), e)]
            .into_iter()
            .fold(0, a);
        [m(v, e), m(p, e), m(l, block), m(2, e)]
            .into_iter()
            .fold(0, a)
    }

    /// Floating-point operations (multiply and add counted apart) of one bidirectional forward
    /// over `t` positions with logits for `logit_rows` rows: the four projections per layer,
    /// `q k^T` and `P v` over every (query, key) pair, and the LM head. LayerNorm, softmax and
    /// GELU (a few operations per activation, under 1% at GPT-2-small sizes) are left out, so
    /// `flops / time` is the rate of the matrix arithmetic the CPU must sustain.
    pub fn forward_flops(&self, t: usize, logit_rows: usize) -> f64 {
        use crate::forward_profile::Op;
        let layers: f64 = Op::all()
            .into_iter()
            .filter(|&op| op != Op::Head)
            .map(|op| self.op_flops(op, t, logit_rows))
            .sum();
        layers + self.op_flops(Op::Head, t, logit_rows)
    }

    /// The part of [`ModelConfig::forward_flops`] that `op` does, all layers together (0 for
    /// the ops without matrix arithmetic): what `diffugpt bench --profile` divides by each op's
    /// time.
    pub fn op_flops(&self, op: crate::forward_profile::Op, t: usize, logit_rows: usize) -> f64 {
        use crate::forward_profile::Op;
        let (e, i, l) = (self.n_embd as f64, self.n_inner as f64, self.n_layer as f64);
        let (t, v, r) = (t as f64, self.vocab_size as f64, logit_rows as f64);
        match op {
            Op::Qkv => l * 2.0 * t * e * 3.0 * e,
            Op::AttnProj => l * 2.0 * t * e * e,
            Op::MlpUp | Op::MlpDown => l * 2.0 * t * e * i,
            // q k^T and P v over every (query, key) pair.
            Op::Attention => l * 2.0 * 2.0 * t * t * e,
            Op::Head => 2.0 * r * e * v,
            Op::Embed | Op::LayerNorm | Op::Residual => 0.0,
        }
    }

    /// Checks that the numbers describe a model we can build.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("n_inner", self.n_inner),
            ("n_positions", self.n_positions),
            ("vocab_size", self.vocab_size),
        ];
        for (name, v) in fields {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::Config(format!(
                "n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            )));
        }
        if self.vocab_size > u32::MAX as usize / 2 {
            return Err(Error::Config(format!(
                "vocab_size {} is absurd",
                self.vocab_size
            )));
        }
        let eps = self.layer_norm_eps;
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(Error::Config(format!(
                "layer_norm_epsilon {eps} must be in (0, 1)"
            )));
        }
        // A dimension this large is named on its own: the saturated parameter count of such a
        // config (u64::MAX) would be a meaningless number in the message.
        let big = [
            ("n_embd", self.n_embd),
            ("n_inner", self.n_inner),
            ("n_positions", self.n_positions),
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
        ];
        if let Some((name, v)) = big.iter().find(|&&(_, v)| v > MAX_DIM) {
            return Err(Error::Config(format!(
                "{name} {v} is absurd (at most {MAX_DIM})"
            )));
        }
        let n = self.param_count();
        if n > MAX_PARAMS {
            // u64::MAX is the saturated count: the true one does not fit in 64 bits.
            let count = if n == u64::MAX {
                "more than 2^64".to_string()
            } else {
                n.to_string()
            };
            return Err(Error::Config(format!(
                "model would have {count} parameters; refusing to allocate more than {MAX_PARAMS}"
            )));
        }
        Ok(())
    }
}

/// The raw `config.json` (Hugging Face GPT-2 names). Unknown fields are ignored on purpose: real
/// checkpoints carry dozens of unrelated keys (task_specific_params, architectures, ...).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct HfConfig {
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
    pub n_inner: Option<usize>,
    pub n_positions: Option<usize>,
    pub vocab_size: Option<usize>,
    pub layer_norm_epsilon: Option<f64>,
    pub activation_function: Option<String>,
    pub eos_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// Not a GPT-2 key: written by this project's training crate.
    pub mask_token_id: Option<u32>,
    pub model_type: Option<String>,
}

impl HfConfig {
    pub fn parse(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))
    }

    /// The config.json this project writes for `cfg` and `ids`.
    pub fn from_model(cfg: &ModelConfig, ids: &SpecialIds) -> Self {
        HfConfig {
            n_layer: Some(cfg.n_layer),
            n_head: Some(cfg.n_head),
            n_embd: Some(cfg.n_embd),
            n_inner: Some(cfg.n_inner),
            n_positions: Some(cfg.n_positions),
            vocab_size: Some(cfg.vocab_size),
            layer_norm_epsilon: Some(cfg.layer_norm_eps),
            activation_function: Some(cfg.activation.hf_name().to_string()),
            eos_token_id: Some(ids.eos),
            bos_token_id: Some(ids.eos),
            pad_token_id: ids.pad,
            mask_token_id: Some(ids.mask),
            model_type: Some("gpt2".into()),
        }
    }
}

/// Token ids with a special meaning for decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialIds {
    /// End of text; also placed before the prompt as BOS.
    pub eos: u32,
    /// The `[MASK]` id that fills the canvas.
    pub mask: u32,
    /// Optional padding id that, like `eos`, marks the end of an answer (eospad fine-tuning).
    pub pad: Option<u32>,
}

/// User overrides for [`SpecialIds`]; `None` keeps the detected value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialIdOverrides {
    pub eos: Option<u32>,
    pub mask: Option<u32>,
    /// `Some(None)` removes a pad id the model declares.
    pub pad: Option<Option<u32>>,
}

impl SpecialIds {
    /// Resolves the ids: overrides, then config.json, then the DiffuGPT conventions
    /// (eos 50256; mask 10541 with 50257 rows, 50257 with 50258 or more rows).
    pub fn resolve(vocab: usize, hf: &HfConfig, ov: &SpecialIdOverrides) -> Result<Self> {
        if vocab == 0 {
            return Err(Error::Config("vocab_size must be positive".into()));
        }
        let default_eos = if vocab > GPT2_EOS as usize {
            GPT2_EOS
        } else {
            (vocab - 1) as u32
        };
        let default_mask = if vocab > DIFFUGPT_M_MASK as usize {
            DIFFUGPT_M_MASK
        } else if vocab > DIFFUGPT_S_MASK as usize {
            DIFFUGPT_S_MASK
        } else {
            // Small test vocabularies: the last id but one, next to eos.
            vocab.saturating_sub(2) as u32
        };
        let ids = SpecialIds {
            eos: ov.eos.or(hf.eos_token_id).unwrap_or(default_eos),
            mask: ov.mask.or(hf.mask_token_id).unwrap_or(default_mask),
            pad: match ov.pad {
                Some(p) => p,
                None => hf.pad_token_id,
            },
        };
        ids.validate(vocab)?;
        Ok(ids)
    }

    pub fn validate(&self, vocab: usize) -> Result<()> {
        let check = |name: &str, id: u32| {
            if id as usize >= vocab {
                Err(Error::Config(format!(
                    "{name} id {id} is outside the vocabulary of {vocab} tokens"
                )))
            } else {
                Ok(())
            }
        };
        check("eos", self.eos)?;
        check("mask", self.mask)?;
        if let Some(p) = self.pad {
            check("pad", p)?;
        }
        if self.mask == self.eos || Some(self.mask) == self.pad {
            return Err(Error::Config(format!(
                "mask id {} must differ from the end ids",
                self.mask
            )));
        }
        Ok(())
    }

    /// Whether `id` ends an answer (eos, or pad when the model has one).
    #[inline]
    pub fn is_end(&self, id: u32) -> bool {
        id == self.eos || Some(id) == self.pad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-op split adds up to the whole, and the whole is the documented formula (GPT-2
    /// small: 15.96 GFLOP at T = 64, 291.6 at T = 1024).
    #[test]
    fn op_flops_add_up_to_the_forward() {
        use crate::forward_profile::Op;
        let c = ModelConfig::gpt2_small();
        for (t, r) in [(64usize, 64usize), (1024, 1024), (100, 7), (5, 0)] {
            let (e, i, l, v) = (768f64, 3072f64, 12f64, 50257f64);
            let (tf, rf) = (t as f64, r as f64);
            let want =
                l * (2.0 * tf * (4.0 * e * e + 2.0 * e * i) + 4.0 * tf * tf * e) + 2.0 * rf * e * v;
            assert_eq!(c.forward_flops(t, r), want);
            let sum: f64 = Op::all().into_iter().map(|op| c.op_flops(op, t, r)).sum();
            assert!((sum - want).abs() <= want * 1e-12);
        }
        assert_eq!(c.forward_flops(64, 64), 15_963_095_040.0);
        assert_eq!(c.op_flops(Op::LayerNorm, 64, 64), 0.0);
    }

    #[test]
    fn forward_flops_of_gpt2_small() {
        let c = ModelConfig::gpt2_small();
        // Counted by hand for T = 1024: projections 12 x 2 x 1024 x (768 x 2304 + 768 x 768 +
        // 2 x 768 x 3072) = 173.9 G, attention 12 x 4 x 1024^2 x 768 = 38.65 G, head
        // 2 x 1024 x 768 x 50257 = 79.05 G.
        let want = 173_946_175_488.0 + 38_654_705_664.0 + 79_047_426_048.0;
        assert_eq!(c.forward_flops(1024, 1024), want);
        // No logits: the head drops out; T = 64 with every row: ~16.0 GFLOP.
        assert_eq!(c.forward_flops(1024, 0), want - 79_047_426_048.0);
        let f64_ = c.forward_flops(64, 64);
        assert!((f64_ / 1e9 - 15.96).abs() < 0.01, "{f64_}");
    }

    #[test]
    fn diffugpt_conventions() {
        let hf = HfConfig::default();
        let none = SpecialIdOverrides::default();
        let s = SpecialIds::resolve(50257, &hf, &none).unwrap();
        assert_eq!((s.eos, s.mask, s.pad), (50256, 10541, None));
        let m = SpecialIds::resolve(50258, &hf, &none).unwrap();
        assert_eq!(m.mask, 50257);
        let ov = SpecialIdOverrides {
            mask: Some(10541),
            pad: Some(Some(50257)),
            ..Default::default()
        };
        let p = SpecialIds::resolve(50258, &hf, &ov).unwrap();
        assert_eq!((p.mask, p.pad), (10541, Some(50257)));
        assert!(p.is_end(50257) && p.is_end(50256) && !p.is_end(10541));
        let bad = SpecialIdOverrides {
            pad: Some(Some(60000)),
            ..Default::default()
        };
        assert!(
            matches!(SpecialIds::resolve(50257, &hf, &bad), Err(Error::Config(m)) if m.contains("pad id 60000"))
        );
    }

    #[test]
    fn config_validation_errors() {
        let mut c = ModelConfig::gpt2_small();
        c.validate().unwrap();
        assert_eq!(c.param_count(), 124_439_808);
        c.n_head = 7;
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("not divisible")));
        let mut c = ModelConfig::gpt2_small();
        c.n_embd = 1 << 22;
        c.n_head = 1;
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("refusing")));
        // Absurd sizes are named, never reported as a saturated parameter count.
        let mut c = ModelConfig::gpt2_small();
        c.n_layer = usize::MAX;
        let m = c.validate().unwrap_err().to_string();
        assert!(
            m.contains(&format!("n_layer {} is absurd", usize::MAX)),
            "{m}"
        );
        let mut c = ModelConfig::gpt2_small();
        (c.n_layer, c.n_embd, c.n_inner, c.n_head) = (1 << 24, 1 << 24, 1 << 24, 1);
        let m = c.validate().unwrap_err().to_string();
        assert!(m.contains("more than 2^64 parameters"), "{m}");
        assert!(!m.contains(&u64::MAX.to_string()), "{m}");
        let mut c = ModelConfig::gpt2_small();
        c.layer_norm_eps = f64::NAN;
        assert!(c.validate().is_err());
        assert!(HfConfig::parse("{\"n_layer\": -3}").is_err());
        assert!(HfConfig::parse("{\"n_layer\": \"twelve\"}").is_err());
    }
}
