//! Likelihood-based quality: the diffusion ELBO (a perplexity bound) on held-out text, ARM
//! perplexity for causal models, and the quality of EoS-first vs fixed-length outputs.
//!
//! # Diffusion ELBO (DiffuGPT's masked cross-entropy estimate)
//!
//! For a sequence `x = [BOS] + tokens` with maskable positions `S` (every position after the BOS,
//! or after a prompt), the absorbing-state diffusion bound is
//!
//! ```text
//! -log p(x_S) <= E_{t ~ U(0,1]} E_{mask ~ Bernoulli(t)^S} [ (1/t) * sum_{j masked} CE_j ]
//! ```
//!
//! with `CE_j = -log p(x_j | masked input)` read from logits row `j - 1` (the DiffuGPT shift),
//! under bidirectional attention. We evaluate it at `K` fixed noise levels `t_k = k / K`
//! (`k = 1..=K`, so the last level masks everything); at each level every maskable position is
//! masked independently with probability `t_k`, the masks coming from a seeded generator. The
//! per-sequence bound is `mean_k (1/t_k) * sum_{masked} CE` (nats) and the reported per-token
//! bound is the total over sequences divided by the number of scored tokens; the perplexity bound
//! is its `exp`. The integrand `(1/t) E[sum CE]` equals `|S|` times the mean CE of a masked token
//! at noise `t`, which grows with `t` for a trained model, so right-endpoint levels err on the high
//! (conservative) side of the integral.
//!
//! # ARM perplexity
//!
//! Causal attention, next-token cross-entropy over every scored position (row `j - 1` predicts
//! `x_j`), `exp` of the mean.
//!
//! # Data
//!
//! `--data` is a token-file stem (see `data`; `<stem>.json` must exist) or a text file. A stream
//! is cut into consecutive windows of `seq_len - 1` tokens, each preceded by the BOS (the model's
//! eos id); a blocked file gives one sequence per block, up to and including its end token, scored
//! after its never-masked prefix for `padded` (the prompt of a pair) and after the BOS for
//! `mask-eos`. Text is split into passages (`.jsonl`/`.json`: the `text` field of each line;
//! otherwise at blank lines and `%` lines), tokenised, joined with eos as a stream.
//!
//! # EoS-first vs fixed outputs
//!
//! [`compare_outputs`] generates an answer for each prompt twice, with identical parameters and
//! seed except the length mode, and scores each answer with the model's own diffusion bound
//! conditioned on the prompt (`[BOS] + prompt + answer`, answer positions only, the same masks for
//! both modes so identical answers score identically); it also reports length agreement.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use diffugpt::rng::Rng;
use diffugpt::{
    AttnMask, GenerateParams, Gpt2, LengthMode, LengthPredictor, LoadOptions, Model, Session,
    Steps, Strategy, Tokenizer,
};
use serde::Serialize;

use crate::data::{header_path, Kind, TokenFile};
use crate::eval::lambada::{cell, environment_line, split_passages};
use crate::eval::report::{md_table, write_report, Environment};
use crate::plot::{line_chart, Series};

/// Which likelihood `eval ppl` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PplMode {
    /// Diffusion ELBO (bidirectional, masked CE weighted by 1/t).
    Diffusion,
    /// ARM perplexity (causal attention, next-token CE).
    Causal,
}

/// `clap` arguments of `eval ppl`.
#[derive(Clone, Debug, clap::Args)]
pub struct PplArgs {
    /// Model directory or model.safetensors
    #[arg(long)]
    pub model: PathBuf,
    /// Token-file stem (e.g. runs/data/test) or a text file (.txt, or .jsonl with "text")
    #[arg(long)]
    pub data: PathBuf,
    /// diffusion (ELBO bound) | causal (ARM perplexity)
    #[arg(long, value_enum, default_value_t = PplMode::Diffusion)]
    pub mode: PplMode,
    /// Noise levels t_k = k / levels (diffusion)
    #[arg(long, default_value_t = 8)]
    pub levels: usize,
    /// Sequences to score
    #[arg(long, default_value_t = 64)]
    pub max_seqs: usize,
    /// Positions per sequence, BOS included (at most the model's positions)
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Seed of the masks
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory for report.json, report.md and elbo_levels.png
    #[arg(long)]
    pub out: PathBuf,
}

/// `clap` arguments of `eval compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// Model directory or model.safetensors (with tokenizer.json next to it)
    #[arg(long)]
    pub model: PathBuf,
    /// Prompts, one per line (blank lines ignored)
    #[arg(long)]
    pub prompts: PathBuf,
    /// Canvas length (masked slots after the prompt)
    #[arg(long, default_value_t = 64)]
    pub canvas: usize,
    /// Denoising steps for the full canvas (EoS-first scales them to the cut canvas)
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// EoS-first length predictor (argmax, threshold:T, quantile:Q)
    #[arg(long, default_value = "quantile:0.9")]
    pub predictor: String,
    /// EoS-first end floor (0 = off)
    #[arg(long, default_value_t = diffugpt::decode::DEFAULT_END_FLOOR)]
    pub end_floor: f32,
    /// Noise levels of the answer scoring
    #[arg(long, default_value_t = 8)]
    pub levels: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory for report.json and report.md
    #[arg(long)]
    pub out: PathBuf,
    /// Use at most this many prompts
    #[arg(long)]
    pub max_prompts: Option<usize>,
}

/// `t_k = k / K`, `k = 1..=K`.
pub fn noise_levels(k: usize) -> Vec<f64> {
    (1..=k).map(|i| i as f64 / k as f64).collect()
}

