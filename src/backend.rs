//! Where the forward runs: one seam between the decode loop and the devices (in the spirit of
//! ggml-backend's operation table and candle's `Device`).
//!
//! * [`Backend`]: chosen once, when a model is loaded ([`open`]); it names itself (`cpu`,
//!   `cpu:bf16`, `cuda:<GPU>:<dtype>`), reports what a run should know (which kernel image was
//!   loaded, graph capture failures) and hands out per-request [`Forward`]s. A backend may keep
//!   its per-request state (device buffers, streams, captured graphs) in a pool between requests.
//! * [`Forward`]: one request's forward state. The decode loop asks it for the hidden states of
//!   a canvas ([`Forward::forward`]), then for "the step's decisions for these rows" — the
//!   first step's end probabilities ([`Forward::end_stats`]), greedy decisions where the backend
//!   makes them itself ([`Forward::decide_greedy`]), or the rows' logits for the host sampler
//!   ([`Forward::logits_rows`]).
//!
//! The decode loop ([`crate::decode`]), the facade, the C API and the CLI never test which device
//! they run on; only this module knows which backends a build has.

use candle_core::Tensor;
use serde::Serialize;

use crate::error::Result;
use crate::model::{AttnMask, Gpt2, LOGIT_CHUNK};
use crate::sampler::{argmax, RowChoice, Sampler};
use crate::weights::ComputeDevice;

/// One request's forward state on a backend. Rows are rows of the last forward's sequence (the
/// caller applies DiffuGPT's shift).
pub(crate) trait Forward: Send {
    /// The bidirectional forward over `seq`; its final hidden states stay for the row queries.
    fn forward(&mut self, seq: &[u32]) -> Result<()>;

    /// Calls `f(k, logits)` with the f32 logits of row `rows[k]` (scratch to `f`), in order.
    fn logits_rows(&mut self, rows: &[usize], f: &mut dyn FnMut(usize, &mut [f32])) -> Result<()>;

    /// For each row: the probability of the end ids under the raw softmax and the raw argmax
    /// (the first step's length prediction).
    fn end_stats(&mut self, rows: &[usize], sampler: &Sampler) -> Result<Vec<(f32, u32)>> {
        let mut out = vec![(0.0, 0); rows.len()];
        self.logits_rows(rows, &mut |k, row| {
            out[k] = (sampler.end_prob(row), argmax(row).0 as u32);
        })?;
        Ok(out)
    }

    /// `Sampler::choose_with(row, _, allow_end)` for every row, when the backend decides such a
    /// sampler itself (greedy, no repetition penalty); `None`: the caller runs the host sampler
    /// on [`Forward::logits_rows`] (same results, more traffic).
    fn decide_greedy(
        &mut self,
        _rows: &[usize],
        _sampler: &Sampler,
        _allow_end: bool,
    ) -> Result<Option<Vec<RowChoice>>> {
        Ok(None)
    }

    /// Whether the forward runs on an accelerator (not the CPU).
    fn on_accelerator(&self) -> bool {
        false
    }
}

/// What a backend reports besides its name (the bench JSON carries it).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BackendReport {
    /// Which image of the device kernels was loaded (CUDA: `cubin sm_90`, or `ptx ...` with
    /// why the CUBIN was not used); `None` on the CPU.
    pub kernels: Option<String>,
    /// Whether forwards replay captured graphs (CUDA graphs); `None` where there are none.
    pub graphs: Option<bool>,
    /// Graph captures that failed (each then ran without graphs), in the order they happened.
    pub graph_failures: Vec<String>,
}

/// A compute device with a model's weights on it, chosen at load.
pub(crate) trait Backend: Send + Sync {
    /// `cpu` (`cpu:bf16`, `cpu:int8` for compressed CPU weights) or `cuda:<GPU name>:<dtype>`.
    fn name(&self, gpt: &Gpt2) -> String;

    /// A forward state for one request on `gpt` (the CPU copy of the weights this backend was
    /// opened with). May come from a pool; it returns there when dropped.
    fn forward<'m>(&'m self, gpt: &'m Gpt2) -> Result<Box<dyn Forward + 'm>>;

    fn report(&self) -> BackendReport {
        BackendReport::default()
    }
}

/// The backend for `device` with `gpt`'s weights (`dtype`: the accelerator's compute dtype;
/// `None` for its default). When the device cannot be used, the CPU backend and why.
pub(crate) fn open(
    device: ComputeDevice,
    gpt: &Gpt2,
    dtype: Option<candle_core::DType>,
) -> (Box<dyn Backend>, Option<String>) {
    match device {
        ComputeDevice::Cpu => (Box::new(CpuBackend), None),
        ComputeDevice::Cuda => open_cuda(gpt, dtype),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(gpt: &Gpt2, dtype: Option<candle_core::DType>) -> (Box<dyn Backend>, Option<String>) {
    match crate::cuda::backend::CudaBackend::open(gpt, dtype) {
        Ok(b) => (Box::new(b), None),
        Err(e) => (Box::new(CpuBackend), Some(format!("{e}"))),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(
    _gpt: &Gpt2,
    _dtype: Option<candle_core::DType>,
) -> (Box<dyn Backend>, Option<String>) {
    (
        Box::new(CpuBackend),
        Some("this build has no CUDA support (cargo feature `cuda`)".to_string()),
    )
}

/// The CPU: candle tensors and the fused CPU kernels of [`Gpt2`], in the model's weight format.
pub(crate) struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self, gpt: &Gpt2) -> String {
        match gpt.weight_format() {
            crate::cpu_quant::WeightFormat::F32 => "cpu".into(),
            f => format!("cpu:{}", f.name()),
        }
    }

    fn forward<'m>(&'m self, gpt: &'m Gpt2) -> Result<Box<dyn Forward + 'm>> {
        Ok(Box::new(CpuForward::new(gpt)))
    }
}

/// A forward on the CPU: the hidden states of the last forward, `[T, n_embd]`.
pub(crate) struct CpuForward<'m> {
    model: &'m Gpt2,
    hidden: Option<Tensor>,
}

impl<'m> CpuForward<'m> {
    pub(crate) fn new(model: &'m Gpt2) -> Self {
        CpuForward {
            model,
            hidden: None,
        }
    }
}

impl Forward for CpuForward<'_> {
    fn forward(&mut self, seq: &[u32]) -> Result<()> {
        let model = self.model;
        let input = Tensor::from_slice(seq, (1, seq.len()), model.device())?;
        self.hidden = Some(
            model
                .hidden(&input, &AttnMask::Bidirectional, None)?
                .squeeze(0)?,
        );
        Ok(())
    }

    /// The LM head in chunks of [`LOGIT_CHUNK`] rows.
    fn logits_rows(&mut self, rows: &[usize], f: &mut dyn FnMut(usize, &mut [f32])) -> Result<()> {
        let hidden = self.hidden.as_ref().ok_or_else(|| {
            crate::error::Error::Param("no forward has run in this session".into())
        })?;
        let model = self.model;
        let v = model.cfg.vocab_size;
        for (c, chunk) in rows.chunks(LOGIT_CHUNK).enumerate() {
            let idx: Vec<u32> = chunk.iter().map(|&r| r as u32).collect();
            let idx = Tensor::from_vec(idx, chunk.len(), hidden.device())?;
            let h = hidden.index_select(&idx, 0)?;
            let mut logits = model.logits(&h)?.flatten_all()?.to_vec1::<f32>()?;
            for (k, row) in logits.chunks_exact_mut(v).enumerate() {
                f(c * LOGIT_CHUNK + k, row);
            }
        }
        Ok(())
    }
}
