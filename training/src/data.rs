//! The project's on-disk token format, `diffugpt-tokens-v1`.
//!
//! A prepared split (`train`, `val` or `test`) is a set of files sharing one *stem*
//! (`<out_dir>/train`, say):
//!
//! | file | content |
//! | --- | --- |
//! | `<stem>.json` | the [`Header`] as one JSON object (unknown fields are rejected) |
//! | `<stem>.bin` | the token ids, `n_tokens` of them, little-endian, `u16` or `u32` per `dtype` |
//! | `<stem>.meta.bin` | blocked kinds only: `n_blocks` little-endian `u32`, one per block (see below) |
//!
//! No magic, padding or alignment inside the binary files: `<stem>.bin` is exactly
//! `n_tokens * 2` (`u16`) or `n_tokens * 4` (`u32`) bytes and `<stem>.meta.bin` exactly
//! `n_blocks * 4` bytes. The writer picks `u16` when every id is below 65536 and `u32`
//! otherwise; readers accept either and always hand out `u32` ids.
//!
//! Every file is written atomically (temporary file in the same directory, `fsync`, rename),
//! binaries first and the header last, so a header on disk always describes complete data.
//!
//! # Header fields
//!
//! | field | meaning |
//! | --- | --- |
//! | `format` | always `"diffugpt-tokens-v1"` ([`FORMAT`]) |
//! | `kind` | `"stream"`, `"padded"` or `"mask-eos"` ([`Kind`]) |
//! | `dtype` | `"u16"` or `"u32"` ([`Dtype`]) |
//! | `n_tokens` | ids in `<stem>.bin` |
//! | `n_docs` | documents that contributed tokens (a split long document counts once; skipped ones not at all) |
//! | `block_len` | tokens per block; `0` for `stream` |
//! | `n_blocks` | blocks; `0` for `stream`, else `n_tokens / block_len` |
//! | `eos_id` | the end-of-text id, also used as the BOS at block position 0 (GPT-2: 50256) |
//! | `pad_id` | the id that fills a block after its end token (`null` for `stream`; equal to `eos_id` for the eos-eos variant) |
//! | `mask_id` | the `[MASK]` id the trainer puts on masked positions (DiffuGPT-S: 10541) |
//! | `vocab_size` | every id in the file (and `eos_id`, `pad_id`, `mask_id`) is `< vocab_size` |
//! | `split` | `"train"`, `"val"` or `"test"` ([`Split`]) |
//! | `docs_skipped_too_long` | documents of this split left out because they did not fit a block |
//! | `docs_split_too_long` | documents of this split cut into several blocks |
//! | `length_histogram` | `[[upper_bound, count], ...]` of the token lengths of **all** documents assigned to this split (written, split or skipped); bucket `i` counts lengths in `(upper_bound[i-1], upper_bound[i]]`; bounds are 8, 16, 32, ... up to and including the preparation `block_len`, then [`OVERFLOW_BUCKET`] (`u64::MAX`) |
//!
//! Invariants checked by [`TokenFile::open`] (and by [`TokenFile::write`] before writing):
//! file sizes match `n_tokens`/`n_blocks`/`dtype`; every id `< vocab_size`; the histogram counts
//! sum to `n_docs + docs_skipped_too_long`; documents never contain `eos_id`.
//!
//! # Kinds
//!
//! **`stream`** — every document followed by one `eos_id`, all concatenated; no blocks, no meta
//! file. The number of `eos_id` in the stream equals `n_docs`.
//!
//! **`padded`** and **`mask-eos`** — `n_blocks` blocks of exactly `block_len` ids:
//!
//! ```text
//! position:  0     1 ..= n         n + 1     n + 2 .. block_len
//! token:     eos   doc[0..n]       eos       pad ...
//!            BOS   content         end       padding (pad_id)
//! ```
//!
//! `n <= block_len - 2`. The *end position* `e = n + 1` is the first `eos_id` after position 0
//! ([`end_position`]); every position after it holds `pad_id`. For prompt/answer pairs the
//! content is `prompt ++ answer` (tokenised separately, concatenated). A document longer than
//! `block_len - 2` tokens is either skipped or cut into blocks (counted in the header, never
//! silently truncated): **continuation blocks** `[eos] + doc[a..a + block_len - 1]` with no end
//! token and no padding, then a last block that ends as above. Only a document's real end is
//! marked: an end after every chunk would teach the model ends where the text goes on.
//!
//! The per-block meta value `m` (`<stem>.meta.bin`) is the number of leading block positions that
//! are **never masked** (always visible to the model); `1 <= m <= e` always holds
//! (`1 <= m <= block_len` for a continuation block, which has no `e`):
//!
//! * plain `padded` document: `m = 1` (just the BOS);
//! * `padded` prompt/answer pair: `m = 1 + prompt_len`, so the prompt is never masked (for a
//!   pair cut into chunks: `1 +` the number of prompt tokens inside that chunk);
//! * `mask-eos`: `m = 1 + k`, `k` being the visible prefix length drawn at preparation time
//!   (see below).
//!
//! For `padded`, a trainer samples a masking ratio `t` and masks each position `>= m` with
//! probability `t` (the padding included, so the model learns to place the end).
//!
//! # Mask-eos
//!
//! `mask-eos` data trains the EoS-first length prediction: given a prefix, predict where the
//! text ends. For each block with content length `n` (and `p` prompt tokens in the block, `0`
//! for plain documents) the preparer draws `k` uniformly from `[p, n]` with the seeded RNG and
//! stores `m = 1 + k`. With `L = block_len`, `e = n + 1` the end position and a window `w` chosen
//! by the trainer:
//!
//! * **input** `x`: `x[i] = block[i]` for `i < m`, `x[i] = mask_id` for `m <= i < L`, i.e.
//!   `[BOS] + doc[..k] + [MASK] * (L - 1 - k)` ([`mask_eos_input`]);
//! * **targets**: the padded block itself;
//! * **loss positions**: the token positions `j` in `[max(m, e - w), min(L - 1, e + w)]` — the first
//!   end token and up to `w` tokens either side of it, visible positions excluded. With the
//!   DiffuGPT shift the logits at position `i` predict token `i + 1`, so the loss is taken on the
//!   logits at `i = j - 1` against `block[j]` ([`mask_eos_loss_positions`] returns those `i`).
//!   `e >= m` always, so the end token itself is always in the loss.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// The `format` string of every header of this version.
pub const FORMAT: &str = "diffugpt-tokens-v1";

