//! `prepare`: corpus text -> tokenised train/val/test files in the
//! [`diffugpt-tokens-v1`](crate::data) format.
//!
//! Steps, in order:
//!
//! 1. **Read** `input` (UTF-8) and cut it into documents with the [`Splitter`]:
//!    `blank-line` (entries separated by one or more blank lines), `percent` (a line holding
//!    only `%`, the fortune format), `line` (one document per line), `entries` (dictionary
//!    entries: headword line as the prompt, the indented rest as the answer), `json:FIELD` (JSON Lines,
//!    one document per line from a string field) or `pair:PROMPT,ANSWER` (JSON Lines of
//!    prompt/answer pairs). Plain-text documents are trimmed of surrounding whitespace; JSON
//!    strings are kept verbatim. Empty documents (and pairs with an empty answer) are dropped and
//!    counted (`docs_empty`). `max_docs` keeps the first N non-empty documents.
//! 2. **Tokenise** with the `tokenizer.json` (no special tokens added). A pair is
//!    `encode(prompt) ++ encode(answer)`, tokenised separately, so any separator (a leading space
//!    in the answer, say) must be in the data. Documents whose ids contain `eos_id` (the text
//!    `<|endoftext|>`) are dropped and counted (`docs_with_eos`): the format reserves eos for
//!    document ends. Documents containing `mask_id` are kept and counted (`docs_with_mask_id`;
//!    DiffuGPT-S's `[MASK]` is the ordinary token `------------`).
//! 3. **Split by document**, before any blocking: the document indices are shuffled
//!    (Fisher-Yates with `diffugpt::rng::Rng::new(seed)`), the first `round(n * test_frac)` go to
//!    `test`, the next `round(n * val_frac)` to `val`, the rest to `train` (a non-zero fraction
//!    gets at least one document). Each split keeps the shuffled order.
//! 4. **Lay out** each split as the [`Kind`] asks (see the [format docs](crate::data)):
//!    `stream` = each document + eos, concatenated; `padded` = one block
//!    `[eos] + doc + [eos] + [pad] * (block_len - 2 - len)` per document with meta `1` (pairs:
//!    `1 + prompt_len`, so the prompt is never masked); `mask-eos` = the same blocks with meta
//!    `1 + k`, `k` uniform in `[prompt_len, len]` (`prompt_len = 0` for plain documents) from a
//!    per-split RNG derived from `seed`. The [`PadVariant`] picks the pad id: `eos-eos` pads with
//!    eos (50256, vocab 50257), `eos-pad` with a new id equal to the tokenizer's vocabulary size
//!    (50257, header vocab 50258); `mask_id` is 10541 for both unless overridden. Documents
//!    longer than `block_len - 2` are skipped or cut into blocks ([`LongDocs`], [`chunk_bounds`]):
//!    continuation blocks of `block_len - 1` tokens without an end, then a last block that ends;
//!    both are counted, nothing is truncated silently.
//! 5. **Write** `<out_dir>/{train,val,test}.{bin,json}` (+ `.meta.bin` for blocked kinds) and
//!    `<out_dir>/summary.json` (the returned [`Summary`]), every file atomically.
//!
//! The whole run is a pure function of the input, the tokenizer and the options: the same
//! options give byte-identical files.
//!
//! How a trainer uses mask-eos blocks (input `[BOS] + doc[..k] + [MASK]...`, loss at the first
//! end token and `±w` tokens around it with the DiffuGPT shift) is specified in the
//! [format docs](crate::data#mask-eos) and implemented by
//! [`mask_eos_input`](crate::data::mask_eos_input) and
//! [`mask_eos_loss_positions`](crate::data::mask_eos_loss_positions).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use diffugpt::rng::Rng;
use diffugpt::Tokenizer;
use serde::{Deserialize, Serialize};

pub use crate::data::Kind;
use crate::data::{self, Dtype, Header, Split, TokenFile, OVERFLOW_BUCKET};

/// GPT-2's `<|endoftext|>`.
pub const GPT2_EOS: u32 = 50256;
/// DiffuGPT-S's `[MASK]` (the GPT-2 token `------------`).
pub const DIFFUGPT_S_MASK: u32 = 10541;
/// The `format` of `summary.json`.
pub const SUMMARY_FORMAT: &str = "diffugpt-prepare-summary-v1";

