//! LAMBADA in DiffuGPT's protocol (Gong et al. 2024, as in their evaluation scripts).
//!
//! Each example is a passage whose last word is the target. The passage is cut at its last
//! whitespace: the *context* is everything before it (trailing whitespace removed) and the
//! *target* is the last word, tokenised **with its leading space** (`" word"`), exactly as GPT-2
//! tokenises it inside the running text. The canvas is
//!
//! ```text
//! [eos as BOS] + context + [MASK] x n_target_tokens
//! ```
//!
//! with the oracle number of target tokens, decoded with `n_target_tokens` steps: DiffuGPT reveals
//! the single most confident slot at each step (greedy argmax tokens, confidence = probability of
//! the chosen token), i.e. [`Strategy::Confidence`]`(`[`ConfidenceKind::Prob`]`)` with one token per
//! step, [`LengthMode::Fixed`] and no cut. The whole canvas is the prediction (an end token inside
//! it is just a wrong token). An example is a hit when the predicted ids equal the target ids
//! (`accuracy`); `accuracy_word` compares the decoded prediction with the target word, both
//! stripped of surrounding whitespace.
//!
//! Inputs: the standard `lambada_test.jsonl` (`{"text": "..."}` per line; any `.jsonl`/`.json`
//! path) or plain text with one passage per line. [`build_from_text`] makes a LAMBADA-style set from
//! any held-out text (passages split at blank lines or `%` lines), so the evaluation runs offline.
//!
//! A context too long for the model's positions keeps its last tokens (counted in the report as
//! `contexts_truncated`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use diffugpt::rng::Rng;
use diffugpt::{
    ConfidenceKind, GenerateParams, Gpt2, LengthMode, LoadOptions, Model, SamplingParams, Session,
    Steps, Strategy, Tokenizer,
};
use serde::Serialize;

use crate::eval::report::{md_table, write_report, Environment};

/// `clap` arguments of `eval lambada`.
#[derive(Clone, Debug, clap::Args)]
pub struct LambadaArgs {
    /// Model directory or model.safetensors (with tokenizer.json next to it)
    #[arg(long)]
    pub model: PathBuf,
    /// LAMBADA file: lambada_test.jsonl ({"text": ...} per line) or plain text, one passage per
    /// line
    #[arg(
        long,
        conflicts_with = "from_text",
        required_unless_present = "from_text"
    )]
    pub input: Option<PathBuf>,
    /// Build a LAMBADA-style set from this held-out text instead (passages split at blank lines
    /// or `%` lines)
    #[arg(long)]
    pub from_text: Option<PathBuf>,
    /// Examples to build with --from-text
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// With --from-text: passages need at least this many context words
    #[arg(long, default_value_t = 10)]
    pub min_context_words: usize,
    /// Output directory for report.json and report.md
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the --from-text selection (decoding is greedy)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate at most this many examples
    #[arg(long)]
    pub max_examples: Option<usize>,
}

/// A passage cut into context and target word.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Passage {
    /// Everything before the last word, without trailing whitespace.
    pub context: String,
    /// The last word, without the leading space.
    pub target: String,
}

impl Passage {
    /// Cuts `text` at its last whitespace (LAMBADA: the target is the last whitespace-separated
    /// word, punctuation included). `None` when there is no context or no word.
    pub fn from_text(text: &str) -> Option<Passage> {
        let text = text.trim();
        let (context, target) = text.rsplit_once(char::is_whitespace)?;
        let context = context.trim_end();
        if context.is_empty() || target.is_empty() {
            return None;
        }
        Some(Passage {
            context: context.to_string(),
            target: target.to_string(),
        })
    }
}

/// Reads LAMBADA examples: `.jsonl`/`.json` as `{"text": ...}` per line, anything else as one
/// passage per line. Blank lines are ignored; lines without a context are skipped (second value).
pub fn read_examples(path: &Path) -> Result<(Vec<Passage>, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json = matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jsonl" | "json")
    );
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let passage = if json {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: invalid JSON", path.display(), i + 1))?;
            match v.get("text") {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => bail!(
                    "{} line {}: expected an object with a string field \"text\"",
                    path.display(),
                    i + 1
                ),
            }
        } else {
            line.to_string()
        };
        match Passage::from_text(&passage) {
            Some(p) => out.push(p),
            None => skipped += 1,
        }
    }
    Ok((out, skipped))
}

