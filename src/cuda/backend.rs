//! The CUDA implementation of [`crate::backend`]: the weights on the GPU once per model, and a
//! small pool of [`CudaSession`]s (stream, cuBLAS handle, activation buffers, captured graphs)
//! kept alive across requests: a `generate` takes one from the pool and gives it back when done,
//! instead of allocating ~100 MB of device buffers per call.

use std::sync::{Arc, Mutex};

use super::forward::{CudaModel, CudaSession, GpuDtype};
use super::Gpu;
use crate::backend::{Backend, BackendReport, Forward};
use crate::error::{Error, Result};
use crate::model::Gpt2;
use crate::sampler::{ConfidenceKind, RowChoice, Sampler};

/// Idle sessions kept per model (each holds the buffers for the model's whole context). More
/// concurrent requests than this still get sessions; the extra ones are freed when done.
const POOL_IDLE_MAX: usize = 4;

pub(crate) struct CudaBackend {
    model: Arc<CudaModel>,
    pool: Mutex<Vec<CudaSession>>,
    /// Graph capture failures of every session so far (see [`BackendReport`]).
    graph_failures: Mutex<Vec<String>>,
}

impl CudaBackend {
    /// Opens the first GPU and uploads `gpt`'s weights in `dtype` (bf16 by default).
    pub(crate) fn open(gpt: &Gpt2, dtype: Option<candle_core::DType>) -> Result<Self> {
        let d = GpuDtype::from_candle(dtype.unwrap_or(candle_core::DType::BF16))?;
        let gpu = Gpu::open(0)?;
        Ok(CudaBackend {
            model: Arc::new(CudaModel::upload(gpu, gpt, d)?),
            pool: Mutex::new(Vec::new()),
            graph_failures: Mutex::new(Vec::new()),
        })
    }
}

impl Backend for CudaBackend {
    fn name(&self, _gpt: &Gpt2) -> String {
        format!("cuda:{}:{}", self.model.gpu.name, self.model.dtype.name())
    }

    fn forward<'m>(&'m self, _gpt: &'m Gpt2) -> Result<Box<dyn Forward + 'm>> {
        let pooled = self.pool.lock().map_err(|_| poisoned())?.pop();
        let sess = match pooled {
            Some(s) => s,
            None => CudaSession::new(self.model.clone(), self.model.cfg.n_positions)?,
        };
        Ok(Box::new(CudaForward {
            sess: Some(sess),
            backend: self,
        }))
    }

    fn report(&self) -> BackendReport {
        BackendReport {
            kernels: Some(self.model.gpu.image.to_string()),
            graphs: Some(super::forward::graphs_enabled()),
            graph_failures: self
                .graph_failures
                .lock()
                .map(|f| f.clone())
                .unwrap_or_default(),
        }
    }
}

fn poisoned() -> Error {
    Error::Cuda("the GPU session pool was poisoned by a panic".into())
}

/// One request's GPU session, back to the pool when dropped.
struct CudaForward<'m> {
    /// `Some` until dropped.
    sess: Option<CudaSession>,
    backend: &'m CudaBackend,
}

impl CudaForward<'_> {
    fn sess(&mut self) -> &mut CudaSession {
        self.sess.as_mut().expect("present until dropped")
    }
}

impl Drop for CudaForward<'_> {
    fn drop(&mut self) {
        let Some(mut sess) = self.sess.take() else {
            return;
        };
        let failures = sess.take_graph_failures();
        if !failures.is_empty() {
            if let Ok(mut f) = self.backend.graph_failures.lock() {
                f.extend(failures);
            }
        }
        // A session whose stream errored (a failed launch) is not reused.
        if sess.synchronize().is_err() {
            return;
        }
        if let Ok(mut pool) = self.backend.pool.lock() {
            if pool.len() < POOL_IDLE_MAX {
                pool.push(sess);
            }
        }
    }
}

impl Forward for CudaForward<'_> {
    fn forward(&mut self, seq: &[u32]) -> Result<()> {
        self.sess().forward(seq, false)
    }

    fn logits_rows(&mut self, rows: &[usize], f: &mut dyn FnMut(usize, &mut [f32])) -> Result<()> {
        self.sess().logits_rows(rows, f)
    }

    /// p_end and the raw argmax come from the decision kernel (the logits stay on the GPU).
    fn end_stats(&mut self, rows: &[usize], sampler: &Sampler) -> Result<Vec<(f32, u32)>> {
        let (ends, banned) = (sampler.end_ids(), sampler.banned());
        if ends.len() > 2 || banned.len() > 4 {
            // More ids than the kernel takes: the host sampler's own computation.
            let mut out = vec![(0.0, 0); rows.len()];
            self.logits_rows(rows, &mut |k, row| {
                out[k] = (sampler.end_prob(row), crate::sampler::argmax(row).0 as u32);
            })?;
            return Ok(out);
        }
        Ok(self
            .sess()
            .decide(rows, ends, banned)?
            .into_iter()
            .map(|d| (d.p_end, d.raw_argmax))
            .collect())
    }

    /// The GPU version of `Sampler::choose_with` when the sampler is greedy without a repetition
    /// penalty. Same order of operations as the CPU: p_end from the raw logits, banned ids (and
    /// the end ids when `allow_end` is false) excluded, argmax (first on ties), confidence of the
    /// chosen kind.
    fn decide_greedy(
        &mut self,
        rows: &[usize],
        sampler: &Sampler,
        allow_end: bool,
    ) -> Result<Option<Vec<RowChoice>>> {
        let p = sampler.params;
        let greedy = p.temperature == 0.0 || !(1.0 / p.temperature).is_finite();
        let ends = sampler.end_ids();
        let mut ban = sampler.banned().to_vec();
        if !allow_end {
            ban.extend_from_slice(ends);
        }
        if !greedy || p.repetition_penalty != 1.0 || ends.len() > 2 || ban.len() > 4 {
            return Ok(None);
        }
        let ds = self.sess().decide(rows, ends, &ban)?;
        Ok(Some(
            ds.into_iter()
                .map(|d| RowChoice {
                    token: d.token,
                    confidence: match sampler.confidence {
                        ConfidenceKind::Prob => d.prob,
                        ConfidenceKind::Margin => d.margin,
                        ConfidenceKind::NegEntropy => d.neg_entropy,
                    },
                    p_end: d.p_end,
                })
                .collect(),
        ))
    }

    fn on_accelerator(&self) -> bool {
        true
    }
}