/// How the input text is cut into documents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Splitter {
    /// Entries separated by one or more blank (whitespace-only) lines.
    BlankLine,
    /// Entries separated by lines holding only `%` (fortune files).
    Percent,
    /// One document per line.
    Line,
    /// JSON Lines; each line an object whose named string field is the document.
    JsonField(String),
    /// JSON Lines of prompt/answer pairs: `(prompt_field, answer_field)`.
    JsonPair(String, String),
    /// Dictionary-style entries (GCIDE, FOLDOC, the Jargon File): an entry starts at every line
    /// that does not begin with whitespace and runs over the indented (or blank) lines after
    /// it. Each entry is a prompt/answer pair: prompt = its first line (`Headword \pron\ pos.`),
    /// answer = the rest, each line stripped of its indentation, runs of blank lines kept as one,
    /// after a newline.
    Entries,
}

impl Splitter {
    /// `json:text` for `.jsonl`/`.json` inputs, `blank-line` otherwise.
    pub fn default_for(input: &Path) -> Splitter {
        match input.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json") => {
                Splitter::JsonField("text".into())
            }
            _ => Splitter::BlankLine,
        }
    }

    pub fn is_pair(&self) -> bool {
        matches!(self, Splitter::JsonPair(..) | Splitter::Entries)
    }
}

impl fmt::Display for Splitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Splitter::BlankLine => f.write_str("blank-line"),
            Splitter::Percent => f.write_str("percent"),
            Splitter::Line => f.write_str("line"),
            Splitter::JsonField(n) => write!(f, "json:{n}"),
            Splitter::JsonPair(p, a) => write!(f, "pair:{p},{a}"),
            Splitter::Entries => f.write_str("entries"),
        }
    }
}

impl FromStr for Splitter {
    type Err = String;

    /// `blank-line`, `percent`, `line`, `json:FIELD`, `pair:PROMPT,ANSWER`
    /// (also `json` = `json:text`, `pair` = `pair:prompt,answer`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let field = |f: &str| -> std::result::Result<String, String> {
            let f = f.trim();
            if f.is_empty() {
                Err(format!("empty field name in splitter {s:?}"))
            } else {
                Ok(f.to_string())
            }
        };
        match (name.to_ascii_lowercase().replace('_', "-").as_str(), arg) {
            ("blank-line" | "blankline" | "blank", None) => Ok(Splitter::BlankLine),
            ("percent" | "%", None) => Ok(Splitter::Percent),
            ("line", None) => Ok(Splitter::Line),
            ("entries" | "entry", None) => Ok(Splitter::Entries),
            ("json" | "json-field", None) => Ok(Splitter::JsonField("text".into())),
            ("json" | "json-field", Some(f)) => Ok(Splitter::JsonField(field(f)?)),
            ("pair" | "json-pair", None) => {
                Ok(Splitter::JsonPair("prompt".into(), "answer".into()))
            }
            ("pair" | "json-pair", Some(fs)) => match fs.split_once(',') {
                Some((p, a)) => Ok(Splitter::JsonPair(field(p)?, field(a)?)),
                None => Err(format!(
                    "splitter {s:?}: expected pair:PROMPT_FIELD,ANSWER_FIELD"
                )),
            },
            _ => Err(format!(
                "unknown splitter {s:?} (expected blank-line, percent, line, entries, json:FIELD or pair:PROMPT,ANSWER)"
            )),
        }
    }
}

/// What fills a block after its end token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PadVariant {
    /// Pad with eos (50256); vocabulary unchanged (50257).
    EosEos,
    /// Pad with a new id = tokenizer vocabulary size (50257); header vocab_size 50258.
    EosPad,
}

impl fmt::Display for PadVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PadVariant::EosEos => "eos-eos",
            PadVariant::EosPad => "eos-pad",
        })
    }
}

impl FromStr for PadVariant {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "eos-eos" | "eoseos" => Ok(PadVariant::EosEos),
            "eos-pad" | "eospad" => Ok(PadVariant::EosPad),
            _ => Err(format!(
                "unknown pad variant {s:?} (expected eos-eos or eos-pad)"
            )),
        }
    }
}