/// One noise level's contribution.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LevelStat {
    pub t: f64,
    /// Positions masked at this level.
    pub masked: usize,
    /// Sum of the cross-entropies (nats) of the masked positions.
    pub ce_sum: f64,
}

/// The likelihood of one sequence.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SeqScore {
    /// Scored (maskable) tokens.
    pub n_tokens: usize,
    /// Upper bound on (diffusion) or value of (causal) the sequence NLL, in nats.
    pub nll: f64,
    /// Per level (diffusion only).
    pub levels: Vec<LevelStat>,
}

impl SeqScore {
    pub fn per_token(&self) -> f64 {
        self.nll / self.n_tokens.max(1) as f64
    }
}

/// Rows of logits are computed this many at a time.
const CE_CHUNK: usize = 64;

/// `-log softmax(row)[target]` in f64.
fn row_ce(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let s: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + s.ln() - row[target] as f64
}

/// Cross-entropies of `(row of hidden [rows, E], target)` pairs.
fn ce_rows(gpt: &Gpt2, hidden: &Tensor, pairs: &[(u32, u32)]) -> Result<Vec<f64>> {
    let v = gpt.cfg.vocab_size;
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(CE_CHUNK) {
        let rows: Vec<u32> = chunk.iter().map(|p| p.0).collect();
        let idx = Tensor::from_vec(rows, chunk.len(), hidden.device())?;
        let logits = gpt
            .logits(&hidden.index_select(&idx, 0)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (row, &(_, tgt)) in logits.chunks_exact(v).zip(chunk) {
            out.push(row_ce(row, tgt as usize));
        }
    }
    Ok(out)
}

fn check_seq(gpt: &Gpt2, seq: &[u32], scored_from: usize) -> Result<()> {
    gpt.check_ids(seq, 0)?;
    ensure!(
        scored_from >= 1 && scored_from < seq.len(),
        "nothing to score: scored_from {scored_from} in a sequence of {}",
        seq.len()
    );
    Ok(())
}

/// The diffusion bound of `seq` (`seq[0]` the BOS); positions `scored_from..` are maskable and
/// scored, earlier ones always visible. One batched forward pass over all levels; the masks come
/// from `rng` (per level, in position order).
pub fn diffusion_nll_bound(
    gpt: &Gpt2,
    seq: &[u32],
    scored_from: usize,
    levels: &[f64],
    rng: &mut Rng,
) -> Result<SeqScore> {
    check_seq(gpt, seq, scored_from)?;
    ensure!(!levels.is_empty(), "no noise levels");
    ensure!(
        levels.iter().all(|&t| t > 0.0 && t <= 1.0),
        "noise levels must be in (0, 1]: {levels:?}"
    );
    let t_len = seq.len();
    let mut input = Vec::with_capacity(levels.len() * t_len);
    // (flattened hidden row, target, level)
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let mut level_of: Vec<usize> = Vec::new();
    let mut stats: Vec<LevelStat> = levels
        .iter()
        .map(|&t| LevelStat {
            t,
            ..Default::default()
        })
        .collect();
    for (k, &t) in levels.iter().enumerate() {
        let mut x = seq.to_vec();
        for (j, slot) in x.iter_mut().enumerate().skip(scored_from) {
            if rng.next_f64() < t {
                pairs.push(((k * t_len + j - 1) as u32, *slot));
                level_of.push(k);
                *slot = gpt.ids.mask;
            }
        }
        input.extend(x);
    }
    // Counted from the draws: the data may itself contain the mask id.
    for &k in &level_of {
        stats[k].masked += 1;
    }
    if !pairs.is_empty() {
        let x = Tensor::from_vec(input, (levels.len(), t_len), gpt.device())?;
        let h = gpt
            .hidden(&x, &AttnMask::Bidirectional, None)?
            .reshape((levels.len() * t_len, gpt.cfg.n_embd))?;
        for (ce, &k) in ce_rows(gpt, &h, &pairs)?.into_iter().zip(&level_of) {
            stats[k].ce_sum += ce;
        }
    }
    let nll = stats.iter().map(|s| s.ce_sum / s.t).sum::<f64>() / levels.len() as f64;
    Ok(SeqScore {
        n_tokens: t_len - scored_from,
        nll,
        levels: stats,
    })
}

/// ARM negative log-likelihood of `seq[scored_from..]` under causal attention.
pub fn causal_nll(gpt: &Gpt2, seq: &[u32], scored_from: usize) -> Result<SeqScore> {
    check_seq(gpt, seq, scored_from)?;
    let x = Tensor::from_slice(seq, (1, seq.len()), gpt.device())?;
    let h = gpt.hidden(&x, &AttnMask::Causal, None)?.squeeze(0)?;
    let pairs: Vec<(u32, u32)> = (scored_from..seq.len())
        .map(|j| ((j - 1) as u32, seq[j]))
        .collect();
    let nll = ce_rows(gpt, &h, &pairs)?.into_iter().sum();
    Ok(SeqScore {
        n_tokens: pairs.len(),
        nll,
        levels: Vec::new(),
    })
}

/// A sequence to score: `ids[0]` is the BOS; positions `scored_from..` are scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalSeq {
    pub ids: Vec<u32>,
    pub scored_from: usize,
}

/// Consecutive windows of `seq_len - 1` tokens of `stream`, each after `bos`; a final partial
/// window is kept only when the stream holds no full one. At most `max` windows.
pub fn stream_windows(stream: &[u32], bos: u32, seq_len: usize, max: usize) -> Vec<EvalSeq> {
    let chunk = seq_len.saturating_sub(1).max(1);
    let full = stream.len() / chunk;
    stream
        .chunks(chunk)
        .filter(|c| c.len() == chunk || full == 0)
        .take(max)
        .map(|c| {
            let mut ids = Vec::with_capacity(c.len() + 1);
            ids.push(bos);
            ids.extend_from_slice(c);
            EvalSeq {
                ids,
                scored_from: 1,
            }
        })
        .collect()
}