/// Splits text into passages at blank lines and at lines holding only `%` (fortune files).
/// Passages are trimmed; empty ones are dropped.
pub fn split_passages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut flush = |cur: &mut Vec<&str>| {
        let s = cur.join("\n");
        if !s.trim().is_empty() {
            out.push(s.trim().to_string());
        }
        cur.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() || line.trim() == "%" {
            flush(&mut cur);
        } else {
            cur.push(line);
        }
    }
    flush(&mut cur);
    out
}

/// A LAMBADA-style set from any text: passages ([`split_passages`]) lose trailing attribution
/// lines (starting with `--`) and source tags (a line that is one `[...]`, as GCIDE's
/// `[1913 Webster]` ending nearly every paragraph: kept, its `Webster` would be the target of most
/// dictionary passages and measure nothing) and have their whitespace collapsed; the target is the last word
/// with trailing punctuation removed (the passage ends right after it), kept only when it is
/// alphabetic (inner `'` and `-` allowed) and at least 2 characters long, and when at least
/// `min_context_words` words precede it. `n` of those candidates are drawn with the seeded
/// generator and returned in text order.
pub fn build_from_text(text: &str, n: usize, min_context_words: usize, seed: u64) -> Vec<Passage> {
    let mut candidates = Vec::new();
    for passage in split_passages(text) {
        let mut lines: Vec<&str> = passage.lines().collect();
        while lines.last().is_some_and(|l| {
            let l = l.trim();
            l.starts_with("--") || (l.starts_with('[') && l.ends_with(']'))
        }) {
            lines.pop();
        }
        let words: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
        let Some((&last, context)) = words.split_last() else {
            continue;
        };
        let word = last.trim_end_matches(|c: char| !c.is_alphanumeric());
        let ok = word.chars().count() >= 2
            && word.chars().next().is_some_and(char::is_alphabetic)
            && word.chars().last().is_some_and(char::is_alphabetic)
            && word
                .chars()
                .all(|c| c.is_alphabetic() || c == '\'' || c == '-');
        if !ok || context.len() < min_context_words.max(1) {
            continue;
        }
        candidates.push(Passage {
            context: context.join(" "),
            target: word.to_string(),
        });
    }
    // Partial Fisher-Yates: the first `n` of a seeded shuffle, then back in text order.
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    let take = n.min(idx.len());
    let mut rng = Rng::new(seed);
    for i in 0..take {
        let j = i + rng.below((idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut chosen = idx[..take].to_vec();
    chosen.sort_unstable();
    chosen.into_iter().map(|i| candidates[i].clone()).collect()
}

/// A tokenised example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub context_ids: Vec<u32>,
    /// `" " + target` tokenised.
    pub target_ids: Vec<u32>,
    pub passage: Passage,
    /// Context tokens dropped from the front to fit the model's positions.
    pub truncated: usize,
}

/// Tokenises passages for a model with `n_positions` positions; passages whose target alone does
/// not fit (or tokenises to nothing) are skipped (second value).
pub fn tokenize(
    tok: &Tokenizer,
    passages: &[Passage],
    n_positions: usize,
) -> Result<(Vec<Item>, usize)> {
    let mut items = Vec::with_capacity(passages.len());
    let mut skipped = 0;
    for p in passages {
        let target_ids = tok.encode(&format!(" {}", p.target))?;
        let mut context_ids = tok.encode(&p.context)?;
        // BOS + at least one context token + the target.
        if target_ids.is_empty() || context_ids.is_empty() || target_ids.len() + 2 > n_positions {
            skipped += 1;
            continue;
        }
        let room = n_positions - 1 - target_ids.len();
        let truncated = context_ids.len().saturating_sub(room);
        context_ids.drain(..truncated);
        items.push(Item {
            context_ids,
            target_ids,
            passage: p.clone(),
            truncated,
        });
    }
    Ok((items, skipped))
}

/// The decoding parameters of the protocol for a target of `n` tokens.
pub fn protocol_params(n: usize, seed: u64) -> GenerateParams {
    GenerateParams {
        canvas_len: n,
        steps: Steps::Fixed(n),
        strategy: Strategy::Confidence(ConfidenceKind::Prob),
        sampling: SamplingParams::default(),
        length: LengthMode::Fixed,
        seed,
        ban_mask: true,
        ..Default::default()
    }
}

/// The outcome of one example.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub context: String,
    pub target: String,
    pub target_ids: Vec<u32>,
    pub predicted_ids: Vec<u32>,
    /// The decoded prediction (`None` without a tokenizer).
    pub predicted: Option<String>,
    /// Predicted ids equal the target ids.
    pub hit: bool,
    /// Decoded prediction equals the target word (both trimmed); equals `hit` without a tokenizer.
    pub word_hit: bool,
}

/// Decodes one example with the protocol.
pub fn evaluate_item(
    gpt: &Gpt2,
    item: &Item,
    seed: u64,
    tok: Option<&Tokenizer>,
) -> Result<Outcome> {
    let params = protocol_params(item.target_ids.len(), seed);
    let g = Session::new(gpt).generate(&item.context_ids, &params, None)?;
    let predicted_ids = g.canvas;
    let hit = predicted_ids == item.target_ids;
    let predicted = tok.map(|t| t.decode(&predicted_ids, false)).transpose()?;
    let word_hit = match &predicted {
        Some(s) => s.trim() == item.passage.target.trim(),
        None => hit,
    };
    Ok(Outcome {
        context: item.passage.context.clone(),
        target: item.passage.target.clone(),
        target_ids: item.target_ids.clone(),
        predicted_ids,
        predicted,
        hit,
        word_hit,
    })
}

/// Accuracy over a set of examples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub hits: usize,
    pub word_hits: usize,
    /// Exact match of the target tokens.
    pub accuracy: f64,
    /// Exact match of the stripped word strings.
    pub accuracy_word: f64,
    pub avg_target_tokens: f64,
    pub avg_context_tokens: f64,
    pub contexts_truncated: usize,
    pub outcomes: Vec<Outcome>,
}

