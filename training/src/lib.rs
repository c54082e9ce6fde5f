//! diffugpt-training: teaches GPT-2 / DiffuGPT models to end their output, on the core's own model
//! code and weights layout. Data preparation (`prepare`, `data`), objectives and the training loop
//! (`train`, `objective`, `dataset`), the CPU training engine (`engine`, `backend`), optimizer
//! (`optim`), checkpoints (`checkpoint`), run config (`config`), a corpus-trained BPE vocabulary
//! (`vocab`).

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dataset;
pub mod engine;
pub mod eval;
pub mod export;
pub mod objective;
#[cfg(test)]
mod objective_tests;
pub mod optim;
pub mod plot;
pub mod prepare;
pub mod text;
pub mod train;
pub mod vocab;
