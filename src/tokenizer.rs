//! Text <-> token ids through any Hugging Face `tokenizer.json`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::error::{Error, Result};

/// A loaded tokenizer. Thread-safe (`encode`/`decode` take `&self`).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Largest id the tokenizer can emit, plus one. Ids may be sparse (a 12-token vocabulary
    /// can use id 500), so this, not the token count, is what must fit the model's rows.
    id_bound: usize,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = guarded("loading tokenizer.json", || {
            tokenizers::Tokenizer::from_bytes(bytes)
        })?
        .map_err(|e| Error::Tokenizer(format!("malformed tokenizer.json: {e}")))?;
        let id_bound = guarded("reading the vocabulary", || {
            inner
                .get_vocab(true)
                .values()
                .map(|&id| id as usize + 1)
                .max()
                .unwrap_or(0)
        })?;
        Ok(Tokenizer { inner, id_bound })
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

    /// Encodes without adding special tokens (the canvas builder adds BOS itself).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = guarded("encoding", || self.inner.encode(text, false))?
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
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