/// Upper bound of the last histogram bucket (documents longer than `block_len`).
pub const OVERFLOW_BUCKET: u64 = u64::MAX;

/// How the tokens of a file are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Documents each followed by eos, concatenated; no blocks.
    Stream,
    /// Fixed-length blocks `[eos] + doc + [eos] + pad...`, meta = never-masked prefix length.
    Padded,
    /// The padded blocks, meta = `1 + k` with `k` the visible prefix length (EoS training).
    MaskEos,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Stream, Kind::Padded, Kind::MaskEos];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Padded => "padded",
            Kind::MaskEos => "mask-eos",
        }
    }

    /// Whether the kind is made of fixed-length blocks with a meta file.
    pub fn is_blocked(self) -> bool {
        self != Kind::Stream
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "stream" => Ok(Kind::Stream),
            "padded" => Ok(Kind::Padded),
            "mask-eos" | "maskeos" => Ok(Kind::MaskEos),
            _ => Err(format!(
                "unknown kind {s:?} (expected stream, padded or mask-eos)"
            )),
        }
    }
}

/// Width of one id in `<stem>.bin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// Bytes per id.
    pub fn size(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    /// The dtype the writer uses for these ids: `U16` when all are below 65536.
    pub fn for_ids(ids: &[u32]) -> Dtype {
        if ids.iter().all(|&t| t <= u16::MAX as u32) {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of the corpus a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// Also the file stem inside the output directory.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "valid" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(format!("unknown split {s:?} (expected train, val or test)")),
        }
    }
}

/// `<stem>.json`. See the [module docs](self) for the meaning of each field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub kind: Kind,
    pub dtype: Dtype,
    pub n_tokens: u64,
    pub n_docs: u64,
    pub block_len: u64,
    pub n_blocks: u64,
    pub eos_id: u32,
    pub pad_id: Option<u32>,
    pub mask_id: u32,
    pub vocab_size: u32,
    pub split: Split,
    pub docs_skipped_too_long: u64,
    pub docs_split_too_long: u64,
    pub length_histogram: Vec<(u64, u64)>,
}

