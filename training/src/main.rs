//! `diffugpt-train`: prepare data, train (ARM, diffusion, pad and mask-EoS fine-tuning), resume.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use diffugpt_training::config::TrainConfig;
use diffugpt_training::prepare::{prepare, PrepareArgs};
use diffugpt_training::train::train;

#[derive(Parser)]
#[command(
    name = "diffugpt-train",
    version,
    about = "Train DiffuGPT models to end their output"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tokenise a corpus into train/val/test token files (see `data` for the format).
    Prepare(PrepareArgs),
    /// Train from a JSON config (copied into the run directory).
    Train {
        config: PathBuf,
        /// Continue from the run's latest checkpoint (exactly: same batches, same losses).
        #[arg(long)]
        resume: bool,
        /// Stop (with a checkpoint) after this many optimizer steps in total.
        #[arg(long)]
        stop_after: Option<usize>,
    },
    /// Evaluate a model (reports as JSON + Markdown + PNG in --out).
    #[command(subcommand)]
    Eval(EvalCmd),
    /// Plot a run's metrics.jsonl to PNG (loss.png, lr.png, eos.png).
    Plot {
        run_dir: PathBuf,
        /// Output directory (default: the run directory)
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EvalCmd {
    /// First-step end-of-text metrics by visible tokens (with --generate: fixed vs EoS-first
    /// decoding end metrics).
    Eos(diffugpt_training::eval::eos::EosEvalArgs),
    /// Useful tokens/s of fixed-length vs EoS-first decoding on a dataset's prompts.
    Throughput(diffugpt_training::eval::throughput::ThroughputArgs),
    /// LAMBADA in DiffuGPT's protocol, or a LAMBADA-style set built from held-out text.
    Lambada(diffugpt_training::eval::lambada::LambadaArgs),
    /// Diffusion ELBO (perplexity bound) or ARM perplexity on held-out text.
    Ppl(diffugpt_training::eval::quality::PplArgs),
    /// Quality of EoS-first vs fixed-length outputs on the same prompts.
    Compare(diffugpt_training::eval::quality::CompareArgs),
}

/// Training allocates and frees tensors of hundreds of MB every step (logits over the vocabulary,
/// their gradients). glibc returns such blocks to the kernel at every free (mmap/munmap), so each
/// step paid for hundreds of thousands of fresh zeroed pages; keeping them in the heap instead made
/// CPU training several times faster (system time dominated before).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Prepare(a) => {
            let summary = prepare(&a.into())?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Cmd::Train {
            config,
            resume,
            stop_after,
        } => {
            let cfg = TrainConfig::load(&config)?;
            let losses = train(&cfg, Some(&config), resume, stop_after)?;
            if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
                eprintln!("loss {first:.4} -> {last:.4} over {} steps", losses.len());
            }
        }
        Cmd::Eval(EvalCmd::Throughput(a)) => {
            let r = diffugpt_training::eval::throughput::run(&a)?;
            eprintln!(
                "EoS-first speed-up: {:.2}x (report in {})",
                r.speedup,
                a.out.display()
            );
        }
        Cmd::Eval(EvalCmd::Eos(a)) => diffugpt_training::eval::eos::run(&a)?,
        Cmd::Eval(EvalCmd::Lambada(a)) => diffugpt_training::eval::lambada::run(&a)?,
        Cmd::Eval(EvalCmd::Ppl(a)) => diffugpt_training::eval::quality::run_ppl(&a)?,
        Cmd::Eval(EvalCmd::Compare(a)) => diffugpt_training::eval::quality::run_compare(&a)?,
        Cmd::Plot { run_dir, out } => {
            for p in diffugpt_training::plot::plot_metrics(&run_dir, out.as_deref())? {
                println!("{}", p.display());
            }
        }
    }
    Ok(())
}