/// The token-file stem `data` names, if any: `data` itself when `<data>.json` exists, or
/// `data` without `.json` when it is the header itself.
fn token_stem(data: &Path) -> Option<PathBuf> {
    if header_path(data).is_file() {
        return Some(data.to_path_buf());
    }
    let is_json = data.extension().is_some_and(|e| e == "json");
    let stem = data.with_extension("");
    (is_json && crate::data::bin_path(&stem).is_file()).then_some(stem)
}

/// Loads the sequences of `data` (see the module doc). Returns them with a description of the
/// source (`stream`, `padded`, `mask-eos` or `text`).
pub fn load_sequences(
    data: &Path,
    tok: Option<&Tokenizer>,
    bos: u32,
    seq_len: usize,
    max_seqs: usize,
) -> Result<(Vec<EvalSeq>, String)> {
    ensure!(
        seq_len >= 2,
        "seq_len {seq_len} is too small (BOS + 1 token)"
    );
    if let Some(stem) = token_stem(data) {
        let f = TokenFile::open(&stem)?;
        let kind = f.header().kind;
        if !kind.is_blocked() {
            return Ok((
                stream_windows(f.tokens(), bos, seq_len, max_seqs),
                kind.as_str().into(),
            ));
        }
        let mut out = Vec::new();
        for i in 0..f.n_blocks() {
            if out.len() >= max_seqs {
                break;
            }
            // A continuation block is text to its last position.
            let last = f.end_position(i).unwrap_or(f.block_len() - 1);
            let len = (last + 1).min(seq_len);
            let mut ids = f.block(i)[..len].to_vec();
            ids[0] = bos;
            let scored_from = match kind {
                Kind::Padded => (f.meta(i) as usize).max(1),
                _ => 1,
            };
            if scored_from < len {
                out.push(EvalSeq { ids, scored_from });
            }
        }
        return Ok((out, kind.as_str().into()));
    }
    if !data.is_file() {
        bail!(
            "{}: neither a token-file stem (no {}) nor a text file",
            data.display(),
            header_path(data).display()
        );
    }
    let tok = tok.context("raw text needs the model's tokenizer.json")?;
    let text =
        std::fs::read_to_string(data).with_context(|| format!("reading {}", data.display()))?;
    let json = matches!(
        data.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jsonl" | "json")
    );
    let docs: Vec<String> = if json {
        let mut v = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let j: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: invalid JSON", data.display(), i + 1))?;
            match j.get("text") {
                Some(serde_json::Value::String(s)) => v.push(s.clone()),
                _ => bail!(
                    "{} line {}: no string field \"text\"",
                    data.display(),
                    i + 1
                ),
            }
        }
        v
    } else {
        split_passages(&text)
    };
    let mut stream = Vec::new();
    for d in docs {
        let ids = tok.encode(&d)?;
        if !ids.is_empty() {
            stream.extend(ids);
            stream.push(bos);
        }
    }
    Ok((
        stream_windows(&stream, bos, seq_len, max_seqs),
        "text".into(),
    ))
}

/// Per-level totals over all sequences.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LevelSummary {
    pub t: f64,
    pub masked: usize,
    pub ce_sum: f64,
    /// `ce_sum / masked`.
    pub ce_per_masked: f64,
    /// `ce_sum / (t * n_tokens)`: this level's estimate of the per-token bound.
    pub term_per_token: f64,
}

/// The result of [`perplexity`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PplResult {
    pub mode: PplMode,
    pub n_seqs: usize,
    pub n_tokens: usize,
    /// Per-token NLL (causal) or its diffusion upper bound, in nats.
    pub nll_per_token: f64,
    /// `exp(nll_per_token)`.
    pub ppl: f64,
    /// Diffusion only.
    pub per_level: Vec<LevelSummary>,
}

/// Scores every sequence. Diffusion masks come from one generator seeded with `seed`, used in
/// sequence order.
pub fn perplexity(
    gpt: &Gpt2,
    seqs: &[EvalSeq],
    mode: PplMode,
    levels: &[f64],
    seed: u64,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<PplResult> {
    ensure!(!seqs.is_empty(), "no sequences to score");
    let mut rng = Rng::new(seed);
    let mut nll = 0.0;
    let mut n_tokens = 0;
    let mut per_level: Vec<LevelSummary> = match mode {
        PplMode::Diffusion => levels
            .iter()
            .map(|&t| LevelSummary {
                t,
                ..Default::default()
            })
            .collect(),
        PplMode::Causal => Vec::new(),
    };
    for s in seqs {
        let score = match mode {
            PplMode::Diffusion => {
                diffusion_nll_bound(gpt, &s.ids, s.scored_from, levels, &mut rng)?
            }
            PplMode::Causal => causal_nll(gpt, &s.ids, s.scored_from)?,
        };
        nll += score.nll;
        n_tokens += score.n_tokens;
        for (acc, l) in per_level.iter_mut().zip(&score.levels) {
            acc.masked += l.masked;
            acc.ce_sum += l.ce_sum;
        }
        if let Some(b) = bar {
            b.inc(1);
        }
    }
    for l in per_level.iter_mut() {
        l.ce_per_masked = if l.masked > 0 {
            l.ce_sum / l.masked as f64
        } else {
            f64::NAN
        };
        l.term_per_token = l.ce_sum / (l.t * n_tokens.max(1) as f64);
    }
    let nll_per_token = nll / n_tokens.max(1) as f64;
    Ok(PplResult {
        mode,
        n_seqs: seqs.len(),
        n_tokens,
        nll_per_token,
        ppl: nll_per_token.exp(),
        per_level,
    })
}

fn bar(len: usize, label: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{label} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}]"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// `report.json` of `eval ppl`.
#[derive(Clone, Debug, Serialize)]
pub struct PplReport {
    pub task: &'static str,
    pub model: PathBuf,
    pub data: PathBuf,
    /// `stream`, `padded`, `mask-eos` or `text`.
    pub source_kind: String,
    pub seq_len: usize,
    pub seed: u64,
    /// The noise levels (diffusion; empty for causal).
    pub levels: Vec<f64>,
    #[serde(flatten)]
    pub result: PplResult,
    /// Whether `nll_per_token`/`ppl` are upper bounds (diffusion) or exact (causal).
    pub is_bound: bool,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub plots: Vec<PathBuf>,
    /// Why a plot could not be drawn (no font, say); the numbers are unaffected.
    pub plot_error: Option<String>,
    pub environment: Environment,
}