/// What to do with documents longer than `block_len - 2` tokens (blocked kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LongDocs {
    /// Leave them out (counted in `docs_skipped_too_long`).
    Skip,
    /// Cut them into blocks (counted in `docs_split_too_long`): continuation blocks of
    /// `block_len - 1` tokens with no end token, then a last block that ends (see
    /// [`chunk_bounds`]). Only the real end of the document is marked as an end.
    Split,
}

impl fmt::Display for LongDocs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LongDocs::Skip => "skip",
            LongDocs::Split => "split",
        })
    }
}

impl FromStr for LongDocs {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "skip" => Ok(LongDocs::Skip),
            "split" => Ok(LongDocs::Split),
            _ => Err(format!(
                "unknown long-docs policy {s:?} (expected skip or split)"
            )),
        }
    }
}

/// Everything [`prepare`] needs. [`PrepareOptions::new`] fills the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareOptions {
    /// Plain text, or JSON Lines for the `json:`/`pair:` splitters.
    pub input: PathBuf,
    pub splitter: Splitter,
    pub kind: Kind,
    /// Tokens per block for `padded`/`mask-eos` (content up to `block_len - 2`); for `stream`
    /// only the top of the length histogram. At least 3.
    pub block_len: usize,
    /// Pad id choice (blocked kinds; ignored for `stream`).
    pub variant: PadVariant,
    pub long_docs: LongDocs,
    /// Seeds the split shuffle and the mask-eos prefix lengths.
    pub seed: u64,
    pub val_frac: f64,
    pub test_frac: f64,
    /// Created when missing; existing split files are replaced.
    pub out_dir: PathBuf,
    /// A Hugging Face `tokenizer.json` (GPT-2 BPE for DiffuGPT).
    pub tokenizer: PathBuf,
    /// Keep only the first N non-empty documents of the input.
    pub max_docs: Option<usize>,
    /// End-of-text id, also the BOS (GPT-2: 50256).
    pub eos_id: u32,
    /// `[MASK]` id recorded in the headers (DiffuGPT-S: 10541).
    pub mask_id: u32,
}

impl PrepareOptions {
    /// Defaults: splitter from the input's extension ([`Splitter::default_for`]), `padded`,
    /// block_len 256, `eos-eos`, skip long documents, seed 0, 5% val, 5% test, all documents,
    /// eos 50256, mask 10541.
    pub fn new(input: PathBuf, tokenizer: PathBuf, out_dir: PathBuf) -> PrepareOptions {
        PrepareOptions {
            splitter: Splitter::default_for(&input),
            input,
            kind: Kind::Padded,
            block_len: 256,
            variant: PadVariant::EosEos,
            long_docs: LongDocs::Skip,
            seed: 0,
            val_frac: 0.05,
            test_frac: 0.05,
            out_dir,
            tokenizer,
            max_docs: None,
            eos_id: GPT2_EOS,
            mask_id: DIFFUGPT_S_MASK,
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.block_len >= 3,
            "block_len {} is too small (need at least 3: BOS, one token, end)",
            self.block_len
        );
        for (name, f) in [("val_frac", self.val_frac), ("test_frac", self.test_frac)] {
            ensure!(
                f.is_finite() && (0.0..1.0).contains(&f),
                "{name} {f} must be in [0, 1)"
            );
        }
        ensure!(
            self.val_frac + self.test_frac < 1.0,
            "val_frac {} + test_frac {} leaves nothing to train on",
            self.val_frac,
            self.test_frac
        );
        ensure!(self.max_docs != Some(0), "max_docs is 0");
        Ok(())
    }
}

