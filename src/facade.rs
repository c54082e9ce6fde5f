//! The high-level entry point: weights + tokenizer + special ids, loaded once, shared read-only.

use std::path::Path;

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
    /// The weights on the GPU when `LoadOptions::device` asked for CUDA and one was usable; every
    /// session then runs its diffusion forwards there.
    #[cfg(feature = "cuda")]
    pub cuda: Option<crate::cuda::CudaModel>,
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
        // stays f32. On the CPU, bf16 means bf16 weights with f32 arithmetic.
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
        let (gpt, info) = weights::load(path, opts)?;
        let tokenizer = match tok_path {
            Some(p) => {
                let t = Tokenizer::from_file(&p)?;
                t.check_against_model(gpt.cfg.vocab_size)?;
                Some(t)
            }
            None => None,
        };
        #[cfg(feature = "cuda")]
        let (cuda, fallback) = match device {
            ComputeDevice::Cpu => (None, None),
            ComputeDevice::Cuda => match Self::upload_gpu(&gpt, gpu_dtype) {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(format!("{e}"))),
            },
        };
        #[cfg(not(feature = "cuda"))]
        let fallback = match device {
            ComputeDevice::Cpu => None,
            ComputeDevice::Cuda => {
                let _ = gpu_dtype;
                Some("this build has no CUDA support (cargo feature `cuda`)".to_string())
            }
        };
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
            #[cfg(feature = "cuda")]
            cuda,
            fallback,
        })
    }

    #[cfg(feature = "cuda")]
    fn upload_gpu(gpt: &Gpt2, dtype: Option<candle_core::DType>) -> Result<crate::cuda::CudaModel> {
        let d = crate::cuda::GpuDtype::from_candle(dtype.unwrap_or(candle_core::DType::BF16))?;
        let gpu = crate::cuda::Gpu::open(0)?;
        crate::cuda::CudaModel::upload(gpu, gpt, d)
    }

    /// Where diffusion forwards run, for reports: `cpu` (`cpu:bf16`, `cpu:int8` for compressed
    /// weights), or `cuda:<GPU name>:<dtype>`.
    pub fn backend(&self) -> String {
        #[cfg(feature = "cuda")]
        if let Some(m) = &self.cuda {
            return format!("cuda:{}:{}", m.gpu.name, m.dtype.name());
        }
        match self.gpt.weight_format() {
            crate::cpu_quant::WeightFormat::F32 => "cpu".into(),
            f => format!("cpu:{}", f.name()),
        }
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::Tokenizer("no tokenizer.json next to the weights and none given".into())
        })
    }

    /// A decoding session; on the GPU when the model was loaded there. A GPU session that cannot
    /// be created (out of device memory) falls back to the CPU with a message on stderr.
    pub fn session(&self) -> Session<'_> {
        #[cfg(feature = "cuda")]
        if let Some(m) = &self.cuda {
            match crate::cuda::CudaSession::new(m, self.gpt.cfg.n_positions) {
                Ok(g) => return Session::with_gpu(&self.gpt, g),
                Err(e) => eprintln!("diffugpt: GPU session failed ({e}); running on the CPU"),
            }
        }
        Session::new(&self.gpt)
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
