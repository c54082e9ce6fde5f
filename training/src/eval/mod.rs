//! Evaluation: whether a model can predict where its answer ends at the first denoising step, and
//! what EoS-first decoding buys. Each command writes `report.json`, `report.md` and PNG plots into
//! its output directory.
//!
//! * [`eos`]: first-step EoS metrics by visible tokens, and generation-based end metrics;
//! * [`lambada`]: LAMBADA in DiffuGPT's protocol, and a LAMBADA-style set from any held-out text;
//! * [`probe`]: a learned end-position probe on the frozen first-step hidden states, against the
//!   zero-shot predictors;
//! * [`quality`]: diffusion ELBO / perplexity, ARM perplexity, EoS-first vs fixed output quality;
//! * [`throughput`]: useful tokens/s of fixed-length vs EoS-first decoding on a real workload.

pub mod eos;
pub mod formats;
pub mod lambada;
pub mod probe;
pub mod quality;
pub mod report;
pub mod throughput;