/// `clap` arguments of the `prepare` subcommand; `PrepareOptions::from(args)`.
#[derive(Clone, Debug, clap::Args)]
pub struct PrepareArgs {
    /// Corpus: plain text, or JSON Lines for the json:/pair: splitters.
    #[arg(long)]
    pub input: PathBuf,
    /// Hugging Face tokenizer.json (GPT-2 BPE).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory for {train,val,test}.{bin,json,meta.bin} and summary.json.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// How to cut the input into documents: blank-line | percent | line | entries | json:FIELD |
    /// pair:PROMPT,ANSWER [default: json:text for .jsonl input, else blank-line].
    #[arg(long)]
    pub splitter: Option<Splitter>,
    /// Layout: stream | padded | mask-eos.
    #[arg(long, default_value = "padded")]
    pub kind: Kind,
    /// Tokens per block (content up to block_len - 2); for stream only the histogram range.
    #[arg(long, default_value_t = 256)]
    pub block_len: usize,
    /// Padding: eos-eos (pad = eos, vocab 50257) | eos-pad (pad = 50257, vocab 50258).
    #[arg(long, default_value = "eos-eos")]
    pub variant: PadVariant,
    /// Documents longer than block_len - 2: skip | split.
    #[arg(long, default_value = "skip")]
    pub long_docs: LongDocs,
    /// Seed of the split shuffle and the mask-eos prefix lengths.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of documents for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_frac: f64,
    /// Fraction of documents for test.
    #[arg(long, default_value_t = 0.05)]
    pub test_frac: f64,
    /// Keep only the first N non-empty documents.
    #[arg(long)]
    pub max_docs: Option<usize>,
    /// End-of-text id, also the BOS [default: the tokenizer's `<|endoftext|>`, else 50256].
    #[arg(long)]
    pub eos_id: Option<u32>,
    /// `[MASK]` id written to the headers [default: the tokenizer's `<|mask|>` (a vocabulary
    /// trained by `diffugpt-train vocab`), else DiffuGPT-S's 10541].
    #[arg(long)]
    pub mask_id: Option<u32>,
}

impl PrepareArgs {
    /// Fills the ids not given on the command line from the tokenizer's special tokens
    /// (`<|endoftext|>`, `<|mask|>`; see [`crate::vocab`]), so a corpus-trained vocabulary needs
    /// no id flags. Without them the GPT-2 / DiffuGPT-S defaults apply ([`PrepareOptions::from`]).
    pub fn resolve_special_ids(&mut self) -> Result<()> {
        if self.eos_id.is_some() && self.mask_id.is_some() {
            return Ok(());
        }
        let (eos, mask) = crate::vocab::special_ids(&self.tokenizer)?;
        self.eos_id = self.eos_id.or(eos);
        self.mask_id = self.mask_id.or(mask);
        Ok(())
    }
}

impl From<PrepareArgs> for PrepareOptions {
    fn from(a: PrepareArgs) -> PrepareOptions {
        PrepareOptions {
            splitter: a
                .splitter
                .unwrap_or_else(|| Splitter::default_for(&a.input)),
            input: a.input,
            kind: a.kind,
            block_len: a.block_len,
            variant: a.variant,
            long_docs: a.long_docs,
            seed: a.seed,
            val_frac: a.val_frac,
            test_frac: a.test_frac,
            out_dir: a.out_dir,
            tokenizer: a.tokenizer,
            max_docs: a.max_docs,
            eos_id: a.eos_id.unwrap_or(GPT2_EOS),
            mask_id: a.mask_id.unwrap_or(DIFFUGPT_S_MASK),
        }
    }
}

/// Per-split counts in [`Summary`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSummary {
    /// Documents assigned to the split (skipped ones included).
    pub docs: usize,
    /// Documents that contributed tokens (the header's `n_docs`).
    pub docs_written: usize,
    pub tokens: u64,
    pub blocks: u64,
    pub docs_skipped_too_long: usize,
    pub docs_split_too_long: usize,
}

/// `<out_dir>/summary.json`, also returned by [`prepare`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub format: String,
    pub input: PathBuf,
    pub tokenizer: PathBuf,
    pub splitter: String,
    pub kind: Kind,
    pub variant: PadVariant,
    pub long_docs: LongDocs,
    pub block_len: usize,
    pub seed: u64,
    pub val_frac: f64,
    pub test_frac: f64,
    pub max_docs: Option<usize>,
    pub eos_id: u32,
    pub pad_id: Option<u32>,
    pub mask_id: u32,
    pub vocab_size: u32,
    /// Documents split into train/val/test (after dropping empty and eos-holding ones).
    pub docs: usize,
    /// Empty documents dropped.
    pub docs_empty: usize,
    /// Documents dropped because their ids contained `eos_id`.
    pub docs_with_eos: usize,
    /// Kept documents whose ids contain `mask_id` (informational).
    pub docs_with_mask_id: usize,
    pub docs_skipped_too_long: usize,
    pub docs_split_too_long: usize,
    pub train: SplitSummary,
    pub val: SplitSummary,
    pub test: SplitSummary,
    /// Over all `docs`; buckets as in the headers.
    pub length_histogram: Vec<(u64, u64)>,
    pub mean_doc_len: f64,
    pub median_doc_len: f64,
    pub max_doc_len: usize,
}