/// Runs `eval ppl`: writes `report.json`, `report.md` and (diffusion) `elbo_levels.png`.
pub fn run_ppl(a: &PplArgs) -> Result<()> {
    ensure!(a.levels >= 1, "levels must be at least 1");
    ensure!(a.max_seqs >= 1, "max_seqs must be at least 1");
    let model = Model::load(&a.model, LoadOptions::default())
        .with_context(|| format!("loading {}", a.model.display()))?;
    let gpt = &model.gpt;
    let seq_len = a.seq_len.min(gpt.cfg.n_positions);
    let (seqs, source_kind) = load_sequences(
        &a.data,
        model.tokenizer.as_ref(),
        gpt.ids.eos,
        seq_len,
        a.max_seqs,
    )?;
    ensure!(!seqs.is_empty(), "{}: no sequences", a.data.display());
    let levels = match a.mode {
        PplMode::Diffusion => noise_levels(a.levels),
        PplMode::Causal => Vec::new(),
    };
    let b = bar(seqs.len(), "ppl");
    let start = Instant::now();
    let result = perplexity(gpt, &seqs, a.mode, &levels, a.seed, Some(&b))?;
    b.finish_and_clear();
    let elapsed_s = start.elapsed().as_secs_f64();

    let mut plots = Vec::new();
    let mut plot_error = None;
    if a.mode == PplMode::Diffusion {
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        let png = a.out.join("elbo_levels.png");
        let series = [Series {
            name: "(1/t) sum CE / tokens".into(),
            points: result
                .per_level
                .iter()
                .map(|l| (l.t, l.term_per_token))
                .collect(),
        }];
        match line_chart(
            &png,
            "Diffusion bound by noise level",
            "t",
            "nats / token",
            &series,
        ) {
            Ok(()) => plots.push(png),
            Err(e) => plot_error = Some(format!("{e:#}")),
        }
    }
    let report = PplReport {
        task: "ppl",
        model: a.model.clone(),
        data: a.data.clone(),
        source_kind,
        seq_len,
        seed: a.seed,
        levels,
        is_bound: a.mode == PplMode::Diffusion,
        tokens_per_s: result.n_tokens as f64 / elapsed_s.max(1e-9),
        result,
        elapsed_s,
        plots,
        plot_error,
        environment: Environment::detect(),
    };
    write_report(&a.out, &report, &ppl_markdown(&report))?;
    eprintln!(
        "ppl ({:?}): {:.4} nats/token, perplexity {}{:.3} over {} tokens; report in {}",
        a.mode,
        report.result.nll_per_token,
        if report.is_bound { "<= " } else { "" },
        report.result.ppl,
        report.result.n_tokens,
        a.out.display()
    );
    Ok(())
}

fn ppl_markdown(r: &PplReport) -> String {
    let what = if r.is_bound {
        "diffusion ELBO (upper bound on NLL)"
    } else {
        "ARM (causal) perplexity"
    };
    let mut s = format!("# Perplexity: {what}\n\n");
    s += &format!(
        "Model: `{}`  \nData: `{}` ({})\n\n",
        r.model.display(),
        r.data.display(),
        r.source_kind
    );
    let rel = if r.is_bound { "<= " } else { "" };
    s += &md_table(
        &["metric", "value"],
        &[
            vec!["sequences".into(), r.result.n_seqs.to_string()],
            vec!["scored tokens".into(), r.result.n_tokens.to_string()],
            vec!["seq_len".into(), r.seq_len.to_string()],
            vec![
                "NLL (nats/token)".into(),
                format!("{rel}{:.4}", r.result.nll_per_token),
            ],
            vec!["perplexity".into(), format!("{rel}{:.3}", r.result.ppl)],
            vec![
                "tokens/s".into(),
                format!("{:.1} ({:.1} s)", r.tokens_per_s, r.elapsed_s),
            ],
        ],
    );
    if !r.result.per_level.is_empty() {
        s += "\n## By noise level\n\n";
        let rows: Vec<Vec<String>> = r
            .result
            .per_level
            .iter()
            .map(|l| {
                vec![
                    format!("{:.3}", l.t),
                    l.masked.to_string(),
                    format!("{:.4}", l.ce_per_masked),
                    format!("{:.4}", l.term_per_token),
                ]
            })
            .collect();
        s += &md_table(
            &["t", "masked", "CE / masked token", "(1/t) CE sum / token"],
            &rows,
        );
        s += "\nThe bound is the mean of the last column (levels t_k = k/K, seeded masks).\n";
    }
    for p in &r.plots {
        if let Some(name) = p.file_name() {
            s += &format!("\n![{0}]({0})\n", name.to_string_lossy());
        }
    }
    if let Some(e) = &r.plot_error {
        s += &format!("\nNo plot: {e}\n");
    }
    s += &format!("\nEnvironment: {}\n", environment_line(&r.environment));
    s
}

