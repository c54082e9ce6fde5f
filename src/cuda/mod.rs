//! CUDA backend (cargo feature `cuda`): the DiffuGPT forward and the per-row step decisions on an
//! NVIDIA GPU, driven by the same decode loop as the CPU ([`crate::decode`]).
//!
//! * [`device`]: finds the driver and a GPU at run time (cudarc's `dynamic-loading`: the binary has
//!   no load-time CUDA dependency), opens a context, and turns every cudarc panic into
//!   [`Error::Cuda`](crate::Error::Cuda).
//! * [`kernels`]: `kernels.cu` compiled with NVRTC for the device's compute capability (no nvcc at
//!   build time; the CUBIN is loaded, the PTX is the fallback), typed launch wrappers, cuBLAS
//!   GEMMs, and a host-side harness the tests use to compare each kernel with the CPU reference.
//! * [`forward`]: [`CudaModel`] (weights uploaded once, f32 or bf16) and [`CudaSession`] (buffers
//!   preallocated for the longest canvas; hidden states, logits for chosen rows, step decisions).

pub mod device;
pub mod forward;
pub mod kernels;

pub use device::{gpu_available, Gpu};
pub use forward::{CudaModel, CudaSession, GpuDtype, Harness, RowDecision};
pub use kernels::{KernelImage, WLayout};

use crate::error::Result;
use crate::sampler::{ConfidenceKind, RowChoice, Sampler};

/// The GPU version of `Sampler::choose` for every slot in `slots` (row p_len - 1 + slot), when the
/// sampler is greedy without a repetition penalty; `None` otherwise (the caller then copies the
/// logits to the host sampler). Same order of operations as the CPU: p_end from the raw logits,
/// banned ids excluded, argmax (first on ties), confidence of the chosen kind.
pub fn decide_greedy(
    sess: &mut CudaSession,
    p_len: usize,
    slots: &[usize],
    sampler: &Sampler,
    ends: &[u32],
    banned: &[u32],
) -> Result<Option<Vec<(usize, RowChoice)>>> {
    let p = sampler.params;
    let greedy = p.temperature == 0.0 || !(1.0 / p.temperature).is_finite();
    if !greedy || p.repetition_penalty != 1.0 || ends.len() > 2 || banned.len() > 4 {
        return Ok(None);
    }
    let rows: Vec<usize> = slots.iter().map(|&j| p_len - 1 + j).collect();
    let ds = sess.decide(&rows, ends, banned)?;
    Ok(Some(
        slots
            .iter()
            .zip(ds)
            .map(|(&j, d)| {
                let confidence = match sampler.confidence {
                    ConfidenceKind::Prob => d.prob,
                    ConfidenceKind::Margin => d.margin,
                    ConfidenceKind::NegEntropy => d.neg_entropy,
                };
                (
                    j,
                    RowChoice {
                        token: d.token,
                        confidence,
                        p_end: d.p_end,
                    },
                )
            })
            .collect(),
    ))
}