impl Summary {
    pub fn split(&self, s: Split) -> &SplitSummary {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

/// A document as cut from the input, before tokenisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawDoc {
    Text(String),
    Pair { prompt: String, answer: String },
}

/// The documents of an input text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawDocs {
    pub docs: Vec<RawDoc>,
    /// Empty documents (or pairs with an empty answer) dropped.
    pub empty: usize,
}

/// Cuts `text` into documents (step 1 of [`prepare`], without `max_docs`).
pub fn split_documents(text: &str, splitter: &Splitter) -> Result<RawDocs> {
    let mut out = RawDocs::default();
    let push_text = |s: &str, out: &mut RawDocs| {
        let s = s.trim();
        if s.is_empty() {
            out.empty += 1;
        } else {
            out.docs.push(RawDoc::Text(s.to_string()));
        }
    };
    match splitter {
        Splitter::Line => {
            for line in text.lines() {
                push_text(line, &mut out);
            }
        }
        Splitter::BlankLine | Splitter::Percent => {
            let is_sep = |line: &str| match splitter {
                Splitter::Percent => line.trim_end() == "%",
                _ => line.trim().is_empty(),
            };
            let mut cur: Vec<&str> = Vec::new();
            for line in text.lines() {
                if is_sep(line) {
                    // `%%` is an empty entry; a run of blank lines is one separator.
                    if matches!(splitter, Splitter::Percent) || !cur.is_empty() {
                        push_text(&cur.join("\n"), &mut out);
                    }
                    cur.clear();
                } else {
                    cur.push(line);
                }
            }
            // The entry after the last separator; trailing whitespace is not an empty entry.
            let last = cur.join("\n");
            if !last.trim().is_empty() {
                push_text(&last, &mut out);
            }
        }
        Splitter::Entries => {
            let mut head: Option<&str> = None;
            let mut body: Vec<&str> = Vec::new();
            fn flush(head: Option<&str>, body: &mut Vec<&str>, out: &mut RawDocs) {
                if let Some(h) = head {
                    let answer = entry_answer(body);
                    if answer.is_empty() {
                        out.empty += 1;
                    } else {
                        out.docs.push(RawDoc::Pair {
                            prompt: h.trim_end().to_string(),
                            answer,
                        });
                    }
                }
                body.clear();
            }
            for line in text.lines() {
                let starts_entry = line.chars().next().is_some_and(|c| !c.is_whitespace());
                if starts_entry {
                    flush(head.take(), &mut body, &mut out);
                    head = Some(line);
                } else if head.is_some() {
                    body.push(line);
                }
            }
            flush(head, &mut body, &mut out);
        }
        Splitter::JsonField(field) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    out.empty += 1;
                    continue;
                }
                let s = json_string(line, i + 1, field)?;
                if s.trim().is_empty() {
                    out.empty += 1;
                } else {
                    out.docs.push(RawDoc::Text(s));
                }
            }
        }
        Splitter::JsonPair(pf, af) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    out.empty += 1;
                    continue;
                }
                let v = json_object(line, i + 1)?;
                let prompt = field_str(&v, i + 1, pf)?;
                let answer = field_str(&v, i + 1, af)?;
                if answer.trim().is_empty() {
                    out.empty += 1;
                } else {
                    out.docs.push(RawDoc::Pair { prompt, answer });
                }
            }
        }
    }
    Ok(out)
}

/// The answer of an [`Splitter::Entries`] entry: `"\n"` + its lines without indentation, a run
/// of blank lines kept as one empty line, none at either end; empty when the body has no text.
fn entry_answer(body: &[&str]) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for l in body.iter().map(|l| l.trim()) {
        if !(l.is_empty() && lines.last().is_none_or(|p| p.is_empty())) {
            lines.push(l);
        }
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!("\n{}", lines.join("\n"))
    }
}

fn json_object(line: &str, lineno: usize) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str::<serde_json::Value>(line)
        .with_context(|| format!("line {lineno}: invalid JSON"))?
    {
        serde_json::Value::Object(m) => Ok(m),
        other => bail!(
            "line {lineno}: expected a JSON object, found {}",
            json_type(&other)
        ),
    }
}

