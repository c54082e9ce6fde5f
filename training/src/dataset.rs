//! Training examples from prepared token files (see `data`): random windows of a stream, or whole
//! blocks of padded / mask-EoS data with their fixed (never masked) prefix and end position.

use std::path::Path;

use anyhow::{bail, Result};
use diffugpt::rng::Rng;

use crate::config::Pipeline;
use crate::data::TokenFile;

/// One training sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// Leading tokens that are never masked and carry no loss (BOS, prompt, visible prefix).
    pub fixed: usize,
    /// Index of the first end token at or after `fixed` (blocked data).
    pub end: Option<usize>,
}

pub struct Dataset {
    file: TokenFile,
    blocked: bool,
}

impl Dataset {
    pub fn open(stem: &Path, pipeline: Pipeline) -> Result<Self> {
        let file = TokenFile::open(stem)?;
        let blocked = file.header().block_len > 0;
        if pipeline == Pipeline::MaskEos && !blocked {
            bail!(
                "{}: the mask-eos pipeline needs blocked (padded or mask-eos) data",
                stem.display()
            );
        }
        if !blocked && file.tokens().len() < 2 {
            bail!("{}: stream holds fewer than 2 tokens", stem.display());
        }
        if blocked && file.header().n_blocks == 0 {
            bail!("{}: no blocks", stem.display());
        }
        Ok(Dataset { file, blocked })
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The data file's header (special ids, vocabulary, layout).
    pub fn header(&self) -> &crate::data::Header {
        self.file.header()
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.file.header().pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.file.header().vocab_size as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of blocks, or of tokens in a stream.
    pub fn len(&self) -> usize {
        if self.blocked {
            self.file.header().n_blocks as usize
        } else {
            self.file.tokens().len().max(1)
        }
    }

    fn block_example(&self, i: usize) -> Example {
        let h = self.file.header();
        let tokens = self.file.block(i).to_vec();
        let fixed = (self.file.meta(i) as usize).clamp(1, tokens.len());
        let end =
            (fixed..tokens.len()).find(|&j| tokens[j] == h.eos_id || Some(tokens[j]) == h.pad_id);
        Example { tokens, fixed, end }
    }

    fn window(&self, start: usize, seq_len: usize) -> Example {
        let s = self.file.tokens();
        let n = (seq_len - 1).min(s.len());
        let start = start.min(s.len() - n);
        let mut tokens = Vec::with_capacity(n + 1);
        tokens.push(self.file.header().eos_id);
        tokens.extend_from_slice(&s[start..start + n]);
        Example {
            tokens,
            fixed: 1,
            end: None,
        }
    }

    /// A random example (uses `rng`).
    pub fn sample(&self, rng: &mut Rng, seq_len: usize) -> Example {
        if self.blocked {
            self.block_example(rng.below(self.len() as u64) as usize)
        } else {
            let span = self.file.tokens().len().saturating_sub(seq_len - 1) + 1;
            self.window(rng.below(span as u64) as usize, seq_len)
        }
    }

    /// The i-th example in a fixed order (validation).
    pub fn get(&self, i: usize, seq_len: usize) -> Example {
        if self.blocked {
            self.block_example(i % self.len())
        } else {
            let s = self.file.tokens().len();
            self.window((i * (seq_len - 1)) % s.max(1), seq_len)
        }
    }
}
