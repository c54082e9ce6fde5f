//! diffugpt-training: teaches GPT-2 / DiffuGPT models to end their output, on the core's own model
//! code and weights layout. Data preparation (`prepare`, `data`), objectives and the training loop
//! (`train`, `dataset`), optimizer (`optim`), checkpoints (`checkpoint`), run config (`config`).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dataset;
pub mod eval;
pub mod optim;
pub mod plot;
pub mod prepare;
pub mod train;