impl Header {
    /// Checks the header on its own (no data): format, kind/block consistency, special ids,
    /// histogram shape.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.format == FORMAT,
            "unsupported format {:?} (expected {FORMAT:?})",
            self.format
        );
        ensure!(self.vocab_size > 0, "vocab_size is 0");
        ensure!(
            self.eos_id < self.vocab_size,
            "eos_id {} is not below vocab_size {}",
            self.eos_id,
            self.vocab_size
        );
        ensure!(
            self.mask_id < self.vocab_size,
            "mask_id {} is not below vocab_size {}",
            self.mask_id,
            self.vocab_size
        );
        if let Some(pad) = self.pad_id {
            ensure!(
                pad < self.vocab_size,
                "pad_id {pad} is not below vocab_size {}",
                self.vocab_size
            );
        }
        if self.kind.is_blocked() {
            ensure!(
                self.block_len >= 3,
                "{} file with block_len {} (need at least 3: BOS, one token, end)",
                self.kind,
                self.block_len
            );
            ensure!(
                self.pad_id.is_some(),
                "{} file without pad_id (use eos_id for the eos-eos variant)",
                self.kind
            );
            let expect = self.n_blocks.checked_mul(self.block_len);
            ensure!(
                expect == Some(self.n_tokens),
                "n_tokens {} != n_blocks {} * block_len {}",
                self.n_tokens,
                self.n_blocks,
                self.block_len
            );
        } else {
            ensure!(
                self.block_len == 0 && self.n_blocks == 0,
                "stream file with block_len {} and n_blocks {} (both must be 0)",
                self.block_len,
                self.n_blocks
            );
            ensure!(
                self.docs_skipped_too_long == 0 && self.docs_split_too_long == 0,
                "stream file with skipped/split document counts"
            );
        }
        ensure!(
            self.docs_split_too_long <= self.n_docs,
            "docs_split_too_long {} exceeds n_docs {}",
            self.docs_split_too_long,
            self.n_docs
        );
        let mut prev = 0u64;
        let mut total = 0u64;
        for (i, &(bound, count)) in self.length_histogram.iter().enumerate() {
            ensure!(
                i == 0 || bound > prev,
                "length_histogram bounds are not increasing at bucket {i}"
            );
            prev = bound;
            total = total.saturating_add(count);
        }
        let docs = self.n_docs.saturating_add(self.docs_skipped_too_long);
        ensure!(
            total == docs,
            "length_histogram counts {total} documents, header n_docs + docs_skipped_too_long = {docs}"
        );
        Ok(())
    }

    fn bin_bytes(&self) -> Option<u64> {
        self.n_tokens.checked_mul(self.dtype.size() as u64)
    }
}

/// `<stem>.json`
pub fn header_path(stem: &Path) -> PathBuf {
    with_suffix(stem, ".json")
}

/// `<stem>.bin`
pub fn bin_path(stem: &Path) -> PathBuf {
    with_suffix(stem, ".bin")
}

/// `<stem>.meta.bin`
pub fn meta_path(stem: &Path) -> PathBuf {
    with_suffix(stem, ".meta.bin")
}

fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// First position `>= 1` holding `eos_id`: the end token of a block.
pub fn end_position(block: &[u32], eos_id: u32) -> Option<usize> {
    block
        .iter()
        .skip(1)
        .position(|&t| t == eos_id)
        .map(|p| p + 1)
}

/// The mask-eos model input for a block: `block[..meta]` then `mask_id` to the end.
pub fn mask_eos_input(block: &[u32], meta: u32, mask_id: u32) -> Vec<u32> {
    let m = (meta as usize).min(block.len());
    let mut x = block[..m].to_vec();
    x.resize(block.len(), mask_id);
    x
}

/// The logit positions `i` that carry the mask-eos loss (target `block[i + 1]`): token positions
/// `j` in `[max(meta, e - window), min(len - 1, e + window)]`, `e` the end position, shifted by
/// one. Empty when the block has no end token.
pub fn mask_eos_loss_positions(block: &[u32], meta: u32, eos_id: u32, window: usize) -> Vec<usize> {
    let Some(e) = end_position(block, eos_id) else {
        return Vec::new();
    };
    let lo = e.saturating_sub(window).max(meta as usize).max(1);
    let hi = (e + window).min(block.len() - 1);
    (lo..=hi).map(|j| j - 1).collect()
}

/// A validated token file held in memory.
#[derive(Clone, Debug)]
pub struct TokenFile {
    header: Header,
    tokens: Vec<u32>,
    meta: Vec<u32>,
}

impl TokenFile {
    /// Builds an in-memory file, checking every invariant [`TokenFile::open`] checks.
    /// `meta` is required for blocked kinds and must be `None` for `stream`.
    pub fn new(header: Header, tokens: Vec<u32>, meta: Option<Vec<u32>>) -> Result<TokenFile> {
        validate(&header, &tokens, meta.as_deref())?;
        Ok(TokenFile {
            header,
            tokens,
            meta: meta.unwrap_or_default(),
        })
    }

