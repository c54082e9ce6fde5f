//! The high-level entry point: weights + tokenizer + special ids, loaded once, shared read-only.

use std::path::Path;

use crate::decode::{GenerateParams, Generation, Session};
use crate::error::{Error, Result};
use crate::model::Gpt2;
use crate::tokenizer::Tokenizer;
use crate::weights::{self, CheckpointInfo, LoadOptions, ModelFiles};

/// A loaded model. Immutable after loading, so one `Model` can serve many threads, each with its
/// own [`Session`].
pub struct Model {
    pub gpt: Gpt2,
    pub tokenizer: Option<Tokenizer>,
    pub info: CheckpointInfo,
}

/// Text in, text out.
#[derive(Clone, Debug)]
pub struct TextGeneration {
    pub text: String,
    pub generation: Generation,
}

impl Model {
    /// Loads `model.safetensors` (or a directory with it, `config.json` and `tokenizer.json`).
    pub fn load(path: &Path, mut opts: LoadOptions) -> Result<Self> {
        let files = ModelFiles::locate(path)?;
        let tok_path = opts.tokenizer.take().or(files.tokenizer);
        let (gpt, info) = weights::load(path, opts)?;
        let tokenizer = match tok_path {
            Some(p) => {
                let t = Tokenizer::from_file(&p)?;
                t.check_against_model(gpt.cfg.vocab_size)?;
                Some(t)
            }
            None => None,
        };
        Ok(Model {
            gpt,
            tokenizer,
            info,
        })
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::Tokenizer("no tokenizer.json next to the weights and none given".into())
        })
    }

    pub fn session(&self) -> Session<'_> {
        Session::new(&self.gpt)
    }

    /// Tokenises `prompt`, generates, and detokenises the answer.
    pub fn generate_text(&self, prompt: &str, params: &GenerateParams) -> Result<TextGeneration> {
        let tok = self.tokenizer()?;
        let ids = tok.encode(prompt)?;
        let generation = self.session().generate(&ids, params, None)?;
        let text = tok.decode(&generation.tokens, true)?;
        Ok(TextGeneration { text, generation })
    }
}
