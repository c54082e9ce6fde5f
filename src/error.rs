//! The library's one error type. Every failure a caller can cause (bad files, bad parameters, bad
//! prompts) has its own variant so tests and the C API can tell them apart without parsing text.

use std::path::PathBuf;

/// Errors returned by the diffugpt library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("directory {0} holds no model.safetensors")]
    NoWeights(PathBuf),
    #[error("invalid safetensors file {path}: {msg}")]
    BadSafetensors { path: PathBuf, msg: String },
    #[error("tensor `{0}` appears more than once in the safetensors header")]
    DuplicateTensor(String),
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{0}` is not part of a GPT-2 / DiffuGPT checkpoint")]
    UnknownTensor(String),
    #[error("tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 are supported")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}` holds a non-finite value (NaN or Inf) at element {index}")]
    NonFinite { name: String, index: usize },
    #[error("unrecognised weight layout: {0}")]
    UnknownLayout(String),
    #[error("invalid config: {0}")]
    Config(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("invalid parameter: {0}")]
    Param(String),
    #[error("invalid prompt: {0}")]
    Prompt(String),
    #[error("request needs {needed} bytes, over the memory limit of {limit} bytes")]
    MemoryLimit { needed: u64, limit: u64 },
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The CUDA backend could not run: no driver or GPU, a library missing, a kernel failing to
    /// compile or launch, or out of device memory. Device selection turns it into a CPU fallback.
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("tensor backend error: {0}")]
    Backend(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