    /// Writes `<stem>.bin`, `<stem>.meta.bin` (blocked kinds) and `<stem>.json` atomically, in
    /// that order, after validating. `header.dtype` must be [`Dtype::for_ids`] of `tokens`.
    /// For `stream`, a stale `<stem>.meta.bin` is removed.
    pub fn write(stem: &Path, header: &Header, tokens: &[u32], meta: Option<&[u32]>) -> Result<()> {
        validate(header, tokens, meta)
            .with_context(|| format!("refusing to write {}", header_path(stem).display()))?;
        let canonical = Dtype::for_ids(tokens);
        ensure!(
            header.dtype == canonical,
            "refusing to write {}: dtype {} but the ids call for {canonical}",
            header_path(stem).display(),
            header.dtype
        );
        if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
        write_atomic_with(&bin_path(stem), |w| match header.dtype {
            Dtype::U16 => write_ids(w, tokens, |t| (t as u16).to_le_bytes()),
            Dtype::U32 => write_ids(w, tokens, u32::to_le_bytes),
        })?;
        let meta_file = meta_path(stem);
        match meta {
            Some(meta) => write_atomic_with(&meta_file, |w| write_ids(w, meta, u32::to_le_bytes))?,
            None => match fs::remove_file(&meta_file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing stale {}", meta_file.display()))
                }
            },
        }
        let json = serde_json::to_vec_pretty(header).context("serializing header")?;
        write_file_atomic(&header_path(stem), &json)
    }

    /// Writes this file under `stem` (see [`TokenFile::write`]).
    pub fn save(&self, stem: &Path) -> Result<()> {
        let meta = self.header.kind.is_blocked().then_some(&self.meta[..]);
        TokenFile::write(stem, &self.header, &self.tokens, meta)
    }

    /// Reads and validates `<stem>.json`, `<stem>.bin` and (blocked kinds) `<stem>.meta.bin`.
    pub fn open(stem: &Path) -> Result<TokenFile> {
        let hpath = header_path(stem);
        let text = fs::read(&hpath).with_context(|| format!("reading {}", hpath.display()))?;
        let header: Header = serde_json::from_slice(&text)
            .with_context(|| format!("{}: invalid {FORMAT} header", hpath.display()))?;
        header
            .validate()
            .with_context(|| format!("{}: invalid header", hpath.display()))?;

        let bpath = bin_path(stem);
        let bytes = fs::read(&bpath).with_context(|| format!("reading {}", bpath.display()))?;
        let expect = header.bin_bytes();
        ensure!(
            expect == Some(bytes.len() as u64),
            "{}: {} bytes, but the header says n_tokens {} of {} = {} bytes (truncated or wrong header)",
            bpath.display(),
            bytes.len(),
            header.n_tokens,
            header.dtype,
            header.n_tokens as u128 * header.dtype.size() as u128
        );
        let tokens: Vec<u32> = match header.dtype {
            Dtype::U16 => bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                .collect(),
            Dtype::U32 => bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        };
        drop(bytes);

        let meta = if header.kind.is_blocked() {
            let mpath = meta_path(stem);
            let bytes = fs::read(&mpath).with_context(|| format!("reading {}", mpath.display()))?;
            ensure!(
                Some(bytes.len() as u64) == header.n_blocks.checked_mul(4),
                "{}: {} bytes, but the header says n_blocks {} of u32 = {} bytes (truncated or wrong header)",
                mpath.display(),
                bytes.len(),
                header.n_blocks,
                header.n_blocks as u128 * 4
            );
            Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<u32>>(),
            )
        } else {
            None
        };
        TokenFile::new(header, tokens, meta)
            .with_context(|| format!("{}: invalid data", bpath.display()))
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// All ids (blocks back to back for blocked kinds).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// `block_len` (0 for `stream`).
    pub fn block_len(&self) -> usize {
        self.header.block_len as usize
    }

    /// Number of blocks (0 for `stream`).
    pub fn n_blocks(&self) -> usize {
        self.meta.len()
    }

    /// Block `i`. Panics when `i >= n_blocks()` (always for `stream`).
    pub fn block(&self, i: usize) -> &[u32] {
        assert!(
            i < self.n_blocks(),
            "block {i} out of range ({} blocks)",
            self.n_blocks()
        );
        let l = self.block_len();
        &self.tokens[i * l..(i + 1) * l]
    }

    /// Meta value of block `i`: leading positions never masked. Panics when out of range.
    pub fn meta(&self, i: usize) -> u32 {
        self.meta[i]
    }

    /// All meta values (empty for `stream`).
    pub fn metas(&self) -> &[u32] {
        &self.meta
    }

    /// `(block, meta)` pairs.
    pub fn blocks(&self) -> impl ExactSizeIterator<Item = (&[u32], u32)> + '_ {
        (0..self.n_blocks()).map(move |i| (self.block(i), self.meta[i]))
    }

    /// End position of block `i` (see [`end_position`]); `None` for a continuation block (the
    /// non-final chunks of a document split under `long_docs = split`).
    pub fn end_position(&self, i: usize) -> Option<usize> {
        end_position(self.block(i), self.header.eos_id)
    }

    /// The stream's documents (the ids between end tokens). Empty for blocked kinds.
    pub fn stream_docs(&self) -> Vec<&[u32]> {
        if self.header.kind.is_blocked() || self.tokens.is_empty() {
            return Vec::new();
        }
        let body = &self.tokens[..self.tokens.len() - 1];
        body.split(|&t| t == self.header.eos_id).collect()
    }
}