/// One decoding mode's output for a prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModeOutput {
    /// The answer (tokens before the first end id).
    pub tokens: Vec<u32>,
    /// The decoded answer (filled by [`run_compare`]).
    pub text: Option<String>,
    pub final_len: usize,
    pub predicted_len: Option<usize>,
    pub final_canvas_len: usize,
    pub forward_passes: usize,
    pub positions_processed: usize,
    pub elapsed_s: f64,
    /// The diffusion bound of the answer given the prompt, in nats (`None`: empty answer).
    pub nll: Option<f64>,
    pub nll_per_token: Option<f64>,
}

/// Both outputs for one prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptComparison {
    /// The prompt text (filled by [`run_compare`]).
    pub prompt: Option<String>,
    pub prompt_tokens: usize,
    pub fixed: ModeOutput,
    pub eos_first: ModeOutput,
    pub same_len: bool,
    pub len_abs_diff: usize,
    pub same_tokens: bool,
}

/// Totals of one mode over all prompts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModeTotals {
    pub mean_final_len: f64,
    /// Non-empty answers (the ones scored).
    pub answers_scored: usize,
    pub answer_tokens: usize,
    /// Token-weighted diffusion bound over the scored answers (nats/token).
    pub nll_per_token: f64,
    pub ppl: f64,
    pub forward_passes: usize,
    pub positions_processed: usize,
    pub elapsed_s: f64,
}

/// The result of [`compare_outputs`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareSummary {
    pub n_prompts: usize,
    pub fixed: ModeTotals,
    pub eos_first: ModeTotals,
    /// Share of prompts whose two answers have the same length.
    pub length_agreement: f64,
    pub mean_abs_len_diff: f64,
    /// Share of prompts whose two answers are identical.
    pub identical_answers: f64,
    pub prompts: Vec<PromptComparison>,
}

/// Generates each prompt with `params` but `length = LengthMode::Fixed`, and again with
/// `length = eos_first` (same seed `params.seed + i` for prompt `i`), then scores both answers
/// with [`diffusion_nll_bound`] conditioned on the prompt, both with masks from
/// `Rng::new(seed + i)`.
pub fn compare_outputs(
    gpt: &Gpt2,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    eos_first: LengthMode,
    levels: &[f64],
    seed: u64,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<CompareSummary> {
    ensure!(!prompts.is_empty(), "no prompts");
    let mut rows = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let mut outs = Vec::with_capacity(2);
        for length in [LengthMode::Fixed, eos_first] {
            let p = GenerateParams {
                length,
                seed: params.seed.wrapping_add(i as u64),
                ..params.clone()
            };
            let g = Session::new(gpt).generate(prompt, &p, None)?;
            let (nll, nll_per_token) = if g.tokens.is_empty() {
                (None, None)
            } else {
                let mut seq = Vec::with_capacity(1 + prompt.len() + g.tokens.len());
                seq.push(gpt.ids.eos);
                seq.extend_from_slice(prompt);
                seq.extend_from_slice(&g.tokens);
                let mut rng = Rng::new(seed.wrapping_add(i as u64));
                let s = diffusion_nll_bound(gpt, &seq, 1 + prompt.len(), levels, &mut rng)?;
                (Some(s.nll), Some(s.per_token()))
            };
            outs.push(ModeOutput {
                final_len: g.stats.final_len,
                predicted_len: g.stats.predicted_len,
                final_canvas_len: g.stats.final_canvas_len,
                forward_passes: g.stats.forward_passes,
                positions_processed: g.stats.positions_processed(),
                elapsed_s: g.stats.elapsed_s,
                tokens: g.tokens,
                text: None,
                nll,
                nll_per_token,
            });
        }
        let eos = outs.pop().expect("two outputs");
        let fixed = outs.pop().expect("two outputs");
        rows.push(PromptComparison {
            prompt: None,
            prompt_tokens: prompt.len(),
            same_len: fixed.final_len == eos.final_len,
            len_abs_diff: fixed.final_len.abs_diff(eos.final_len),
            same_tokens: fixed.tokens == eos.tokens,
            fixed,
            eos_first: eos,
        });
        if let Some(b) = bar {
            b.inc(1);
        }
    }
    let n = rows.len() as f64;
    let totals = |get: &dyn Fn(&PromptComparison) -> &ModeOutput| {
        let mut t = ModeTotals::default();
        let mut nll = 0.0;
        for r in &rows {
            let o = get(r);
            t.mean_final_len += o.final_len as f64 / n;
            t.forward_passes += o.forward_passes;
            t.positions_processed += o.positions_processed;
            t.elapsed_s += o.elapsed_s;
            if let Some(v) = o.nll {
                nll += v;
                t.answers_scored += 1;
                t.answer_tokens += o.tokens.len();
            }
        }
        t.nll_per_token = if t.answer_tokens > 0 {
            nll / t.answer_tokens as f64
        } else {
            f64::NAN
        };
        t.ppl = t.nll_per_token.exp();
        t
    };
    let fixed = totals(&|r| &r.fixed);
    let eos = totals(&|r| &r.eos_first);
    let share =
        |f: &dyn Fn(&PromptComparison) -> bool| rows.iter().filter(|r| f(r)).count() as f64 / n;
    Ok(CompareSummary {
        n_prompts: rows.len(),
        fixed,
        eos_first: eos,
        length_agreement: share(&|r| r.same_len),
        mean_abs_len_diff: rows.iter().map(|r| r.len_abs_diff as f64).sum::<f64>() / n,
        identical_answers: share(&|r| r.same_tokens),
        prompts: rows,
    })
}

