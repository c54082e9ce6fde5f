//! `diffugpt-train text`: a prepared padded or mask-eos split back to text, for the evals that
//! read text (`eval compare --prompts`, `eval lambada --from-text`) and for people. The split's
//! held-out documents stay the same documents: the text is decoded from the token file, not cut
//! again from the corpus.
//!
//! Writes `prompts.txt` (each block's visible prefix after BOS — for dictionary entries the
//! headword line — one per line, newlines inside shown as spaces) and `docs.txt` (each block's
//! whole document, prompt and answer, documents separated by a line holding `%`, the separator
//! `eval lambada --from-text` splits at).

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::data::TokenFile;

/// `clap` arguments of `text`.
#[derive(clap::Args, Debug)]
pub struct TextArgs {
    /// Token-file stem of a padded or mask-eos split (e.g. runs/data/gcide-padded/test)
    #[arg(long)]
    pub data: PathBuf,
    /// The tokenizer.json the split was prepared with
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory (prompts.txt, docs.txt)
    #[arg(long)]
    pub out: PathBuf,
    /// The first N blocks only
    #[arg(long)]
    pub max: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct TextSummary {
    pub documents: usize,
    pub prompts: PathBuf,
    pub docs: PathBuf,
}

pub fn run(a: &TextArgs) -> Result<TextSummary> {
    let file = TokenFile::open(&a.data)?;
    let h = file.header().clone();
    ensure!(
        h.kind.is_blocked(),
        "{}: a {} file has no documents with prompts (use a padded or mask-eos split)",
        a.data.display(),
        h.kind.as_str()
    );
    let tok = diffugpt::Tokenizer::from_file(&a.tokenizer)
        .with_context(|| format!("loading {}", a.tokenizer.display()))?;
    ensure!(
        tok.vocab_size() as u32 <= h.vocab_size,
        "{} has {} ids, more than the split's vocab_size {}: not the tokenizer it was prepared with",
        a.tokenizer.display(),
        tok.vocab_size(),
        h.vocab_size
    );
    let n = a.max.unwrap_or(usize::MAX).min(file.n_blocks());
    let (mut prompts, mut docs) = (String::new(), String::new());
    for i in 0..n {
        let block = file.block(i);
        // Continuation chunks (no end) are not whole documents.
        let Some(end) = file.end_position(i) else {
            continue;
        };
        let meta = (file.meta(i) as usize).clamp(1, end);
        let prompt = tok.decode(&block[1..meta], true)?;
        let doc = tok.decode(&block[1..end], true)?;
        prompts.push_str(&prompt.replace('\n', " "));
        prompts.push('\n');
        docs.push_str(doc.trim_end());
        docs.push_str("\n%\n");
    }
    std::fs::create_dir_all(&a.out)?;
    let (p, d) = (a.out.join("prompts.txt"), a.out.join("docs.txt"));
    std::fs::write(&p, prompts).with_context(|| format!("writing {}", p.display()))?;
    std::fs::write(&d, &docs).with_context(|| format!("writing {}", d.display()))?;
    Ok(TextSummary {
        documents: docs.matches("\n%\n").count(),
        prompts: p,
        docs: d,
    })
}
