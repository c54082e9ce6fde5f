//! Text <-> token ids through any Hugging Face `tokenizer.json`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use tokenizers::models::ModelWrapper;

use crate::error::{Error, Result};

/// A loaded tokenizer. Thread-safe (`encode`/`decode` take `&self`).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Largest id the tokenizer can emit, plus one. Ids may be sparse (a 12-token vocabulary
    /// can use id 500), so this, not the token count, is what must fit the model's rows.
    id_bound: usize,
    /// The most input bytes one token can cover, where the model bounds it: then a text's byte
    /// length bounds its token count from below before it is tokenised. For BPE (GPT-2's
    /// byte-level BPE included) a token is a vocabulary entry (whose UTF-8 length is at least the
    /// bytes it covers: a byte-level entry spells one input byte with one or two bytes) or one
    /// unknown character. `None` when an unknown token can span a whole word (WordPiece,
    /// WordLevel, Unigram, BPE with fused unknowns).
    max_token_bytes: Option<usize>,
}

/// Room for normalisers that shrink the text before it is split (stripping, NFKC folding).
const SHRINK_SLACK: usize = 4;

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            // Name the file without repeating the variant's "tokenizer error: " prefix.
            Error::Tokenizer(msg) => Error::Tokenizer(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = guarded("loading tokenizer.json", || {
            tokenizers::Tokenizer::from_bytes(bytes)
        })?
        .map_err(|e| Error::Tokenizer(format!("malformed tokenizer.json: {e}")))?;
        let (id_bound, max_token_bytes) = guarded("reading the vocabulary", || {
            let vocab = inner.get_vocab(true);
            let bound = vocab.values().map(|&id| id as usize + 1).max();
            let longest = vocab.keys().map(String::len).max().unwrap_or(0);
            let per_token = match inner.get_model() {
                ModelWrapper::BPE(b) if !(b.fuse_unk && b.unk_token.is_some()) => {
                    Some(longest.max(4)) // 4: one unknown character
                }
                _ => None,
            };
            (bound.unwrap_or(0), per_token)
        })?;
        Ok(Tokenizer {
            inner,
            id_bound,
            max_token_bytes,
        })
    }

    /// Number of ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One more than the largest id the tokenizer can emit (added tokens included).
    pub fn id_bound(&self) -> usize {
        self.id_bound
    }

    /// Checks that every id the tokenizer can emit exists in a model with `model_vocab` rows.
    pub fn check_against_model(&self, model_vocab: usize) -> Result<()> {
        if self.id_bound > model_vocab {
            return Err(Error::Tokenizer(format!(
                "tokenizer can emit id {} but the model has only {model_vocab} embedding rows",
                self.id_bound - 1
            )));
        }
        Ok(())
    }

    /// The id of one token of the vocabulary (added tokens included), e.g. `<|endoftext|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes without adding special tokens (the canvas builder adds BOS itself).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = guarded("encoding", || self.inner.encode(text, false))?
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes a text that will be refused if it has more than `max_tokens` tokens (the caller
    /// checks the count). A text too long to fit in any case (more bytes than `max_tokens` of the
    /// longest tokens could cover) is refused with `Error::Prompt` *before* tokenising, so a huge
    /// prompt costs neither time nor memory (tokenising takes ~100 bytes per input byte).
    pub fn encode_at_most(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let Some(per_token) = self.max_token_bytes else {
            return self.encode(text);
        };
        let max_bytes = max_tokens
            .saturating_mul(per_token)
            .saturating_mul(SHRINK_SLACK);
        if text.len() > max_bytes {
            return Err(Error::Prompt(format!(
                "the prompt has {} bytes, more than {max_tokens} tokens can hold (at most {max_bytes} bytes); not tokenised",
                text.len()
            )));
        }
        self.encode(text)
    }

    /// Decodes ids; ids unknown to the tokenizer (a new pad row, say) are dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let known: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| self.inner.id_to_token(i).is_some())
            .collect();
        guarded("decoding", || self.inner.decode(&known, skip_special))?
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// The `tokenizers` crate can panic on malformed-but-parseable files (found by fuzzing: a
/// truncated decoder section); a tokenizer.json from the internet must not take the host down, so
/// every call into it is guarded and a panic becomes `Error::Tokenizer`.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        Error::Tokenizer(format!(
            "the tokenizer failed while {what} (malformed tokenizer.json?)"
        ))
    })
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({} tokens)", self.vocab_size())
    }
}