fn field_str(
    v: &serde_json::Map<String, serde_json::Value>,
    lineno: usize,
    field: &str,
) -> Result<String> {
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!(
            "line {lineno}: field {field:?} is {}, expected a string",
            json_type(other)
        ),
        None => bail!("line {lineno}: no field {field:?}"),
    }
}

fn json_string(line: &str, lineno: usize, field: &str) -> Result<String> {
    field_str(&json_object(line, lineno)?, lineno, field)
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Upper bounds of the length histogram for `block_len`: 8, 16, 32, ... below `block_len`,
/// then `block_len`, then [`OVERFLOW_BUCKET`].
pub fn histogram_bounds(block_len: usize) -> Vec<u64> {
    let top = block_len as u64;
    let mut b = Vec::new();
    let mut x = 8u64;
    while x < top {
        b.push(x);
        x *= 2;
    }
    b.push(top);
    b.push(OVERFLOW_BUCKET);
    b
}

/// Histogram of `lengths` over [`histogram_bounds`]`(block_len)`.
pub fn length_histogram(
    lengths: impl IntoIterator<Item = usize>,
    block_len: usize,
) -> Vec<(u64, u64)> {
    let mut h: Vec<(u64, u64)> = histogram_bounds(block_len)
        .into_iter()
        .map(|b| (b, 0))
        .collect();
    for len in lengths {
        let i = h.partition_point(|&(b, _)| b < len as u64);
        h[i].1 += 1;
    }
    h
}

/// A tokenised document: `tokens[..prompt_len]` is the prompt (0 for plain documents).
#[derive(Clone, Debug)]
struct Doc {
    tokens: Vec<u32>,
    prompt_len: usize,
}

/// Runs the whole preparation (see the [module docs](self)) and returns what it wrote to
/// `<out_dir>/summary.json`.
pub fn prepare(opts: &PrepareOptions) -> Result<Summary> {
    opts.validate()?;
    let tokenizer = Tokenizer::from_file(&opts.tokenizer)
        .with_context(|| format!("loading tokenizer {}", opts.tokenizer.display()))?;
    let tok_vocab = u32::try_from(tokenizer.vocab_size())
        .ok()
        .filter(|&v| v < u32::MAX)
        .context("tokenizer vocabulary does not fit u32 ids")?;
    ensure!(
        opts.eos_id < tok_vocab,
        "eos_id {} is outside the tokenizer's {tok_vocab} ids",
        opts.eos_id
    );
    ensure!(
        opts.mask_id < tok_vocab,
        "mask_id {} is outside the tokenizer's {tok_vocab} ids",
        opts.mask_id
    );
    ensure!(
        opts.mask_id != opts.eos_id,
        "mask_id and eos_id are both {}",
        opts.eos_id
    );
    let (pad_id, vocab_size) = match (opts.kind.is_blocked(), opts.variant) {
        (false, _) => (None, tok_vocab),
        (true, PadVariant::EosEos) => (Some(opts.eos_id), tok_vocab),
        (true, PadVariant::EosPad) => (Some(tok_vocab), tok_vocab + 1),
    };

    let text = std::fs::read_to_string(&opts.input)
        .with_context(|| format!("reading {} (UTF-8 text)", opts.input.display()))?;
    let mut raw = split_documents(&text, &opts.splitter)
        .with_context(|| format!("{}: splitting with {}", opts.input.display(), opts.splitter))?;
    drop(text);
    if let Some(n) = opts.max_docs {
        raw.docs.truncate(n);
    }

    let encoded = encode_all(&tokenizer, &raw.docs)?;
    drop(raw.docs);
    let mut docs = Vec::with_capacity(encoded.len());
    let mut docs_empty = raw.empty;
    let mut docs_with_eos = 0;
    let mut docs_with_mask_id = 0;
    for d in encoded {
        if d.tokens.len() == d.prompt_len {
            docs_empty += 1;
        } else if d.tokens.contains(&opts.eos_id) {
            docs_with_eos += 1;
        } else {
            if d.tokens.contains(&opts.mask_id) {
                docs_with_mask_id += 1;
            }
            docs.push(d);
        }
    }

    let assignment = assign_splits(docs.len(), opts.seed, opts.val_frac, opts.test_frac)?;
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;

    let mut split_summaries = Vec::new();
    for (s, idx) in Split::ALL.into_iter().zip(&assignment) {
        let (header, tokens, meta, summary) = layout_split(opts, s, idx, &docs, pad_id, vocab_size);
        let stem = opts.out_dir.join(s.as_str());
        TokenFile::write(&stem, &header, &tokens, meta.as_deref())
            .with_context(|| format!("writing the {s} split"))?;
        split_summaries.push(summary);
    }

    let mut lengths: Vec<usize> = docs.iter().map(|d| d.tokens.len()).collect();
    lengths.sort_unstable();
    let n = lengths.len();
    let mean = if n == 0 {
        0.0
    } else {
        lengths.iter().map(|&l| l as f64).sum::<f64>() / n as f64
    };
    let median = match n {
        0 => 0.0,
        _ if n % 2 == 1 => lengths[n / 2] as f64,
        _ => (lengths[n / 2 - 1] + lengths[n / 2]) as f64 / 2.0,
    };
    let mut it = split_summaries.into_iter();
    let (train, val, test) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let summary = Summary {
        format: SUMMARY_FORMAT.into(),
        input: opts.input.clone(),
        tokenizer: opts.tokenizer.clone(),
        splitter: opts.splitter.to_string(),
        kind: opts.kind,
        variant: opts.variant,
        long_docs: opts.long_docs,
        block_len: opts.block_len,
        seed: opts.seed,
        val_frac: opts.val_frac,
        test_frac: opts.test_frac,
        max_docs: opts.max_docs,
        eos_id: opts.eos_id,
        pad_id,
        mask_id: opts.mask_id,
        vocab_size,
        docs: n,
        docs_empty,
        docs_with_eos,
        docs_with_mask_id,
        docs_skipped_too_long: train.docs_skipped_too_long
            + val.docs_skipped_too_long
            + test.docs_skipped_too_long,
        docs_split_too_long: train.docs_split_too_long
            + val.docs_split_too_long
            + test.docs_split_too_long,
        length_histogram: length_histogram(lengths.iter().copied(), opts.block_len),
        mean_doc_len: mean,
        median_doc_len: median,
        max_doc_len: lengths.last().copied().unwrap_or(0),
        train,
        val,
        test,
    };
    let json = serde_json::to_vec_pretty(&summary).context("serializing the summary")?;
    data::write_file_atomic(&opts.out_dir.join("summary.json"), &json)?;
    Ok(summary)
}

/// Tokenises every document, in parallel; the order is kept.
fn encode_all(tokenizer: &Tokenizer, raw: &[RawDoc]) -> Result<Vec<Doc>> {
    let encode_one = |d: &RawDoc| -> Result<Doc> {
        Ok(match d {
            RawDoc::Text(t) => Doc {
                tokens: tokenizer.encode(t)?,
                prompt_len: 0,
            },
            RawDoc::Pair { prompt, answer } => {
                let mut tokens = tokenizer.encode(prompt)?;
                let prompt_len = tokens.len();
                tokens.extend(tokenizer.encode(answer)?);
                Doc { tokens, prompt_len }
            }
        })
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16);
    if threads <= 1 || raw.len() < 64 {
        return raw
            .iter()
            .map(encode_one)
            .collect::<Result<Vec<_>>>()
            .context("tokenising");
    }
    let chunk = raw.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Doc>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = raw
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(encode_one).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("tokeniser thread panicked"))
            .collect()
    });
    let mut out = Vec::with_capacity(raw.len());
    for p in parts {
        out.extend(p.context("tokenising")?);
    }
    Ok(out)
}