/// `report.json` of `eval compare`.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub task: &'static str,
    pub model: PathBuf,
    pub prompts_file: PathBuf,
    pub canvas: usize,
    pub steps: usize,
    pub strategy: &'static str,
    pub predictor: String,
    /// The end floor of both decodings.
    pub end_floor: f32,
    pub levels: Vec<f64>,
    pub seed: u64,
    #[serde(flatten)]
    pub summary: CompareSummary,
    pub environment: Environment,
}

/// Runs `eval compare`: writes `report.json` and `report.md`.
pub fn run_compare(a: &CompareArgs) -> Result<()> {
    ensure!(a.levels >= 1, "levels must be at least 1");
    let model = Model::load(&a.model, LoadOptions::default())
        .with_context(|| format!("loading {}", a.model.display()))?;
    let tok = model.tokenizer()?;
    let text = std::fs::read_to_string(&a.prompts)
        .with_context(|| format!("reading {}", a.prompts.display()))?;
    let mut texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(m) = a.max_prompts {
        texts.truncate(m);
    }
    ensure!(!texts.is_empty(), "{}: no prompts", a.prompts.display());
    let prompts = texts
        .iter()
        .map(|t| tok.encode(t))
        .collect::<diffugpt::Result<Vec<_>>>()?;
    let predictor = LengthPredictor::parse(&a.predictor)?;
    let params = GenerateParams {
        canvas_len: a.canvas,
        steps: Steps::Fixed(a.steps),
        seed: a.seed,
        end_floor: a.end_floor,
        ..Default::default()
    };
    let eos_first = LengthMode::EosFirst {
        predictor,
        margin: 8,
        margin_ratio: 0.25,
        grow: true,
    };
    let levels = noise_levels(a.levels);
    let b = bar(prompts.len(), "compare");
    let mut summary = compare_outputs(
        &model.gpt,
        &prompts,
        &params,
        eos_first,
        &levels,
        a.seed,
        Some(&b),
    )?;
    b.finish_and_clear();
    for (row, t) in summary.prompts.iter_mut().zip(&texts) {
        row.prompt = Some(t.to_string());
        for o in [&mut row.fixed, &mut row.eos_first] {
            o.text = Some(tok.decode(&o.tokens, true)?);
        }
    }
    let report = CompareReport {
        task: "compare",
        model: a.model.clone(),
        prompts_file: a.prompts.clone(),
        canvas: a.canvas,
        steps: a.steps,
        strategy: match params.strategy {
            Strategy::RandomKeep => "random-keep",
            Strategy::Confidence(_) => "confidence",
        },
        predictor: predictor.label(),
        end_floor: a.end_floor,
        levels,
        seed: a.seed,
        summary,
        environment: Environment::detect(),
    };
    write_report(&a.out, &report, &compare_markdown(&report))?;
    eprintln!(
        "compare: length agreement {:.3}, bound fixed {:.4} vs eos-first {:.4} nats/token; report in {}",
        report.summary.length_agreement,
        report.summary.fixed.nll_per_token,
        report.summary.eos_first.nll_per_token,
        a.out.display()
    );
    Ok(())
}

fn compare_markdown(r: &CompareReport) -> String {
    let s_ = &r.summary;
    let mut s = String::from("# EoS-first vs fixed-length outputs\n\n");
    s += &format!(
        "Model: `{}`  \nPrompts: `{}` ({})  \nCanvas {}, {} steps, {} reveal, predictor {}, end floor {}, {} noise levels, seed {}\n\n",
        r.model.display(),
        r.prompts_file.display(),
        s_.n_prompts,
        r.canvas,
        r.steps,
        r.strategy,
        r.predictor,
        r.end_floor,
        r.levels.len(),
        r.seed
    );
    let f = |v: f64| format!("{v:.4}");
    let rows = vec![
        vec![
            "mean answer length".into(),
            format!("{:.2}", s_.fixed.mean_final_len),
            format!("{:.2}", s_.eos_first.mean_final_len),
        ],
        vec![
            "answers scored".into(),
            s_.fixed.answers_scored.to_string(),
            s_.eos_first.answers_scored.to_string(),
        ],
        vec![
            "diffusion bound (nats/token)".into(),
            f(s_.fixed.nll_per_token),
            f(s_.eos_first.nll_per_token),
        ],
        vec![
            "perplexity bound".into(),
            format!("{:.3}", s_.fixed.ppl),
            format!("{:.3}", s_.eos_first.ppl),
        ],
        vec![
            "forward passes".into(),
            s_.fixed.forward_passes.to_string(),
            s_.eos_first.forward_passes.to_string(),
        ],
        vec![
            "positions processed".into(),
            s_.fixed.positions_processed.to_string(),
            s_.eos_first.positions_processed.to_string(),
        ],
        vec![
            "decode time (s)".into(),
            format!("{:.3}", s_.fixed.elapsed_s),
            format!("{:.3}", s_.eos_first.elapsed_s),
        ],
    ];
    s += &md_table(&["", "fixed", "EoS-first"], &rows);
    s += &format!(
        "\nLength agreement {:.3}, mean |length difference| {:.2}, identical answers {:.3}.\n",
        s_.length_agreement, s_.mean_abs_len_diff, s_.identical_answers
    );
    s += "\n## Prompts\n\n";
    let show = |o: &ModeOutput| {
        format!(
            "{} ({} tok, {})",
            cell(o.text.as_deref().unwrap_or("")),
            o.final_len,
            o.nll_per_token.map_or("-".into(), |v| format!("{v:.3}"))
        )
    };
    let rows: Vec<Vec<String>> = s_
        .prompts
        .iter()
        .take(20)
        .map(|p| {
            vec![
                cell(p.prompt.as_deref().unwrap_or("")),
                show(&p.fixed),
                show(&p.eos_first),
            ]
        })
        .collect();
    s += &md_table(
        &[
            "prompt",
            "fixed (len, nats/tok)",
            "EoS-first (len, nats/tok)",
        ],
        &rows,
    );
    s += &format!("\nEnvironment: {}\n", environment_line(&r.environment));
    s
}

