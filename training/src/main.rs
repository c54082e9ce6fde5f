//! `diffugpt-train`: prepare data, train (ARM, diffusion, pad and mask-EoS fine-tuning), resume.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use diffugpt_training::config::TrainConfig;
use diffugpt_training::prepare::{prepare, PrepareArgs};
use diffugpt_training::train::{train_observed, StopAt};

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
    /// Train a byte-level BPE vocabulary on corpus files (a smaller head for scratch models).
    Vocab(diffugpt_training::vocab::VocabArgs),
    /// Train from a JSON config (copied into the run directory).
    Train {
        config: PathBuf,
        /// Continue from the run's latest checkpoint (exactly: same batches, same losses).
        #[arg(long)]
        resume: bool,
        /// Stop (with a checkpoint) after this many optimizer steps in total.
        #[arg(long)]
        stop_after: Option<usize>,
        /// Stop (with a checkpoint) after the first step that ends past this many minutes of
        /// wall time: a budget that fits a session; continue with --resume.
        #[arg(long, value_parser = parse_minutes)]
        max_minutes: Option<f64>,
    },
    /// Evaluate a model (reports as JSON + Markdown + PNG in --out).
    #[command(subcommand)]
    Eval(EvalCmd),
    /// Write a trained model as the library ships it: 16-bit weights, config.json with its ids,
    /// its tokenizer.json; checked (tokenizer fits, 16-bit logits match f32) before it replaces --out.
    Export(diffugpt_training::export::ExportArgs),
    /// A padded or mask-eos split back to text: prompts.txt (one per line) and docs.txt (for
    /// `eval compare --prompts` and `eval lambada --from-text`).
    Text(diffugpt_training::text::TextArgs),
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
    /// A learned end-position probe on the frozen first-step hidden states vs the zero-shot
    /// predictors.
    Probe(diffugpt_training::eval::probe::ProbeArgs),
    /// Quality of EoS-first vs fixed-length outputs on the same prompts.
    Compare(diffugpt_training::eval::quality::CompareArgs),
    /// bf16 / int8 CPU weights against f32: top-1 agreement of every row, logit error, change
    /// of the first-step end prediction.
    Formats(diffugpt_training::eval::formats::FormatsArgs),
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

/// A wall-clock budget in minutes: finite, positive, at most a year.
fn parse_minutes(s: &str) -> std::result::Result<f64, String> {
    let m: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of minutes"))?;
    if m.is_finite() && m > 0.0 && m <= 525_600.0 {
        Ok(m)
    } else {
        Err(format!(
            "--max-minutes {s} must be positive and at most 525600 (a year)"
        ))
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
        Cmd::Prepare(mut a) => {
            a.resolve_special_ids()?;
            let summary = prepare(&a.into())?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Cmd::Train {
            config,
            resume,
            stop_after,
            max_minutes,
        } => {
            let cfg = TrainConfig::load(&config)?;
            let stop = StopAt {
                step: stop_after,
                deadline: max_minutes.map(|m| {
                    std::time::Instant::now() + std::time::Duration::from_secs_f64(m * 60.0)
                }),
            };
            let losses = train_observed(&cfg, Some(&config), resume, stop, &mut |_| {})?;
            if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
                eprintln!("loss {first:.4} -> {last:.4} over {} steps", losses.len());
            }
        }
        Cmd::Vocab(a) => {
            let summary = diffugpt_training::vocab::train_vocab(&a)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
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
        Cmd::Eval(EvalCmd::Probe(a)) => {
            let r = diffugpt_training::eval::probe::run(&a)?;
            eprintln!(
                "probe: test CE {:.3} (zero-shot {:.3}); report in {}",
                r.test_loss,
                r.test_loss_zero_shot,
                a.out.display()
            );
        }
        Cmd::Eval(EvalCmd::Compare(a)) => diffugpt_training::eval::quality::run_compare(&a)?,
        Cmd::Eval(EvalCmd::Formats(a)) => diffugpt_training::eval::formats::run(&a)?,
        Cmd::Export(a) => {
            let summary = diffugpt_training::export::run(&a)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Cmd::Text(a) => {
            let summary = diffugpt_training::text::run(&a)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Cmd::Plot { run_dir, out } => {
            for p in diffugpt_training::plot::plot_metrics(&run_dir, out.as_deref())? {
                println!("{}", p.display());
            }
        }
    }
    Ok(())
}
