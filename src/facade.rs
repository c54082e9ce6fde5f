//! The high-level entry point: weights + tokenizer + special ids, loaded once, shared read-only.

use std::path::Path;

use crate::backend::{Backend, BackendReport};
use crate::decode::{GenerateParams, Generation, Session};
use crate::error::{Error, Result};
use crate::model::Gpt2;
use crate::tokenizer::Tokenizer;
use crate::weights::{self, CheckpointInfo, ComputeDevice, LoadOptions, ModelFiles};

/// A loaded model. Immutable after loading, so one `Model` can serve many threads, each with its
/// own [`Session`].
pub struct Model {
    pub gpt: Gpt2,
    pub tokenizer: Option<Tokenizer>,
    pub info: CheckpointInfo,
    /// Where diffusion forwards run, chosen at load from `LoadOptions::device` (see
    /// [`crate::backend`]); every session runs its forwards there.
    backend: Box<dyn Backend>,
    /// Why a requested GPU is not used (also printed to stderr at load); `None` when the model
    /// runs where it was asked to.
    pub fallback: Option<String>,
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
        let device = opts.device;
        // On a GPU the dtype is the GPU's compute dtype; the CPU copy (ARM path, fallback)
        // stays f32. On the CPU, bf16 means bf16 weights with sums in f32.
        let mut cpu_weights = opts.cpu_weights;
        let gpu_dtype = if device == ComputeDevice::Cuda {
            opts.dtype.take()
        } else {
            if opts.dtype == Some(candle_core::DType::BF16)
                && cpu_weights == crate::cpu_quant::WeightFormat::F32
            {
                cpu_weights = crate::cpu_quant::WeightFormat::Bf16;
            }
            opts.dtype = None;
            None
        };
        opts.cpu_weights = cpu_weights;
        let (gpt, info) = if device == ComputeDevice::Cpu {
            weights::load_for_cpu(path, opts)?
        } else {
            weights::load(path, opts)?
        };
        let tokenizer = match tok_path {
            Some(p) => {
                let t = Tokenizer::from_file(&p)?;
                t.check_against_model(gpt.cfg.vocab_size)?;
                Some(t)
            }
            None => None,
        };
        let (backend, fallback) = crate::backend::open(device, &gpt, gpu_dtype);
        if let Some(why) = &fallback {
            eprintln!("diffugpt: CUDA requested but not available ({why}); running on the CPU");
        }
        // After the GPU upload (which reads the plain layout): the CPU forward streams packed
        // projections faster, with bitwise the same results (in f32).
        let mut gpt = gpt;
        gpt.pack_for_cpu_as(cpu_weights)?;
        Ok(Model {
            gpt,
            tokenizer,
            info,
            backend,
            fallback,
        })
    }

    /// A model on `device` from weights already in memory (no files: benchmarks, tests), without
    /// a tokenizer. `dtype`: the accelerator's compute dtype (`None`: its default); `gpt` runs
    /// as it is on the CPU. Falls back to the CPU like [`Model::load`].
    pub fn from_gpt(
        gpt: Gpt2,
        device: ComputeDevice,
        dtype: Option<candle_core::DType>,
    ) -> Result<Self> {
        let (backend, fallback) = crate::backend::open(device, &gpt, dtype);
        if let Some(why) = &fallback {
            eprintln!("diffugpt: CUDA requested but not available ({why}); running on the CPU");
        }
        let info = CheckpointInfo {
            layout: crate::weights::Layout::DiffuGpt,
            config_from_file: false,
            untied_head: gpt.lm_head.is_some(),
            file_dtypes: Vec::new(),
        };
        Ok(Model {
            gpt,
            tokenizer: None,
            info,
            backend,
            fallback,
        })
    }

    /// Where diffusion forwards run, for reports: `cpu` (`cpu:bf16`, `cpu:int8` for compressed
    /// weights), or `cuda:<GPU name>:<dtype>`.
    pub fn backend(&self) -> String {
        self.backend.name(&self.gpt)
    }

    /// What the backend reports besides its name: the kernel image it loaded, graph capture
    /// failures so far (empty on the CPU).
    pub fn backend_report(&self) -> BackendReport {
        self.backend.report()
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::Tokenizer("no tokenizer.json next to the weights and none given".into())
        })
    }

    /// A decoding session on the model's backend (an accelerator's sessions are pooled: their
    /// device buffers outlive one request). One that cannot be created (out of device memory)
    /// falls back to the CPU with a message on stderr.
    pub fn session(&self) -> Session<'_> {
        match self.backend.forward(&self.gpt) {
            Ok(f) => Session::with_forward(&self.gpt, f),
            Err(e) => {
                eprintln!(
                    "diffugpt: {} session failed ({e}); running on the CPU",
                    self.backend()
                );
                Session::new(&self.gpt)
            }
        }
    }

    /// The longest prompt (in tokens) the context can take: BOS and at least one answer slot
    /// need a position each.
    pub fn max_prompt_tokens(&self) -> usize {
        self.gpt.cfg.n_positions.saturating_sub(2)
    }

    /// `Error::Prompt` when `n` prompt tokens cannot fit the context whatever the canvas.
    pub fn check_prompt_len(&self, n: usize) -> Result<()> {
        let max = self.max_prompt_tokens();
        if n > max {
            return Err(Error::Prompt(format!(
                "the prompt has {n} tokens; the model's {} positions leave room for at most {max} (BOS and one answer slot take the rest)",
                self.gpt.cfg.n_positions
            )));
        }
        Ok(())
    }

    /// Tokenises a prompt, refusing one too long for the context (`Error::Prompt`): before
    /// tokenising when its byte length already says so (see [`Tokenizer::encode_at_most`]).
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let ids = self
            .tokenizer()?
            .encode_at_most(prompt, self.max_prompt_tokens())?;
        self.check_prompt_len(ids.len())?;
        Ok(ids)
    }

    /// Tokenises `prompt`, generates, and detokenises the answer.
    pub fn generate_text(&self, prompt: &str, params: &GenerateParams) -> Result<TextGeneration> {
        let tok = self.tokenizer()?;
        let ids = self.encode_prompt(prompt)?;
        let generation = self.session().generate(&ids, params, None)?;
        let text = tok.decode(&generation.tokens, true)?;
        Ok(TextGeneration { text, generation })
    }
}