/// Evaluates every item (`bar`, when given, advances once per item).
pub fn evaluate(
    gpt: &Gpt2,
    items: &[Item],
    seed: u64,
    tok: Option<&Tokenizer>,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Summary> {
    let mut outcomes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        outcomes.push(evaluate_item(gpt, item, seed.wrapping_add(i as u64), tok)?);
        if let Some(b) = bar {
            b.inc(1);
        }
    }
    let n = items.len();
    let hits = outcomes.iter().filter(|o| o.hit).count();
    let word_hits = outcomes.iter().filter(|o| o.word_hit).count();
    let ratio = |a: usize| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    let mean = |f: &dyn Fn(&Item) -> usize| {
        if n == 0 {
            0.0
        } else {
            items.iter().map(f).sum::<usize>() as f64 / n as f64
        }
    };
    Ok(Summary {
        n,
        hits,
        word_hits,
        accuracy: ratio(hits),
        accuracy_word: ratio(word_hits),
        avg_target_tokens: mean(&|it| it.target_ids.len()),
        avg_context_tokens: mean(&|it| it.context_ids.len()),
        contexts_truncated: items.iter().filter(|it| it.truncated > 0).count(),
        outcomes,
    })
}

/// `report.json` of `eval lambada`.
#[derive(Clone, Debug, Serialize)]
pub struct LambadaReport {
    pub task: &'static str,
    pub protocol: &'static str,
    pub model: PathBuf,
    /// `lambada:<path>` or `from-text:<path>`.
    pub source: String,
    pub seed: u64,
    pub n: usize,
    pub hits: usize,
    pub accuracy: f64,
    pub accuracy_word: f64,
    pub avg_target_tokens: f64,
    pub avg_context_tokens: f64,
    pub contexts_truncated: usize,
    /// Passages left out (no context, or a target that does not fit).
    pub skipped: usize,
    /// First 5 hits and first 5 misses.
    pub hit_examples: Vec<Outcome>,
    pub miss_examples: Vec<Outcome>,
    pub elapsed_s: f64,
    pub examples_per_s: f64,
    pub environment: Environment,
}

const PROTOCOL: &str =
    "canvas = [eos] + context + [MASK] x n_target (oracle length); one token per step, \
     most confident (greedy prob) first; fixed length, no cut; exact match of target tokens";

