//! Hand-built models with known logits, shared by the decoding, CLI and C API tests.
//!
//! A *table model* has identity blocks (zero projections), so the final hidden state of position
//! r depends only on r and on whether the token there is the mask: the embedding of position r is
//! 10 e_r, the mask token's is 10 e_MASKDIM and every other token's is 10 e_TOKDIM. Every row then
//! holds exactly two 10s, so `ln_f` (with a bias that cancels the mean) maps it to
//! c (e_r + e_tok) with the same c for every row, and the untied head turns that into chosen
//! logits: `rows[r]` for position r, plus `after_revealed` when the token at r is not the mask.
//! Because the token for canvas slot j is read from row p - 1 (the DiffuGPT shift), slot j's
//! logits change when slot j - 1 is revealed: a model whose confidences react to a neighbour.
#![allow(dead_code)]

use std::path::Path;

use candle_core::Device;
use diffugpt::config::{ModelConfig, SpecialIds};
use diffugpt::weights::{Layout, SaveDtype};
use diffugpt::Gpt2;

pub const V: usize = 97;
pub const EOS: u32 = 96;
pub const MASK: u32 = 95;
pub const PAD: u32 = 94;
/// Embedding width; positions use dims 0..N_POS, the token dims are the last two.
pub const E: usize = 80;
pub const N_POS: usize = 72;
const MASK_DIM: usize = E - 2;
const TOK_DIM: usize = E - 1;

/// Logits of a table model (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// `rows[r]`: (token, logit) pairs of row r; every other token has logit 0.
    pub rows: Vec<Vec<(u32, f32)>>,
    /// Added to a row whose own token is not the mask.
    pub after_revealed: Vec<(u32, f32)>,
    pub pad: Option<u32>,
}

impl Table {
    /// Row r's argmax is `targets[r]` (logit 12 - r / 16, every other token 0). Earlier rows
    /// are surer, so the confidence strategies reveal in canvas order: equal logits would tie
    /// only up to float noise (`ln_f`'s bias cancels the mean to within an ulp, not exactly).
    pub fn argmax(targets: &[u32]) -> Self {
        Table {
            rows: targets
                .iter()
                .enumerate()
                .map(|(r, &t)| vec![(t, 12.0 - r as f32 / 16.0)])
                .collect(),
            ..Default::default()
        }
    }

    pub fn build(&self) -> Gpt2 {
        assert!(self.rows.len() <= N_POS);
        let cfg = ModelConfig {
            n_layer: 1,
            n_head: 2,
            n_embd: E,
            n_inner: 4 * E,
            n_positions: N_POS,
            vocab_size: V,
            ..ModelConfig::tiny(V)
        };
        let eps = cfg.layer_norm_eps;
        let ids = SpecialIds {
            eos: EOS,
            mask: MASK,
            pad: self.pad,
        };
        // LayerNorm of a row with two 10s and E - 2 zeros: (x - mean) / sigma.
        let mean = 20.0 / E as f64;
        let sigma = (200.0 / E as f64 - mean * mean + eps).sqrt();
        let c = (10.0 / sigma) as f32;
        let shift = (mean / sigma) as f32;
        Gpt2::from_fill(cfg, ids, true, &Device::Cpu, |name, data| match name {
            "wpe.weight" => (0..N_POS).for_each(|r| data[r * E + r] = 10.0),
            "wte.weight" => (0..V).for_each(|t| {
                let dim = if t as u32 == MASK { MASK_DIM } else { TOK_DIM };
                data[t * E + dim] = 10.0;
            }),
            "ln_f.bias" => data.fill(shift),
            "lm_head.weight" => {
                for (r, row) in self.rows.iter().enumerate() {
                    for &(t, l) in row {
                        data[t as usize * E + r] += l / c;
                    }
                }
                for &(t, l) in &self.after_revealed {
                    data[t as usize * E + TOK_DIM] += l / c;
                }
            }
            n if n.contains("ln") && n.ends_with("weight") => data.fill(1.0),
            _ => {}
        })
        .unwrap()
    }
}

/// Prompt [1, 2, 3] -> prefix [EOS, 1, 2, 3]: canvas slot j is read from row 3 + j.
pub const PROMPT: [u32; 3] = [1, 2, 3];
pub const PROMPT_TEXT: &str = "t1 t2 t3";
/// Row of canvas slot j after [`PROMPT`].
pub const fn slot_row(j: usize) -> usize {
    PROMPT.len() + j
}

/// Row targets for [`PROMPT`]: the answer `10, 11, ..` (`answer_len` tokens), then `end` up to
/// the last position.
pub fn answer_targets(answer_len: usize, end: u32) -> Vec<u32> {
    (0..N_POS)
        .map(|r| match r.checked_sub(PROMPT.len()) {
            Some(j) if j < answer_len => 10 + j as u32,
            Some(_) => end,
            None => 0,
        })
        .collect()
}