fn validate(header: &Header, tokens: &[u32], meta: Option<&[u32]>) -> Result<()> {
    header.validate()?;
    ensure!(
        tokens.len() as u64 == header.n_tokens,
        "{} token ids, header says n_tokens {}",
        tokens.len(),
        header.n_tokens
    );
    if let Some((pos, &id)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t >= header.vocab_size)
    {
        bail!(
            "token id {id} at position {pos} is not below vocab_size {}",
            header.vocab_size
        );
    }
    let eos = header.eos_id;
    if !header.kind.is_blocked() {
        ensure!(meta.is_none(), "stream file with a meta array");
        if let Some(&last) = tokens.last() {
            ensure!(
                last == eos,
                "stream does not end with eos_id {eos} (last id {last})"
            );
        }
        let ends = tokens.iter().filter(|&&t| t == eos).count() as u64;
        ensure!(
            ends == header.n_docs,
            "stream holds {ends} eos ids but n_docs is {}",
            header.n_docs
        );
        return Ok(());
    }
    let Some(meta) = meta else {
        bail!("{} file without a meta array", header.kind);
    };
    ensure!(
        meta.len() as u64 == header.n_blocks,
        "{} meta values, header says n_blocks {}",
        meta.len(),
        header.n_blocks
    );
    let l = header.block_len as usize;
    let pad = header.pad_id.expect("validated: blocked kinds have pad_id");
    for (b, (block, &m)) in tokens.chunks_exact(l).zip(meta).enumerate() {
        ensure!(
            block[0] == eos,
            "block {b} starts with {} instead of the BOS (eos_id {eos})",
            block[0]
        );
        let Some(e) = end_position(block, eos) else {
            // A continuation block: all content (no end, so no padding either).
            if let Some(p) = block[1..].iter().position(|&t| t == pad) {
                bail!(
                    "block {b} has no end token (eos_id {eos}) but holds pad_id {pad} at position {}",
                    p + 1
                );
            }
            ensure!(
                (1..=l).contains(&(m as usize)),
                "block {b}: meta {m} outside [1, block_len {l}]"
            );
            continue;
        };
        if let Some(p) = block[1..e].iter().position(|&t| t == pad) {
            bail!(
                "block {b}: pad_id {pad} at position {} inside the content",
                p + 1
            );
        }
        if let Some(p) = block[e + 1..].iter().position(|&t| t != pad) {
            bail!(
                "block {b}: id {} at position {} after the end token where pad_id {pad} belongs",
                block[e + 1 + p],
                e + 1 + p
            );
        }
        ensure!(
            m as u64 <= header.block_len,
            "block {b}: meta {m} exceeds block_len {}",
            header.block_len
        );
        ensure!(
            (1..=e).contains(&(m as usize)),
            "block {b}: meta {m} outside [1, end position {e}]"
        );
    }
    Ok(())
}

fn write_ids<const N: usize>(
    w: &mut dyn Write,
    ids: &[u32],
    enc: impl Fn(u32) -> [u8; N],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(N * 8192);
    for chunk in ids.chunks(8192) {
        buf.clear();
        for &t in chunk {
            buf.extend_from_slice(&enc(t));
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: temporary file beside it, fsync, rename, fsync of the
/// directory.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = with_suffix(path, &format!(".tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        drop(file);
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename durable; directories cannot be opened for syncing everywhere (Windows).
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
