//! # diffugpt
//!
//! Runs DiffuGPT — GPT-2 adapted into a masked discrete-diffusion language model — with EoS-first
//! variable-length decoding: the first denoising step predicts where the answer ends, the canvas is
//! cut there, and the remaining steps run on the short canvas.
//!
//! ```no_run
//! use diffugpt::{Model, GenerateParams};
//! let model = Model::load("path/to/diffugpt-s".as_ref(), Default::default())?;
//! let out = model.generate_text("The capital of France is", &GenerateParams::default())?;
//! println!("{} ({} tokens)", out.text, out.generation.stats.final_len);
//! # Ok::<(), diffugpt::Error>(())
//! ```

mod backend;
pub mod bench;
pub mod config;
pub mod cpu_amx;
pub mod cpu_bf16;
pub mod cpu_caches;
pub mod cpu_gemm;
pub mod cpu_gemv;
pub mod cpu_int8;
pub mod cpu_kernels;
pub mod cpu_quant;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decode;
pub mod error;
#[allow(non_camel_case_types)]
pub mod ffi;
pub mod forward_profile;
pub mod length;
pub mod model;
pub mod rng;
pub mod sampler;
pub mod tokenizer;
pub mod weights;

mod facade;

pub use backend::BackendReport;
pub use config::{ModelConfig, SpecialIdOverrides, SpecialIds};
pub use decode::{
    GenerateParams, Generation, GenerationStats, LengthMode, Session, StepInfo, Steps, Strategy,
};
pub use error::{Error, Result};
pub use facade::{Model, TextGeneration};
pub use length::LengthPredictor;
pub use model::{AttnMask, Gpt2};
pub use sampler::{ConfidenceKind, SamplingParams};
pub use tokenizer::Tokenizer;
pub use weights::{ComputeDevice, Layout, LoadOptions};

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