/// Hand-built models with known outputs, shared by the unit tests of `eval`.
#[cfg(test)]
pub(crate) mod test_models {
    use candle_core::Device;
    use diffugpt::config::{ModelConfig, SpecialIds};
    use diffugpt::Gpt2;

    pub const V: usize = 97;
    pub const E: usize = 32;
    pub const EOS: u32 = 96;
    pub const MASK: u32 = 95;

    /// A one-layer `E`-wide model over `V` tokens (ids `EOS`, `MASK`, no pad) whose weights
    /// `fill` writes by name (untied: with an `lm_head.weight` of its own).
    pub fn build(untied: bool, fill: impl Fn(&str, &mut [f32])) -> Gpt2 {
        let cfg = ModelConfig {
            n_layer: 1,
            n_head: 2,
            n_embd: E,
            n_inner: 4 * E,
            n_positions: E,
            vocab_size: V,
            ..ModelConfig::tiny(V)
        };
        let ids = SpecialIds {
            eos: EOS,
            mask: MASK,
            pad: None,
        };
        Gpt2::from_fill(cfg, ids, untied, &Device::Cpu, fill).unwrap()
    }

    /// Every weight zero: the hidden states and all logits are exactly 0, so every position
    /// predicts the uniform distribution over the `V` tokens.
    pub fn uniform_model() -> Gpt2 {
        build(false, |_, _| {})
    }