/// Document indices per split (`[train, val, test]`), each in shuffled order.
fn assign_splits(n: usize, seed: u64, val_frac: f64, test_frac: f64) -> Result<[Vec<usize>; 3]> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    let count = |f: f64| -> usize {
        if f <= 0.0 || n == 0 {
            0
        } else {
            ((n as f64 * f).round() as usize).max(1)
        }
    };
    let (n_test, n_val) = (count(test_frac), count(val_frac));
    ensure!(
        n == 0 || n_test + n_val < n,
        "{n} documents: {n_val} for val and {n_test} for test leave none to train on"
    );
    let test = perm[..n_test].to_vec();
    let val = perm[n_test..n_test + n_val].to_vec();
    let train = perm[n_test + n_val..].to_vec();
    Ok([train, val, test])
}

/// The RNG for mask-eos prefix lengths of one split, independent of the other splits.
fn mask_eos_rng(seed: u64, split: Split) -> Rng {
    let tag = match split {
        Split::Train => 1u64,
        Split::Val => 2,
        Split::Test => 3,
    };
    Rng::new(seed ^ 0x6d61_736b_2d65_6f73u64.wrapping_mul(tag))
}

type Laid = (Header, Vec<u32>, Option<Vec<u32>>, SplitSummary);

/// Token ranges of the blocks of an `n`-token document in `block_len` blocks: one range when it
/// fits (`n <= block_len - 2`: content, end, padding); otherwise continuation chunks of exactly
/// `block_len - 1` tokens (no end, no padding) and a last chunk of `1..=block_len - 2` tokens
/// that ends. When the continuations use up the document exactly, there is no last chunk and
/// the document's end is not marked (an empty block `[BOS, end]` would teach an end without
/// any text, a wrong signal too).
pub fn chunk_bounds(n: usize, block_len: usize) -> Vec<(usize, usize)> {
    let (cap, cont) = (block_len - 2, block_len - 1);
    let mut out = Vec::new();
    let mut start = 0;
    while n - start > cap {
        out.push((start, start + cont));
        start += cont;
    }
    if start < n || n == 0 {
        out.push((start, n));
    }
    out
}