/// The positional oracle: answer `10..15` then `end`.
pub fn oracle_model(end: u32, pad: Option<u32>) -> Gpt2 {
    Table {
        pad,
        ..Table::argmax(&answer_targets(5, end))
    }
    .build()
}

/// Slot j of the ranked model: its answer token 10 + j with logit `top`, a rival 40 + j with
/// `rival`, and `spread_n` shared tokens 60.. with `spread` (every other token 0). Revealing the
/// slot's left neighbour adds 2 to every answer token (its own and its rivals') in its row.
pub const RANKED: [(f32, f32, f32, usize); 6] = [
    (3.0, 0.0, 1.0, 8),
    (6.0, 5.0, 2.0, 8),
    (5.0, 4.0, 3.0, 1),
    (6.0, 5.0, 3.0, 8),
    (5.0, 4.0, 0.0, 1),
    (6.0, 1.0, 3.0, 8),
];

/// The ranked model's reveal order, one slot per step, for top-1 probability, margin and
/// negative entropy (worked out from the logits: softmax over the 96 tokens left once the mask
/// is banned). They differ from canvas order, from each other and from their reverses, and from
/// the order the step-1 scores alone would give (5, 1, 0, 3, 4, 2 for probability): a reveal
/// changes the right neighbour's row, so slot 2 follows slot 1.
pub const RANKED_ORDER: [[usize; 6]; 3] =
    [[5, 1, 2, 3, 4, 0], [5, 0, 1, 2, 3, 4], [1, 2, 3, 4, 5, 0]];

pub fn ranked_table() -> Table {
    let mut rows = vec![vec![]; slot_row(RANKED.len())];
    for (j, &(top, rival, spread, n)) in RANKED.iter().enumerate() {
        let row = &mut rows[slot_row(j)];
        row.push((10 + j as u32, top));
        row.push((40 + j as u32, rival));
        row.extend((0..n).map(|s| (60 + s as u32, spread)));
    }
    Table {
        rows,
        after_revealed: (0..RANKED.len()).map(|j| (10 + j as u32, 2.0)).collect(),
        pad: None,
    }
}

/// Slot j's end probability (eos) at step 1, with the answer token 10 + j (logit 8) as the
/// alternative. First-end CDF: .02 .118 .339 .570 .764 .906 .991 .
/// Predictions: argmax 5 (0.45 is below its answer token's 0.53), threshold 0.4 -> 4, 0.2 -> 2,
/// 0.5 -> 5; quantile 0.4 -> 3, 0.9 -> 5, 0.95 -> 6.
pub const P_END: [f64; 8] = [0.02, 0.1, 0.25, 0.35, 0.45, 0.6, 0.9, 0.99];

pub fn ramp_table() -> Table {
    let mut rows = vec![vec![]; slot_row(P_END.len())];
    for (j, &p) in P_END.iter().enumerate() {
        // softmax over the answer token (8), eos (e) and 95 tokens at 0: p_end = p.
        let e = (p * (8f64.exp() + 95.0) / (1.0 - p)).ln();
        rows[slot_row(j)] = vec![(10 + j as u32, 8.0), (EOS, e as f32)];
    }
    Table {
        rows,
        ..Default::default()
    }
}

/// Slot 0 prefers the mask id (95, logit 9) over 20 (8); slots 1-4 are 11..14; slot 5 is 94,
/// slot 6 is 93, then eos. Which of these end the answer, and which may be produced, depends
/// on the special ids.
pub fn ids_table(pad: Option<u32>) -> Table {
    let mut targets = answer_targets(5, EOS);
    targets[slot_row(5)] = 94;
    targets[slot_row(6)] = 93;
    let mut t = Table::argmax(&targets);
    t.rows[slot_row(0)] = vec![(95, 9.0), (20, 8.0)];
    t.pad = pad;
    t
}

/// Every one of the first 8 slots: 20 (logit 3) or 21 (2.5), everything else 0. At temperature
/// 5, 20 has 2% of the mass; a repetition penalty of 2 on 20 makes 21 the argmax.
pub fn sampling_table() -> Table {
    let mut rows = vec![vec![]; slot_row(8)];
    for j in 0..8 {
        rows[slot_row(j)] = vec![(20, 3.0), (21, 2.5)];
    }
    Table {
        rows,
        ..Default::default()
    }
}

/// Writes `model` (f32 weights + config.json) and a word-level tokenizer.json whose words are
/// `t0` .. `t96` (id = the number), so `"t1 t2 t3"` encodes to [`PROMPT`].
pub fn save_model(model: &Gpt2, dir: &Path) {
    diffugpt::weights::save(model, dir, Layout::DiffuGpt, SaveDtype::F32).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = (0..V)
        .map(|i| (format!("t{i}"), serde_json::Value::from(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}
