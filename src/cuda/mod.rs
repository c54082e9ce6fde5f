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
//! * `backend`: the [`crate::backend`] implementation a `Model` loaded on a GPU runs on (a pool
//!   of sessions kept across requests, greedy step decisions on the GPU).

pub(crate) mod backend;
pub mod device;
pub mod forward;
pub mod kernels;

pub use device::{gpu_available, Gpu};
pub use forward::{CudaModel, CudaSession, GpuDtype, Harness, RowDecision};
pub use kernels::{KernelImage, WLayout};