fn layout_split(
    opts: &PrepareOptions,
    split: Split,
    idx: &[usize],
    docs: &[Doc],
    pad_id: Option<u32>,
    vocab_size: u32,
) -> Laid {
    let eos = opts.eos_id;
    let mut tokens = Vec::new();
    let mut meta = Vec::new();
    let mut s = SplitSummary {
        docs: idx.len(),
        ..Default::default()
    };
    let hist = length_histogram(idx.iter().map(|&i| docs[i].tokens.len()), opts.block_len);
    let mut rng = mask_eos_rng(opts.seed, split);
    let l = opts.block_len;
    let cap = l - 2;
    for &i in idx {
        let d = &docs[i];
        if !opts.kind.is_blocked() {
            tokens.extend_from_slice(&d.tokens);
            tokens.push(eos);
            s.docs_written += 1;
            continue;
        }
        if d.tokens.len() > cap {
            match opts.long_docs {
                LongDocs::Skip => {
                    s.docs_skipped_too_long += 1;
                    continue;
                }
                LongDocs::Split => s.docs_split_too_long += 1,
            }
        }
        s.docs_written += 1;
        let pad = pad_id.expect("blocked kinds have a pad id");
        for (start, end) in chunk_bounds(d.tokens.len(), l) {
            let chunk = &d.tokens[start..end];
            let prompt_in_chunk = d.prompt_len.saturating_sub(start).min(chunk.len());
            let k = match opts.kind {
                Kind::MaskEos => {
                    let span = (chunk.len() - prompt_in_chunk) as u64 + 1;
                    prompt_in_chunk + rng.below(span) as usize
                }
                _ => prompt_in_chunk,
            };
            meta.push(1 + k as u32);
            tokens.push(eos);
            tokens.extend_from_slice(chunk);
            // Only the document's last chunk ends: an end token after an earlier chunk would
            // teach the model an end where the text goes on. A continuation chunk fills the
            // block (block_len - 1 tokens after the BOS) and has no end and no padding.
            if chunk.len() <= cap {
                tokens.push(eos);
                tokens.resize(tokens.len() + cap - chunk.len(), pad);
            }
        }
    }
    s.tokens = tokens.len() as u64;
    s.blocks = meta.len() as u64;
    let blocked = opts.kind.is_blocked();
    let header = Header {
        format: data::FORMAT.into(),
        kind: opts.kind,
        dtype: Dtype::for_ids(&tokens),
        n_tokens: tokens.len() as u64,
        n_docs: s.docs_written as u64,
        block_len: if blocked { l as u64 } else { 0 },
        n_blocks: meta.len() as u64,
        eos_id: eos,
        pad_id,
        mask_id: opts.mask_id,
        vocab_size,
        split,
        docs_skipped_too_long: s.docs_skipped_too_long as u64,
        docs_split_too_long: s.docs_split_too_long as u64,
        length_histogram: hist,
    };
    (header, tokens, blocked.then_some(meta), s)
}