    /// The positional oracle (as in the core's `tests/decode.rs`): zero token embeddings, blocks
    /// that add nothing, position r = 10 e_r, untied head mapping e_r to `targets[r]`, so logits
    /// row r has argmax `targets[r]` whatever the tokens (rows beyond the list: token 0).
    pub fn oracle_model(targets: &[u32]) -> Gpt2 {
        build(true, |name, data| match name {
            "wpe.weight" => (0..E).for_each(|r| data[r * E + r] = 10.0),
            "lm_head.weight" => {
                for (r, &t) in targets.iter().enumerate() {
                    data[t as usize * E + r] = 10.0;
                }
            }
            n if n.contains("ln") && n.ends_with("weight") => data.fill(1.0),
            _ => {}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_models::{oracle_model, uniform_model, EOS, MASK, V};
    use super::*;
    use diffugpt::{ConfidenceKind, SamplingParams};

    fn seqs() -> Vec<EvalSeq> {
        vec![
            EvalSeq {
                ids: vec![EOS, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                scored_from: 1,
            },
            EvalSeq {
                ids: vec![EOS, 40, 41, 42, 43, 44, 45, 46],
                scored_from: 3,
            },
            // The mask id inside the data is scored like any other token.
            EvalSeq {
                ids: vec![
                    EOS, MASK, 5, MASK, 7, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
                ],
                scored_from: 1,
            },
        ]
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Lambada(crate::eval::lambada::LambadaArgs),
        Ppl(PplArgs),
        Compare(CompareArgs),
    }

    #[test]
    fn clap_arguments_parse_with_their_defaults() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let parse = |s: &str| Cli::try_parse_from(s.split_whitespace());
        match parse("x ppl --model m --data d --out o --mode causal")
            .unwrap()
            .cmd
        {
            Cmd::Ppl(a) => {
                assert_eq!(a.mode, PplMode::Causal);
                assert_eq!((a.levels, a.max_seqs, a.seq_len, a.seed), (8, 64, 128, 0));
            }
            _ => unreachable!(),
        }
        match parse("x compare --model m --prompts p --out o")
            .unwrap()
            .cmd
        {
            Cmd::Compare(a) => {
                assert_eq!(
                    (a.canvas, a.steps, a.levels, a.max_prompts),
                    (64, 64, 8, None)
                );
                assert_eq!(a.predictor, "quantile:0.9");
            }
            _ => unreachable!(),
        }
        match parse("x lambada --model m --from-text t --out o")
            .unwrap()
            .cmd
        {
            Cmd::Lambada(a) => {
                assert_eq!((a.n, a.min_context_words, a.input), (200, 10, None));
            }
            _ => unreachable!(),
        }
        assert!(parse("x lambada --model m --out o").is_err());
        assert!(parse("x lambada --model m --input i --from-text t --out o").is_err());
        assert!(parse("x ppl --model m --data d --out o --mode bogus").is_err());
    }

    #[test]
    fn levels_are_right_endpoints() {
        assert_eq!(noise_levels(4), vec![0.25, 0.5, 0.75, 1.0]);
        assert_eq!(noise_levels(1), vec![1.0]);
    }

    #[test]
    fn uniform_model_arm_perplexity_is_the_vocab_size() {
        let m = uniform_model();
        let r = perplexity(&m, &seqs(), PplMode::Causal, &[], 0, None).unwrap();
        assert_eq!(r.n_tokens, 12 + 5 + 15);
        assert!((r.ppl / V as f64 - 1.0).abs() < 1e-3, "{}", r.ppl);
        assert!((r.nll_per_token - (V as f64).ln()).abs() < 1e-6);
        assert!(r.per_level.is_empty());
    }

    #[test]
    fn uniform_model_diffusion_bound_is_exact() {
        let m = uniform_model();
        let ln_v = (V as f64).ln();
        // t = 1 masks every scored position: the bound is exactly ln V per token.
        let r = perplexity(&m, &seqs(), PplMode::Diffusion, &noise_levels(1), 3, None).unwrap();
        assert_eq!(r.per_level[0].masked, r.n_tokens);
        assert!((r.nll_per_token - ln_v).abs() < 1e-6, "{}", r.nll_per_token);
        assert!((r.ppl / V as f64 - 1.0).abs() < 1e-3);
        // K levels: every masked CE is ln V, so the bound is ln V * mean_k (masked_k / t_k) / N.
        let levels = noise_levels(4);
        let r = perplexity(&m, &seqs(), PplMode::Diffusion, &levels, 7, None).unwrap();
        let expect = ln_v
            * r.per_level
                .iter()
                .map(|l| l.masked as f64 / l.t)
                .sum::<f64>()
            / levels.len() as f64
            / r.n_tokens as f64;
        assert!((r.nll_per_token - expect).abs() < 1e-6 * expect);
        for l in &r.per_level {
            assert!((l.ce_per_masked - ln_v).abs() < 1e-6);
        }
        let mean_term = r.per_level.iter().map(|l| l.term_per_token).sum::<f64>() / 4.0;
        assert!((mean_term - r.nll_per_token).abs() < 1e-9);
        // Seeded: same seed, same masks; another seed, other masks.
        let again = perplexity(&m, &seqs(), PplMode::Diffusion, &levels, 7, None).unwrap();
        assert_eq!(again, r);
        let other = perplexity(&m, &seqs(), PplMode::Diffusion, &levels, 8, None).unwrap();
        assert_ne!(
            other.per_level.iter().map(|l| l.masked).collect::<Vec<_>>(),
            r.per_level.iter().map(|l| l.masked).collect::<Vec<_>>()
        );
    }

    #[test]
    fn oracle_model_likelihoods_follow_the_shift() {
        // Row r predicts token r + 1: the sequence [EOS, 1, 2, ...] is what the oracle expects.
        let t: Vec<u32> = (0..32).map(|r| r + 1).collect();
        let m = oracle_model(&t);
        let good: Vec<u32> = std::iter::once(EOS).chain(1..12).collect();
        let bad: Vec<u32> = std::iter::once(EOS).chain(50..61).collect();
        for s in [
            causal_nll(&m, &good, 1).unwrap(),
            diffusion_nll_bound(&m, &good, 1, &[1.0], &mut Rng::new(0)).unwrap(),
        ] {
            assert!(s.per_token() < 0.01, "{s:?}");
        }
        let b = causal_nll(&m, &bad, 1).unwrap();
        assert!(b.per_token() > (V as f64).ln(), "{b:?}");
        assert!(causal_nll(&m, &good, 12).is_err());
        assert!(causal_nll(&m, &[EOS, 200], 1).is_err());
    }

    #[test]
    fn stream_windows_cut_full_chunks() {
        let s: Vec<u32> = (0..10).collect();
        let w = stream_windows(&s, 99, 4, 100);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].ids, vec![99, 0, 1, 2]);
        assert_eq!(w[2].ids, vec![99, 6, 7, 8]);
        assert_eq!(stream_windows(&s, 99, 4, 2).len(), 2);
        let short = stream_windows(&s[..2], 99, 4, 100);
        assert_eq!(
            short,
            vec![EvalSeq {
                ids: vec![99, 0, 1],
                scored_from: 1
            }]
        );
    }

    #[test]
    fn compare_on_the_oracle_agrees_exactly() {
        // Prompt [1, 2, 3] -> rows 3.. give 10, 11, 12, 13, 14 then EOS.
        let mut t = vec![0u32; 32];
        for j in 0..29 {
            t[3 + j] = if j < 5 { 10 + j as u32 } else { EOS };
        }
        let m = oracle_model(&t);
        let params = GenerateParams {
            canvas_len: 16,
            steps: Steps::Fixed(16),
            strategy: Strategy::Confidence(ConfidenceKind::Prob),
            sampling: SamplingParams::default(),
            length: LengthMode::Fixed,
            seed: 0,
            ban_mask: true,
            ..Default::default()
        };
        let eos_first = LengthMode::EosFirst {
            predictor: LengthPredictor::ArgmaxFirst,
            margin: 2,
            margin_ratio: 0.0,
            grow: true,
        };
        let prompts = vec![vec![1, 2, 3], vec![1, 2, 3]];
        let s =
            compare_outputs(&m, &prompts, &params, eos_first, &noise_levels(4), 0, None).unwrap();
        assert_eq!(s.n_prompts, 2);
        assert_eq!(s.length_agreement, 1.0);
        assert_eq!(s.mean_abs_len_diff, 0.0);
        assert_eq!(s.identical_answers, 1.0);
        for p in &s.prompts {
            assert_eq!(p.fixed.tokens, vec![10, 11, 12, 13, 14]);
            assert_eq!(p.eos_first.tokens, p.fixed.tokens);
            assert_eq!(p.eos_first.predicted_len, Some(5));
            assert_eq!(p.fixed.nll, p.eos_first.nll);
            assert!(p.fixed.nll_per_token.unwrap() < 0.01);
            assert!(p.eos_first.positions_processed < p.fixed.positions_processed);
        }
        assert_eq!(s.fixed.answer_tokens, 10);
        assert_eq!(s.fixed.mean_final_len, 5.0);
        assert_eq!(s.fixed.nll_per_token, s.eos_first.nll_per_token);
    }
}