/// Runs `eval lambada`: loads the model, reads or builds the set, decodes, writes `report.json`
/// and `report.md` into `a.out`.
pub fn run(a: &LambadaArgs) -> Result<()> {
    let model = Model::load(&a.model, LoadOptions::default())
        .with_context(|| format!("loading {}", a.model.display()))?;
    let tok = model.tokenizer()?;
    let (passages, mut skipped, source) = match (&a.input, &a.from_text) {
        (Some(p), None) => {
            let (v, s) = read_examples(p)?;
            (v, s, format!("lambada:{}", p.display()))
        }
        (None, Some(p)) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let v = build_from_text(&text, a.n, a.min_context_words, a.seed);
            (v, 0, format!("from-text:{}", p.display()))
        }
        (Some(_), Some(_)) => bail!("give either --input or --from-text, not both"),
        (None, None) => bail!("give --input (a LAMBADA file) or --from-text (held-out text)"),
    };
    let mut passages = passages;
    if let Some(m) = a.max_examples {
        passages.truncate(m);
    }
    let (items, s) = tokenize(tok, &passages, model.gpt.cfg.n_positions)?;
    skipped += s;
    ensure!(!items.is_empty(), "{source}: no usable examples");

    let bar = indicatif::ProgressBar::new(items.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "lambada {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let summary = evaluate(&model.gpt, &items, a.seed, Some(tok), Some(&bar))?;
    bar.finish_and_clear();
    let elapsed_s = start.elapsed().as_secs_f64();

    let pick = |hit: bool| -> Vec<Outcome> {
        summary
            .outcomes
            .iter()
            .filter(|o| o.hit == hit)
            .take(5)
            .cloned()
            .collect()
    };
    let report = LambadaReport {
        task: "lambada",
        protocol: PROTOCOL,
        model: a.model.clone(),
        source,
        seed: a.seed,
        n: summary.n,
        hits: summary.hits,
        accuracy: summary.accuracy,
        accuracy_word: summary.accuracy_word,
        avg_target_tokens: summary.avg_target_tokens,
        avg_context_tokens: summary.avg_context_tokens,
        contexts_truncated: summary.contexts_truncated,
        skipped,
        hit_examples: pick(true),
        miss_examples: pick(false),
        elapsed_s,
        examples_per_s: summary.n as f64 / elapsed_s.max(1e-9),
        environment: Environment::detect(),
    };
    write_report(&a.out, &report, &markdown(&report))?;
    eprintln!(
        "lambada: accuracy {:.4} ({}/{}), word accuracy {:.4}; report in {}",
        report.accuracy,
        report.hits,
        report.n,
        report.accuracy_word,
        a.out.display()
    );
    Ok(())
}

/// The last `max` characters of `s` (on a char boundary), with a leading ellipsis when cut.
fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let cut: String = s.chars().skip(n - max).collect();
    format!("…{cut}")
}

/// Makes text safe inside a Markdown table cell.
pub(crate) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// One Markdown line describing the environment.
pub(crate) fn environment_line(e: &Environment) -> String {
    format!(
        "diffugpt {}, backend {}, dtype {}, {} threads, CPU: {}",
        e.diffugpt_version, e.backend, e.dtype, e.threads, e.cpu
    )
}

fn markdown(r: &LambadaReport) -> String {
    let mut s = String::from("# LAMBADA (DiffuGPT protocol)\n\n");
    s += &format!(
        "Model: `{}`  \nSource: `{}`\n\n",
        r.model.display(),
        r.source
    );
    s += &md_table(
        &["metric", "value"],
        &[
            vec!["examples".into(), r.n.to_string()],
            vec![
                "accuracy (target tokens)".into(),
                format!("{:.4} ({}/{})", r.accuracy, r.hits, r.n),
            ],
            vec!["accuracy (word)".into(), format!("{:.4}", r.accuracy_word)],
            vec![
                "avg target tokens".into(),
                format!("{:.3}", r.avg_target_tokens),
            ],
            vec![
                "avg context tokens".into(),
                format!("{:.1}", r.avg_context_tokens),
            ],
            vec![
                "contexts truncated".into(),
                r.contexts_truncated.to_string(),
            ],
            vec!["skipped".into(), r.skipped.to_string()],
            vec![
                "examples/s".into(),
                format!("{:.2} ({:.1} s)", r.examples_per_s, r.elapsed_s),
            ],
        ],
    );
    s += &format!("\nProtocol: {}.\n", r.protocol);
    let misses = r.n - r.hits;
    for (title, list, total) in [
        ("Hits", &r.hit_examples, r.hits),
        ("Misses", &r.miss_examples, misses),
    ] {
        s += &format!("\n## {title} ({} shown of {total})\n\n", list.len());
        if list.is_empty() {
            s += "None.\n";
            continue;
        }
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|o| {
                vec![
                    cell(&tail(&o.context, 80)),
                    cell(&o.target),
                    cell(o.predicted.as_deref().unwrap_or("")),
                    format!("{:?}", o.target_ids),
                    format!("{:?}", o.predicted_ids),
                ]
            })
            .collect();
        s += &md_table(
            &[
                "context (end)",
                "target",
                "predicted",
                "target ids",
                "predicted ids",
            ],
            &rows,
        );
    }
    s += &format!("\nEnvironment: {}\n", environment_line(&r.environment));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::quality::test_models::{oracle_model, EOS};

    #[test]
    fn passage_cut_keeps_the_leading_space_out_of_the_target() {
        let p = Passage::from_text("  He opened the door and saw  his\tdog \n").unwrap();
        assert_eq!(p.context, "He opened the door and saw  his");
        assert_eq!(p.target, "dog");
        assert_eq!(Passage::from_text("alone"), None);
        assert_eq!(Passage::from_text("   "), None);
    }

    #[test]
    fn build_from_text_picks_clean_last_words() {
        let text = "one two three four five six seven eight nine ten eleven apples.\n\
                    -- Some Author\n%\nshort one words\n%\n\
                    a b c d e f g h i j k \"quoted.\"\n\n\
                    a b c d e f g h i j k l m n o p q r s t u v w x y z don't!\n\n\
                    a b c d e f g h i j k 42\n";
        let all = build_from_text(text, 100, 10, 0);
        assert_eq!(
            all,
            vec![
                Passage {
                    context: "one two three four five six seven eight nine ten eleven".into(),
                    target: "apples".into()
                },
                Passage {
                    context: "a b c d e f g h i j k l m n o p q r s t u v w x y z".into(),
                    target: "don't".into()
                },
            ]
        );
        let one = build_from_text(text, 1, 10, 3);
        assert_eq!(one.len(), 1);
        assert!(all.contains(&one[0]));
        assert_eq!(build_from_text(text, 1, 10, 3), one, "seeded");
        assert!(build_from_text(text, 5, 100, 0).is_empty());
        // Source tags on their own line go too, before or after an attribution.
        let dict = "Lantern, n. Something inclosing a light and protecting it from wind.\n\
                    [1913 Webster]\n\n\
                    one two three four five six seven eight nine ten eleven of the lantern.\n\
                    --Shak.\n [Obs.] \n";
        let got = build_from_text(dict, 10, 5, 0);
        let targets: Vec<&str> = got.iter().map(|p| p.target.as_str()).collect();
        assert_eq!(targets, ["wind", "lantern"]);
    }

    #[test]
    fn split_passages_at_blank_and_percent_lines() {
        let p = split_passages("a\nb\n\n\n%\nc\n%\n\n d \n");
        assert_eq!(p, vec!["a\nb", "c", "d"]);
    }

    fn item(context: &[u32], target: &[u32]) -> Item {
        Item {
            context_ids: context.to_vec(),
            target_ids: target.to_vec(),
            passage: Passage {
                context: "c".into(),
                target: "t".into(),
            },
            truncated: 0,
        }
    }

    /// The oracle's row r predicts `targets[r]`; slot j of a canvas after BOS + c context tokens
    /// is read from row c + j.
    #[test]
    fn oracle_model_scores_exactly() {
        let mut t = vec![0u32; 32];
        t[2] = 7;
        t[3] = 10;
        t[4] = 11;
        let m = oracle_model(&t);
        // Context of 3: slots read rows 3, 4 -> [10, 11].
        let hit = evaluate(&m, &[item(&[1, 2, 3], &[10, 11])], 0, None, None).unwrap();
        assert_eq!(hit.accuracy, 1.0);
        assert_eq!(hit.accuracy_word, 1.0);
        assert_eq!(hit.outcomes[0].predicted_ids, vec![10, 11]);
        let miss = evaluate(&m, &[item(&[1, 2, 3], &[10, 12])], 0, None, None).unwrap();
        assert_eq!(miss.accuracy, 0.0);
        assert_eq!(miss.outcomes[0].predicted_ids, vec![10, 11]);
        // Context of 2: rows 2, 3, 4 -> [7, 10, 11].
        let items = [
            item(&[1, 2, 3], &[10, 11]),
            item(&[5, 6], &[7, 10, 11]),
            item(&[5, 6], &[7, 10]),
            item(&[5, 6], &[EOS, 10]),
        ];
        let s = evaluate(&m, &items, 0, None, None).unwrap();
        assert_eq!(s.hits, 3);
        assert_eq!(s.accuracy, 0.75);
        assert_eq!(s.avg_target_tokens, 2.25);
        assert_eq!(s.avg_context_tokens, 2.25);
        let hits: Vec<bool> = s.outcomes.iter().map(|o| o.hit).collect();
        assert_eq!(hits, vec![true, true, true, false]);
        // One token per step: n target tokens take n forward passes.
        let params = protocol_params(3, 0);
        let g = Session::new(&m).generate(&[5, 6], &params, None).unwrap();
        assert_eq!(g.stats.forward_passes, 3);
        assert_eq!(g.canvas, vec![7, 10, 11]);
    }
}
